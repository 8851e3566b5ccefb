//! Crash test of the disk tables: a child process writes in `EveryWrite` durability and reports
//! every acknowledged write on its stdout; the parent SIGKILLs it at a random moment, reopens
//! the table, and checks that it holds exactly the effect of the acknowledged operations, or of
//! those plus the one in flight, applied whole (so many-object inserts, mixed batches and
//! `from_ets` are all-or-nothing).
//!
//! A `harness = false` test: the binary re-runs itself as the child (`std::env::current_exe`)
//! with `FREQALLOC_DETS_CRASH_CHILD` set. Iterations: `FREQALLOC_CRASH_ITERS` (default 5);
//! seed: `FREQALLOC_CRASH_SEED` (default from time and pid, printed). Prints `N passed, M
//! failed` and exits non-zero on failure.

mod common;

use common::{crash_seed, env_u64, Rng};

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use freqalloc::dets::{BatchOp, DetsError, DiskTable, FlushPolicy, OpenOptions};
use freqalloc::{ReadTable, TableType, WriteTable};

const CHILD_ENV: &str = "FREQALLOC_DETS_CRASH_CHILD";
const KEYS: u64 = 48;

/// splitmix64: a tiny deterministic generator both processes run from the same seed.

#[derive(Debug, Clone)]
enum Op {
    Insert(u64, u64),
    Delete(u64),
    InsertMany(Vec<(u64, u64)>),
    Batch(Vec<BatchOp<u64, u64>>),
    /// `from_ets` of an in-memory table holding these objects.
    Replace(Vec<(u64, u64)>),
}

/// The `i`-th operation of the sequence of `seed` is `ops(seed).nth(i)`.
fn ops(seed: u64) -> impl Iterator<Item = Op> {
    let mut rng = Rng(seed);
    let mut stamp = 0u64;
    std::iter::from_fn(move || {
        stamp += 1;
        let op = match rng.below(11) {
            10 => {
                let n = rng.below(20);
                Op::Replace((0..n).map(|j| (rng.below(KEYS), stamp * 100 + j)).collect())
            }
            0..=4 => Op::Insert(rng.below(KEYS), stamp),
            5..=6 => Op::Delete(rng.below(KEYS)),
            7..=8 => {
                let n = 2 + rng.below(12);
                Op::InsertMany((0..n).map(|j| (rng.below(KEYS), stamp * 100 + j)).collect())
            }
            _ => {
                let n = 2 + rng.below(8);
                Op::Batch(
                    (0..n)
                        .map(|j| {
                            if rng.below(3) == 0 {
                                BatchOp::Delete(rng.below(KEYS))
                            } else {
                                BatchOp::Insert(rng.below(KEYS), stamp * 100 + j)
                            }
                        })
                        .collect(),
                )
            }
        };
        Some(op)
    })
}

/// The model: each key's objects in insertion order, with the table type's semantics.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Model(BTreeMap<u64, Vec<u64>>);

impl Model {
    fn insert(&mut self, t: TableType, k: u64, v: u64) {
        let objs = self.0.entry(k).or_default();
        match t {
            TableType::Set | TableType::OrderedSet => *objs = vec![v],
            TableType::Bag if objs.contains(&v) => {}
            TableType::Bag | TableType::DuplicateBag => objs.push(v),
        }
    }
    fn apply(&mut self, t: TableType, op: &Op) {
        match op {
            Op::Insert(k, v) => self.insert(t, *k, *v),
            Op::Delete(k) => {
                self.0.remove(k);
            }
            Op::InsertMany(objs) => objs.iter().for_each(|(k, v)| self.insert(t, *k, *v)),
            Op::Replace(objs) => {
                self.0.clear();
                objs.iter().for_each(|(k, v)| self.insert(t, *k, *v));
            }
            Op::Batch(bops) => {
                for b in bops {
                    match b {
                        BatchOp::Insert(k, v) => self.insert(t, *k, *v),
                        BatchOp::Delete(k) => {
                            self.0.remove(k);
                        }
                    }
                }
            }
        }
    }
}

fn options(t: TableType) -> OpenOptions {
    OpenOptions::new(t).flush_policy(FlushPolicy::EveryWrite)
}

