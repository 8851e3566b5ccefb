//! Integration tests of the disk tables ([`freqalloc::dets`]): semantics per table type,
//! persistence across reopen, and every error path of open.

mod common;

use std::ops::Bound;
use std::path::Path;

use common::model;
use proptest::prelude::*;

use freqalloc::dets::{BatchOp, DetsError, DiskTable, FlushPolicy, OpenOptions};
use freqalloc::{ReadTable, TableType, WriteTable};

fn opts(t: TableType) -> OpenOptions {
    OpenOptions::new(t).flush_policy(FlushPolicy::Manual)
}

fn open<K, V>(path: &Path, t: TableType) -> DiskTable<K, V>
where
    K: serde::Serialize + serde::de::DeserializeOwned,
    V: serde::Serialize + serde::de::DeserializeOwned,
{
    DiskTable::open(path, opts(t)).expect("open table")
}

/// Writes a table with enough data that sled's files have real content, then closes it.
fn make_store(path: &Path) {
    let mut t: DiskTable<u64, String> = open(path, TableType::Set);
    t.insert_many((0..2000u64).map(|i| (i, format!("value-{i}"))))
        .expect("insert");
    t.close().expect("close");
}

/// The files of a sled store, largest first.
#[allow(dead_code)]
fn store_files(path: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    let mut dirs = vec![path.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).expect("read dir") {
            let p = e.expect("dir entry").path();
            if p.is_dir() {
                dirs.push(p);
            } else {
                files.push(p);
            }
        }
    }
    files.sort_by_key(|p| std::cmp::Reverse(std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)));
    files
}

/// Flips bits in the middle of `file`.
fn garble(file: &Path) {
    let mut bytes = std::fs::read(file).expect("read");
    let n = bytes.len();
    for b in &mut bytes[n / 4..(n / 2).max(n / 4 + 1).min(n)] {
        *b ^= 0x5A;
    }
    std::fs::write(file, bytes).expect("write");
}

fn truncate(file: &Path, keep: u64) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(file)
        .and_then(|f| f.set_len(keep))
        .expect("truncate");
}

/// Opening fails with `Corrupted`, and keeps failing: a failed open must not "heal" the
/// evidence (regression: an early return once recorded the damaged counts as a clean close).
fn assert_corrupted(p: &Path) {
    for attempt in 0..2 {
        match DiskTable::<u64, String>::open(p, opts(TableType::Set)) {
            Err(DetsError::Corrupted { path, .. }) => assert_eq!(path, p),
            other => panic!(
                "attempt {attempt}: expected Corrupted, got {:?}",
                other.map(|t| t.len())
            ),
        }
    }
}

#[test]
fn garbled_log_is_corrupted() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("t");
    make_store(&p);
    garble(&p.join("db"));
    assert_corrupted(&p);
}

#[test]
fn truncated_log_is_corrupted() {
    for keep in [0u64, 1, 4096] {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t");
        make_store(&p);
        let db = p.join("db");
        let n = std::fs::metadata(&db).unwrap().len();
        truncate(&db, keep.min(n / 2));
        assert_corrupted(&p);
    }
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("t");
    make_store(&p);
    let db = p.join("db");
    let n = std::fs::metadata(&db).unwrap().len();
    truncate(&db, n * 9 / 10);
    assert_corrupted(&p);
}

#[test]
fn garbled_or_truncated_state_file_is_corrupted() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("t");
    make_store(&p);
    truncate(&p.join("freqalloc-dets.state"), 5);
    assert_corrupted(&p);
}

#[test]
fn garbled_sled_config_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("t");
    make_store(&p);
    garble(&p.join("conf"));
    assert!(DiskTable::<u64, String>::open(&p, opts(TableType::Set)).is_err());
}

#[test]
fn a_second_handle_is_locked_out_and_the_error_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("t");
    let t: DiskTable<u64, String> = open(&p, TableType::Set);
    match DiskTable::<u64, String>::open(&p, opts(TableType::Set)) {
        Err(e @ DetsError::Locked { .. }) => {
            assert!(e.to_string().contains(&*p.to_string_lossy()), "{e}");
        }
        other => panic!("expected Locked, got {other:?}"),
    }
    drop(t);
    // Released on drop.
    let t: DiskTable<u64, String> = open(&p, TableType::Set);
    assert!(t.is_empty().unwrap());
}

