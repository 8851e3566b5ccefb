//! Integration tests of the supervisor's restart backoff (`SupervisorSpec::backoff`).
//!
//! Time is a `ManualRestartClock` the tests move by hand (the supervisor waits on its mailbox
//! and is woken by `advance`); the tests synchronise on the supervisor's events and on the
//! children's `init`, which reports to a channel. No test sleeps. "Not started yet" is checked
//! deterministically: after an `advance`, a `which_children` reply comes only once the
//! supervisor has handled the clock's wake-up, so a start due by then would have been logged.

use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::time::Duration;

use freqalloc::otp::{
    ChildSpec, Context, ExitReason, GenServer, ManualRestartClock, OtpError, ReplyTo,
    RestartBackoff, Server, Strategy, Supervisor, SupervisorEvent, SupervisorSpec,
};

const WAIT: Duration = Duration::from_secs(10);
const MS: Duration = Duration::from_millis(1);
const HOUR: Duration = Duration::from_secs(3600);

#[derive(Debug)]
struct Boom(String);

impl fmt::Display for Boom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Boom {}

#[derive(Clone)]
struct Args {
    id: String,
    /// Every `init` reports `start:<id>` or `initfail:<id>` here.
    log: Sender<String>,
    /// How many of the next `init`s fail.
    init_failures: Arc<AtomicU32>,
}

/// A child that logs its starts and fails when told to.
struct Child;

impl GenServer for Child {
    type Args = Args;
    type Call = ();
    type Reply = ();
    type Cast = ();
    type Info = ();
    type Error = Boom;

    fn init(args: Args, _ctx: &mut Context<Self>) -> Result<Self, Boom> {
        let fail = args
            .init_failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        let what = if fail { "initfail" } else { "start" };
        let _ = args.log.send(format!("{what}:{}", args.id));
        if fail {
            return Err(Boom(format!("{} cannot start", args.id)));
        }
        Ok(Child)
    }

    fn handle_call(
        &mut self,
        _req: (),
        from: ReplyTo<()>,
        _ctx: &mut Context<Self>,
    ) -> Result<(), Boom> {
        from.reply(());
        Ok(())
    }

    /// Any cast: exit with an error (the supervisor restarts the child).
    fn handle_cast(&mut self, _msg: (), _ctx: &mut Context<Self>) -> Result<(), Boom> {
        Err(Boom("asked to fail".into()))
    }
}

struct Rig {
    sup: Supervisor,
    clock: Arc<ManualRestartClock>,
    log: Receiver<String>,
    events: Receiver<SupervisorEvent>,
    children: Vec<(Server<Child>, Arc<AtomicU32>)>,
    ids: Vec<String>,
}

/// A one-for-one supervisor on a manual clock with children `ids`, a backoff and an intensity.
fn rig(ids: &[&str], backoff: RestartBackoff, intensity: u32, period: Duration) -> Rig {
    rig_with(Strategy::OneForOne, ids, backoff, intensity, period)
}

fn rig_with(
    strategy: Strategy,
    ids: &[&str],
    backoff: RestartBackoff,
    intensity: u32,
    period: Duration,
) -> Rig {
    let clock = Arc::new(ManualRestartClock::new());
    let (log_tx, log) = mpsc::channel();
    let (ev_tx, events) = mpsc::channel();
    let mut spec = SupervisorSpec::new(strategy)
        .name("test-backoff-sup")
        .clock(clock.clone())
        .intensity(intensity, period)
        .backoff(backoff)
        .events(ev_tx);
    let mut children = Vec::new();
    for id in ids {
        let args = Args {
            id: id.to_string(),
            log: log_tx.clone(),
            init_failures: Arc::default(),
        };
        let failures = Arc::clone(&args.init_failures);
        let (child, server) =
            ChildSpec::server::<Child>(*id, format!("test-backoff-{id}"), move || args.clone());
        spec = spec.child(child);
        children.push((server, failures));
    }
    let sup = Supervisor::start(spec).unwrap();
    for id in ids {
        assert_eq!(next_log(&log), format!("start:{id}"));
    }
    Rig {
        sup,
        clock,
        log,
        events,
        children,
        ids: ids.iter().map(|id| id.to_string()).collect(),
    }
}

