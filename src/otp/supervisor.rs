//! Supervisors: start children in order, watch them, restart them by a [`Strategy`], stop them in
//! reverse order, and give up when restarts come too fast.
//!
//! Erlang: <https://www.erlang.org/doc/apps/stdlib/supervisor.html>
//!
//! **Restart backoff** (not in OTP; see [`RestartBackoff`] for why we add it): with
//! [`SupervisorSpec::backoff`], a child that exits and is to be restarted is restarted only
//! after a delay that doubles with each consecutive restart, up to a cap. While it waits the
//! supervisor goes on serving its mailbox (`which_children`, `terminate_child`,
//! `restart_child`, `stop`, other children's exits): it waits on the mailbox with a deadline,
//! measured by its [`RestartClock`], never sleeps. `restart_child` on a waiting child starts
//! it at once, `terminate_child` cancels its restart, `stop` stops everything at once. With
//! `OneForAll`/`RestForOne` the siblings to restart are stopped at once and wait with the
//! failed child (on its delay), then all start in order. [`Supervisor::restart_waits`] reads
//! the waiting restarts without a message.
//!
//! **Backoff and intensity**: the intensity still counts every restart, delayed or not, at
//! the moment the supervisor decides on it (when the child exits, or when a restart's start
//! fails), and more than the intensity ends the supervisor, as in OTP. So a backoff only
//! spreads restarts out; to retry a child failing forever, forever, pick an intensity of at
//! least [`RestartBackoff::max_restarts_within`] the period per child that may fail so (the
//! allocator does).
//!
//! **OS threads cannot be killed.** [`Shutdown::BrutalKill`] (and a [`Shutdown::Timeout`] that
//! runs out) therefore means: stop waiting, make the child's handle refuse further calls at once
//! ([`OtpError::NoProc`]), flag the thread to exit before its next message, and detach it. A
//! child stuck inside a callback keeps running until that callback returns, and its state (with
//! any file locks) is dropped only then, possibly after its replacement has started.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::backoff::RestartBackoff;
use super::clock::{RestartClock, SystemRestartClock};
use super::error::{ExitError, ExitReason, OtpError};
use super::gen_server::{
    next_id, panic_message, spawn_into, GenServer, OnExit, Server, ServerChild,
};

/// Which children a supervisor restarts when one of them exits abnormally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Strategy {
    /// Only the child that exited.
    OneForOne,
    /// All children: the others are stopped (in reverse order), then all are started in order.
    OneForAll,
    /// The child that exited and every child started after it.
    RestForOne,
}

/// When a child is restarted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Restart {
    /// Always.
    Permanent,
    /// Only after an abnormal exit (not [`ExitReason::Normal`] or [`ExitReason::Shutdown`]).
    Transient,
    /// Never; the child is forgotten once it exits.
    Temporary,
}

/// How a supervisor stops a child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Shutdown {
    /// Do not wait: the handle refuses calls at once and the thread is detached, flagged to exit
    /// before its next message (see the module docs: threads cannot be killed).
    BrutalKill,
    /// Ask the child to stop, wait this long, then escalate to [`Shutdown::BrutalKill`].
    Timeout(Duration),
    /// Ask the child to stop and wait for as long as it takes (the default for supervisors).
    Infinity,
}

/// A running child as the supervisor sees it.
trait RunningChild: Send {
    fn request_stop(&self);
    fn wait_exit(&self, timeout: Option<Duration>) -> bool;
    fn kill(&mut self);
    fn join(&mut self);
}

/// How to (re)start a child.
trait ChildStart: Send {
    fn start(&mut self, on_exit: OnExit) -> Result<Box<dyn RunningChild>, OtpError>;
}

struct ServerStart<S: GenServer> {
    server: Server<S>,
    args: Box<dyn FnMut() -> S::Args + Send>,
}

impl<S: GenServer> ChildStart for ServerStart<S> {
    fn start(&mut self, on_exit: OnExit) -> Result<Box<dyn RunningChild>, OtpError> {
        let args = (self.args)();
        let shared = spawn_into(&self.server.slot, args, Some(on_exit))?;
        Ok(Box::new(ServerChild {
            slot: self.server.slot.clone(),
            shared,
        }))
    }
}

impl<S: GenServer> RunningChild for ServerChild<S> {
    fn request_stop(&self) {
        ServerChild::request_stop(self);
    }
    fn wait_exit(&self, timeout: Option<Duration>) -> bool {
        ServerChild::wait_exit(self, timeout)
    }
    fn kill(&mut self) {
        ServerChild::kill(self);
    }
    fn join(&mut self) {
        ServerChild::join(self);
    }
}

