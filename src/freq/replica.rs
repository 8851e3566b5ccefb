//! Replication: each shard as a primary/backup pair of generic servers over a [`ReplicaLink`].
//!
//! Erlang docs: the pair's two servers are
//! [`gen_server`](https://www.erlang.org/doc/apps/stdlib/gen_server.html)s; failover and takeover
//! between nodes are the subject of
//! [distributed applications](https://www.erlang.org/doc/system/distributed_applications.html).
//!
//! With `replicas: 2` ([`StoreConfig::replicas`](super::StoreConfig::replicas)) a shard runs as
//! two generic servers (`freq-shard-N-a`, `freq-shard-N-b`), each with its own in-memory tables
//! and its own disk table. One is the **primary**: it serves the clients. The other is the
//! **backup**: it applies what the primary ships to it.
//!
//! ## Protocol
//! Every state change is a numbered [`LogEntry`] (one sequence per shard). The primary applies
//! a request in memory and holds the reply; when its mailbox is drained it ships the whole batch
//! to the backup ([`ReplicaLink::append`]), which applies it, writes it with its new applied
//! sequence number in one atomic disk batch and (in `Sync`) flushes; then the primary writes and
//! flushes the batch itself, and only then replies to everyone (group commit across two disks:
//! one flush per replica per batch). So an acknowledged change is applied on both replicas
//! (on both disks in `Sync`), and whatever a primary has written its backup had applied first.
//!
//! ## Failover and catch-up
//! A pair is *in sync* while the backup has every entry the primary has written. When the
//! primary fails while in sync the backup is promoted at once (the dying primary's state is
//! dropped before anyone hears of the exit, and its drop hands over the role). The supervisor
//! restarts the failed replica, which rejoins as the backup. When a shipment fails, the primary
//! marks the pair out of sync and serves alone; a backup that rejoins is caught up by the primary
//! from the sequence number it reports ([`ReplicaLink::applied`]): incrementally from a bounded
//! in-memory log of recent entries, or by a full state transfer ([`ReplicaLink::install`]) when
//! it is further behind. Only then is the pair in sync again. An out-of-sync backup is never
//! promoted: the shard waits for its primary's restart instead. A replica that starts while its
//! partner is down becomes primary only if its applied sequence is at least the partner's last
//! known one (the higher applied sequence wins).
//!
//! ```
//! use freqalloc::freq::{Allocator, Durability, Layout, Options, Role, StoreConfig, Routing};
//! use freqalloc::freq::{parse_pool, Fault};
//! use std::time::Duration;
//!
//! let dir = tempfile::tempdir().unwrap();
//! let config = StoreConfig {
//!     layout: Layout::split_evenly(&parse_pool("0-99")?, 2)?,
//!     strategy: Routing::RoundRobin,
//!     durability: Durability::Sync,
//!     client_limit: None,
//!     replicas: 2,
//! };
//! Allocator::init(dir.path(), config, false)?;
//! let alloc = Allocator::open(dir.path(), Options::default())?;
//! alloc.wait_for_sync(0, Duration::from_secs(5))?;
//! let f = alloc.allocate("radio-7")?;
//! let shard = alloc.config().layout.owner_of(f).unwrap();
//! alloc.wait_for_sync(shard, Duration::from_secs(5))?;
//! let _ = alloc.inject_fault(shard, Fault::PanicPrimary); // the backup takes over
//! assert_eq!(alloc.held_by("radio-7")?, vec![f]);
//! alloc.deallocate(f, "radio-7")?;
//! alloc.wait_for_sync(shard, Duration::from_secs(5))?; // the old primary is the backup now
//! let status = alloc.status();
//! assert!(status.shards[shard].replicas.iter().any(|r| r.role == Role::Backup));
//! assert!(alloc.check()?.is_empty());
//! # Ok::<(), freqalloc::freq::FreqError>(())
//! ```

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, RwLock};

