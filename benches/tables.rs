//! Table benchmarks: insert, lookup, delete and a `fold` scan (the select/fold workload, one
//! thread) of 1,000,000 u64 keys with a u64 value, on one
//! thread and on two (each thread half the keys, on a shared public table), for every ETS table
//! type, plus a `Mutex<HashMap>` baseline and design alternatives: raw `dashmap` (the map under
//! the ETS hash types, without their lock elision, bag slots or all-shard batch locks) with
//! SipHash, with FxHash, and behind a table-level gate.
//!
//! Run: `cargo bench --bench tables -- --warm-up-time 1 --measurement-time 2`
//! (filter with e.g. `-- ets/set`). All ETS figures are in memory (no durability).
//! `FREQALLOC_BENCH_CLOCK=cpu` times the busiest worker's CPU time instead of wall time (for
//! a shared, overloaded machine); `FREQALLOC_BENCH_KEYS=scrambled` uses random key order.
//! `*/lookup` goes through `ReadTable::lookup` (one `Vec` per hit); `*-get/lookup` uses the
//! allocation-free inherent `get`.
//!
//! The DETS analogue runs the same workloads at 100,000 keys (`dets/<type>/sync_at_end`:
//! `Manual` durability, one `sync` at the end of each insert or delete run);
//! `benches/dets.rs` adds durable single writes (`EveryWrite`), batches and raw sled.
//! Adding a backend is one `Subject` impl and one line in `benches()`: the workloads only need
//! `WriteTable<u64, u64>` (through [`Via`]).

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Arc, Barrier, Mutex, OnceLock};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use dashmap::DashMap;
use freqalloc::dets::{DiskTable, FlushPolicy, OpenOptions};
use freqalloc::ets::{PublicTable, Table};
use freqalloc::{TableType, WriteTable};
use parking_lot::RwLock;

/// Keys per run.
const N: u64 = 1_000_000;

/// The keys, in the order the workloads use them: `0..N` in order (as BEAM benchmarks use
/// `lists:seq/2`), or with `FREQALLOC_BENCH_KEYS=scrambled` a fixed pseudo-random permutation
/// of distinct keys (the ordered backend then sees random inserts, not appends).
fn keys() -> &'static [u64] {
    static KEYS: OnceLock<Vec<u64>> = OnceLock::new();
    KEYS.get_or_init(|| {
        let scrambled = std::env::var("FREQALLOC_BENCH_KEYS").is_ok_and(|v| v == "scrambled");
        (0..N)
            .map(|i| {
                if scrambled {
                    i.wrapping_mul(0x9E37_79B9_7F4A_7C15)
                } else {
                    i
                }
            })
            .collect()
    })
}

/// What a workload does to a table handle.
pub trait Kv: Send {
    fn put(&mut self, k: u64, v: u64);
    /// Returns how many objects it found (so the lookup is not optimised away).
    fn get(&self, k: u64) -> usize;
    fn del(&mut self, k: u64);
    /// Ends a run of writes (a disk table syncs: one flush per run, as the DETS figures state).
    fn finish(&mut self) {}
    /// A full scan with the `fold` analogue (`ets:foldl/3`, the select/fold workload); returns
    /// how many objects it saw. `None`: this handle has no fold (the raw baselines).
    fn scan(&self) -> Option<usize> {
        None
    }
}

/// Any [`WriteTable`] is a [`Kv`]: this is how ETS, DETS and future tables join in.
pub struct Via<T>(pub T);

impl<T: WriteTable<u64, u64> + Send> Kv for Via<T>
where
    T::Error: std::fmt::Debug,
{
    #[inline]
    fn put(&mut self, k: u64, v: u64) {
        self.0.insert(k, v).expect("insert");
    }
    #[inline]
    fn get(&self, k: u64) -> usize {
        self.0.lookup(&k).expect("lookup").len()
    }
    #[inline]
    fn del(&mut self, k: u64) {
        self.0.delete(&k).expect("delete");
    }
    fn scan(&self) -> Option<usize> {
        Some(self.0.fold(0usize, |n, _, _| n + 1).expect("fold"))
    }
}

