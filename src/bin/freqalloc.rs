//! `freqalloc`: the command line of the sharded frequency allocator.
//!
//! Every command opens the store (default `data/store`, or `--data DIR`, or `FREQALLOC_DATA`),
//! does its work and closes it; with `--node NAME` (or `FREQALLOC_NODE`) the store commands talk
//! to a running `freqalloc node` instead. Every error is one line on stderr and a non-zero exit.

/// `println!` that hands a failed write (a closed pipe: `freqalloc status | head -1`) back to
/// the caller as an error instead of panicking; `main` ends quietly on a broken pipe.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)?
    }};
}

/// `eprintln!` that never panics: a closed stderr (`2>&1 | head -1`) is ignored.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), $($arg)*);
    }};
}

#[path = "freqalloc/node.rs"]
mod node;
#[path = "freqalloc/remote.rs"]
mod remote;

use std::fs::{File, OpenOptions as FileOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use serde_json::{json, Value};

use freqalloc::freq::{
    check_client_name, parse_pool, Allocator, ConfigChange, Durability, FreqError, InitOutcome,
    Layout, LayoutError, Options, Routing, Status, StoreConfig,
};

/// A persistent, sharded allocator of frequencies (the course's frequency server, scaled up).
#[derive(Parser)]
#[command(name = "freqalloc", version, about, long_about = None)]
struct Cli {
    /// The store directory.
    #[arg(
        long,
        global = true,
        env = "FREQALLOC_DATA",
        default_value = "data/store"
    )]
    data: PathBuf,
    /// Talk to this running node (name@host) instead of opening the store (allocate,
    /// deallocate, release, held, status, check, load).
    #[arg(long, global = true, env = "FREQALLOC_NODE")]
    node: Option<String>,
    /// The distribution cookie (else FREQALLOC_COOKIE, else ~/.erlang.cookie).
    #[arg(long, global = true)]
    cookie: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the store (or check an existing one; --grow adds frequencies).
    Init(InitArgs),
    /// Show or change the store's stored settings (strategy, durability, limit).
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Allocate a frequency to a client; prints the frequency alone on stdout.
    Allocate {
        /// The client's name.
        #[arg(long, value_parser = parse_client)]
        client: String,
        /// Reclaim the frequency after this many seconds.
        #[arg(long)]
        lease: Option<u64>,
    },
    /// Free a frequency the client holds.
    Deallocate {
        /// The frequency.
        freq: u64,
        /// The client's name.
        #[arg(long, value_parser = parse_client)]
        client: String,
    },
    /// Free every frequency a client holds; prints them.
    Release {
        /// The client's name.
        #[arg(long, value_parser = parse_client)]
        client: String,
    },
    /// Print what a client holds, one frequency a line.
    Held {
        /// The client's name.
        #[arg(long, value_parser = parse_client)]
        client: String,
    },
    /// Show shards, free ranges and allocations.
    Status {
        /// One JSON object instead of tables: free frequencies as ranges, allocations one by one.
        #[arg(long)]
        json: bool,
        /// With --json: also list free frequencies one by one ("free"), at most --free-limit.
        #[arg(long, requires = "json")]
        list_free: bool,
        /// The most free frequencies --list-free lists ("free_truncated" says if there were
        /// more).
        #[arg(long, default_value_t = 10_000, requires = "list_free",
              value_parser = clap::value_parser!(u64).range(0..=FREE_LIST_MAX))]
        free_limit: u64,
    },
    /// Verify the store's invariants; exit 0 when consistent.
    Check,
    /// Run N client threads allocating and deallocating for S seconds.
    Load(LoadArgs),
    /// The main job: create or reopen the store with the course's layout scaled up, run a storm
    /// of clients with a progress bar, and summarise. A second run shows what was recovered.
    Demo {
        /// How long the storm runs.
        #[arg(long, default_value_t = 5.0, value_parser = parse_seconds)]
        seconds: f64,
        /// Client threads.
        #[arg(long, default_value_t = 12)]
        clients: usize,
    },
    /// Machine-readable benchmarks of the workloads benches/beam/compare.sh runs on BEAM too.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Serve the store as a hidden Erlang node (the `frequency` name) until SIGINT/SIGTERM.
    Node(node::NodeArgs),
}

/// On an existing store, --strategy, --durability, --limit and --shards not given keep their
/// stored values, and one given with another value is refused (change a setting with
/// `freqalloc config set`).
#[derive(Args)]
struct InitArgs {
    /// The pool: comma-separated ranges, e.g. 10-15,20-25.
    #[arg(long, value_parser = parse_pool_arg)]
    pool: String,
    /// Split the pool evenly over this many shards, at most 64 (default: one shard per listed
    /// range up to 8 ranges, else 8 shards).
    #[arg(long)]
    shards: Option<usize>,
    /// most-free, round-robin, p2c or hash [new store's default: most-free].
    #[arg(long)]
    strategy: Option<String>,
    /// sync, interval:MS or none [new store's default: sync].
    #[arg(long)]
    durability: Option<String>,
    /// At most this many frequencies per client [new store's default: no limit].
    #[arg(long)]
    limit: Option<usize>,
    /// Allow adding frequencies to an existing store's pool.
    #[arg(long)]
    grow: bool,
    /// Copies of each shard: 1, or 2 for a primary/backup pair (in a cluster, the backup on
    /// the next node; default: the stored count, or 1 for a new store). Part of the store's shape: an existing store keeps its count (no
    /// conversion between counts; a different one is refused).
    #[arg(long)]
    replicas: Option<usize>,
    /// A cluster: the nodes (`name@host,...`) that serve the shards, placed round them in turn
    /// (shard i on node i mod N; with `--replicas 2` its backup on node i+1 mod N). Run the
    /// same `init` in every node's data directory, then `freqalloc node --name NODE --data DIR`
    /// on each.
    #[arg(long, value_name = "NODES")]
    nodes: Option<String>,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the stored settings, one `KEY VALUE` a line.
    Show,
    /// Change one setting: strategy (most-free, round-robin, p2c, hash), durability (sync,
    /// interval:MS, none) or limit (a number, or none). Refused, changing nothing, when it
    /// would lose or double an allocation (durability none while frequencies are allocated).
    Set {
        /// strategy, durability or limit.
        key: String,
        /// The new value.
        value: String,
    },
}

#[derive(Args)]
pub(crate) struct LoadArgs {
    /// Client threads (named c0, c1, ...).
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// How long to run.
    #[arg(long, default_value_t = 5.0, value_parser = parse_seconds)]
    seconds: f64,
    /// Frequencies each client holds at most before it deallocates.
    #[arg(long, default_value_t = 1)]
    hold: usize,
    /// Print the summary as one JSON object on the last line.
    #[arg(long)]
    json: bool,
    /// Append a JSON line before each call and after each reply (written unbuffered); `-`
    /// writes them to standard output.
    #[arg(long)]
    history: Option<PathBuf>,
    /// With --node: calls each client keeps in flight (each under its own client name).
    #[arg(long, default_value_t = 1)]
    pipeline: usize,
}

