//! The table contract shared by the in-memory tables ([`crate::ets`]) and the disk tables
//! ([`crate::dets`]).
//!
//! Erlang gives ETS and DETS almost the same API; so do we. The two traits here,
//! [`ReadTable`] and [`WriteTable`], name the operations once, so the same model tests and the
//! same benchmark workloads run over every table type, in memory and on disk.
//!
//! Architecture Invariant: this file knows neither `hashbrown` nor `sled`; it is the vocabulary
//! both backends speak.
//!
//! Semantics follow the Erlang documentation of
//! [`ets`](https://www.erlang.org/doc/apps/stdlib/ets.html) and
//! [`dets`](https://www.erlang.org/doc/apps/stdlib/dets.html):
//!
//! | [`TableType`] | objects per key | `insert` of an existing key | `lookup` order |
//! |---|---|---|---|
//! | `Set` | one | replaces | - |
//! | `OrderedSet` | one | replaces; traversal in `Ord` order | - |
//! | `Bag` | many, an identical object stored once | adds unless identical | insertion order |
//! | `DuplicateBag` | many, duplicates kept | adds | insertion order |
//!
//! Writes take `&mut self`: a table handle that can write is the only writer reachable through
//! that handle, and sharing one across threads needs an explicit clone of a *public* table
//! (see [`crate::ets`]).

use std::fmt;
use std::ops::Bound;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The four table types of ETS and DETS.
///
/// DETS has no `ordered_set`; our disk tables add it (see [`crate::dets`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum TableType {
    /// One object per key; `insert` replaces. Erlang: `set`.
    Set,
    /// One object per key, traversed in key order. Erlang: `ordered_set`.
    OrderedSet,
    /// Many objects per key; an identical object is stored once. Erlang: `bag`.
    Bag,
    /// Many objects per key, duplicates kept. Erlang: `duplicate_bag`.
    DuplicateBag,
}

impl TableType {
    /// All four types, in the order the Erlang docs list them.
    pub const ALL: [TableType; 4] = [
        TableType::Set,
        TableType::OrderedSet,
        TableType::Bag,
        TableType::DuplicateBag,
    ];

    /// The Erlang atom for this type: `set`, `ordered_set`, `bag`, `duplicate_bag`.
    pub fn erlang_name(self) -> &'static str {
        match self {
            TableType::Set => "set",
            TableType::OrderedSet => "ordered_set",
            TableType::Bag => "bag",
            TableType::DuplicateBag => "duplicate_bag",
        }
    }

    /// True for `Bag` and `DuplicateBag`: many objects per key.
    pub fn is_bag(self) -> bool {
        matches!(self, TableType::Bag | TableType::DuplicateBag)
    }

    /// True for `OrderedSet`: traversal and ranges follow the key's `Ord`.
    pub fn is_ordered(self) -> bool {
        matches!(self, TableType::OrderedSet)
    }
}

impl fmt::Display for TableType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.erlang_name())
    }
}

/// The error of parsing a [`TableType`] from a string that names none.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown table type {0:?}: expected set, ordered_set, bag or duplicate_bag")]
pub struct ParseTableTypeError(pub String);

impl FromStr for TableType {
    type Err = ParseTableTypeError;

    /// Accepts the Erlang names (`ordered_set`) and their dashed forms (`ordered-set`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.replace('-', "_").as_str() {
            "set" => Ok(TableType::Set),
            "ordered_set" => Ok(TableType::OrderedSet),
            "bag" => Ok(TableType::Bag),
            "duplicate_bag" => Ok(TableType::DuplicateBag),
            _ => Err(ParseTableTypeError(s.to_string())),
        }
    }
}

/// What `ets:info/1` and `dets:info/1` report, the parts that make sense here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableInfo {
    /// The table's type.
    pub table_type: TableType,
    /// Number of objects (for bags, every object, not every key). Erlang: `size`.
    pub size: usize,
    /// Number of distinct keys.
    pub keys: usize,
    /// An estimate of the bytes the table uses (in memory for ETS, on disk for DETS).
    pub memory_bytes: u64,
}

/// An integer value that [`WriteTable::update_counter`] can add to: the `update_counter`
/// analogue works on tables whose value type implements this.
pub trait Counter: Copy {
    /// `self + incr`, or `None` when the result does not fit the type (an error, never a wrap).
    fn checked_add_i64(self, incr: i64) -> Option<Self>;
}

