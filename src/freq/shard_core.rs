//! The shard core: one [`Pool`], its disk table, the batch of changes not yet on disk, the
//! replies held for it, and the lease timer. The single shard owns one; each replica of a
//! replicated shard owns one too and adds a link to its partner (`replica.rs`): the course's
//! semantics, group commit, recovery and leases are written once, here.
//!
//! Architecture Invariant: the core has no threads and sends no messages; the shard's generic
//! server (`shard.rs`) drives it, one callback at a time, and is the only writer of its tables.
//!
//! ## Group commit
//! Every change is numbered (`seq`) and, when it has to go anywhere (a disk table, or a backup),
//! collected in the batch. A reply waits while anything handled before it is still in the batch
//! ([`ShardCore::respond`]), so no client learns of a change (even through an error such as
//! `NotOwner`) that a crash of this shard alone could take back. [`ShardCore::commit`] ships the
//! batch (with replication), writes it (flushing once in `Sync`) and answers everyone.
//!
//! ## On disk
//! A single shard's disk table holds its allocations. A replica's holds them plus one record
//! under [`SEQ_KEY`] with its applied sequence number, written in the same atomic batch as the
//! changes, so a replica knows after a crash exactly what it has.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};

use super::clock::LeaseClock;
use super::error::{FreqError, ShardError};
use super::pair::PairShared;
use super::pool::{Allocation, Change, Load, Pool, PoolReaders};
use super::protocol::{ClientCall, ClientReply, LogEntry, ReplicaDump, ShardResponse, Snapshot};
use super::range::FreqRange;
use super::store::Durability;
use crate::dets::{self, BatchOp, DiskTable, OpenOptions};
use crate::otp::ReplyTo;
use crate::table::{ReadTable, TableType, WriteTable};

/// The schema version of a shard's disk table (bump when [`Allocation`] changes shape).
pub const DISK_VERSION: u32 = 1;

/// The key of the record holding a replica's applied sequence number in its disk table (a
/// replicated pool may not contain this frequency).
pub(crate) const SEQ_KEY: u64 = u64::MAX;
const SEQ_OWNER: &str = "\u{0}applied-seq";

/// What outlives a shard's instances: the counts the router reads and the readers of the current
/// instance's tables.
pub struct ShardShared {
    index: usize,
    load: Arc<Load>,
    readers: RwLock<Option<PoolReaders>>,
    recovered: AtomicU64,
    open_micros: AtomicU64,
    /// Why the last instance stopped abnormally or failed to start, as text: what a caller is
    /// told once no instance runs any more (e.g. the disk error of a full disk), instead of a
    /// bare "not running".
    last_failure: Mutex<Option<String>>,
    /// With `replicas: 2`, the pair's roles and readers.
    pair: Option<Arc<PairShared>>,
}

impl ShardShared {
    /// The shared part of shard `index`; `pair` with replication.
    pub(crate) fn new(index: usize, pair: Option<Arc<PairShared>>) -> Arc<Self> {
        Arc::new(ShardShared {
            index,
            load: Arc::new(Load::default()),
            readers: RwLock::new(None),
            recovered: AtomicU64::new(0),
            open_micros: AtomicU64::new(0),
            last_failure: Mutex::new(None),
            pair,
        })
    }

    /// Records what the instance just started loaded, and how long it took.
    fn set_opened(&self, recovered: u64, took: Duration) {
        self.recovered.store(recovered, Ordering::Relaxed);
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.open_micros.store(micros, Ordering::Relaxed);
    }

    /// Records why an instance stopped abnormally or failed to start.
    pub(crate) fn set_last_failure(&self, reason: String) {
        *self.last_failure.lock() = Some(reason);
    }

    /// Why the last instance stopped abnormally or failed to start, if one did.
    pub fn last_failure(&self) -> Option<String> {
        self.last_failure.lock().clone()
    }

    /// The shard's index.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The shard's published counts.
    pub fn load(&self) -> &Load {
        &self.load
    }

    /// Readers of the current instance's tables (`None` before the first start); of the
    /// primary's, with replication.
    pub fn readers(&self) -> Option<PoolReaders> {
        match &self.pair {
            Some(pair) => pair.readers(),
            None => self.readers.read().clone(),
        }
    }

