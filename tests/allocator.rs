//! Integration tests of the frequency allocator (`freq`): the course scenario under every
//! strategy, ownership errors, client links and leases, limits, persistence, growth, store
//! errors, supervision under load, concurrency, corruption on disk, and the size targets (as
//! functional smoke tests: speed lives in the benchmarks).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use common::wait_until;
use freqalloc::dets::{self, DetsError, DiskTable, OpenOptions};
use freqalloc::freq::{
    hash_name, parse_pool, shard_dir, Allocation, Allocator, Durability, Fault, FreqError,
    FreqRange, InitOutcome, Layout, LayoutError, ManualLeaseClock, Options, Routing, Status,
    StoreConfig, StoreError, DISK_VERSION,
};
use freqalloc::{TableType, WriteTable};

const LONG: Duration = Duration::from_secs(30);

fn course() -> Layout {
    Layout::one_shard_per_range(&parse_pool("10-15,20-25").unwrap()).unwrap()
}

fn config(layout: Layout, strategy: Routing, durability: Durability) -> StoreConfig {
    StoreConfig {
        layout,
        strategy,
        durability,
        client_limit: None,
        replicas: 1,
        cluster: None,
    }
}

/// Creates a store at `dir` and opens it with default options.
fn create(dir: &Path, config: StoreConfig) -> Allocator {
    assert_eq!(
        Allocator::init(dir, config, false).unwrap(),
        InitOutcome::Created
    );
    Allocator::open(dir, Options::default()).unwrap()
}

/// frequency → owner, from a status.
fn holdings(status: &Status) -> BTreeMap<u64, String> {
    status
        .allocations
        .iter()
        .map(|(f, a)| (*f, a.owner.clone()))
        .collect()
}

fn shard_of(f: u64) -> usize {
    usize::from(f >= 20)
}

fn assert_consistent(alloc: &Allocator) {
    let violations = alloc.check().unwrap();
    assert!(violations.is_empty(), "{violations:?}");
    let s = alloc.status();
    let free: u64 = s.free.iter().map(FreqRange::len).sum();
    assert_eq!(free + s.allocations.len() as u64, s.pool_size);
}

/// A tiny deterministic generator for the storms.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

// ---------------------------------------------------------------------------------------------
// The course scenario

#[test]
fn course_scenario_under_every_strategy() {
    let all: BTreeSet<u64> = (10..=15).chain(20..=25).collect();
    for strategy in Routing::ALL {
        let alloc = Allocator::in_memory(course(), strategy, None).unwrap();
        let mut got = Vec::new();
        for _ in 0..12 {
            got.push(alloc.allocate("radio").unwrap());
            let free = alloc.free_per_shard();
            if strategy == Routing::MostFree {
                assert!(free[0].abs_diff(free[1]) <= 1, "{strategy}: {free:?}");
            }
        }
        // Fall-through: every strategy exhausts the whole pool before NoFrequency.
        assert_eq!(
            got.iter().copied().collect::<BTreeSet<_>>(),
            all,
            "{strategy}"
        );
        assert!(
            matches!(
                alloc.allocate("radio"),
                Err(FreqError::NoFrequency { pool_size: 12 })
            ),
            "{strategy}"
        );
        match strategy {
            Routing::RoundRobin => {
                assert_eq!(got, [10, 20, 11, 21, 12, 22, 13, 23, 14, 24, 15, 25])
            }
            Routing::MostFree => {
                // Equal shards alternate (the tie-break rotates).
                for pair in got.chunks(2) {
                    assert_ne!(shard_of(pair[0]), shard_of(pair[1]), "{got:?}");
                }
            }
            Routing::Hash => {
                // Affinity: the client's shard first, lowest free first, then the other.
                let home = (hash_name("radio") % 2) as usize;
                assert!(got[..6].iter().all(|&f| shard_of(f) == home), "{got:?}");
                assert!(got[6..].iter().all(|&f| shard_of(f) != home), "{got:?}");
                let mut sorted = got[..6].to_vec();
                sorted.sort_unstable();
                assert_eq!(sorted, got[..6]);
            }
            _ => {}
        }
        // Deallocation goes to the owner: one frequency of each shard, then each comes back.
        alloc.deallocate(12, "radio").unwrap();
        alloc.deallocate(23, "radio").unwrap();
        assert_eq!(alloc.free_per_shard(), vec![1, 1], "{strategy}");
        let again: BTreeSet<u64> = [
            alloc.allocate("radio").unwrap(),
            alloc.allocate("radio").unwrap(),
        ]
        .into();
        assert_eq!(again, [12, 23].into(), "{strategy}");
        assert!(matches!(
            alloc.allocate("radio"),
            Err(FreqError::NoFrequency { .. })
        ));
        assert_consistent(&alloc);
    }
}

