//! A freqalloc node serving its part of a cluster store (see [`ClusterLayout`]): its own shards
//! run here; every other shard is a [`PeerShard`] endpoint that calls the shard's node over the
//! distribution connection. The allocator on every node is therefore a front end over the whole
//! pool: its strategy picks among all shards of the cluster, from free counts that travel on
//! every reply and in a periodic `loads` message from each node, never from a call to every
//! shard per request. An allocation whose shard's node cannot be reached falls through to the
//! next shard ([`FreqError::ShardUnreachable`]: nothing was sent), so `no_frequency` still means
//! that every reachable shard is empty; a call lost in flight (the node died after the request
//! left) is not retried elsewhere, since it may have happened.
//!
//! The pieces, each on its own thread or handler:
//! - [`PeerCalls`]: calls from this node to its peers' `freq_shard` services (a process whose
//!   handler matches replies to waiting callers; a name monitor per peer fails pending calls at
//!   once when the peer's connection drops);
//! - the shard service (`freq_shard`): answers peers' shard calls on the connection's reader
//!   in `none`/`interval` (a direct call to the local shard), on 16 worker threads taken in turn
//!   in `sync` and with replicas (a call waiting for its flush or its backup never blocks a
//!   reader);
//! - the loads thread (`freq-cluster-loads`): sends this node's shard loads to every connected
//!   peer every [`LOADS_INTERVAL`], and dials, once a second, the peers it has no connection to
//!   (calls never dial: see `PeerCalls::reach`).
//!
//! At start the node says hello to every peer it can reach with its configuration's
//! fingerprint ([`ClusterLayout::fingerprint`]); a peer that answers with another one makes the
//! start fail, naming both, and the node does not serve.
//!
//! With `--replicas 2` every shard also has a backup on the next node, and who is primary moves
//! with the control log: see `cluster/failover.rs` (the replica link over distribution, the
//! roles thread that follows the log, the endpoint that routes a shard to its current primary).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use eetf::{Pid, Term};

use super::error::DistError;
use super::node::{lock, ref_number, Delivery, Node, NodeHandle};
use super::shard_wire::{
    call_term, ok_freqs, parse_call, parse_ok_freqs, parse_result, result_term, SHARD_SERVICE,
};
use super::term::{as_atom, as_list, as_text, as_tuple, as_u64, atom, binary, list, tuple, uint};
use crate::freq::{
    check_client_name, Allocator, ClientCall, ClientReply, ClusterLayout, Fault, FreqError, Health,
    Options, ReplicaStatus, Role, ShardEndpoint, ShardShared,
};

mod failover;

use failover::{roles_loop, Member, ReplicaHere};

/// The owner name a client call carries, if any.
fn call_owner(call: &ClientCall) -> Option<&str> {
    match call {
        ClientCall::Allocate { owner, .. }
        | ClientCall::Deallocate { owner, .. }
        | ClientCall::ReleaseAll { owner } => Some(owner),
        _ => None,
    }
}
use crate::control::{
    Command, ControlConfig, ControlInbox, ControlNode, ControlTransport, ControlView, NodeId,
    Role as ControlRole,
};
use crate::otp::OtpError;

/// How long a node with replicas waits at start for its control plane to say where the shards
/// are served (an election and the log's replay: about a second with a majority up).
const SETTLE_TIMEOUT: Duration = Duration::from_secs(15);

/// How often a node sends its shards' loads to its peers.
pub const LOADS_INTERVAL: Duration = Duration::from_millis(200);
/// Worker threads of the shard service for shard calls: each waits for its call's answer (in
/// `sync` its flush, with replicas its backup's answer too), so the calls waiting at once on
/// one shard, which its server commits as one batch, are at most this many.
const SHARD_WORKERS: usize = 16;
/// Worker threads for a partner's replication calls (apart from the shard calls: a worker
/// waiting for its shard's backup never holds up the backup's side of another shard).
const LINK_WORKERS: usize = 2;
/// All the workers: shard calls, replication calls, then one for control-log proposals.
const ALL_WORKERS: usize = SHARD_WORKERS + LINK_WORKERS + 1;

/// Why a call to a peer failed.
#[derive(Debug)]
pub(crate) enum PeerCallError {
    /// Nothing was sent (the peer could not be reached): safe to try elsewhere.
    NotSent(String),
    /// The request was sent, then the peer's connection or service went away: it may have
    /// been handled.
    Lost(String),
    /// No reply within the timeout: it may have been handled.
    Timeout(String),
}

#[derive(Default)]
struct PeerState {
    /// A name monitor on the peer's shard service is in place (cleared when it fires).
    monitored: bool,
}

type Waiter = SyncSender<Result<Term, PeerCallError>>;

/// Calls from this node to its peers' shard services.
pub(crate) struct PeerCalls {
    node: NodeHandle,
    me: Pid,
    pending: Mutex<HashMap<u64, (String, Waiter)>>,
    peers: Mutex<HashMap<String, PeerState>>,
    /// Called with a peer whose connection or service went away.
    on_peer_gone: OnceLock<PeerGone>,
}

type PeerGone = Box<dyn Fn(&str) + Send + Sync>;

impl PeerCalls {
    /// A caller process on `node`.
    pub(crate) fn start(node: &NodeHandle) -> Arc<PeerCalls> {
        let cell: Arc<OnceLock<std::sync::Weak<PeerCalls>>> = Arc::new(OnceLock::new());
        let c2 = cell.clone();
        let me = node.spawn_process(Arc::new(move |d: Delivery| {
            if let Some(calls) = c2.get().and_then(std::sync::Weak::upgrade) {
                calls.deliver(d);
            }
        }));
        let calls = Arc::new(PeerCalls {
            node: NodeHandle::clone(node),
            me,
            pending: Mutex::new(HashMap::new()),
            peers: Mutex::new(HashMap::new()),
            on_peer_gone: OnceLock::new(),
        });
        let _ = cell.set(Arc::downgrade(&calls));
        calls
    }

    fn deliver(&self, d: Delivery) {
        match d {
            Delivery::Message { msg, .. } => {
                let Some([r, reply]) = as_tuple(&msg) else {
                    return;
                };
                // Only a reference this incarnation made (our node, our creation): a late reply
                // meant for a previous run of this node never matches a call of this one.
                let Some(key) = (match r {
                    Term::Reference(r)
                        if r.node.name == self.me.node.name && r.creation == self.me.creation =>
                    {
                        ref_number(r)
                    }
                    _ => None,
                }) else {
                    return;
                };
                if let Some((_, tx)) = lock(&self.pending).remove(&key) {
                    let _ = tx.try_send(Ok(reply.clone()));
                }
            }
            Delivery::Down { object, reason, .. } => {
                let peer = as_tuple(&object)
                    .and_then(|el| el.get(1))
                    .and_then(as_atom)
                    .map(str::to_string);
                if let Some(peer) = peer {
                    match as_atom(&reason) {
                        // No such name there: what was sent to it was dropped, not handled.
                        Some("noproc") => {
                            let why = format!("node {peer} has no shard service");
                            self.fail_pending(&peer, || PeerCallError::NotSent(why.clone()));
                        }
                        _ => self.peer_gone(&peer),
                    }
                }
            }
            Delivery::NodeDown(peer) => self.peer_gone(&peer),
        }
    }

