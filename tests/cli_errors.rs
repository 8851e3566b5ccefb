//! The command line on bad input and in bad places (issue 12, "Crashes" and "Clear errors"):
//! output proportional to the store, counts of the whole `u64` range, no panic on any input or
//! on a closed pipe, usage errors that name the argument, one client-name rule, each cause of an
//! error said once. Each test names the bug it guards against.

mod common;

use std::path::Path;
use std::process::Stdio;

use common::cli::{cmd, fails_with, ok, run};
use common::disk::SmallDisk;
use freqalloc::freq::{Allocator, FreqError, Options};
use serde_json::Value;

const WHOLE_U64: &str = "0-18446744073709551615";
const TWO_TO_64: &str = "18446744073709551616";

fn json(store: &Path, args: &[&str]) -> Value {
    serde_json::from_str(&ok(store, args)).expect("JSON")
}

/// Bug: `status --json` listed every free frequency (10^8 took 13 s and 3.9 GB; the whole u64
/// range hit "capacity overflow"). Free frequencies are ranges; a list only when asked, bounded.
#[test]
fn status_json_is_proportional_to_ranges_and_allocations() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("s");
    ok(&store, &["init", "--pool", "0-9999999"]);
    ok(&store, &["allocate", "--client", "a"]);
    let text = ok(&store, &["status", "--json"]);
    assert!(
        text.len() < 4096,
        "{} bytes for 10^7 frequencies",
        text.len()
    );
    let s: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(s["free_ranges"], serde_json::json!([[1, 9999999]]));
    assert_eq!(s["free_count"], 9999999);
    assert_eq!(s["allocated_count"], 1);
    assert!(s.get("free").is_none(), "no list unless asked");

    let s = json(
        &store,
        &["status", "--json", "--list-free", "--free-limit", "3"],
    );
    assert_eq!(s["free"], serde_json::json!([1, 2, 3]));
    assert_eq!(s["free_truncated"], true);
    // The bound is bounded too.
    fails_with(
        &store,
        &[
            "status",
            "--json",
            "--list-free",
            "--free-limit",
            "99999999999",
        ],
        2,
    );

    let whole = dir.path().join("whole");
    ok(&whole, &["init", "--pool", WHOLE_U64]);
    let s = json(&whole, &["status", "--json"]);
    assert_eq!(s["free_ranges"], serde_json::json!([[0u64, u64::MAX]]));
}

/// Bug: the whole u64 range reported one frequency too few and `check` then reported
/// violations on a healthy store; two ranges covering it reported "0 frequencies".
#[test]
fn the_whole_u64_range_counts_two_to_the_64() {
    let dir = tempfile::tempdir().unwrap();
    for (name, pool) in [("one", WHOLE_U64), ("two", "0-9,10-18446744073709551615")] {
        let store = dir.path().join(name);
        ok(&store, &["init", "--pool", pool]);
        let check = ok(&store, &["check"]);
        assert!(
            check.starts_with(&format!(
                "consistent: {TWO_TO_64} frequencies, {TWO_TO_64} free"
            )),
            "{pool}: {check}"
        );
        let f = ok(&store, &["allocate", "--client", "a"]);
        let check = ok(&store, &["check"]);
        assert!(
            check.starts_with(&format!(
                "consistent: {TWO_TO_64} frequencies, {} free, 1 allocated",
                u64::MAX
            )),
            "{pool}: {check}"
        );
        let s = json(&store, &["status", "--json"]);
        assert_eq!(s["pool_size"], TWO_TO_64, "{pool}");
        assert_eq!(s["free_count"], u64::MAX, "{pool}");
        let text = ok(&store, &["status"]);
        assert!(
            text.lines()
                .next()
                .unwrap()
                .contains(&format!("{TWO_TO_64} frequencies")),
            "{text}"
        );
        ok(&store, &["deallocate", f.trim(), "--client", "a"]);
        assert!(ok(&store, &["check"]).starts_with("consistent:"));
    }
}

