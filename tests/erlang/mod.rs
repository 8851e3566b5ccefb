//! The harness of the distribution tests: a private epmd, a random cookie, a `freqalloc node`
//! (or a BEAM node running `tests/erl/frequency_beam.erl`) as a child process, and `erl`
//! clients run with a deadline, their output captured.
//!
//! Used by test files through `mod erlang;`. Everything listens on loopback only: epmd is
//! started with `-address 127.0.0.1` on a free port, and every node and client gets
//! `ERL_EPMD_PORT` pointing at it, so tests never see the machine's own epmd (or each other's).
//!
//! Erlang availability: when `erl`, `epmd` or `erlc` is missing, [`erlang_or_skip`] fails the
//! test under `CI=true` and otherwise prints how to install Erlang and tells the test to return
//! early.
//!
//! Nothing here sleeps to synchronise: readiness is a line read from the child's stdout through
//! a reader thread and a channel with a deadline; epmd's readiness is a TCP connect that
//! succeeds; exits are waited for with `try_wait` under a deadline.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long a child may take to print its readiness line (a cold BEAM start is about 1 s on
/// our loaded 2-core machines; the bound only limits a failure).
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long an `erl` client run may take before it is killed and the test fails.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a stopped child may take to exit after SIGTERM before it gets SIGKILL.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);

const INSTALL_HINT: &str = "install Erlang/OTP, e.g. `sudo apt-get install erlang-base` \
     (Debian/Ubuntu; it gives erl, erlc and epmd)";

/// The Erlang programs the harness needs.
const ERLANG_TOOLS: [&str; 3] = ["erl", "erlc", "epmd"];

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
        .unwrap_or(false)
}

/// Whether `CI` is set to `true` (or `1`): then a missing Erlang is a failure, never a skip.
pub fn under_ci() -> bool {
    matches!(
        std::env::var("CI")
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Ok("true") | Ok("1")
    )
}

/// `true` when `erl`, `erlc` and `epmd` are on `PATH`. When one is missing: under `CI=true`
/// panics (the test fails with a clear message); otherwise prints how to install Erlang and
/// returns `false`, and the test returns early (`if !erlang_or_skip("name") { return; }`).
pub fn erlang_or_skip(test: &str) -> bool {
    let missing: Vec<&str> = ERLANG_TOOLS
        .iter()
        .copied()
        .filter(|p| !on_path(p))
        .collect();
    if missing.is_empty() {
        return true;
    }
    if under_ci() {
        panic!(
            "{test}: CI=true but {} not found on PATH; {INSTALL_HINT} (.ci/run does this)",
            missing.join(", ")
        );
    }
    eprintln!(
        "skipping {test}: {} not found on PATH; to run the distribution tests, {INSTALL_HINT}",
        missing.join(", ")
    );
    false
}

/// A fresh random-enough token (clock, process id, a counter, mixed by splitmix64): for
/// cookies and for unique node names.
pub fn token() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut z = nanos
        ^ (u64::from(std::process::id()) << 32)
        ^ COUNTER
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The seed of a test's random kill points: `FREQALLOC_CRASH_SEED` (to replay a failure), else
/// a fresh one; printed, so that a failure's output names it.
pub fn crash_seed() -> u64 {
    let seed = std::env::var("FREQALLOC_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(token);
    println!("FREQALLOC_CRASH_SEED={seed}");
    seed
}

/// A deterministic generator of numbers below `n` from `seed` (splitmix64).
pub fn below_from(seed: u64) -> impl FnMut(u64) -> u64 {
    let mut rng = seed;
    move |n| {
        rng = rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) % n
    }
}

/// A random cookie (letters and digits, as `erl -setcookie` takes it unquoted).
pub fn random_cookie() -> String {
    format!("c{:016x}{:016x}", token(), token())
}

/// A unique short node name on `localhost`: `<prefix><token>@localhost`.
pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}{:x}@localhost", token() & 0xffff_ffff_ffff)
}

/// A free TCP port on 127.0.0.1 (bound, read and released; the caller retries if another
/// process takes it first).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))
        .expect("bind 127.0.0.1:0 for a free port");
    listener.local_addr().expect("local_addr").port()
}

/// Sends `signal` to the process `pid` (by its id only, never by name).
pub fn signal(pid: u32, signal: libc::c_int) {
    // SAFETY: kill(2) has no memory-safety preconditions; a stale pid only yields ESRCH.
    unsafe {
        libc::kill(pid as libc::pid_t, signal);
    }
}

