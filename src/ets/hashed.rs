//! The hashed backend of `set`, `bag` and `duplicate_bag`: a fixed array of shards, each a
//! `hashbrown::HashTable` behind its own read-write lock ([`super::lock::Lock`]), keyed by
//! FxHash.
//!
//! Locking (the shape of ETS's table lock above its bucket locks, with the table lock made of
//! every bucket lock):
//!
//! * A single-key operation of a shared handle (a [`super::TableReader`] or a
//!   [`super::PublicTable`]) hashes the key once and holds that one shard's lock (read or
//!   write) for the whole operation: atomic and isolated.
//! * A many-key operation (`insert_many`, `insert_new_many`, `delete_all_objects`,
//!   `select_delete`) holds every shard's write lock, taken in index order, for its whole
//!   run; a traversal of a shared handle (`fold`, `first`, `next`, counts) holds every
//!   shard's read lock the same way. So no reader ever sees part of a many-key write, in a
//!   single-key read or in a traversal.
//! * The owner of a protected table ([`Access::Owner`]) reads without any lock: every write
//!   to the table goes through the owner's `&mut` handle, so while the owner holds `&` to
//!   read there is no writer at all, only other readers. Its writes take the shard locks (or
//!   all of them), because readers may be reading.
//! * The owner with no other handle alive ([`Access::Sole`]) also writes single keys without
//!   a lock: nothing else can reach the table.
//!
//! Architecture Invariant: a thread holds at most one shard lock except in the all-shards
//! helpers, which take them in index order; no method runs caller code (an iterator of
//! objects) while it holds a lock, except the closures whose docs say so (`fold`, `update`,
//! `lookup_with`, the predicates), which must not call into the same table. Together: no
//! deadlock.

use std::hash::{BuildHasher, Hash};
use std::sync::OnceLock;

use super::lock::{Lock, LockWrite};
use hashbrown::hash_table::Entry;
use hashbrown::HashTable;
use rustc_hash::FxBuildHasher;

use super::Access;
use crate::table::Counter;

/// The objects stored under one key: exactly one for sets ([`One`]), a `Vec` in insertion
/// Hashes a batch's keys before any lock is taken (a many-key write holds every shard's lock).
fn hash_all<K: Hash, V>(objects: Vec<(K, V)>) -> Vec<(u64, K, V)> {
    objects
        .into_iter()
        .map(|(k, v)| (hash_of(&k), k, v))
        .collect()
}

/// order for bags.
pub(crate) trait Slot<V>: Sized {
    /// True when a key holds exactly one object (set semantics).
    const SINGLE: bool;
    fn new(v: V) -> Self;
    fn objects(&self) -> &[V];
    /// Adds `v` as the table type says (`dedupe`: a `bag` stores an identical object once).
    fn add(&mut self, v: V, dedupe: bool);
    /// Removes the objects for which `remove` holds; returns (how many, whether now empty).
    fn remove_where(&mut self, remove: impl FnMut(&V) -> bool) -> (usize, bool);
    fn into_vec(self) -> Vec<V>;
    fn single_mut(&mut self) -> Option<&mut V>;
}

/// The slot of a set: one object, no allocation.
pub(crate) struct One<V>(pub(crate) V);

impl<V: PartialEq> Slot<V> for One<V> {
    const SINGLE: bool = true;
    #[inline]
    fn new(v: V) -> Self {
        One(v)
    }
    #[inline]
    fn objects(&self) -> &[V] {
        std::slice::from_ref(&self.0)
    }
    #[inline]
    fn add(&mut self, v: V, _dedupe: bool) {
        self.0 = v;
    }
    fn remove_where(&mut self, mut remove: impl FnMut(&V) -> bool) -> (usize, bool) {
        if remove(&self.0) {
            (1, true)
        } else {
            (0, false)
        }
    }
    fn into_vec(self) -> Vec<V> {
        vec![self.0]
    }
    fn single_mut(&mut self) -> Option<&mut V> {
        Some(&mut self.0)
    }
}