    /// `peer`'s connection or service is gone: its pending calls fail (they may have been
    /// handled), and its shards are marked unreachable for routing and `status`.
    fn peer_gone(&self, peer: &str) {
        lock(&self.peers)
            .entry(peer.to_string())
            .or_default()
            .monitored = false;
        let why = format!("the connection to node {peer} was lost");
        self.fail_pending(peer, || PeerCallError::Lost(why.clone()));
        if let Some(f) = self.on_peer_gone.get() {
            f(peer);
        }
    }

    /// Fails every call pending on `peer` with `error()`.
    fn fail_pending(&self, peer: &str, error: impl Fn() -> PeerCallError) {
        let gone: Vec<Waiter> = {
            let mut p = lock(&self.pending);
            let keys: Vec<u64> = p
                .iter()
                .filter(|(_, (n, _))| n == peer)
                .map(|(k, _)| *k)
                .collect();
            keys.into_iter()
                .filter_map(|k| p.remove(&k).map(|(_, tx)| tx))
                .collect()
        };
        for tx in gone {
            let _ = tx.try_send(Err(error()));
        }
    }

    /// Dials `peer` (bounded by the node's connect timeout): at start (the hellos) and from the
    /// loads thread, never on a call's path.
    fn dial(&self, peer: &str) -> Result<(), PeerCallError> {
        self.node
            .connect(peer)
            .map_err(|e| PeerCallError::NotSent(e.to_string()))
    }

    /// Checks that `peer` is connected, and monitors its shard service once per connection. A
    /// call never dials: a dial to a stopped peer waits out the connect timeout (the TCP
    /// connect succeeds, the handshake never comes), and every call queued behind it would
    /// wait too. Peers are dialled at start and by the loads thread once a second, and a peer
    /// that starts dials us (its hello), so a connection is there whenever the peer runs.
    fn reach(&self, peer: &str) -> Result<(), PeerCallError> {
        if !self.node.is_connected(peer) {
            return Err(PeerCallError::NotSent(format!(
                "no connection to node {peer} (it is down or cut off; it is dialled again every \
                 second)"
            )));
        }
        let monitor = {
            let mut peers = lock(&self.peers);
            let st = peers.entry(peer.to_string()).or_default();
            !std::mem::replace(&mut st.monitored, true)
        };
        if monitor {
            self.node.monitor_name(&self.me, SHARD_SERVICE, peer);
        }
        Ok(())
    }

    /// Calls `request` on `peer`'s shard service and waits up to `timeout` for the answer.
    pub(crate) fn call(
        &self,
        peer: &str,
        request: &Term,
        timeout: Duration,
    ) -> Result<Term, PeerCallError> {
        self.reach(peer)?;
        let r = self.node.make_ref();
        let key = ref_number(&r).unwrap_or(0);
        let (tx, rx) = mpsc::sync_channel(1);
        lock(&self.pending).insert(key, (peer.to_string(), tx));
        let sent =
            self.node
                .reg_send_call_deferred_noconnect(&self.me, SHARD_SERVICE, peer, &r, request);
        if let Err(e) = sent {
            lock(&self.pending).remove(&key);
            return Err(PeerCallError::NotSent(e.to_string()));
        }
        self.node.flush(peer);
        match rx.recv_timeout(timeout) {
            Ok(r) => r,
            Err(RecvTimeoutError::Timeout) => {
                lock(&self.pending).remove(&key);
                Err(PeerCallError::Timeout(format!(
                    "node {peer} did not answer within {} ms",
                    timeout.as_millis()
                )))
            }
            Err(RecvTimeoutError::Disconnected) => Err(PeerCallError::Lost(format!(
                "the connection to node {peer} was lost"
            ))),
        }
    }

    /// Sends `msg` to `peer`'s shard service (no reply), if connected.
    fn cast(&self, peer: &str, msg: &Term) {
        if self.node.is_connected(peer) {
            let _ = self.node.reg_send(&self.me, SHARD_SERVICE, peer, msg);
        }
    }
}

/// Where a shard is served now: its node (fixed without replicas; with replicas, its primary's
/// node as this node's control plane last applied it), and, with replicas, its epoch, its
/// backup and whether that is in sync. Written by the roles thread (`failover.rs`), read by
/// every call.
pub(crate) struct Route {
    /// The node that holds replica 0 (the layout's placement).
    home: String,
    node: parking_lot::RwLock<String>,
    epoch: std::sync::atomic::AtomicU64,
    backup: parking_lot::RwLock<Option<String>>,
    in_sync: AtomicBool,
    /// How many changes the backup is behind, as the primary's node last said (`u64::MAX`:
    /// unknown).
    lag: std::sync::atomic::AtomicU64,
    /// Whether `node` is known: always without replicas; with replicas once this node's
    /// control plane has applied the placement (until then no call is routed).
    known: AtomicBool,
}

impl Route {
    fn new(node: &str, backup: Option<&str>) -> Arc<Route> {
        Arc::new(Route {
            known: AtomicBool::new(backup.is_none()),
            home: node.to_string(),
            node: parking_lot::RwLock::new(node.to_string()),
            epoch: std::sync::atomic::AtomicU64::new(0),
            backup: parking_lot::RwLock::new(backup.map(str::to_string)),
            in_sync: AtomicBool::new(false),
            lag: std::sync::atomic::AtomicU64::new(u64::MAX),
        })
    }

    /// The node serving the shard now.
    pub(crate) fn node(&self) -> String {
        self.node.read().clone()
    }

    fn is(&self, node: &str) -> bool {
        *self.node.read() == node
    }

    /// With replicas: the shard's two replicas as this node knows them, primary first. The
    /// primary's `applied` is `applied` when it runs here (else 0, not known here); the
    /// backup's lag is `lag` (what the primary last acknowledged, else the primary's report).
    fn replicas(&self, primary_alive: bool, applied: u64, lag: Option<u64>) -> Vec<ReplicaStatus> {
        let Some(backup) = self.backup.read().clone() else {
            return Vec::new();
        };
        let primary = self.node();
        let number = |n: &str| usize::from(n != self.home);
        let lag = lag.or(match self.lag.load(Ordering::Relaxed) {
            u64::MAX => None,
            l => Some(l),
        });
        vec![
            ReplicaStatus {
                replica: number(&primary),
                role: if primary_alive {
                    Role::Primary
                } else {
                    Role::Down
                },
                applied,
                lag: 0,
                restarts: 0,
                node: Some(primary),
            },
            ReplicaStatus {
                replica: number(&backup),
                role: Role::Backup,
                applied: applied.saturating_sub(lag.unwrap_or(0)),
                lag: lag.unwrap_or(0),
                restarts: 0,
                node: Some(backup),
            },
        ]
    }
}

