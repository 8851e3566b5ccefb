//! Reply handles ([`ReplyTo`]) and the per-instance exit record they consult.
//!
//! A call allocates one small reply cell shared by the caller and the [`ReplyTo`] that travels
//! inside the message (ractor's reply port). The caller spins briefly, then parks, on the cell.
//! A cell belongs to exactly one call, so a reply that arrives after the caller gave up is simply
//! dropped: it can never reach a later call.
//!
//! The cell is the module's one piece of `unsafe` code. It is model-checked with
//! [loom](https://docs.rs/loom) (every interleaving of a replier, a second replier and the
//! waiter, including a timeout racing the reply):
//! `RUSTFLAGS="--cfg loom" cargo test --release --lib otp::reply::loom`.
//! Under `cfg(loom)` the cell's atomics, `UnsafeCell`, parking and spinning are loom's.

use std::cell::RefCell;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::thread::{self, ThreadId};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::error::{ExitReason, OtpError};

/// The primitives of the reply cell: std's, or loom's when model checking.
#[cfg(not(loom))]
mod prim {
    pub(super) use std::hint::spin_loop as pause;
    pub(super) use std::sync::atomic::AtomicU8;
    pub(super) use std::thread::{current, park, park_timeout, Thread, ThreadId};

    /// This thread's id (see [`super::current_thread_id`]).
    #[inline]
    pub(super) fn current_id() -> ThreadId {
        super::current_thread_id()
    }

    /// `std::cell::UnsafeCell` with loom's closure-based API, so one body of code serves both.
    #[derive(Debug)]
    pub(super) struct UnsafeCell<T>(std::cell::UnsafeCell<T>);

    impl<T> UnsafeCell<T> {
        pub(super) const fn new(v: T) -> Self {
            UnsafeCell(std::cell::UnsafeCell::new(v))
        }
        pub(super) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
            f(self.0.get())
        }
        pub(super) fn get_mut(&mut self) -> &mut T {
            self.0.get_mut()
        }
    }
}

#[cfg(loom)]
mod prim {
    pub(super) use loom::sync::atomic::AtomicU8;
    pub(super) use loom::thread::{current, park, yield_now as pause, Thread, ThreadId};

    /// This (model) thread's id: loom runs its threads on one OS thread, so std's id would be
    /// the same for all of them.
    pub(super) fn current_id() -> ThreadId {
        loom::thread::current().id()
    }

    /// loom has no timed park: a timed wait is a yield (the waiter re-checks and, in a model,
    /// never reaches a real deadline).
    pub(super) fn park_timeout(_: std::time::Duration) {
        loom::thread::yield_now();
    }

    /// loom's `UnsafeCell`, which checks that no two threads access the value at once.
    #[derive(Debug)]
    pub(super) struct UnsafeCell<T>(loom::cell::UnsafeCell<T>);

    impl<T> UnsafeCell<T> {
        pub(super) fn new(v: T) -> Self {
            UnsafeCell(loom::cell::UnsafeCell::new(v))
        }
        pub(super) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
            self.0.with_mut(f)
        }
        pub(super) fn get_mut(&mut self) -> &mut T {
            // SAFETY: `&mut self` is exclusive access to the value for the returned borrow's
            // lifetime (tied to `&mut self`); loom's tracking is for shared access only.
            self.0.with_mut(|p| unsafe { &mut *p })
        }
    }
}

use prim::{AtomicU8, Thread, UnsafeCell};

/// This thread's id without `thread::current()`, which clones and drops the thread's `Arc`
/// handle: two atomic read-modify-writes on every call that asks "am I the server's thread?"
/// (measured: a tenth of `Server::call_timeout`'s own time on the direct-call path).
#[inline]
pub(crate) fn current_thread_id() -> ThreadId {
    thread_local! {
        static ID: ThreadId = thread::current().id();
    }
    ID.with(|id| *id)
}

