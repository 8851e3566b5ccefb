//! The replicated state machine: who is primary of each shard, at which epoch. Pure: no I/O,
//! no clocks, so every node that applies the same log reaches the same state.
//!
//! Architecture Invariant: an epoch only ever grows, by exactly one per promotion, and a
//! shard's primary is never its own backup.

use serde::{Deserialize, Serialize};

/// A node of the cluster (its raft id).
pub type NodeId = u64;

/// A shard's index in the control state.
pub type ShardId = u32;

/// The control record of one shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardControl {
    /// The node that accepts writes for the shard.
    pub primary: NodeId,
    /// The node that replicates it, if any.
    pub backup: Option<NodeId>,
    /// Raised by every promotion; every data write carries it, and a replica refuses a write
    /// with an older one. Starts at 1.
    pub epoch: u64,
    /// Whether the backup has confirmed it holds everything the primary acknowledged at this
    /// epoch. A promotion leaves it `false` (the old primary must catch up).
    pub backup_in_sync: bool,
    /// Raised by every out-of-sync mark and every promotion: an in-sync mark must name the
    /// generation its proposer last saw marked out of sync, so a late or repeated in-sync mark
    /// never undoes a later out-of-sync one.
    pub sync_gen: u64,
}

/// The whole control state: the members and the shards.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlState {
    members: Vec<NodeId>,
    shards: Vec<ShardControl>,
    bootstrapped: bool,
}

/// A change to the control state, proposed through Raft.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Sets the initial shards, `(primary, backup)` each, at epoch 1 with the backup out of
    /// sync. Accepted once.
    Bootstrap {
        /// Shard `i` gets `shards[i]`.
        shards: Vec<(NodeId, Option<NodeId>)>,
    },
    /// Compare-and-set: if the shard is at `expected_epoch`, `node` is its backup and that
    /// backup is in sync, `node` becomes primary at epoch + 1, the old primary its (out of
    /// sync) backup. An out-of-sync backup is never promoted: it may lack acknowledged writes.
    Promote {
        /// The shard.
        shard: ShardId,
        /// The backup to promote.
        node: NodeId,
        /// The epoch the proposer saw.
        expected_epoch: u64,
    },
    /// The backup `node` has caught up with the primary at `epoch`, since the out-of-sync
    /// mark of generation `sync_gen` (refused if the shard was marked out of sync again since).
    MarkInSync {
        /// The shard.
        shard: ShardId,
        /// Its backup.
        node: NodeId,
        /// The epoch the backup caught up at.
        epoch: u64,
        /// The sync generation the proposer's catch-up started from.
        sync_gen: u64,
    },
    /// The backup fell behind (a replication write failed) at `epoch`.
    MarkOutOfSync {
        /// The shard.
        shard: ShardId,
        /// The epoch the primary saw.
        epoch: u64,
    },
}

/// What an accepted command did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Applied {
    /// The shards are set.
    Bootstrapped,
    /// `shard` has a new primary at `epoch`.
    Promoted {
        /// The shard.
        shard: ShardId,
        /// Its new epoch.
        epoch: u64,
    },
    /// The backup is marked in sync.
    MarkedInSync,
    /// The backup is marked out of sync; the shard's new sync generation.
    MarkedOutOfSync {
        /// The generation an in-sync mark must name from now on.
        sync_gen: u64,
    },
}