#[test]
fn ownership_errors_change_nothing() {
    let alloc = Allocator::in_memory(course(), Routing::MostFree, None).unwrap();
    let f = alloc.allocate("alice").unwrap();
    let g = alloc.allocate("bob").unwrap();
    let free = (10..=15)
        .chain(20..=25)
        .find(|x| *x != f && *x != g)
        .unwrap();
    let before = alloc.status();
    assert!(matches!(
        alloc.deallocate(free, "alice"),
        Err(FreqError::NotAllocated(x)) if x == free
    ));
    for unknown in [0, 9, 16, 19, 26, u64::MAX] {
        assert!(matches!(
            alloc.deallocate(unknown, "alice"),
            Err(FreqError::UnknownFrequency(x)) if x == unknown
        ));
    }
    match alloc.deallocate(f, "bob") {
        Err(FreqError::NotOwner {
            freq,
            owner,
            client,
        }) => assert_eq!((freq, owner.as_str(), client.as_str()), (f, "alice", "bob")),
        other => panic!("expected NotOwner, got {other:?}"),
    }
    assert!(matches!(
        alloc.deallocate(f, ""),
        Err(FreqError::BadClientName(_))
    ));
    assert!(matches!(
        alloc.allocate(&"x".repeat(256)),
        Err(FreqError::BadClientName(_))
    ));
    assert_eq!(alloc.status(), before);
    assert_eq!(alloc.held_by("alice").unwrap(), vec![f]);
    assert_eq!(alloc.held_by("bob").unwrap(), vec![g]);
    assert_consistent(&alloc);
}

// ---------------------------------------------------------------------------------------------
// Client links and leases

#[test]
fn dropping_a_client_releases_detach_and_option_keep() {
    let alloc = Allocator::in_memory(course(), Routing::RoundRobin, None).unwrap();
    let a = alloc.client("a").unwrap();
    assert_eq!(a.name(), "a");
    let held = vec![a.allocate().unwrap(), a.allocate().unwrap()];
    assert_eq!(a.held().unwrap(), held);
    assert!(matches!(alloc.client("a"), Err(FreqError::ClientInUse(n)) if n == "a"));
    drop(a);
    assert!(alloc.held_by("a").unwrap().is_empty());
    assert!(alloc.status().allocations.is_empty());

    // A detached handle keeps what it holds, and frees its name.
    let b = alloc.client("b").unwrap();
    let f = b.allocate().unwrap();
    b.detach();
    assert_eq!(alloc.held_by("b").unwrap(), vec![f]);
    let b2 = alloc.client("b").unwrap();
    assert_eq!(b2.held().unwrap(), vec![f]);
    assert_eq!(b2.release_all().unwrap(), vec![f]);
    drop(b2);

    // With release_on_drop off, dropping keeps too.
    let keep = Options {
        release_on_drop: false,
        ..Options::default()
    };
    let alloc = Allocator::in_memory_with(course(), Routing::MostFree, None, keep).unwrap();
    let c = alloc.client("c").unwrap();
    let f = c.allocate().unwrap();
    drop(c);
    assert_eq!(alloc.held_by("c").unwrap(), vec![f]);
    assert_consistent(&alloc);
}

