//! `freqalloc node`: serve a store to Erlang and Rust clients over distribution until
//! SIGINT/SIGTERM (or a permitted `{request, Pid, stop}`), then stop in order.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::mpsc;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;

use freqalloc::dist::{
    resolve_cookie, ClusterMember, FrequencyService, Node, NodeConfig, ServiceOptions,
};
use freqalloc::freq::{Allocator, FreqError, Options};

/// The file in a store directory that names the node serving it.
pub const NODE_FILE: &str = "node";

#[derive(Args)]
pub struct NodeArgs {
    /// The node's name, name@host (e.g. freq@localhost).
    #[arg(long)]
    name: String,
    /// Refuse `{request, Pid, stop}` from clients.
    #[arg(long)]
    no_remote_stop: bool,
    /// Keep what a process held when it exits (frequency2.erl's semantics); default: release.
    #[arg(long)]
    keep_on_exit: bool,
    /// Address to listen on (the port is chosen by the system and published via epmd).
    #[arg(long, default_value = "127.0.0.1")]
    listen: String,
    /// Worker threads answering requests; 0: none in `none`/`interval` durability (answered on
    /// the connection's reader thread, the shortest path), 8 in `sync`.
    #[arg(long, default_value_t = 0)]
    workers: usize,
    /// Erlang's net_ticktime in seconds: a silent peer is dropped after this long.
    #[arg(long, default_value_t = 60)]
    net_ticktime: u64,
    /// Microseconds a connection's reader polls for the next request before it parks: a lone
    /// caller's reply then skips the wake-up from idle (about twice its rate), at the price of
    /// up to a core while callers are active; 0 turns it off (less CPU under many callers).
    /// Default: 100, and 0 for a node of a cluster (several nodes spinning on one machine's
    /// cores starve each other: 3 nodes on 2 cores did 2.4 K pairs/s with it, 12 K without).
    #[arg(long, value_parser = clap::value_parser!(u64).range(0..=10_000))]
    reader_spin_us: Option<u64>,
}

fn node_file(dir: &Path) -> PathBuf {
    dir.join(NODE_FILE)
}

/// The node named in the store's `node` file, if there is one (it may be stale: only a locked
/// store proves the node runs).
pub fn serving_node(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(node_file(dir)).ok()?;
    let mut lines = text.lines();
    let name = lines.next()?.trim().to_string();
    // Where /proc tells, a node file whose process is gone is stale (the lock is someone else's).
    if let Some(pid) = lines.next().and_then(|l| l.trim().parse::<u32>().ok()) {
        if Path::new("/proc/self").exists() && !Path::new(&format!("/proc/{pid}")).exists() {
            return None;
        }
    }
    (!name.is_empty()).then_some(name)
}

pub fn run(dir: &Path, cookie: Option<&str>, args: NodeArgs) -> Result<ExitCode> {
    let cookie = resolve_cookie(cookie)?;
    freqalloc::dist::split_name(&args.name)?;
    let clustered = freqalloc::freq::read_config(dir)?.is_some_and(|c| c.cluster.is_some());
    if clustered {
        return run_member(dir, &cookie, args);
    }
    let alloc = Arc::new(super::open(dir)?);
    // We hold the store's lock now: any `node` file left is stale (a SIGKILLed node).
    std::fs::write(
        node_file(dir),
        format!("{}\n{}\n", args.name, std::process::id()),
    )
    .with_context(|| format!("writing {}", node_file(dir).display()))?;
    let node = match Node::start(node_config(&args, &cookie, false)) {
        Ok(n) => n,
        Err(e) => {
            let _ = std::fs::remove_file(node_file(dir));
            alloc.stop();
            return Err(e.into());
        }
    };
    let (stop_tx, stop_rx) = mpsc::channel::<&'static str>();
    let service = FrequencyService::start(
        &node,
        alloc.clone(),
        service_options(&args, args.workers, &stop_tx),
    )?;
    let signals = watch_signals(stop_tx)?;

    let status = alloc.status();
    out!(
        "freqalloc node {} serving {} (pool {}, {} shards)",
        args.name,
        dir.display(),
        status.pool_size,
        status.shards.len()
    );
    let _ = std::io::stdout().flush();

    let serving = Serving {
        node,
        service,
        member: None,
        alloc,
    };
    serve_until_stopped(&args.name, dir, serving, stop_rx, signals)
}

/// What a running node is made of, stopped in this order (see [`serve_until_stopped`]).
struct Serving {
    node: Node,
    service: FrequencyService,
    /// On a cluster store: the node's part of the cluster.
    member: Option<ClusterMember>,
    alloc: Arc<Allocator>,
}

/// Waits for a stop (a signal, or a client's permitted stop request), then stops in order: no
/// new requests (the `frequency` name gone, queued ones answered), the cluster member's loads
/// thread, control node and shard service, the connections and the epmd name, the shards
/// (pending batches flushed, tables closed), then the node file.
fn serve_until_stopped(
    name: &str,
    dir: &Path,
    serving: Serving,
    stop_rx: mpsc::Receiver<&'static str>,
    (signal_handle, signal_thread): SignalWatch,
) -> Result<ExitCode> {
    let Serving {
        mut node,
        mut service,
        member,
        alloc,
    } = serving;
    let why = stop_rx.recv().unwrap_or("the service ending");
    say!("freqalloc node {name}: stopping on {why}");
    service.stop(&node);
    drop(service);
    if let Some(mut member) = member {
        member.stop();
    }
    node.stop();
    alloc.stop();
    drop(alloc);
    let _ = std::fs::remove_file(node_file(dir));
    signal_handle.close();
    let _ = signal_thread.join();
    say!("freqalloc node {name}: stopped");
    Ok(ExitCode::SUCCESS)
}