use super::clock::LeaseClock;
use super::error::FreqError;
use super::pool::{Allocation, Change, Load, Pool, PoolReaders};
use super::range::FreqRange;
use super::shard::{
    apply_client_call, next_lease_timer, open_disk, reap_leases, rebuild_pool, ShardArgs,
    ShardCall, ShardReply, ShardResult,
};
use super::store::Durability;
use crate::dets::{BatchOp, DiskTable};
use crate::otp::{Context, GenServer, ReplyTo, Server};
use crate::table::{ReadTable, TableType};

/// The key of the record holding a replica's applied sequence number in its disk table (a
/// replicated pool may not contain this frequency).
pub(crate) const SEQ_KEY: u64 = u64::MAX;
const SEQ_OWNER: &str = "\u{0}applied-seq";

/// How many recent entries a replica keeps for incremental catch-up, by default.
pub const DEFAULT_LOG_ENTRIES: usize = 10_000;

/// A replica's role in its pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Not running (crashed, restarting, or stopped).
    Down,
    /// Serves the clients and ships every change to the backup.
    Primary,
    /// Applies what the primary ships; promoted if the primary fails while in sync.
    Backup,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Down => "down",
            Role::Primary => "primary",
            Role::Backup => "backup",
        })
    }
}

/// One numbered state change of a shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// Its sequence number (1 for a shard's first change).
    pub seq: u64,
    /// What changed.
    pub change: Change,
}

/// A replica's whole state, for a full state transfer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The sequence number of the last change it includes.
    pub seq: u64,
    /// Every allocation (everything else of the shard is free).
    pub allocations: Vec<(u64, Allocation)>,
}

/// What a replica holds, for comparing the two replicas of a pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaDump {
    /// The replica (0 or 1).
    pub replica: usize,
    /// Its applied sequence number.
    pub seq: u64,
    /// Its allocations, lowest frequency first.
    pub allocations: Vec<(u64, Allocation)>,
    /// Its free ranges, lowest first.
    pub free: Vec<FreqRange>,
    /// Invariant violations it found in itself (tables, disk against memory).
    pub violations: Vec<String>,
}

/// The primary's connection to its backup. The shard logic only talks through this trait, so a
/// network transport can implement it later; the in-process implementation calls the backup's
/// generic server. Every method but [`ReplicaLink::nudge`] is a synchronous request whose
/// failure (the backup down, a timeout) the primary treats as a lost backup.
pub trait ReplicaLink: Send + Sync {
    /// The sequence number the other replica has applied (it must be a backup).
    fn applied(&self) -> Result<u64, FreqError>;
    /// Applies `entries` (consecutive, starting at most one past what the other replica has
    /// applied) and persists them with the new applied sequence; returns it.
    fn append(&self, entries: &[LogEntry]) -> Result<u64, FreqError>;
    /// Replaces the other replica's state by `snapshot`; returns its new applied sequence.
    fn install(&self, snapshot: Snapshot) -> Result<u64, FreqError>;
    /// The other replica's contents, for comparison.
    fn dump(&self) -> Result<ReplicaDump, FreqError>;
    /// Tells the other replica (asynchronously) that this one has (re)joined, so that a primary
    /// catches it up without waiting for traffic.
    fn nudge(&self);
}

/// Requests between replicas (inside [`ShardCall::Link`]).
#[derive(Debug, Clone)]
pub(crate) enum LinkCall {
    Applied,
    Append(Vec<LogEntry>),
    Install(Snapshot),
    Dump,
}

/// The in-process [`ReplicaLink`]: calls on the other replica's generic server.
pub(crate) struct InProcessLink {
    shard: usize,
    to: Server<Replica>,
    timeout: Duration,
}

impl InProcessLink {
    pub(crate) fn new(shard: usize, to: Server<Replica>, timeout: Duration) -> Self {
        InProcessLink { shard, to, timeout }
    }

