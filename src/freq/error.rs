//! Errors of the frequency allocator.

use super::range::FreqRange;

/// Errors of a pool layout: parsing, splitting, growing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LayoutError {
    /// A range or frequency did not parse (`10-15`, `7`).
    #[error(
        "bad frequency range {0:?}: expected FIRST-LAST or a single frequency, e.g. 10-15,20-25"
    )]
    BadRange(String),
    /// A range whose first frequency is above its last.
    #[error("empty range {first}-{last}: the first frequency is above the last")]
    EmptyRange {
        /// The first frequency given.
        first: u64,
        /// The last frequency given.
        last: u64,
    },
    /// Two ranges share frequencies.
    #[error("ranges {0} and {1} overlap")]
    Overlap(FreqRange, FreqRange),
    /// A layout with no shard.
    #[error("a pool needs at least one shard")]
    NoShards,
    /// A shard that owns no frequency.
    #[error("shard {0} owns no frequency")]
    EmptyShard(usize),
    /// More shards than frequencies.
    #[error("cannot split {frequencies} frequencies over {shards} shards")]
    TooManyShards {
        /// Shards asked for.
        shards: usize,
        /// Frequencies in the pool.
        frequencies: u64,
    },
    /// More shards than a store may have (see [`MAX_SHARDS`](super::MAX_SHARDS)): each shard
    /// is a thread and a disk table with its own files and cache.
    #[error("{shards} shards is more than the {max} a store may have")]
    ShardLimit {
        /// Shards asked for.
        shards: usize,
        /// The bound.
        max: usize,
    },
    /// The new pool leaves out frequencies the store has (only growth is allowed).
    #[error("the new pool drops frequencies {}: only growth is allowed", list(.0))]
    Shrink(Vec<FreqRange>),
    /// A cluster's node list or placement is unusable (the reason says how).
    #[error("bad cluster layout: {0}")]
    BadNodes(String),
}

/// An I/O error of a store file in words, once: "disk full while writing s/meta.json".
fn io_text(path: &std::path::Path, source: &std::io::Error) -> String {
    use std::io::ErrorKind::{QuotaExceeded, StorageFull};
    let words = crate::io_words::io_words(source);
    if matches!(source.kind(), StorageFull | QuotaExceeded) {
        format!("{words} while writing {}", path.display())
    } else {
        format!("{}: {words}", path.display())
    }
}

/// "1 frequency", "2 frequencies".
fn frequencies(n: u128) -> String {
    format!("{n} {}", if n == 1 { "frequency" } else { "frequencies" })
}

/// "the 1 frequency is", "all 6 frequencies are".
fn all_of(n: u64) -> String {
    if n == 1 {
        "the 1 frequency is".to_string()
    } else {
        format!("all {n} frequencies are")
    }
}

fn list(ranges: &[FreqRange]) -> String {
    let parts: Vec<String> = ranges.iter().map(ToString::to_string).collect();
    parts.join(",")
}