/// Waits up to `timeout` for `child` to exit; `None` if it is still running.
fn wait_exit(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => {
                // Bounded poll of the child's state: the deadline only bounds a failure.
                thread::park_timeout(Duration::from_millis(5));
            }
            _ => return None,
        }
    }
}

/// Stops `child`: SIGTERM, then SIGKILL if it has not exited within [`STOP_TIMEOUT`].
fn terminate(child: &mut Child) -> Option<ExitStatus> {
    if let Ok(Some(status)) = child.try_wait() {
        return Some(status);
    }
    signal(child.id(), libc::SIGTERM);
    if let Some(status) = wait_exit(child, STOP_TIMEOUT) {
        return Some(status);
    }
    signal(child.id(), libc::SIGKILL);
    wait_exit(child, STOP_TIMEOUT)
}

// ------------------------------------------------------------------------------------ epmd

/// A private epmd on a free loopback port, killed by its pid on drop.
pub struct Epmd {
    port: u16,
    child: Child,
}

impl Epmd {
    /// Starts `epmd -port P -address 127.0.0.1` on a free port and waits until it accepts
    /// connections. Retries with another port if the chosen one was taken meanwhile.
    pub fn start() -> Epmd {
        let mut last_error = String::new();
        for _ in 0..10 {
            let port = free_port();
            let mut child = Command::new("epmd")
                .args(["-port", &port.to_string(), "-address", "127.0.0.1"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn epmd");
            let deadline = Instant::now() + READY_TIMEOUT;
            loop {
                let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port).into();
                if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                    return Epmd { port, child };
                }
                if let Ok(Some(status)) = child.try_wait() {
                    let mut err = String::new();
                    if let Some(mut stderr) = child.stderr.take() {
                        let _ = stderr.read_to_string(&mut err);
                    }
                    last_error = format!("epmd -port {port} exited with {status}: {err}");
                    break;
                }
                if Instant::now() >= deadline {
                    signal(child.id(), libc::SIGKILL);
                    let _ = child.wait();
                    panic!("epmd -port {port} did not accept connections within {READY_TIMEOUT:?}");
                }
                thread::park_timeout(Duration::from_millis(5));
            }
        }
        panic!("could not start a private epmd: {last_error}");
    }

    /// The port it listens on (what `ERL_EPMD_PORT` must say).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The names registered with it (`epmd -port P -names`), for diagnostics.
    pub fn names(&self) -> String {
        Command::new("epmd")
            .args(["-port", &self.port.to_string(), "-names"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }
}

impl Drop for Epmd {
    fn drop(&mut self) {
        signal(self.child.id(), libc::SIGKILL);
        let _ = self.child.wait();
    }
}

// ------------------------------------------------------------------------------ ebin

/// The directory holding `tests/erl/*.erl` compiled with `erlc`: compiled once per test
/// binary, in a temporary directory that lives as long as the binary.
pub fn ebin() -> &'static Path {
    static EBIN: OnceLock<tempfile::TempDir> = OnceLock::new();
    EBIN.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("freqalloc-ebin")
            .tempdir()
            .expect("temp dir for ebin");
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/erl");
        let mut sources: Vec<PathBuf> = std::fs::read_dir(&src)
            .expect("read tests/erl")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "erl"))
            .collect();
        sources.sort();
        assert!(!sources.is_empty(), "no .erl files in {}", src.display());
        let out = Command::new("erlc")
            .arg("-o")
            .arg(dir.path())
            .args(&sources)
            .output()
            .expect("run erlc");
        assert!(
            out.status.success(),
            "erlc tests/erl/*.erl failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        dir
    })
    .path()
}

// ------------------------------------------------------------------------------ children

/// A long-running child (a freqalloc node, a BEAM node, an `erl` client kept alive) whose
/// stdout lines arrive on a channel and whose stderr is collected for diagnostics.
pub struct Proc {
    what: String,
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
}

