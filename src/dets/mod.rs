//! Disk tables: the Rust analogue of Erlang's
//! [`dets`](https://www.erlang.org/doc/apps/stdlib/dets.html), on
//! [sled](https://docs.rs/sled/0.34.7) 0.34.
//!
//! A [`DiskTable<K, V>`] is a typed table of objects `(K, V)` stored in its own directory (as one
//! DETS file holds one table). It speaks the same [`ReadTable`]/[`WriteTable`] contract as the
//! in-memory tables of [`crate::ets`], with the four types of [`TableType`], including
//! `OrderedSet`, which DETS never had: keys are stored in an order-preserving byte encoding, so
//! traversal, `first`/`next`/`last`/`prev` and [`range`](ReadTable::range) follow `K`'s `Ord`
//! for integers, strings, byte strings, `()`, `bool`, `char`, options, tuples and derived
//! structs and enums of these. Floats and maps are not keys ([`DetsError::UnsupportedKey`]).
//!
//! ```
//! use freqalloc::dets::{DiskTable, FlushPolicy, OpenOptions};
//! use freqalloc::{ReadTable, TableType, WriteTable};
//!
//! # fn main() -> Result<(), freqalloc::dets::DetsError> {
//! let dir = tempfile::tempdir().expect("temp dir");
//! let opts = OpenOptions::new(TableType::OrderedSet).flush_policy(FlushPolicy::Manual);
//! let mut t: DiskTable<(i64, String), u32> = DiskTable::open(dir.path().join("t"), opts)?;
//! t.insert((2, "b".into()), 20)?;
//! t.insert((-1, "z".into()), 10)?;
//! t.insert_many([((2, "a".into()), 21), ((7, String::new()), 70)])?;
//! assert_eq!(t.update_counter(&(7, String::new()), 5, None)?, 75);
//! assert_eq!(t.first()?, Some((-1, "z".to_string())));
//! assert_eq!(t.lookup(&(2, "a".into()))?, vec![21]);
//! t.close()?; // flushes; errors are returned, not lost
//!
//! // Reopen: same type and schema, or a typed error.
//! let t: DiskTable<(i64, String), u32> = DiskTable::open(dir.path().join("t"), opts)?;
//! assert_eq!(t.len()?, 4);
//! let wrong = DiskTable::<u64, u32>::open(dir.path().join("t"), opts);
//! assert!(wrong.is_err()); // still open above: locked (and a schema mismatch once closed)
//! # Ok(()) }
//! ```
//!
//! ## FlushPolicy
//!
//! Chosen at open with [`FlushPolicy`]:
//!
//! - [`FlushPolicy::EveryWrite`]: a write returns only after [`DiskTable::sync`] has returned
//!   (sled's `flush`, then an `fdatasync` of sled's log file, see below). A process killed at
//!   any instant loses no acknowledged write; `insert_many`, `insert_new_many`,
//!   [`DiskTable::apply_batch`], `delete_all_objects`, `select_delete`, `take` and
//!   [`DiskTable::from_ets`]/[`DiskTable::replace_from`] are all-or-nothing across a crash
//!   (one sled batch each). Tested by `tests/dets_crash.rs`, which SIGKILLs a writer.
//! - [`FlushPolicy::Interval(d)`](FlushPolicy::Interval): a background flusher
//!   (`freq-dets-flush`) runs [`DiskTable::sync`] every `d`, at a fixed rate (as DETS's
//!   `auto_save`). A crash loses at most the writes of the last `d` plus the time of one sync;
//!   what it keeps is a prefix of the writes (sled recovers a consistent prefix of its log), and
//!   batches stay all-or-nothing. (sled's own flusher is off: it also runs garbage collection
//!   and an `fsync` in each cycle, which stretched `interval:50` to 170 ms.)
//! - [`FlushPolicy::Manual`]: only [`DiskTable::sync`], [`DiskTable::close`] and `Drop` flush.
//!   A crash loses everything since the last of these (again a consistent prefix).
//!
//! What sled 0.34 promises and what it does not. `flush` writes sled's dirty log buffers and,
//! on Linux, waits for them with `sync_file_range`, which does not flush the drive's volatile
//! write cache nor the file's metadata (its size, as the log grows): upstream
//! [spacejam/sled#1452](https://github.com/spacejam/sled/issues/1452) ("Data is not written
//! durably", open) and [#1351](https://github.com/spacejam/sled/issues/1351) (btrfs). So
//! [`DiskTable::sync`] follows it with an `fdatasync` of sled's log file (`db`), which flushes
//! both; that is what `EveryWrite` costs (about one `fdatasync` per write; batch to share it).
//! Recovery replays the log up to the last entry whose checksum holds, so a torn tail is cut,
//! not fatal. Limits that remain: sled writes values too large for its log (blobs, a fraction
//! of its 512 KiB segment) to separate files without any sync, and sled 0.34 is beta software
//! whose authors do not freeze its format. Treat `EveryWrite` as "survives `kill -9`"
//! (tested) and "survives power loss if the drive honours `fdatasync`" (argued, not tested).
//!
//! ## Errors
//!
//! Every fault is a [`DetsError`] naming the table's path: a table open in another handle or
//! process ([`DetsError::Locked`]), a table of another type or schema
//! ([`DetsError::SchemaMismatch`], naming both), damaged or truncated files
//! ([`DetsError::Corrupted`]), I/O errors. The schema is recorded at creation: the table type,
//! `std::any::type_name` of `K` and `V`, and the user's [`OpenOptions::version`].
//!
//! Damage detection needs help: sled recovers a garbled or truncated log by cutting it at the
//! first bad entry, silently, which can drop every object. So a small state file beside sled's
//! (`freqalloc-dets.state`, replaced atomically) records the schema and, at each clean close,
//! the object and key counts; open recounts (one scan) and a mismatch, or a state file without
//! a schema record in sled, is [`DetsError::Corrupted`]. After a crash (no clean close) the
//! counts are unknown, so damage that sled cuts away silently is only caught if it removes the
//! schema record.
//!
//! ## Storage layout
//!
//! Two sled trees: `meta` holds the [`Schema`]; `data` maps the key bytes (see the private
//! `key` module; for bags followed by an 8-byte big-endian sequence number, so a key's objects
//! are a prefix scan in insertion order) to the record `codec::encode(&(value, key))` (value first, so a lookup decodes only the
//! value). The
//! object and key counts live in memory and are recomputed by one scan at open, so `len` is
//! O(1). Comparisons of objects (`Bag` dedup, `delete_object`) compare encoded records, so
//! `V`'s encoding must be deterministic (no `HashMap` values).

