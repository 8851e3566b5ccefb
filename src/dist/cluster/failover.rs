//! Replicas on two nodes, and failover decided by the control log (`--nodes ... --replicas 2`).
//!
//! Each shard has a replica on its node and one on the next node round. Which of the two is
//! primary, at which epoch, and whether the backup is in sync, is the control log's (Raft,
//! `crate::control`); the data travels primary to backup over the distribution connection
//! ([`NetworkLink`], the terms of `replica_wire.rs`), with the pair protocol of `freq`'s
//! `replica.rs`:
//! - a primary ships every batch before it writes and acknowledges it, so an acknowledged change
//!   is applied on both nodes (on both disks in `sync`);
//! - a batch the backup does not take is acknowledged only once the control log records the
//!   backup as out of sync at the primary's epoch ([`Command::MarkOutOfSync`]); an out-of-sync
//!   backup is never promoted, so whatever a lone primary acknowledges is never lost to a
//!   promotion;
//! - every replication request carries the sender's epoch, and a replica refuses one older than
//!   it knows: a primary that was replaced can no longer get a batch acknowledged;
//! - a primary that (re)starts serving first records the backup out of sync, then catches it up
//!   by a full state transfer and proposes [`Command::MarkInSync`].
//!
//! The roles thread (`freq-cluster-roles`) follows the control log: it points every shard's
//! route at its primary, gives this node's replicas their roles (a replica becomes primary only
//! after a Raft ReadIndex proves the log current, so the minority side of a partition never
//! starts serving), and, on the leader, promotes the in-sync backup of a primary whose node's
//! connection is gone ([`Command::Promote`], a compare-and-set on the epoch).
//!
//! In `none` and `interval` a replica that restarts may have lost what it acknowledged: a
//! restarted backup records itself out of sync, and a restarted primary whose backup is in sync
//! hands the shard over to it (a promotion) instead of serving what it has left.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use eetf::Term;

use super::{control_id, PeerCallError, PeerCalls, PeerLoad, PeerShard, Route, Shared};
use crate::control::{Command, ControlError, ControlNode, NodeId, Role as ControlRole};
use crate::dist::replica_wire::{append_term, link_call_term, parse_link_reply};
use crate::dist::term::{as_atom, as_text, as_tuple, atom, binary, tuple, uint};
use crate::freq::{
    ClientCall, ClientReply, Durability, Fault, FreqError, Health, LinkCall, LinkReply,
    LocalReplica, LogEntry, PairControl, ReplicaDump, ReplicaHandle, ReplicaLink, Role,
    ShardEndpoint, ShardError, ShardShared, Snapshot,
};
use crate::otp::OtpError;

/// How long a proposal to the control log may take (the primary's thread waits for it).
const PROPOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the roles thread waits for a ReadIndex before giving a replica the primary role.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(1);
/// How often the roles thread looks again without a change of the control view.
const ROLES_INTERVAL: Duration = Duration::from_millis(100);

/// The sync generation an applied command reports (an out-of-sync mark's).
fn sync_gen_of(applied: &crate::control::Applied) -> Option<u64> {
    match applied {
        crate::control::Applied::MarkedOutOfSync { sync_gen } => Some(*sync_gen),
        _ => None,
    }
}

/// A failed peer call's reason, in words.
fn peer_error_text(e: PeerCallError) -> String {
    match e {
        PeerCallError::NotSent(w) | PeerCallError::Lost(w) | PeerCallError::Timeout(w) => w,
    }
}

/// This node's replica of a replicated shard, as the roles thread and the shard service see it.
pub(super) struct ReplicaHere {
    pub(super) replica: usize,
    pub(super) handle: ReplicaHandle,
    /// The node of the other replica.
    pub(super) partner: String,
    pub(super) link: Arc<NetworkLink>,
    /// The replica's generation when the roles thread last looked (a restart is a new one).
    seen_generation: AtomicU64,
    /// When the roles thread last nudged it to catch its backup up.
    nudged: std::sync::Mutex<Option<Instant>>,
    /// In `none`/`interval`: this replica restarted and may have lost what it acknowledged.
    /// Set until the log no longer counts the pair as in sync: meanwhile it neither serves
    /// over its in-sync partner nor may be promoted (see `roles_round`).
    lost_state: std::sync::atomic::AtomicBool,
}

