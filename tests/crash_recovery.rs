//! Crash test of the frequency allocator: a child process runs a storm of clients allocating and
//! deallocating on a store and reports every call on its stdout; the parent SIGKILLs it at a
//! random moment, reopens the store, and checks it against what was acknowledged.
//!
//! The child writes, one flushed line each (under one lock, so lines never interleave):
//! `a C` before client `C` calls allocate, `A C F` after it returned `Ok(F)`; `d C F` before it
//! deallocates `F`, `D C F` once the frequency is known to be free of it (the call returned
//! `Ok`, or a retry after a `ShardFailed` found it already freed); `r C` before it releases
//! everything it holds, `X C` once that returned.
//!
//! In `Sync` durability, after the kill and a reopen:
//! - an acknowledged allocation (`A c f`) not followed by an acknowledged deallocation of `f` by
//!   `c` is held by `c`, unless `c` was deallocating `f` when killed (`d c f`, no `D`);
//! - any other holding (a frequency the acknowledgements say is free, or held by someone else)
//!   is explained only by an allocation of its owner that was never acknowledged: per client, at
//!   most as many such holdings as `a` lines without an `A`;
//! - no frequency is held twice, free plus allocated equals the pool, and `check()` is empty.
//!
//! Three rounds run with `replicas: 2` under the same `Sync` promises, one of them killing the
//! primary of a shard (a failover) in the child before the kill; after the reopen each pair is
//! caught up and `check()` also compares the two replicas.
//!
//! One round injects a shard panic in the child (and waits for the restart) before the kill. In
//! `Interval` durability there is no durability promise, so those rounds check consistency
//! only.
//!
//! A `harness = false` test: the binary re-runs itself as the child (`std::env::current_exe`)
//! with `FREQALLOC_CRASH_CHILD` set. Iterations: `FREQALLOC_CRASH_ITERS` (default 4) `Sync`
//! rounds, plus one panic round and two `Interval` rounds; seed: `FREQALLOC_CRASH_SEED`
//! (default from time and pid, printed). Prints `N passed, M failed` and exits non-zero on
//! failure.

mod common;

use common::{crash_seed, env_u64, Rng};

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use freqalloc::freq::{
    parse_pool, Allocator, Durability, Fault, FreqError, FreqRange, InitOutcome, Layout, Options,
    Routing, StoreConfig,
};

const CHILD_ENV: &str = "FREQALLOC_CRASH_CHILD";
const MODE_ENV: &str = "FREQALLOC_CRASH_MODE";
const SEED_ENV: &str = "FREQALLOC_CRASH_SEED_CHILD";
const POOL: &str = "0-999";
const SHARDS: usize = 4;
const CLIENTS: usize = 4;
const HOLD: usize = 16;

/// splitmix64: a tiny deterministic generator.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Sync,
    Panic,
    Interval,
    /// `Sync` with `replicas: 2`.
    Replicated,
    /// `Sync` with `replicas: 2`, the primary of shard 1 killed (a failover) before the kill.
    ReplicatedPanic,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Sync => "sync",
            Mode::Panic => "sync+panic",
            Mode::Interval => "interval",
            Mode::Replicated => "sync+replicas",
            Mode::ReplicatedPanic => "sync+replicas+failover",
        }
    }
    fn panics(self) -> bool {
        matches!(self, Mode::Panic | Mode::ReplicatedPanic)
    }
    fn replicas(self) -> usize {
        match self {
            Mode::Replicated | Mode::ReplicatedPanic => 2,
            _ => 1,
        }
    }
    fn parse(s: &str) -> Option<Mode> {
        [
            Mode::Sync,
            Mode::Panic,
            Mode::Interval,
            Mode::Replicated,
            Mode::ReplicatedPanic,
        ]
        .into_iter()
        .find(|m| m.name() == s)
    }
    fn durability(self) -> Durability {
        match self {
            Mode::Sync | Mode::Panic | Mode::Replicated | Mode::ReplicatedPanic => Durability::Sync,
            Mode::Interval => Durability::Interval(Duration::from_millis(20)),
        }
    }
}

fn store_config(mode: Mode) -> Result<StoreConfig, String> {
    let ranges = parse_pool(POOL).map_err(|e| e.to_string())?;
    Ok(StoreConfig {
        layout: Layout::split_evenly(&ranges, SHARDS).map_err(|e| e.to_string())?,
        strategy: Routing::PowerOfTwoChoices,
        durability: mode.durability(),
        client_limit: None,
        replicas: mode.replicas(),
        cluster: None,
    })
}