struct SupervisorStart {
    spec: Box<dyn FnMut() -> SupervisorSpec + Send>,
}

impl ChildStart for SupervisorStart {
    fn start(&mut self, on_exit: OnExit) -> Result<Box<dyn RunningChild>, OtpError> {
        let sup = Supervisor::start_linked((self.spec)(), Some(on_exit))?;
        Ok(Box::new(sup))
    }
}

impl RunningChild for Supervisor {
    fn request_stop(&self) {
        let _ = self.tx.send(SupMsg::Stop);
    }
    fn wait_exit(&self, timeout: Option<Duration>) -> bool {
        self.shared.wait(timeout).is_some()
    }
    fn kill(&mut self) {
        let _ = self.tx.send(SupMsg::Stop);
        self.join.take(); // detach
    }
    fn join(&mut self) {
        if let Some(j) = self.join.take() {
            let _ = j.join();
        }
    }
}

/// One child of a supervisor: an id, how to start it, when to restart it, how to stop it.
pub struct ChildSpec {
    id: String,
    restart: Restart,
    shutdown: Shutdown,
    start: Box<dyn ChildStart>,
}

impl std::fmt::Debug for ChildSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChildSpec")
            .field("id", &self.id)
            .field("restart", &self.restart)
            .field("shutdown", &self.shutdown)
            .finish()
    }
}

impl ChildSpec {
    /// A server child on a thread named `thread_name`, and the handle to it that stays valid
    /// across restarts. `args` is called on every (re)start. Defaults: permanent, 5 s shutdown.
    pub fn server<S: GenServer>(
        id: impl Into<String>,
        thread_name: impl Into<String>,
        args: impl FnMut() -> S::Args + Send + 'static,
    ) -> (ChildSpec, Server<S>) {
        let server = Server::unstarted(thread_name);
        (ChildSpec::for_server(id, &server, args), server)
    }

    /// A server child started into an existing handle (made with [`Server::unstarted`] or taken
    /// from an earlier spec), so a spec factory for a nested supervisor can keep handles stable.
    pub fn for_server<S: GenServer>(
        id: impl Into<String>,
        server: &Server<S>,
        args: impl FnMut() -> S::Args + Send + 'static,
    ) -> ChildSpec {
        ChildSpec {
            id: id.into(),
            restart: Restart::Permanent,
            shutdown: Shutdown::Timeout(Duration::from_secs(5)),
            start: Box::new(ServerStart {
                server: server.clone(),
                args: Box::new(args),
            }),
        }
    }

    /// A supervisor child: `spec` is called on every (re)start. Defaults: permanent, infinity.
    pub fn supervisor(
        id: impl Into<String>,
        spec: impl FnMut() -> SupervisorSpec + Send + 'static,
    ) -> ChildSpec {
        ChildSpec {
            id: id.into(),
            restart: Restart::Permanent,
            shutdown: Shutdown::Infinity,
            start: Box::new(SupervisorStart {
                spec: Box::new(spec),
            }),
        }
    }

    /// Sets the restart type.
    pub fn restart(mut self, restart: Restart) -> Self {
        self.restart = restart;
        self
    }

    /// Sets the shutdown policy.
    pub fn shutdown(mut self, shutdown: Shutdown) -> Self {
        self.shutdown = shutdown;
        self
    }

    /// The child's id.
    pub fn id(&self) -> &str {
        &self.id
    }
}

/// What a supervisor does: strategy, intensity, children. Built with chained setters.
pub struct SupervisorSpec {
    name: String,
    strategy: Strategy,
    intensity: u32,
    period: Duration,
    clock: Arc<dyn RestartClock>,
    backoff: Option<RestartBackoff>,
    children: Vec<ChildSpec>,
    events: Vec<Sender<SupervisorEvent>>,
}

impl std::fmt::Debug for SupervisorSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SupervisorSpec")
            .field("name", &self.name)
            .field("strategy", &self.strategy)
            .field("intensity", &self.intensity)
            .field("period", &self.period)
            .field("backoff", &self.backoff)
            .field("children", &self.children)
            .finish()
    }
}

