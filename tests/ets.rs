//! Integration tests of `freqalloc::ets`: model-based property tests of every table type and
//! handle, semantic corners, dumps, and concurrency.

mod common;

use std::collections::BTreeSet;
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

use common::model::{self, run_model};
use common::{proptest_cases, wait_until};
use freqalloc::ets::{EtsError, PublicTable, Table, TableOptions, TableReader};
use freqalloc::{ReadTable, TableType, WriteTable};
use proptest::prelude::*;

/// tab2file + file2tab through a temporary directory: the ETS `Reopen`.
fn dump_and_load(t: Table<u8, u8>) -> Table<u8, u8> {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("t.ets");
    t.tab2file(&path).expect("tab2file");
    let back = Table::file2tab(&path).expect("file2tab");
    assert_eq!(back.table_type(), t.table_type());
    back
}

fn model_owner(tt: TableType, ops: &[model::Op]) {
    run_model(tt, || Table::new(tt), dump_and_load, ops);
}

fn model_public(tt: TableType, ops: &[model::Op]) {
    run_model(tt, || PublicTable::new(tt), |t| t.clone(), ops);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(proptest_cases(128)))]

    #[test]
    fn model_set(ops in model::ops(TableType::Set)) { model_owner(TableType::Set, &ops) }
    #[test]
    fn model_ordered_set(ops in model::ops(TableType::OrderedSet)) {
        model_owner(TableType::OrderedSet, &ops)
    }
    #[test]
    fn model_bag(ops in model::ops(TableType::Bag)) { model_owner(TableType::Bag, &ops) }
    #[test]
    fn model_duplicate_bag(ops in model::ops(TableType::DuplicateBag)) {
        model_owner(TableType::DuplicateBag, &ops)
    }
    #[test]
    fn model_public_every_type(ops in model::ops(TableType::Set), i in 0usize..4) {
        model_public(TableType::ALL[i], &ops)
    }
}

// ---------------------------------------------------------------- semantic corners

#[test]
fn set_insert_replaces() {
    let mut t = Table::new(TableType::Set);
    t.insert(1u32, "a");
    t.insert(1, "b");
    assert_eq!(t.lookup(&1), vec!["b"]);
    assert_eq!(t.len(), 1);
}

#[test]
fn bag_stores_an_identical_object_once_in_insertion_order() {
    let mut t = Table::new(TableType::Bag);
    t.insert_many([(1u32, 'b'), (1, 'a'), (1, 'b'), (2, 'z')]);
    assert_eq!(t.lookup(&1), vec!['b', 'a']);
    assert_eq!(t.len(), 3);
    assert_eq!(t.info().keys, 2);
    assert_eq!(t.delete_object(&1, &'b'), 1);
    t.insert(1, 'b');
    assert_eq!(
        t.lookup(&1),
        vec!['a', 'b'],
        "a re-inserted object goes last"
    );
}

#[test]
fn duplicate_bag_keeps_duplicates_and_delete_object_removes_every_copy() {
    let mut t = Table::new(TableType::DuplicateBag);
    t.insert_many([(1u32, 'x'), (1, 'y'), (1, 'x'), (1, 'x')]);
    assert_eq!(t.lookup(&1), vec!['x', 'y', 'x', 'x']);
    assert_eq!(t.delete_object(&1, &'x'), 3);
    assert_eq!(t.lookup(&1), vec!['y']);
    assert_eq!(t.delete_object(&1, &'y'), 1);
    assert!(!t.member(&1), "a key with no objects left is gone");
}

#[test]
fn insert_new_many_with_one_existing_key_inserts_nothing() {
    for tt in TableType::ALL {
        let mut t = Table::new(tt);
        t.insert(3u64, 30u64);
        assert!(!t.insert_new_many([(1, 10), (2, 20), (3, 31)]), "{tt}");
        assert_eq!(t.to_vec(), vec![(3, 30)], "{tt}");
        assert!(t.insert_new_many([(1, 10), (2, 20)]), "{tt}");
        assert_eq!(t.len(), 3, "{tt}");
        assert!(!t.insert_new(1, 11), "{tt}");
    }
}

