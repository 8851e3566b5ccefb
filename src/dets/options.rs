//! How a disk table is opened: its type, its flush policy and its schema version.

use std::time::Duration;

use crate::table::TableType;

#[cfg(doc)]
use super::DiskTable;

/// When writes reach the disk. See the [module docs](super#flush-policy) for the loss windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushPolicy {
    /// Every write returns only once it is on disk (sled `flush`, which `fsync`s).
    EveryWrite,
    /// A background flush every interval, like DETS's `auto_save`. Intervals under 1 ms
    /// count as 1 ms.
    Interval(Duration),
    /// Only [`DiskTable::sync`], [`DiskTable::close`] and `Drop` flush.
    Manual,
}

/// How to open (or create) a [`DiskTable`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenOptions {
    /// The table type; must match the stored one when the table exists.
    pub table_type: TableType,
    /// When writes reach the disk; may differ between opens.
    pub flush_policy: FlushPolicy,
    /// The user's schema version; must match the stored one when the table exists.
    pub version: u32,
}

impl OpenOptions {
    /// Options for a table of `table_type`, [`FlushPolicy::EveryWrite`], version 0.
    pub fn new(table_type: TableType) -> Self {
        OpenOptions {
            table_type,
            flush_policy: FlushPolicy::EveryWrite,
            version: 0,
        }
    }

    /// Sets the flush policy.
    pub fn flush_policy(mut self, flush_policy: FlushPolicy) -> Self {
        self.flush_policy = flush_policy;
        self
    }

    /// Sets the user's schema version.
    pub fn version(mut self, version: u32) -> Self {
        self.version = version;
        self
    }
}

impl Default for OpenOptions {
    /// A `Set` with [`FlushPolicy::EveryWrite`], version 0.
    fn default() -> Self {
        OpenOptions::new(TableType::Set)
    }
}
