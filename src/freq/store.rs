//! A store directory's configuration file, `meta.json`: the pool layout, strategy, durability and
//! limit a store was created with, so that every later open agrees with the first.
//!
//! Written atomically (a temporary file, `fsync`, `rename`, `fsync` of the directory), so a crash
//! leaves the old file or the new one, never half of one.

use std::fmt;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::cluster::ClusterLayout;
use super::error::{FreqError, StoreError};
use super::layout::{coalesce, subtract, Layout};
use super::range::FreqRange;
use super::router::Routing;

/// The name of the configuration file inside a store directory.
pub const META_FILE: &str = "meta.json";
const FORMAT: u32 = 1;

/// How allocator operations reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Durability {
    /// An operation is acknowledged only once it is on disk. A shard applies the operations
    /// waiting in its mailbox, writes them in one atomic batch, flushes once, then replies to all
    /// (group commit). A crash at any instant loses no acknowledged operation.
    Sync,
    /// Operations are acknowledged at once and flushed in the background every interval (as
    /// DETS `auto_save`). A crash loses at most the last interval's operations, always a prefix
    /// of a shard's history (sled recovers a prefix), never a torn one.
    Interval(Duration),
    /// In memory only: nothing is written; a restart starts from an empty pool.
    None,
}

impl fmt::Display for Durability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Durability::Sync => f.write_str("sync"),
            Durability::Interval(d) => write!(f, "interval:{}", d.as_millis()),
            Durability::None => f.write_str("none"),
        }
    }
}

impl FromStr for Durability {
    type Err = FreqError;

    /// `sync`, `interval:MS` (milliseconds, at least 1) or `none`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "sync" => Ok(Durability::Sync),
            "none" => Ok(Durability::None),
            _ => match s.strip_prefix("interval:").map(str::parse::<u64>) {
                Some(Ok(ms)) if ms > 0 => Ok(Durability::Interval(Duration::from_millis(ms))),
                _ => Err(FreqError::BadDurability(s.to_string())),
            },
        }
    }
}

/// What a store was created with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreConfig {
    /// Which shard owns which frequencies.
    pub layout: Layout,
    /// How allocations pick a shard.
    pub strategy: Routing,
    /// How operations reach the disk.
    pub durability: Durability,
    /// At most this many frequencies per client, if set.
    pub client_limit: Option<usize>,
    /// Copies of each shard: 1, or 2 for a primary/backup pair (the README's "Replication").
    /// Stores written before replication read as 1.
    #[serde(default = "one")]
    pub replicas: usize,
    /// With `freqalloc init --nodes`: which node of a cluster serves which shards (see
    /// [`ClusterLayout`]); `None` for a store served by one process. Every node's store holds
    /// the same configuration; each node serves its part.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterLayout>,
}

fn one() -> usize {
    1
}

impl StoreConfig {
    /// Checks the replication setting: 1 or 2 copies, and with 2 no frequency `u64::MAX` (the
    /// key of a replica's sequence record).
    pub fn check_replicas(&self) -> Result<(), FreqError> {
        match self.replicas {
            1 => Ok(()),
            2 if self.layout.owner_of(u64::MAX).is_some() => Err(FreqError::BadReplicas(
                "a replicated pool may not contain frequency 18446744073709551615".into(),
            )),
            2 => Ok(()),
            n => Err(FreqError::BadReplicas(format!(
                "{n} replicas: expected 1 or 2"
            ))),
        }
    }
}

#[derive(Serialize, Deserialize)]
struct MetaFile {
    format: u32,
    config: StoreConfig,
    /// The store's identity, also recorded in every shard's directory (see [`check_shards`]).
    /// Stores written before identities read as `None` and are opened unchecked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    store_id: Option<String>,
    /// A replicated store whose identity records are written at its first open (its replicas
    /// may live outside the store, see `Options::replica_dirs`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    unregistered: bool,
}

/// The identity part of `meta.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct MetaId {
    /// The store's id (`None`: written before identities, not checked).
    pub id: Option<String>,
    /// The shards' identity records are still to be written (first open of a replicated store).
    pub unregistered: bool,
}

