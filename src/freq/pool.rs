//! One shard's pool: the course's frequency server state as a pure state machine.
//!
//! No threads and no I/O: a [`Pool`] is driven by one owner (the shard's thread, see
//! [`super::shard`]) and keeps its state in three in-memory tables of the ETS analogue, which any
//! thread may read through [`PoolReaders`]:
//!
//! | table | type | contents |
//! |---|---|---|
//! | `free` | `ordered_set` | free space as ranges: first → last (10^7 free frequencies cost one entry) |
//! | `allocations` | `set` | frequency → [`Allocation`] (owner, since, lease) |
//! | `owners` | `bag` | owner → frequency: the owner index |
//!
//! Every operation returns the [`Change`] it made, which the shard persists to its disk table:
//! only allocations are persisted; `free` and `owners` are rebuilt from them at open
//! ([`Pool::rebuild`]).
//!
//! Architecture Invariant: at every quiescent moment each frequency of the shard's ranges is in
//! exactly one place: in one `free` range, or in `allocations` under one owner, and `owners` holds
//! exactly the pairs `(owner, freq)` of `allocations`. [`Pool::check`] verifies it.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::error::FreqError;
use super::layout::saturate;
use super::range::FreqRange;
use crate::ets::{Table, TableReader};
use crate::table::TableType;

/// Who holds a frequency, since when, and until when.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Allocation {
    /// The client's name.
    pub owner: String,
    /// When it was allocated, in milliseconds since the Unix epoch.
    pub since_ms: u64,
    /// When its lease expires (milliseconds since the epoch), if it has one.
    pub lease_until_ms: Option<u64>,
}

/// What an operation changed, for the shard to persist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// `freq` is now allocated as described.
    Allocated(u64, Allocation),
    /// `freq` is free again.
    Released(u64),
}

/// Counts a shard publishes for the router and status: plain atomics, read without messaging
/// the shard.
#[derive(Debug, Default)]
#[repr(align(128))] // its own cache lines: every shard writes its counts on every change
pub struct Load {
    free: AtomicU64,
    allocated: AtomicU64,
}

impl Load {
    /// Free frequencies, as last published.
    pub fn free(&self) -> u64 {
        self.free.load(Ordering::Relaxed)
    }

    /// Allocated frequencies, as last published.
    pub fn allocated(&self) -> u64 {
        self.allocated.load(Ordering::Relaxed)
    }

    pub(crate) fn set(&self, free: u64, allocated: u64) {
        self.free.store(free, Ordering::Relaxed);
        self.allocated.store(allocated, Ordering::Relaxed);
    }
}

/// Read handles on a pool's tables, for any thread.
#[derive(Clone)]
pub struct PoolReaders {
    /// Free ranges: first → last.
    pub free: TableReader<u64, u64>,
    /// Frequency → allocation.
    pub allocations: TableReader<u64, Allocation>,
    /// Owner → frequencies.
    pub owners: TableReader<String, u64>,
    /// Published counts.
    pub load: Arc<Load>,
}

/// One invariant violation found by [`Pool::check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation(pub String);

/// One shard's pool. See the module docs.
pub struct Pool {
    ranges: Vec<FreqRange>,
    /// Exact counts: a shard of the whole `u64` range holds 2^64 frequencies.
    size: u128,
    free: Table<u64, u64>,
    allocations: Table<u64, Allocation>,
    owners: Table<String, u64>,
    free_count: u128,
    load: Arc<Load>,
    limit: Option<usize>,
    /// (expiry, frequency) of every leased allocation: private and derived, so reaping and the
    /// next timer cost O(log n), never a scan.
    leases: BTreeSet<(u64, u64)>,
}

impl Pool {
    /// A pool over `ranges` with every frequency free.
    pub fn new(ranges: &[FreqRange], limit: Option<usize>) -> Result<Self, FreqError> {
        Pool::rebuild(ranges, limit, Arc::new(Load::default()), std::iter::empty())
    }