/// How often the roles thread nudges a primary whose backup is not in sync yet.
const NUDGE_INTERVAL: Duration = Duration::from_secs(1);

impl ReplicaHere {
    /// Whether a nudge is due (at most one per [`NUDGE_INTERVAL`]); records it if so.
    fn nudge_due(&self) -> bool {
        let mut last = super::lock(&self.nudged);
        if last.is_some_and(|t| t.elapsed() < NUDGE_INTERVAL) {
            return false;
        }
        *last = Some(Instant::now());
        true
    }

    /// Whether this replica serves its shard now: the route says this node, and the replica
    /// was given the primary role.
    pub(super) fn serves(&self, route: &Route, me: &str) -> bool {
        route.is(me) && self.handle.assigned().0 == Some(Role::Primary)
    }
}

/// The replication protocol to the partner replica on another node: `{link, Shard, Epoch,
/// Call, Fingerprint}` calls on its `freq_shard`, each bounded by the call timeout.
pub(super) struct NetworkLink {
    shard: usize,
    partner: String,
    fingerprint: String,
    calls: Arc<PeerCalls>,
    handle: ReplicaHandle,
    timeout: Duration,
    /// The sequence number the partner last said it applied (`u64::MAX`: not known).
    acked: AtomicU64,
}

impl NetworkLink {
    fn failed(&self, why: String) -> ShardError {
        ShardError::Link(format!("its replica on {}: {why}", self.partner))
    }

    fn request(&self, call: &LinkCall) -> Result<LinkReply, ShardError> {
        self.request_term(link_call_term(call), matches!(call, LinkCall::Dump))
    }

    /// Sends the request whose `Call` is `call` (a dump's answer is read as one if `dump`).
    fn request_term(&self, call: Term, dump: bool) -> Result<LinkReply, ShardError> {
        // The epoch this replica was given: the partner refuses it if it knows a later one.
        let (_, epoch) = self.handle.assigned();
        let t = tuple(vec![
            atom("link"),
            uint(self.shard as u64),
            uint(epoch),
            call,
            binary(self.fingerprint.as_bytes()),
        ]);
        match self.calls.call(&self.partner, &t, self.timeout) {
            Ok(answer) => parse_link_reply(&answer, dump).map_err(|why| self.failed(why)),
            Err(PeerCallError::NotSent(w) | PeerCallError::Lost(w) | PeerCallError::Timeout(w)) => {
                Err(self.failed(w))
            }
        }
    }

    fn seq(&self, call: &LinkCall) -> Result<u64, ShardError> {
        self.seq_of(self.request(call)?)
    }

    fn seq_of(&self, reply: LinkReply) -> Result<u64, ShardError> {
        match reply {
            LinkReply::Applied(seq) => {
                self.acked.store(seq, Ordering::Relaxed);
                Ok(seq)
            }
            other => Err(self.failed(format!("unexpected answer {other:?}"))),
        }
    }

    /// How far the partner is behind `seq` (what it last acknowledged), if known.
    pub(super) fn lag_behind(&self, seq: u64) -> Option<u64> {
        match self.acked.load(Ordering::Relaxed) {
            u64::MAX => None,
            acked => Some(seq.saturating_sub(acked)),
        }
    }
}

impl ReplicaLink for NetworkLink {
    fn applied(&self) -> Result<u64, ShardError> {
        self.seq(&LinkCall::Applied)
    }

    fn append(&self, entries: &[LogEntry]) -> Result<u64, ShardError> {
        self.seq_of(self.request_term(append_term(entries), false)?)
    }

    fn install(&self, snapshot: Snapshot) -> Result<u64, ShardError> {
        self.seq(&LinkCall::Install(snapshot))
    }

