//! The control plane over an in-process simulated network: links that can be cut, manual
//! ticks, and quiescence found by `sync` rounds (no sleeps).

use std::collections::{HashMap, HashSet};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use freqalloc::control::{
    Applied, Command, ControlConfig, ControlError, ControlInbox, ControlNode, ControlTransport,
    Rejection, Role, Ticks,
};
use protobuf::Message as _;
use raft::prelude::{Message, MessageType};
use tempfile::TempDir;

const WAIT: Duration = Duration::from_secs(20);

/// The network: each node's inbox, and the cut links (from, to).
#[derive(Default)]
struct Sim {
    inboxes: Mutex<HashMap<u64, ControlInbox>>,
    cut: Mutex<HashSet<(u64, u64)>>,
}

/// One node's sending side.
struct Link {
    from: u64,
    sim: Arc<Sim>,
}

impl ControlTransport for Link {
    fn send(&self, to: u64, msg: Vec<u8>) {
        if self.sim.cut.lock().unwrap().contains(&(self.from, to)) {
            return;
        }
        let inbox = self.sim.inboxes.lock().unwrap().get(&to).cloned();
        if let Some(inbox) = inbox {
            // A node stopped meanwhile is a lost message; a refused frame is a bug.
            if let Err(e @ ControlError::BadMessage { .. }) = inbox.step(self.from, &msg) {
                panic!("a peer sent a frame its peer refuses: {e}");
            }
        }
    }
}

struct Cluster {
    sim: Arc<Sim>,
    peers: Vec<u64>,
    dirs: Vec<TempDir>,
    nodes: HashMap<u64, ControlNode>,
    compact_after: u64,
    ticks: Ticks,
}

impl Cluster {
    fn new(n: u64, compact_after: u64) -> Cluster {
        Cluster::with_ticks(n, compact_after, Ticks::Manual)
    }

    fn with_ticks(n: u64, compact_after: u64, ticks: Ticks) -> Cluster {
        let mut c = Cluster {
            sim: Arc::default(),
            peers: (1..=n).collect(),
            dirs: (0..n).map(|_| tempfile::tempdir().unwrap()).collect(),
            nodes: HashMap::new(),
            compact_after,
            ticks,
        };
        for id in 1..=n {
            c.start(id);
        }
        c
    }

    fn start(&mut self, id: u64) {
        let mut config = ControlConfig::new(id, &self.peers);
        config.compact_after = self.compact_after;
        config.ticks = self.ticks;
        let link = Arc::new(Link {
            from: id,
            sim: self.sim.clone(),
        });
        let node = ControlNode::open(self.dirs[id as usize - 1].path(), config, link).unwrap();
        self.sim.inboxes.lock().unwrap().insert(id, node.inbox());
        self.nodes.insert(id, node);
    }

    /// Drops the node's handle (its thread stops and joins); its directory stays.
    fn stop(&mut self, id: u64) {
        self.sim.inboxes.lock().unwrap().remove(&id);
        drop(self.nodes.remove(&id));
    }

    fn node(&self, id: u64) -> &ControlNode {
        &self.nodes[&id]
    }

    /// Waits until no message is in flight: a round of `sync` over every node that leaves
    /// every node's count of handled messages unchanged.
    fn settle(&self) {
        let mut last = None;
        for _ in 0..10_000 {
            let counts: Vec<u64> = self.nodes.values().map(|n| n.sync().unwrap()).collect();
            if last.as_ref() == Some(&counts) {
                return;
            }
            last = Some(counts);
        }
        panic!("the network never went quiet");
    }

    fn tick(&self, ids: &[u64]) {
        for id in ids {
            self.node(*id).tick().unwrap();
        }
        self.settle();
    }

    fn leader_among(&self, ids: &[u64]) -> Option<u64> {
        ids.iter()
            .copied()
            .find(|id| self.node(*id).view().role == Role::Leader)
    }

    /// Ticks `ids` until one of them leads (bounded: elections take a few timeouts at most).
    fn elect_among(&self, ids: &[u64]) -> u64 {
        for _ in 0..500 {
            if let Some(l) = self.leader_among(ids) {
                return l;
            }
            self.tick(ids);
        }
        panic!("no leader among {ids:?}");
    }

    fn elect(&self, id: u64) {
        self.node(id).campaign().unwrap();
        self.settle();
        assert_eq!(self.node(id).view().role, Role::Leader);
    }

    fn isolate(&self, id: u64) {
        let mut cut = self.sim.cut.lock().unwrap();
        for &p in &self.peers {
            cut.insert((id, p));
            cut.insert((p, id));
        }
    }

    fn heal(&self) {
        self.sim.cut.lock().unwrap().clear();
    }

