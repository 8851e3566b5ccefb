//! `freqalloc bench tables`: the machine-readable figures benches/beam/compare.sh reads.
//! Only the shape is checked (names, counts, finite positive rates), never a speed.

use std::collections::BTreeSet;
use std::process::{Command, Output};

use serde_json::Value;

fn bench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_freqalloc"))
        .args(["bench", "tables"])
        .args(args)
        .output()
        .expect("run freqalloc")
}

fn json_lines(out: &Output) -> Vec<Value> {
    assert!(
        out.status.success(),
        "bench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone())
        .expect("utf-8 stdout")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
        .collect()
}

#[test]
fn json_lines_name_every_workload_once() {
    let out = bench(&[
        "--json",
        "--keys",
        "1000",
        "--dets-keys",
        "50",
        "--sync-writes",
        "3",
    ]);
    let rows = json_lines(&out);
    let mut seen = BTreeSet::new();
    for row in &rows {
        assert_eq!(row["side"], "rust", "{row}");
        let workload = row["workload"].as_str().expect("workload").to_string();
        let threads = row["threads"].as_u64().expect("threads");
        let keys = row["keys"].as_u64().expect("keys");
        let rate = row["ops_per_sec"].as_f64().expect("ops_per_sec");
        let seconds = row["seconds"].as_f64().expect("seconds");
        assert!(rate.is_finite() && rate > 0.0, "{row}");
        assert!(seconds.is_finite() && seconds > 0.0, "{row}");
        let expected_keys = match workload.as_str() {
            w if w.starts_with("ets/") => 1000,
            "dets/set/insert_sync_each" => 3,
            _ => 50,
        };
        assert_eq!(keys, expected_keys, "{row}");
        assert!(seen.insert((workload, threads)), "duplicate {row}");
    }
    let mut expected = BTreeSet::new();
    for tt in ["set", "ordered_set", "bag", "duplicate_bag"] {
        for op in ["insert", "lookup", "delete"] {
            for threads in [1, 2] {
                expected.insert((format!("ets/{tt}/{op}"), threads));
            }
        }
    }
    for tt in ["set", "bag", "duplicate_bag", "sled_raw"] {
        for op in ["insert", "lookup", "delete"] {
            expected.insert((format!("dets/{tt}/{op}"), 1));
        }
    }
    expected.insert(("dets/set/insert_sync_each".to_string(), 1));
    assert_eq!(seen, expected);
}

#[test]
fn threads_and_only_narrow_the_run() {
    let rows = json_lines(&bench(&[
        "--json",
        "--keys",
        "101",
        "--threads",
        "2",
        "--only",
        "ets",
    ]));
    assert_eq!(rows.len(), 12);
    for row in &rows {
        assert_eq!(row["threads"], 2, "{row}");
        // Two threads take equal halves: 101 keys run as 100.
        assert_eq!(row["keys"], 100, "{row}");
    }
}

#[test]
fn the_table_has_a_header_and_one_row_per_workload() {
    let out = bench(&["--keys", "10", "--threads", "1", "--only", "ets"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 13, "{text}");
    assert!(lines[0].starts_with("workload"), "{text}");
    assert!(lines[1].starts_with("ets/set/insert"), "{text}");
}

#[test]
fn bad_arguments_are_one_line_errors() {
    for args in [
        &["--threads", "3"][..],
        &["--keys", "1"],
        &["--only", "disk"],
    ] {
        let out = bench(args);
        assert!(!out.status.success(), "{args:?} should fail");
        let err = String::from_utf8(out.stderr).expect("utf-8");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
    }
}