#[test]
fn ordered_traversal_continues_past_a_deleted_key() {
    let mut t = Table::new(TableType::OrderedSet);
    t.insert_many((0u64..10).map(|k| (k * 10, k)));
    assert_eq!(t.first(), Some(0));
    assert_eq!(t.last(), Some(90));
    t.delete(&40);
    assert_eq!(t.next(&40), Some(50), "next of a deleted key");
    assert_eq!(t.prev(&40), Some(30), "prev of a deleted key");
    assert_eq!(t.next(&90), None);
    assert_eq!(t.prev(&0), None);
    assert_eq!(
        t.range(25..=50).unwrap(),
        vec![(30, 3), (50, 5)],
        "range skips the deleted key"
    );
    assert_eq!(
        t.range((Bound::Included(50), Bound::Excluded(20))).unwrap(),
        vec![],
        "an inverted range is empty"
    );
    let sum = t.range_fold(.., 0, |a, _, v| a + v).unwrap();
    assert_eq!(sum, 45 - 4);
}

#[test]
fn hash_tables_refuse_range_and_treat_last_prev_as_first_next() {
    let mut t = Table::new(TableType::Set);
    t.insert_many([(1u8, 1u8), (2, 2), (3, 3)]);
    assert!(matches!(
        t.range(..),
        Err(EtsError::NotOrdered {
            table_type: TableType::Set,
            ..
        })
    ));
    assert_eq!(t.last(), t.first());
    let f = t.first().unwrap();
    assert_eq!(t.prev(&f), t.next(&f));
}

#[test]
fn update_counter_default_overflow_and_bag_errors() {
    let mut t: Table<&str, u8> = Table::new(TableType::Set);
    assert!(matches!(
        t.update_counter(&"n", 1, None),
        Err(EtsError::NoSuchKey)
    ));
    assert_eq!(t.update_counter(&"n", 5, Some(10)).unwrap(), 15);
    assert_eq!(t.update_counter(&"n", -15, None).unwrap(), 0);
    assert!(matches!(
        t.update_counter(&"n", -1, None),
        Err(EtsError::CounterOverflow { incr: -1 })
    ));
    assert!(matches!(
        t.update_counter(&"m", 1, Some(255)),
        Err(EtsError::CounterOverflow { .. })
    ));
    assert!(!t.member(&"m"), "a failed default insert leaves nothing");
    assert_eq!(t.get(&"n"), Some(0), "an overflow leaves the value");

    let mut o: Table<u8, i64> = Table::new(TableType::OrderedSet);
    assert_eq!(o.update_counter(&1, i64::MAX, Some(0)).unwrap(), i64::MAX);
    assert!(o.update_counter(&1, 1, None).is_err());

    for tt in [TableType::Bag, TableType::DuplicateBag] {
        let mut b: Table<u8, u8> = Table::new(tt);
        b.insert(1, 1);
        assert!(matches!(
            b.update_counter(&1, 1, None),
            Err(EtsError::NotASet { .. })
        ));
        assert!(matches!(
            b.update(&1, |v| *v += 1),
            Err(EtsError::NotASet { .. })
        ));
        assert_eq!(b.lookup(&1), vec![1]);
    }
}

#[test]
fn take_select_and_fold() {
    let mut t = Table::new(TableType::DuplicateBag);
    t.insert_many([(1u8, 1u32), (1, 1), (2, 5), (3, 7)]);
    assert_eq!(t.take(&1), vec![1, 1]);
    assert!(t.take(&1).is_empty());
    let mut big = t.select(|k, v| (*v > 4).then_some(*k));
    big.sort();
    assert_eq!(big, vec![2, 3]);
    assert_eq!(t.select_count(|_, v| *v == 7), 1);
    assert_eq!(t.fold(0, |a, _, v| a + v), 12);
    assert_eq!(t.select_delete(|k, _| *k == 2), 1);
    assert_eq!(t.to_vec(), vec![(3, 7)]);
    t.delete_all_objects();
    assert!(t.is_empty());
}

#[test]
fn info_reports_type_size_keys_and_memory() {
    let mut t = Table::new(TableType::Bag);
    t.insert_many([(1u64, 1u64), (1, 2), (2, 1)]);
    let i = t.info();
    assert_eq!((i.table_type, i.size, i.keys), (TableType::Bag, 3, 2));
    assert!(i.memory_bytes > 0);
}