    /// A pool over `ranges` holding `allocations` (as loaded from disk); everything else is free.
    /// Allocations outside `ranges` or listed twice are an error. The counts are published to
    /// `load` (which a restarted shard keeps, so the router's handle on it stays valid).
    pub fn rebuild<I>(
        ranges: &[FreqRange],
        limit: Option<usize>,
        load: Arc<Load>,
        allocations: I,
    ) -> Result<Self, FreqError>
    where
        I: IntoIterator<Item = (u64, Allocation)>,
    {
        let mut sorted: BTreeMap<u64, Allocation> = BTreeMap::new();
        for (f, a) in allocations {
            if !ranges.iter().any(|r| r.contains(f)) {
                return Err(FreqError::UnknownFrequency(f));
            }
            if sorted.insert(f, a).is_some() {
                return Err(FreqError::Corrupt(format!(
                    "frequency {f} is allocated twice"
                )));
            }
        }
        let mut free = Table::new(TableType::OrderedSet);
        let mut free_ranges = Vec::new();
        let mut ranges = ranges.to_vec();
        ranges.sort();
        for r in &ranges {
            let mut next = r.first;
            for (&f, _) in sorted.range(r.first..=r.last) {
                if f > next {
                    free_ranges.push((next, f - 1));
                }
                next = f + 1;
            }
            if next <= r.last && next >= r.first {
                free_ranges.push((next, r.last));
            }
        }
        let size: u128 = ranges.iter().map(FreqRange::count).sum();
        let allocated = sorted.len() as u128;
        let leases = sorted
            .iter()
            .filter_map(|(f, a)| a.lease_until_ms.map(|t| (t, *f)))
            .collect();
        free.insert_many(free_ranges);
        let mut owners = Table::new(TableType::Bag);
        owners.insert_many(sorted.iter().map(|(f, a)| (a.owner.clone(), *f)));
        let mut table = Table::new(TableType::Set);
        table.insert_many(sorted);
        let pool = Pool {
            ranges,
            size,
            free,
            allocations: table,
            owners,
            free_count: size - allocated,
            load,
            limit,
            leases,
        };
        pool.publish();
        Ok(pool)
    }

    fn publish(&self) {
        self.load.set(
            saturate(self.free_count),
            saturate(self.size - self.free_count),
        );
    }

    /// Read handles for other threads.
    pub fn readers(&self) -> PoolReaders {
        PoolReaders {
            free: self.free.reader(),
            allocations: self.allocations.reader(),
            owners: self.owners.reader(),
            load: Arc::clone(&self.load),
        }
    }

    /// The published counts.
    pub fn load(&self) -> &Arc<Load> {
        &self.load
    }

    /// The ranges this pool owns.
    pub fn ranges(&self) -> &[FreqRange] {
        &self.ranges
    }

    /// Free frequencies, saturated at `u64::MAX` (only a pool of the whole `u64` range with
    /// nothing allocated has more).
    pub fn free_count(&self) -> u64 {
        saturate(self.free_count)
    }

    /// Frequencies in the pool, saturated at `u64::MAX` (only the whole `u64` range, 2^64,
    /// saturates).
    pub fn size(&self) -> u64 {
        saturate(self.size)
    }

    fn owns(&self, f: u64) -> bool {
        self.ranges.iter().any(|r| r.contains(f))
    }

    /// Allocates the lowest free frequency to `owner` (the course's list head). `NoFrequency`
    /// when this pool has none (the allocator then tries another shard); `BadLease` for a lease
    /// of 0 ms.
    pub fn allocate(
        &mut self,
        owner: &str,
        now_ms: u64,
        lease_ms: Option<u64>,
    ) -> Result<(u64, Change), FreqError> {
        let alloc = self.new_allocation(owner.to_string(), now_ms, lease_ms)?;
        let f = self.take_lowest_free()?;
        self.grant(f, alloc.clone());
        Ok((f, Change::Allocated(f, alloc)))
    }

    /// [`Pool::allocate`] for a caller that keeps no [`Change`] (a shard with nothing to write
    /// or ship): the owner's name is moved into the tables instead of copied three times, and
    /// no change is built to be dropped. The hot path of an in-memory shard.
    pub(crate) fn allocate_unlogged(
        &mut self,
        owner: String,
        now_ms: u64,
        lease_ms: Option<u64>,
    ) -> Result<u64, FreqError> {
        let alloc = self.new_allocation(owner, now_ms, lease_ms)?;
        let f = self.take_lowest_free()?;
        self.grant(f, alloc);
        Ok(f)
    }