mod error;
mod key;
mod mark;
mod options;
mod schema;

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::marker::PhantomData;
use std::ops::Bound;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::codec;
use crate::table::{Counter, ReadTable, TableInfo, TableType, WriteTable};

pub use error::DetsError;
use key::encode_key;
pub use options::{FlushPolicy, OpenOptions};
pub use schema::Schema;

/// The name of the tree holding the schema.
const META_TREE: &[u8] = b"freqalloc-dets-meta";
/// The name of the tree holding the objects.
const DATA_TREE: &[u8] = b"freqalloc-dets-data";
/// The meta key of the schema record.
const SCHEMA_KEY: &[u8] = b"schema";
/// Identifies our stores and their layout version.
const FORMAT: &str = "freqalloc-dets/1";
/// Bytes of the sequence suffix of bag keys.
const SEQ_LEN: usize = 8;
/// The state file beside sled's files: the schema, and the counts at the last clean close.
const STATE_FILE: &str = "freqalloc-dets.state";

/// What the state file records: the counts `(len, keys, next_seq)` at the last clean close,
/// or `None` while a handle has the table open (so a crash leaves `None`).
type State = (String, Schema, Option<(u64, u64, u64)>);

fn io_error(path: &Path, source: std::io::Error) -> DetsError {
    DetsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Reads the state file; `Ok(None)` if there is none.
fn read_state(path: &Path) -> Result<Option<State>, DetsError> {
    match std::fs::read(path.join(STATE_FILE)) {
        Ok(bytes) => {
            let state: State = codec::decode(&bytes)
                .map_err(|e| corrupted(path, format!("unreadable state file: {e}")))?;
            Ok(Some(state))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_error(path, e)),
    }
}

/// Replaces the state file atomically and durably (write, fsync, rename, fsync the directory).
fn write_state(
    path: &Path,
    schema: &Schema,
    clean: Option<(u64, u64, u64)>,
) -> Result<(), DetsError> {
    use std::io::Write;
    let bytes = codec::encode(&(FORMAT, schema, clean))?;
    let tmp = path.join(format!("{STATE_FILE}.tmp"));
    let mut f = std::fs::File::create(&tmp).map_err(|e| io_error(path, e))?;
    f.write_all(&bytes).map_err(|e| io_error(path, e))?;
    f.sync_all().map_err(|e| io_error(path, e))?;
    std::fs::rename(&tmp, path.join(STATE_FILE)).map_err(|e| io_error(path, e))?;
    std::fs::File::open(path)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error(path, e))
}

/// One write of an atomic [`DiskTable::apply_batch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchOp<K, V> {
    /// As [`WriteTable::insert`].
    Insert(K, V),
    /// As [`WriteTable::delete`]: every object under the key.
    Delete(K),
}

/// A typed disk table of objects `(K, V)` in its own directory. See the [module docs](self).
///
/// One handle owns the table: a second open of the same directory, in this process or
/// another, is [`DetsError::Locked`] until this handle is closed or dropped.
pub struct DiskTable<K, V> {
    /// Declared first so it drops first: unregisters the directory (see `open_db`).
    _registered: OpenGuard,
    db: sled::Db,
    /// What a sync needs, shared with the interval flusher.
    syncer: Arc<Syncer>,
    /// With [`FlushPolicy::Interval`]: the background flusher (stopped and joined on drop).
    flusher: Option<Flusher>,
    data: sled::Tree,
    path: PathBuf,
    schema: Schema,
    flush_policy: FlushPolicy,
    /// Number of objects.
    len: usize,
    /// Number of distinct keys.
    keys: usize,
    /// The next bag sequence number (bags only).
    next_seq: u64,
    /// Set by `close` (so `Drop` does not close twice) and during `open`.
    closed: bool,
    _types: PhantomData<fn() -> (K, V)>,
}

impl<K, V> fmt::Debug for DiskTable<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DiskTable")
            .field("path", &self.path)
            .field("schema", &self.schema)
            .field("flush_policy", &self.flush_policy)
            .field("len", &self.len)
            .finish()
    }
}

/// Maps a sled error to ours, naming the path.
fn sled_error(path: &Path, e: sled::Error) -> DetsError {
    match e {
        sled::Error::Io(io) => {
            if io.to_string().contains("could not acquire lock") {
                DetsError::Locked {
                    path: path.to_path_buf(),
                }
            } else {
                DetsError::Io {
                    path: path.to_path_buf(),
                    source: io,
                }
            }
        }
        e @ sled::Error::Corruption { .. } => DetsError::Corrupted {
            path: path.to_path_buf(),
            detail: e.to_string(),
        },
        e => DetsError::Storage {
            path: path.to_path_buf(),
            detail: e.to_string(),
        },
    }
}

/// sled `flush`, then `fdatasync` of its log file.
fn flush_and_sync(db: &sled::Db, log_file: &std::fs::File) -> sled::Result<()> {
    db.flush()?;
    log_file.sync_data()?;
    Ok(())
}

fn corrupted(path: &Path, detail: impl Into<String>) -> DetsError {
    DetsError::Corrupted {
        path: path.to_path_buf(),
        detail: detail.into(),
    }
}

/// The directories this process has open, and those it has closed since it started.
///
/// sled 0.34 releases its file lock only when the last clone of its internal handles drops,
/// and its background threads (log writes, file truncation) hold clones for a moment after the
/// work a `flush` waits for is done. So reopening a table this process just closed can find the
/// lock still held for a few milliseconds. The registry lets `open` tell that case (retry until
/// the lock is released) from a table really open elsewhere (fail at once).
struct Registry {
    open: BTreeSet<PathBuf>,
    closed: BTreeSet<PathBuf>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    open: BTreeSet::new(),
    closed: BTreeSet::new(),
});

/// How long `open` waits for sled to release the lock of a table this process closed.
const RELEASE_DEADLINE: Duration = Duration::from_secs(10);