    fn bootstrap(&self, leader: u64) {
        let shards = vec![(1, Some(2)), (2, Some(3)), (3, Some(1))];
        let r = self
            .node(leader)
            .propose(&Command::Bootstrap { shards }, WAIT);
        assert_eq!(r.unwrap(), Applied::Bootstrapped);
        // Shard 0's backup has caught up: the promotions below are allowed.
        let in_sync = Command::MarkInSync {
            shard: 0,
            node: 2,
            epoch: 1,
            sync_gen: 0,
        };
        let r = self.node(leader).propose(&in_sync, WAIT);
        assert_eq!(r.unwrap(), Applied::MarkedInSync);
    }
}

fn promote(shard: u32, node: u64, expected_epoch: u64) -> Command {
    Command::Promote {
        shard,
        node,
        expected_epoch,
    }
}

#[test]
fn three_nodes_elect_a_leader_and_every_node_applies_a_proposal() {
    let c = Cluster::new(3, 1000);
    c.elect(1);
    c.bootstrap(1);
    let index = c.node(1).view().applied;
    c.settle();
    for id in 1..=3 {
        let view = c.node(id).wait_applied(index, WAIT).unwrap();
        assert_eq!(view.leader, Some(1));
        assert!(view.state.is_bootstrapped());
        assert_eq!(view.state.shard(1).unwrap().primary, 2);
        assert!(c.node(id).confirmed_within(), "node {id} holds the lease");
    }
    let on_follower = c.node(2).propose(&promote(0, 2, 1), WAIT);
    assert!(matches!(
        on_follower,
        Err(ControlError::NotLeader { leader: Some(1) })
    ));
    let state = c.node(3).confirm(WAIT).unwrap();
    assert_eq!(state.shard(2).unwrap().epoch, 1);
}

#[test]
fn of_two_conflicting_promotions_exactly_one_wins() {
    let c = Cluster::new(3, 1000);
    c.elect(1);
    c.bootstrap(1);
    // Two proposers saw epoch 1 and both promote the backup.
    let first = c.node(1).submit(&promote(0, 2, 1)).unwrap();
    let second = c.node(1).submit(&promote(0, 2, 1)).unwrap();
    let results = [first.wait(WAIT), second.wait(WAIT)];
    let won: Vec<_> = results.iter().filter(|r| r.is_ok()).collect();
    assert_eq!(won.len(), 1, "{results:?}");
    assert!(matches!(
        won[0],
        Ok(Applied::Promoted { shard: 0, epoch: 2 })
    ));
    assert!(results.iter().any(|r| matches!(
        r,
        Err(ControlError::Rejected(Rejection::StaleEpoch {
            shard: 0,
            expected: 1,
            current: 2
        }))
    )));
    let index = c.node(1).view().applied;
    for id in 1..=3 {
        let shard = c
            .node(id)
            .wait_applied(index, WAIT)
            .unwrap()
            .state
            .shard(0)
            .cloned();
        let shard = shard.unwrap();
        assert_eq!((shard.primary, shard.backup, shard.epoch), (2, Some(1), 2));
    }
}

#[test]
fn an_isolated_leader_cannot_commit_and_learns_the_new_state_after_healing() {
    let c = Cluster::new(3, 1000);
    c.elect(1);
    c.bootstrap(1);
    c.settle();
    c.isolate(1);

    // The old leader accepts the proposal but cannot commit it; it steps down (check quorum)
    // at the first check of a whole election timeout without a quorum (raft-rs checks every
    // timeout, so that is within two), and the proposal fails with it.
    let stuck = c.node(1).submit(&promote(0, 2, 1)).unwrap();
    let config = ControlConfig::new(1, &[1, 2, 3]);
    for _ in 0..2 * config.election_tick {
        c.tick(&[1]);
    }
    let old = c.node(1).view();
    assert_ne!(old.role, Role::Leader);
    assert!(!old.confirmed);
    assert!(!c.node(1).confirmed_within());
    assert!(matches!(
        stuck.wait(WAIT),
        Err(ControlError::SteppedDown { .. })
    ));
    assert!(matches!(
        c.node(1).confirm(WAIT),
        Err(ControlError::NotLeader { .. })
    ));

    // The majority elects a new leader and commits.
    let leader = c.elect_among(&[2, 3]);
    let r = c.node(leader).propose(&promote(0, 2, 1), WAIT);
    assert_eq!(r.unwrap(), Applied::Promoted { shard: 0, epoch: 2 });
    assert!(matches!(
        c.node(1).propose(&promote(0, 2, 1), WAIT),
        Err(ControlError::NotLeader { .. })
    ));
    assert_eq!(c.node(1).view().state.shard(0).unwrap().epoch, 1);
    assert!(c.node(leader).confirm(WAIT).is_ok());

    // Healed: the old leader follows and learns the promotion.
    c.heal();
    let target = c.node(leader).view().applied;
    for _ in 0..100 {
        if c.node(1).view().applied >= target {
            break;
        }
        c.tick(&[1, 2, 3]);
    }
    let view = c.node(1).wait_applied(target, WAIT).unwrap();
    assert_eq!(view.leader, Some(leader));
    assert_eq!(view.state.shard(0).unwrap().epoch, 2);
    assert_eq!(
        c.node(1).confirm(WAIT).unwrap().shard(0).unwrap().primary,
        2
    );
}