/// Waits for the next `RestartDelayed` event; returns its id, attempt and delay.
fn delayed(events: &Receiver<SupervisorEvent>) -> (String, u32, Duration) {
    loop {
        match events.recv_timeout(WAIT).expect("a RestartDelayed event") {
            SupervisorEvent::RestartDelayed { id, attempt, delay } => return (id, attempt, delay),
            SupervisorEvent::Stopped { reason } => panic!("supervisor stopped: {reason}"),
            _ => {}
        }
    }
}

fn next_log(log: &Receiver<String>) -> String {
    log.recv_timeout(WAIT).expect("a child's init to report")
}

impl Rig {
    fn crash(&self, child: usize) {
        self.children[child].0.cast(()).unwrap();
    }

    /// Moves the clock by `d`, then sees `child` start (its `init` report, then its new
    /// instance installed behind the handle).
    fn start_after(&self, child: usize, d: Duration) {
        let generation = self.children[child].0.generation();
        self.clock.advance(d);
        assert_eq!(next_log(&self.log), format!("start:{}", self.ids[child]));
        self.children[child]
            .0
            .wait_for_generation(generation + 1, WAIT)
            .unwrap();
    }

    fn delayed(&self) -> (String, u32, Duration) {
        delayed(&self.events)
    }

    /// `id`'s restart wait as `which_children` reports it (`None`: no restart waits); also
    /// asserts that nothing started meanwhile.
    fn waiting(&self, id: &str) -> Option<Duration> {
        let children = self.sup.which_children().unwrap();
        assert_eq!(
            self.log.try_recv().ok(),
            None,
            "nothing should have started"
        );
        let c = children.iter().find(|c| c.id == id).unwrap();
        assert!(!(c.running && c.restart_in.is_some()), "{c:?}");
        // What the supervisor publishes agrees (it is published before its reply).
        let published = self.sup.restart_waits();
        let w = published.iter().find(|w| w.id == id);
        assert_eq!(w.map(|w| w.restart_in), c.restart_in, "{published:?}");
        assert_eq!(w.map_or(0, |w| w.attempt), c.restart_attempt);
        c.restart_in
    }
}

/// The n-th consecutive restart waits min(initial * 2^(n-1), max), measured by the clock: not
/// a tick earlier, and at once when the delay has passed.
#[test]
fn delays_double_up_to_the_cap_and_nothing_restarts_early() {
    let r = rig(
        &["a"],
        RestartBackoff::exponential(10 * MS, 80 * MS).healthy_after(HOUR),
        1000,
        HOUR,
    );
    for (n, ms) in [10u64, 20, 40, 80, 80, 80].into_iter().enumerate() {
        r.crash(0);
        let delay = Duration::from_millis(ms);
        assert_eq!(r.delayed(), ("a".to_string(), n as u32 + 1, delay));
        assert_eq!(r.waiting("a"), Some(delay));
        r.clock.advance(delay - MS);
        assert_eq!(r.waiting("a"), Some(MS));
        r.start_after(0, MS);
        assert_eq!(r.children[0].0.generation(), n as u64 + 2);
    }
}

/// The count starts again once the child has run `healthy_after` without failing; a shorter
/// run does not reset it.
#[test]
fn the_count_resets_after_a_healthy_run() {
    let r = rig(
        &["a"],
        RestartBackoff::exponential(10 * MS, HOUR).healthy_after(100 * MS),
        1000,
        HOUR,
    );
    let restart = |attempt: u32, delay: Duration| {
        r.crash(0);
        assert_eq!(r.delayed(), ("a".to_string(), attempt, delay));
        r.start_after(0, delay);
    };
    restart(1, 10 * MS);
    restart(2, 20 * MS);
    r.clock.advance(99 * MS); // not healthy long enough
    restart(3, 40 * MS);
    r.clock.advance(100 * MS);
    restart(1, 10 * MS);
    restart(2, 20 * MS);
}

