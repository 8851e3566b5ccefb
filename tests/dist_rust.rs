//! The Rust side of distribution: `RemoteAllocator` against a real `freqalloc node` child, on a
//! private epmd with a random cookie (the harness in `tests/erlang/mod.rs`). The course
//! scenario, each refusal, pipelined calls, the node down and back up, a wrong cookie, garbage
//! on the socket, and a `sync` node SIGKILLed under a `load --node --history` storm.
//!
//! Under `CI=true` a missing `epmd`/`erl` fails these tests; elsewhere they print how to install
//! Erlang and skip.

mod common;
mod erlang;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::history::assert_status_keeps_history;
use erlang::{erlang_or_skip, unique_name, Cluster, ServerNode};
use freqalloc::dist::{term, ClientOptions, DistError, RemoteAllocator};
use freqalloc::freq::FreqError;
use serde_json::Value;

/// A store in `dir` with `pool`, `shards` shards and `durability`, served by a fresh node.
fn serve(
    cluster: &Cluster,
    dir: &Path,
    pool: &str,
    shards: &str,
    durability: &str,
    extra: &[&str],
) -> ServerNode {
    let data = dir.join("store");
    cluster.freqalloc(
        &data,
        &[
            "init",
            "--pool",
            pool,
            "--shards",
            shards,
            "--durability",
            durability,
        ],
    );
    cluster.start_freqalloc_node(&unique_name("freq"), &data, extra)
}

fn options(cluster: &Cluster) -> ClientOptions {
    let mut o = ClientOptions::new(&cluster.cookie);
    o.epmd_port = cluster.epmd.port();
    o
}

fn connect(cluster: &Cluster, node: &ServerNode) -> RemoteAllocator {
    RemoteAllocator::connect_with(&node.name, options(cluster))
        .unwrap_or_else(|e| panic!("connect to {}: {e}\n{}", node.name, node.proc.diagnostics()))
}

fn freq_err(r: Result<impl std::fmt::Debug, DistError>) -> FreqError {
    match r {
        Err(DistError::Freq(e)) => e,
        other => panic!("expected a typed allocator error, got {other:?}"),
    }
}

/// The course's scenario: the whole pool, `no_frequency` at exhaustion, deallocate, reuse.
#[test]
fn course_scenario_through_remote_allocator() {
    if !erlang_or_skip("course_scenario_through_remote_allocator") {
        return;
    }
    let cluster = Cluster::new();
    let dir = tempfile::tempdir().unwrap();
    let node = serve(&cluster, dir.path(), "10-15,20-25", "2", "sync", &[]);
    let remote = connect(&cluster, &node);
    let mut got: Vec<u64> = (0..12).map(|_| remote.allocate("radio").unwrap()).collect();
    got.sort_unstable();
    let pool: Vec<u64> = (10..=15).chain(20..=25).collect();
    assert_eq!(got, pool, "the whole pool, each frequency once");
    assert!(matches!(
        freq_err(remote.allocate("radio")),
        FreqError::NoFrequency { pool_size: 12 }
    ));
    remote.deallocate(13, "radio").unwrap();
    assert_eq!(
        remote.allocate("tv").unwrap(),
        13,
        "the freed frequency is reused"
    );
    assert_eq!(remote.held_by("tv").unwrap(), vec![13]);
    let s = remote.status().unwrap();
    assert_eq!(
        (s.pool, s.free, s.allocated, s.shards.len()),
        (12, 0, 12, 2)
    );
    let mut released = remote.release_all("radio").unwrap();
    released.sort_unstable();
    assert_eq!(released.len(), 11);
    assert!(!released.contains(&13));
    assert!(remote.check().unwrap().is_empty());
    assert_eq!(remote.status().unwrap().free, 11);
}

