//! Integration tests of replication (`replicas: 2`): a primary/backup pair per shard.
//!
//! Storms of client threads run while faults hit the pairs at random points (kill the primary,
//! kill the backup, kill during catch-up, kill both); after each: no acknowledged operation
//! lost, no frequency held twice, the two replicas of every shard identical (`check()` compares
//! them), and the same again from disk after a reopen. Rounds: `FREQALLOC_REPL_ROUNDS` (default
//! 1 per scenario); seed: `FREQALLOC_REPL_SEED` (default fixed, printed).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use common::wait_until;
use freqalloc::freq::{
    parse_pool, Allocator, Durability, Fault, FreqError, Layout, ManualLeaseClock, Options, Role,
    Routing, Status, StoreConfig, StoreError,
};

const LONG: Duration = Duration::from_secs(30);
const SHARDS: usize = 4;

fn config(durability: Durability, replicas: usize) -> StoreConfig {
    StoreConfig {
        layout: Layout::split_evenly(&parse_pool("0-399").unwrap(), SHARDS).unwrap(),
        strategy: Routing::PowerOfTwoChoices,
        durability,
        client_limit: None,
        replicas,
        cluster: None,
    }
}

fn options(log_entries: usize) -> Options {
    Options {
        // Storms inject many faults: let the supervisor restart as often as they ask.
        max_restarts: 1000,
        replica_log_entries: log_entries,
        ..Options::default()
    }
}

fn open_pair_store(dir: &Path, durability: Durability, log_entries: usize) -> Allocator {
    Allocator::init(dir, config(durability, 2), false).unwrap();
    let alloc = Allocator::open(dir, options(log_entries)).unwrap();
    wait_all_in_sync(&alloc);
    alloc
}

fn wait_all_in_sync(alloc: &Allocator) {
    for shard in 0..alloc.shard_count() {
        alloc.wait_for_sync(shard, LONG).unwrap();
    }
}

fn holdings(status: &Status) -> BTreeMap<u64, String> {
    status
        .allocations
        .iter()
        .map(|(f, a)| (*f, a.owner.clone()))
        .collect()
}

/// Every pair in sync, both replicas applied the same sequence, and `check()` (which compares
/// the replicas' tables and each replica's disk with its memory) finds nothing.
fn assert_consistent(alloc: &Allocator) {
    wait_all_in_sync(alloc);
    let violations = alloc.check().unwrap();
    assert!(violations.is_empty(), "{violations:?}");
    let status = alloc.status();
    assert_eq!(status.allocations.len() as u64 + free_count(&status), 400);
    for sh in &status.shards {
        assert!(sh.in_sync && sh.alive, "shard {}: {sh:?}", sh.shard);
        let roles: BTreeSet<_> = sh.replicas.iter().map(|r| format!("{}", r.role)).collect();
        assert_eq!(roles, BTreeSet::from(["backup".into(), "primary".into()]));
        assert_eq!(sh.replicas[0].applied, sh.replicas[1].applied, "{sh:?}");
        assert!(sh.replicas.iter().all(|r| r.lag == 0));
    }
}

fn free_count(status: &Status) -> u64 {
    status.free.iter().map(|r| r.len()).sum()
}

/// splitmix64.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[derive(Default, Debug)]
struct ClientLog {
    /// What the client was told it holds.
    held: BTreeSet<u64>,
    /// Deallocations whose reply was a `ShardFailed`: each may or may not have happened.
    maybe_freed: BTreeSet<u64>,
    /// Allocations that failed with `ShardFailed`: each may or may not have happened.
    failed_allocations: usize,
}

fn storm_client(
    alloc: &Allocator,
    name: &str,
    seed: u64,
    stop: &AtomicBool,
    ops: &AtomicU64,
) -> ClientLog {
    let mut log = ClientLog::default();
    let mut rng = Rng(seed);
    while !stop.load(Ordering::Relaxed) {
        let allocate = log.held.is_empty() || (log.held.len() < 8 && rng.below(2) == 0);
        if allocate {
            match alloc.allocate(name) {
                Ok(f) => {
                    assert!(log.held.insert(f), "{name} got {f} twice");
                    log.maybe_freed.remove(&f);
                }
                Err(FreqError::ShardFailed { .. }) => log.failed_allocations += 1,
                Err(e) => panic!("{name}: allocate: {e}"),
            }
        } else {
            let held: Vec<u64> = log.held.iter().copied().collect();
            let f = held[rng.below(held.len() as u64) as usize];
            log.held.remove(&f);
            match alloc.deallocate(f, name) {
                Ok(()) => {}
                Err(FreqError::ShardFailed { .. }) => {
                    log.maybe_freed.insert(f);
                }
                Err(e) => panic!("{name}: deallocate {f}: {e}"),
            }
        }
        ops.fetch_add(1, Ordering::Relaxed);
    }
    log
}

