//! Issue 12, last item: "a shard that cannot write should ... back off its restarts". The
//! shards' supervisor restarted a failing shard at once, ran through its intensity within
//! milliseconds and gave up: the shard stayed down for good ("restarts stopped after repeated
//! failures") even after the disk had room again. Now its restarts back off (10 ms doubling to
//! 1 s by default), go on forever, and the shard comes back by itself.
//!
//! Synchronisation: `wait_until` on outcomes (a deadline only bounds a failure), a manual
//! restart clock where the delay itself is under test. No fixed sleeps.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::disk::SmallDisk;
use common::wait_until;
use freqalloc::freq::{
    parse_pool, Allocator, Durability, Fault, FreqError, Layout, Options, Routing,
};
use freqalloc::otp::{ManualRestartClock, RestartBackoff};

const WAIT: Duration = Duration::from_secs(20);

fn course() -> Layout {
    Layout::one_shard_per_range(&parse_pool("10-15,20-25").unwrap()).unwrap()
}

/// While the backoff holds a crashed shard's restart back for longer than a call may wait, a
/// caller is failed at once, told when the next try is; `status` says the shard is waiting;
/// the shard restarts when the (manual) clock reaches the delay, and the next delay doubles.
#[test]
fn a_caller_during_a_long_backoff_fails_at_once_and_status_shows_the_wait() {
    let clock = Arc::new(ManualRestartClock::new());
    let options = Options {
        call_timeout: Duration::from_secs(1),
        restart_backoff: Some(
            RestartBackoff::exponential(Duration::from_secs(2), Duration::from_secs(60))
                .healthy_after(Duration::from_secs(600)),
        ),
        restart_clock: clock.clone(),
        ..Options::default()
    };
    let alloc = Allocator::in_memory_with(course(), Routing::RoundRobin, None, options).unwrap();
    let held: Vec<u64> = (0..2).map(|_| alloc.allocate("radio").unwrap()).collect();
    let on_shard_1 = *held.iter().find(|f| **f >= 20).unwrap();
    for (attempt, delay) in [(1u64, 2u64), (2, 4)] {
        assert!(alloc.inject_fault(1, Fault::Panic).is_err());
        let wait = Duration::from_secs(delay);
        assert!(
            wait_until(|| alloc.status().shards[1].restart_in == Some(wait), WAIT),
            "{:?}",
            alloc.status().shards[1]
        );
        let status = alloc.status();
        assert!(!status.shards[1].alive);
        assert_eq!(status.shards[1].restart_attempt, attempt as u32);
        assert_eq!(status.shards[0].restart_in, None);
        // Never delivered, and the restart is further off than the call timeout: at once.
        let started = Instant::now();
        let e = alloc.deallocate(on_shard_1, "radio").unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "waited {:?}",
            started.elapsed()
        );
        let text = e.to_string();
        assert!(
            text.contains(&format!(
                "it is restarting (next try in {} ms)",
                delay * 1000
            )),
            "{text}"
        );
        // The other shard serves meanwhile.
        let f = alloc.allocate("radio").unwrap();
        assert!(f < 20, "{f}");
        alloc.deallocate(f, "radio").unwrap();
        // Not a tick early...
        clock.advance(wait - Duration::from_millis(1));
        assert_eq!(
            alloc.status().shards[1].restart_in,
            Some(Duration::from_millis(1))
        );
        // ...and at once when due.
        clock.advance(Duration::from_millis(1));
        alloc
            .wait_for_shard_generation(1, attempt + 1, WAIT)
            .unwrap();
        // The new instance is visible as soon as it is installed, a moment before the
        // supervisor unpublishes the wait that it ended.
        assert!(
            wait_until(|| alloc.status().shards[1].restart_in.is_none(), WAIT),
            "{:?}",
            alloc.status().shards[1].restart_in
        );
    }
    // In memory, the restarted shard starts empty: it serves again.
    assert!(alloc.status().shards[1].alive);
    assert!(alloc.allocate("radio").is_ok());
    assert!(alloc.check().unwrap().is_empty());
}