    /// The allocation `owner` would get now, after the checks that come before any change:
    /// the lease and the per-shard limit.
    fn new_allocation(
        &self,
        owner: String,
        now_ms: u64,
        lease_ms: Option<u64>,
    ) -> Result<Allocation, FreqError> {
        // A lease expires at `now + lease`: zero would expire as it is granted.
        if lease_ms == Some(0) {
            return Err(FreqError::BadLease);
        }
        if let Some(limit) = self.limit {
            if self.owners.lookup_with(&owner, <[u64]>::len) >= limit {
                return Err(FreqError::LimitReached {
                    client: owner,
                    limit,
                });
            }
        }
        Ok(Allocation {
            owner,
            since_ms: now_ms,
            lease_until_ms: lease_ms.map(|l| now_ms.saturating_add(l)),
        })
    }

    /// Removes the lowest free frequency from `free`; `NoFrequency` if there is none.
    fn take_lowest_free(&mut self) -> Result<u64, FreqError> {
        let Some(first) = self.free.first() else {
            return Err(FreqError::NoFrequency {
                pool_size: saturate(self.size),
            });
        };
        // Read in place and deleted, rather than `take`n: a `take` builds a `Vec` (one
        // allocation) for its one object.
        let last = self
            .free
            .lookup_with(&first, |v| v.first().copied())
            .ok_or_else(|| FreqError::Corrupt(format!("free range at {first} vanished")))?;
        self.free.delete(&first);
        if first < last {
            self.free.insert(first + 1, last);
        }
        Ok(first)
    }

    /// Records `alloc` of `f` (just taken from `free`) in the tables and the counts.
    fn grant(&mut self, f: u64, alloc: Allocation) {
        let owner = alloc.owner.clone();
        let lease = alloc.lease_until_ms;
        // The allocation first, then the owner index (the order readers have always seen).
        self.allocations.insert(f, alloc);
        self.owners.insert(owner, f);
        if let Some(t) = lease {
            self.leases.insert((t, f));
        }
        self.free_count -= 1;
        self.publish();
    }

    /// Frees `f`, held by `owner`. Typed errors, and nothing changed, when `f` is free
    /// (`NotAllocated`), outside this pool (`UnknownFrequency`) or held by another (`NotOwner`).
    pub fn deallocate(&mut self, f: u64, owner: &str) -> Result<Change, FreqError> {
        self.deallocate_owned(f, owner.to_string())
    }

    /// [`Pool::deallocate`] with the owner's name by value (as a request carries it): the
    /// owner index is keyed by `String`, so a `&str` would be copied to look it up.
    pub(crate) fn deallocate_owned(&mut self, f: u64, owner: String) -> Result<Change, FreqError> {
        // Compared in place: the allocation is not copied out (its owner's name is a `String`).
        let held = self.allocations.lookup_with(&f, |v| {
            v.first().map(|a| {
                if a.owner == owner {
                    Ok(a.lease_until_ms)
                } else {
                    Err(a.owner.clone())
                }
            })
        });
        match held {
            None if self.owns(f) => Err(FreqError::NotAllocated(f)),
            None => Err(FreqError::UnknownFrequency(f)),
            Some(Err(holder)) => Err(FreqError::NotOwner {
                freq: f,
                owner: holder,
                client: owner,
            }),
            Some(Ok(lease_until_ms)) => {
                if let Some(t) = lease_until_ms {
                    self.leases.remove(&(t, f));
                }
                self.release(f, &owner)?;
                Ok(Change::Released(f))
            }
        }
    }