/// Exponential backoff before parking (crossbeam's `Backoff::snooze` shape): spin with
/// `2^step` pause instructions while `step <= spin_limit`, then yield the core until
/// `step > yield_limit`. A parked thread costs ~1 µs (more in a VM) to wake on each side of a
/// call; spinning briefly avoids that when both sides are busy, and yielding keeps a waiting
/// thread from starving the one it waits for when cores are oversubscribed.
#[cfg(not(loom))]
const SPIN_LIMIT: u32 = 6;
#[cfg(not(loom))]
const YIELD_LIMIT: u32 = 20;
// In a loom model every spin is a scheduling point: one step, then park.
#[cfg(loom)]
const SPIN_LIMIT: u32 = 0;
#[cfg(loom)]
const YIELD_LIMIT: u32 = 0;

pub(crate) struct Backoff {
    step: u32,
    spin_limit: u32,
    yield_limit: u32,
}

impl Backoff {
    pub(crate) fn new() -> Self {
        Backoff {
            step: 0,
            spin_limit: SPIN_LIMIT,
            yield_limit: YIELD_LIMIT,
        }
    }

    pub(crate) fn snooze(&mut self) {
        if self.step <= self.spin_limit {
            for _ in 0..(1u32 << self.step.min(16)) {
                prim::pause();
            }
        } else {
            thread::yield_now();
        }
        self.step += 1;
    }

    pub(crate) fn is_completed(&self) -> bool {
        self.step > self.yield_limit
    }
}

/// Something a dead server owes an answer: a reply cell of any reply type.
pub(crate) trait Orphan: Send + Sync {
    fn fail(&self, err: OtpError);
}

/// What one server *instance* (one run of one thread) shares with its callers and supervisor.
pub(crate) struct InstanceShared {
    /// The server thread, set by the thread itself before `init`.
    pub(crate) thread: OnceLock<ThreadId>,
    /// Set when the exit sequence starts: reply handles dropped from now on are failed with the
    /// exit reason instead of "reply dropped".
    pub(crate) dying: AtomicBool,
    /// Set by a brutal kill: the loop exits before its next message.
    pub(crate) killed: AtomicBool,
    /// Set when a reply handle was dropped unanswered on the server's own thread during the
    /// current callback: whether that is "reply dropped" or "exited" depends on how the
    /// callback ends, so the loop settles it afterwards ([`InstanceShared::settle_dropped`]).
    pub(crate) has_dropped: AtomicBool,
    dropped: Mutex<Vec<Arc<dyn Orphan>>>,
    exit: Mutex<ExitState>,
    cond: Condvar,
}

#[derive(Default)]
struct ExitState {
    reason: Option<ExitReason>,
    orphans: Vec<Arc<dyn Orphan>>,
}

impl InstanceShared {
    pub(crate) fn new() -> Self {
        InstanceShared {
            thread: OnceLock::new(),
            dying: AtomicBool::new(false),
            killed: AtomicBool::new(false),
            has_dropped: AtomicBool::new(false),
            dropped: Mutex::new(Vec::new()),
            exit: Mutex::new(ExitState::default()),
            cond: Condvar::new(),
        }
    }

    /// True on the instance's own thread, and on a caller's thread while it runs one of the
    /// instance's callbacks (a direct call, see [`crate::otp::Context::allow_direct_calls`]).
    pub(crate) fn on_own_thread(&self) -> bool {
        self.thread.get() == Some(&current_thread_id()) || running_here(self)
    }

    /// Parks an unanswered reply until the exit reason is known (or fails it now if it is).
    fn orphan(&self, cell: Arc<dyn Orphan>) {
        let mut st = self.exit.lock();
        match &st.reason {
            Some(r) => {
                let r = r.clone();
                drop(st);
                cell.fail(OtpError::Exited(r));
            }
            None => st.orphans.push(cell),
        }
    }