    fn dump(&self) -> Result<ReplicaDump, ShardError> {
        match self.request(&LinkCall::Dump)? {
            LinkReply::Dumped(d) => Ok(*d),
            other => Err(self.failed(format!("unexpected answer {other:?}"))),
        }
    }

    fn nudge(&self) {
        let t = tuple(vec![
            atom("link_nudge"),
            uint(self.shard as u64),
            binary(self.fingerprint.as_bytes()),
        ]);
        self.calls.cast(&self.partner, &t);
    }
}

/// Why a proposal to the control log did not apply.
#[derive(Debug)]
pub(super) enum ProposeError {
    /// The state machine refused it (on every node): nothing changed.
    Rejected(String),
    /// No answer in time, or the leader changed: it may still apply.
    Unknown(String),
}

impl std::fmt::Display for ProposeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProposeError::Rejected(w) => write!(f, "refused by the control log: {w}"),
            ProposeError::Unknown(w) => write!(f, "the control log did not answer: {w}"),
        }
    }
}

impl Shared {
    /// The node name of control id `id`.
    pub(super) fn node_name(&self, id: NodeId) -> String {
        usize::try_from(id)
            .ok()
            .and_then(|i| i.checked_sub(1))
            .and_then(|i| self.layout.nodes().get(i))
            .cloned()
            .unwrap_or_else(|| format!("node {id}"))
    }

    fn control_node(&self) -> Option<Arc<ControlNode>> {
        super::lock(&self.control).clone()
    }

    /// Proposes `command` to the control log and waits until it applied on the leader: here if
    /// this node leads, else through the leader's `freq_shard` (`{control_propose, Bytes,
    /// Fingerprint}`).
    /// On success: the shard's new sync generation, for an out-of-sync mark.
    pub(super) fn propose(
        &self,
        command: &Command,
        timeout: Duration,
    ) -> Result<Option<u64>, ProposeError> {
        let deadline = Instant::now() + timeout;
        let control = self
            .control_node()
            .ok_or_else(|| ProposeError::Unknown("the control plane is not running".into()))?;
        let bytes = crate::codec::encode(command)
            .map_err(|e| ProposeError::Rejected(format!("cannot encode the command: {e}")))?;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ProposeError::Unknown(format!(
                    "no leader committed it within {} ms",
                    timeout.as_millis()
                )));
            }
            let view = control.view();
            if view.role == ControlRole::Leader {
                match control.propose(command, left) {
                    Ok(applied) => return Ok(sync_gen_of(&applied)),
                    Err(ControlError::Rejected(r)) => {
                        return Err(ProposeError::Rejected(r.to_string()))
                    }
                    Err(ControlError::NotLeader { .. }) => {}
                    Err(e) => return Err(ProposeError::Unknown(e.to_string())),
                }
            } else if let Some(leader) = view.leader.filter(|&l| l != control.id()) {
                let t = tuple(vec![
                    atom("control_propose"),
                    binary(&bytes),
                    binary(self.fingerprint.as_bytes()),
                ]);
                let answer = self
                    .calls
                    .call(&self.node_name(leader), &t, left)
                    .map_err(|e| ProposeError::Unknown(peer_error_text(e)))?;
                match as_tuple(&answer) {
                    _ if as_atom(&answer) == Some("ok") => return Ok(None),
                    Some([ok, generation]) if as_atom(ok) == Some("ok") => {
                        return Ok(crate::dist::term::as_u64(generation))
                    }
                    Some([_, kind, why]) => {
                        let why = as_text(why).unwrap_or_default();
                        match as_atom(kind) {
                            Some("rejected") => return Err(ProposeError::Rejected(why)),
                            Some("not_leader") => {}
                            _ => return Err(ProposeError::Unknown(why)),
                        }
                    }
                    _ => {
                        return Err(ProposeError::Unknown(format!(
                            "unexpected answer {}",
                            crate::dist::term::short(&answer)
                        )))
                    }
                }
            }
            // No leader known, or it just changed: wait for the view to move (bounded).
            let wait = deadline.min(Instant::now() + ROLES_INTERVAL);
            let _ = control.wait_change(view.version, wait);
        }
    }

    /// A peer's `{control_propose, Bytes, Fingerprint}`, on the control worker: proposes the
    /// command if this node leads.
    pub(super) fn answer_propose(&self, bytes: &[u8]) -> Term {
        let err = |kind: &str, why: String| {
            tuple(vec![atom("error"), atom(kind), binary(why.as_bytes())])
        };
        let Some(control) = self.control_node() else {
            return err("not_leader", "the control plane is not running".into());
        };
        let command: Command = match crate::codec::decode(bytes) {
            Ok(c) => c,
            Err(e) => return err("rejected", format!("the command does not decode: {e}")),
        };
        if control.view().role != ControlRole::Leader {
            return err(
                "not_leader",
                "this node does not lead the control log".into(),
            );
        }
        match control.propose(&command, PROPOSE_TIMEOUT) {
            Ok(applied) => match sync_gen_of(&applied) {
                Some(generation) => tuple(vec![atom("ok"), uint(generation)]),
                None => atom("ok"),
            },
            Err(ControlError::Rejected(r)) => err("rejected", r.to_string()),
            Err(ControlError::NotLeader { .. }) => err("not_leader", "leadership moved".into()),
            Err(e) => err("unknown", e.to_string()),
        }
    }

    /// This node's replica of `shard`, if it holds one (replicated clusters only).
    pub(super) fn replica(&self, shard: usize) -> Option<Arc<ReplicaHere>> {
        super::lock(&self.replicas).get(&shard).cloned()
    }
}