#[test]
fn leases_expire_on_the_injected_clock() {
    let clock = ManualLeaseClock::new(1_000_000);
    let options = Options {
        clock: Arc::new(clock.clone()),
        ..Options::default()
    };
    let alloc = Allocator::in_memory_with(course(), Routing::RoundRobin, None, options).unwrap();
    let hour = Duration::from_secs(3600);
    let leased = alloc.allocate_with_lease("a", hour).unwrap();
    let kept = alloc.allocate("b").unwrap();
    let status = alloc.status();
    let a = &status
        .allocations
        .iter()
        .find(|(f, _)| *f == leased)
        .unwrap()
        .1;
    assert_eq!(a.since_ms, 1_000_000);
    assert_eq!(a.lease_until_ms, Some(1_000_000 + 3_600_000));
    assert!(alloc.reap_expired().unwrap().is_empty());
    clock.advance(3_600_000 - 1);
    assert!(alloc.reap_expired().unwrap().is_empty());
    clock.advance(1);
    assert_eq!(
        alloc.reap_expired().unwrap(),
        vec![(leased, "a".to_string())]
    );
    assert!(alloc.held_by("a").unwrap().is_empty());
    assert_eq!(alloc.held_by("b").unwrap(), vec![kept]);
    // A deallocated lease is not reaped later.
    let g = alloc.allocate_with_lease("a", hour).unwrap();
    alloc.deallocate(g, "a").unwrap();
    clock.advance(2 * 3_600_000);
    assert!(alloc.reap_expired().unwrap().is_empty());
    // A lease too long to represent saturates and never expires.
    let forever = alloc.allocate_with_lease("c", Duration::MAX).unwrap();
    clock.advance(u64::MAX / 2);
    assert!(alloc.reap_expired().unwrap().is_empty());
    assert_eq!(alloc.held_by("c").unwrap(), vec![forever]);
    assert_consistent(&alloc);

    // An expired lease is reaped by the shard's own timer, unasked. (The timer runs on real
    // time, set from the clock's reading, so with a manual clock only an already-expired
    // lease is reaped by it promptly: the first timer a shard sets.)
    // (A lease is at least 1 ms since issue 12: a shorter one is refused, so the lease expires
    // by advancing the clock past it.)
    let clock = ManualLeaseClock::new(1_000);
    let options = Options {
        clock: Arc::new(clock.clone()),
        ..Options::default()
    };
    let alloc = Allocator::in_memory_with(course(), Routing::RoundRobin, None, options).unwrap();
    alloc
        .allocate_with_lease("d", Duration::from_millis(1))
        .unwrap();
    clock.advance(1);
    assert!(wait_until(|| alloc.held_by("d").unwrap().is_empty(), LONG));
    assert_consistent(&alloc);
}

#[test]
fn leases_survive_a_reopen_and_expire_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualLeaseClock::new(5_000_000);
    let options = || Options {
        clock: Arc::new(clock.clone()),
        ..Options::default()
    };
    Allocator::init(
        dir.path(),
        config(course(), Routing::RoundRobin, Durability::Sync),
        false,
    )
    .unwrap();
    let alloc = Allocator::open(dir.path(), options()).unwrap();
    let hour = Duration::from_secs(3600);
    let short = alloc.allocate_with_lease("a", hour).unwrap();
    let long = alloc.allocate_with_lease("a", 2 * hour).unwrap();
    drop(alloc);

    // Reopened before expiry: both still held, with their leases.
    let alloc = Allocator::open(dir.path(), options()).unwrap();
    assert_eq!(alloc.held_by("a").unwrap(), {
        let mut v = vec![short, long];
        v.sort_unstable();
        v
    });
    clock.advance(3_600_000);
    assert_eq!(
        alloc.reap_expired().unwrap(),
        vec![(short, "a".to_string())]
    );
    assert_eq!(alloc.held_by("a").unwrap(), vec![long]);
    assert_consistent(&alloc);
    drop(alloc);

    // Reopened after expiry: the shard's own timer reaps it without being asked.
    clock.advance(3_600_000);
    let alloc = Allocator::open(dir.path(), options()).unwrap();
    assert!(wait_until(|| alloc.held_by("a").unwrap().is_empty(), LONG));
    assert_consistent(&alloc);
}

// ---------------------------------------------------------------------------------------------
// Limits

/// Regression: the per-client limit was checked by each shard against what the client held in
/// *that shard*, so a client with limit 3 over two shards could hold 6.
#[test]
fn per_client_limit_counts_every_shard() {
    for strategy in Routing::ALL {
        let alloc = Allocator::in_memory(course(), strategy, Some(3)).unwrap();
        for _ in 0..3 {
            alloc.allocate("a").unwrap();
        }
        match alloc.allocate("a") {
            Err(FreqError::LimitReached { client, limit }) => {
                assert_eq!((client.as_str(), limit), ("a", 3), "{strategy}")
            }
            other => panic!("{strategy}: expected LimitReached, got {other:?}"),
        }
        assert_eq!(alloc.held_by("a").unwrap().len(), 3, "{strategy}");
        // Others are not affected; freeing one lets the client allocate again.
        alloc.allocate("b").unwrap();
        let f = alloc.held_by("a").unwrap()[0];
        alloc.deallocate(f, "a").unwrap();
        alloc.allocate("a").unwrap();
        assert!(matches!(
            alloc.allocate("a"),
            Err(FreqError::LimitReached { .. })
        ));
        assert_consistent(&alloc);
    }
}

// ---------------------------------------------------------------------------------------------
// Persistence, growth, store errors