/// A restart whose start fails is the next consecutive restart: it waits longer, not at once.
#[test]
fn a_failed_restart_waits_for_the_next_delay() {
    let r = rig(
        &["a"],
        RestartBackoff::exponential(10 * MS, HOUR).healthy_after(HOUR),
        1000,
        HOUR,
    );
    r.children[0].1.store(2, Ordering::SeqCst);
    r.crash(0);
    assert_eq!(r.delayed(), ("a".to_string(), 1, 10 * MS));
    r.clock.advance(10 * MS);
    assert_eq!(next_log(&r.log), "initfail:a");
    assert_eq!(r.delayed(), ("a".to_string(), 2, 20 * MS));
    r.clock.advance(20 * MS);
    assert_eq!(next_log(&r.log), "initfail:a");
    assert_eq!(r.delayed(), ("a".to_string(), 3, 40 * MS));
    r.clock.advance(39 * MS);
    assert_eq!(r.waiting("a"), Some(MS));
    r.start_after(0, MS);
}

/// While one child waits, the supervisor answers, and another child's restart keeps its own
/// (shorter) delay; `restart_child` starts a waiting child at once and `terminate_child`
/// cancels its restart.
#[test]
fn the_supervisor_stays_responsive_while_a_child_waits() {
    let r = rig(
        &["a", "b"],
        RestartBackoff::exponential(10 * MS, HOUR).healthy_after(HOUR),
        1000,
        HOUR,
    );
    // a's third restart in a row: 40 ms.
    for delay in [10 * MS, 20 * MS] {
        r.crash(0);
        assert_eq!(r.delayed().2, delay);
        r.start_after(0, delay);
    }
    r.crash(0);
    assert_eq!(r.delayed(), ("a".to_string(), 3, 40 * MS));
    // b fails meanwhile: its first restart, 10 ms, comes before a's.
    r.crash(1);
    assert_eq!(r.delayed(), ("b".to_string(), 1, 10 * MS));
    r.start_after(1, 10 * MS);
    assert_eq!(r.waiting("a"), Some(30 * MS));
    r.children[1].0.call(()).unwrap();
    // restart_child does not wait for the backoff.
    r.sup.restart_child("a").unwrap();
    assert_eq!(next_log(&r.log), "start:a");
    assert_eq!(r.waiting("a"), None);
    // terminate_child cancels a delayed restart: the child stays down.
    r.crash(0);
    assert_eq!(r.delayed().0, "a");
    r.sup.terminate_child("a").unwrap();
    r.clock.advance(HOUR);
    assert_eq!(r.waiting("a"), None);
    assert!(matches!(r.children[0].0.call(()), Err(OtpError::NoProc)));
}

/// `stop` returns at once while a restart waits an hour, on the manual clock and on the real one
/// (where the supervisor waits on its mailbox with a deadline).
#[test]
fn stop_returns_promptly_while_a_restart_waits() {
    let backoff = RestartBackoff::exponential(HOUR, HOUR);
    let r = rig(&["a"], backoff, 10, HOUR);
    r.crash(0);
    assert_eq!(r.delayed().2, HOUR);
    assert_stops_promptly(r.sup);

    let (log_tx, log) = mpsc::channel();
    let (ev_tx, events) = mpsc::channel();
    let args = Args {
        id: "real".into(),
        log: log_tx,
        init_failures: Arc::default(),
    };
    let (child, server) =
        ChildSpec::server::<Child>("real", "test-backoff-real", move || args.clone());
    let sup = Supervisor::start(
        SupervisorSpec::new(Strategy::OneForOne)
            .name("test-backoff-real-sup")
            .backoff(backoff)
            .events(ev_tx)
            .child(child),
    )
    .unwrap();
    assert_eq!(next_log(&log), "start:real");
    server.cast(()).unwrap();
    assert_eq!(delayed(&events), ("real".to_string(), 1, HOUR));
    // Read without a message (a supervisor that blocked while it waits would still answer).
    let waits = sup.restart_waits();
    assert_eq!(waits.len(), 1, "{waits:?}");
    assert!(waits[0].restart_in > HOUR - WAIT, "{waits:?}");
    assert_stops_promptly(sup);
}