/// A table kind under test.
pub trait Subject {
    type H: Kv;
    /// The benchmark name, e.g. `ets/set` or `dets/set/sync`.
    fn name(&self) -> String;
    /// A fresh, empty table.
    fn make(&self) -> Self::H;
    /// A second writing handle to the same table, for the two-thread runs (`None`: one only).
    fn second(&self, h: &Self::H) -> Option<Self::H>;
    /// Keys per run (1,000,000 in memory; fewer on disk).
    fn keys(&self) -> u64 {
        N
    }
}

/// A DETS-analogue disk table in its own temporary directory, `Manual` durability, one `sync`
/// at the end of every insert or delete run.
struct Dets(TableType);
struct DiskHandle {
    table: Via<DiskTable<u64, u64>>,
    _dir: tempfile::TempDir,
}
impl Kv for DiskHandle {
    fn put(&mut self, k: u64, v: u64) {
        self.table.put(k, v)
    }
    fn get(&self, k: u64) -> usize {
        self.table.get(k)
    }
    fn del(&mut self, k: u64) {
        self.table.del(k)
    }
    fn finish(&mut self) {
        self.table.0.sync().expect("sync");
    }
    fn scan(&self) -> Option<usize> {
        self.table.scan()
    }
}
impl Subject for Dets {
    type H = DiskHandle;
    fn name(&self) -> String {
        format!("dets/{}/sync_at_end", self.0)
    }
    fn make(&self) -> Self::H {
        let dir = tempfile::tempdir().expect("tempdir");
        let opts = OpenOptions::new(self.0).flush_policy(FlushPolicy::Manual);
        DiskHandle {
            table: Via(DiskTable::open(dir.path(), opts).expect("open")),
            _dir: dir,
        }
    }
    fn second(&self, _: &Self::H) -> Option<Self::H> {
        None
    }
    fn keys(&self) -> u64 {
        100_000
    }
}

/// The owner of a protected ETS table (one thread only: it is the only writer).
struct EtsOwner(TableType);
impl Subject for EtsOwner {
    type H = Via<Table<u64, u64>>;
    fn name(&self) -> String {
        format!("ets/{}/owner", self.0)
    }
    fn make(&self) -> Self::H {
        Via(Table::new(self.0))
    }
    fn second(&self, _: &Self::H) -> Option<Self::H> {
        None
    }
}

/// A public ETS table: clones write from any thread.
struct EtsPublic(TableType);
impl Subject for EtsPublic {
    type H = Via<PublicTable<u64, u64>>;
    fn name(&self) -> String {
        format!("ets/{}/public", self.0)
    }
    fn make(&self) -> Self::H {
        Via(PublicTable::new(self.0))
    }
    fn second(&self, h: &Self::H) -> Option<Self::H> {
        Some(Via(h.0.clone()))
    }
}

/// An ETS table looking up with the allocation-free `get` instead of `lookup` (which returns
/// a `Vec`): the owner's handle, or with `public` a public table's.
struct EtsGet {
    tt: TableType,
    public: bool,
}
enum GetVia {
    Owner(Table<u64, u64>),
    Public(PublicTable<u64, u64>),
}
impl Kv for GetVia {
    #[inline]
    fn put(&mut self, k: u64, v: u64) {
        match self {
            GetVia::Owner(t) => t.insert(k, v),
            GetVia::Public(t) => PublicTable::insert(t, k, v),
        }
    }
    #[inline]
    fn get(&self, k: u64) -> usize {
        usize::from(match self {
            GetVia::Owner(t) => t.get(&k).is_some(),
            GetVia::Public(t) => t.get(&k).is_some(),
        })
    }
    #[inline]
    fn del(&mut self, k: u64) {
        match self {
            GetVia::Owner(t) => t.delete(&k),
            GetVia::Public(t) => PublicTable::delete(t, &k),
        };
    }
}
impl Subject for EtsGet {
    type H = GetVia;
    fn name(&self) -> String {
        let who = if self.public { "public" } else { "owner" };
        format!("ets/{}/{who}-get", self.tt)
    }
    fn make(&self) -> GetVia {
        if self.public {
            GetVia::Public(PublicTable::new(self.tt))
        } else {
            GetVia::Owner(Table::new(self.tt))
        }
    }
    fn second(&self, h: &GetVia) -> Option<GetVia> {
        match h {
            GetVia::Owner(_) => None,
            GetVia::Public(t) => Some(GetVia::Public(t.clone())),
        }
    }
}

