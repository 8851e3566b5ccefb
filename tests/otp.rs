//! Integration tests of `freqalloc::otp`: the generic server and the supervisor.
//!
//! Synchronisation is by channels, reply handles and `wait_until` with a deadline: no test sleeps
//! to wait for something to happen. Start/stop events of test servers go to a shared log channel
//! so the supervision grid can check exactly which children restart, and in which order.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use freqalloc::otp::{
    register, unregister, whereis, ChildSpec, Context, ExitReason, GenServer, ManualRestartClock,
    OtpError, ReplyTo, Restart, Server, Shutdown, Strategy, Supervisor, SupervisorEvent,
    SupervisorSpec,
};

const WAIT: Duration = Duration::from_secs(10);

/// Polls `cond` until it holds or `deadline` passes; true if it held.
fn wait_until(deadline: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + deadline;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        thread::yield_now();
    }
    cond()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fail {
    Panic,
    Error,
}

#[derive(Debug)]
struct WError(String);

impl fmt::Display for WError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for WError {}

/// A stand-in for an exclusive resource such as a file lock.
type Lock = Arc<AtomicBool>;

#[derive(Clone)]
struct WArgs {
    id: String,
    log: Sender<String>,
    /// Failures to inject into the next `init`s, one each.
    init_fail: Arc<Mutex<VecDeque<Fail>>>,
    lock: Option<Lock>,
    /// Log every `handle_drained` with the size of the run it ends.
    log_drained: bool,
    /// Allow direct calls (run on the caller's thread when the mailbox is empty).
    direct: bool,
}

impl WArgs {
    fn new(id: &str, log: &Sender<String>) -> Self {
        WArgs {
            id: id.to_string(),
            log: log.clone(),
            init_fail: Arc::default(),
            lock: None,
            log_drained: false,
            direct: false,
        }
    }
}

/// The test server: a counter that logs its life and fails on request.
struct Worker {
    id: String,
    log: Sender<String>,
    n: u64,
    deferred: Vec<ReplyTo<u64>>,
    held: Vec<ReplyTo<u64>>,
    batch: usize,
    lock: Option<Lock>,
    log_drained: bool,
}

enum Call {
    Get,
    Add(u64),
    Fail(Fail),
    /// Drop the reply handle, then fail.
    DropThenFail(Fail),
    /// Reply in the next `handle_drained`.
    Defer,
    /// Keep the reply handle forever (logs `held:<id>`).
    Hold,
    DropReply,
    /// Signal `entered`, block until `release` yields, then reply with `value`.
    Block {
        entered: Sender<()>,
        release: Receiver<()>,
        value: u64,
    },
    ThreadName,
    Reenter,
    StopMe,
    /// Set a timer that sends `Info::Tick(k)` after the delay.
    Arm(Duration, u64),
    /// Turn direct calls on or off.
    Direct(bool),
}

enum Cast {
    Fail(Fail),
    Note,
    Add(u64),
}

enum Info {
    Fail(Fail),
    Tick(u64),
    Arm(Duration, u64),
}

impl Worker {
    fn fail(&self, kind: Fail) -> Result<(), WError> {
        match kind {
            Fail::Panic => panic!("boom {}", self.id),
            Fail::Error => Err(WError(format!("boom {}", self.id))),
        }
    }
    fn log(&self, what: &str) {
        let _ = self.log.send(format!("{what}:{}", self.id));
    }
}

impl GenServer for Worker {
    type Args = WArgs;
    type Call = Call;
    type Reply = u64;
    type Cast = Cast;
    type Info = Info;
    type Error = WError;

    fn init(a: WArgs, ctx: &mut Context<Self>) -> Result<Self, WError> {
        ctx.allow_direct_calls(a.direct);
        let injected = a.init_fail.lock().unwrap().pop_front();
        if let Some(f) = injected {
            let _ = a.log.send(format!("initfail:{}", a.id));
            match f {
                Fail::Panic => panic!("init boom {}", a.id),
                Fail::Error => return Err(WError(format!("init boom {}", a.id))),
            }
        }
        if let Some(l) = &a.lock {
            if l.swap(true, Ordering::SeqCst) {
                let _ = a.log.send(format!("locked:{}", a.id));
                return Err(WError("resource still locked".into()));
            }
        }
        let _ = a.log.send(format!("start:{}", a.id));
        Ok(Worker {
            id: a.id,
            log: a.log,
            n: 0,
            deferred: Vec::new(),
            held: Vec::new(),
            batch: 0,
            lock: a.lock,
            log_drained: a.log_drained,
        })
    }

    fn handle_call(
        &mut self,
        req: Call,
        from: ReplyTo<u64>,
        ctx: &mut Context<Self>,
    ) -> Result<(), WError> {
        self.batch += 1;
        match req {
            Call::Get => from.reply(self.n),
            Call::Add(k) => {
                self.n += k;
                from.reply(self.n)
            }
            Call::Fail(kind) => {
                // Keep the reply handle alive across the failure, as a deferred reply would be.
                let _from = from;
                self.fail(kind)?;
            }
            Call::DropThenFail(kind) => {
                drop(from);
                self.fail(kind)?;
            }
            Call::Defer => self.deferred.push(from),
            Call::Hold => {
                self.held.push(from);
                self.log("held");
            }
            Call::DropReply => drop(from),
            Call::Block {
                entered,
                release,
                value,
            } => {
                let _ = entered.send(());
                let _ = release.recv();
                from.reply(value)
            }
            Call::ThreadName => {
                let ok = thread::current().name() == Some("test-named-thread");
                from.reply(u64::from(ok))
            }
            Call::Reenter => {
                let me = ctx.handle().expect("handle");
                let r = me.call_timeout(Call::Get, Duration::from_secs(1));
                from.reply(u64::from(matches!(r, Err(OtpError::CallingSelf))))
            }
            Call::StopMe => {
                from.reply(0);
                ctx.stop(ExitReason::Normal);
            }
            Call::Arm(d, k) => {
                ctx.send_after(d, Info::Tick(k));
                from.reply(0)
            }
            Call::Direct(on) => {
                ctx.allow_direct_calls(on);
                from.reply(0)
            }
        }
        Ok(())
    }

    fn handle_cast(&mut self, msg: Cast, _ctx: &mut Context<Self>) -> Result<(), WError> {
        self.batch += 1;
        match msg {
            Cast::Fail(kind) => self.fail(kind),
            Cast::Note => Ok(()),
            Cast::Add(k) => {
                self.n += k;
                Ok(())
            }
        }
    }

    fn handle_info(&mut self, msg: Info, ctx: &mut Context<Self>) -> Result<(), WError> {
        match msg {
            Info::Fail(kind) => self.fail(kind),
            Info::Tick(k) => {
                let _ = self.log.send(format!("tick:{}:{k}", self.id));
                Ok(())
            }
            Info::Arm(d, k) => {
                ctx.send_after(d, Info::Tick(k));
                Ok(())
            }
        }
    }

    fn handle_drained(&mut self, _ctx: &mut Context<Self>) -> Result<(), WError> {
        if self.log_drained {
            let _ = self.log.send(format!("drained:{}:{}", self.id, self.batch));
        }
        let size = self.deferred.len() as u64;
        for r in self.deferred.drain(..) {
            r.reply(size);
        }
        self.batch = 0;
        Ok(())
    }

    fn terminate(&mut self, _reason: &ExitReason) {
        self.log("terminate");
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Some(l) = &self.lock {
            l.store(false, Ordering::SeqCst);
        }
        self.log("drop");
    }
}

/// A blocking call: returns the call, a receiver that yields once the server is inside it, and
/// the sender that releases it.
fn block(value: u64) -> (Call, Receiver<()>, Sender<()>) {
    let (entered, entered_rx) = mpsc::channel();
    let (release_tx, release) = mpsc::channel();
    (
        Call::Block {
            entered,
            release,
            value,
        },
        entered_rx,
        release_tx,
    )
}