/// Errors of the frequency allocator's operations.
///
/// The first five are the course's answers, made precise: each leaves the pool unchanged.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FreqError {
    /// Every frequency of the whole pool is allocated (never returned while any shard has one).
    #[error("no frequency left: {} allocated", all_of(*pool_size))]
    NoFrequency {
        /// The pool's size.
        pool_size: u64,
    },
    /// The frequency is in the pool but free.
    #[error("frequency {0} is not allocated")]
    NotAllocated(u64),
    /// The frequency is outside the pool.
    #[error("frequency {0} is not in the pool")]
    UnknownFrequency(u64),
    /// The frequency is held by another client.
    #[error("frequency {freq} is held by {owner:?}, not by {client:?}")]
    NotOwner {
        /// The frequency.
        freq: u64,
        /// Who holds it.
        owner: String,
        /// Who asked to deallocate it.
        client: String,
    },
    /// The client already holds its limit of frequencies.
    #[error("client {client:?} already holds its limit of {}", frequencies(*limit as u128))]
    LimitReached {
        /// The client.
        client: String,
        /// The per-client limit.
        limit: usize,
    },
    /// A client name that is empty, too long, or holds a control character.
    #[error("bad client name {0:?}: it must be 1 to 255 bytes, without control characters")]
    BadClientName(String),
    /// A lease shorter than one tick of the lease clock (1 ms): it would expire as it is granted
    /// and the frequency would go to the next client too. Nothing was allocated.
    #[error("a lease must be at least 1 ms long")]
    BadLease,
    /// A client handle with that name is already open in this allocator.
    #[error("a client handle named {0:?} is already open")]
    ClientInUse(String),
    /// A strategy name that names none.
    #[error("unknown strategy {0:?}: expected most-free, round-robin, p2c or hash")]
    BadRouting(String),
    /// A durability that names none.
    #[error("unknown durability {0:?}: expected sync, interval:MS or none")]
    BadDurability(String),
    /// A bad or refused pool layout.
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// The store directory: its configuration or its disk tables.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The in-memory tables refused an operation (a bug if it happens: reported, not hidden).
    #[error(transparent)]
    Table(#[from] crate::ets::EtsError),
    /// The disk tables failed.
    #[error(transparent)]
    Disk(#[from] crate::dets::DetsError),
    /// The state read from disk breaks an invariant.
    #[error("corrupt store: {0}")]
    Corrupt(String),
    /// The shard serving the call failed while the call was pending; the operation may or may
    /// not have taken effect (it is not retried: an allocation might be made twice). The shard
    /// is restarted by its supervisor; a later call reaches the new instance.
    #[error("shard {shard} failed during the call: {reason}")]
    ShardFailed {
        /// The shard.
        shard: usize,
        /// Why (the exit reason, or a timeout).
        reason: String,
    },
    /// The shard lives on another node of the cluster and the call could not be sent there (its
    /// node is down or unreachable): nothing happened, and an allocation tries another shard.
    #[error("shard {shard} is unreachable: {reason}")]
    ShardUnreachable {
        /// The shard.
        shard: usize,
        /// Why (the node, and what failed: connecting, or its service missing).
        reason: String,
    },
    /// The allocator has been stopped.
    #[error("the allocator is stopped")]
    Stopped,
    /// The store is one node's part of a cluster: its node serves it.
    #[error(
        "the store at {} is part of a cluster (nodes {}): each node serves its shards \
         (freqalloc node --name NODE --data DIR); reach it with --node NODE",
        path.display(), nodes.join(", ")
    )]
    ClusterStore {
        /// The store's directory.
        path: std::path::PathBuf,
        /// The cluster's nodes.
        nodes: Vec<String>,
    },
    /// A replica count other than 1 or 2, or a replicated pool holding the frequency `u64::MAX`
    /// (reserved for a replica's sequence record).
    #[error("bad replication setting: {0}")]
    BadReplicas(String),
    /// [`Allocator::inject_fault`](super::Allocator::inject_fault) with
    /// [`Fault::PanicBackup`](super::Fault::PanicBackup) on a shard that has no running backup
    /// (nothing was done; try again once the backup runs).
    #[error("shard {shard} has no running backup")]
    NoBackup {
        /// The shard.
        shard: usize,
    },
}

/// A shard's answer that is not an error of the allocator's: the replication signals between the
/// replicas and the allocator, which act on them (resend to the primary, catch a backup up) and
/// never show them to a user, or a [`FreqError`] that is.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ShardError {
    /// The shard's error for the caller.
    #[error(transparent)]
    Freq(#[from] FreqError),
    /// A client request reached a replica that is not (or no longer) its shard's primary; the
    /// allocator sends it again to the primary (nothing was done).
    #[error("this replica is not the primary")]
    NotPrimary,
    /// A replication request reached a replica that is not a backup (nothing was done).
    #[error("this replica is not a backup")]
    NotBackup,
    /// Log entries that do not follow what the backup has applied (nothing was done; the
    /// primary catches the backup up instead).
    #[error("backup has applied up to {applied}, got entries from {got}")]
    ReplicaGap {
        /// The backup's applied sequence number.
        applied: u64,
        /// The first sequence number shipped.
        got: u64,
    },
    /// A replication request refused by a replica on another node: it carries an older epoch
    /// than the replica knows, or the replica needs a full state transfer first (nothing was
    /// done).
    #[error("refused: {0}")]
    Fenced(String),
    /// The partner replica on another node could not be asked (its node down, no answer in
    /// time, or an answer of another shape); whether it applied the request is unknown.
    #[error("{0}")]
    Link(String),
}