    /// How many allocations the current instance loaded from disk when it started.
    pub fn recovered(&self) -> u64 {
        self.recovered.load(Ordering::Relaxed)
    }

    /// How long the current instance took to open its disk table and rebuild its tables.
    pub fn open_time(&self) -> Duration {
        Duration::from_micros(self.open_micros.load(Ordering::Relaxed))
    }
}

/// What a shard core is built from (again on every restart).
#[derive(Clone)]
pub(crate) struct CoreArgs {
    pub ranges: Vec<FreqRange>,
    /// The disk table's directory (`None` in memory).
    pub dir: Option<PathBuf>,
    pub durability: Durability,
    pub limit: Option<usize>,
    pub clock: Arc<dyn LeaseClock>,
    pub shared: Arc<ShardShared>,
    /// Whether this core is one replica of a pair: its changes are shipped (so always batched),
    /// its disk table carries the applied sequence, and its counts are published only while it
    /// is primary.
    pub replicated: bool,
    /// How many recent entries to keep for a partner's incremental catch-up (0: none).
    pub log_entries: usize,
    /// The state the allocator loaded before the first start (all shards in parallel, and so
    /// that opening errors such as a locked, mismatched or corrupt store reach the caller
    /// typed); restarts load it themselves.
    pub preloaded: Arc<Mutex<Option<Loaded>>>,
}

/// A shard's state as loaded from disk: its disk table (if durable), its rebuilt pool and its
/// applied sequence number (0 for a single shard, whose disk has none).
pub(crate) struct Loaded {
    disk: Option<DiskTable<u64, Allocation>>,
    pool: Pool,
    seq: u64,
    recovered: u64,
    took: Duration,
}

impl Loaded {
    /// The applied sequence number found on disk.
    pub(crate) fn seq(&self) -> u64 {
        self.seq
    }
}

/// Opens the disk table `args` names and rebuilds the pool (and, for a replica, its applied
/// sequence) from it.
pub(crate) fn load(args: &CoreArgs) -> Result<Loaded, FreqError> {
    let started = Instant::now();
    let disk = open_disk(args.dir.as_deref(), args.durability)?;
    let all = match &disk {
        Some(d) => ReadTable::to_vec(d)?,
        None => Vec::new(),
    };
    let (seq, allocations) = if args.replicated {
        split_seq(all)
    } else {
        (0, all)
    };
    let recovered = allocations.len() as u64;
    // A single shard's pool publishes straight to the router's counts; a replica's has its own,
    // copied there while it is primary.
    let load = if args.replicated {
        Arc::new(Load::default())
    } else {
        Arc::clone(&args.shared.load)
    };
    let pool = rebuild_pool(args, load, allocations)?;
    Ok(Loaded {
        disk,
        pool,
        seq,
        recovered,
        took: started.elapsed(),
    })
}

/// Rebuilds the pool of `args`' shard from `allocations` read from its disk (or received from its
/// other replica), publishing its counts to `load`.
fn rebuild_pool(
    args: &CoreArgs,
    load: Arc<Load>,
    allocations: impl IntoIterator<Item = (u64, Allocation)>,
) -> Result<Pool, FreqError> {
    Pool::rebuild(&args.ranges, args.limit, load, allocations).map_err(|e| match e {
        // Not the user's error of naming a frequency outside the pool: the disk is wrong.
        FreqError::UnknownFrequency(f) => FreqError::Corrupt(format!(
            "shard {}'s disk table holds frequency {f}, outside the shard's ranges {}",
            args.shared.index,
            args.ranges
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        )),
        e => e,
    })
}

/// Opens the disk table in `dir` as `durability` asks (`None` for in-memory shards).
fn open_disk(
    dir: Option<&Path>,
    durability: Durability,
) -> Result<Option<DiskTable<u64, Allocation>>, FreqError> {
    let (dir, policy) = match (dir, durability) {
        (Some(dir), Durability::Sync) => (dir, dets::FlushPolicy::Manual),
        (Some(dir), Durability::Interval(d)) => (dir, dets::FlushPolicy::Interval(d)),
        _ => return Ok(None),
    };
    let opts = OpenOptions::new(TableType::Set)
        .flush_policy(policy)
        .version(DISK_VERSION);
    Ok(Some(DiskTable::open(dir, opts)?))
}

