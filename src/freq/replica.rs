//! Replication: each shard as a primary/backup pair of replicas, each a shard core
//! (`shard_core.rs`) plus this module's [`Replication`]: its place in the pair and a [`ReplicaLink`]
//! to its partner.
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
//!     cluster: None,
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

use std::sync::Arc;
use std::time::Duration;

use super::error::{FreqError, ShardError};
use super::pair::{PairShared, Role};
use super::protocol::{LinkCall, LinkReply, LogEntry, ReplicaDump, Snapshot};
use super::shard_core::ShardCore;

/// How many recent entries a replica keeps for incremental catch-up, by default.
pub const DEFAULT_LOG_ENTRIES: usize = 10_000;

/// How long a primary waits before trying again to catch up a backup that did not answer.
const CATCH_UP_RETRY: Duration = Duration::from_millis(10);

/// The primary's connection to its backup: the replication protocol ([`LinkCall`]) as methods.
/// A replica talks to its partner only through this trait object, so `crate::dist` can carry it
/// over the network; the in-process implementation (`link.rs`) calls the partner's generic
/// server. Every method but [`ReplicaLink::nudge`] is a synchronous request whose failure (the
/// partner down, a timeout, a refusal) the primary treats as a lost backup.
pub(crate) trait ReplicaLink: Send + Sync {
    /// The sequence number the other replica has applied (it must be a backup).
    fn applied(&self) -> Result<u64, ShardError>;
    /// Applies `entries` (consecutive, starting at most one past what the other replica has
    /// applied) and persists them with the new applied sequence; returns it.
    fn append(&self, entries: &[LogEntry]) -> Result<u64, ShardError>;
    /// Replaces the other replica's state by `snapshot`; returns its new applied sequence.
    fn install(&self, snapshot: Snapshot) -> Result<u64, ShardError>;
    /// The other replica's contents, for comparison.
    fn dump(&self) -> Result<ReplicaDump, ShardError>;
    /// Tells the other replica (asynchronously) that this one has (re)joined, so that a primary
    /// catches it up without waiting for traffic.
    fn nudge(&self);
}

/// How long a primary whose partner is on another node waits before trying again to catch it
/// up (each attempt is a full state transfer over the network).
const REMOTE_CATCH_UP_RETRY: Duration = Duration::from_millis(200);

/// The longest wait between two catch-up tries of a partner on another node.
const MAX_REMOTE_CATCH_UP_RETRY: Duration = Duration::from_secs(2);

/// How often a replica may ask the control plane again for what it could not get (serving
/// after a start, an in-sync mark that went unanswered).
const CONTROL_RETRY: Duration = Duration::from_millis(500);

/// The control plane's part in a pair whose replicas run on two nodes (`crate::dist` implements
/// it over the cluster's Raft log). Who is primary, at which epoch, comes in through
/// [`PairShared::assign`]; what a primary must not decide alone goes out through here. Both
/// calls block (bounded): the primary's thread waits for the log.
pub(crate) trait PairControl: Send + Sync {
    /// Commits that the shard's backup is out of sync at `epoch` (so it cannot be promoted and
    /// the primary may write alone); returns the shard's new sync generation. `Err` (with the
    /// reason) when that is not certain: the epoch moved on, or no majority answered.
    fn mark_out_of_sync(&self, epoch: u64) -> Result<u64, String>;
    /// Proposes that the backup is in sync at `epoch`, caught up since the out-of-sync mark of
    /// generation `sync_gen`. `Ok(true)` committed, `Ok(false)` the outcome is unknown (it may
    /// still commit), `Err` refused (the epoch moved on, or the shard was marked out of sync
    /// again since).
    fn mark_in_sync(&self, epoch: u64, sync_gen: u64) -> Result<bool, String>;
    /// Whether the control state, as this node last applied it, has the backup in sync at
    /// `epoch`.
    fn in_sync(&self, epoch: u64) -> bool;
}