// ---------------------------------------------------------------- dumps

fn sample() -> Table<u64, String> {
    let mut t = Table::with_name("sample", TableType::DuplicateBag);
    t.insert_many((0..50u64).map(|k| (k % 7, format!("v{k}"))));
    t
}

#[test]
fn dump_round_trips_type_name_and_bag_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.ets");
    let t = sample();
    t.tab2file(&path).unwrap();
    let back: Table<u64, String> = Table::file2tab(&path).unwrap();
    assert_eq!(back.name(), Some("sample"));
    assert_eq!(back.table_type(), TableType::DuplicateBag);
    for k in 0..7 {
        assert_eq!(back.lookup(&k), t.lookup(&k));
    }
}

#[test]
fn damaged_dumps_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.ets");
    sample().tab2file(&path).unwrap();
    let good = std::fs::read(&path).unwrap();
    let load = |bytes: &[u8]| {
        std::fs::write(&path, bytes).unwrap();
        Table::<u64, String>::file2tab(&path)
    };

    // Every truncation and every single flipped bit is an error, never a panic.
    for len in 0..good.len() {
        assert!(load(&good[..len]).is_err(), "truncated to {len}");
    }
    for i in 0..good.len() {
        let mut bad = good.clone();
        bad[i] ^= 0x10;
        assert!(load(&bad).is_err(), "byte {i} flipped");
    }
    assert!(matches!(load(&good[..10]), Err(EtsError::Truncated(_))));
    let mut bad = good.clone();
    bad[0] = b'X';
    assert!(matches!(load(&bad), Err(EtsError::BadMagic)));
    let mut bad = good.clone();
    bad[8] = 9;
    assert!(matches!(
        load(&bad),
        Err(EtsError::UnsupportedVersion { found: 9, .. })
    ));
    let mut bad = good.clone();
    let mid = good.len() / 2;
    bad[mid] ^= 1;
    assert!(matches!(load(&bad), Err(EtsError::ChecksumMismatch { .. })));
    assert!(matches!(load(b"hello, world"), Err(EtsError::BadMagic)));

    // Another type's dump.
    load(&good).unwrap();
    assert!(matches!(
        Table::<u64, u64>::file2tab(&path),
        Err(EtsError::WrongType { .. })
    ));
    assert!(matches!(
        Table::<u64, String>::file2tab(dir.path().join("missing")),
        Err(EtsError::Io { .. })
    ));
}

// ---------------------------------------------------------------- concurrency

/// Readers on other threads see a consistent table while the owner writes, and agree with it
/// once it stops.
#[test]
fn readers_read_while_the_owner_writes() {
    for (tt, rc) in TableType::ALL
        .into_iter()
        .flat_map(|t| [(t, false), (t, true)])
    {
        let mut t: Table<u64, u64> =
            Table::with_options(tt, TableOptions::new().read_concurrency(rc));
        let done = AtomicBool::new(false);
        thread::scope(|s| {
            for _ in 0..2 {
                let r = t.reader();
                let done = &done;
                s.spawn(move || {
                    while !done.load(Ordering::Acquire) {
                        for k in 0..100 {
                            // Every value written under k is k * 2.
                            for v in r.lookup(&k) {
                                assert_eq!(v, k * 2);
                            }
                        }
                        if tt != TableType::DuplicateBag {
                            assert!(r.len() <= 100, "{tt}: one object per (key, value)");
                        }
                    }
                });
            }
            for round in 0..50 {
                for k in 0..100 {
                    t.insert(k, k * 2);
                }
                if round % 2 == 0 {
                    t.select_delete(|k, _| k % 3 == 0);
                }
            }
            done.store(true, Ordering::Release);
        });
        let r = t.reader();
        assert_eq!(r.len(), t.len(), "{tt}");
        assert_eq!(r.to_vec().len(), t.to_vec().len(), "{tt}");
    }
}