#[test]
fn allocations_persist_across_reopen_in_sync_and_interval() {
    for durability in [
        Durability::Sync,
        Durability::Interval(Duration::from_millis(50)),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let alloc = create(dir.path(), config(course(), Routing::MostFree, durability));
        for (i, name) in ["a", "b", "c", "a", "b"].iter().enumerate() {
            alloc.allocate(name).unwrap();
            if i == 2 {
                let f = alloc.held_by("b").unwrap()[0];
                alloc.deallocate(f, "b").unwrap();
            }
        }
        let before = alloc.status();
        assert_eq!(before.allocations.len(), 4);
        // Sync: a plain drop; Interval: an explicit stop (each flushes on the way out).
        if durability == Durability::Sync {
            drop(alloc);
        } else {
            alloc.stop();
            drop(alloc);
        }
        let alloc = Allocator::open(dir.path(), Options::default()).unwrap();
        let after = alloc.status();
        assert_eq!(after.allocations, before.allocations, "{durability}");
        assert_eq!(after.durability, durability);
        let recovered: u64 = alloc.recovery().iter().map(|(n, _)| n).sum();
        assert_eq!(recovered, 4);
        assert_consistent(&alloc);
    }
}

#[test]
fn pool_grows_and_refuses_to_shrink_or_change() {
    let dir = tempfile::tempdir().unwrap();
    let alloc = create(
        dir.path(),
        config(course(), Routing::RoundRobin, Durability::Sync),
    );
    let mine = vec![alloc.allocate("a").unwrap(), alloc.allocate("a").unwrap()];
    assert_eq!(mine, [10, 20]);
    drop(alloc);

    let grown = Layout::one_shard_per_range(&parse_pool("10-15,20-30").unwrap()).unwrap();
    let outcome = Allocator::init(
        dir.path(),
        config(grown, Routing::RoundRobin, Durability::Sync),
        true,
    )
    .unwrap();
    assert_eq!(outcome, InitOutcome::Grown(5));
    let alloc = Allocator::open(dir.path(), Options::default()).unwrap();
    let grown_string = alloc.config().layout.pool_string();
    assert_eq!(alloc.pool_size(), 17);
    assert_eq!(alloc.held_by("a").unwrap(), mine);
    let mut got = BTreeSet::new();
    for _ in 0..15 {
        got.insert(alloc.allocate("b").unwrap());
    }
    assert!((26..=30).all(|f| got.contains(&f)), "{got:?}");
    assert!(matches!(
        alloc.allocate("b"),
        Err(FreqError::NoFrequency { pool_size: 17 })
    ));
    assert_consistent(&alloc);
    drop(alloc);

    // Shrinking is refused, naming what would be dropped, even with grow.
    let err = Allocator::init(
        dir.path(),
        config(course(), Routing::RoundRobin, Durability::Sync),
        true,
    )
    .unwrap_err();
    match &err {
        FreqError::Layout(LayoutError::Shrink(dropped)) => {
            assert_eq!(dropped, &[FreqRange::new(26, 30).unwrap()])
        }
        other => panic!("expected Shrink, got {other:?}"),
    }
    assert!(err.to_string().contains("26-30"), "{err}");
    // Another pool without grow: ConfigMismatch.
    let other = Layout::one_shard_per_range(&parse_pool("0-99").unwrap()).unwrap();
    let err = Allocator::init(
        dir.path(),
        config(other, Routing::RoundRobin, Durability::Sync),
        false,
    )
    .unwrap_err();
    assert!(
        matches!(err, FreqError::Store(StoreError::ConfigMismatch { .. })),
        "{err:?}"
    );
    // Growth without the flag is refused too.
    assert!(matches!(
        Allocator::init(
            dir.path(),
            config(
                Layout::one_shard_per_range(&parse_pool("10-15,20-31").unwrap()).unwrap(),
                Routing::RoundRobin,
                Durability::Sync
            ),
            false
        ),
        Err(FreqError::Store(StoreError::ConfigMismatch { .. }))
    ));
    // Nothing was changed by the refusals.
    let alloc = Allocator::open(dir.path(), Options::default()).unwrap();
    assert_eq!(alloc.config().layout.pool_string(), grown_string);
    assert_eq!(alloc.status().allocations.len(), 17);
    assert_consistent(&alloc);
}

