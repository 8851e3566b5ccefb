//! A pool over three freqalloc nodes (`init --nodes`): every node's `frequency` service is a
//! front end over the whole cluster, a node's shards are reached over distribution, a node down
//! leaves the others serving, and a node with another configuration refuses to serve. Each test
//! runs its own epmd (`epmd -port P`) and nodes as child processes on loopback with a random
//! cookie (the harness: `tests/erlang/mod.rs`); nodes are stopped by pid.

mod erlang;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use erlang::{unique_name, Cluster, ServerNode, CLIENT_TIMEOUT, READY_TIMEOUT};

/// A pool of 60 frequencies in 6 shards of 10, shard i on node i mod 3.
const POOL: &str = "0-59";
const SHARDS: &str = "6";

/// Three nodes of one cluster store, and the world they run in.
struct Trio {
    cluster: Cluster,
    _dir: tempfile::TempDir,
    names: Vec<String>,
    dirs: Vec<PathBuf>,
    nodes: Vec<Option<ServerNode>>,
    /// Extra `freqalloc node` flags.
    extra: Vec<String>,
}

impl Trio {
    /// Creates the three stores (the same `init` in each node's directory) and starts the nodes.
    fn start(durability: &str) -> Trio {
        Trio::start_with(durability, &[])
    }

    /// As [`Trio::start`], each node started with `extra` flags.
    fn start_with(durability: &str, extra: &[&str]) -> Trio {
        Trio::start_full(durability, extra, false)
    }

    /// As [`Trio::start_with`], with `--replicas 2` (shard i's backup on node i+1 mod 3), and
    /// waits until every backup has caught up.
    fn start_replicated(durability: &str, extra: &[&str]) -> Trio {
        let trio = Trio::start_full(durability, extra, true);
        trio.status_until(0, "every backup in sync", all_in_sync);
        trio
    }