/// The slot of a bag: a key's objects in insertion order, with no allocation while there is
/// only one (the common case: most keys of most bags hold one object). `Many` is boxed so
/// the slot is one pointer plus the object, not a `Vec` header: for `u64` objects a bucket
/// of `(u64, Objs<u64>)` is 24 bytes instead of 40 (fewer cache lines per probe and per
/// rehash; bag insert 12.4 -> 13.3 M/s on 1 thread, 8.4 -> 9.5 on 2; reads unchanged).
pub(crate) enum Objs<V> {
    One(V),
    // Deliberate: the box keeps the rare many-object case out of every bucket.
    #[allow(clippy::box_collection)]
    Many(Box<Vec<V>>),
}

impl<V: PartialEq> Slot<V> for Objs<V> {
    const SINGLE: bool = false;
    #[inline]
    fn new(v: V) -> Self {
        Objs::One(v)
    }
    #[inline]
    fn objects(&self) -> &[V] {
        match self {
            Objs::One(v) => std::slice::from_ref(v),
            Objs::Many(vs) => vs,
        }
    }
    fn add(&mut self, v: V, dedupe: bool) {
        if dedupe && self.objects().contains(&v) {
            return;
        }
        match self {
            Objs::Many(vs) => vs.push(v),
            Objs::One(_) => {
                let old = std::mem::replace(self, Objs::Many(Box::new(Vec::with_capacity(2))));
                if let (Objs::One(first), Objs::Many(vs)) = (old, &mut *self) {
                    vs.push(first);
                    vs.push(v);
                }
            }
        }
    }
    fn remove_where(&mut self, mut remove: impl FnMut(&V) -> bool) -> (usize, bool) {
        match self {
            Objs::One(v) => {
                if remove(v) {
                    (1, true)
                } else {
                    (0, false)
                }
            }
            Objs::Many(vs) => {
                let before = vs.len();
                vs.retain(|v| !remove(v));
                (before - vs.len(), vs.is_empty())
            }
        }
    }
    fn into_vec(self) -> Vec<V> {
        match self {
            Objs::One(v) => vec![v],
            Objs::Many(vs) => *vs,
        }
    }
    fn single_mut(&mut self) -> Option<&mut V> {
        None
    }
}

/// One shard: its own lock on its own cache lines (no false sharing between shard locks).
#[repr(align(128))]
struct Shard<T>(Lock<HashTable<T>>);

/// Shards per table: thirty-two per core, a power of two, at most 256 (so that a shared
/// traversal, which locks every shard, stays cheap on big machines); each shard's lock sits
/// on its own 128 bytes (8 KiB per table on 2 cores).
///
/// Measured on 2 cores (`bench tables --only ets`, medians of 5 alternating runs), 8 / 32 /
/// 64 shards (4 / 16 / 32 per core): set, 2 threads, insert 9.7 / 18.0 / 19.4, lookup
/// 39 / 49 / 51, delete 11.8 / 20.1 / 27.0 M/s (fewer collisions on a shard lock, whose slow
/// path parks); 1 thread, lookup 59 / 60 / 69, delete 41 / 46 / 51; bags alike.
fn shard_count() -> usize {
    static COUNT: OnceLock<usize> = OnceLock::new();
    *COUNT.get_or_init(|| {
        (std::thread::available_parallelism().map_or(1, usize::from) * 32)
            .next_power_of_two()
            .min(256)
    })
}

/// A hashed table whose keys hold slots `S`.
pub(crate) struct Hashed<K, S> {
    shards: Box<[Shard<(K, S)>]>,
    /// `(hash << 7) >> shift` is the shard index: the bits just below the top 7, which
    /// hashbrown keeps as each bucket's tag (so the tags within a shard still take all 128
    /// values: taking the top bits instead left a 32-shard table 4 tag values, and each probe
    /// many false tag matches), and above the low bits that pick the bucket.
    shift: u32,
    /// `bag` (true) or `duplicate_bag` (false); ignored by sets.
    dedupe: bool,
}

/// Why an `update_counter` failed, before the caller names the table type.
pub(crate) enum CounterError {
    NoSuchKey,
    Overflow,
}