impl ShardError {
    /// What the caller of shard `shard` sees: the error itself, or a signal that escaped its
    /// handler as `ShardFailed`.
    pub(crate) fn into_freq(self, shard: usize) -> FreqError {
        match self {
            ShardError::Freq(e) => e,
            signal => FreqError::ShardFailed {
                shard,
                reason: signal.to_string(),
            },
        }
    }
}

/// Errors of a store directory: its configuration file and its disk tables.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Reading or writing a file failed.
    #[error("{}", io_text(path, source))]
    Io {
        /// The file or directory.
        path: std::path::PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// `meta.json` is damaged or of another format.
    #[error("{}: not a freqalloc store configuration: {reason}", path.display())]
    BadMeta {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// No store at that place (run `freqalloc init`).
    #[error("no store at {}: create one with `freqalloc init --pool 10-15,20-25`", .0.display())]
    NoStore(std::path::PathBuf),
    /// A store exists there with another configuration.
    #[error("the store at {} was created with {existing}; refusing {requested} (only --grow may add frequencies)", path.display())]
    ConfigMismatch {
        /// The store.
        path: std::path::PathBuf,
        /// What it has.
        existing: String,
        /// What was asked for.
        requested: String,
    },
    /// `init` on an existing store asked for another strategy, durability, limit or replica
    /// count than the stored one (nothing changed: settings change only with `config set`).
    #[error("the store at {} has {key} {existing}; refusing {key} {requested} (init never changes a store's settings: use `freqalloc config set {key} {requested}`)", path.display())]
    SettingMismatch {
        /// The store.
        path: std::path::PathBuf,
        /// The setting.
        key: &'static str,
        /// What it has.
        existing: String,
        /// What was asked for.
        requested: String,
    },
    /// A file of the store that is not a regular file (a FIFO, socket, device or directory in
    /// place of `meta.json` or of a disk table's file): refused rather than read, which could
    /// hang.
    #[error("{} is not a regular file: refusing to read it", path.display())]
    NotRegular {
        /// The file.
        path: std::path::PathBuf,
    },
    /// A shard (or both replicas of one) named by the configuration has no directory or no
    /// identity record: it was deleted, or the configuration was edited (e.g. `replicas`).
    /// Opening would start it empty and hand its allocations out again.
    #[error("{} is missing: the store's configuration names shard {shard}{}, but its directory or identity record is gone (restore it, or restore the matching meta.json)", path.display(), replica.map(|r| format!(" replica {r}")).unwrap_or_default())]
    ShardMissing {
        /// Where the shard's disk table should be.
        path: std::path::PathBuf,
        /// The shard.
        shard: usize,
        /// The replica, with replication.
        replica: Option<usize>,
    },
    /// A shard directory whose identity record does not match the configuration (another
    /// store's shard, another index, or a configuration edited by hand).
    #[error("{} does not match the store's configuration: {reason}", path.display())]
    ShardMismatch {
        /// The shard's directory.
        path: std::path::PathBuf,
        /// What differs.
        reason: String,
    },
    /// `init` found shard directories holding data but no `meta.json` (it was lost): creating
    /// a store over them would adopt some and hand their allocations out again.
    #[error("{} holds shard data ({}) but no meta.json: refusing to create a store over it (restore meta.json, or move the shard directories away)", path.display(), list_paths(found))]
    StrayShards {
        /// The store directory.
        path: std::path::PathBuf,
        /// The shard directories found.
        found: Vec<std::path::PathBuf>,
    },
    /// The disk is full (or too small for the store).
    #[error("disk full while writing {}", path.display())]
    DiskFull {
        /// The file or directory being written.
        path: std::path::PathBuf,
    },
    /// `config set` refused a change that would lose or double allocations (nothing changed).
    #[error("refusing to set {key} to {value}: {reason}")]
    ConfigRefused {
        /// The setting.
        key: String,
        /// The value asked for.
        value: String,
        /// Why.
        reason: String,
    },
}

fn list_paths(paths: &[std::path::PathBuf]) -> String {
    let parts: Vec<String> = paths
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    parts.join(", ")
}