/// The control plane's part in this node's replica of one shard.
struct ClusterPairControl {
    shard: usize,
    shared: Weak<Shared>,
    /// The control id of the partner's node (the backup, when this replica is primary).
    partner: NodeId,
}

impl PairControl for ClusterPairControl {
    fn mark_out_of_sync(&self, epoch: u64) -> Result<u64, String> {
        let sh = self.shared.upgrade().ok_or("the node is stopping")?;
        let shard = u32::try_from(self.shard).unwrap_or(u32::MAX);
        match sh.propose(&Command::MarkOutOfSync { shard, epoch }, PROPOSE_TIMEOUT) {
            Ok(Some(generation)) => Ok(generation),
            Ok(None) => Err("the control log did not say the new sync generation".into()),
            Err(e) => Err(e.to_string()),
        }
    }

    fn mark_in_sync(&self, epoch: u64, sync_gen: u64) -> Result<bool, String> {
        let sh = self.shared.upgrade().ok_or("the node is stopping")?;
        let shard = u32::try_from(self.shard).unwrap_or(u32::MAX);
        let command = Command::MarkInSync {
            shard,
            node: self.partner,
            epoch,
            sync_gen,
        };
        match sh.propose(&command, PROPOSE_TIMEOUT) {
            Ok(_) => Ok(true),
            Err(ProposeError::Rejected(w)) => Err(w),
            Err(ProposeError::Unknown(_)) => Ok(false),
        }
    }

    fn in_sync(&self, epoch: u64) -> bool {
        // As the roles thread last copied it from the view into the route (asked after every
        // commit, so no clone of the whole view here; a stale answer only re-sends a mark).
        self.shared.upgrade().is_some_and(|sh| {
            sh.routes.get(self.shard).is_some_and(|r| {
                r.epoch.load(Ordering::Relaxed) == epoch && r.in_sync.load(Ordering::Relaxed)
            })
        })
    }
}

/// A replicated shard with a replica on this node, as the allocator sees it: its calls go to
/// this replica while it is primary, else to the primary's node.
struct RoutedShard {
    index: usize,
    me: String,
    here: Arc<ReplicaHere>,
    route: Arc<Route>,
    peer: PeerShard,
}

impl RoutedShard {
    fn here_serves(&self) -> bool {
        self.route.is(&self.me)
    }
}

