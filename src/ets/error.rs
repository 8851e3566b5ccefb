//! The error type of [`crate::ets`].

use std::path::PathBuf;

use crate::codec::CodecError;
use crate::table::TableType;

/// What can go wrong in an ETS table operation. ETS itself answers most of these with `badarg`;
/// we say which argument was bad.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EtsError {
    /// `range` (or another key-order operation) was called on a table that has no key order.
    #[error("{operation} needs an ordered_set, but this table is a {table_type}")]
    NotOrdered {
        /// The operation that was refused.
        operation: &'static str,
        /// The type of the table it was called on.
        table_type: TableType,
    },
    /// `update_counter` or `update` was called on a bag, where a key has many objects
    /// (ETS: `badarg`).
    #[error("{operation} needs a set or ordered_set, but this table is a {table_type}")]
    NotASet {
        /// The operation that was refused.
        operation: &'static str,
        /// The type of the table it was called on.
        table_type: TableType,
    },
    /// `update_counter` found no object under the key and was given no default object.
    #[error("update_counter: no object under the key and no default given")]
    NoSuchKey,
    /// `update_counter` would have left the value outside its integer type. The table is
    /// unchanged.
    #[error("update_counter: adding {incr} overflows the counter's type")]
    CounterOverflow {
        /// The increment that overflowed.
        incr: i64,
    },
    /// Reading or writing a dump file failed.
    #[error("I/O error on {path:?}: {}", crate::io_words::io_words(source))]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// An object could not be encoded, or a dump's bytes could not be decoded.
    #[error("dump codec error: {0}")]
    Codec(#[from] CodecError),
    /// The file does not start with the ETS dump magic bytes: it is not a dump.
    #[error("not an ETS dump file (bad magic bytes)")]
    BadMagic,
    /// The dump was written in a format version this build does not read.
    #[error("unsupported ETS dump format version {found} (this build reads {supported})")]
    UnsupportedVersion {
        /// The version in the file.
        found: u32,
        /// The version this build reads.
        supported: u32,
    },
    /// The dump ends before its declared contents do.
    #[error("truncated ETS dump: {0}")]
    Truncated(&'static str),
    /// The dump's CRC32 does not match its contents: it was damaged.
    #[error("ETS dump checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    ChecksumMismatch {
        /// The checksum stored in the file.
        stored: u32,
        /// The checksum of the bytes actually read.
        computed: u32,
    },
    /// The dump holds another kind of table (other key or value type) than was asked for.
    #[error("ETS dump holds {found}, expected {expected}")]
    WrongType {
        /// What the caller asked for: `table type<key type, value type>`.
        expected: String,
        /// What the file holds.
        found: String,
    },
    /// The dump's structure is inconsistent (for example an object count that disagrees with
    /// the objects present), although its checksum matched.
    #[error("corrupt ETS dump: {0}")]
    Corrupt(&'static str),
}