#[test]
fn store_errors_are_typed() {
    let dir = tempfile::tempdir().unwrap();
    match Allocator::open(dir.path(), Options::default()) {
        Err(FreqError::Store(StoreError::NoStore(p))) => assert_eq!(p, dir.path()),
        Err(e) => panic!("expected NoStore, got {e:?}"),
        Ok(_) => panic!("opened a directory with no store"),
    }
    let alloc = create(
        dir.path(),
        config(course(), Routing::MostFree, Durability::Sync),
    );
    let shard0 = shard_dir(dir.path(), 0);
    match Allocator::open(dir.path(), Options::default()) {
        Err(e @ FreqError::Disk(DetsError::Locked { .. })) => {
            match &e {
                FreqError::Disk(DetsError::Locked { path }) => assert_eq!(path, &shard0),
                _ => unreachable!(),
            }
            assert!(e.to_string().contains(&*shard0.to_string_lossy()), "{e}");
        }
        Err(e) => panic!("expected Locked, got {e:?}"),
        Ok(_) => panic!("a store was opened twice"),
    }
    // The failed open disturbed nothing, and the store opens again once the first is gone.
    let f = alloc.allocate("a").unwrap();
    drop(alloc);
    let alloc = Allocator::open(dir.path(), Options::default()).unwrap();
    assert_eq!(alloc.held_by("a").unwrap(), vec![f]);
}

// ---------------------------------------------------------------------------------------------
// Corruption on disk

fn write_behind_the_allocators_back(dir: &Path, shard: usize, f: u64, owner: &str) {
    let opts = OpenOptions::new(TableType::Set)
        .flush_policy(dets::FlushPolicy::Manual)
        .version(DISK_VERSION);
    let mut table: DiskTable<u64, Allocation> =
        DiskTable::open(shard_dir(dir, shard), opts).unwrap();
    table
        .insert(
            f,
            Allocation {
                owner: owner.to_string(),
                since_ms: 7,
                lease_until_ms: None,
            },
        )
        .unwrap();
    table.close().unwrap();
}

#[test]
fn an_allocation_written_on_disk_inside_the_shard_is_rebuilt_consistently() {
    let dir = tempfile::tempdir().unwrap();
    let alloc = create(
        dir.path(),
        config(course(), Routing::RoundRobin, Durability::Sync),
    );
    assert_eq!(alloc.allocate("a").unwrap(), 10);
    alloc.stop();
    drop(alloc);
    write_behind_the_allocators_back(dir.path(), 0, 13, "ghost");
    let alloc = Allocator::open(dir.path(), Options::default()).unwrap();
    assert_eq!(alloc.held_by("ghost").unwrap(), vec![13]);
    assert_eq!(alloc.free_per_shard(), vec![4, 6]);
    let s = alloc.status();
    assert_eq!(
        holdings(&s),
        [(10, "a".to_string()), (13, "ghost".to_string())].into()
    );
    assert_eq!(
        s.free,
        [
            FreqRange::new(11, 12).unwrap(),
            FreqRange::new(14, 15).unwrap(),
            FreqRange::new(20, 25).unwrap()
        ]
    );
    assert_consistent(&alloc);
    // The rebuilt shard allocates around the ghost, lowest first.
    let got: Vec<u64> = (0..3).map(|_| alloc.allocate("b").unwrap()).collect();
    assert_eq!(got, [11, 20, 12]);
}

/// Regression: a shard whose `init` failed at open surfaced as `ShardFailed { shard:
/// usize::MAX, reason }` with the cause only as text, and a disk table holding a frequency
/// outside its shard was reported as `UnknownFrequency` (the user-input error). Now the shard's
/// own typed error reaches the caller: `Corrupt`, naming the shard and the frequency.
#[test]
fn an_allocation_written_on_disk_outside_the_shard_is_a_typed_error_at_open() {
    let dir = tempfile::tempdir().unwrap();
    drop(create(
        dir.path(),
        config(course(), Routing::RoundRobin, Durability::Sync),
    ));
    // 22 is in the pool but belongs to shard 1, not shard 0.
    write_behind_the_allocators_back(dir.path(), 0, 22, "ghost");
    match Allocator::open(dir.path(), Options::default()) {
        Err(e @ FreqError::Corrupt(_)) => {
            let msg = e.to_string();
            assert!(msg.contains("22") && msg.contains("shard 0"), "{msg}");
        }
        Err(e) => panic!("expected Corrupt, got {e:?}"),
        Ok(_) => panic!("opened a store whose shard holds a foreign frequency"),
    }
}

// ---------------------------------------------------------------------------------------------
// Supervision and concurrency

#[derive(Default, Debug)]
struct ClientLog {
    /// Acknowledged and not deallocated.
    held: BTreeSet<u64>,
    /// Deallocations that failed with ShardFailed: they may or may not have happened.
    maybe_freed: BTreeSet<u64>,
    /// Allocations that failed with ShardFailed: each may or may not have happened.
    failed_allocations: usize,
    /// Shards named by ShardFailed errors.
    failed_shards: BTreeSet<usize>,
    ops: u64,
}