fn start_worker(id: &str, thread_name: &str) -> (Server<Worker>, Receiver<String>) {
    start_worker_mode(id, thread_name, false)
}

/// Starts a worker that allows direct calls (`direct`) or not.
fn start_worker_mode(
    id: &str,
    thread_name: &str,
    direct: bool,
) -> (Server<Worker>, Receiver<String>) {
    let (log, rx) = mpsc::channel();
    let mut args = WArgs::new(id, &log);
    args.direct = direct;
    let s = Server::start(thread_name, args).expect("start");
    assert_eq!(rx.recv_timeout(WAIT).unwrap(), format!("start:{id}"));
    (s, rx)
}

/// Reads exactly `expected` from the log, in order, then checks nothing else is there.
#[track_caller]
fn expect_log(rx: &Receiver<String>, expected: &[String]) {
    let mut got = Vec::new();
    for _ in expected {
        match rx.recv_timeout(WAIT) {
            Ok(e) => got.push(e),
            Err(_) => break,
        }
    }
    assert_eq!(got, expected, "log mismatch");
    assert_eq!(rx.try_recv().ok(), None, "unexpected extra log entry");
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

// ---------------------------------------------------------------- generic server

#[test]
fn call_cast_and_stop() {
    let (s, log) = start_worker("w", "test-w");
    assert_eq!(s.call(Call::Add(2)).unwrap(), 2);
    s.cast(Cast::Note).unwrap();
    assert_eq!(s.call(Call::Add(3)).unwrap(), 5);
    assert!(s.is_alive());
    assert_eq!(s.generation(), 1);
    s.stop(ExitReason::Normal).unwrap();
    expect_log(&log, &strs(&["terminate:w", "drop:w"]));
    assert!(!s.is_alive());
    assert!(matches!(s.call(Call::Get), Err(OtpError::NoProc)));
    assert!(matches!(s.cast(Cast::Note), Err(OtpError::NoProc)));
    assert!(matches!(s.stop(ExitReason::Normal), Err(OtpError::NoProc)));
}

#[test]
fn server_runs_on_its_named_thread() {
    let (s, _log) = start_worker("w", "test-named-thread");
    assert_eq!(s.thread_name(), "test-named-thread");
    assert_eq!(s.call(Call::ThreadName).unwrap(), 1);
}

#[test]
fn dropping_last_handle_stops_and_joins() {
    let (s, log) = start_worker("w", "test-drop");
    let s2 = s.clone();
    drop(s);
    assert_eq!(s2.call(Call::Add(1)).unwrap(), 1);
    drop(s2);
    // The join happened inside drop: the log is already complete, no waiting needed.
    assert_eq!(log.try_recv().ok().as_deref(), Some("terminate:w"));
    assert_eq!(log.try_recv().ok().as_deref(), Some("drop:w"));
}

#[test]
fn server_stops_itself_via_context() {
    let (s, log) = start_worker("w", "test-self-stop");
    assert_eq!(s.call(Call::StopMe).unwrap(), 0);
    expect_log(&log, &strs(&["terminate:w", "drop:w"]));
    assert!(wait_until(WAIT, || !s.is_alive()));
    assert!(matches!(s.call(Call::Get), Err(OtpError::NoProc)));
}

#[test]
fn deferred_replies_are_answered_in_handle_drained() {
    let (s, _log) = start_worker("w", "test-defer");
    assert_eq!(s.call(Call::Defer).unwrap(), 1);
    // Several concurrent deferred calls: every one gets an answer (the batch size it was in).
    let barrier = Barrier::new(4);
    thread::scope(|sc| {
        for _ in 0..4 {
            sc.spawn(|| {
                barrier.wait();
                let got = s.call(Call::Defer).unwrap();
                assert!((1..=4).contains(&got), "batch size {got}");
            });
        }
    });
}

#[test]
fn handle_drained_runs_once_per_run_of_messages() {
    let (log_tx, log) = mpsc::channel();
    let mut args = WArgs::new("w", &log_tx);
    args.log_drained = true;
    let s = Server::<Worker>::start("test-batch", args).unwrap();
    assert_eq!(log.recv_timeout(WAIT).unwrap(), "start:w");
    let (call, entered, unblock) = block(7);
    thread::scope(|sc| {
        let blocked = sc.spawn(|| s.call(call));
        entered.recv_timeout(WAIT).unwrap();
        // Casts are queued synchronously behind the blocking call.
        s.cast(Cast::Note).unwrap();
        s.cast(Cast::Note).unwrap();
        s.cast(Cast::Note).unwrap();
        unblock.send(()).unwrap();
        assert_eq!(blocked.join().unwrap().unwrap(), 7);
    });
    // One run: the blocking call and the 3 casts, then one handle_drained.
    assert_eq!(log.recv_timeout(WAIT).unwrap(), "drained:w:4");
}

#[test]
fn reply_dropped_is_distinct_and_server_survives() {
    let (s, log) = start_worker("w", "test-dropreply");
    assert!(matches!(
        s.call(Call::DropReply),
        Err(OtpError::ReplyDropped)
    ));
    assert_eq!(s.call(Call::Add(1)).unwrap(), 1);
    assert_eq!(log.try_recv().ok(), None);
}

#[test]
fn timeout_then_late_reply_is_discarded() {
    let (s, _log) = start_worker("w", "test-timeout");
    let (call, _entered, unblock) = block(999);
    let r = s.call_timeout(call, Duration::from_millis(20));
    assert!(matches!(r, Err(OtpError::Timeout)), "{r:?}");
    unblock.send(()).unwrap(); // the server now replies 999 to a caller that has gone
    for _ in 0..100 {
        assert_eq!(s.call(Call::Get).unwrap(), 0);
    }
}

#[test]
fn many_short_timeouts_never_cross_replies() {
    let (s, _log) = start_worker("w", "test-cross");
    thread::scope(|sc| {
        for t in 0..2u64 {
            let s = &s;
            sc.spawn(move || {
                for i in 0..2000u64 {
                    let v = t * 1_000_000 + i;
                    match s.call_timeout(Call::Add(0), Duration::from_micros(1 + (i % 50))) {
                        Ok(0) | Err(OtpError::Timeout) => {}
                        other => panic!("call {v}: unexpected {other:?}"),
                    }
                }
            });
        }
    });
    assert_eq!(s.call(Call::Get).unwrap(), 0);
}

#[test]
fn panic_in_unsupervised_server_fails_pending_and_held_calls() {
    panic_fails_pending_and_held_calls(false);
}

/// A call that panics (on the server's thread, or on the caller's with `direct`) fails itself and
/// a held call with the panic; no terminate runs, the state is dropped before the exit is
/// reported, and later calls find no process.
fn panic_fails_pending_and_held_calls(direct: bool) {
    let (s, log) = start_worker_mode("w", "test-panic", direct);
    let m = s.monitor().unwrap();
    let (held_tx, held_rx) = mpsc::channel();
    thread::scope(|sc| {
        let s2 = &s;
        sc.spawn(move || held_tx.send(s2.call(Call::Hold)).unwrap());
        assert_eq!(log.recv_timeout(WAIT).unwrap(), "held:w");
        let r = s.call(Call::Fail(Fail::Panic));
        assert!(
            matches!(&r, Err(OtpError::Exited(ExitReason::Panic(m))) if m == "boom w"),
            "{r:?}"
        );
    });
    let held = held_rx.recv_timeout(WAIT).unwrap();
    assert!(
        matches!(held, Err(OtpError::Exited(ExitReason::Panic(_)))),
        "{held:?}"
    );
    assert_eq!(m.wait(WAIT), Some(ExitReason::Panic("boom w".into())));
    // No terminate after a panic, but the state was dropped before the exit was reported.
    assert_eq!(log.try_recv().ok().as_deref(), Some("drop:w"));
    assert!(wait_until(WAIT, || matches!(
        s.call(Call::Get),
        Err(OtpError::NoProc)
    )));
}

#[test]
fn error_return_runs_terminate_and_reports_reason() {
    let (s, log) = start_worker("w", "test-error");
    let r = s.call(Call::Fail(Fail::Error));
    assert!(
        matches!(&r, Err(OtpError::Exited(ExitReason::Error(m))) if m == "boom w"),
        "{r:?}"
    );
    expect_log(&log, &strs(&["terminate:w", "drop:w"]));
}

#[test]
fn init_failure_is_a_typed_start_error() {
    for kind in [Fail::Panic, Fail::Error] {
        let (log, rx) = mpsc::channel();
        let args = WArgs::new("w", &log);
        args.init_fail.lock().unwrap().push_back(kind);
        let r = Server::<Worker>::start("test-initfail", args);
        match (kind, r) {
            (Fail::Panic, Err(OtpError::InitFailed(ExitReason::Panic(m)))) => {
                assert_eq!(m, "init boom w")
            }
            (Fail::Error, Err(OtpError::InitFailed(ExitReason::Error(m)))) => {
                assert_eq!(m, "init boom w")
            }
            (_, other) => panic!("unexpected {other:?}"),
        }
        expect_log(&rx, &strs(&["initfail:w"]));
    }
}

#[test]
fn calling_self_is_an_error_not_a_deadlock() {
    let (s, _log) = start_worker("w", "test-callself");
    assert_eq!(s.call(Call::Reenter).unwrap(), 1);
}

#[test]
fn timers_fire_and_cancel() {
    let (s, log) = start_worker("w", "test-timers");
    // From outside.
    let cancelled = s
        .send_after(Duration::from_millis(30), Info::Tick(1))
        .unwrap();
    let later = s
        .send_after(Duration::from_millis(60), Info::Tick(2))
        .unwrap();
    let was_pending = cancelled.cancel();
    let first = log.recv_timeout(WAIT).unwrap();
    if was_pending {
        assert_eq!(first, "tick:w:2", "a cancelled timer fired");
    } else {
        // The test thread was descheduled for 30 ms; the timer fired before cancel.
        assert_eq!(first, "tick:w:1");
        assert_eq!(log.recv_timeout(WAIT).unwrap(), "tick:w:2");
    }
    assert!(!later.is_pending());
    assert!(!later.cancel());
    // From inside, via the context.
    s.send(Info::Arm(Duration::from_millis(1), 3)).unwrap();
    assert_eq!(log.recv_timeout(WAIT).unwrap(), "tick:w:3");
    // Absurd delays and timeouts are accepted, not a panic.
    let never = s.send_after(Duration::MAX, Info::Tick(9)).unwrap();
    assert!(never.is_pending());
    assert_eq!(s.call_timeout(Call::Get, Duration::MAX).unwrap(), 0);
    // Timers die with the instance.
    let orphan = s
        .send_after(Duration::from_secs(3600), Info::Tick(4))
        .unwrap();
    s.stop(ExitReason::Normal).unwrap();
    assert!(orphan.is_pending());
    expect_log(&log, &strs(&["terminate:w", "drop:w"]));
}

#[test]
fn timer_ordering_is_by_deadline() {
    let (s, log) = start_worker("w", "test-timer-order");
    // Absolute deadlines, so a descheduled test thread cannot reorder them.
    let t = Instant::now();
    for (d, k) in [(40u64, 3u64), (0, 1), (20, 2), (20, 21)] {
        s.send_at(t + Duration::from_millis(d), Info::Tick(k))
            .unwrap();
    }
    expect_log(
        &log,
        &strs(&["tick:w:1", "tick:w:2", "tick:w:21", "tick:w:3"]),
    );
}

#[test]
fn registry_is_typed() {
    struct Other;
    impl GenServer for Other {
        type Args = ();
        type Call = ();
        type Reply = ();
        type Cast = ();
        type Info = ();
        type Error = std::convert::Infallible;
        fn init(_: (), _: &mut Context<Self>) -> Result<Self, Self::Error> {
            Ok(Other)
        }
        fn handle_call(
            &mut self,
            _: (),
            from: ReplyTo<()>,
            _: &mut Context<Self>,
        ) -> Result<(), Self::Error> {
            from.reply(());
            Ok(())
        }
    }
    let (s, _log) = start_worker("w", "test-registry");
    assert!(whereis::<Worker>("test-registry-name").unwrap().is_none());
    register("test-registry-name", &s).unwrap();
    let found = whereis::<Worker>("test-registry-name")
        .unwrap()
        .expect("registered");
    assert_eq!(found.call(Call::Add(4)).unwrap(), 4);
    assert!(matches!(
        whereis::<Other>("test-registry-name"),
        Err(OtpError::WrongType { .. })
    ));
    let other = Server::<Other>::start("test-registry-other", ()).unwrap();
    assert!(matches!(
        other.register("test-registry-name"),
        Err(OtpError::NameTaken(_))
    ));
    other.register("test-registry-other").unwrap();
    assert!(whereis::<Other>("test-registry-other").unwrap().is_some());
    assert!(unregister("test-registry-other"));
    assert!(!unregister("test-registry-other"));
    // The registry holds no strong reference: once all handles are gone, the name is free.
    drop(found);
    drop(s);
    assert!(whereis::<Worker>("test-registry-name").unwrap().is_none());
    register("test-registry-name", &other).unwrap();
}

// ---------------------------------------------------------------- supervision grid

#[derive(Clone, Copy, Debug)]
enum Site {
    /// The child fails its first `init`, at supervisor start.
    Init,
    /// The child crashes (by cast) and its `init` fails once when restarted.
    RestartInit,
    Call,
    Cast,
    Info,
}

struct Three {
    sup: Supervisor,
    handles: Vec<Server<Worker>>,
    log: Receiver<String>,
    args: Vec<WArgs>,
}

fn three_children(strategy: Strategy, init_fail_b: Option<Fail>) -> Result<Three, OtpError> {
    let (log_tx, log) = mpsc::channel();
    let mut spec = SupervisorSpec::new(strategy)
        .name("test-sup")
        .intensity(10, Duration::from_secs(60));
    let mut handles = Vec::new();
    let mut all_args = Vec::new();
    for id in ["a", "b", "c"] {
        let args = WArgs::new(id, &log_tx);
        if let (Some(f), "b") = (init_fail_b, id) {
            args.init_fail.lock().unwrap().push_back(f);
        }
        all_args.push(args.clone());
        let (child, h) =
            ChildSpec::server::<Worker>(id, format!("test-{id}"), move || args.clone());
        spec = spec.child(child);
        handles.push(h);
    }
    let sup = Supervisor::start(spec)?;
    expect_log(&log, &strs(&["start:a", "start:b", "start:c"]));
    Ok(Three {
        sup,
        handles,
        log,
        args: all_args,
    })
}

fn crash_b(t: &Three, site: Site, kind: Fail) {
    let b = &t.handles[1];
    match site {
        Site::Call => {
            let r = b.call(Call::Fail(kind));
            let ok = match kind {
                Fail::Panic => {
                    matches!(&r, Err(OtpError::Exited(ExitReason::Panic(m))) if m == "boom b")
                }
                Fail::Error => {
                    matches!(&r, Err(OtpError::Exited(ExitReason::Error(m))) if m == "boom b")
                }
            };
            assert!(ok, "call during crash: {r:?}");
        }
        Site::Cast | Site::RestartInit => b.cast(Cast::Fail(kind)).unwrap(),
        Site::Info => b.send(Info::Fail(kind)).unwrap(),
        Site::Init => unreachable!(),
    }
}

fn expected_restart(strategy: Strategy, site: Site, kind: Fail) -> Vec<String> {
    let mut v: Vec<&str> = Vec::new();
    // How b goes down.
    if kind == Fail::Error {
        v.push("terminate:b");
    }
    v.push("drop:b");
    // Who else is stopped (reverse start order, by the supervisor: orderly, so terminate runs).
    match strategy {
        Strategy::OneForOne => {}
        Strategy::OneForAll => v.extend(["terminate:c", "drop:c", "terminate:a", "drop:a"]),
        Strategy::RestForOne => v.extend(["terminate:c", "drop:c"]),
        _ => unreachable!(),
    }
    let restart_b: &[&str] = match site {
        Site::RestartInit => &["initfail:b", "start:b"],
        _ => &["start:b"],
    };
    match strategy {
        Strategy::OneForOne => v.extend(restart_b),
        Strategy::OneForAll => {
            v.push("start:a");
            v.extend(restart_b);
            v.push("start:c");
        }
        Strategy::RestForOne => {
            v.extend(restart_b);
            v.push("start:c");
        }
        _ => unreachable!(),
    }
    strs(&v)
}

fn expected_generations(strategy: Strategy) -> [u64; 3] {
    match strategy {
        Strategy::OneForOne => [1, 2, 1],
        Strategy::OneForAll => [2, 2, 2],
        Strategy::RestForOne => [1, 2, 2],
        _ => unreachable!(),
    }
}

#[test]
fn supervision_grid() {
    for strategy in [
        Strategy::OneForOne,
        Strategy::OneForAll,
        Strategy::RestForOne,
    ] {
        for kind in [Fail::Panic, Fail::Error] {
            for site in [
                Site::Init,
                Site::RestartInit,
                Site::Call,
                Site::Cast,
                Site::Info,
            ] {
                let case = format!("{strategy:?} {kind:?} {site:?}");
                if let Site::Init = site {
                    let r = three_children_init_failure(strategy, kind);
                    assert!(r, "{case}");
                    continue;
                }
                let t = three_children(strategy, None).expect("start");
                if let Site::RestartInit = site {
                    t.args[1].init_fail.lock().unwrap().push_back(kind);
                }
                crash_b(&t, site, kind);
                let gens = expected_generations(strategy);
                for (h, g) in t.handles.iter().zip(gens) {
                    h.wait_for_generation(g, WAIT)
                        .unwrap_or_else(|e| panic!("{case}: {e}"));
                }
                let want = expected_restart(strategy, site, kind);
                let mut got = Vec::new();
                for _ in &want {
                    got.push(t.log.recv_timeout(WAIT).unwrap_or_default());
                }
                assert_eq!(got, want, "{case}");
                assert_eq!(t.log.try_recv().ok(), None, "{case}: extra log entry");
                for (h, g) in t.handles.iter().zip(gens) {
                    assert_eq!(h.generation(), g, "{case}");
                    // Restarted children have fresh state, the others kept theirs.
                    assert_eq!(h.call(Call::Add(1)).unwrap(), 1, "{case}");
                }
                assert_eq!(t.sup.exit_reason(), None, "{case}");
                assert_eq!(t.sup.stop(), ExitReason::Shutdown, "{case}");
                let mut tail = Vec::new();
                while let Ok(e) = t.log.try_recv() {
                    tail.push(e);
                }
                assert_eq!(
                    tail,
                    strs(&[
                        "terminate:c",
                        "drop:c",
                        "terminate:b",
                        "drop:b",
                        "terminate:a",
                        "drop:a"
                    ]),
                    "{case}: shutdown order"
                );
            }
        }
    }
}

/// b's first init fails: the supervisor does not start; a is stopped again, c never started.
fn three_children_init_failure(strategy: Strategy, kind: Fail) -> bool {
    let (log_tx, log) = mpsc::channel();
    let mut spec = SupervisorSpec::new(strategy).name("test-sup-init");
    for id in ["a", "b", "c"] {
        let args = WArgs::new(id, &log_tx);
        if id == "b" {
            args.init_fail.lock().unwrap().push_back(kind);
        }
        let (child, _h) =
            ChildSpec::server::<Worker>(id, format!("test-{id}"), move || args.clone());
        spec = spec.child(child);
    }
    let r = Supervisor::start(spec);
    let ok = match (&r, kind) {
        (Err(OtpError::ChildStartFailed { id, source }), Fail::Panic) => {
            id == "b" && matches!(&**source, OtpError::InitFailed(ExitReason::Panic(_)))
        }
        (Err(OtpError::ChildStartFailed { id, source }), Fail::Error) => {
            id == "b" && matches!(&**source, OtpError::InitFailed(ExitReason::Error(_)))
        }
        _ => false,
    };
    expect_log(
        &log,
        &strs(&["start:a", "initfail:b", "terminate:a", "drop:a"]),
    );
    ok
}

// ---------------------------------------------------------------- supervisor behaviour

#[test]
fn intensity_exceeded_stops_everything_in_reverse_order() {
    let clock = Arc::new(ManualRestartClock::new());
    let (log_tx, log) = mpsc::channel();
    let (ev_tx, events) = mpsc::channel();
    let (ca, a) = ChildSpec::server::<Worker>("a", "test-int-a", {
        let args = WArgs::new("a", &log_tx);
        move || args.clone()
    });
    let (cb, b) = ChildSpec::server::<Worker>("b", "test-int-b", {
        let args = WArgs::new("b", &log_tx);
        move || args.clone()
    });
    // OTP's default intensity: 1 restart in 5 s.
    let sup = Supervisor::start(
        SupervisorSpec::new(Strategy::OneForOne)
            .name("test-int-sup")
            .clock(clock.clone())
            .events(ev_tx)
            .child(ca)
            .child(cb),
    )
    .unwrap();
    expect_log(&log, &strs(&["start:a", "start:b"]));
    // One crash: restarted.
    b.cast(Cast::Fail(Fail::Panic)).unwrap();
    b.wait_for_generation(2, WAIT).unwrap();
    expect_log(&log, &strs(&["drop:b", "start:b"]));
    // Six seconds later another crash is only the first in the window: restarted again.
    clock.advance(Duration::from_secs(6));
    b.cast(Cast::Fail(Fail::Panic)).unwrap();
    b.wait_for_generation(3, WAIT).unwrap();
    expect_log(&log, &strs(&["drop:b", "start:b"]));
    // A second crash within 5 s: the supervisor gives up.
    clock.advance(Duration::from_secs(1));
    b.cast(Cast::Fail(Fail::Panic)).unwrap();
    assert_eq!(
        sup.wait_exit(WAIT),
        Some(ExitReason::ReachedMaxRestartIntensity)
    );
    expect_log(&log, &strs(&["drop:b", "terminate:a", "drop:a"]));
    assert!(matches!(a.call(Call::Get), Err(OtpError::NoProc)));
    assert!(matches!(b.call(Call::Get), Err(OtpError::NoProc)));
    let all: Vec<SupervisorEvent> = events.try_iter().collect();
    assert_eq!(
        all.last(),
        Some(&SupervisorEvent::Stopped {
            reason: ExitReason::ReachedMaxRestartIntensity
        })
    );
    assert!(matches!(sup.which_children(), Err(OtpError::NoProc)));
}

#[test]
fn transient_child_restarts_only_after_abnormal_exit() {
    let (log_tx, log) = mpsc::channel();
    let args = WArgs::new("t", &log_tx);
    let (spec, t) = ChildSpec::server::<Worker>("t", "test-transient", move || args.clone());
    let sup = Supervisor::start(
        SupervisorSpec::new(Strategy::OneForOne)
            .name("test-sup-transient")
            .child(spec.restart(Restart::Transient)),
    )
    .unwrap();
    expect_log(&log, &strs(&["start:t"]));
    t.cast(Cast::Fail(Fail::Error)).unwrap();
    t.wait_for_generation(2, WAIT).unwrap();
    expect_log(&log, &strs(&["terminate:t", "drop:t", "start:t"]));
    t.stop(ExitReason::Normal).unwrap();
    expect_log(&log, &strs(&["terminate:t", "drop:t"]));
    // which_children is answered after the exit notice is handled (FIFO supervisor mailbox).
    assert!(wait_until(WAIT, || !sup.which_children().unwrap()[0].running));
    assert_eq!(t.generation(), 2);
    assert!(matches!(t.call(Call::Get), Err(OtpError::NoProc)));
    sup.restart_child("t").unwrap();
    assert_eq!(t.generation(), 3);
    assert_eq!(t.call(Call::Add(2)).unwrap(), 2);
}

#[test]
fn temporary_child_is_never_restarted_and_is_forgotten() {
    let (log_tx, log) = mpsc::channel();
    let args = WArgs::new("t", &log_tx);
    let (spec, t) = ChildSpec::server::<Worker>("t", "test-temporary", move || args.clone());
    let sup = Supervisor::start(
        SupervisorSpec::new(Strategy::OneForOne)
            .name("test-sup-temp")
            .child(spec.restart(Restart::Temporary)),
    )
    .unwrap();
    expect_log(&log, &strs(&["start:t"]));
    t.cast(Cast::Fail(Fail::Panic)).unwrap();
    expect_log(&log, &strs(&["drop:t"]));
    assert!(wait_until(WAIT, || sup
        .which_children()
        .unwrap()
        .is_empty()));
    assert_eq!(t.generation(), 1);
    assert!(matches!(t.call(Call::Get), Err(OtpError::NoProc)));
}

#[test]
fn shutdown_timeout_escalates_to_kill() {
    let (log_tx, log) = mpsc::channel();
    let args = WArgs::new("s", &log_tx);
    let (spec, s) = ChildSpec::server::<Worker>("s", "test-slow", move || args.clone());
    let sup = Supervisor::start(
        SupervisorSpec::new(Strategy::OneForOne)
            .name("test-sup-slow")
            .child(spec.shutdown(Shutdown::Timeout(Duration::from_millis(50)))),
    )
    .unwrap();
    expect_log(&log, &strs(&["start:s"]));
    let (call, entered, unblock) = block(5);
    thread::scope(|sc| {
        let s2 = &s;
        let blocked = sc.spawn(move || s2.call(call));
        entered.recv_timeout(WAIT).unwrap();
        let t0 = Instant::now();
        sup.terminate_child("s").unwrap();
        assert!(t0.elapsed() >= Duration::from_millis(50));
        // The handle refuses calls at once, although the thread is still inside its callback.
        assert!(matches!(s.call(Call::Get), Err(OtpError::NoProc)));
        assert_eq!(
            log.try_recv().ok(),
            None,
            "killed child still running its callback"
        );
        unblock.send(()).unwrap();
        // The call in progress completes; then the thread exits without terminate.
        assert_eq!(blocked.join().unwrap().unwrap(), 5);
    });
    expect_log(&log, &strs(&["drop:s"]));
}

#[test]
fn brutal_kill_refuses_calls_at_once() {
    let (log_tx, log) = mpsc::channel();
    let args = WArgs::new("k", &log_tx);
    let (spec, k) = ChildSpec::server::<Worker>("k", "test-brutal", move || args.clone());
    let sup = Supervisor::start(
        SupervisorSpec::new(Strategy::OneForOne)
            .name("test-sup-brutal")
            .child(spec.shutdown(Shutdown::BrutalKill)),
    )
    .unwrap();
    expect_log(&log, &strs(&["start:k"]));
    sup.terminate_child("k").unwrap();
    assert!(matches!(k.call(Call::Get), Err(OtpError::NoProc)));
    // The detached thread exits at its next message check, without terminate.
    expect_log(&log, &strs(&["drop:k"]));
    sup.restart_child("k").unwrap();
    assert_eq!(k.call(Call::Add(1)).unwrap(), 1);
}

/// Regression test for issue 11's per-thread copies of an instance's caller side: a thread
/// that has called an instance keeps a copy of it (and a reply cell for it) for its next calls.
/// Once the instance is killed the same thread's calls get `NoProc`, and once it is restarted
/// (by hand, or after a crash) they reach the new instance, never the copy of the old one.
#[test]
fn a_callers_copy_of_an_instance_is_never_used_after_it_is_replaced() {
    for direct in [false, true] {
        let (log_tx, log) = mpsc::channel();
        let mut args = WArgs::new("c", &log_tx);
        args.direct = direct;
        let (spec, c) = ChildSpec::server::<Worker>("c", "test-copy", move || args.clone());
        let sup = Supervisor::start(
            SupervisorSpec::new(Strategy::OneForOne)
                .name("test-sup-copy")
                .child(spec.shutdown(Shutdown::BrutalKill)),
        )
        .unwrap();
        expect_log(&log, &strs(&["start:c"]));
        assert_eq!(c.call(Call::Add(5)).unwrap(), 5);
        // Through this thread's copy.
        assert_eq!(c.call(Call::Add(1)).unwrap(), 6);
        sup.terminate_child("c").unwrap();
        assert!(matches!(c.call(Call::Get), Err(OtpError::NoProc)));
        sup.restart_child("c").unwrap();
        // A new instance: its counter starts from zero.
        assert_eq!(c.call(Call::Add(1)).unwrap(), 1, "direct: {direct}");
        assert_eq!(c.call(Call::Add(1)).unwrap(), 2, "direct: {direct}");
        let generation = c.generation();
        c.cast(Cast::Fail(Fail::Panic)).unwrap();
        c.wait_for_generation(generation + 1, WAIT).unwrap();
        assert_eq!(c.call(Call::Add(3)).unwrap(), 3, "direct: {direct}");
    }
}

#[test]
fn state_is_dropped_before_the_supervisor_restarts() {
    // The lock is taken in init and released in Drop: restarting before the drop would fail.
    for _ in 0..20 {
        let (log_tx, log) = mpsc::channel();
        let mut args = WArgs::new("l", &log_tx);
        args.lock = Some(Arc::new(AtomicBool::new(false)));
        let (spec, l) = ChildSpec::server::<Worker>("l", "test-lock", move || args.clone());
        let sup = Supervisor::start(
            SupervisorSpec::new(Strategy::OneForOne)
                .name("test-sup-lock")
                .intensity(1, Duration::from_secs(60))
                .child(spec),
        )
        .unwrap();
        while log.try_recv().is_ok() {}
        l.cast(Cast::Fail(Fail::Panic)).unwrap();
        l.wait_for_generation(2, WAIT).unwrap();
        expect_log(&log, &strs(&["drop:l", "start:l"]));
        assert_eq!(sup.exit_reason(), None);
    }
}

#[test]
fn calls_in_flight_during_a_supervised_crash_get_the_exit_error() {
    let (log_tx, log) = mpsc::channel();
    let args = WArgs::new("f", &log_tx);
    let (spec, f) = ChildSpec::server::<Worker>("f", "test-inflight", move || args.clone());
    let _sup = Supervisor::start(
        SupervisorSpec::new(Strategy::OneForOne)
            .name("test-sup-inflight")
            .child(spec),
    )
    .unwrap();
    let (done_tx, done) = mpsc::channel();
    for _ in 0..3 {
        let f = f.clone();
        let done_tx = done_tx.clone();
        thread::spawn(move || done_tx.send(f.call(Call::Hold)).unwrap());
    }
    expect_log(&log, &strs(&["start:f", "held:f", "held:f", "held:f"]));
    // A call queued behind the crash also gets the exit error.
    let (call, entered, release) = block(1);
    let (queued_tx, queued) = mpsc::channel();
    thread::scope(|sc| {
        let f2 = &f;
        sc.spawn(move || f2.call(call));
        entered.recv_timeout(WAIT).unwrap();
        f.cast(Cast::Fail(Fail::Panic)).unwrap();
        sc.spawn(move || queued_tx.send(f2.call(Call::Get)).unwrap());
        // We cannot see the Get enter the mailbox, so accept either outcome for it below; the
        // held calls are deterministic.
        release.send(()).unwrap();
    });
    for _ in 0..3 {
        let r = done.recv_timeout(WAIT).unwrap();
        assert!(
            matches!(r, Err(OtpError::Exited(ExitReason::Panic(_)))),
            "{r:?}"
        );
    }
    match queued.recv_timeout(WAIT).unwrap() {
        Err(OtpError::Exited(ExitReason::Panic(_))) | Err(OtpError::NoProc) | Ok(0) => {}
        other => panic!("queued call: {other:?}"),
    }
    f.wait_for_generation(2, WAIT).unwrap();
    assert_eq!(f.call(Call::Add(3)).unwrap(), 3);
}

#[test]
fn nested_supervisors() {
    let (log_tx, log) = mpsc::channel();
    let x = Server::<Worker>::unstarted("test-x");
    let y = Server::<Worker>::unstarted("test-y");
    let inner = {
        let (x, y, log_tx) = (x.clone(), y.clone(), log_tx.clone());
        move || {
            let ax = WArgs::new("x", &log_tx);
            let ay = WArgs::new("y", &log_tx);
            SupervisorSpec::new(Strategy::OneForAll)
                .name("test-inner-sup")
                .intensity(1, Duration::from_secs(60))
                .child(ChildSpec::for_server("x", &x, move || ax.clone()))
                .child(ChildSpec::for_server("y", &y, move || ay.clone()))
        }
    };
    let az = WArgs::new("z", &log_tx);
    let (cz, z) = ChildSpec::server::<Worker>("z", "test-z", move || az.clone());
    let top = Supervisor::start(
        SupervisorSpec::new(Strategy::OneForOne)
            .name("test-top-sup")
            .intensity(5, Duration::from_secs(60))
            .child(ChildSpec::supervisor("inner", inner))
            .child(cz),
    )
    .unwrap();
    expect_log(&log, &strs(&["start:x", "start:y", "start:z"]));
    // First crash of x: the inner supervisor restarts x and y (one-for-all); z is untouched.
    x.cast(Cast::Fail(Fail::Panic)).unwrap();
    y.wait_for_generation(2, WAIT).unwrap();
    expect_log(
        &log,
        &strs(&["drop:x", "terminate:y", "drop:y", "start:x", "start:y"]),
    );
    // Second crash: the inner supervisor exceeds its intensity, stops y and exits; the top
    // supervisor restarts it, which starts x and y again.
    x.cast(Cast::Fail(Fail::Panic)).unwrap();
    y.wait_for_generation(3, WAIT).unwrap();
    expect_log(
        &log,
        &strs(&["drop:x", "terminate:y", "drop:y", "start:x", "start:y"]),
    );
    assert_eq!(z.generation(), 1);
    assert_eq!(x.call(Call::Add(1)).unwrap(), 1);
    assert_eq!(top.which_children().unwrap().len(), 2);
    // Shutdown: reverse order, recursively.
    top.stop();
    expect_log(
        &log,
        &strs(&[
            "terminate:z",
            "drop:z",
            "terminate:y",
            "drop:y",
            "terminate:x",
            "drop:x",
        ]),
    );
}

#[test]
fn dynamic_children() {
    let (log_tx, log) = mpsc::channel();
    let sup = Supervisor::start(SupervisorSpec::new(Strategy::OneForOne).name("test-dyn")).unwrap();
    let mut handles = Vec::new();
    for i in 0..3 {
        let id = format!("d{i}");
        let args = WArgs::new(&id, &log_tx);
        let (spec, h) =
            ChildSpec::server::<Worker>(id.clone(), format!("test-{id}"), move || args.clone());
        sup.start_child(spec).unwrap();
        handles.push(h);
    }
    expect_log(&log, &strs(&["start:d0", "start:d1", "start:d2"]));
    let args = WArgs::new("d0", &log_tx);
    let (dup, _h) = ChildSpec::server::<Worker>("d0", "test-dup", move || args.clone());
    assert!(matches!(
        sup.start_child(dup),
        Err(OtpError::DuplicateChild(_))
    ));
    assert!(matches!(
        sup.delete_child("d1"),
        Err(OtpError::ChildRunning(_))
    ));
    sup.terminate_child("d1").unwrap();
    expect_log(&log, &strs(&["terminate:d1", "drop:d1"]));
    sup.delete_child("d1").unwrap();
    assert!(matches!(
        sup.terminate_child("d1"),
        Err(OtpError::NoSuchChild(_))
    ));
    let ids: Vec<String> = sup
        .which_children()
        .unwrap()
        .into_iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(ids, strs(&["d0", "d2"]));
    let events = sup.subscribe().unwrap();
    handles[2].cast(Cast::Fail(Fail::Error)).unwrap();
    handles[2].wait_for_generation(2, WAIT).unwrap();
    let evs: Vec<SupervisorEvent> = (0..2).map(|_| events.recv_timeout(WAIT).unwrap()).collect();
    assert_eq!(
        evs,
        vec![
            SupervisorEvent::ChildExited {
                id: "d2".into(),
                reason: ExitReason::Error("boom d2".into())
            },
            SupervisorEvent::ChildStarted { id: "d2".into() },
        ]
    );
    drop(sup);
    expect_log(
        &log,
        &strs(&[
            "terminate:d2",
            "drop:d2",
            "start:d2",
            "terminate:d2",
            "drop:d2",
            "terminate:d0",
            "drop:d0",
        ]),
    );
}

#[test]
fn simple_one_for_one_style_start_with_args() {
    let (log_tx, log) = mpsc::channel();
    let sup =
        Supervisor::start(SupervisorSpec::new(Strategy::OneForOne).name("test-sofo")).unwrap();
    let w1 = sup
        .start_server_child::<Worker>(
            "w1",
            "test-sofo-1",
            WArgs::new("w1", &log_tx),
            Restart::Transient,
        )
        .unwrap();
    let w2 = sup
        .start_server_child::<Worker>(
            "w2",
            "test-sofo-2",
            WArgs::new("w2", &log_tx),
            Restart::Temporary,
        )
        .unwrap();
    expect_log(&log, &strs(&["start:w1", "start:w2"]));
    assert_eq!(w1.call(Call::Add(1)).unwrap(), 1);
    w1.cast(Cast::Fail(Fail::Panic)).unwrap();
    w1.wait_for_generation(2, WAIT).unwrap();
    w2.cast(Cast::Fail(Fail::Panic)).unwrap();
    expect_log(&log, &strs(&["drop:w1", "start:w1", "drop:w2"]));
    assert!(wait_until(WAIT, || sup.which_children().unwrap().len() == 1));
}

#[test]
fn handles_are_send_sync_clone() {
    fn check<T: Send + Sync + Clone>() {}
    fn send<T: Send>() {}
    check::<Server<Worker>>();
    send::<ReplyTo<u64>>();
    send::<Supervisor>();
    fn sync<T: Sync>() {}
    sync::<Supervisor>();
}

/// Regression: a reply handle dropped unanswered by a callback that then panicked was parked
/// waiting to learn whether the callback failed, and never settled: the caller hung until its
/// timeout instead of getting the exit reason.
#[test]
fn reply_dropped_before_a_failure_gets_the_exit_reason() {
    for kind in [Fail::Panic, Fail::Error] {
        let (s, _log) = start_worker("w", "test-drop-then-fail");
        let r = s.call(Call::DropThenFail(kind));
        let ok = match kind {
            Fail::Panic => matches!(r, Err(OtpError::Exited(ExitReason::Panic(_)))),
            Fail::Error => matches!(r, Err(OtpError::Exited(ExitReason::Error(_)))),
        };
        assert!(ok, "{kind:?}: {r:?}");
    }
}

#[test]
fn handle_drained_runs_at_least_every_max_run_messages() {
    let (log_tx, log) = mpsc::channel();
    let mut args = WArgs::new("w", &log_tx);
    args.log_drained = true;
    let s = Server::<Worker>::start("test-max-run", args).unwrap();
    assert_eq!(log.recv_timeout(WAIT).unwrap(), "start:w");
    let (call, entered, unblock) = block(0);
    thread::scope(|sc| {
        let blocked = sc.spawn(|| s.call(call));
        entered.recv_timeout(WAIT).unwrap();
        for _ in 0..freqalloc::otp::MAX_RUN + 10 {
            s.cast(Cast::Note).unwrap();
        }
        unblock.send(()).unwrap();
        blocked.join().unwrap().unwrap();
    });
    // The blocking call plus MAX_RUN - 1 casts, then the 11 remaining casts.
    assert_eq!(
        log.recv_timeout(WAIT).unwrap(),
        format!("drained:w:{}", freqalloc::otp::MAX_RUN)
    );
    assert_eq!(log.recv_timeout(WAIT).unwrap(), "drained:w:11");
}

/// A panicking start closure is a failed start, not a dead supervisor thread (which would leave
/// `Supervisor::drop` waiting forever).
#[test]
fn panicking_start_closure_is_a_failed_start() {
    let (log_tx, log) = mpsc::channel();
    let sup =
        Supervisor::start(SupervisorSpec::new(Strategy::OneForOne).name("test-sup-args")).unwrap();
    let (spec, h) = ChildSpec::server::<Worker>("p", "test-args-panic", || -> WArgs {
        panic!("no args today")
    });
    let r = sup.start_child(spec);
    assert!(
        matches!(&r, Err(OtpError::InitFailed(ExitReason::Panic(m))) if m == "no args today"),
        "{r:?}"
    );
    assert!(matches!(h.call(Call::Get), Err(OtpError::NoProc)));
    let args = WArgs::new("ok", &log_tx);
    sup.start_server_child::<Worker>("ok", "test-args-ok", args, Restart::Permanent)
        .unwrap();
    expect_log(&log, &strs(&["start:ok"]));
    drop(sup);
    expect_log(&log, &strs(&["terminate:ok", "drop:ok"]));
}

/// Calls racing with repeated crashes and restarts: every call ends with a reply, `Exited` or
/// `NoProc`, never a hang (which would show as `Timeout`).
#[test]
fn calls_racing_crashes_never_hang() {
    calls_racing_crashes(false);
}

/// Three callers call a supervised server while it is crashed 30 times (alternating panics and
/// errors, by casts). With `direct`, the server takes direct calls and one caller's own calls
/// crash it too, on that caller's thread. No call may hang or fail with anything but the exit.
fn calls_racing_crashes(direct: bool) {
    let (log_tx, _log) = mpsc::channel();
    let mut args = WArgs::new("r", &log_tx);
    args.direct = direct;
    let thread = if direct {
        "test-direct-race"
    } else {
        "test-race"
    };
    let (spec, r) = ChildSpec::server::<Worker>("r", thread, move || args.clone());
    let _sup = Supervisor::start(
        SupervisorSpec::new(Strategy::OneForOne)
            .name(format!("{thread}-sup"))
            .intensity(1000, Duration::from_secs(60))
            .child(spec),
    )
    .unwrap();
    let crashes = 30u64;
    let stop = AtomicBool::new(false);
    thread::scope(|sc| {
        for t in 0..3u64 {
            let (r, stop) = (&r, &stop);
            sc.spawn(move || {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let call = if direct && t == 0 && i.is_multiple_of(64) {
                        Call::Fail(if i.is_multiple_of(128) {
                            Fail::Panic
                        } else {
                            Fail::Error
                        })
                    } else if i.is_multiple_of(2) {
                        Call::Defer
                    } else {
                        Call::Add(1)
                    };
                    match r.call(call) {
                        Ok(_) | Err(OtpError::Exited(_)) | Err(OtpError::NoProc) => {}
                        Err(e) => panic!("call failed with {e:?}"),
                    }
                }
            });
        }
        for g in 1..=crashes {
            r.wait_for_generation(g, WAIT).unwrap();
            let _ = r.cast(Cast::Fail(if g % 2 == 0 {
                Fail::Panic
            } else {
                Fail::Error
            }));
        }
        r.wait_for_generation(crashes + 1, WAIT).unwrap();
        stop.store(true, Ordering::Relaxed);
    });
}

