//! A model-based property-test harness for any table implementing
//! [`WriteTable<u8, u8>`](freqalloc::WriteTable): ETS tables, DETS tables, any handle.
//!
//! Keys are `u8` drawn from a small range and values `u8` from a smaller one, so collisions,
//! bag duplicates and counter overflows all happen. The reference model is a
//! `BTreeMap<u8, Vec<u8>>` (a key's objects in insertion order) interpreted per [`TableType`].
//!
//! ```ignore
//! proptest! {
//!     #[test]
//!     fn set(ops in model::ops(TableType::Set)) {
//!         model::run_model(TableType::Set, || Table::new(TableType::Set), |t| t, &ops);
//!     }
//! }
//! ```
//!
//! Interface (kept stable for other backends): [`Op`], [`ops`], [`ops_with`], [`run_model`],
//! [`Model`].
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::ops::Bound;

use freqalloc::{TableType, WriteTable};
use proptest::prelude::*;

/// Keys are drawn from `0..KEYS`.
pub const KEYS: u8 = 12;
/// Values are drawn from `0..VALUES`.
pub const VALUES: u8 = 4;

/// One operation of a generated sequence.
#[derive(Debug, Clone)]
pub enum Op {
    Insert(u8, u8),
    InsertMany(Vec<(u8, u8)>),
    InsertNew(u8, u8),
    InsertNewMany(Vec<(u8, u8)>),
    Lookup(u8),
    Member(u8),
    Delete(u8),
    DeleteObject(u8, u8),
    DeleteAllObjects,
    Take(u8),
    /// `update_counter(key, incr, default)`; values are `u8`, so overflow and underflow happen.
    UpdateCounter(u8, i64, Option<u8>),
    /// `update(key, |v| *v = v.wrapping_add(d))`.
    Update(u8, u8),
    /// `select_delete` of the objects where [`pred`]`(m, k, v)` holds.
    SelectDelete(u8),
    /// `select_count` with [`pred`]; also checks `select` and `fold` with the same predicate.
    SelectCount(u8),
    First,
    Next(u8),
    Last,
    Prev(u8),
    Range(Bound<u8>, Bound<u8>),
    Len,
    ToVec,
    /// Replace the table by `reopen(table)` (dump+load, close+open, or identity).
    Reopen,
}

/// The predicate of `SelectDelete(m)` and `SelectCount(m)`.
pub fn pred(m: u8, k: u8, v: u8) -> bool {
    (k.wrapping_add(v)) % 4 == m % 4
}

fn key() -> impl Strategy<Value = u8> {
    0..KEYS
}
fn val() -> impl Strategy<Value = u8> {
    0..VALUES
}
fn bound() -> impl Strategy<Value = Bound<u8>> {
    prop_oneof![
        key().prop_map(Bound::Included),
        key().prop_map(Bound::Excluded),
        Just(Bound::Unbounded),
    ]
}

/// One operation, weighted towards writes that create collisions.
pub fn op() -> impl Strategy<Value = Op> {
    let objects = || prop::collection::vec((key(), val()), 0..5);
    prop_oneof![
        6 => (key(), val()).prop_map(|(k, v)| Op::Insert(k, v)),
        2 => objects().prop_map(Op::InsertMany),
        2 => (key(), val()).prop_map(|(k, v)| Op::InsertNew(k, v)),
        2 => objects().prop_map(Op::InsertNewMany),
        3 => key().prop_map(Op::Lookup),
        1 => key().prop_map(Op::Member),
        2 => key().prop_map(Op::Delete),
        2 => (key(), val()).prop_map(|(k, v)| Op::DeleteObject(k, v)),
        1 => Just(Op::DeleteAllObjects),
        1 => key().prop_map(Op::Take),
        3 => (key(), -300i64..300, prop::option::of(any::<u8>()))
            .prop_map(|(k, i, d)| Op::UpdateCounter(k, i, d)),
        1 => (key(), any::<u8>()).prop_map(|(k, d)| Op::Update(k, d)),
        1 => any::<u8>().prop_map(Op::SelectDelete),
        1 => any::<u8>().prop_map(Op::SelectCount),
        1 => Just(Op::First),
        1 => key().prop_map(Op::Next),
        1 => Just(Op::Last),
        1 => key().prop_map(Op::Prev),
        2 => (bound(), bound()).prop_map(|(l, u)| Op::Range(l, u)),
        1 => Just(Op::Len),
        1 => Just(Op::ToVec),
        1 => Just(Op::Reopen),
    ]
}