/// What this node knows of a shard served elsewhere: its node, its published load (what routing
/// reads), whether it is reachable. Shared by the shard's endpoint (replies) and the `loads`
/// handler (the node's periodic message).
struct PeerLoad {
    route: Arc<Route>,
    shared: Arc<ShardShared>,
    /// The last call to its node could not be sent, or was lost.
    unreachable: AtomicBool,
    /// The stamp of the load last published.
    stamp: Mutex<Option<Stamp>>,
}

impl PeerLoad {
    /// Publishes a load its node reported with `stamp`, unless a later one is already in (a
    /// `loads` message and a reply may arrive in either order).
    fn publish(&self, free: u64, allocated: u64, stamp: Stamp) {
        let mut last = lock(&self.stamp);
        if last.is_some_and(|l| l.0 == stamp.0 && l.1 >= stamp.1) {
            return;
        }
        *last = Some(stamp);
        self.shared.load().set(free, allocated);
        self.unreachable.store(false, Ordering::Relaxed);
    }

    /// The node cannot be reached: routing by free counts stops proposing the shard until its
    /// node is heard from again.
    fn mark_unreachable(&self) {
        self.unreachable.store(true, Ordering::Relaxed);
        let allocated = self.shared.load().allocated();
        self.shared.load().set(0, allocated);
    }
}

/// When a node read a shard's load: its incarnation (the node's start) and a sequence number
/// it raises at every read, under one lock with the read, so a higher stamp is a later load.
type Stamp = (u64, u64);

fn parse_stamp(t: &Term) -> Option<Stamp> {
    match as_tuple(t)? {
        [i, n] => Some((as_u64(i)?, as_u64(n)?)),
        _ => None,
    }
}

fn stamp_term(s: Stamp) -> Term {
    tuple(vec![uint(s.0), uint(s.1)])
}

/// A shard served by another node of the cluster, as the allocator sees it.
pub(crate) struct PeerShard {
    index: usize,
    /// The frequencies the shard owns (an allocation outside them is no answer).
    ranges: Vec<crate::freq::FreqRange>,
    /// The cluster configuration's fingerprint, sent with every call.
    fingerprint: String,
    route: Arc<Route>,
    calls: Arc<PeerCalls>,
    load: Arc<PeerLoad>,
}

impl PeerShard {
    fn unreachable(&self, why: String) -> FreqError {
        let node = self.route.node();
        // With replicas: what the other replica can do about it.
        let backup = match self.route.backup.read().clone() {
            Some(b) if self.route.in_sync.load(Ordering::Relaxed) => format!(
                "; its backup {b} is in sync and takes over once a majority of the cluster's \
                 nodes promotes it"
            ),
            Some(b) => format!(
                "; its backup {b} is not in sync, so it cannot take over (both copies are out \
                 of reach until {node} comes back)"
            ),
            None => String::new(),
        };
        FreqError::ShardUnreachable {
            shard: self.index,
            reason: format!("its node {node} cannot be reached: {why}{backup}"),
        }
    }

    fn lost(&self, why: String) -> FreqError {
        FreqError::ShardFailed {
            shard: self.index,
            reason: format!(
                "its node {}: {why} (the call may have been handled)",
                self.route.node()
            ),
        }
    }

    /// Calls `request` on the shard's node; the answer's outer error says what travel did.
    fn call_term(&self, request: &Term, timeout: Duration) -> Result<Term, FreqError> {
        if !self.route.known.load(Ordering::Acquire) {
            return Err(FreqError::ShardUnreachable {
                shard: self.index,
                reason: "this node has not yet learned from the control plane which node \
                         serves it (it needs a majority of the cluster's nodes)"
                    .into(),
            });
        }
        match self.calls.call(&self.route.node(), request, timeout) {
            Ok(t) => Ok(t),
            Err(PeerCallError::NotSent(why)) => {
                self.load.mark_unreachable();
                Err(self.unreachable(why))
            }
            Err(PeerCallError::Lost(why)) => {
                self.load.mark_unreachable();
                Err(self.lost(why))
            }
            Err(PeerCallError::Timeout(why)) => {
                // A hint for routing only (its next reply or loads restore it).
                self.load.mark_unreachable();
                Err(self.lost(why))
            }
        }
    }

    fn bad_answer(&self, t: &Term) -> FreqError {
        let text = super::term::short(t);
        FreqError::ShardFailed {
            shard: self.index,
            reason: format!("its node {} answered {text}", self.route.node()),
        }
    }

    /// The service's refusals that say the call was not handled at all: it is still starting,
    /// does not serve the shard, could not read the call, or serves another configuration.
    fn refused(&self, t: &Term) -> Option<FreqError> {
        let el = as_tuple(t)?;
        if el.len() < 2 || as_atom(&el[0]) != Some("error") {
            return None;
        }
        let why = match as_atom(&el[1])? {
            "starting" => "it is still starting".to_string(),
            "not_here" => "it does not serve this shard (another layout?)".to_string(),
            "badarg" => "it could not read the call".to_string(),
            "not_primary" => "it is not the shard's primary now".to_string(),
            "layout_mismatch" => format!(
                "it serves another cluster configuration (its fingerprint {}, ours {})",
                el.get(2).and_then(as_text).unwrap_or_default(),
                self.fingerprint
            ),
            _ => return None,
        };
        Some(self.unreachable(why))
    }
}

impl ShardEndpoint for PeerShard {
    fn call(
        &self,
        request: ClientCall,
        timeout: Duration,
    ) -> Result<Result<ClientReply, FreqError>, OtpError> {
        let t = tuple(vec![
            atom("shard_call"),
            uint(self.index as u64),
            call_term(&request),
            binary(self.fingerprint.as_bytes()),
        ]);
        let answer = match self.call_term(&t, timeout) {
            Ok(a) => a,
            Err(e) => return Ok(Err(e)),
        };
        if let Some(e) = self.refused(&answer) {
            return Ok(Err(e));
        }
        let parsed = match as_tuple(&answer) {
            Some([result, free, allocated, stamp]) => {
                match (as_u64(free), as_u64(allocated), parse_stamp(stamp)) {
                    (Some(f), Some(a), Some(st)) => {
                        self.load.publish(f, a, st);
                        parse_result(result, &request, self.index)
                    }
                    _ => None,
                }
            }
            _ => None,
        };
        // A frequency outside this shard's ranges is no answer to this call.
        if let Some(Ok(ClientReply::Allocated(f))) = &parsed {
            if !self.ranges.iter().any(|r| r.first <= *f && *f <= r.last) {
                return Ok(Err(self.bad_answer(&answer)));
            }
        }
        Ok(parsed.unwrap_or_else(|| Err(self.bad_answer(&answer))))
    }