macro_rules! impl_counter {
    ($($t:ty),*) => {$(
        impl Counter for $t {
            fn checked_add_i64(self, incr: i64) -> Option<Self> {
                let sum = i128::from(self).checked_add(i128::from(incr))?;
                <$t>::try_from(sum).ok()
            }
        }
    )*};
}
impl_counter!(i8, i16, i32, i64, u8, u16, u32, u64);

impl Counter for usize {
    fn checked_add_i64(self, incr: i64) -> Option<Self> {
        (self as u64)
            .checked_add_i64(incr)
            .and_then(|v| usize::try_from(v).ok())
    }
}

impl Counter for isize {
    fn checked_add_i64(self, incr: i64) -> Option<Self> {
        (self as i64)
            .checked_add_i64(incr)
            .and_then(|v| isize::try_from(v).ok())
    }
}

/// The read half of a table: what any handle, including a read-only one, may do.
///
/// Every single operation is atomic and isolated with respect to every single write.
/// Traversals (`to_vec`, `select`, `fold`, `first`/`next`) over a table that is written at the
/// same time see every object that was there for the whole traversal and none that was absent
/// for the whole traversal; objects written during it may or may not be seen (as ETS without
/// `safe_fixtable`). The implementation documents anything stronger it gives.
pub trait ReadTable<K, V> {
    /// The error of this backend (`EtsError`, `DetsError`).
    type Error: std::error::Error + Send + Sync + 'static;

    /// The table's type.
    fn table_type(&self) -> TableType;

    /// Every object stored under `key` (one at most for sets; insertion order for bags).
    fn lookup(&self, key: &K) -> Result<Vec<V>, Self::Error>;

    /// Calls `f` with the objects stored under `key` (an empty slice when there are none;
    /// insertion order for bags) and returns its result: [`Self::lookup`] without building a
    /// `Vec`, for callers that only inspect the objects or copy out what they need.
    ///
    /// The default body builds the `Vec`; backends that can lend their objects in place
    /// override it. `f` may run while the backend holds a lock: it must not call into the same
    /// table.
    fn lookup_with<R, F>(&self, key: &K, f: F) -> Result<R, Self::Error>
    where
        F: FnOnce(&[V]) -> R,
    {
        Ok(f(&self.lookup(key)?))
    }

    /// Whether any object is stored under `key`. Erlang: `member/2`.
    fn member(&self, key: &K) -> Result<bool, Self::Error>;

    /// Number of objects. Erlang: `info(T, size)`.
    fn len(&self) -> Result<usize, Self::Error>;

    /// True when the table holds no object.
    fn is_empty(&self) -> Result<bool, Self::Error> {
        Ok(self.len()? == 0)
    }

    /// Type, size, keys and memory estimate. Erlang: `info/1`.
    fn info(&self) -> Result<TableInfo, Self::Error>;

    /// Every object. Erlang: `tab2list/1`. Key order for `OrderedSet`; unspecified otherwise,
    /// but a bag's objects under one key stay in insertion order.
    fn to_vec(&self) -> Result<Vec<(K, V)>, Self::Error>;

    /// The first key in table order (key order for `OrderedSet`). Erlang: `first/1`.
    fn first(&self) -> Result<Option<K>, Self::Error>;

    /// The key after `key` in table order, whether or not `key` is still in the table for
    /// `OrderedSet`. Erlang: `next/2`.
    fn next(&self, key: &K) -> Result<Option<K>, Self::Error>;

    /// The last key in key order for `OrderedSet`; like `first` for the other types (as ETS).
    fn last(&self) -> Result<Option<K>, Self::Error>;

    /// The key before `key` for `OrderedSet`; like `next` for the other types (as ETS).
    fn prev(&self, key: &K) -> Result<Option<K>, Self::Error>;

    /// The objects whose keys lie between the bounds, in key order. `OrderedSet` only: the
    /// other types return the backend's "not ordered" error.
    fn range(&self, lower: Bound<&K>, upper: Bound<&K>) -> Result<Vec<(K, V)>, Self::Error>;