/// What a replica adds to its core (again on every restart).
#[derive(Clone)]
pub(crate) struct ReplicaArgs {
    /// 0 or 1.
    pub me: usize,
    pub pair: Arc<PairShared>,
    pub link: Arc<dyn ReplicaLink>,
    /// For a pair whose partner runs on another node: the control plane (roles come from it,
    /// not from the pair's own join rules).
    pub control: Option<Arc<dyn PairControl>>,
}

/// A replica's half of a replicated shard, beside its [`ShardCore`]: its place in the pair and
/// its link to the partner. It has no thread and no timers of its own: the shard's server
/// (`shard.rs`) calls it and schedules what it asks for.
pub(crate) struct Replication {
    me: usize,
    pair: Arc<PairShared>,
    link: Arc<dyn ReplicaLink>,
    /// Whether this replica's core has no disk table (then what it held dies with it).
    in_memory: bool,
    /// Whether this replica may lose acknowledged changes with its instance (`none`,
    /// `interval`).
    lossy: bool,
    /// Whether this instance has started acting as primary (lease timer, published counts).
    serving: bool,
    /// Whether a catch-up retry is scheduled.
    retry_set: bool,
    /// The shard's index.
    shard: usize,
    /// With the partner on another node: the control plane.
    control: Option<Arc<dyn PairControl>>,
    /// The epoch this replica started serving at (a primary on two nodes writes only at it).
    serving_epoch: u64,
    /// A backup on two nodes takes no entries until a full state transfer: after a start, or
    /// after serving, its state may differ from the primary's at the same sequence number.
    needs_install: bool,
    /// When the control plane was last asked for what it did not give.
    asked: Option<std::time::Instant>,
    /// The sync generation of this primary's last committed out-of-sync mark (what its in-sync
    /// mark names).
    sync_gen: u64,
    /// A catch-up is wanted (a `CatchUp` came, or serving just started): a full transfer is
    /// tried only then, not at every commit.
    catch_up_wanted: bool,
    /// The delay before the next catch-up try after a failed one (doubling, bounded).
    catch_up_delay: Duration,
}

impl Replication {
    /// Joins the pair with `core`'s state; returns the role the pair gave this replica. A
    /// primary then starts serving ([`Replication::become_serving`]) and catches its partner
    /// up; a backup nudges its partner.
    pub(crate) fn join(args: ReplicaArgs, core: &ShardCore) -> (Self, Role) {
        let me = args.me;
        *args.pair.readers[me].write() = Some(core.readers());
        args.pair.publish_seq(me, core.seq(), core.seq());
        let role = match args.control {
            Some(_) => args.pair.join_assigned(me),
            None => args.pair.join(me, core.seq()),
        };
        let replication = Replication {
            me,
            pair: args.pair,
            link: args.link,
            in_memory: !core.is_durable(),
            lossy: core.durability() != crate::freq::Durability::Sync,
            serving: false,
            retry_set: false,
            shard: core.index(),
            needs_install: args.control.is_some(),
            control: args.control,
            serving_epoch: 0,
            asked: None,
            sync_gen: 0,
            catch_up_wanted: false,
            catch_up_delay: REMOTE_CATCH_UP_RETRY,
        };
        if role != Role::Primary {
            replication.link.nudge();
        }
        (replication, role)
    }

    /// This replica's role, as the pair has it now.
    pub(crate) fn role(&self) -> Role {
        self.pair.state().roles[self.me]
    }

    /// Whether this instance already acts as primary (with the partner on another node: at the
    /// epoch the control plane gives now).
    pub(crate) fn is_serving(&self) -> bool {
        if self.control.is_none() {
            return self.serving;
        }
        let st = self.pair.state();
        self.serving && st.roles[self.me] == Role::Primary && st.epoch == self.serving_epoch
    }

