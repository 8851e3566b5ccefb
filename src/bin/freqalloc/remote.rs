//! The store commands through a running node (`--node NAME` or `FREQALLOC_NODE`): the same
//! output as the local commands, over distribution via `RemoteAllocator`.

use std::collections::VecDeque;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::json;

use freqalloc::dist::{
    resolve_cookie, ClientOptions, DistError, PendingCall, RemoteAllocator, RemoteStatus,
};
use freqalloc::freq::FreqError;

use super::{history_line, run_clients, ClientStats, LoadArgs, LATENCY_SAMPLE};

pub fn connect(node: &str, cookie: Option<&str>) -> Result<RemoteAllocator> {
    let cookie = resolve_cookie(cookie)?;
    RemoteAllocator::connect_with(node, ClientOptions::new(&cookie))
        .with_context(|| format!("connecting to node {node}"))
}

pub fn status_json(s: &RemoteStatus) -> serde_json::Value {
    json!({
        "pool_size": s.pool,
        "free_count": s.free,
        "allocated_count": s.allocated,
        "strategy": s.strategy,
        "durability": s.durability,
        "cluster": s.cluster,
        "shards": s.shards.iter().map(|x| json!({
            "shard": x.shard, "free": x.free, "allocated": x.allocated,
            "ranges": x.ranges.iter().map(|(a, b)| format!("{a}-{b}")).collect::<Vec<_>>(),
            "node": x.node, "alive": x.alive,
            "epoch": x.epoch, "backup": x.backup, "in_sync": x.in_sync, "lag": x.lag,
        })).collect::<Vec<_>>(),
    })
}

pub fn print_status(node: &str, s: &RemoteStatus) -> Result<()> {
    out!(
        "node {node}: {} frequencies, {} free, {} allocated, {} shards ({}, {})",
        s.pool,
        s.free,
        s.allocated,
        s.shards.len(),
        s.strategy,
        s.durability
    );
    if let Some(c) = &s.cluster {
        out!("  {c}");
    }
    for x in &s.shards {
        let ranges: Vec<String> = x.ranges.iter().map(|(a, b)| format!("{a}-{b}")).collect();
        let mut on = x
            .node
            .as_ref()
            .map(|n| format!(" on {n}"))
            .unwrap_or_default();
        if let Some(e) = x.epoch {
            on.push_str(&format!(" (epoch {e}"));
            if let Some(b) = &x.backup {
                let lag = x.lag.map(|l| format!(", lag {l}")).unwrap_or_default();
                let state = if x.in_sync { "in sync" } else { "not in sync" };
                on.push_str(&format!(", backup {b} {state}{lag}"));
            }
            on.push(')');
        }
        if x.alive {
            out!(
                "  shard {} ({}){on}: {} free, {} allocated",
                x.shard,
                ranges.join(","),
                x.free,
                x.allocated
            );
        } else if x.node.is_some() {
            out!(
                "  shard {} ({}){on}: unreachable ({} allocated when last heard from)",
                x.shard,
                ranges.join(","),
                x.allocated
            );
        } else {
            out!(
                "  shard {} ({}): not running ({} free, {} allocated at its last start)",
                x.shard,
                ranges.join(","),
                x.free,
                x.allocated
            );
        }
    }
    Ok(())
}

pub fn check(node: &str, remote: &RemoteAllocator) -> Result<ExitCode> {
    let violations = remote.check()?;
    if violations.is_empty() {
        let s = remote.status()?;
        out!(
            "consistent: {} frequencies, {} free, {} allocated, {} shards (node {node})",
            s.pool,
            s.free,
            s.allocated,
            s.shards.len()
        );
        Ok(ExitCode::SUCCESS)
    } else {
        say!("freqalloc: {} violation(s):", violations.len());
        for v in &violations {
            say!("  {v}");
        }
        Ok(ExitCode::FAILURE)
    }
}

enum Op {
    Allocate,
    Deallocate(u64),
}

/// One logical client of a load thread: its own name and its own sequential history, so the
/// `--history` checks of the local load apply unchanged with several calls in flight.
struct Slot {
    name: String,
    held: VecDeque<u64>,
    retired: u32,
    base: String,
    /// The last allocation found no frequency: deallocate next.
    give_back: bool,
}

impl Slot {
    /// Ends this name with its last call in flight (its outcome is unknown) and goes on under the
    /// next name, holding nothing.
    fn retire(&mut self) {
        self.retired += 1;
        self.name = format!("{}~{}", self.base, self.retired);
        self.held.clear();
    }
}

struct InFlight {
    slot: usize,
    op: Op,
    call: PendingCall,
    started: Option<Instant>,
}

fn is_transport(e: &DistError) -> bool {
    !matches!(e, DistError::Freq(_))
}

