//! The one error type of the [`otp`](crate::otp) module, and the reason a server exits.

use std::fmt;

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
    /// A callback returned an error (its `Display` text), or the server stopped itself with a
    /// reason of its own.
    Error(String),
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
    /// A call got no reply within its timeout. A reply that arrives later is discarded; it is
    /// never delivered to another call.
    #[error("call timed out")]
    Timeout,
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
    #[error("cannot spawn thread: {0}")]
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