    fn call(&self, request: LinkCall) -> Result<ShardReply, FreqError> {
        match self.to.call_timeout(ShardCall::Link(request), self.timeout) {
            Ok(r) => r,
            Err(e) => Err(FreqError::ShardFailed {
                shard: self.shard,
                reason: format!("replica link: {e}"),
            }),
        }
    }

    fn seq(&self, request: LinkCall) -> Result<u64, FreqError> {
        match self.call(request)? {
            ShardReply::Applied(seq) => Ok(seq),
            other => Err(FreqError::ShardFailed {
                shard: self.shard,
                reason: format!("replica link: unexpected reply {other:?}"),
            }),
        }
    }
}

impl ReplicaLink for InProcessLink {
    fn applied(&self) -> Result<u64, FreqError> {
        self.seq(LinkCall::Applied)
    }

    fn append(&self, entries: &[LogEntry]) -> Result<u64, FreqError> {
        self.seq(LinkCall::Append(entries.to_vec()))
    }

    fn install(&self, snapshot: Snapshot) -> Result<u64, FreqError> {
        self.seq(LinkCall::Install(snapshot))
    }

    fn dump(&self) -> Result<ReplicaDump, FreqError> {
        match self.call(LinkCall::Dump)? {
            ShardReply::Dumped(d) => Ok(*d),
            other => Err(FreqError::ShardFailed {
                shard: self.shard,
                reason: format!("replica link: unexpected reply {other:?}"),
            }),
        }
    }

    fn nudge(&self) {
        // Nobody to tell if the other replica is down: it catches this one up when it starts.
        let _ = self.to.send(ReplicaInfo::CatchUp);
    }
}

/// The roles of a pair, changed under one lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PairState {
    /// The replica that is (or, while both are down, was last chosen as) primary.
    pub primary: usize,
    /// Whether the backup has every entry the primary has written.
    pub in_sync: bool,
    pub roles: [Role; 2],
    /// Bumped on every change, so waiters and the catch-up see any change.
    pub version: u64,
}

/// What outlives the instances of a pair: roles, sequence numbers, table readers.
pub(crate) struct PairShared {
    state: Mutex<PairState>,
    changed: Condvar,
    /// Applied sequence number per replica (as last published).
    applied: [AtomicU64; 2],
    /// Sequence number on disk per replica (its applied one in memory-only mode, and 0 once it
    /// is down there).
    durable: [AtomicU64; 2],
    readers: [RwLock<Option<PoolReaders>>; 2],
}

impl PairShared {
    pub(crate) fn new(primary: usize, seqs: [u64; 2]) -> Arc<Self> {
        Arc::new(PairShared {
            state: Mutex::new(PairState {
                primary,
                in_sync: false,
                roles: [Role::Down; 2],
                version: 0,
            }),
            changed: Condvar::new(),
            applied: [AtomicU64::new(seqs[0]), AtomicU64::new(seqs[1])],
            durable: [AtomicU64::new(seqs[0]), AtomicU64::new(seqs[1])],
            readers: [RwLock::new(None), RwLock::new(None)],
        })
    }

    pub(crate) fn state(&self) -> PairState {
        *self.state.lock()
    }

    fn update<R>(&self, f: impl FnOnce(&mut PairState) -> R) -> R {
        let mut st = self.state.lock();
        let r = f(&mut st);
        st.version += 1;
        drop(st);
        self.changed.notify_all();
        r
    }

    /// Waits until the state's version differs from `version` or `deadline` passes; returns
    /// whether it changed.
    pub(crate) fn wait_change(&self, version: u64, deadline: Instant) -> bool {
        let mut st = self.state.lock();
        while st.version == version {
            if self.changed.wait_until(&mut st, deadline).timed_out() {
                return st.version != version;
            }
        }
        true
    }

    /// The replica serving as primary, if one is.
    #[cfg(test)]
    fn serving(&self) -> Option<usize> {
        let st = self.state.lock();
        (st.roles[st.primary] == Role::Primary).then_some(st.primary)
    }

    pub(crate) fn applied(&self, replica: usize) -> u64 {
        self.applied[replica].load(Ordering::Relaxed)
    }