    fn generation(&self) -> u64 {
        1
    }

    fn wait_for_generation(&self, generation: u64, _timeout: Duration) -> Result<u64, OtpError> {
        // Restarts of a shard on another node are its node's business: nothing to wait for.
        Ok(generation)
    }

    fn wait_ready(&self, timeout: Duration) -> Result<(), OtpError> {
        match self.call_term(&atom("status"), timeout) {
            Ok(_) => Ok(()),
            Err(_) => Err(OtpError::Timeout),
        }
    }

    fn health(&self) -> Health {
        let epoch = self.route.epoch.load(Ordering::Relaxed);
        let alive = !self.load.unreachable.load(Ordering::Relaxed);
        Health {
            restarts: 0,
            alive,
            replicas: self.route.replicas(alive, 0, None),
            in_sync: self.route.in_sync.load(Ordering::Relaxed),
            node: Some(self.route.node()),
            // With replicas (the control plane gives every shard an epoch from 1).
            epoch: (epoch > 0).then_some(epoch),
        }
    }

    fn inject(&self, fault: Fault, timeout: Duration) -> Result<(), FreqError> {
        match self.call(ClientCall::Inject(fault), timeout) {
            Ok(r) => r.map(|_| ()),
            Err(e) => Err(self.lost(e.to_string())),
        }
    }

    fn held(&self, owner: &str, timeout: Duration) -> Option<Result<Vec<u64>, FreqError>> {
        let t = tuple(vec![
            atom("held"),
            uint(self.index as u64),
            binary(owner.as_bytes()),
            binary(self.fingerprint.as_bytes()),
        ]);
        Some(match self.call_term(&t, timeout) {
            Ok(a) => match self.refused(&a) {
                Some(e) => Err(e),
                None => parse_ok_freqs(&a, self.index).unwrap_or_else(|| Err(self.bad_answer(&a))),
            },
            Err(e) => Err(e),
        })
    }
}

/// A job for the shard service's workers: a call to answer.
struct Job {
    from: Pid,
    reference: Term,
    request: Term,
}

/// The shared part of a cluster node.
struct Shared {
    node: NodeHandle,
    me: String,
    layout: ClusterLayout,
    fingerprint: String,
    alloc: OnceLock<Arc<Allocator>>,
    /// The endpoints of the shards served elsewhere, by shard index (to publish loads).
    peers: Mutex<HashMap<usize, Arc<PeerLoad>>>,
    calls: Arc<PeerCalls>,
    /// This node's start (for [`Stamp`]s), and the last stamp's sequence number.
    incarnation: u64,
    stamps: Mutex<u64>,
    /// The control plane's node (Raft over these connections), once started; taken at stop.
    control: Mutex<Option<Arc<ControlNode>>>,
    /// Where peers' Raft messages go.
    control_inbox: OnceLock<ControlInbox>,
    /// Where each shard is served now (fixed without replicas; moved by the roles thread).
    routes: Vec<Arc<Route>>,
    /// Each shard's ranges (an allocation outside them is no answer).
    ranges: Vec<Vec<crate::freq::FreqRange>>,
    /// With replicas: this node's replicas, by shard.
    replicas: Mutex<HashMap<usize, Arc<ReplicaHere>>>,
    /// The store's durability.
    durability: crate::freq::Durability,
    /// How long a call to a local shard may take.
    call_timeout: Duration,
}

impl Shared {
    /// Answers one request of the shard service.
    fn answer(&self, request: &Term) -> Term {
        let Some(alloc) = self.alloc.get() else {
            return tuple(vec![atom("error"), atom("starting")]);
        };
        if as_atom(request) == Some("status") {
            return self.status(alloc);
        }
        let el = as_tuple(request).unwrap_or(&[]);
        match (el.first().and_then(as_atom), el.len()) {
            (Some("shard_call" | "held"), 4) | (Some("link"), 5) | (Some("control_propose"), 3)
                if el.last().and_then(as_text).as_deref() != Some(&self.fingerprint) =>
            {
                tuple(vec![
                    atom("error"),
                    atom("layout_mismatch"),
                    binary(self.fingerprint.as_bytes()),
                ])
            }
            (Some("shard_call"), 4) => {
                let shard = as_u64(&el[1]).and_then(|s| usize::try_from(s).ok());
                let call = parse_call(&el[2]);
                // Owners come from peers (or a shell): the same names a local caller may use.
                if let Some(Err(e)) = call.as_ref().and_then(call_owner).map(check_client_name) {
                    return tuple(vec![
                        result_term(&Err(e)),
                        uint(0),
                        uint(0),
                        stamp_term((0, 0)),
                    ]);
                }
                match (shard, call) {
                    (Some(s), Some(call)) if self.replica(s).is_some() || alloc.is_local(s) => {
                        let r = match self.replica(s) {
                            // Only this node's replica, and only while it serves: a front end
                            // that routed here from an older view is told so (it is
                            // unreachable here, nothing was done), never forwarded on.
                            Some(here) if !here.serves(&self.routes[s], &self.me) => {
                                return tuple(vec![
                                    atom("error"),
                                    atom("not_primary"),
                                    uint(s as u64),
                                ]);
                            }
                            Some(here) => match here.handle.client_call(call, self.call_timeout) {
                                Ok(r) => r,
                                Err(e) => Err(FreqError::ShardFailed {
                                    shard: s,
                                    reason: e.to_string(),
                                }),
                            },
                            None => alloc.call_shard(s, call),
                        };
                        let (free, allocated, stamp) = self.stamped_load(alloc, s);
                        tuple(vec![
                            result_term(&r),
                            uint(free),
                            uint(allocated),
                            stamp_term(stamp),
                        ])
                    }
                    (Some(s), Some(_)) => {
                        tuple(vec![atom("error"), atom("not_here"), uint(s as u64)])
                    }
                    _ => tuple(vec![atom("error"), atom("badarg")]),
                }
            }
            (Some("held"), 4) => {
                let shard = as_u64(&el[1]).and_then(|s| usize::try_from(s).ok());
                match (shard, as_text(&el[2])) {
                    // A replica that does not serve may be behind: its tables are not read.
                    (Some(s), Some(_))
                        if self
                            .replica(s)
                            .is_some_and(|h| !h.serves(&self.routes[s], &self.me)) =>
                    {
                        tuple(vec![atom("error"), atom("not_primary"), uint(s as u64)])
                    }
                    (Some(s), Some(owner)) if alloc.is_local(s) => {
                        ok_freqs(&alloc.held_on(s, &owner))
                    }
                    _ => tuple(vec![atom("error"), atom("badarg")]),
                }
            }
            (Some("link"), 5) => {
                let shard = as_u64(&el[1]).and_then(|s| usize::try_from(s).ok());
                let call = crate::dist::replica_wire::parse_link_call(&el[3]);
                match (shard.and_then(|s| self.replica(s)), as_u64(&el[2]), call) {
                    (Some(here), Some(epoch), Some(call)) => {
                        crate::dist::replica_wire::link_reply_term(&here.handle.link_call(
                            epoch,
                            call,
                            self.call_timeout,
                        ))
                    }
                    (None, ..) => tuple(vec![atom("error"), atom("not_here")]),
                    _ => tuple(vec![atom("error"), atom("badarg")]),
                }
            }
            (Some("control_propose"), 3) => match &el[1] {
                Term::Binary(b) => self.answer_propose(&b.bytes),
                _ => tuple(vec![atom("error"), atom("badarg")]),
            },
            (Some("hello"), 4) => {
                let theirs = as_text(&el[1]).unwrap_or_default();
                if theirs == self.fingerprint {
                    // Each side learns the other's loads in the hello itself, so a node routes
                    // by them from its first request on (not after the first loads message).
                    self.apply_loads(&el[3], as_atom(&el[2]));
                    tuple(vec![atom("ok"), self.my_entries(alloc)])
                } else {
                    let from = as_atom(&el[2]).unwrap_or("?");
                    eprintln!(
                        "freqalloc node {}: refused node {from}: its cluster configuration \
                         (fingerprint {theirs}) differs from ours ({})",
                        self.me, self.fingerprint
                    );
                    tuple(vec![
                        atom("error"),
                        atom("layout_mismatch"),
                        binary(self.fingerprint.as_bytes()),
                    ])
                }
            }
            _ => tuple(vec![atom("error"), atom("badarg")]),
        }
    }