impl ShardEndpoint for RoutedShard {
    fn call(
        &self,
        request: ClientCall,
        timeout: Duration,
    ) -> Result<Result<ClientReply, FreqError>, OtpError> {
        if !self.route.known.load(Ordering::Acquire) {
            return Ok(Err(FreqError::ShardUnreachable {
                shard: self.index,
                reason: "this node has not yet learned from the control plane which node \
                         serves it (it needs a majority of the cluster's nodes)"
                    .into(),
            }));
        }
        if self.here_serves() {
            self.here.handle.client_call(request, timeout)
        } else {
            self.peer.call(request, timeout)
        }
    }

    fn generation(&self) -> u64 {
        self.here.handle.generation()
    }

    fn wait_for_generation(&self, generation: u64, _timeout: Duration) -> Result<u64, OtpError> {
        Ok(generation)
    }

    fn wait_ready(&self, _timeout: Duration) -> Result<(), OtpError> {
        Ok(())
    }

    fn health(&self) -> Health {
        let (role, in_sync_here, applied) = self.here.handle.state(self.here.replica);
        let serving = self.here_serves();
        let alive = if serving {
            role == Role::Primary
        } else {
            !self.peer.load.unreachable.load(Ordering::Relaxed)
        };
        let (applied, lag) = if serving {
            (applied, self.here.link.lag_behind(applied))
        } else {
            (0, None)
        };
        let mut replicas = self.route.replicas(alive, applied, lag);
        let restarts = self.here.handle.generation().saturating_sub(1);
        if let Some(mine) = replicas
            .iter_mut()
            .find(|r| r.node.as_deref() == Some(&self.me))
        {
            mine.restarts = restarts;
            if !serving {
                mine.role = role;
            }
        }
        Health {
            restarts,
            alive,
            replicas,
            in_sync: if serving {
                in_sync_here
            } else {
                self.route.in_sync.load(Ordering::Relaxed)
            },
            node: Some(self.route.node()),
            epoch: Some(self.route.epoch.load(Ordering::Relaxed)),
        }
    }

    fn inject(&self, fault: Fault, timeout: Duration) -> Result<(), FreqError> {
        let here = matches!(fault, Fault::PanicBackup) != self.here_serves();
        let r = if here {
            self.here
                .handle
                .client_call(ClientCall::Inject(fault), timeout)
        } else {
            self.peer.call(ClientCall::Inject(fault), timeout)
        };
        match r {
            Ok(r) => r.map(|_| ()),
            Err(e) => Err(FreqError::ShardFailed {
                shard: self.index,
                reason: e.to_string(),
            }),
        }
    }

    fn held(&self, owner: &str, timeout: Duration) -> Option<Result<Vec<u64>, FreqError>> {
        if self.here.serves(&self.route, &self.me) {
            // The primary's tables are here.
            None
        } else if self.here_serves() {
            // The control log names this node, but its replica does not serve (yet): its
            // tables may be behind, so they are not read.
            Some(Err(FreqError::ShardUnreachable {
                shard: self.index,
                reason: "its replica on this node is not serving yet".into(),
            }))
        } else {
            self.peer.held(owner, timeout)
        }
    }
}

/// The allocator's view of the cluster (`freq`'s [`crate::freq::Membership`] seam).
pub(super) struct Member {
    pub(super) shared: Arc<Shared>,
    pub(super) call_timeout: Duration,
}

impl Member {
    fn peer(&self, i: usize, shared: Arc<ShardShared>) -> PeerShard {
        let s2 = &self.shared;
        let route = s2.routes[i].clone();
        let load = Arc::new(PeerLoad {
            route: route.clone(),
            shared,
            unreachable: std::sync::atomic::AtomicBool::new(false),
            stamp: std::sync::Mutex::new(None),
        });
        super::lock(&s2.peers).insert(i, load.clone());
        PeerShard {
            index: i,
            ranges: s2.ranges.get(i).cloned().unwrap_or_default(),
            fingerprint: s2.fingerprint.clone(),
            route,
            calls: s2.calls.clone(),
            load,
        }
    }
}