#[test]
fn opening_as_another_type_or_schema_names_both() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("t");
    let mut t: DiskTable<u64, String> = open(&p, TableType::Set);
    t.insert(1, "one".into()).unwrap();
    t.close().unwrap();

    let e = DiskTable::<u64, String>::open(&p, opts(TableType::Bag)).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, DetsError::SchemaMismatch { .. }), "{e:?}");
    assert!(
        msg.contains("a set of") && msg.contains("a bag of"),
        "{msg}"
    );

    let e = DiskTable::<i32, String>::open(&p, opts(TableType::Set)).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("(u64, alloc::string::String)") && msg.contains("(i32,"),
        "{msg}"
    );

    let e = DiskTable::<u64, String>::open(&p, opts(TableType::Set).version(2)).unwrap_err();
    assert!(e.to_string().contains("version 2") && e.to_string().contains("version 0"));

    // The right schema still opens, with its data.
    let t: DiskTable<u64, String> = open(&p, TableType::Set);
    assert_eq!(t.lookup(&1).unwrap(), vec!["one".to_string()]);
}

#[test]
fn a_schema_mismatch_is_caught_after_a_crash_too() {
    // No clean close (the state file says "open"): the sled schema record still catches it.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("t");
    let mut t: DiskTable<u64, String> = open(&p, TableType::Set);
    t.insert(1, "one".into()).unwrap();
    t.sync().unwrap();
    std::mem::forget(t); // leaks the handle and its lock: reopen from a copy of the files
    let q = dir.path().join("copy");
    std::fs::create_dir(&q).unwrap();
    for f in ["db", "conf", "freqalloc-dets.state"] {
        std::fs::copy(p.join(f), q.join(f)).unwrap();
    }
    let e = DiskTable::<u64, u64>::open(&q, opts(TableType::Set)).unwrap_err();
    assert!(matches!(e, DetsError::SchemaMismatch { .. }), "{e:?}");
    let t: DiskTable<u64, String> = open(&q, TableType::Set);
    assert_eq!(t.lookup(&1).unwrap(), vec!["one".to_string()]);
}

#[test]
fn floats_are_not_keys() {
    let dir = tempfile::tempdir().unwrap();
    let mut t: DiskTable<f64, u8> = open(&dir.path().join("t"), TableType::Set);
    assert!(matches!(
        t.insert(1.5, 1),
        Err(DetsError::UnsupportedKey { .. })
    ));
    assert!(t.is_empty().unwrap());
}

#[test]
fn every_type_survives_reopen() {
    for tt in TableType::ALL {
        for durability in [
            FlushPolicy::EveryWrite,
            FlushPolicy::Manual,
            FlushPolicy::Interval(std::time::Duration::from_millis(5)),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("t");
            let o = OpenOptions::new(tt).flush_policy(durability);
            let mut t: DiskTable<String, u32> = DiskTable::open(&p, o).unwrap();
            t.insert("b".into(), 2).unwrap();
            t.insert("a".into(), 1).unwrap();
            t.insert("a".into(), 11).unwrap();
            t.insert_many([("c".to_string(), 3), ("a".to_string(), 1)])
                .unwrap();
            let before = t.to_vec().unwrap();
            let info = t.info().unwrap();
            drop(t);
            let t: DiskTable<String, u32> =
                DiskTable::open(&p, o).unwrap_or_else(|e| panic!("{tt} {durability:?}: {e}"));
            assert_eq!(t.to_vec().unwrap(), before, "{tt}");
            assert_eq!(t.info().unwrap().size, info.size);
            assert_eq!(t.info().unwrap().keys, 3);
            let expect_a = match tt {
                TableType::Set | TableType::OrderedSet => vec![1],
                TableType::Bag => vec![1, 11],
                TableType::DuplicateBag => vec![1, 11, 1],
            };
            assert_eq!(t.lookup(&"a".to_string()).unwrap(), expect_a, "{tt}");
            assert_eq!(t.len().unwrap(), expect_a.len() + 2);
        }
    }
}