    /// `{ok, Node, [{Shard, Free, Allocated, Alive}]}` for this node's own shards.
    fn status(&self, alloc: &Allocator) -> Term {
        let st = alloc.status();
        let shards = st
            .shards
            .iter()
            .filter(|s| alloc.is_local(s.shard))
            .map(|s| {
                tuple(vec![
                    uint(s.shard as u64),
                    uint(s.free),
                    uint(s.allocated),
                    atom(if s.alive { "true" } else { "false" }),
                ])
            })
            .collect();
        tuple(vec![atom("ok"), atom(&self.me), list(shards)])
    }

    /// A peer's `{loads, Node, [{Shard, Free, Allocated, Stamp}]}`.
    fn loads(&self, msg: &Term) {
        let Some([_, from, entries, fingerprint]) = as_tuple(msg) else {
            return;
        };
        if as_text(fingerprint).as_deref() != Some(&self.fingerprint) {
            return;
        }
        self.apply_loads(entries, as_atom(from));
    }

    /// A peer's `{raft, FromId, Bytes, Fingerprint}`: handed to the control node (a channel
    /// send; a frame that does not decode is dropped, the control node says why).
    fn raft(&self, msg: &Term) {
        let Some([_, from, bytes, fingerprint]) = as_tuple(msg) else {
            return;
        };
        if as_text(fingerprint).as_deref() != Some(&self.fingerprint) {
            return;
        }
        let (Some(from), Term::Binary(b)) = (as_u64(from), bytes) else {
            return;
        };
        if let Some(inbox) = self.control_inbox.get() {
            let _ = inbox.step(from, &b.bytes);
        }
    }

    /// A partner's `{link_nudge, Shard, Fingerprint}`: it (re)joined, so a primary here
    /// catches it up.
    fn link_nudge(&self, msg: &Term) {
        let Some([_, shard, fingerprint]) = as_tuple(msg) else {
            return;
        };
        if as_text(fingerprint).as_deref() != Some(&self.fingerprint) {
            return;
        }
        if let Some(here) = as_u64(shard)
            .and_then(|s| usize::try_from(s).ok())
            .and_then(|s| self.replica(s))
        {
            here.handle.nudge();
        }
    }

    /// The control plane as this node sees it, for `status`.
    pub(crate) fn control_view(&self) -> Option<ControlView> {
        lock(&self.control).as_ref().map(|c| c.view())
    }

    /// Publishes a peer's `[{Shard, Free, Allocated, Stamp}]`.
    fn apply_loads(&self, entries: &Term, from: Option<&str>) {
        let peers = lock(&self.peers);
        for e in as_list(entries).unwrap_or_default() {
            let Some(el) = as_tuple(&e) else { continue };
            let (s, f, a, st, lag) = match el {
                [s, f, a, st] => (s, f, a, st, None),
                [s, f, a, st, lag] => (s, f, a, st, Some(lag)),
                _ => continue,
            };
            let shard = as_u64(s).and_then(|s| usize::try_from(s).ok());
            let p = shard.and_then(|s| peers.get(&s));
            // With replicas, only the shard's primary (as this node's control view has it)
            // speaks for its load: a replaced primary's late message is ignored.
            if let (Some(p), Some(from)) = (p, from) {
                if !p.route.is(from) || from == self.me {
                    continue;
                }
            }
            if let (Some(p), Some(f), Some(a), Some(st)) =
                (p, as_u64(f), as_u64(a), parse_stamp(st))
            {
                p.publish(f, a, st);
                if let Some(lag) = lag {
                    p.route
                        .lag
                        .store(as_u64(lag).unwrap_or(u64::MAX), Ordering::Relaxed);
                }
            }
        }
    }

    /// The shards this node serves now: its own without replicas; with replicas, those whose
    /// primary is its replica.
    fn serving_here(&self) -> Vec<usize> {
        if !self.layout.is_replicated() {
            return self.layout.shards_of(&self.me);
        }
        (0..self.layout.shard_count())
            .filter(|&s| self.routes[s].is(&self.me) && self.replica(s).is_some())
            .collect()
    }

    /// Shard `shard`'s load with its stamp.
    fn stamped_load(&self, alloc: &Allocator, shard: usize) -> (u64, u64, Stamp) {
        let mut seq = lock(&self.stamps);
        *seq += 1;
        let (f, a) = alloc.load_of(shard).unwrap_or((0, 0));
        (f, a, (self.incarnation, *seq))
    }