    /// Readers of the primary's tables (or of the last primary's while none serves).
    pub(crate) fn readers(&self) -> Option<PoolReaders> {
        let p = self.state.lock().primary;
        self.readers[p]
            .read()
            .clone()
            .or_else(|| self.readers[1 - p].read().clone())
    }

    fn publish_seq(&self, me: usize, applied: u64, durable: u64) {
        self.applied[me].store(applied, Ordering::Relaxed);
        self.durable[me].store(durable, Ordering::Relaxed);
    }

    /// A replica with applied sequence `seq` (re)joins the pair: decides its role (see the
    /// module docs).
    fn join(&self, me: usize, seq: u64) -> Role {
        let o = 1 - me;
        let theirs = self.durable[o].load(Ordering::Relaxed);
        self.update(|st| {
            let role = match st.roles[o] {
                Role::Primary => Role::Backup,
                Role::Backup if theirs >= seq => {
                    st.roles[o] = Role::Primary;
                    st.primary = o;
                    Role::Backup
                }
                Role::Down if theirs > seq => {
                    st.primary = o;
                    Role::Backup
                }
                Role::Backup | Role::Down => {
                    st.primary = me;
                    Role::Primary
                }
            };
            st.roles[me] = role;
            st.in_sync = false;
            role
        })
    }

    /// A replica leaves (its state is being dropped): a primary in sync hands over to its backup.
    fn leave(&self, me: usize) {
        let o = 1 - me;
        self.update(|st| {
            st.roles[me] = Role::Down;
            if st.primary == me && st.in_sync && st.roles[o] == Role::Backup {
                st.roles[o] = Role::Primary;
                st.primary = o;
            }
            st.in_sync = false;
        });
    }
}

/// What a replica is started with (again on every restart).
#[derive(Clone)]
pub(crate) struct ReplicaArgs {
    /// The shard's arguments, with `dir` this replica's own directory.
    pub shard: ShardArgs,
    /// 0 or 1.
    pub me: usize,
    pub pair: Arc<PairShared>,
    pub link: Arc<dyn ReplicaLink>,
    pub log_entries: usize,
    pub preloaded: Arc<Mutex<Option<ReplicaLoaded>>>,
}

/// A replica's state as loaded from disk.
pub(crate) struct ReplicaLoaded {
    disk: Option<DiskTable<u64, Allocation>>,
    pool: Pool,
    seq: u64,
    recovered: u64,
    took: Duration,
}