fn seq_record(seq: u64) -> Allocation {
    Allocation {
        owner: SEQ_OWNER.to_string(),
        since_ms: seq,
        lease_until_ms: None,
    }
}

/// Splits the applied-sequence record from a replica's disk contents.
fn split_seq(mut all: Vec<(u64, Allocation)>) -> (u64, Vec<(u64, Allocation)>) {
    let mut seq = 0;
    all.retain(|(f, a)| {
        if *f == SEQ_KEY && a.owner == SEQ_OWNER {
            seq = a.since_ms;
            false
        } else {
            true
        }
    });
    (seq, all)
}

/// A client request's answer, as the core holds it until it may go out.
pub(crate) type ClientResult = Result<ClientReply, ShardError>;

/// The state of one shard instance (or of one replica): see the [module docs](self).
pub(crate) struct ShardCore {
    args: CoreArgs,
    pool: Pool,
    disk: Option<DiskTable<u64, Allocation>>,
    /// The last sequence number applied.
    seq: u64,
    /// Whether changes are collected at all (a disk table or a partner to send them to).
    batched: bool,
    /// Changes applied in memory and not yet written (nor shipped).
    batch: Vec<LogEntry>,
    /// Replies held back until the batch is written (and shipped).
    pending: Vec<(ReplyTo<ShardResponse>, ClientResult)>,
    /// The most recent entries, consecutive, ending at `seq` (for a partner's catch-up).
    log: VecDeque<LogEntry>,
    /// When the lease timer last set will fire (ms since the epoch).
    lease_timer_at: Option<u64>,
}

impl ShardCore {
    /// Takes the state loaded at open (or loads it) and records the open in the shared part.
    pub(crate) fn start(args: CoreArgs) -> Result<Self, FreqError> {
        let preloaded = args.preloaded.lock().take();
        let Loaded {
            disk,
            pool,
            seq,
            recovered,
            took,
        } = match preloaded {
            Some(loaded) => loaded,
            None => load(&args)?,
        };
        args.shared.set_opened(recovered, took);
        if !args.replicated {
            *args.shared.readers.write() = Some(pool.readers());
        }
        Ok(ShardCore {
            batched: disk.is_some() || args.replicated,
            args,
            pool,
            disk,
            seq,
            batch: Vec::new(),
            pending: Vec::new(),
            log: VecDeque::new(),
            lease_timer_at: None,
        })
    }

    /// The shard's index.
    pub(crate) fn index(&self) -> usize {
        self.args.shared.index
    }

    /// The durability the shard runs with.
    pub(crate) fn durability(&self) -> Durability {
        self.args.durability
    }

    /// The last sequence number applied.
    pub(crate) fn seq(&self) -> u64 {
        self.seq
    }

    /// Whether the core keeps a disk table.
    pub(crate) fn is_durable(&self) -> bool {
        self.disk.is_some()
    }

    /// Readers of this core's tables.
    pub(crate) fn readers(&self) -> PoolReaders {
        self.pool.readers()
    }

    /// The recent entries kept for a partner's catch-up, oldest first.
    pub(crate) fn log(&self) -> &VecDeque<LogEntry> {
        &self.log
    }

    /// Every allocation, lowest frequency first.
    pub(crate) fn allocations(&self) -> Result<Vec<(u64, Allocation)>, FreqError> {
        self.pool.allocations()
    }

    /// The free ranges, lowest first.
    pub(crate) fn free_ranges(&self) -> Result<Vec<FreqRange>, FreqError> {
        self.pool.free_ranges()
    }

    fn record(&mut self, change: Change) {
        self.seq += 1;
        if self.batched {
            self.batch.push(LogEntry {
                seq: self.seq,
                change,
            });
        }
    }