    /// Settles the reply handles dropped unanswered during the callback that just ended: if the
    /// server is now exiting (the callback returned `Err` or asked to stop) their callers get the
    /// exit reason, otherwise [`OtpError::ReplyDropped`].
    pub(crate) fn settle_dropped(&self, exiting: bool) {
        self.has_dropped.store(false, Ordering::Relaxed);
        let cells = std::mem::take(&mut *self.dropped.lock());
        for cell in cells {
            if exiting {
                self.orphan(cell);
            } else {
                cell.fail(OtpError::ReplyDropped);
            }
        }
    }

    /// Records the exit reason, fails every orphaned call with it and wakes waiters.
    pub(crate) fn finish(&self, reason: ExitReason) {
        let orphans = {
            let mut st = self.exit.lock();
            st.reason = Some(reason.clone());
            std::mem::take(&mut st.orphans)
        };
        self.cond.notify_all();
        for o in orphans {
            o.fail(OtpError::Exited(reason.clone()));
        }
    }

    /// The exit reason, once the instance has exited.
    pub(crate) fn exit_reason(&self) -> Option<ExitReason> {
        self.exit.lock().reason.clone()
    }

    /// Waits until the instance has exited; `None` waits forever. True if it has exited.
    pub(crate) fn wait_exit(&self, timeout: Option<Duration>) -> bool {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut st = self.exit.lock();
        while st.reason.is_none() {
            match deadline {
                None => self.cond.wait(&mut st),
                Some(d) => {
                    if self.cond.wait_until(&mut st, d).timed_out() {
                        return st.reason.is_some();
                    }
                }
            }
        }
        true
    }
}

thread_local! {
    /// The instances whose callbacks this thread is running as direct calls, innermost last.
    static RUNNING: RefCell<Vec<usize>> = const { RefCell::new(Vec::new()) };
}

fn instance_key(inst: &InstanceShared) -> usize {
    inst as *const InstanceShared as usize
}

/// True if this thread is running one of `inst`'s callbacks as a direct call.
pub(crate) fn running_here(inst: &InstanceShared) -> bool {
    let key = instance_key(inst);
    RUNNING.with(|r| r.borrow().contains(&key))
}

/// Marks this thread as running `inst`'s callbacks until dropped: reply handles dropped here
/// count as dropped by the server, and a call back into the same server is
/// [`OtpError::CallingSelf`] instead of a deadlock.
pub(crate) struct RunningFrame {
    key: usize,
}

impl RunningFrame {
    pub(crate) fn enter(inst: &InstanceShared) -> Self {
        let key = instance_key(inst);
        RUNNING.with(|r| r.borrow_mut().push(key));
        RunningFrame { key }
    }
}

impl Drop for RunningFrame {
    fn drop(&mut self) {
        RUNNING.with(|r| {
            let mut r = r.borrow_mut();
            if let Some(i) = r.iter().rposition(|k| *k == self.key) {
                r.remove(i);
            }
        });
    }
}

/// A cell's states. `EMPTY -> WRITING -> READY` for the one reply (or failure) that wins, or
/// `EMPTY -> ABANDONED` when the caller times out first; every later `put` is discarded.
const EMPTY: u8 = 0;
const WRITING: u8 = 1;
const READY: u8 = 2;
const ABANDONED: u8 = 3;

/// The rendezvous of one call: a one-shot slot written by at most one replier and read by the
/// one caller that waits on it. Lock-free: a call's round trip pays two atomic operations on
/// the cell instead of two mutex acquisitions (measured in `benches/otp.rs`).
pub(crate) struct ReplyCell<R> {
    state: AtomicU8,
    value: UnsafeCell<Option<Result<R, OtpError>>>,
    waiter: Thread,
    /// `waiter`'s id, compared by `put` without touching the `Thread` handle.
    waiter_id: prim::ThreadId,
    /// The server instance the calls through this cell go to: what a [`ReplyTo`] dropped
    /// unanswered consults. Held here, not in each `ReplyTo`, so that a call made through a
    /// reused cell touches no reference count that the instance's other callers share (one
    /// `Arc` clone and drop per call, on a cache line every caller of the server writes).
    inst: Arc<InstanceShared>,
}