/// The owner's lock elision holds across its two modes: with no other handle alive its
/// writes skip the locks; with a reader alive they take them while the owner's own reads
/// still skip them. Readers made after unlocked writes see them; readers reading during
/// locked writes only ever see whole objects; the owner sees its own writes at once.
#[test]
fn owner_alone_and_with_readers_agree() {
    const N: u64 = 2_000;
    for tt in TableType::ALL {
        let mut t: Table<u64, u64> = Table::new(tt);
        for round in 0..10u64 {
            // Alone: unlocked writes.
            for k in 0..N {
                t.insert(k, k * 2);
            }
            let r = t.reader();
            assert_eq!(r.lookup_with(&(N - 1), |vs| vs.to_vec()), vec![(N - 1) * 2]);
            let done = AtomicBool::new(false);
            thread::scope(|s| {
                let (r, done) = (r.clone(), &done);
                s.spawn(move || {
                    while !done.load(Ordering::Acquire) {
                        for k in 0..N {
                            r.lookup_with(&k, |vs| {
                                assert!(vs.len() <= 1, "{tt}: {vs:?}");
                                assert!(vs.iter().all(|&v| v == k * 2), "{tt}: {vs:?}");
                            });
                        }
                    }
                });
                // A reader is alive: locked writes, unlocked own reads.
                for k in 0..N {
                    if k % 2 == round % 2 {
                        assert_eq!(t.delete(&k), 1, "{tt}");
                        assert!(!t.member(&k), "{tt}");
                    } else {
                        t.update_counter(&k, 0, None).ok();
                        assert_eq!(t.lookup(&k), vec![k * 2], "{tt}");
                    }
                }
                done.store(true, Ordering::Release);
            });
            drop(r);
            // Alone again.
            assert_eq!(t.len() as u64, N / 2, "{tt}");
            t.select_delete(|_, _| true);
            assert!(t.is_empty(), "{tt}");
        }
    }
}