/// A client thread of a storm: allocates and deallocates until `stop`, holding at most `hold`.
fn storm_client(
    alloc: &Allocator,
    name: &str,
    seed: u64,
    hold: usize,
    stop: &AtomicBool,
    ops: &AtomicU64,
) -> ClientLog {
    let mut log = ClientLog::default();
    let mut rng = Rng(seed | 1);
    while !stop.load(Ordering::Relaxed) {
        let allocate = log.held.is_empty() || (log.held.len() < hold && rng.below(2) == 0);
        if allocate {
            match alloc.allocate(name) {
                Ok(f) => {
                    assert!(log.held.insert(f), "{name} got {f} twice");
                    log.maybe_freed.remove(&f);
                }
                Err(FreqError::ShardFailed { shard, .. }) => {
                    log.failed_allocations += 1;
                    log.failed_shards.insert(shard);
                }
                Err(e) => panic!("{name}: allocate: {e}"),
            }
        } else {
            let held: Vec<u64> = log.held.iter().copied().collect();
            let f = held[rng.below(held.len() as u64) as usize];
            log.held.remove(&f);
            match alloc.deallocate(f, name) {
                Ok(()) => {}
                Err(FreqError::ShardFailed { shard, .. }) => {
                    log.maybe_freed.insert(f);
                    log.failed_shards.insert(shard);
                }
                Err(e) => panic!("{name}: deallocate {f}: {e}"),
            }
        }
        log.ops += 1;
        ops.fetch_add(1, Ordering::Relaxed);
    }
    log
}

/// Checks that what each client believes matches the store: every acknowledged allocation is
/// held by it; what it holds beyond that is a deallocation or allocation whose reply was a
/// `ShardFailed` (which may or may not have taken effect).
fn verify_beliefs(alloc: &Allocator, logs: &BTreeMap<String, ClientLog>) {
    let actual = holdings(&alloc.status());
    for (owner, _) in actual.values().map(|o| (o, ())) {
        assert!(logs.contains_key(owner), "unknown owner {owner}");
    }
    for (name, log) in logs {
        let held: BTreeSet<u64> = alloc.held_by(name).unwrap().into_iter().collect();
        let missing: Vec<_> = log.held.difference(&held).collect();
        assert!(missing.is_empty(), "{name} lost acknowledged {missing:?}");
        let extra: Vec<_> = held
            .iter()
            .filter(|f| !log.held.contains(f) && !log.maybe_freed.contains(f))
            .collect();
        assert!(
            extra.len() <= log.failed_allocations,
            "{name} holds {extra:?} it never got ({} failed allocations)",
            log.failed_allocations
        );
    }
}

/// Runs `clients` storm clients (`c0`, `c1`, ...) on `alloc`, each holding up to `hold`, and
/// calls `during(ops)` on this thread while they run (it waits on the shared operation counter);
/// stops them when it returns and collects their logs.
fn storm(
    alloc: &Allocator,
    clients: usize,
    seed: u64,
    hold: usize,
    during: impl FnOnce(&AtomicU64),
) -> BTreeMap<String, ClientLog> {
    let stop = AtomicBool::new(false);
    let ops = AtomicU64::new(0);
    let start = Barrier::new(clients + 1);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..clients)
            .map(|i| {
                let (stop, ops, start) = (&stop, &ops, &start);
                s.spawn(move || {
                    let name = format!("c{i}");
                    start.wait();
                    let log = storm_client(alloc, &name, seed + i as u64, hold, stop, ops);
                    (name, log)
                })
            })
            .collect();
        start.wait();
        during(&ops);
        stop.store(true, Ordering::Relaxed);
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

#[test]
fn a_shard_panic_mid_storm_is_restarted_and_loses_nothing_acknowledged() {
    shard_panic_mid_storm(Durability::Sync);
}

/// As above in `Interval`, where the shards take direct calls: the storm's calls, and the
/// injected panic itself, run on the clients' threads.
#[test]
fn a_shard_panic_in_a_direct_call_mid_storm_loses_nothing_acknowledged() {
    shard_panic_mid_storm(Durability::Interval(Duration::from_millis(50)));
}