/// Every refusal comes back as the in-process error, and changes nothing.
#[test]
fn each_refusal_is_the_typed_error() {
    if !erlang_or_skip("each_refusal_is_the_typed_error") {
        return;
    }
    let cluster = Cluster::new();
    let dir = tempfile::tempdir().unwrap();
    let node = serve(&cluster, dir.path(), "10-15", "1", "sync", &[]);
    let remote = connect(&cluster, &node);
    let f = remote.allocate("a").unwrap();
    assert!(
        matches!(freq_err(remote.deallocate(f, "b")), FreqError::NotOwner { freq, .. } if freq == f)
    );
    let free = if f == 10 { 11 } else { 10 };
    assert!(
        matches!(freq_err(remote.deallocate(free, "a")), FreqError::NotAllocated(x) if x == free)
    );
    assert!(matches!(
        freq_err(remote.deallocate(99, "a")),
        FreqError::UnknownFrequency(99)
    ));
    assert!(matches!(
        freq_err(remote.allocate("")),
        FreqError::BadClientName(_)
    ));
    assert!(matches!(
        freq_err(remote.allocate("pid:x@y:1.0.0")),
        FreqError::BadClientName(_)
    ));
    let leased = remote
        .allocate_with_lease("l", Duration::from_secs(3600))
        .unwrap();
    assert_ne!(leased, f);
    assert_eq!(
        remote.held_by("a").unwrap(),
        vec![f],
        "refusals changed nothing"
    );
    // A request outside the protocol is `{error, badarg}`, not a crash of the node.
    let reply = remote.call(&freqalloc::dist::term::atom("bogus")).unwrap();
    assert_eq!(format!("{reply}"), "{'error','badarg'}");
    assert!(remote.check().unwrap().is_empty());
}

/// Many calls in flight on the one connection: every reply reaches its caller.
#[test]
fn pipelined_calls_on_one_connection() {
    if !erlang_or_skip("pipelined_calls_on_one_connection") {
        return;
    }
    let cluster = Cluster::new();
    let dir = tempfile::tempdir().unwrap();
    let node = serve(&cluster, dir.path(), "0-99", "4", "sync", &[]);
    let remote = connect(&cluster, &node);
    let pending: Vec<_> = (0..100)
        .map(|i| {
            remote
                .call_async(&RemoteAllocator::allocate_request(
                    &format!("p{}", i % 7),
                    None,
                ))
                .unwrap()
        })
        .collect();
    let mut got = BTreeMap::new();
    for (i, p) in pending.into_iter().enumerate() {
        let owner = format!("p{}", i % 7);
        let f = remote.decode_alloc(&owner, p.wait().unwrap()).unwrap();
        assert!(got.insert(f, owner).is_none(), "frequency {f} given twice");
    }
    assert_eq!(got.len(), 100);
    for i in 0..7 {
        let owner = format!("p{i}");
        let want: Vec<u64> = got
            .iter()
            .filter(|(_, o)| **o == owner)
            .map(|(f, _)| *f)
            .collect();
        assert_eq!(
            remote.held_by(&owner).unwrap(),
            want,
            "each reply reached its own caller"
        );
    }
    let extra = remote
        .call_async(&RemoteAllocator::allocate_request("p0", None))
        .unwrap();
    assert!(matches!(
        freq_err(remote.decode_alloc("p0", extra.wait().unwrap())),
        FreqError::NoFrequency { .. }
    ));
    // From several threads at once, too.
    let all: Vec<(u64, String)> = got.into_iter().collect();
    std::thread::scope(|s| {
        for chunk in all.chunks(25) {
            let remote = &remote;
            s.spawn(move || {
                for (f, owner) in chunk {
                    remote.deallocate(*f, owner).unwrap();
                }
            });
        }
    });
    assert_eq!(remote.status().unwrap().free, 100);
}

/// The node stops: calls fail at once with a clear error; it comes back: the same client works
/// again and finds what was allocated before.
#[test]
fn node_down_and_back_up() {
    if !erlang_or_skip("node_down_and_back_up") {
        return;
    }
    let cluster = Cluster::new();
    let dir = tempfile::tempdir().unwrap();
    let mut node = serve(&cluster, dir.path(), "10-15", "1", "sync", &[]);
    let remote = connect(&cluster, &node);
    let f = remote.allocate("keeper").unwrap();
    let status = node.proc.stop();
    assert!(
        status.is_some_and(|s| s.success()),
        "orderly stop exits 0\n{}",
        node.proc.diagnostics()
    );
    assert!(
        !dir.path().join("store/node").exists(),
        "the node file is removed on a clean stop"
    );
    let started = Instant::now();
    let err = remote.allocate("keeper").unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the error came at once, not by timeout"
    );
    assert!(
        matches!(
            err,
            DistError::NodeDown(_) | DistError::NodeNotRunning(_) | DistError::Unreachable { .. }
        ),
        "a clear error, got {err:?}"
    );
    assert!(
        err.to_string().contains(&node.name),
        "the error names the node: {err}"
    );
    let again = cluster.start_freqalloc_node(&node.name, &dir.path().join("store"), &[]);
    assert_eq!(
        remote.held_by("keeper").unwrap(),
        vec![f],
        "the same client works again"
    );
    let g = remote.allocate("keeper").unwrap();
    assert_ne!(f, g);
    drop(again);
}