    /// Frees `f` (known allocated to `owner`) and merges it with its free neighbours.
    // `&String`, not `&str`: the owner index's key type, so no copy is made to look it up.
    #[allow(clippy::ptr_arg)]
    fn release(&mut self, f: u64, owner: &String) -> Result<(), FreqError> {
        self.allocations.delete(&f);
        self.owners.delete_object(owner, &f);
        let mut first = f;
        let mut last = f;
        // The free range ending just below f, if any (read in place: no `Vec` is built).
        if let Some(p) = self.free.prev(&f) {
            if let Some(pl) = self.free.lookup_with(&p, |v| v.first().copied()) {
                if pl.checked_add(1) == Some(f) {
                    first = p;
                }
            }
        }
        // The free range starting just above f, if any.
        if let Some(n) = f.checked_add(1) {
            if let Some(nl) = self.free.lookup_with(&n, |v| v.first().copied()) {
                self.free.delete(&n);
                last = nl;
            }
        }
        self.free.insert(first, last);
        self.free_count += 1;
        self.publish();
        Ok(())
    }

    /// Frees every frequency `owner` holds; returns them.
    pub fn release_all(&mut self, owner: &str) -> Result<Vec<Change>, FreqError> {
        let owner = owner.to_string();
        let held = self.owners.lookup(&owner);
        let mut changes = Vec::with_capacity(held.len());
        for f in held {
            if let Some(a) = self.allocations.lookup(&f).first() {
                if let Some(t) = a.lease_until_ms {
                    self.leases.remove(&(t, f));
                }
            }
            self.release(f, &owner)?;
            changes.push(Change::Released(f));
        }
        Ok(changes)
    }

    /// Frees every allocation whose lease expired at or before `now_ms`; returns what it freed
    /// with the owners that lost it.
    pub fn reap_expired(&mut self, now_ms: u64) -> Result<Vec<(u64, String)>, FreqError> {
        let mut expired = Vec::new();
        while let Some(&(t, f)) = self.leases.first() {
            if t > now_ms {
                break;
            }
            self.leases.pop_first();
            if let Some(a) = self.allocations.lookup(&f).into_iter().next() {
                self.release(f, &a.owner)?;
                expired.push((f, a.owner));
            }
        }
        Ok(expired)
    }

    /// The earliest lease expiry, if any allocation has a lease.
    pub fn next_expiry(&self) -> Option<u64> {
        self.leases.first().map(|(t, _)| *t)
    }

    /// What `owner` holds, lowest first.
    pub fn held_by(&self, owner: &str) -> Result<Vec<u64>, FreqError> {
        let mut v = self.owners.lookup(&owner.to_string());
        v.sort_unstable();
        Ok(v)
    }

    /// Every allocation, lowest frequency first.
    pub fn allocations(&self) -> Result<Vec<(u64, Allocation)>, FreqError> {
        let mut v = self.allocations.to_vec();
        v.sort_unstable_by_key(|(f, _)| *f);
        Ok(v)
    }

    /// The free ranges, lowest first.
    pub fn free_ranges(&self) -> Result<Vec<FreqRange>, FreqError> {
        Ok(self
            .free
            .range::<(Bound<u64>, Bound<u64>)>((Bound::Unbounded, Bound::Unbounded))?
            .into_iter()
            .map(|(first, last)| FreqRange { first, last })
            .collect())
    }

    /// Applies a change another replica made (replication): `Allocated(f, a)` makes `f`
    /// allocated exactly as `a` says, `Released(f)` makes `f` free. Each change is an absolute
    /// assignment, so applying one that is already in effect changes nothing (replaying a log
    /// suffix over a state that has part of it is safe). `UnknownFrequency` outside the pool.
    pub fn apply(&mut self, change: &Change) -> Result<(), FreqError> {
        match change {
            Change::Allocated(f, a) => {
                let f = *f;
                if !self.owns(f) {
                    return Err(FreqError::UnknownFrequency(f));
                }
                if let Some(old) = self.allocations.get(&f) {
                    if old == *a {
                        return Ok(());
                    }
                    if let Some(t) = old.lease_until_ms {
                        self.leases.remove(&(t, f));
                    }
                    self.release(f, &old.owner)?;
                }
                // The free range holding f: the one starting at f, or the last one below it.
                let start = if self.free.member(&f) {
                    f
                } else {
                    self.free
                        .prev(&f)
                        .ok_or_else(|| FreqError::Corrupt(format!("free {f} has no range")))?
                };
                let last =
                    self.free.take(&start).first().copied().ok_or_else(|| {
                        FreqError::Corrupt(format!("free range at {start} vanished"))
                    })?;
                if last < f {
                    self.free.insert(start, last);
                    return Err(FreqError::Corrupt(format!(
                        "frequency {f} is neither free nor allocated"
                    )));
                }
                if start < f {
                    self.free.insert(start, f - 1);
                }
                if f < last {
                    self.free.insert(f + 1, last);
                }
                self.allocations.insert(f, a.clone());
                self.owners.insert(a.owner.clone(), f);
                if let Some(t) = a.lease_until_ms {
                    self.leases.insert((t, f));
                }
                self.free_count -= 1;
                self.publish();
                Ok(())
            }
            Change::Released(f) => {
                let f = *f;
                match self.allocations.get(&f) {
                    None if self.owns(f) => Ok(()),
                    None => Err(FreqError::UnknownFrequency(f)),
                    Some(a) => {
                        if let Some(t) = a.lease_until_ms {
                            self.leases.remove(&(t, f));
                        }
                        self.release(f, &a.owner)
                    }
                }
            }
        }
    }