#[test]
fn duplicate_bag_delete_object_removes_every_copy_and_bag_dedupes() {
    let dir = tempfile::tempdir().unwrap();
    let mut t: DiskTable<u8, String> = open(&dir.path().join("d"), TableType::DuplicateBag);
    for v in ["x", "y", "x", "x"] {
        t.insert(1, v.into()).unwrap();
    }
    t.insert(2, "x".into()).unwrap();
    assert_eq!(t.delete_object(&1, &"x".into()).unwrap(), 3);
    assert_eq!(t.lookup(&1).unwrap(), vec!["y".to_string()]);
    assert_eq!(t.delete_object(&1, &"y".into()).unwrap(), 1);
    assert_eq!(t.info().unwrap().keys, 1);
    assert_eq!(t.len().unwrap(), 1);

    let mut b: DiskTable<u8, String> = open(&dir.path().join("b"), TableType::Bag);
    for v in ["x", "y", "x"] {
        b.insert(1, v.into()).unwrap();
    }
    b.insert_many([
        (1, "z".to_string()),
        (1, "z".to_string()),
        (1, "x".to_string()),
    ])
    .unwrap();
    assert_eq!(b.lookup(&1).unwrap(), vec!["x", "y", "z"]);
    assert_eq!(b.take(&1).unwrap(), vec!["x", "y", "z"]);
    assert!(!b.member(&1).unwrap());
    let mut c: DiskTable<u8, u32> = open(&dir.path().join("c"), TableType::Bag);
    assert!(matches!(
        c.update_counter(&1, 1, None),
        Err(DetsError::WrongTableType { .. })
    ));
    assert!(matches!(
        c.update(&1, |v| *v += 1),
        Err(DetsError::WrongTableType { .. })
    ));
}

#[test]
fn ordered_set_traverses_in_key_order_with_negative_numbers_and_prefixes() {
    let dir = tempfile::tempdir().unwrap();
    let mut t: DiskTable<(i64, String), u8> = open(&dir.path().join("t"), TableType::OrderedSet);
    let keys = [
        (0, ""),
        (-1, "b"),
        (-1, "a"),
        (-1, "ab"),
        (i64::MIN, "z"),
        (3, "a\0"),
        (3, "a"),
    ];
    for (i, (n, s)) in keys.iter().enumerate() {
        t.insert((*n, s.to_string()), i as u8).unwrap();
    }
    let mut sorted: Vec<(i64, String)> = keys.iter().map(|(n, s)| (*n, s.to_string())).collect();
    sorted.sort();
    let got: Vec<_> = t.to_vec().unwrap().into_iter().map(|(k, _)| k).collect();
    assert_eq!(got, sorted);
    // first/next walk and last/prev walk.
    let mut walk = vec![];
    let mut k = t.first().unwrap();
    while let Some(key) = k {
        k = t.next(&key).unwrap();
        walk.push(key);
    }
    assert_eq!(walk, sorted);
    let mut back = vec![];
    let mut k = t.last().unwrap();
    while let Some(key) = k {
        k = t.prev(&key).unwrap();
        back.push(key);
    }
    back.reverse();
    assert_eq!(back, sorted);
    // Ranges follow BTreeMap semantics, and an inverted range is empty, not a panic.
    let lo = (-1, "ab".to_string());
    let hi = (3, "a".to_string());
    let r: Vec<_> = t
        .range(Bound::Excluded(&lo), Bound::Included(&hi))
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    let want: Vec<_> = sorted
        .iter()
        .filter(|k| **k > lo && **k <= hi)
        .cloned()
        .collect();
    assert_eq!(r, want);
    assert!(t
        .range(Bound::Included(&hi), Bound::Excluded(&lo))
        .unwrap()
        .is_empty());
    // next of an absent key.
    assert_eq!(
        t.next(&(-1, "aa".into())).unwrap(),
        Some((-1, "ab".to_string()))
    );
}

#[test]
fn range_on_an_unordered_table_is_not_ordered() {
    let dir = tempfile::tempdir().unwrap();
    let t: DiskTable<u64, u8> = open(&dir.path().join("t"), TableType::Set);
    assert!(matches!(
        t.range(Bound::Unbounded, Bound::Unbounded),
        Err(DetsError::NotOrdered { .. })
    ));
}