// ---------------------------------------------------------------------------------------------
// The child

/// Writes one line and flushes it; a closed pipe (the parent is gone) ends the child.
fn emit(out: &Mutex<std::io::Stdout>, line: std::fmt::Arguments<'_>) {
    let Ok(mut out) = out.lock() else {
        std::process::exit(0)
    };
    if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
        std::process::exit(0);
    }
}

fn fatal(what: &str, e: &FreqError) -> ! {
    eprintln!("child: {what}: {e}");
    std::process::exit(3);
}

fn client_storm(
    alloc: &Allocator,
    out: &Mutex<std::io::Stdout>,
    name: &str,
    seed: u64,
    ops: &AtomicU64,
) {
    let mut rng = Rng(seed);
    let mut held: Vec<u64> = Vec::new();
    // Bounded, so a child the parent forgot cannot run forever.
    for _ in 0..2_000_000 {
        if !held.is_empty() && rng.below(40) == 0 {
            emit(out, format_args!("r {name}"));
            let mut retried = false;
            loop {
                match alloc.release_all(name) {
                    Ok(freed) => {
                        // It frees exactly what the client holds (a part of it if an earlier
                        // attempt failed after freeing some).
                        let mut mine = held.clone();
                        mine.sort_unstable();
                        let subset = freed.iter().all(|f| mine.contains(f));
                        if !subset || (!retried && freed != mine) {
                            eprintln!("child: {name} released {freed:?}, it held {mine:?}");
                            std::process::exit(3);
                        }
                        emit(out, format_args!("X {name}"));
                        held.clear();
                        break;
                    }
                    // Idempotent: retried until it answers.
                    Err(FreqError::ShardFailed { .. }) => retried = true,
                    Err(e) => fatal("release_all", &e),
                }
            }
        } else if held.is_empty() || (held.len() < HOLD && rng.below(2) == 0) {
            emit(out, format_args!("a {name}"));
            match alloc.allocate(name) {
                Ok(f) => {
                    emit(out, format_args!("A {name} {f}"));
                    held.push(f);
                }
                // May or may not have happened; the parent counts the unacknowledged `a`.
                Err(FreqError::ShardFailed { .. }) => {}
                Err(e) => fatal("allocate", &e),
            }
        } else {
            let f = held.swap_remove(rng.below(held.len() as u64) as usize);
            emit(out, format_args!("d {name} {f}"));
            loop {
                match alloc.deallocate(f, name) {
                    // Freed now, or by an earlier attempt whose reply was lost.
                    Ok(()) | Err(FreqError::NotAllocated(_) | FreqError::NotOwner { .. }) => {
                        emit(out, format_args!("D {name} {f}"));
                        break;
                    }
                    Err(FreqError::ShardFailed { .. }) => continue,
                    Err(e) => fatal("deallocate", &e),
                }
            }
        }
        ops.fetch_add(1, Ordering::Relaxed);
    }
}

