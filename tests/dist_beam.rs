//! Real BEAM clients (`erl`, running `tests/erl/freq_client.erl`) against the server
//! registered as `frequency`, over loopback, with a private epmd and a random cookie per test
//! (the harness: `tests/erlang/mod.rs`).
//!
//! Every scenario runs twice:
//! - `freqalloc_node::*` against `freqalloc node` (issue 13's node);
//! - `beam_baseline::*` against `tests/erl/frequency_beam.erl` on a BEAM node: the course's
//!   server speaking the same protocol, which keeps the Erlang clients themselves honest (a
//!   client that wrongly passed or failed would show here first).
//!
//! Without Erlang (`erl`, `erlc`, `epmd`) the tests print how to install it and pass, except
//! under `CI=true`, where they fail.

mod erlang;

use erlang::{Cluster, ServerNode, Target, CLIENT_TIMEOUT, READY_TIMEOUT};
use std::time::Duration;

/// The pool of most scenarios: frequencies 0..=9, on two shards for the freqalloc node.
const FIRST: u64 = 0;
const LAST: u64 = 9;
const POOL: i64 = (LAST - FIRST + 1) as i64;

/// One test's world. Fields drop in order: the server node, then epmd, then the store.
struct World {
    node: ServerNode,
    cluster: Cluster,
    _dir: tempfile::TempDir,
}

impl World {
    /// A private epmd, a cookie, and `target` serving `first..=last`; `None` when Erlang is
    /// missing outside CI (the test then returns early).
    fn start(test: &str, target: Target, first: u64, last: u64, extra: &[&str]) -> Option<World> {
        if !erlang::erlang_or_skip(test) {
            return None;
        }
        let cluster = Cluster::new();
        let dir = tempfile::tempdir().expect("temp dir");
        let node = cluster.start_target(target, dir.path(), first, last, 2, extra);
        Some(World {
            node,
            cluster,
            _dir: dir,
        })
    }

    fn pool(test: &str, target: Target) -> Option<World> {
        World::start(test, target, FIRST, LAST, &[])
    }

    fn name(&self) -> &str {
        &self.node.name
    }

    /// Stops the server with SIGTERM; it must exit 0 (an orderly stop).
    fn stop_in_order(&mut self) {
        let status = self
            .node
            .proc
            .stop()
            .expect("the server exits after SIGTERM");
        assert!(
            status.success(),
            "{} exited with {status} after SIGTERM\n{}",
            self.node.name,
            self.node.proc.diagnostics()
        );
    }
}

fn frequencies() -> Vec<i64> {
    (FIRST as i64..=LAST as i64).collect()
}

fn course_scenario_gen_server(target: Target) {
    let Some(mut w) = World::pool("course_scenario_gen_server", target) else {
        return;
    };
    if target == Target::Freqalloc {
        assert!(
            w.node.ready.contains(&format!("(pool {POOL}, 2 shards)")),
            "readiness line: {}",
            w.node.ready
        );
    }
    let r = w
        .cluster
        .client_ok("course_gen", w.name(), &[&POOL.to_string()]);
    assert_eq!(r.num("pool"), POOL);
    assert_eq!(r.nums("frequencies"), frequencies());
    assert!(frequencies().contains(&r.num("reused")));
    w.stop_in_order();
}

fn course_scenario_raw(target: Target) {
    let Some(mut w) = World::pool("course_scenario_raw", target) else {
        return;
    };
    let r = w
        .cluster
        .client_ok("course_raw", w.name(), &[&POOL.to_string()]);
    assert_eq!(r.nums("frequencies"), frequencies());
    // The store's state survives the run: a second client sees the whole pool again.
    let again = w
        .cluster
        .client_ok("course_gen", w.name(), &[&POOL.to_string()]);
    assert_eq!(again.nums("frequencies"), frequencies());
    w.stop_in_order();
}

fn each_refusal(target: Target) {
    let Some(w) = World::pool("each_refusal", target) else {
        return;
    };
    let r = w.cluster.client_ok(
        "refusals",
        w.name(),
        &[&FIRST.to_string(), &LAST.to_string()],
    );
    assert_eq!(r.num("badarg"), 10, "every malformed request is badarg");
}

fn names_held_release_and_leases(target: Target) {
    let Some(w) = World::pool("names_held_release_and_leases", target) else {
        return;
    };
    let r = w.cluster.client_ok("named", w.name(), &[&POOL.to_string()]);
    assert_eq!(r.nums("alice").len(), 2);
    assert_eq!(r.nums("released").len(), 2);
    assert!(r.num("lease_back_ms") >= 150, "the lease ran: {}", r.line);
}