    /// Starts acting as primary: publishes the core's counts for the router (the caller also
    /// sets the lease timer). With the partner on another node a primary starts out of sync:
    /// its backup may hold entries this replica never wrote (it crashed between shipping and
    /// writing), so it is caught up by a full transfer, and the control log must say so first
    /// (at this replica's epoch: which also proves the epoch current).
    /// Returns whether it serves (`false`: the control plane could not be reached; a later
    /// call tries again).
    pub(crate) fn become_serving(&mut self, core: &ShardCore) -> bool {
        if let Some(control) = self.control.clone() {
            if self
                .asked
                .is_some_and(|t| t.elapsed() < CONTROL_RETRY && !self.serving)
            {
                return false;
            }
            // Committing the mark is also the proof that `epoch` is still the shard's (a
            // compare-and-set): a replica given its role from a view that has moved on never
            // starts serving at an old epoch.
            let epoch = self.pair.state().epoch;
            match control.mark_out_of_sync(epoch) {
                Ok(generation) => self.sync_gen = generation,
                Err(_) => {
                    self.asked = Some(std::time::Instant::now());
                    return false;
                }
            }
            self.asked = None;
            self.serving_epoch = epoch;
            self.catch_up_wanted = true;
            self.catch_up_delay = REMOTE_CATCH_UP_RETRY;
            self.pair.update(|st| st.in_sync = false);
        }
        self.serving = true;
        self.needs_install = false;
        core.publish_load();
        true
    }

    /// Primary: ships a committed batch to the backup if the pair is in sync. In one process a
    /// failure marks the pair out of sync: the primary serves alone until the backup is caught
    /// up again. With the partner on another node the primary may only write at the epoch it
    /// serves, and only what the backup took, unless the control log has first recorded the
    /// backup as out of sync: otherwise the batch fails (and nothing of it is acknowledged).
    pub(crate) fn ship(&mut self, entries: &[LogEntry]) -> Result<(), FreqError> {
        let st = self.pair.state();
        let Some(control) = self.control.clone() else {
            if st.in_sync
                && st.roles[self.me] == Role::Primary
                && self.link.append(entries).is_err()
            {
                let me = self.me;
                self.pair.update(|st| {
                    if st.primary == me {
                        st.in_sync = false;
                    }
                });
            }
            return Ok(());
        };
        let shard = self.shard;
        if !self.is_serving() {
            return Err(FreqError::ShardFailed {
                shard,
                reason: format!(
                    "this replica is no longer its primary (it served at epoch {}, the control \
                     plane is at {}): nothing of the batch was written",
                    self.serving_epoch, st.epoch
                ),
            });
        }
        if !st.in_sync {
            return Ok(());
        }
        let Err(e) = self.link.append(entries) else {
            return Ok(());
        };
        match control.mark_out_of_sync(self.serving_epoch) {
            Ok(generation) => {
                self.sync_gen = generation;
                self.catch_up_wanted = true;
                self.pair.update(|st| st.in_sync = false);
                Ok(())
            }
            Err(why) => Err(FreqError::ShardFailed {
                shard,
                reason: format!(
                    "its backup did not take the write ({e}) and the control plane did not \
                     record it out of sync ({why}); the batch was not acknowledged (if the \
                     backup did apply it, it is kept there)"
                ),
            }),
        }
    }

    /// After a commit: publishes what this replica has applied and, as primary, brings a backup
    /// that is behind up to date. Returns a delay after which the server should send itself a
    /// `CatchUp` (the backup did not answer: it may be restarting).
    pub(crate) fn after_commit(&mut self, core: &ShardCore) -> Option<Duration> {
        self.pair.publish_seq(self.me, core.seq(), core.seq());
        if self.control.is_some() {
            return self.after_commit_remote(core);
        }
        let st = self.pair.state();
        let o = 1 - self.me;
        if st.in_sync || st.roles[self.me] != Role::Primary || st.roles[o] != Role::Backup {
            return None;
        }
        if self.transfer(core).is_ok() {
            let me = self.me;
            self.pair.update(|now| {
                // Only if nothing changed meanwhile (the backup might have died and rejoined).
                if now.version == st.version && now.roles[me] == Role::Primary {
                    now.in_sync = true;
                }
            });
        }
        if !self.pair.state().in_sync && !self.retry_set {
            self.retry_set = true;
            return Some(CATCH_UP_RETRY);
        }
        None
    }

