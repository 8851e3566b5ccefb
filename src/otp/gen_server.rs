//! The generic server: the [`GenServer`] trait, its [`Context`], and the [`Server`] handle.
//!
//! Erlang: <https://www.erlang.org/doc/apps/stdlib/gen_server.html>

use std::any::Any;
use std::cell::RefCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::{Arc, Weak};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwapOption, Guard};
use parking_lot::{Condvar, Mutex};

use super::error::{ExitError, ExitReason, OtpError};
use super::registry::{self, Named};
use super::reply::{Backoff, InstanceShared, ReplyTo, RunningFrame, SpareCell};
use super::timer::{TimerEntry, TimerQueue, TimerRef};

/// The default call timeout, as in OTP: 5 seconds.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// `handle_drained` also runs after this many messages in a row, so a mailbox that never empties
/// cannot postpone a batch flush (and the deferred replies waiting on it) forever.
pub const MAX_RUN: u32 = 1024;

/// A generic server: the implementing type is the server's state.
///
/// Callbacks run one at a time on the server's own named thread (or, for a server that allows
/// them, calls may run on the caller's thread: [`Context::allow_direct_calls`]). Each gets a
/// [`Context`] to cast to itself, set timers and stop. A callback that returns `Err` stops the server with
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
    /// The error a callback may return. It becomes the [`ExitReason::Error`] itself (shared, not
    /// turned into text), so whoever hears of the exit can downcast it back to this type.
    type Error: std::error::Error + Send + Sync + 'static;

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
    /// Wakes the server thread after a direct call changed what it waits for (a new timer, a
    /// stop request, a crash).
    Wake,
}

/// The sending side of a server's mailbox, counting the messages sent and not yet handled.
///
/// The count is what makes direct calls safe: a caller runs a call on its own thread only when
/// it holds the state lock and the count is zero, that is, when every message sent before (by
/// anyone, including itself) has been handled, so a sender's messages keep their order.
pub(crate) struct Mailbox<S: GenServer> {
    tx: Sender<Msg<S>>,
    queued: Arc<AtomicUsize>,
}

impl<S: GenServer> Clone for Mailbox<S> {
    fn clone(&self) -> Self {
        Mailbox {
            tx: self.tx.clone(),
            queued: self.queued.clone(),
        }
    }
}

impl<S: GenServer> Mailbox<S> {
    /// Queues `msg`; gives it back if the server's thread has gone.
    fn send(&self, msg: Msg<S>) -> Result<(), Msg<S>> {
        self.queued.fetch_add(1, Ordering::AcqRel);
        self.tx.send(msg).map_err(|e| {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            e.0
        })
    }
}

/// What a callback can do besides changing the state.
pub struct Context<S: GenServer> {
    tx: Mailbox<S>,
    slot: Weak<Slot<S>>,
    timers: TimerQueue<S::Info>,
    stop: Option<ExitReason>,
    direct: Arc<AtomicBool>,
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