// SAFETY: `value` is written only by the thread that moved `state` from EMPTY to WRITING (one
// thread, by the compare-exchange), before it publishes READY with `Release`; it is read only by
// the waiting caller after it observed READY with `Acquire` (or through `&mut`, with exclusive
// access). So no two threads ever touch it at once, and the reply crosses threads as an `R: Send`.
// `waiter` is a `Thread` handle and `waiter_id` its id, both `Send + Sync`; `inst` is an
// `Arc` of a `Sync` type.
unsafe impl<R: Send> Send for ReplyCell<R> {}
// SAFETY: as above; every shared-reference access to `value` is ordered by `state`.
unsafe impl<R: Send> Sync for ReplyCell<R> {}

impl<R> ReplyCell<R> {
    /// A cell for calls that `waiter` makes to the instance `inst`.
    pub(crate) fn new(waiter: Thread, inst: Arc<InstanceShared>) -> Self {
        ReplyCell {
            state: AtomicU8::new(EMPTY),
            value: UnsafeCell::new(None),
            waiter_id: waiter.id(),
            waiter,
            inst,
        }
    }

    /// Delivers `v` if no answer was delivered and the caller has not given up; otherwise drops
    /// it. Returns true if `v` was delivered.
    fn put(&self, v: Result<R, OtpError>) -> bool {
        if self
            .state
            .compare_exchange(EMPTY, WRITING, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return false; // late reply (the caller has gone) or a second answer: drop it here
        }
        // SAFETY: we won EMPTY -> WRITING, so we are the only writer, and the waiter reads only
        // after it sees READY, which we publish below with `Release` after this write.
        self.value.with_mut(|p| unsafe { *p = Some(v) });
        self.state.store(READY, Ordering::Release);
        // In a loom model, a scheduling point between the publication and the unpark, so the
        // waiter may run there (loom's unpark also synchronises, which would otherwise hide a
        // missing `Release` above).
        #[cfg(loom)]
        let _ = self.state.load(Ordering::Relaxed);
        // A waiter answering its own call (a direct call runs the callback on the caller's
        // thread) is not parked: it is running this code, and it looks at `state` before it
        // ever parks. Waking it would only cost an atomic swap on its parker and leave a token
        // that makes its next park return at once.
        if prim::current_id() != self.waiter_id {
            self.waiter.unpark();
        }
        true
    }

    /// The value, once `state` was seen READY (with `Acquire`) by this, the waiting, thread.
    fn take_ready(&self) -> Result<R, OtpError> {
        // SAFETY: called only by the single waiter after an `Acquire` load saw READY: the one
        // writer finished before its `Release` store of READY, and no one else reads or writes.
        let v = self.value.with_mut(|p| unsafe { (*p).take() });
        v.unwrap_or(Err(OtpError::ReplyDropped))
    }

    /// The reply, if one is ready (called by the waiter only).
    fn try_take(&self) -> Option<Result<R, OtpError>> {
        (self.state.load(Ordering::Acquire) == READY).then(|| self.take_ready())
    }

    /// The waiter gives up: `Timeout`, unless a reply won the race, which is then returned
    /// (called by the waiter only; every later `put` is dropped).
    fn abandon(&self) -> Result<R, OtpError> {
        match self
            .state
            .compare_exchange(EMPTY, ABANDONED, Ordering::Acquire, Ordering::Acquire)
        {
            Ok(_) => Err(OtpError::Timeout),
            // A reply is being written this instant, or is ready: it is ours.
            Err(_) => loop {
                if let Some(v) = self.try_take() {
                    return v;
                }
                prim::pause();
            },
        }
    }

    /// True once a reply is ready (tests).
    #[cfg(all(test, not(loom)))]
    fn is_ready(&self) -> bool {
        self.state.load(Ordering::Acquire) == READY
    }