/// `load --node`: `clients` threads, each keeping `pipeline` calls in flight on one shared
/// connection. A call whose outcome is unknown (the link failed) retires its client name (its
/// history ends "in flight"); the slot goes on under a new name.
pub fn load(node: &str, cookie: Option<&str>, args: LoadArgs) -> Result<ExitCode> {
    args.check()?;
    if args.pipeline == 0 {
        bail!("--pipeline must be at least 1");
    }
    let history = args.open_history()?;
    let open_started = Instant::now();
    let remote = Arc::new(connect(node, cookie)?);
    let status = remote.status()?;
    let open_time = open_started.elapsed();
    let status = Arc::new(status);
    let shards = status.shards.len();
    let duration = Duration::try_from_secs_f64(args.seconds)
        .map_err(|_| anyhow::anyhow!("--seconds {} is too long", args.seconds))?;
    let ops = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let barrier = Arc::new(Barrier::new(args.clients + 1));
    let (hold, pipeline) = (args.hold, args.pipeline);

    let handles: Vec<_> = (0..args.clients)
        .map(|i| {
            let (remote, ops, stop, barrier, history, status) = (
                remote.clone(),
                ops.clone(),
                stop.clone(),
                barrier.clone(),
                history.clone(),
                status.clone(),
            );
            std::thread::Builder::new()
                .name(format!("load-c{i}"))
                .spawn(move || -> Result<ClientStats> {
                    let mut st = ClientStats {
                        per_shard: vec![0; status.shards.len()],
                        ..Default::default()
                    };
                    let mut slots = Vec::with_capacity(pipeline);
                    for k in 0..pipeline {
                        let base = if pipeline == 1 {
                            format!("c{i}")
                        } else {
                            format!("c{i}.{k}")
                        };
                        // Adopt what this client already holds from an earlier run. In a
                        // cluster with a node down the question fails (that node's shards
                        // cannot answer): start holding nothing then; what the name holds
                        // there stays held, and the run goes on over the shards that serve.
                        let held: VecDeque<u64> = remote.held_by(&base).unwrap_or_default().into();
                        slots.push(Slot {
                            name: base.clone(),
                            held,
                            retired: 0,
                            base,
                            give_back: false,
                        });
                    }
                    let mut flight: VecDeque<InFlight> = VecDeque::with_capacity(pipeline);
                    // Nothing above can fail now: every client reaches the barrier (one that
                    // returned before it would leave the others and the clock waiting forever).
                    barrier.wait();
                    // Issues the next call of `slot`. A call that could not be sent retires the
                    // name and is tried again under the next one, until the errors in a row are
                    // persistent (the node is gone and cannot be dialled): then `None`, and the
                    // run stops.
                    let issue = |slot: usize,
                                 slots: &mut Vec<Slot>,
                                 st: &mut ClientStats|
                     -> Result<Option<InFlight>> {
                        loop {
                            let s = &mut slots[slot];
                            st.operations += 1;
                            let started = st
                                .operations
                                .is_multiple_of(LATENCY_SAMPLE)
                                .then(Instant::now);
                            let give_back = std::mem::take(&mut s.give_back) && !s.held.is_empty();
                            let (op, req) = if s.held.len() < hold && !give_back {
                                history_line(&history, &s.name, "allocate", None, "invoke", None)?;
                                (
                                    Op::Allocate,
                                    RemoteAllocator::allocate_request(&s.name, None),
                                )
                            } else {
                                let f = s.held.pop_front().unwrap_or_default();
                                history_line(
                                    &history,
                                    &s.name,
                                    "deallocate",
                                    Some(f),
                                    "invoke",
                                    None,
                                )?;
                                (
                                    Op::Deallocate(f),
                                    RemoteAllocator::deallocate_request(f, &s.name),
                                )
                            };
                            match remote.call_async(&req) {
                                Ok(call) => {
                                    return Ok(Some(InFlight {
                                        slot,
                                        op,
                                        call,
                                        started,
                                    }))
                                }
                                Err(e) => {
                                    // Not sent, or unknown: the name is retired in flight.
                                    s.retire();
                                    if st.failed(e.to_string()) || stop.load(Ordering::Relaxed) {
                                        stop.store(true, Ordering::Relaxed);
                                        return Ok(None);
                                    }
                                }
                            }
                        }
                    };
                    for k in 0..pipeline {
                        if let Some(f) = issue(k, &mut slots, &mut st)? {
                            flight.push_back(f);
                        }
                    }
                    while let Some(InFlight {
                        slot,
                        op,
                        call,
                        started,
                    }) = flight.pop_front()
                    {
                        let reply = call.wait();
                        let s = &mut slots[slot];
                        let mut no_freq_empty = false;
                        match (op, reply) {
                            (Op::Allocate, Ok(term)) => match remote.decode_alloc(&s.name, term) {
                                Ok(f) => {
                                    history_line(
                                        &history,
                                        &s.name,
                                        "allocate",
                                        Some(f),
                                        "ok",
                                        None,
                                    )?;
                                    st.allocations += 1;
                                    st.errors_in_a_row = 0;
                                    if let Some(sh) = status.owner_of(f) {
                                        st.per_shard[sh] += 1;
                                    }
                                    s.held.push_back(f);
                                }
                                Err(e) => {
                                    if refused(&history, s, &mut st, "allocate", None, &e)? {
                                        // Lost in flight: the name is retired.
                                    } else if matches!(
                                        e,
                                        DistError::Freq(FreqError::NoFrequency { .. })
                                    ) {
                                        st.no_frequency += 1;
                                        no_freq_empty = s.held.is_empty();
                                        // Give one back next so the storm keeps moving.
                                        s.give_back = !s.held.is_empty();
                                    } else {
                                        st.failed(e.to_string());
                                    }
                                }
                            },
                            (Op::Deallocate(f), Ok(term)) => {
                                match remote.decode_ok(&s.name, Some(f), term) {
                                    Ok(()) => {
                                        history_line(
                                            &history,
                                            &s.name,
                                            "deallocate",
                                            Some(f),
                                            "ok",
                                            None,
                                        )?;
                                        st.deallocations += 1;
                                        st.errors_in_a_row = 0;
                                    }
                                    Err(e) => {
                                        if refused(&history, s, &mut st, "deallocate", Some(f), &e)?
                                        {
                                            // Lost in flight: the name is retired.
                                        } else if matches!(
                                            e,
                                            DistError::Freq(FreqError::ShardUnreachable { .. })
                                        ) {
                                            // Its shard's node is down: still held, given back
                                            // later. Not a persistent failure of the cluster
                                            // (the other shards serve): it does not count
                                            // towards the errors in a row that stop the run.
                                            s.held.push_back(f);
                                            st.errors += 1;
                                            st.first_error.get_or_insert(e.to_string());
                                        } else {
                                            st.failed(e.to_string());
                                        }
                                    }
                                }
                            }
                            (_, Err(e)) if is_transport(&e) => {
                                // Outcome unknown: retire the name, leaving its last call in flight.
                                s.retire();
                                st.failed(e.to_string());
                            }
                            (_, Err(e)) => {
                                st.failed(e.to_string());
                            }
                        }
                        if st.persistent.is_some() {
                            stop.store(true, Ordering::Relaxed);
                        }
                        st.finish_op(started, &ops);
                        if stop.load(Ordering::Relaxed) {
                            continue; // drain what is in flight, issue nothing new
                        }
                        if no_freq_empty {
                            std::thread::yield_now();
                        }
                        if let Some(f) = issue(slot, &mut slots, &mut st)? {
                            flight.push_back(f);
                        }
                    }
                    Ok(st)
                })
                .context("spawning a client thread")
        })
        .collect::<Result<_>>()?;

    let (total, elapsed) = run_clients(&barrier, duration, &stop, &ops, handles, shards)?;
    let summary = total.summary_json(
        &args,
        elapsed,
        shards,
        json!({
            "pool_size": status.pool,
            "strategy": status.strategy,
            "durability": status.durability,
            "recovered_at_open": 0,
            "open_ms": open_time.as_secs_f64() * 1000.0,
            "node": node,
            "pipeline": args.pipeline,
            "stopped_on_error": total.persistent,
        }),
    );
    out!(
        "{} clients x {} in flight x {:.1} s through node {node} ({} shard(s), {} frequencies, {}, {}):",
        args.clients, args.pipeline, elapsed, shards, status.pool, status.strategy, status.durability
    );
    total.print_summary(elapsed)?;
    if args.json {
        out!("{summary}");
    }
    Ok(if total.errors == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// A refused call's history line: `unknown` when it may have happened (a shard's node died
/// during it: the name is then retired, its call left in flight, and the error counted), else
/// `fail` (nothing happened; the caller decides what it means). Returns whether it was unknown.
fn refused(
    history: &Option<std::fs::File>,
    s: &mut Slot,
    st: &mut ClientStats,
    op: &str,
    freq: Option<u64>,
    e: &DistError,
) -> Result<bool> {
    let msg = e.to_string();
    let unknown = may_have_happened(e);
    let phase = if unknown { "unknown" } else { "fail" };
    history_line(history, &s.name, op, freq, phase, Some(&msg))?;
    if unknown {
        s.retire();
        st.failed(msg);
    }
    Ok(unknown)
}

/// Whether a refusal says the call may have happened: a shard failed during it (in a cluster,
/// its node died with the request sent). History writes such a call as `unknown`, not `fail`.
fn may_have_happened(e: &DistError) -> bool {
    matches!(e, DistError::Freq(FreqError::ShardFailed { .. }))
}