/// A client with the wrong cookie is refused at the handshake and logged; nothing changes and
/// the node goes on serving.
#[test]
fn wrong_cookie_is_refused() {
    if !erlang_or_skip("wrong_cookie_is_refused") {
        return;
    }
    let cluster = Cluster::new();
    let dir = tempfile::tempdir().unwrap();
    let node = serve(&cluster, dir.path(), "10-15", "1", "sync", &[]);
    let mut bad = options(&cluster);
    bad.cookie = "not-the-cookie".into();
    match RemoteAllocator::connect_with(&node.name, bad) {
        Err(DistError::Handshake { .. }) => {}
        other => panic!("expected a refused handshake, got {other:?}"),
    }
    let remote = connect(&cluster, &node);
    assert_eq!(remote.status().unwrap().allocated, 0, "nothing changed");
    assert!(
        common::wait_until(
            || node.proc.diagnostics().contains("wrong cookie"),
            Duration::from_secs(10)
        ),
        "the refusal is logged\n{}",
        node.proc.diagnostics()
    );
}

/// Garbage before a handshake, garbage frames and a frame claiming 4 GiB after one, and a
/// peer that connects and says nothing: the node drops those connections and serves on.
#[test]
fn garbage_on_the_socket_does_not_hurt_the_node() {
    if !erlang_or_skip("garbage_on_the_socket_does_not_hurt_the_node") {
        return;
    }
    let cluster = Cluster::new();
    let dir = tempfile::tempdir().unwrap();
    let node = serve(&cluster, dir.path(), "10-15", "1", "sync", &[]);
    let (alive, host) = freqalloc::dist::split_name(&node.name).unwrap();
    let port = freqalloc::dist::epmd::port_please(alive, host, cluster.epmd.port()).unwrap();
    // Before the handshake: noise, a huge handshake length, and silence.
    for junk in [
        &b"GET / HTTP/1.0\r\n\r\n"[..],
        &[0xff, 0xff, 0xff, 0xff, 1, 2, 3][..],
        &[0, 3, b'n', 0][..],
    ] {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let _ = s.write_all(junk);
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink);
    }
    let _silent = TcpStream::connect(("127.0.0.1", port)).unwrap();
    // After a real handshake: garbage frames, then a frame claiming 4 GiB.
    let mut s = handshake(&cluster, &node.name);
    s.write_all(&[0, 0, 0, 5, 112, 131, 250, 1, 2]).unwrap(); // unknown term tag
    s.write_all(&[0, 0, 0, 3, 7, 7, 7]).unwrap(); // not pass-through
    s.write_all(&[
        0, 0, 0, 10, 112, 131, 108, 0xff, 0xff, 0xff, 0xff, 106, 106, 106,
    ])
    .unwrap(); // a list "of 4 G elements"
    s.write_all(&[0xff, 0xff, 0xff, 0xf0, 112]).unwrap(); // 4 GiB
    let mut sink = Vec::new();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let _ = s.read_to_end(&mut sink); // the node closes it
    let remote = connect(&cluster, &node);
    let f = remote.allocate("after-garbage").unwrap();
    remote.deallocate(f, "after-garbage").unwrap();
    assert!(remote.check().unwrap().is_empty());
}