impl ReplicaLoaded {
    /// The applied sequence number found on disk.
    pub(crate) fn seq(&self) -> u64 {
        self.seq
    }
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

/// Opens a replica's disk table and rebuilds its pool and applied sequence from it.
pub(crate) fn load_replica(args: &ShardArgs) -> Result<ReplicaLoaded, FreqError> {
    let started = Instant::now();
    let disk = open_disk(args.dir.as_deref(), args.durability)?;
    let all = match &disk {
        Some(d) => ReadTable::to_vec(d)?,
        None => Vec::new(),
    };
    let (seq, allocations) = split_seq(all);
    let recovered = allocations.len() as u64;
    let pool = rebuild_pool(args, Arc::new(Load::default()), allocations)?;
    Ok(ReplicaLoaded {
        disk,
        pool,
        seq,
        recovered,
        took: started.elapsed(),
    })
}

/// Timer and notification input of a replica.
#[derive(Debug)]
pub(crate) enum ReplicaInfo {
    LeaseTick,
    /// The other replica (re)joined: a primary catches it up.
    CatchUp,
}

/// One replica of a shard: a [`Pool`] in a generic server, primary or backup.
pub(crate) struct Replica {
    shard: usize,
    me: usize,
    pair: Arc<PairShared>,
    link: Arc<dyn ReplicaLink>,
    args: ShardArgs,
    pool: Pool,
    disk: Option<DiskTable<u64, Allocation>>,
    clock: Arc<dyn LeaseClock>,
    /// The last sequence number applied (assigned, as primary).
    seq: u64,
    /// Primary: entries applied in memory, not yet shipped and written.
    batch: Vec<LogEntry>,
    /// Primary: replies held until the batch is on both replicas.
    pending: Vec<(ReplyTo<ShardResult>, ShardResult)>,
    /// The most recent entries, consecutive, ending at `seq` (for incremental catch-up).
    log: VecDeque<LogEntry>,
    log_entries: usize,
    lease_timer_at: Option<u64>,
    /// Whether this instance has started acting as primary (lease timer, published counts).
    serving: bool,
    /// Whether a catch-up retry is scheduled.
    retry_set: bool,
}

impl Replica {
    fn start(args: ReplicaArgs, ctx: &mut Context<Self>) -> Result<Self, FreqError> {
        let preloaded = args.preloaded.lock().take();
        let ReplicaLoaded {
            disk,
            pool,
            seq,
            recovered,
            took,
        } = match preloaded {
            Some(l) => l,
            None => load_replica(&args.shard)?,
        };
        let shared = &args.shard.shared;
        shared.set_opened(recovered, took);
        let me = args.me;
        *args.pair.readers[me].write() = Some(pool.readers());
        args.pair.publish_seq(me, seq, seq);
        let mut replica = Replica {
            shard: shared.index(),
            me,
            pair: Arc::clone(&args.pair),
            link: Arc::clone(&args.link),
            clock: Arc::clone(&args.shard.clock),
            args: args.shard,
            pool,
            disk,
            seq,
            batch: Vec::new(),
            pending: Vec::new(),
            log: VecDeque::new(),
            log_entries: args.log_entries.max(1),
            lease_timer_at: None,
            serving: false,
            retry_set: false,
        };
        match replica.pair.join(me, seq) {
            Role::Primary => {
                replica.become_primary(ctx);
                ctx.send_self(ReplicaInfo::CatchUp);
            }
            _ => replica.link.nudge(),
        }
        Ok(replica)
    }

    fn role(&self) -> Role {
        self.pair.state.lock().roles[self.me]
    }

    fn become_primary(&mut self, ctx: &mut Context<Self>) {
        self.serving = true;
        self.publish_load();
        self.schedule_lease_timer(ctx);
    }

    /// The router reads the shard's counts: the primary publishes its own there.
    fn publish_load(&self) {
        let free = self.pool.free_count();
        self.args
            .shared
            .load()
            .set(free, self.pool.size().saturating_sub(free));
    }
    fn respond(&mut self, from: ReplyTo<ShardResult>, result: ShardResult) {
        // Every reply waits until everything handled before it is on both replicas.
        if !self.batch.is_empty() || !self.pending.is_empty() {
            self.pending.push((from, result));
        } else {
            from.reply(result);
        }
    }

    /// Writes `entries` and the new applied sequence in one atomic disk batch (flushed in Sync).
    fn write(&mut self, entries: &[LogEntry]) -> Result<(), FreqError> {
        let Some(last) = entries.last().map(|e| e.seq) else {
            return Ok(());
        };
        if let Some(disk) = self.disk.as_mut() {
            let ops = entries
                .iter()
                .map(|e| match &e.change {
                    Change::Allocated(f, a) => BatchOp::Insert(*f, a.clone()),
                    Change::Released(f) => BatchOp::Delete(*f),
                })
                .chain(std::iter::once(BatchOp::Insert(SEQ_KEY, seq_record(last))));
            disk.apply_batch(ops)?;
            if self.args.durability == Durability::Sync {
                disk.sync()?;
            }
        }
        self.pair.publish_seq(self.me, self.seq, self.seq);
        Ok(())
    }

    fn remember(&mut self, entries: Vec<LogEntry>) {
        self.log.extend(entries);
        while self.log.len() > self.log_entries {
            self.log.pop_front();
        }
    }