impl SupervisorSpec {
    /// A spec with OTP's defaults: at most 1 restart in 5 s, restarts at once (no backoff),
    /// thread name `freq-supervisor`.
    pub fn new(strategy: Strategy) -> Self {
        SupervisorSpec {
            name: "freq-supervisor".to_string(),
            strategy,
            intensity: 1,
            period: Duration::from_secs(5),
            clock: Arc::new(SystemRestartClock),
            backoff: None,
            children: Vec::new(),
            events: Vec::new(),
        }
    }

    /// Sets the supervisor thread's name.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// More than `max_restarts` restarts within `period` end the supervisor.
    pub fn intensity(mut self, max_restarts: u32, period: Duration) -> Self {
        self.intensity = max_restarts;
        self.period = period;
        self
    }

    /// Uses `clock` for the intensity window and the backoff delays (e.g. a
    /// [`ManualRestartClock`](crate::otp::ManualRestartClock) in tests).
    pub fn clock(mut self, clock: Arc<dyn RestartClock>) -> Self {
        self.clock = clock;
        self
    }

    /// Delays restarts by `backoff` (see the module docs for how it combines with the
    /// intensity). OTP has no such option: its supervisors restart at once.
    pub fn backoff(mut self, backoff: RestartBackoff) -> Self {
        self.backoff = Some(backoff);
        self
    }

    /// Appends a child; children start in the order added.
    pub fn child(mut self, child: ChildSpec) -> Self {
        self.children.push(child);
        self
    }

    /// Sends every [`SupervisorEvent`], from the first child start on, to `events`.
    pub fn events(mut self, events: Sender<SupervisorEvent>) -> Self {
        self.events.push(events);
        self
    }
}

/// Something a supervisor did, for observers (tests wait on these instead of sleeping).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SupervisorEvent {
    /// A child (re)started.
    ChildStarted {
        /// The child's id.
        id: String,
    },
    /// A child exited on its own, with this reason.
    ChildExited {
        /// The child's id.
        id: String,
        /// Why it exited.
        reason: ExitReason,
    },
    /// The supervisor stopped a child (shutdown, or as part of a one-for-all/rest-for-one
    /// restart).
    ChildTerminated {
        /// The child's id.
        id: String,
    },
    /// With a backoff: the child's restart waits `delay` (by the supervisor's clock); it is
    /// its `attempt`-th consecutive restart. (Sent once the restart is scheduled: a test moving
    /// a manual clock waits for it first.)
    RestartDelayed {
        /// The child's id.
        id: String,
        /// Its consecutive restart count, from 1.
        attempt: u32,
        /// How long the restart waits.
        delay: Duration,
    },
    /// The supervisor itself exited, with this reason, after stopping all its children.
    Stopped {
        /// Why it exited.
        reason: ExitReason,
    },
}

/// A child as reported by [`Supervisor::which_children`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ChildInfo {
    /// The child's id.
    pub id: String,
    /// Whether it is running.
    pub running: bool,
    /// Its restart type.
    pub restart: Restart,
    /// With a backoff, while it waits to be restarted: how long until its restart is due (by
    /// the supervisor's clock; zero when due now).
    pub restart_in: Option<Duration>,
    /// While it waits to be restarted: which consecutive restart that is (1 for the first
    /// after a healthy run; failed starts count). 0 when no restart waits.
    pub restart_attempt: u32,
}

/// A child whose restart the backoff holds back, as reported by [`Supervisor::restart_waits`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RestartWait {
    /// The child's id.
    pub id: String,
    /// How long until its restart is due (by the supervisor's clock; zero when due now).
    pub restart_in: Duration,
    /// Which consecutive restart it is (1 for the first after a healthy run).
    pub attempt: u32,
}

type Reply<T> = SyncSender<Result<T, OtpError>>;

enum SupMsg {
    ChildExit {
        key: u64,
        reason: ExitReason,
    },
    Stop,
    StartChild(ChildSpec, Reply<()>),
    TerminateChild(String, Reply<()>),
    RestartChild(String, Reply<()>),
    DeleteChild(String, Reply<()>),
    WhichChildren(Reply<Vec<ChildInfo>>),
    Subscribe(Sender<SupervisorEvent>),
    /// The clock moved (a manual clock's `advance`): look at the delayed restarts again.
    Tick,
}

struct SupShared {
    exit: Mutex<Option<ExitReason>>,
    cond: Condvar,
    /// The delayed restarts (id, due, attempt), published by the supervisor thread whenever
    /// they change, so they can be read without a message.
    waits: Mutex<Vec<(String, Instant, u32)>>,
    clock: Arc<dyn RestartClock>,
}