impl Proc {
    /// Spawns `cmd` with piped stdout/stderr; `what` names it in failure messages.
    pub fn spawn(what: impl Into<String>, mut cmd: Command) -> Proc {
        let what = what.into();
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr_pipe = child.stderr.take().expect("piped stderr");
        let stderr = Arc::new(Mutex::new(String::new()));
        let collected = Arc::clone(&stderr);
        let readers = vec![
            thread::Builder::new()
                .name("erlang-stdout".into())
                .spawn(move || {
                    for line in BufReader::new(stdout).lines() {
                        let Ok(line) = line else { break };
                        if tx.send(line).is_err() {
                            break;
                        }
                    }
                })
                .expect("spawn stdout reader"),
            thread::Builder::new()
                .name("erlang-stderr".into())
                .spawn(move || {
                    for line in BufReader::new(stderr_pipe).lines() {
                        let Ok(line) = line else { break };
                        let mut all = collected.lock().unwrap_or_else(|p| p.into_inner());
                        all.push_str(&line);
                        all.push('\n');
                    }
                })
                .expect("spawn stderr reader"),
        ];
        Proc {
            what,
            child,
            lines,
            seen: Vec::new(),
            stderr,
            readers,
        }
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits up to `timeout` for a stdout line satisfying `want`; returns it. Panics with
    /// everything the child printed if it exits or the deadline passes first.
    pub fn wait_line(&mut self, timeout: Duration, want: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if want(&line) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!(
                        "{}: no expected line within {timeout:?}\n{}",
                        self.what,
                        self.diagnostics()
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait().ok();
                    panic!(
                        "{}: stdout closed (exit {status:?}) before the expected line\n{}",
                        self.what,
                        self.diagnostics()
                    )
                }
            }
        }
    }

    /// Waits for a line starting with `prefix`; returns it.
    pub fn wait_prefix(&mut self, timeout: Duration, prefix: &str) -> String {
        self.wait_line(timeout, |l| l.starts_with(prefix))
    }

    /// Every stdout line it printed, once it has exited (waits for the pipe's end): the lines
    /// already read by [`Proc::wait_line`] and the rest.
    pub fn all_stdout(&mut self) -> Vec<String> {
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        let rest: Vec<String> = self.lines.try_iter().collect();
        self.seen.extend(rest);
        self.seen.clone()
    }

    /// What it printed so far (stdout lines read, and stderr), for failure messages.
    pub fn diagnostics(&self) -> String {
        let stderr = self
            .stderr
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        format!(
            "--- stdout of {} ---\n{}\n--- stderr ---\n{}",
            self.what,
            self.seen.join("\n"),
            stderr
        )
    }

    /// Whether it has exited (without waiting).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits up to `timeout` for it to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        wait_exit(&mut self.child, timeout)
    }

    /// SIGTERM, then SIGKILL after [`STOP_TIMEOUT`]; returns the exit status.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        terminate(&mut self.child)
    }

    /// SIGKILL at once; returns the exit status.
    pub fn kill(&mut self) -> Option<ExitStatus> {
        signal(self.child.id(), libc::SIGKILL);
        wait_exit(&mut self.child, STOP_TIMEOUT)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = terminate(&mut self.child);
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
    }
}

/// What an `erl` client run printed.
#[derive(Debug)]
pub struct ErlOutput {
    /// Its exit status.
    pub status: ExitStatus,
    /// Everything on stdout.
    pub stdout: String,
    /// Everything on stderr.
    pub stderr: String,
}

/// The result line of a `freq_client` run: `RESULT ok k=v k=v ...` or `RESULT error <term>`.
#[derive(Debug, Clone)]
pub struct ClientResult {
    /// `true` for `RESULT ok`.
    pub ok: bool,
    /// The `k=v` facts of an `ok` line, in order.
    pub facts: Vec<(String, String)>,
    /// The whole line after `RESULT `.
    pub line: String,
}

impl ClientResult {
    /// The fact `key`, panicking with the whole line if absent.
    pub fn get(&self, key: &str) -> &str {
        self.facts
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("no fact {key} in RESULT {}", self.line))
    }

    /// The fact `key` as a number.
    pub fn num(&self, key: &str) -> i64 {
        let v = self.get(key);
        v.parse()
            .unwrap_or_else(|_| panic!("fact {key}={v} is not a number in RESULT {}", self.line))
    }

    /// The fact `key` as a comma-separated list of numbers (empty string: empty list).
    pub fn nums(&self, key: &str) -> Vec<i64> {
        let v = self.get(key);
        if v.is_empty() {
            return Vec::new();
        }
        v.split(',')
            .map(|x| {
                x.parse()
                    .unwrap_or_else(|_| panic!("fact {key}={v} is not a list of numbers"))
            })
            .collect()
    }
}

/// Parses the last `RESULT ` line of a client's stdout.
pub fn parse_result(stdout: &str) -> Option<ClientResult> {
    let line = stdout
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("RESULT "))?;
    let mut words = line.split_whitespace();
    let ok = words.next() == Some("ok");
    let facts = if ok {
        words
            .filter_map(|w| w.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    } else {
        Vec::new()
    };
    Some(ClientResult {
        ok,
        facts,
        line: line.to_string(),
    })
}

// ------------------------------------------------------------------------------ the cluster

