//! In-memory concurrent tables: the Rust analogue of Erlang's
//! [`ets`](https://www.erlang.org/doc/apps/stdlib/ets.html).
//!
//! A table stores objects `(K, V)` under one of the four [`TableType`]s:
//!
//! | type | objects per key | `insert` of an existing key | backend |
//! |---|---|---|---|
//! | `Set` | one | replaces | `dashmap` (sharded) + FxHash |
//! | `OrderedSet` | one | replaces; traversal and ranges in `Ord` order | `RwLock<BTreeMap>` |
//! | `Bag` | many; an identical object is stored once | adds unless identical | as `Set`, one object inline, more in a boxed `Vec` |
//! | `DuplicateBag` | many; duplicates kept | adds | as `Bag` |
//!
//! One public type per access right dispatches to the private backend chosen by the type
//! (as crossbeam-channel's flavors):
//!
//! * [`Table`] is the owner of a *protected* table: the only handle that writes. It is `Send`
//!   but not `Clone`, so the type system, not a run-time check, says who writes.
//! * [`TableReader`] is a cheap read handle (`Clone + Send + Sync`, [`ReadTable`] only) that
//!   any thread may use while the owner writes. Get one from [`Table::reader`].
//! * [`PublicTable`] is a *public* table: every clone may read and write
//!   ([`Table::into_public`] or [`PublicTable::new`]).
//!
//! All handles implement the shared contract [`ReadTable`]/[`WriteTable`] of [`crate::table`];
//! their inherent methods return plain values where ETS cannot fail and `Result<_, EtsError>`
//! where it can (`range` on a hash table, `update_counter` on a bag, overflow, files).
//!
//! ```
//! use freqalloc::ets::Table;
//! use freqalloc::TableType;
//!
//! // A protected ordered set of free ranges start -> end, owned by this thread.
//! let mut free: Table<u64, u64> = Table::with_name("free", TableType::OrderedSet);
//! free.insert_many([(100, 199), (10, 19), (50, 59)]);
//! assert_eq!(free.first(), Some(10));
//! assert_eq!(free.next(&10), Some(50));
//! assert_eq!(free.range(50..).unwrap(), vec![(50, 59), (100, 199)]);
//!
//! // Any thread may read through a reader while the owner keeps writing.
//! let reader = free.reader();
//! let t = std::thread::spawn(move || reader.lookup(&50));
//! free.insert(200, 299);
//! assert_eq!(t.join().unwrap(), vec![59]);
//!
//! // Counters are atomic and refuse to overflow.
//! let mut hits: Table<&str, u8> = Table::new(TableType::Set);
//! assert_eq!(hits.update_counter(&"a", 250, Some(0)).unwrap(), 250);
//! assert!(hits.update_counter(&"a", 10, None).is_err());
//! assert_eq!(hits.get(&"a"), Some(250));
//! ```
//!
//! ## Guarantees (as the ETS docs state them)
//!
//! * **Every single operation is atomic and isolated**: `insert`, `insert_many`, `insert_new`,
//!   `insert_new_many`, `delete`, `delete_object`, `take`, `update_counter`, `update`,
//!   `delete_all_objects` and `select_delete` each take effect at one instant; no reader sees
//!   half of one. In particular a reader sees all of an `insert_many` or none of it, in
//!   `lookup`, `member`, `len`, `to_vec`, `select`, `fold` alike.
//! * **Traversals** (`to_vec`, `select`, `select_count`, `fold`, `first`/`next`) running while
//!   single-key writes happen see every object present for the whole traversal, none that was
//!   absent for the whole traversal, and may or may not see objects written meanwhile (as ETS
//!   without `safe_fixtable`). Many-key writes are never seen in part. Today every traversal
//!   by one call (`to_vec`, `select`, `fold`, `range`, `len`, ...) is in fact a full snapshot
//!   (it holds every lock of the table, or is the owner's, which nothing writes meanwhile);
//!   a walk by `first`/`next` calls is not.
//! * `next(key)` on an `ordered_set` works whether or not `key` is still in the table. On the
//!   hash types `first`/`next` follow the hash order; `next` of an absent key is `None`, and
//!   each `next` call costs O(n): traverse hash tables with `fold`, `select` or `to_vec`.
//!   `last`/`prev` behave as `first`/`next` on the hash types, as ETS documents.
//! * Closures given to `lookup_with`, `select`, `fold`, `update`, `select_delete` run while
//!   the table (or the key's shard) is locked: they must not call into the same table (that
//!   would deadlock).
//!
//! ## Design, with the measurements behind it
//!
//! * Hash types (`hashed.rs`): a [`dashmap::DashMap`] with `rustc_hash::FxBuildHasher`
//!   (faster than SipHash for integer keys; not HashDoS-resistant, so do not key a table by
//!   untrusted adversarial data) and 32 shards per core (a power of two, at most 256; dashmap's
//!   default is 4), reached through dashmap's `raw-api`: a key is hashed once, dashmap's
//!   `determine_shard` picks the shard, and the operation works on that shard's map under
//!   its `lock_api` lock. A set's slot is the value itself (no allocation per insert); a
//!   bag's slot holds one object inline and more in a boxed `Vec`, in insertion order.
//!   Public API exposes no dashmap type.
//! * `ordered_set` (`ordered.rs`): one `BTreeMap` behind one read-write lock (`lock.rs`);
//!   every operation of a shared handle takes it once, so many-key operations are atomic
//!   for free.
//! * Atomicity on the hash types: a single-key operation holds its shard's lock; a many-key
//!   operation holds every shard's write lock (taken in index order) and a shared handle's
//!   traversal every shard's read lock, so no reader ever sees part of a batch.
//! * Lock elision for the owner of a protected table ([`Table`]), decided in one file
//!   (`access.rs`): every write through a `Table` needs `&mut Table`, so while the owner reads
//!   through `&Table` there is no writer anywhere, and its reads take no lock at all (the
//!   shard's `data_ptr()`; readers on other threads still lock, against the owner's writes).
//!   When no other handle exists (`Arc::get_mut` succeeds) the owner's writes, single- and
//!   many-key, go through `shards_mut()[i].get_mut()`: no lock, and no `unsafe`.
//!   `ordered_set` elides its lock the same way. The `unsafe` that remains (the owner's
//!   unlocked reads, the reader slots) is model-checked with loom (`loom.rs`:
//!   `RUSTFLAGS="--cfg loom" cargo test --release --lib ets::loom`).
//! * [`Table::lookup_with`] (and [`ReadTable::lookup_with`]) lends a key's objects in place;
//!   `lookup` builds a `Vec`, one allocation per hit. `bench tables` counts through
//!   `lookup_with`, as the BEAM side counts `length(ets:lookup(T, K))`.
//! * [`TableOptions::read_concurrency`] (ETS's option of that name) applies to `ordered_set`:
//!   its lock counts readers in per-thread slots on their own cache lines instead of one
//!   shared word (`lock.rs`). When added, 2-thread `ordered_set` lookups went 11 -> 28 M/s.
//!   The hash types ignore it: a dashmap shard's lock is dashmap's, with no way to swap it;
//!   with 32 shard locks per core their readers rarely meet on one anyway (below: the 2-thread
//!   lookups kept their speed without it).
//!
//! Our own sharded `hashbrown` map against dashmap, like with like (both with the lock
//! elision and FxHash), M ops/s, `freqalloc bench tables --only ets --json` (keys
//! 0..1,000,000 in order, value = key; 1 thread = the owner of a protected table, 2 threads =
//! a public table, half the keys each; the old map's 2-thread tables had `read_concurrency`,
//! the new ones cannot), the binaries of the commit before and after, alternated, medians of
//! 15 runs each, on our 2-core machine while it ran other builds (load 6-13): the
//! interquartile ranges are +-30%, so only differences beyond that are measured ones.
//!
//! | workload (threads) | own map | dashmap | dashmap, owner's `Arc` check by load + fence |
//! |---|---|---|---|
//! | set insert / lookup / delete (1) | 12.8 / 28.4 / 16.0 | 9.4 / 29.2 / 16.1 | 12.6 / 31.4 / 15.1 |
//! | set insert / lookup / delete (2) | 7.8 / 11.5 / 10.3 | 6.7 / 12.5 / 9.6 | 6.4 / 13.3 / 8.7 |
//! | bag insert / lookup / delete (1) | 6.6 / 16.4 / 11.9 | 6.6 / 18.1 / 9.1 | 8.6 / 19.8 / 13.2 |
//! | bag insert / lookup / delete (2) | 5.4 / 9.7 / 6.5 | 6.0 / 11.1 / 8.5 | 6.0 / 11.6 / 9.6 |
//! | duplicate_bag insert / lookup / delete (1) | 6.4 / 16.1 / 12.3 | 5.4 / 14.5 / 9.0 | 7.4 / 19.9 / 12.7 |
//! | ordered_set insert / lookup / delete (1), unchanged code | 6.8 / 9.9 / 17.7 | 6.5 / 10.7 / 14.9 | 6.1 / 11.9 / 18.3 |
//!
//! (On an idle machine the own map did set 23.6 / 62 / 49 on 1 thread.) Reads and 2-thread
//! rows are even or better. The 1-thread owner writes are 16-27% slower, and the third
//! column says why: not dashmap, but `Arc::get_mut`, the safe check that no reader exists,
//! which is a compare-and-swap on the `Arc`'s count per write; a locked instruction also
//! stops the CPU from overlapping the cache misses of consecutive operations. The old map
//! read `strong_count` and fenced (a plain load), then wrote through a pointer: `unsafe`, so
//! it was not kept (the third column is that check, measured, not shipped). Criterion with
//! the CPU clock (`FREQALLOC_BENCH_CLOCK=cpu cargo bench --bench tables -- --warm-up-time 1
//! --measurement-time 2 '^ets/set/'`, old commit saved as a baseline) agrees: owner insert
//! -29%, delete -24%, lookup -2%, fold scan +37%.
//!
//! An owner whose table has readers (each shard of the allocator keeps some, for `status` and
//! `held` from other threads) writes under the shard locks; there a failed `Arc::get_mut`
//! cost a compare-and-swap and a store on the `Arc`'s counts per write, on a line the readers
//! share, before the lock's own two compare-and-swaps (dashmap's unlock is one too; our old
//! lock's was a plain store). The owner now reads the strong count first (a plain load: more
//! than one means readers, so go to the locks); only a count of 1 asks `Arc::get_mut`.
//!
//! What bounds them: on 1 thread, cache misses (a 1M-key table is far larger than the
//! caches, and FxHash scatters consecutive keys) and, for inserts, growing the tables, plus
//! the `Arc::get_mut` above on owner writes; on 2 threads, the shard locks' atomics and their
//! cache-line traffic between the cores; `ordered_set` is at the speed of `std`'s `BTreeMap`
//! itself, and its 2-thread writes are serialized by its one lock.