    /// This node's shards' `[{Shard, Free, Allocated, Stamp}]`.
    fn my_entries(&self, alloc: &Allocator) -> Term {
        list(
            self.serving_here()
                .into_iter()
                .map(|s| {
                    let (f, a, st) = self.stamped_load(alloc, s);
                    let mut e = vec![uint(s as u64), uint(f), uint(a), stamp_term(st)];
                    if let Some(here) = self.replica(s) {
                        let (_, _, applied) = here.handle.state(here.replica);
                        let lag = here.link.lag_behind(applied);
                        e.push(lag.map_or_else(|| atom("undefined"), uint));
                    }
                    tuple(e)
                })
                .collect(),
        )
    }

    /// This node's loads message.
    fn my_loads(&self) -> Option<Term> {
        let alloc = self.alloc.get()?;
        Some(tuple(vec![
            atom("loads"),
            atom(&self.me),
            self.my_entries(alloc),
            binary(self.fingerprint.as_bytes()),
        ]))
    }
}

/// A node's part of a cluster: its allocator (a front end over the whole cluster), its shard
/// service, and its loads thread. Dropping it stops the threads; stop the allocator after.
pub struct ClusterMember {
    shared: Arc<Shared>,
    alloc: Arc<Allocator>,
    service: ServiceGuard,
    stop_loads: Option<Sender<()>>,
    loads: Option<JoinHandle<()>>,
    stop_roles: Option<Sender<()>>,
    roles: Option<JoinHandle<()>>,
}

/// The shard service's process and workers; dropping it ends them.
struct ServiceGuard {
    node: NodeHandle,
    pid: Pid,
    workers: Vec<JoinHandle<()>>,
    senders: Arc<Mutex<Vec<Sender<Job>>>>,
}

impl ServiceGuard {
    /// The workers answer what is queued (their channels closed, they drain and end), then the
    /// process exits (its name goes, peers' monitors fire): no call is failed by a `DOWN` while
    /// it is still being answered.
    fn stop(&mut self) {
        lock(&self.senders).clear();
        for h in self.workers.drain(..) {
            let _ = h.join();
        }
        self.node.exit_process(&self.pid, "shutdown");
    }
}

impl Drop for ServiceGuard {
    fn drop(&mut self) {
        self.stop();
    }
}

impl std::fmt::Debug for ClusterMember {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterMember")
            .field("node", &self.shared.me)
            .field("fingerprint", &self.shared.fingerprint)
            .finish_non_exhaustive()
    }
}

/// Why a cluster member could not start.
fn member_error(e: FreqError) -> DistError {
    DistError::Cluster(e.to_string())
}

impl ClusterMember {
    /// Opens the part of the cluster store at `dir` that `node` serves, starts its shard
    /// service, and says hello to every peer it can reach within `hello_timeout` each: a peer
    /// whose configuration differs makes this fail ([`DistError::Cluster`], naming both
    /// fingerprints), as does a node not in the store's cluster.
    pub fn start(
        node: &Node,
        dir: &Path,
        options: Options,
        hello_timeout: Duration,
    ) -> Result<ClusterMember, DistError> {
        let config = crate::freq::read_config(dir)
            .map_err(|e| member_error(e.into()))?
            .ok_or_else(|| DistError::Cluster(format!("no store at {}", dir.display())))?;
        let layout = config.cluster.clone().ok_or_else(|| {
            DistError::Cluster(format!(
                "the store at {} has no cluster layout (create it with init --nodes)",
                dir.display()
            ))
        })?;
        let fingerprint = ClusterLayout::fingerprint(&config);
        let calls = PeerCalls::start(node);
        let shared = Arc::new(Shared {
            node: NodeHandle::clone(node),
            me: node.name().to_string(),
            layout: layout.clone(),
            fingerprint,
            alloc: OnceLock::new(),
            peers: Mutex::new(HashMap::new()),
            calls: calls.clone(),
            incarnation: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64),
            stamps: Mutex::new(0),
            control: Mutex::new(None),
            control_inbox: OnceLock::new(),
            routes: (0..layout.shard_count())
                .map(|i| Route::new(layout.node_of(i).unwrap_or("?"), layout.backup_of(i)))
                .collect(),
            ranges: (0..config.layout.shard_count())
                .map(|i| config.layout.ranges(i).to_vec())
                .collect(),
            replicas: Mutex::new(HashMap::new()),
            durability: config.durability,
            call_timeout: options.call_timeout,
        });
        // The shard service first (answering "starting" until the allocator is open), so that a
        // peer's hello to this node is answered while this node says hello to it.
        // In `sync` a shard call waits for its flush: on workers, never on a reader.
        // With replicas a shard call waits for its backup on another node: on workers too (a
        // reader waiting on a peer that waits on this reader would never be answered).
        let inline = config.durability != crate::freq::Durability::Sync && !layout.is_replicated();
        let (pid, senders, workers) = start_service(node, &shared, inline)?;
        // From here, dropping `service` stops it again on any error.
        let service = ServiceGuard {
            node: NodeHandle::clone(node),
            pid,
            workers,
            senders,
        };
        let member = Member {
            shared: shared.clone(),
            call_timeout: options.call_timeout,
        };
        let alloc =
            Allocator::open_member(dir, options, node.name(), &member).map_err(member_error)?;
        drop(member);
        // A peer's connection gone: its shards are unreachable until it is heard from again.
        let weak = Arc::downgrade(&shared);
        let _ = calls.on_peer_gone.set(Box::new(move |peer: &str| {
            if let Some(sh) = weak.upgrade() {
                for p in lock(&sh.peers).values().filter(|p| p.route.is(peer)) {
                    p.mark_unreachable();
                }
            }
        }));
        let alloc = Arc::new(alloc);
        let _ = shared.alloc.set(alloc.clone());
        // Hello to every peer that answers; one that disagrees stops this node from serving.
        for peer in layout.nodes().iter().filter(|n| **n != shared.me) {
            let hello = tuple(vec![
                atom("hello"),
                binary(shared.fingerprint.as_bytes()),
                atom(&shared.me),
                shared.my_entries(&alloc),
            ]);
            // Not running (yet): it says hello when it starts.
            if calls.dial(peer).is_err() {
                continue;
            }
            // A peer still starting answers `{error, starting}`: ask again, bounded.
            let deadline = Instant::now() + hello_timeout;
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                match calls.call(peer, &hello, left.max(Duration::from_millis(1))) {
                    Ok(t) => match as_tuple(&t) {
                        Some([ok, entries]) if as_atom(ok) == Some("ok") => {
                            shared.apply_loads(entries, Some(peer));
                            break;
                        }
                        Some([_, r]) if as_atom(r) == Some("starting") && left > Duration::ZERO => {
                            continue
                        }
                        Some([_, r, theirs]) if as_atom(r) == Some("layout_mismatch") => {
                            let theirs = as_text(theirs).unwrap_or_default();
                            alloc.stop();
                            return Err(DistError::Cluster(format!(
                                "node {peer} serves another cluster configuration (its \
                                 fingerprint {theirs}, ours {}): run the same `freqalloc init` \
                                 in every node's directory",
                                shared.fingerprint
                            )));
                        }
                        _ => break,
                    },
                    // Not running yet, or not answering: it says hello when it starts.
                    Err(_) => break,
                }
            }
        }
        start_control(dir, &shared).inspect_err(|_| alloc.stop())?;
        let (tx, rx) = mpsc::channel();
        let s3 = shared.clone();
        let loads = std::thread::Builder::new()
            .name("freq-cluster-loads".into())
            .spawn(move || loads_loop(&s3, &rx))
            .map_err(|e| DistError::io("spawning the cluster loads thread", e))?;
        let (roles_tx, roles_rx) = mpsc::channel();
        let (settled_tx, settled_rx) = mpsc::channel();
        let s4 = shared.clone();
        let roles = if layout.is_replicated() {
            let h = std::thread::Builder::new()
                .name("freq-cluster-roles".into())
                .spawn(move || roles_loop(&s4, &roles_rx, &settled_tx))
                .map_err(|e| DistError::io("spawning the cluster roles thread", e))?;
            // Serve once the control plane has said where every shard is served and given this
            // node's replicas their roles (bounded: a node cut off from the majority starts
            // anyway, and its routes stay unknown until it hears).
            if settled_rx.recv_timeout(SETTLE_TIMEOUT).is_err() {
                eprintln!(
                    "freqalloc node {}: the control plane has not answered within {} s (no \
                     majority of the cluster's nodes reachable yet): every shard answers \
                     unreachable until it does",
                    shared.me,
                    SETTLE_TIMEOUT.as_secs()
                );
            }
            Some(h)
        } else {
            None
        };
        Ok(ClusterMember {
            shared,
            alloc,
            service,
            stop_loads: Some(tx),
            loads: Some(loads),
            stop_roles: Some(roles_tx),
            roles,
        })
    }

    /// The allocator: a front end over every shard of the cluster.
    pub fn allocator(&self) -> Arc<Allocator> {
        self.alloc.clone()
    }

    /// The configuration's fingerprint.
    pub fn fingerprint(&self) -> &str {
        &self.shared.fingerprint
    }

    /// The cluster layout.
    pub fn layout(&self) -> &ClusterLayout {
        &self.shared.layout
    }

    /// A one-line summary of the control plane as this node sees it (for `status`): the leader,
    /// the term, and each shard's primary and epoch once bootstrapped.
    pub fn control_summary(&self) -> Option<String> {
        self.shared.control_summary()
    }

    /// A closure giving [`ClusterMember::control_summary`], for the `frequency` service's
    /// `status` (it holds the member's shared part, not the member).
    pub fn control_summary_fn(&self) -> Arc<dyn Fn() -> Option<String> + Send + Sync> {
        let weak = Arc::downgrade(&self.shared);
        Arc::new(move || weak.upgrade().and_then(|s| s.control_summary()))
    }

    /// Stops the loads thread and the shard service (the allocator is the caller's to stop).
    pub fn stop(&mut self) {
        for tx in [self.stop_roles.take(), self.stop_loads.take()]
            .into_iter()
            .flatten()
        {
            let _ = tx.send(());
        }
        for h in [self.roles.take(), self.loads.take()].into_iter().flatten() {
            let _ = h.join();
        }
        // The control node's thread stops when its last handle goes.
        lock(&self.shared.control).take();
        self.service.stop();
    }
}