impl SupShared {
    fn finish(&self, reason: ExitReason) {
        *self.exit.lock() = Some(reason);
        self.cond.notify_all();
    }

    fn wait(&self, timeout: Option<Duration>) -> Option<ExitReason> {
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        let mut g = self.exit.lock();
        while g.is_none() {
            match deadline {
                None => self.cond.wait(&mut g),
                Some(d) => {
                    if self.cond.wait_until(&mut g, d).timed_out() {
                        break;
                    }
                }
            }
        }
        g.clone()
    }
}

/// A running supervisor, on its own named thread. Dropping it stops the supervisor (children in
/// reverse start order) and joins its thread.
pub struct Supervisor {
    tx: Sender<SupMsg>,
    shared: Arc<SupShared>,
    join: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor")
            .field("exit_reason", &self.exit_reason())
            .finish()
    }
}

impl Supervisor {
    /// Starts the supervisor thread and its children, in order, and waits for them. If a child
    /// fails to start, the ones already started are stopped in reverse order and the error is
    /// [`OtpError::ChildStartFailed`].
    pub fn start(spec: SupervisorSpec) -> Result<Supervisor, OtpError> {
        Self::start_linked(spec, None)
    }

    fn start_linked(spec: SupervisorSpec, on_exit: Option<OnExit>) -> Result<Supervisor, OtpError> {
        let (tx, rx) = mpsc::channel();
        let shared = Arc::new(SupShared {
            exit: Mutex::new(None),
            cond: Condvar::new(),
            waits: Mutex::new(Vec::new()),
            clock: Arc::clone(&spec.clock),
        });
        let (started_tx, started_rx) = mpsc::sync_channel(1);
        let state_tx = tx.clone();
        let thread_shared = shared.clone();
        let join = thread::Builder::new()
            .name(spec.name.clone())
            .spawn(move || {
                supervisor_thread(spec, state_tx, rx, thread_shared, started_tx, on_exit)
            })?;
        match started_rx.recv() {
            Ok(Ok(())) => Ok(Supervisor {
                tx,
                shared,
                join: Some(join),
            }),
            Ok(Err(e)) => {
                let _ = join.join();
                Err(e)
            }
            Err(_) => {
                let _ = join.join();
                Err(OtpError::NoProc)
            }
        }
    }

    fn request<T>(&self, make: impl FnOnce(Reply<T>) -> SupMsg) -> Result<T, OtpError> {
        let (rtx, rrx) = mpsc::sync_channel(1);
        self.tx.send(make(rtx)).map_err(|_| OtpError::NoProc)?;
        rrx.recv().map_err(|_| OtpError::NoProc)?
    }

    /// Adds and starts a child (dynamic children; with a `for_server` spec whose `args` closure
    /// captures per-child arguments this is OTP's `simple_one_for_one` `start_child/2`).
    /// Errors: [`OtpError::DuplicateChild`], the child's start error, [`OtpError::NoProc`].
    pub fn start_child(&self, child: ChildSpec) -> Result<(), OtpError> {
        self.request(|r| SupMsg::StartChild(child, r))
    }

    /// Starts a server child from a value of its arguments (OTP's `simple_one_for_one`
    /// `start_child(Sup, Args)`): the child is `restart`, with the default 5 s shutdown, and each
    /// restart gets a clone of `args`. Returns the handle, which stays valid across restarts.
    pub fn start_server_child<S: GenServer>(
        &self,
        id: impl Into<String>,
        thread_name: impl Into<String>,
        args: S::Args,
        restart: Restart,
    ) -> Result<Server<S>, OtpError>
    where
        S::Args: Clone,
    {
        let (spec, server) = ChildSpec::server::<S>(id, thread_name, move || args.clone());
        self.start_child(spec.restart(restart))?;
        Ok(server)
    }

    /// Stops a child by its shutdown policy; its spec is kept (a temporary child's is dropped).
    pub fn terminate_child(&self, id: &str) -> Result<(), OtpError> {
        self.request(|r| SupMsg::TerminateChild(id.to_string(), r))
    }

    /// Starts a stopped child again. Error: [`OtpError::ChildRunning`] if it is running.
    pub fn restart_child(&self, id: &str) -> Result<(), OtpError> {
        self.request(|r| SupMsg::RestartChild(id.to_string(), r))
    }

