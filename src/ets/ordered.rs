//! The ordered backend of `ordered_set`: a `BTreeMap` behind one read-write lock
//! ([`super::lock::Lock`]: `parking_lot`'s, or reader slots with `read_concurrency`).
//!
//! Every operation of a shared handle takes the lock once, so many-key operations are atomic
//! and isolated for free. The owner of a protected table reads without the lock (it is the
//! only writer, and it is not writing while it reads) and, when no other handle exists,
//! writes single keys without it too; see [`super::Access`].

use std::collections::BTreeMap;
use std::ops::Bound;

use super::lock::Lock;

use super::hashed::CounterError;
use super::Access;
use crate::table::Counter;

pub(crate) struct Ordered<K, V> {
    map: Lock<BTreeMap<K, V>>,
}

/// True when `(lower, upper)` selects nothing in a way `BTreeMap::range` would panic on
/// (start after end, or equal bounds with an excluded one).
fn empty_or_inverted<K: Ord>(lower: Bound<&K>, upper: Bound<&K>) -> bool {
    use Bound::*;
    match (lower, upper) {
        (Included(a), Included(b)) => a > b,
        (Included(a), Excluded(b)) | (Excluded(a), Included(b)) | (Excluded(a), Excluded(b)) => {
            a >= b
        }
        _ => false,
    }
}

impl<K: Ord + Clone, V: Clone + PartialEq> Ordered<K, V> {
    /// `read_concurrency`: a reader-scalable lock (see `super::lock`).
    pub(crate) fn new(read_concurrency: bool) -> Self {
        Ordered {
            map: Lock::new(BTreeMap::new(), read_concurrency),
        }
    }

    /// Runs `f` on the tree, read-locked unless the owner is asking.
    #[inline]
    fn read<R>(&self, acc: Access, f: impl FnOnce(&BTreeMap<K, V>) -> R) -> R {
        match acc {
            Access::Shared => f(&self.map.read()),
            // SAFETY: `Owner`/`Sole` come only from a `Table`, and every write to a table
            // reached through a `Table` needs `&mut Table`, while this read holds `&Table` (or
            // that `&mut`): no write runs during the read, only other reads (`TableReader`s
            // never write). `f`'s `&` does not outlive this call.
            Access::Owner | Access::Sole => f(unsafe { &*self.map.data_ptr() }),
        }
    }

    /// Runs `f` on the tree, write-locked unless no other handle exists.
    #[inline]
    fn write<R>(&self, acc: Access, f: impl FnOnce(&mut BTreeMap<K, V>) -> R) -> R {
        match acc {
            // SAFETY: `Sole` is made only by `Table::write_access` from `&mut Table` when its
            // `Arc` is the only one: no other handle exists or can be made meanwhile, so this
            // `&mut` is unique; it does not outlive this call.
            Access::Sole => f(unsafe { &mut *self.map.data_ptr() }),
            Access::Owner | Access::Shared => f(&mut self.map.write()),
        }
    }

    #[inline]
    pub(crate) fn insert(&self, acc: Access, key: K, value: V) {
        self.write(acc, |m| m.insert(key, value));
    }

    pub(crate) fn insert_many(&self, objects: Vec<(K, V)>) {
        let mut m = self.map.write();
        for (k, v) in objects {
            m.insert(k, v);
        }
    }

    pub(crate) fn insert_new(&self, acc: Access, key: K, value: V) -> bool {
        self.write(acc, |m| {
            if m.contains_key(&key) {
                return false;
            }
            m.insert(key, value);
            true
        })
    }

    pub(crate) fn insert_new_many(&self, objects: Vec<(K, V)>) -> bool {
        let mut m = self.map.write();
        if objects.iter().any(|(k, _)| m.contains_key(k)) {
            return false;
        }
        for (k, v) in objects {
            m.insert(k, v);
        }
        true
    }

    #[inline]
    pub(crate) fn with<R>(&self, acc: Access, key: &K, f: impl FnOnce(Option<&V>) -> R) -> R {
        self.read(acc, |m| f(m.get(key)))
    }