    fn start_full(durability: &str, extra: &[&str], replicated: bool) -> Trio {
        let cluster = Cluster::new();
        let dir = tempfile::tempdir().expect("temp dir");
        let names: Vec<String> = ["ca", "cb", "cc"].iter().map(|p| unique_name(p)).collect();
        let list = names.join(",");
        let dirs: Vec<PathBuf> = (0..3).map(|i| dir.path().join(format!("n{i}"))).collect();
        for d in &dirs {
            let out = cluster.freqalloc(
                d,
                &[
                    "init",
                    "--pool",
                    POOL,
                    "--shards",
                    SHARDS,
                    "--nodes",
                    &list,
                    "--durability",
                    durability,
                    "--replicas",
                    if replicated { "2" } else { "1" },
                ],
            );
            assert!(out.contains("serves shard(s) 0,3"), "{out}");
            if replicated {
                assert!(out.contains("backs up shard(s) 2,5"), "{out}");
            }
        }
        let mut trio = Trio {
            cluster,
            _dir: dir,
            names,
            dirs,
            nodes: vec![None, None, None],
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        // Started together: with replicas each waits for a majority before it serves.
        let extra: Vec<&str> = trio.extra.iter().map(String::as_str).collect();
        let nodes: Vec<(&str, &std::path::Path)> = (0..3)
            .map(|i| (trio.names[i].as_str(), trio.dirs[i].as_path()))
            .collect();
        let started = trio.cluster.start_freqalloc_nodes(&nodes, &extra);
        for (i, node) in started.into_iter().enumerate() {
            assert!(
                node.ready.contains(&format!("shards {},{} of 6", i, i + 3)),
                "{}",
                node.ready
            );
            trio.nodes[i] = Some(node);
        }
        trio
    }

    /// Starts node `i` (again) and waits for its ready line.
    fn up(&mut self, i: usize) {
        let extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        let node = self
            .cluster
            .start_freqalloc_node(&self.names[i], &self.dirs[i], &extra);
        assert!(
            node.ready.contains(&format!("shards {},{} of 6", i, i + 3)),
            "{}",
            node.ready
        );
        self.nodes[i] = Some(node);
    }

    /// SIGKILLs node `i`.
    fn kill(&mut self, i: usize) {
        let mut node = self.nodes[i].take().expect("the node runs");
        node.proc.kill().expect("the node dies");
    }

    /// `freqalloc --node N ARGS` (through node `i`): (success, stdout, stderr).
    fn cli(&self, i: usize, args: &[&str]) -> (bool, String, String) {
        let o = self
            .cluster
            .command(env!("CARGO_BIN_EXE_freqalloc"))
            .args(["--node", &self.names[i], "--cookie", &self.cluster.cookie])
            .args(args)
            .output()
            .expect("run freqalloc");
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    }

    /// Node `i`'s `status`, asked again until `done` holds (bounded by attempts, each a whole
    /// CLI call; no sleep).
    fn status_until(&self, i: usize, what: &str, mut done: impl FnMut(&str) -> bool) -> String {
        let mut last = String::new();
        for _ in 0..1500 {
            let (ok, out, err) = self.cli(i, &["status"]);
            if ok && done(&out) {
                return out;
            }
            last = format!("{out}{err}");
        }
        panic!(
            "node {} never showed {what}; last status:\n{last}",
            self.names[i]
        );
    }

    /// `allocate --client CLIENT` through node `i`, which must succeed: the frequency.
    fn allocate(&self, i: usize, client: &str) -> u64 {
        let out = self.cli_ok(i, &["allocate", "--client", client]);
        out.trim().parse().expect("a frequency")
    }

    /// `held --client CLIENT` through node `i`, which must succeed: the frequencies, lowest first.
    fn held(&self, i: usize, client: &str) -> Vec<u64> {
        let out = self.cli_ok(i, &["held", "--client", client]);
        out.lines().map(|l| l.trim().parse().unwrap()).collect()
    }

    /// `check` through each of `nodes` passes over the whole pool of 60.
    fn check_through(&self, nodes: impl IntoIterator<Item = usize>) {
        for i in nodes {
            let check = self.cli_ok(i, &["check"]);
            assert!(check.contains("consistent: 60 frequencies"), "{check}");
        }
    }

    /// Node `i`'s configuration fingerprint, from its ready line.
    fn fingerprint(&self, i: usize) -> String {
        self.nodes[i]
            .as_ref()
            .expect("the node runs")
            .ready
            .split("fingerprint ")
            .nth(1)
            .and_then(|t| t.split(')').next())
            .expect("the ready line shows the fingerprint")
            .to_string()
    }

    /// As [`Trio::cli`], and it must succeed; its stdout.
    fn cli_ok(&self, i: usize, args: &[&str]) -> String {
        let (ok, out, err) = self.cli(i, args);
        assert!(ok, "freqalloc --node {} {args:?}: {err}", self.names[i]);
        out
    }
}

/// Shard `s`'s line of a `status`.
fn shard_line(status: &str, s: usize) -> &str {
    let want = format!("shard {s} (");
    status
        .lines()
        .find(|l| l.trim_start().starts_with(&want))
        .unwrap_or("")
}

/// Whether every shard of a `status` has its backup in sync.
fn all_in_sync(status: &str) -> bool {
    (0..6).all(|s| {
        let l = shard_line(status, s);
        l.contains("backup") && l.contains(" in sync") && !l.contains("not in sync")
    })
}

/// Whether every shard of a `status` is served by one of `nodes` and reachable.
fn served_by(status: &str, nodes: &[&String]) -> bool {
    (0..6).all(|s| {
        let l = shard_line(status, s);
        nodes.iter().any(|n| l.contains(&format!(" on {n} "))) && !l.contains("unreachable")
    })
}

impl Drop for Trio {
    fn drop(&mut self) {
        for n in self.nodes.iter_mut().filter_map(Option::take) {
            drop(n); // SIGTERM, then SIGKILL (the harness's Proc)
        }
    }
}

/// The course's scenario through one node exhausts the whole pool of the three (no_frequency
/// only when every shard of every node is empty), and the status it reads agrees at each step;
/// a frequency allocated through one node is freed through another (routed to its owner); every
/// node's status names each shard's node; `check` through any node covers the whole cluster.
/// In `sync` (shard calls answered on the shard service's workers) and in `none` (answered on
/// the connection's reader).
#[test]
fn every_node_is_a_front_end_over_the_whole_pool() {
    if !erlang::erlang_or_skip("every_node_is_a_front_end_over_the_whole_pool") {
        return;
    }
    for durability in ["sync", "none"] {
        front_end_over_the_whole_pool(durability);
    }
}

fn front_end_over_the_whole_pool(durability: &str) {
    let trio = Trio::start(durability);
    let r = trio
        .cluster
        .client_ok("course_gen", &trio.names[1], &["60"]);
    let all: BTreeSet<i64> = r.nums("frequencies").into_iter().collect();
    assert_eq!(all, (0..60).collect(), "{}", r.line);

    let f: u64 = trio
        .cli_ok(0, &["allocate", "--client", "radio"])
        .trim()
        .parse()
        .expect("a frequency");
    let held = trio.cli_ok(2, &["held", "--client", "radio"]);
    assert_eq!(held.trim(), f.to_string(), "held through another node");
    trio.cli_ok(2, &["deallocate", &f.to_string(), "--client", "radio"]);
    let (ok, _, err) = trio.cli(1, &["deallocate", &f.to_string(), "--client", "radio"]);
    assert!(!ok && err.contains("is not allocated"), "{err}");

    // A BEAM shell calls a shard directly, as the README shows; what it gets wrong is refused
    // (a wrong fingerprint, bad calls, a garbage Raft frame) and the shard goes on serving.
    let fp = trio.fingerprint(1);
    let b = &trio.names[1];
    let eval = format!(
        "N = '{b}', Fp = <<\"{fp}\">>, S = {{freq_shard, N}}, \
         {{{{allocated, F}}, _, _, _}} = gen_server:call(S, {{shard_call, 1, {{allocate, <<\"sh\">>, undefined}}, Fp}}), \
         {{error, layout_mismatch, Fp}} = gen_server:call(S, {{shard_call, 1, check, <<\"other\">>}}), \
         {{error, badarg}} = gen_server:call(S, bogus), \
         {{error, badarg}} = gen_server:call(S, {{shard_call, 1, {{allocate, 7, x}}, Fp}}), \
         {{error, not_here, 0}} = gen_server:call(S, {{shard_call, 0, check, Fp}}), \
         {{{{error, bad_client_name, _}}, _, _, _}} = gen_server:call(S, {{shard_call, 1, {{allocate, <<>>, undefined}}, Fp}}), \
         S ! {{raft, 1, <<\"garbage\">>, Fp}}, S ! {{loads, x, y, z}}, S ! junk, \
         {{deallocated, _, _, _}} = gen_server:call(S, {{shard_call, 1, {{deallocate, F, <<\"sh\">>}}, Fp}}), \
         io:format(\"RESULT ok f=~b~n\", [F]), halt(0)."
    );
    let out = trio.cluster.erl(&eval, CLIENT_TIMEOUT);
    let r = erlang::parse_result(&out.stdout)
        .unwrap_or_else(|| panic!("{}\n{}", out.stdout, out.stderr));
    assert!((10..20).contains(&r.num("f")), "{}", r.line);

    for i in 0..3 {
        let status = trio.cli_ok(i, &["status"]);
        for s in 0..6 {
            let want = format!(
                "shard {s} ({}-{}) on {}:",
                s * 10,
                s * 10 + 9,
                trio.names[s % 3]
            );
            assert!(status.contains(&want), "{want:?} not in\n{status}");
        }
        let check = trio.cli_ok(i, &["check"]);
        assert!(check.contains("consistent: 60 frequencies"), "{check}");
    }
}

/// A node whose store was created with another configuration (here: another pool) refuses to
/// serve, naming the peer and both fingerprints, and exits; the cluster it met keeps serving.
#[test]
fn a_node_with_another_configuration_refuses_to_serve() {
    if !erlang::erlang_or_skip("a_node_with_another_configuration_refuses_to_serve") {
        return;
    }
    let mut trio = Trio::start("none");
    trio.kill(2);
    let other = trio._dir.path().join("other");
    let list = trio.names.join(",");
    trio.cluster.freqalloc(
        &other,
        &[
            "init", "--pool", "0-119", "--shards", SHARDS, "--nodes", &list,
        ],
    );
    let mut cmd = trio.cluster.command(env!("CARGO_BIN_EXE_freqalloc"));
    cmd.arg("node")
        .args(["--name", &trio.names[2]])
        .arg("--data")
        .arg(&other)
        .args(["--cookie", &trio.cluster.cookie]);
    let mut proc = erlang::Proc::spawn("a node of another configuration", cmd);
    let status = proc
        .wait_exit(READY_TIMEOUT)
        .expect("the node refuses and exits");
    assert_eq!(status.code(), Some(1), "{}", proc.diagnostics());
    let said = proc.diagnostics();
    assert!(
        said.contains("serves another cluster configuration") && said.contains("fingerprint"),
        "{said}"
    );
    // The others still serve their shards.
    let f = trio.cli_ok(0, &["allocate", "--client", "x"]);
    assert!(!f.trim().is_empty());
}

/// With one node down its shards answer a clear error (nothing was sent, nothing changed) and
/// the rest serve: allocations through the others land only on live shards, and when those are
/// empty the answer is that a shard is unreachable, not `no_frequency` (the pool is not
/// exhausted). With two of three down only the last node's shards serve. A node that comes back
/// rejoins: what it held is there (sync), and `check` passes through every node.
#[test]
fn nodes_down_leave_their_shards_unreachable_and_the_rest_serving() {
    if !erlang::erlang_or_skip("nodes_down_leave_their_shards_unreachable_and_the_rest_serving") {
        return;
    }
    let mut trio = Trio::start("sync");
    // One frequency held on each node's first shard (0-9 on a, 10-19 on b, 20-29 on c).
    let mut held = Vec::new();
    for _ in 0..6 {
        let f = trio.allocate(0, "keep");
        held.push(f);
    }
    held.sort_unstable();
    let on_b: Vec<u64> = held.iter().copied().filter(|f| (f / 10) % 3 == 1).collect();
    assert!(
        !on_b.is_empty(),
        "most-free spreads over every shard: {held:?}"
    );

    trio.kill(1);
    let (ok, _, err) = trio.cli(0, &["deallocate", &on_b[0].to_string(), "--client", "keep"]);
    assert!(!ok, "a frequency of a dead node's shard cannot be freed");
    // Unreachable (nothing sent), or, if a had not yet seen the connection drop, lost in
    // flight: either way refused, and naming the dead node.
    assert!(
        (err.contains("is unreachable") || err.contains("may have been handled"))
            && err.contains(&trio.names[1]),
        "{err}"
    );
    // Through c: allocate until refused. Every allocation lands on a live shard.
    let mut got = Vec::new();
    let refusal = loop {
        let (ok, out, err) = trio.cli(2, &["allocate", "--client", "fill"]);
        if !ok {
            break err;
        }
        got.push(out.trim().parse::<u64>().unwrap());
        assert!(got.len() <= 60, "more allocations than the pool holds");
    };
    assert!(got.iter().all(|f| (f / 10) % 3 != 1), "{got:?}");
    assert_eq!(got.len(), 40 - (held.len() - on_b.len()), "{got:?}");
    assert!(refusal.contains("is unreachable"), "{refusal}");
    // A release with b down frees what the live shards hold and names the shard it could not.
    let (ok, _, err) = trio.cli(0, &["release", "--client", "fill"]);
    assert!(!ok && err.contains("is unreachable"), "{err}");
    let left = trio.cli_ok(0, &["allocate", "--client", "fill2"]);
    assert!(
        !left.trim().is_empty(),
        "the live shards' frequencies were released"
    );
    trio.cli_ok(0, &["deallocate", left.trim(), "--client", "fill2"]);

    trio.kill(2);
    let f = trio.allocate(0, "last");
    assert_eq!((f / 10) % 3, 0, "only node a's shards serve: {f}");

    trio.up(1);
    trio.up(2);
    let keep = trio.held(1, "keep");
    assert_eq!(keep, held, "what the killed nodes held survived (sync)");
    trio.check_through(0..3);
}

/// A partition simulated by SIGSTOP of node b past the tick time (2 s here), then SIGCONT: while
/// b is stopped, every allocation that succeeds through a is on a's or c's shards (b cannot
/// answer, and a drops b after the tick time and routes around it); calls caught in flight end
/// with "may have been handled", never hang. After SIGCONT b serves again, a reaches it as soon as
/// it has heard from it, what b held is intact, and `check` passes on every node (nothing held
/// twice, free + allocated = pool). With one copy per shard no side can allocate what the other
/// owns; the replica/epoch half of this test waits for replicas on other nodes.
#[test]
fn a_stopped_node_is_routed_around_and_rejoins_after_sigcont() {
    if !erlang::erlang_or_skip("a_stopped_node_is_routed_around_and_rejoins_after_sigcont") {
        return;
    }
    let trio = Trio::start_with("sync", &["--net-ticktime", "2"]);
    let mut keep = Vec::new();
    for _ in 0..6 {
        let f = trio.allocate(0, "keep");
        keep.push(f);
    }
    keep.sort_unstable();
    let b_pid = trio.nodes[1].as_ref().unwrap().proc.pid();
    erlang::signal(b_pid, libc::SIGSTOP);
    let mut on_live = 0;
    let mut attempts = 0;
    while on_live < 20 {
        attempts += 1;
        assert!(
            attempts < 200,
            "the cluster stopped allocating with b stopped"
        );
        let (ok, out, err) = trio.cli(0, &["allocate", "--client", "fill"]);
        if ok {
            let f: u64 = out.trim().parse().unwrap();
            assert_ne!((f / 10) % 3, 1, "{f} allocated on stopped b's shard");
            on_live += 1;
        } else {
            assert!(
                err.contains("may have been handled") || err.contains("is unreachable"),
                "{err}"
            );
        }
    }
    erlang::signal(b_pid, libc::SIGCONT);
    // b answers again (through its own front end, which reaches a and c once its loads thread
    // has dialled them again: calls never dial, so the first calls may find no connection yet;
    // bounded by attempts, each a whole CLI call, no sleep)...
    let mut tries = 0;
    let held_b = loop {
        let (ok, out, err) = trio.cli(1, &["held", "--client", "keep"]);
        if ok {
            break out;
        }
        tries += 1;
        assert!(
            tries < 500 && err.contains("unreachable"),
            "b did not come back: {err}"
        );
    };
    let held_b: Vec<u64> = held_b.lines().map(|l| l.trim().parse().unwrap()).collect();
    assert_eq!(held_b, keep, "b kept what it held (sync)");
    // ...and a, having heard from b, reaches b's shards again.
    let on_b = keep
        .iter()
        .find(|f| (*f / 10) % 3 == 1)
        .expect("keep has one on b");
    trio.cli_ok(0, &["deallocate", &on_b.to_string(), "--client", "keep"]);
    trio.check_through(0..3);
}

/// The control plane (Raft, `src/control/`) runs over the nodes' own distribution connections:
/// the three nodes elect one leader, it bootstraps the placement (every shard at epoch 1 on its
/// serving node), and every node's `status` shows the same; SIGKILL of the leader: the two left
/// elect a new one in a later term and keep the log; the killed node restarts and follows it.
/// The waits are bounded by attempts, each a whole CLI call (no sleep).
#[test]
fn the_control_plane_elects_over_the_nodes_connections_and_survives_its_leader() {
    if !erlang::erlang_or_skip(
        "the_control_plane_elects_over_the_nodes_connections_and_survives_its_leader",
    ) {
        return;
    }
    let mut trio = Trio::start("none");
    let control = |trio: &Trio, i: usize| -> Option<(String, u64, String)> {
        let (ok, out, _) = trio.cli(i, &["status"]);
        let line = out
            .lines()
            .find(|l| l.trim_start().starts_with("control:"))?;
        let leader = line.split("leader ").nth(1)?.split(',').next()?.to_string();
        let term = line
            .split("term ")
            .nth(1)?
            .split(',')
            .next()?
            .parse()
            .ok()?;
        let shards = line.split("shards ").nth(1)?.to_string();
        (ok && leader != "none").then_some((leader, term, shards))
    };
    // Until `nodes` all show one view that is bootstrapped and led by someone `leading` accepts.
    let agreed = |trio: &Trio, nodes: &[usize], leading: &dyn Fn(&str) -> bool| {
        for _ in 0..500 {
            let views: Vec<_> = nodes.iter().map(|&i| control(trio, i)).collect();
            if let Some(Some(first)) = views.first() {
                let boot = !first.2.contains("not bootstrapped") && leading(&first.0);
                if boot && views.iter().all(|v| v.as_ref() == Some(first)) {
                    return first.clone();
                }
            }
        }
        panic!("nodes {nodes:?} never agreed on one leader and a bootstrapped log");
    };
    let (leader, term, shards) = agreed(&trio, &[0, 1, 2], &|_| true);
    for s in 0..6 {
        assert!(
            shards.contains(&format!("{s}:{}@e1", trio.names[s % 3])),
            "shard {s} not at epoch 1 on its node: {shards}"
        );
    }
    let l = trio
        .names
        .iter()
        .position(|n| *n == leader)
        .expect("a cluster node leads");
    trio.kill(l);
    let rest: Vec<usize> = (0..3).filter(|&i| i != l).collect();
    let (leader2, term2, shards2) = agreed(&trio, &rest, &|l| l != leader);
    assert!(term2 > term, "in a later term ({term2} after {term})");
    assert_eq!(shards2, shards, "the log survives its leader");
    trio.up(l);
    let (leader3, _, shards3) = agreed(&trio, &[0, 1, 2], &|_| true);
    assert_eq!(
        (leader3, shards3),
        (leader2, shards),
        "the restarted node follows"
    );
}

/// What one client name did, from a storm's lines.
#[derive(Default, Debug)]
struct NameLog {
    held: BTreeSet<i64>,
    /// A call whose outcome is unknown: an allocate (`None`) or a deallocate of `Some(F)`.
    pending: Option<Option<i64>>,
    /// A call was lost in flight: this name's next requests are another name's (CLI) or none.
    uncertain: bool,
}

/// Records that `name` was given `f`. Lines of concurrent clients interleave in the output
/// after the fact, so another holder is allowed only while its deallocation of `f` is in flight
/// (sent, not yet printed as acknowledged): anything else is a frequency held twice.
fn given(
    logs: &BTreeMap<String, NameLog>,
    holders: &mut BTreeMap<i64, String>,
    name: &str,
    f: i64,
    line: &str,
) {
    if let Some(other) = holders.insert(f, name.to_string()) {
        let freeing = logs.get(&other).is_some_and(|l| l.pending == Some(Some(f)));
        assert!(
            other == name || freeing,
            "{f} given to {name} while {other} held it: {line}"
        );
    }
}

/// Records that `name` gave `f` back.
fn taken_back(holders: &mut BTreeMap<i64, String>, name: &str, f: i64) {
    if holders.get(&f).is_some_and(|h| h == name) {
        holders.remove(&f);
    }
}

/// Applies one line of `freqalloc load --history`: `fail` changed nothing, `unknown` (a shard's
/// node died during the call) may have.
fn apply_history_line(
    logs: &mut BTreeMap<String, NameLog>,
    holders: &mut BTreeMap<i64, String>,
    line: &str,
) {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
        return;
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
            log.held.insert(f);
            log.pending = None;
            given(logs, holders, &name, f, line);
        }
        ("deallocate", "ok") => {
            let f = freq.expect("a deallocated frequency");
            assert!(log.held.remove(&f), "{name} gave back {f} it did not hold");
            log.pending = None;
            taken_back(holders, &name, f);
        }
        (_, "fail") => log.pending = None,
        (_, "unknown") => log.uncertain = true,
        other => panic!("unexpected history line {other:?}: {line}"),
    }
}