    /// Forgets a stopped child. Error: [`OtpError::ChildRunning`] if it is running.
    pub fn delete_child(&self, id: &str) -> Result<(), OtpError> {
        self.request(|r| SupMsg::DeleteChild(id.to_string(), r))
    }

    /// The children, in start order.
    pub fn which_children(&self) -> Result<Vec<ChildInfo>, OtpError> {
        self.request(SupMsg::WhichChildren)
    }

    /// The children whose restart the backoff holds back, read without a message (so it
    /// answers at once even while the supervisor is busy starting or stopping a child). Empty
    /// without a backoff, and once the supervisor has exited.
    pub fn restart_waits(&self) -> Vec<RestartWait> {
        let now = self.shared.clock.now();
        self.shared
            .waits
            .lock()
            .iter()
            .map(|(id, due, attempt)| RestartWait {
                id: id.clone(),
                restart_in: due.saturating_duration_since(now),
                attempt: *attempt,
            })
            .collect()
    }

    /// A receiver of the supervisor's events from now on.
    pub fn subscribe(&self) -> Result<Receiver<SupervisorEvent>, OtpError> {
        let (etx, erx) = mpsc::channel();
        self.tx
            .send(SupMsg::Subscribe(etx))
            .map_err(|_| OtpError::NoProc)?;
        Ok(erx)
    }

    /// Why the supervisor exited, if it has.
    pub fn exit_reason(&self) -> Option<ExitReason> {
        self.shared.exit.lock().clone()
    }

    /// Waits up to `timeout` for the supervisor to exit; its reason, if it did.
    pub fn wait_exit(&self, timeout: Duration) -> Option<ExitReason> {
        self.shared.wait(Some(timeout))
    }

    /// Stops the children in reverse start order, then the supervisor; joins its thread.
    /// Returns the supervisor's exit reason (`Shutdown`, or an earlier reason if it had already
    /// exited).
    pub fn stop(mut self) -> ExitReason {
        self.shutdown()
    }

    fn shutdown(&mut self) -> ExitReason {
        let _ = self.tx.send(SupMsg::Stop);
        let reason = self.shared.wait(None).unwrap_or(ExitReason::Shutdown);
        if let Some(j) = self.join.take() {
            let _ = j.join();
        }
        reason
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        if self.join.is_some() {
            self.shutdown();
        }
    }
}

struct Child {
    id: String,
    restart: Restart,
    shutdown: Shutdown,
    start: Box<dyn ChildStart>,
    running: Option<(u64, Box<dyn RunningChild>)>,
    /// When (by the clock) its last start happened.
    started_at: Option<Instant>,
    /// With a backoff: its consecutive restarts so far.
    attempts: u32,
    /// With a backoff, while it waits to be restarted: when the restart is due.
    due: Option<Instant>,
}

impl Child {
    fn new(spec: ChildSpec) -> Self {
        Child {
            id: spec.id,
            restart: spec.restart,
            shutdown: spec.shutdown,
            start: spec.start,
            running: None,
            started_at: None,
            attempts: 0,
            due: None,
        }
    }
}

struct State {
    strategy: Strategy,
    intensity: u32,
    period: Duration,
    clock: Arc<dyn RestartClock>,
    backoff: Option<RestartBackoff>,
    children: Vec<Child>,
    restarts: VecDeque<Instant>,
    tx: Sender<SupMsg>,
    events: Vec<Sender<SupervisorEvent>>,
    /// Where the delayed restarts are published (see [`Supervisor::restart_waits`]).
    waits: Option<Arc<SupShared>>,
}

/// The supervisor must exit with this reason.
struct Escalate(ExitReason);

impl State {
    /// Publishes the delayed restarts.
    fn publish_waits(&self) {
        let Some(shared) = &self.waits else { return };
        let now: Vec<(String, Instant, u32)> = self
            .children
            .iter()
            .filter_map(|c| c.due.map(|d| (c.id.clone(), d, c.attempts)))
            .collect();
        *shared.waits.lock() = now;
    }

    fn emit(&mut self, e: SupervisorEvent) {
        self.events.retain(|s| s.send(e.clone()).is_ok());
    }

    fn index(&self, id: &str) -> Option<usize> {
        self.children.iter().position(|c| c.id == id)
    }

