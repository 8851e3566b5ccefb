//! The hashed backend of `set`, `bag` and `duplicate_bag`: a `DashMap` with FxHash, plus a
//! table gate (lock + seqlock version) that makes many-key operations atomic and isolated.
//!
//! Architecture Invariant: no method holds a dashmap reference (`Ref`, `RefMut`, an iterator)
//! while it writes the map, and no method runs caller code (an iterator of objects) while it
//! holds the gate exclusively: both would deadlock.

use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use parking_lot::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use rustc_hash::FxBuildHasher;

use super::Access;
use crate::table::Counter;

/// The table gate: what makes many-key operations atomic and isolated on top of dashmap's
/// per-shard locks (the same shape as ETS's table lock above its bucket locks).
///
/// * Many-key operations (`insert_many`, `insert_new_many`, `delete_all_objects`,
///   `select_delete`) take `lock` exclusively and make `version` odd while they run.
/// * Single-key *writes* and traversals of shared handles take `lock` shared.
/// * Single-key *reads* of shared handles take no lock: they read `version`, do the read,
///   and read `version` again (a seqlock). An unchanged even version proves no many-key
///   operation overlapped; otherwise they redo the read under `lock` shared. A read that saw a
///   many-key write's effect on its shard sees the version change, because the write made the
///   version odd before taking that shard's lock.
/// * The owner of a protected table takes nothing for its single-key operations: it is the
///   only writer, so nothing can run concurrently with them but reads.
///
/// Measured on 2 cores (CPU-time clock, `benches/tables.rs`): one `RwLock<()>` taken shared
/// costs single-thread lookups about 40% (29 -> 18 M/s); a per-thread striped lock was no
/// better there; the seqlock read path costs nothing measurable.
pub(crate) struct Gate {
    lock: RwLock<()>,
    version: AtomicU64,
}

/// Holds the gate exclusively; the version is odd while it lives.
pub(crate) struct Exclusive<'a> {
    version: &'a AtomicU64,
    _lock: RwLockWriteGuard<'a, ()>,
}

impl Drop for Exclusive<'_> {
    fn drop(&mut self) {
        // Runs before `_lock` is released: readers that retry under the lock see even.
        self.version.fetch_add(1, Ordering::SeqCst);
    }
}

impl Gate {
    pub(crate) fn new() -> Self {
        Gate {
            lock: RwLock::new(()),
            version: AtomicU64::new(0),
        }
    }

    /// For single-key writes and traversals.
    #[inline]
    pub(crate) fn shared(&self, acc: Access) -> Option<RwLockReadGuard<'_, ()>> {
        match acc {
            Access::Owner => None,
            Access::Shared => Some(self.lock.read()),
        }
    }

    /// For many-key operations.
    pub(crate) fn exclusive(&self) -> Exclusive<'_> {
        let lock = self.lock.write();
        self.version.fetch_add(1, Ordering::SeqCst);
        Exclusive {
            version: &self.version,
            _lock: lock,
        }
    }

    /// For single-key reads: optimistic once, then under the lock.
    #[inline]
    pub(crate) fn read<R>(&self, acc: Access, f: impl Fn() -> R) -> R {
        if let Access::Shared = acc {
            let before = self.version.load(Ordering::Acquire);
            if before & 1 == 0 {
                let r = f();
                if self.version.load(Ordering::Acquire) == before {
                    return r;
                }
            }
            let _g = self.lock.read();
            return f();
        }
        f()
    }
}

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
/// only one (the common case: most keys of most bags hold one object).
pub(crate) enum Objs<V> {
    One(V),
    Many(Vec<V>),
}

impl<V: PartialEq> Slot<V> for Objs<V> {
    const SINGLE: bool = false;
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
                let old = std::mem::replace(self, Objs::Many(Vec::with_capacity(2)));
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
            Objs::Many(vs) => vs,
        }
    }
    fn single_mut(&mut self) -> Option<&mut V> {
        None
    }
}

