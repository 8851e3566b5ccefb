//! The node driver: one raft-rs [`RawNode`] on its own thread (`freq-control`), fed by one
//! channel (peer messages, proposals, reads, ticks), writing through [`ControlTransport`].
//!
//! Each round of the thread handles the inputs queued, then drains raft-rs's `Ready`: persist
//! (snapshot, entries, hard state) and flush, *then* send, then apply committed entries and
//! answer their proposers. The applied view is published under a mutex with a condvar, so
//! readers wait for a change instead of polling.

use std::collections::HashMap;
use std::path::Path;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use protobuf::Message as _;
use raft::prelude::{Entry, EntryType, Message};
use raft::{RawNode, ReadOnlyOption, StateRole};

use super::error::ControlError;
use super::state::{Applied, Command, ControlState, NodeId};
use super::storage::RaftStorage;
use crate::codec;

/// Where a node's raft messages go: fire and forget (Raft retries what is lost). The integrator
/// implements it over the distribution connections; tests over channels.
pub trait ControlTransport: Send + Sync {
    /// Sends one encoded raft message to node `to`. Must not block for long, and must not call
    /// back into the sending node synchronously in a way that waits for it.
    fn send(&self, to: NodeId, msg: Vec<u8>);
}

/// How the node's clock advances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ticks {
    /// The node ticks itself at this interval.
    Every(Duration),
    /// Only [`ControlNode::tick`] advances the clock (deterministic tests).
    Manual,
}

/// The settings of one control node.
#[derive(Debug, Clone)]
pub struct ControlConfig {
    /// This node's id (non-zero, one of `peers`).
    pub id: NodeId,
    /// Every voter of the cluster, this node included. All nodes get the same set.
    pub peers: Vec<NodeId>,
    /// The clock: every 100 ms by default.
    pub ticks: Ticks,
    /// Ticks without a leader before a follower campaigns (randomised up to twice this), and the
    /// window of the lease check. Default 10.
    pub election_tick: usize,
    /// Ticks between a leader's heartbeats. Default 2.
    pub heartbeat_tick: usize,
    /// Take a snapshot and drop the log once this many entries are applied past the last one.
    /// Default 1000.
    pub compact_after: u64,
}

impl ControlConfig {
    /// The defaults for node `id` of a cluster of `peers`.
    pub fn new(id: NodeId, peers: &[NodeId]) -> Self {
        ControlConfig {
            id,
            peers: peers.to_vec(),
            ticks: Ticks::Every(Duration::from_millis(100)),
            election_tick: 10,
            heartbeat_tick: 2,
            compact_after: 1000,
        }
    }

    /// The same, ticked only by [`ControlNode::tick`].
    pub fn manual_ticks(mut self) -> Self {
        self.ticks = Ticks::Manual;
        self
    }
}

/// A node's Raft role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Follows a leader (or waits for one).
    Follower,
    /// Asks whether it could win an election (pre-vote), without raising the term.
    PreCandidate,
    /// Campaigns for votes.
    Candidate,
    /// Leads: the only role that accepts proposals.
    Leader,
}

impl From<StateRole> for Role {
    fn from(r: StateRole) -> Self {
        match r {
            StateRole::Follower => Role::Follower,
            StateRole::PreCandidate => Role::PreCandidate,
            StateRole::Candidate => Role::Candidate,
            StateRole::Leader => Role::Leader,
        }
    }
}

/// What a node has applied and knows, as of one moment.
#[derive(Debug, Clone)]
pub struct ControlView {
    /// The state machine after the last applied entry.
    pub state: ControlState,
    /// The index of the last applied entry.
    pub applied: u64,
    /// The leader this node knows of.
    pub leader: Option<NodeId>,
    /// This node's role.
    pub role: Role,
    /// This node's term.
    pub term: u64,
    /// The index of this node's last snapshot: its log holds only the entries after it.
    pub snapshot: u64,
    /// The lease: as leader, a quorum answered within the last `election_tick` ticks; as
    /// follower, the leader was heard within them. A node without it must not act on the view
    /// (a partitioned node stops allocating). [`ControlNode::confirm`] is the strict check.
    pub confirmed: bool,
    /// Bumped on every change of the fields above; see [`ControlNode::wait_change`].
    pub version: u64,
    /// Whether the node's thread still runs.
    pub running: bool,
    /// Why the thread stopped, if it failed (storage errors stop the node).
    pub failure: Option<String>,
}

