//! The `freqalloc` command line, end to end: every command, its output contract, its errors,
//! and a SIGKILL of `load` mid-storm checked against the `--history` it wrote.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

// This file's failures are all one line.
use common::cli::{fails_in_one_line as fails, ok};
use common::history::assert_status_keeps_history;
use serde_json::Value;

fn status(store: &Path) -> Value {
    serde_json::from_str(&ok(
        store,
        &["status", "--json", "--list-free", "--free-limit", "1000000"],
    ))
    .expect("status --json is JSON")
}

#[test]
fn the_course_scenario_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    ok(
        &store,
        &["init", "--pool", "10-15,20-25", "--strategy", "round-robin"],
    );
    let mut got = Vec::new();
    for _ in 0..12 {
        got.push(
            ok(&store, &["allocate", "--client", "radio-7"])
                .trim()
                .parse::<u64>()
                .unwrap(),
        );
    }
    // Round robin alternates the two shards, each handing out its lowest free frequency.
    assert_eq!(got, vec![10, 20, 11, 21, 12, 22, 13, 23, 14, 24, 15, 25]);
    let err = fails(&store, &["allocate", "--client", "radio-7"]);
    assert!(err.contains("no frequency"), "{err}");

    ok(&store, &["deallocate", "22", "--client", "radio-7"]);
    assert_eq!(ok(&store, &["allocate", "--client", "tv"]).trim(), "22");
    let s = status(&store);
    assert_eq!(s["pool_size"], 12);
    assert_eq!(s["free"].as_array().unwrap().len(), 0);
    let allocs = s["allocations"].as_array().unwrap();
    assert_eq!(allocs.len(), 12);
    let a22 = allocs.iter().find(|a| a["freq"] == 22).unwrap();
    assert_eq!(a22["owner"], "tv");
    assert_eq!(s["shards"].as_array().unwrap().len(), 2);
    assert!(ok(&store, &["check"]).starts_with("consistent"));
}

#[test]
fn deallocation_errors_are_one_line_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    ok(&store, &["init", "--pool", "10-15,20-25"]);
    let f = ok(&store, &["allocate", "--client", "a"])
        .trim()
        .to_string();
    let before = status(&store)["allocations"].clone();
    let free = (10..=15)
        .chain(20..=25)
        .find(|x| x.to_string() != f)
        .unwrap()
        .to_string();
    assert!(fails(&store, &["deallocate", &free, "--client", "a"]).contains("not allocated"));
    assert!(fails(&store, &["deallocate", "99", "--client", "a"]).contains("not in the pool"));
    assert!(fails(&store, &["deallocate", &f, "--client", "b"]).contains("held by"));
    assert!(fails(&store, &["deallocate", "x", "--client", "b"]).contains("invalid value"));
    assert_eq!(status(&store)["allocations"], before);
}

#[test]
fn init_refuses_another_pool_but_grows() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    ok(&store, &["init", "--pool", "10-15,20-25"]);
    ok(&store, &["allocate", "--client", "a"]);
    assert!(fails(&store, &["init", "--pool", "10-15"]).contains("refusing"));
    assert!(fails(&store, &["init", "--pool", "10-14,20-30", "--grow"])
        .contains("drops frequencies 15"));
    ok(&store, &["init", "--pool", "10-15,20-30", "--grow"]);
    let s = status(&store);
    assert_eq!(s["pool_size"], 17);
    assert_eq!(s["allocations"].as_array().unwrap().len(), 1);
    assert!(fails(&store, &["init", "--pool", "15-10"]).contains("empty range"));
    assert!(
        fails(&store, &["init", "--pool", "1-5", "--strategy", "fastest"])
            .contains("unknown strategy")
    );
    assert!(fails(
        &store,
        &["init", "--pool", "1-5", "--durability", "interval:0"]
    )
    .contains("unknown durability"));
}

#[test]
fn commands_on_a_missing_or_damaged_store_say_so() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("nothing-here");
    assert!(fails(&store, &["status"]).contains("no store"));
    std::fs::create_dir_all(&store).unwrap();
    std::fs::write(store.join("meta.json"), "{ not json").unwrap();
    assert!(fails(&store, &["allocate", "--client", "a"]).contains("not a freqalloc store"));
}

