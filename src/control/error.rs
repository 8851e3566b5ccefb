//! The one error type of the control plane.

use crate::codec::CodecError;
use crate::control::state::Rejection;

/// What can go wrong in the control plane: opening its storage, decoding a peer's frame, or a
/// proposal or read that did not complete.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// The command was committed and applied, and the state machine refused it (a stale epoch,
    /// not the backup, ...). Every node applied the same refusal: nothing changed.
    #[error("command refused by the control state: {0}")]
    Rejected(#[from] Rejection),
    /// This node is not the leader; `leader` is the one it knows of, if any. Ask that node.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader {
        /// The leader this node last heard of.
        leader: Option<u64>,
    },
    /// This node lost its leadership while the proposal was pending. The outcome is unknown:
    /// the entry may still commit under the new leader; read the view to learn.
    #[error("leadership lost while the proposal was pending (new leader: {leader:?})")]
    SteppedDown {
        /// The leader this node knows of now, if any.
        leader: Option<u64>,
    },
    /// The entry this proposal occupied was replaced by another leader's entry: it will never
    /// apply.
    #[error("proposal dropped: its log slot was taken by another leader's entry")]
    ProposalDropped,
    /// No answer within the caller's timeout. For a proposal the outcome is unknown.
    #[error("timed out")]
    TimedOut,
    /// The node's thread has stopped (its handle was dropped, or storage failed): the reply
    /// will never come.
    #[error("control node stopped")]
    Stopped,
    /// A frame from the network is not a raft message this node accepts.
    #[error("bad raft message from node {from}: {reason}")]
    BadMessage {
        /// The sender the transport named.
        from: u64,
        /// Why the frame was refused.
        reason: String,
    },
    /// The configuration does not fit (unknown id, empty peer set, or a directory initialised
    /// for other peers).
    #[error("bad control configuration: {0}")]
    Config(String),
    /// The Raft storage failed (the engine's description; the directory may be locked by
    /// another open node, or damaged).
    #[error("control storage: {detail}")]
    Storage {
        /// The storage engine's description of the failure.
        detail: String,
    },
    /// Stored or proposed bytes do not decode (storage damage, or a command of another version).
    #[error("control data: {0}")]
    Codec(#[from] CodecError),
    /// A stored raft record does not decode.
    #[error("stored raft record {what} is damaged: {detail}")]
    Damaged {
        /// Which record.
        what: &'static str,
        /// The decoder's complaint.
        detail: String,
    },
    /// raft-rs refused an operation (its description).
    #[error("raft: {detail}")]
    Raft {
        /// raft-rs's description of the failure.
        detail: String,
    },
    /// The node's thread could not be started.
    #[error("cannot start the control thread: {0}")]
    Spawn(#[source] std::io::Error),
}

impl From<sled::Error> for ControlError {
    fn from(e: sled::Error) -> Self {
        ControlError::Storage {
            detail: e.to_string(),
        }
    }
}

impl From<raft::Error> for ControlError {
    fn from(e: raft::Error) -> Self {
        ControlError::Raft {
            detail: e.to_string(),
        }
    }
}