/// Baseline: `std::sync::Mutex<std::collections::HashMap>` (SipHash).
#[derive(Clone)]
struct MutexMap(Arc<Mutex<HashMap<u64, u64>>>);
impl Kv for MutexMap {
    fn put(&mut self, k: u64, v: u64) {
        self.0.lock().expect("poisoned").insert(k, v);
    }
    fn get(&self, k: u64) -> usize {
        usize::from(self.0.lock().expect("poisoned").contains_key(&k))
    }
    fn del(&mut self, k: u64) {
        self.0.lock().expect("poisoned").remove(&k);
    }
}
struct Baseline;
impl Subject for Baseline {
    type H = MutexMap;
    fn name(&self) -> String {
        "baseline/mutex-hashmap".into()
    }
    fn make(&self) -> MutexMap {
        MutexMap(Arc::default())
    }
    fn second(&self, h: &MutexMap) -> Option<MutexMap> {
        Some(h.clone())
    }
}

/// Design alternatives: raw dashmap with a given hasher, optionally behind one table-level
/// `RwLock<()>` taken shared per operation (the simple alternative to our striped gate).
#[derive(Clone)]
struct RawDash<S: BuildHasher + Clone> {
    map: Arc<DashMap<u64, u64, S>>,
    gate: Option<Arc<RwLock<()>>>,
}
impl<S: BuildHasher + Clone + Send + Sync> Kv for RawDash<S> {
    fn put(&mut self, k: u64, v: u64) {
        let _g = self.gate.as_ref().map(|g| g.read());
        self.map.insert(k, v);
    }
    fn get(&self, k: u64) -> usize {
        let _g = self.gate.as_ref().map(|g| g.read());
        usize::from(self.map.get(&k).is_some())
    }
    fn del(&mut self, k: u64) {
        let _g = self.gate.as_ref().map(|g| g.read());
        self.map.remove(&k);
    }
}
struct Design<S>(&'static str, S, bool);
impl<S: BuildHasher + Clone + Send + Sync + 'static> Subject for Design<S> {
    type H = RawDash<S>;
    fn name(&self) -> String {
        format!("design/{}", self.0)
    }
    fn make(&self) -> RawDash<S> {
        RawDash {
            map: Arc::new(DashMap::with_hasher(self.1.clone())),
            gate: self.2.then(|| Arc::new(RwLock::new(()))),
        }
    }
    fn second(&self, h: &RawDash<S>) -> Option<RawDash<S>> {
        Some(h.clone())
    }
}

#[derive(Clone, Copy)]
enum Work {
    Insert,
    Lookup,
    Delete,
    /// One full `fold` over the filled table (one thread; throughput counts objects visited).
    Scan,
}

/// Handles for `threads` threads, on a table holding keys `0..N` if `filled`.
fn handles<S: Subject>(s: &S, threads: usize, filled: bool) -> Option<Vec<S::H>> {
    let mut first = s.make();
    if filled {
        for (i, &k) in keys()[..s.keys() as usize].iter().enumerate() {
            first.put(k, i as u64);
        }
        first.finish();
    }
    let mut hs = Vec::with_capacity(threads);
    for _ in 1..threads {
        hs.push(s.second(&first)?);
    }
    hs.insert(0, first);
    Some(hs)
}

fn bench_subject<S: Subject>(c: &mut Criterion, s: &S) {
    let mut g = c.benchmark_group(s.name());
    g.sample_size(10);
    g.throughput(Throughput::Elements(s.keys()));
    for threads in [1usize, 2] {
        if handles(s, threads, false).is_none() {
            continue;
        }
        // The fold scan runs on one thread, for the handles that have a fold.
        let scans = threads == 1
            && handles(s, 1, false).is_some_and(|hs| hs.first().and_then(Kv::scan).is_some());
        let works: &[(&str, Work)] = if scans {
            &[
                ("insert", Work::Insert),
                ("lookup", Work::Lookup),
                ("delete", Work::Delete),
                ("fold_scan", Work::Scan),
            ]
        } else {
            &[
                ("insert", Work::Insert),
                ("lookup", Work::Lookup),
                ("delete", Work::Delete),
            ]
        };
        for &(wname, work) in works {
            let id = BenchmarkId::new(wname, format!("{threads}thr"));
            g.bench_function(id, |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    let mut filled = None;
                    for _ in 0..iters {
                        let need_fill = !matches!(work, Work::Insert);
                        // Lookup and scan reuse one filled table; insert and delete need a
                        // fresh one.
                        let mut hs = match (work, filled.take()) {
                            (Work::Lookup | Work::Scan, Some(hs)) => hs,
                            _ => handles(s, threads, need_fill).expect("handles"),
                        };
                        total += timed(work, &mut hs, s.keys());
                        if matches!(work, Work::Lookup | Work::Scan) {
                            filled = Some(hs);
                        }
                    }
                    total
                })
            });
        }
    }
    g.finish();
}