/// The disk fills in `sync`: callers get the disk error (never "timed out" or "no such
/// server"), the shard is never given up on (it is restarted more often than the old intensity
/// of 10 allowed, yet within the backoff's bound), and once the disk has room again it serves
/// by itself, in the same allocator, with nothing acknowledged lost.
#[test]
fn a_shard_on_a_full_disk_backs_off_and_comes_back_when_the_disk_has_room() {
    let Some(disk) = SmallDisk::mount("2m") else {
        return;
    };
    let store = disk.path().join("s");
    common::init_store(&store, "0-999999", Durability::Sync, 1);
    let call_timeout = Duration::from_millis(500);
    let options = Options {
        call_timeout,
        ..Options::default()
    };
    let backoff = options.restart_backoff.expect("a backoff by default");
    let max_restarts = options.max_restarts;
    let alloc = Allocator::open(&store, options).unwrap();
    // Long names fill the disk sooner.
    let name = "n".repeat(250);
    let mut acked = Vec::new();
    let mut full_since: Instant;
    let first = loop {
        full_since = Instant::now();
        match alloc.allocate(&name) {
            Ok(f) => acked.push(f),
            Err(e) => break e,
        }
        assert!(acked.len() < 1_000_000, "the disk never filled");
    };
    let says_disk_full = |e: &FreqError| {
        let text = e.to_string();
        (text.contains("No space left on device") || text.contains("disk full"))
            && !text.contains("timed out")
            && !text.contains("no such server")
            && !text.contains("restarts stopped")
    };
    assert!(says_disk_full(&first), "first error: {first}");
    let mut calls = 0u64;
    let mut attempt = 0u32;
    let mut told_next_try = false;
    let mut slowest = Duration::ZERO;
    // Keep calling until the shard has been restarted more often than the supervisor's old
    // intensity allowed (after which it used to stay down for good). Its restarts fail while
    // the disk is full (opening it needs room), so they show as the backoff's attempt count.
    let restarted = wait_until(
        || {
            let started = Instant::now();
            let r = if calls.is_multiple_of(2) {
                alloc.allocate(&name).map(|f| acked.push(f))
            } else {
                alloc.deallocate(acked[0], &name).map(|()| {
                    acked.remove(0);
                })
            };
            slowest = slowest.max(started.elapsed());
            calls += 1;
            if let Err(e) = r {
                assert!(says_disk_full(&e), "call {calls}: {e}");
                told_next_try |= e.to_string().contains("it is restarting (next try in");
            }
            attempt = attempt.max(alloc.status().shards[0].restart_attempt);
            attempt > max_restarts + 1
        },
        Duration::from_secs(60),
    );
    let elapsed = full_since.elapsed();
    let restarts = attempt;
    assert!(
        restarted,
        "{restarts} restarts in {elapsed:?}, {calls} calls"
    );
    assert!(told_next_try, "no caller was told of the backoff");
    // A call waits at most for the next try (within the call timeout), then one more call.
    assert!(slowest < 3 * call_timeout, "a call took {slowest:?}");
    let bound = backoff.max_restarts_within(elapsed);
    assert!(
        restarts <= bound,
        "{restarts} restarts in {elapsed:?}: more than the backoff allows ({bound})"
    );
    eprintln!("full disk: {restarts} restarts in {elapsed:?} over {calls} calls (bound {bound})");

    // Room again: the shard serves by itself, without a reopen.
    disk.resize("64m");
    let mut last = None;
    let back = Instant::now();
    let served = wait_until(
        || match alloc.allocate(&name) {
            Ok(f) => {
                acked.push(f);
                true
            }
            Err(e) => {
                assert!(says_disk_full(&e), "{e}");
                last = Some(e);
                false
            }
        },
        WAIT,
    );
    assert!(served, "still failing after the resize: {last:?}");
    eprintln!("served again {:?} after the resize", back.elapsed());
    for _ in 0..100 {
        acked.push(alloc.allocate(&name).unwrap());
    }
    let status = alloc.status();
    assert!(status.shards[0].alive && status.shards[0].restart_in.is_none());
    let held = alloc.held_by(&name).unwrap();
    let missing = acked.iter().filter(|f| !held.contains(f)).count();
    assert_eq!(missing, 0, "acknowledged allocations lost");
    assert!(alloc.check().unwrap().is_empty());
}