/// Which server a test talks to under the name `frequency`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// `freqalloc node` (the Rust node of issue 13).
    Freqalloc,
    /// `tests/erl/frequency_beam.erl` on a BEAM node: the reference the clients are checked
    /// against, and the benchmarks' baseline.
    Beam,
}

/// A private epmd and a cookie: the world of one test.
pub struct Cluster {
    /// The private epmd (dropped last: fields drop in order, and nodes are separate values).
    pub epmd: Epmd,
    /// The cookie every node and client of this cluster uses.
    pub cookie: String,
}

/// A server node running under the name `frequency` (a freqalloc node or a BEAM one).
pub struct ServerNode {
    /// Its node name, e.g. `freq1a2b@localhost`.
    pub name: String,
    /// The readiness line it printed.
    pub ready: String,
    /// The running child.
    pub proc: Proc,
    /// Its store directory (freqalloc) or `None` (BEAM).
    pub data: Option<PathBuf>,
}

impl Cluster {
    /// A fresh private epmd and a random cookie.
    pub fn new() -> Cluster {
        Cluster {
            epmd: Epmd::start(),
            cookie: random_cookie(),
        }
    }

    /// `Command` for `program` with this cluster's `ERL_EPMD_PORT` (and nothing inherited that
    /// would point elsewhere).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("ERL_EPMD_PORT", self.epmd.port().to_string())
            .env_remove("FREQALLOC_COOKIE")
            .env_remove("FREQALLOC_NODE")
            .env_remove("FREQALLOC_DATA")
            .env_remove("ERL_AFLAGS")
            .env_remove("ERL_ZFLAGS")
            .env_remove("ERL_FLAGS");
        cmd
    }

    /// Runs `freqalloc --data DIR ARGS` to completion (e.g. `init`), panicking on failure;
    /// returns stdout.
    pub fn freqalloc(&self, data: &Path, args: &[&str]) -> String {
        let out = self
            .command(env!("CARGO_BIN_EXE_freqalloc"))
            .arg("--data")
            .arg(data)
            .args(args)
            .output()
            .expect("run freqalloc");
        assert!(
            out.status.success(),
            "freqalloc {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts `freqalloc node --name NAME --data DIR --cookie C EXTRA` and waits for its
    /// readiness line `freqalloc node NAME serving ...`.
    pub fn start_freqalloc_node(&self, name: &str, data: &Path, extra: &[&str]) -> ServerNode {
        self.start_freqalloc_nodes(&[(name, data)], extra)
            .pop()
            .expect("one node")
    }

    /// As [`Cluster::start_freqalloc_node`] for several nodes started together (all spawned,
    /// then each waited for): the nodes of a cluster with replicas wait for a majority of them
    /// before they say they serve.
    pub fn start_freqalloc_nodes(
        &self,
        nodes: &[(&str, &Path)],
        extra: &[&str],
    ) -> Vec<ServerNode> {
        let procs: Vec<Proc> = nodes
            .iter()
            .map(|(name, data)| {
                let mut cmd = self.command(env!("CARGO_BIN_EXE_freqalloc"));
                cmd.arg("node")
                    .args(["--name", name])
                    .arg("--data")
                    .arg(data)
                    .args(["--cookie", &self.cookie])
                    .args(extra);
                Proc::spawn(format!("freqalloc node {name}"), cmd)
            })
            .collect();
        procs
            .into_iter()
            .zip(nodes)
            .map(|(mut proc, (name, data))| {
                let ready =
                    proc.wait_prefix(READY_TIMEOUT, &format!("freqalloc node {name} serving"));
                ServerNode {
                    name: name.to_string(),
                    ready,
                    proc,
                    data: Some(data.to_path_buf()),
                }
            })
            .collect()
    }

    /// Starts a BEAM node running `frequency_beam` over frequencies `first..=last` and waits
    /// for its readiness line `frequency_beam NAME serving ...`. `extra` are `erl` flags.
    pub fn start_beam_node(&self, name: &str, first: u64, last: u64, extra: &[&str]) -> ServerNode {
        let mut cmd = self.command("erl");
        cmd.args([
            "-sname",
            name,
            "-setcookie",
            &self.cookie,
            "-noshell",
            "-hidden",
        ])
        .arg("-pa")
        .arg(ebin())
        .args(extra)
        .args([
            "-eval",
            &format!("frequency_beam:start_node({first}, {last})"),
        ]);
        let mut proc = Proc::spawn(format!("frequency_beam {name}"), cmd);
        let ready = proc.wait_prefix(READY_TIMEOUT, &format!("frequency_beam {name} serving"));
        ServerNode {
            name: name.to_string(),
            ready,
            proc,
            data: None,
        }
    }

    /// Starts the server `target` over frequencies `first..=last` (a fresh store in `dir`
    /// for freqalloc, with `shards` shards; `extra` are `freqalloc node` flags, ignored for
    /// BEAM).
    pub fn start_target(
        &self,
        target: Target,
        dir: &Path,
        first: u64,
        last: u64,
        shards: u32,
        extra: &[&str],
    ) -> ServerNode {
        match target {
            Target::Freqalloc => {
                let data = dir.join("store");
                let pool = format!("{first}-{last}");
                let shards = shards.to_string();
                self.freqalloc(
                    &data,
                    &[
                        "init",
                        "--pool",
                        &pool,
                        "--shards",
                        &shards,
                        "--durability",
                        "sync",
                    ],
                );
                self.start_freqalloc_node(&unique_name("freq"), &data, extra)
            }
            Target::Beam => self.start_beam_node(&unique_name("freqb"), first, last, &[]),
        }
    }

    /// An `erl` client command: `erl -sname NAME -setcookie COOKIE -noshell -pa EBIN -eval EVAL`.
    pub fn erl_command(&self, cookie: &str, eval: &str) -> Command {
        let mut cmd = self.command("erl");
        cmd.args([
            "-sname",
            &unique_name("client"),
            "-setcookie",
            cookie,
            "-noshell",
        ])
        .arg("-pa")
        .arg(ebin())
        .args(["-eval", eval]);
        cmd
    }

    /// Runs an `erl` client with this cluster's cookie to completion (killed after `timeout`,
    /// which fails the test), capturing its output.
    pub fn erl(&self, eval: &str, timeout: Duration) -> ErlOutput {
        self.erl_with_cookie(&self.cookie, eval, timeout)
    }

    /// As [`Cluster::erl`], with another cookie.
    pub fn erl_with_cookie(&self, cookie: &str, eval: &str, timeout: Duration) -> ErlOutput {
        let mut proc = Proc::spawn(format!("erl -eval {eval}"), self.erl_command(cookie, eval));
        let Some(status) = proc.wait_exit(timeout) else {
            let _ = proc.kill();
            panic!(
                "erl client did not finish within {timeout:?}\n{}",
                proc.diagnostics()
            );
        };
        let stdout = proc.all_stdout();
        let stderr = proc
            .stderr
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        ErlOutput {
            status,
            stdout: stdout.join("\n"),
            stderr,
        }
    }

    /// Runs `freq_client:run(Fun, [Node | Args])` (Args already Erlang source text) and
    /// returns its `RESULT` line, panicking with the whole output if there is none.
    pub fn client(&self, fun: &str, node: &str, args: &[&str]) -> ClientResult {
        let out = self.erl(&client_eval(fun, node, args), CLIENT_TIMEOUT);
        parse_result(&out.stdout).unwrap_or_else(|| {
            panic!(
                "freq_client:{fun} printed no RESULT line (exit {}):\n{}\n{}",
                out.status, out.stdout, out.stderr
            )
        })
    }

    /// As [`Cluster::client`], and the result must be `ok`.
    pub fn client_ok(&self, fun: &str, node: &str, args: &[&str]) -> ClientResult {
        let r = self.client(fun, node, args);
        assert!(r.ok, "freq_client:{fun} against {node}: RESULT {}", r.line);
        r
    }

    /// Starts an `erl` client running `eval` (with this cluster's cookie) and keeps it running.
    pub fn spawn_erl(&self, eval: &str) -> Proc {
        Proc::spawn(
            format!("erl -eval {eval}"),
            self.erl_command(&self.cookie, eval),
        )
    }

    /// Starts `freq_client:run(Fun, [Node | Args])` and keeps it running: for clients that
    /// print a result and then wait to be killed (or halt on their own).
    pub fn spawn_client(&self, fun: &str, node: &str, args: &[&str]) -> Proc {
        let eval = client_eval(fun, node, args);
        Proc::spawn(
            format!("erl -eval {eval}"),
            self.erl_command(&self.cookie, &eval),
        )
    }
}

impl Default for Cluster {
    fn default() -> Self {
        Cluster::new()
    }
}

/// The `-eval` text of `freq_client:run(Fun, [Node | Args])`.
pub fn client_eval(fun: &str, node: &str, args: &[&str]) -> String {
    let mut all = vec![format!("'{node}'")];
    all.extend(args.iter().map(|a| a.to_string()));
    format!("freq_client:run({fun}, [{}])", all.join(", "))
}