    /// The match-spec analogue of `select/2`: `f` sees every object and returns what to
    /// collect (`Some`) or skips it (`None`).
    fn select<R, F>(&self, f: F) -> Result<Vec<R>, Self::Error>
    where
        F: FnMut(&K, &V) -> Option<R>;

    /// Counts the objects for which `pred` holds. Erlang: `select_count/2`.
    fn select_count<F>(&self, pred: F) -> Result<usize, Self::Error>
    where
        F: FnMut(&K, &V) -> bool;

    /// Folds over every object. Erlang: `foldl/3`.
    fn fold<A, F>(&self, init: A, f: F) -> Result<A, Self::Error>
    where
        F: FnMut(A, &K, &V) -> A;
}

/// The write half of a table: what an owner (protected) or a public handle may do.
pub trait WriteTable<K, V>: ReadTable<K, V> {
    /// Inserts one object: replaces for sets; adds for bags (not if identical, for `Bag`).
    fn insert(&mut self, key: K, value: V) -> Result<(), Self::Error>;

    /// Inserts many objects atomically and in isolation: a reader sees all of them or none.
    /// For sets, a later object with the same key wins, as in ETS.
    fn insert_many<I>(&mut self, objects: I) -> Result<(), Self::Error>
    where
        I: IntoIterator<Item = (K, V)>;

    /// Inserts only if the key is absent; returns whether it inserted. Erlang: `insert_new/2`.
    fn insert_new(&mut self, key: K, value: V) -> Result<bool, Self::Error>;

    /// Inserts all objects only if none of their keys is present; otherwise inserts nothing
    /// and returns `false`. Atomic and isolated.
    fn insert_new_many<I>(&mut self, objects: I) -> Result<bool, Self::Error>
    where
        I: IntoIterator<Item = (K, V)>;

    /// Deletes every object under `key`; returns how many it removed. Erlang: `delete/2`.
    fn delete(&mut self, key: &K) -> Result<usize, Self::Error>;

    /// Deletes the exact object `(key, value)`; in a `DuplicateBag`, every copy of it.
    /// Returns how many it removed. Erlang: `delete_object/2`.
    fn delete_object(&mut self, key: &K, value: &V) -> Result<usize, Self::Error>;

    /// Empties the table. Erlang: `delete_all_objects/1`.
    fn delete_all_objects(&mut self) -> Result<(), Self::Error>;

    /// Removes and returns every object under `key`. Erlang: `take/2`.
    fn take(&mut self, key: &K) -> Result<Vec<V>, Self::Error>;

    /// Atomically adds `incr` to the integer value under `key` and returns the new value.
    /// Absent key: inserts `default` first if given, else it is the backend's "no such key"
    /// error. Overflow is an error, not a wrap. Sets and ordered sets only (as ETS: `badarg`
    /// on bags). Erlang: `update_counter/3,4`.
    fn update_counter(&mut self, key: &K, incr: i64, default: Option<V>) -> Result<V, Self::Error>
    where
        V: Counter;

    /// Atomically applies `f` to the value under `key` (the `update_element` analogue); returns
    /// `false` if the key is absent. Sets and ordered sets only.
    fn update<F>(&mut self, key: &K, f: F) -> Result<bool, Self::Error>
    where
        F: FnOnce(&mut V);

    /// Deletes the objects for which `pred` holds; returns how many. Erlang: `select_delete/2`.
    fn select_delete<F>(&mut self, pred: F) -> Result<usize, Self::Error>
    where
        F: FnMut(&K, &V) -> bool;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_type_names_round_trip() {
        for t in TableType::ALL {
            assert_eq!(t.erlang_name().parse::<TableType>(), Ok(t));
            assert_eq!(t.to_string(), t.erlang_name());
        }
        assert_eq!("duplicate-bag".parse(), Ok(TableType::DuplicateBag));
        assert!("hash".parse::<TableType>().is_err());
    }

    #[test]
    fn counters_refuse_to_wrap() {
        assert_eq!(5u8.checked_add_i64(-5), Some(0));
        assert_eq!(0u8.checked_add_i64(-1), None);
        assert_eq!(i64::MAX.checked_add_i64(1), None);
        assert_eq!(u64::MAX.checked_add_i64(-1), Some(u64::MAX - 1));
        assert_eq!(usize::MAX.checked_add_i64(1), None);
    }
}