    /// Primary: ships the batch to the backup (if in sync), writes it, and answers every reply
    /// held for it; then catches the backup up if it is behind. On a disk error every held
    /// caller gets `ShardFailed` and the error is returned (the replica exits and restarts).
    fn commit(&mut self, ctx: &mut Context<Self>) -> Result<(), FreqError> {
        if !self.batch.is_empty() {
            let entries = std::mem::take(&mut self.batch);
            let st = self.pair.state();
            if st.in_sync
                && st.roles[self.me] == Role::Primary
                && self.link.append(&entries).is_err()
            {
                // The backup is gone or refused: serve alone until it is caught up again.
                let me = self.me;
                self.pair.update(|st| {
                    if st.primary == me {
                        st.in_sync = false;
                    }
                });
            }
            if let Err(e) = self.write(&entries) {
                let reason = e.to_string();
                for (from, _) in self.pending.drain(..) {
                    from.reply(Err(FreqError::ShardFailed {
                        shard: self.shard,
                        reason: reason.clone(),
                    }));
                }
                return Err(e);
            }
            self.remember(entries);
        }
        for (from, result) in self.pending.drain(..) {
            from.reply(result);
        }
        self.catch_up(ctx);
        Ok(())
    }

    /// Primary: brings a backup that is behind up to date, then marks the pair in sync. On
    /// failure retries a little later (the backup may be restarting).
    fn catch_up(&mut self, ctx: &mut Context<Self>) {
        let st = self.pair.state();
        let o = 1 - self.me;
        if st.in_sync || st.roles[self.me] != Role::Primary || st.roles[o] != Role::Backup {
            return;
        }
        let done = self.transfer();
        let me = self.me;
        if done.is_ok() {
            self.pair.update(|now| {
                // Only if nothing changed meanwhile (the backup might have died and rejoined).
                if now.version == st.version && now.roles[me] == Role::Primary {
                    now.in_sync = true;
                }
            });
        }
        if !self.pair.state().in_sync && !self.retry_set {
            self.retry_set = true;
            ctx.send_after(Duration::from_millis(10), ReplicaInfo::CatchUp);
        }
    }

    fn transfer(&mut self) -> Result<(), FreqError> {
        let theirs = self.link.applied()?;
        if theirs == self.seq {
            return Ok(());
        }
        let covered = theirs < self.seq && self.log.front().is_some_and(|e| e.seq <= theirs + 1);
        if covered {
            let entries: Vec<LogEntry> = self
                .log
                .iter()
                .filter(|e| e.seq > theirs)
                .cloned()
                .collect();
            self.link.append(&entries)?;
        } else {
            self.link.install(Snapshot {
                seq: self.seq,
                allocations: self.pool.allocations()?,
            })?;
        }
        Ok(())
    }

    fn schedule_lease_timer(&mut self, ctx: &mut Context<Self>) {
        let now = self.clock.now_ms();
        if let Some(delay) = next_lease_timer(&self.pool, now, &mut self.lease_timer_at) {
            ctx.send_after(delay, ReplicaInfo::LeaseTick);
        }
    }

    fn reap(&mut self) -> Result<Vec<(u64, String)>, FreqError> {
        let now = self.clock.now_ms();
        let (seq, batch) = (&mut self.seq, &mut self.batch);
        let reaped = reap_leases(&mut self.pool, now, |change| {
            *seq += 1;
            batch.push(LogEntry { seq: *seq, change });
        })?;
        self.publish_load();
        Ok(reaped)
    }

    /// This replica's own invariants: its tables, and its disk against its memory.
    fn self_check(&self) -> Result<Vec<String>, FreqError> {
        let (i, r) = (self.shard, self.me);
        let mut out: Vec<String> = self
            .pool
            .check()?
            .into_iter()
            .map(|v| format!("shard {i} replica {r}: {}", v.0))
            .collect();
        if let Some(disk) = &self.disk {
            let (seq, mut on_disk) = split_seq(ReadTable::to_vec(disk)?);
            on_disk.sort_by_key(|(f, _)| *f);
            if on_disk != self.pool.allocations()? {
                out.push(format!("shard {i} replica {r}: disk and memory disagree"));
            }
            if seq != self.seq {
                out.push(format!(
                    "shard {i} replica {r}: applied {} in memory, {seq} on disk",
                    self.seq
                ));
            }
        }
        Ok(out)
    }

