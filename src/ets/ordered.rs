//! The ordered backend of `ordered_set`: a `BTreeMap` behind one read-write lock
//! ([`super::lock::Lock`]: `parking_lot`'s, or reader slots with `read_concurrency`).
//!
//! Every operation of a shared handle takes the lock once, so many-key operations are atomic
//! and isolated for free. The owner of a protected table reads without the lock (it is the
//! only writer, and it is not writing while it reads: [`Access::owner`]) and, when no other
//! handle exists, writes without it too, through `&mut` ([`Writer::Sole`]).

use std::collections::BTreeMap;
use std::ops::Bound;

use super::lock::Lock;

use super::access::{Access, Writer};
use super::hashed::CounterError;
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
    fn read<R>(&self, acc: Access<'_>, f: impl FnOnce(&BTreeMap<K, V>) -> R) -> R {
        if acc.skips_read_locks() {
            // SAFETY: `acc` was made by `Access::owner` from this table's owner, whose
            // `&Table` borrow lasts for the whole call: no write runs meanwhile, only reads
            // (see `access.rs`). The view does not outlive this call.
            let tree = unsafe { self.map.unlocked() };
            f(&tree)
        } else {
            f(&self.map.read())
        }
    }

    /// Runs `f` on the tree: write-locked, or through `&mut` for the sole owner.
    #[inline]
    fn write<R>(w: Writer<'_, Self>, f: impl FnOnce(&mut BTreeMap<K, V>) -> R) -> R {
        match w {
            Writer::Locked(o) => f(&mut o.map.write()),
            Writer::Sole(o) => f(&mut o.map.get_mut()),
        }
    }

    #[inline]
    pub(crate) fn insert(w: Writer<'_, Self>, key: K, value: V) {
        Self::write(w, |m| m.insert(key, value));
    }

    pub(crate) fn insert_many(w: Writer<'_, Self>, objects: Vec<(K, V)>) {
        Self::write(w, |m| {
            for (k, v) in objects {
                m.insert(k, v);
            }
        })
    }

    pub(crate) fn insert_new(w: Writer<'_, Self>, key: K, value: V) -> bool {
        Self::write(w, |m| {
            if m.contains_key(&key) {
                return false;
            }
            m.insert(key, value);
            true
        })
    }

    pub(crate) fn insert_new_many(w: Writer<'_, Self>, objects: Vec<(K, V)>) -> bool {
        Self::write(w, |m| {
            if objects.iter().any(|(k, _)| m.contains_key(k)) {
                return false;
            }
            for (k, v) in objects {
                m.insert(k, v);
            }
            true
        })
    }

    #[inline]
    pub(crate) fn with<R>(&self, acc: Access<'_>, key: &K, f: impl FnOnce(Option<&V>) -> R) -> R {
        self.read(acc, |m| f(m.get(key)))
    }

    pub(crate) fn member(&self, acc: Access<'_>, key: &K) -> bool {
        self.read(acc, |m| m.contains_key(key))
    }

    #[inline]
    pub(crate) fn take(w: Writer<'_, Self>, key: &K) -> Option<V> {
        Self::write(w, |m| m.remove(key))
    }

    pub(crate) fn delete_object(w: Writer<'_, Self>, key: &K, value: &V) -> usize {
        Self::write(w, |m| {
            if m.get(key) == Some(value) {
                m.remove(key);
                1
            } else {
                0
            }
        })
    }

    pub(crate) fn delete_all_objects(w: Writer<'_, Self>) {
        // Swap out under the lock, drop the old tree after releasing it.
        let old = Self::write(w, std::mem::take);
        drop(old);
    }

    pub(crate) fn update_counter(
        w: Writer<'_, Self>,
        key: &K,
        incr: i64,
        default: Option<V>,
    ) -> Result<V, CounterError>
    where
        V: Counter,
    {
        Self::write(w, |m| match m.get_mut(key) {
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

    pub(crate) fn update(w: Writer<'_, Self>, key: &K, f: impl FnOnce(&mut V)) -> bool {
        Self::write(w, |m| match m.get_mut(key) {
            Some(v) => {
                f(v);
                true
            }
            None => false,
        })
    }

    pub(crate) fn fold<A>(&self, acc: Access<'_>, init: A, mut f: impl FnMut(A, &K, &V) -> A) -> A {
        self.read(acc, |m| m.iter().fold(init, |a, (k, v)| f(a, k, v)))
    }

    pub(crate) fn select_delete(
        w: Writer<'_, Self>,
        mut pred: impl FnMut(&K, &V) -> bool,
    ) -> usize {
        Self::write(w, |m| {
            let before = m.len();
            m.retain(|k, v| !pred(k, v));
            before - m.len()
        })
    }

    pub(crate) fn first(&self, acc: Access<'_>) -> Option<K> {
        self.read(acc, |m| m.keys().next().cloned())
    }

    pub(crate) fn last(&self, acc: Access<'_>) -> Option<K> {
        self.read(acc, |m| m.keys().next_back().cloned())
    }

    pub(crate) fn next(&self, acc: Access<'_>, key: &K) -> Option<K> {
        self.read(acc, |m| {
            m.range((Bound::Excluded(key), Bound::Unbounded))
                .next()
                .map(|(k, _)| k.clone())
        })
    }

    pub(crate) fn prev(&self, acc: Access<'_>, key: &K) -> Option<K> {
        self.read(acc, |m| {
            m.range((Bound::Unbounded, Bound::Excluded(key)))
                .next_back()
                .map(|(k, _)| k.clone())
        })
    }

    pub(crate) fn range(&self, acc: Access<'_>, lower: Bound<&K>, upper: Bound<&K>) -> Vec<(K, V)> {
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
        acc: Access<'_>,
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

    pub(crate) fn len(&self, acc: Access<'_>) -> usize {
        self.read(acc, |m| m.len())
    }
}
