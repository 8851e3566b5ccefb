//! The cluster's control plane: who is primary of each shard, at which epoch, in a small log
//! replicated by [Raft](https://raft.github.io/raft.pdf) ([raft-rs](https://docs.rs/raft/0.7)).
//!
//! Data replication stays primary/backup; only the *control* state goes through Raft. When a
//! primary is lost, someone proposes [`Command::Promote`], a compare-and-set on the shard's
//! epoch: of two conflicting promotions exactly one applies, and the epoch rises by one. Every
//! data write carries the epoch, and a replica refuses an older one. The minority side of a
//! partition cannot commit, and its lease ([`ControlView::confirmed`]) and
//! [`ControlNode::confirm`] (a Raft ReadIndex) tell it to stop acting on what it last knew.
//!
//! | file | concern |
//! |---|---|
//! | `state.rs` | the state machine: [`ControlState`], [`Command`], pure and deterministic |
//! | `storage.rs` | raft-rs's `Storage` over sled: log, hard state, snapshots; flushed before sends |
//! | `node.rs` | [`ControlNode`]: a `RawNode` on its thread (`freq-control`), [`ControlTransport`] |
//! | `error.rs` | [`ControlError`] |
//!
//! The transport carries opaque bytes (raft's protobuf messages); the integrator runs it over
//! the distribution connections and feeds what arrives to [`ControlInbox::step`]. A frame that
//! does not decode is a typed error, never a panic. (A *well-formed* message that breaks the
//! Raft protocol can still trip raft-rs's own assertions: peers are trusted, authenticated by
//! the distribution cookie.)
//!
//! Three nodes in one process, a transport that hands each message straight to its addressee,
//! and manual ticks (no timers):
//!
//! ```
//! use std::sync::{Arc, Mutex};
//! use std::time::{Duration, Instant};
//! use freqalloc::control::{Command, ControlConfig, ControlInbox, ControlNode, ControlTransport, Role};
//!
//! struct Net { from: u64, inboxes: Arc<Mutex<Vec<ControlInbox>>> }
//!
//! impl ControlTransport for Net {
//!     fn send(&self, to: u64, msg: Vec<u8>) {
//!         if let Some(inbox) = self.inboxes.lock().unwrap().iter().find(|i| i.id() == to) {
//!             let _ = inbox.step(self.from, &msg);
//!         }
//!     }
//! }
//!
//! let inboxes = Arc::new(Mutex::new(Vec::new()));
//! let dirs = [tempfile::tempdir()?, tempfile::tempdir()?, tempfile::tempdir()?];
//! let mut nodes = Vec::new();
//! for (id, dir) in (1..=3).zip(&dirs) {
//!     let net = Arc::new(Net { from: id, inboxes: inboxes.clone() });
//!     let config = ControlConfig::new(id, &[1, 2, 3]).manual_ticks();
//!     nodes.push(ControlNode::open(dir.path(), config, net)?);
//! }
//! inboxes.lock().unwrap().extend(nodes.iter().map(|n| n.inbox()));
//!
//! let deadline = Instant::now() + Duration::from_secs(10);
//! nodes[0].campaign()?;
//! nodes[0].wait_for(deadline, |v| v.role == Role::Leader)?;
//! let layout = vec![(1, Some(2)), (2, Some(3)), (3, Some(1))];
//! nodes[0].propose(&Command::Bootstrap { shards: layout }, Duration::from_secs(10))?;
//! // Shard 0's backup (node 2) has caught up; only then may it be promoted.
//! let in_sync = Command::MarkInSync { shard: 0, node: 2, epoch: 1, sync_gen: 0 };
//! nodes[0].propose(&in_sync, Duration::from_secs(10))?;
//! let promote = Command::Promote { shard: 0, node: 2, expected_epoch: 1 };
//! nodes[0].propose(&promote, Duration::from_secs(10))?;
//!
//! let index = nodes[0].view().applied;
//! for node in &nodes {
//!     let view = node.wait_applied(index, Duration::from_secs(10))?;
//!     let shard = view.state.shard(0).unwrap();
//!     assert_eq!((shard.primary, shard.epoch), (2, 2));
//! }
//! assert_eq!(nodes[1].confirm(Duration::from_secs(10))?.shard(0).unwrap().epoch, 2);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod error;
mod node;
mod state;
mod storage;

pub use error::ControlError;
pub use node::{
    ControlConfig, ControlInbox, ControlNode, ControlTransport, ControlView, Proposal, Role, Ticks,
};
pub use state::{Applied, Command, ControlState, NodeId, Rejection, ShardControl, ShardId};