#[test]
fn a_stopped_node_reopens_from_its_directory_and_catches_up_by_snapshot() {
    // Compact every 4 entries, so the leader drops the log node 3 misses.
    let mut c = Cluster::new(3, 4);
    c.elect(1);
    c.bootstrap(1);
    c.settle();
    let before = c.node(3).view();
    assert!(before.state.is_bootstrapped());
    c.stop(3);

    // The bootstrap marked shard 0 in sync at generation 0; each out-of-sync mark raises it.
    for generation in 0..6 {
        let in_sync = Command::MarkInSync {
            shard: 0,
            node: 2,
            epoch: 1,
            sync_gen: generation,
        };
        c.node(1).propose(&in_sync, WAIT).unwrap();
        let out = Command::MarkOutOfSync { shard: 0, epoch: 1 };
        c.node(1).propose(&out, WAIT).unwrap();
    }
    let in_sync = Command::MarkInSync {
        shard: 1,
        node: 3,
        epoch: 1,
        sync_gen: 0,
    };
    c.node(1).propose(&in_sync, WAIT).unwrap();
    c.node(1).propose(&promote(1, 3, 1), WAIT).unwrap();

    // Reopened while cut off: it restores what it had applied from its own disk.
    c.isolate(3);
    c.start(3);
    let restored = c.node(3).wait_applied(before.applied, WAIT).unwrap();
    assert_eq!(restored.state, before.state);
    assert!(restored.term >= before.term);

    c.heal();
    let target = c.node(1).view();
    for _ in 0..100 {
        if c.node(3).view().applied >= target.applied {
            break;
        }
        c.tick(&[1, 2, 3]);
    }
    assert!(
        target.snapshot > before.applied,
        "the leader compacted away entries node 3 lacked: {} <= {}",
        target.snapshot,
        before.applied
    );
    let caught_up = c.node(3).wait_applied(target.applied, WAIT).unwrap();
    assert!(
        caught_up.snapshot > before.applied,
        "node 3 installed a snapshot"
    );
    assert_eq!(caught_up.state, target.state);
    assert_eq!(caught_up.state.shard(1).unwrap().primary, 3);
}

/// A transport that records what the node sends.
struct Capture(Mutex<mpsc::Sender<(u64, Vec<u8>)>>);

impl ControlTransport for Capture {
    fn send(&self, to: u64, msg: Vec<u8>) {
        let _ = self.0.lock().unwrap().send((to, msg));
    }
}

fn vote_request(from: u64, to: u64, term: u64) -> Vec<u8> {
    let mut m = Message::default();
    m.set_msg_type(MessageType::MsgRequestVote);
    m.from = from;
    m.to = to;
    m.term = term;
    m.write_to_bytes().unwrap()
}

/// Steps a vote request into `node` and returns whether it granted it.
fn granted(node: &ControlNode, rx: &Receiver<(u64, Vec<u8>)>, from: u64, term: u64) -> bool {
    node.step(from, &vote_request(from, node.id(), term))
        .unwrap();
    node.sync().unwrap();
    let answers: Vec<Message> = rx
        .try_iter()
        .map(|(_, bytes)| Message::parse_from_bytes(&bytes).unwrap())
        .filter(|m| m.get_msg_type() == MessageType::MsgRequestVoteResponse)
        .collect();
    assert_eq!(answers.len(), 1, "{answers:?}");
    assert_eq!((answers[0].to, answers[0].term), (from, term));
    !answers[0].reject
}

#[test]
fn a_restarted_node_never_votes_twice_in_a_term() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = mpsc::channel();
    let transport = Arc::new(Capture(Mutex::new(tx)));
    let open = || {
        let config = ControlConfig::new(3, &[1, 2, 3]).manual_ticks();
        ControlNode::open(dir.path(), config, transport.clone()).unwrap()
    };
    let node = open();
    assert!(granted(&node, &rx, 1, 5));
    assert!(!granted(&node, &rx, 2, 5), "one vote per term");
    drop(node);

    let node = open();
    assert_eq!(node.view().term, 5);
    assert!(
        !granted(&node, &rx, 2, 5),
        "the vote for 1 survived the restart"
    );
    assert!(
        granted(&node, &rx, 1, 5),
        "the same candidate may ask again"
    );
    assert!(granted(&node, &rx, 2, 6), "a new term, a new vote");
}

