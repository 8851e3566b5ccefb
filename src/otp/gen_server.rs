//! The generic server: the [`GenServer`] trait, its [`Context`], and the [`Server`] handle.
//!
//! Erlang: <https://www.erlang.org/doc/apps/stdlib/gen_server.html>

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::{Arc, Weak};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, RwLock};

use super::error::{ExitReason, OtpError};
use super::reply::{Backoff, InstanceShared, ReplyCell, ReplyTo};
use super::timer::{TimerEntry, TimerQueue, TimerRef};

/// The default call timeout, as in OTP: 5 seconds.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// `handle_drained` also runs after this many messages in a row, so a mailbox that never empties
/// cannot postpone a batch flush (and the deferred replies waiting on it) forever.
pub const MAX_RUN: u32 = 1024;

/// A generic server: the implementing type is the server's state.
///
/// Callbacks run one at a time on the server's own named thread. Each gets a [`Context`] to cast
/// to itself, set timers and stop. A callback that returns `Err` stops the server with
/// [`ExitReason::Error`] (after [`GenServer::terminate`]); a callback that panics stops it with
/// [`ExitReason::Panic`] *without* running `terminate` (the state may be half-updated), but the
/// state is always dropped, releasing its resources, before the exit is reported to callers and to
/// a supervisor.
pub trait GenServer: Sized + Send + 'static {
    /// What `init` receives.
    type Args: Send + 'static;
    /// Requests that expect a reply ([`Server::call`]).
    type Call: Send + 'static;
    /// Replies to calls.
    type Reply: Send + 'static;
    /// Requests without a reply ([`Server::cast`]).
    type Cast: Send + 'static;
    /// Other input: timer messages ([`Context::send_after`]) and plain sends ([`Server::send`]).
    type Info: Send + 'static;
    /// The error a callback may return; its `Display` text becomes the [`ExitReason::Error`].
    type Error: std::fmt::Display + Send + 'static;

    /// Builds the state. Runs on the server's thread; `Server::start` waits for it.
    fn init(args: Self::Args, ctx: &mut Context<Self>) -> Result<Self, Self::Error>;

    /// Handles a call. Reply now with `from.reply(..)`, or keep `from` and reply later.
    fn handle_call(
        &mut self,
        request: Self::Call,
        from: ReplyTo<Self::Reply>,
        ctx: &mut Context<Self>,
    ) -> Result<(), Self::Error>;

    /// Handles a cast. The default ignores it.
    fn handle_cast(&mut self, msg: Self::Cast, ctx: &mut Context<Self>) -> Result<(), Self::Error> {
        let _ = (msg, ctx);
        Ok(())
    }

    /// Handles a timer message or a plain send. The default ignores it.
    fn handle_info(&mut self, msg: Self::Info, ctx: &mut Context<Self>) -> Result<(), Self::Error> {
        let _ = (msg, ctx);
        Ok(())
    }

    /// Runs after a run of messages, once the mailbox is momentarily empty and before the server
    /// waits (or after [`MAX_RUN`] messages in a row): the place to flush a batch and answer the
    /// deferred [`ReplyTo`]s (group commit).
    /// Also runs before `terminate` on an orderly stop if messages were handled since the last
    /// call. The default does nothing.
    fn handle_drained(&mut self, ctx: &mut Context<Self>) -> Result<(), Self::Error> {
        let _ = ctx;
        Ok(())
    }

    /// Runs when the server stops in an orderly way: a stop request, [`Context::stop`], or a
    /// callback returning `Err`. It does **not** run after a panic, after a failed `init`, or after
    /// a brutal kill. The state is dropped right after it.
    fn terminate(&mut self, reason: &ExitReason) {
        let _ = reason;
    }
}

/// A message in a server's mailbox.
pub(crate) enum Msg<S: GenServer> {
    Call(S::Call, ReplyTo<S::Reply>),
    Cast(S::Cast),
    Info(S::Info),
    Timer(TimerEntry<S::Info>),
    Stop(ExitReason),
}

/// What a callback can do besides changing the state.
pub struct Context<S: GenServer> {
    tx: Sender<Msg<S>>,
    slot: Weak<Slot<S>>,
    timers: TimerQueue<S::Info>,
    stop: Option<ExitReason>,
}

impl<S: GenServer> Context<S> {
    /// Queues a cast to this server itself (delivered after the messages already queued).
    pub fn cast_self(&self, msg: S::Cast) {
        // Cannot fail: the server's own thread holds the receiver while it runs callbacks.
        let _ = self.tx.send(Msg::Cast(msg));
    }

