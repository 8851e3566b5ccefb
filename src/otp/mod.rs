//! Erlang/OTP's generic server and supervisor, on named OS threads.
//!
//! Erlang docs: [`gen_server`](https://www.erlang.org/doc/apps/stdlib/gen_server.html),
//! [`supervisor`](https://www.erlang.org/doc/apps/stdlib/supervisor.html).
//!
//! A [`GenServer`] is a state plus callbacks run one at a time on the server's own thread. A
//! [`Server`] handle (cloneable, `Send + Sync`) calls it ([`Server::call`], 5 s default timeout),
//! casts to it, sends it timer messages and stops it. A call's reply handle ([`ReplyTo`]) travels
//! inside the message, so a server may keep it and answer later: that is how a server defers its
//! replies until a batch is on disk, in [`GenServer::handle_drained`], which runs whenever the
//! mailbox has just been emptied (group commit).
//!
//! A server whose callbacks are short may allow **direct calls**
//! ([`Context::allow_direct_calls`]): a call made when the mailbox is empty then runs on the
//! caller's thread under the server's state lock, saving the two thread hops of a round trip, with
//! the same ordering, one-at-a-time and crash semantics.
//!
//! A [`Supervisor`] starts children from [`ChildSpec`]s in order, restarts them by
//! [`Strategy`] and [`Restart`] type, stops them in reverse order by their [`Shutdown`] policy, and
//! gives up (stopping everything) after more than `N` restarts in `T`. A handle to a supervised
//! server stays valid across restarts. Unlike OTP's, a supervisor may delay restarts by an
//! exponential [`RestartBackoff`] ([`SupervisorSpec::backoff`]), staying responsive while it
//! waits; the intensity still counts every restart.
//!
//! # Example
//!
//! ```
//! use freqalloc::otp::{
//!     ChildSpec, Context, ExitReason, GenServer, OtpError, ReplyTo, Strategy, Supervisor,
//!     SupervisorSpec,
//! };
//! use std::time::Duration;
//!
//! /// A counter that crashes on request.
//! struct Counter(u64);
//!
//! enum Req { Add(u64), Crash }
//!
//! impl GenServer for Counter {
//!     type Args = u64;
//!     type Call = Req;
//!     type Reply = u64;
//!     type Cast = ();
//!     type Info = ();
//!     type Error = std::convert::Infallible;
//!
//!     fn init(start: u64, _ctx: &mut Context<Self>) -> Result<Self, Self::Error> {
//!         Ok(Counter(start))
//!     }
//!
//!     fn handle_call(&mut self, req: Req, from: ReplyTo<u64>, _ctx: &mut Context<Self>)
//!         -> Result<(), Self::Error>
//!     {
//!         match req {
//!             Req::Add(n) => { self.0 += n; from.reply(self.0); }
//!             Req::Crash => panic!("asked to crash"),
//!         }
//!         Ok(())
//!     }
//! }
//!
//! let (spec, counter) = ChildSpec::server::<Counter>("counter", "freq-counter", || 10);
//! let sup = Supervisor::start(SupervisorSpec::new(Strategy::OneForOne).child(spec))?;
//! assert_eq!(counter.call(Req::Add(5))?, 15);
//!
//! // A crash fails the call in flight with the exit reason...
//! match counter.call(Req::Crash) {
//!     Err(OtpError::Exited(ExitReason::Panic(msg))) => assert_eq!(msg, "asked to crash"),
//!     other => panic!("unexpected {other:?}"),
//! }
//! // ...and the supervisor restarts the server behind the same handle, with fresh state.
//! counter.wait_for_generation(2, Duration::from_secs(5))?;
//! assert_eq!(counter.call(Req::Add(1))?, 11);
//! sup.stop();
//! assert!(matches!(counter.call(Req::Add(1)), Err(OtpError::NoProc)));
//! # Ok::<(), OtpError>(())
//! ```
//!
//! # Guarantees
//!
//! - **In-flight calls on a crash**: every call queued in the mailbox, being handled, or deferred
//!   (its [`ReplyTo`] kept in the state) gets [`OtpError::Exited`] with the exit reason. A
//!   [`ReplyTo`] dropped while the server keeps running gives [`OtpError::ReplyDropped`]. Calls
//!   never hang past their timeout, and a late reply is discarded, never delivered to another call.
//! - **Never delivered vs. maybe delivered**: [`OtpError::NoProc`] and [`OtpError::NotDelivered`]
//!   (a direct call that never got the state lock) mean the request was neither run nor queued:
//!   retrying it, here or elsewhere, cannot make it happen twice. [`OtpError::Timeout`] and
//!   [`OtpError::Exited`] mean it may have been handled.
//! - **No lock guard across user code**: a call holds no lock of its [`Server`] handle while
//!   sending, waiting or running a direct callback, so any callback, on the server's thread or
//!   the caller's, may ask its supervisor to terminate or restart its own server.
//! - **Typed exit errors**: a callback's `Err(e)` becomes [`ExitReason::Error`] holding `e` itself
//!   ([`ExitError`], shared), so callers, monitors and the caller of a failed start
//!   ([`OtpError::InitFailed`], [`OtpError::ChildStartFailed`]) can downcast it back.
//! - **Exit order**: on any exit the state is dropped (its resources, such as file locks, released)
//!   *before* callers and the supervisor hear of the exit, so a restarted instance can reopen them.
//! - **terminate** runs on an orderly stop (stop request, [`Context::stop`], shutdown by the
//!   supervisor) and after a callback returns `Err`; it does **not** run after a panic (the
//!   state may be half-updated; it is only dropped) nor after a brutal kill.
//! - **Panics** in callbacks are caught; they end that server with [`ExitReason::Panic`] carrying
//!   the message, never the process. (The default panic hook still prints the message.)
//! - **Threads**: each server and supervisor runs on its own named thread. Dropping the last
//!   [`Server`] handle of a running unsupervised server stops and joins it; dropping a
//!   [`Supervisor`] stops its children in reverse order and joins every thread, except those of
//!   brutally killed children: OS threads cannot be killed, so [`Shutdown::BrutalKill`] makes the
//!   handle refuse calls at once ([`OtpError::NoProc`]), flags the thread to exit before its next
//!   message and detaches it.

mod backoff;
mod clock;
mod error;
mod gen_server;
mod registry;
mod reply;
mod supervisor;
mod timer;

pub use backoff::RestartBackoff;
pub use clock::{ClockWaker, ManualRestartClock, RestartClock, SystemRestartClock};
pub use error::{ExitError, ExitReason, OtpError};
pub use gen_server::{
    register, whereis, Context, GenServer, Monitor, Server, DEFAULT_CALL_TIMEOUT, MAX_RUN,
};
pub use registry::unregister;
pub use reply::ReplyTo;
pub use supervisor::{
    ChildInfo, ChildSpec, Restart, RestartWait, Shutdown, Strategy, Supervisor, SupervisorEvent,
    SupervisorSpec,
};
pub use timer::TimerRef;