    /// [`Replication::after_commit`] with the partner on another node: a full state transfer
    /// (its state may differ at the same sequence number), then the in-sync mark in the
    /// control log. From the transfer on, every batch is shipped (the local flag is set before
    /// the mark is proposed), so a mark whose outcome is unknown is never a lie.
    fn after_commit_remote(&mut self, core: &ShardCore) -> Option<Duration> {
        let control = self.control.clone()?;
        if !self.is_serving() {
            return None;
        }
        let st = self.pair.state();
        if st.in_sync {
            // Marked locally; the log may not have it yet (an unanswered proposal): ask again.
            // A refusal (marked out of sync since, by the backup itself or a promotion; or the
            // epoch moved on) means the backup must be caught up again.
            if !control.in_sync(self.serving_epoch)
                && self.asked.is_none_or(|t| t.elapsed() >= CONTROL_RETRY)
            {
                self.asked = Some(std::time::Instant::now());
                if control
                    .mark_in_sync(self.serving_epoch, self.sync_gen)
                    .is_err()
                {
                    self.pair.update(|now| now.in_sync = false);
                    if let Ok(generation) = control.mark_out_of_sync(self.serving_epoch) {
                        self.sync_gen = generation;
                        self.catch_up_wanted = true;
                    }
                }
            }
            return None;
        }
        if st.roles[1 - self.me] != Role::Backup || !self.catch_up_wanted {
            return None;
        }
        self.catch_up_wanted = false;
        let installed = core
            .snapshot()
            .map_err(|e| e.to_string())
            .and_then(|snap| self.link.install(snap).map_err(|e| e.to_string()));
        if installed.is_ok() {
            self.pair.update(|now| now.in_sync = true);
            self.asked = Some(std::time::Instant::now());
            if control
                .mark_in_sync(self.serving_epoch, self.sync_gen)
                .is_err()
            {
                self.pair.update(|now| now.in_sync = false);
            }
        }
        if self.pair.state().in_sync {
            self.catch_up_delay = REMOTE_CATCH_UP_RETRY;
            return None;
        }
        if self.retry_set {
            return None;
        }
        self.retry_set = true;
        let delay = self.catch_up_delay;
        self.catch_up_delay = (delay * 2).min(MAX_REMOTE_CATCH_UP_RETRY);
        Some(delay)
    }

    /// The scheduled `CatchUp` arrived (the catch-up itself runs at the next commit).
    pub(crate) fn catch_up_due(&mut self) {
        self.retry_set = false;
        self.catch_up_wanted = true;
    }

    /// Catches the backup up: incrementally from the log if it covers what the backup lacks,
    /// else by a full state transfer.
    fn transfer(&self, core: &ShardCore) -> Result<(), ShardError> {
        let theirs = self.link.applied()?;
        let seq = core.seq();
        if theirs == seq {
            return Ok(());
        }
        let log = core.log();
        let covered = theirs < seq && log.front().is_some_and(|e| e.seq <= theirs + 1);
        if covered {
            let entries: Vec<LogEntry> = log.iter().filter(|e| e.seq > theirs).cloned().collect();
            self.link.append(&entries)?;
        } else {
            self.link.install(core.snapshot()?)?;
        }
        Ok(())
    }

    /// The label of this replica's violations.
    pub(crate) fn label(&self, core: &ShardCore) -> String {
        format!("shard {} replica {}", core.index(), self.me)
    }