#[test]
fn load_prints_a_json_summary_and_a_history() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let history = dir.path().join("history.jsonl");
    ok(
        &store,
        &[
            "init",
            "--pool",
            "0-99",
            "--shards",
            "4",
            "--durability",
            "interval:50",
        ],
    );
    let out = ok(
        &store,
        &[
            "load",
            "--clients",
            "3",
            "--seconds",
            "0.5",
            "--hold",
            "2",
            "--json",
            "--history",
            history.to_str().unwrap(),
        ],
    );
    let last = out.trim_end().lines().last().unwrap();
    let summary: Value = serde_json::from_str(last).expect("last line is JSON");
    assert_eq!(summary["clients"], 3);
    assert_eq!(summary["errors"], 0);
    let ops = summary["operations"].as_u64().unwrap();
    assert!(ops > 0);
    let lines = std::fs::read_to_string(&history).unwrap();
    // One invoke line and one reply line per operation.
    assert_eq!(lines.lines().count() as u64, 2 * ops);
    for line in lines.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        assert!(["allocate", "deallocate"].contains(&v["op"].as_str().unwrap()));
        assert!(["invoke", "ok", "fail"].contains(&v["phase"].as_str().unwrap()));
    }
    assert!(ok(&store, &["check"]).starts_with("consistent"));
    assert!(fails(&store, &["load", "--clients", "0"]).contains("at least 1"));
}

/// The whole process is SIGKILLed mid-storm in `sync`; the reopened store holds every
/// acknowledged allocation for its owner, frees every acknowledged deallocation, and is
/// consistent. Repeated `FREQALLOC_CLI_CRASH_ITERS` times (default 2).
#[test]
fn sigkill_mid_storm_loses_no_acknowledged_operation() {
    let iters = common::env_u64("FREQALLOC_CLI_CRASH_ITERS", 2) as usize;
    for iter in 0..iters {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        let history = dir.path().join("history.jsonl");
        ok(
            &store,
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
        let mut child = Command::new(env!("CARGO_BIN_EXE_freqalloc"))
            .arg("--data")
            .arg(&store)
            .args([
                "load",
                "--clients",
                "8",
                "--seconds",
                "60",
                "--hold",
                "3",
                "--history",
            ])
            .arg(&history)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Kill after a varying amount of acknowledged work.
        let want = 2_000 + 1_500 * iter;
        let reached = common::wait_until(
            || std::fs::read_to_string(&history).map_or(0, |h| h.lines().count()) >= want,
            Duration::from_secs(60),
        );
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        assert!(reached, "the load never wrote {want} history lines");

        let history = std::fs::read_to_string(&history).unwrap();
        let context = format!("iteration {iter}");
        assert_status_keeps_history(&status(&store), 200, &history, &context);
        assert!(ok(&store, &["check"]).starts_with("consistent"));
    }
}

#[test]
fn init_with_two_replicas_shows_both_in_status() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let out = ok(
        &store,
        &["init", "--pool", "10-15,20-25", "--replicas", "2"],
    );
    assert!(out.contains("2 replicas"), "{out}");
    let f = ok(&store, &["allocate", "--client", "radio-7"]);
    let s = status(&store);
    for sh in s["shards"].as_array().unwrap() {
        assert_eq!(sh["in_sync"], true, "{sh}");
        let roles: Vec<&str> = sh["replicas"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["role"].as_str().unwrap())
            .collect();
        assert!(
            roles.contains(&"primary") && roles.contains(&"backup"),
            "{sh}"
        );
    }
    assert_eq!(s["allocations"][0]["freq"].to_string(), f.trim());
    assert!(ok(&store, &["check"]).starts_with("consistent"));
    assert!(store.join("shard-0").join("replica-1").is_dir());
    // Bug (issue 12): `init` without `--replicas` on a replicated store was refused, as if 1
    // had been asked for; an option not given keeps its stored value, as every other does.
    let out = ok(&store, &["init", "--pool", "10-15,20-25"]);
    assert!(
        out.contains("store exists") && out.contains("2 replicas"),
        "{out}"
    );
    assert_eq!(
        status(&store)["allocations"][0]["freq"].to_string(),
        f.trim()
    );
    let err = fails(
        &store,
        &["init", "--pool", "10-15,20-25", "--replicas", "1"],
    );
    assert!(err.contains("replica"), "{err}");
    let err = fails(&store, &["init", "--pool", "1-5", "--replicas", "3"]);
    assert!(err.contains("replicas"), "{err}");
}