fn shard_panic_mid_storm(durability: Durability) {
    let dir = tempfile::tempdir().unwrap();
    let layout = Layout::split_evenly(&parse_pool("0-399").unwrap(), 4).unwrap();
    let alloc = create(
        dir.path(),
        config(layout, Routing::PowerOfTwoChoices, durability),
    );
    let logs = storm(&alloc, 4, 0x9E37, 8, |ops| {
        assert!(wait_until(|| ops.load(Ordering::Relaxed) >= 200, LONG));
        // The injecting call is itself in flight when the shard dies.
        match alloc.inject_fault(1, Fault::Panic) {
            Err(FreqError::ShardFailed { shard: 1, .. }) => {}
            other => panic!("expected ShardFailed from shard 1, got {other:?}"),
        }
        alloc.wait_for_shard_generation(1, 2, LONG).unwrap();
        let at = ops.load(Ordering::Relaxed);
        assert!(wait_until(|| ops.load(Ordering::Relaxed) >= at + 200, LONG));
    });
    for (name, log) in &logs {
        eprintln!(
            "{name}: {} ops, {} failed allocations, {} uncertain deallocations",
            log.ops,
            log.failed_allocations,
            log.maybe_freed.len()
        );
        assert!(
            log.failed_shards.iter().all(|&s| s == 1),
            "{name}: failures on {:?}",
            log.failed_shards
        );
    }
    let status = alloc.status();
    assert_eq!(status.shards[1].restarts, 1);
    assert!(status.shards.iter().all(|s| s.alive));
    assert!(status
        .shards
        .iter()
        .enumerate()
        .all(|(i, s)| i == 1 || s.restarts == 0));
    assert_consistent(&alloc);
    verify_beliefs(&alloc, &logs);
    // And the same holds from disk.
    let snapshot = holdings(&alloc.status());
    drop(alloc);
    let alloc = Allocator::open(dir.path(), Options::default()).unwrap();
    assert_eq!(holdings(&alloc.status()), snapshot);
    assert_consistent(&alloc);
}

#[test]
fn many_clients_at_quiescence_hold_exactly_the_allocations() {
    for strategy in Routing::ALL {
        let layout = Layout::split_evenly(&parse_pool("0-9999").unwrap(), 4).unwrap();
        let alloc = Allocator::in_memory(layout, strategy, None).unwrap();
        let logs = storm(&alloc, 8, 7, 50, |ops| {
            assert!(wait_until(|| ops.load(Ordering::Relaxed) >= 20_000, LONG));
        });
        let mut union = BTreeMap::new();
        for (name, log) in &logs {
            assert_eq!(log.failed_allocations, 0);
            assert!(log.maybe_freed.is_empty());
            for f in &log.held {
                assert!(union.insert(*f, name.clone()).is_none(), "{f} held twice");
            }
        }
        assert_eq!(holdings(&alloc.status()), union, "{strategy}");
        assert_consistent(&alloc);
    }
}

/// Regression: an allocation whose call failed *in flight* (a timeout, or the shard dying with
/// the call pending) was sent on to another shard, so one `allocate` could allocate twice (the
/// first shard may still make its allocation), leaking a frequency the client never heard of.
/// The docs promise such a call is not retried; only a shard that is not running is skipped.
#[test]
fn an_allocation_that_times_out_is_not_sent_to_another_shard() {
    let dir = tempfile::tempdir().unwrap();
    Allocator::init(
        dir.path(),
        config(course(), Routing::RoundRobin, Durability::Sync),
        false,
    )
    .unwrap();
    let impatient = Options {
        call_timeout: Duration::ZERO,
        release_on_drop: false,
        ..Options::default()
    };
    let alloc = Allocator::open(dir.path(), impatient).unwrap();
    let calls = 4;
    let mut timeouts = 0;
    for _ in 0..calls {
        match alloc.allocate("a") {
            Ok(_) => {}
            Err(FreqError::ShardFailed { .. }) => timeouts += 1,
            Err(e) => panic!("{e:?}"),
        }
    }
    // Stopping goes through each shard's mailbox after the calls, so all of them are handled.
    alloc.stop();
    drop(alloc);
    let alloc = Allocator::open(dir.path(), Options::default()).unwrap();
    let held = alloc.held_by("a").unwrap();
    assert_eq!(held.len(), calls, "{held:?} after {timeouts} timeouts");
    assert_consistent(&alloc);
}

// ---------------------------------------------------------------------------------------------
// Size targets, as functional smoke tests (speed is measured by the benchmarks)

#[test]
fn ten_million_frequencies_over_eight_shards_open_in_memory() {
    let layout = Layout::split_evenly(&parse_pool("0-9999999").unwrap(), 8).unwrap();
    let alloc = Allocator::in_memory(layout, Routing::MostFree, None).unwrap();
    assert_eq!(alloc.pool_size(), 10_000_000);
    assert_eq!(alloc.free_per_shard(), vec![1_250_000; 8]);
    for _ in 0..1000 {
        alloc.allocate("a").unwrap();
    }
    let s = alloc.status();
    assert_eq!(s.allocations.len(), 1000);
    assert!(s.shards.iter().all(|sh| sh.allocated == 125));
    // Free space stays a handful of ranges, not an entry per frequency.
    assert!(s.free.len() <= 8, "{}", s.free.len());
    assert_consistent(&alloc);
}