fn node_config(args: &NodeArgs, cookie: &str, clustered: bool) -> NodeConfig {
    let mut config = NodeConfig::new(&args.name, cookie, true);
    config.listen_addr = format!("{}:0", args.listen);
    config.tick_time = std::time::Duration::from_secs(args.net_ticktime.max(1));
    let spin = args
        .reader_spin_us
        .unwrap_or(if clustered { 0 } else { 100 });
    config.reader_spin = std::time::Duration::from_micros(spin);
    config
}

fn service_options(
    args: &NodeArgs,
    workers: usize,
    stop_tx: &mpsc::Sender<&'static str>,
) -> ServiceOptions {
    let remote_stop = stop_tx.clone();
    ServiceOptions {
        keep_on_exit: args.keep_on_exit,
        no_remote_stop: args.no_remote_stop,
        workers,
        on_stop: Some(Arc::new(move || {
            let _ = remote_stop.send("a client's stop request");
        })),
        status_note: None,
    }
}

type SignalWatch = (signal_hook::iterator::Handle, std::thread::JoinHandle<()>);

/// SIGINT and SIGTERM send "a signal" on `stop_tx`.
fn watch_signals(stop_tx: mpsc::Sender<&'static str>) -> Result<SignalWatch> {
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])
    .context("installing signal handlers")?;
    let signal_handle = signals.handle();
    let signal_thread = std::thread::Builder::new()
        .name("freq-signals".into())
        .spawn(move || {
            if signals.forever().next().is_some() {
                let _ = stop_tx.send("a signal");
            }
        })
        .context("spawning the signal thread")?;
    Ok((signal_handle, signal_thread))
}

/// `freqalloc node` on a cluster store: the node serves its shards, and its `frequency` service
/// is a front end over the whole cluster.
fn run_member(dir: &Path, cookie: &str, args: NodeArgs) -> Result<ExitCode> {
    let mut node = Node::start(node_config(&args, cookie, true))?;
    let options = Options {
        release_on_drop: false,
        ..Options::default()
    };
    let member = match ClusterMember::start(&node, dir, options, std::time::Duration::from_secs(2))
    {
        Ok(m) => m,
        Err(e) => {
            node.stop();
            return Err(e.into());
        }
    };
    let alloc = member.allocator();
    std::fs::write(
        node_file(dir),
        format!("{}\n{}\n", args.name, std::process::id()),
    )
    .with_context(|| format!("writing {}", node_file(dir).display()))?;
    let (stop_tx, stop_rx) = mpsc::channel::<&'static str>();
    // Calls to other nodes' shards wait for the network: never on a connection's reader.
    let workers = if args.workers == 0 { 8 } else { args.workers };
    let mut options = service_options(&args, workers, &stop_tx);
    options.status_note = Some(member.control_summary_fn());
    let service = FrequencyService::start(&node, alloc.clone(), options)?;
    let signals = watch_signals(stop_tx)?;
    let layout = member.layout().clone();
    let mine: Vec<String> = layout
        .shards_of(&args.name)
        .iter()
        .map(|s| s.to_string())
        .collect();
    let backups: Vec<String> = (0..layout.shard_count())
        .filter(|&s| layout.backup_of(s) == Some(args.name.as_str()))
        .map(|s| s.to_string())
        .collect();
    let backups = if backups.is_empty() {
        String::new()
    } else {
        format!(", backups of {}", backups.join(","))
    };
    out!(
        "freqalloc node {} serving {} (pool {}, shards {} of {}{backups}, cluster of {} nodes, fingerprint {})",
        args.name,
        dir.display(),
        alloc.pool_size(),
        mine.join(","),
        alloc.shard_count(),
        layout.nodes().len(),
        member.fingerprint()
    );
    let _ = std::io::stdout().flush();
    let serving = Serving {
        node,
        service,
        member: Some(member),
        alloc,
    };
    serve_until_stopped(&args.name, dir, serving, stop_rx, signals)
}

/// Whether an open failed because another process holds the store.
pub fn is_locked(e: &FreqError) -> bool {
    matches!(
        e,
        FreqError::Disk(freqalloc::dets::DetsError::Locked { .. })
    ) || e.to_string().contains("is locked")
}

/// Opens the store for a short command: when it is busy, names the node serving it, or waits
/// (bounded by `FREQALLOC_WAIT_MS`, default 10 000 ms) for the other process to finish.
pub fn open_waiting(dir: &Path) -> Result<Allocator> {
    let wait_ms = std::env::var("FREQALLOC_WAIT_MS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000u64);
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(wait_ms);
    let mut pause = std::time::Duration::from_millis(5);
    loop {
        let options = Options {
            release_on_drop: false,
            ..Options::default()
        };
        match Allocator::open(dir, options) {
            Ok(a) => return Ok(a),
            Err(e) if is_locked(&e) => {
                if let Some(n) = serving_node(dir) {
                    anyhow::bail!("the store {} is served by node {n}: use --node {n} (or FREQALLOC_NODE={n})", dir.display());
                }
                if std::time::Instant::now() >= deadline {
                    return Err(anyhow::Error::new(e).context(format!(
                        "the store stayed busy for {wait_ms} ms (FREQALLOC_WAIT_MS)"
                    )));
                }
                // Another short command holds it: back off, bounded by the deadline.
                std::thread::sleep(pause);
                pause = (pause * 2).min(std::time::Duration::from_millis(100));
            }
            Err(e) => return Err(e.into()),
        }
    }
}