#[test]
fn monitor_reports_the_exit_after_the_state_is_dropped() {
    let (s, log) = start_worker("m", "test-monitor");
    let m = s.monitor().unwrap();
    assert_eq!(m.exit_reason(), None);
    assert_eq!(m.wait(Duration::from_millis(1)), None);
    s.cast(Cast::Fail(Fail::Error)).unwrap();
    assert_eq!(m.wait(WAIT), Some(ExitReason::Error("boom m".into())));
    // The state was dropped before the monitor heard: the log is complete already.
    assert_eq!(log.try_recv().ok().as_deref(), Some("terminate:m"));
    assert_eq!(log.try_recv().ok().as_deref(), Some("drop:m"));
    // Monitoring an instance that has already exited reports its reason at once.
    assert_eq!(
        s.monitor().unwrap().exit_reason(),
        Some(ExitReason::Error("boom m".into()))
    );
}

// ---------------------------------------------------------------- direct calls
//
// The same server with `Context::allow_direct_calls(true)`: a call made when the mailbox is empty
// runs on the caller's thread. Each test below checks one guarantee the docs give for it.

#[test]
fn direct_calls_run_on_the_callers_thread_and_can_be_turned_off() {
    let (s, _log) = start_worker_mode("d", "test-named-thread", true);
    // Nothing is queued, so the call runs here, not on `test-named-thread`.
    assert_eq!(s.call(Call::ThreadName).unwrap(), 0);
    assert_eq!(s.call(Call::Direct(false)).unwrap(), 0);
    assert_eq!(s.call(Call::ThreadName).unwrap(), 1);
    // Turned on from the server's own thread, it takes effect for the next call.
    assert_eq!(s.call(Call::Direct(true)).unwrap(), 0);
    assert_eq!(s.call(Call::ThreadName).unwrap(), 0);
}

