//! The one error type of the [`otp`](crate::otp) module, and the reason a server exits.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;

/// The error a server exited with, kept as itself: a shared
/// `Arc<dyn std::error::Error + Send + Sync>`, so it reaches a caller, a monitor or a
/// supervisor's caller typed. [`ExitError::downcast_ref`] gives back the callback's own error
/// type (for example a shard's `FreqError` behind [`OtpError::InitFailed`]); no side channel is
/// needed to learn why a server did not start.
///
/// Cloning shares the one error. Two `ExitError`s are equal when they are the same error or
/// their `Display` texts are equal (exit reasons compare by what they say, as Erlang terms
/// compare by value), so `ExitReason::Error("disk full".into())` matches a server's error whose
/// text is `disk full`, whatever its type.
#[derive(Clone)]
pub struct ExitError(Arc<dyn StdError + Send + Sync + 'static>);

impl ExitError {
    /// Keeps `error` as the exit reason's error.
    pub fn new<E: StdError + Send + Sync + 'static>(error: E) -> Self {
        ExitError(Arc::new(error))
    }

    /// An error that is only a message (a server stopping itself with a reason of its own).
    pub fn msg(text: impl Into<String>) -> Self {
        ExitError(Arc::new(Message(text.into())))
    }

    /// The error itself.
    pub fn get(&self) -> &(dyn StdError + Send + Sync + 'static) {
        &*self.0
    }

    /// The error as `E`, if that is its type.
    pub fn downcast_ref<E: StdError + 'static>(&self) -> Option<&E> {
        self.0.downcast_ref::<E>()
    }

    /// True if the error is an `E`.
    pub fn is<E: StdError + 'static>(&self) -> bool {
        self.0.is::<E>()
    }
}

/// The error of [`ExitError::msg`]: a message and nothing else.
#[derive(Debug)]
struct Message(String);

impl fmt::Display for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl StdError for Message {}

impl fmt::Display for ExitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&*self.0, f)
    }
}

impl fmt::Debug for ExitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl PartialEq for ExitError {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.to_string() == other.to_string()
    }
}

impl Eq for ExitError {}

/// Compares the error's `Display` text with a message.
impl PartialEq<str> for ExitError {
    fn eq(&self, other: &str) -> bool {
        text_eq(self, other)
    }
}

/// Compares the error's `Display` text with a message.
impl PartialEq<&str> for ExitError {
    fn eq(&self, other: &&str) -> bool {
        text_eq(self, other)
    }
}

/// True if `d` displays as exactly `text` (compared piece by piece, without allocating).
fn text_eq(d: &dyn fmt::Display, text: &str) -> bool {
    struct Rest<'a>(&'a str);
    impl fmt::Write for Rest<'_> {
        fn write_str(&mut self, piece: &str) -> fmt::Result {
            match self.0.strip_prefix(piece) {
                Some(rest) => {
                    self.0 = rest;
                    Ok(())
                }
                None => Err(fmt::Error),
            }
        }
    }
    let mut rest = Rest(text);
    fmt::write(&mut rest, format_args!("{d}")).is_ok() && rest.0.is_empty()
}

impl From<&str> for ExitError {
    fn from(text: &str) -> Self {
        ExitError::msg(text)
    }
}

impl From<String> for ExitError {
    fn from(text: String) -> Self {
        ExitError::msg(text)
    }
}

impl AsRef<dyn StdError + Send + Sync + 'static> for ExitError {
    fn as_ref(&self) -> &(dyn StdError + Send + Sync + 'static) {
        self.get()
    }
}

/// Why a server (or supervisor) stopped: Erlang's exit reason.
///
/// [`ExitReason::Normal`] and [`ExitReason::Shutdown`] are *normal* reasons (see
/// [`ExitReason::is_normal`]): a [`Restart::Transient`](crate::otp::Restart::Transient) child that
/// exits with one of them is not restarted.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExitReason {
    /// The server stopped because it was asked to, with nothing wrong (Erlang's `normal`).
    Normal,
    /// The server was stopped by its supervisor or its owner (Erlang's `shutdown`).
    Shutdown,
    /// The server was brutally killed by its supervisor (Erlang's `killed`); on OS threads this
    /// means its thread was detached and told to exit at its next message, see
    /// [`Shutdown::BrutalKill`](crate::otp::Shutdown::BrutalKill).
    Killed,
    /// A callback panicked; the panic message is kept.
    Panic(String),
    /// A callback returned an error (kept as itself: [`ExitError::downcast_ref`] gives it back
    /// typed), or the server stopped itself with a reason of its own ([`ExitError::msg`]).
    Error(ExitError),
    /// A supervisor gave up: more restarts than its intensity allows within its period.
    ReachedMaxRestartIntensity,
}

impl ExitReason {
    /// True for the reasons after which a transient child is not restarted: `Normal`, `Shutdown`.
    pub fn is_normal(&self) -> bool {
        matches!(self, ExitReason::Normal | ExitReason::Shutdown)
    }
}