impl Drop for ClusterMember {
    fn drop(&mut self) {
        self.stop();
    }
}

type Service = (Pid, Arc<Mutex<Vec<Sender<Job>>>>, Vec<JoinHandle<()>>);

/// The `freq_shard` process and its workers. A caller's calls always go to the same worker, so
/// one front end's calls to one shard are answered in the order sent.
fn start_service(node: &Node, shared: &Arc<Shared>, inline: bool) -> Result<Service, DistError> {
    let senders: Arc<Mutex<Vec<Sender<Job>>>> = Arc::new(Mutex::new(Vec::new()));
    let mut receivers: Vec<Receiver<Job>> = Vec::new();
    for _ in 0..ALL_WORKERS {
        let (tx, rx) = mpsc::channel();
        lock(&senders).push(tx);
        receivers.push(rx);
    }
    let (s2, sh) = (senders.clone(), shared.clone());
    let next = std::sync::atomic::AtomicUsize::new(0);
    let handler = Arc::new(move |d: Delivery| {
        let Delivery::Message { msg, .. } = d else {
            return;
        };
        let Some(el) = as_tuple(&msg) else { return };
        if el.first().and_then(as_atom) == Some("loads") {
            sh.loads(&msg);
            return;
        }
        if el.first().and_then(as_atom) == Some("raft") {
            sh.raft(&msg);
            return;
        }
        if el.first().and_then(as_atom) == Some("link_nudge") {
            sh.link_nudge(&msg);
            return;
        }
        // {'$gen_call', {From, Ref}, Request}
        let (Some("$gen_call"), Some([Term::Pid(from), reference])) =
            (el.first().and_then(as_atom), el.get(1).and_then(as_tuple))
        else {
            return;
        };
        let Some(request) = el.get(2) else { return };
        let tag = as_tuple(request).and_then(|r| r.first()).and_then(as_atom);
        let blocking = matches!(tag, Some("link" | "control_propose"));
        // Replication and control-log requests only from the cluster's own nodes (a shell may
        // read a backup with `dump`).
        let dump = as_tuple(request).and_then(|r| r.get(3)).and_then(as_atom) == Some("dump");
        if blocking && !dump && !sh.layout.has_node(&from.node.name) {
            let reply = tuple(vec![
                reference.clone(),
                tuple(vec![atom("error"), atom("not_member")]),
            ]);
            let _ = sh.node.send_noconnect(from, &reply);
            return;
        }
        if inline && !blocking {
            // Answered here, on the connection's reader (a direct call to the local shard: no
            // hop); the reply leaves with the reader's next flush.
            let reply = tuple(vec![reference.clone(), sh.answer(request)]);
            let _ = sh.node.send_noconnect(from, &reply);
            return;
        }
        // Shard calls round the workers: calls in flight together (each front end's come from
        // its many workers, each waiting for its own answer) are independent, and a shard
        // commits the ones waiting at once as one batch (one flush, one shipment to its backup).
        // Replication calls by shard (one at a time per shard: its primary waits for each).
        let mut h = std::collections::hash_map::DefaultHasher::new();
        let shard = as_tuple(request).and_then(|r| r.get(1));
        let (first, count) = match (tag, shard) {
            (Some("shard_call"), Some(_)) => {
                next.fetch_add(1, Ordering::Relaxed).hash(&mut h);
                (0, SHARD_WORKERS)
            }
            (Some("link"), Some(shard)) => {
                shard.hash(&mut h);
                (SHARD_WORKERS, LINK_WORKERS)
            }
            (Some("control_propose"), _) => (SHARD_WORKERS + LINK_WORKERS, 1),
            _ => {
                from.id.hash(&mut h);
                from.node.name.hash(&mut h);
                (0, SHARD_WORKERS)
            }
        };
        let senders = lock(&s2);
        let w = first + (h.finish() % count as u64) as usize;
        let Some(worker) = senders.get(w) else {
            return;
        };
        let _ = worker.send(Job {
            from: from.clone(),
            reference: reference.clone(),
            request: request.clone(),
        });
    });
    let pid = node.spawn_process(handler);
    let mut workers = Vec::new();
    for (i, rx) in receivers.into_iter().enumerate() {
        let sh = shared.clone();
        let h = std::thread::Builder::new()
            .name(format!("freq-shard-service-{i}"))
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    let answer = sh.answer(&job.request);
                    let reply = tuple(vec![job.reference, answer]);
                    // Never dial a caller that is gone: its call has failed already.
                    let _ = sh.node.send_noconnect(&job.from, &reply);
                }
            })
            .map_err(|e| DistError::io("spawning a shard service worker", e))?;
        workers.push(h);
    }
    node.register_name(SHARD_SERVICE, &pid);
    Ok((pid, senders, workers))
}