impl crate::freq::Membership for Member {
    fn replica_here(&self, shard: usize) -> Option<usize> {
        self.shared.layout.replica_on(shard, &self.shared.me)
    }

    fn remote(&self, shard: usize, shared: Arc<ShardShared>) -> Box<dyn ShardEndpoint> {
        Box::new(self.peer(shard, shared))
    }

    fn replica(&self, shard: usize, local: LocalReplica) -> crate::freq::ReplicaWiring {
        let sh = &self.shared;
        let layout = &sh.layout;
        let partner = if local.replica == 0 {
            layout.backup_of(shard)
        } else {
            layout.node_of(shard)
        }
        .unwrap_or("?")
        .to_string();
        let link = Arc::new(NetworkLink {
            shard,
            partner: partner.clone(),
            fingerprint: sh.fingerprint.clone(),
            calls: sh.calls.clone(),
            handle: local.handle.clone(),
            timeout: self.call_timeout,
            acked: AtomicU64::new(u64::MAX),
        });
        let here = Arc::new(ReplicaHere {
            replica: local.replica,
            handle: local.handle,
            partner: partner.clone(),
            link: link.clone(),
            seen_generation: AtomicU64::new(0),
            nudged: std::sync::Mutex::new(None),
            lost_state: std::sync::atomic::AtomicBool::new(false),
        });
        super::lock(&sh.replicas).insert(shard, here.clone());
        let control = Arc::new(ClusterPairControl {
            shard,
            shared: Arc::downgrade(sh),
            partner: control_id(layout, &partner).unwrap_or(0),
        });
        let endpoint = RoutedShard {
            index: shard,
            me: sh.me.clone(),
            here,
            route: sh.routes[shard].clone(),
            peer: self.peer(shard, local.shared),
        };
        crate::freq::ReplicaWiring {
            link,
            control,
            endpoint: Box::new(endpoint),
        }
    }
}

/// The roles thread: follows the control view until `stop` is sent or dropped; says on
/// `settled` when it first applied a bootstrapped view.
pub(super) fn roles_loop(sh: &Shared, stop: &Receiver<()>, settled: &std::sync::mpsc::Sender<()>) {
    let mut version = 0;
    let mut said = false;
    loop {
        match stop.try_recv() {
            Err(TryRecvError::Empty) => {}
            _ => return,
        }
        let Some(control) = sh.control_node() else {
            if stop.recv_timeout(ROLES_INTERVAL).is_ok() {
                return;
            }
            continue;
        };
        if let Ok(v) = control.wait_change(version, Instant::now() + ROLES_INTERVAL) {
            version = v.version;
        }
        if roles_round(sh, &control) && !said {
            said = true;
            let _ = settled.send(());
        }
    }
}