/// Why the state machine refused a command (deterministically, on every node).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Rejection {
    /// A second `Bootstrap`.
    #[error("the control state is already bootstrapped")]
    AlreadyBootstrapped,
    /// A shard command before `Bootstrap`.
    #[error("the control state is not bootstrapped yet")]
    NotBootstrapped,
    /// A `Bootstrap` that names a node outside the members, or a primary as its own backup.
    #[error("bad layout: {0}")]
    BadLayout(String),
    /// No such shard.
    #[error("no shard {shard}")]
    NoSuchShard {
        /// The shard asked for.
        shard: ShardId,
    },
    /// The shard is not at the epoch the command expected: someone else changed it first.
    #[error("shard {shard} is at epoch {current}, not {expected}")]
    StaleEpoch {
        /// The shard.
        shard: ShardId,
        /// The epoch the command carried.
        expected: u64,
        /// The shard's epoch.
        current: u64,
    },
    /// The backup is not in sync at this epoch (a replication write failed, or it has not
    /// caught up yet): promoting it could lose acknowledged writes.
    #[error("shard {shard}'s backup is not in sync: promoting it could lose acknowledged writes")]
    BackupNotInSync {
        /// The shard.
        shard: ShardId,
    },
    /// The shard was marked out of sync (or promoted) after the catch-up an in-sync mark
    /// speaks for.
    #[error("shard {shard} was marked out of sync again (generation {current}, not {expected})")]
    StaleSync {
        /// The shard.
        shard: ShardId,
        /// The generation the command carried.
        expected: u64,
        /// The shard's generation.
        current: u64,
    },
    /// The node named is not the shard's backup.
    #[error("node {node} is not the backup of shard {shard} (backup: {backup:?})")]
    NotTheBackup {
        /// The shard.
        shard: ShardId,
        /// The node named.
        node: NodeId,
        /// The shard's backup.
        backup: Option<NodeId>,
    },
}

impl ControlState {
    /// An empty, not yet bootstrapped state of a cluster of `members`.
    pub fn new(members: &[NodeId]) -> Self {
        let mut members = members.to_vec();
        members.sort_unstable();
        members.dedup();
        ControlState {
            members,
            shards: Vec::new(),
            bootstrapped: false,
        }
    }

    /// The member node ids, sorted.
    pub fn members(&self) -> &[NodeId] {
        &self.members
    }

    /// Whether `Bootstrap` has been applied.
    pub fn is_bootstrapped(&self) -> bool {
        self.bootstrapped
    }

    /// Every shard's record, by shard id.
    pub fn shards(&self) -> &[ShardControl] {
        &self.shards
    }

    /// One shard's record.
    pub fn shard(&self, shard: ShardId) -> Option<&ShardControl> {
        self.shards.get(shard as usize)
    }

    /// Applies `command`: the same command on the same state gives the same result everywhere.
    pub fn apply(&mut self, command: &Command) -> Result<Applied, Rejection> {
        match command {
            Command::Bootstrap { shards } => self.bootstrap(shards),
            Command::Promote {
                shard,
                node,
                expected_epoch,
            } => {
                let s = self.backup_at(*shard, *expected_epoch, *node)?;
                if !s.backup_in_sync {
                    return Err(Rejection::BackupNotInSync { shard: *shard });
                }
                s.backup = Some(s.primary);
                s.primary = *node;
                s.epoch += 1;
                s.backup_in_sync = false;
                s.sync_gen += 1;
                Ok(Applied::Promoted {
                    shard: *shard,
                    epoch: s.epoch,
                })
            }
            Command::MarkInSync {
                shard,
                node,
                epoch,
                sync_gen,
            } => {
                let s = self.backup_at(*shard, *epoch, *node)?;
                if s.sync_gen != *sync_gen {
                    return Err(Rejection::StaleSync {
                        shard: *shard,
                        expected: *sync_gen,
                        current: s.sync_gen,
                    });
                }
                s.backup_in_sync = true;
                Ok(Applied::MarkedInSync)
            }
            Command::MarkOutOfSync { shard, epoch } => {
                let s = self.shard_at(*shard, *epoch)?;
                s.backup_in_sync = false;
                s.sync_gen += 1;
                Ok(Applied::MarkedOutOfSync {
                    sync_gen: s.sync_gen,
                })
            }
        }
    }

    fn bootstrap(&mut self, shards: &[(NodeId, Option<NodeId>)]) -> Result<Applied, Rejection> {
        if self.bootstrapped {
            return Err(Rejection::AlreadyBootstrapped);
        }
        for (i, &(primary, backup)) in shards.iter().enumerate() {
            for node in std::iter::once(primary).chain(backup) {
                if self.members.binary_search(&node).is_err() {
                    return Err(Rejection::BadLayout(format!(
                        "shard {i}: node {node} is not a member"
                    )));
                }
            }
            if backup == Some(primary) {
                return Err(Rejection::BadLayout(format!(
                    "shard {i}: node {primary} is both primary and backup"
                )));
            }
        }
        self.shards = shards
            .iter()
            .map(|&(primary, backup)| ShardControl {
                primary,
                backup,
                epoch: 1,
                backup_in_sync: false,
                sync_gen: 0,
            })
            .collect();
        self.bootstrapped = true;
        Ok(Applied::Bootstrapped)
    }

