//! The hashed backend of `set`, `bag` and `duplicate_bag`: a [`dashmap::DashMap`] keyed by
//! FxHash, reached through dashmap's `raw-api` (its shards, `determine_shard`, `hasher()`
//! and each shard's `lock_api` read-write lock), so that the owner's lock elision and the
//! many-key operations' all-shard locks keep the shape they had on our own sharded map.
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
//! * The owner of a protected table ([`Access::owner`]) reads without any lock: the shard's
//!   `data_ptr()`, under the `&Table` borrow that proves no write runs (see `access.rs`).
//!   Its writes take the shard locks (or all of them), because readers may be reading.
//! * The owner with no other handle alive ([`Writer::Sole`]: `Arc::get_mut` succeeded)
//!   writes through `shards_mut()[i].get_mut()`: no lock, and no `unsafe`.
//!
//! The remaining `unsafe` here is of two kinds: the owner's unlocked read (one function,
//! `read`/`read_all`, proved by `Access::owner`, model-checked by `super::loom`), and
//! hashbrown 0.14's raw-table calls that dashmap's shards require (bucket references and
//! iteration over a table borrowed for the whole call; each has its SAFETY line).
//!
//! Architecture Invariant: a thread holds at most one shard lock except in the all-shards
//! helpers, which take them in index order; no method runs caller code (an iterator of
//! objects) while it holds a lock, except the closures whose docs say so (`fold`, `update`,
//! `lookup_with`, the predicates), which must not call into the same table. Together: no
//! deadlock.

use std::hash::{BuildHasher, Hash};
use std::sync::OnceLock;

use dashmap::{DashMap, SharedValue};
use hashbrown::raw::RawTable;
use rustc_hash::FxBuildHasher;

use super::access::{Access, Writer};
use crate::table::Counter;

/// The objects stored under one key: exactly one for sets ([`One`]), a `Vec` in insertion
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

/// A shard's map, as dashmap stores it.
type Map<K, S> = RawTable<(K, SharedValue<S>)>;

/// Shards per table: thirty-two per core, a power of two, at least 2 (dashmap's minimum), at
/// most 256 (so that a shared traversal, which locks every shard, stays cheap on big
/// machines); dashmap pads each shard's lock to its own 128 bytes. Under `cfg(loom)`: 2, so
/// the model checks stay small.
///
/// Measured on 2 cores on our own map before the move to dashmap (`bench tables --only ets`,
/// medians of 5 alternating runs), 8 / 32 / 64 shards (4 / 16 / 32 per core): set, 2
/// threads, insert 9.7 / 18.0 / 19.4, lookup 39 / 49 / 51, delete 11.8 / 20.1 / 27.0 M/s
/// (fewer collisions on a shard lock, whose slow path parks); 1 thread, lookup 59 / 60 / 69,
/// delete 41 / 46 / 51; bags alike. dashmap's own default (4 per core) is the first column.
fn shard_count() -> usize {
    if cfg!(all(test, loom)) {
        return 2;
    }
    static COUNT: OnceLock<usize> = OnceLock::new();
    *COUNT.get_or_init(|| {
        (std::thread::available_parallelism().map_or(1, usize::from) * 32)
            .next_power_of_two()
            .clamp(2, 256)
    })
}

/// A hashed table whose keys hold slots `S`.
pub(crate) struct Hashed<K, S> {
    map: DashMap<K, S, FxBuildHasher>,
    /// `bag` (true) or `duplicate_bag` (false); ignored by sets.
    dedupe: bool,
    /// Under `cfg(loom)`, a model of each shard's lock and data that loom can see (dashmap's
    /// locks are invisible to it); a zero-sized no-op otherwise.
    shadow: shadow::Shadow,
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

/// The rehash function the shard maps need when they grow.
#[inline]
fn rehash<K: Hash, S>(entry: &(K, SharedValue<S>)) -> u64 {
    hash_of(&entry.0)
}

/// Every entry of one shard map.
#[inline]
fn entries<K, S>(t: &Map<K, S>) -> impl Iterator<Item = &(K, SharedValue<S>)> + '_ {
    // SAFETY: the iterator and every reference it yields live no longer than the shared
    // borrow of `t`, during which `t` is neither changed nor freed; `iter` yields only full
    // buckets, so each `as_ref` points at a live entry.
    unsafe { t.iter() }.map(|b| unsafe { b.as_ref() })
}