/// One look at the control view: routes, this node's replicas' roles, and (on the leader) the
/// promotions of backups whose primary's node is gone. Returns whether the view was
/// bootstrapped (so routes are known).
fn roles_round(sh: &Shared, control: &ControlNode) -> bool {
    let view = control.view();
    if !view.state.is_bootstrapped() {
        return false;
    }
    let me = control.id();
    for (s, route) in sh.routes.iter().enumerate() {
        let Some(c) = view.state.shard(s as u32) else {
            continue;
        };
        let primary = sh.node_name(c.primary);
        if !route.is(&primary) {
            *route.node.write() = primary;
        }
        route.epoch.store(c.epoch, Ordering::Relaxed);
        *route.backup.write() = c.backup.map(|b| sh.node_name(b));
        route.in_sync.store(c.backup_in_sync, Ordering::Relaxed);
        route.known.store(true, Ordering::Release);
    }
    let lossy = sh.durability != Durability::Sync;
    let replicas: Vec<(usize, Arc<ReplicaHere>)> = super::lock(&sh.replicas)
        .iter()
        .map(|(s, h)| (*s, h.clone()))
        .collect();
    // One ReadIndex per round at most, taken when a replica is to become primary.
    let mut proven: Option<Option<crate::control::ControlState>> = None;
    for (s, here) in replicas {
        let Some(c) = view.state.shard(s as u32).cloned() else {
            continue;
        };
        let shard = s as u32;
        let generation = here.handle.generation();
        if here.seen_generation.swap(generation, Ordering::Relaxed) != generation && lossy {
            // A new instance in `none`/`interval`: what it acknowledged may be gone with the
            // old one. Until the log stops counting it as a copy, it neither serves nor may
            // be promoted.
            here.lost_state.store(true, Ordering::Relaxed);
        }
        let lost = here.lost_state.load(Ordering::Relaxed);
        if lost && !c.backup_in_sync {
            here.lost_state.store(false, Ordering::Relaxed);
        }
        let lost = lost && c.backup_in_sync;
        let partner_up = sh.node.is_connected(&here.partner);
        let partner = if partner_up { Role::Backup } else { Role::Down };
        let (assigned, epoch) = here.handle.assigned();
        if c.primary == me {
            if lost {
                // Its in-sync backup holds what it may have lost: hand the shard over (asked
                // again every round until the log shows it).
                if let (true, Some(b)) = (partner_up, c.backup) {
                    let promote = Command::Promote {
                        shard,
                        node: b,
                        expected_epoch: c.epoch,
                    };
                    let _ = sh.propose(&promote, PROPOSE_TIMEOUT);
                }
                continue;
            }
            if assigned != Some(Role::Primary) || epoch != c.epoch {
                // Prove the view current before serving (a node cut off from the majority
                // never starts serving on what it last knew), and act on the proven state.
                let state = proven
                    .get_or_insert_with(|| control.confirm(CONFIRM_TIMEOUT).ok())
                    .as_ref();
                match state.and_then(|st| st.shard(shard)) {
                    Some(p) if p.primary == me => {
                        here.handle
                            .assign(here.replica, Role::Primary, partner, p.epoch);
                        here.handle.nudge();
                    }
                    // Not proven, or it moved meanwhile: the next round looks again.
                    _ => continue,
                }
            } else if here.handle.assign_partner(here.replica, partner) && partner_up {
                // The backup's node is back: catch it up.
                here.handle.nudge();
            } else if !c.backup_in_sync && partner_up && here.nudge_due() {
                // Not in sync yet (a transfer failed, or its mark went unanswered): try again
                // without waiting for traffic.
                here.handle.nudge();
            }
        } else if c.backup == Some(me) {
            if lost {
                // It must not be promoted with what it has: say so (every round until the log
                // shows it).
                let mark = Command::MarkOutOfSync {
                    shard,
                    epoch: c.epoch,
                };
                let _ = sh.propose(&mark, PROPOSE_TIMEOUT);
            }
            if assigned != Some(Role::Backup) || epoch != c.epoch {
                here.handle
                    .assign(here.replica, Role::Backup, Role::Down, c.epoch);
                // Ask the primary to catch this replica up.
                here.link.nudge();
            }
        }
    }
    if view.role != ControlRole::Leader || !view.confirmed {
        return true;
    }
    for (s, c) in view.state.shards().iter().enumerate() {
        let Some(b) = c.backup else { continue };
        if !c.backup_in_sync || c.primary == me {
            continue;
        }
        let primary = sh.node_name(c.primary);
        if sh.node.is_connected(&primary) {
            continue;
        }
        if b != me && !sh.node.is_connected(&sh.node_name(b)) {
            continue;
        }
        let promote = Command::Promote {
            shard: s as u32,
            node: b,
            expected_epoch: c.epoch,
        };
        if control.propose(&promote, PROPOSE_TIMEOUT).is_ok() {
            eprintln!(
                "freqalloc node {}: shard {s}: its primary {primary} cannot be reached; its \
                 backup {} is primary at epoch {}",
                sh.me,
                sh.node_name(b),
                c.epoch + 1
            );
        }
    }
    true
}