/// Removes its directory from the registry's open set when dropped; records it as closed
/// by this process if sled had opened it.
struct OpenGuard {
    path: Option<PathBuf>,
    sled_opened: bool,
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        if let Some(p) = self.path.take() {
            let mut reg = REGISTRY.lock();
            reg.open.remove(&p);
            if self.sled_opened {
                reg.closed.insert(p);
            }
        }
    }
}

/// Opens sled in `path`: a typed error for a locked or damaged store, never a panic.
/// Returns the db and the canonical path, registered as open (the caller owns the guard).
fn open_db(path: &Path, config: &sled::Config) -> Result<(sled::Db, PathBuf), DetsError> {
    std::fs::create_dir_all(path).map_err(|e| io_error(path, e))?;
    let canonical = std::fs::canonicalize(path).map_err(|e| io_error(path, e))?;
    let closed_here = {
        let mut reg = REGISTRY.lock();
        if !reg.open.insert(canonical.clone()) {
            return Err(DetsError::Locked {
                path: path.to_path_buf(),
            });
        }
        reg.closed.contains(&canonical)
    };
    // From here the guard unregisters the path if opening fails.
    let mut guard = OpenGuard {
        path: Some(canonical.clone()),
        sled_opened: false,
    };
    let start = Instant::now();
    let mut pause = Duration::from_micros(100);
    loop {
        // sled 0.34 can panic on some damaged files instead of returning an error; a damaged
        // store must be a typed error, so catch that here.
        let attempt = match catch_unwind(AssertUnwindSafe(|| config.open())) {
            Ok(r) => r.map_err(|e| sled_error(path, e)),
            Err(_) => Err(corrupted(
                path,
                "the storage engine failed to recover the files",
            )),
        };
        match attempt {
            Ok(db) => {
                // Ownership of the registration passes to the caller's guard; the path is
                // recorded as closed again when that guard drops, so the set stays bounded by
                // the directories this process has closed and not reopened.
                REGISTRY.lock().closed.remove(&canonical);
                guard.path = None;
                return Ok((db, canonical));
            }
            Err(DetsError::Locked { .. }) if closed_here && start.elapsed() < RELEASE_DEADLINE => {
                // Not synchronisation with anything we could wait on: sled gives no signal
                // when its last background clone drops, so poll with backoff, bounded.
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(20));
            }
            Err(e) => return Err(e),
        }
    }
}

/// The key bytes of `key`.
fn key_bytes<K: Serialize>(key: &K) -> Result<Vec<u8>, DetsError> {
    let mut out = Vec::with_capacity(16);
    encode_key(key, &mut out)?;
    Ok(out)
}

/// The stored record of an object: value first, so lookups decode only the value.
fn record<K: Serialize, V: Serialize>(key: &K, value: &V) -> Result<Vec<u8>, DetsError> {
    Ok(codec::encode(&(value, key))?)
}

/// The objects pending under one key while a batch is planned: (data key, record) pairs.
type Pending = Vec<(Vec<u8>, Vec<u8>)>;

/// One planned write of a data key: `Some(record)` to store, `None` to remove.
type Write = (Vec<u8>, Option<Vec<u8>>);

/// An atomic write being planned: its writes in order plus the count changes they make.
struct Plan {
    writes: Vec<Write>,
    /// The objects under each key touched so far, as they will be after the batch.
    touched: HashMap<Vec<u8>, Pending>,
    /// True when the batch starts by removing every object (replace, clear).
    from_empty: bool,
    len: usize,
    keys: usize,
    next_seq: u64,
}