    fn dump(&self) -> Result<ReplicaDump, FreqError> {
        Ok(ReplicaDump {
            replica: self.me,
            seq: self.seq,
            allocations: self.pool.allocations()?,
            free: self.pool.free_ranges()?,
            violations: self.self_check()?,
        })
    }

    /// Primary: checks itself and, when in sync, compares the backup with itself.
    fn check(&mut self, ctx: &mut Context<Self>) -> Result<Vec<String>, FreqError> {
        self.commit(ctx)?;
        let mut out = self.self_check()?;
        if self.pair.state().in_sync {
            // A backup that died since is no violation: it will be caught up.
            if let Ok(theirs) = self.link.dump() {
                let i = self.shard;
                if theirs.seq != self.seq {
                    out.push(format!(
                        "shard {i}: replicas applied {} and {} (in sync)",
                        self.seq, theirs.seq
                    ));
                }
                if theirs.allocations != self.pool.allocations()? {
                    out.push(format!("shard {i}: the replicas' allocations differ"));
                }
                if theirs.free != self.pool.free_ranges()? {
                    out.push(format!("shard {i}: the replicas' free ranges differ"));
                }
                out.extend(theirs.violations);
            }
        }
        Ok(out)
    }

    /// Backup: a request from the primary.
    fn handle_link(&mut self, request: LinkCall) -> Result<ShardReply, FreqError> {
        if let LinkCall::Dump = request {
            return self.dump().map(|d| ShardReply::Dumped(Box::new(d)));
        }
        if self.role() != Role::Backup {
            return Err(FreqError::NotBackup { shard: self.shard });
        }
        match request {
            LinkCall::Applied => Ok(ShardReply::Applied(self.seq)),
            LinkCall::Append(entries) => {
                let fresh: Vec<LogEntry> =
                    entries.into_iter().filter(|e| e.seq > self.seq).collect();
                let Some(first) = fresh.first().map(|e| e.seq) else {
                    return Ok(ShardReply::Applied(self.seq));
                };
                if first != self.seq + 1 {
                    return Err(FreqError::ReplicaGap {
                        shard: self.shard,
                        applied: self.seq,
                        got: first,
                    });
                }
                for e in &fresh {
                    self.pool.apply(&e.change)?;
                    self.seq = e.seq;
                }
                self.write(&fresh)?;
                self.remember(fresh);
                Ok(ShardReply::Applied(self.seq))
            }
            LinkCall::Install(snapshot) => {
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
                *self.pair.readers[self.me].write() = Some(self.pool.readers());
                self.seq = snapshot.seq;
                self.log.clear();
                self.pair.publish_seq(self.me, self.seq, self.seq);
                Ok(ShardReply::Applied(self.seq))
            }
            LinkCall::Dump => self.dump().map(|d| ShardReply::Dumped(Box::new(d))),
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        if self.disk.is_none() {
            // In memory only: what this instance held is gone with it.
            self.pair.publish_seq(self.me, 0, 0);
        }
        self.pair.leave(self.me);
    }
}

impl GenServer for Replica {
    type Args = ReplicaArgs;
    type Call = ShardCall;
    type Reply = ShardResult;
    type Cast = ();
    type Info = ReplicaInfo;
    type Error = FreqError;