#[test]
fn garbage_frames_are_typed_errors_and_the_node_keeps_working() {
    let c = Cluster::new(3, 1000);
    c.elect(1);
    let bad = |r: Result<(), ControlError>| matches!(r, Err(ControlError::BadMessage { .. }));
    let node = c.node(2);
    assert!(bad(node.step(1, &[0xff; 7])));
    assert!(
        bad(node.step(1, &[])),
        "an empty frame decodes as a local message of node 0"
    );
    assert!(
        bad(node.step(1, &vote_request(1, 3, 9))),
        "addressed to another node"
    );
    assert!(
        bad(node.step(3, &vote_request(1, 2, 9))),
        "claims another sender"
    );
    assert!(bad(node.step(9, &vote_request(9, 2, 9))), "not a member");
    let mut hup = Message::default();
    hup.set_msg_type(MessageType::MsgHup);
    hup.from = 1;
    hup.to = 2;
    assert!(
        bad(node.step(1, &hup.write_to_bytes().unwrap())),
        "node-local type"
    );

    c.bootstrap(1);
    let index = c.node(1).view().applied;
    let view = node.wait_applied(index, WAIT).unwrap();
    assert!(
        view.state.is_bootstrapped(),
        "{index} {view:?} {:?}",
        c.node(1).view()
    );
    assert_eq!(
        view.term,
        c.node(1).view().term,
        "the garbage changed nothing"
    );
}

#[test]
fn waiting_for_a_change_times_out_without_one_and_wakes_on_one() {
    let c = Cluster::new(3, 1000);
    let v = c.node(2).view();
    let soon = Instant::now() + Duration::from_millis(20);
    assert!(matches!(
        c.node(2).wait_change(v.version, soon),
        Err(ControlError::TimedOut)
    ));
    c.node(1).campaign().unwrap();
    let changed = c
        .node(2)
        .wait_change(v.version, Instant::now() + WAIT)
        .unwrap();
    assert!(changed.version > v.version);
}

#[test]
fn with_their_own_clocks_nodes_elect_and_commit_without_manual_ticks() {
    let c = Cluster::with_ticks(3, 1000, Ticks::Every(Duration::from_millis(5)));
    let deadline = Instant::now() + WAIT;
    // Leadership may still move on a loaded machine: retry a bounded number of times.
    let mut outcome = None;
    for _ in 0..50 {
        let view = c
            .node(1)
            .wait_for(deadline, |v| v.leader.is_some())
            .unwrap();
        let leader = c.node(view.leader.unwrap());
        let shards = vec![(1, Some(2))];
        match leader.propose(&Command::Bootstrap { shards }, WAIT) {
            Err(ControlError::NotLeader { .. } | ControlError::SteppedDown { .. }) => continue,
            other => {
                outcome = Some((other, leader.view().applied));
                break;
            }
        }
    }
    let (result, index) = outcome.expect("a leader accepted the proposal");
    // A retry after an unknown outcome may find it applied already.
    assert!(matches!(
        result,
        Ok(Applied::Bootstrapped) | Err(ControlError::Rejected(Rejection::AlreadyBootstrapped))
    ));
    for id in 1..=3 {
        let view = c.node(id).wait_applied(index, WAIT).unwrap();
        assert_eq!(view.state.shard(0).unwrap().epoch, 1);
    }
}

/// Not a check but a figure: sequential proposals through a 3-node cluster in one process,
/// each acknowledged only after a quorum flushed it to disk.
/// `cargo test --release --test control -- --ignored --nocapture sequential_proposal_rate`
#[test]
#[ignore]
fn sequential_proposal_rate() {
    let c = Cluster::new(3, 1000);
    c.elect(1);
    c.bootstrap(1);
    let n = 300;
    let start = Instant::now();
    for i in 0..n {
        let cmd = if i % 2 == 0 {
            Command::MarkInSync {
                shard: 0,
                node: 2,
                epoch: 1,
                sync_gen: (i / 2) as u64,
            }
        } else {
            Command::MarkOutOfSync { shard: 0, epoch: 1 }
        };
        c.node(1).propose(&cmd, WAIT).unwrap();
    }
    let elapsed = start.elapsed();
    println!(
        "{n} sequential proposals in {elapsed:?}: {:.0}/s, {:?} each",
        n as f64 / elapsed.as_secs_f64(),
        elapsed / n
    );
    let index = c.node(1).view().applied;
    for id in 2..=3 {
        let view = c.node(id).wait_applied(index, WAIT).unwrap();
        assert_eq!(view.state, c.node(1).view().state);
    }
}