impl<K, V> DiskTable<K, V>
where
    K: Serialize + DeserializeOwned,
    V: Serialize + DeserializeOwned,
{
    /// Opens the table in directory `path`, creating it if absent.
    ///
    /// Errors: [`DetsError::Locked`] if another handle has it open,
    /// [`DetsError::SchemaMismatch`] if it holds another type or schema,
    /// [`DetsError::Corrupted`] if its files are damaged, [`DetsError::Io`] for the rest.
    pub fn open(path: impl AsRef<Path>, opts: OpenOptions) -> Result<Self, DetsError> {
        let path = path.as_ref().to_path_buf();
        // sled flushes every 500 ms by default; every mode here flushes on its own terms (with
        // `Interval`, our flusher below: sled's runs its garbage collection and an `fsync` in
        // the same cycle, which stretched the interval well past `d`).
        let config = sled::Config::new().path(&path).flush_every_ms(None);
        let (db, canonical) = open_db(&path, &config)?;
        let path_guard = OpenGuard {
            path: Some(canonical),
            sled_opened: true,
        };
        let log_file = std::fs::File::open(path.join("db")).map_err(|e| io_error(&path, e))?;
        let meta = db.open_tree(META_TREE).map_err(|e| sled_error(&path, e))?;
        let data = db.open_tree(DATA_TREE).map_err(|e| sled_error(&path, e))?;
        let expected = Schema::of::<K, V>(&opts);
        let state = read_state(&path)?;
        if let Some((format, found, _)) = &state {
            if format != FORMAT {
                return Err(corrupted(&path, format!("unknown format {format:?}")));
            }
            if *found != expected {
                return Err(DetsError::SchemaMismatch {
                    path,
                    expected: Box::new(expected),
                    found: Box::new(found.clone()),
                });
            }
        }
        match meta.get(SCHEMA_KEY).map_err(|e| sled_error(&path, e))? {
            Some(bytes) => {
                let (format, found): (String, Schema) = codec::decode(&bytes)
                    .map_err(|e| corrupted(&path, format!("unreadable schema record: {e}")))?;
                if format != FORMAT {
                    return Err(corrupted(&path, format!("unknown format {format:?}")));
                }
                if found != expected {
                    return Err(DetsError::SchemaMismatch {
                        path,
                        expected: Box::new(expected),
                        found: Box::new(found),
                    });
                }
            }
            None => {
                // sled recovers a damaged or truncated log by cutting it at the first bad
                // entry, which can silently drop everything; our state file remembers that
                // the table existed.
                if state.is_some() {
                    return Err(corrupted(
                        &path,
                        "the schema record is gone: the store was truncated or damaged",
                    ));
                }
                let others = db
                    .tree_names()
                    .into_iter()
                    .any(|n| n != META_TREE && n != DATA_TREE && n != b"__sled__default");
                if !data.is_empty() || others || !db.is_empty() {
                    return Err(corrupted(
                        &path,
                        "objects are present but the schema record is missing",
                    ));
                }
                let rec = codec::encode(&(FORMAT, &expected))?;
                meta.insert(SCHEMA_KEY, rec)
                    .map_err(|e| sled_error(&path, e))?;
                // Durable before the state file below says the table exists.
                flush_and_sync(&db, &log_file).map_err(|e| sled_error(&path, e))?;
            }
        }
        // A log behind its high-water mark lost writes a completed sync made durable.
        let (mark_file, marked) = mark::MarkFile::open(&path)?;
        let logged = mark::decode_logged(
            meta.get(mark::MARK_KEY)
                .map_err(|e| sled_error(&path, e))?
                .as_deref(),
        )
        .ok_or_else(|| corrupted(&path, "unreadable sync record"))?;
        if logged < marked {
            return Err(corrupted(
                &path,
                format!(
                    "the log holds {logged} completed syncs but {marked} were acknowledged: \
                     it was truncated or damaged after a crash, and acknowledged writes are lost"
                ),
            ));
        }
        let mut table = DiskTable {
            _registered: path_guard,
            db: db.clone(),
            syncer: Arc::new(Syncer {
                db,
                log_file,
                meta,
                mark: Mutex::new((mark_file, logged)),
                path: path.clone(),
            }),
            flusher: None,
            data,
            path,
            schema: expected,
            flush_policy: opts.flush_policy,
            len: 0,
            keys: 0,
            next_seq: 0,
            // Until open succeeds, `Drop` must not record a clean close: that would overwrite
            // the counts that reveal a damaged store.
            closed: true,
            _types: PhantomData,
        };
        table.recount()?;
        if let Some((_, _, Some(counts))) = state {
            let now = (table.len as u64, table.keys as u64, table.next_seq);
            if counts.0 != now.0 || counts.1 != now.1 {
                return Err(corrupted(
                    &table.path,
                    format!(
                        "closed cleanly with {} objects, {} found: the store was truncated or damaged",
                        counts.0, now.0
                    ),
                ));
            }
            table.next_seq = table.next_seq.max(counts.2);
        }
        // Mark the table open: a crash from here on leaves no counts to check against.
        write_state(&table.path, &table.schema, None)?;
        table.closed = false;
        if let FlushPolicy::Interval(d) = opts.flush_policy {
            table.flusher = Some(Flusher::start(Arc::clone(&table.syncer), d)?);
        }
        Ok(table)
    }

    /// Recomputes the object and key counts and the next bag sequence number by one scan.
    fn recount(&mut self) -> Result<(), DetsError> {
        let (mut len, mut keys, mut max_seq) = (0usize, 0usize, None::<u64>);
        let bag = self.schema.table_type.is_bag();
        let mut last_prefix: Vec<u8> = Vec::new();
        for item in self.data.iter().keys() {
            let k = item.map_err(|e| self.err(e))?;
            len += 1;
            if bag {
                let Some(split) = k.len().checked_sub(SEQ_LEN) else {
                    return Err(corrupted(
                        &self.path,
                        "a bag key is shorter than its sequence number",
                    ));
                };
                let mut seq = [0u8; SEQ_LEN];
                seq.copy_from_slice(&k[split..]);
                let seq = u64::from_be_bytes(seq);
                max_seq = Some(max_seq.map_or(seq, |m| m.max(seq)));
                if keys == 0 || last_prefix.as_slice() != &k[..split] {
                    keys += 1;
                    last_prefix.clear();
                    last_prefix.extend_from_slice(&k[..split]);
                }
            } else {
                keys += 1;
            }
        }
        self.len = len;
        self.keys = keys;
        self.next_seq = max_seq.map_or(0, |m| m.saturating_add(1));
        Ok(())
    }

    fn err(&self, e: sled::Error) -> DetsError {
        sled_error(&self.path, e)
    }

    /// The table's directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The schema recorded in the store.
    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// The flush policy this handle was opened with.
    pub fn flush_policy(&self) -> FlushPolicy {
        self.flush_policy
    }

    /// Writes every pending write to disk and waits for it. Erlang: `sync/1`.
    ///
    /// sled's `flush` writes its log buffers but, on Linux, syncs them with
    /// `sync_file_range`, which neither flushes the drive's write cache nor the file's size;
    /// so after it we `fdatasync` the log file ourselves, which does both.
    ///
    /// Each completed sync is numbered: the number goes into the log before the flush and into
    /// the high-water mark file beside it after, so a later open detects a log that lost what
    /// a completed sync made durable (see [`DetsError::Corrupted`]).
    pub fn sync(&self) -> Result<(), DetsError> {
        self.sync_marked()
    }

    /// Flushes and closes the table, returning any error of the final flush (`Drop` would
    /// have to ignore it). Erlang: `close/1`.
    pub fn close(mut self) -> Result<(), DetsError> {
        drop(self.flusher.take());
        let r = self.close_cleanly();
        self.closed = true;
        r
    }

    /// Flushes, then records the counts in the state file so the next open can check them.
    fn close_cleanly(&self) -> Result<(), DetsError> {
        self.sync()?;
        let counts = (self.len as u64, self.keys as u64, self.next_seq);
        write_state(&self.path, &self.schema, Some(counts))
    }

    fn after_write(&self) -> Result<(), DetsError> {
        if self.flush_policy == FlushPolicy::EveryWrite {
            self.sync()?;
        }
        Ok(())
    }

    fn decode(&self, rec: &[u8]) -> Result<(K, V), DetsError> {
        let (v, k): (V, K) = codec::decode(rec)
            .map_err(|e| corrupted(&self.path, format!("unreadable record: {e}")))?;
        Ok((k, v))
    }

    /// Decodes only the value of a record (its first part).
    fn decode_value(&self, rec: &[u8]) -> Result<V, DetsError> {
        codec::decode_prefix::<V>(rec)
            .map(|(v, _)| v)
            .map_err(|e| corrupted(&self.path, format!("unreadable record: {e}")))
    }

    /// The (data key, record) pairs stored under the key bytes `kb`, in insertion order.
    fn stored(&self, kb: &[u8]) -> Result<Pending, DetsError> {
        if self.schema.table_type.is_bag() {
            self.data
                .scan_prefix(kb)
                .map(|r| {
                    r.map(|(k, v)| (k.to_vec(), v.to_vec()))
                        .map_err(|e| self.err(e))
                })
                .collect()
        } else {
            Ok(self
                .data
                .get(kb)
                .map_err(|e| self.err(e))?
                .map(|v| vec![(kb.to_vec(), v.to_vec())])
                .unwrap_or_default())
        }
    }

    fn plan(&self, from_empty: bool) -> Result<Plan, DetsError> {
        let mut writes = Vec::new();
        if from_empty {
            for k in self.data.iter().keys() {
                writes.push((k.map_err(|e| self.err(e))?.to_vec(), None));
            }
        }
        Ok(Plan {
            writes,
            touched: HashMap::new(),
            from_empty,
            len: if from_empty { 0 } else { self.len },
            keys: if from_empty { 0 } else { self.keys },
            next_seq: self.next_seq,
        })
    }

    /// The pending objects under `kb` in `plan`, loaded from the store on first touch.
    fn touch<'p>(&self, plan: &'p mut Plan, kb: &[u8]) -> Result<&'p mut Pending, DetsError> {
        if !plan.touched.contains_key(kb) {
            let now = if plan.from_empty {
                Vec::new()
            } else {
                self.stored(kb)?
            };
            plan.touched.insert(kb.to_vec(), now);
        }
        plan.touched
            .get_mut(kb)
            .ok_or_else(|| corrupted(&self.path, "internal: batch plan lost a key"))
    }

    fn plan_insert(&self, plan: &mut Plan, key: &K, value: &V) -> Result<(), DetsError> {
        let kb = key_bytes(key)?;
        let rec = record(key, value)?;
        let table_type = self.schema.table_type;
        let next_seq = plan.next_seq;
        let objects = self.touch(plan, &kb)?;
        let was_empty = objects.is_empty();
        let (dk, added) = match table_type {
            TableType::Set | TableType::OrderedSet => {
                objects.clear();
                (kb, was_empty)
            }
            TableType::Bag if objects.iter().any(|(_, r)| *r == rec) => return Ok(()),
            TableType::Bag | TableType::DuplicateBag => {
                let mut dk = kb;
                dk.extend_from_slice(&next_seq.to_be_bytes());
                (dk, true)
            }
        };
        objects.push((dk.clone(), rec.clone()));
        if table_type.is_bag() {
            plan.next_seq = next_seq
                .checked_add(1)
                .ok_or_else(|| corrupted(&self.path, "bag sequence numbers exhausted"))?;
        }
        plan.writes.push((dk, Some(rec)));
        plan.len += usize::from(added);
        plan.keys += usize::from(was_empty);
        Ok(())
    }

    fn plan_delete(&self, plan: &mut Plan, key: &K) -> Result<(), DetsError> {
        let kb = key_bytes(key)?;
        let objects = self.touch(plan, &kb)?;
        let removed = std::mem::take(objects);
        if !removed.is_empty() {
            plan.len -= removed.len();
            plan.keys -= 1;
        }
        for (dk, _) in removed {
            plan.writes.push((dk, None));
        }
        Ok(())
    }

    fn commit(&mut self, plan: Plan) -> Result<(), DetsError> {
        let wrote = self.write_all(plan.writes)?;
        self.len = plan.len;
        self.keys = plan.keys;
        self.next_seq = plan.next_seq;
        if wrote {
            self.after_write()?;
        }
        Ok(())
    }

    /// Applies a mixed batch of inserts and deletes atomically: readers and a crash see all of
    /// it or none of it (one sled batch; in [`FlushPolicy::EveryWrite`] one flush for the whole
    /// batch, which is what group commit needs). Ops apply in order, so a later op sees the
    /// effect of an earlier one. Works for every table type.
    pub fn apply_batch<I>(&mut self, ops: I) -> Result<(), DetsError>
    where
        I: IntoIterator<Item = BatchOp<K, V>>,
    {
        let mut plan = self.plan(false)?;
        for op in ops {
            match op {
                BatchOp::Insert(k, v) => self.plan_insert(&mut plan, &k, &v)?,
                BatchOp::Delete(k) => self.plan_delete(&mut plan, &k)?,
            }
        }
        self.commit(plan)
    }

    /// Copies every object of this table into `dst` (one `insert_many`). With an
    /// [`ets`](crate::ets) table as `dst` this loads a disk table into memory.
    pub fn copy_into<T>(&self, dst: &mut T) -> Result<(), DetsError>
    where
        T: WriteTable<K, V>,
        DetsError: From<T::Error>,
    {
        let objects = self.to_vec()?;
        dst.insert_many(objects)?;
        Ok(())
    }

    /// Replaces this table's contents by `src`'s, atomically: a crash leaves the old contents
    /// or the new ones, never a mix. With an [`ets`](crate::ets) table as `src` this saves an
    /// in-memory table to disk.
    pub fn replace_from<T>(&mut self, src: &T) -> Result<(), DetsError>
    where
        T: ReadTable<K, V>,
        DetsError: From<T::Error>,
    {
        let objects = src.to_vec()?;
        let mut plan = self.plan(true)?;
        for (k, v) in &objects {
            self.plan_insert(&mut plan, k, v)?;
        }
        self.commit(plan)
    }

    /// Loads this table into a new in-memory [`ets::Table`](crate::ets::Table) of the same
    /// type (the DETS idiom `dets:to_ets/2`). The disk table is not changed.
    pub fn to_ets(&self) -> Result<crate::ets::Table<K, V>, DetsError>
    where
        K: Eq + std::hash::Hash + Ord + Clone,
        V: Clone + PartialEq,
    {
        let mut t = crate::ets::Table::new(self.schema.table_type);
        self.copy_into(&mut t)?;
        Ok(t)
    }

    /// Replaces this table's contents by those of an in-memory table (any ETS handle:
    /// [`Table`](crate::ets::Table), [`TableReader`](crate::ets::TableReader),
    /// [`PublicTable`](crate::ets::PublicTable)), atomically: after a crash the disk table
    /// holds the old contents or the new ones (`dets:from_ets/2`, which DETS does not make
    /// atomic). Objects are inserted with this table's type semantics.
    pub fn from_ets<T>(&mut self, src: &T) -> Result<(), DetsError>
    where
        T: ReadTable<K, V, Error = crate::ets::EtsError>,
    {
        self.replace_from(src)
    }

    /// The first stored key strictly after the key bytes (bag suffixes skipped).
    fn key_after(&self, kb: Vec<u8>) -> Result<Option<K>, DetsError> {
        let mut kb = kb;
        if self.schema.table_type.is_bag() {
            kb.extend_from_slice(&[0xFF; SEQ_LEN]);
        }
        match self.data.get_gt(&kb).map_err(|e| self.err(e))? {
            Some((_, rec)) => Ok(Some(self.decode(&rec)?.0)),
            None => Ok(None),
        }
    }

    fn bound_bytes(b: Bound<&K>) -> Result<Bound<Vec<u8>>, DetsError> {
        Ok(match b {
            Bound::Unbounded => Bound::Unbounded,
            Bound::Included(k) => Bound::Included(key_bytes(k)?),
            Bound::Excluded(k) => Bound::Excluded(key_bytes(k)?),
        })
    }

    fn scan<F>(&self, mut f: F) -> Result<(), DetsError>
    where
        F: FnMut(K, V),
    {
        for item in self.data.iter() {
            let (_, rec) = item.map_err(|e| self.err(e))?;
            let (k, v) = self.decode(&rec)?;
            f(k, v);
        }
        Ok(())
    }

    /// Applies the writes atomically: one sled write when there is one (a sled batch costs
    /// much more than a single write), one sled batch otherwise. Returns whether it wrote;
    /// the caller updates the counts, then calls `after_write`.
    fn write_all(&self, mut writes: Vec<Write>) -> Result<bool, DetsError> {
        match writes.len() {
            0 => return Ok(false),
            1 => {
                let Some((dk, rec)) = writes.pop() else {
                    return Ok(false);
                };
                match rec {
                    Some(rec) => self.data.insert(dk, rec).map(drop),
                    None => self.data.remove(dk).map(drop),
                }
                .map_err(|e| self.err(e))?;
            }
            _ => {
                let mut batch = sled::Batch::default();
                for (dk, rec) in writes {
                    match rec {
                        Some(rec) => batch.insert(dk, rec),
                        None => batch.remove(dk),
                    }
                }
                self.data.apply_batch(batch).map_err(|e| self.err(e))?;
            }
        }
        Ok(true)
    }

    /// Removes the data keys atomically and updates the counts.
    fn remove_all(&mut self, dks: Vec<Vec<u8>>, removed_keys: usize) -> Result<(), DetsError> {
        let n = dks.len();
        if self.write_all(dks.into_iter().map(|dk| (dk, None)).collect())? {
            self.len -= n;
            self.keys -= removed_keys;
            self.after_write()?;
        }
        Ok(())
    }

    fn sets_only(&self, op: &'static str) -> Result<(), DetsError> {
        if self.schema.table_type.is_bag() {
            return Err(DetsError::WrongTableType {
                op,
                table_type: self.schema.table_type,
            });
        }
        Ok(())
    }
}