/// Bug: `load --seconds 1e20` and `demo --seconds 1e20` panicked ("cannot convert float seconds
/// to Duration"). A usage error instead, naming the argument.
#[test]
fn seconds_beyond_a_duration_are_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("s");
    ok(&store, &["init", "--pool", "1-5"]);
    for cmd in ["load", "demo"] {
        for bad in ["1e20", "inf", "-1", "0", "NaN", "soon"] {
            let arg = format!("--seconds={bad}");
            let err = fails_with(&store, &[cmd, &arg], 2);
            assert!(err.contains("--seconds"), "{cmd} {bad}: {err}");
        }
    }
}

/// Bug: `status | head -1` panicked on the broken pipe, and aborted with `2>&1`. A closed pipe
/// ends the binary quietly (exit 141, as a shell reports SIGPIPE), stdout alone or with stderr.
#[test]
fn a_closed_pipe_ends_the_binary_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("s");
    ok(&store, &["init", "--pool", "1-5"]);
    for args in [&["status"][..], &["status", "--json"], &["check"]] {
        // stdout closed, stderr to us: nothing on stderr.
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = cmd(&store, args)
            .stdout(writer)
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(141),
            "{args:?}: {:?} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.stderr.is_empty(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // `2>&1`: both on the closed pipe, no abort.
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let status = cmd(&store, args)
            .stdout(writer.try_clone().unwrap())
            .stderr(writer)
            .status()
            .unwrap();
        assert_eq!(status.code(), Some(141), "{args:?} 2>&1: {status:?}");
    }
}

/// Bug: usage errors kept only clap's first line ("the following required arguments were not
/// provided:" without the argument), and a bad `--pool` exited 1.
#[test]
fn usage_errors_name_the_argument_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("s");
    let err = fails_with(&store, &["allocate"], 2);
    assert!(err.contains("--client"), "{err}");
    let err = fails_with(&store, &["deallocate", "--client", "a"], 2);
    assert!(err.contains("<FREQ>"), "{err}");
    for bad in ["5-x", "15-10", "", "1-3,2-4"] {
        let err = fails_with(&store, &["init", "--pool", bad], 2);
        assert!(err.contains("--pool"), "{bad:?}: {err}");
    }
    for bad in ["10001", "1.5", "x"] {
        let err = fails_with(
            &store,
            &["node", "--name", "f@localhost", "--reader-spin-us", bad],
            2,
        );
        assert!(err.contains("--reader-spin-us"), "{bad:?}: {err}");
    }
    assert!(!store.exists(), "a refused init creates nothing");
}

/// Bug: client names with control characters were accepted and printed raw, and `held`
/// accepted names `allocate` refused. One rule for every command and the library (names are
/// also escaped on output: see the binary's unit test `names_are_escaped_on_output`).
#[test]
fn one_client_name_rule_and_names_escaped_on_output() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("s");
    ok(&store, &["init", "--pool", "1-5"]);
    let long = "x".repeat(256);
    for bad in ["", "a\nb", "a\u{1b}[31mb", "tab\there", long.as_str()] {
        for args in [
            vec!["allocate", "--client", bad],
            vec!["deallocate", "1", "--client", bad],
            vec!["release", "--client", bad],
            vec!["held", "--client", bad],
        ] {
            let err = fails_with(&store, &args, 2);
            assert!(err.contains("client name"), "{args:?}: {err}");
        }
    }
    // The library holds the same rule: `held` no longer accepts what `allocate` refuses.
    let alloc = Allocator::open(&store, Options::default()).unwrap();
    for bad in ["", "a\nb", "a\u{1b}b"] {
        assert!(matches!(
            alloc.held_by(bad),
            Err(FreqError::BadClientName(_))
        ));
        assert!(matches!(
            alloc.allocate(bad),
            Err(FreqError::BadClientName(_))
        ));
    }
    alloc.stop();
}