    fn start_child(&mut self, i: usize) -> Result<(), OtpError> {
        let key = next_id();
        let tx = self.tx.clone();
        let on_exit: OnExit = Box::new(move |reason| {
            let _ = tx.send(SupMsg::ChildExit {
                key,
                reason: reason.clone(),
            });
        });
        // The start closure is user code running on the supervisor thread: a panic in it must
        // not kill the supervisor, it is a failed start.
        // Its run is measured from before the start (a clock read after it could already
        // include time that passed while it ran).
        let started_at = self.clock.now();
        let start = &mut self.children[i].start;
        let running = catch_unwind(AssertUnwindSafe(|| start.start(on_exit)))
            .unwrap_or_else(|p| Err(OtpError::InitFailed(ExitReason::Panic(panic_message(&*p)))))?;
        self.children[i].running = Some((key, running));
        self.children[i].started_at = Some(started_at);
        if self.children[i].due.take().is_some() {
            self.publish_waits();
        }
        let id = self.children[i].id.clone();
        self.emit(SupervisorEvent::ChildStarted { id });
        Ok(())
    }

    fn stop_child(&mut self, i: usize) {
        let Some((_, mut child)) = self.children[i].running.take() else {
            return;
        };
        match self.children[i].shutdown {
            Shutdown::BrutalKill => child.kill(),
            Shutdown::Timeout(d) => {
                child.request_stop();
                if child.wait_exit(Some(d)) {
                    child.join();
                } else {
                    child.kill();
                }
            }
            Shutdown::Infinity => {
                child.request_stop();
                child.wait_exit(None);
                child.join();
            }
        }
        let id = self.children[i].id.clone();
        self.emit(SupervisorEvent::ChildTerminated { id });
    }

    fn stop_all(&mut self) {
        for i in (0..self.children.len()).rev() {
            self.stop_child(i);
        }
    }

    /// Records one restart; `Err` if that exceeds the intensity.
    fn record_restart(&mut self) -> Result<(), Escalate> {
        let now = self.clock.now();
        self.restarts.push_back(now);
        while let Some(&t) = self.restarts.front() {
            if now.saturating_duration_since(t) > self.period {
                self.restarts.pop_front();
            } else {
                break;
            }
        }
        if self.restarts.len() > self.intensity as usize {
            Err(Escalate(ExitReason::ReachedMaxRestartIntensity))
        } else {
            Ok(())
        }
    }

    /// Starts the (stopped) children with these ids, in order; a failed start counts as another
    /// restart and is retried.
    fn restart_ids(&mut self, ids: Vec<String>) -> Result<(), Escalate> {
        for id in ids {
            while let Some(i) = self.index(&id) {
                match self.start_child(i) {
                    Ok(()) => break,
                    Err(_) => self.record_restart()?,
                }
            }
        }
        Ok(())
    }

    fn on_child_exit(&mut self, key: u64, reason: ExitReason) -> Result<(), Escalate> {
        let Some(i) = self
            .children
            .iter()
            .position(|c| c.running.as_ref().is_some_and(|(k, _)| *k == key))
        else {
            return Ok(()); // stale: a child we stopped ourselves
        };
        if let Some((_, mut child)) = self.children[i].running.take() {
            child.join();
        }
        let id = self.children[i].id.clone();
        self.emit(SupervisorEvent::ChildExited {
            id: id.clone(),
            reason: reason.clone(),
        });
        let restart = match self.children[i].restart {
            Restart::Permanent => true,
            Restart::Transient => !reason.is_normal(),
            Restart::Temporary => false,
        };
        if !restart {
            if self.children[i].restart == Restart::Temporary {
                self.children.remove(i);
            }
            return Ok(());
        }
        let now = self.clock.now();
        self.record_restart()?;
        let affected: Vec<usize> = match self.strategy {
            Strategy::OneForOne => vec![i],
            Strategy::OneForAll => (0..self.children.len()).collect(),
            Strategy::RestForOne => (i..self.children.len()).collect(),
        };
        for &j in affected.iter().rev() {
            self.stop_child(j);
            // A child waiting for its own delayed restart is now part of this one.
            self.children[j].due = None;
        }
        // Temporary children stopped on the way are not restarted, and are forgotten.
        let ids: Vec<String> = affected
            .iter()
            .filter(|&&j| j == i || self.children[j].restart != Restart::Temporary)
            .map(|&j| self.children[j].id.clone())
            .collect();
        let mut j = 0;
        self.children.retain(|c| {
            let keep = !(affected.contains(&j) && j != i && c.restart == Restart::Temporary);
            j += 1;
            keep
        });
        match self.backoff {
            None => self.restart_ids(ids),
            Some(backoff) => {
                // Temporary siblings may have been forgotten above: find the child again.
                let Some(i) = self.index(&id) else {
                    return Ok(());
                };
                let child = &mut self.children[i];
                let ran = child
                    .started_at
                    .map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
                child.attempts = if ran >= backoff.healthy_run() {
                    1
                } else {
                    child.attempts.saturating_add(1)
                };
                let attempt = child.attempts;
                self.delay_ids(&ids, now, attempt, backoff.delay(attempt));
                Ok(())
            }
        }
    }