/// Sequences of up to `max_len` operations.
pub fn ops_with(max_len: usize) -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(op(), 0..max_len)
}

/// Sequences of up to 60 operations (every op is meaningful for every type: the runner checks
/// that bag-only refusals and `Range` on unordered types are errors).
pub fn ops(_table_type: TableType) -> impl Strategy<Value = Vec<Op>> {
    ops_with(60)
}

/// The reference model: a key's objects in insertion order.
#[derive(Debug, Clone)]
pub struct Model {
    pub table_type: TableType,
    pub map: BTreeMap<u8, Vec<u8>>,
}

impl Model {
    pub fn new(table_type: TableType) -> Self {
        Model {
            table_type,
            map: BTreeMap::new(),
        }
    }

    pub fn insert(&mut self, k: u8, v: u8) {
        let objs = self.map.entry(k).or_default();
        match self.table_type {
            TableType::Set | TableType::OrderedSet => *objs = vec![v],
            TableType::Bag => {
                if !objs.contains(&v) {
                    objs.push(v)
                }
            }
            TableType::DuplicateBag => objs.push(v),
        }
    }

    pub fn lookup(&self, k: u8) -> Vec<u8> {
        self.map.get(&k).cloned().unwrap_or_default()
    }

    pub fn len(&self) -> usize {
        self.map.values().map(Vec::len).sum()
    }

    pub fn delete_object(&mut self, k: u8, v: u8) -> usize {
        let Some(objs) = self.map.get_mut(&k) else {
            return 0;
        };
        let before = objs.len();
        objs.retain(|&x| x != v);
        let n = before - objs.len();
        if objs.is_empty() {
            self.map.remove(&k);
        }
        n
    }

    pub fn select_delete(&mut self, m: u8) -> usize {
        let mut n = 0;
        for (&k, objs) in self.map.iter_mut() {
            let before = objs.len();
            objs.retain(|&v| !pred(m, k, v));
            n += before - objs.len();
        }
        self.map.retain(|_, o| !o.is_empty());
        n
    }

    /// `Ok(new)` or `Err(())` with the model unchanged.
    pub fn update_counter(&mut self, k: u8, incr: i64, default: Option<u8>) -> Result<u8, ()> {
        if self.table_type.is_bag() {
            return Err(());
        }
        let old = match self.map.get(&k) {
            Some(o) => o[0],
            None => default.ok_or(())?,
        };
        let new = i64::from(old) + incr;
        let new = u8::try_from(new).map_err(|_| ())?;
        self.map.insert(k, vec![new]);
        Ok(new)
    }

    pub fn keys(&self) -> Vec<u8> {
        self.map.keys().copied().collect()
    }
}

/// Groups `(k, v)` objects by key, keeping each key's objects in the order given.
fn group(objects: &[(u8, u8)]) -> BTreeMap<u8, Vec<u8>> {
    let mut g: BTreeMap<u8, Vec<u8>> = BTreeMap::new();
    for &(k, v) in objects {
        g.entry(k).or_default().push(v);
    }
    g
}

fn check_next(model: &Model, got: Option<u8>, from: Option<u8>, forward: bool, what: &str) {
    if model.table_type.is_ordered() {
        let want = match (from, forward) {
            (None, true) => model.map.keys().next().copied(),
            (None, false) => model.map.keys().next_back().copied(),
            (Some(k), true) => model
                .map
                .range((Bound::Excluded(k), Bound::Unbounded))
                .next()
                .map(|(k, _)| *k),
            (Some(k), false) => model.map.range(..k).next_back().map(|(k, _)| *k),
        };
        assert_eq!(got, want, "{what}({from:?})");
    } else {
        match got {
            Some(g) => {
                assert!(model.map.contains_key(&g), "{what}({from:?}) = {g} absent");
                assert_ne!(Some(g), from, "{what}({from:?}) returned its argument");
            }
            None => {
                if from.is_none() {
                    assert!(model.map.is_empty(), "{what}() = None on a non-empty table");
                }
            }
        }
    }
}