    /// The shard, if it exists, is at `epoch` and has `node` as its backup.
    fn backup_at(
        &mut self,
        shard: ShardId,
        epoch: u64,
        node: NodeId,
    ) -> Result<&mut ShardControl, Rejection> {
        let s = self.shard_at(shard, epoch)?;
        if s.backup != Some(node) {
            return Err(Rejection::NotTheBackup {
                shard,
                node,
                backup: s.backup,
            });
        }
        Ok(s)
    }

    /// The shard, if it exists and is at `epoch`.
    fn shard_at(&mut self, shard: ShardId, epoch: u64) -> Result<&mut ShardControl, Rejection> {
        if !self.bootstrapped {
            return Err(Rejection::NotBootstrapped);
        }
        let s = self
            .shards
            .get_mut(shard as usize)
            .ok_or(Rejection::NoSuchShard { shard })?;
        if s.epoch != epoch {
            return Err(Rejection::StaleEpoch {
                shard,
                expected: epoch,
                current: s.epoch,
            });
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn booted() -> ControlState {
        let mut s = ControlState::new(&[1, 2, 3]);
        let cmd = Command::Bootstrap {
            shards: vec![(1, Some(2)), (2, Some(3)), (3, None)],
        };
        assert_eq!(s.apply(&cmd), Ok(Applied::Bootstrapped));
        assert_eq!(s.apply(&cmd), Err(Rejection::AlreadyBootstrapped));
        s
    }

    #[test]
    fn an_out_of_sync_backup_is_never_promoted() {
        let mut s = booted();
        let p = Command::Promote {
            shard: 0,
            node: 2,
            expected_epoch: 1,
        };
        assert_eq!(s.apply(&p), Err(Rejection::BackupNotInSync { shard: 0 }));
        let in_sync = Command::MarkInSync {
            shard: 0,
            node: 2,
            epoch: 1,
            sync_gen: 0,
        };
        assert_eq!(s.apply(&in_sync), Ok(Applied::MarkedInSync));
        let out = Command::MarkOutOfSync { shard: 0, epoch: 1 };
        assert_eq!(s.apply(&out), Ok(Applied::MarkedOutOfSync { sync_gen: 1 }));
        // A promotion decided on the in-sync view loses to the later out-of-sync mark.
        assert_eq!(s.apply(&p), Err(Rejection::BackupNotInSync { shard: 0 }));
        // A late (or repeated) in-sync mark from before it is refused, so it cannot undo it.
        assert!(matches!(
            s.apply(&in_sync),
            Err(Rejection::StaleSync {
                expected: 0,
                current: 1,
                ..
            })
        ));
        let caught_up = Command::MarkInSync {
            shard: 0,
            node: 2,
            epoch: 1,
            sync_gen: 1,
        };
        assert_eq!(s.apply(&caught_up), Ok(Applied::MarkedInSync));
        assert_eq!(s.apply(&p), Ok(Applied::Promoted { shard: 0, epoch: 2 }));
        assert_eq!(
            s.shard(0).unwrap().sync_gen,
            2,
            "a promotion is a new generation"
        );
    }

    #[test]
    fn conflicting_promotions_exactly_one_wins() {
        let mut s = booted();
        let in_sync = Command::MarkInSync {
            shard: 0,
            node: 2,
            epoch: 1,
            sync_gen: 0,
        };
        assert_eq!(s.apply(&in_sync), Ok(Applied::MarkedInSync));
        let p = Command::Promote {
            shard: 0,
            node: 2,
            expected_epoch: 1,
        };
        assert_eq!(s.apply(&p), Ok(Applied::Promoted { shard: 0, epoch: 2 }));
        assert!(matches!(
            s.apply(&p),
            Err(Rejection::StaleEpoch { current: 2, .. })
        ));
        let shard = s.shard(0).unwrap();
        assert_eq!((shard.primary, shard.backup, shard.epoch), (2, Some(1), 2));
        assert!(!shard.backup_in_sync);
    }

    #[test]
    fn refusals_say_why() {
        let mut fresh = ControlState::new(&[1, 2]);
        let sync = Command::MarkOutOfSync { shard: 0, epoch: 1 };
        assert_eq!(fresh.apply(&sync), Err(Rejection::NotBootstrapped));
        let bad = Command::Bootstrap {
            shards: vec![(1, Some(1))],
        };
        assert!(matches!(fresh.apply(&bad), Err(Rejection::BadLayout(_))));
        let stranger = Command::Bootstrap {
            shards: vec![(1, Some(9))],
        };
        assert!(matches!(
            fresh.apply(&stranger),
            Err(Rejection::BadLayout(_))
        ));
        assert!(!fresh.is_bootstrapped());

        let mut s = booted();
        let not_backup = Command::Promote {
            shard: 0,
            node: 3,
            expected_epoch: 1,
        };
        assert!(matches!(
            s.apply(&not_backup),
            Err(Rejection::NotTheBackup { .. })
        ));
        let no_backup = Command::Promote {
            shard: 2,
            node: 1,
            expected_epoch: 1,
        };
        assert!(matches!(
            s.apply(&no_backup),
            Err(Rejection::NotTheBackup { backup: None, .. })
        ));
        let missing = Command::MarkOutOfSync { shard: 7, epoch: 1 };
        assert_eq!(s.apply(&missing), Err(Rejection::NoSuchShard { shard: 7 }));
        let in_sync = Command::MarkInSync {
            shard: 0,
            node: 2,
            epoch: 1,
            sync_gen: 0,
        };
        assert_eq!(s.apply(&in_sync), Ok(Applied::MarkedInSync));
        assert!(s.shard(0).unwrap().backup_in_sync);
    }

    #[test]
    fn commands_round_trip_through_the_codec() {
        let cmd = Command::Promote {
            shard: 3,
            node: 2,
            expected_epoch: 9,
        };
        let bytes = crate::codec::encode(&cmd).unwrap();
        assert_eq!(crate::codec::decode::<Command>(&bytes).unwrap(), cmd);
        let state = booted();
        let bytes = crate::codec::encode(&state).unwrap();
        assert_eq!(crate::codec::decode::<ControlState>(&bytes).unwrap(), state);
    }

    fn command() -> impl Strategy<Value = Command> {
        let node = 0u64..5;
        let shard = 0u32..4;
        let epoch = 0u64..6;
        prop_oneof![
            prop::collection::vec((node.clone(), prop::option::of(node.clone())), 0..4)
                .prop_map(|shards| Command::Bootstrap { shards }),
            (shard.clone(), node.clone(), epoch.clone()).prop_map(|(shard, node, e)| {
                Command::Promote {
                    shard,
                    node,
                    expected_epoch: e,
                }
            }),
            (shard.clone(), node, epoch.clone(), 0u64..4).prop_map(
                |(shard, node, epoch, sync_gen)| {
                    Command::MarkInSync {
                        shard,
                        node,
                        epoch,
                        sync_gen,
                    }
                }
            ),
            (shard, epoch).prop_map(|(shard, epoch)| Command::MarkOutOfSync { shard, epoch }),
        ]
    }

    proptest! {
        /// Any command sequence: epochs never fall, a promotion raises exactly its shard's epoch
        /// by one, a refusal changes nothing, and no primary is its own backup.
        #[test]
        fn epochs_rise_on_promotion_and_primary_is_never_backup(
            cmds in prop::collection::vec(command(), 0..60)
        ) {
            let mut s = ControlState::new(&[1, 2, 3, 4]);
            let mut replay = s.clone();
            for cmd in &cmds {
                let before = s.clone();
                let result = s.apply(cmd);
                prop_assert_eq!(&replay.apply(cmd), &result, "apply is deterministic");
                match result {
                    Ok(Applied::Promoted { shard, epoch }) => {
                        let old = before.shard(shard).unwrap();
                        prop_assert_eq!(epoch, old.epoch + 1);
                        prop_assert_eq!(s.shard(shard).unwrap().epoch, epoch);
                    }
                    Err(_) => prop_assert_eq!(&s, &before),
                    Ok(_) => {}
                }
                if before.is_bootstrapped() {
                    for (old, new) in before.shards().iter().zip(s.shards()) {
                        prop_assert!(new.epoch >= old.epoch);
                        prop_assert!(new.epoch <= old.epoch + 1);
                    }
                }
                for shard in s.shards() {
                    prop_assert_ne!(Some(shard.primary), shard.backup);
                }
            }
        }
    }
}