impl LoadArgs {
    /// The checks the local and the remote `load` share (`--seconds` is checked when the
    /// arguments are parsed, by `parse_seconds`).
    fn check(&self) -> Result<()> {
        if self.clients == 0 {
            bail!("--clients must be at least 1");
        }
        if self.hold == 0 {
            bail!("--hold must be at least 1");
        }
        Ok(())
    }

    /// The `--history` file opened for appending (created if missing), shared by the clients;
    /// `None` inside without `--history`. `-` is standard output (its descriptor, duplicated, so
    /// each line is still one unbuffered `write`).
    fn open_history(&self) -> Result<Arc<Option<File>>> {
        let history = match &self.history {
            Some(p) if p.as_os_str() == "-" => {
                use std::os::fd::AsFd;
                let fd = std::io::stdout()
                    .as_fd()
                    .try_clone_to_owned()
                    .context("duplicating standard output for --history -")?;
                Some(File::from(fd))
            }
            Some(p) => Some(
                FileOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .with_context(|| format!("opening history file {}", p.display()))?,
            ),
            None => None,
        };
        Ok(Arc::new(history))
    }
}

/// The exit code of a command whose output pipe closed, as a shell reports a process ended by
/// `SIGPIPE` (128 + 13). Nothing is printed.
const BROKEN_PIPE_EXIT: u8 = 141;

/// An error and its causes, each said once: a cause whose text (for an I/O error: its words,
/// see [`freqalloc::io_words`]) the line already holds is left out, so a layer that repeats
/// its source in its own message does not print it twice.
fn error_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = match cause.downcast_ref::<std::io::Error>() {
            Some(io) => freqalloc::io_words::io_words(io),
            None => cause.to_string(),
        };
        if text.is_empty() || line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