    /// Queues an info message to this server itself.
    pub fn send_self(&self, msg: S::Info) {
        let _ = self.tx.send(Msg::Info(msg));
    }

    /// Delivers `msg` to `handle_info` after `delay` (Erlang's `erlang:send_after/3`). The timer
    /// belongs to this server instance: it is dropped if the server exits first.
    pub fn send_after(&mut self, delay: Duration, msg: S::Info) -> TimerRef {
        let (entry, tref) = TimerEntry::new(deadline_after(delay), msg);
        self.timers.push(entry);
        tref
    }

    /// Delivers `msg` to `handle_info` at `deadline` (at once if it has passed); Erlang's
    /// `send_after` with `{abs, true}`. Timers with equal deadlines fire in the order set.
    pub fn send_at(&mut self, deadline: Instant, msg: S::Info) -> TimerRef {
        let (entry, tref) = TimerEntry::new(deadline, msg);
        self.timers.push(entry);
        tref
    }

    /// Asks the server to stop with `reason` once the current callback returns; `terminate`
    /// runs. (OTP's `{stop, Reason, State}`.)
    pub fn stop(&mut self, reason: ExitReason) {
        self.stop = Some(reason);
    }

    /// A handle to this server. Note: a handle stored in the server's own state keeps the server
    /// alive until it is stopped explicitly (a reference cycle). Returns `None` only while the
    /// last external handle is being dropped.
    pub fn handle(&self) -> Option<Server<S>> {
        self.slot.upgrade().map(|slot| Server { slot })
    }
}

fn deadline_after(delay: Duration) -> Instant {
    let now = Instant::now();
    // A delay too large to represent is as good as never.
    now.checked_add(delay)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600))
}

/// One running thread of a server.
pub(crate) struct Instance<S: GenServer> {
    tx: Sender<Msg<S>>,
    shared: Arc<InstanceShared>,
    join: Option<JoinHandle<()>>,
}

impl<S: GenServer> Instance<S> {
    /// Stops waiting for the thread: it exits on its own.
    fn detach(mut self) {
        self.join.take();
    }
    fn join(mut self) {
        if let Some(j) = self.join.take() {
            if j.thread().id() != thread::current().id() {
                let _ = j.join();
            }
        }
    }
}

/// Where a server handle points: the current instance, replaced on every restart.
pub(crate) struct Slot<S: GenServer> {
    thread_name: String,
    current: RwLock<Option<Instance<S>>>,
    generation: Mutex<u64>,
    generation_changed: Condvar,
}

impl<S: GenServer> Slot<S> {
    pub(crate) fn new(thread_name: String) -> Arc<Self> {
        Arc::new(Slot {
            thread_name,
            current: RwLock::new(None),
            generation: Mutex::new(0),
            generation_changed: Condvar::new(),
        })
    }

    /// Installs a freshly started instance, joining the (exited) one it replaces.
    fn install(&self, inst: Instance<S>) {
        let old = self.current.write().replace(inst);
        {
            let mut g = self.generation.lock();
            *g += 1;
        }
        self.generation_changed.notify_all();
        if let Some(old) = old {
            old.join();
        }
    }

    /// Removes `shared`'s instance from the slot if it is still the current one.
    fn take_if(&self, shared: &Arc<InstanceShared>) -> Option<Instance<S>> {
        let mut cur = self.current.write();
        if cur.as_ref().is_some_and(|i| Arc::ptr_eq(&i.shared, shared)) {
            cur.take()
        } else {
            None
        }
    }

    fn send_stop_to(&self, shared: &Arc<InstanceShared>, reason: ExitReason) {
        let cur = self.current.read();
        if let Some(i) = cur.as_ref().filter(|i| Arc::ptr_eq(&i.shared, shared)) {
            let _ = i.tx.send(Msg::Stop(reason));
        }
    }
}

impl<S: GenServer> Drop for Slot<S> {
    fn drop(&mut self) {
        if let Some(inst) = self.current.get_mut().take() {
            let _ = inst.tx.send(Msg::Stop(ExitReason::Shutdown));
            inst.join(); // detaches instead if we are on the server's own thread
        }
    }
}

/// Called on the server thread after the state is dropped: how a supervisor learns of an exit.
pub(crate) type OnExit = Box<dyn FnOnce(&ExitReason) + Send>;

