//! Durable Raft storage: raft-rs's [`Storage`] over sled.
//!
//! Two trees: `raft_log` holds the entries keyed by big-endian index, `raft_meta` the hard state,
//! the conf state and the last snapshot (its metadata and the encoded [`ControlState`]). Writes go
//! to sled's page cache; [`RaftStorage::flush`] makes them durable, and the node flushes before it
//! sends any message that depends on them (Raft's "persist before send": a vote or an append
//! acknowledged from memory could be forgotten by a crash, and the node could vote twice).
//!
//! The log always starts right after the snapshot: `first_index = snapshot.index + 1`.
//!
//! [`ControlState`]: crate::control::ControlState

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use raft::prelude::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, Storage, StorageError};

use super::error::ControlError;

const HARD_STATE: &[u8] = b"hard_state";
const CONF_STATE: &[u8] = b"conf_state";
const SNAPSHOT_META: &[u8] = b"snapshot_meta";
const SNAPSHOT_DATA: &[u8] = b"snapshot_data";

/// The raft log, hard state, conf state and snapshot of one node, in its own sled directory.
pub(crate) struct RaftStorage {
    db: sled::Db,
    /// The canonical directory, recorded in [`CLOSED`] on drop.
    path: PathBuf,
    meta: sled::Tree,
    log: sled::Tree,
    hard_state: HardState,
    conf_state: ConfState,
    snapshot: SnapshotMetadata,
    snapshot_data: Vec<u8>,
    last_index: u64,
}

fn pb_encode<M: protobuf::Message>(what: &'static str, m: &M) -> Result<Vec<u8>, ControlError> {
    m.write_to_bytes().map_err(|e| ControlError::Damaged {
        what,
        detail: e.to_string(),
    })
}

fn pb_decode<M: protobuf::Message>(what: &'static str, bytes: &[u8]) -> Result<M, ControlError> {
    M::parse_from_bytes(bytes).map_err(|e| ControlError::Damaged {
        what,
        detail: e.to_string(),
    })
}

/// Directories this process has closed. sled releases a directory's lock only when its last
/// background task lets go, and gives no signal to wait on; reopening one of these (a node
/// restarted in the same process) retries a locked directory briefly instead of failing.
static CLOSED: Mutex<BTreeSet<PathBuf>> = Mutex::new(BTreeSet::new());

/// How long a reopen waits for sled to release a directory this process closed.
const RELEASE_DEADLINE: Duration = Duration::from_secs(5);

fn closed() -> std::sync::MutexGuard<'static, BTreeSet<PathBuf>> {
    CLOSED.lock().unwrap_or_else(|e| e.into_inner())
}

fn open_db(dir: &Path) -> Result<(sled::Db, PathBuf), ControlError> {
    let io = |e: std::io::Error| ControlError::Storage {
        detail: format!("{}: {e}", dir.display()),
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let path = std::fs::canonicalize(dir).map_err(io)?;
    let closed_here = closed().contains(&path);
    // No background flusher: the node flushes at every ready that wrote something, before it
    // sends.
    let config = sled::Config::new().path(&path).flush_every_ms(None);
    let start = Instant::now();
    let mut pause = Duration::from_micros(100);
    loop {
        // sled 0.34 can panic on some damaged files instead of returning an error.
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| config.open())) {
            Ok(Ok(db)) => {
                closed().remove(&path);
                return Ok((db, path));
            }
            Ok(Err(sled::Error::Io(e)))
                if closed_here
                    && e.to_string().contains("could not acquire lock")
                    && start.elapsed() < RELEASE_DEADLINE =>
            {
                // Not synchronisation with anything we could wait on (see CLOSED): bounded
                // polling with backoff.
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(20));
            }
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => {
                return Err(ControlError::Storage {
                    detail: format!("sled failed to recover {}", dir.display()),
                })
            }
        }
    }
}

impl Drop for RaftStorage {
    fn drop(&mut self) {
        closed().insert(self.path.clone());
    }
}

/// A failure of ours, in the shape raft-rs's `Storage` methods return.
fn store_err(e: impl std::fmt::Display) -> raft::Error {
    raft::Error::Store(StorageError::Other(e.to_string().into()))
}

impl RaftStorage {
    /// Opens (or creates) the storage in `dir` and loads what it holds.
    pub(crate) fn open(dir: &Path) -> Result<Self, ControlError> {
        let (db, path) = open_db(dir)?;
        let meta = db.open_tree("raft_meta")?;
        let log = db.open_tree("raft_log")?;
        let load = |key: &[u8]| meta.get(key).map(|v| v.map(|v| v.to_vec()));
        let hard_state = match load(HARD_STATE)? {
            Some(b) => pb_decode("hard state", &b)?,
            None => HardState::default(),
        };
        let conf_state = match load(CONF_STATE)? {
            Some(b) => pb_decode("conf state", &b)?,
            None => ConfState::default(),
        };
        let snapshot: SnapshotMetadata = match load(SNAPSHOT_META)? {
            Some(b) => pb_decode("snapshot metadata", &b)?,
            None => SnapshotMetadata::default(),
        };
        let snapshot_data = load(SNAPSHOT_DATA)?.unwrap_or_default();
        let last_index = match log.last()? {
            Some((k, _)) => index_of(&k)?,
            None => snapshot.index,
        };
        Ok(RaftStorage {
            db,
            path,
            meta,
            log,
            hard_state,
            conf_state,
            snapshot,
            snapshot_data,
            last_index,
        })
    }