/// Every acknowledged allocation is held by its client; anything else a client holds is
/// explained by a call that failed in flight.
fn verify_beliefs(alloc: &Allocator, logs: &BTreeMap<String, ClientLog>) {
    let actual = holdings(&alloc.status());
    for owner in actual.values() {
        assert!(logs.contains_key(owner), "unknown owner {owner}");
    }
    for (name, log) in logs {
        let held: BTreeSet<u64> = alloc.held_by(name).unwrap().into_iter().collect();
        let missing: Vec<_> = log.held.difference(&held).collect();
        assert!(missing.is_empty(), "{name} lost acknowledged {missing:?}");
        let extra = held
            .iter()
            .filter(|f| !log.held.contains(f) && !log.maybe_freed.contains(f))
            .count();
        assert!(
            extra <= log.failed_allocations,
            "{name} holds {extra} it never got ({} failed allocations)",
            log.failed_allocations
        );
    }
}

#[derive(Debug, Clone, Copy)]
/// Which replicas a storm kills.
enum Scenario {
    Primary,
    Backup,
    PrimaryDuringCatchUp,
    Both,
}

/// Kills the backup of `shard`, retrying while it has none running (a refusal does nothing).
fn kill_backup(alloc: &Allocator, shard: usize) {
    let mut last = None;
    let killed = wait_until(
        || match alloc.inject_fault(shard, Fault::PanicBackup) {
            Err(FreqError::ShardFailed { .. }) => true,
            other => {
                last = Some(format!("{other:?}"));
                false
            }
        },
        LONG,
    );
    assert!(
        killed,
        "could not kill the backup of shard {shard}: {last:?}"
    );
}

fn kill_primary(alloc: &Allocator, shard: usize) {
    match alloc.inject_fault(shard, Fault::PanicPrimary) {
        Err(FreqError::ShardFailed { .. }) => {}
        other => panic!("expected ShardFailed from shard {shard}, got {other:?}"),
    }
}

fn storm(scenario: Scenario, durability: Durability, log_entries: usize, seed: u64) {
    eprintln!("storm {scenario:?} {durability} log {log_entries} seed {seed:#x}");
    let dir = tempfile::tempdir().unwrap();
    let alloc = open_pair_store(dir.path(), durability, log_entries);
    let mut rng = Rng(seed);
    let shard = rng.below(SHARDS as u64) as usize;
    let clients = 4;
    let stop = AtomicBool::new(false);
    let ops = AtomicU64::new(0);
    let start = Barrier::new(clients + 1);
    let logs: BTreeMap<String, ClientLog> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..clients)
            .map(|i| {
                let (alloc, stop, ops, start) = (&alloc, &stop, &ops, &start);
                let seed = seed ^ (i as u64 + 1);
                s.spawn(move || {
                    let name = format!("c{i}");
                    start.wait();
                    (name.clone(), storm_client(alloc, &name, seed, stop, ops))
                })
            })
            .collect();
        start.wait();
        // A random point in the storm.
        let at = 50 + rng.below(400);
        assert!(wait_until(|| ops.load(Ordering::Relaxed) >= at, LONG));
        match scenario {
            Scenario::Primary => kill_primary(&alloc, shard),
            Scenario::Backup => kill_backup(&alloc, shard),
            Scenario::PrimaryDuringCatchUp => {
                // The backup dies; the primary serves alone; while the backup rejoins and is
                // caught up, the primary dies too: the out-of-sync backup must not take over.
                kill_backup(&alloc, shard);
                let at = ops.load(Ordering::Relaxed) + rng.below(50);
                assert!(wait_until(|| ops.load(Ordering::Relaxed) >= at, LONG));
                kill_primary(&alloc, shard);
            }
            Scenario::Both => {
                // The primary dies, the backup takes over, and dies before the old primary has
                // caught up: the one with the higher applied sequence must win.
                kill_primary(&alloc, shard);
                let at = ops.load(Ordering::Relaxed) + rng.below(50);
                assert!(wait_until(|| ops.load(Ordering::Relaxed) >= at, LONG));
                kill_primary(&alloc, shard);
            }
        }
        // Serving goes on, and the pair heals.
        let at = ops.load(Ordering::Relaxed) + 200;
        assert!(wait_until(|| ops.load(Ordering::Relaxed) >= at, LONG));
        alloc.wait_for_sync(shard, LONG).unwrap();
        let at = ops.load(Ordering::Relaxed) + 100;
        assert!(wait_until(|| ops.load(Ordering::Relaxed) >= at, LONG));
        stop.store(true, Ordering::Relaxed);
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let status = alloc.status();
    assert!(
        status.shards[shard].restarts >= 1,
        "{:?}",
        status.shards[shard]
    );
    assert_consistent(&alloc);
    verify_beliefs(&alloc, &logs);
    if durability == Durability::None {
        return;
    }
    // And the same from disk: both replicas come back equal.
    let snapshot = holdings(&alloc.status());
    drop(alloc);
    let alloc = Allocator::open(dir.path(), options(log_entries)).unwrap();
    assert_eq!(holdings(&alloc.status()), snapshot);
    assert_consistent(&alloc);
}

