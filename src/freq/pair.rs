//! A replicated shard's pair state: which replica is primary, whether the backup is in sync, and
//! what each replica has applied, shared by both replicas, the endpoint and the status.
//!
//! Architecture Invariant: roles change only under the pair's one lock, and every change bumps
//! its version, so waiters and a primary's catch-up see any change.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::{Condvar, Mutex, RwLock};

use super::pool::PoolReaders;

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
    /// A pair whose replicas run on two nodes: the shard's epoch as this node's control plane
    /// last applied it (0 for a pair in one process).
    pub epoch: u64,
    /// A pair whose replicas run on two nodes: the role the control plane gives this node's
    /// replica (`None` for a pair in one process, or before the control plane has spoken).
    pub assigned: Option<Role>,
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
    pub(crate) readers: [RwLock<Option<PoolReaders>>; 2],
    /// Times each replica's disk table was found damaged at open and rebuilt from its partner
    /// (counted with its restarts in the shard's health).
    rebuilt: [AtomicU64; 2],
}

impl PairShared {
    pub(crate) fn new(primary: usize, seqs: [u64; 2]) -> Arc<Self> {
        Arc::new(PairShared {
            state: Mutex::new(PairState {
                primary,
                in_sync: false,
                roles: [Role::Down; 2],
                version: 0,
                epoch: 0,
                assigned: None,
            }),
            changed: Condvar::new(),
            applied: [AtomicU64::new(seqs[0]), AtomicU64::new(seqs[1])],
            durable: [AtomicU64::new(seqs[0]), AtomicU64::new(seqs[1])],
            readers: [RwLock::new(None), RwLock::new(None)],
            rebuilt: [AtomicU64::new(0), AtomicU64::new(0)],
        })
    }

    /// Records that replica `r`'s damaged disk table was set aside and rebuilt.
    pub(crate) fn mark_rebuilt(&self, r: usize) {
        if let Some(n) = self.rebuilt.get(r) {
            n.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// How many times replica `r` was rebuilt from its partner at open.
    pub(crate) fn rebuilt(&self, r: usize) -> u64 {
        self.rebuilt.get(r).map_or(0, |n| n.load(Ordering::Relaxed))
    }

    pub(crate) fn state(&self) -> PairState {
        *self.state.lock()
    }

    pub(crate) fn update<R>(&self, f: impl FnOnce(&mut PairState) -> R) -> R {
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

    pub(crate) fn publish_seq(&self, me: usize, applied: u64, durable: u64) {
        self.applied[me].store(applied, Ordering::Relaxed);
        self.durable[me].store(durable, Ordering::Relaxed);
    }

    /// A replica with applied sequence `seq` (re)joins the pair: decides its role (see the
    /// module docs).
    pub(crate) fn join(&self, me: usize, seq: u64) -> Role {
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

    /// A pair whose replicas run on two nodes: the control plane gives this node's replica `me`
    /// the role `role` at `epoch` and says how its partner on the other node stands
    /// (`Role::Backup` while it can be replicated to, else `Role::Down`). A replica that is not
    /// running takes `role` when it starts.
    pub(crate) fn assign(&self, me: usize, role: Role, partner: Role, epoch: u64) {
        let o = 1 - me;
        let st = self.state();
        if st.assigned == Some(role) && st.roles[o] == partner && st.epoch == epoch {
            return;
        }
        self.update(|st| {
            st.assigned = Some(role);
            if st.roles[me] != Role::Down {
                st.roles[me] = role;
            }
            st.roles[o] = partner;
            st.epoch = epoch;
            st.primary = me;
        });
    }

    /// A pair on two nodes: how the partner stands now; returns whether that changed.
    pub(crate) fn assign_partner(&self, me: usize, partner: Role) -> bool {
        let o = 1 - me;
        if self.state().roles[o] == partner {
            return false;
        }
        self.update(|st| st.roles[o] = partner);
        true
    }

    /// A replica of a pair on two nodes (re)joins: it takes the role the control plane gave it
    /// (a backup that does not serve until told otherwise, if none yet).
    pub(crate) fn join_assigned(&self, me: usize) -> Role {
        self.update(|st| {
            let role = st.assigned.unwrap_or(Role::Backup);
            st.roles[me] = role;
            st.primary = me;
            role
        })
    }

    /// A replica of a pair on two nodes leaves: its partner learns it from the control plane.
    /// A primary, and any replica that may lose acknowledged changes with its instance
    /// (`none`, `interval`), also forgets its role: its next instance waits to be given one.
    pub(crate) fn leave_assigned(&self, me: usize, lossy: bool) {
        self.update(|st| {
            st.roles[me] = Role::Down;
            // A primary's next instance waits for the roles thread to prove the view current
            // again (it may be stale by the time the instance is back).
            if lossy || st.assigned == Some(Role::Primary) {
                st.assigned = None;
            }
        });
    }

    /// A replica leaves (its state is being dropped): a primary in sync hands over to its backup.
    pub(crate) fn leave(&self, me: usize) {
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
}