/// Checks everything observable about `table` against `model`.
pub fn check_contents<T: WriteTable<u8, u8>>(table: &T, model: &Model)
where
    T::Error: Debug,
{
    let tt = model.table_type;
    assert_eq!(table.table_type(), tt);
    let all = table.to_vec().expect("to_vec");
    if tt.is_ordered() {
        let keys: Vec<u8> = all.iter().map(|(k, _)| *k).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted, "ordered_set to_vec not in key order");
    }
    // Per key, objects must be in insertion order; across keys, order is unspecified.
    assert_eq!(group(&all), model.map, "contents (to_vec) differ");
    assert_eq!(table.len().expect("len"), model.len(), "len");
    assert_eq!(table.is_empty().expect("is_empty"), model.map.is_empty());
    let info = table.info().expect("info");
    assert_eq!(info.table_type, tt);
    assert_eq!(info.size, model.len(), "info.size");
    assert_eq!(info.keys, model.map.len(), "info.keys");
    for k in 0..KEYS {
        assert_eq!(
            table.lookup(&k).expect("lookup"),
            model.lookup(k),
            "lookup({k})"
        );
    }
    // A first/next traversal without writes visits every key exactly once.
    let mut seen = BTreeSet::new();
    let mut cur = table.first().expect("first");
    while let Some(k) = cur {
        assert!(seen.insert(k), "first/next visited {k} twice");
        assert!(
            seen.len() <= model.map.len(),
            "first/next visits too many keys"
        );
        cur = table.next(&k).expect("next");
    }
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        model.keys(),
        "first/next keys"
    );
    if tt.is_ordered() {
        let mut back = Vec::new();
        let mut cur = table.last().expect("last");
        while let Some(k) = cur {
            back.push(k);
            assert!(
                back.len() <= model.map.len(),
                "last/prev visits too many keys"
            );
            cur = table.prev(&k).expect("prev");
        }
        back.reverse();
        assert_eq!(back, model.keys(), "last/prev keys");
    }
}