/// Every [`LOADS_INTERVAL`]: this node's loads to every connected peer; once a second, an
/// attempt to reach each peer without a connection. Ends when `stop` is sent or dropped.
fn loads_loop(shared: &Shared, stop: &Receiver<()>) {
    let peers: Vec<String> = shared
        .layout
        .nodes()
        .iter()
        .filter(|n| **n != shared.me)
        .cloned()
        .collect();
    let mut last_reach = Instant::now();
    loop {
        match stop.recv_timeout(LOADS_INTERVAL) {
            Err(RecvTimeoutError::Timeout) => {}
            _ => return,
        }
        if let Some(msg) = shared.my_loads() {
            for p in &peers {
                shared.calls.cast(p, &msg);
            }
        }
        shared.bootstrap_control();
        if last_reach.elapsed() >= Duration::from_secs(1) {
            last_reach = Instant::now();
            let connected = shared.node.connected();
            for p in peers.iter().filter(|p| !connected.contains(p)) {
                // Bounded by the node's connect timeout; its failure is remembered for calls.
                let _ = shared.calls.dial(p);
            }
        }
    }
}

/// Carries the control node's messages to peers over the distribution connections, as
/// `{raft, FromId, Bytes, Fingerprint}` to their `freq_shard` (fire and forget; never dials:
/// Raft resends).
struct DistTransport {
    shared: std::sync::Weak<Shared>,
    me: NodeId,
}

impl ControlTransport for DistTransport {
    fn send(&self, to: NodeId, msg: Vec<u8>) {
        let Some(sh) = self.shared.upgrade() else {
            return;
        };
        let Some(peer) = usize::try_from(to)
            .ok()
            .and_then(|i| i.checked_sub(1))
            .and_then(|i| sh.layout.nodes().get(i))
        else {
            return;
        };
        let t = tuple(vec![
            atom("raft"),
            uint(self.me),
            binary(&msg),
            binary(sh.fingerprint.as_bytes()),
        ]);
        sh.calls.cast(peer, &t);
    }
}

/// A node's control id: its place in the cluster's node list, from 1.
fn control_id(layout: &ClusterLayout, node: &str) -> Option<NodeId> {
    layout
        .nodes()
        .iter()
        .position(|n| n == node)
        .map(|i| i as NodeId + 1)
}

/// Opens this node's control node (Raft state in `DIR/control`, ticking every 100 ms) over the
/// distribution connections.
fn start_control(dir: &Path, shared: &Arc<Shared>) -> Result<(), DistError> {
    let me = control_id(&shared.layout, &shared.me)
        .ok_or_else(|| DistError::Cluster(format!("{} is not in the cluster", shared.me)))?;
    let ids: Vec<NodeId> = (1..=shared.layout.nodes().len() as NodeId).collect();
    let transport = Arc::new(DistTransport {
        shared: Arc::downgrade(shared),
        me,
    });
    let control = ControlNode::open(
        &dir.join(CONTROL_DIR),
        ControlConfig::new(me, &ids),
        transport,
    )
    .map_err(|e| DistError::Cluster(format!("the control plane could not start: {e}")))?;
    let _ = shared.control_inbox.set(control.inbox());
    *lock(&shared.control) = Some(Arc::new(control));
    Ok(())
}

/// Where a node keeps its control plane's Raft state, inside its store directory.
pub const CONTROL_DIR: &str = "control";

impl Shared {
    /// As leader of a control log not yet bootstrapped: proposes the cluster's placement (each
    /// shard's primary is its serving node, its backup the next node with replicas, epoch 1,
    /// backups out of sync until their primaries have caught them up). Not waited for: the next
    /// round sees whether it applied.
    fn bootstrap_control(&self) {
        let Some(control) = lock(&self.control).clone() else {
            return;
        };
        let view = control.view();
        if view.role != ControlRole::Leader || view.state.is_bootstrapped() {
            return;
        }
        let shards = (0..self.layout.shard_count())
            .filter_map(|s| {
                let primary = control_id(&self.layout, self.layout.node_of(s)?)?;
                let backup = self
                    .layout
                    .backup_of(s)
                    .and_then(|b| control_id(&self.layout, b));
                Some((primary, backup))
            })
            .collect();
        let _ = control.submit(&Command::Bootstrap { shards });
    }

    fn control_summary(&self) -> Option<String> {
        let v = self.control_view()?;
        let name = |id: NodeId| {
            usize::try_from(id)
                .ok()
                .and_then(|i| i.checked_sub(1))
                .and_then(|i| self.layout.nodes().get(i))
                .cloned()
                .unwrap_or_else(|| format!("node {id}"))
        };
        let leader = v.leader.map_or_else(|| "none".to_string(), name);
        let shards = if v.state.is_bootstrapped() {
            v.state
                .shards()
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    let backup = s.backup.map_or_else(String::new, |b| {
                        let state = if s.backup_in_sync {
                            "in sync"
                        } else {
                            "behind"
                        };
                        format!("({} {state})", name(b))
                    });
                    format!("{i}:{}@e{}{backup}", name(s.primary), s.epoch)
                })
                .collect::<Vec<_>>()
                .join(" ")
        } else {
            "not bootstrapped".to_string()
        };
        Some(format!(
            "control: leader {leader}, term {}, applied {}{}; shards {shards}",
            v.term,
            v.applied,
            if v.confirmed { "" } else { ", unconfirmed" }
        ))
    }
}