    /// With a backoff: schedules the (stopped) children `ids` to restart `delay` after `now`,
    /// the restart being their `attempt`-th in a row.
    fn delay_ids(&mut self, ids: &[String], now: Instant, attempt: u32, delay: Duration) {
        let due = now.checked_add(delay).unwrap_or(now);
        let delayed: Vec<String> = ids
            .iter()
            .filter(|id| self.index(id).is_some())
            .cloned()
            .collect();
        for id in &delayed {
            if let Some(j) = self.index(id) {
                self.children[j].due = Some(due);
            }
        }
        // Published before the events, so an observer of an event sees the wait.
        self.publish_waits();
        for id in delayed {
            self.emit(SupervisorEvent::RestartDelayed { id, attempt, delay });
        }
    }

    /// The earliest delayed restart, if any.
    fn next_due(&self) -> Option<Instant> {
        self.children.iter().filter_map(|c| c.due).min()
    }

    /// Starts, in order, the children whose delayed restart is due. A start that fails counts
    /// as another restart and is delayed again, with the children after it in this batch (so a
    /// group restarts in order).
    fn run_due(&mut self) -> Result<(), Escalate> {
        let now = self.clock.now();
        let batch: Vec<String> = self
            .children
            .iter()
            .filter(|c| c.due.is_some_and(|d| d <= now))
            .map(|c| c.id.clone())
            .collect();
        for (k, id) in batch.iter().enumerate() {
            let Some(i) = self.index(id) else { continue };
            if self.start_child(i).is_ok() {
                continue;
            }
            self.record_restart()?;
            let Some(backoff) = self.backoff else {
                return Ok(());
            };
            let child = &mut self.children[i];
            child.attempts = child.attempts.saturating_add(1);
            let attempt = child.attempts;
            self.delay_ids(&batch[k..], now, attempt, backoff.delay(attempt));
            break;
        }
        Ok(())
    }

    fn handle_request(&mut self, msg: SupMsg) -> Option<Result<(), Escalate>> {
        match msg {
            SupMsg::ChildExit { key, reason } => return Some(self.on_child_exit(key, reason)),
            SupMsg::Stop => return Some(Err(Escalate(ExitReason::Shutdown))),
            SupMsg::StartChild(spec, reply) => {
                let r = if self.index(&spec.id).is_some() {
                    Err(OtpError::DuplicateChild(spec.id))
                } else {
                    self.children.push(Child::new(spec));
                    let i = self.children.len() - 1;
                    let r = self.start_child(i);
                    if r.is_err() {
                        self.children.pop();
                    }
                    r
                };
                let _ = reply.send(r);
            }
            SupMsg::TerminateChild(id, reply) => {
                let r = match self.index(&id) {
                    None => Err(OtpError::NoSuchChild(id)),
                    Some(i) => {
                        self.stop_child(i);
                        // A delayed restart is cancelled: the child stays stopped.
                        self.children[i].due = None;
                        if self.children[i].restart == Restart::Temporary {
                            self.children.remove(i);
                        }
                        Ok(())
                    }
                };
                let _ = reply.send(r);
            }
            SupMsg::RestartChild(id, reply) => {
                let r = match self.index(&id) {
                    None => Err(OtpError::NoSuchChild(id)),
                    Some(i) if self.children[i].running.is_some() => {
                        Err(OtpError::ChildRunning(id))
                    }
                    Some(i) => self.start_child(i),
                };
                let _ = reply.send(r);
            }
            SupMsg::DeleteChild(id, reply) => {
                let r = match self.index(&id) {
                    None => Err(OtpError::NoSuchChild(id)),
                    Some(i) if self.children[i].running.is_some() => {
                        Err(OtpError::ChildRunning(id))
                    }
                    Some(i) => {
                        self.children.remove(i);
                        Ok(())
                    }
                };
                let _ = reply.send(r);
            }
            SupMsg::WhichChildren(reply) => {
                let now = self.clock.now();
                let list = self
                    .children
                    .iter()
                    .map(|c| ChildInfo {
                        id: c.id.clone(),
                        running: c.running.is_some(),
                        restart: c.restart,
                        restart_in: c.due.map(|d| d.saturating_duration_since(now)),
                        restart_attempt: if c.due.is_some() { c.attempts } else { 0 },
                    })
                    .collect();
                let _ = reply.send(Ok(list));
            }
            SupMsg::Subscribe(s) => self.events.push(s),
            SupMsg::Tick => {}
        }
        None
    }
}