    /// Applies a client request (allocate, deallocate, release-all) to the pool, recording every
    /// change it makes; returns the reply and whether a lease was granted (the server then
    /// reschedules its lease timer). Any other request is answered with an error: the server
    /// handles those itself and never passes them here.
    pub(crate) fn apply_client(&mut self, request: ClientCall) -> (ClientResult, bool) {
        match request {
            // Only an allocation reads the clock (a system call's worth on the hot path otherwise).
            ClientCall::Allocate { owner, lease_ms } => {
                let now = self.args.clock.now_ms();
                // A change that goes nowhere is not built: the request's name moves into the
                // tables (see `Pool::allocate_unlogged`).
                let allocated = if self.batched {
                    self.pool
                        .allocate(&owner, now, lease_ms)
                        .map(|(f, change)| {
                            self.record(change);
                            f
                        })
                } else {
                    self.pool
                        .allocate_unlogged(owner, now, lease_ms)
                        .inspect(|_| self.seq += 1)
                };
                match allocated {
                    Ok(f) => (Ok(ClientReply::Allocated(f)), lease_ms.is_some()),
                    Err(e) => (Err(e.into()), false),
                }
            }
            ClientCall::Deallocate { freq, owner } => {
                let freed = self.pool.deallocate_owned(freq, owner);
                match freed {
                    Ok(change) => {
                        self.record(change);
                        (Ok(ClientReply::Deallocated), false)
                    }
                    Err(e) => (Err(e.into()), false),
                }
            }
            ClientCall::ReleaseAll { owner } => match self.pool.release_all(&owner) {
                Ok(changes) => {
                    let mut freed = Vec::with_capacity(changes.len());
                    for change in changes {
                        if let Change::Released(f) = change {
                            freed.push(f);
                        }
                        self.record(change);
                    }
                    freed.sort_unstable();
                    (Ok(ClientReply::Released(freed)), false)
                }
                Err(e) => (Err(e.into()), false),
            },
            other => (
                Err(FreqError::Corrupt(format!("{other:?} is not a pool request")).into()),
                false,
            ),
        }
    }

    /// Frees every lease expired now, recording each release; returns what it freed with the
    /// owners that lost it.
    pub(crate) fn reap(&mut self) -> Result<Vec<(u64, String)>, FreqError> {
        let now = self.args.clock.now_ms();
        let reaped = self.pool.reap_expired(now)?;
        for (f, _) in &reaped {
            self.record(Change::Released(*f));
        }
        Ok(reaped)
    }

    /// When to set a lease timer: the delay to the earliest lease expiry, unless a timer already
    /// set fires no later; records the new deadline.
    pub(crate) fn next_lease_timer(&mut self) -> Option<Duration> {
        let next = self.pool.next_expiry()?;
        if self.lease_timer_at.is_some_and(|t| t <= next) {
            return None;
        }
        self.lease_timer_at = Some(next);
        let now = self.args.clock.now_ms();
        Some(Duration::from_millis(next.saturating_sub(now)))
    }

    /// The lease timer fired: none is set any more.
    pub(crate) fn lease_timer_fired(&mut self) {
        self.lease_timer_at = None;
    }

    /// The router reads the shard's counts: a replica that is primary copies its own there (a
    /// single shard's pool writes them directly).
    pub(crate) fn publish_load(&self) {
        let free = self.pool.free_count();
        self.args
            .shared
            .load
            .set(free, self.pool.size().saturating_sub(free));
    }

    /// Answers `from` now, or once everything handled before it is committed.
    pub(crate) fn respond(&mut self, from: ReplyTo<ShardResponse>, result: ClientResult) {
        if !self.batch.is_empty() || !self.pending.is_empty() {
            self.pending.push((from, result));
        } else {
            from.reply(ShardResponse::Client(result));
        }
    }

    /// Commits the batch: hands it to `ship` (a replica's link to its backup), writes it (flushed
    /// once in `Sync`), keeps it for catch-up, and answers every reply held for it. On a disk
    /// error nothing held was made durable: every held caller gets `ShardFailed` and the error is
    /// returned, so the shard exits and restarts from what is on disk.
    pub(crate) fn commit(
        &mut self,
        ship: impl FnOnce(&[LogEntry]) -> Result<(), FreqError>,
    ) -> Result<(), FreqError> {
        if !self.batch.is_empty() {
            let entries = std::mem::take(&mut self.batch);
            // A batch the backup did not take (and that the control plane did not let this
            // replica keep alone) is neither written nor acknowledged: the caller exits and
            // restarts from disk, without it.
            if let Err(e) = ship(&entries).and_then(|()| self.persist(&entries)) {
                self.fail_pending(&e);
                return Err(e);
            }
            self.remember(entries);
        }
        for (from, result) in self.pending.drain(..) {
            from.reply(ShardResponse::Client(result));
        }
        Ok(())
    }

