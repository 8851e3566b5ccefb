//! Model checks (loom) of the `unsafe` code in `ets`: the owner's unlocked reads
//! ([`super::access::Access::owner`]), the sole owner's unlocked writes behind `Arc::get_mut`
//! ([`super::access::Writer::Sole`], where loom's `Arc` stands in for std's), and the reader
//! slots of `read_concurrency` (`super::lock`).
//!
//! Run: `RUSTFLAGS="--cfg loom" cargo test --release --lib ets::loom` (a separate target
//! directory, e.g. `CARGO_TARGET_DIR=target/loom`, keeps the normal build warm). loom is a
//! dev-dependency, so the loom code paths are `cfg(all(test, loom))`: only this crate's own
//! unit-test build switches to them; any other build with `--cfg loom` gets the real code.
//!
//! Loom runs every interleaving (up to a preemption bound) of the threads below and reports
//! any two accesses to a table's data that no lock or reference count orders. The hash
//! types' data sits in dashmap's shards, whose locks loom cannot see; `hashed.rs` keeps, under
//! `cfg(loom)`, a model lock and a model cell per shard, taken and touched on exactly the
//! paths that take dashmap's lock or touch a shard, so a skipped lock that a write could
//! race shows up here. Each test also checks the table's contents at the end.

use loom::thread;

use super::{PublicTable, Table, TableOptions};
use crate::table::TableType;

/// Every interleaving with at most 3 preemptions (`LOOM_MAX_PREEMPTIONS` overrides; unset,
/// the whole module runs in seconds).
fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    if std::env::var_os("LOOM_MAX_PREEMPTIONS").is_none() {
        builder.preemption_bound = Some(3);
    }
    builder.check(f);
}

/// The owner writes and reads (without locks) while a reader on another thread reads and
/// then drops its handle: the owner's writes run through the locks while the reader lives
/// and through `&mut` (no lock) once `Arc::get_mut` sees it gone. Readers never see half of
/// the batch.
fn owner_and_reader(table_type: TableType, read_concurrency: bool) {
    model(move || {
        let mut t: Table<u64, u64> = Table::with_options(
            table_type,
            TableOptions::new().read_concurrency(read_concurrency),
        );
        t.insert(1, 10);
        let r = t.reader();
        let reader = thread::spawn(move || {
            let one = r.lookup(&1);
            // One traversal: sees all of the batch or none of it.
            let batch = r.select_count(|k, _| *k == 2 || *k == 3);
            let n = r.len();
            drop(r);
            (one, batch, n)
        });
        t.insert(1, 11);
        assert!(t.lookup(&1).contains(&11));
        t.insert_many([(2, 20), (3, 30)]);
        assert_eq!(t.len(), if table_type == TableType::Bag { 4 } else { 3 });
        t.delete(&1);
        assert!(!t.member(&1));
        let (one, batch, n) = reader.join().expect("reader");
        assert!(one.iter().all(|v| *v == 10 || *v == 11), "{one:?}");
        assert!(batch == 0 || batch == 2, "{batch}");
        assert!(n <= 4, "{n}");
        t.insert(4, 40);
        assert_eq!(t.get(&4), Some(40));
    });
}

#[test]
fn set_owner_and_reader() {
    owner_and_reader(TableType::Set, false);
}

#[test]
fn bag_owner_and_reader() {
    owner_and_reader(TableType::Bag, false);
}

#[test]
fn ordered_set_owner_and_reader_with_reader_slots() {
    owner_and_reader(TableType::OrderedSet, true);
}

/// Two public handles write and read the same keys from two threads: every access locks.
#[test]
fn public_writers_and_readers() {
    model(|| {
        let t: PublicTable<u64, u64> = PublicTable::new(TableType::Set);
        let u = t.clone();
        let other = thread::spawn(move || {
            u.insert(1, 1);
            u.insert_many([(2, 2), (3, 3)]);
            u.get(&1)
        });
        t.insert(1, 100);
        let seen = t.select_count(|_, _| true);
        let got = other.join().expect("writer");
        assert!(got == Some(1) || got == Some(100), "{got:?}");
        assert!(seen <= 3, "{seen}");
        assert_eq!(t.len(), 3);
    });
}

/// The reader-slot lock alone: a writer keeps two counters equal; a reader must never see
/// them differ, and the writes are exclusive.
#[test]
fn reader_slots_exclude_the_writer() {
    use super::lock::Lock;
    use loom::sync::Arc;

    model(|| {
        let lock = Arc::new(Lock::new((0u64, 0u64), true));
        let l2 = Arc::clone(&lock);
        let writer = thread::spawn(move || {
            let mut g = l2.write();
            g.0 += 1;
            g.1 += 1;
        });
        {
            let g = lock.read();
            assert_eq!(g.0, g.1);
        }
        {
            let mut g = lock.write();
            g.0 += 1;
            g.1 += 1;
        }
        writer.join().expect("writer");
        assert_eq!(*lock.read(), (2, 2));
    });
}