#[test]
fn a_store_with_100_000_allocations_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let layout = Layout::split_evenly(&parse_pool("0-199999").unwrap(), 4).unwrap();
    let alloc = create(
        dir.path(),
        config(
            layout,
            Routing::RoundRobin,
            Durability::Interval(Duration::from_millis(200)),
        ),
    );
    std::thread::scope(|s| {
        for t in 0..4 {
            let alloc = &alloc;
            s.spawn(move || {
                let name = format!("bulk-{t}");
                for _ in 0..25_000 {
                    alloc.allocate(&name).unwrap();
                }
            });
        }
    });
    let before = holdings(&alloc.status());
    assert_eq!(before.len(), 100_000);
    alloc.stop();
    drop(alloc);
    let alloc = Allocator::open(dir.path(), Options::default()).unwrap();
    let recovered: u64 = alloc.recovery().iter().map(|(n, _)| n).sum();
    assert_eq!(recovered, 100_000);
    assert_eq!(holdings(&alloc.status()), before);
    assert_consistent(&alloc);
}

/// Regression: after `stop()`, deallocations, releases, checks and reaps waited for a restart
/// that never comes (the call timeout, 5 s per shard, so dropping a `Client` after a stop hung)
/// and then failed with `ShardFailed`; they now fail at once with `Stopped`, as documented.
#[test]
fn calls_after_stop_fail_with_stopped() {
    let alloc = Allocator::in_memory(course(), Routing::RoundRobin, None).unwrap();
    let client = alloc.client("a").unwrap();
    let f = client.allocate().unwrap();
    let clone = alloc.clone();
    alloc.stop();
    assert!(matches!(clone.allocate("b"), Err(FreqError::Stopped)));
    assert!(matches!(clone.deallocate(f, "a"), Err(FreqError::Stopped)));
    assert!(matches!(clone.release_all("a"), Err(FreqError::Stopped)));
    assert!(matches!(clone.reap_expired(), Err(FreqError::Stopped)));
    assert!(matches!(clone.check(), Err(FreqError::Stopped)));
    assert!(matches!(client.deallocate(f), Err(FreqError::Stopped)));
    drop(client);
    // Stopping twice is harmless.
    alloc.stop();
}

/// Regression: `init` compared the pools range by range, so the same frequencies split another
/// way were "another pool": refused with the message "created with pool 0-999; refusing pool
/// 0-999", or with `grow` reported as `Grown(0)` while the requested split was silently ignored.
/// Now the same frequencies over the same shard count are `Existing` (also after a growth, when
/// the grown pool is given again), and another shard count is refused naming both counts.
#[test]
fn init_compares_frequencies_not_how_they_are_split() {
    let dir = tempfile::tempdir().unwrap();
    let split = |n| Layout::split_evenly(&parse_pool("0-999").unwrap(), n).unwrap();
    let cfg = |layout| config(layout, Routing::MostFree, Durability::Sync);
    Allocator::init(dir.path(), cfg(split(4)), false).unwrap();
    for grow in [false, true] {
        assert_eq!(
            Allocator::init(dir.path(), cfg(split(4)), grow).unwrap(),
            InitOutcome::Existing
        );
        let err = Allocator::init(dir.path(), cfg(split(2)), grow).unwrap_err();
        assert!(
            matches!(err, FreqError::Store(StoreError::ConfigMismatch { .. })),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains("4 shards") && msg.contains("2 shards"),
            "{msg}"
        );
    }
    // After a growth, giving the grown pool again is not a change.
    let two = tempfile::tempdir().unwrap();
    Allocator::init(two.path(), cfg(course()), false).unwrap();
    let grown = Layout::one_shard_per_range(&parse_pool("10-15,20-30").unwrap()).unwrap();
    assert_eq!(
        Allocator::init(two.path(), cfg(grown.clone()), true).unwrap(),
        InitOutcome::Grown(5)
    );
    for grow in [false, true] {
        assert_eq!(
            Allocator::init(two.path(), cfg(grown.clone()), grow).unwrap(),
            InitOutcome::Existing
        );
    }
    let alloc = Allocator::open(two.path(), Options::default()).unwrap();
    assert_eq!((alloc.shard_count(), alloc.pool_size()), (2, 17));
}