#[test]
fn direct_calls_keep_each_senders_order() {
    let (s, _log) = start_worker_mode("d", "test-direct-order", true);
    // A call right behind a cast must see the cast's effect, whether the cast is still queued
    // (the call then goes through the mailbox) or already handled (the call runs here).
    for i in 1..=2000u64 {
        s.cast(Cast::Add(1)).unwrap();
        assert_eq!(s.call(Call::Get).unwrap(), i);
    }
}

#[test]
fn direct_calls_are_mutually_exclusive() {
    let (s, _log) = start_worker_mode("d", "test-direct-excl", true);
    let threads = 4u64;
    let per = 5000u64;
    let barrier = Barrier::new(threads as usize);
    thread::scope(|sc| {
        for _ in 0..threads {
            sc.spawn(|| {
                barrier.wait();
                for _ in 0..per {
                    s.call(Call::Add(1)).unwrap();
                    s.cast(Cast::Add(1)).unwrap();
                }
            });
        }
    });
    assert_eq!(s.call(Call::Get).unwrap(), 2 * threads * per);
}

#[test]
fn direct_call_deferred_reply_is_answered_by_handle_drained() {
    let (s, _log) = start_worker_mode("d", "test-direct-defer", true);
    // A direct call is a run of one message: handle_drained runs right after it.
    assert_eq!(s.call(Call::Defer).unwrap(), 1);
    assert!(matches!(
        s.call(Call::DropReply),
        Err(OtpError::ReplyDropped)
    ));
    assert_eq!(s.call(Call::Add(2)).unwrap(), 2);
}