    /// Primary, in `check`: when in sync, compares the backup with `core`, adding what differs.
    pub(crate) fn compare(&self, core: &ShardCore, out: &mut Vec<String>) -> Result<(), FreqError> {
        if !self.pair.state().in_sync {
            return Ok(());
        }
        // A backup that died since is no violation: it will be caught up.
        if let Ok(theirs) = self.link.dump() {
            let i = core.index();
            if theirs.seq != core.seq() {
                out.push(format!(
                    "shard {i}: replicas applied {} and {} (in sync)",
                    core.seq(),
                    theirs.seq
                ));
            }
            if theirs.allocations != core.allocations()? {
                out.push(format!("shard {i}: the replicas' allocations differ"));
            }
            if theirs.free != core.free_ranges()? {
                out.push(format!("shard {i}: the replicas' free ranges differ"));
            }
            out.extend(theirs.violations);
        }
        Ok(())
    }

    /// Backup: a request of the replication protocol. Refusals (`NotBackup`, `ReplicaGap`)
    /// leave the replica as it was; any other error leaves it unsure of its state (the caller
    /// exits and restarts from disk).
    pub(crate) fn handle_link(
        &mut self,
        core: &mut ShardCore,
        request: LinkCall,
        epoch: Option<u64>,
    ) -> Result<LinkReply, ShardError> {
        if let LinkCall::Dump = request {
            let label = self.label(core);
            return Ok(LinkReply::Dumped(Box::new(core.dump(self.me, &label)?)));
        }
        if self.control.is_some() {
            // A request from another node: fenced by the epoch it was sent at.
            let ours = self.pair.state().epoch;
            let theirs = epoch.unwrap_or(0);
            if theirs < ours {
                return Err(ShardError::Fenced(format!(
                    "the write carries epoch {theirs}, this replica knows epoch {ours} (its \
                     sender is no longer the primary)"
                )));
            }
        }
        if self.role() != Role::Backup {
            return Err(ShardError::NotBackup);
        }
        if self.control.is_some() {
            if self.serving {
                // It served before: its state may differ from the new primary's.
                self.serving = false;
                self.needs_install = true;
            }
            match &request {
                LinkCall::Install(_) => self.needs_install = false,
                LinkCall::Append(_) if self.needs_install => {
                    return Err(ShardError::Fenced(
                        "this backup needs a full state transfer first".into(),
                    ))
                }
                _ => {}
            }
        }
        match request {
            LinkCall::Applied => Ok(LinkReply::Applied(core.seq())),
            LinkCall::Append(entries) => {
                let applied = core.seq();
                let fresh: Vec<LogEntry> =
                    entries.into_iter().filter(|e| e.seq > applied).collect();
                let Some(first) = fresh.first().map(|e| e.seq) else {
                    return Ok(LinkReply::Applied(applied));
                };
                if first != applied + 1 {
                    return Err(ShardError::ReplicaGap {
                        applied,
                        got: first,
                    });
                }
                core.apply_log(fresh)?;
                self.pair.publish_seq(self.me, core.seq(), core.seq());
                Ok(LinkReply::Applied(core.seq()))
            }
            LinkCall::Install(snapshot) => {
                core.install(snapshot)?;
                *self.pair.readers[self.me].write() = Some(core.readers());
                self.pair.publish_seq(self.me, core.seq(), core.seq());
                Ok(LinkReply::Applied(core.seq()))
            }
            LinkCall::Dump => {
                let label = self.label(core);
                Ok(LinkReply::Dumped(Box::new(core.dump(self.me, &label)?)))
            }
        }
    }