    /// Waits for the reply: spin, then park until `timeout`.
    pub(crate) fn wait(&self, timeout: Duration) -> Result<R, OtpError> {
        let mut backoff = Backoff::new();
        while !backoff.is_completed() {
            if let Some(v) = self.try_take() {
                return v;
            }
            backoff.snooze();
        }
        let deadline = Instant::now().checked_add(timeout);
        loop {
            if let Some(v) = self.try_take() {
                return v;
            }
            match deadline {
                None => prim::park(),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return self.abandon();
                    }
                    prim::park_timeout(d - now);
                }
            }
        }
    }
}

/// A caller's spare reply cell for its calls to one server instance: the next call reuses it
/// when no one else holds it any more, so a call costs no allocation for its cell and no
/// reference count of the instance (the cell holds one for good).
pub(crate) struct SpareCell<R> {
    cell: Option<Arc<ReplyCell<R>>>,
}

impl<R> Default for SpareCell<R> {
    fn default() -> Self {
        SpareCell { cell: None }
    }
}

impl<R: Send + 'static> SpareCell<R> {
    /// A fresh cell for a call this thread makes to `inst`: the spare one if there is one, else
    /// a new one.
    pub(crate) fn take(&mut self, inst: &Arc<InstanceShared>) -> Arc<ReplyCell<R>> {
        match self.cell.take() {
            Some(cell) if Arc::ptr_eq(&cell.inst, inst) => cell,
            _ => Arc::new(ReplyCell::new(prim::current(), Arc::clone(inst))),
        }
    }

    /// Keeps a finished call's cell for reuse, if this was its last holder (a late reply can
    /// only reach a cell someone still holds, so a reused cell never sees one).
    pub(crate) fn recycle(&mut self, mut cell: Arc<ReplyCell<R>>) {
        if let Some(c) = Arc::get_mut(&mut cell) {
            // Exclusive (`get_mut`): no replier holds the cell, so plain resets suffice.
            c.state.store(EMPTY, Ordering::Relaxed);
            *c.value.get_mut() = None;
            self.cell = Some(cell);
        }
    }
}

impl<R: Send> Orphan for ReplyCell<R> {
    fn fail(&self, err: OtpError) {
        let _ = self.put(Err(err));
    }
}

/// The right to answer one call: Erlang's `From` in `handle_call(Request, From, State)`.
///
/// Reply at once with [`ReplyTo::reply`], or keep the handle (in the server state, or move it to
/// another thread) and reply later: OTP's `{noreply, State}` followed by `gen_server:reply/2`.
/// That is how a server defers replies until a batch is on disk (group commit).
///
/// If the handle is dropped without a reply the caller never hangs: it gets
/// [`OtpError::ReplyDropped`] if the server is still running, or [`OtpError::Exited`] with the
/// server's exit reason if the handle was dropped because the server crashed or stopped.
#[must_use = "dropping a ReplyTo without replying fails the call with ReplyDropped"]
pub struct ReplyTo<R: Send + 'static> {
    cell: Option<Arc<ReplyCell<R>>>,
}

impl<R: Send + 'static> ReplyTo<R> {
    /// The right to answer the call waiting on `cell` (to the cell's instance).
    pub(crate) fn new(cell: Arc<ReplyCell<R>>) -> Self {
        ReplyTo { cell: Some(cell) }
    }

    /// Sends the reply to the caller. If the caller has already timed out, the reply is
    /// discarded.
    pub fn reply(mut self, value: R) {
        if let Some(cell) = self.cell.take() {
            let _ = cell.put(Ok(value));
        }
    }
}

impl<R: Send + 'static> std::fmt::Debug for ReplyTo<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplyTo")
            .field("answered", &self.cell.is_none())
            .finish()
    }
}

