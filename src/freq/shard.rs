//! A shard: one [`Pool`] run by a generic server on its own thread (`freq-shard-N`), its state in
//! in-memory tables and its allocations mirrored to a disk table.
//!
//! Architecture Invariant: a shard's tables are written only by its callbacks, one at a time under
//! the shard's state lock: on its own thread, or on a caller's thread for a direct call
//! ([`Context::allow_direct_calls`], on outside `Sync`, where group commit needs the calls queued
//! on the shard's thread). Other threads read them through [`ShardShared`] (counts for routing,
//! table readers for status), never by messaging the shard.
//!
//! ## Group commit
//! In [`Durability::Sync`] a shard handles every request waiting in its mailbox, collecting the
//! changes in one batch and keeping each caller's reply handle. When the mailbox is momentarily
//! empty (`handle_drained`) it writes the batch to its disk table, flushes once, and only then
//! replies to everyone. Many clients share one `fsync`; none is acknowledged before its change is
//! on disk. In `Interval` the batch is written at the drain and the replies go out right after,
//! without waiting for a flush (the disk table's background timer flushes): a crash of the shard
//! alone loses nothing acknowledged, a crash of the process loses at most the last interval. In
//! `None` nothing is written.
//!
//! ## Restarts
//! A shard that panics or fails a disk write exits; its supervisor starts a new instance, whose
//! `init` reopens the disk table and rebuilds the pool from the allocations on disk. What was
//! applied in memory but not yet on disk is dropped with the old instance, and the callers waiting
//! for it get an error, so no one was told of a change that is gone.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::RwLock;

use super::clock::LeaseClock;
use super::error::FreqError;
use super::pool::{Allocation, Change, Load, Pool, PoolReaders};
use super::range::FreqRange;
use super::replica::{LinkCall, PairShared, ReplicaDump};
use super::store::Durability;
use crate::dets::{self, BatchOp, DiskTable, OpenOptions};
use crate::otp::{Context, GenServer, ReplyTo};
use crate::table::{ReadTable, TableType, WriteTable};

/// The schema version of a shard's disk table (bump when [`Allocation`] changes shape).
pub const DISK_VERSION: u32 = 1;

/// What outlives a shard's instances: the counts the router reads and the readers of the current
/// instance's tables.
pub struct ShardShared {
    index: usize,
    load: Arc<Load>,
    readers: RwLock<Option<PoolReaders>>,
    recovered: AtomicU64,
    open_micros: AtomicU64,
    /// Why the last `init` failed, kept typed for the caller of the first start (the generic
    /// server only reports an exit reason as text).
    init_error: parking_lot::Mutex<Option<FreqError>>,
    /// With `replicas: 2`, the pair's roles and readers.
    pair: Option<Arc<PairShared>>,
}

impl ShardShared {
    pub(crate) fn new(index: usize) -> Arc<Self> {
        Self::with_pair(index, None)
    }

    /// The shared part of a replicated shard.
    pub(crate) fn new_pair(index: usize, pair: Arc<PairShared>) -> Arc<Self> {
        Self::with_pair(index, Some(pair))
    }

    fn with_pair(index: usize, pair: Option<Arc<PairShared>>) -> Arc<Self> {
        Arc::new(ShardShared {
            index,
            load: Arc::new(Load::default()),
            readers: RwLock::new(None),
            recovered: AtomicU64::new(0),
            open_micros: AtomicU64::new(0),
            init_error: parking_lot::Mutex::new(None),
            pair,
        })
    }

    /// Records what the instance just started loaded, and how long it took.
    pub(crate) fn set_opened(&self, recovered: u64, took: Duration) {
        self.recovered.store(recovered, Ordering::Relaxed);
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.open_micros.store(micros, Ordering::Relaxed);
    }

    /// Keeps the typed error of a failed start.
    pub(crate) fn set_init_error(&self, e: FreqError) {
        *self.init_error.lock() = Some(e);
    }