#[inline]
fn hash_of<K: Hash>(key: &K) -> u64 {
    FxBuildHasher.hash_one(key)
}

impl<K, S> Hashed<K, S>
where
    K: Eq + Hash + Clone,
{
    /// `read_concurrency`: each shard gets a reader-scalable lock (see `super::lock`).
    pub(crate) fn new(dedupe: bool, read_concurrency: bool) -> Self {
        let n = shard_count();
        Hashed {
            shards: (0..n)
                .map(|_| Shard(Lock::new(HashTable::new(), read_concurrency)))
                .collect(),
            shift: u64::BITS - n.trailing_zeros(),
            dedupe,
        }
    }

    #[inline]
    fn shard(&self, hash: u64) -> &Lock<HashTable<(K, S)>> {
        &self.shards[self.index(hash)].0
    }

    #[inline]
    fn index(&self, hash: u64) -> usize {
        // `checked_shr`: one shard means a shift of 64, i.e. index 0.
        (hash << 7).checked_shr(self.shift).unwrap_or(0) as usize
    }

    /// Runs `f` on the shard of `hash`, read-locked unless the owner is asking.
    #[inline]
    fn read<R>(&self, acc: Access, hash: u64, f: impl FnOnce(&HashTable<(K, S)>) -> R) -> R {
        let shard = self.shard(hash);
        match acc {
            Access::Shared => f(&shard.read()),
            // SAFETY: `Owner`/`Sole` come only from a `Table` (see `Access`), and every write
            // to a table reached through a `Table` needs `&mut Table`, while this read holds
            // `&Table` (or the `&mut` itself): no write runs during the read. Other handles of
            // a protected table are `TableReader`s, which only read. Concurrent reads of a
            // `HashTable` through `&` are fine; `f` gets a `&` that cannot outlive this call.
            Access::Owner | Access::Sole => f(unsafe { &*shard.data_ptr() }),
        }
    }

    /// Runs `f` on the shard of `hash`, write-locked unless no other handle exists.
    #[inline]
    fn write<R>(&self, acc: Access, hash: u64, f: impl FnOnce(&mut HashTable<(K, S)>) -> R) -> R {
        let shard = self.shard(hash);
        match acc {
            // SAFETY: `Sole` is made only by `Table::write_access` from `&mut Table` when its
            // `Arc` is the only one (strong count 1, no `Weak` is ever made, acquire fence after
            // the check): no other handle exists, none can be made while the `&mut` is held,
            // so nothing else can touch any shard; the `&mut` given to `f` is unique and does
            // not outlive this call.
            Access::Sole => f(unsafe { &mut *shard.data_ptr() }),
            Access::Owner | Access::Shared => f(&mut shard.write()),
        }
    }

    /// Runs `f` over every shard, all read-locked for a shared handle, so `f` sees one
    /// instant of the whole table.
    fn read_all<R>(&self, acc: Access, f: impl FnOnce(&[&HashTable<(K, S)>]) -> R) -> R {
        match acc {
            Access::Shared => {
                let guards: Vec<_> = self.shards.iter().map(|s| s.0.read()).collect();
                let tables: Vec<&HashTable<(K, S)>> = guards.iter().map(|g| &**g).collect();
                f(&tables)
            }
            Access::Owner | Access::Sole => {
                // SAFETY: as in `read`: no write can run while the owner reads.
                let tables: Vec<&HashTable<(K, S)>> = self
                    .shards
                    .iter()
                    .map(|s| unsafe { &*s.0.data_ptr() })
                    .collect();
                f(&tables)
            }
        }
    }

    /// Every shard write-locked, in index order: the many-key operations' lock.
    fn write_all(&self) -> Vec<LockWrite<'_, HashTable<(K, S)>>> {
        self.shards.iter().map(|s| s.0.write()).collect()
    }

    #[inline]
    fn insert_into<V>(table: &mut HashTable<(K, S)>, hash: u64, key: K, value: V, dedupe: bool)
    where
        S: Slot<V>,
    {
        match table.entry(hash, |(k, _)| *k == key, |(k, _)| hash_of(k)) {
            Entry::Occupied(mut e) => e.get_mut().1.add(value, dedupe),
            Entry::Vacant(e) => {
                e.insert((key, S::new(value)));
            }
        }
    }

    #[inline]
    pub(crate) fn insert<V>(&self, acc: Access, key: K, value: V)
    where
        S: Slot<V>,
    {
        let hash = hash_of(&key);
        self.write(acc, hash, |t| {
            Self::insert_into(t, hash, key, value, self.dedupe)
        });
    }

    pub(crate) fn insert_many<V>(&self, objects: Vec<(K, V)>)
    where
        S: Slot<V>,
    {
        let hashed = hash_all(objects);
        let mut shards = self.write_all();
        for (h, k, v) in hashed {
            Self::insert_into(&mut shards[self.index(h)], h, k, v, self.dedupe);
        }
    }

    pub(crate) fn insert_new<V>(&self, acc: Access, key: K, value: V) -> bool
    where
        S: Slot<V>,
    {
        let hash = hash_of(&key);
        self.write(acc, hash, |t| {
            match t.entry(hash, |(k, _)| *k == key, |(k, _)| hash_of(k)) {
                Entry::Occupied(_) => false,
                Entry::Vacant(e) => {
                    e.insert((key, S::new(value)));
                    true
                }
            }
        })
    }

    pub(crate) fn insert_new_many<V>(&self, objects: Vec<(K, V)>) -> bool
    where
        S: Slot<V>,
    {
        let hashed = hash_all(objects);
        let mut shards = self.write_all();
        let present = hashed
            .iter()
            .any(|(h, key, _)| shards[self.index(*h)].find(*h, |(k, _)| k == key).is_some());
        if present {
            return false;
        }
        for (h, k, v) in hashed {
            Self::insert_into(&mut shards[self.index(h)], h, k, v, self.dedupe);
        }
        true
    }

    /// Calls `f` once with the slot under `key`; a shared handle holds the shard's read lock
    /// meanwhile, so `f` sees the slot as of one instant and never part of a many-key write.
    #[inline]
    pub(crate) fn with<R>(&self, acc: Access, key: &K, f: impl FnOnce(Option<&S>) -> R) -> R {
        let hash = hash_of(key);
        self.read(acc, hash, |t| {
            f(t.find(hash, |(k, _)| k == key).map(|(_, s)| s))
        })
    }

    pub(crate) fn member(&self, acc: Access, key: &K) -> bool {
        self.with(acc, key, |s| s.is_some())
    }

    /// Removes the slot under `key`.
    #[inline]
    fn remove(&self, acc: Access, key: &K) -> Option<S> {
        let hash = hash_of(key);
        self.write(acc, hash, |t| {
            t.find_entry(hash, |(k, _)| k == key)
                .ok()
                .map(|e| e.remove().0 .1)
        })
    }

    pub(crate) fn take<V>(&self, acc: Access, key: &K) -> Vec<V>
    where
        S: Slot<V>,
    {
        self.remove(acc, key).map(S::into_vec).unwrap_or_default()
    }

    #[inline]
    pub(crate) fn delete<V>(&self, acc: Access, key: &K) -> usize
    where
        S: Slot<V>,
    {
        // Dropped after the shard lock is released.
        self.remove(acc, key).map_or(0, |s| s.objects().len())
    }

    pub(crate) fn delete_object<V: PartialEq>(&self, acc: Access, key: &K, value: &V) -> usize
    where
        S: Slot<V>,
    {
        let hash = hash_of(key);
        self.write(acc, hash, |t| {
            let Ok(mut e) = t.find_entry(hash, |(k, _)| k == key) else {
                return 0;
            };
            let (n, empty) = e.get_mut().1.remove_where(|v| v == value);
            if empty {
                e.remove();
            }
            n
        })
    }

    pub(crate) fn delete_all_objects(&self) {
        // Swap the tables out under the locks; free them after releasing the locks.
        let old: Vec<HashTable<(K, S)>> = self
            .write_all()
            .iter_mut()
            .map(|g| std::mem::take(&mut **g))
            .collect();
        drop(old);
    }

    pub(crate) fn update_counter<V: Counter>(
        &self,
        acc: Access,
        key: &K,
        incr: i64,
        default: Option<V>,
    ) -> Result<V, CounterError>
    where
        S: Slot<V>,
    {
        let hash = hash_of(key);
        // One shard lock for the whole operation: present or absent, no one else can
        // change this key meanwhile.
        self.write(acc, hash, |t| {
            if let Some((_, s)) = t.find_mut(hash, |(k, _)| k == key) {
                let v = s.single_mut().ok_or(CounterError::NoSuchKey)?;
                let new = v.checked_add_i64(incr).ok_or(CounterError::Overflow)?;
                *v = new;
                return Ok(new);
            }
            let d = default.ok_or(CounterError::NoSuchKey)?;
            let new = d.checked_add_i64(incr).ok_or(CounterError::Overflow)?;
            t.insert_unique(hash, (key.clone(), S::new(new)), |(k, _)| hash_of(k));
            Ok(new)
        })
    }

    pub(crate) fn update<V>(&self, acc: Access, key: &K, f: impl FnOnce(&mut V)) -> bool
    where
        S: Slot<V>,
    {
        let hash = hash_of(key);
        self.write(acc, hash, |t| {
            match t
                .find_mut(hash, |(k, _)| k == key)
                .and_then(|(_, s)| s.single_mut())
            {
                Some(v) => {
                    f(v);
                    true
                }
                None => false,
            }
        })
    }

    /// Folds over every object (shard order, then each shard's order; a key's objects in
    /// insertion order).
    pub(crate) fn fold<V, A>(&self, acc: Access, init: A, mut f: impl FnMut(A, &K, &V) -> A) -> A
    where
        S: Slot<V>,
    {
        self.read_all(acc, |tables| {
            tables.iter().fold(init, |a, t| {
                t.iter()
                    .fold(a, |a, (k, s)| s.objects().iter().fold(a, |a, v| f(a, k, v)))
            })
        })
    }

    pub(crate) fn select_delete<V>(&self, mut pred: impl FnMut(&K, &V) -> bool) -> usize
    where
        S: Slot<V>,
    {
        let mut shards = self.write_all();
        let mut removed = 0;
        for t in shards.iter_mut() {
            t.retain(|(k, s)| {
                let (n, empty) = s.remove_where(|v| pred(k, v));
                removed += n;
                !empty
            });
        }
        removed
    }

    pub(crate) fn first(&self, acc: Access) -> Option<K> {
        self.read_all(acc, |tables| {
            tables
                .iter()
                .find_map(|t| t.iter().next().map(|(k, _)| k.clone()))
        })
    }

    /// The key after `key` in the table's iteration order; `None` if `key` is absent or last.
    /// O(n): hash tables are traversed with `fold`/`select`/`to_vec` in bulk.
    pub(crate) fn next(&self, acc: Access, key: &K) -> Option<K> {
        self.read_all(acc, |tables| {
            let mut it = tables.iter().flat_map(|t| t.iter());
            for (k, _) in it.by_ref() {
                if k == key {
                    break;
                }
            }
            it.next().map(|(k, _)| k.clone())
        })
    }

    pub(crate) fn keys(&self, acc: Access) -> usize {
        self.read_all(acc, |tables| tables.iter().map(|t| t.len()).sum())
    }

    /// (objects, keys), consistent with each other.
    pub(crate) fn counts<V>(&self, acc: Access) -> (usize, usize)
    where
        S: Slot<V>,
    {
        self.read_all(acc, |tables| {
            if S::SINGLE {
                let n = tables.iter().map(|t| t.len()).sum();
                (n, n)
            } else {
                tables.iter().fold((0, 0), |(o, k), t| {
                    let objects: usize = t.iter().map(|(_, s)| s.objects().len()).sum();
                    (o + objects, k + t.len())
                })
            }
        })
    }
}