    /// Answers every held reply with `e` (as `ShardFailed`): its change is being dropped.
    fn fail_pending(&mut self, e: &FreqError) {
        let reason = e.to_string();
        let shard = self.index();
        for (from, _) in self.pending.drain(..) {
            from.reply(ShardResponse::Client(Err(FreqError::ShardFailed {
                shard,
                reason: reason.clone(),
            }
            .into())));
        }
    }

    /// Writes `entries` to the disk table, flushing once in `Sync`.
    ///
    /// A single shard writes the changes one by one, not as one sled batch: a sled batch costs
    /// ~130 µs whatever its size (measured in `benches/dets.rs`), more than a few single writes,
    /// and atomicity across the batch buys nothing there: every change is a valid state
    /// transition on its own and no reply has gone out for any of them, so a crash part-way
    /// leaves a consistent prefix of unacknowledged changes. A replica writes them with its new
    /// applied sequence in one atomic batch, so the sequence on disk never disagrees with the
    /// allocations.
    fn persist(&mut self, entries: &[LogEntry]) -> Result<(), FreqError> {
        let Some(disk) = self.disk.as_mut() else {
            return Ok(());
        };
        let Some(last) = entries.last().map(|e| e.seq) else {
            return Ok(());
        };
        if self.args.replicated {
            let ops = entries
                .iter()
                .map(|e| match &e.change {
                    Change::Allocated(f, a) => BatchOp::Insert(*f, a.clone()),
                    Change::Released(f) => BatchOp::Delete(*f),
                })
                .chain(std::iter::once(BatchOp::Insert(SEQ_KEY, seq_record(last))));
            disk.apply_batch(ops)?;
        } else {
            for e in entries {
                match &e.change {
                    Change::Allocated(f, a) => WriteTable::insert(disk, *f, a.clone())?,
                    Change::Released(f) => {
                        WriteTable::delete(disk, f)?;
                    }
                }
            }
        }
        if self.args.durability == Durability::Sync {
            disk.sync()?;
        }
        Ok(())
    }

    fn remember(&mut self, entries: Vec<LogEntry>) {
        if self.args.log_entries == 0 {
            return;
        }
        self.log.extend(entries);
        while self.log.len() > self.args.log_entries {
            self.log.pop_front();
        }
    }

    /// A backup applies entries from its primary: `fresh` must start right after `seq` and be
    /// consecutive. It applies and writes them (one atomic batch) and keeps them for catch-up.
    pub(crate) fn apply_log(&mut self, fresh: Vec<LogEntry>) -> Result<(), FreqError> {
        for e in &fresh {
            self.pool.apply(&e.change)?;
            self.seq = e.seq;
        }
        self.persist(&fresh)?;
        self.remember(fresh);
        Ok(())
    }

    /// A backup replaces its state by its primary's `snapshot`, on disk too.
    pub(crate) fn install(&mut self, snapshot: Snapshot) -> Result<(), FreqError> {
        let pool = rebuild_pool(
            &self.args,
            Arc::clone(self.pool.load()),
            snapshot.allocations.iter().cloned(),
        )?;
        if let Some(disk) = self.disk.as_mut() {
            let mut all = crate::ets::Table::new(TableType::Set);
            all.insert_many(snapshot.allocations);
            all.insert(SEQ_KEY, seq_record(snapshot.seq));
            disk.replace_from(&all)?;
            if self.args.durability == Durability::Sync {
                disk.sync()?;
            }
        }
        self.pool = pool;
        self.seq = snapshot.seq;
        self.log.clear();
        Ok(())
    }

    /// A snapshot of the whole state, for a partner's full state transfer.
    pub(crate) fn snapshot(&self) -> Result<Snapshot, FreqError> {
        Ok(Snapshot {
            seq: self.seq,
            allocations: self.pool.allocations()?,
        })
    }