fn a_process_that_exits_releases_what_it_held(target: Target) {
    let Some(w) = World::pool("a_process_that_exits_releases_what_it_held", target) else {
        return;
    };
    let r = w
        .cluster
        .client_ok("exit_releases", w.name(), &[&POOL.to_string()]);
    for how in ["normal", "crash", "kill"] {
        assert_eq!(r.nums(&format!("held_{how}")).len(), 3, "{}", r.line);
    }
}

/// `hold` on a client node, then the client node goes away (`halt` on its own, or SIGKILL),
/// and a second client waits for the pool to be whole again.
fn node_gone_releases(test: &str, target: Target, halt: bool) {
    let Some(w) = World::pool(test, target) else {
        return;
    };
    let then = if halt { "halt" } else { "wait" };
    let mut holder = w.cluster.spawn_client("hold", w.name(), &["3", then]);
    let line = holder.wait_prefix(READY_TIMEOUT, "RESULT ");
    let held = erlang::parse_result(&line).expect("a RESULT line");
    assert!(held.ok, "hold: {}\n{}", held.line, holder.diagnostics());
    assert_eq!(held.nums("held").len(), 3);
    if halt {
        let status = holder
            .wait_exit(CLIENT_TIMEOUT)
            .expect("the holding node halts");
        assert!(status.success(), "halt(0): {status}");
    } else {
        holder.kill().expect("the holding node is killed");
    }
    let r = w
        .cluster
        .client_ok("wait_released", w.name(), &[&POOL.to_string(), "30000"]);
    assert_eq!(r.num("pool"), POOL);
}

fn a_beam_node_that_halts_releases_what_its_processes_held(target: Target) {
    node_gone_releases(
        "a_beam_node_that_halts_releases_what_its_processes_held",
        target,
        true,
    );
}

fn a_killed_beam_node_releases_what_its_processes_held(target: Target) {
    node_gone_releases(
        "a_killed_beam_node_releases_what_its_processes_held",
        target,
        false,
    );
}

fn ping_is_pong_and_a_wrong_cookie_is_refused(target: Target) {
    let Some(mut w) = World::pool("ping_is_pong_and_a_wrong_cookie_is_refused", target) else {
        return;
    };
    let r = w.cluster.client_ok("ping", w.name(), &[]);
    assert_eq!(r.get("ping"), "pong");
    let wrong = erlang::random_cookie();
    let out = w.cluster.erl_with_cookie(
        &wrong,
        &erlang::client_eval("ping", w.name(), &[]),
        CLIENT_TIMEOUT,
    );
    let r = erlang::parse_result(&out.stdout)
        .unwrap_or_else(|| panic!("no RESULT line: {}\n{}", out.stdout, out.stderr));
    assert_eq!(r.get("ping"), "pang", "a wrong cookie must be refused");
    assert!(w.node.proc.exited().is_none(), "the node keeps serving");
    // ... and still serves the right cookie, unchanged.
    let r = w
        .cluster
        .client_ok("course_gen", w.name(), &[&POOL.to_string()]);
    assert_eq!(r.nums("frequencies"), frequencies());
    w.stop_in_order();
}

fn a_call_to_a_missing_name_is_noproc_at_once(target: Target) {
    let Some(w) = World::pool("a_call_to_a_missing_name_is_noproc_at_once", target) else {
        return;
    };
    let r = w.cluster.client_ok("noproc", w.name(), &[]);
    assert_eq!(r.get("reason"), "noproc");
    // The call's own timeout is 30 s: noproc must come from the monitor's immediate DOWN.
    assert!(r.num("ms") < 5000, "noproc took {} ms", r.num("ms"));
}

fn sixty_four_processes_storm(target: Target) {
    let (first, last) = (0u64, 31u64);
    let Some(w) = World::start("sixty_four_processes_storm", target, first, last, &[]) else {
        return;
    };
    let rounds = std::env::var("FREQALLOC_STORM_ROUNDS").unwrap_or_else(|_| "200".into());
    let r = w
        .cluster
        .client_ok("storm", w.name(), &["64", &rounds, "32"]);
    assert_eq!(r.num("procs"), 64);
    assert_eq!(
        r.num("doubles"),
        0,
        "a frequency was held twice: {}",
        r.line
    );
    assert_eq!(r.num("free_mid") + r.num("held_mid"), 32);
    assert!(r.num("pairs") > 0, "{}", r.line);
}