fn rounds() -> u64 {
    std::env::var("FREQALLOC_REPL_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1)
}

fn seed() -> u64 {
    std::env::var("FREQALLOC_REPL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5EED_0006)
}

fn storms(scenario: Scenario, salt: u64) {
    for round in 0..rounds() {
        let seed = seed() ^ (salt << 32) ^ round;
        // Alternate incremental catch-up (a long log) and full state transfer (a tiny one).
        let log = if round % 2 == 0 { 10_000 } else { 4 };
        storm(scenario, Durability::Sync, log, seed);
    }
}

#[test]
fn killing_the_primary_mid_storm_fails_over_to_the_backup() {
    storms(Scenario::Primary, 1);
}

#[test]
fn killing_the_backup_mid_storm_loses_nothing_and_it_catches_up() {
    storms(Scenario::Backup, 2);
}

#[test]
fn killing_the_primary_during_catch_up_waits_for_it() {
    storms(Scenario::PrimaryDuringCatchUp, 3);
}

#[test]
fn killing_both_replicas_the_higher_sequence_wins() {
    storms(Scenario::Both, 4);
}

#[test]
fn a_far_behind_backup_gets_a_full_state_transfer() {
    // A log of 4 entries: every catch-up after a burst is a full transfer.
    storm(Scenario::Backup, Durability::Sync, 4, seed() ^ 5);
}

#[test]
fn in_memory_pairs_fail_over_too() {
    // In memory, a replica that restarts starts empty: both down loses everything (as a
    // single shard's crash does in `none`), so only one replica is killed at a time here.
    storm(Scenario::Primary, Durability::None, 10_000, seed() ^ 6);
    storm(Scenario::Backup, Durability::None, 16, seed() ^ 7);
}

#[test]
fn interval_pairs_fail_over() {
    storm(
        Scenario::Primary,
        Durability::Interval(Duration::from_millis(20)),
        10_000,
        seed() ^ 8,
    );
}

#[test]
fn a_pair_replicates_every_change_and_reopens_from_either_copy() {
    let dir = tempfile::tempdir().unwrap();
    let alloc = open_pair_store(dir.path(), Durability::Sync, 10_000);
    let mut got = Vec::new();
    for i in 0..40 {
        got.push(alloc.allocate(&format!("r{}", i % 3)).unwrap());
    }
    for &f in got.iter().step_by(4) {
        let owner = holdings(&alloc.status())[&f].clone();
        alloc.deallocate(f, &owner).unwrap();
    }
    assert_eq!(alloc.release_all("r2").unwrap().len(), 10);
    // Errors change nothing on either replica.
    assert!(matches!(
        alloc.deallocate(got[1], "nobody"),
        Err(FreqError::NotOwner { .. })
    ));
    assert_consistent(&alloc);
    let status = alloc.status();
    for sh in &status.shards {
        assert!(sh.replicas.iter().all(|r| r.restarts == 0));
        assert!(sh.replicas.iter().any(|r| r.role == Role::Primary));
    }
    let applied: u64 = status.shards.iter().map(|s| s.replicas[0].applied).sum();
    // 40 allocations, 10 deallocations, the release of what r2 still held.
    assert_eq!(applied, 40 + 10 + 10);
    let snapshot = holdings(&status);
    drop(alloc);
    // Each replica's directory holds the whole state: remove one copy, the other restores it.
    std::fs::remove_dir_all(dir.path().join("shard-1").join("replica-0")).unwrap();
    let alloc = Allocator::open(dir.path(), options(10_000)).unwrap();
    assert_consistent(&alloc);
    assert_eq!(holdings(&alloc.status()), snapshot);
}

#[test]
fn replicas_can_live_in_two_base_directories() {
    let store = tempfile::tempdir().unwrap();
    let disk_a = tempfile::tempdir().unwrap();
    let disk_b = tempfile::tempdir().unwrap();
    Allocator::init(store.path(), config(Durability::Sync, 2), false).unwrap();
    let opts = Options {
        replica_dirs: Some([disk_a.path().to_path_buf(), disk_b.path().to_path_buf()]),
        ..options(10_000)
    };
    let alloc = Allocator::open(store.path(), opts.clone()).unwrap();
    let f = alloc.allocate("x").unwrap();
    assert_consistent(&alloc);
    drop(alloc);
    for base in [disk_a.path(), disk_b.path()] {
        assert!(base.join("shard-0").is_dir(), "{}", base.display());
    }
    assert!(!store.path().join("shard-0").exists());
    let alloc = Allocator::open(store.path(), opts).unwrap();
    assert_eq!(alloc.held_by("x").unwrap(), vec![f]);
}

#[test]
fn the_replica_count_is_validated_and_fixed_at_creation() {
    let dir = tempfile::tempdir().unwrap();
    for bad in [0, 3] {
        assert!(matches!(
            Allocator::init(dir.path(), config(Durability::Sync, bad), false),
            Err(FreqError::BadReplicas(_))
        ));
    }
    let mut max = config(Durability::Sync, 2);
    max.layout = Layout::one_shard_per_range(
        &parse_pool("18446744073709551610-18446744073709551615").unwrap(),
    )
    .unwrap();
    assert!(matches!(
        Allocator::init(dir.path(), max, false),
        Err(FreqError::BadReplicas(_))
    ));
    Allocator::init(dir.path(), config(Durability::Sync, 1), false).unwrap();
    assert!(matches!(
        Allocator::init(dir.path(), config(Durability::Sync, 2), false),
        Err(FreqError::Store(StoreError::ConfigMismatch { .. }))
    ));
    // Single-replica stores show no replicas.
    let alloc = Allocator::open(dir.path(), Options::default()).unwrap();
    assert!(alloc.status().shards.iter().all(|s| s.replicas.is_empty()));
}

#[test]
fn the_promoted_backup_reaps_leases_the_old_primary_granted() {
    let dir = tempfile::tempdir().unwrap();
    Allocator::init(dir.path(), config(Durability::Sync, 2), false).unwrap();
    let clock = ManualLeaseClock::new(1_000_000);
    let opts = Options {
        clock: Arc::new(clock.clone()),
        ..options(10_000)
    };
    let alloc = Allocator::open(dir.path(), opts).unwrap();
    wait_all_in_sync(&alloc);
    let leased = alloc
        .allocate_with_lease("l", Duration::from_secs(60))
        .unwrap();
    let kept = alloc.allocate("k").unwrap();
    let shard = alloc.config().layout.owner_of(leased).unwrap();
    alloc.wait_for_sync(shard, LONG).unwrap();
    let primary_of = |alloc: &Allocator| {
        alloc.status().shards[shard]
            .replicas
            .iter()
            .position(|r| r.role == Role::Primary)
    };
    let before = primary_of(&alloc).unwrap();
    kill_primary(&alloc, shard);
    // The in-sync backup took over (a running primary is never demoted, so the old one, once
    // restarted, is the backup).
    assert!(wait_until(|| primary_of(&alloc) == Some(1 - before), LONG));
    // The backup serves at once, with the lease it was shipped.
    assert_eq!(alloc.held_by("l").unwrap(), vec![leased]);
    clock.advance(61_000);
    let reaped = alloc.reap_expired().unwrap();
    assert_eq!(reaped, vec![(leased, "l".to_string())]);
    assert_eq!(alloc.held_by("k").unwrap(), vec![kept]);
    assert_consistent(&alloc);
}