/// Starts a new instance of `S` into `slot`: spawns the named thread, waits for `init`.
pub(crate) fn spawn_into<S: GenServer>(
    slot: &Arc<Slot<S>>,
    args: S::Args,
    on_exit: Option<OnExit>,
) -> Result<Arc<InstanceShared>, OtpError> {
    let (tx, rx) = mpsc::channel::<Msg<S>>();
    let shared = Arc::new(InstanceShared::new());
    let (started_tx, started_rx) = mpsc::sync_channel::<Result<(), OtpError>>(1);
    let ctx = Context {
        tx: tx.clone(),
        slot: Arc::downgrade(slot),
        timers: TimerQueue::new(),
        stop: None,
    };
    let thread_shared = shared.clone();
    let join = thread::Builder::new()
        .name(slot.thread_name.clone())
        .spawn(move || server_thread(args, ctx, rx, thread_shared, started_tx, on_exit))?;
    let started = started_rx
        .recv()
        .unwrap_or(Err(OtpError::InitFailed(ExitReason::Error(
            "server thread ended before init reported".into(),
        ))));
    match started {
        Ok(()) => {
            slot.install(Instance {
                tx,
                shared: shared.clone(),
                join: Some(join),
            });
            Ok(shared)
        }
        Err(e) => {
            let _ = join.join();
            Err(e)
        }
    }
}

/// The text of a panic payload.
pub(crate) fn panic_message(p: &(dyn Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}

enum LoopExit {
    /// Orderly: terminate runs.
    Stop(ExitReason),
    /// Brutal kill: terminate does not run.
    Killed,
}

fn server_thread<S: GenServer>(
    args: S::Args,
    mut ctx: Context<S>,
    rx: Receiver<Msg<S>>,
    shared: Arc<InstanceShared>,
    started: mpsc::SyncSender<Result<(), OtpError>>,
    on_exit: Option<OnExit>,
) {
    let _ = shared.thread.set(thread::current().id());
    let init = catch_unwind(AssertUnwindSafe(|| S::init(args, &mut ctx)));
    let mut state = match init {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            let reason = ExitReason::Error(e.to_string());
            fail_init(&shared, ctx, rx, &started, reason);
            return;
        }
        Err(p) => {
            let reason = ExitReason::Panic(panic_message(&*p));
            fail_init(&shared, ctx, rx, &started, reason);
            return;
        }
    };
    let _ = started.send(Ok(()));
    drop(started);

    let outcome = catch_unwind(AssertUnwindSafe(|| {
        run_loop(&mut state, &mut ctx, &rx, &shared)
    }));
    shared.dying.store(true, Ordering::Release);
    let (reason, run_terminate) = match outcome {
        Ok(LoopExit::Stop(r)) => (r, true),
        Ok(LoopExit::Killed) => (ExitReason::Killed, false),
        Err(p) => (ExitReason::Panic(panic_message(&*p)), false),
    };
    if run_terminate {
        let _ = catch_unwind(AssertUnwindSafe(|| state.terminate(&reason)));
    }
    // Release the state's resources (file locks, deferred replies) before anyone hears of the exit.
    let _ = catch_unwind(AssertUnwindSafe(move || drop(state)));
    drop(ctx);
    drop(rx);
    // Reply handles dropped unanswered by a callback that then panicked.
    shared.settle_dropped(true);
    shared.finish(reason.clone());
    if let Some(f) = on_exit {
        f(&reason);
    }
}

fn fail_init<S: GenServer>(
    shared: &InstanceShared,
    ctx: Context<S>,
    rx: Receiver<Msg<S>>,
    started: &mpsc::SyncSender<Result<(), OtpError>>,
    reason: ExitReason,
) {
    shared.dying.store(true, Ordering::Release);
    drop(ctx);
    drop(rx);
    shared.finish(reason.clone());
    let _ = started.send(Err(OtpError::InitFailed(reason)));
}

/// The exit reason a callback result calls for, after settling the reply handles the callback
/// dropped unanswered.
fn settle<S: GenServer>(
    r: Result<(), S::Error>,
    ctx: &Context<S>,
    shared: &InstanceShared,
) -> Option<ExitReason> {
    let err = r.err().map(|e| ExitReason::Error(e.to_string()));
    if shared.has_dropped.load(Ordering::Relaxed) {
        shared.settle_dropped(err.is_some() || ctx.stop.is_some());
    }
    err
}