fn child(dir: &str) -> Result<(), DetsError> {
    let mode = std::env::var("FREQALLOC_DETS_CRASH_MODE").unwrap_or_default();
    let t: TableType = std::env::var("FREQALLOC_DETS_CRASH_TYPE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(TableType::Set);
    let seed: u64 = std::env::var("FREQALLOC_DETS_CRASH_SEED_CHILD")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut table: DiskTable<u64, u64> = DiskTable::open(dir, options(t))?;
    let mut out = std::io::stdout().lock();
    if mode == "hold" {
        let _ = writeln!(out, "open");
        let _ = out.flush();
        // Hold the table until the parent kills us (or closes our stdin).
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
        return Ok(());
    }
    for (i, op) in ops(seed).enumerate() {
        match op {
            Op::Insert(k, v) => table.insert(k, v)?,
            Op::Delete(k) => {
                table.delete(&k)?;
            }
            Op::InsertMany(objs) => table.insert_many(objs)?,
            Op::Batch(bops) => table.apply_batch(bops)?,
            Op::Replace(objs) => {
                let mut mem = freqalloc::ets::Table::new(t);
                mem.insert_many(objs);
                table.from_ets(&mem)?;
            }
        }
        // One line per acknowledged write, flushed before the next write starts.
        if writeln!(out, "ack {i}").and_then(|_| out.flush()).is_err() {
            return Ok(());
        }
    }
    Ok(())
}

/// The table's contents as a model.
fn contents(table: &DiskTable<u64, u64>) -> Result<Model, DetsError> {
    let mut m = Model::default();
    for (k, v) in table.to_vec()? {
        m.0.entry(k).or_default().push(v);
    }
    Ok(m)
}

/// One kill-and-verify round; `Err` describes the failure.
fn round(
    seed: u64,
    t: TableType,
    kill_after: u64,
    delay: Duration,
    dir: &Path,
) -> Result<String, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = Command::new(exe)
        .env(CHILD_ENV, dir)
        .env("FREQALLOC_DETS_CRASH_TYPE", t.erlang_name())
        .env("FREQALLOC_DETS_CRASH_SEED_CHILD", seed.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let stdout = child.stdout.take().ok_or("no child stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let mut acks = 0u64;
    while acks < kill_after {
        match lines.next() {
            Some(Ok(l)) if l.starts_with("ack ") => acks += 1,
            Some(Ok(l)) => return Err(format!("unexpected child line {l:?}")),
            Some(Err(e)) => return Err(e.to_string()),
            None => break,
        }
    }
    // Land the kill at a random point inside the next write: busy-wait (not a sleep: nothing
    // is being waited for, the delay only moves the kill).
    let spin = Instant::now();
    while spin.elapsed() < delay {
        std::hint::spin_loop();
    }
    // SIGKILL on unix: no destructor, no flush, no clean close.
    child.kill().map_err(|e| e.to_string())?;
    let status = child.wait().map_err(|e| e.to_string())?;
    // Acks written before the kill are acknowledged too. A torn last line has no newline:
    // `lines` still yields it, so only count complete "ack N" lines that parse.
    for l in lines.map_while(Result::ok) {
        if l.strip_prefix("ack ")
            .and_then(|n| n.parse::<u64>().ok())
            .is_some()
        {
            acks += 1;
        }
    }
    let table: DiskTable<u64, u64> =
        DiskTable::open(dir, options(t)).map_err(|e| format!("reopen after kill failed: {e}"))?;
    let got = contents(&table).map_err(|e| e.to_string())?;
    let mut model = Model::default();
    let mut all = ops(seed);
    for op in all.by_ref().take(acks as usize) {
        model.apply(t, &op);
    }
    if got == model {
        return Ok(format!("{acks} acks, in-flight op not applied ({status})"));
    }
    let in_flight = all.next().ok_or("op sequence ended")?;
    let mut with_next = model.clone();
    with_next.apply(t, &in_flight);
    if got == with_next {
        return Ok(format!("{acks} acks, in-flight op applied ({status})"));
    }
    Err(format!(
        "after {acks} acks the table is neither the acknowledged state nor that plus the \
         in-flight op {in_flight:?}\n  table:    {got:?}\n  expected: {model:?}"
    ))
}

/// A table open in another process is `Locked`, naming the path; the kill releases it.
fn locked_round(dir: &Path) -> Result<String, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = Command::new(exe)
        .env(CHILD_ENV, dir)
        .env("FREQALLOC_DETS_CRASH_MODE", "hold")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let stdout = child.stdout.take().ok_or("no child stdout")?;
    let mut first = String::new();
    BufReader::new(stdout)
        .read_line(&mut first)
        .map_err(|e| e.to_string())?;
    if first.trim() != "open" {
        return Err(format!("child did not open the table: {first:?}"));
    }
    let r = DiskTable::<u64, u64>::open(dir, options(TableType::Set));
    let verdict = match &r {
        Err(e @ DetsError::Locked { path }) if path == dir => Ok(format!("locked: {e}")),
        Err(e) => Err(format!("expected Locked, got {e}")),
        Ok(_) => Err("a second process opened a locked table".to_string()),
    };
    drop(r);
    child.kill().map_err(|e| e.to_string())?;
    child.wait().map_err(|e| e.to_string())?;
    DiskTable::<u64, u64>::open(dir, options(TableType::Set))
        .map_err(|e| format!("open after the holder died: {e}"))?;
    verdict
}

fn main() {
    if let Some(dir) = std::env::var_os(CHILD_ENV) {
        let dir = dir.to_string_lossy().into_owned();
        if let Err(e) = child(&dir) {
            eprintln!("child error: {e}");
            std::process::exit(2);
        }
        return;
    }
    let iters = env_u64("FREQALLOC_CRASH_ITERS", 5);
    let seed = crash_seed();
    println!("dets crash test: seed {seed} (FREQALLOC_CRASH_SEED), {iters} iterations");
    let mut rng = Rng(seed);
    let (mut passed, mut failed) = (0u32, 0u32);
    let mut report = |name: String, r: Result<String, String>| match r {
        Ok(msg) => {
            passed += 1;
            println!("ok   {name}: {msg}");
        }
        Err(msg) => {
            failed += 1;
            println!("FAIL {name}: {msg}");
        }
    };
    for i in 0..iters {
        let t = TableType::ALL[(i % 4) as usize];
        let round_seed = rng.next();
        let kill_after = rng.below(120);
        let delay = Duration::from_micros(rng.below(1500));
        let dir = match tempfile::tempdir() {
            Ok(d) => d,
            Err(e) => {
                report(format!("round {i}"), Err(e.to_string()));
                continue;
            }
        };
        let path = dir.path().join("t");
        let name =
            format!("round {i} ({t}, seed {round_seed}, kill {delay:?} after ack {kill_after})");
        report(name, round(round_seed, t, kill_after, delay, &path));
    }
    match tempfile::tempdir() {
        Ok(d) => {
            let p = d.path().join("t");
            report("locked by another process".into(), locked_round(&p));
        }
        Err(e) => report("locked by another process".into(), Err(e.to_string())),
    }
    println!("{passed} passed, {failed} failed");
    if failed > 0 {
        std::process::exit(1);
    }
}