/// Runs `ops` against a fresh `make()` table and the model, checking every result, then the
/// final contents. `reopen` replaces the table on `Op::Reopen` (and once more at the end).
pub fn run_model<T, M, R>(table_type: TableType, mut make: M, mut reopen: R, ops: &[Op])
where
    T: WriteTable<u8, u8>,
    T::Error: Debug,
    M: FnMut() -> T,
    R: FnMut(T) -> T,
{
    let mut t = make();
    let mut m = Model::new(table_type);
    let is_set = !table_type.is_bag();
    for (i, op) in ops.iter().enumerate() {
        let ctx = format!("op #{i} {op:?} on {table_type}");
        match op.clone() {
            Op::Insert(k, v) => {
                t.insert(k, v).expect(&ctx);
                m.insert(k, v);
            }
            Op::InsertMany(objs) => {
                t.insert_many(objs.clone()).expect(&ctx);
                for (k, v) in objs {
                    m.insert(k, v);
                }
            }
            Op::InsertNew(k, v) => {
                let want = !m.map.contains_key(&k);
                assert_eq!(t.insert_new(k, v).expect(&ctx), want, "{ctx}");
                if want {
                    m.insert(k, v);
                }
            }
            Op::InsertNewMany(objs) => {
                let want = objs.iter().all(|(k, _)| !m.map.contains_key(k));
                assert_eq!(t.insert_new_many(objs.clone()).expect(&ctx), want, "{ctx}");
                if want {
                    for (k, v) in objs {
                        m.insert(k, v);
                    }
                }
            }
            Op::Lookup(k) => assert_eq!(t.lookup(&k).expect(&ctx), m.lookup(k), "{ctx}"),
            Op::Member(k) => {
                assert_eq!(t.member(&k).expect(&ctx), m.map.contains_key(&k), "{ctx}")
            }
            Op::Delete(k) => {
                let want = m.map.remove(&k).map_or(0, |o| o.len());
                assert_eq!(t.delete(&k).expect(&ctx), want, "{ctx}");
            }
            Op::DeleteObject(k, v) => {
                let want = m.delete_object(k, v);
                assert_eq!(t.delete_object(&k, &v).expect(&ctx), want, "{ctx}");
            }
            Op::DeleteAllObjects => {
                t.delete_all_objects().expect(&ctx);
                m.map.clear();
            }
            Op::Take(k) => {
                let want = m.map.remove(&k).unwrap_or_default();
                assert_eq!(t.take(&k).expect(&ctx), want, "{ctx}");
            }
            Op::UpdateCounter(k, incr, d) => {
                let want = m.update_counter(k, incr, d);
                let got = t.update_counter(&k, incr, d);
                match want {
                    Ok(w) => assert_eq!(got.expect(&ctx), w, "{ctx}"),
                    Err(()) => assert!(got.is_err(), "{ctx}: expected an error, got {got:?}"),
                }
            }
            Op::Update(k, d) => {
                let got = t.update(&k, |v| *v = v.wrapping_add(d));
                if is_set {
                    let want = match m.map.get_mut(&k) {
                        Some(o) => {
                            o[0] = o[0].wrapping_add(d);
                            true
                        }
                        None => false,
                    };
                    assert_eq!(got.expect(&ctx), want, "{ctx}");
                } else {
                    assert!(got.is_err(), "{ctx}: update on a bag must be an error");
                }
            }
            Op::SelectDelete(p) => {
                let want = m.select_delete(p);
                let got = t.select_delete(|k, v| pred(p, *k, *v)).expect(&ctx);
                assert_eq!(got, want, "{ctx}");
            }
            Op::SelectCount(p) => {
                let want = m
                    .map
                    .iter()
                    .flat_map(|(k, o)| o.iter().map(move |v| (*k, *v)))
                    .filter(|(k, v)| pred(p, *k, *v))
                    .count();
                let got = t.select_count(|k, v| pred(p, *k, *v)).expect(&ctx);
                assert_eq!(got, want, "{ctx}");
                let sel = t
                    .select(|k, v| pred(p, *k, *v).then_some((*k, *v)))
                    .expect(&ctx);
                assert_eq!(sel.len(), want, "{ctx} select");
                let folded = t
                    .fold(0usize, |a, k, v| a + usize::from(pred(p, *k, *v)))
                    .expect(&ctx);
                assert_eq!(folded, want, "{ctx} fold");
            }
            Op::First => check_next(&m, t.first().expect(&ctx), None, true, "first"),
            Op::Last => {
                let fwd = !table_type.is_ordered();
                check_next(&m, t.last().expect(&ctx), None, fwd, "last")
            }
            Op::Next(k) => check_next(&m, t.next(&k).expect(&ctx), Some(k), true, "next"),
            Op::Prev(k) => {
                let fwd = !table_type.is_ordered();
                check_next(&m, t.prev(&k).expect(&ctx), Some(k), fwd, "prev")
            }
            Op::Range(lo, hi) => {
                let got = t.range(lo.as_ref(), hi.as_ref());
                if table_type.is_ordered() {
                    let valid = match (lo, hi) {
                        (Bound::Included(a), Bound::Included(b)) => a <= b,
                        (Bound::Included(a) | Bound::Excluded(a), Bound::Excluded(b))
                        | (Bound::Excluded(a), Bound::Included(b)) => a < b,
                        _ => true,
                    };
                    let want: Vec<(u8, u8)> = if valid {
                        m.map.range((lo, hi)).map(|(k, o)| (*k, o[0])).collect()
                    } else {
                        Vec::new()
                    };
                    assert_eq!(got.expect(&ctx), want, "{ctx}");
                } else {
                    assert!(got.is_err(), "{ctx}: range on an unordered table must fail");
                }
            }
            Op::Len => assert_eq!(t.len().expect(&ctx), m.len(), "{ctx}"),
            Op::ToVec => assert_eq!(group(&t.to_vec().expect(&ctx)), m.map, "{ctx}"),
            Op::Reopen => {
                t = reopen(t);
                check_contents(&t, &m);
            }
        }
    }
    check_contents(&t, &m);
    let t = reopen(t);
    check_contents(&t, &m);
}