/// Applies one line of `freq_client:cluster_storm`.
fn apply_storm_line(
    logs: &mut BTreeMap<String, NameLog>,
    holders: &mut BTreeMap<i64, String>,
    line: &str,
) {
    let words: Vec<&str> = line.split_whitespace().collect();
    let num = |i: usize| words.get(i).map(|f| f.parse::<i64>().expect("a frequency"));
    match words.as_slice() {
        ["REQ", "a", name] => logs.entry(name.to_string()).or_default().pending = Some(None),
        ["REQ", "d", name, _] => logs.entry(name.to_string()).or_default().pending = Some(num(3)),
        ["ACK", "a", name, _] => {
            let f = num(3).unwrap();
            let log = logs.entry(name.to_string()).or_default();
            log.held.insert(f);
            log.pending = None;
            given(logs, holders, name, f, line);
        }
        ["ACK", "d", name, _] => {
            let f = num(3).unwrap();
            let log = logs.entry(name.to_string()).or_default();
            assert!(log.held.remove(&f), "{name} gave back {f} it did not hold");
            log.pending = None;
            taken_back(holders, name, f);
        }
        ["ACK", "n", name] | ["ACK", "e", "a", name] | ["ACK", "e", "d", name, _] => {
            logs.entry(name.to_string()).or_default().pending = None
        }
        ["ACK", "u", name] => logs.entry(name.to_string()).or_default().uncertain = true,
        _ => {}
    }
}