#[test]
fn direct_call_calling_self_is_an_error_not_a_deadlock() {
    let (s, _log) = start_worker_mode("d", "test-direct-self", true);
    assert_eq!(s.call(Call::Reenter).unwrap(), 1);
}

#[test]
fn direct_call_panic_ends_the_server_like_its_own_thread() {
    panic_fails_pending_and_held_calls(true);
}

#[test]
fn direct_call_error_runs_terminate_and_reports_the_reason() {
    let (s, log) = start_worker_mode("d", "test-direct-error", true);
    let m = s.monitor().unwrap();
    let r = s.call(Call::Fail(Fail::Error));
    assert!(
        matches!(&r, Err(OtpError::Exited(ExitReason::Error(msg))) if msg == "boom d"),
        "{r:?}"
    );
    assert_eq!(m.wait(WAIT), Some(ExitReason::Error("boom d".into())));
    expect_log(&log, &strs(&["terminate:d", "drop:d"]));
}

#[test]
fn direct_call_stop_request_stops_the_server() {
    let (s, log) = start_worker_mode("d", "test-direct-stop", true);
    let m = s.monitor().unwrap();
    assert_eq!(s.call(Call::StopMe).unwrap(), 0);
    assert_eq!(m.wait(WAIT), Some(ExitReason::Normal));
    expect_log(&log, &strs(&["terminate:d", "drop:d"]));
}