/// This thread's CPU time so far, from `/proc/thread-self/schedstat` (nanoseconds).
fn thread_cpu() -> Option<Duration> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: u64 = s.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(ns))
}

/// `FREQALLOC_BENCH_CLOCK=cpu`: report the busiest worker's CPU time instead of wall time.
/// On a machine shared with other jobs (load far above the core count) wall time mostly
/// measures waiting for a core; CPU time still includes lock spinning and cache-line traffic,
/// but not time parked on a lock, so contended figures read optimistic.
fn cpu_clock() -> bool {
    static CPU: OnceLock<bool> = OnceLock::new();
    *CPU.get_or_init(|| {
        std::env::var("FREQALLOC_BENCH_CLOCK").is_ok_and(|v| v == "cpu") && thread_cpu().is_some()
    })
}

/// Times `work` across the handles: from releasing the start barrier to the last thread done
/// (or, with the CPU clock, the largest CPU time of one worker).
fn timed(work: Work, hs: &mut [impl Kv], keys_per_run: u64) -> Duration {
    let n = hs.len();
    let per = keys_per_run as usize / n;
    let barrier = Barrier::new(n + 1);
    std::thread::scope(|sc| {
        let mut joins = Vec::new();
        for (t, h) in hs.iter_mut().enumerate() {
            let barrier = &barrier;
            joins.push(sc.spawn(move || {
                let mine = &keys()[t * per..(t + 1) * per];
                barrier.wait();
                let cpu0 = thread_cpu();
                let mut found = 0;
                match work {
                    Work::Insert => mine.iter().for_each(|&k| h.put(k, k)),
                    Work::Lookup => mine.iter().for_each(|&k| found += h.get(k)),
                    Work::Delete => mine.iter().for_each(|&k| h.del(k)),
                    Work::Scan => found += h.scan().unwrap_or(0),
                }
                if matches!(work, Work::Insert | Work::Delete) {
                    h.finish();
                }
                let cpu = match (cpu0, thread_cpu()) {
                    (Some(a), Some(b)) => b.saturating_sub(a),
                    _ => Duration::ZERO,
                };
                (found, cpu)
            }));
        }
        barrier.wait();
        let start = Instant::now();
        let results: Vec<(usize, Duration)> = joins
            .into_iter()
            .map(|j| j.join().expect("worker"))
            .collect();
        let wall = start.elapsed();
        let found: usize = results.iter().map(|r| r.0).sum();
        let busiest = results.iter().map(|r| r.1).max().unwrap_or_default();
        let elapsed = if cpu_clock() { busiest } else { wall };
        if matches!(work, Work::Lookup | Work::Scan) {
            assert_eq!(found as u64, keys_per_run, "every key must be found");
        }
        elapsed
    })
}

fn benches(c: &mut Criterion) {
    for tt in TableType::ALL {
        bench_subject(c, &EtsOwner(tt));
        bench_subject(c, &EtsPublic(tt));
    }
    for tt in TableType::ALL {
        for public in [false, true] {
            bench_subject(c, &EtsGet { tt, public });
        }
    }
    for tt in TableType::ALL {
        bench_subject(c, &Dets(tt));
    }
    bench_subject(c, &Baseline);
    bench_subject(
        c,
        &Design("dashmap-siphash", std::hash::RandomState::new(), false),
    );
    bench_subject(
        c,
        &Design("dashmap-fxhash", rustc_hash::FxBuildHasher, false),
    );
    bench_subject(
        c,
        &Design(
            "dashmap-fxhash-rwlock-gate",
            rustc_hash::FxBuildHasher,
            true,
        ),
    );
}

criterion_group!(tables, benches);
criterion_main!(tables);