/// The most inputs one round of the thread handles before it drains the Ready.
const ROUND_INPUTS: usize = 256;

type ProposalReply = Sender<Result<Applied, ControlError>>;
type ReadReply = Sender<Result<ControlState, ControlError>>;

enum Input {
    Message(Box<Message>),
    Propose { data: Vec<u8>, reply: ProposalReply },
    Read { reply: ReadReply },
    Tick,
    Campaign,
    Sync(Sender<u64>),
    Stop,
}

/// A cloneable handle that feeds peers' raft messages to one node (give it to the transport's
/// receiving side). It outlives the node harmlessly: steps then fail with `Stopped`.
#[derive(Clone)]
pub struct ControlInbox {
    id: NodeId,
    peers: Arc<[NodeId]>,
    tx: Sender<Input>,
}

impl ControlInbox {
    /// The id of the node this inbox feeds.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// Hands one encoded raft message from node `from` to the node. A frame that does not
    /// decode, claims another sender, is addressed elsewhere, comes from a non-member or is of
    /// a node-local type is refused with [`ControlError::BadMessage`]; the node is unaffected.
    pub fn step(&self, from: NodeId, msg: &[u8]) -> Result<(), ControlError> {
        let bad = |reason: String| ControlError::BadMessage { from, reason };
        let m = Message::parse_from_bytes(msg).map_err(|e| bad(e.to_string()))?;
        if m.from != from {
            return Err(bad(format!("the frame claims to be from node {}", m.from)));
        }
        if from == self.id || !self.peers.contains(&from) {
            return Err(bad("not a peer of this node".into()));
        }
        if m.to != self.id {
            return Err(bad(format!("addressed to node {}", m.to)));
        }
        if raft::raw_node::is_local_msg(m.get_msg_type()) {
            return Err(bad(format!("{:?} is node-local", m.get_msg_type())));
        }
        self.tx
            .send(Input::Message(Box::new(m)))
            .map_err(|_| ControlError::Stopped)
    }
}

/// A proposal on its way: [`Proposal::wait`] gives the apply result.
#[must_use = "a proposal's outcome is only known by waiting for it"]
pub struct Proposal {
    rx: Receiver<Result<Applied, ControlError>>,
}

impl Proposal {
    /// Waits up to `timeout` for the entry to be applied on this node. `TimedOut` leaves the
    /// outcome unknown; `Stopped` means the node stopped first.
    pub fn wait(self, timeout: Duration) -> Result<Applied, ControlError> {
        recv(&self.rx, timeout)?
    }
}

fn recv<T>(rx: &Receiver<T>, timeout: Duration) -> Result<T, ControlError> {
    rx.recv_timeout(timeout).map_err(|e| match e {
        RecvTimeoutError::Timeout => ControlError::TimedOut,
        RecvTimeoutError::Disconnected => ControlError::Stopped,
    })
}

struct Shared {
    view: Mutex<ControlView>,
    changed: Condvar,
}

