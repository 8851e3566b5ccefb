//! Disk-table benchmarks: insert / lookup / delete of 100,000 `u64` keys with a small value
//! for each table type (Manual durability, one `sync` at the end of each insert loop), durable
//! single writes in `EveryWrite`, and raw sled on the same workloads for reference.
//!
//! Run short (2 cores, other builds running):
//! `cargo bench --bench dets -- --warm-up-time 1 --measurement-time 2`

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use freqalloc::dets::{BatchOp, DiskTable, FlushPolicy, OpenOptions};
use freqalloc::{ReadTable, TableType, WriteTable};

const N: u64 = 100_000;

fn open(path: &Path, t: TableType, d: FlushPolicy) -> DiskTable<u64, u64> {
    DiskTable::open(path, OpenOptions::new(t).flush_policy(d)).expect("open")
}

fn filled(path: &Path, t: TableType) -> DiskTable<u64, u64> {
    let mut table = open(path, t, FlushPolicy::Manual);
    for k in 0..N {
        table.insert(k, k * 3).expect("insert");
    }
    table.sync().expect("sync");
    table
}

fn tables(c: &mut Criterion) {
    for t in TableType::ALL {
        let mut g = c.benchmark_group(format!("dets/{t}"));
        g.sample_size(10);
        g.throughput(Throughput::Elements(N));
        g.bench_function("insert_100k_then_sync", |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let dir = tempfile::tempdir().expect("dir");
                    let mut table = open(&dir.path().join("t"), t, FlushPolicy::Manual);
                    let start = Instant::now();
                    for k in 0..N {
                        table.insert(k, k * 3).expect("insert");
                    }
                    table.sync().expect("sync");
                    total += start.elapsed();
                }
                total
            })
        });
        let dir = tempfile::tempdir().expect("dir");
        let table = filled(&dir.path().join("t"), t);
        g.bench_function("lookup_100k", |b| {
            b.iter(|| {
                for k in 0..N {
                    black_box(table.lookup(&k).expect("lookup"));
                }
            })
        });
        drop(table);
        g.bench_function("delete_100k_then_sync", |b| {
            b.iter_batched(
                || {
                    let dir = tempfile::tempdir().expect("dir");
                    let table = filled(&dir.path().join("t"), t);
                    (dir, table)
                },
                |(dir, mut table)| {
                    for k in 0..N {
                        table.delete(&k).expect("delete");
                    }
                    table.sync().expect("sync");
                    (dir, table)
                },
                BatchSize::PerIteration,
            )
        });
        g.finish();
    }
}

fn durable(c: &mut Criterion) {
    let mut g = c.benchmark_group("dets/every_write");
    g.throughput(Throughput::Elements(1));
    let dir = tempfile::tempdir().expect("dir");
    let mut table = open(
        &dir.path().join("t"),
        TableType::Set,
        FlushPolicy::EveryWrite,
    );
    let mut k = 0u64;
    g.bench_function("insert_durable", |b| {
        b.iter(|| {
            k += 1;
            table.insert(k, k).expect("insert");
        })
    });
    // Group commit: 32 writes share one flush.
    let mut k2 = 0u64;
    g.throughput(Throughput::Elements(32));
    g.bench_function("apply_batch_32_durable", |b| {
        b.iter(|| {
            let ops: Vec<BatchOp<u64, u64>> = (0..32)
                .map(|_| {
                    k2 += 1;
                    BatchOp::Insert(N + k2, k2)
                })
                .collect();
            table.apply_batch(ops).expect("batch");
        })
    });
    g.finish();
    // The disk's own flush rate, for reference: write 8 bytes and fdatasync.
    let mut g = c.benchmark_group("reference/fdatasync");
    let f = std::fs::File::create(dir.path().join("raw")).expect("file");
    g.bench_function("write_8_bytes_and_sync_data", |b| {
        use std::io::Write;
        let mut f = &f;
        b.iter(|| {
            f.write_all(&[7u8; 8]).expect("write");
            f.sync_data().expect("sync");
        })
    });
    g.finish();
}

fn raw_sled(c: &mut Criterion) {
    let mut g = c.benchmark_group("reference/sled");
    g.sample_size(10);
    g.throughput(Throughput::Elements(N));
    let config = |p: &Path| sled::Config::new().path(p).flush_every_ms(None);
    g.bench_function("insert_100k_then_flush", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let dir = tempfile::tempdir().expect("dir");
                let db = config(dir.path()).open().expect("open");
                let start = Instant::now();
                for k in 0..N {
                    db.insert(k.to_be_bytes(), &(k * 3).to_le_bytes())
                        .expect("insert");
                }
                db.flush().expect("flush");
                total += start.elapsed();
            }
            total
        })
    });
    let dir = tempfile::tempdir().expect("dir");
    let db = config(dir.path()).open().expect("open");
    for k in 0..N {
        db.insert(k.to_be_bytes(), &(k * 3).to_le_bytes())
            .expect("insert");
    }
    db.flush().expect("flush");
    g.bench_function("get_100k", |b| {
        b.iter(|| {
            for k in 0..N {
                black_box(db.get(k.to_be_bytes()).expect("get"));
            }
        })
    });
    g.throughput(Throughput::Elements(1));
    let mut k = N;
    g.bench_function("insert_and_flush", |b| {
        b.iter(|| {
            k += 1;
            db.insert(k.to_be_bytes(), &k.to_le_bytes())
                .expect("insert");
            db.flush().expect("flush");
        })
    });
    g.finish();
}

criterion_group!(benches, tables, durable, raw_sled);
criterion_main!(benches);
