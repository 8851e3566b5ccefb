//! The command line through a node: `--node`/`FREQALLOC_NODE` on the store commands, the
//! `node` file and the "use --node" message on a served store, the bounded wait of short
//! commands for a busy store, and `load --node --json`.

mod common;
mod erlang;

use std::process::Output;
use std::time::Duration;

use erlang::{erlang_or_skip, unique_name, Cluster};
use serde_json::Value;

fn run(cluster: &Cluster, args: &[&str]) -> Output {
    cluster
        .command(env!("CARGO_BIN_EXE_freqalloc"))
        .args(args)
        .output()
        .expect("run freqalloc")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn store_commands_through_a_node() {
    if !erlang_or_skip("store_commands_through_a_node") {
        return;
    }
    let cluster = Cluster::new();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("store");
    cluster.freqalloc(
        &data,
        &["init", "--pool", "10-15,20-25", "--durability", "sync"],
    );
    let name = unique_name("freq");
    // The reader's poll off here (every other node test runs with the default 100 µs): both
    // ways of waiting for the next request serve the same commands.
    let mut node = cluster.start_freqalloc_node(&name, &data, &["--reader-spin-us", "0"]);
    assert!(node.ready.contains("(pool 12, 2 shards)"), "{}", node.ready);
    let served = std::fs::read_to_string(data.join("node")).unwrap();
    assert_eq!(
        served.lines().next(),
        Some(name.as_str()),
        "the node file names the node"
    );

    // Without --node: the store is busy, and the error says which node to use.
    let d = data.to_str().unwrap();
    let o = run(&cluster, &["--data", d, "allocate", "--client", "x"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains(&format!("use --node {name}")),
        "{}",
        stderr(&o)
    );

    let via = |args: &[&str]| {
        let mut all = vec!["--node", name.as_str(), "--cookie", cluster.cookie.as_str()];
        all.extend_from_slice(args);
        let o = run(&cluster, &all);
        assert!(o.status.success(), "freqalloc {args:?}: {}", stderr(&o));
        stdout(&o)
    };
    let f: u64 = via(&["allocate", "--client", "radio"])
        .trim()
        .parse()
        .unwrap();
    let g: u64 = via(&["allocate", "--client", "radio", "--lease", "3600"])
        .trim()
        .parse()
        .unwrap();
    let mut want = vec![f, g];
    want.sort_unstable();
    let held: Vec<u64> = via(&["held", "--client", "radio"])
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert_eq!(held, want);
    via(&["deallocate", &f.to_string(), "--client", "radio"]);
    let s: Value = serde_json::from_str(&via(&["status", "--json"])).unwrap();
    assert_eq!(
        (s["pool_size"].as_u64(), s["allocated_count"].as_u64()),
        (Some(12), Some(1))
    );
    assert!(via(&["check"]).starts_with("consistent: 12 frequencies, 11 free, 1 allocated"));
    assert_eq!(via(&["release", "--client", "radio"]).trim(), g.to_string());

    // The environment variable works as --node does; a refusal is one line and exit 1.
    let o = cluster
        .command(env!("CARGO_BIN_EXE_freqalloc"))
        .env("FREQALLOC_NODE", &name)
        .env("FREQALLOC_COOKIE", &cluster.cookie)
        .args(["deallocate", "99", "--client", "radio"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("not in the pool"), "{}", stderr(&o));

    // load --node: the same JSON summary line, with pipelining.
    let line = via(&[
        "load",
        "--clients",
        "4",
        "--seconds",
        "0.5",
        "--pipeline",
        "4",
        "--json",
    ]);
    let j: Value = serde_json::from_str(line.lines().last().unwrap()).unwrap();
    assert_eq!(j["errors"].as_u64(), Some(0), "{j}");
    assert!(j["allocations"].as_u64().unwrap() > 0);
    assert_eq!(j["pool_size"].as_u64(), Some(12));
    assert_eq!(j["pipeline"].as_u64(), Some(4));
    assert!(via(&["check"]).starts_with("consistent"));

    // A wrong cookie or a node that is not running: a clear one-line error.
    let o = run(&cluster, &["--node", &name, "--cookie", "wrong", "status"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("handshake"), "{}", stderr(&o));
    let o = run(
        &cluster,
        &[
            "--node",
            "nosuch@localhost",
            "--cookie",
            &cluster.cookie,
            "status",
        ],
    );
    assert!(stderr(&o).contains("not running"), "{}", stderr(&o));

    // SIGTERM: orderly stop, exit 0, the node file removed, the store usable locally again.
    let status = node.proc.stop().unwrap();
    assert!(status.success(), "{status}\n{}", node.proc.diagnostics());
    assert!(!data.join("node").exists());
    assert!(cluster
        .freqalloc(&data, &["check"])
        .starts_with("consistent"));
}

/// Without a node, short commands started together wait for the busy store (bounded) instead
/// of failing at once with "locked".
#[test]
fn parallel_short_commands_wait_for_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("store");
    let d = data.to_str().unwrap();
    let init = std::process::Command::new(env!("CARGO_BIN_EXE_freqalloc"))
        .args(["--data", d, "init", "--pool", "0-99"])
        .output()
        .unwrap();
    assert!(init.status.success());
    let children: Vec<_> = (0..12)
        .map(|i| {
            std::process::Command::new(env!("CARGO_BIN_EXE_freqalloc"))
                .env("FREQALLOC_WAIT_MS", "120000")
                .env_remove("FREQALLOC_NODE")
                .args(["--data", d, "allocate", "--client", &format!("c{i}")])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut got = std::collections::BTreeSet::new();
    for c in children {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(got.insert(String::from_utf8_lossy(&o.stdout).trim().to_string()));
    }
    assert_eq!(got.len(), 12);
    let _ = Duration::ZERO;
}