mod access;
mod dump;
mod error;
mod hashed;
mod lock;
#[cfg(all(test, loom))]
mod loom;
mod ordered;

use std::fmt;
use std::hash::Hash;
use std::ops::{Bound, RangeBounds};
use std::path::Path;

// Under loom its `Arc`, so the model sees the reference counts that `Arc::get_mut` reads.
#[cfg(all(test, loom))]
use ::loom::sync::Arc;
#[cfg(not(all(test, loom)))]
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;

pub use error::EtsError;

use crate::table::{Counter, ReadTable, TableInfo, TableType, WriteTable};
use access::{Access, Writer};
use hashed::{CounterError, Hashed, Objs, One, Slot};
use ordered::Ordered;

enum Backend<K, V> {
    Set(Hashed<K, One<V>>),
    Bag(Hashed<K, Objs<V>>),
    Ordered(Ordered<K, V>),
}

/// A [`Writer`] to the backend chosen by the table type.
enum BackendWriter<'a, K, V> {
    Set(Writer<'a, Hashed<K, One<V>>>),
    Bag(Writer<'a, Hashed<K, Objs<V>>>),
    Ordered(Writer<'a, Ordered<K, V>>),
}

struct Inner<K, V> {
    name: Option<String>,
    table_type: TableType,
    backend: Backend<K, V>,
}

impl<K, V> Inner<K, V>
where
    K: Eq + Hash + Ord + Clone,
    V: Clone + PartialEq,
{
    fn new(name: Option<String>, table_type: TableType, read_concurrency: bool) -> Self {
        let backend = match table_type {
            // dashmap's shards carry dashmap's lock: `read_concurrency` cannot change it.
            TableType::Set => Backend::Set(Hashed::new(false)),
            TableType::OrderedSet => Backend::Ordered(Ordered::new(read_concurrency)),
            TableType::Bag => Backend::Bag(Hashed::new(true)),
            TableType::DuplicateBag => Backend::Bag(Hashed::new(false)),
        };
        Inner {
            name,
            table_type,
            backend,
        }
    }

    /// The writer of the backend, in the same mode.
    #[inline]
    fn backend(w: Writer<'_, Self>) -> BackendWriter<'_, K, V> {
        match w {
            Writer::Locked(inner) => match &inner.backend {
                Backend::Set(h) => BackendWriter::Set(Writer::Locked(h)),
                Backend::Bag(h) => BackendWriter::Bag(Writer::Locked(h)),
                Backend::Ordered(o) => BackendWriter::Ordered(Writer::Locked(o)),
            },
            Writer::Sole(inner) => match &mut inner.backend {
                Backend::Set(h) => BackendWriter::Set(Writer::Sole(h)),
                Backend::Bag(h) => BackendWriter::Bag(Writer::Sole(h)),
                Backend::Ordered(o) => BackendWriter::Ordered(Writer::Sole(o)),
            },
        }
    }

    #[inline]
    fn insert(w: Writer<'_, Self>, key: K, value: V) {
        match Self::backend(w) {
            BackendWriter::Set(h) => Hashed::insert(h, key, value),
            BackendWriter::Bag(h) => Hashed::insert(h, key, value),
            BackendWriter::Ordered(o) => Ordered::insert(o, key, value),
        }
    }

    fn insert_many(w: Writer<'_, Self>, objects: Vec<(K, V)>) {
        match Self::backend(w) {
            BackendWriter::Set(h) => Hashed::insert_many(h, objects),
            BackendWriter::Bag(h) => Hashed::insert_many(h, objects),
            BackendWriter::Ordered(o) => Ordered::insert_many(o, objects),
        }
    }

    fn insert_new(w: Writer<'_, Self>, key: K, value: V) -> bool {
        match Self::backend(w) {
            BackendWriter::Set(h) => Hashed::insert_new(h, key, value),
            BackendWriter::Bag(h) => Hashed::insert_new(h, key, value),
            BackendWriter::Ordered(o) => Ordered::insert_new(o, key, value),
        }
    }

    fn insert_new_many(w: Writer<'_, Self>, objects: Vec<(K, V)>) -> bool {
        match Self::backend(w) {
            BackendWriter::Set(h) => Hashed::insert_new_many(h, objects),
            BackendWriter::Bag(h) => Hashed::insert_new_many(h, objects),
            BackendWriter::Ordered(o) => Ordered::insert_new_many(o, objects),
        }
    }

    fn lookup(&self, acc: Access<'_>, key: &K) -> Vec<V> {
        match &self.backend {
            Backend::Set(h) => h.with(acc, key, |s| s.map(|s| vec![s.0.clone()])),
            Backend::Bag(h) => h.with(acc, key, |s| s.map(|s| s.objects().to_vec())),
            Backend::Ordered(o) => o.with(acc, key, |v| v.map(|v| vec![v.clone()])),
        }
        .unwrap_or_default()
    }

    /// Calls `f` with the objects under `key` (empty when none), borrowed in place.
    #[inline]
    fn lookup_with<R>(&self, acc: Access<'_>, key: &K, f: impl FnOnce(&[V]) -> R) -> R {
        match &self.backend {
            Backend::Set(h) => h.with(acc, key, |s| f(s.map_or(&[][..], |s| s.objects()))),
            Backend::Bag(h) => h.with(acc, key, |s| f(s.map_or(&[][..], |s| s.objects()))),
            Backend::Ordered(o) => o.with(acc, key, |v| f(v.map_or(&[][..], std::slice::from_ref))),
        }
    }

    #[inline]
    fn get(&self, acc: Access<'_>, key: &K) -> Option<V> {
        match &self.backend {
            Backend::Set(h) => h.with(acc, key, |s| s.map(|s| s.0.clone())),
            Backend::Bag(h) => h.with(acc, key, |s| s.and_then(|s| s.objects().first().cloned())),
            Backend::Ordered(o) => o.with(acc, key, |v| v.cloned()),
        }
    }

    fn member(&self, acc: Access<'_>, key: &K) -> bool {
        match &self.backend {
            Backend::Set(h) => h.member(acc, key),
            Backend::Bag(h) => h.member(acc, key),
            Backend::Ordered(o) => o.member(acc, key),
        }
    }

    fn delete(w: Writer<'_, Self>, key: &K) -> usize {
        match Self::backend(w) {
            BackendWriter::Set(h) => Hashed::delete(h, key),
            BackendWriter::Bag(h) => Hashed::delete(h, key),
            BackendWriter::Ordered(o) => usize::from(Ordered::take(o, key).is_some()),
        }
    }

    fn delete_object(w: Writer<'_, Self>, key: &K, value: &V) -> usize {
        match Self::backend(w) {
            BackendWriter::Set(h) => Hashed::delete_object(h, key, value),
            BackendWriter::Bag(h) => Hashed::delete_object(h, key, value),
            BackendWriter::Ordered(o) => Ordered::delete_object(o, key, value),
        }
    }

    fn delete_all_objects(w: Writer<'_, Self>) {
        match Self::backend(w) {
            BackendWriter::Set(h) => Hashed::delete_all_objects(h),
            BackendWriter::Bag(h) => Hashed::delete_all_objects(h),
            BackendWriter::Ordered(o) => Ordered::delete_all_objects(o),
        }
    }

    fn take(w: Writer<'_, Self>, key: &K) -> Vec<V> {
        match Self::backend(w) {
            BackendWriter::Set(h) => Hashed::take(h, key),
            BackendWriter::Bag(h) => Hashed::take(h, key),
            BackendWriter::Ordered(o) => Ordered::take(o, key).into_iter().collect(),
        }
    }

    fn update_counter(
        w: Writer<'_, Self>,
        key: &K,
        incr: i64,
        default: Option<V>,
    ) -> Result<V, EtsError>
    where
        V: Counter,
    {
        let table_type = w.get().table_type;
        let r = match Self::backend(w) {
            BackendWriter::Set(h) => Hashed::update_counter(h, key, incr, default),
            BackendWriter::Ordered(o) => Ordered::update_counter(o, key, incr, default),
            BackendWriter::Bag(_) => {
                return Err(EtsError::NotASet {
                    operation: "update_counter",
                    table_type,
                })
            }
        };
        r.map_err(|e| match e {
            CounterError::NoSuchKey => EtsError::NoSuchKey,
            CounterError::Overflow => EtsError::CounterOverflow { incr },
        })
    }

    fn update(w: Writer<'_, Self>, key: &K, f: impl FnOnce(&mut V)) -> Result<bool, EtsError> {
        let table_type = w.get().table_type;
        match Self::backend(w) {
            BackendWriter::Set(h) => Ok(Hashed::update(h, key, f)),
            BackendWriter::Ordered(o) => Ok(Ordered::update(o, key, f)),
            BackendWriter::Bag(_) => Err(EtsError::NotASet {
                operation: "update",
                table_type,
            }),
        }
    }

    /// Folds over every object (key order for ordered_set).
    fn fold<A>(&self, acc: Access<'_>, init: A, f: impl FnMut(A, &K, &V) -> A) -> A {
        match &self.backend {
            Backend::Set(h) => h.fold(acc, init, f),
            Backend::Bag(h) => h.fold(acc, init, f),
            Backend::Ordered(o) => o.fold(acc, init, f),
        }
    }

    fn select<R>(&self, acc: Access<'_>, mut f: impl FnMut(&K, &V) -> Option<R>) -> Vec<R> {
        self.fold(acc, Vec::new(), |mut out, k, v| {
            out.extend(f(k, v));
            out
        })
    }

    fn select_count(&self, acc: Access<'_>, mut pred: impl FnMut(&K, &V) -> bool) -> usize {
        self.fold(acc, 0, |n, k, v| n + usize::from(pred(k, v)))
    }

    fn select_delete(w: Writer<'_, Self>, pred: impl FnMut(&K, &V) -> bool) -> usize {
        match Self::backend(w) {
            BackendWriter::Set(h) => Hashed::select_delete(h, pred),
            BackendWriter::Bag(h) => Hashed::select_delete(h, pred),
            BackendWriter::Ordered(o) => Ordered::select_delete(o, pred),
        }
    }

    fn first(&self, acc: Access<'_>) -> Option<K> {
        match &self.backend {
            Backend::Set(h) => h.first(acc),
            Backend::Bag(h) => h.first(acc),
            Backend::Ordered(o) => o.first(acc),
        }
    }

    fn next(&self, acc: Access<'_>, key: &K) -> Option<K> {
        match &self.backend {
            Backend::Set(h) => h.next(acc, key),
            Backend::Bag(h) => h.next(acc, key),
            Backend::Ordered(o) => o.next(acc, key),
        }
    }

    fn last(&self, acc: Access<'_>) -> Option<K> {
        match &self.backend {
            Backend::Ordered(o) => o.last(acc),
            _ => self.first(acc),
        }
    }

    fn prev(&self, acc: Access<'_>, key: &K) -> Option<K> {
        match &self.backend {
            Backend::Ordered(o) => o.prev(acc, key),
            _ => self.next(acc, key),
        }
    }

    fn ordered(&self, operation: &'static str) -> Result<&Ordered<K, V>, EtsError> {
        match &self.backend {
            Backend::Ordered(o) => Ok(o),
            _ => Err(EtsError::NotOrdered {
                operation,
                table_type: self.table_type,
            }),
        }
    }

    /// (objects, keys).
    fn counts(&self, acc: Access<'_>) -> (usize, usize) {
        match &self.backend {
            Backend::Set(h) => h.counts(acc),
            Backend::Bag(h) => h.counts(acc),
            Backend::Ordered(o) => {
                let n = o.len(acc);
                (n, n)
            }
        }
    }

    fn len(&self, acc: Access<'_>) -> usize {
        match &self.backend {
            Backend::Set(h) => h.keys(acc),
            Backend::Ordered(o) => o.len(acc),
            Backend::Bag(_) => self.counts(acc).0,
        }
    }

    fn info(&self, acc: Access<'_>) -> TableInfo {
        let (size, keys) = self.counts(acc);
        let k = std::mem::size_of::<K>() as u64;
        let v = std::mem::size_of::<V>() as u64;
        // Rough: hashbrown buckets (+1 control byte) at 7/8 load; a bag's slot per key;
        // B-tree nodes about two-thirds full.
        let memory_bytes = match &self.backend {
            Backend::Set(_) => keys as u64 * (k + v + 1) * 8 / 7,
            Backend::Bag(_) => {
                keys as u64 * (k + std::mem::size_of::<Objs<V>>() as u64 + 1) * 8 / 7
                    + size.saturating_sub(keys) as u64 * v
            }
            Backend::Ordered(_) => keys as u64 * (k + v) * 3 / 2,
        };
        TableInfo {
            table_type: self.table_type,
            size,
            keys,
            memory_bytes,
        }
    }

    fn to_vec(&self, acc: Access<'_>) -> Vec<(K, V)> {
        self.select(acc, |k, v| Some((k.clone(), v.clone())))
    }

    fn tab2file(&self, acc: Access<'_>, path: &Path) -> Result<(), EtsError>
    where
        K: Serialize,
        V: Serialize,
    {
        let objects = self.to_vec(acc);
        let header = dump::Header {
            table_type: self.table_type,
            name: self.name.clone(),
            key_type: std::any::type_name::<K>().to_string(),
            value_type: std::any::type_name::<V>().to_string(),
            objects: objects.len() as u64,
        };
        dump::write(path, &header, &objects)
    }
}

/// Converts any `RangeBounds` into the pair of borrowed bounds the backends take.
fn bounds<K, R: RangeBounds<K>>(r: &R) -> (Bound<&K>, Bound<&K>) {
    (r.start_bound(), r.end_bound())
}

/// The read methods every handle has, with the handle's access mode.
macro_rules! read_api {
    () => {
        /// The table's type.
        pub fn table_type(&self) -> TableType {
            self.inner.table_type
        }

        /// The table's name, if it was created with one.
        pub fn name(&self) -> Option<&str> {
            self.inner.name.as_deref()
        }

        /// Every object under `key`: at most one for sets, insertion order for bags.
        /// Erlang: `lookup/2`.
        pub fn lookup(&self, key: &K) -> Vec<V> {
            self.inner.lookup(self.access(), key)
        }

        /// Calls `f` with the objects under `key` (an empty slice when none; insertion order
        /// for bags), borrowed in place: `lookup` without allocating a `Vec`. `f` runs while
        /// the key's shard is read-locked and must not call into this table.
        #[inline]
        pub fn lookup_with<R, F: FnOnce(&[V]) -> R>(&self, key: &K, f: F) -> R {
            self.inner.lookup_with(self.access(), key, f)
        }

        /// The (first) object under `key`, without allocating: the fast path for sets.
        pub fn get(&self, key: &K) -> Option<V> {
            self.inner.get(self.access(), key)
        }

        /// Whether any object is stored under `key`. Erlang: `member/2`.
        pub fn member(&self, key: &K) -> bool {
            self.inner.member(self.access(), key)
        }

        /// Number of objects (every object of a bag). Erlang: `info(T, size)`.
        pub fn len(&self) -> usize {
            self.inner.len(self.access())
        }

        /// True when the table holds no object.
        pub fn is_empty(&self) -> bool {
            self.len() == 0
        }

        /// Type, size, keys and a memory estimate. Erlang: `info/1`.
        pub fn info(&self) -> TableInfo {
            self.inner.info(self.access())
        }

        /// Every object; key order for `OrderedSet`. Erlang: `tab2list/1`.
        pub fn to_vec(&self) -> Vec<(K, V)> {
            self.inner.to_vec(self.access())
        }

        /// The first key in table order. Erlang: `first/1`.
        pub fn first(&self) -> Option<K> {
            self.inner.first(self.access())
        }

        /// The key after `key` in table order (for `OrderedSet`, whether or not `key` is
        /// still present). O(n) per call on the hash types. Erlang: `next/2`.
        pub fn next(&self, key: &K) -> Option<K> {
            self.inner.next(self.access(), key)
        }

        /// The last key of an `OrderedSet`; as [`Self::first`] on the hash types.
        /// Erlang: `last/1`.
        pub fn last(&self) -> Option<K> {
            self.inner.last(self.access())
        }

        /// The key before `key` in an `OrderedSet`; as [`Self::next`] on the hash types.
        /// Erlang: `prev/2`.
        pub fn prev(&self, key: &K) -> Option<K> {
            self.inner.prev(self.access(), key)
        }

        /// The objects whose keys lie in `range`, in key order (an inverted range is empty).
        /// `OrderedSet` only: [`EtsError::NotOrdered`] otherwise.
        pub fn range<R: RangeBounds<K>>(&self, range: R) -> Result<Vec<(K, V)>, EtsError> {
            let (lo, hi) = bounds(&range);
            Ok(self.inner.ordered("range")?.range(self.access(), lo, hi))
        }

        /// Folds over the objects whose keys lie in `range`, in key order, without copying
        /// them. `OrderedSet` only.
        pub fn range_fold<A, R, F>(&self, range: R, init: A, f: F) -> Result<A, EtsError>
        where
            R: RangeBounds<K>,
            F: FnMut(A, &K, &V) -> A,
        {
            let (lo, hi) = bounds(&range);
            Ok(self
                .inner
                .ordered("range_fold")?
                .range_fold(self.access(), lo, hi, init, f))
        }

        /// Collects `f(object)` for every object where it is `Some`. Erlang: `select/2`.
        pub fn select<R, F>(&self, f: F) -> Vec<R>
        where
            F: FnMut(&K, &V) -> Option<R>,
        {
            self.inner.select(self.access(), f)
        }

        /// Counts the objects for which `pred` holds. Erlang: `select_count/2`.
        pub fn select_count<F>(&self, pred: F) -> usize
        where
            F: FnMut(&K, &V) -> bool,
        {
            self.inner.select_count(self.access(), pred)
        }

        /// Folds over every object (key order for `OrderedSet`). Erlang: `foldl/3`.
        pub fn fold<A, F>(&self, init: A, f: F) -> A
        where
            F: FnMut(A, &K, &V) -> A,
        {
            self.inner.fold(self.access(), init, f)
        }

        /// Dumps the table to `path`: header, objects, CRC32 (see the module docs). Written
        /// to a temporary file and renamed, so a crash never leaves half a dump.
        /// Erlang: `tab2file/2`.
        pub fn tab2file(&self, path: impl AsRef<Path>) -> Result<(), EtsError>
        where
            K: Serialize,
            V: Serialize,
        {
            self.inner.tab2file(self.access(), path.as_ref())
        }
    };
}

/// The write methods of the writing handles. `$($m)?` is `mut` for the owner's `&mut self`.
macro_rules! write_api {
    ($($m:ident)?) => {
        /// Inserts one object: replaces for sets; adds for bags (not if identical, for `Bag`).
        /// Erlang: `insert/2`.
        #[inline]
        pub fn insert(&$($m)? self, key: K, value: V) {
            self.write(|w| Inner::insert(w, key, value))
        }

        /// Inserts many objects atomically and in isolation: readers see all or none. For
        /// sets a later object with the same key wins. The iterator is drained before the
        /// table is locked. Erlang: `insert/2` with a list.
        pub fn insert_many<I: IntoIterator<Item = (K, V)>>(&$($m)? self, objects: I) {
            let objects = objects.into_iter().collect();
            self.write(|w| Inner::insert_many(w, objects))
        }

        /// Inserts only if the key is absent; returns whether it inserted.
        /// Erlang: `insert_new/2`.
        pub fn insert_new(&$($m)? self, key: K, value: V) -> bool {
            self.write(|w| Inner::insert_new(w, key, value))
        }

        /// Inserts all objects if none of their keys is present; otherwise nothing, and
        /// returns `false`. Atomic and isolated. Erlang: `insert_new/2` with a list.
        pub fn insert_new_many<I: IntoIterator<Item = (K, V)>>(&$($m)? self, objects: I) -> bool {
            let objects = objects.into_iter().collect();
            self.write(|w| Inner::insert_new_many(w, objects))
        }

        /// Deletes every object under `key`; returns how many. Erlang: `delete/2`.
        pub fn delete(&$($m)? self, key: &K) -> usize {
            self.write(|w| Inner::delete(w, key))
        }

        /// Deletes the object `(key, value)`; in a `DuplicateBag` every copy of it. Returns
        /// how many it removed. Erlang: `delete_object/2`.
        pub fn delete_object(&$($m)? self, key: &K, value: &V) -> usize {
            self.write(|w| Inner::delete_object(w, key, value))
        }

        /// Empties the table, atomically. Erlang: `delete_all_objects/1`.
        pub fn delete_all_objects(&$($m)? self) {
            self.write(Inner::delete_all_objects)
        }

        /// Removes and returns every object under `key`. Erlang: `take/2`.
        pub fn take(&$($m)? self, key: &K) -> Vec<V> {
            self.write(|w| Inner::take(w, key))
        }

        /// Atomically adds `incr` to the value under `key` and returns the new value. If the
        /// key is absent, `default` is inserted first (`EtsError::NoSuchKey` without one).
        /// Overflow is [`EtsError::CounterOverflow`] and leaves the table unchanged; a bag is
        /// [`EtsError::NotASet`]. Erlang: `update_counter/3,4`.
        pub fn update_counter(&$($m)? self, key: &K, incr: i64, default: Option<V>) -> Result<V, EtsError>
        where
            V: Counter,
        {
            self.write(|w| Inner::update_counter(w, key, incr, default))
        }

        /// Atomically applies `f` to the value under `key`; `Ok(false)` if absent,
        /// [`EtsError::NotASet`] on a bag. `f` must not touch this table.
        /// Erlang: `update_element/3`.
        pub fn update<F: FnOnce(&mut V)>(&$($m)? self, key: &K, f: F) -> Result<bool, EtsError> {
            self.write(|w| Inner::update(w, key, f))
        }

        /// Deletes the objects for which `pred` holds, atomically as a whole (stronger than
        /// ETS); returns how many. Erlang: `select_delete/2`.
        pub fn select_delete<F: FnMut(&K, &V) -> bool>(&$($m)? self, pred: F) -> usize {
            self.write(|w| Inner::select_delete(w, pred))
        }
    };
}

/// Implements [`ReadTable`] (and with `write`, [`WriteTable`]) by delegating to the inherent
/// methods' backend calls.
macro_rules! trait_impls {
    ($ty:ident) => {
        impl<K, V> ReadTable<K, V> for $ty<K, V>
        where
            K: Eq + Hash + Ord + Clone,
            V: Clone + PartialEq,
        {
            type Error = EtsError;
            fn table_type(&self) -> TableType {
                self.inner.table_type
            }
            fn lookup(&self, key: &K) -> Result<Vec<V>, EtsError> {
                Ok(self.inner.lookup(self.access(), key))
            }
            #[inline]
            fn lookup_with<R, F>(&self, key: &K, f: F) -> Result<R, EtsError>
            where
                F: FnOnce(&[V]) -> R,
            {
                Ok(self.inner.lookup_with(self.access(), key, f))
            }
            fn member(&self, key: &K) -> Result<bool, EtsError> {
                Ok(self.inner.member(self.access(), key))
            }
            fn len(&self) -> Result<usize, EtsError> {
                Ok(self.inner.len(self.access()))
            }
            fn info(&self) -> Result<TableInfo, EtsError> {
                Ok(self.inner.info(self.access()))
            }
            fn to_vec(&self) -> Result<Vec<(K, V)>, EtsError> {
                Ok(self.inner.to_vec(self.access()))
            }
            fn first(&self) -> Result<Option<K>, EtsError> {
                Ok(self.inner.first(self.access()))
            }
            fn next(&self, key: &K) -> Result<Option<K>, EtsError> {
                Ok(self.inner.next(self.access(), key))
            }
            fn last(&self) -> Result<Option<K>, EtsError> {
                Ok(self.inner.last(self.access()))
            }
            fn prev(&self, key: &K) -> Result<Option<K>, EtsError> {
                Ok(self.inner.prev(self.access(), key))
            }
            fn range(&self, lower: Bound<&K>, upper: Bound<&K>) -> Result<Vec<(K, V)>, EtsError> {
                Ok(self
                    .inner
                    .ordered("range")?
                    .range(self.access(), lower, upper))
            }
            fn select<R, F>(&self, f: F) -> Result<Vec<R>, EtsError>
            where
                F: FnMut(&K, &V) -> Option<R>,
            {
                Ok(self.inner.select(self.access(), f))
            }
            fn select_count<F>(&self, pred: F) -> Result<usize, EtsError>
            where
                F: FnMut(&K, &V) -> bool,
            {
                Ok(self.inner.select_count(self.access(), pred))
            }
            fn fold<A, F>(&self, init: A, f: F) -> Result<A, EtsError>
            where
                F: FnMut(A, &K, &V) -> A,
            {
                Ok(self.inner.fold(self.access(), init, f))
            }
        }
    };
    ($ty:ident, write) => {
        trait_impls!($ty);

        impl<K, V> WriteTable<K, V> for $ty<K, V>
        where
            K: Eq + Hash + Ord + Clone,
            V: Clone + PartialEq,
        {
            fn insert(&mut self, key: K, value: V) -> Result<(), EtsError> {
                self.write(|w| Inner::insert(w, key, value));
                Ok(())
            }
            fn insert_many<I>(&mut self, objects: I) -> Result<(), EtsError>
            where
                I: IntoIterator<Item = (K, V)>,
            {
                {
                    let objects = objects.into_iter().collect();
                    self.write(|w| Inner::insert_many(w, objects))
                };
                Ok(())
            }
            fn insert_new(&mut self, key: K, value: V) -> Result<bool, EtsError> {
                Ok(self.write(|w| Inner::insert_new(w, key, value)))
            }
            fn insert_new_many<I>(&mut self, objects: I) -> Result<bool, EtsError>
            where
                I: IntoIterator<Item = (K, V)>,
            {
                Ok({
                    let objects = objects.into_iter().collect();
                    self.write(|w| Inner::insert_new_many(w, objects))
                })
            }
            fn delete(&mut self, key: &K) -> Result<usize, EtsError> {
                Ok(self.write(|w| Inner::delete(w, key)))
            }
            fn delete_object(&mut self, key: &K, value: &V) -> Result<usize, EtsError> {
                Ok(self.write(|w| Inner::delete_object(w, key, value)))
            }
            fn delete_all_objects(&mut self) -> Result<(), EtsError> {
                self.write(Inner::delete_all_objects);
                Ok(())
            }
            fn take(&mut self, key: &K) -> Result<Vec<V>, EtsError> {
                Ok(self.write(|w| Inner::take(w, key)))
            }
            fn update_counter(
                &mut self,
                key: &K,
                incr: i64,
                default: Option<V>,
            ) -> Result<V, EtsError>
            where
                V: Counter,
            {
                self.write(|w| Inner::update_counter(w, key, incr, default))
            }
            fn update<F>(&mut self, key: &K, f: F) -> Result<bool, EtsError>
            where
                F: FnOnce(&mut V),
            {
                self.write(|w| Inner::update(w, key, f))
            }
            fn select_delete<F>(&mut self, pred: F) -> Result<usize, EtsError>
            where
                F: FnMut(&K, &V) -> bool,
            {
                Ok(self.write(|w| Inner::select_delete(w, pred)))
            }
        }
    };
}

/// The options of a new table beyond its type: those of `ets:new/2` that apply here.
///
/// ```
/// use freqalloc::ets::{PublicTable, TableOptions};
/// use freqalloc::TableType;
///
/// let t: PublicTable<u64, u64> = PublicTable::with_options(
///     TableType::Set,
///     TableOptions::new().name("hot").read_concurrency(true),
/// );
/// t.insert(1, 2);
/// assert_eq!(t.get(&1), Some(2));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableOptions {
    /// The table's name (shown by `Debug`, kept by dumps).
    pub name: Option<String>,
    /// Makes reads from many threads at once scale, on an **`ordered_set`**: its lock counts
    /// readers in per-thread slots on their own cache lines instead of in one shared word,
    /// so concurrent readers do not contend. Writes check every slot, and the lock takes
    /// `(1 + slots) * 128` bytes (slots: two per core, at most 16), so it is off by default.
    /// Changes no semantics. Erlang: `{read_concurrency, true}`.
    ///
    /// The hash types (`set`, `bag`, `duplicate_bag`) accept and ignore it: they are on
    /// dashmap, whose shards each carry dashmap's own lock (one reader count per shard), and
    /// dashmap offers no way to put another lock there; their readers already spread over
    /// 32 shard locks per core (see the module docs for the 2-thread figures).
    pub read_concurrency: bool,
}

impl TableOptions {
    /// The defaults: unnamed, `read_concurrency` off.
    pub fn new() -> Self {
        Self::default()
    }

    /// Names the table.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Turns `read_concurrency` on or off.
    pub fn read_concurrency(mut self, on: bool) -> Self {
        self.read_concurrency = on;
        self
    }
}

/// The owner of a *protected* table: the only handle that writes.
///
/// `Send` (hand it to the thread that owns the table) but not `Clone`. Other threads read
/// through [`TableReader`]s from [`Table::reader`]. Because no one else can write, the owner's
/// reads take no lock at all; its single-key writes take only the key's shard lock (against
/// readers), and none while no other handle (no reader) exists.
pub struct Table<K, V> {
    inner: Arc<Inner<K, V>>,
}

/// A read-only handle to a table: `Clone + Send + Sync`, [`ReadTable`] only. Any number of
/// threads may read through readers while the owner writes.
pub struct TableReader<K, V> {
    inner: Arc<Inner<K, V>>,
}

/// A *public* table: every clone reads and writes. Clones are cheap (one `Arc`).
///
/// Its inherent write methods take `&self` (a clone per thread is not even needed with
/// `std::thread::scope`). With [`WriteTable`] in scope, calling a method on a `&mut PublicTable`
/// picks the trait's `Result`-returning twin instead; both do the same.
pub struct PublicTable<K, V> {
    inner: Arc<Inner<K, V>>,
}

impl<K, V> Table<K, V>
where
    K: Eq + Hash + Ord + Clone,
    V: Clone + PartialEq,
{
    /// A new, empty, unnamed protected table of the given type. Erlang: `ets:new/2`.
    pub fn new(table_type: TableType) -> Self {
        Table {
            inner: Arc::new(Inner::new(None, table_type, false)),
        }
    }

    /// A new, empty protected table with a name (shown by `Debug` and kept by dumps).
    pub fn with_name(name: impl Into<String>, table_type: TableType) -> Self {
        Table {
            inner: Arc::new(Inner::new(Some(name.into()), table_type, false)),
        }
    }

    /// A new, empty protected table with [`TableOptions`]. Erlang: `ets:new/2` with options.
    pub fn with_options(table_type: TableType, options: TableOptions) -> Self {
        Table {
            inner: Arc::new(Inner::new(
                options.name,
                table_type,
                options.read_concurrency,
            )),
        }
    }

    /// A read handle for other threads.
    pub fn reader(&self) -> TableReader<K, V> {
        TableReader {
            inner: Arc::clone(&self.inner),
        }
    }

    /// Turns this protected table into a public one: every clone may then write.
    pub fn into_public(self) -> PublicTable<K, V> {
        PublicTable { inner: self.inner }
    }

    /// Reads a dump written by `tab2file` into a new protected table (same type and name).
    /// Every damage is a typed error: [`EtsError::BadMagic`], [`EtsError::Truncated`],
    /// [`EtsError::ChecksumMismatch`], [`EtsError::WrongType`], ... Erlang: `file2tab/1`.
    pub fn file2tab(path: impl AsRef<Path>) -> Result<Self, EtsError>
    where
        K: DeserializeOwned,
        V: DeserializeOwned,
    {
        let (header, objects) = dump::read::<K, V>(path.as_ref())?;
        let mut inner = Inner::new(header.name, header.table_type, false);
        for (k, v) in objects {
            // No handle to `inner` exists yet: `&mut`, no lock.
            Inner::insert(Writer::Sole(&mut inner), k, v);
        }
        Ok(Table {
            inner: Arc::new(inner),
        })
    }

    /// How this owner reads: without locks (see [`Access::owner`]).
    #[inline]
    fn access(&self) -> Access<'_> {
        // SAFETY: `self` is this table's owner, and the `Access` goes only to `self.inner`
        // (every caller is a method of `self`).
        unsafe { Access::owner(self) }
    }

    /// Runs a write: through `&mut` with no lock when no other handle to the table exists
    /// (`Arc::get_mut`: no reader alive, none can be made while `&mut self` is held, its
    /// `Acquire` orders every dropped reader's reads before this write), else through the
    /// locks (readers may be reading).
    ///
    /// While readers exist (the allocator's shards keep some for status and `held` from other
    /// threads) the strong count, a plain load, says so first: `Arc::get_mut` would only fail,
    /// after a compare-and-swap and a store on the `Arc`'s counts, two more atomic writes on a
    /// line every reader shares, on every write. (Measured: that was most of what the
    /// allocator's `none` rows lost moving to dashmap; see the module docs.) The load is only
    /// a hint: a count of 1 still goes through `Arc::get_mut`, which decides.
    #[inline]
    fn write<R>(&mut self, f: impl FnOnce(Writer<'_, Inner<K, V>>) -> R) -> R {
        if Arc::strong_count(&self.inner) > 1 {
            return f(Writer::Locked(&self.inner));
        }
        match Arc::get_mut(&mut self.inner) {
            Some(inner) => f(Writer::Sole(inner)),
            None => f(Writer::Locked(&self.inner)),
        }
    }

    read_api!();
    write_api!(mut);
}

impl<K, V> TableReader<K, V>
where
    K: Eq + Hash + Ord + Clone,
    V: Clone + PartialEq,
{
    /// Every read of a reader locks.
    #[inline]
    fn access(&self) -> Access<'static> {
        Access::shared()
    }

    read_api!();
}

impl<K, V> PublicTable<K, V>
where
    K: Eq + Hash + Ord + Clone,
    V: Clone + PartialEq,
{
    /// A new, empty, unnamed public table. Erlang: `ets:new(T, [public])`.
    pub fn new(table_type: TableType) -> Self {
        Table::new(table_type).into_public()
    }

    /// A new, empty, named public table.
    pub fn with_name(name: impl Into<String>, table_type: TableType) -> Self {
        Table::with_name(name, table_type).into_public()
    }

    /// A new, empty public table with [`TableOptions`]. Erlang: `ets:new(T, [public | Opts])`.
    pub fn with_options(table_type: TableType, options: TableOptions) -> Self {
        Table::with_options(table_type, options).into_public()
    }

    /// A read-only handle to this table.
    pub fn reader(&self) -> TableReader<K, V> {
        TableReader {
            inner: Arc::clone(&self.inner),
        }
    }

    /// Every read of a public handle locks.
    #[inline]
    fn access(&self) -> Access<'static> {
        Access::shared()
    }

    /// Every write of a public handle locks.
    #[inline]
    fn write<R>(&self, f: impl FnOnce(Writer<'_, Inner<K, V>>) -> R) -> R {
        f(Writer::Locked(&self.inner))
    }

    read_api!();
    write_api!();
}

impl<K, V> Clone for TableReader<K, V> {
    fn clone(&self) -> Self {
        TableReader {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<K, V> Clone for PublicTable<K, V> {
    fn clone(&self) -> Self {
        PublicTable {
            inner: Arc::clone(&self.inner),
        }
    }
}

trait_impls!(Table, write);
trait_impls!(PublicTable, write);
trait_impls!(TableReader);

macro_rules! debug_impl {
    ($ty:ident) => {
        impl<K, V> fmt::Debug for $ty<K, V> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($ty))
                    .field("name", &self.inner.name)
                    .field("table_type", &self.inner.table_type)
                    .finish_non_exhaustive()
            }
        }
    };
}
debug_impl!(Table);
debug_impl!(TableReader);
debug_impl!(PublicTable);