fn run_loop<S: GenServer>(
    state: &mut S,
    ctx: &mut Context<S>,
    rx: &Receiver<Msg<S>>,
    shared: &InstanceShared,
) -> LoopExit {
    // Messages handled since handle_drained last ran.
    let mut run: u32 = 0;
    loop {
        if shared.killed.load(Ordering::Relaxed) {
            return LoopExit::Killed;
        }
        if let Some(reason) = ctx.stop.take() {
            return orderly_stop(state, ctx, shared, run > 0, reason);
        }
        if run >= MAX_RUN {
            run = 0;
            if let Some(r) = settle(state.handle_drained(ctx), ctx, shared) {
                return LoopExit::Stop(r);
            }
            continue;
        }
        if !ctx.timers.is_empty() {
            if let Some(info) = ctx.timers.pop_due(Instant::now()) {
                run += 1;
                if let Some(r) = settle(state.handle_info(info, ctx), ctx, shared) {
                    return LoopExit::Stop(r);
                }
                continue;
            }
        }
        let msg = match rx.try_recv() {
            Ok(m) => m,
            Err(TryRecvError::Empty) => {
                if run > 0 {
                    run = 0;
                    if let Some(r) = settle(state.handle_drained(ctx), ctx, shared) {
                        return LoopExit::Stop(r);
                    }
                    continue;
                }
                match wait_for_message(rx, ctx) {
                    Some(m) => m,
                    None => continue,
                }
            }
            // The context holds a sender, so this cannot happen; treat it as a normal stop.
            Err(TryRecvError::Disconnected) => return LoopExit::Stop(ExitReason::Normal),
        };
        if shared.killed.load(Ordering::Relaxed) {
            return LoopExit::Killed;
        }
        let result = match msg {
            Msg::Call(req, from) => state.handle_call(req, from, ctx),
            Msg::Cast(m) => state.handle_cast(m, ctx),
            Msg::Info(m) => state.handle_info(m, ctx),
            Msg::Timer(e) => {
                ctx.timers.push(e);
                continue;
            }
            Msg::Stop(reason) => return orderly_stop(state, ctx, shared, run > 0, reason),
        };
        run += 1;
        if let Some(r) = settle(result, ctx, shared) {
            return LoopExit::Stop(r);
        }
    }
}

fn orderly_stop<S: GenServer>(
    state: &mut S,
    ctx: &mut Context<S>,
    shared: &InstanceShared,
    dirty: bool,
    reason: ExitReason,
) -> LoopExit {
    if dirty {
        let r = state.handle_drained(ctx);
        shared.settle_dropped(true); // we are exiting whatever the result
        if let Err(e) = r {
            return LoopExit::Stop(ExitReason::Error(e.to_string()));
        }
    }
    LoopExit::Stop(reason)
}

/// Spins briefly, then blocks until a message or the next timer deadline (`None`).
fn wait_for_message<S: GenServer>(rx: &Receiver<Msg<S>>, ctx: &Context<S>) -> Option<Msg<S>> {
    let mut backoff = Backoff::new();
    while !backoff.is_completed() {
        match rx.try_recv() {
            Ok(m) => return Some(m),
            Err(TryRecvError::Empty) => backoff.snooze(),
            Err(TryRecvError::Disconnected) => return Some(Msg::Stop(ExitReason::Normal)),
        }
    }
    match ctx.timers.next_deadline() {
        None => rx.recv().ok(),
        Some(d) => {
            let now = Instant::now();
            if d <= now {
                return None;
            }
            match rx.recv_timeout(d - now) {
                Ok(m) => Some(m),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => Some(Msg::Stop(ExitReason::Normal)),
            }
        }
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A unique id for a server instance or supervisor child incarnation.
pub(crate) fn next_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

/// A handle to a server: cloneable, `Send + Sync`.
///
/// Dropping the **last** handle of a server that is still running stops it (reason
/// [`ExitReason::Shutdown`]) and joins its thread. A handle to a supervised server stays valid
/// across restarts, like a registered name: calls made after a restart reach the new instance
/// (see [`Server::generation`] and [`Server::wait_for_generation`]).
pub struct Server<S: GenServer> {
    pub(crate) slot: Arc<Slot<S>>,
}

impl<S: GenServer> Clone for Server<S> {
    fn clone(&self) -> Self {
        Server {
            slot: self.slot.clone(),
        }
    }
}

impl<S: GenServer> std::fmt::Debug for Server<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("thread_name", &self.slot.thread_name)
            .field("generation", &self.generation())
            .finish()
    }
}