/// One member of the control cluster: a handle to its thread. Dropping it stops and joins the
/// thread; the sled directory keeps its state for the next [`ControlNode::open`].
pub struct ControlNode {
    inbox: ControlInbox,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl ControlNode {
    /// Opens the node's storage in `dir` (created on first use, restored after) and starts its
    /// thread. Messages go out through `transport`.
    pub fn open(
        dir: &Path,
        config: ControlConfig,
        transport: Arc<dyn ControlTransport>,
    ) -> Result<ControlNode, ControlError> {
        let mut peers = config.peers.clone();
        peers.sort_unstable();
        peers.dedup();
        if config.id == 0 || !peers.contains(&config.id) {
            return Err(ControlError::Config(format!(
                "node id {} is not one of the peers {peers:?}",
                config.id
            )));
        }
        let mut store = RaftStorage::open(dir)?;
        store.initialize(&peers)?;
        let (applied, state) = match store.snapshot_state() {
            (0, _) => (0, ControlState::new(&peers)),
            (index, data) => (index, codec::decode(data)?),
        };
        let raft_config = raft::Config {
            id: config.id,
            election_tick: config.election_tick,
            heartbeat_tick: config.heartbeat_tick,
            applied,
            check_quorum: true,
            pre_vote: true,
            read_only_option: ReadOnlyOption::Safe,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            ..Default::default()
        };
        raft_config.validate()?;
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let term = store.hard_state().term;
        let raw = RawNode::new(&raft_config, store, &logger)?;
        let shared = Arc::new(Shared {
            view: Mutex::new(ControlView {
                state: state.clone(),
                applied,
                leader: None,
                role: Role::Follower,
                term,
                snapshot: applied,
                confirmed: false,
                version: 0,
                running: true,
                failure: None,
            }),
            changed: Condvar::new(),
        });
        let (tx, rx) = mpsc::channel();
        let quorum = peers.len() / 2 + 1;
        let inbox = ControlInbox {
            id: config.id,
            peers: peers.into(),
            tx,
        };
        let mut driver = Driver {
            raw,
            state,
            applied,
            transport,
            shared: shared.clone(),
            pending: HashMap::new(),
            reads: HashMap::new(),
            reads_waiting: Vec::new(),
            next_id: 0,
            ticks: 0,
            last_heard: HashMap::new(),
            handled: 0,
            quorum,
            election_tick: config.election_tick as u64,
            compact_after: config.compact_after.max(1),
            last_lead: (StateRole::Follower, 0),
            answers: Vec::new(),
        };
        let tick = config.ticks;
        let thread = std::thread::Builder::new()
            .name("freq-control".into())
            .spawn(move || {
                let result = driver.run(&rx, tick);
                driver.stopped(result.err());
            })
            .map_err(ControlError::Spawn)?;
        Ok(ControlNode {
            inbox,
            shared,
            thread: Some(thread),
        })
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.inbox.id
    }

    /// A handle that feeds peers' messages to this node.
    pub fn inbox(&self) -> ControlInbox {
        self.inbox.clone()
    }

    /// Hands one peer message to the node; see [`ControlInbox::step`].
    pub fn step(&self, from: NodeId, msg: &[u8]) -> Result<(), ControlError> {
        self.inbox.step(from, msg)
    }

    fn send(&self, input: Input) -> Result<(), ControlError> {
        self.inbox.tx.send(input).map_err(|_| ControlError::Stopped)
    }

    /// Advances the node's clock by one tick (the only clock in [`Ticks::Manual`]).
    pub fn tick(&self) -> Result<(), ControlError> {
        self.send(Input::Tick)
    }

    /// Starts an election now (pre-vote first) instead of waiting for the election timeout.
    pub fn campaign(&self) -> Result<(), ControlError> {
        self.send(Input::Campaign)
    }

    /// Proposes `command` without waiting. Only the leader accepts: elsewhere the proposal is
    /// answered [`ControlError::NotLeader`] with the leader it knows.
    pub fn submit(&self, command: &Command) -> Result<Proposal, ControlError> {
        let data = codec::encode(command)?;
        let (reply, rx) = mpsc::channel();
        self.send(Input::Propose { data, reply })?;
        Ok(Proposal { rx })
    }

    /// Proposes `command` and waits up to `timeout` for it to apply here: the command's
    /// [`Applied`], or [`ControlError::Rejected`] if the state machine refused it.
    pub fn propose(&self, command: &Command, timeout: Duration) -> Result<Applied, ControlError> {
        self.submit(command)?.wait(timeout)
    }

    /// Proves the view current (Raft ReadIndex, safe mode): the leader confirms with a quorum
    /// that it still leads, and this node waits until it has applied up to the leader's commit
    /// index at that moment. Fails with `NotLeader` when no leader is known, `SteppedDown` /
    /// `NotLeader` when leadership changes meanwhile, or `TimedOut` (a minority side).
    pub fn confirm(&self, timeout: Duration) -> Result<ControlState, ControlError> {
        let (reply, rx) = mpsc::channel();
        self.send(Input::Read { reply })?;
        recv(&rx, timeout)?
    }

    /// The lease (see [`ControlView::confirmed`]): cheap, no messages.
    pub fn confirmed_within(&self) -> bool {
        self.shared.view.lock().confirmed
    }

    /// The current view.
    pub fn view(&self) -> ControlView {
        self.shared.view.lock().clone()
    }

    /// Waits until the view's version is above `version`, or `deadline` (`TimedOut`).
    pub fn wait_change(
        &self,
        version: u64,
        deadline: Instant,
    ) -> Result<ControlView, ControlError> {
        self.wait_for(deadline, |v| v.version > version)
    }

    /// Waits up to `timeout` until entry `index` is applied here.
    pub fn wait_applied(&self, index: u64, timeout: Duration) -> Result<ControlView, ControlError> {
        self.wait_for(Instant::now() + timeout, |v| v.applied >= index)
    }

    /// Waits until `done(view)` holds, or `deadline` (`TimedOut`), or the node stops.
    pub fn wait_for(
        &self,
        deadline: Instant,
        mut done: impl FnMut(&ControlView) -> bool,
    ) -> Result<ControlView, ControlError> {
        let mut view = self.shared.view.lock();
        loop {
            if done(&view) {
                return Ok(view.clone());
            }
            if !view.running {
                return Err(ControlError::Stopped);
            }
            if self
                .shared
                .changed
                .wait_until(&mut view, deadline)
                .timed_out()
            {
                return Err(ControlError::TimedOut);
            }
        }
    }

    /// Waits until the node has handled every input queued before this call (and sent what it
    /// caused); returns how many peer messages it has handled in all. A simulated network is
    /// quiet when a round of `sync` over every node leaves every count unchanged.
    pub fn sync(&self) -> Result<u64, ControlError> {
        let (reply, rx) = mpsc::channel();
        self.send(Input::Sync(reply))?;
        rx.recv().map_err(|_| ControlError::Stopped)
    }
}

impl Drop for ControlNode {
    fn drop(&mut self) {
        let _ = self.inbox.tx.send(Input::Stop);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct PendingProposal {
    context: Vec<u8>,
    reply: ProposalReply,
}

/// The thread's side: the raft node and the applied state.
struct Driver {
    raw: RawNode<RaftStorage>,
    state: ControlState,
    applied: u64,
    transport: Arc<dyn ControlTransport>,
    shared: Arc<Shared>,
    /// Proposals by the log index their entry took.
    pending: HashMap<u64, PendingProposal>,
    /// ReadIndex requests by context, before the read state arrives...
    reads: HashMap<u64, ReadReply>,
    /// ... and after, waiting for their index to be applied.
    reads_waiting: Vec<(u64, ReadReply)>,
    next_id: u64,
    ticks: u64,
    /// The tick at which each peer was last heard at our term.
    last_heard: HashMap<NodeId, u64>,
    handled: u64,
    quorum: usize,
    election_tick: u64,
    compact_after: u64,
    last_lead: (StateRole, u64),
    /// Replies to send once the view is published.
    answers: Vec<Box<dyn FnOnce() + Send>>,
}

impl Driver {
    fn run(&mut self, rx: &Receiver<Input>, ticks: Ticks) -> Result<(), ControlError> {
        let mut next_tick = match ticks {
            Ticks::Every(d) => Some((d, Instant::now() + d)),
            Ticks::Manual => None,
        };
        let mut syncs = Vec::new();
        // Entries committed before a restart apply now, not at the first input.
        self.on_ready()?;
        self.publish();
        loop {
            let first = match next_tick {
                None => match rx.recv() {
                    Ok(input) => Some(input),
                    Err(_) => return Ok(()),
                },
                Some((_, at)) => {
                    match rx.recv_timeout(at.saturating_duration_since(Instant::now())) {
                        Ok(input) => Some(input),
                        Err(RecvTimeoutError::Timeout) => None,
                        Err(RecvTimeoutError::Disconnected) => return Ok(()),
                    }
                }
            };
            // One round: what is queued (bounded, so a flood cannot starve the Ready or the
            // clock), then one pass over the Ready.
            let mut input = first;
            let mut budget = ROUND_INPUTS;
            while let Some(i) = input.take() {
                match i {
                    Input::Stop => return Ok(()),
                    Input::Sync(reply) => syncs.push(reply),
                    other => self.handle(other),
                }
                budget -= 1;
                if budget > 0 {
                    input = rx.try_recv().ok();
                }
            }
            // The clock ticks even while inputs keep the channel busy.
            if let Some((every, at)) = next_tick.as_mut() {
                let now = Instant::now();
                if now >= *at {
                    self.handle(Input::Tick);
                    // One tick per round at most: a stalled thread does not burst-tick.
                    *at = (*at + *every).max(now);
                }
            }
            self.on_ready()?;
            self.publish();
            // Answers go out after the view shows what they answer.
            for answer in self.answers.drain(..) {
                answer();
            }
            for reply in syncs.drain(..) {
                let _ = reply.send(self.handled);
            }
        }
    }

    fn later(&mut self, answer: impl FnOnce() + Send + 'static) {
        self.answers.push(Box::new(answer));
    }

    fn leader(&self) -> Option<NodeId> {
        Some(self.raw.raft.leader_id).filter(|&l| l != 0)
    }

    fn handle(&mut self, input: Input) {
        match input {
            Input::Message(m) => {
                self.handled += 1;
                let (from, term) = (m.from, m.term);
                // A refused step (a stale or unknown message) changes nothing: Raft drops it.
                let _ = self.raw.step(*m);
                if term == self.raw.raft.term {
                    self.last_heard.insert(from, self.ticks);
                }
            }
            Input::Tick => {
                self.ticks += 1;
                self.raw.tick();
            }
            Input::Campaign => {
                let _ = self.raw.campaign();
            }
            Input::Propose { data, reply } => {
                if self.raw.raft.state != StateRole::Leader {
                    let _ = reply.send(Err(ControlError::NotLeader {
                        leader: self.leader(),
                    }));
                    return;
                }
                self.next_id += 1;
                let context = self.context(self.next_id);
                match self.raw.propose(context.clone(), data) {
                    Ok(()) => {
                        let index = self.raw.raft.raft_log.last_index();
                        self.pending
                            .insert(index, PendingProposal { context, reply });
                    }
                    Err(_) => {
                        let _ = reply.send(Err(ControlError::NotLeader {
                            leader: self.leader(),
                        }));
                    }
                }
            }
            Input::Read { reply } => {
                if self.leader().is_none() {
                    let _ = reply.send(Err(ControlError::NotLeader { leader: None }));
                    return;
                }
                self.next_id += 1;
                self.reads.insert(self.next_id, reply);
                self.raw.read_index(self.context(self.next_id));
            }
            Input::Sync(_) | Input::Stop => {}
        }
    }

    /// A request's context: our id and a local sequence number, unique across the cluster.
    fn context(&self, id: u64) -> Vec<u8> {
        let mut c = self.raw.raft.id.to_be_bytes().to_vec();
        c.extend_from_slice(&id.to_be_bytes());
        c
    }

    fn on_ready(&mut self) -> Result<(), ControlError> {
        while self.raw.has_ready() {
            let mut rd = self.raw.ready();
            // Persist, then send: a vote or an acknowledged append must survive a crash.
            let store = self.raw.mut_store();
            let dirty = !rd.snapshot().is_empty() || !rd.entries().is_empty() || rd.hs().is_some();
            if !rd.snapshot().is_empty() {
                // Decoded before it is stored: a snapshot that does not decode stops the node
                // but does not poison its directory.
                let state = codec::decode(&rd.snapshot().data)?;
                store.apply_snapshot(rd.snapshot())?;
                self.state = state;
                self.applied = rd.snapshot().get_metadata().index;
            }
            store.append(rd.entries())?;
            if let Some(hs) = rd.hs() {
                store.set_hard_state(hs)?;
            }
            if dirty {
                store.flush()?;
            }
            self.send_all(rd.take_messages());
            self.send_all(rd.take_persisted_messages());
            for rs in rd.take_read_states() {
                if let Some(id) = rs.request_ctx.get(8..16) {
                    let id = u64::from_be_bytes(id.try_into().unwrap_or_default());
                    if let Some(reply) = self.reads.remove(&id) {
                        self.reads_waiting.push((rs.index, reply));
                    }
                }
            }
            self.apply(rd.take_committed_entries())?;
            let mut light = self.raw.advance(rd);
            if let Some(commit) = light.commit_index() {
                self.raw.mut_store().set_commit(commit)?;
            }
            self.send_all(light.take_messages());
            self.apply(light.take_committed_entries())?;
            self.raw.advance_apply();
        }
        self.answer_reads();
        self.on_leadership_change();
        let (snapshot_index, _) = self.raw.store().snapshot_state();
        if self.applied >= snapshot_index + self.compact_after {
            let data = codec::encode(&self.state)?;
            self.raw.mut_store().compact(self.applied, data)?;
        }
        Ok(())
    }

    fn send_all(&self, msgs: Vec<Message>) {
        for m in msgs {
            if let Ok(bytes) = m.write_to_bytes() {
                self.transport.send(m.to, bytes);
            }
        }
    }

    fn apply(&mut self, entries: Vec<Entry>) -> Result<(), ControlError> {
        for e in entries {
            self.applied = e.index;
            let result = if e.get_entry_type() == EntryType::EntryNormal && !e.data.is_empty() {
                Some(
                    codec::decode::<Command>(&e.data)
                        .map_err(ControlError::from)
                        .and_then(|cmd| self.state.apply(&cmd).map_err(ControlError::from)),
                )
            } else {
                None // a new leader's empty entry; conf changes are not used
            };
            if let Some(p) = self.pending.remove(&e.index) {
                let outcome = match result {
                    Some(r) if e.context[..] == p.context[..] => r,
                    _ => Err(ControlError::ProposalDropped),
                };
                self.later(move || drop(p.reply.send(outcome)));
            }
        }
        Ok(())
    }

    fn answer_reads(&mut self) {
        let applied = self.applied;
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.reads_waiting)
            .into_iter()
            .partition(|(index, _)| *index <= applied);
        self.reads_waiting = waiting;
        for (_, reply) in ready {
            let state = self.state.clone();
            self.later(move || drop(reply.send(Ok(state))));
        }
    }

    /// On a change of role or leader, what waited on the old one can no longer be answered.
    fn on_leadership_change(&mut self) {
        let now = (self.raw.raft.state, self.raw.raft.leader_id);
        if now == self.last_lead {
            return;
        }
        let leader = self.leader();
        if self.last_lead.0 == StateRole::Leader && now.0 != StateRole::Leader {
            for (_, p) in std::mem::take(&mut self.pending) {
                self.later(move || drop(p.reply.send(Err(ControlError::SteppedDown { leader }))));
            }
        }
        let reads = std::mem::take(&mut self.reads).into_values();
        let waiting = std::mem::take(&mut self.reads_waiting)
            .into_iter()
            .map(|(_, r)| r);
        for reply in reads.chain(waiting).collect::<Vec<_>>() {
            self.later(move || drop(reply.send(Err(ControlError::NotLeader { leader }))));
        }
        self.last_lead = now;
    }

    /// The lease: heard from a quorum (leader) or from the leader (follower) within
    /// `election_tick` ticks.
    fn confirmed(&self) -> bool {
        let recent = |id: &NodeId| {
            self.last_heard
                .get(id)
                .is_some_and(|&t| self.ticks - t < self.election_tick)
        };
        match self.raw.raft.state {
            StateRole::Leader => {
                let me = self.raw.raft.id;
                let heard = self.last_heard.keys().filter(|&&p| p != me && recent(&p));
                1 + heard.count() >= self.quorum
            }
            StateRole::Follower => self.leader().is_some_and(|l| recent(&l)),
            _ => false,
        }
    }

    fn publish(&self) {
        let confirmed = self.confirmed();
        let mut view = self.shared.view.lock();
        let (role, leader, term) = (
            Role::from(self.raw.raft.state),
            self.leader(),
            self.raw.raft.term,
        );
        let snapshot = self.raw.store().snapshot_state().0;
        if view.applied == self.applied
            && view.snapshot == snapshot
            && view.role == role
            && view.leader == leader
            && view.term == term
            && view.confirmed == confirmed
        {
            return;
        }
        if view.applied != self.applied {
            view.state = self.state.clone();
        }
        view.applied = self.applied;
        view.role = role;
        view.leader = leader;
        view.term = term;
        view.snapshot = snapshot;
        view.confirmed = confirmed;
        view.version += 1;
        self.shared.changed.notify_all();
    }

    fn stopped(&mut self, failure: Option<ControlError>) {
        let mut view = self.shared.view.lock();
        view.running = false;
        view.failure = failure.map(|e| e.to_string());
        view.version += 1;
        self.shared.changed.notify_all();
    }
}
