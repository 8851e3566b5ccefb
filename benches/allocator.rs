//! Allocator throughput: allocate+deallocate pairs per second, by shard count, clients,
//! strategy, pool size and durability. Each benchmark id names its durability and client
//! (thread) count. `cargo bench --bench allocator`; a quick pass:
//! `cargo bench --bench allocator -- --warm-up-time 1 --measurement-time 2`.

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use freqalloc::freq::{Allocator, Durability, FreqRange, Layout, Options, Routing, StoreConfig};

/// Runs `pairs` allocate+deallocate pairs spread over `clients` threads; returns the wall time.
fn run_pairs(alloc: &Allocator, clients: usize, pairs: u64) -> Duration {
    let per = pairs.div_ceil(clients as u64);
    let barrier = Arc::new(Barrier::new(clients + 1));
    let threads: Vec<_> = (0..clients)
        .map(|i| {
            let (alloc, barrier) = (alloc.clone(), barrier.clone());
            std::thread::spawn(move || {
                let name = format!("c{i}");
                barrier.wait();
                for _ in 0..per {
                    let f = alloc.allocate(&name).expect("allocate");
                    alloc.deallocate(f, &name).expect("deallocate");
                }
            })
        })
        .collect();
    barrier.wait();
    let t = Instant::now();
    for h in threads {
        h.join().expect("client thread");
    }
    t.elapsed()
}

fn layout(size: u64, shards: usize) -> Layout {
    Layout::split_evenly(&[FreqRange::new(0, size - 1).expect("range")], shards).expect("layout")
}

fn in_memory(size: u64, shards: usize, strategy: Routing) -> Allocator {
    Allocator::in_memory(layout(size, shards), strategy, None).expect("allocator")
}

fn shards_and_clients(c: &mut Criterion) {
    let mut g = c.benchmark_group("pairs/none/shards_x_clients");
    g.throughput(Throughput::Elements(1));
    for shards in [1usize, 2, 4, 8] {
        let alloc = in_memory(100_000, shards, Routing::MostFree);
        for clients in [1usize, 4, 12, 64] {
            g.bench_with_input(
                BenchmarkId::new(format!("{shards}_shards"), format!("{clients}_clients")),
                &clients,
                |b, &clients| b.iter_custom(|iters| run_pairs(&alloc, clients, iters)),
            );
        }
    }
    g.finish();
}

fn strategies(c: &mut Criterion) {
    let mut g = c.benchmark_group("pairs/none/strategy_4_shards_4_clients");
    g.throughput(Throughput::Elements(1));
    for strategy in Routing::ALL {
        let alloc = in_memory(100_000, 4, strategy);
        g.bench_function(strategy.name(), |b| {
            b.iter_custom(|iters| run_pairs(&alloc, 4, iters))
        });
    }
    g.finish();
}

/// The pool-size target: no operation costs more at 10^7 frequencies than at 10^3.
fn pool_sizes(c: &mut Criterion) {
    let mut g = c.benchmark_group("pairs/none/pool_size_4_shards_1_client");
    g.throughput(Throughput::Elements(1));
    for size in [1_000u64, 100_000, 10_000_000] {
        let alloc = in_memory(size, 4, Routing::MostFree);
        g.bench_function(size.to_string(), |b| {
            b.iter_custom(|iters| run_pairs(&alloc, 1, iters))
        });
    }
    g.finish();
}

fn durabilities(c: &mut Criterion) {
    let mut g = c.benchmark_group("pairs/durable_8_shards");
    g.throughput(Throughput::Elements(1));
    g.sample_size(10);
    for (name, durability) in [
        ("sync", Durability::Sync),
        (
            "interval_100ms",
            Durability::Interval(Duration::from_millis(100)),
        ),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = StoreConfig {
            layout: layout(100_000, 8),
            strategy: Routing::MostFree,
            durability,
            client_limit: None,
            replicas: 1,
            cluster: None,
        };
        Allocator::init(dir.path(), config, false).expect("init");
        let alloc = Allocator::open(dir.path(), Options::default()).expect("open");
        for clients in [1usize, 4, 12, 64] {
            g.bench_with_input(
                BenchmarkId::new(name, format!("{clients}_clients")),
                &clients,
                |b, &clients| b.iter_custom(|iters| run_pairs(&alloc, clients, iters)),
            );
        }
        alloc.stop();
    }
    g.finish();
}

/// The cost of the second copy: 8 shards, one replica or a primary/backup pair, in `Sync` (both
/// replicas flush every batch) and `None` (the batch is still shipped to the backup in memory).
fn replication(c: &mut Criterion) {
    let mut g = c.benchmark_group("pairs/replication");
    g.throughput(Throughput::Elements(1));
    g.sample_size(10);
    for (dname, durability) in [("sync", Durability::Sync), ("none", Durability::None)] {
        for replicas in [1usize, 2] {
            let dir = tempfile::tempdir().expect("tempdir");
            let config = StoreConfig {
                layout: layout(100_000, 8),
                strategy: Routing::MostFree,
                durability,
                client_limit: None,
                replicas,
                cluster: None,
            };
            Allocator::init(dir.path(), config, false).expect("init");
            let alloc = Allocator::open(dir.path(), Options::default()).expect("open");
            for shard in 0..8 {
                alloc
                    .wait_for_sync(shard, Duration::from_secs(10))
                    .expect("pair in sync");
            }
            for clients in [1usize, 64] {
                g.bench_with_input(
                    BenchmarkId::new(
                        format!(
                            "{dname}_{replicas}_replica{}",
                            if replicas > 1 { "s" } else { "" }
                        ),
                        format!("{clients}_clients"),
                    ),
                    &clients,
                    |b, &clients| b.iter_custom(|iters| run_pairs(&alloc, clients, iters)),
                );
            }
            alloc.stop();
        }
    }
    g.finish();
}

criterion_group!(
    benches,
    shards_and_clients,
    strategies,
    pool_sizes,
    durabilities,
    replication
);
criterion_main!(benches);