impl<R: Send + 'static> Drop for ReplyTo<R> {
    fn drop(&mut self) {
        if let Some(cell) = self.cell.take() {
            // A clone (the cell moves below): only on this path, never on a reply's.
            let inst = Arc::clone(&cell.inst);
            if inst.dying.load(Ordering::Acquire) {
                inst.orphan(cell);
            } else if inst.on_own_thread() {
                if thread::panicking() {
                    inst.orphan(cell);
                } else {
                    inst.dropped.lock().push(cell);
                    inst.has_dropped.store(true, Ordering::Relaxed);
                }
            } else {
                let _ = cell.put(Err(OtpError::ReplyDropped));
            }
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn pair() -> (Arc<ReplyCell<u32>>, ReplyTo<u32>, Arc<InstanceShared>) {
        let inst = Arc::new(InstanceShared::new());
        let cell = Arc::new(ReplyCell::new(thread::current(), inst.clone()));
        let to = ReplyTo::new(cell.clone());
        (cell, to, inst)
    }

    #[test]
    fn reply_from_another_thread_is_received() {
        let (cell, to, _inst) = pair();
        let t = thread::spawn(move || to.reply(7));
        assert_eq!(cell.wait(Duration::from_secs(10)).unwrap(), 7);
        t.join().unwrap();
    }

    #[test]
    fn dropped_on_a_foreign_thread_is_reply_dropped() {
        let (cell, to, _inst) = pair();
        thread::spawn(move || drop(to)).join().unwrap();
        assert!(matches!(
            cell.wait(Duration::from_secs(10)),
            Err(OtpError::ReplyDropped)
        ));
    }

    #[test]
    fn dropped_while_dying_waits_for_the_exit_reason() {
        let (cell, to, inst) = pair();
        inst.dying.store(true, Ordering::Release);
        drop(to);
        assert!(matches!(cell.wait(Duration::ZERO), Err(OtpError::Timeout)));
        // A fresh cell: the first one was abandoned by its timeout.
        let (cell, to, inst) = pair();
        inst.dying.store(true, Ordering::Release);
        drop(to);
        inst.finish(ExitReason::Killed);
        assert!(matches!(
            cell.wait(Duration::from_secs(10)),
            Err(OtpError::Exited(ExitReason::Killed))
        ));
    }

    #[test]
    fn late_reply_after_timeout_is_discarded() {
        let (cell, to, _inst) = pair();
        assert!(matches!(cell.wait(Duration::ZERO), Err(OtpError::Timeout)));
        to.reply(1);
        assert!(!cell.is_ready());
    }

    #[test]
    fn wait_exit_times_out_then_sees_the_reason() {
        let inst = InstanceShared::new();
        assert!(!inst.wait_exit(Some(Duration::from_millis(1))));
        inst.finish(ExitReason::Normal);
        assert!(inst.wait_exit(None));
        assert_eq!(inst.exit_reason(), Some(ExitReason::Normal));
    }

    #[test]
    fn a_cell_is_reused_only_when_no_one_else_holds_it() {
        let inst = Arc::new(InstanceShared::new());
        let mut spare = SpareCell::<u32>::default();
        let cell = spare.take(&inst);
        ReplyTo::new(cell.clone()).reply(5);
        assert_eq!(cell.wait(Duration::from_secs(10)).unwrap(), 5);
        let addr = Arc::as_ptr(&cell);
        spare.recycle(cell);
        // Reused, and empty again.
        let again = spare.take(&inst);
        assert_eq!(Arc::as_ptr(&again), addr);
        assert!(!again.is_ready());
        // A reply handle still out (a timed-out call): the cell is not reused, so the late reply
        // cannot reach the next call.
        let late = ReplyTo::new(again.clone());
        assert!(matches!(again.wait(Duration::ZERO), Err(OtpError::Timeout)));
        spare.recycle(again);
        let fresh = spare.take(&inst);
        assert_ne!(Arc::as_ptr(&fresh), addr);
        late.reply(9);
        assert!(!fresh.is_ready());
    }
}

/// Model checks of the reply cell: every interleaving loom can find of the threads below.
#[cfg(all(test, loom))]
mod loom {
    use super::*;
    use ::loom::sync::atomic::AtomicBool as LBool;
    use ::loom::sync::Arc as LArc;
    use ::loom::thread as lthread;

    fn cell() -> LArc<ReplyCell<u32>> {
        LArc::new(ReplyCell::new(
            prim::current(),
            Arc::new(InstanceShared::new()),
        ))
    }

    /// A replier thread delivering `v`; returns whether it was delivered. Joined through
    /// [`join`], which first waits for every replier's `put` to have returned: loom cannot model
    /// a `Thread::unpark` (the cell's wake-up) reaching a thread blocked in `join`, which std
    /// allows and ignores.
    struct Replier {
        done: LArc<LBool>,
        handle: lthread::JoinHandle<bool>,
    }

    fn reply(c: &LArc<ReplyCell<u32>>, v: Result<u32, OtpError>) -> Replier {
        let (r, done) = (c.clone(), LArc::new(LBool::new(false)));
        let d = done.clone();
        let handle = lthread::spawn(move || {
            let delivered = r.put(v);
            d.store(true, Ordering::Release);
            delivered
        });
        Replier { done, handle }
    }

    /// Joins the repliers, once every one of them has returned from `put`.
    fn join<const N: usize>(rs: [Replier; N]) -> [bool; N] {
        for r in &rs {
            while !r.done.load(Ordering::Acquire) {
                lthread::yield_now();
            }
        }
        rs.map(|r| r.handle.join().unwrap())
    }

    /// One reply, one waiter that waits as long as it takes: the reply always arrives intact.
    #[test]
    fn a_reply_reaches_the_waiter() {
        ::loom::model(|| {
            let c = cell();
            let r = reply(&c, Ok(7));
            assert_eq!(c.wait(Duration::MAX).unwrap(), 7);
            assert_eq!(join([r]), [true]);
        });
    }

    /// A waiter answering its own call (a direct call) skips the wake-up, and still gets the
    /// reply.
    #[test]
    fn a_reply_to_ones_own_call_needs_no_wake_up() {
        ::loom::model(|| {
            let c = cell();
            assert!(c.put(Ok(3)));
            assert_eq!(c.wait(Duration::MAX).unwrap(), 3);
        });
    }

    /// A reply racing the waiter's timeout: the waiter gets the reply or `Timeout`, never both,
    /// never a torn value; a reply that lost is dropped by the replier and never stored.
    #[test]
    fn a_timeout_racing_a_reply_is_one_or_the_other() {
        ::loom::model(|| {
            let c = cell();
            let r = reply(&c, Ok(7));
            let got = c.abandon();
            let [delivered] = join([r]);
            match got {
                Ok(v) => {
                    assert!(delivered);
                    assert_eq!(v, 7);
                }
                Err(OtpError::Timeout) => {
                    assert!(!delivered);
                    // SAFETY: the replier is done (joined); this is the only access.
                    assert!(c.value.with_mut(|p| unsafe { (*p).is_none() }));
                }
                Err(e) => panic!("unexpected {e:?}"),
            }
        });
    }

    /// Two answers (a reply and a failure, as when a server replies while its exit fails the
    /// orphaned calls): exactly one is delivered, and it is the one the waiter gets.
    #[test]
    fn of_two_answers_exactly_one_is_delivered() {
        ::loom::model(|| {
            let c = cell();
            let r1 = reply(&c, Ok(1));
            let r2 = reply(&c, Err(OtpError::ReplyDropped));
            let got = c.wait(Duration::MAX);
            let [d1, d2] = join([r1, r2]);
            assert!(d1 != d2, "exactly one answer is delivered");
            match got {
                Ok(1) => assert!(d1),
                Err(OtpError::ReplyDropped) => assert!(d2),
                other => panic!("unexpected {other:?}"),
            }
        });
    }
}