fn assert_stops_promptly(sup: Supervisor) {
    let (tx, rx) = mpsc::channel();
    let stopper = std::thread::spawn(move || {
        let _ = tx.send(sup.stop());
    });
    assert_eq!(rx.recv_timeout(WAIT), Ok(ExitReason::Shutdown));
    stopper.join().unwrap();
}

/// With a backoff the intensity still counts every restart: more than it allows in the period
/// ends the supervisor, at once, without waiting for the delay.
#[test]
fn with_a_backoff_the_intensity_still_ends_the_supervisor() {
    let r = rig(
        &["a"],
        RestartBackoff::exponential(10 * MS, HOUR).healthy_after(HOUR),
        2,
        HOUR,
    );
    for delay in [10 * MS, 20 * MS] {
        r.crash(0);
        assert_eq!(r.delayed().2, delay);
        r.start_after(0, delay);
    }
    r.crash(0);
    assert_eq!(
        r.sup.wait_exit(WAIT),
        Some(ExitReason::ReachedMaxRestartIntensity)
    );
}

/// An intensity of `max_restarts_within(period)` lets a child that fails forever (every
/// restart's start fails) be retried forever at the capped rate; one less ends the supervisor
/// (the bound is exact for this worst case).
#[test]
fn max_restarts_within_lets_a_child_failing_forever_be_retried_forever() {
    let period = 200 * MS;
    let backoff = RestartBackoff::exponential(10 * MS, 40 * MS).healthy_after(period);
    let k = backoff.max_restarts_within(period);
    assert_eq!(k, 7); // exits at 0, 10, 30, 70, 110, 150, 190 ms
    let r = rig(&["a"], backoff, k, period);
    r.children[0].1.store(u32::MAX, Ordering::SeqCst);
    r.crash(0);
    for attempt in 1..=40u32 {
        let (id, n, delay) = r.delayed();
        assert_eq!((id.as_str(), n), ("a", attempt));
        assert_eq!(delay, backoff.delay(attempt));
        r.clock.advance(delay);
        assert_eq!(next_log(&r.log), "initfail:a");
    }
    assert_eq!(r.delayed().1, 41);
    assert!(r.sup.exit_reason().is_none());
    assert_stops_promptly(r.sup);

    let r = rig(&["a"], backoff, k - 1, period);
    r.children[0].1.store(u32::MAX, Ordering::SeqCst);
    r.crash(0);
    let mut restarts = 0;
    let reason = loop {
        assert!(
            restarts <= k,
            "{restarts} restarts and the supervisor goes on"
        );
        match r.events.recv_timeout(WAIT).expect("an event") {
            SupervisorEvent::RestartDelayed { delay, .. } => {
                restarts += 1;
                r.clock.advance(delay);
            }
            SupervisorEvent::Stopped { reason } => break reason,
            _ => {}
        }
    };
    assert_eq!(reason, ExitReason::ReachedMaxRestartIntensity);
    // The k-th restart, 190 ms after the first, is one too many.
    assert_eq!(restarts, k - 1);
}

/// Rest-for-one with a backoff: the failed child's younger siblings are stopped at once and
/// wait with it; when the delay is up they all start again, in order.
#[test]
fn a_rest_for_one_group_waits_together_and_restarts_in_order() {
    let r = rig_with(
        Strategy::RestForOne,
        &["a", "b", "c"],
        RestartBackoff::exponential(10 * MS, HOUR).healthy_after(HOUR),
        1000,
        HOUR,
    );
    r.crash(1);
    let mut delayed = vec![r.delayed(), r.delayed()];
    delayed.sort();
    assert_eq!(
        delayed,
        [("b".to_string(), 1, 10 * MS), ("c".to_string(), 1, 10 * MS)]
    );
    // c was stopped at once, not left running until the restart.
    assert!(matches!(r.children[2].0.call(()), Err(OtpError::NoProc)));
    assert_eq!(r.waiting("c"), Some(10 * MS));
    assert_eq!(r.waiting("a"), None);
    r.children[0].0.call(()).unwrap();
    r.clock.advance(10 * MS);
    assert_eq!(next_log(&r.log), "start:b");
    assert_eq!(next_log(&r.log), "start:c");
}