    pub(crate) fn member(&self, acc: Access, key: &K) -> bool {
        self.read(acc, |m| m.contains_key(key))
    }

    #[inline]
    pub(crate) fn take(&self, acc: Access, key: &K) -> Option<V> {
        self.write(acc, |m| m.remove(key))
    }

    pub(crate) fn delete_object(&self, acc: Access, key: &K, value: &V) -> usize {
        self.write(acc, |m| {
            if m.get(key) == Some(value) {
                m.remove(key);
                1
            } else {
                0
            }
        })
    }

    pub(crate) fn delete_all_objects(&self) {
        // Swap out under the lock, drop the old tree after releasing it.
        let old = std::mem::take(&mut *self.map.write());
        drop(old);
    }

    pub(crate) fn update_counter(
        &self,
        acc: Access,
        key: &K,
        incr: i64,
        default: Option<V>,
    ) -> Result<V, CounterError>
    where
        V: Counter,
    {
        self.write(acc, |m| match m.get_mut(key) {
            Some(v) => {
                *v = v.checked_add_i64(incr).ok_or(CounterError::Overflow)?;
                Ok(*v)
            }
            None => {
                let d = default.ok_or(CounterError::NoSuchKey)?;
                let new = d.checked_add_i64(incr).ok_or(CounterError::Overflow)?;
                m.insert(key.clone(), new);
                Ok(new)
            }
        })
    }

    pub(crate) fn update(&self, acc: Access, key: &K, f: impl FnOnce(&mut V)) -> bool {
        self.write(acc, |m| match m.get_mut(key) {
            Some(v) => {
                f(v);
                true
            }
            None => false,
        })
    }

    pub(crate) fn fold<A>(&self, acc: Access, init: A, mut f: impl FnMut(A, &K, &V) -> A) -> A {
        self.read(acc, |m| m.iter().fold(init, |a, (k, v)| f(a, k, v)))
    }

    pub(crate) fn select_delete(&self, mut pred: impl FnMut(&K, &V) -> bool) -> usize {
        let mut m = self.map.write();
        let before = m.len();
        m.retain(|k, v| !pred(k, v));
        before - m.len()
    }

    pub(crate) fn first(&self, acc: Access) -> Option<K> {
        self.read(acc, |m| m.keys().next().cloned())
    }

    pub(crate) fn last(&self, acc: Access) -> Option<K> {
        self.read(acc, |m| m.keys().next_back().cloned())
    }

    pub(crate) fn next(&self, acc: Access, key: &K) -> Option<K> {
        self.read(acc, |m| {
            m.range((Bound::Excluded(key), Bound::Unbounded))
                .next()
                .map(|(k, _)| k.clone())
        })
    }

    pub(crate) fn prev(&self, acc: Access, key: &K) -> Option<K> {
        self.read(acc, |m| {
            m.range((Bound::Unbounded, Bound::Excluded(key)))
                .next_back()
                .map(|(k, _)| k.clone())
        })
    }

    pub(crate) fn range(&self, acc: Access, lower: Bound<&K>, upper: Bound<&K>) -> Vec<(K, V)> {
        if empty_or_inverted(lower, upper) {
            return Vec::new();
        }
        self.read(acc, |m| {
            m.range::<K, _>((lower, upper))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
    }

    /// Folds over the objects with keys in the bounds, in key order.
    pub(crate) fn range_fold<A>(
        &self,
        acc: Access,
        lower: Bound<&K>,
        upper: Bound<&K>,
        init: A,
        mut f: impl FnMut(A, &K, &V) -> A,
    ) -> A {
        if empty_or_inverted(lower, upper) {
            return init;
        }
        self.read(acc, |m| {
            m.range::<K, _>((lower, upper))
                .fold(init, |a, (k, v)| f(a, k, v))
        })
    }

    pub(crate) fn len(&self, acc: Access) -> usize {
        self.read(acc, |m| m.len())
    }
}