#[test]
fn counters_and_updates() {
    let dir = tempfile::tempdir().unwrap();
    let mut t: DiskTable<String, u8> = open(&dir.path().join("t"), TableType::Set);
    assert!(matches!(
        t.update_counter(&"c".to_string(), 1, None),
        Err(DetsError::NoSuchKey)
    ));
    assert_eq!(
        t.update_counter(&"c".to_string(), 5, Some(250)).unwrap(),
        255
    );
    assert!(matches!(
        t.update_counter(&"c".to_string(), 1, None),
        Err(DetsError::CounterOverflow { incr: 1 })
    ));
    assert_eq!(t.lookup(&"c".to_string()).unwrap(), vec![255]);
    assert!(t.update(&"c".to_string(), |v| *v = 7).unwrap());
    assert!(!t.update(&"d".to_string(), |v| *v = 7).unwrap());
    assert_eq!(t.lookup(&"c".to_string()).unwrap(), vec![7]);
    assert_eq!(t.len().unwrap(), 1);
}

#[test]
fn insert_new_select_and_select_delete() {
    for tt in TableType::ALL {
        let dir = tempfile::tempdir().unwrap();
        let mut t: DiskTable<u32, u32> = open(&dir.path().join("t"), tt);
        assert!(t.insert_new(1, 10).unwrap());
        assert!(!t.insert_new(1, 11).unwrap());
        assert!(!t.insert_new_many([(2, 20), (1, 12)]).unwrap());
        assert!(!t.member(&2).unwrap());
        assert!(t.insert_new_many([(2, 20), (3, 30), (4, 40)]).unwrap());
        t.insert(4, 41).unwrap();
        let evens = t.select(|k, v| (k % 2 == 0).then_some(*v)).unwrap();
        let mut evens_sorted = evens.clone();
        evens_sorted.sort();
        assert_eq!(
            evens_sorted,
            if tt.is_bag() {
                vec![20, 40, 41]
            } else {
                vec![20, 41]
            }
        );
        assert_eq!(t.select_count(|_, v| *v >= 30).unwrap(), evens.len());
        assert_eq!(
            t.fold(0, |a, _, v| a + v).unwrap(),
            if tt.is_bag() { 141 } else { 101 }
        );
        let n = t.select_delete(|k, _| k % 2 == 0).unwrap();
        assert_eq!(n, evens.len());
        assert_eq!(t.info().unwrap().keys, 2);
        assert_eq!(t.len().unwrap(), 2);
        t.delete_all_objects().unwrap();
        assert!(t.is_empty().unwrap());
        assert_eq!(t.first().unwrap(), None);
    }
}

#[test]
fn apply_batch_mixes_inserts_and_deletes_in_order() {
    for tt in TableType::ALL {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t");
        let mut t: DiskTable<u32, u32> = open(&p, tt);
        t.insert(1, 1).unwrap();
        t.apply_batch([
            BatchOp::Insert(2, 2),
            BatchOp::Delete(1),
            BatchOp::Insert(1, 10),
            BatchOp::Insert(3, 3),
            BatchOp::Delete(3),
            BatchOp::Delete(9),
        ])
        .unwrap();
        assert_eq!(t.lookup(&1).unwrap(), vec![10], "{tt}");
        assert!(!t.member(&3).unwrap());
        assert_eq!(t.len().unwrap(), 2);
        drop(t);
        let t: DiskTable<u32, u32> = open(&p, tt);
        assert_eq!(t.len().unwrap(), 2);
        assert_eq!(t.info().unwrap().keys, 2);
    }
}

#[test]
fn copy_into_and_replace_from_between_disk_tables() {
    let dir = tempfile::tempdir().unwrap();
    let mut a: DiskTable<u32, String> = open(&dir.path().join("a"), TableType::Bag);
    a.insert_many([
        (1, "x".to_string()),
        (1, "y".to_string()),
        (2, "z".to_string()),
    ])
    .unwrap();
    let mut b: DiskTable<u32, String> = open(&dir.path().join("b"), TableType::Bag);
    b.insert(9, "old".into()).unwrap();
    b.replace_from(&a).unwrap();
    assert_eq!(b.to_vec().unwrap(), a.to_vec().unwrap());
    assert_eq!(b.info().unwrap().keys, 2);
    let mut c: DiskTable<u32, String> = open(&dir.path().join("c"), TableType::Bag);
    a.copy_into(&mut c).unwrap();
    assert_eq!(c.to_vec().unwrap(), a.to_vec().unwrap());
}