    /// Verifies the invariants (module docs); returns every violation found.
    pub fn check(&self) -> Result<Vec<Violation>, FreqError> {
        let mut v = Vec::new();
        let free = self.free_ranges()?;
        let allocs = self.allocations()?;
        let mut free_total = 0u128;
        for w in free.windows(2) {
            if w[0].last.saturating_add(1) >= w[1].first {
                v.push(Violation(format!(
                    "free ranges {} and {} touch or overlap",
                    w[0], w[1]
                )));
            }
        }
        for r in &free {
            if r.first > r.last
                || !self
                    .ranges
                    .iter()
                    .any(|o| o.first <= r.first && r.last <= o.last)
            {
                v.push(Violation(format!(
                    "free range {r} is not inside the shard's ranges"
                )));
            }
            free_total += u128::from(r.last.saturating_sub(r.first)) + 1;
        }
        for (f, a) in &allocs {
            // The free range that would hold f is the last one starting at or below it.
            let i = free.partition_point(|r| r.first <= *f);
            if i > 0 && free[i - 1].contains(*f) {
                v.push(Violation(format!(
                    "frequency {f} is both free and allocated"
                )));
            }
            if !self.owns(*f) {
                v.push(Violation(format!(
                    "allocated frequency {f} is outside the shard"
                )));
            }
            if !self.owners.lookup(&a.owner).contains(f) {
                v.push(Violation(format!(
                    "owner index lacks {f} for {:?}",
                    a.owner
                )));
            }
        }
        let indexed = self.owners.to_vec();
        for (o, f) in &indexed {
            match allocs.binary_search_by_key(f, |(g, _)| *g) {
                Ok(i) if allocs[i].1.owner == *o => {}
                _ => v.push(Violation(format!(
                    "owner index says {o:?} holds {f}, the allocations do not"
                ))),
            }
        }
        if free_total + allocs.len() as u128 != self.size {
            v.push(Violation(format!(
                "free {} + allocated {} != shard size {}",
                free_total,
                allocs.len(),
                self.size
            )));
        }
        if free_total != self.free_count || self.load.free() != saturate(free_total) {
            v.push(Violation(format!(
                "free count {} (published {}) disagrees with the free ranges ({free_total})",
                self.free_count,
                self.load.free()
            )));
        }
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn pool(ranges: &[(u64, u64)]) -> Pool {
        let rs: Vec<FreqRange> = ranges
            .iter()
            .map(|&(a, b)| FreqRange::new(a, b).unwrap())
            .collect();
        Pool::new(&rs, None).unwrap()
    }

    #[test]
    fn apply_replays_changes_idempotently() {
        let mut a = pool(&[(10, 20)]);
        let mut b = pool(&[(10, 20)]);
        let mut changes = Vec::new();
        for i in 0..6 {
            changes.push(a.allocate(&format!("c{}", i % 2), 7, Some(5)).unwrap().1);
        }
        changes.push(a.deallocate(12, "c0").unwrap());
        changes.extend(a.release_all("c1").unwrap());
        changes.push(a.allocate("c2", 9, None).unwrap().1);
        for c in &changes {
            b.apply(c).unwrap();
        }
        // A replay of a suffix changes nothing.
        for c in &changes[3..] {
            b.apply(c).unwrap();
        }
        assert_eq!(a.allocations().unwrap(), b.allocations().unwrap());
        assert_eq!(a.free_ranges().unwrap(), b.free_ranges().unwrap());
        assert_eq!(a.next_expiry(), b.next_expiry());
        assert!(b.check().unwrap().is_empty());
        assert!(matches!(
            b.apply(&Change::Released(99)),
            Err(FreqError::UnknownFrequency(99))
        ));
    }

    #[test]
    fn allocates_lowest_first_like_the_course_list_head() {
        let mut p = pool(&[(10, 15)]);
        let got: Vec<u64> = (0..6)
            .map(|_| p.allocate("a", 0, None).unwrap().0)
            .collect();
        assert_eq!(got, vec![10, 11, 12, 13, 14, 15]);
        assert!(matches!(
            p.allocate("a", 0, None),
            Err(FreqError::NoFrequency { pool_size: 6 })
        ));
        p.deallocate(12, "a").unwrap();
        assert_eq!(p.allocate("b", 0, None).unwrap().0, 12);
        assert!(p.check().unwrap().is_empty());
    }

    #[test]
    fn deallocation_errors_change_nothing() {
        let mut p = pool(&[(10, 15)]);
        let (f, _) = p.allocate("a", 5, None).unwrap();
        let before = (p.allocations().unwrap(), p.free_ranges().unwrap());
        assert!(matches!(
            p.deallocate(11, "a"),
            Err(FreqError::NotAllocated(11))
        ));
        assert!(matches!(
            p.deallocate(99, "a"),
            Err(FreqError::UnknownFrequency(99))
        ));
        match p.deallocate(f, "b") {
            Err(FreqError::NotOwner {
                freq,
                owner,
                client,
            }) => {
                assert_eq!((freq, owner.as_str(), client.as_str()), (10, "a", "b"))
            }
            other => panic!("expected NotOwner, got {other:?}"),
        }
        assert_eq!(before, (p.allocations().unwrap(), p.free_ranges().unwrap()));
        assert!(p.check().unwrap().is_empty());
    }

    #[test]
    fn freed_neighbours_merge_into_one_range() {
        let mut p = pool(&[(0, 9)]);
        for _ in 0..10 {
            p.allocate("a", 0, None).unwrap();
        }
        for f in [3, 5, 4, 0, 9, 8] {
            p.deallocate(f, "a").unwrap();
            assert!(p.check().unwrap().is_empty(), "after freeing {f}");
        }
        let free: Vec<String> = p
            .free_ranges()
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(free, vec!["0", "3-5", "8-9"]);
    }

    #[test]
    fn limit_and_release_all_and_leases() {
        let rs = [FreqRange::new(1, 10).unwrap()];
        let mut p = Pool::new(&rs, Some(2)).unwrap();
        p.allocate("a", 0, None).unwrap();
        p.allocate("a", 0, Some(100)).unwrap();
        assert!(matches!(
            p.allocate("a", 0, None),
            Err(FreqError::LimitReached { limit: 2, .. })
        ));
        p.allocate("b", 0, Some(50)).unwrap();
        assert_eq!(p.next_expiry(), Some(50));
        assert_eq!(p.reap_expired(49).unwrap(), vec![]);
        assert_eq!(
            p.reap_expired(100).unwrap(),
            vec![(3, "b".to_string()), (2, "a".to_string())]
        );
        assert_eq!(p.held_by("a").unwrap(), vec![1]);
        assert_eq!(p.release_all("a").unwrap(), vec![Change::Released(1)]);
        assert_eq!(p.free_count(), 10);
        assert!(p.check().unwrap().is_empty());
    }

    #[test]
    fn rebuild_refuses_what_the_shard_does_not_own_and_restores_leases() {
        let rs = [FreqRange::new(10, 15).unwrap()];
        let a = |o: &str| Allocation {
            owner: o.into(),
            since_ms: 1,
            lease_until_ms: Some(9),
        };
        let load = Arc::new(Load::default());
        assert!(matches!(
            Pool::rebuild(&rs, None, load.clone(), vec![(20, a("x"))]),
            Err(FreqError::UnknownFrequency(20))
        ));
        let mut p =
            Pool::rebuild(&rs, None, load.clone(), vec![(12, a("x")), (15, a("y"))]).unwrap();
        assert_eq!((load.free(), load.allocated()), (4, 2));
        assert!(p.check().unwrap().is_empty());
        assert_eq!(p.reap_expired(9).unwrap().len(), 2);
        assert_eq!(load.free(), 6);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Allocate(u8, Option<u64>),
        Deallocate(u64, u8),
        ReleaseAll(u8),
        Reap(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u8..4, proptest::option::of(1u64..50)).prop_map(|(o, l)| Op::Allocate(o, l)),
            3 => (0u64..32, 0u8..4).prop_map(|(f, o)| Op::Deallocate(f, o)),
            1 => (0u8..4).prop_map(Op::ReleaseAll),
            1 => (0u64..60).prop_map(Op::Reap),
        ]
    }