impl fmt::Display for ExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitReason::Normal => f.write_str("normal"),
            ExitReason::Shutdown => f.write_str("shutdown"),
            ExitReason::Killed => f.write_str("killed"),
            ExitReason::Panic(m) => write!(f, "panic: {m}"),
            ExitReason::Error(m) => write!(f, "error: {m}"),
            ExitReason::ReachedMaxRestartIntensity => f.write_str("reached max restart intensity"),
        }
    }
}

/// Errors of the generic server, the supervisor and the name registry.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OtpError {
    /// A call got no reply within its timeout. The request may have been handled, or may still
    /// be: do not assume it was not. A reply that arrives later is discarded; it is never
    /// delivered to another call.
    #[error("call timed out")]
    Timeout,
    /// The request was **never delivered**: a direct call
    /// ([`Context::allow_direct_calls`](crate::otp::Context::allow_direct_calls)) waited its whole
    /// timeout for the server's state lock (another callback held it) and gave up before running
    /// or queueing anything. Unlike [`OtpError::Timeout`], nothing happened: it is safe to retry,
    /// here or on another server.
    #[error("call not delivered: the server stayed busy for the whole timeout")]
    NotDelivered,
    /// There is no running server behind the handle: never started, already stopped, or (when
    /// supervised) between a crash and its restart (Erlang's `noproc`).
    #[error("no such server: it is not running")]
    NoProc,
    /// The server exited, with this reason, while the call was queued or being handled.
    #[error("the server exited while the call was pending: {0}")]
    Exited(ExitReason),
    /// The server dropped the call's [`ReplyTo`](crate::otp::ReplyTo) without replying, and
    /// carried on running.
    #[error("the server dropped the reply handle without replying")]
    ReplyDropped,
    /// A server's `init` failed (returned an error or panicked), so it did not start.
    #[error("server init failed: {0}")]
    InitFailed(ExitReason),
    /// A supervisor could not start one of its children, so it did not start either.
    #[error("supervisor could not start child {id:?}: {source}")]
    ChildStartFailed {
        /// The id of the child that failed.
        id: String,
        /// Why it failed.
        #[source]
        source: Box<OtpError>,
    },
    /// The operating system refused to spawn a thread.
    #[error("cannot spawn thread: {}", crate::io_words::io_words(.0))]
    Spawn(#[from] std::io::Error),
    /// A name given to [`register`](crate::otp::register) is already taken by a live server.
    #[error("name {0:?} is already registered")]
    NameTaken(String),
    /// [`whereis`](crate::otp::whereis) found the name, but for a server of another type.
    #[error("name {name:?} is registered for another server type")]
    WrongType {
        /// The name looked up.
        name: String,
    },
    /// A supervisor has no child with this id.
    #[error("no child with id {0:?}")]
    NoSuchChild(String),
    /// A supervisor already has a child with this id.
    #[error("a child with id {0:?} already exists")]
    DuplicateChild(String),
    /// The child is running, so it cannot be restarted or deleted (terminate it first).
    #[error("child {0:?} is running")]
    ChildRunning(String),
    /// A server called itself: that could only time out (Erlang's `calling_self`).
    #[error("a server cannot call itself")]
    CallingSelf,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_reasons() {
        assert!(ExitReason::Normal.is_normal());
        assert!(ExitReason::Shutdown.is_normal());
        assert!(!ExitReason::Killed.is_normal());
        assert!(!ExitReason::Panic("x".into()).is_normal());
        assert!(!ExitReason::Error("x".into()).is_normal());
        assert!(!ExitReason::ReachedMaxRestartIntensity.is_normal());
    }

    #[derive(Debug, PartialEq)]
    struct Disk(u32);

    impl fmt::Display for Disk {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "disk {} failed", self.0)
        }
    }

    impl StdError for Disk {}

    #[test]
    fn an_exit_error_keeps_its_type_and_compares_by_text() {
        let e = ExitError::new(Disk(3));
        assert_eq!(e.downcast_ref::<Disk>(), Some(&Disk(3)));
        assert!(e.is::<Disk>() && !e.is::<std::io::Error>());
        assert!(e.downcast_ref::<std::io::Error>().is_none());
        // A clone shares the error; a message with the same text compares equal.
        let reason = ExitReason::Error(e.clone());
        assert_eq!(reason, ExitReason::Error("disk 3 failed".into()));
        assert_ne!(reason, ExitReason::Error("disk 4 failed".into()));
        assert!(e == "disk 3 failed");
        assert_eq!(reason.to_string(), "error: disk 3 failed");
        // It stays reachable through `OtpError`'s source chain.
        let err = OtpError::InitFailed(reason);
        assert!(matches!(&err, OtpError::InitFailed(ExitReason::Error(x)) if x.is::<Disk>()));
    }

    #[test]
    fn display_carries_the_message() {
        assert_eq!(ExitReason::Panic("oops".into()).to_string(), "panic: oops");
        let e = OtpError::Exited(ExitReason::Error("disk full".into()));
        assert_eq!(
            e.to_string(),
            "the server exited while the call was pending: error: disk full"
        );
    }
}