impl<S: GenServer> Server<S> {
    /// Starts a server on a new OS thread called `thread_name` (e.g. `freq-shard-3`) and waits
    /// for its `init` (OTP's `gen_server:start_link`). Errors: [`OtpError::InitFailed`] if `init`
    /// returned an error or panicked, [`OtpError::Spawn`] if the thread could not be created.
    pub fn start(thread_name: impl Into<String>, args: S::Args) -> Result<Self, OtpError> {
        let server = Server::unstarted(thread_name);
        spawn_into(&server.slot, args, None)?;
        Ok(server)
    }

    /// A handle with no server behind it yet: calls fail with [`OtpError::NoProc`] until a
    /// supervisor starts an instance into it (see
    /// [`ChildSpec::for_server`](crate::otp::ChildSpec::for_server)).
    pub fn unstarted(thread_name: impl Into<String>) -> Self {
        Server {
            slot: Slot::new(thread_name.into()),
        }
    }

    /// The name of the server's thread.
    pub fn thread_name(&self) -> &str {
        &self.slot.thread_name
    }

    /// Calls the server and waits up to [`DEFAULT_CALL_TIMEOUT`] (5 s) for the reply.
    pub fn call(&self, request: S::Call) -> Result<S::Reply, OtpError> {
        self.call_timeout(request, DEFAULT_CALL_TIMEOUT)
    }

    /// Calls the server and waits up to `timeout` for the reply. Errors:
    /// [`OtpError::Timeout`], [`OtpError::NoProc`], [`OtpError::Exited`] (the server died with the
    /// call pending), [`OtpError::ReplyDropped`], [`OtpError::CallingSelf`].
    pub fn call_timeout(&self, request: S::Call, timeout: Duration) -> Result<S::Reply, OtpError> {
        let me = thread::current();
        let me_id = me.id();
        let cell = Arc::new(ReplyCell::new(me));
        {
            let cur = self.slot.current.read();
            let inst = cur.as_ref().ok_or(OtpError::NoProc)?;
            if inst.shared.thread.get() == Some(&me_id) {
                return Err(OtpError::CallingSelf);
            }
            let from = ReplyTo::new(cell.clone(), inst.shared.clone());
            if inst.tx.send(Msg::Call(request, from)).is_err() {
                return Err(OtpError::NoProc);
            }
        }
        cell.wait(timeout)
    }

    fn send_msg(&self, msg: Msg<S>) -> Result<(), OtpError> {
        let cur = self.slot.current.read();
        let inst = cur.as_ref().ok_or(OtpError::NoProc)?;
        inst.tx.send(msg).map_err(|_| OtpError::NoProc)
    }

    /// Sends a cast (no reply). Error: [`OtpError::NoProc`] if no server is running (Erlang's
    /// cast would silently drop the message; we tell you).
    pub fn cast(&self, msg: S::Cast) -> Result<(), OtpError> {
        self.send_msg(Msg::Cast(msg))
    }

    /// Sends a message to `handle_info` (Erlang's `Pid ! Msg`).
    pub fn send(&self, msg: S::Info) -> Result<(), OtpError> {
        self.send_msg(Msg::Info(msg))
    }

    /// Delivers `msg` to the current instance's `handle_info` after `delay`. The timer dies with
    /// that instance.
    pub fn send_after(&self, delay: Duration, msg: S::Info) -> Result<TimerRef, OtpError> {
        let (entry, tref) = TimerEntry::new(deadline_after(delay), msg);
        self.send_msg(Msg::Timer(entry))?;
        Ok(tref)
    }

    /// Delivers `msg` to the current instance's `handle_info` at `deadline` (at once if it has
    /// passed).
    pub fn send_at(&self, deadline: Instant, msg: S::Info) -> Result<TimerRef, OtpError> {
        let (entry, tref) = TimerEntry::new(deadline, msg);
        self.send_msg(Msg::Timer(entry))?;
        Ok(tref)
    }

    /// Stops the server with `reason` and waits until it has terminated (OTP's
    /// `gen_server:stop/2`): `terminate` has run, the state is dropped, the thread is joined.
    /// A supervisor restarts a stopped permanent child, as in OTP. Error: [`OtpError::NoProc`].
    pub fn stop(&self, reason: ExitReason) -> Result<(), OtpError> {
        let shared = {
            let cur = self.slot.current.read();
            let inst = cur.as_ref().ok_or(OtpError::NoProc)?;
            if inst.shared.thread.get() == Some(&thread::current().id()) {
                return Err(OtpError::CallingSelf);
            }
            inst.tx
                .send(Msg::Stop(reason))
                .map_err(|_| OtpError::NoProc)?;
            inst.shared.clone()
        };
        shared.wait_exit(None);
        if let Some(inst) = self.slot.take_if(&shared) {
            inst.join();
        }
        Ok(())
    }

