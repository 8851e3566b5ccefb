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

use super::error::{FreqError, StoreError};
use super::layout::Layout;
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
    /// Copies of each shard: 1, or 2 for a primary/backup pair (see
    /// [`ReplicaLink`](super::ReplicaLink)). Stores written before replication read as 1.
    #[serde(default = "one")]
    pub replicas: usize,
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

/// Reads a store's configuration; `Ok(None)` when `dir` holds no store.
pub fn read_config(dir: &Path) -> Result<Option<StoreConfig>, StoreError> {
    let path = meta_path(dir);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(StoreError::Io { path, source }),
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
    Ok(Some(config))
}

/// Writes a store's configuration atomically, creating `dir` if needed.
pub fn write_config(dir: &Path, config: &StoreConfig) -> Result<(), StoreError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| StoreError::Io { path, source }
    };
    fs::create_dir_all(dir).map_err(io(dir))?;
    let meta = MetaFile {
        format: FORMAT,
        config: config.clone(),
    };
    let text = serde_json::to_string_pretty(&meta).map_err(|e| StoreError::BadMeta {
        path: meta_path(dir),
        reason: e.to_string(),
    })?;
    let tmp = dir.join(format!("{META_FILE}.tmp"));
    {
        let mut f = fs::File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(text.as_bytes()).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
    }
    let path = meta_path(dir);
    fs::rename(&tmp, &path).map_err(io(&path))?;
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))?;
    Ok(())
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