/// The path of `meta.json` in `dir`.
pub fn meta_path(dir: &Path) -> PathBuf {
    dir.join(META_FILE)
}

/// The directory of shard `i`'s disk table in `dir`.
pub fn shard_dir(dir: &Path, shard: usize) -> PathBuf {
    dir.join(format!("shard-{shard}"))
}

/// The directory of replica `replica` (0 or 1) of shard `shard` in `dir`.
pub fn replica_dir(dir: &Path, shard: usize, replica: usize) -> PathBuf {
    shard_dir(dir, shard).join(format!("replica-{replica}"))
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError {
    let path = path.to_path_buf();
    move |source| {
        if source.kind() == std::io::ErrorKind::StorageFull {
            StoreError::DiskFull { path }
        } else {
            StoreError::Io { path, source }
        }
    }
}

/// Reads a file that must be a regular file: `Ok(None)` when it does not exist, an error
/// (never a hang) when it is a FIFO, a socket, a device or a directory.
fn read_regular(path: &Path) -> Result<Option<String>, StoreError> {
    match fs::metadata(path) {
        Ok(m) if m.is_file() => {}
        Ok(_) => {
            return Err(StoreError::NotRegular {
                path: path.to_path_buf(),
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(StoreError::Io {
                path: path.to_path_buf(),
                source,
            })
        }
    }
    match fs::read_to_string(path) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(StoreError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Reads a store's configuration and identity; `Ok(None)` when `dir` holds no store.
pub(crate) fn read_meta(dir: &Path) -> Result<Option<(StoreConfig, MetaId)>, StoreError> {
    let path = meta_path(dir);
    let Some(text) = read_regular(&path)? else {
        return Ok(None);
    };
    let meta: MetaFile = serde_json::from_str(&text).map_err(|e| StoreError::BadMeta {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    if meta.format != FORMAT {
        return Err(StoreError::BadMeta {
            path,
            reason: format!("format {} (this build reads format {FORMAT})", meta.format),
        });
    }
    let mut config = meta.config;
    config.layout = config.layout.reindex().map_err(|e| StoreError::BadMeta {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    if let Some(c) = &config.cluster {
        c.check(config.layout.shard_count())
            .map_err(|e| StoreError::BadMeta {
                path: path.clone(),
                reason: e.to_string(),
            })?;
    }
    Ok(Some((
        config,
        MetaId {
            id: meta.store_id,
            unregistered: meta.unregistered,
        },
    )))
}

/// Reads a store's configuration; `Ok(None)` when `dir` holds no store. A `meta.json` that is
/// not a regular file (a FIFO, a directory) is an error, never a hang.
pub fn read_config(dir: &Path) -> Result<Option<StoreConfig>, StoreError> {
    Ok(read_meta(dir)?.map(|(c, _)| c))
}

fn meta_text(dir: &Path, config: &StoreConfig, id: &MetaId) -> Result<String, StoreError> {
    let meta = MetaFile {
        format: FORMAT,
        config: config.clone(),
        store_id: id.id.clone(),
        unregistered: id.unregistered,
    };
    serde_json::to_string_pretty(&meta).map_err(|e| StoreError::BadMeta {
        path: meta_path(dir),
        reason: e.to_string(),
    })
}

/// A temporary file beside `meta.json` that no other process writes (pid and a random part),
/// written and fsynced.
fn write_tmp(dir: &Path, text: &str) -> Result<PathBuf, StoreError> {
    let tmp = dir.join(format!(
        "{META_FILE}.{}.{:x}.tmp",
        std::process::id(),
        random_u64()
    ));
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(io_err(&tmp)(e));
    }
    Ok(tmp)
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// Writes a store's configuration atomically, creating `dir` if needed; the store's identity
/// already in `meta.json` is kept.
pub fn write_config(dir: &Path, config: &StoreConfig) -> Result<(), StoreError> {
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let id = match read_meta(dir) {
        Ok(Some((_, id))) => id,
        _ => MetaId::default(),
    };
    write_meta(dir, config, &id)
}

/// Replaces `meta.json` atomically with `config` and `id`.
pub(crate) fn write_meta(dir: &Path, config: &StoreConfig, id: &MetaId) -> Result<(), StoreError> {
    let tmp = write_tmp(dir, &meta_text(dir, config, id)?)?;
    let path = meta_path(dir);
    if let Err(e) = fs::rename(&tmp, &path) {
        let _ = fs::remove_file(&tmp);
        return Err(io_err(&path)(e));
    }
    sync_dir(dir)
}

/// Creates `meta.json` exclusively: of two processes creating a store at once, one wins and
/// the other gets `Ok(Err(existing))`, the configuration on disk. The file appears whole
/// (written to a private temporary file, then hard-linked into place, which fails if the name
/// exists), so no reader ever sees half of one.
pub(crate) fn create_meta(
    dir: &Path,
    config: &StoreConfig,
    id: &MetaId,
) -> Result<Result<(), StoreConfig>, StoreError> {
    let tmp = write_tmp(dir, &meta_text(dir, config, id)?)?;
    let path = meta_path(dir);
    let linked = fs::hard_link(&tmp, &path);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            sync_dir(dir)?;
            Ok(Ok(()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let existing = read_config(dir)?.ok_or_else(|| StoreError::BadMeta {
                path: path.clone(),
                reason: "vanished while a store was being created".into(),
            })?;
            Ok(Err(existing))
        }
        Err(e) => Err(io_err(&path)(e)),
    }
}

/// Removes `meta.json` (undoing a creation that failed).
pub(crate) fn remove_meta(dir: &Path) -> Result<(), StoreError> {
    let path = meta_path(dir);
    fs::remove_file(&path).map_err(io_err(&path))?;
    sync_dir(dir)
}

fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id().into());
    if let Ok(t) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        h.write_u128(t.as_nanos());
    }
    h.finish()
}

/// A fresh store identity (random, printed as 16 hex digits).
pub(crate) fn new_store_id() -> String {
    format!("{:016x}", random_u64())
}

const IDENTITY_PREFIX: &str = "freqalloc-shard-";

/// What every shard's (every replica's) directory records about its place in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct ShardIdentity {
    store_id: String,
    shard: usize,
    /// The replica index, `None` for a single-replica store.
    replica: Option<usize>,
    shards: usize,
    replicas: usize,
    /// The frequencies the shard owned when its record was written. A pool only grows, so the
    /// shard must still own all of them: a layout edited to move or drop frequencies is refused.
    ranges: Vec<FreqRange>,
}

fn identity_path(core_dir: &Path, store_id: &str) -> PathBuf {
    core_dir.join(format!("{IDENTITY_PREFIX}{store_id}.json"))
}

/// Every disk directory of a store: `(shard, replica, dir)`, replica `None` without replication.
fn core_dirs(dir: &Path, config: &StoreConfig) -> Vec<(usize, Option<usize>, PathBuf)> {
    let n = config.layout.shard_count();
    (0..n)
        .flat_map(|i| -> Vec<(usize, Option<usize>, PathBuf)> {
            if config.replicas == 2 {
                (0..2)
                    .map(|r| (i, Some(r), replica_dir(dir, i, r)))
                    .collect()
            } else {
                vec![(i, None, shard_dir(dir, i))]
            }
        })
        .collect()
}

fn identity_of(
    config: &StoreConfig,
    store_id: &str,
    shard: usize,
    replica: Option<usize>,
) -> ShardIdentity {
    ShardIdentity {
        store_id: store_id.to_string(),
        shard,
        replica,
        shards: config.layout.shard_count(),
        replicas: config.replicas,
        ranges: coalesce(config.layout.ranges(shard).to_vec()),
    }
}

fn write_identity(path: &Path, id: &ShardIdentity) -> Result<(), StoreError> {
    let text = serde_json::to_string(id).map_err(|e| StoreError::BadMeta {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let result = (|| {
        let mut f = fs::File::create(path)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()
    })();
    result.map_err(io_err(path))?;
    if let Some(parent) = path.parent() {
        sync_dir(parent)?;
    }
    Ok(())
}

/// What [`write_identities`] created, so that a failed creation can be undone without touching
/// what another process made.
#[derive(Debug, Default)]
pub(crate) struct Created {
    files: Vec<PathBuf>,
    dirs: Vec<PathBuf>,
}

impl Created {
    /// Removes the identity files, then the directories this creation made (only if empty
    /// unless `all`: a racing creator may have written into them).
    pub(crate) fn undo(self, all: bool) {
        for f in &self.files {
            let _ = fs::remove_file(f);
        }
        for d in self.dirs.iter().rev() {
            if all {
                let _ = fs::remove_dir_all(d);
            } else {
                let _ = fs::remove_dir(d);
            }
        }
    }
}

/// Creates every shard's (replica's) directory and writes its identity record.
pub(crate) fn write_identities(
    dir: &Path,
    config: &StoreConfig,
    store_id: &str,
) -> Result<Created, StoreError> {
    let mut created = Created::default();
    let result = (|| {
        for (shard, replica, core) in core_dirs(dir, config) {
            let mut chain = vec![core.clone()];
            if replica.is_some() {
                chain.insert(0, shard_dir(dir, shard));
            }
            for d in chain {
                match fs::create_dir(&d) {
                    Ok(()) => created.dirs.push(d),
                    // A racing creator made it (or it was there): not ours to remove.
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(io_err(&d)(e)),
                }
            }
            let path = identity_path(&core, store_id);
            write_identity(&path, &identity_of(config, store_id, shard, replica))?;
            created.files.push(path);
        }
        Ok(())
    })();
    match result {
        Ok(()) => Ok(created),
        Err(e) => {
            created.undo(false);
            Err(e)
        }
    }
}

/// Whether `entry` is an identity record (of any store).
fn is_identity(name: &std::ffi::OsStr) -> bool {
    name.to_str()
        .is_some_and(|n| n.starts_with(IDENTITY_PREFIX))
}

/// Shard directories in `dir` that hold data (anything but identity records): what a new store
/// must not be created over. Directories holding identity records only hold nothing to lose.
pub(crate) fn stray_shard_dirs(dir: &Path) -> Result<Vec<PathBuf>, StoreError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(dir)(e)),
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name();
        if !name.to_str().is_some_and(|n| n.starts_with("shard-")) {
            continue;
        }
        if holds_data(&e.path()) {
            out.push(e.path());
        }
    }
    out.sort();
    Ok(out)
}

fn holds_data(path: &Path) -> bool {
    match fs::read_dir(path) {
        Err(e) => e.kind() != std::io::ErrorKind::NotFound,
        Ok(entries) => entries.flatten().any(|e| {
            if is_identity(&e.file_name()) {
                return false;
            }
            match e.file_type() {
                Ok(t) if t.is_dir() => holds_data(&e.path()),
                _ => true,
            }
        }),
    }
}

/// Refuses a directory entry that is not a regular file or directory (a FIFO, socket or device
/// in place of a disk table's file would hang or confuse its reader).
fn check_regular_entries(core: &Path) -> Result<(), StoreError> {
    let Ok(entries) = fs::read_dir(core) else {
        return Ok(());
    };
    for e in entries.flatten() {
        let Ok(t) = e.file_type() else { continue };
        if !(t.is_file() || t.is_dir()) {
            return Err(StoreError::NotRegular { path: e.path() });
        }
    }
    Ok(())
}

/// Checks that the store at `dir` has every shard its configuration names, each one of this
/// store and in its place (the identity records [`write_identities`] made), and no file that is
/// not a regular one where a disk table keeps its files. With two replicas, one replica whose
/// directory is gone (or empty) is re-registered, to be rebuilt from its partner; both gone is
/// an error.
pub(crate) fn check_shards(
    dir: &Path,
    config: &StoreConfig,
    store_id: &str,
) -> Result<(), StoreError> {
    let mut missing: Vec<(usize, Option<usize>, PathBuf)> = Vec::new();
    for (shard, replica, core) in core_dirs(dir, config) {
        check_regular_entries(&core)?;
        let path = identity_path(&core, store_id);
        match read_regular(&path)? {
            Some(text) => {
                let found: ShardIdentity =
                    serde_json::from_str(&text).map_err(|e| StoreError::ShardMismatch {
                        path: core.clone(),
                        reason: format!("unreadable identity record: {e}"),
                    })?;
                let want = identity_of(config, store_id, shard, replica);
                let lost = subtract(&coalesce(found.ranges.clone()), &want.ranges);
                if !lost.is_empty() {
                    let lost: Vec<String> = lost.iter().map(ToString::to_string).collect();
                    return Err(StoreError::ShardMismatch {
                        path: core.clone(),
                        reason: format!(
                            "it owns frequencies {} that the configuration gives to no shard or another one",
                            lost.join(",")
                        ),
                    });
                }
                let place = |i: &ShardIdentity| {
                    (i.store_id.clone(), i.shard, i.replica, i.shards, i.replicas)
                };
                if place(&found) != place(&want) {
                    return Err(StoreError::ShardMismatch {
                        path: core.clone(),
                        reason: describe_mismatch(&found, &want),
                    });
                }
            }
            None => {
                if let Some(other) = other_identity(&core) {
                    return Err(StoreError::ShardMismatch {
                        path: core.clone(),
                        reason: format!("it belongs to another store ({other})"),
                    });
                }
                missing.push((shard, replica, core));
            }
        }
    }
    for (shard, replica, core) in &missing {
        let partner_missing = replica.is_some_and(|r| {
            missing
                .iter()
                .any(|(s, p, _)| s == shard && *p == Some(1 - r))
        });
        // A replica may be rebuilt from its partner only if nothing else is in its place.
        if replica.is_none() || partner_missing || holds_data(core) {
            return Err(StoreError::ShardMissing {
                path: core.clone(),
                shard: *shard,
                replica: *replica,
            });
        }
    }
    for (shard, replica, core) in missing {
        fs::create_dir_all(&core).map_err(io_err(&core))?;
        write_identity(
            &identity_path(&core, store_id),
            &identity_of(config, store_id, shard, replica),
        )?;
    }
    // A shard directory beyond the configured count that belongs to this store: meta.json was
    // edited or replaced by one with fewer shards.
    let n = config.layout.shard_count();
    for extra in (n..).map(|i| shard_dir(dir, i)).take_while(|d| d.exists()) {
        let ours = identity_path(&extra, store_id).exists()
            || (0..2)
                .any(|r| identity_path(&extra.join(format!("replica-{r}")), store_id).exists());
        if ours || holds_data(&extra) {
            return Err(StoreError::ShardMismatch {
                path: extra,
                reason: format!("the configuration names {n} shard(s), but this one holds data"),
            });
        }
    }
    Ok(())
}

/// Writes the identity records of a replicated store at its first open, into replica
/// directories that must hold nothing yet, then marks `meta.json` registered.
pub(crate) fn register_shards(
    dir: &Path,
    config: &StoreConfig,
    store_id: &str,
) -> Result<(), StoreError> {
    for (_, _, core) in core_dirs(dir, config) {
        if let Some(other) = other_identity(&core) {
            return Err(StoreError::ShardMismatch {
                path: core,
                reason: format!("it belongs to another store ({other})"),
            });
        }
        if holds_data(&core) {
            return Err(StoreError::ShardMismatch {
                path: core,
                reason: "it holds data, but the store has never been opened".into(),
            });
        }
    }
    write_identities(dir, config, store_id)?;
    write_meta(
        dir,
        config,
        &MetaId {
            id: Some(store_id.to_string()),
            unregistered: false,
        },
    )
}

/// Gives a store written before identity records (no `store_id` in `meta.json`) an id and its
/// records, at its first open by this build. Such a store was opened once by the `init` that
/// made it, so every shard's directory holds a disk table: one that does not is missing.
pub(crate) fn adopt_legacy(dir: &Path, config: &StoreConfig) -> Result<String, StoreError> {
    for (shard, replica, core) in core_dirs(dir, config) {
        if let Some(other) = other_identity(&core) {
            return Err(StoreError::ShardMismatch {
                path: core,
                reason: format!("it belongs to another store ({other})"),
            });
        }
        if !holds_data(&core) {
            return Err(StoreError::ShardMissing {
                path: core,
                shard,
                replica,
            });
        }
    }
    let id = new_store_id();
    write_identities(dir, config, &id)?;
    write_meta(
        dir,
        config,
        &MetaId {
            id: Some(id.clone()),
            unregistered: false,
        },
    )?;
    Ok(id)
}

fn other_identity(core: &Path) -> Option<String> {
    fs::read_dir(core).ok()?.flatten().find_map(|e| {
        let name = e.file_name();
        let name = name.to_str()?;
        name.strip_prefix(IDENTITY_PREFIX)?
            .strip_suffix(".json")
            .map(|id| format!("store {id}"))
    })
}

fn describe_mismatch(found: &ShardIdentity, want: &ShardIdentity) -> String {
    let place = |i: &ShardIdentity| match i.replica {
        Some(r) => format!(
            "shard {} replica {} of {} shard(s) x {} replicas",
            i.shard, r, i.shards, i.replicas
        ),
        None => format!("shard {} of {} shard(s), 1 replica", i.shard, i.shards),
    };
    format!(
        "it records {}, the configuration expects {}",
        place(found),
        place(want)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::freq::layout::parse_pool;

    #[test]
    fn durability_parses() {
        assert_eq!("sync".parse::<Durability>().unwrap(), Durability::Sync);
        assert_eq!(
            "interval:250".parse::<Durability>().unwrap(),
            Durability::Interval(Duration::from_millis(250))
        );
        for bad in ["interval:", "interval:0", "interval:x", "fast", ""] {
            assert!(bad.parse::<Durability>().is_err(), "{bad}");
        }
        for d in [
            Durability::Sync,
            Durability::None,
            Durability::Interval(Duration::from_millis(7)),
        ] {
            assert_eq!(d.to_string().parse::<Durability>().unwrap(), d);
        }
    }

    #[test]
    fn config_round_trips_and_damage_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read_config(dir.path()).unwrap().is_none());
        let config = StoreConfig {
            layout: Layout::one_shard_per_range(&parse_pool("10-15,20-25").unwrap()).unwrap(),
            strategy: Routing::MostFree,
            durability: Durability::Sync,
            client_limit: Some(3),
            replicas: 2,
            cluster: None,
        };
        write_config(dir.path(), &config).unwrap();
        let back = read_config(dir.path()).unwrap().unwrap();
        assert_eq!(back, config);
        assert_eq!(back.layout.owner_of(21), Some(1));
        // A configuration written before replication reads as one replica.
        let old = fs::read_to_string(meta_path(dir.path()))
            .unwrap()
            .replace("\"replicas\": 2", "\"replicas_gone\": 0");
        fs::write(meta_path(dir.path()), old).unwrap();
        let back = read_config(dir.path()).unwrap().unwrap();
        assert_eq!(back.replicas, 1);
        assert!(back.check_replicas().is_ok());
        assert!(matches!(
            StoreConfig {
                replicas: 3,
                ..back.clone()
            }
            .check_replicas(),
            Err(FreqError::BadReplicas(_))
        ));
        fs::write(meta_path(dir.path()), "{\"format\": 1, \"config\": ").unwrap();
        assert!(matches!(
            read_config(dir.path()),
            Err(StoreError::BadMeta { .. })
        ));
        fs::write(meta_path(dir.path()), "{\"format\": 99, \"config\": {}}").unwrap();
        assert!(matches!(
            read_config(dir.path()),
            Err(StoreError::BadMeta { .. })
        ));
    }
}