    /// This core's own invariants: its tables, and its disk against its memory (and, for a
    /// replica, the applied sequence on disk). Each violation is prefixed with `label`.
    pub(crate) fn self_check(&self, label: &str) -> Result<Vec<String>, FreqError> {
        let mut out: Vec<String> = self
            .pool
            .check()?
            .into_iter()
            .map(|v| format!("{label}: {}", v.0))
            .collect();
        if let Some(disk) = &self.disk {
            let all = ReadTable::to_vec(disk)?;
            let (seq, mut on_disk) = if self.args.replicated {
                split_seq(all)
            } else {
                (self.seq, all)
            };
            on_disk.sort_by_key(|(f, _)| *f);
            let in_memory = self.pool.allocations()?;
            if on_disk != in_memory {
                let disk_only = on_disk.iter().filter(|x| !in_memory.contains(x)).count();
                let memory_only = in_memory.iter().filter(|x| !on_disk.contains(x)).count();
                out.push(format!(
                    "{label}: disk and memory disagree: {disk_only} allocation(s) only on disk, \
                     {memory_only} only in memory"
                ));
            }
            if seq != self.seq {
                out.push(format!(
                    "{label}: applied {} in memory, {seq} on disk",
                    self.seq
                ));
            }
        }
        Ok(out)
    }

    /// What this core holds, for comparison with its partner.
    pub(crate) fn dump(&self, replica: usize, label: &str) -> Result<ReplicaDump, FreqError> {
        Ok(ReplicaDump {
            replica,
            seq: self.seq,
            allocations: self.pool.allocations()?,
            free: self.pool.free_ranges()?,
            violations: self.self_check(label)?,
        })
    }

    /// Records why this instance stops (see [`ShardShared::last_failure`]).
    pub(crate) fn record_failure(&self, reason: String) {
        self.args.shared.set_last_failure(reason);
    }

    /// Closes the disk table (at a clean stop).
    pub(crate) fn close(&mut self) {
        if let Some(disk) = self.disk.take() {
            // Errors here have no one to go to; close() flushed what it could.
            let _ = disk.close();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::freq::clock::ManualLeaseClock;

    fn args(dir: &Path, replicated: bool) -> CoreArgs {
        CoreArgs {
            ranges: vec![FreqRange {
                first: 10,
                last: 19,
            }],
            dir: Some(dir.to_path_buf()),
            durability: Durability::Sync,
            limit: None,
            clock: Arc::new(ManualLeaseClock::new(1_000)),
            shared: ShardShared::new(0, None),
            replicated,
            log_entries: if replicated { 10 } else { 0 },
            preloaded: Arc::new(Mutex::new(None)),
        }
    }

    fn call(core: &mut ShardCore, request: ClientCall) -> ClientReply {
        match core.apply_client(request).0 {
            Ok(r) => r,
            Err(e) => panic!("{e}"),
        }
    }

    /// Both kinds of core write what they applied and reload it: a single shard's disk holds
    /// the allocations alone, a replica's holds them with its applied sequence.
    #[test]
    fn a_committed_batch_reloads_the_same_for_a_single_shard_and_a_replica() {
        for replicated in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let mut core = ShardCore::start(args(dir.path(), replicated)).unwrap();
            for owner in ["a", "b", "a"] {
                let owner = owner.to_string();
                call(
                    &mut core,
                    ClientCall::Allocate {
                        owner,
                        lease_ms: None,
                    },
                );
            }
            let freq = 11;
            let owner = "b".to_string();
            call(&mut core, ClientCall::Deallocate { freq, owner });
            let mut shipped = Vec::new();
            core.commit(|e| {
                shipped.extend(e.iter().map(|e| e.seq));
                Ok(())
            })
            .unwrap();
            assert_eq!(shipped, vec![1, 2, 3, 4]);
            assert_eq!(core.log().len(), if replicated { 4 } else { 0 });
            assert!(core.self_check("t").unwrap().is_empty());
            let before = core.allocations().unwrap();
            core.close();

            let loaded = load(&args(dir.path(), replicated)).unwrap();
            assert_eq!(loaded.seq(), if replicated { 4 } else { 0 }, "{replicated}");
            assert_eq!(loaded.recovered, 2);
            assert_eq!(loaded.pool.allocations().unwrap(), before);
            let owners: Vec<&str> = before.iter().map(|(_, a)| a.owner.as_str()).collect();
            assert_eq!(owners, vec!["a", "a"]);
        }
    }

    #[test]
    fn the_sequence_record_is_split_from_the_allocations() {
        let a = Allocation {
            owner: "x".into(),
            since_ms: 1,
            lease_until_ms: None,
        };
        let (seq, rest) = split_seq(vec![(3, a.clone()), (SEQ_KEY, seq_record(42))]);
        assert_eq!((seq, rest), (42, vec![(3, a)]));
    }
}