fn child(dir: &Path, mode: Mode, seed: u64) -> Result<(), FreqError> {
    // The injected panic is expected: one line, not a backtrace.
    std::panic::set_hook(Box::new(|info| {
        eprintln!("child: panic (injected): {info}")
    }));
    let alloc = Allocator::open(dir, Options::default())?;
    let out = Arc::new(Mutex::new(std::io::stdout()));
    let ops = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let (alloc, out, ops) = (alloc.clone(), Arc::clone(&out), Arc::clone(&ops));
            std::thread::spawn(move || {
                client_storm(&alloc, &out, &format!("c{i}"), seed ^ (i as u64 + 1), &ops)
            })
        })
        .collect();
    if mode.panics() {
        while ops.load(Ordering::Relaxed) < 100 {
            std::thread::yield_now();
        }
        let generation = alloc.shard_generation(1);
        // The injecting call fails by design: the shard dies handling it.
        let _ = alloc.inject_fault(1, Fault::Panic);
        alloc.wait_for_shard_generation(1, generation + 1, Duration::from_secs(30))?;
        emit(&out, format_args!("R"));
    }
    for h in handles {
        let _ = h.join();
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The parent

/// What the acknowledgements say.
#[derive(Default, Debug)]
struct History {
    /// Frequency → the client whose acknowledged allocation of it was not followed by its
    /// acknowledged deallocation.
    holder: BTreeMap<u64, String>,
    /// (client, frequency) deallocations started and not acknowledged.
    deallocating: BTreeSet<(String, u64)>,
    /// Per client: allocations started and not acknowledged.
    unacked: BTreeMap<String, u64>,
    /// Per client: what it held when it started a `release_all` not yet acknowledged.
    releasing: BTreeMap<String, Vec<u64>>,
    acks: u64,
}

impl History {
    fn apply(&mut self, line: &str) -> Result<(), String> {
        let parts: Vec<&str> = line.split(' ').collect();
        let freq = |i: usize| -> Result<u64, String> {
            parts
                .get(i)
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| format!("bad child line {line:?}"))
        };
        match parts.as_slice() {
            ["R"] => {}
            ["r", c] => {
                let held: Vec<u64> = self
                    .holder
                    .iter()
                    .filter(|(_, o)| o.as_str() == *c)
                    .map(|(f, _)| *f)
                    .collect();
                for f in &held {
                    self.deallocating.insert((c.to_string(), *f));
                }
                self.releasing.insert(c.to_string(), held);
            }
            ["X", c] => {
                for f in self.releasing.remove(*c).unwrap_or_default() {
                    self.deallocating.remove(&(c.to_string(), f));
                    if self.holder.get(&f).map(String::as_str) == Some(*c) {
                        self.holder.remove(&f);
                    }
                }
                self.acks += 1;
            }
            ["a", c] => *self.unacked.entry(c.to_string()).or_default() += 1,
            ["A", c, _] => {
                let f = freq(2)?;
                let n = self.unacked.entry(c.to_string()).or_default();
                *n = n.checked_sub(1).ok_or(format!("A without a: {line:?}"))?;
                // A later allocation of f may be acknowledged before the previous holder's
                // deallocation is (both in flight together); the later one wins.
                self.holder.insert(f, c.to_string());
                self.acks += 1;
            }
            ["d", c, _] => {
                self.deallocating.insert((c.to_string(), freq(2)?));
            }
            ["D", c, _] => {
                let f = freq(2)?;
                self.deallocating.remove(&(c.to_string(), f));
                if self.holder.get(&f).map(String::as_str) == Some(*c) {
                    self.holder.remove(&f);
                }
                self.acks += 1;
            }
            _ => return Err(format!("bad child line {line:?}")),
        }
        Ok(())
    }
}

/// Reads one complete line (ending in a newline); `None` at end of file or on a torn line.
fn read_line(r: &mut impl BufRead) -> Result<Option<String>, String> {
    let mut buf = Vec::new();
    let n = r.read_until(b'\n', &mut buf).map_err(|e| e.to_string())?;
    if n == 0 || buf.last() != Some(&b'\n') {
        return Ok(None);
    }
    buf.pop();
    String::from_utf8(buf).map(Some).map_err(|e| e.to_string())
}