fn supervisor_thread(
    spec: SupervisorSpec,
    tx: Sender<SupMsg>,
    rx: Receiver<SupMsg>,
    shared: Arc<SupShared>,
    started: SyncSender<Result<(), OtpError>>,
    on_exit: Option<OnExit>,
) {
    let mut state = State {
        strategy: spec.strategy,
        intensity: spec.intensity,
        period: spec.period,
        clock: spec.clock,
        backoff: spec.backoff,
        children: Vec::with_capacity(spec.children.len()),
        restarts: VecDeque::new(),
        tx,
        events: spec.events,
        waits: Some(Arc::clone(&shared)),
    };
    if state.backoff.is_some() {
        // A manual clock wakes the supervisor when it moves (a real one needs no waking: the
        // supervisor waits on its mailbox until the next restart is due).
        let tick = state.tx.clone();
        state
            .clock
            .on_advance(Box::new(move || tick.send(SupMsg::Tick).is_ok()));
    }
    for c in spec.children {
        let id = c.id.clone();
        state.children.push(Child::new(c));
        let i = state.children.len() - 1;
        if let Err(e) = state.start_child(i) {
            state.stop_all();
            shared.finish(ExitReason::Error(ExitError::msg(format!(
                "child {id:?} failed to start"
            ))));
            let _ = started.send(Err(OtpError::ChildStartFailed {
                id,
                source: Box::new(e),
            }));
            return;
        }
    }
    let _ = started.send(Ok(()));
    drop(started);

    let reason = loop {
        if let Err(Escalate(reason)) = state.run_due() {
            break reason;
        }
        // Wait for a message, or (with a restart delayed) until it is due: never a sleep, so
        // the supervisor answers requests and other children's exits while it waits.
        let wait = state.next_due().map(|due| state.clock.wait_hint(due));
        let msg = match wait {
            None | Some(None) => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            Some(Some(d)) => rx.recv_timeout(d),
        };
        let msg = match msg {
            Ok(msg) => msg,
            Err(RecvTimeoutError::Timeout) => continue,
            // Cannot happen: the state holds a sender.
            Err(RecvTimeoutError::Disconnected) => break ExitReason::Shutdown,
        };
        let escalate = state.handle_request(msg);
        // A request may have cancelled a delayed restart (terminate, delete, restart_child).
        state.publish_waits();
        if let Some(Err(Escalate(reason))) = escalate {
            break reason;
        }
    };
    state.stop_all();
    for c in &mut state.children {
        c.due = None;
    }
    state.publish_waits();
    state.emit(SupervisorEvent::Stopped {
        reason: reason.clone(),
    });
    shared.finish(reason.clone());
    drop(state);
    if let Some(f) = on_exit {
        f(&reason);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::otp::clock::ManualRestartClock;

    fn state(intensity: u32, period: Duration, clock: Arc<ManualRestartClock>) -> State {
        let (tx, _rx) = mpsc::channel();
        State {
            strategy: Strategy::OneForOne,
            intensity,
            period,
            clock,
            backoff: None,
            children: Vec::new(),
            restarts: VecDeque::new(),
            tx,
            events: Vec::new(),
            waits: None,
        }
    }

    #[test]
    fn intensity_window_slides_with_the_clock() {
        let clock = Arc::new(ManualRestartClock::new());
        let mut s = state(2, Duration::from_secs(5), clock.clone());
        assert!(s.record_restart().is_ok());
        assert!(s.record_restart().is_ok());
        clock.advance(Duration::from_secs(6));
        // The two old restarts left the window.
        assert!(s.record_restart().is_ok());
        assert!(s.record_restart().is_ok());
        assert!(s.record_restart().is_err());
    }

    #[test]
    fn zero_intensity_allows_no_restart() {
        let mut s = state(
            0,
            Duration::from_secs(5),
            Arc::new(ManualRestartClock::new()),
        );
        assert!(s.record_restart().is_err());
    }
}
