//! The error type of the disk tables.

use std::fmt;
use std::path::PathBuf;

use crate::codec::CodecError;
use crate::ets::EtsError;
use crate::io_words::{engine_words, io_words};
use crate::table::TableType;

use super::schema::Schema;

/// Everything that can go wrong with a [`DiskTable`](super::DiskTable).
///
/// Faults of the store (a locked directory, damaged files, a schema that does not match) are
/// typed errors naming the path; no input makes the disk tables panic.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DetsError {
    /// Another handle, in this process or another one, has the table open. sled takes an
    /// exclusive lock on its files, so a table has one owner at a time (as a DETS file has one
    /// owning process per node).
    #[error("table {path:?} is locked by another handle or process")]
    Locked {
        /// The table's directory.
        path: PathBuf,
    },
    /// An I/O error of the file system.
    #[error("{}", io_text(path, source))]
    Io {
        /// The table's directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The store's files are damaged or truncated: sled found a bad checksum, a record does not
    /// decode, or the metadata is missing while data is present.
    #[error("table {path:?} is corrupted: {}", engine_words(detail))]
    Corrupted {
        /// The table's directory.
        path: PathBuf,
        /// What was found to be wrong.
        detail: String,
    },
    /// The directory holds a table of another type or schema than the one asked for.
    #[error("table {path:?} holds {found}, but was opened as {expected}")]
    SchemaMismatch {
        /// The table's directory.
        path: PathBuf,
        /// The schema the caller asked for.
        expected: Box<Schema>,
        /// The schema recorded in the store.
        found: Box<Schema>,
    },
    /// Any other failure reported by the storage engine.
    #[error("storage engine error on table {path:?}: {}", engine_words(detail))]
    Storage {
        /// The table's directory.
        path: PathBuf,
        /// The engine's description of the failure.
        detail: String,
    },
    /// The key type cannot be encoded in order (floats, maps), or its `Serialize` failed.
    #[error("unsupported key: {detail}")]
    UnsupportedKey {
        /// Which part of the key is not supported.
        detail: String,
    },
    /// A value could not be encoded, or a stored record could not be decoded.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// A key range was asked of a table that is not an `OrderedSet`.
    #[error("range queries need an ordered_set table, this one is a {table_type}")]
    NotOrdered {
        /// The table's type.
        table_type: TableType,
    },
    /// The operation is not defined for this table type (as `badarg` in Erlang): for example
    /// `update_counter` on a bag.
    #[error("{op} is not supported on a {table_type} table")]
    WrongTableType {
        /// The operation.
        op: &'static str,
        /// The table's type.
        table_type: TableType,
    },
    /// `update_counter` found no object under the key and was given no default.
    #[error("no object under the key")]
    NoSuchKey,
    /// An in-memory table that a disk table was loaded into or saved from failed
    /// ([`DiskTable::to_ets`](super::DiskTable::to_ets), [`DiskTable::from_ets`](super::DiskTable::from_ets)).
    #[error(transparent)]
    Ets(#[from] EtsError),
    /// `update_counter` would overflow or underflow the value type.
    #[error("counter overflow: adding {incr} does not fit the value type")]
    CounterOverflow {
        /// The increment that did not fit.
        incr: i64,
    },
}

/// An I/O error of a table in words, once: "disk full while writing table "s/shard-0"".
fn io_text(path: &std::path::Path, source: &std::io::Error) -> String {
    use std::io::ErrorKind::{QuotaExceeded, StorageFull};
    let words = io_words(source);
    if matches!(source.kind(), StorageFull | QuotaExceeded) {
        format!("{words} while writing table {path:?}")
    } else {
        format!("I/O error on table {path:?}: {words}")
    }
}

impl serde::ser::Error for DetsError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        DetsError::UnsupportedKey {
            detail: msg.to_string(),
        }
    }
}