impl<K, V> DiskTable<K, V> {
    /// [`DiskTable::sync`]'s body (no bounds, so `Drop` can call it).
    fn sync_marked(&self) -> Result<(), DetsError> {
        self.syncer.sync()
    }
}

/// What a sync needs: shared by the table and its interval flusher.
struct Syncer {
    db: sled::Db,
    /// sled's log file, opened again to `fdatasync` it (see [`DiskTable::sync`]).
    log_file: std::fs::File,
    /// The meta tree (schema record, sync number).
    meta: sled::Tree,
    /// The high-water mark file and the last sync number written to it (see `mark.rs`).
    mark: Mutex<(mark::MarkFile, u64)>,
    path: PathBuf,
}

impl Syncer {
    /// Numbers the sync in the log, flushes and `fdatasync`s it, then records the number in the
    /// mark file (see `mark.rs`). One at a time (the mark's lock).
    fn sync(&self) -> Result<(), DetsError> {
        let mut mark = self.mark.lock();
        let next = mark.1 + 1;
        self.meta
            .insert(mark::MARK_KEY, &next.to_le_bytes())
            .map_err(|e| sled_error(&self.path, e))?;
        flush_and_sync(&self.db, &self.log_file).map_err(|e| sled_error(&self.path, e))?;
        mark.0.write(next).map_err(|e| io_error(&self.path, e))?;
        mark.1 = next;
        Ok(())
    }
}