    /// Monitors the current instance (Erlang's `erlang:monitor(process, Pid)`): the returned
    /// [`Monitor`] reports that instance's exit reason, after its state has been dropped. A
    /// restart behind the same handle is a new instance, not covered by this monitor. If the
    /// instance has already exited, the monitor reports its reason at once. Error:
    /// [`OtpError::NoProc`] if no instance was ever started or it was stopped and removed.
    pub fn monitor(&self) -> Result<Monitor, OtpError> {
        let cur = self.slot.current.read();
        let inst = cur.as_ref().ok_or(OtpError::NoProc)?;
        Ok(Monitor {
            shared: inst.shared.clone(),
        })
    }

    /// True if an instance is running (it may exit at any moment, of course).
    pub fn is_alive(&self) -> bool {
        let cur = self.slot.current.read();
        cur.as_ref().is_some_and(|i| {
            i.shared.exit_reason().is_none() && !i.shared.killed.load(Ordering::Relaxed)
        })
    }

    /// How many instances have been started behind this handle (1 after the first start, 2 after
    /// the first restart, ...).
    pub fn generation(&self) -> u64 {
        *self.slot.generation.lock()
    }

    /// Waits until at least `generation` instances have been started, up to `timeout`. Returns
    /// the generation reached, or [`OtpError::Timeout`]. Tests use this to see a restart happen
    /// without sleeping.
    pub fn wait_for_generation(&self, generation: u64, timeout: Duration) -> Result<u64, OtpError> {
        let deadline = deadline_after(timeout);
        let mut g = self.slot.generation.lock();
        while *g < generation {
            if self
                .slot
                .generation_changed
                .wait_until(&mut g, deadline)
                .timed_out()
                && *g < generation
            {
                return Err(OtpError::Timeout);
            }
        }
        Ok(*g)
    }

    /// Registers this handle under `name`, see [`register`](crate::otp::register).
    pub fn register(&self, name: impl Into<String>) -> Result<(), OtpError> {
        super::registry::register(name, self)
    }

    pub(crate) fn downgrade(&self) -> Weak<Slot<S>> {
        Arc::downgrade(&self.slot)
    }

    pub(crate) fn from_slot(slot: Arc<Slot<S>>) -> Self {
        Server { slot }
    }
}

/// Watches one server instance for its exit; see [`Server::monitor`].
#[derive(Clone)]
pub struct Monitor {
    shared: Arc<InstanceShared>,
}

impl std::fmt::Debug for Monitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Monitor")
            .field("exit_reason", &self.exit_reason())
            .finish()
    }
}

impl Monitor {
    /// The instance's exit reason, if it has exited.
    pub fn exit_reason(&self) -> Option<ExitReason> {
        self.shared.exit_reason()
    }

    /// Waits up to `timeout` for the instance to exit; its reason, if it did.
    pub fn wait(&self, timeout: Duration) -> Option<ExitReason> {
        self.shared.wait_exit(Some(timeout));
        self.shared.exit_reason()
    }
}

/// A supervised server incarnation, as the supervisor sees it.
pub(crate) struct ServerChild<S: GenServer> {
    pub(crate) slot: Arc<Slot<S>>,
    pub(crate) shared: Arc<InstanceShared>,
}

impl<S: GenServer> ServerChild<S> {
    pub(crate) fn request_stop(&self) {
        self.slot.send_stop_to(&self.shared, ExitReason::Shutdown);
    }
    pub(crate) fn wait_exit(&self, timeout: Option<Duration>) -> bool {
        self.shared.wait_exit(timeout)
    }
    /// Brutal kill: the handle refuses calls at once; the thread exits at its next message.
    pub(crate) fn kill(&self) {
        self.shared.killed.store(true, Ordering::Release);
        if let Some(inst) = self.slot.take_if(&self.shared) {
            let _ = inst.tx.send(Msg::Stop(ExitReason::Killed)); // wake it if parked
            inst.detach();
        }
    }
    pub(crate) fn join(&self) {
        if let Some(inst) = self.slot.take_if(&self.shared) {
            inst.join();
        }
    }
}