    fn init(args: ReplicaArgs, ctx: &mut Context<Self>) -> Result<Self, FreqError> {
        let shared = Arc::clone(&args.shard.shared);
        Replica::start(args, ctx).map_err(|e| {
            let reason = e.to_string();
            shared.set_init_error(e);
            FreqError::ShardFailed {
                shard: shared.index(),
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
        let request = match request {
            ShardCall::Link(l) => {
                return match self.handle_link(l) {
                    Ok(r) => {
                        from.reply(Ok(r));
                        Ok(())
                    }
                    // Refusals leave the replica as it was.
                    Err(e @ (FreqError::NotBackup { .. } | FreqError::ReplicaGap { .. })) => {
                        from.reply(Err(e));
                        Ok(())
                    }
                    // Anything else (a disk failure, a change that does not apply) leaves it
                    // unsure of its state: restart from disk and be caught up again.
                    Err(e) => {
                        from.reply(Err(FreqError::ShardFailed {
                            shard: self.shard,
                            reason: e.to_string(),
                        }));
                        Err(e)
                    }
                };
            }
            ShardCall::Inject(fault) => {
                panic!(
                    "fault {fault:?} injected into shard {} replica {}",
                    self.shard, self.me
                )
            }
            other => other,
        };
        if self.role() != Role::Primary {
            from.reply(Err(FreqError::NotPrimary { shard: self.shard }));
            return Ok(());
        }
        if !self.serving {
            self.become_primary(ctx);
        }
        let result = match request {
            ShardCall::Reap => {
                let reaped = self.reap().map(ShardReply::Reaped);
                self.schedule_lease_timer(ctx);
                reaped
            }
            ShardCall::Check => self.check(ctx).map(ShardReply::Checked),
            ShardCall::Link(_) | ShardCall::Inject(_) => {
                Err(FreqError::NotPrimary { shard: self.shard })
            }
            client => {
                let clock = &*self.clock;
                let (seq, batch) = (&mut self.seq, &mut self.batch);
                let (result, leased) = apply_client_call(&mut self.pool, clock, client, |change| {
                    *seq += 1;
                    batch.push(LogEntry { seq: *seq, change });
                });
                if leased {
                    self.schedule_lease_timer(ctx);
                }
                result
            }
        };
        self.publish_load();
        self.respond(from, result);
        Ok(())
    }

    fn handle_info(&mut self, msg: ReplicaInfo, ctx: &mut Context<Self>) -> Result<(), FreqError> {
        match msg {
            ReplicaInfo::LeaseTick => {
                self.lease_timer_at = None;
                if self.role() == Role::Primary {
                    self.reap()?;
                    self.schedule_lease_timer(ctx);
                }
            }
            ReplicaInfo::CatchUp => {
                self.retry_set = false;
                if self.role() == Role::Primary && !self.serving {
                    self.become_primary(ctx);
                }
                // The catch-up itself runs in handle_drained, right after this.
            }
        }
        Ok(())
    }

    fn handle_drained(&mut self, ctx: &mut Context<Self>) -> Result<(), FreqError> {
        self.commit(ctx)
    }

    fn terminate(&mut self, _reason: &crate::otp::ExitReason) {
        if let Some(disk) = self.disk.take() {
            // Errors here have no one to go to; close() flushed what it could.
            let _ = disk.close();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_higher_applied_sequence_wins_and_an_in_sync_backup_takes_over() {
        let pair = PairShared::new(0, [5, 7]);
        // Replica 0 starts first while 1 (which has more) is down: it waits as the backup.
        assert_eq!(pair.join(0, 5), Role::Backup);
        assert_eq!(pair.serving(), None);
        // Replica 1 starts: the backup has less, so 1 is primary.
        assert_eq!(pair.join(1, 7), Role::Primary);
        assert_eq!(pair.serving(), Some(1));
        // In sync, the primary leaves: the backup is promoted.
        pair.update(|st| st.in_sync = true);
        pair.durable[0].store(7, Ordering::Relaxed);
        pair.leave(1);
        assert_eq!(pair.serving(), Some(0));
        assert!(!pair.state().in_sync);
        // The old primary rejoins as the backup.
        assert_eq!(pair.join(1, 7), Role::Backup);
        // Out of sync, the primary leaves: the backup is not promoted.
        pair.leave(0);
        assert_eq!(pair.serving(), None);
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