    /// The replica's state is being dropped: it leaves the pair (a primary in sync hands over to
    /// its backup), before anyone hears of the exit.
    pub(crate) fn leave(&self) {
        if self.in_memory {
            // In memory only: what this instance held is gone with it.
            self.pair.publish_seq(self.me, 0, 0);
        }
        if self.control.is_some() {
            self.pair.leave_assigned(self.me, self.lossy);
        } else {
            self.pair.leave(self.me);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::freq::clock::ManualLeaseClock;
    use crate::freq::protocol::ClientCall;
    use crate::freq::range::FreqRange;
    use crate::freq::shard_core::{CoreArgs, ShardShared};
    use crate::freq::store::Durability;
    use parking_lot::Mutex;

    /// A link that records what it is asked and answers as told: the seam a network transport
    /// implements, exercised without any server.
    #[derive(Default)]
    struct FakeLink {
        applied: Mutex<u64>,
        down: Mutex<bool>,
        appended: Mutex<Vec<Vec<u64>>>,
        installed: Mutex<Vec<(u64, usize)>>,
    }

    impl FakeLink {
        fn check_up(&self) -> Result<(), ShardError> {
            if *self.down.lock() {
                return Err(ShardError::NotBackup);
            }
            Ok(())
        }
    }

    impl ReplicaLink for FakeLink {
        fn applied(&self) -> Result<u64, ShardError> {
            self.check_up()?;
            Ok(*self.applied.lock())
        }
        fn append(&self, entries: &[LogEntry]) -> Result<u64, ShardError> {
            self.check_up()?;
            self.appended
                .lock()
                .push(entries.iter().map(|e| e.seq).collect());
            let last = entries.last().map_or(0, |e| e.seq);
            *self.applied.lock() = last;
            Ok(last)
        }
        fn install(&self, snapshot: Snapshot) -> Result<u64, ShardError> {
            self.check_up()?;
            self.installed
                .lock()
                .push((snapshot.seq, snapshot.allocations.len()));
            *self.applied.lock() = snapshot.seq;
            Ok(snapshot.seq)
        }
        fn dump(&self) -> Result<ReplicaDump, ShardError> {
            Err(ShardError::NotBackup)
        }
        fn nudge(&self) {}
    }

    fn allocate(core: &mut ShardCore) {
        let call = ClientCall::Allocate {
            owner: "radio".into(),
            lease_ms: None,
        };
        assert!(core.apply_client(call).0.is_ok());
    }

    #[test]
    fn a_primary_ships_in_sync_and_catches_up_from_its_log_or_by_a_snapshot() {
        let pair = PairShared::new(0, [0, 0]);
        let link = Arc::new(FakeLink::default());
        let core_args = CoreArgs {
            ranges: vec![FreqRange::new(0, 99).unwrap()],
            dir: None,
            durability: Durability::None,
            limit: None,
            clock: Arc::new(ManualLeaseClock::new(0)),
            shared: ShardShared::new(0, Some(Arc::clone(&pair))),
            replicated: true,
            log_entries: 2,
            preloaded: Arc::new(Mutex::new(None)),
        };
        let mut core = ShardCore::start(core_args).unwrap();
        let args = ReplicaArgs {
            me: 0,
            pair: Arc::clone(&pair),
            link: Arc::clone(&link) as Arc<dyn ReplicaLink>,
            control: None,
        };
        let (mut rep, role) = Replication::join(args, &core);
        assert_eq!(role, Role::Primary);
        assert_eq!(pair.join(1, 0), Role::Backup);

        // Out of sync: nothing is shipped; the catch-up finds the log (2 entries) too short for
        // a backup at 0 and sends a snapshot, then the pair is in sync.
        for _ in 0..3 {
            allocate(&mut core);
        }
        core.commit(|e| rep.ship(e)).unwrap();
        assert!(link.appended.lock().is_empty());
        assert_eq!(rep.after_commit(&core), None);
        assert_eq!(*link.installed.lock(), vec![(3, 3)]);
        assert!(pair.state().in_sync);

        // In sync: every commit ships its batch, numbered on.
        allocate(&mut core);
        core.commit(|e| rep.ship(e)).unwrap();
        assert_eq!(*link.appended.lock(), vec![vec![4]]);

        // The backup goes away: the shipment fails, the pair falls out of sync and the primary
        // asks for a retry instead of blocking.
        *link.down.lock() = true;
        allocate(&mut core);
        core.commit(|e| rep.ship(e)).unwrap();
        assert!(!pair.state().in_sync);
        assert_eq!(rep.after_commit(&core), Some(CATCH_UP_RETRY));

        // It is back at 4: the log (4, 5) covers it, so only entry 5 is sent.
        *link.down.lock() = false;
        rep.catch_up_due();
        assert_eq!(rep.after_commit(&core), None);
        assert_eq!(*link.appended.lock(), vec![vec![4], vec![5]]);
        assert!(pair.state().in_sync);
        assert_eq!(pair.applied(0), 5);
    }

    /// A control plane that records what it is asked and answers as told: the seam the
    /// cluster's Raft log implements, exercised without any node.
    #[derive(Default)]
    struct FakeControl {
        refuse: Mutex<bool>,
        generation: Mutex<u64>,
        marked_out: Mutex<Vec<u64>>,
        in_sync: Mutex<bool>,
    }

    impl PairControl for FakeControl {
        fn mark_out_of_sync(&self, epoch: u64) -> Result<u64, String> {
            if *self.refuse.lock() {
                return Err("no majority".into());
            }
            self.marked_out.lock().push(epoch);
            *self.in_sync.lock() = false;
            let mut g = self.generation.lock();
            *g += 1;
            Ok(*g)
        }
        fn mark_in_sync(&self, _epoch: u64, sync_gen: u64) -> Result<bool, String> {
            if sync_gen != *self.generation.lock() {
                return Err("marked out of sync since".into());
            }
            *self.in_sync.lock() = true;
            Ok(true)
        }
        fn in_sync(&self, _epoch: u64) -> bool {
            *self.in_sync.lock()
        }
    }

    fn remote_core(pair: &Arc<PairShared>) -> ShardCore {
        ShardCore::start(CoreArgs {
            ranges: vec![FreqRange::new(0, 99).unwrap()],
            dir: None,
            durability: Durability::None,
            limit: None,
            clock: Arc::new(ManualLeaseClock::new(0)),
            shared: ShardShared::new(0, Some(Arc::clone(pair))),
            replicated: true,
            log_entries: 10,
            preloaded: Arc::new(Mutex::new(None)),
        })
        .unwrap()
    }

    fn entry(seq: u64, f: u64) -> LogEntry {
        LogEntry {
            seq,
            change: crate::freq::pool::Change::Allocated(
                f,
                crate::freq::pool::Allocation {
                    owner: "o".into(),
                    since_ms: 0,
                    lease_until_ms: None,
                },
            ),
        }
    }

    #[test]
    fn a_backup_on_another_node_refuses_older_epochs_and_entries_before_a_full_transfer() {
        let pair = PairShared::new(1, [0, 0]);
        pair.assign(1, Role::Backup, Role::Down, 2);
        let mut core = remote_core(&pair);
        let control = Arc::new(FakeControl::default());
        let args = ReplicaArgs {
            me: 1,
            pair: Arc::clone(&pair),
            link: Arc::new(FakeLink::default()),
            control: Some(control as Arc<dyn PairControl>),
        };
        let (mut rep, role) = Replication::join(args, &core);
        assert_eq!(role, Role::Backup);
        // A stale primary's write (epoch 1, the shard is at 2) is refused, nothing applied.
        let stale = rep.handle_link(&mut core, LinkCall::Append(vec![entry(1, 5)]), Some(1));
        assert!(matches!(stale, Err(ShardError::Fenced(_))), "{stale:?}");
        // At the current epoch, entries wait for a full transfer after a start.
        let early = rep.handle_link(&mut core, LinkCall::Append(vec![entry(1, 5)]), Some(2));
        assert!(matches!(early, Err(ShardError::Fenced(_))), "{early:?}");
        assert_eq!(core.seq(), 0);
        let snapshot = Snapshot {
            seq: 3,
            allocations: vec![(
                7,
                crate::freq::pool::Allocation {
                    owner: "o".into(),
                    since_ms: 0,
                    lease_until_ms: None,
                },
            )],
        };
        let installed = rep.handle_link(&mut core, LinkCall::Install(snapshot), Some(2));
        assert!(
            matches!(installed, Ok(LinkReply::Applied(3))),
            "{installed:?}"
        );
        let next = rep.handle_link(&mut core, LinkCall::Append(vec![entry(4, 8)]), Some(2));
        assert!(matches!(next, Ok(LinkReply::Applied(4))), "{next:?}");
        // Promoted (epoch 3): no longer a backup.
        pair.assign(1, Role::Primary, Role::Down, 3);
        let late = rep.handle_link(&mut core, LinkCall::Append(vec![entry(5, 9)]), Some(3));
        assert!(matches!(late, Err(ShardError::NotBackup)), "{late:?}");
    }

    #[test]
    fn a_primary_on_two_nodes_writes_alone_only_once_the_log_says_its_backup_is_out_of_sync() {
        let pair = PairShared::new(0, [0, 0]);
        pair.assign(0, Role::Primary, Role::Backup, 1);
        let mut core = remote_core(&pair);
        let link = Arc::new(FakeLink::default());
        let control = Arc::new(FakeControl::default());
        let args = ReplicaArgs {
            me: 0,
            pair: Arc::clone(&pair),
            link: Arc::clone(&link) as Arc<dyn ReplicaLink>,
            control: Some(Arc::clone(&control) as Arc<dyn PairControl>),
        };
        let (mut rep, role) = Replication::join(args, &core);
        assert_eq!(role, Role::Primary);
        // It serves only once the log has recorded its backup out of sync at its epoch.
        *control.refuse.lock() = true;
        assert!(!rep.become_serving(&core));
        *control.refuse.lock() = false;
        rep.asked = None;
        assert!(rep.become_serving(&core));
        assert_eq!(*control.marked_out.lock(), vec![1]);
        // Alone: nothing shipped; then a full transfer and the in-sync mark (generation 1).
        allocate(&mut core);
        core.commit(|e| rep.ship(e)).unwrap();
        assert!(link.appended.lock().is_empty());
        assert_eq!(rep.after_commit(&core), None);
        assert_eq!(*link.installed.lock(), vec![(1, 1)]);
        assert!(pair.state().in_sync && *control.in_sync.lock());
        // In sync: every batch is shipped before it is acknowledged.
        allocate(&mut core);
        core.commit(|e| rep.ship(e)).unwrap();
        assert_eq!(*link.appended.lock(), vec![vec![2]]);
        // The backup fails: the log records it out of sync, then the primary goes on alone.
        *link.down.lock() = true;
        allocate(&mut core);
        core.commit(|e| rep.ship(e)).unwrap();
        assert!(!pair.state().in_sync);
        assert_eq!(*control.marked_out.lock(), vec![1, 1]);
        // A catch-up in the log's old generation is refused: it cannot undo the later mark.
        assert!(control.mark_in_sync(1, 1).is_err());
        // Back in sync, then the backup fails and the log cannot be reached: the batch is not
        // acknowledged.
        *link.down.lock() = false;
        rep.catch_up_due();
        assert_eq!(rep.after_commit(&core), None);
        assert!(pair.state().in_sync);
        *link.down.lock() = true;
        *control.refuse.lock() = true;
        allocate(&mut core);
        assert!(core.commit(|e| rep.ship(e)).is_err());
        // Demoted (the log promoted the backup at epoch 2): nothing more is written here.
        *link.down.lock() = false;
        *control.refuse.lock() = false;
        pair.assign(0, Role::Backup, Role::Down, 2);
        allocate(&mut core);
        let demoted = core.commit(|e| rep.ship(e));
        assert!(demoted
            .unwrap_err()
            .to_string()
            .contains("no longer its primary"));
    }
}