#[test]
fn timer_set_by_a_direct_call_wakes_the_idle_server() {
    let (s, log) = start_worker_mode("d", "test-direct-timer", true);
    // The server thread is parked with no timer; the direct call sets one and must wake it.
    assert_eq!(s.call(Call::Arm(Duration::from_millis(5), 7)).unwrap(), 0);
    assert_eq!(log.recv_timeout(WAIT).unwrap(), "tick:d:7");
    assert_eq!(s.call(Call::Arm(Duration::ZERO, 8)).unwrap(), 0);
    assert_eq!(log.recv_timeout(WAIT).unwrap(), "tick:d:8");
}

#[test]
fn direct_calls_racing_supervised_crashes_never_hang() {
    calls_racing_crashes(true);
}

// ---------------------------------------------------------------------------------------------
// Direct calls that cannot deadlock and do not lie (issue 11, part 2)

/// Regression (issue 11): a lock wait that ran out was reported as `Timeout` ("may have
/// happened"), although the request was never run nor queued. It is `NotDelivered` now, and the
/// request indeed never takes effect.
#[test]
fn direct_call_that_never_gets_the_lock_is_not_delivered() {
    let (s, _log) = start_worker_mode("nd", "test-not-delivered", true);
    let (call, entered, release) = block(7);
    thread::scope(|scope| {
        let holder = scope.spawn(|| s.call(call));
        // The blocking call now holds the state lock (on this thread or the server's).
        entered.recv_timeout(WAIT).unwrap();
        let r = s.call_timeout(Call::Add(1), Duration::from_millis(50));
        // Released before any assertion, so a failure cannot leave the scope waiting.
        release.send(()).unwrap();
        assert_eq!(holder.join().unwrap().unwrap(), 7);
        assert!(matches!(r, Err(OtpError::NotDelivered)), "{r:?}");
    });
    // The undelivered `Add(1)` never ran.
    assert_eq!(s.call(Call::Get).unwrap(), 0);
}