/// The background flusher of [`FlushPolicy::Interval`] (`freq-dets-flush`): a [`Syncer::sync`]
/// at a fixed rate, every `d` from the start of the previous one (at once when one took longer),
/// so a write is on disk at most `d` plus one sync after it returned. Stopped by dropping the
/// sender, joined on drop.
struct Flusher {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Flusher {
    fn start(syncer: Arc<Syncer>, d: Duration) -> Result<Flusher, DetsError> {
        let d = d.max(Duration::from_millis(1));
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let path = syncer.path.clone();
        let thread = std::thread::Builder::new()
            .name("freq-dets-flush".into())
            .spawn(move || {
                let mut next = Instant::now() + d;
                loop {
                    match rx.recv_timeout(next.saturating_duration_since(Instant::now())) {
                        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                        // Stopped (the sender dropped).
                        _ => return,
                    }
                    next += d;
                    // A failed background sync has no caller; the next `sync`, `close` or
                    // write (in `EveryWrite`) reports the error.
                    let _ = syncer.sync();
                    next = next.max(Instant::now());
                }
            })
            .map_err(|e| io_error(&path, e))?;
        Ok(Flusher {
            stop: Some(tx),
            thread: Some(thread),
        })
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl<K, V> Drop for DiskTable<K, V> {
    /// Flushes and records a clean close, as `dets:close/1` would; use [`DiskTable::close`] to
    /// see the error.
    fn drop(&mut self) {
        // The flusher first: it must not sync after the clean close is recorded.
        drop(self.flusher.take());
        if !self.closed && self.sync_marked().is_ok() {
            let counts = (self.len as u64, self.keys as u64, self.next_seq);
            let _ = write_state(&self.path, &self.schema, Some(counts));
        }
    }
}

impl<K, V> ReadTable<K, V> for DiskTable<K, V>
where
    K: Serialize + DeserializeOwned,
    V: Serialize + DeserializeOwned,
{
    type Error = DetsError;

    fn table_type(&self) -> TableType {
        self.schema.table_type
    }

    fn lookup(&self, key: &K) -> Result<Vec<V>, DetsError> {
        let kb = key_bytes(key)?;
        if self.schema.table_type.is_bag() {
            self.data
                .scan_prefix(&kb)
                .values()
                .map(|r| self.decode_value(&r.map_err(|e| self.err(e))?))
                .collect()
        } else {
            match self.data.get(&kb).map_err(|e| self.err(e))? {
                Some(rec) => Ok(vec![self.decode_value(&rec)?]),
                None => Ok(Vec::new()),
            }
        }
    }

    fn member(&self, key: &K) -> Result<bool, DetsError> {
        let kb = key_bytes(key)?;
        if self.schema.table_type.is_bag() {
            match self.data.scan_prefix(&kb).keys().next() {
                Some(r) => r.map(|_| true).map_err(|e| self.err(e)),
                None => Ok(false),
            }
        } else {
            self.data.contains_key(&kb).map_err(|e| self.err(e))
        }
    }

    fn len(&self) -> Result<usize, DetsError> {
        Ok(self.len)
    }

    fn info(&self) -> Result<TableInfo, DetsError> {
        Ok(TableInfo {
            table_type: self.schema.table_type,
            size: self.len,
            keys: self.keys,
            memory_bytes: self.db.size_on_disk().map_err(|e| self.err(e))?,
        })
    }

    fn to_vec(&self) -> Result<Vec<(K, V)>, DetsError> {
        let mut out = Vec::with_capacity(self.len);
        self.scan(|k, v| out.push((k, v)))?;
        Ok(out)
    }

    fn first(&self) -> Result<Option<K>, DetsError> {
        match self.data.first().map_err(|e| self.err(e))? {
            Some((_, rec)) => Ok(Some(self.decode(&rec)?.0)),
            None => Ok(None),
        }
    }

    fn next(&self, key: &K) -> Result<Option<K>, DetsError> {
        self.key_after(key_bytes(key)?)
    }

    fn last(&self) -> Result<Option<K>, DetsError> {
        if !self.schema.table_type.is_ordered() {
            // As ETS: `last` is `first` on the unordered types.
            return self.first();
        }
        match self.data.last().map_err(|e| self.err(e))? {
            Some((_, rec)) => Ok(Some(self.decode(&rec)?.0)),
            None => Ok(None),
        }
    }

    fn prev(&self, key: &K) -> Result<Option<K>, DetsError> {
        if !self.schema.table_type.is_ordered() {
            // As ETS: `prev` is `next` on the unordered types.
            return self.next(key);
        }
        match self.data.get_lt(key_bytes(key)?).map_err(|e| self.err(e))? {
            Some((_, rec)) => Ok(Some(self.decode(&rec)?.0)),
            None => Ok(None),
        }
    }

    fn range(&self, lower: Bound<&K>, upper: Bound<&K>) -> Result<Vec<(K, V)>, DetsError> {
        if !self.schema.table_type.is_ordered() {
            return Err(DetsError::NotOrdered {
                table_type: self.schema.table_type,
            });
        }
        let lo = Self::bound_bytes(lower)?;
        let hi = Self::bound_bytes(upper)?;
        // An empty or inverted range is empty (BTreeMap would panic; we never do).
        if let (Bound::Included(l) | Bound::Excluded(l), Bound::Included(h) | Bound::Excluded(h)) =
            (&lo, &hi)
        {
            let both_incl = matches!((&lo, &hi), (Bound::Included(_), Bound::Included(_)));
            if l > h || (l == h && !both_incl) {
                return Ok(Vec::new());
            }
        }
        let mut out = Vec::new();
        for item in self.data.range::<Vec<u8>, _>((lo, hi)) {
            let (_, rec) = item.map_err(|e| self.err(e))?;
            out.push(self.decode(&rec)?);
        }
        Ok(out)
    }

    fn select<R, F>(&self, mut f: F) -> Result<Vec<R>, DetsError>
    where
        F: FnMut(&K, &V) -> Option<R>,
    {
        let mut out = Vec::new();
        self.scan(|k, v| out.extend(f(&k, &v)))?;
        Ok(out)
    }

    fn select_count<F>(&self, mut pred: F) -> Result<usize, DetsError>
    where
        F: FnMut(&K, &V) -> bool,
    {
        let mut n = 0;
        self.scan(|k, v| n += usize::from(pred(&k, &v)))?;
        Ok(n)
    }

    fn fold<A, F>(&self, init: A, mut f: F) -> Result<A, DetsError>
    where
        F: FnMut(A, &K, &V) -> A,
    {
        let mut acc = Some(init);
        self.scan(|k, v| acc = acc.take().map(|a| f(a, &k, &v)))?;
        acc.ok_or_else(|| corrupted(&self.path, "internal: fold lost its accumulator"))
    }
}

impl<K, V> WriteTable<K, V> for DiskTable<K, V>
where
    K: Serialize + DeserializeOwned,
    V: Serialize + DeserializeOwned,
{
    fn insert(&mut self, key: K, value: V) -> Result<(), DetsError> {
        if !self.schema.table_type.is_bag() {
            // The hot path: one sled insert, whose previous value tells whether the key is new.
            let kb = key_bytes(&key)?;
            let rec = record(&key, &value)?;
            let old = self.data.insert(kb, rec).map_err(|e| self.err(e))?;
            if old.is_none() {
                self.len += 1;
                self.keys += 1;
            }
            return self.after_write();
        }
        // Bags: one prefix scan (the whole key for `Bag`, to find an identical object; the
        // first object for `DuplicateBag`, to know whether the key is new), one sled insert.
        let kb = key_bytes(&key)?;
        let rec = record(&key, &value)?;
        let dedupe = self.schema.table_type == TableType::Bag;
        let mut key_is_new = true;
        for item in self.data.scan_prefix(&kb).values() {
            let stored = item.map_err(|e| self.err(e))?;
            key_is_new = false;
            if !dedupe {
                break;
            }
            if *stored == *rec {
                return Ok(());
            }
        }
        let seq = self.next_seq;
        let next_seq = seq
            .checked_add(1)
            .ok_or_else(|| corrupted(&self.path, "bag sequence numbers exhausted"))?;
        let mut dk = kb;
        dk.extend_from_slice(&seq.to_be_bytes());
        self.data.insert(dk, rec).map_err(|e| self.err(e))?;
        self.next_seq = next_seq;
        self.len += 1;
        self.keys += usize::from(key_is_new);
        self.after_write()
    }

    fn insert_many<I>(&mut self, objects: I) -> Result<(), DetsError>
    where
        I: IntoIterator<Item = (K, V)>,
    {
        let mut plan = self.plan(false)?;
        for (k, v) in objects {
            self.plan_insert(&mut plan, &k, &v)?;
        }
        self.commit(plan)
    }

    fn insert_new(&mut self, key: K, value: V) -> Result<bool, DetsError> {
        if self.member(&key)? {
            return Ok(false);
        }
        self.insert(key, value)?;
        Ok(true)
    }

    fn insert_new_many<I>(&mut self, objects: I) -> Result<bool, DetsError>
    where
        I: IntoIterator<Item = (K, V)>,
    {
        let objects: Vec<(K, V)> = objects.into_iter().collect();
        for (k, _) in &objects {
            if self.member(k)? {
                return Ok(false);
            }
        }
        self.insert_many(objects)?;
        Ok(true)
    }

    fn delete(&mut self, key: &K) -> Result<usize, DetsError> {
        let kb = key_bytes(key)?;
        if !self.schema.table_type.is_bag() {
            let old = self.data.remove(kb).map_err(|e| self.err(e))?;
            if old.is_none() {
                return Ok(0);
            }
            self.len -= 1;
            self.keys -= 1;
            self.after_write()?;
            return Ok(1);
        }
        let dks: Vec<Vec<u8>> = self.stored(&kb)?.into_iter().map(|(dk, _)| dk).collect();
        let n = dks.len();
        self.remove_all(dks, usize::from(n > 0))?;
        Ok(n)
    }

    fn delete_object(&mut self, key: &K, value: &V) -> Result<usize, DetsError> {
        let kb = key_bytes(key)?;
        let rec = record(key, value)?;
        let stored = self.stored(&kb)?;
        let total = stored.len();
        let dks: Vec<Vec<u8>> = stored
            .into_iter()
            .filter(|(_, r)| *r == rec)
            .map(|(dk, _)| dk)
            .collect();
        let n = dks.len();
        self.remove_all(dks, usize::from(n > 0 && n == total))?;
        Ok(n)
    }

    fn delete_all_objects(&mut self) -> Result<(), DetsError> {
        let plan = self.plan(true)?;
        self.commit(plan)
    }

    fn take(&mut self, key: &K) -> Result<Vec<V>, DetsError> {
        let kb = key_bytes(key)?;
        let stored = self.stored(&kb)?;
        let mut values = Vec::with_capacity(stored.len());
        let mut dks = Vec::with_capacity(stored.len());
        for (dk, rec) in stored {
            values.push(self.decode_value(&rec)?);
            dks.push(dk);
        }
        let some = !dks.is_empty();
        self.remove_all(dks, usize::from(some))?;
        Ok(values)
    }

    fn update_counter(&mut self, key: &K, incr: i64, default: Option<V>) -> Result<V, DetsError>
    where
        V: Counter,
    {
        self.sets_only("update_counter")?;
        let kb = key_bytes(key)?;
        let current = match self.data.get(&kb).map_err(|e| self.err(e))? {
            Some(rec) => self.decode_value(&rec)?,
            None => default.ok_or(DetsError::NoSuchKey)?,
        };
        let new = current
            .checked_add_i64(incr)
            .ok_or(DetsError::CounterOverflow { incr })?;
        let old = self
            .data
            .insert(kb, record(key, &new)?)
            .map_err(|e| self.err(e))?;
        if old.is_none() {
            self.len += 1;
            self.keys += 1;
        }
        self.after_write()?;
        Ok(new)
    }

    fn update<F>(&mut self, key: &K, f: F) -> Result<bool, DetsError>
    where
        F: FnOnce(&mut V),
    {
        self.sets_only("update")?;
        let kb = key_bytes(key)?;
        let Some(rec) = self.data.get(&kb).map_err(|e| self.err(e))? else {
            return Ok(false);
        };
        let mut value = self.decode_value(&rec)?;
        f(&mut value);
        self.data
            .insert(kb, record(key, &value)?)
            .map_err(|e| self.err(e))?;
        self.after_write()?;
        Ok(true)
    }

    fn select_delete<F>(&mut self, mut pred: F) -> Result<usize, DetsError>
    where
        F: FnMut(&K, &V) -> bool,
    {
        let bag = self.schema.table_type.is_bag();
        let mut dks = Vec::new();
        let mut removed_keys = 0;
        // Group a bag's objects by key (they are contiguous) to see which keys empty out.
        let (mut group, mut group_total, mut group_removed) = (Vec::<u8>::new(), 0usize, 0usize);
        for item in self.data.iter() {
            let (dk, rec) = item.map_err(|e| self.err(e))?;
            let prefix = if bag {
                &dk[..dk.len().saturating_sub(SEQ_LEN)]
            } else {
                &dk[..]
            };
            if prefix != group.as_slice() || group_total == 0 {
                if group_total > 0 && group_total == group_removed {
                    removed_keys += 1;
                }
                group.clear();
                group.extend_from_slice(prefix);
                group_total = 0;
                group_removed = 0;
            }
            group_total += 1;
            let (k, v) = self.decode(&rec)?;
            if pred(&k, &v) {
                dks.push(dk.to_vec());
                group_removed += 1;
            }
        }
        if group_total > 0 && group_total == group_removed {
            removed_keys += 1;
        }
        let n = dks.len();
        self.remove_all(dks, removed_keys)?;
        Ok(n)
    }
}