    /// Takes the error of the last failed start, if any.
    pub(crate) fn take_init_error(&self) -> Option<FreqError> {
        self.init_error.lock().take()
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

/// What a shard is started with (again on every restart).
#[derive(Clone)]
pub(crate) struct ShardArgs {
    pub ranges: Vec<FreqRange>,
    pub dir: Option<PathBuf>,
    pub durability: Durability,
    pub limit: Option<usize>,
    pub clock: Arc<dyn LeaseClock>,
    pub shared: Arc<ShardShared>,
    /// The state the allocator loaded before the first start (all shards in parallel, and so
    /// that opening errors such as a locked, mismatched or corrupt store reach the caller
    /// typed); restarts load it themselves.
    pub preloaded: Arc<parking_lot::Mutex<Option<Loaded>>>,
}

/// A shard's state as loaded from disk: its disk table (if durable) and its rebuilt pool.
pub(crate) struct Loaded {
    disk: Option<DiskTable<u64, Allocation>>,
    pool: Pool,
    recovered: u64,
    took: Duration,
}

/// Opens shard `args`' disk table and rebuilds its pool from the allocations on it.
pub(crate) fn load(args: &ShardArgs) -> Result<Loaded, FreqError> {
    let started = Instant::now();
    let disk = open_disk(args.dir.as_deref(), args.durability)?;
    let allocations = match &disk {
        Some(d) => ReadTable::to_vec(d)?,
        None => Vec::new(),
    };
    let recovered = allocations.len() as u64;
    let pool = rebuild_pool(args, Arc::clone(&args.shared.load), allocations)?;
    Ok(Loaded {
        disk,
        pool,
        recovered,
        took: started.elapsed(),
    })
}

/// Rebuilds shard `args`' pool from `allocations` read from its disk (or received from its
/// other replica), publishing its counts to `load`.
pub(crate) fn rebuild_pool(
    args: &ShardArgs,
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

/// Opens shard `dir`'s disk table as `durability` asks (`None` for in-memory shards).
pub(crate) fn open_disk(
    dir: Option<&std::path::Path>,
    durability: Durability,
) -> Result<Option<DiskTable<u64, Allocation>>, FreqError> {
    let (dir, disk_durability) = match (dir, durability) {
        (Some(dir), Durability::Sync) => (dir, dets::FlushPolicy::Manual),
        (Some(dir), Durability::Interval(d)) => (dir, dets::FlushPolicy::Interval(d)),
        _ => return Ok(None),
    };
    let opts = OpenOptions::new(TableType::Set)
        .flush_policy(disk_durability)
        .version(DISK_VERSION);
    Ok(Some(DiskTable::open(dir, opts)?))
}

/// A fault to inject into a shard, for tests of supervision and recovery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// The shard panics while handling the request; its supervisor restarts it. With
    /// replication, the primary panics (as [`Fault::PanicPrimary`]).
    Panic,
    /// With replication: the shard's primary panics; its backup takes over if it was in sync.
    /// Without replication, as [`Fault::Panic`].
    PanicPrimary,
    /// With replication: the shard's backup panics (the call fails if there is no live backup).
    /// Without replication, as [`Fault::Panic`].
    PanicBackup,
}

/// Requests a shard serves.
#[derive(Debug, Clone)]
pub(crate) enum ShardCall {
    Allocate {
        owner: String,
        lease_ms: Option<u64>,
    },
    Deallocate {
        freq: u64,
        owner: String,
    },
    ReleaseAll {
        owner: String,
    },
    Reap,
    Check,
    Inject(Fault),
    /// From the other replica of a pair (replicated shards only).
    Link(LinkCall),
}

/// Successful replies.
#[derive(Debug)]
pub(crate) enum ShardReply {
    Allocated(u64),
    Deallocated,
    Released(Vec<u64>),
    Reaped(Vec<(u64, String)>),
    Checked(Vec<String>),
    /// A replica's applied sequence number.
    Applied(u64),
    /// A replica's contents.
    Dumped(Box<ReplicaDump>),
}

pub(crate) type ShardResult = Result<ShardReply, FreqError>;

/// Timer input.
#[derive(Debug)]
pub(crate) enum ShardInfo {
    LeaseTick,
}

/// Applies a client request (allocate, deallocate, release-all) to `pool`, handing every change
/// it makes to `record`; returns the reply and whether a lease was granted (the server then
/// reschedules its lease timer). The single shard and both replicas run the course's semantics
/// through this one function. Any other request is answered with an error: servers handle those
/// themselves and never pass them here.
pub(crate) fn apply_client_call(
    pool: &mut Pool,
    clock: &dyn LeaseClock,
    request: ShardCall,
    mut record: impl FnMut(Change),
) -> (ShardResult, bool) {
    match request {
        // Only an allocation reads the clock (a system call's worth on the hot path otherwise).
        ShardCall::Allocate { owner, lease_ms } => {
            match pool.allocate(&owner, clock.now_ms(), lease_ms) {
                Ok((f, change)) => {
                    record(change);
                    (Ok(ShardReply::Allocated(f)), lease_ms.is_some())
                }
                Err(e) => (Err(e), false),
            }
        }
        ShardCall::Deallocate { freq, owner } => {
            let result = pool.deallocate(freq, &owner).map(|change| {
                record(change);
                ShardReply::Deallocated
            });
            (result, false)
        }
        ShardCall::ReleaseAll { owner } => {
            let result = pool.release_all(&owner).map(|changes| {
                let mut freed = Vec::with_capacity(changes.len());
                for change in changes {
                    if let Change::Released(f) = change {
                        freed.push(f);
                    }
                    record(change);
                }
                freed.sort_unstable();
                ShardReply::Released(freed)
            });
            (result, false)
        }
        other => (
            Err(FreqError::Corrupt(format!(
                "{other:?} is not a client request"
            ))),
            false,
        ),
    }
}

/// When to set a lease timer: the delay to the earliest lease expiry, unless a timer already set
/// (`timer_at`) fires no later; records the new deadline. Shared by the shard and the replicas.
pub(crate) fn next_lease_timer(
    pool: &Pool,
    now_ms: u64,
    timer_at: &mut Option<u64>,
) -> Option<Duration> {
    let next = pool.next_expiry()?;
    if timer_at.is_some_and(|t| t <= next) {
        return None;
    }
    *timer_at = Some(next);
    Some(Duration::from_millis(next.saturating_sub(now_ms)))
}

/// Frees every lease expired at `now_ms`, handing each release to `record`; returns what it freed
/// with the owners that lost it. Shared by the shard and the replicas.
pub(crate) fn reap_leases(
    pool: &mut Pool,
    now_ms: u64,
    mut record: impl FnMut(Change),
) -> Result<Vec<(u64, String)>, FreqError> {
    let reaped = pool.reap_expired(now_ms)?;
    for (f, _) in &reaped {
        record(Change::Released(*f));
    }
    Ok(reaped)
}

/// The disk write for a change.
fn batch_op(change: Change) -> BatchOp<u64, Allocation> {
    match change {
        Change::Allocated(f, a) => BatchOp::Insert(f, a),
        Change::Released(f) => BatchOp::Delete(f),
    }
}

pub(crate) struct Shard {
    index: usize,
    pool: Pool,
    disk: Option<DiskTable<u64, Allocation>>,
    durability: Durability,
    clock: Arc<dyn LeaseClock>,
    /// Changes applied in memory and not yet written to disk.
    batch: Vec<BatchOp<u64, Allocation>>,
    /// Replies held back until the batch is on disk (Sync only).
    pending: Vec<(ReplyTo<ShardResult>, ShardResult)>,
    /// When the lease timer we last set will fire (ms since the epoch).
    lease_timer_at: Option<u64>,
}

impl Shard {
    fn respond(&mut self, from: ReplyTo<ShardResult>, result: ShardResult) {
        // With a disk table every reply waits until everything handled before it is written
        // (and, in Sync, flushed), so no client learns of a change (even through an error such
        // as NotOwner) that a crash of this shard alone could take back.
        if self.disk.is_some() && (!self.batch.is_empty() || !self.pending.is_empty()) {
            self.pending.push((from, result));
        } else {
            from.reply(result);
        }
    }

    /// Writes the batch (flushing it in Sync) and answers every reply held for it. On a disk
    /// error nothing held was made durable: every held caller gets `ShardFailed` and the error
    /// is returned, so the shard exits and restarts from what is on disk.
    fn commit(&mut self) -> Result<(), FreqError> {
        match self.flush() {
            Ok(()) => {
                for (from, result) in self.pending.drain(..) {
                    from.reply(result);
                }
                Ok(())
            }
            Err(e) => {
                let reason = e.to_string();
                for (from, _) in self.pending.drain(..) {
                    from.reply(Err(FreqError::ShardFailed {
                        shard: self.index,
                        reason: reason.clone(),
                    }));
                }
                Err(e)
            }
        }
    }

    /// Writes the batch and, in Sync, flushes it once.
    ///
    /// The changes are written one by one, not as one sled batch: a sled batch costs ~130 µs
    /// whatever its size (measured in `benches/dets.rs`), more than a few single writes, and
    /// atomicity across the batch buys nothing here. Every change is a valid state transition on
    /// its own, no reply has gone out for any of them (Sync), so a crash part-way leaves a
    /// consistent prefix of unacknowledged changes.
    fn flush(&mut self) -> Result<(), FreqError> {
        if let Some(disk) = self.disk.as_mut() {
            if !self.batch.is_empty() {
                for op in self.batch.drain(..) {
                    match op {
                        BatchOp::Insert(f, a) => WriteTable::insert(disk, f, a)?,
                        BatchOp::Delete(f) => {
                            WriteTable::delete(disk, &f)?;
                        }
                    }
                }
                if self.durability == Durability::Sync {
                    disk.sync()?;
                }
            }
        }
        Ok(())
    }

    fn schedule_lease_timer(&mut self, ctx: &mut Context<Self>) {
        let now = self.clock.now_ms();
        if let Some(delay) = next_lease_timer(&self.pool, now, &mut self.lease_timer_at) {
            ctx.send_after(delay, ShardInfo::LeaseTick);
        }
    }

    fn reap(&mut self) -> Result<Vec<(u64, String)>, FreqError> {
        let now = self.clock.now_ms();
        let durable = self.disk.is_some();
        let batch = &mut self.batch;
        reap_leases(&mut self.pool, now, |change| {
            if durable {
                batch.push(batch_op(change));
            }
        })
    }

    fn check(&mut self) -> Result<Vec<String>, FreqError> {
        let i = self.index;
        let mut out: Vec<String> = self
            .pool
            .check()?
            .into_iter()
            .map(|v| format!("shard {i}: {}", v.0))
            .collect();
        if let Some(disk) = &self.disk {
            let mut on_disk = ReadTable::to_vec(disk)?;
            on_disk.sort_by_key(|(f, _)| *f);
            let in_memory = self.pool.allocations()?;
            if on_disk != in_memory {
                let disk_only = on_disk.iter().filter(|x| !in_memory.contains(x)).count();
                let memory_only = in_memory.iter().filter(|x| !on_disk.contains(x)).count();
                out.push(format!(
                    "shard {i}: disk and memory disagree: {disk_only} allocation(s) only on disk, \
                     {memory_only} only in memory"
                ));
            }
        }
        Ok(out)
    }
}

impl Shard {
    /// Takes the state loaded at open (or loads it) and starts serving.
    fn start(args: ShardArgs, ctx: &mut Context<Self>) -> Result<Self, FreqError> {
        let preloaded = args.preloaded.lock().take();
        let Loaded {
            disk,
            pool,
            recovered,
            took,
        } = match preloaded {
            Some(loaded) => loaded,
            None => load(&args)?,
        };
        let shared = args.shared;
        *shared.readers.write() = Some(pool.readers());
        shared.set_opened(recovered, took);
        let mut shard = Shard {
            index: shared.index,
            pool,
            disk,
            durability: args.durability,
            clock: args.clock,
            batch: Vec::new(),
            pending: Vec::new(),
            lease_timer_at: None,
        };
        shard.schedule_lease_timer(ctx);
        // Group commit needs the calls queued on the shard's thread, so that many share one
        // flush; otherwise a call is a few table operations, cheaper than the two thread hops
        // it would take to run it there.
        ctx.allow_direct_calls(args.durability != Durability::Sync);
        Ok(shard)
    }
}

impl GenServer for Shard {
    type Args = ShardArgs;
    type Call = ShardCall;
    type Reply = ShardResult;
    type Cast = ();
    type Info = ShardInfo;
    type Error = FreqError;

    fn init(args: ShardArgs, ctx: &mut Context<Self>) -> Result<Self, FreqError> {
        let shared = Arc::clone(&args.shared);
        Shard::start(args, ctx).map_err(|e| {
            let reason = e.to_string();
            *shared.init_error.lock() = Some(e);
            FreqError::ShardFailed {
                shard: shared.index,
                reason,
            }
        })
    }

    fn handle_call(
        &mut self,
        request: ShardCall,
        from: ReplyTo<ShardResult>,
        ctx: &mut Context<Self>,
    ) -> Result<(), FreqError> {
        let result = match request {
            ShardCall::Reap => {
                let reaped = self.reap().map(ShardReply::Reaped);
                self.schedule_lease_timer(ctx);
                reaped
            }
            ShardCall::Check => {
                // Compare disk and memory with nothing in flight; what was held for the batch
                // is durable now, so it is answered at once.
                self.commit()?;
                self.check().map(ShardReply::Checked)
            }
            ShardCall::Inject(fault) => {
                panic!("fault {fault:?} injected into shard {}", self.index)
            }
            ShardCall::Link(_) => Err(FreqError::NotBackup { shard: self.index }),
            client => {
                let durable = self.disk.is_some();
                let batch = &mut self.batch;
                let clock = &*self.clock;
                let (result, leased) = apply_client_call(&mut self.pool, clock, client, |change| {
                    if durable {
                        batch.push(batch_op(change));
                    }
                });
                if leased {
                    self.schedule_lease_timer(ctx);
                }
                result
            }
        };
        self.respond(from, result);
        Ok(())
    }

    fn handle_info(&mut self, msg: ShardInfo, ctx: &mut Context<Self>) -> Result<(), FreqError> {
        match msg {
            ShardInfo::LeaseTick => {
                self.lease_timer_at = None;
                self.reap()?;
                self.schedule_lease_timer(ctx);
            }
        }
        Ok(())
    }

    fn handle_drained(&mut self, _ctx: &mut Context<Self>) -> Result<(), FreqError> {
        self.commit()
    }

    fn terminate(&mut self, _reason: &crate::otp::ExitReason) {
        if let Some(disk) = self.disk.take() {
            // Errors here have no one to go to; close() flushed what it could.
            let _ = disk.close();
        }
    }
}