/// Runs the shared model (tests/common/model.rs) over a disk table of `tt` in a fresh
/// directory; `Reopen` closes the table (checking the close) and opens it again.
fn run_disk_model(tt: TableType, ops: &[model::Op]) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("t");
    // Manual durability: the model checks semantics; durability is the crash test's job.
    let o = opts(tt);
    model::run_model(
        tt,
        || DiskTable::<u8, u8>::open(&path, o).expect("open"),
        |t| {
            t.close().expect("close");
            DiskTable::open(&path, o).expect("reopen")
        },
        ops,
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(common::proptest_cases(32)))]

    #[test]
    fn model_set(ops in model::ops(TableType::Set)) {
        run_disk_model(TableType::Set, &ops);
    }

    #[test]
    fn model_ordered_set(ops in model::ops(TableType::OrderedSet)) {
        run_disk_model(TableType::OrderedSet, &ops);
    }

    #[test]
    fn model_bag(ops in model::ops(TableType::Bag)) {
        run_disk_model(TableType::Bag, &ops);
    }

    #[test]
    fn model_duplicate_bag(ops in model::ops(TableType::DuplicateBag)) {
        run_disk_model(TableType::DuplicateBag, &ops);
    }

    /// Ordered traversal of `(i64, String)` keys on disk matches `BTreeMap` order, across a
    /// reopen (negative numbers and string prefixes included).
    #[test]
    fn ordered_set_tuple_keys_follow_btreemap_order(
        keys in proptest::collection::vec((-3i64..3, "[ab\\x00]{0,3}"), 0..30)
    ) {
        let dir = tempfile::tempdir().expect("temp dir");
        let p = dir.path().join("t");
        let mut t: DiskTable<(i64, String), u8> = open(&p, TableType::OrderedSet);
        let mut want = std::collections::BTreeMap::new();
        for (i, k) in keys.into_iter().enumerate() {
            t.insert(k.clone(), i as u8).expect("insert");
            want.insert(k, i as u8);
        }
        t.close().expect("close");
        let t: DiskTable<(i64, String), u8> = open(&p, TableType::OrderedSet);
        let want: Vec<_> = want.into_iter().collect();
        prop_assert_eq!(t.to_vec().expect("to_vec"), want);
    }
}

#[test]
fn to_ets_and_from_ets_move_tables_between_tiers() {
    use freqalloc::ets;
    for tt in TableType::ALL {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t");
        let mut d: DiskTable<u32, String> = open(&p, tt);
        d.insert_many([
            (1, "a".to_string()),
            (1, "b".to_string()),
            (2, "c".to_string()),
        ])
        .unwrap();
        let mem = d.to_ets().unwrap();
        assert_eq!(mem.table_type(), tt);
        let mut got = ReadTable::to_vec(&mem).unwrap();
        let mut want = d.to_vec().unwrap();
        got.sort();
        want.sort();
        assert_eq!(got, want, "{tt}");

        let mut src: ets::Table<u32, String> = ets::Table::new(tt);
        src.insert(7, "x".to_string());
        src.insert(3, "y".to_string());
        d.from_ets(&src.reader()).unwrap();
        drop(d);
        let d: DiskTable<u32, String> = open(&p, tt);
        assert_eq!(
            d.to_vec().unwrap(),
            vec![(3, "y".to_string()), (7, "x".to_string())],
            "{tt}"
        );
        assert_eq!(d.info().unwrap().keys, 2);
    }
}

#[test]
fn a_disk_table_can_move_to_its_owner_thread() {
    fn assert_send<T: Send>() {}
    assert_send::<DiskTable<u64, String>>();
    let dir = tempfile::tempdir().unwrap();
    let mut t: DiskTable<u64, String> = open(&dir.path().join("t"), TableType::Set);
    std::thread::scope(|s| {
        s.spawn(|| t.insert(1, "from a thread".into()).unwrap());
    });
    assert_eq!(t.len().unwrap(), 1);
}