/// True when the error is a write to a closed pipe.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn main() -> ExitCode {
    // A panic is a bug, but the user still gets one line, not a backtrace.
    std::panic::set_hook(Box::new(|info| {
        say!("freqalloc: internal error: {info}");
    }));
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version: clap's own output, exit 0.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            say!("freqalloc: {} (try --help)", usage_line(&e));
            return ExitCode::from(2);
        }
    };
    match run(cli) {
        Ok(code) => code,
        Err(e) if is_broken_pipe(&e) => ExitCode::from(BROKEN_PIPE_EXIT),
        Err(e) => {
            say!("freqalloc: {}", error_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// A usage error in one line, like every other error, with all clap said: which argument, what
/// was wrong with it (clap's "Usage:" and "--help" tails are left out, a hint is kept).
fn usage_line(e: &clap::Error) -> String {
    use clap::error::{ContextKind, ContextValue};
    let mut text = e.render().to_string();
    // The value as typed may hold a newline or an escape sequence: print it escaped.
    if let Some(ContextValue::String(v)) = e.get(ContextKind::InvalidValue) {
        if !v.is_empty() {
            text = text.replace(v.as_str(), &escaped(v));
        }
    }
    let parts: Vec<&str> = text
        .lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with("Usage:"))
        .filter(|l| !l.is_empty() && !l.starts_with("For more information"))
        .collect();
    let line = escaped_controls(&parts.join(" "));
    let line = line.trim_start_matches("error: ");
    if line.is_empty() {
        "bad arguments".to_string()
    } else {
        line.to_string()
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    let dir = cli.data.as_path();
    if let Some(n) = cli.node.as_deref().filter(|n| !n.is_empty()) {
        return run_remote(n, cli.cookie.as_deref(), cli.command);
    }
    match cli.command {
        Command::Init(args) => init(dir, args),
        Command::Config(cmd) => config(dir, cmd),
        Command::Allocate { client, lease } => {
            let alloc = node::open_waiting(dir)?;
            let f = match lease {
                Some(secs) => alloc.allocate_with_lease(&client, Duration::from_secs(secs)),
                None => alloc.allocate(&client),
            }?;
            alloc.stop();
            out!("{f}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Deallocate { freq, client } => {
            let alloc = node::open_waiting(dir)?;
            alloc.deallocate(freq, &client)?;
            alloc.stop();
            Ok(ExitCode::SUCCESS)
        }
        Command::Release { client } => {
            let alloc = node::open_waiting(dir)?;
            for f in alloc.release_all(&client)? {
                out!("{f}");
            }
            alloc.stop();
            Ok(ExitCode::SUCCESS)
        }
        Command::Held { client } => {
            let alloc = node::open_waiting(dir)?;
            for f in alloc.held_by(&client)? {
                out!("{f}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Status {
            json,
            list_free,
            free_limit,
        } => {
            let alloc = node::open_waiting(dir)?;
            let status = alloc.status();
            if json {
                let free_list = list_free.then_some(free_limit);
                out!("{}", status_json(&status, pool_count(&alloc), free_list));
            } else {
                print_status(dir, &status, pool_count(&alloc))?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Check => {
            let alloc = node::open_waiting(dir)?;
            let violations = alloc.check()?;
            if violations.is_empty() {
                let s = alloc.status();
                let pool = pool_count(&alloc);
                out!(
                    "consistent: {}, {} free, {} allocated, {}",
                    counted(pool, "frequency", "frequencies"),
                    pool - s.allocations.len() as u128,
                    s.allocations.len(),
                    counted(s.shards.len() as u128, "shard", "shards")
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
        Command::Load(args) => load(dir, args),
        Command::Demo { seconds, clients } => demo(dir, seconds, clients),
        Command::Bench(BenchCommand::Tables(args)) => bench_tables(args),
        Command::Node(args) => node::run(dir, cli.cookie.as_deref(), args),
    }
}

/// The store commands through a node.
fn run_remote(n: &str, cookie: Option<&str>, command: Command) -> Result<ExitCode> {
    match command {
        Command::Load(args) => return remote::load(n, cookie, args),
        Command::Init(_)
        | Command::Config(_)
        | Command::Demo { .. }
        | Command::Bench(_)
        | Command::Node(_) => {
            bail!("--node works with allocate, deallocate, release, held, status, check and load")
        }
        _ => {}
    }
    let r = remote::connect(n, cookie)?;
    match command {
        Command::Allocate { client, lease } => {
            let f = match lease {
                Some(secs) => r.allocate_with_lease(&client, Duration::from_secs(secs)),
                None => r.allocate(&client),
            }?;
            out!("{f}");
        }
        Command::Deallocate { freq, client } => r.deallocate(freq, &client)?,
        Command::Release { client } => {
            for f in r.release_all(&client)? {
                out!("{f}");
            }
        }
        Command::Held { client } => {
            for f in r.held_by(&client)? {
                out!("{f}");
            }
        }
        Command::Status {
            json, list_free, ..
        } => {
            if list_free {
                bail!("--list-free needs the store itself: a node's status has counts and ranges only");
            }
            let s = r.status()?;
            if json {
                out!("{}", remote::status_json(&s));
            } else {
                remote::print_status(n, &s)?;
            }
        }
        Command::Check => return remote::check(n, &r),
        _ => {}
    }
    Ok(ExitCode::SUCCESS)
}

/// The course's two back ends, 10-15 and 20-25, scaled up ten-thousandfold and split over four
/// shards.
const DEMO_POOL: &str = "100000-159999,200000-259999";

fn demo(dir: &Path, seconds: f64, clients: usize) -> Result<ExitCode> {
    match freqalloc::freq::read_config(dir)? {
        None => {
            let ranges = parse_pool(DEMO_POOL)?;
            let config = StoreConfig {
                layout: Layout::split_evenly(&ranges, 4)?,
                strategy: Routing::MostFree,
                durability: Durability::Sync,
                client_limit: None,
                replicas: 1,
                cluster: None,
            };
            Allocator::init(dir, config, false)?;
            out!(
                "demo: created a store at {} (pool {DEMO_POOL}, 4 shards, most-free, sync)",
                dir.display()
            );
        }
        Some(c) => out!(
            "demo: reopening the store at {} (pool {}, {} shards, {}, {}); its allocations come back from disk",
            dir.display(),
            c.layout.pool_string(),
            c.layout.shard_count(),
            c.strategy,
            c.durability
        ),
    }
    let code = load(
        dir,
        LoadArgs {
            clients,
            seconds,
            hold: 8,
            json: false,
            history: None,
            pipeline: 1,
        },
    )?;
    let alloc = open(dir)?;
    let status = alloc.status();
    out!("after the storm (held allocations stay; run the demo again to see them recovered):");
    for sh in &status.shards {
        out!(
            "  shard {} ({}): {} free, {} allocated",
            sh.shard,
            ranges_string(&sh.ranges),
            sh.free,
            sh.allocated
        );
    }
    let violations = alloc.check()?;
    out!(
        "  check: {}",
        if violations.is_empty() {
            "consistent".to_string()
        } else {
            format!(
                "{} violation(s): {}",
                violations.len(),
                violations.join("; ")
            )
        }
    );
    alloc.stop();
    Ok(if violations.is_empty() {
        code
    } else {
        ExitCode::FAILURE
    })
}

fn open(dir: &Path) -> Result<Allocator> {
    // A CLI command is not a long-lived client: what it allocates stays allocated when it exits.
    let options = Options {
        release_on_drop: false,
        ..Options::default()
    };
    match Allocator::open(dir, options) {
        Ok(a) => Ok(a),
        Err(e) if node::is_locked(&e) => match node::serving_node(dir) {
            Some(n) => bail!(
                "the store {} is served by node {n}: use --node {n} (or FREQALLOC_NODE={n})",
                dir.display()
            ),
            None => Err(e.into()),
        },
        Err(e) => Err(e.into()),
    }
}

fn init(dir: &Path, args: InitArgs) -> Result<ExitCode> {
    let ranges = parse_pool(&args.pool)?;
    // Options not given keep the stored values (of an existing store) or take the defaults.
    let stored = freqalloc::freq::read_config(dir)?;
    let layout = match (args.shards, &stored) {
        (None, Some(s)) => Layout::split_evenly(&ranges, s.layout.shard_count())
            .or_else(|_| Layout::for_pool(&ranges, None))?,
        (n, _) => Layout::for_pool(&ranges, n)?,
    };
    let config = StoreConfig {
        layout,
        strategy: match (&args.strategy, &stored) {
            (Some(s), _) => s.parse::<Routing>()?,
            (None, Some(s)) => s.strategy,
            (None, None) => Routing::MostFree,
        },
        durability: match (&args.durability, &stored) {
            (Some(d), _) => d.parse::<Durability>()?,
            (None, Some(s)) => s.durability,
            (None, None) => Durability::Sync,
        },
        client_limit: match (args.limit, &stored) {
            (Some(l), _) => Some(l),
            (None, Some(s)) => s.client_limit,
            (None, None) => None,
        },
        replicas: match (args.replicas, &stored) {
            (Some(r), _) => r,
            (None, Some(s)) => s.replicas,
            (None, None) => 1,
        },
        cluster: None,
    };
    // `--nodes` places the shards round the nodes; without it an existing store keeps its
    // placement (compared like every other setting by `Allocator::init`).
    let mut config = config;
    config.cluster = match (&args.nodes, &stored) {
        (Some(list), _) => {
            let nodes: Vec<String> = list
                .split(',')
                .map(|n| n.trim().to_string())
                .filter(|n| !n.is_empty())
                .collect();
            Some(freqalloc::freq::ClusterLayout::spread_replicated(
                &nodes,
                config.layout.shard_count(),
                config.replicas,
            )?)
        }
        (None, Some(s)) => s.cluster.clone(),
        (None, None) => None,
    };
    let clustered = config.cluster.clone();
    let replicas = config.replicas;
    let outcome = Allocator::init(dir, config, args.grow)?;
    // A created store was opened by `init` itself (twice, to prove it opens); an existing one,
    // or a new replicated one (which `init` leaves to its first open), is opened once here so
    // that a locked or damaged store, or a disk too small, shows now.
    // A cluster store is not opened here at all: only its node serves it.
    let proven = match outcome {
        InitOutcome::Created => replicas == 1 || clustered.is_some(),
        _ => clustered.is_some(),
    };
    let (alloc, c) = match outcome {
        _ if proven => (
            None,
            freqalloc::freq::read_config(dir)?
                .ok_or_else(|| freqalloc::freq::StoreError::NoStore(dir.to_path_buf()))?,
        ),
        _ => {
            let alloc = open(dir)?;
            let c = alloc.config().clone();
            (Some(alloc), c)
        }
    };
    let what = match outcome {
        InitOutcome::Created => "created store".to_string(),
        InitOutcome::Existing => "store exists".to_string(),
        InitOutcome::Grown(n) => format!(
            "added {} to store",
            counted(u128::from(n), "frequency", "frequencies")
        ),
    };
    out!(
        "{what} at {}: pool {} ({}) in {}, strategy {}, durability {}{}{}",
        dir.display(),
        c.layout.pool_string(),
        counted(c.layout.pool_count(), "frequency", "frequencies"),
        counted(c.layout.shard_count() as u128, "shard", "shards"),
        c.strategy,
        c.durability,
        c.client_limit
            .map(|l| format!(", limit {l} per client"))
            .unwrap_or_default(),
        if c.replicas > 1 {
            format!(", {} replicas", c.replicas)
        } else {
            String::new()
        }
    );
    if let Some(cl) = &c.cluster {
        for n in cl.nodes() {
            let shards: Vec<String> = cl.shards_of(n).iter().map(|s| s.to_string()).collect();
            let backups: Vec<String> = (0..cl.shard_count())
                .filter(|&s| cl.backup_of(s) == Some(n.as_str()))
                .map(|s| s.to_string())
                .collect();
            if backups.is_empty() {
                out!("  node {n} serves shard(s) {}", shards.join(","));
            } else {
                out!(
                    "  node {n} serves shard(s) {} and backs up shard(s) {}",
                    shards.join(","),
                    backups.join(",")
                );
            }
        }
    }
    if let Some(alloc) = alloc {
        alloc.stop();
    }
    Ok(ExitCode::SUCCESS)
}

fn config(dir: &Path, cmd: ConfigCommand) -> Result<ExitCode> {
    let show = |c: &StoreConfig| -> Result<()> {
        out!("pool {}", c.layout.pool_string());
        out!("shards {}", c.layout.shard_count());
        out!("replicas {}", c.replicas);
        out!("strategy {}", c.strategy);
        out!("durability {}", c.durability);
        match c.client_limit {
            Some(l) => out!("limit {l}"),
            None => out!("limit none"),
        }
        Ok(())
    };
    match cmd {
        ConfigCommand::Show => {
            let c = freqalloc::freq::read_config(dir)?
                .ok_or_else(|| freqalloc::freq::StoreError::NoStore(dir.to_path_buf()))?;
            show(&c)?;
        }
        ConfigCommand::Set { key, value } => {
            let change = match key.as_str() {
                "strategy" => ConfigChange::Strategy(value.parse::<Routing>()?),
                "durability" => ConfigChange::Durability(value.parse::<Durability>()?),
                "limit" if value == "none" => ConfigChange::Limit(None),
                "limit" => ConfigChange::Limit(Some(value.parse::<usize>().with_context(|| {
                    format!("bad limit {value:?}: expected a number or none")
                })?)),
                "pool" | "shards" | "replicas" => bail!(
                    "{key} cannot be set: grow the pool with `freqalloc init --pool P --grow`; shards and replicas are fixed when a store is created"
                ),
                _ => bail!("unknown setting {key:?}: expected strategy, durability or limit"),
            };
            let c = match Allocator::set_config(dir, change) {
                Ok(c) => c,
                Err(e) if node::is_locked(&e) => match node::serving_node(dir) {
                    Some(n) => bail!(
                        "the store {} is served by node {n}: stop it to change its settings",
                        dir.display()
                    ),
                    None => return Err(e.into()),
                },
                Err(e) => return Err(e.into()),
            };
            out!("set {key} to {value} in the store at {}", dir.display());
            show(&c)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn ranges_string(ranges: &[freqalloc::freq::FreqRange]) -> String {
    let parts: Vec<String> = ranges.iter().map(ToString::to_string).collect();
    parts.join(",")
}

fn print_status(dir: &Path, s: &Status, pool: u128) -> Result<()> {
    out!(
        "store {}: {}, strategy {}, durability {}",
        dir.display(),
        counted(pool, "frequency", "frequencies"),
        s.strategy,
        s.durability
    );
    out!(
        "{:>5}  {:<24} {:>10} {:>10} {:>10} {:>8}",
        "shard",
        "ranges",
        "free",
        "allocated",
        "recovered",
        "restarts"
    );
    for sh in &s.shards {
        out!(
            "{:>5}  {:<24} {:>10} {:>10} {:>10} {:>8}{}",
            sh.shard,
            ranges_string(&sh.ranges),
            shard_free(s, &sh.ranges),
            sh.allocated,
            sh.recovered,
            sh.restarts,
            if sh.alive { "" } else { "  (down)" }
        );
        for r in &sh.replicas {
            out!(
                "{:>5}  replica {}: {:<8} applied {:>10}, lag {:>6}, restarts {}{}",
                "",
                r.replica,
                r.role.to_string(),
                r.applied,
                r.lag,
                r.restarts,
                if r.role == freqalloc::freq::Role::Backup && !sh.in_sync {
                    "  (catching up)"
                } else {
                    ""
                }
            );
        }
    }
    out!(
        "free: {}",
        if s.free.is_empty() {
            "none".to_string()
        } else {
            ranges_string(&s.free)
        }
    );
    if s.allocations.is_empty() {
        out!("allocations: none");
        return Ok(());
    }
    out!("allocations:");
    out!(
        "{:>12}  {:<20} {:>15} {:>15}",
        "freq",
        "owner",
        "since_ms",
        "lease_until_ms"
    );
    for (f, a) in &s.allocations {
        let lease = a
            .lease_until_ms
            .map(|t| t.to_string())
            .unwrap_or_else(|| "-".into());
        out!(
            "{:>12}  {:<20} {:>15} {:>15}",
            f,
            escaped(&a.owner),
            a.since_ms,
            lease
        );
    }
    Ok(())
}

/// A client name as printed: control characters and other unprintable ones escaped (`\n`,
/// `\u{1b}`), so a stored name cannot move the cursor or forge a line.
fn escaped(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        if c.is_control() || c == '\\' {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// The most `status --json --list-free --free-limit N` lists.
const FREE_LIST_MAX: u64 = 1_000_000;

/// The pool's size, counted in `u128`: the whole `u64` range holds 2^64 frequencies.
fn pool_count(alloc: &Allocator) -> u128 {
    alloc
        .config()
        .layout
        .all_ranges()
        .iter()
        .map(range_count)
        .sum()
}

/// How many frequencies `r` holds (up to 2^64).
fn range_count(r: &freqalloc::freq::FreqRange) -> u128 {
    u128::from(r.last - r.first) + 1
}

/// A count in JSON: a number while it fits a `u64`, else its decimal digits as a string (JSON
/// numbers above 2^64 - 1 do not survive most parsers).
fn json_count(n: u128) -> Value {
    match u64::try_from(n) {
        Ok(n) => json!(n),
        Err(_) => json!(n.to_string()),
    }
}

/// Free frequencies inside `ranges` (a shard's), counted from the status's free ranges: exact
/// where a shard's published count saturates (2^64 free in a shard of the whole `u64` range).
fn shard_free(s: &Status, ranges: &[freqalloc::freq::FreqRange]) -> u128 {
    let mut n = 0;
    for r in ranges {
        // The free ranges are sorted and disjoint: the first one that can overlap `r` is the
        // first whose end reaches it.
        let from = s.free.partition_point(|f| f.last < r.first);
        for f in s.free[from..].iter().take_while(|f| f.first <= r.last) {
            n += u128::from(f.last.min(r.last) - f.first.max(r.first)) + 1;
        }
    }
    n
}

/// "1 frequency", "2 frequencies".
fn counted(n: u128, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// `status --json`: proportional to the allocations and the free ranges, never to the pool's
/// size; free frequencies one by one only when asked (`free_list`: at most that many).
fn status_json(s: &Status, pool: u128, free_list: Option<u64>) -> Value {
    let free_count: u128 = s.free.iter().map(range_count).sum();
    let mut v = json!({
        "pool_size": json_count(pool),
        "strategy": s.strategy.name(),
        "durability": s.durability.to_string(),
        "free_count": json_count(free_count),
        "allocated_count": s.allocations.len(),
        "free_ranges": s.free.iter().map(|r| [r.first, r.last]).collect::<Vec<_>>(),
        "allocations": s.allocations.iter().map(|(f, a)| json!({
            "freq": f,
            "owner": a.owner,
            "since_ms": a.since_ms,
            "lease_until_ms": a.lease_until_ms,
        })).collect::<Vec<_>>(),
        "shards": s.shards.iter().map(|sh| json!({
            "shard": sh.shard,
            "ranges": sh.ranges.iter().map(|r| [r.first, r.last]).collect::<Vec<_>>(),
            "free": json_count(shard_free(s, &sh.ranges)),
            "allocated": sh.allocated,
            "recovered": sh.recovered,
            "restarts": sh.restarts,
            "alive": sh.alive,
            "in_sync": sh.in_sync,
            "replicas": sh.replicas.iter().map(|r| json!({
                "replica": r.replica,
                "role": r.role.to_string(),
                "applied": r.applied,
                "lag": r.lag,
                "restarts": r.restarts,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    });
    if let Some(limit) = free_list {
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        let free: Vec<u64> = s
            .free
            .iter()
            .flat_map(|r| r.first..=r.last)
            .take(limit)
            .collect();
        v["free_truncated"] = json!((free.len() as u128) < free_count);
        v["free"] = json!(free);
    }
    v
}

/// `text` with its control characters escaped (backslashes left alone).
fn escaped_controls(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// `--client`: the library's one rule for a client name ([`check_client_name`]), checked when
/// the arguments are parsed, so a bad name is a usage error in every command.
fn parse_client(name: &str) -> Result<String, String> {
    check_client_name(name).map_err(|e| e.to_string())?;
    Ok(name.to_string())
}

/// `--seconds`: a positive number of seconds that a `Duration` can hold.
fn parse_seconds(text: &str) -> Result<f64, String> {
    let s: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    if !(s > 0.0 && s.is_finite()) {
        return Err(format!("{text} is not a positive number of seconds"));
    }
    Duration::try_from_secs_f64(s)
        .map_err(|_| format!("{text} seconds is too long (at most {} s)", u64::MAX))?;
    Ok(s)
}

/// `--pool`: checked when the arguments are parsed, so a bad pool is a usage error (exit 2).
fn parse_pool_arg(text: &str) -> Result<String, String> {
    let mut ranges = parse_pool(text).map_err(|e| e.to_string())?;
    ranges.sort();
    if let Some(w) = ranges.windows(2).find(|w| w[1].first <= w[0].last) {
        return Err(LayoutError::Overlap(w[0], w[1]).to_string());
    }
    Ok(text.to_string())
}

/// One history line, written with a single `write` so concurrent clients never interleave
/// within a line and a SIGKILL keeps every line already written.
fn history_line(
    file: &Option<File>,
    client: &str,
    op: &str,
    freq: Option<u64>,
    phase: &str,
    error: Option<&str>,
) -> Result<()> {
    if let Some(mut f) = file.as_ref() {
        let mut line =
            json!({"client": client, "op": op, "freq": freq, "phase": phase, "error": error})
                .to_string();
        line.push('\n');
        f.write_all(line.as_bytes())
            .context("writing the history file")?;
    }
    Ok(())
}

/// `load` times one operation in this many: reading the clock twice per operation would cost
/// the load generator more than a direct call costs the allocator.
const LATENCY_SAMPLE: u64 = 8;

/// Load clients publish their operation count for the progress bar in steps of this many, not
/// on every operation (one counter written by every client would bounce between the cores).
const OPS_PUBLISH: u64 = 256;

/// `load` stops every client once one has seen this many errors in a row (other than "no
/// frequency"): a persistent failure such as a full disk, not a storm to keep measuring.
const PERSISTENT_ERRORS: u64 = 100;

#[derive(Default)]
struct ClientStats {
    allocations: u64,
    deallocations: u64,
    no_frequency: u64,
    errors: u64,
    operations: u64,
    /// Latencies of every `LATENCY_SAMPLE`th operation.
    latencies_ns: Vec<u64>,
    per_shard: Vec<u64>,
    first_error: Option<String>,
    /// Errors since the last success (see [`PERSISTENT_ERRORS`]).
    errors_in_a_row: u64,
    /// The error that stopped the run, if one did.
    persistent: Option<String>,
}

impl ClientStats {
    /// Waits for every client thread of a `load` over `shards` shards; their totals.
    fn join(
        handles: Vec<std::thread::JoinHandle<Result<ClientStats>>>,
        shards: usize,
    ) -> Result<ClientStats> {
        let mut total = ClientStats {
            per_shard: vec![0; shards],
            ..Default::default()
        };
        for h in handles {
            let st = h
                .join()
                .map_err(|_| anyhow::anyhow!("a client thread panicked"))??;
            total.absorb(st);
        }
        Ok(total)
    }

    /// Adds one client's counts to these totals; the first error (and the first persistent
    /// one) seen is kept.
    fn absorb(&mut self, st: ClientStats) {
        self.allocations += st.allocations;
        self.deallocations += st.deallocations;
        self.no_frequency += st.no_frequency;
        self.errors += st.errors;
        self.operations += st.operations;
        self.latencies_ns.extend(st.latencies_ns);
        if self.first_error.is_none() {
            self.first_error = st.first_error;
        }
        if self.persistent.is_none() {
            self.persistent = st.persistent;
        }
        for (a, b) in self.per_shard.iter_mut().zip(st.per_shard) {
            *a += b;
        }
    }

    /// The sampled latency at quantile `p` (0.0..=1.0) in microseconds, 0 when nothing was
    /// timed. `latencies_ns` must be sorted.
    fn latency_us(&self, p: f64) -> f64 {
        let v = &self.latencies_ns;
        if v.is_empty() {
            return 0.0;
        }
        let i = ((v.len() as f64 - 1.0) * p).round() as usize;
        v[i.min(v.len() - 1)] as f64 / 1000.0
    }

    /// The `load --json` summary: the figures of a run of `elapsed` seconds over `shards`
    /// shards that every `load` shares, with the fields of `extra` (an object: the store's
    /// settings, what only a local or only a remote run knows) added. `latencies_ns` must be
    /// sorted.
    fn summary_json(&self, args: &LoadArgs, elapsed: f64, shards: usize, extra: Value) -> Value {
        let pairs = self.allocations.min(self.deallocations);
        let mut summary = json!({
            "clients": args.clients,
            "seconds": elapsed,
            "hold": args.hold,
            "shards": shards,
            "operations": self.operations,
            "ops_per_sec": self.operations as f64 / elapsed,
            "allocations": self.allocations,
            "deallocations": self.deallocations,
            "pairs_per_sec": pairs as f64 / elapsed,
            "p50_us": self.latency_us(0.50),
            "p99_us": self.latency_us(0.99),
            "max_us": self.latency_us(1.0),
            "latency_sample_every": LATENCY_SAMPLE,
            "no_frequency": self.no_frequency,
            "errors": self.errors,
            "per_shard_allocations": self.per_shard,
        });
        if let (Some(map), Value::Object(extra)) = (summary.as_object_mut(), extra) {
            map.extend(extra);
        }
        summary
    }

    /// Prints the lines every `load` summary shares, local or through a node: operations and
    /// rates over `elapsed` seconds, latencies, errors, why the run stopped early (if it did),
    /// allocations per shard. `latencies_ns` must be sorted.
    fn print_summary(&self, elapsed: f64) -> Result<()> {
        let operations = self.operations;
        let pairs = self.allocations.min(self.deallocations);
        out!(
            "  {} operations ({:.0}/s), {} allocate+deallocate pairs/s",
            operations,
            operations as f64 / elapsed,
            (pairs as f64 / elapsed).round()
        );
        out!(
            "  latency p50 {:.1} us, p99 {:.1} us, max {:.1} us (every {}th operation timed)",
            self.latency_us(0.5),
            self.latency_us(0.99),
            self.latency_us(1.0),
            LATENCY_SAMPLE
        );
        out!(
            "  no frequency: {}, other errors: {}{}",
            self.no_frequency,
            self.errors,
            self.first_error
                .as_ref()
                .map(|e| format!(" (first: {e})"))
                .unwrap_or_default()
        );
        if let Some(e) = &self.persistent {
            out!("  stopped early after {PERSISTENT_ERRORS} errors in a row: {e}");
        }
        out!("  allocations per shard: {:?}", self.per_shard);
        Ok(())
    }

    /// Ends one operation: its latency if it was timed (`started`), and the shared count for
    /// the progress bar every [`OPS_PUBLISH`] operations.
    fn finish_op(&mut self, started: Option<Instant>, ops: &AtomicU64) {
        if let Some(t) = started {
            self.latencies_ns
                .push(u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX));
        }
        if self.operations.is_multiple_of(OPS_PUBLISH) {
            ops.fetch_add(OPS_PUBLISH, Ordering::Relaxed);
        }
    }

    /// Counts an error; true once the errors in a row make it persistent.
    fn failed(&mut self, msg: String) -> bool {
        self.errors += 1;
        self.errors_in_a_row += 1;
        if self.errors_in_a_row >= PERSISTENT_ERRORS && self.persistent.is_none() {
            self.persistent = Some(msg.clone());
        }
        self.first_error.get_or_insert(msg);
        self.persistent.is_some()
    }
}

/// The main thread of a `load` (local or through a node), its clients waiting at `barrier`:
/// releases them, runs the clock ([`run_clock`]) and joins them; their totals (latencies
/// sorted) and the seconds they ran.
fn run_clients(
    barrier: &Barrier,
    duration: Duration,
    stop: &AtomicBool,
    ops: &AtomicU64,
    handles: Vec<std::thread::JoinHandle<Result<ClientStats>>>,
    shards: usize,
) -> Result<(ClientStats, f64)> {
    barrier.wait();
    let started = Instant::now();
    run_clock(started, duration, stop, ops);
    let mut total = ClientStats::join(handles, shards)?;
    let elapsed = started.elapsed().as_secs_f64();
    total.latencies_ns.sort_unstable();
    Ok((total, elapsed))
}

/// The main thread of a `load` (local or through a node) from `started`: paints the progress bar
/// (on a terminal) until `duration` has passed or a client set `stop` (a persistent error), then
/// sets `stop` so every client drains and ends.
fn run_clock(started: Instant, duration: Duration, stop: &AtomicBool, ops: &AtomicU64) {
    let bar = indicatif::ProgressBar::new(duration.as_millis() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {elapsed_precise} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    while started.elapsed() < duration && !stop.load(Ordering::Relaxed) {
        std::thread::sleep(
            Duration::from_millis(100).min(duration.saturating_sub(started.elapsed())),
        );
        let elapsed = started.elapsed();
        bar.set_position(elapsed.as_millis() as u64);
        bar.set_message(format!(
            "{} ops, {:.0} ops/s",
            ops.load(Ordering::Relaxed),
            ops.load(Ordering::Relaxed) as f64 / elapsed.as_secs_f64().max(1e-9)
        ));
    }
    stop.store(true, Ordering::Relaxed);
    bar.finish_and_clear();
}

fn load(dir: &Path, args: LoadArgs) -> Result<ExitCode> {
    args.check()?;
    let history = args.open_history()?;
    let open_started = Instant::now();
    let alloc = open(dir)?;
    let open_time = open_started.elapsed();
    let recovered: u64 = alloc.recovery().iter().map(|(n, _)| n).sum();
    let shards = alloc.shard_count();
    let duration = Duration::try_from_secs_f64(args.seconds)
        .map_err(|_| anyhow::anyhow!("--seconds {} is too long", args.seconds))?;
    let ops = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let barrier = Arc::new(Barrier::new(args.clients + 1));

    let handles: Vec<_> = (0..args.clients)
        .map(|i| {
            let alloc = alloc.clone();
            let (ops, stop, barrier, history) =
                (ops.clone(), stop.clone(), barrier.clone(), history.clone());
            let hold = args.hold;
            std::thread::Builder::new()
                .name(format!("load-c{i}"))
                .spawn(move || -> Result<ClientStats> {
                    let name = format!("c{i}");
                    let mut st = ClientStats {
                        per_shard: vec![0; alloc.shard_count()],
                        ..Default::default()
                    };
                    // Adopt what this client already holds from an earlier run.
                    let mut held: std::collections::VecDeque<u64> = alloc.held_by(&name)?.into();
                    barrier.wait();
                    while !stop.load(Ordering::Relaxed) {
                        st.operations += 1;
                        let t = st
                            .operations
                            .is_multiple_of(LATENCY_SAMPLE)
                            .then(Instant::now);
                        if held.len() < hold {
                            history_line(&history, &name, "allocate", None, "invoke", None)?;
                            match alloc.allocate(&name) {
                                Ok(f) => {
                                    history_line(&history, &name, "allocate", Some(f), "ok", None)?;
                                    st.allocations += 1;
                                    st.errors_in_a_row = 0;
                                    if let Some(s) = alloc.config().layout.owner_of(f) {
                                        st.per_shard[s] += 1;
                                    }
                                    held.push_back(f);
                                }
                                Err(e) => {
                                    let msg = e.to_string();
                                    history_line(
                                        &history,
                                        &name,
                                        "allocate",
                                        None,
                                        "fail",
                                        Some(&msg),
                                    )?;
                                    if matches!(e, FreqError::NoFrequency { .. }) {
                                        st.no_frequency += 1;
                                        if held.is_empty() {
                                            // Everything is held by others: let them run.
                                            std::thread::yield_now();
                                        } else {
                                            // Give one back so the storm keeps moving.
                                            hold_down(&alloc, &name, &mut held, &history, &mut st)?;
                                        }
                                    } else if st.failed(msg) {
                                        stop.store(true, Ordering::Relaxed);
                                    }
                                }
                            }
                        } else {
                            hold_down(&alloc, &name, &mut held, &history, &mut st)?;
                        }
                        if st.persistent.is_some() {
                            stop.store(true, Ordering::Relaxed);
                        }
                        st.finish_op(t, &ops);
                    }
                    Ok(st)
                })
                .context("spawning a client thread")
        })
        .collect::<Result<_>>()?;

    let (total, elapsed) = run_clients(&barrier, duration, &stop, &ops, handles, shards)?;
    alloc.stop();

    let config = alloc.config();
    let summary = total.summary_json(
        &args,
        elapsed,
        shards,
        json!({
            "pool_size": config.layout.pool_size(),
            "strategy": config.strategy.name(),
            "durability": config.durability.to_string(),
            "stopped_on_error": total.persistent,
            "recovered_at_open": recovered,
            "open_ms": open_time.as_secs_f64() * 1000.0,
        }),
    );
    out!(
        "{} clients x {:.1} s on {} shard(s) ({} frequencies, {}, {}):",
        args.clients,
        elapsed,
        shards,
        config.layout.pool_size(),
        config.strategy,
        config.durability
    );
    total.print_summary(elapsed)?;
    out!(
        "  recovered at open: {recovered} allocation(s) in {:.1} ms",
        open_time.as_secs_f64() * 1000.0
    );
    if args.json {
        out!("{summary}");
    }
    Ok(if total.errors == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Deallocates the oldest frequency the client holds.
fn hold_down(
    alloc: &Allocator,
    name: &str,
    held: &mut std::collections::VecDeque<u64>,
    history: &Option<File>,
    st: &mut ClientStats,
) -> Result<()> {
    let Some(f) = held.pop_front() else {
        return Ok(());
    };
    history_line(history, name, "deallocate", Some(f), "invoke", None)?;
    match alloc.deallocate(f, name) {
        Ok(()) => {
            history_line(history, name, "deallocate", Some(f), "ok", None)?;
            st.deallocations += 1;
            st.errors_in_a_row = 0;
        }
        Err(e) => {
            let msg = e.to_string();
            history_line(history, name, "deallocate", Some(f), "fail", Some(&msg))?;
            st.failed(msg);
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- bench

#[derive(Subcommand)]
enum BenchCommand {
    /// Insert, lookup and delete of keys 0..N (value = key), in key order, for every ETS table
    /// type on 1 thread (the owner's table) and 2 threads (a public table, half the keys each),
    /// and for the DETS analogue (one sync at the end of each write run), then durable single
    /// writes (insert + sync each). One warm-up run per configuration; wall-clock timed.
    /// The workload names match benches/beam/freqbench.erl.
    Tables(BenchTablesArgs),
}

#[derive(Args)]
struct BenchTablesArgs {
    /// One JSON object per line instead of a table.
    #[arg(long)]
    json: bool,
    /// Keys per ETS run.
    #[arg(long, default_value_t = 1_000_000)]
    keys: u64,
    /// Threads of the ETS runs, 1 or 2 (default: both).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=2))]
    threads: Option<u64>,
    /// Keys per DETS run.
    #[arg(long, default_value_t = 100_000)]
    dets_keys: u64,
    /// Durable single writes (insert + sync each) on a DETS set.
    #[arg(long, default_value_t = 2_000)]
    sync_writes: u64,
    /// Run only the ETS or only the DETS workloads.
    #[arg(long, value_parser = ["ets", "dets"])]
    only: Option<String>,
}

/// A directory under the system's temporary directory, removed on drop.
struct BenchDir(PathBuf);

impl BenchDir {
    fn new() -> Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        let path =
            std::env::temp_dir().join(format!("freqalloc-bench-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(BenchDir(path))
    }
}

impl Drop for BenchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Prints one result as it comes: a JSON line, or a table row.
fn bench_row(json: bool, workload: &str, threads: u64, keys: u64, seconds: f64) -> Result<()> {
    let rate = keys as f64 / seconds.max(1e-12);
    if json {
        out!(
            "{}",
            json!({
                "side": "rust",
                "workload": workload,
                "threads": threads,
                "keys": keys,
                "seconds": seconds,
                "ops_per_sec": rate,
            })
        );
    } else {
        out!("{workload:<32} {threads:>7} {keys:>9} {rate:>14.0}");
    }
    Ok(())
}

/// Runs `work(handle, first_key, end_key)` on one thread per handle over equal slices of
/// `0..keys`, released together; returns the wall time from the first worker's start to the
/// last one's end, and the sum of what the workers returned.
///
/// Each worker reads the clock itself: on 2 cores the releasing thread may not run again
/// until a worker is done, so its own clock would start late.
fn bench_timed<T, F>(handles: &mut [T], keys: u64, work: F) -> Result<(f64, u64)>
where
    T: Send,
    F: Fn(&mut T, u64, u64) -> Result<u64> + Sync,
{
    let per = keys / handles.len() as u64;
    let barrier = Barrier::new(handles.len());
    std::thread::scope(|scope| {
        let joins: Vec<_> = handles
            .iter_mut()
            .zip(0u64..)
            .map(|(h, i)| {
                let (barrier, work) = (&barrier, &work);
                scope.spawn(move || {
                    barrier.wait();
                    let started = Instant::now();
                    let r = work(h, i * per, (i + 1) * per);
                    (started, Instant::now(), r)
                })
            })
            .collect();
        let mut sum = 0;
        let mut span: Option<(Instant, Instant)> = None;
        for j in joins {
            let (a, b, r) = j
                .join()
                .map_err(|_| anyhow::anyhow!("a benchmark thread panicked"))?;
            sum += r?;
            span = Some(match span {
                Some((s, e)) => (s.min(a), e.max(b)),
                None => (a, b),
            });
        }
        let (s, e) = span.ok_or_else(|| anyhow::anyhow!("no benchmark thread"))?;
        Ok((e.duration_since(s).as_secs_f64(), sum))
    })
}

/// Insert, lookup, delete of `0..keys` over `handles` (all handles of one table); `finish`
/// ends each write run (a disk table syncs). Returns the seconds of each operation.
fn bench_cycle<T, S>(handles: &mut [T], keys: u64, finish: S) -> Result<[(&'static str, f64); 3]>
where
    T: freqalloc::WriteTable<u64, u64> + Send,
    S: Fn(&mut T) -> Result<()> + Sync,
{
    let expected = keys / handles.len() as u64 * handles.len() as u64;
    let (insert, _) = bench_timed(handles, keys, |t, from, to| {
        for k in from..to {
            freqalloc::WriteTable::insert(t, k, k)?;
        }
        finish(t)?;
        Ok(0)
    })?;
    let (lookup, found) = bench_timed(handles, keys, |t, from, to| {
        let mut found = 0;
        for k in from..to {
            // `lookup_with` lends the objects in place (no `Vec` per hit); count the objects
            // that hold the value written, as the BEAM side counts `length(ets:lookup(T, K))`.
            found += freqalloc::ReadTable::lookup_with(t, &k, |vs| {
                vs.iter().filter(|&&v| v == k).count() as u64
            })?;
        }
        Ok(found)
    })?;
    if found != expected {
        bail!("lookup found {found} of {expected} keys");
    }
    let (delete, _) = bench_timed(handles, keys, |t, from, to| {
        for k in from..to {
            freqalloc::WriteTable::delete(t, &k)?;
        }
        finish(t)?;
        Ok(0)
    })?;
    Ok([("insert", insert), ("lookup", lookup), ("delete", delete)])
}

fn bench_ets(
    tt: freqalloc::TableType,
    threads: u64,
    keys: u64,
) -> Result<[(&'static str, f64); 3]> {
    use freqalloc::ets::{PublicTable, Table, TableOptions};
    // In memory: nothing to finish.
    if threads == 1 {
        bench_cycle(&mut [Table::<u64, u64>::new(tt)], keys, |_| Ok(()))
    } else {
        // As the BEAM side: `[public, {write_concurrency, true}, {read_concurrency, true}]`
        // (our hash tables always have dashmap's per-shard locks and ignore `read_concurrency`;
        // `ordered_set` has one lock, with per-thread reader slots under `read_concurrency`).
        let t =
            PublicTable::<u64, u64>::with_options(tt, TableOptions::new().read_concurrency(true));
        let mut handles: Vec<_> = (0..threads).map(|_| t.clone()).collect();
        bench_cycle(&mut handles, keys, |_| Ok(()))
    }
}

fn bench_dets(dir: &Path, tt: freqalloc::TableType, keys: u64) -> Result<[(&'static str, f64); 3]> {
    use freqalloc::dets::{DiskTable, FlushPolicy, OpenOptions as DetsOptions};
    let path = dir.join(tt.erlang_name());
    let _ = std::fs::remove_dir_all(&path);
    let table: DiskTable<u64, u64> = DiskTable::open(
        &path,
        DetsOptions::new(tt).flush_policy(FlushPolicy::Manual),
    )?;
    let mut handles = [table];
    let result = bench_cycle(&mut handles, keys, |t: &mut DiskTable<u64, u64>| {
        Ok(t.sync()?)
    })?;
    let [table] = handles;
    table.close()?;
    std::fs::remove_dir_all(&path).with_context(|| format!("removing {}", path.display()))?;
    Ok(result)
}

/// The floor under every disk table figure: sled itself, keys and values as 8 big-endian bytes,
/// no codec, no table type, one flush at the end; the same insert, lookup, delete cycle.
fn bench_sled_raw(dir: &Path, keys: u64) -> Result<[(&'static str, f64); 3]> {
    let path = dir.join("sled-raw");
    let _ = std::fs::remove_dir_all(&path);
    let db = sled::open(&path).with_context(|| format!("opening {}", path.display()))?;
    // Seconds for one pass over the keys, with a flush at the end for the writes.
    let time = |flush: bool, f: &mut dyn FnMut(u64) -> Result<()>| -> Result<f64> {
        let started = Instant::now();
        for k in 0..keys {
            f(k)?;
        }
        if flush {
            db.flush()?;
        }
        Ok(started.elapsed().as_secs_f64())
    };
    let insert = time(true, &mut |k| {
        db.insert(k.to_be_bytes(), &k.to_be_bytes())?;
        Ok(())
    })?;
    let mut found = 0u64;
    let lookup = time(false, &mut |k| {
        found += u64::from(db.get(k.to_be_bytes())?.is_some());
        Ok(())
    })?;
    if found != keys {
        bail!("raw sled lookup found {found} of {keys} keys");
    }
    let delete = time(true, &mut |k| {
        db.remove(k.to_be_bytes())?;
        Ok(())
    })?;
    drop(db);
    std::fs::remove_dir_all(&path).with_context(|| format!("removing {}", path.display()))?;
    Ok([("insert", insert), ("lookup", lookup), ("delete", delete)])
}

fn bench_dets_sync_each(dir: &Path, writes: u64) -> Result<f64> {
    use freqalloc::dets::{DiskTable, FlushPolicy, OpenOptions as DetsOptions};
    let path = dir.join("sync-each");
    let opts = DetsOptions::new(freqalloc::TableType::Set).flush_policy(FlushPolicy::EveryWrite);
    let table: DiskTable<u64, u64> = DiskTable::open(&path, opts)?;
    let mut handles = [table];
    let (seconds, _) = bench_timed(&mut handles, writes, |t, from, to| {
        for k in from..to {
            freqalloc::WriteTable::insert(t, k, k)?;
        }
        Ok(0)
    })?;
    let [table] = handles;
    table.close()?;
    std::fs::remove_dir_all(&path).with_context(|| format!("removing {}", path.display()))?;
    Ok(seconds)
}

fn bench_tables(args: BenchTablesArgs) -> Result<ExitCode> {
    let threads: Vec<u64> = match args.threads {
        Some(t) => vec![t],
        None => vec![1, 2],
    };
    if args.keys < 2 || args.dets_keys == 0 || args.sync_writes == 0 {
        bail!("--keys must be at least 2, --dets-keys and --sync-writes at least 1");
    }
    let only = args.only.as_deref();
    if !args.json {
        out!(
            "{:<32} {:>7} {:>9} {:>14}",
            "workload",
            "threads",
            "keys",
            "ops/s"
        );
    }
    if only != Some("dets") {
        for tt in freqalloc::TableType::ALL {
            for &n in &threads {
                let keys = args.keys / n * n;
                bench_ets(tt, n, keys)?; // warm-up
                for (op, seconds) in bench_ets(tt, n, keys)? {
                    bench_row(args.json, &format!("ets/{tt}/{op}"), n, keys, seconds)?;
                }
            }
        }
    }
    if only != Some("ets") {
        use freqalloc::TableType;
        let dir = BenchDir::new()?;
        for tt in [TableType::Set, TableType::Bag, TableType::DuplicateBag] {
            bench_dets(&dir.0, tt, args.dets_keys)?; // warm-up
            for (op, seconds) in bench_dets(&dir.0, tt, args.dets_keys)? {
                bench_row(
                    args.json,
                    &format!("dets/{tt}/{op}"),
                    1,
                    args.dets_keys,
                    seconds,
                )?;
            }
        }
        bench_sled_raw(&dir.0, args.dets_keys)?; // warm-up
        for (op, seconds) in bench_sled_raw(&dir.0, args.dets_keys)? {
            bench_row(
                args.json,
                &format!("dets/sled_raw/{op}"),
                1,
                args.dets_keys,
                seconds,
            )?;
        }
        let seconds = bench_dets_sync_each(&dir.0, args.sync_writes)?;
        bench_row(
            args.json,
            "dets/set/insert_sync_each",
            1,
            args.sync_writes,
            seconds,
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bug (issue 12): names with control characters were printed raw. A name from a store
    /// written before the rule, or from a peer, is printed escaped.
    #[test]
    fn names_are_escaped_on_output() {
        assert_eq!(escaped("radio-7"), "radio-7");
        assert_eq!(escaped("a\nb\u{1b}[2J\\"), "a\\nb\\u{1b}[2J\\\\");
        assert!(!escaped("\u{7}\r\t").chars().any(char::is_control));
    }

    #[test]
    fn an_error_line_says_each_cause_once() {
        let io = std::io::Error::from_raw_os_error(28);
        let e = anyhow::Error::new(io).context("disk full while writing s/meta.json");
        assert_eq!(error_line(&e), "disk full while writing s/meta.json");
        let e = anyhow::anyhow!("table x is locked").context("opening: table x is locked");
        assert_eq!(error_line(&e), "opening: table x is locked");
    }
}