/// What the supervisor-calling server is asked to do to itself, from inside a call.
#[derive(Clone, Copy, Debug)]
enum SelfOp {
    Terminate,
    TerminateThenRestart,
}

/// A server whose callback asks its own supervisor to terminate (and maybe restart) it.
struct Suicidal {
    sup: Arc<Mutex<Option<Supervisor>>>,
}

impl GenServer for Suicidal {
    type Args = Arc<Mutex<Option<Supervisor>>>;
    type Call = SelfOp;
    type Reply = Result<(), String>;
    type Cast = ();
    type Info = ();
    type Error = std::convert::Infallible;

    fn init(sup: Self::Args, ctx: &mut Context<Self>) -> Result<Self, Self::Error> {
        ctx.allow_direct_calls(true);
        Ok(Suicidal { sup })
    }

    fn handle_call(
        &mut self,
        op: SelfOp,
        from: ReplyTo<Result<(), String>>,
        _ctx: &mut Context<Self>,
    ) -> Result<(), Self::Error> {
        let guard = self.sup.lock().unwrap();
        let sup = guard.as_ref().expect("supervisor set");
        let mut r = sup.terminate_child("me").map_err(|e| e.to_string());
        if let (SelfOp::TerminateThenRestart, Ok(())) = (op, &r) {
            r = sup.restart_child("me").map_err(|e| e.to_string());
        }
        drop(guard);
        from.reply(r);
        Ok(())
    }
}