/// An `insert_many` is seen all-or-nothing: by `len`, by `to_vec`, and by lookups.
#[test]
fn insert_many_is_seen_all_or_nothing() {
    const N: u64 = 64;
    for (tt, rc) in TableType::ALL
        .into_iter()
        .flat_map(|t| [(t, false), (t, true)])
    {
        let opts = TableOptions::new().read_concurrency(rc);
        let mut t: Table<u64, u64> = Table::with_options(tt, opts);
        let stop = AtomicBool::new(false);
        let observations = AtomicUsize::new(0);
        thread::scope(|s| {
            for _ in 0..2 {
                let r: TableReader<u64, u64> = t.reader();
                let (stop, observations) = (&stop, &observations);
                s.spawn(move || {
                    while !stop.load(Ordering::Acquire) {
                        let n = r.len() as u64;
                        assert!(n.is_multiple_of(N), "{tt}: len {n} is part of a batch");
                        let v = r.to_vec();
                        assert!(
                            (v.len() as u64).is_multiple_of(N),
                            "{tt}: to_vec saw part of a batch"
                        );
                        observations.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
            let mut batch = 0;
            // Keep writing until the readers have looked many times (bounded by a deadline).
            let ok = wait_until(
                || {
                    t.insert_many((0..N).map(|i| (batch * N + i, batch)));
                    batch += 1;
                    if batch % 20 == 0 {
                        t.delete_all_objects();
                    }
                    observations.load(Ordering::Relaxed) > 200
                },
                Duration::from_secs(30),
            );
            stop.store(true, Ordering::Release);
            assert!(ok, "{tt}: readers made no progress");
        });
    }
}

/// Single-key reads are isolated from many-key writes: the writer replaces keys 0..64 in one
/// `insert_many`, writing key 0 first; a reader that sees round n under key 0 must then see at
/// least round n under key 63 (a torn batch would show n - 1).
#[test]
fn single_key_reads_never_see_half_a_batch() {
    for tt in [TableType::Set, TableType::OrderedSet] {
        for (public, rc) in [(false, false), (true, false), (false, true), (true, true)] {
            let opts = TableOptions::new().read_concurrency(rc);
            let owner: Table<u8, u64> = Table::with_options(tt, opts);
            let reader = owner.reader();
            let mut writer: Box<dyn FnMut(u64) + Send> = if public {
                let p = owner.into_public();
                Box::new(move |n| p.insert_many((0..64).map(|k| (k, n))))
            } else {
                let mut o = owner;
                Box::new(move |n| o.insert_many((0..64).map(|k| (k, n))))
            };
            writer(0);
            let stop = AtomicBool::new(false);
            let checks = AtomicUsize::new(0);
            thread::scope(|s| {
                let (stop, checks, reader) = (&stop, &checks, &reader);
                let watcher = s.spawn(move || {
                    while !stop.load(Ordering::Acquire) {
                        let v0 = reader.get(&0).expect("key 0");
                        let v1 = reader.get(&63).expect("key 63");
                        assert!(v1 >= v0, "{tt}: saw key 0 at {v0} but key 63 at {v1}");
                        let m = reader.lookup(&63);
                        assert_eq!(m.len(), 1);
                        checks.fetch_add(1, Ordering::Relaxed);
                    }
                });
                let mut n = 1;
                let ok = wait_until(
                    || {
                        writer(n);
                        n += 1;
                        // A panicked reader stops checking: end early, its panic fails the test.
                        checks.load(Ordering::Relaxed) > 100_000 || watcher.is_finished()
                    },
                    Duration::from_secs(30),
                );
                stop.store(true, Ordering::Release);
                assert!(ok, "{tt}: reader made no progress");
            });
        }
    }
}

/// A storm of every operation from several threads on a public table finishes (no deadlock)
/// and leaves counts that agree with each other.
#[test]
fn public_table_storm_has_no_deadlock_and_counts_agree() {
    for (tt, rc) in TableType::ALL
        .into_iter()
        .flat_map(|t| [(t, false), (t, true)])
    {
        let opts = TableOptions::new().read_concurrency(rc);
        let t: PublicTable<u16, u64> = PublicTable::with_options(tt, opts);
        let threads = 4;
        let barrier = Barrier::new(threads);
        let finished = Arc::new(AtomicUsize::new(0));
        thread::scope(|s| {
            for id in 0..threads as u64 {
                let mut t = t.clone();
                let barrier = &barrier;
                let finished = Arc::clone(&finished);
                s.spawn(move || {
                    barrier.wait();
                    for i in 0..2_000u64 {
                        let k = ((i * 7 + id * 13) % 64) as u16;
                        match i % 16 {
                            0 => t.insert(k, i),
                            1 => t.insert_many((0..4).map(|j| ((k + j) % 64, i))),
                            2 => drop(t.insert_new(k, i)),
                            3 => drop(t.insert_new_many([(k, i), ((k + 1) % 64, i)])),
                            4 => drop(t.lookup(&k)),
                            5 => drop(t.delete(&k)),
                            6 => drop(t.delete_object(&k, &i)),
                            7 => drop(t.take(&k)),
                            8 => drop(t.update_counter(&k, 1, Some(0))),
                            9 => drop(t.update(&k, |v| *v += 1)),
                            10 => drop(t.select_delete(|kk, _| *kk == k)),
                            11 => drop(t.select_count(|_, v| v % 2 == 0)),
                            12 => drop(t.fold(0u64, |a, _, v| a.wrapping_add(*v))),
                            13 => drop(t.first().and_then(|f| t.next(&f))),
                            14 => drop(t.to_vec()),
                            _ => {
                                if i % 256 == 15 {
                                    t.delete_all_objects()
                                } else {
                                    drop(WriteTable::insert(&mut t, k, i))
                                }
                            }
                        }
                    }
                    finished.fetch_add(1, Ordering::Release);
                });
            }
            let done = wait_until(
                || finished.load(Ordering::Acquire) == threads,
                Duration::from_secs(60),
            );
            assert!(done, "{tt}: storm did not finish: deadlock?");
        });
        // Quiescent: every way of counting agrees.
        let all = t.to_vec();
        let info = t.info();
        assert_eq!(all.len(), t.len(), "{tt}");
        assert_eq!(info.size, all.len(), "{tt}");
        let keys: BTreeSet<u16> = all.iter().map(|(k, _)| *k).collect();
        assert_eq!(info.keys, keys.len(), "{tt}");
        assert_eq!(ReadTable::len(&t.reader()).unwrap(), all.len(), "{tt}");
    }
}

#[test]
fn handles_have_the_documented_auto_traits() {
    fn send<T: Send>() {}
    fn send_sync_clone<T: Send + Sync + Clone>() {}
    send::<Table<u64, u64>>();
    send_sync_clone::<TableReader<u64, u64>>();
    send_sync_clone::<PublicTable<u64, u64>>();
}