/// Keeps the entries for which `keep` holds (as hashbrown's own `HashMap::retain`).
fn retain<K, S>(t: &mut Map<K, S>, mut keep: impl FnMut(&K, &mut S) -> bool) {
    // SAFETY: `t` is borrowed mutably for the whole loop and changed only by `erase` of the
    // bucket just yielded, which the raw iterator allows (it has already moved past it and
    // erasing moves no other entry); each bucket is full when yielded.
    unsafe {
        for b in t.iter() {
            let (k, s) = b.as_mut();
            if !keep(k, s.get_mut()) {
                t.erase(b);
            }
        }
    }
}

/// Hashes a batch's keys before any lock is taken (a many-key write holds every shard's lock).
fn hash_all<K: Hash, V>(objects: Vec<(K, V)>) -> Vec<(u64, K, V)> {
    objects
        .into_iter()
        .map(|(k, v)| (hash_of(&k), k, v))
        .collect()
}

impl<K, S> Hashed<K, S>
where
    K: Eq + Hash + Clone,
{
    /// A new, empty table.
    pub(crate) fn new(dedupe: bool) -> Self {
        let n = shard_count();
        Hashed {
            map: DashMap::with_hasher_and_shard_amount(FxBuildHasher, n),
            dedupe,
            shadow: shadow::Shadow::new(n),
        }
    }

    /// The shard of `hash` (dashmap's own choice: the bits just below hashbrown's 7-bit tag).
    #[inline]
    fn index(&self, hash: u64) -> usize {
        self.map.determine_shard(hash as usize)
    }

    /// Runs `f` on the shard of `hash`, read-locked unless the owner is asking.
    #[inline]
    fn read<R>(&self, acc: Access<'_>, hash: u64, f: impl FnOnce(&Map<K, S>) -> R) -> R {
        let i = self.index(hash);
        let shard = &self.map.shards()[i];
        if acc.skips_read_locks() {
            let _seen = self.shadow.touch(i, false);
            // SAFETY: `acc` was made by `Access::owner` from this table's owner, whose `&Table`
            // borrow lasts for the whole call: no write to any shard runs meanwhile (see
            // `access.rs`), only reads; the `&` given to `f` cannot outlive this call.
            f(unsafe { &*shard.data_ptr() })
        } else {
            let _model = self.shadow.lock(i, false);
            let guard = shard.read();
            let _seen = self.shadow.touch(i, false);
            f(&guard)
        }
    }

    /// Runs `f` on the shard of `hash`: write-locked, or through `&mut` for the sole owner.
    #[inline]
    fn write<R>(w: Writer<'_, Self>, hash: u64, f: impl FnOnce(&mut Map<K, S>) -> R) -> R {
        match w {
            Writer::Locked(h) => {
                let i = h.index(hash);
                let _model = h.shadow.lock(i, true);
                let mut guard = h.map.shards()[i].write();
                let _seen = h.shadow.touch(i, true);
                f(&mut guard)
            }
            Writer::Sole(h) => {
                let i = h.index(hash);
                let _seen = h.shadow.touch(i, true);
                f(h.map.shards_mut()[i].get_mut())
            }
        }
    }

    /// Runs `f` over every shard, all read-locked for a shared handle, so `f` sees one
    /// instant of the whole table.
    fn read_all<R>(&self, acc: Access<'_>, f: impl FnOnce(&[&Map<K, S>]) -> R) -> R {
        if acc.skips_read_locks() {
            let _seen = self.shadow.touch_all(false);
            // SAFETY: as in `read`: no write can run while the owner reads.
            let maps: Vec<&Map<K, S>> = self
                .map
                .shards()
                .iter()
                .map(|s| unsafe { &*s.data_ptr() })
                .collect();
            f(&maps)
        } else {
            let _model = self.shadow.lock_all(false);
            let guards: Vec<_> = self.map.shards().iter().map(|s| s.read()).collect();
            let _seen = self.shadow.touch_all(false);
            let maps: Vec<&Map<K, S>> = guards.iter().map(|g| &**g).collect();
            f(&maps)
        }
    }

    /// Runs `f` over every shard, all write-locked in index order (or through `&mut` for the
    /// sole owner): the many-key operations' lock.
    fn write_all<R>(w: Writer<'_, Self>, f: impl FnOnce(&mut [&mut Map<K, S>]) -> R) -> R {
        match w {
            Writer::Locked(h) => {
                let _model = h.shadow.lock_all(true);
                let mut guards: Vec<_> = h.map.shards().iter().map(|s| s.write()).collect();
                let _seen = h.shadow.touch_all(true);
                let mut maps: Vec<&mut Map<K, S>> = guards.iter_mut().map(|g| &mut **g).collect();
                f(&mut maps)
            }
            Writer::Sole(h) => {
                let _seen = h.shadow.touch_all(true);
                let mut maps: Vec<&mut Map<K, S>> =
                    h.map.shards_mut().iter_mut().map(|s| s.get_mut()).collect();
                f(&mut maps)
            }
        }
    }

    #[inline]
    fn insert_into<V>(t: &mut Map<K, S>, hash: u64, key: K, value: V, dedupe: bool)
    where
        S: Slot<V>,
    {
        match t.find_or_find_insert_slot(hash, |(k, _)| *k == key, rehash) {
            // SAFETY: the bucket was just found in `t`, borrowed mutably and unchanged since.
            Ok(b) => unsafe { b.as_mut() }.1.get_mut().add(value, dedupe),
            // SAFETY: the slot was just returned by `find_or_find_insert_slot` on `t`, and `t`
            // has not changed since (hashbrown's condition for `insert_in_slot`).
            Err(slot) => unsafe {
                t.insert_in_slot(hash, slot, (key, SharedValue::new(S::new(value))));
            },
        }
    }

    #[inline]
    pub(crate) fn insert<V>(w: Writer<'_, Self>, key: K, value: V)
    where
        S: Slot<V>,
    {
        let hash = hash_of(&key);
        let dedupe = w.get().dedupe;
        Self::write(w, hash, |t| Self::insert_into(t, hash, key, value, dedupe));
    }

    pub(crate) fn insert_many<V>(w: Writer<'_, Self>, objects: Vec<(K, V)>)
    where
        S: Slot<V>,
    {
        let hashed = hash_all(objects);
        let h = w.get();
        let (dedupe, index): (bool, Vec<usize>) = (
            h.dedupe,
            hashed.iter().map(|(x, _, _)| h.index(*x)).collect(),
        );
        Self::write_all(w, |maps| {
            for ((x, k, v), i) in hashed.into_iter().zip(index) {
                Self::insert_into(maps[i], x, k, v, dedupe);
            }
        });
    }

    pub(crate) fn insert_new<V>(w: Writer<'_, Self>, key: K, value: V) -> bool
    where
        S: Slot<V>,
    {
        let hash = hash_of(&key);
        Self::write(w, hash, |t| {
            match t.find_or_find_insert_slot(hash, |(k, _)| *k == key, rehash) {
                Ok(_) => false,
                Err(slot) => {
                    // SAFETY: as in `insert_into`: the slot was just found in the unchanged `t`.
                    unsafe { t.insert_in_slot(hash, slot, (key, SharedValue::new(S::new(value)))) };
                    true
                }
            }
        })
    }

    pub(crate) fn insert_new_many<V>(w: Writer<'_, Self>, objects: Vec<(K, V)>) -> bool
    where
        S: Slot<V>,
    {
        let hashed = hash_all(objects);
        let h = w.get();
        let (dedupe, index): (bool, Vec<usize>) = (
            h.dedupe,
            hashed.iter().map(|(x, _, _)| h.index(*x)).collect(),
        );
        Self::write_all(w, |maps| {
            let present = hashed
                .iter()
                .zip(&index)
                .any(|((x, key, _), &i)| maps[i].get(*x, |(k, _)| k == key).is_some());
            if present {
                return false;
            }
            for ((x, k, v), i) in hashed.into_iter().zip(index) {
                Self::insert_into(maps[i], x, k, v, dedupe);
            }
            true
        })
    }

    /// Calls `f` once with the slot under `key`; a shared handle holds the shard's read lock
    /// meanwhile, so `f` sees the slot as of one instant and never part of a many-key write.
    #[inline]
    pub(crate) fn with<R>(&self, acc: Access<'_>, key: &K, f: impl FnOnce(Option<&S>) -> R) -> R {
        let hash = hash_of(key);
        self.read(acc, hash, |t| {
            f(t.get(hash, |(k, _)| k == key).map(|(_, s)| s.get()))
        })
    }

    pub(crate) fn member(&self, acc: Access<'_>, key: &K) -> bool {
        self.with(acc, key, |s| s.is_some())
    }

    /// Removes the slot under `key`.
    #[inline]
    fn remove(w: Writer<'_, Self>, key: &K) -> Option<S> {
        let hash = hash_of(key);
        Self::write(w, hash, |t| {
            t.remove_entry(hash, |(k, _)| k == key)
                .map(|(_, s)| s.into_inner())
        })
    }

    pub(crate) fn take<V>(w: Writer<'_, Self>, key: &K) -> Vec<V>
    where
        S: Slot<V>,
    {
        Self::remove(w, key).map(S::into_vec).unwrap_or_default()
    }

    #[inline]
    pub(crate) fn delete<V>(w: Writer<'_, Self>, key: &K) -> usize
    where
        S: Slot<V>,
    {
        // Dropped after the shard lock is released.
        Self::remove(w, key).map_or(0, |s| s.objects().len())
    }

    pub(crate) fn delete_object<V: PartialEq>(w: Writer<'_, Self>, key: &K, value: &V) -> usize
    where
        S: Slot<V>,
    {
        let hash = hash_of(key);
        Self::write(w, hash, |t| {
            let Some((_, s)) = t.get_mut(hash, |(k, _)| k == key) else {
                return 0;
            };
            let (n, empty) = s.get_mut().remove_where(|v| v == value);
            if empty {
                t.erase_entry(hash, |(k, _)| k == key);
            }
            n
        })
    }

    pub(crate) fn delete_all_objects(w: Writer<'_, Self>) {
        // Swap the maps out under the locks; free them after releasing the locks.
        let old: Vec<Map<K, S>> = Self::write_all(w, |maps| {
            maps.iter_mut().map(|m| std::mem::take(*m)).collect()
        });
        drop(old);
    }

    pub(crate) fn update_counter<V: Counter>(
        w: Writer<'_, Self>,
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
        Self::write(w, hash, |t| {
            if let Some((_, s)) = t.get_mut(hash, |(k, _)| k == key) {
                let v = s.get_mut().single_mut().ok_or(CounterError::NoSuchKey)?;
                let new = v.checked_add_i64(incr).ok_or(CounterError::Overflow)?;
                *v = new;
                return Ok(new);
            }
            let d = default.ok_or(CounterError::NoSuchKey)?;
            let new = d.checked_add_i64(incr).ok_or(CounterError::Overflow)?;
            t.insert(hash, (key.clone(), SharedValue::new(S::new(new))), rehash);
            Ok(new)
        })
    }

    pub(crate) fn update<V>(w: Writer<'_, Self>, key: &K, f: impl FnOnce(&mut V)) -> bool
    where
        S: Slot<V>,
    {
        let hash = hash_of(key);
        Self::write(w, hash, |t| {
            match t
                .get_mut(hash, |(k, _)| k == key)
                .and_then(|(_, s)| s.get_mut().single_mut())
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
    pub(crate) fn fold<V, A>(
        &self,
        acc: Access<'_>,
        init: A,
        mut f: impl FnMut(A, &K, &V) -> A,
    ) -> A
    where
        S: Slot<V>,
    {
        self.read_all(acc, |maps| {
            maps.iter().fold(init, |a, t| {
                entries(t).fold(a, |a, (k, s)| {
                    s.get().objects().iter().fold(a, |a, v| f(a, k, v))
                })
            })
        })
    }

    pub(crate) fn select_delete<V>(
        w: Writer<'_, Self>,
        mut pred: impl FnMut(&K, &V) -> bool,
    ) -> usize
    where
        S: Slot<V>,
    {
        Self::write_all(w, |maps| {
            let mut removed = 0;
            for t in maps.iter_mut() {
                retain(t, |k, s| {
                    let (n, empty) = s.remove_where(|v| pred(k, v));
                    removed += n;
                    !empty
                });
            }
            removed
        })
    }

    pub(crate) fn first(&self, acc: Access<'_>) -> Option<K> {
        self.read_all(acc, |maps| {
            maps.iter()
                .find_map(|t| entries(t).next().map(|(k, _)| k.clone()))
        })
    }

    /// The key after `key` in the table's iteration order; `None` if `key` is absent or last.
    /// O(n): hash tables are traversed with `fold`/`select`/`to_vec` in bulk.
    pub(crate) fn next(&self, acc: Access<'_>, key: &K) -> Option<K> {
        self.read_all(acc, |maps| {
            let mut it = maps.iter().flat_map(|t| entries(t));
            for (k, _) in it.by_ref() {
                if k == key {
                    break;
                }
            }
            it.next().map(|(k, _)| k.clone())
        })
    }

    pub(crate) fn keys(&self, acc: Access<'_>) -> usize {
        self.read_all(acc, |maps| maps.iter().map(|t| t.len()).sum())
    }

    /// (objects, keys), consistent with each other.
    pub(crate) fn counts<V>(&self, acc: Access<'_>) -> (usize, usize)
    where
        S: Slot<V>,
    {
        self.read_all(acc, |maps| {
            if S::SINGLE {
                let n = maps.iter().map(|t| t.len()).sum();
                (n, n)
            } else {
                maps.iter().fold((0, 0), |(o, k), t| {
                    let objects: usize = entries(t).map(|(_, s)| s.get().objects().len()).sum();
                    (o + objects, k + t.len())
                })
            }
        })
    }
}

/// What loom can see of the shards: under `cfg(loom)`, one loom `RwLock` and one loom
/// `UnsafeCell` per shard. Every path above takes the model lock where it takes the dashmap
/// lock (same mode, before it, released after it, so dashmap's lock, which loom cannot
/// schedule, is never contended) and touches the model cell where it touches the shard's
/// data, in the same mode. Loom then reports any access that no lock orders, e.g. an owner
/// read that a write could overlap, or a sole write racing a reader's last read. Without
/// `cfg(loom)` every call is an inlined no-op on a zero-sized type.
#[cfg(not(all(test, loom)))]
mod shadow {
    /// Nothing to model outside loom.
    pub(super) struct Shadow;

    /// Nothing held.
    pub(super) struct Held;

    impl Shadow {
        #[inline(always)]
        pub(super) fn new(_shards: usize) -> Self {
            Shadow
        }
        #[inline(always)]
        pub(super) fn lock(&self, _shard: usize, _write: bool) -> Held {
            Held
        }
        #[inline(always)]
        pub(super) fn touch(&self, _shard: usize, _write: bool) -> Held {
            Held
        }
        #[inline(always)]
        pub(super) fn lock_all(&self, _write: bool) -> Held {
            Held
        }
        #[inline(always)]
        pub(super) fn touch_all(&self, _write: bool) -> Held {
            Held
        }
    }
}

#[cfg(all(test, loom))]
mod shadow {
    use loom::cell::{ConstPtr, MutPtr, UnsafeCell};
    use loom::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

    /// One model lock and one model cell per shard.
    pub(super) struct Shadow {
        locks: Box<[RwLock<()>]>,
        cells: Box<[UnsafeCell<()>]>,
    }

    // SAFETY: the cells hold `()` and are only touched through loom's tracked pointers; loom
    // checks every such access across threads (that is the point of the model).
    unsafe impl Sync for Shadow {}
    // SAFETY: as above.
    unsafe impl Send for Shadow {}

    /// A model lock held, or a model access in progress.
    #[allow(dead_code)] // held for their `Drop`
    pub(super) enum Held<'a> {
        Read(RwLockReadGuard<'a, ()>),
        Write(RwLockWriteGuard<'a, ()>),
        Seen(ConstPtr<()>),
        Changed(MutPtr<()>),
        All(Vec<Held<'a>>),
    }

    impl Shadow {
        pub(super) fn new(shards: usize) -> Self {
            Shadow {
                locks: (0..shards).map(|_| RwLock::new(())).collect(),
                cells: (0..shards).map(|_| UnsafeCell::new(())).collect(),
            }
        }
        pub(super) fn lock(&self, shard: usize, write: bool) -> Held<'_> {
            let l = &self.locks[shard];
            if write {
                Held::Write(l.write().expect("model lock"))
            } else {
                Held::Read(l.read().expect("model lock"))
            }
        }
        pub(super) fn touch(&self, shard: usize, write: bool) -> Held<'_> {
            let c = &self.cells[shard];
            if write {
                Held::Changed(c.get_mut())
            } else {
                Held::Seen(c.get())
            }
        }
        pub(super) fn lock_all(&self, write: bool) -> Held<'_> {
            Held::All((0..self.locks.len()).map(|i| self.lock(i, write)).collect())
        }
        pub(super) fn touch_all(&self, write: bool) -> Held<'_> {
            Held::All(
                (0..self.cells.len())
                    .map(|i| self.touch(i, write))
                    .collect(),
            )
        }
    }
}