/// Whether `actual` is what `log` acknowledged, give or take the call in flight.
fn agrees(log: &NameLog, actual: &BTreeSet<i64>) -> bool {
    match log.pending {
        None => *actual == log.held,
        Some(None) => {
            *actual == log.held
                || (actual.is_superset(&log.held) && actual.len() == log.held.len() + 1)
        }
        Some(Some(f)) => {
            let mut without = log.held.clone();
            without.remove(&f);
            *actual == log.held || *actual == without
        }
    }
}

/// SIGKILL of one node (b) at random moments, many rounds (`FREQALLOC_CLUSTER_KILLS`, default
/// 2; `FREQALLOC_CRASH_SEED` replays), while BEAM processes storm through node a and a CLI client
/// (`load --node --history`) through node c, in `sync`. While b is down the storms go on over the
/// other shards (an allocation of the test's own through a succeeds then, and it waits for more
/// acknowledgements of both storms); no frequency is given to a name while another name of the
/// same client holds it without a deallocation of it in flight (checked along each client's own
/// output), and no two names hold one frequency at the end; after b is back, every
/// acknowledged operation is there, the ones in flight at the kill either happened or not, and
/// `check` (free + allocated = pool, every shard consistent) passes through every node.
#[test]
fn sigkill_of_a_node_under_storms_loses_no_acknowledged_operation() {
    if !erlang::erlang_or_skip("sigkill_of_a_node_under_storms_loses_no_acknowledged_operation") {
        return;
    }
    storm_kill_rounds(false);
}

