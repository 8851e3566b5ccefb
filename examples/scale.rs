//! The allocator's scale targets, measured: an empty pool of 10^7 frequencies in memory, and a
//! store holding 1,000,000 allocations reopened from disk.
//!
//! Run: `cargo run --release --example scale [ALLOCATIONS]` (default 1000000).

use std::sync::Arc;
use std::time::{Duration, Instant};

use freqalloc::freq::{
    Allocator, Durability, FreqError, FreqRange, Layout, Options, Routing, StoreConfig,
};

/// Resident memory of this process in MiB (Linux), or 0 where /proc is not there.
fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn main() -> Result<(), FreqError> {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let layout = Layout::split_evenly(&[FreqRange::new(0, 9_999_999)?], 8)?;

    let before = rss_mib();
    let alloc = Allocator::in_memory(layout.clone(), Routing::MostFree, None)?;
    println!(
        "empty pool of 10^7 over 8 shards in memory: {:.1} MiB resident ({:.1} MiB before)",
        rss_mib() - before,
        before
    );
    drop(alloc);

    let dir = tempfile::tempdir().map_err(|e| FreqError::Corrupt(e.to_string()))?;
    let config = StoreConfig {
        layout,
        strategy: Routing::MostFree,
        durability: Durability::Interval(Duration::from_millis(200)),
        client_limit: None,
        replicas: 1,
        cluster: None,
    };
    Allocator::init(dir.path(), config, false)?;
    let alloc = Allocator::open(dir.path(), Options::default())?;
    let t = Instant::now();
    let threads = 8u64;
    let done = Arc::new(std::sync::atomic::AtomicU64::new(0));
    std::thread::scope(|s| -> Result<(), FreqError> {
        let handles: Vec<_> = (0..threads)
            .map(|i| {
                let (alloc, done) = (alloc.clone(), done.clone());
                s.spawn(move || -> Result<(), FreqError> {
                    let name = format!("client-{i}");
                    for _ in 0..n / threads {
                        alloc.allocate(&name)?;
                        done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join()
                .map_err(|_| FreqError::Corrupt("a client thread panicked".into()))??;
        }
        Ok(())
    })?;
    let filled = t.elapsed();
    let held = alloc.status().allocations.len();
    alloc.stop();
    drop(alloc);
    println!(
        "allocated {held} frequencies in {:.2} s ({:.0}/s, 8 clients, interval durability)",
        filled.as_secs_f64(),
        held as f64 / filled.as_secs_f64()
    );

    let t = Instant::now();
    let alloc = Allocator::open(dir.path(), Options::default())?;
    let reopened = t.elapsed();
    let recovered: u64 = alloc.recovery().iter().map(|(n, _)| n).sum();
    println!(
        "reopened a store of {recovered} allocations in {:.3} s (target: under 2 s); check: {}",
        reopened.as_secs_f64(),
        if alloc.check()?.is_empty() {
            "consistent"
        } else {
            "VIOLATIONS"
        }
    );
    Ok(())
}