/// Regression (issue 11): a direct call held the handle's slot read lock across its callback,
/// so a callback that asked its supervisor to kill its own child never returned (the kill
/// needs that lock's write side, and the supervisor request has no timeout). The call is made
/// on a helper thread and waited for with a bound, so the old deadlock fails the test.
#[test]
fn direct_callback_may_terminate_or_restart_its_own_child() {
    for op in [SelfOp::Terminate, SelfOp::TerminateThenRestart] {
        let holder: Arc<Mutex<Option<Supervisor>>> = Arc::default();
        let args = holder.clone();
        let (spec, server) =
            ChildSpec::server::<Suicidal>("me", "test-suicidal", move || args.clone());
        let sup = Supervisor::start(
            SupervisorSpec::new(Strategy::OneForOne).child(spec.shutdown(Shutdown::BrutalKill)),
        )
        .unwrap();
        *holder.lock().unwrap() = Some(sup);
        let (done_tx, done) = mpsc::channel();
        let caller = server.clone();
        thread::Builder::new()
            .name("test-suicidal-caller".into())
            .spawn(move || {
                let _ = done_tx.send(caller.call_timeout(op, WAIT));
            })
            .unwrap();
        let r = done
            .recv_timeout(WAIT)
            .unwrap_or_else(|_| panic!("{op:?}: the direct call deadlocked"));
        assert!(matches!(r, Ok(Ok(()))), "{op:?}: {r:?}");
        match op {
            SelfOp::Terminate => {
                assert!(!server.is_alive());
                assert!(matches!(
                    server.call(SelfOp::Terminate),
                    Err(OtpError::NoProc)
                ));
            }
            SelfOp::TerminateThenRestart => {
                server.wait_for_generation(2, WAIT).unwrap();
                assert!(server.is_alive());
            }
        }
        let sup = holder.lock().unwrap().take().unwrap();
        assert_eq!(sup.stop(), ExitReason::Shutdown);
    }
}

/// A start failure reaches the caller typed: the server's own error, downcast from the exit
/// reason, with no side channel (issue 11).
#[test]
fn init_error_reaches_the_caller_typed() {
    let (log, _rx) = mpsc::channel();
    let args = WArgs::new("ty", &log);
    args.init_fail.lock().unwrap().push_back(Fail::Error);
    match Server::<Worker>::start("test-typed-init", args.clone()) {
        Err(OtpError::InitFailed(ExitReason::Error(e))) => {
            let typed = e.downcast_ref::<WError>().expect("a WError");
            assert_eq!(typed.0, "init boom ty");
        }
        other => panic!("unexpected {other:?}"),
    }
    // Through a supervisor, the same error is the source of `ChildStartFailed`.
    args.init_fail.lock().unwrap().push_back(Fail::Error);
    let (spec, _server) =
        ChildSpec::server::<Worker>("ty", "test-typed-init", move || args.clone());
    match Supervisor::start(SupervisorSpec::new(Strategy::OneForOne).child(spec)) {
        Err(OtpError::ChildStartFailed { id, source }) => {
            assert_eq!(id, "ty");
            match *source {
                OtpError::InitFailed(ExitReason::Error(e)) => {
                    assert_eq!(e.downcast_ref::<WError>().unwrap().0, "init boom ty");
                }
                other => panic!("unexpected source {other:?}"),
            }
        }
        other => panic!("unexpected {other:?}"),
    }
}

/// A callback's error is the exit reason itself, downcastable by a monitor and by the caller
/// whose call was pending.
#[test]
fn callback_error_reaches_callers_and_monitors_typed() {
    let (s, _log) = start_worker_mode("te", "test-typed-exit", true);
    let m = s.monitor().unwrap();
    match s.call(Call::Fail(Fail::Error)) {
        Err(OtpError::Exited(ExitReason::Error(e))) => {
            assert_eq!(e.downcast_ref::<WError>().unwrap().0, "boom te");
        }
        other => panic!("unexpected {other:?}"),
    }
    match m.wait(WAIT) {
        Some(ExitReason::Error(e)) => assert!(e.is::<WError>()),
        other => panic!("unexpected {other:?}"),
    }
}