/// As [`sigkill_of_a_node_under_storms_loses_no_acknowledged_operation`], with `--replicas 2`
/// (shard i's backup on node i+1 mod 3), the victim going round the nodes (a, b, c, a, ...;
/// the storms through the other two): the killed node's shards are taken over by their
/// in-sync backups (the control log promotes them), so while it is down every shard of the
/// pool is served by the two left; its own backups are recorded out of sync and their
/// primaries write alone. Restarted, it rejoins as backup and is caught up until every shard is
/// in sync again; nothing acknowledged is lost and nothing is held twice.
#[test]
fn sigkill_of_a_node_with_replicas_fails_over_and_loses_no_acknowledged_operation() {
    if !erlang::erlang_or_skip(
        "sigkill_of_a_node_with_replicas_fails_over_and_loses_no_acknowledged_operation",
    ) {
        return;
    }
    storm_kill_rounds(true);
}

fn storm_kill_rounds(replicated: bool) {
    let rounds: u64 = std::env::var("FREQALLOC_CLUSTER_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    let seed = erlang::crash_seed();
    let mut below = erlang::below_from(seed);
    let mut trio = if replicated {
        Trio::start_replicated("sync", &[])
    } else {
        Trio::start("sync")
    };
    for round in 0..rounds {
        // Without replicas b is killed every round (a and c carry the clients). With replicas
        // the victim goes round the nodes, so that every round kills a node that is primary of
        // some shards (primaries move to the next node at each failover); the storms go through
        // the other two.
        let (v, s, l) = if replicated {
            let v = (round % 3) as usize;
            (v, (v + 1) % 3, (v + 2) % 3)
        } else {
            (1, 0, 2)
        };
        let mut logs: BTreeMap<String, NameLog> = BTreeMap::new();
        let mut holders: BTreeMap<i64, String> = BTreeMap::new();
        let mut storm = trio.cluster.spawn_erl(&format!(
            "freq_client:cluster_storm('{}', 8, 300)",
            trio.names[s]
        ));
        storm.wait_prefix(READY_TIMEOUT, "STORM started");
        let mut load = trio.cluster.command(env!("CARGO_BIN_EXE_freqalloc"));
        load.args([
            "load",
            "--node",
            &trio.names[l],
            "--cookie",
            &trio.cluster.cookie,
        ])
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
        load.wait_line(CLIENT_TIMEOUT, |l| l.contains(r#""phase":"ok""#));
        let kill_after = 5 + below(200);
        for _ in 0..kill_after {
            storm.wait_prefix(CLIENT_TIMEOUT, "ACK ");
        }
        trio.kill(v);
        if replicated {
            // Its shards fail over: every shard is served by the two left.
            let live = [&trio.names[s], &trio.names[l]];
            trio.status_until(s, "every shard served by the two left", |st| {
                served_by(st, &live)
            });
        }
        // With b down the cluster serves: an allocation of our own through a, now...
        let probe = trio.cli_ok(s, &["allocate", "--client", "probe"]);
        trio.cli_ok(s, &["deallocate", probe.trim(), "--client", "probe"]);
        // ...and both storms keep being served by a's and c's shards.
        let mut served = 0;
        while served < 20 {
            let l = storm.wait_prefix(CLIENT_TIMEOUT, "ACK ");
            served += usize::from(l.starts_with("ACK a ") || l.starts_with("ACK d "));
        }
        load.wait_line(CLIENT_TIMEOUT, |l| l.contains(r#""phase":"ok""#));
        trio.up(v);
        storm.wait_prefix(CLIENT_TIMEOUT * 6, "STORM over");
        storm.wait_exit(CLIENT_TIMEOUT).expect("the storm ends");
        let crashed: Vec<String> = storm
            .all_stdout()
            .into_iter()
            .filter(|l| l.starts_with("CRASH"))
            .collect();
        assert!(crashed.is_empty(), "storm workers crashed: {crashed:?}");
        let _ = load.kill();
        // Every line each client printed, in its own order (the two storms use other names).
        let load_lines = load.all_stdout();
        let storm_lines = storm.all_stdout();
        for l in &storm_lines {
            apply_storm_line(&mut logs, &mut holders, l);
        }
        let mut load_holders = BTreeMap::new();
        for l in load_lines.iter().filter(|l| l.starts_with('{')) {
            apply_history_line(&mut logs, &mut load_holders, l);
        }
        let names: Vec<&String> = logs.keys().collect();
        let mut everyone = BTreeSet::new();
        let mut in_flight = 0;
        for name in names {
            let log = &logs[name];
            let out = trio.cli_ok(0, &["held", "--client", name]);
            let actual: BTreeSet<i64> = out.lines().map(|l| l.trim().parse().unwrap()).collect();
            in_flight += usize::from(log.pending.is_some());
            assert!(
                agrees(log, &actual),
                "seed {seed}, round {round}, kill after {kill_after} acks: {name} holds \
                 {actual:?}, acknowledged {:?} with {:?} in flight",
                log.held,
                log.pending
            );
            for f in &actual {
                assert!(everyone.insert(*f), "{f} is held by two names");
            }
        }
        if replicated {
            // The restarted node rejoined as backup and was caught up, and its own view has
            // caught up too (a stale view shows a shard it does not serve as unreachable).
            let all: Vec<&String> = trio.names.iter().collect();
            for i in [v, s] {
                trio.status_until(i, "every backup in sync", |st| {
                    all_in_sync(st) && served_by(st, &all)
                });
            }
        }
        let lost = logs.values().filter(|l| l.uncertain).count();
        println!(
            "round {round}: kill after {kill_after} acks, {in_flight} calls in flight, \
             {lost} lost in flight"
        );
        trio.check_through(0..3);
        // The next round starts from an empty pool.
        for name in logs.keys() {
            trio.cli_ok(0, &["release", "--client", name]);
        }
    }
}

/// With `--replicas 2`, two nodes of three killed one after the other (b, then c): after b, its
/// shards (1, 4) move to c and a records b's copies of its own shards (0, 3) out of sync as it
/// writes them alone; after c, only one node is left, no majority can promote anything, and:
/// - shards 1 and 4 lost both copies (c, and b out of sync): they answer a clear error that says
///   so;
/// - shards 2 and 5 (primary c) have an in-sync backup on a that cannot be promoted without a
///   majority: they answer a clear error too;
/// - shards 0 and 3, whose primary a serves alone, go on serving.
///
/// Restarted, b and c rejoin, everything held is there, every backup is caught up, and `check`
/// passes through every node.
#[test]
fn with_two_nodes_of_three_killed_only_the_shards_with_a_live_lone_primary_serve() {
    if !erlang::erlang_or_skip(
        "with_two_nodes_of_three_killed_only_the_shards_with_a_live_lone_primary_serve",
    ) {
        return;
    }
    let mut trio = Trio::start_replicated("sync", &[]);
    // One frequency held on every shard (most-free spreads them, from counts that may lag by
    // a loads interval: allocate until every shard has one, give back the extra ones).
    let mut keep: BTreeMap<u64, u64> = BTreeMap::new();
    for _ in 0..60 {
        if keep.len() == 6 {
            break;
        }
        let f = trio.allocate(0, "keep");
        if let std::collections::btree_map::Entry::Vacant(e) = keep.entry(f / 10) {
            e.insert(f);
        } else {
            trio.cli_ok(0, &["deallocate", &f.to_string(), "--client", "keep"]);
        }
    }
    assert_eq!(keep.len(), 6, "one on every shard: {keep:?}");
    let keep: Vec<u64> = keep.into_values().collect();

    trio.kill(1);
    let live = [&trio.names[0], &trio.names[2]];
    trio.status_until(0, "every shard served by a or c", |st| served_by(st, &live));
    // Writes to a's shards record their backups on b out of sync (a then writes alone).
    trio.status_until(0, "shards 0 and 3 written alone", |st| {
        let alone = [0, 3]
            .iter()
            .all(|&s| shard_line(st, s).contains("not in sync"));
        if !alone {
            let f = trio.cli_ok(0, &["allocate", "--client", "spread"]);
            trio.cli_ok(0, &["deallocate", f.trim(), "--client", "spread"]);
        }
        alone
    });

    trio.kill(2);
    // a has seen c go (so no call is caught in flight to it below).
    trio.status_until(0, "c unreachable", |st| {
        [1, 2, 4, 5]
            .iter()
            .all(|&s| shard_line(st, s).contains("unreachable"))
    });
    // Through a: allocate until refused. Only a's shards serve.
    let mut got = Vec::new();
    let refusal = loop {
        let (ok, out, err) = trio.cli(0, &["allocate", "--client", "fill"]);
        if !ok {
            break err;
        }
        got.push(out.trim().parse::<u64>().unwrap());
        assert!(got.len() <= 60, "more allocations than the pool holds");
    };
    assert!(
        got.iter().all(|f| [0, 3].contains(&(f / 10))),
        "only shards 0 and 3 (primary a, alone) serve: {got:?}"
    );
    assert_eq!(got.len(), 18, "shards 0 and 3 serve all they have: {got:?}");
    assert!(refusal.contains("is unreachable"), "{refusal}");
    // The shards that lost both copies, and those whose backup cannot be promoted, say so.
    let freeing = |f: u64| {
        let (ok, _, err) = trio.cli(0, &["deallocate", &f.to_string(), "--client", "keep"]);
        assert!(!ok, "{f} freed with its shard's nodes down");
        err
    };
    let on = |s: u64| *keep.iter().find(|f| *f / 10 == s).unwrap();
    let lost = freeing(on(1));
    assert!(
        lost.contains("is unreachable")
            && lost.contains(&trio.names[2])
            && lost.contains("not in sync, so it cannot take over"),
        "{lost}"
    );
    let stuck = freeing(on(2));
    assert!(
        stuck.contains("is unreachable") && stuck.contains("majority"),
        "{stuck}"
    );

    trio.up(1);
    trio.up(2);
    let all: Vec<&String> = trio.names.iter().collect();
    for i in 0..3 {
        trio.status_until(i, "every backup in sync", |st| {
            all_in_sync(st) && served_by(st, &all)
        });
    }
    let held = trio.held(1, "keep");
    assert_eq!(
        held, keep,
        "what was held survived (sync, and one copy at least)"
    );
    trio.check_through(0..3);
}

/// With `--replicas 2`, a partition simulated by SIGSTOP of node b past the tick time (2 s):
/// the majority (a, c) promotes the backups of b's shards (1, 4, to c, at epoch 2) and goes on
/// serving the whole pool. A BEAM shell that was waiting to reach b calls b's shard service for
/// shards 1 and 4 the moment b runs again (SIGCONT), before b can have heard of the
/// promotion: b must not accept any of those allocations (its writes carry epoch 1, which c
/// refuses, and the control log will not let it write alone). b then rejoins as backup, is
/// caught up, and `check` passes through every node.
#[test]
fn a_stopped_primary_whose_backup_was_promoted_accepts_no_allocation_after_sigcont() {
    if !erlang::erlang_or_skip(
        "a_stopped_primary_whose_backup_was_promoted_accepts_no_allocation_after_sigcont",
    ) {
        return;
    }
    let trio = Trio::start_replicated("sync", &["--net-ticktime", "2"]);
    let mut keep = Vec::new();
    for _ in 0..6 {
        let f = trio.allocate(0, "keep");
        keep.push(f);
    }
    keep.sort_unstable();
    let fp = trio.fingerprint(1);
    let b_pid = trio.nodes[1].as_ref().unwrap().proc.pid();
    erlang::signal(b_pid, libc::SIGSTOP);
    let (a, c) = (&trio.names[0], &trio.names[2]);
    trio.status_until(0, "b's shards promoted to c", |st| {
        [1, 4].iter().all(|&s| {
            let l = shard_line(st, s);
            l.contains(&format!(" on {c} ")) && l.contains("(epoch 2,")
        })
    });
    // The majority serves the whole pool meanwhile.
    for _ in 0..12 {
        let f = trio.cli_ok(0, &["allocate", "--client", "meanwhile"]);
        assert!(!f.trim().is_empty());
    }
    // A shell that reaches b as soon as it runs again, then asks b's own replicas of shards 1
    // and 4 (still primaries at epoch 1 in b's view) for allocations.
    let b = &trio.names[1];
    let eval = format!(
        "io:format(\"SHELL up~n\"), pong = net_adm:ping('{b}'), S = {{freq_shard, '{b}'}}, \
         Fp = <<\"{fp}\">>, \
         Rs = [catch gen_server:call(S, {{shard_call, Sh, {{allocate, <<\"stale\">>, undefined}}, Fp}}, 30000) \
               || Sh <- [1, 4, 1, 4, 1, 4]], \
         N = length([x || {{{{allocated, _}}, _, _, _}} <- Rs]), \
         io:format(\"RESULT ok allocated=~b~n\", [N]), \
         [io:format(\"ANSWER ~p~n\", [R]) || R <- Rs], halt(0)."
    );
    let mut shell = trio.cluster.spawn_erl(&eval);
    shell.wait_prefix(READY_TIMEOUT, "SHELL up");
    erlang::signal(b_pid, libc::SIGCONT);
    let line = shell.wait_prefix(CLIENT_TIMEOUT * 6, "RESULT");
    let r = erlang::parse_result(&line).unwrap_or_else(|| panic!("{}", shell.diagnostics()));
    assert_eq!(
        r.num("allocated"),
        0,
        "b accepted allocations for shards whose backup was promoted: {:?}",
        shell.all_stdout()
    );
    println!("b's answers right after SIGCONT: {:?}", shell.all_stdout());
    // b rejoins as backup and is caught up; its view agrees; nothing is held twice.
    trio.status_until(1, "b caught up, c primary of 1 and 4", |st| {
        all_in_sync(st) && served_by(st, &[a, c])
    });
    let held = trio.held(1, "keep");
    assert_eq!(held, keep);
    trio.check_through(0..3);
}

/// With `--replicas 2` in `none` (nothing on disk): a node that restarts comes back empty, so it
/// must be caught up before it counts as a copy. b is killed (its shards move to their backups
/// on c), restarted empty, and caught up; then c is killed: the shards c served are promoted to
/// their backups (on a, and on the restarted b), and everything held is still held: the
/// restarted node's copies were real copies, not the empty tables it started with.
#[test]
fn in_none_a_restarted_node_is_caught_up_before_it_can_take_over() {
    if !erlang::erlang_or_skip("in_none_a_restarted_node_is_caught_up_before_it_can_take_over") {
        return;
    }
    let mut trio = Trio::start_replicated("none", &[]);
    let mut keep = Vec::new();
    for _ in 0..12 {
        let f = trio.allocate(0, "keep");
        keep.push(f);
    }
    keep.sort_unstable();
    let names = trio.names.clone();
    trio.kill(1);
    let (a, b, c) = (&names[0], &names[1], &names[2]);
    trio.status_until(0, "every shard served by a or c", |st| {
        served_by(st, &[a, c])
    });
    trio.up(1);
    trio.status_until(0, "every backup in sync", all_in_sync);
    trio.kill(2);
    trio.status_until(0, "every shard served by a or b", |st| {
        served_by(st, &[a, b])
    });
    let held = trio.held(0, "keep");
    assert_eq!(held, keep, "every frequency held survived two failovers");
    trio.check_through([0, 1]);
}