fn round(dir: &Path, mode: Mode, seed: u64, kill_after: u64) -> Result<String, String> {
    let config = store_config(mode)?;
    let pool_size = config.layout.pool_size();
    match Allocator::init(dir, config, false) {
        Ok(InitOutcome::Created) => {}
        other => return Err(format!("init: {other:?}")),
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = Command::new(exe)
        .env(CHILD_ENV, dir)
        .env(MODE_ENV, mode.name())
        .env(SEED_ENV, seed.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let stdout = child.stdout.take().ok_or("no child stdout")?;
    let mut reader = BufReader::new(stdout);
    let mut history = History::default();
    // In the panic round the kill point is counted from the restart.
    let mut counting = !mode.panics();
    let mut counted = 0u64;
    while counted < kill_after {
        let Some(line) = read_line(&mut reader)? else {
            let _ = child.kill();
            let status = child.wait().map_err(|e| e.to_string())?;
            return Err(format!("child ended before the kill ({status})"));
        };
        let before = history.acks;
        history.apply(&line)?;
        if line == "R" {
            counting = true;
        }
        if counting {
            counted += history.acks - before;
        }
    }
    // SIGKILL on unix: no destructor, no flush, no clean close.
    child.kill().map_err(|e| e.to_string())?;
    let status = child.wait().map_err(|e| e.to_string())?;
    // Lines written before the kill are acknowledgements too.
    while let Some(line) = read_line(&mut reader)? {
        history.apply(&line)?;
    }
    let alloc = Allocator::open(dir, Options::default())
        .map_err(|e| format!("reopen after the kill failed: {e}"))?;
    // A replicated store's pairs catch up first, so that check() compares both replicas.
    for shard in 0..alloc.shard_count() {
        alloc
            .wait_for_sync(shard, Duration::from_secs(30))
            .map_err(|e| format!("shard {shard} not in sync after the reopen: {e}"))?;
    }
    let mut problems = alloc.check().map_err(|e| format!("check: {e}"))?;
    let status_now = alloc.status();
    let free: u64 = status_now.free.iter().map(FreqRange::len).sum();
    if free + status_now.allocations.len() as u64 != pool_size {
        problems.push(format!(
            "free {free} + allocated {} != pool {pool_size}",
            status_now.allocations.len()
        ));
    }
    let mut actual: BTreeMap<u64, String> = BTreeMap::new();
    for (f, a) in &status_now.allocations {
        if actual.insert(*f, a.owner.clone()).is_some() {
            problems.push(format!("{f} is listed twice"));
        }
    }
    if mode != Mode::Interval {
        problems.extend(verify_acknowledged(&history, &actual));
    }
    let summary = format!(
        "{} acks, {} held before the kill by the acks, {} held after ({status})",
        history.acks,
        history.holder.len(),
        actual.len()
    );
    if problems.is_empty() {
        Ok(summary)
    } else {
        Err(format!("{summary}\n  {}", problems.join("\n  ")))
    }
}

/// The `Sync` promises (module docs); returns the violations.
fn verify_acknowledged(history: &History, actual: &BTreeMap<u64, String>) -> Vec<String> {
    let mut problems = Vec::new();
    for (f, c) in &history.holder {
        let in_flight = history.deallocating.contains(&(c.clone(), *f));
        match actual.get(f) {
            Some(o) if o == c => {}
            _ if in_flight => {}
            now => problems.push(format!(
                "acknowledged allocation of {f} to {c} lost: now {now:?}"
            )),
        }
    }
    let mut unexplained: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for (f, o) in actual {
        if history.holder.get(f) != Some(o) {
            unexplained.entry(o.as_str()).or_default().push(*f);
        }
    }
    for (o, fs) in unexplained {
        let allowed = history.unacked.get(o).copied().unwrap_or(0);
        if fs.len() as u64 > allowed {
            problems.push(format!(
                "{o} holds {fs:?} that the acknowledgements say it does not hold; only \
                 {allowed} of its allocations were unacknowledged"
            ));
        }
    }
    problems
}

fn main() {
    if let Some(dir) = std::env::var_os(CHILD_ENV) {
        let mode = std::env::var(MODE_ENV)
            .ok()
            .and_then(|m| Mode::parse(&m))
            .unwrap_or(Mode::Sync);
        let seed = std::env::var(SEED_ENV)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(1);
        if let Err(e) = child(Path::new(&dir), mode, seed) {
            eprintln!("child error: {e}");
            std::process::exit(2);
        }
        return;
    }
    let iters = env_u64("FREQALLOC_CRASH_ITERS", 4);
    let seed = crash_seed();
    println!("allocator crash test: seed {seed} (FREQALLOC_CRASH_SEED), {iters} sync iterations");
    let mut rng = Rng(seed);
    let mut rounds: Vec<Mode> = (0..iters).map(|_| Mode::Sync).collect();
    rounds.extend([
        Mode::Panic,
        Mode::Interval,
        Mode::Interval,
        Mode::Replicated,
        Mode::Replicated,
        Mode::ReplicatedPanic,
    ]);
    let (mut passed, mut failed) = (0u32, 0u32);
    for (i, mode) in rounds.into_iter().enumerate() {
        let round_seed = rng.next();
        let kill_after = 10 + rng.below(1500);
        let name = format!(
            "round {i} ({}, seed {round_seed}, kill after {kill_after} acks)",
            mode.name()
        );
        let result = tempfile::tempdir()
            .map_err(|e| e.to_string())
            .and_then(|d| round(&d.path().join("store"), mode, round_seed, kill_after));
        match result {
            Ok(msg) => {
                passed += 1;
                println!("ok   {name}: {msg}");
            }
            Err(msg) => {
                failed += 1;
                println!("FAIL {name}: {msg}");
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    if failed > 0 {
        std::process::exit(1);
    }
}