/// A `sync` node is SIGKILLed at varying moments while `load --node --history` (8 clients, 4
/// calls in flight each) storms it; restarted, it has every acknowledged operation and nothing
/// held twice. Rounds: `FREQALLOC_DIST_CRASH_ROUNDS` (default 2).
#[test]
fn sigkill_under_a_remote_load_storm_loses_no_acknowledged_operation() {
    if !erlang_or_skip("sigkill_under_a_remote_load_storm_loses_no_acknowledged_operation") {
        return;
    }
    let rounds: usize = std::env::var("FREQALLOC_DIST_CRASH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    let cluster = Cluster::new();
    let name = unique_name("freq");
    for round in 0..rounds {
        // A fresh store and history each round: a restarted load adopts what its names hold,
        // which the history of an earlier round could not account for.
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("store");
        cluster.freqalloc(
            &data,
            &[
                "init",
                "--pool",
                "0-199",
                "--shards",
                "4",
                "--durability",
                "sync",
            ],
        );
        let history = dir.path().join("history.jsonl");
        let mut node = cluster.start_freqalloc_node(&name, &data, &[]);
        let mut load = cluster
            .command(env!("CARGO_BIN_EXE_freqalloc"))
            .args(["--node", &name, "--cookie", &cluster.cookie])
            .args([
                "load",
                "--clients",
                "8",
                "--seconds",
                "60",
                "--hold",
                "3",
                "--pipeline",
                "4",
                "--history",
            ])
            .arg(&history)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // A varying moment: after 1000..4000 history lines.
        let want = 1000 + (erlang::token() % 3000) as usize + 200 * round;
        let reached = common::wait_until(
            || std::fs::read_to_string(&history).map_or(0, |h| h.lines().count()) >= want,
            Duration::from_secs(60),
        );
        node.proc.kill();
        assert!(
            reached,
            "round {round}: the load never wrote {want} history lines\n{}",
            node.proc.diagnostics()
        );
        // The load sees the link fail; stop it too (it would retry a node that is gone).
        let _ = load.kill();
        let _ = load.wait();
        assert!(
            data.join("node").exists(),
            "a SIGKILLed node leaves its node file (stale)"
        );

        // A local command opens the store: the stale node file does not block it.
        let s: Value =
            serde_json::from_str(&cluster.freqalloc(&data, &["status", "--json", "--list-free"]))
                .unwrap();
        let text = std::fs::read_to_string(&history).unwrap();
        let acked = text
            .lines()
            .filter(|l| l.contains("\"phase\":\"ok\""))
            .count();
        assert!(
            acked >= 100,
            "round {round}: only {acked} acknowledged operations before the kill"
        );
        assert_status_keeps_history(&s, 200, &text, &format!("round {round}"));
        assert!(cluster
            .freqalloc(&data, &["check"])
            .starts_with("consistent"));
    }
}

/// Ticks: a handshaken peer that says nothing hears ticks from the node, and is dropped once
/// silent for the net tick time (here 2 s).
#[test]
fn a_silent_peer_hears_ticks_then_is_dropped() {
    if !erlang_or_skip("a_silent_peer_hears_ticks_then_is_dropped") {
        return;
    }
    let cluster = Cluster::new();
    let dir = tempfile::tempdir().unwrap();
    let node = serve(
        &cluster,
        dir.path(),
        "10-15",
        "1",
        "sync",
        &["--net-ticktime", "2"],
    );
    let mut s = handshake(&cluster, &node.name);
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let started = Instant::now();
    let mut tick = [9u8; 4];
    s.read_exact(&mut tick).unwrap();
    assert_eq!(
        tick,
        [0, 0, 0, 0],
        "the first thing a silent peer gets is a tick"
    );
    let mut sink = Vec::new();
    let _ = s.read_to_end(&mut sink); // ticks, then the close
    let waited = started.elapsed();
    assert!(sink.iter().all(|&b| b == 0), "only ticks were sent");
    assert!(waited < Duration::from_secs(20), "dropped after {waited:?}");
    let remote = connect(&cluster, &node);
    assert!(remote.check().unwrap().is_empty(), "the node serves on");
}

/// A peer that sends requests and stops reading the replies fills its bounded queue and is
/// disconnected; the node serves others meanwhile.
#[test]
fn a_peer_that_stops_reading_is_disconnected() {
    if !erlang_or_skip("a_peer_that_stops_reading_is_disconnected") {
        return;
    }
    let cluster = Cluster::new();
    let dir = tempfile::tempdir().unwrap();
    let node = serve(&cluster, dir.path(), "10-15", "1", "none", &[]);
    let (mut s, me) = handshake_as(&cluster, &node.name);
    let pid = freqalloc::dist::Pid::new(me.as_str(), 1, 0, 1);
    let mut batch = Vec::new();
    for i in 0..1000u32 {
        let r = freqalloc::dist::Reference::from((me.as_str(), vec![i, 0, 0]));
        let call = term::tuple(vec![
            term::atom("$gen_call"),
            term::tuple(vec![
                freqalloc::dist::Term::from(pid.clone()),
                freqalloc::dist::Term::from(r),
            ]),
            term::atom("status"),
        ]);
        batch.extend(freqalloc::dist::frame::reg_send(&pid, "frequency", &call).unwrap());
    }
    // Up to 400 K requests, never reading a reply: the node must give up on us first.
    let mut refused = false;
    for _ in 0..400 {
        if s.write_all(&batch).is_err() {
            refused = true;
            break;
        }
    }
    let logged = common::wait_until(
        || node.proc.diagnostics().contains("outbound queue full"),
        Duration::from_secs(60),
    );
    assert!(
        logged || refused,
        "the node never disconnected a peer that does not read\n{}",
        node.proc.diagnostics()
    );
    assert!(
        logged,
        "the disconnect is logged\n{}",
        node.proc.diagnostics()
    );
    let remote = connect(&cluster, &node);
    let f = remote.allocate("meanwhile").unwrap();
    remote.deallocate(f, "meanwhile").unwrap();
}

/// A raw, handshaken connection to `node` (as a hidden node named `garbage<N>@localhost`).
fn handshake_as(cluster: &Cluster, node: &str) -> (TcpStream, String) {
    let (alive, host) = freqalloc::dist::split_name(node).unwrap();
    let port = freqalloc::dist::epmd::port_please(alive, host, cluster.epmd.port()).unwrap();
    let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let me = format!("garbage{}@localhost", erlang::token() & 0xffff);
    let local =
        erl_dist::node::LocalNode::new(me.parse().unwrap(), erl_dist::node::Creation::new(1));
    let mut hs = erl_dist::handshake::ClientSideHandshake::new(
        futures::io::AllowStdIo::new(stream),
        local,
        &cluster.cookie,
    );
    futures::executor::block_on(hs.execute_send_name(6)).unwrap();
    let (io, _) = futures::executor::block_on(hs.execute_rest(true)).unwrap();
    (io.into_inner(), me)
}

fn handshake(cluster: &Cluster, node: &str) -> TcpStream {
    handshake_as(cluster, node).0
}

/// Two nodes dial each other at the same moment: the tie-break leaves one connection, and
/// messages flow both ways over it. Repeated to meet both orders of arrival.
#[test]
fn simultaneous_connects_leave_one_connection() {
    if !erlang_or_skip("simultaneous_connects_leave_one_connection") {
        return;
    }
    use freqalloc::dist::{Delivery, Node, NodeConfig};
    use std::sync::{mpsc, Arc, Barrier};
    let cluster = Cluster::new();
    for round in 0..8 {
        let start = |prefix: &str| {
            let mut c = NodeConfig::new(&unique_name(prefix), &cluster.cookie, true);
            c.epmd_port = cluster.epmd.port();
            let node = Node::start(c).unwrap();
            let (tx, rx) = mpsc::channel();
            let tx = std::sync::Mutex::new(tx);
            let pid = node.spawn_process(Arc::new(move |d: Delivery| {
                if let Delivery::Message { msg, .. } = d {
                    let _ = tx.lock().unwrap().send(msg);
                }
            }));
            (node, pid, rx)
        };
        let (a, pa, ra) = start("sima");
        let (b, pb, rb) = start("simb");
        let barrier = Barrier::new(2);
        std::thread::scope(|s| {
            let (a, b, barrier) = (&a, &b, &barrier);
            let ta = s.spawn(move || {
                barrier.wait();
                a.connect(b.name())
            });
            let tb = s.spawn(move || {
                barrier.wait();
                b.connect(a.name())
            });
            ta.join()
                .unwrap()
                .unwrap_or_else(|e| panic!("round {round}: a→b: {e}"));
            tb.join()
                .unwrap()
                .unwrap_or_else(|e| panic!("round {round}: b→a: {e}"));
        });
        a.send(&pb, &term::atom("from_a")).unwrap();
        b.send(&pa, &term::atom("from_b")).unwrap();
        let t = Duration::from_secs(10);
        assert_eq!(
            rb.recv_timeout(t).unwrap(),
            term::atom("from_a"),
            "round {round}"
        );
        assert_eq!(
            ra.recv_timeout(t).unwrap(),
            term::atom("from_b"),
            "round {round}"
        );
        assert_eq!(
            a.connected(),
            vec![b.name().to_string()],
            "round {round}: one connection on a"
        );
        assert_eq!(
            b.connected(),
            vec![a.name().to_string()],
            "round {round}: one connection on b"
        );
    }
}