fn the_raw_stop_stops_the_node_in_order(target: Target) {
    let Some(mut w) = World::pool("the_raw_stop_stops_the_node_in_order", target) else {
        return;
    };
    let r = w.cluster.client_ok("raw_stop", w.name(), &[]);
    assert_eq!(r.get("stop"), "stopped");
    let status = w
        .node
        .proc
        .wait_exit(Duration::from_secs(60))
        .expect("the node stops after {request, Pid, stop}");
    assert!(status.success(), "exit status {status}");
}

macro_rules! against_both {
    ($($name:ident),* $(,)?) => {
        /// Against `freqalloc node`.
        mod freqalloc_node {
            $(#[test] fn $name() { super::$name(super::Target::Freqalloc) })*
        }
        /// Against the course's server on a BEAM node (`tests/erl/frequency_beam.erl`).
        mod beam_baseline {
            $(#[test] fn $name() { super::$name(super::Target::Beam) })*
        }
    };
}

against_both!(
    course_scenario_gen_server,
    course_scenario_raw,
    each_refusal,
    names_held_release_and_leases,
    a_process_that_exits_releases_what_it_held,
    a_beam_node_that_halts_releases_what_its_processes_held,
    a_killed_beam_node_releases_what_its_processes_held,
    ping_is_pong_and_a_wrong_cookie_is_refused,
    a_call_to_a_missing_name_is_noproc_at_once,
    sixty_four_processes_storm,
    the_raw_stop_stops_the_node_in_order,
);

/// `--no-remote-stop`: the raw stop is refused with `{reply, {error, not_allowed}}` and the
/// node keeps serving (a freqalloc node flag; the BEAM baseline has no such flag).
#[test]
fn no_remote_stop_refuses_the_raw_stop() {
    let Some(mut w) = World::start(
        "no_remote_stop_refuses_the_raw_stop",
        Target::Freqalloc,
        FIRST,
        LAST,
        &["--no-remote-stop"],
    ) else {
        return;
    };
    let r = w.cluster.client_ok("raw_stop", w.name(), &[]);
    assert_eq!(r.get("stop"), "not_allowed");
    let r = w
        .cluster
        .client_ok("course_gen", w.name(), &[&POOL.to_string()]);
    assert_eq!(r.nums("frequencies"), frequencies());
    w.stop_in_order();
}

/// A node stopped in order and started again on the same store serves the same state: what a
/// named client held is still held (names are not released on exit).
#[test]
fn a_restarted_node_keeps_named_allocations() {
    if !erlang::erlang_or_skip("a_restarted_node_keeps_named_allocations") {
        return;
    }
    let cluster = Cluster::new();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut node = cluster.start_target(Target::Freqalloc, dir.path(), FIRST, LAST, 2, &[]);
    let name = node.name.clone();
    let data = node.data.clone().expect("a freqalloc node has a store");
    let eval = format!(
        "{{ok, F}} = gen_server:call({{frequency, '{name}'}}, {{allocate_as, <<\"keeper\">>}}), \
         io:format(\"RESULT ok f=~b~n\", [F]), halt(0)."
    );
    let out = cluster.erl(&eval, CLIENT_TIMEOUT);
    let f = erlang::parse_result(&out.stdout)
        .unwrap_or_else(|| panic!("{}\n{}", out.stdout, out.stderr))
        .num("f");
    let status = node.proc.stop().expect("stops");
    assert!(status.success(), "{status}");
    drop(node);
    let node = cluster.start_freqalloc_node(&name, &data, &[]);
    let eval = format!(
        "{{ok, H}} = gen_server:call({{frequency, '{name}'}}, {{held_as, keeper}}), \
         io:format(\"RESULT ok held=~s~n\", [lists:join(\",\", [integer_to_list(X) || X <- H])]), \
         halt(0)."
    );
    let out = cluster.erl(&eval, CLIENT_TIMEOUT);
    let r = erlang::parse_result(&out.stdout)
        .unwrap_or_else(|| panic!("{}\n{}", out.stdout, out.stderr));
    assert_eq!(r.nums("held"), vec![f]);
    drop(node);
}

/// After a restart the node monitors again every Pid that still holds frequencies: a holder
/// that is still alive keeps what it held (until it exits), and a holder that died while the
/// node was down has its frequencies released.
#[test]
fn a_restarted_node_monitors_its_pid_owners_again() {
    if !erlang::erlang_or_skip("a_restarted_node_monitors_its_pid_owners_again") {
        return;
    }
    let cluster = Cluster::new();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut node = cluster.start_target(Target::Freqalloc, dir.path(), FIRST, LAST, 2, &[]);
    let name = node.name.clone();
    let data = node.data.clone().expect("a freqalloc node has a store");
    let mut alive = cluster.spawn_client("hold", &name, &["3", "wait"]);
    let mut gone = cluster.spawn_client("hold", &name, &["2", "wait"]);
    for holder in [&mut alive, &mut gone] {
        let line = holder.wait_prefix(READY_TIMEOUT, "RESULT ");
        assert!(
            line.starts_with("RESULT ok"),
            "{line}\n{}",
            holder.diagnostics()
        );
    }
    // SIGKILL: the allocations were acknowledged in sync durability, so they are on disk.
    node.proc.kill().expect("the node dies");
    drop(node);
    gone.kill()
        .expect("the second holder dies while the node is down");
    let mut node = cluster.start_freqalloc_node(&name, &data, &[]);
    let r = cluster.client_ok("wait_allocated", &name, &["3", "30000"]);
    assert_eq!(r.num("allocated"), 3, "{}", r.line);
    assert!(node.proc.exited().is_none());
    alive.kill().expect("the first holder dies");
    let r = cluster.client_ok("wait_released", &name, &[&POOL.to_string(), "30000"]);
    assert_eq!(r.num("pool"), POOL);
    let status = node.proc.stop().expect("stops");
    assert!(status.success(), "{status}");
}

/// What one client name did, as its worker printed it (`freq_client:acked_storm`).
#[derive(Default, Debug)]
struct NameLog {
    held: std::collections::BTreeSet<i64>,
    /// The request sent and not answered when the node died: `None`, an allocate (`None`
    /// inside) or a deallocate of `Some(F)`.
    pending: Option<Option<i64>>,
}

/// Applies one line of `freqalloc load --history` (JSON: client, op, freq, phase) to the
/// logs. `fail` is a typed refusal (nothing happened); a call with no reply (the link was
/// lost) stays in flight.
fn apply_history_line(logs: &mut std::collections::BTreeMap<String, NameLog>, line: &str) {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
        return; // only whole lines count
    };
    let name = v["client"].as_str().expect("client").to_string();
    let freq = v["freq"].as_i64();
    let log = logs.entry(name.clone()).or_default();
    match (
        v["op"].as_str().expect("op"),
        v["phase"].as_str().expect("phase"),
    ) {
        ("allocate", "invoke") => log.pending = Some(None),
        ("deallocate", "invoke") => log.pending = Some(freq),
        ("allocate", "ok") => {
            let f = freq.expect("an allocated frequency");
            assert!(log.held.insert(f), "{name} got {f} twice: {line}");
            log.pending = None;
        }
        ("deallocate", "ok") => {
            let f = freq.expect("a deallocated frequency");
            assert!(log.held.remove(&f), "{name} gave back {f} it did not hold");
            log.pending = None;
        }
        (_, "fail") => log.pending = None,
        other => panic!("unexpected history line {other:?}: {line}"),
    }
}

/// SIGKILL of a node in `sync` at random moments while BEAM processes (named allocations) and
/// a CLI client (`freqalloc load --node --history`) storm it; after each restart, every
/// acknowledged operation is there, the one in flight at the kill is either done or not, and
/// nothing is held twice (`check` agrees). `FREQALLOC_DIST_CRASH_ITERS` (default 3) kills;
/// `FREQALLOC_CRASH_SEED` replays the kill points.
#[test]
fn sigkill_under_a_beam_storm_loses_no_acknowledged_operation() {
    use std::collections::{BTreeMap, BTreeSet};
    if !erlang::erlang_or_skip("sigkill_under_a_beam_storm_loses_no_acknowledged_operation") {
        return;
    }
    let iters: u64 = std::env::var("FREQALLOC_DIST_CRASH_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let seed = erlang::crash_seed();
    let mut below = erlang::below_from(seed);
    const WORKERS: usize = 8;
    let names: Vec<String> = (1..=WORKERS).map(|i| format!("w{i}")).collect();
    let cluster = Cluster::new();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut node = cluster.start_target(Target::Freqalloc, dir.path(), 0, 31, 2, &[]);
    let node_name = node.name.clone();
    let data = node.data.clone().expect("a freqalloc node has a store");
    let mut logs: BTreeMap<String, NameLog> = names
        .iter()
        .map(|n| (n.clone(), NameLog::default()))
        .collect();
    for it in 0..iters {
        let mut storm = cluster.spawn_erl(&format!(
            "freq_client:acked_storm('{node_name}', {WORKERS})"
        ));
        storm.wait_prefix(READY_TIMEOUT, "STORM started");
        let mut load = cluster.command(env!("CARGO_BIN_EXE_freqalloc"));
        load.args(["load", "--node", &node_name, "--cookie", &cluster.cookie])
            .args([
                "--clients",
                "2",
                "--hold",
                "3",
                "--seconds",
                "600",
                "--history",
                "-",
            ]);
        let mut load = erlang::Proc::spawn("freqalloc load --node", load);
        // Both storms are under way before the countdown to the kill starts.
        load.wait_line(CLIENT_TIMEOUT, |l| l.contains(r#""phase":"ok""#));
        let kill_after = 10 + below(300);
        for _ in 0..kill_after {
            storm.wait_prefix(CLIENT_TIMEOUT, "ACK ");
        }
        node.proc.kill().expect("the node dies");
        drop(node);
        storm
            .wait_exit(CLIENT_TIMEOUT)
            .expect("the storm ends when the node is gone");
        // The CLI client's calls fail once the link is lost and the node cannot be dialled
        // again: it stops on its own, with an error status and the reason.
        let load_exit = load.wait_exit(CLIENT_TIMEOUT);
        let load_lines = load.all_stdout();
        let load_said = load.diagnostics();
        assert!(
            load_exit.is_some_and(|s| s.code() == Some(1)),
            "kill {it}: the CLI client did not stop with status 1 (exit {load_exit:?})\n{load_said}"
        );
        assert!(
            load_lines
                .iter()
                .any(|l| l.contains("stopped early after 100 errors in a row")),
            "kill {it}: the CLI client did not say why it stopped\n{load_said}"
        );
        for line in load_lines.iter().filter(|l| l.starts_with('{')) {
            apply_history_line(&mut logs, line);
        }
        drop(load);
        let lines = storm.all_stdout();
        let acks = lines.iter().filter(|l| l.starts_with("ACK ")).count();
        assert!(acks as u64 >= kill_after, "the storm printed {acks} acks");
        for line in lines {
            let words: Vec<&str> = line.split_whitespace().collect();
            let (op, name) = match words.as_slice() {
                [kind @ ("REQ" | "ACK"), op, name, ..] => ((*kind, *op), *name),
                _ => continue,
            };
            let f = words.get(3).map(|f| f.parse::<i64>().expect("a frequency"));
            let log = logs.get_mut(name).expect("a known name");
            match op {
                ("REQ", "a") => log.pending = Some(None),
                ("REQ", "d") => log.pending = Some(f),
                ("ACK", "a") => {
                    let f = f.expect("ACK a has a frequency");
                    assert!(log.held.insert(f), "{name} got {f} twice: {line}");
                    log.pending = None;
                }
                ("ACK", "n") => log.pending = None,
                ("ACK", "d") => {
                    let f = f.expect("ACK d has a frequency");
                    assert!(log.held.remove(&f), "{name} gave back {f} it did not hold");
                    log.pending = None;
                }
                _ => panic!("unexpected line {line}"),
            }
        }
        node = cluster.start_freqalloc_node(&node_name, &data, &[]);
        let name_list = format!(
            "[{}]",
            logs.keys()
                .map(|n| format!("<<\"{n}\">>"))
                .collect::<Vec<_>>()
                .join(",")
        );
        let r = cluster.client_ok("held_as", &node_name, &[&name_list]);
        assert_eq!(r.get("check"), "ok", "after kill {it}: {}", r.line);
        let in_flight = logs.values().filter(|l| l.pending.is_some()).count();
        println!("kill {it}: after {kill_after} acks ({acks} in all), {in_flight} calls in flight");
        let mut everyone = BTreeSet::new();
        for (name, log) in logs.iter_mut() {
            let actual: BTreeSet<i64> = r.nums(name).into_iter().collect();
            let ok = match log.pending {
                None => actual == log.held,
                Some(None) => {
                    actual == log.held
                        || (actual.is_superset(&log.held) && actual.len() == log.held.len() + 1)
                }
                Some(Some(f)) => {
                    let mut without = log.held.clone();
                    without.remove(&f);
                    actual == log.held || actual == without
                }
            };
            assert!(
                ok,
                "seed {seed}, kill {it} after {kill_after} acks: {name} holds {actual:?}, \
                 acknowledged {:?} with {:?} in flight",
                log.held, log.pending
            );
            for f in &actual {
                assert!(everyone.insert(*f), "{f} is held by two names");
            }
            log.held = actual;
            log.pending = None;
        }
    }
    let status = node.proc.stop().expect("stops");
    assert!(status.success(), "{status}");
}

/// The Erlang expression that spawns a process which allocates one frequency, reads the
/// node's `status` `monitors` while it still holds it, and exits normally; the parent waits for
/// its `DOWN` and prints `f`, `monitors_while_held` and the node's `allocated` after the exit.
fn allocate_and_exit_eval(node: &str) -> String {
    format!(
        "N = '{node}', Self = self(), \
         {{P, R}} = spawn_monitor(fun() -> {{ok, F}} = gen_server:call({{frequency, N}}, allocate), \
             {{ok, #{{monitors := M}}}} = gen_server:call({{frequency, N}}, status), \
             Self ! {{f, F, M}} end), \
         {{F, M}} = receive {{f, X, Y}} -> {{X, Y}} after 10000 -> error(no_allocation) end, \
         receive {{'DOWN', R, process, P, _}} -> ok end, \
         {{ok, #{{allocated := A}}}} = gen_server:call({{frequency, N}}, status), \
         io:format(\"RESULT ok f=~b monitors_while_held=~b allocated=~b~n\", [F, M, A]), halt(0)."
    )
}

/// `--keep-on-exit` (frequency2.erl's own semantics): a frequency outlives the process that
/// took it. The node monitors no holder at all (status `monitors` is 0 while the holder holds
/// its frequency, so no `DOWN` can ever come to release it), the frequency is still allocated
/// after the holder exited, and it still is after an orderly restart (no re-monitoring either).
/// The default node, in the same scenario, monitors the holder (`monitors` 1 while it holds), so
/// the check on `monitors` can fail.
#[test]
fn keep_on_exit_keeps_what_an_exited_process_held() {
    if !erlang::erlang_or_skip("keep_on_exit_keeps_what_an_exited_process_held") {
        return;
    }
    let cluster = Cluster::new();
    // The default node first: the holder is monitored from its allocation on.
    let dir = tempfile::tempdir().expect("temp dir");
    let node = cluster.start_target(Target::Freqalloc, dir.path(), FIRST, LAST, 2, &[]);
    let out = cluster.erl(&allocate_and_exit_eval(&node.name), CLIENT_TIMEOUT);
    let r = erlang::parse_result(&out.stdout)
        .unwrap_or_else(|| panic!("{}\n{}", out.stdout, out.stderr));
    assert_eq!(r.num("monitors_while_held"), 1, "{}", r.line);
    drop(node);

    let dir = tempfile::tempdir().expect("temp dir");
    let mut node = cluster.start_target(
        Target::Freqalloc,
        dir.path(),
        FIRST,
        LAST,
        2,
        &["--keep-on-exit"],
    );
    let name = node.name.clone();
    let data = node.data.clone().expect("a freqalloc node has a store");
    let out = cluster.erl(&allocate_and_exit_eval(&name), CLIENT_TIMEOUT);
    let r = erlang::parse_result(&out.stdout)
        .unwrap_or_else(|| panic!("{}\n{}", out.stdout, out.stderr));
    assert_eq!(r.num("monitors_while_held"), 0, "{}", r.line);
    assert_eq!(r.num("allocated"), 1, "{}", r.line);
    let f = r.num("f");
    let status = node.proc.stop().expect("stops");
    assert!(status.success(), "{status}");
    drop(node);
    let node = cluster.start_freqalloc_node(&name, &data, &["--keep-on-exit"]);
    let eval = format!(
        "{{ok, #{{allocated := A, monitors := M}}}} = gen_server:call({{frequency, '{name}'}}, status), \
         ok = gen_server:call({{frequency, '{name}'}}, check), \
         io:format(\"RESULT ok allocated=~b monitors=~b~n\", [A, M]), halt(0)."
    );
    let out = cluster.erl(&eval, CLIENT_TIMEOUT);
    let r = erlang::parse_result(&out.stdout)
        .unwrap_or_else(|| panic!("{}\n{}", out.stdout, out.stderr));
    assert_eq!(
        r.num("allocated"),
        1,
        "frequency {f} is still held: {}",
        r.line
    );
    assert_eq!(r.num("monitors"), 0, "{}", r.line);
    drop(node);
}