/// A hashed table whose keys hold slots `S`.
pub(crate) struct Hashed<K, S> {
    map: DashMap<K, S, FxBuildHasher>,
    gate: Gate,
    /// `bag` (true) or `duplicate_bag` (false); ignored by sets.
    dedupe: bool,
}

/// Why an `update_counter` failed, before the caller names the table type.
pub(crate) enum CounterError {
    NoSuchKey,
    Overflow,
}

impl<K, S> Hashed<K, S>
where
    K: Eq + Hash + Clone,
{
    pub(crate) fn new(dedupe: bool) -> Self {
        Hashed {
            map: DashMap::with_hasher(FxBuildHasher),
            gate: Gate::new(),
            dedupe,
        }
    }

    #[inline]
    pub(crate) fn insert<V>(&self, acc: Access, key: K, value: V)
    where
        S: Slot<V>,
    {
        let _g = self.gate.shared(acc);
        self.insert_ungated(key, value);
    }

    #[inline]
    fn insert_ungated<V>(&self, key: K, value: V)
    where
        S: Slot<V>,
    {
        if S::SINGLE {
            self.map.insert(key, S::new(value));
        } else {
            match self.map.entry(key) {
                Entry::Occupied(mut e) => e.get_mut().add(value, self.dedupe),
                Entry::Vacant(e) => {
                    e.insert(S::new(value));
                }
            }
        }
    }

    pub(crate) fn insert_many<V>(&self, objects: Vec<(K, V)>)
    where
        S: Slot<V>,
    {
        let _g = self.gate.exclusive();
        for (k, v) in objects {
            self.insert_ungated(k, v);
        }
    }

    pub(crate) fn insert_new<V>(&self, acc: Access, key: K, value: V) -> bool
    where
        S: Slot<V>,
    {
        let _g = self.gate.shared(acc);
        match self.map.entry(key) {
            Entry::Occupied(_) => false,
            Entry::Vacant(e) => {
                e.insert(S::new(value));
                true
            }
        }
    }

    pub(crate) fn insert_new_many<V>(&self, objects: Vec<(K, V)>) -> bool
    where
        S: Slot<V>,
    {
        let _g = self.gate.exclusive();
        if objects.iter().any(|(k, _)| self.map.contains_key(k)) {
            return false;
        }
        for (k, v) in objects {
            self.insert_ungated(k, v);
        }
        true
    }

    /// Calls `f` once with the slot under `key`, while holding its shard's read lock.
    ///
    /// Shared handles validate the gate's version after taking the shard lock and before
    /// calling `f`: an unchanged even version proves that no many-key operation had started
    /// by then, and none can touch this shard while we hold its lock, so the slot `f` sees
    /// is never part of a half-done batch. Otherwise it retries under the gate, shared.
    #[inline]
    pub(crate) fn with<R>(&self, acc: Access, key: &K, f: impl FnOnce(Option<&S>) -> R) -> R {
        if let Access::Shared = acc {
            let before = self.gate.version.load(Ordering::Acquire);
            if before & 1 == 0 {
                let r = self.map.get(key);
                if self.gate.version.load(Ordering::Acquire) == before {
                    return f(r.as_deref());
                }
            }
            let _g = self.gate.lock.read();
            return f(self.map.get(key).as_deref());
        }
        f(self.map.get(key).as_deref())
    }

    pub(crate) fn member(&self, acc: Access, key: &K) -> bool {
        self.gate.read(acc, || self.map.contains_key(key))
    }

    pub(crate) fn take<V>(&self, acc: Access, key: &K) -> Vec<V>
    where
        S: Slot<V>,
    {
        let _g = self.gate.shared(acc);
        self.map
            .remove(key)
            .map(|(_, s)| s.into_vec())
            .unwrap_or_default()
    }

    pub(crate) fn delete<V>(&self, acc: Access, key: &K) -> usize
    where
        S: Slot<V>,
    {
        let _g = self.gate.shared(acc);
        self.map
            .remove(key)
            .map(|(_, s)| s.objects().len())
            .unwrap_or(0)
    }

    pub(crate) fn delete_object<V: PartialEq>(&self, acc: Access, key: &K, value: &V) -> usize
    where
        S: Slot<V>,
    {
        let _g = self.gate.shared(acc);
        let mut removed = 0;
        self.map.remove_if_mut(key, |_, s| {
            let (n, empty) = s.remove_where(|v| v == value);
            removed = n;
            empty
        });
        removed
    }

    pub(crate) fn delete_all_objects(&self) {
        let _g = self.gate.exclusive();
        self.map.clear();
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
        let _g = self.gate.shared(acc);
        if let Some(mut r) = self.map.get_mut(key) {
            let Some(v) = r.single_mut() else {
                return Err(CounterError::NoSuchKey);
            };
            let new = v.checked_add_i64(incr).ok_or(CounterError::Overflow)?;
            *v = new;
            return Ok(new);
        }
        // Absent: the entry API re-checks under the shard's write lock (another public writer
        // may have inserted the key since `get_mut` released it).
        match self.map.entry(key.clone()) {
            Entry::Occupied(mut e) => {
                let v = e.get_mut().single_mut().ok_or(CounterError::NoSuchKey)?;
                let new = v.checked_add_i64(incr).ok_or(CounterError::Overflow)?;
                *v = new;
                Ok(new)
            }
            Entry::Vacant(e) => {
                let d = default.ok_or(CounterError::NoSuchKey)?;
                let new = d.checked_add_i64(incr).ok_or(CounterError::Overflow)?;
                e.insert(S::new(new));
                Ok(new)
            }
        }
    }

    pub(crate) fn update<V>(&self, acc: Access, key: &K, f: impl FnOnce(&mut V)) -> bool
    where
        S: Slot<V>,
    {
        let _g = self.gate.shared(acc);
        match self.map.get_mut(key) {
            Some(mut r) => match r.single_mut() {
                Some(v) => {
                    f(v);
                    true
                }
                None => false,
            },
            None => false,
        }
    }

    /// Folds over every object (a key's objects in insertion order).
    pub(crate) fn fold<V, A>(&self, acc: Access, init: A, mut f: impl FnMut(A, &K, &V) -> A) -> A
    where
        S: Slot<V>,
    {
        let _g = self.gate.shared(acc);
        self.map.iter().fold(init, |a, r| {
            r.value().objects().iter().fold(a, |a, v| f(a, r.key(), v))
        })
    }

    pub(crate) fn select_delete<V>(&self, mut pred: impl FnMut(&K, &V) -> bool) -> usize
    where
        S: Slot<V>,
    {
        let _g = self.gate.exclusive();
        let mut removed = 0;
        self.map.retain(|k, s| {
            let (n, empty) = s.remove_where(|v| pred(k, v));
            removed += n;
            !empty
        });
        removed
    }

    pub(crate) fn first(&self, acc: Access) -> Option<K> {
        let _g = self.gate.shared(acc);
        self.map.iter().next().map(|r| r.key().clone())
    }

    /// The key after `key` in the map's iteration order; `None` if `key` is absent or last.
    /// O(n): hash tables are traversed with `fold`/`select`/`to_vec` in bulk.
    pub(crate) fn next(&self, acc: Access, key: &K) -> Option<K> {
        let _g = self.gate.shared(acc);
        let mut it = self.map.iter();
        for r in it.by_ref() {
            if r.key() == key {
                break;
            }
        }
        it.next().map(|r| r.key().clone())
    }

    pub(crate) fn keys(&self, acc: Access) -> usize {
        let _g = self.gate.shared(acc);
        self.map.len()
    }

    /// (objects, keys), consistent with each other.
    pub(crate) fn counts<V>(&self, acc: Access) -> (usize, usize)
    where
        S: Slot<V>,
    {
        let _g = self.gate.shared(acc);
        if S::SINGLE {
            let n = self.map.len();
            (n, n)
        } else {
            self.map
                .iter()
                .fold((0, 0), |(o, k), r| (o + r.value().objects().len(), k + 1))
        }
    }
}