/// Bug: errors repeated themselves ("table "s/shard-0" is locked by another handle or process:
/// table "s/shard-0" is locked by another handle or process") and I/O errors carried
/// "(os error N)". Each cause once, in words.
#[test]
fn each_cause_is_said_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("s");
    ok(&store, &["init", "--pool", "1-5"]);
    {
        let _held = Allocator::open(&store, Options::default()).unwrap();
        let out = cmd(&store, &["allocate", "--client", "a"])
            .env("FREQALLOC_WAIT_MS", "0")
            .output()
            .unwrap();
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert_eq!(err.matches("is locked").count(), 1, "{err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    }
    // meta.json as a directory: an I/O error, in words, once.
    let other = dir.path().join("t");
    std::fs::create_dir_all(other.join("meta.json")).unwrap();
    let out = run(&other, &["status"]);
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(!out.status.success());
    assert!(!err.contains("os error"), "{err}");
    assert!(!err.contains("Os {"), "{err}");
    assert!(err.contains("meta.json"), "{err}");
    let words = err.trim_end().trim_start_matches("freqalloc: ");
    for part in words.split(": ") {
        assert_eq!(words.matches(part).count(), 1, "{part:?} twice in {err}");
    }
}

/// Bug: a damaged sled log was reported with sled's internals ("Read corrupted data at file
/// offset Some(Inline(96)) backtrace ()"). Now in words, once.
#[test]
fn a_damaged_log_is_said_in_words() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("s");
    ok(&store, &["init", "--pool", "1-50"]);
    for _ in 0..3 {
        ok(&store, &["allocate", "--client", "a"]);
    }
    let log = store.join("shard-0").join("db");
    let mut bytes = std::fs::read(&log).unwrap();
    for b in bytes.iter_mut().step_by(97) {
        *b ^= 0xff;
    }
    std::fs::write(&log, bytes).unwrap();
    let err = fails_with(&store, &["status"], 1);
    for internal in ["backtrace", "Some(", "Inline(", "Os {", "os error"] {
        assert!(!err.contains(internal), "{internal:?} in {err}");
    }
}

/// Bug: "(1 frequencies)".
#[test]
fn one_frequency_is_singular() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("s");
    ok(&store, &["init", "--pool", "7"]);
    let check = ok(&store, &["check"]);
    assert!(
        check.starts_with("consistent: 1 frequency, 1 free, 0 allocated, 1 shard\n"),
        "{check}"
    );
    let status = ok(&store, &["status"]);
    assert!(
        status.lines().next().unwrap().contains(": 1 frequency,"),
        "{status}"
    );
    ok(&store, &["allocate", "--client", "a"]);
    let err = fails_with(&store, &["allocate", "--client", "b"], 1);
    assert!(
        err.contains("no frequency left: the 1 frequency is allocated"),
        "{err}"
    );
}

/// Bug: disk full printed the I/O error's text three times with sled internals
/// (`Os { code: 28, kind: StorageFull, .. }`, "backtrace ()"). Now: "disk full while writing
/// table ".../shard-0"", once.
#[test]
fn disk_full_is_said_in_words_once() {
    let Some(disk) = SmallDisk::mount("4m") else {
        return;
    };
    let store = disk.path().join("s");
    ok(&store, &["init", "--pool", "1-1000"]);
    // Fill the rest of the file system.
    let mut fill = std::fs::File::create(disk.path().join("fill")).unwrap();
    let block = vec![0u8; 64 * 1024];
    while std::io::Write::write_all(&mut fill, &block).is_ok() {}
    drop(fill);
    let out = cmd(&store, &["allocate", "--client", "a"])
        .env("FREQALLOC_WAIT_MS", "0")
        .output()
        .unwrap();
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("disk full while writing"), "{err}");
    assert_eq!(err.matches("disk full").count(), 1, "{err}");
    for internal in ["os error", "Os {", "backtrace", "No space left"] {
        assert!(!err.contains(internal), "{internal:?} in {err}");
    }
}