    proptest! {
        /// The pool against a model of a sorted free set and a map of allocations.
        #[test]
        fn pool_matches_model(ops in proptest::collection::vec(op(), 1..120)) {
            let ranges = [FreqRange::new(2, 9).unwrap(), FreqRange::new(20, 25).unwrap()];
            let mut p = Pool::new(&ranges, None).unwrap();
            let mut free: std::collections::BTreeSet<u64> = (2..=9).chain(20..=25).collect();
            let mut held: BTreeMap<u64, (String, Option<u64>)> = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Allocate(o, lease) => {
                        let owner = format!("c{o}");
                        let got = p.allocate(&owner, 0, lease).map(|(f, _)| f);
                        match free.pop_first() {
                            Some(f) => {
                                prop_assert_eq!(got.unwrap(), f);
                                held.insert(f, (owner, lease));
                            }
                            None => prop_assert!(matches!(got, Err(FreqError::NoFrequency { .. })), "{:?}", got),
                        }
                    }
                    Op::Deallocate(f, o) => {
                        let owner = format!("c{o}");
                        let got = p.deallocate(f, &owner);
                        match held.get(&f) {
                            Some((h, _)) if *h == owner => {
                                prop_assert!(got.is_ok());
                                held.remove(&f);
                                free.insert(f);
                            }
                            Some(_) => prop_assert!(matches!(got, Err(FreqError::NotOwner { .. })), "{:?}", got),
                            None if ranges.iter().any(|r| r.contains(f)) =>
                                prop_assert!(matches!(got, Err(FreqError::NotAllocated(_))), "{:?}", got),
                            None => prop_assert!(matches!(got, Err(FreqError::UnknownFrequency(_))), "{:?}", got),
                        }
                    }
                    Op::ReleaseAll(o) => {
                        let owner = format!("c{o}");
                        let mut got: Vec<u64> = p.release_all(&owner).unwrap().into_iter().map(|c| match c {
                            Change::Released(f) => f,
                            Change::Allocated(f, _) => f,
                        }).collect();
                        got.sort_unstable();
                        let want: Vec<u64> = held.iter().filter(|(_, (h, _))| *h == owner).map(|(f, _)| *f).collect();
                        for f in &want { held.remove(f); free.insert(*f); }
                        prop_assert_eq!(got, want);
                    }
                    Op::Reap(now) => {
                        let mut got: Vec<u64> = p.reap_expired(now).unwrap().into_iter().map(|(f, _)| f).collect();
                        got.sort_unstable();
                        let want: Vec<u64> = held.iter().filter(|(_, (_, l))| matches!(l, Some(t) if *t <= now)).map(|(f, _)| *f).collect();
                        for f in &want { held.remove(f); free.insert(*f); }
                        prop_assert_eq!(got, want);
                    }
                }
                prop_assert_eq!(p.free_count(), free.len() as u64);
                let v = p.check().unwrap();
                prop_assert!(v.is_empty(), "{:?}", v);
            }
            let allocs: Vec<u64> = p.allocations().unwrap().into_iter().map(|(f, _)| f).collect();
            prop_assert_eq!(allocs, held.keys().copied().collect::<Vec<_>>());
        }
    }
}