    /// Lets callers run this server's calls on their own threads ("direct calls"), or stops
    /// them doing so. Off by default.
    ///
    /// While it is on, a [`Server::call`] made when the mailbox is empty takes the server's
    /// state lock and runs `handle_call`, then `handle_drained`, on the *caller's* thread,
    /// instead of handing the request to the server's thread and waiting for the reply: two
    /// thread hops (a futex wake and a context switch each way when a side sleeps) become one
    /// uncontended lock. Nothing else changes: callbacks still run one at a time on the one
    /// state; a sender's messages are handled in the order sent (a call goes direct only when
    /// every message sent before it has been handled); casts, infos and timers still run on
    /// the server's thread; a direct call that returns `Err` or panics ends the server exactly
    /// as on its own thread (state dropped before the exit is reported, the caller gets
    /// [`OtpError::Exited`]). A call that finds the mailbox busy goes through it as usual. A
    /// call that waits its whole timeout for the lock (another callback holds it) gives up
    /// without running or queueing anything: [`OtpError::NotDelivered`], safe to retry. No
    /// lock of the server's handle is held while the callback runs, so a direct callback may
    /// ask its supervisor to terminate or restart its own server, as one on the server's thread
    /// may.
    ///
    /// Erlang has no equivalent because it does not need one: a BEAM message send between
    /// two processes on one scheduler costs no system call. Turn it on for a server whose
    /// callbacks are short and do not block; keep it off where batching the mailbox matters
    /// (group commit: a shard in `Sync` durability keeps its calls on its thread so that many
    /// callers share one flush).
    pub fn allow_direct_calls(&self, allow: bool) {
        self.direct.store(allow, Ordering::Release);
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

/// What the state lock guards: the state, its context, and a crash left by a direct call for
/// the server thread to report.
struct Inner<S: GenServer> {
    /// `None` once the instance has exited or crashed.
    state: Option<S>,
    ctx: Context<S>,
    /// The panic message of a direct call that crashed the server (the state is already gone).
    crashed: Option<String>,
}

/// One instance's state behind its lock, shared by the server thread and direct callers.
pub(crate) struct Core<S: GenServer> {
    inner: Mutex<Inner<S>>,
    queued: Arc<AtomicUsize>,
    direct: Arc<AtomicBool>,
}

/// How a callback ended.
enum Step {
    Go,
    /// Orderly exit: `terminate` runs.
    Exit(ExitReason),
    /// A panic: the state is already dropped.
    Crashed(String),
}

/// Runs one callback on the state under the lock, catching a panic: a panicking callback's
/// state is dropped here, before the lock is released, so no one (server thread or direct
/// caller) ever runs a callback on a half-updated state.
fn invoke<S: GenServer>(
    g: &mut Inner<S>,
    shared: &InstanceShared,
    f: impl FnOnce(&mut S, &mut Context<S>) -> Result<(), S::Error>,
) -> Step {
    let Some(state) = g.state.as_mut() else {
        return Step::Crashed("the server's state is gone".into());
    };
    let ctx = &mut g.ctx;
    match catch_unwind(AssertUnwindSafe(|| f(state, ctx))) {
        Ok(r) => match settle(r, &g.ctx, shared) {
            None => Step::Go,
            Some(reason) => Step::Exit(reason),
        },
        Err(p) => {
            shared.dying.store(true, Ordering::Release);
            let state = g.state.take();
            let _ = catch_unwind(AssertUnwindSafe(move || drop(state)));
            Step::Crashed(panic_message(&*p))
        }
    }
}

impl<S: GenServer> Core<S> {
    /// Runs `request` on the caller's thread if the server allows direct calls and nothing is
    /// queued before it; otherwise hands the message back to be sent. Waits up to `timeout` for
    /// the lock; if it is still held then, the request is dropped undelivered
    /// ([`OtpError::NotDelivered`]: it was neither run nor queued, so it is safe to retry).
    fn direct_call(
        &self,
        request: S::Call,
        from: ReplyTo<S::Reply>,
        shared: &InstanceShared,
        mailbox: &Mailbox<S>,
        timeout: Duration,
    ) -> Result<Option<Msg<S>>, OtpError> {
        let Some(mut guard) = self.inner.try_lock_for(timeout) else {
            return Err(OtpError::NotDelivered);
        };
        let g = &mut *guard;
        if self.queued.load(Ordering::Acquire) != 0
            || !self.direct.load(Ordering::Acquire)
            || g.state.is_none()
            || g.crashed.is_some()
            || g.ctx.stop.is_some()
            || shared.dying.load(Ordering::Acquire)
            || shared.killed.load(Ordering::Acquire)
        {
            return Ok(Some(Msg::Call(request, from)));
        }
        let _frame = RunningFrame::enter(shared);
        let timer_before = g.ctx.timers.next_deadline();
        let mut step = invoke(g, shared, |s, c| s.handle_call(request, from, c));
        if matches!(step, Step::Go) && g.ctx.stop.is_none() {
            // The mailbox was empty: this call is a run of one message.
            step = invoke(g, shared, |s, c| s.handle_drained(c));
        }
        let wake = match step {
            Step::Go => g.ctx.stop.is_some() || g.ctx.timers.next_deadline() != timer_before,
            Step::Exit(reason) => {
                g.ctx.stop = Some(reason);
                true
            }
            Step::Crashed(message) => {
                g.crashed = Some(message);
                true
            }
        };
        drop(guard);
        if wake {
            let _ = mailbox.send(Msg::Wake);
        }
        Ok(None)
    }
}

/// What callers use of one running instance: its mailbox, its state, its exit record.
///
/// A caller reads it from the slot without taking any lock ([`Slot::live`], an `arc-swap` load:
/// it keeps this instance's `Live` alive without ever blocking whoever replaces or removes it),
/// or, for a call, uses its own thread's copy while the slot still names this instance
/// ([`CallEntry`]); so no lock guard of the slot is held across user code, and a callback may
/// ask its supervisor to kill, restart or replace the very instance it runs in.
pub(crate) struct Live<S: GenServer> {
    /// Unique over the process ([`next_id`]): what [`Slot::live_id`] and the callers' copies
    /// ([`CallEntry`]) are compared by.
    id: u64,
    tx: Mailbox<S>,
    core: Arc<Core<S>>,
    shared: Arc<InstanceShared>,
}

/// One running thread of a server.
pub(crate) struct Instance<S: GenServer> {
    live: Arc<Live<S>>,
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
    /// The current instance's caller side, read lock-free by callers (a call uses its thread's
    /// copy while `live_id` still names it); kept equal to `current`'s, and changed only under
    /// `current`'s lock.
    live: ArcSwapOption<Live<S>>,
    /// `live`'s [`Live::id`] (0: none), changed with it: a caller holding a copy of the `Live`
    /// with this id may use it without loading `live` ([`CallEntry`]).
    live_id: AtomicU64,
    /// The current instance with its thread: changed by starts, stops and kills only.
    current: Mutex<Option<Instance<S>>>,
    /// How many instances have been started; read without a lock (every deallocation reads it),
    /// changed under `generation_lock` so that waiters on `generation_changed` miss no change.
    generation: AtomicU64,
    generation_lock: Mutex<()>,
    generation_changed: Condvar,
}

impl<S: GenServer> Slot<S> {
    pub(crate) fn new(thread_name: String) -> Arc<Self> {
        Arc::new(Slot {
            thread_name,
            live: ArcSwapOption::const_empty(),
            live_id: AtomicU64::new(0),
            current: Mutex::new(None),
            generation: AtomicU64::new(0),
            generation_lock: Mutex::new(()),
            generation_changed: Condvar::new(),
        })
    }

    /// The current instance's caller side (`None` if there is none). Takes no lock and blocks
    /// no one: a restart or kill that replaces it meanwhile leaves this one alive until the
    /// returned guard is dropped. (Usually no shared reference count is touched either.)
    fn live(&self) -> Guard<Option<Arc<Live<S>>>> {
        self.live.load()
    }

    /// Installs a freshly started instance, joining the (exited) one it replaces.
    fn install(&self, inst: Instance<S>) {
        let old = {
            let mut cur = self.current.lock();
            self.live.store(Some(Arc::clone(&inst.live)));
            self.live_id.store(inst.live.id, Ordering::Release);
            cur.replace(inst)
        };
        {
            let _g = self.generation_lock.lock();
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
        self.generation_changed.notify_all();
        if let Some(old) = old {
            old.join();
        }
    }

    /// Removes `shared`'s instance from the slot if it is still the current one.
    fn take_if(&self, shared: &Arc<InstanceShared>) -> Option<Instance<S>> {
        let mut cur = self.current.lock();
        if cur
            .as_ref()
            .is_some_and(|i| Arc::ptr_eq(&i.live.shared, shared))
        {
            self.live_id.store(0, Ordering::Release);
            self.live.store(None);
            cur.take()
        } else {
            None
        }
    }

    fn send_stop_to(&self, shared: &Arc<InstanceShared>, reason: ExitReason) {
        let cur = self.current.lock();
        if let Some(i) = cur.as_ref().filter(|i| Arc::ptr_eq(&i.live.shared, shared)) {
            // A stop message holds nothing of the user's: sending it runs no user code.
            let _ = i.live.tx.send(Msg::Stop(reason));
        }
    }
}

impl<S: GenServer> Drop for Slot<S> {
    fn drop(&mut self) {
        self.live_id.store(0, Ordering::Release);
        self.live.store(None);
        if let Some(inst) = self.current.get_mut().take() {
            let _ = inst.live.tx.send(Msg::Stop(ExitReason::Shutdown));
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
    let mailbox = Mailbox {
        tx,
        queued: Arc::new(AtomicUsize::new(0)),
    };
    let shared = Arc::new(InstanceShared::new());
    let (started_tx, started_rx) = mpsc::sync_channel::<Result<(), OtpError>>(1);
    let direct = Arc::new(AtomicBool::new(false));
    let ctx = Context {
        tx: mailbox.clone(),
        slot: Arc::downgrade(slot),
        timers: TimerQueue::new(),
        stop: None,
        direct: direct.clone(),
    };
    let core = Arc::new(Core {
        inner: Mutex::new(Inner {
            state: None,
            ctx,
            crashed: None,
        }),
        queued: mailbox.queued.clone(),
        direct,
    });
    let thread_shared = shared.clone();
    let thread_core = core.clone();
    let join = thread::Builder::new()
        .name(slot.thread_name.clone())
        .spawn(move || server_thread(args, thread_core, rx, thread_shared, started_tx, on_exit))?;
    let started = started_rx
        .recv()
        .unwrap_or(Err(OtpError::InitFailed(ExitReason::Error(
            ExitError::msg("server thread ended before init reported"),
        ))));
    match started {
        Ok(()) => {
            slot.install(Instance {
                live: Arc::new(Live {
                    id: next_id(),
                    tx: mailbox,
                    core,
                    shared: shared.clone(),
                }),
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
    /// A callback panicked (on this thread or in a direct call); the state is already dropped.
    Crashed(String),
}

fn server_thread<S: GenServer>(
    args: S::Args,
    core: Arc<Core<S>>,
    rx: Receiver<Msg<S>>,
    shared: Arc<InstanceShared>,
    started: mpsc::SyncSender<Result<(), OtpError>>,
    on_exit: Option<OnExit>,
) {
    let _ = shared.thread.set(thread::current().id());
    let init = {
        let mut g = core.inner.lock();
        match catch_unwind(AssertUnwindSafe(|| S::init(args, &mut g.ctx))) {
            Ok(Ok(s)) => {
                g.state = Some(s);
                Ok(())
            }
            Ok(Err(e)) => Err(ExitReason::Error(ExitError::new(e))),
            Err(p) => Err(ExitReason::Panic(panic_message(&*p))),
        }
    };
    if let Err(reason) = init {
        shared.dying.store(true, Ordering::Release);
        drop(rx);
        shared.finish(reason.clone());
        let _ = started.send(Err(OtpError::InitFailed(reason)));
        return;
    }
    let _ = started.send(Ok(()));
    drop(started);

    let outcome = catch_unwind(AssertUnwindSafe(|| run_loop(&core, &rx, &shared)));
    shared.dying.store(true, Ordering::Release);
    let (reason, run_terminate) = match outcome {
        Ok(LoopExit::Stop(r)) => (r, true),
        Ok(LoopExit::Killed) => (ExitReason::Killed, false),
        Ok(LoopExit::Crashed(message)) => (ExitReason::Panic(message), false),
        Err(p) => (ExitReason::Panic(panic_message(&*p)), false),
    };
    let (mut state, timers) = {
        let mut g = core.inner.lock();
        let timers = std::mem::replace(&mut g.ctx.timers, TimerQueue::new());
        (g.state.take(), timers)
    };
    if run_terminate {
        if let Some(s) = state.as_mut() {
            let _ = catch_unwind(AssertUnwindSafe(|| s.terminate(&reason)));
        }
    }
    // Release the state's resources (file locks, deferred replies) before anyone hears of the exit.
    let _ = catch_unwind(AssertUnwindSafe(move || drop(state)));
    drop(timers);
    drop(rx);
    // Reply handles dropped unanswered by a callback that then panicked.
    shared.settle_dropped(true);
    shared.finish(reason.clone());
    if let Some(f) = on_exit {
        f(&reason);
    }
}

/// The exit reason a callback result calls for, after settling the reply handles the callback
/// dropped unanswered.
fn settle<S: GenServer>(
    r: Result<(), S::Error>,
    ctx: &Context<S>,
    shared: &InstanceShared,
) -> Option<ExitReason> {
    let err = r.err().map(|e| ExitReason::Error(ExitError::new(e)));
    if shared.has_dropped.load(Ordering::Relaxed) {
        shared.settle_dropped(err.is_some() || ctx.stop.is_some());
    }
    err
}

/// Sets `dying` if dropped during a panic, so that a panic outside any callback (which leaves
/// the state in place) still keeps direct callers off the state once the lock is released.
struct DyingOnUnwind<'a>(&'a InstanceShared);

impl Drop for DyingOnUnwind<'_> {
    fn drop(&mut self) {
        if thread::panicking() {
            self.0.dying.store(true, Ordering::Release);
        }
    }
}

/// The server thread: takes the state lock, handles messages and timers until the mailbox is
/// empty, runs `handle_drained`, releases the lock and waits. Direct calls run in between.
fn run_loop<S: GenServer>(
    core: &Core<S>,
    rx: &Receiver<Msg<S>>,
    shared: &InstanceShared,
) -> LoopExit {
    // Messages handled since handle_drained last ran.
    let mut run: u32 = 0;
    // A message received while the lock was released.
    let mut incoming: Option<Msg<S>> = None;
    loop {
        let mut guard = core.inner.lock();
        let dying_guard = DyingOnUnwind(shared);
        match serve(&mut guard, core, rx, shared, &mut run, &mut incoming) {
            Ok(deadline) => {
                drop(dying_guard);
                drop(guard);
                incoming = wait_for_message(rx, deadline);
            }
            Err(exit) => {
                // Before the lock is released: no direct call may start on an exiting server.
                shared.dying.store(true, Ordering::Release);
                return exit;
            }
        }
    }
}

/// Handles what is due under the lock; returns when the server should wait (with the next timer
/// deadline) or exit.
fn serve<S: GenServer>(
    g: &mut Inner<S>,
    core: &Core<S>,
    rx: &Receiver<Msg<S>>,
    shared: &InstanceShared,
    run: &mut u32,
    incoming: &mut Option<Msg<S>>,
) -> Result<Option<Instant>, LoopExit> {
    loop {
        if shared.killed.load(Ordering::Relaxed) {
            return Err(LoopExit::Killed);
        }
        if let Some(message) = g.crashed.take() {
            return Err(LoopExit::Crashed(message));
        }
        if let Some(reason) = g.ctx.stop.take() {
            return Err(orderly_stop(g, shared, *run > 0, reason));
        }
        if *run >= MAX_RUN {
            *run = 0;
            step_or_exit(invoke(g, shared, |s, c| s.handle_drained(c)))?;
            continue;
        }
        if !g.ctx.timers.is_empty() {
            if let Some(info) = g.ctx.timers.pop_due(Instant::now()) {
                *run += 1;
                step_or_exit(invoke(g, shared, |s, c| s.handle_info(info, c)))?;
                continue;
            }
        }
        let msg = match incoming.take() {
            Some(m) => m,
            None => match rx.try_recv() {
                Ok(m) => m,
                Err(TryRecvError::Empty) => {
                    if *run > 0 {
                        *run = 0;
                        step_or_exit(invoke(g, shared, |s, c| s.handle_drained(c)))?;
                        continue;
                    }
                    return Ok(g.ctx.timers.next_deadline());
                }
                // The context holds a sender, so this cannot happen; treat it as a normal stop.
                Err(TryRecvError::Disconnected) => return Err(LoopExit::Stop(ExitReason::Normal)),
            },
        };
        if shared.killed.load(Ordering::Relaxed) {
            return Err(LoopExit::Killed);
        }
        let step = match msg {
            Msg::Call(req, from) => invoke(g, shared, |s, c| s.handle_call(req, from, c)),
            Msg::Cast(m) => invoke(g, shared, |s, c| s.handle_cast(m, c)),
            Msg::Info(m) => invoke(g, shared, |s, c| s.handle_info(m, c)),
            Msg::Timer(e) => {
                g.ctx.timers.push(e);
                core.queued.fetch_sub(1, Ordering::AcqRel);
                continue;
            }
            Msg::Wake => {
                core.queued.fetch_sub(1, Ordering::AcqRel);
                continue;
            }
            Msg::Stop(reason) => return Err(orderly_stop(g, shared, *run > 0, reason)),
        };
        // Counted as handled only now, under the lock: a direct caller that sees zero knows
        // every earlier message has taken effect.
        core.queued.fetch_sub(1, Ordering::AcqRel);
        *run += 1;
        step_or_exit(step)?;
    }
}

fn step_or_exit(step: Step) -> Result<(), LoopExit> {
    match step {
        Step::Go => Ok(()),
        Step::Exit(reason) => Err(LoopExit::Stop(reason)),
        Step::Crashed(message) => Err(LoopExit::Crashed(message)),
    }
}

fn orderly_stop<S: GenServer>(
    g: &mut Inner<S>,
    shared: &InstanceShared,
    dirty: bool,
    reason: ExitReason,
) -> LoopExit {
    if dirty {
        if let Some(state) = g.state.as_mut() {
            let ctx = &mut g.ctx;
            match catch_unwind(AssertUnwindSafe(|| state.handle_drained(ctx))) {
                Ok(r) => {
                    shared.settle_dropped(true); // we are exiting whatever the result
                    if let Err(e) = r {
                        return LoopExit::Stop(ExitReason::Error(ExitError::new(e)));
                    }
                }
                Err(p) => return LoopExit::Crashed(panic_message(&*p)),
            }
        }
    }
    LoopExit::Stop(reason)
}

/// Spins briefly, then blocks until a message or `deadline` (`None`: no timer is set).
fn wait_for_message<S: GenServer>(
    rx: &Receiver<Msg<S>>,
    deadline: Option<Instant>,
) -> Option<Msg<S>> {
    let mut backoff = Backoff::new();
    while !backoff.is_completed() {
        match rx.try_recv() {
            Ok(m) => return Some(m),
            Err(TryRecvError::Empty) => backoff.snooze(),
            Err(TryRecvError::Disconnected) => return Some(Msg::Stop(ExitReason::Normal)),
        }
    }
    match deadline {
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

/// What a thread keeps between its calls to one server instance: a copy of the instance's caller
/// side and a spare reply cell for it.
struct CallEntry<S: GenServer> {
    live: Arc<Live<S>>,
    spare: SpareCell<S::Reply>,
}

/// How many instances' [`CallEntry`]s a thread keeps (the oldest goes first): enough for every
/// shard of an allocator, and a bound on what copies of exited instances can hold (their
/// channels and exit records: an exited instance's state is already dropped).
const CALL_SITES: usize = 32;

thread_local! {
    /// This thread's [`CallEntry`]s, by [`Live::id`], of any server type.
    static SITES: RefCell<Vec<(u64, Box<dyn Any>)>> = const { RefCell::new(Vec::new()) };
}

impl<S: GenServer> CallEntry<S> {
    /// This thread's entry for `slot`'s current instance, taken out of the thread's list for
    /// the call (so that a callback the call runs may itself make calls), or made now if the
    /// thread has none; `None` if no instance is running. [`CallEntry::put_back`] returns it.
    ///
    /// Why: loading the slot's `ArcSwapOption` costs two atomic read-modify-writes per call
    /// (an `arc-swap` debt slot taken and paid back), and a reply handle holding its own `Arc`
    /// of the instance two more, on a cache line that every caller of the server writes. A call
    /// that finds its copy still current ([`Slot::live_id`] unchanged: one plain load of a line
    /// written only by starts and stops) touches neither. A copy is used only while its id is
    /// the slot's, so a call reaches exactly the instance a load of the slot would have
    /// returned at that moment. The copy is no guard of the slot: a direct call runs user code,
    /// which may ask the supervisor to kill or restart this very instance (it then simply is
    /// not the current one any more).
    fn take(slot: &Slot<S>) -> Option<Box<Self>> {
        let id = slot.live_id.load(Ordering::Acquire);
        if id == 0 {
            return None;
        }
        let cached = SITES
            .try_with(|sites| {
                let mut sites = sites.try_borrow_mut().ok()?;
                let i = sites.iter().position(|(k, _)| *k == id)?;
                Some(sites.swap_remove(i).1)
            })
            .ok()
            .flatten()
            .and_then(|entry| entry.downcast::<Self>().ok());
        match cached {
            Some(entry) => Some(entry),
            // The instance may have changed since `id` was read: this one is current now.
            None => Some(Box::new(CallEntry {
                live: slot.live.load_full()?,
                spare: SpareCell::default(),
            })),
        }
    }

    /// Returns the entry to this thread's list, dropping the oldest one if it is full.
    fn put_back(self: Box<Self>) {
        let id = self.live.id;
        // Dropped only once the list is released: an entry's drop may free an exited instance.
        let _evicted = SITES.try_with(|sites| {
            let mut sites = sites.try_borrow_mut().ok()?;
            if let Some(i) = sites.iter().position(|(k, _)| *k == id) {
                // A nested call to the same instance (refused as `CallingSelf`) put one back.
                return Some(std::mem::replace(&mut sites[i].1, self));
            }
            let evicted = (sites.len() >= CALL_SITES).then(|| sites.remove(0).1);
            sites.push((id, self));
            evicted
        });
    }
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

    /// Calls the server and waits up to `timeout` for the reply. For a direct call
    /// ([`Context::allow_direct_calls`]) `timeout` bounds the wait for the server's state lock and
    /// for a deferred reply; the callback itself runs on this thread to its end, holding no lock
    /// of this handle (it may ask a supervisor to stop or restart this very server). Errors:
    /// [`OtpError::Timeout`] (the request may have been handled), [`OtpError::NotDelivered`] (a
    /// direct call that never got the state lock: the request was neither run nor queued),
    /// [`OtpError::NoProc`] (never delivered either), [`OtpError::Exited`] (the server died with
    /// the call pending), [`OtpError::ReplyDropped`], [`OtpError::CallingSelf`].
    pub fn call_timeout(&self, request: S::Call, timeout: Duration) -> Result<S::Reply, OtpError> {
        // This thread's copy of the current instance's caller side, with a spare reply cell.
        // (`let else`, not `ok_or`: that builds and drops an `OtpError` on every call.)
        let Some(mut entry) = CallEntry::take(&self.slot) else {
            return Err(OtpError::NoProc);
        };
        let reply = Self::call_instance(&mut entry, request, timeout);
        entry.put_back();
        reply
    }

    fn call_instance(
        entry: &mut CallEntry<S>,
        request: S::Call,
        timeout: Duration,
    ) -> Result<S::Reply, OtpError> {
        let inst = &*entry.live;
        if inst.shared.on_own_thread() {
            return Err(OtpError::CallingSelf);
        }
        let cell = entry.spare.take(&inst.shared);
        let from = ReplyTo::new(cell.clone());
        let queued = if inst.core.direct.load(Ordering::Acquire) {
            inst.core
                .direct_call(request, from, &inst.shared, &inst.tx, timeout)?
        } else {
            Some(Msg::Call(request, from))
        };
        if let Some(msg) = queued {
            inst.tx.send(msg).map_err(|_| OtpError::NoProc)?;
        }
        let reply = cell.wait(timeout);
        entry.spare.recycle(cell);
        reply
    }

    fn send_msg(&self, msg: Msg<S>) -> Result<(), OtpError> {
        // A message that cannot be sent is dropped here, with no guard held: its `Drop` is
        // user code.
        let live = self.slot.live();
        let inst = live.as_deref().ok_or(OtpError::NoProc)?;
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
            let live = self.slot.live();
            let inst = live.as_deref().ok_or(OtpError::NoProc)?;
            if inst.shared.on_own_thread() {
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
        let live = self.slot.live();
        let inst = live.as_deref().ok_or(OtpError::NoProc)?;
        Ok(Monitor {
            shared: inst.shared.clone(),
        })
    }

    /// True if an instance is running (it may exit at any moment, of course).
    pub fn is_alive(&self) -> bool {
        self.slot.live().as_deref().is_some_and(|i| {
            i.shared.exit_reason().is_none() && !i.shared.killed.load(Ordering::Relaxed)
        })
    }

    /// How many instances have been started behind this handle (1 after the first start, 2 after
    /// the first restart, ...).
    pub fn generation(&self) -> u64 {
        self.slot.generation.load(Ordering::Acquire)
    }

    /// Waits until at least `generation` instances have been started, up to `timeout`. Returns
    /// the generation reached, or [`OtpError::Timeout`]. Tests use this to see a restart happen
    /// without sleeping.
    pub fn wait_for_generation(&self, generation: u64, timeout: Duration) -> Result<u64, OtpError> {
        let deadline = deadline_after(timeout);
        let slot = &self.slot;
        let mut g = slot.generation_lock.lock();
        loop {
            let now = slot.generation.load(Ordering::Acquire);
            if now >= generation {
                return Ok(now);
            }
            if slot
                .generation_changed
                .wait_until(&mut g, deadline)
                .timed_out()
                && slot.generation.load(Ordering::Acquire) < generation
            {
                return Err(OtpError::Timeout);
            }
        }
    }

    /// Registers this handle under `name`, see [`register`](crate::otp::register).
    pub fn register(&self, name: impl Into<String>) -> Result<(), OtpError> {
        register(name, self)
    }
}

/// The registry's entry for a server: a weak handle, so a name never keeps a server alive.
impl<S: GenServer> Named for Weak<Slot<S>> {
    fn is_live(&self) -> bool {
        self.strong_count() > 0
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// Registers `server` under `name` (Erlang's `register/2`). Error: [`OtpError::NameTaken`] if
/// the name belongs to a server that still has handles.
pub fn register<S: GenServer>(name: impl Into<String>, server: &Server<S>) -> Result<(), OtpError> {
    registry::insert(name.into(), Box::new(Arc::downgrade(&server.slot)))
}

/// Looks `name` up (Erlang's `whereis/1`). `Ok(None)` if it is not registered (or its server is
/// gone); [`OtpError::WrongType`] if it is registered for a server of another type.
pub fn whereis<S: GenServer>(name: &str) -> Result<Option<Server<S>>, OtpError> {
    registry::find(name, |weak: &Weak<Slot<S>>| {
        weak.upgrade().map(|slot| Server { slot })
    })
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
            let _ = inst.live.tx.send(Msg::Stop(ExitReason::Killed)); // wake it if parked
            inst.detach();
        }
    }
    pub(crate) fn join(&self) {
        if let Some(inst) = self.slot.take_if(&self.shared) {
            inst.join();
        }
    }
}