    /// On first open, records the voters (every node starts from the same conf state and an
    /// empty log). Later opens check the directory belongs to the same cluster.
    pub(crate) fn initialize(&mut self, voters: &[u64]) -> Result<(), ControlError> {
        if self.conf_state == ConfState::default() {
            self.conf_state = ConfState::from((voters.to_vec(), vec![]));
            self.meta
                .insert(CONF_STATE, pb_encode("conf state", &self.conf_state)?)?;
            return self.flush();
        }
        let mut stored = self.conf_state.voters.clone();
        stored.sort_unstable();
        if stored != voters {
            return Err(ControlError::Config(format!(
                "the directory holds a cluster of {stored:?}, not {voters:?}"
            )));
        }
        Ok(())
    }

    /// The last snapshot's index and the state it holds (empty before the first compaction).
    pub(crate) fn snapshot_state(&self) -> (u64, &[u8]) {
        (self.snapshot.index, &self.snapshot_data)
    }

    /// The hard state as stored.
    pub(crate) fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    /// Appends `ents`, replacing any entries at or after the first one's index.
    pub(crate) fn append(&mut self, ents: &[Entry]) -> Result<(), ControlError> {
        let Some(first) = ents.first() else {
            return Ok(());
        };
        if first.index <= self.snapshot.index || first.index > self.last_index + 1 {
            return Err(ControlError::Storage {
                detail: format!(
                    "append at {} does not fit the log ({}..={})",
                    first.index,
                    self.snapshot.index + 1,
                    self.last_index
                ),
            });
        }
        let mut batch = sled::Batch::default();
        for key in self.log.range(first.index.to_be_bytes()..).keys() {
            batch.remove(key?);
        }
        for e in ents {
            batch.insert(&e.index.to_be_bytes(), pb_encode("entry", e)?);
        }
        self.log.apply_batch(batch)?;
        self.last_index = ents[ents.len() - 1].index;
        Ok(())
    }

    /// Records the hard state (term, vote, commit).
    pub(crate) fn set_hard_state(&mut self, hs: &HardState) -> Result<(), ControlError> {
        self.meta.insert(HARD_STATE, pb_encode("hard state", hs)?)?;
        self.hard_state = hs.clone();
        Ok(())
    }

    /// Records a new commit index (from a light ready).
    pub(crate) fn set_commit(&mut self, commit: u64) -> Result<(), ControlError> {
        let mut hs = self.hard_state.clone();
        hs.commit = commit;
        self.set_hard_state(&hs)
    }

    /// Replaces the log by a snapshot received from the leader.
    pub(crate) fn apply_snapshot(&mut self, snap: &Snapshot) -> Result<(), ControlError> {
        let meta = snap.get_metadata();
        if meta.index < self.snapshot.index {
            return Err(ControlError::from(raft::Error::Store(
                StorageError::SnapshotOutOfDate,
            )));
        }
        self.log.clear()?;
        self.store_snapshot(meta.clone(), snap.data.to_vec())?;
        self.conf_state = meta.get_conf_state().clone();
        self.meta
            .insert(CONF_STATE, pb_encode("conf state", &self.conf_state)?)?;
        let mut hs = self.hard_state.clone();
        hs.term = hs.term.max(meta.term);
        hs.commit = meta.index;
        self.set_hard_state(&hs)?;
        self.last_index = meta.index;
        Ok(())
    }

    /// Takes a snapshot of the state machine at `index` (applied) and drops the entries it covers.
    pub(crate) fn compact(&mut self, index: u64, data: Vec<u8>) -> Result<(), ControlError> {
        if index <= self.snapshot.index {
            return Ok(());
        }
        let mut meta = SnapshotMetadata {
            index,
            term: self.term(index)?,
            ..Default::default()
        };
        meta.set_conf_state(self.conf_state.clone());
        self.store_snapshot(meta, data)?;
        let mut batch = sled::Batch::default();
        for key in self.log.range(..=index.to_be_bytes()).keys() {
            batch.remove(key?);
        }
        self.log.apply_batch(batch)?;
        Ok(())
    }

    fn store_snapshot(
        &mut self,
        meta: SnapshotMetadata,
        data: Vec<u8>,
    ) -> Result<(), ControlError> {
        self.meta.insert(SNAPSHOT_DATA, data.as_slice())?;
        self.meta
            .insert(SNAPSHOT_META, pb_encode("snapshot metadata", &meta)?)?;
        self.snapshot = meta;
        self.snapshot_data = data;
        Ok(())
    }

    /// Makes every write so far durable.
    pub(crate) fn flush(&self) -> Result<(), ControlError> {
        self.db.flush()?;
        Ok(())
    }

