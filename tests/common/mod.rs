//! Helpers shared by the integration tests. Each test binary uses a subset.
#![allow(dead_code)]

pub mod cli;
pub mod disk;
pub mod history;
pub mod model;

use std::path::Path;
use std::time::{Duration, Instant};

use freqalloc::freq::{parse_pool, Allocator, Durability, Layout, Routing, StoreConfig};

/// Creates a store at `store` over `pool` (one shard per listed range, most-free, no client
/// limit) with `durability` and `replicas`.
pub fn init_store(store: &Path, pool: &str, durability: Durability, replicas: usize) {
    let config = StoreConfig {
        layout: Layout::one_shard_per_range(&parse_pool(pool).unwrap()).unwrap(),
        strategy: Routing::MostFree,
        durability,
        client_limit: None,
        replicas,
        cluster: None,
    };
    Allocator::init(store, config, false).unwrap();
}

/// Polls `cond` until it holds or `timeout` passes; returns whether it held. Yields between
/// polls (never sleeps to synchronise: the deadline only bounds a failure).
pub fn wait_until(mut cond: impl FnMut() -> bool, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::yield_now();
    }
}

/// Proptest case count: `PROPTEST_CASES` if set, else `default`.
pub fn proptest_cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// A small deterministic generator (splitmix64) for the crash tests' kill points: the same seed
/// gives the same run.
pub struct Rng(pub u64);

impl Rng {
    /// The next pseudo-random number.
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The environment variable `name` as a number, or `default` when unset or not a number.
pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// The crash tests' seed: `FREQALLOC_CRASH_SEED`, or a fresh one from the clock and the process
/// id (the tests print it, so a failing run can be replayed).
pub fn crash_seed() -> u64 {
    std::env::var("FREQALLOC_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
            nanos ^ (u64::from(std::process::id()) << 32)
        })
}
