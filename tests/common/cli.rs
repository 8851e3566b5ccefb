//! Running the `freqalloc` binary on a store, for the command-line tests: the command, its
//! output, and the checks every test makes on success and on failure.

use std::path::Path;
use std::process::{Command, Output};

/// `freqalloc --data <store> <args>`, not yet run, with the environment variables that would
/// point it elsewhere (`FREQALLOC_DATA`, `FREQALLOC_NODE`) removed.
pub fn cmd(store: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_freqalloc"));
    c.arg("--data")
        .arg(store)
        .args(args)
        .env_remove("FREQALLOC_DATA")
        .env_remove("FREQALLOC_NODE");
    c
}

/// Runs [`cmd`] to completion.
pub fn run(store: &Path, args: &[&str]) -> Output {
    cmd(store, args).output().expect("run freqalloc")
}

/// Runs a command that must succeed; returns its stdout.
pub fn ok(store: &Path, args: &[&str]) -> String {
    let out = run(store, args);
    assert!(
        out.status.success(),
        "freqalloc {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 stdout")
}

/// Runs a command that must fail without a panic; returns its stderr.
pub fn fails(store: &Path, args: &[&str]) -> String {
    let out = run(store, args);
    assert!(
        !out.status.success(),
        "freqalloc {args:?} should fail, printed {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let err = String::from_utf8(out.stderr).expect("utf-8 stderr");
    assert!(!err.contains("panicked"), "{err}");
    err
}

/// Runs a command that must fail; returns its stderr, checked to be one line with no panic.
pub fn fails_in_one_line(store: &Path, args: &[&str]) -> String {
    let err = fails(store, args);
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "one line expected: {err:?}"
    );
    err
}

/// Runs a command that must fail with exit code `code`; returns its stderr, checked to be one
/// line with no panic, no internal error and no raw control character.
pub fn fails_with(store: &Path, args: &[&str], code: i32) -> String {
    let out = run(store, args);
    let err = String::from_utf8(out.stderr).expect("utf-8 stderr");
    assert_eq!(out.status.code(), Some(code), "freqalloc {args:?}: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err:?}");
    assert!(
        !err.contains("panicked") && !err.contains("internal error"),
        "{err}"
    );
    assert!(
        !err.trim_end().chars().any(char::is_control),
        "raw control character in {err:?}"
    );
    err
}