    fn entry(&self, index: u64) -> raft::Result<Entry> {
        match self.log.get(index.to_be_bytes()).map_err(store_err)? {
            Some(b) => pb_decode("entry", &b).map_err(store_err),
            None => Err(raft::Error::Store(StorageError::Unavailable)),
        }
    }
}

fn index_of(key: &[u8]) -> Result<u64, ControlError> {
    let bytes: [u8; 8] = key.try_into().map_err(|_| ControlError::Damaged {
        what: "log key",
        detail: format!("{} bytes, not 8", key.len()),
    })?;
    Ok(u64::from_be_bytes(bytes))
}

impl Storage for RaftStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.hard_state.clone(),
            self.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low <= self.snapshot.index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last_index + 1 || low > high {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let mut ents = Vec::with_capacity((high - low) as usize);
        for item in self.log.range(low.to_be_bytes()..high.to_be_bytes()) {
            let (_, v) = item.map_err(store_err)?;
            ents.push(pb_decode::<Entry>("entry", &v).map_err(store_err)?);
        }
        if ents.len() as u64 != high - low {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        raft::util::limit_size(&mut ents, max_size.into());
        Ok(ents)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx == self.snapshot.index {
            return Ok(self.snapshot.term);
        }
        if idx < self.snapshot.index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if idx > self.last_index {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        Ok(self.entry(idx)?.term)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.snapshot.index + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last_index)
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        if self.snapshot.index < request_index || self.snapshot.index == 0 {
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        let mut snap = Snapshot::default();
        snap.set_metadata(self.snapshot.clone());
        snap.data = self.snapshot_data.clone().into();
        Ok(snap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            data: vec![index as u8].into(),
            ..Default::default()
        }
    }

    fn ctx() -> GetEntriesContext {
        GetEntriesContext::empty(false)
    }

    #[test]
    fn reopening_restores_votes_entries_and_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = RaftStorage::open(dir.path()).unwrap();
            s.initialize(&[1, 2, 3]).unwrap();
            s.append(&[entry(1, 1), entry(2, 1), entry(3, 2)]).unwrap();
            // A new leader overwrites the tail.
            s.append(&[entry(3, 3), entry(4, 3)]).unwrap();
            let hs = HardState {
                term: 3,
                vote: 2,
                commit: 3,
                ..Default::default()
            };
            s.set_hard_state(&hs).unwrap();
            s.compact(2, b"state at 2".to_vec()).unwrap();
            s.flush().unwrap();
        }
        let mut s = RaftStorage::open(dir.path()).unwrap();
        s.initialize(&[1, 2, 3]).unwrap();
        let rs = s.initial_state().unwrap();
        assert_eq!((rs.hard_state.term, rs.hard_state.vote), (3, 2));
        assert_eq!(rs.hard_state.commit, 3);
        assert_eq!(rs.conf_state.voters, vec![1, 2, 3]);
        assert_eq!((s.first_index().unwrap(), s.last_index().unwrap()), (3, 4));
        assert_eq!(s.term(2).unwrap(), 1, "the snapshot keeps its term");
        assert_eq!(s.term(3).unwrap(), 3);
        assert!(matches!(
            s.entries(1, 3, None, ctx()),
            Err(raft::Error::Store(StorageError::Compacted))
        ));
        let ents = s.entries(3, 5, None, ctx()).unwrap();
        assert_eq!(
            ents.iter().map(|e| (e.index, e.term)).collect::<Vec<_>>(),
            [(3, 3), (4, 3)]
        );
        let snap = s.snapshot(0, 2).unwrap();
        assert_eq!(
            (snap.get_metadata().index, &snap.data[..]),
            (2, &b"state at 2"[..])
        );
        assert!(
            s.entries(3, 9, None, ctx()).is_err(),
            "beyond the log: an error, no panic"
        );
        assert!(matches!(
            s.initialize(&[1, 2]),
            Err(ControlError::Config(_))
        ));
    }

    #[test]
    fn a_directory_open_elsewhere_is_a_typed_error() {
        let dir = tempfile::tempdir().unwrap();
        let _first = RaftStorage::open(dir.path()).unwrap();
        let second = RaftStorage::open(dir.path());
        assert!(matches!(second, Err(ControlError::Storage { .. })));
    }

    #[test]
    fn a_received_snapshot_replaces_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = RaftStorage::open(dir.path()).unwrap();
        s.initialize(&[1, 2, 3]).unwrap();
        s.append(&[entry(1, 1), entry(2, 1)]).unwrap();
        let mut snap = Snapshot::default();
        snap.mut_metadata().index = 10;
        snap.mut_metadata().term = 4;
        snap.mut_metadata()
            .set_conf_state(ConfState::from((vec![1, 2, 3], vec![])));
        snap.data = b"ten".to_vec().into();
        s.apply_snapshot(&snap).unwrap();
        s.flush().unwrap();
        drop(s);
        let s = RaftStorage::open(dir.path()).unwrap();
        assert_eq!(
            (s.first_index().unwrap(), s.last_index().unwrap()),
            (11, 10)
        );
        assert_eq!(s.term(10).unwrap(), 4);
        assert_eq!(s.hard_state().commit, 10);
        assert_eq!(s.snapshot_state(), (10, &b"ten"[..]));
    }
}
