//! The front end: [`Allocator`], with the same API as the course's single frequency server,
//! over shards that run in parallel under a supervisor.

use std::cell::Cell;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::clock::{Clock, SystemClock};
use super::error::{FreqError, StoreError};
use super::layout::{coalesce, FreqRange, Layout};
use super::pool::Allocation;
use super::replica::{
    load_replica, InProcessLink, PairShared, Replica, ReplicaArgs, Role, DEFAULT_LOG_ENTRIES,
};
use super::router::{choose, fallback_order, Pick, Strategy};
use super::shard::{load, Fault, Shard, ShardArgs, ShardCall, ShardReply, ShardShared};
use super::store::{read_config, replica_dir, shard_dir, write_config, Durability, StoreConfig};
use crate::otp::{self, ChildSpec, OtpError, Server, Supervisor, SupervisorSpec};

/// Run-time options of an [`Allocator`] (what is not stored with the pool).
#[derive(Clone)]
pub struct Options {
    /// Whether dropping a [`Client`] releases what it holds (Erlang's links). Default: `true`.
    pub release_on_drop: bool,
    /// The clock for allocation times and leases. Default: the system clock.
    pub clock: Arc<dyn Clock>,
    /// How long a caller waits for a shard. Default: 5 s (OTP's call timeout).
    pub call_timeout: Duration,
    /// Restart intensity of the shards' supervisor: at most this many restarts...
    pub max_restarts: u32,
    /// ...within this period, or the supervisor gives up. Default: 10 in 10 s.
    pub restart_period: Duration,
    /// With `replicas: 2`: the base directories of replica 0 and replica 1 (for instance on two
    /// disks); replica `r` of shard `N` lives in `dirs[r]/shard-N`. Default (`None`): both in
    /// the store, as `shard-N/replica-0` and `shard-N/replica-1`.
    pub replica_dirs: Option<[PathBuf; 2]>,
    /// With `replicas: 2`: how many recent log entries a replica keeps to catch its partner up
    /// incrementally; a partner further behind gets a full state transfer. Default: 10,000.
    pub replica_log_entries: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            release_on_drop: true,
            clock: Arc::new(SystemClock),
            call_timeout: otp::DEFAULT_CALL_TIMEOUT,
            max_restarts: 10,
            restart_period: Duration::from_secs(10),
            replica_dirs: None,
            replica_log_entries: DEFAULT_LOG_ENTRIES,
        }
    }
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("release_on_drop", &self.release_on_drop)
            .field("call_timeout", &self.call_timeout)
            .field("max_restarts", &self.max_restarts)
            .field("restart_period", &self.restart_period)
            .field("replica_dirs", &self.replica_dirs)
            .field("replica_log_entries", &self.replica_log_entries)
            .finish_non_exhaustive()
    }
}

/// What [`Allocator::init`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InitOutcome {
    /// A new store was created.
    Created,
    /// The store existed with this pool; strategy, durability and limit were updated if given.
    Existing,
    /// The store existed and its pool grew by this many frequencies.
    Grown(u64),
}

/// One shard's line in a [`Status`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardStatus {
    /// The shard's index.
    pub shard: usize,
    /// The ranges it owns.
    pub ranges: Vec<FreqRange>,
    /// Free frequencies.
    pub free: u64,
    /// Allocated frequencies.
    pub allocated: u64,
    /// Allocations loaded from disk when the running instance started.
    pub recovered: u64,
    /// How many times it has been restarted.
    pub restarts: u64,
    /// Whether an instance is running (with replication: whether a primary serves).
    pub alive: bool,
    /// With replication, each replica's state (empty without).
    pub replicas: Vec<ReplicaStatus>,
    /// With replication, whether the backup has everything the primary has.
    pub in_sync: bool,
}

/// One replica's line in a [`ShardStatus`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaStatus {
    /// 0 or 1.
    pub replica: usize,
    /// Primary, backup or down.
    pub role: Role,
    /// The sequence number of the last change it applied.
    pub applied: u64,
    /// How many changes it is behind the other replica.
    pub lag: u64,
    /// How many times it has been restarted.
    pub restarts: u64,
}

/// A view of the allocator, read from the shards' tables without messaging them (a dirty read,
/// like `ets:tab2list/1` on a table others write). At quiescence it is exact. Taken while
/// operations run, counts and tables are read at slightly different moments, so they may
/// disagree by the operations in flight, and in `Sync` it may show changes not yet flushed
/// (their callers have not been answered). For a verified view use [`Allocator::check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// Frequencies in the pool.
    pub pool_size: u64,
    /// The routing strategy.
    pub strategy: Strategy,
    /// The durability.
    pub durability: Durability,
    /// Per shard.
    pub shards: Vec<ShardStatus>,
    /// Free ranges, lowest first.
    pub free: Vec<FreqRange>,
    /// Every allocation, lowest frequency first.
    pub allocations: Vec<(u64, Allocation)>,
}

/// A replicated shard's two servers.
struct Pair {
    servers: [Server<Replica>; 2],
    shared: Arc<PairShared>,
}

/// The shards' servers: one per shard, or a pair per shard.
enum Servers {
    Single(Vec<Server<Shard>>),
    Pairs(Vec<Pair>),
}

impl Servers {
    fn len(&self) -> usize {
        match self {
            Servers::Single(s) => s.len(),
            Servers::Pairs(p) => p.len(),
        }
    }
}

struct Inner {
    dir: Option<PathBuf>,
    config: StoreConfig,
    options: Options,
    shards: Servers,
    shared: Vec<Arc<ShardShared>>,
    supervisor: Mutex<Option<Supervisor>>,
    ticket: AtomicU64,
    clients: Mutex<HashSet<String>>,
    /// Set by [`Allocator::stop`]: calls then fail with `Stopped` at once instead of waiting
    /// for a restart that will never come.
    stopped: AtomicBool,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(sup) = self.supervisor.get_mut().take() {
            sup.stop();
        }
    }
}

/// The sharded frequency allocator. Cheap to clone; every clone is the same allocator. Dropping
/// the last clone (and every [`Client`]) stops the shards, flushing what they hold.
///
/// ```
/// use freqalloc::freq::{Allocator, Layout, Strategy, parse_pool};
///
/// // The course's layout: two shards, 10-15 and 20-25, balanced by "most free".
/// let layout = Layout::one_shard_per_range(&parse_pool("10-15,20-25")?)?;
/// let alloc = Allocator::in_memory(layout, Strategy::MostFree, None)?;
/// let f = alloc.allocate("radio-7")?;
/// assert!(alloc.held_by("radio-7")?.contains(&f));
/// alloc.deallocate(f, "radio-7")?;
/// assert!(alloc.check()?.is_empty());
/// # Ok::<(), freqalloc::freq::FreqError>(())
/// ```
#[derive(Clone)]
pub struct Allocator {
    inner: Arc<Inner>,
}

thread_local! {
    static RNG: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    let mut h = rustc_hash::FxHasher::default();
    std::hash::Hash::hash(&std::thread::current().id(), &mut h);
    std::hash::Hasher::finish(&h) | 1
}

/// A fast per-thread xorshift for power-of-two choices (no lock, no syscall).
fn random() -> u64 {
    RNG.with(|r| {
        let mut x = r.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        r.set(x);
        x
    })
}

impl Allocator {
    /// Creates the store at `dir`, or checks an existing one against `config` (the CLI's
    /// `init`). An existing store with another pool is refused, unless `grow` is set and the new
    /// pool contains the old one; strategy, durability and limit may change freely.
    pub fn init(
        dir: impl AsRef<Path>,
        config: StoreConfig,
        grow: bool,
    ) -> Result<InitOutcome, FreqError> {
        let dir = dir.as_ref();
        config.check_replicas()?;
        let Some(existing) = read_config(dir)? else {
            write_config(dir, &config)?;
            return Ok(InitOutcome::Created);
        };
        // The same frequencies split another way are the same pool (`0-999` over 4 shards is
        // `0-249,250-499,...`): compare the frequencies, not the ranges.
        let same_pool =
            coalesce(existing.layout.all_ranges()) == coalesce(config.layout.all_ranges());
        if existing.replicas != config.replicas {
            // The replicas' tables live elsewhere than a single shard's: no conversion (yet).
            return Err(StoreError::ConfigMismatch {
                path: dir.to_path_buf(),
                existing: format!("{} replica(s)", existing.replicas),
                requested: format!("{} replica(s)", config.replicas),
            }
            .into());
        }
        let outcome = if same_pool {
            if existing.layout.shard_count() != config.layout.shard_count() {
                // Moving allocations between shards is not supported: refuse, naming both.
                return Err(StoreError::ConfigMismatch {
                    path: dir.to_path_buf(),
                    existing: format!(
                        "pool {} over {} shards",
                        existing.layout.pool_string(),
                        existing.layout.shard_count()
                    ),
                    requested: format!(
                        "pool {} over {} shards",
                        config.layout.pool_string(),
                        config.layout.shard_count()
                    ),
                }
                .into());
            }
            InitOutcome::Existing
        } else if grow {
            let grown = existing.layout.grow_to(&config.layout.all_ranges())?;
            InitOutcome::Grown(grown.pool_size() - existing.layout.pool_size())
        } else {
            return Err(StoreError::ConfigMismatch {
                path: dir.to_path_buf(),
                existing: format!("pool {}", existing.layout.pool_string()),
                requested: format!("pool {}", config.layout.pool_string()),
            }
            .into());
        };
        let layout = match outcome {
            InitOutcome::Grown(_) => existing.layout.grow_to(&config.layout.all_ranges())?,
            _ => existing.layout,
        };
        write_config(dir, &StoreConfig { layout, ..config })?;
        Ok(outcome)
    }

    /// Opens the store at `dir` (created by [`Allocator::init`]) and starts its shards, each
    /// rebuilding its tables from disk.
    pub fn open(dir: impl AsRef<Path>, options: Options) -> Result<Self, FreqError> {
        let dir = dir.as_ref();
        let config = read_config(dir)?.ok_or_else(|| StoreError::NoStore(dir.to_path_buf()))?;
        Allocator::start(Some(dir.to_path_buf()), config, options)
    }

    /// An allocator that keeps nothing on disk, with default options.
    pub fn in_memory(
        layout: Layout,
        strategy: Strategy,
        client_limit: Option<usize>,
    ) -> Result<Self, FreqError> {
        Allocator::in_memory_with(layout, strategy, client_limit, Options::default())
    }

    /// An allocator that keeps nothing on disk.
    pub fn in_memory_with(
        layout: Layout,
        strategy: Strategy,
        client_limit: Option<usize>,
        options: Options,
    ) -> Result<Self, FreqError> {
        let config = StoreConfig {
            layout,
            strategy,
            durability: Durability::None,
            client_limit,
            replicas: 1,
        };
        Allocator::start(None, config, options)
    }

    fn start(
        dir: Option<PathBuf>,
        config: StoreConfig,
        options: Options,
    ) -> Result<Self, FreqError> {
        config.check_replicas()?;
        if config.replicas == 2 {
            return Allocator::start_pairs(dir, config, options);
        }
        let n = config.layout.shard_count();
        let mut spec = SupervisorSpec::new(otp::Strategy::OneForOne)
            .name("freq-supervisor")
            .intensity(options.max_restarts, options.restart_period);
        let mut shards = Vec::with_capacity(n);
        let mut shared = Vec::with_capacity(n);
        let mut all_args = Vec::with_capacity(n);
        for i in 0..n {
            let s = ShardShared::new(i);
            all_args.push(ShardArgs {
                ranges: config.layout.ranges(i).to_vec(),
                dir: dir.as_ref().map(|d| shard_dir(d, i)),
                durability: if dir.is_some() {
                    config.durability
                } else {
                    Durability::None
                },
                limit: config.client_limit,
                clock: Arc::clone(&options.clock),
                shared: Arc::clone(&s),
                preloaded: Arc::new(Mutex::new(None)),
            });
            shared.push(s);
        }
        // Open and rebuild every shard at once: each is mostly its own disk and CPU work, and a
        // store of a million allocations must reopen in under two seconds.
        let loaded: Vec<Result<_, FreqError>> = std::thread::scope(|scope| {
            let handles: Vec<_> = all_args.iter().map(|a| scope.spawn(|| load(a))).collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(FreqError::Corrupt("a shard panicked while loading".into()))
                    })
                })
                .collect()
        });
        for (args, loaded) in all_args.iter().zip(loaded) {
            *args.preloaded.lock() = Some(loaded?);
        }
        for (i, args) in all_args.into_iter().enumerate() {
            let (child, server) = ChildSpec::server::<Shard>(
                format!("shard-{i}"),
                format!("freq-shard-{i}"),
                move || args.clone(),
            );
            spec = spec.child(child);
            shards.push(server);
        }
        let supervisor = start_supervisor(spec, &shared)?;
        Ok(Allocator::assemble(
            dir,
            config,
            options,
            Servers::Single(shards),
            shared,
            supervisor,
        ))
    }

    fn assemble(
        dir: Option<PathBuf>,
        config: StoreConfig,
        options: Options,
        shards: Servers,
        shared: Vec<Arc<ShardShared>>,
        supervisor: Supervisor,
    ) -> Self {
        // Round robin continues from the allocations already held, so one-shot processes (the
        // CLI) alternate shards as one long-lived front end would.
        let held: u64 = shared.iter().map(|s| s.load().allocated()).sum();
        Allocator {
            inner: Arc::new(Inner {
                dir,
                config,
                options,
                shards,
                shared,
                supervisor: Mutex::new(Some(supervisor)),
                ticket: AtomicU64::new(held),
                clients: Mutex::new(HashSet::new()),
                stopped: AtomicBool::new(false),
            }),
        }
    }

    /// Starts every shard as a primary/backup pair (`replicas: 2`).
    fn start_pairs(
        dir: Option<PathBuf>,
        config: StoreConfig,
        options: Options,
    ) -> Result<Self, FreqError> {
        let n = config.layout.shard_count();
        let durability = if dir.is_some() {
            config.durability
        } else {
            Durability::None
        };
        let replica_path = |i: usize, r: usize| -> Option<PathBuf> {
            match (&options.replica_dirs, &dir) {
                (Some(bases), _) => Some(shard_dir(&bases[r], i)),
                (None, Some(d)) => Some(replica_dir(d, i, r)),
                (None, None) => None,
            }
        };
        let mut all_args: Vec<[ShardArgs; 2]> = Vec::with_capacity(n);
        for i in 0..n {
            let one = |r: usize| ShardArgs {
                ranges: config.layout.ranges(i).to_vec(),
                dir: replica_path(i, r),
                durability,
                limit: config.client_limit,
                clock: Arc::clone(&options.clock),
                shared: ShardShared::new(i),
                preloaded: Arc::new(Mutex::new(None)),
            };
            all_args.push([one(0), one(1)]);
        }
        // Open every replica at once, as for single shards.
        let loaded: Vec<Result<_, FreqError>> = std::thread::scope(|scope| {
            let handles: Vec<_> = all_args
                .iter()
                .flat_map(|pair| pair.iter())
                .map(|a| scope.spawn(|| load_replica(a)))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(FreqError::Corrupt(
                            "a replica panicked while loading".into(),
                        ))
                    })
                })
                .collect()
        });
        let mut loaded = loaded.into_iter();
        let mut spec = SupervisorSpec::new(otp::Strategy::OneForOne)
            .name("freq-supervisor")
            .intensity(options.max_restarts, options.restart_period);
        let mut pairs = Vec::with_capacity(n);
        let mut shared = Vec::with_capacity(n);
        for (i, args) in all_args.into_iter().enumerate() {
            let (a, b) = match (loaded.next(), loaded.next()) {
                (Some(a), Some(b)) => (a?, b?),
                _ => return Err(FreqError::Corrupt("a replica did not load".into())),
            };
            let seqs = [a.seq(), b.seq()];
            // The higher applied sequence starts as primary (the other catches up).
            let pair = PairShared::new(usize::from(seqs[1] > seqs[0]), seqs);
            let s = ShardShared::new_pair(i, Arc::clone(&pair));
            let servers = [
                Server::<Replica>::unstarted(format!("freq-shard-{i}-a")),
                Server::<Replica>::unstarted(format!("freq-shard-{i}-b")),
            ];
            for (r, (mut shard_args, pre)) in args.into_iter().zip([a, b]).enumerate() {
                shard_args.shared = Arc::clone(&s);
                let replica_args = ReplicaArgs {
                    shard: shard_args,
                    me: r,
                    pair: Arc::clone(&pair),
                    link: Arc::new(InProcessLink::new(
                        i,
                        servers[1 - r].clone(),
                        options.call_timeout,
                    )),
                    log_entries: options.replica_log_entries,
                    preloaded: Arc::new(Mutex::new(Some(pre))),
                };
                let id = format!("shard-{i}-{}", ["a", "b"][r]);
                spec = spec.child(ChildSpec::for_server(id, &servers[r], move || {
                    replica_args.clone()
                }));
            }
            pairs.push(Pair {
                servers,
                shared: pair,
            });
            shared.push(s);
        }
        let supervisor = start_supervisor(spec, &shared)?;
        let alloc = Allocator::assemble(
            dir,
            config,
            options,
            Servers::Pairs(pairs),
            shared,
            supervisor,
        );
        // Start replicating before the first request: each primary catches its backup up (one
        // round trip when both hold the same sequence). A replica that could not come up leaves
        // its shard serving alone, as `status` shows; that is no error here.
        for shard in 0..n {
            alloc.wait_for_pair_if_both_up(shard);
        }
        Ok(alloc)
    }

    /// Waits (up to the call timeout) for shard `shard`'s pair to be in sync, if both of its
    /// replicas are running.
    fn wait_for_pair_if_both_up(&self, shard: usize) {
        if let Servers::Pairs(pairs) = &self.inner.shards {
            let both_up = pairs
                .get(shard)
                .is_some_and(|p| p.shared.state().roles.iter().all(|r| *r != Role::Down));
            if both_up {
                let _ = self.wait_for_sync(shard, self.inner.options.call_timeout);
            }
        }
    }

    /// The store's directory (`None` in memory).
    pub fn dir(&self) -> Option<&Path> {
        self.inner.dir.as_deref()
    }

    /// The configuration the allocator runs with.
    pub fn config(&self) -> &StoreConfig {
        &self.inner.config
    }

    /// Frequencies in the pool.
    pub fn pool_size(&self) -> u64 {
        self.inner.config.layout.pool_size()
    }

    /// Number of shards.
    pub fn shard_count(&self) -> usize {
        self.inner.shards.len()
    }

    /// Free frequencies per shard, as published (no message to any shard).
    pub fn free_per_shard(&self) -> Vec<u64> {
        self.inner.shared.iter().map(|s| s.load().free()).collect()
    }

    fn check_running(&self) -> Result<(), FreqError> {
        if self.inner.stopped.load(Ordering::Acquire) {
            return Err(FreqError::Stopped);
        }
        Ok(())
    }

    fn call(&self, shard: usize, request: ShardCall) -> Result<ShardReply, FreqError> {
        self.check_running()?;
        match self.raw_call(shard, || request.clone()) {
            Ok(result) => result,
            Err(e) => Err(shard_error(shard, e)),
        }
    }

    /// Sends `request()` to shard `shard`: its server, or its pair's primary. With replication,
    /// a call that never reached a primary (none serving, or the roles changed under it) waits
    /// for the roles to change and is sent again, up to the call timeout; a call in flight when
    /// the primary fails is not retried.
    fn raw_call(
        &self,
        shard: usize,
        mut request: impl FnMut() -> ShardCall,
    ) -> Result<Result<ShardReply, FreqError>, OtpError> {
        let timeout = self.inner.options.call_timeout;
        match &self.inner.shards {
            Servers::Single(servers) => {
                let server = servers.get(shard).ok_or(OtpError::NoProc)?;
                server.call_timeout(request(), timeout)
            }
            Servers::Pairs(pairs) => {
                let pair = pairs.get(shard).ok_or(OtpError::NoProc)?;
                let deadline = Instant::now() + timeout;
                loop {
                    let st = pair.shared.state();
                    if st.roles[st.primary] == Role::Primary {
                        let server = &pair.servers[st.primary];
                        let generation = server.generation();
                        let left = deadline.saturating_duration_since(Instant::now());
                        match server.call_timeout(request(), left) {
                            Ok(Err(FreqError::NotPrimary { .. })) => {}
                            // A primary still in `init` (its role is set before it is installed),
                            // or one that just died: wait for its next start or a role change.
                            Err(OtpError::NoProc) => {
                                if self.inner.stopped.load(Ordering::Acquire) {
                                    return Err(OtpError::NoProc);
                                }
                                if pair.shared.state().version == st.version {
                                    let left = deadline.saturating_duration_since(Instant::now());
                                    server.wait_for_generation(generation + 1, left)?;
                                }
                                continue;
                            }
                            other => return other,
                        }
                    }
                    if self.inner.stopped.load(Ordering::Acquire) {
                        return Err(OtpError::NoProc);
                    }
                    if !pair.shared.wait_change(st.version, deadline) {
                        return Err(OtpError::Timeout);
                    }
                }
            }
        }
    }

    /// Allocates a frequency to `client` (the course's `allocate/0`), on the shard the strategy
    /// picks; if that shard has none left, on another. `NoFrequency` only when every shard has
    /// none.
    pub fn allocate(&self, client: &str) -> Result<u64, FreqError> {
        self.allocate_inner(client, None)
    }

    /// Allocates with a lease: the shard reclaims the frequency when `lease` has passed, so a
    /// client that never comes back after a crash does not leak it.
    pub fn allocate_with_lease(&self, client: &str, lease: Duration) -> Result<u64, FreqError> {
        let ms = u64::try_from(lease.as_millis()).unwrap_or(u64::MAX);
        self.allocate_inner(client, Some(ms))
    }

    fn allocate_inner(&self, client: &str, lease_ms: Option<u64>) -> Result<u64, FreqError> {
        check_name(client)?;
        self.check_running()?;
        // The limit is per client over the whole pool, so it is checked here against every
        // shard's owner index (a shard alone sees only its part). Allocations racing under the
        // same name may pass it together; one client handle allocating in turn never does.
        if let Some(limit) = self.inner.config.client_limit {
            if self.held_count(client) >= limit {
                return Err(FreqError::LimitReached {
                    client: client.to_string(),
                    limit,
                });
            }
        }
        let free = self.free_per_shard();
        let pick = Pick {
            free: &free,
            ticket: self.inner.ticket.fetch_add(1, Ordering::Relaxed),
            random: if self.inner.config.strategy == Strategy::PowerOfTwoChoices {
                random()
            } else {
                0
            },
            client,
        };
        let proposed = choose(self.inner.config.strategy, pick).ok_or(FreqError::Stopped)?;
        let mut failure = None;
        for shard in std::iter::once(proposed).chain(
            // Computed only if the proposed shard has none (lazily, off the fast path).
            std::iter::once(()).flat_map(|_| fallback_order(proposed, &free).into_iter().skip(1)),
        ) {
            let request = || ShardCall::Allocate {
                owner: client.to_string(),
                lease_ms,
            };
            match self.raw_call(shard, request) {
                Ok(Ok(ShardReply::Allocated(f))) => return Ok(f),
                Ok(Ok(other)) => return Err(unexpected(shard, &other)),
                Ok(Err(FreqError::NoFrequency { .. })) => continue,
                Ok(Err(e)) => return Err(e),
                // A shard that is not running, or whose direct call never got its state lock
                // (`NotDelivered`), never saw the call: skip it, another may serve.
                Err(e @ (OtpError::NoProc | OtpError::NotDelivered)) => {
                    failure = Some(shard_error(shard, e))
                }
                // The call failed in flight (timeout, crash): the shard may still make the
                // allocation, so trying another shard could allocate twice. Not retried.
                Err(e) => return Err(shard_error(shard, e)),
            }
        }
        Err(failure.unwrap_or(FreqError::NoFrequency {
            pool_size: self.pool_size(),
        }))
    }

    /// Frees `freq`, held by `client` (the course's `deallocate/1`), on the shard that owns it.
    /// Errors, with nothing changed: `UnknownFrequency` (outside the pool), `NotAllocated`
    /// (free), `NotOwner` (held by another client).
    pub fn deallocate(&self, freq: u64, client: &str) -> Result<(), FreqError> {
        check_name(client)?;
        let shard = self
            .inner
            .config
            .layout
            .owner_of(freq)
            .ok_or(FreqError::UnknownFrequency(freq))?;
        let request = || ShardCall::Deallocate {
            freq,
            owner: client.to_string(),
        };
        match self.call_retrying(shard, request)? {
            ShardReply::Deallocated => Ok(()),
            other => Err(unexpected(shard, &other)),
        }
    }

    /// Calls a shard; if no instance is running (between a crash and its restart), waits for the
    /// restart and tries once more. Safe for any request: a `NoProc` call was never delivered.
    fn call_retrying(
        &self,
        shard: usize,
        request: impl Fn() -> ShardCall,
    ) -> Result<ShardReply, FreqError> {
        self.check_running()?;
        let servers = match &self.inner.shards {
            Servers::Single(servers) => servers,
            // A pair's call already waits for a primary.
            Servers::Pairs(_) => {
                return match self.raw_call(shard, request) {
                    Ok(result) => result,
                    Err(e) => Err(shard_error(shard, e)),
                }
            }
        };
        let server = servers.get(shard).ok_or(FreqError::Stopped)?;
        let generation = server.generation();
        match server.call_timeout(request(), self.inner.options.call_timeout) {
            Ok(result) => result,
            Err(OtpError::NoProc) => {
                self.check_running()?;
                server
                    .wait_for_generation(generation + 1, self.inner.options.call_timeout)
                    .map_err(|e| shard_error(shard, e))?;
                self.call(shard, request())
            }
            Err(e) => Err(shard_error(shard, e)),
        }
    }

    /// Frees everything `client` holds; returns what it freed, lowest first.
    pub fn release_all(&self, client: &str) -> Result<Vec<u64>, FreqError> {
        check_name(client)?;
        let mut freed = Vec::new();
        for shard in 0..self.shard_count() {
            let request = || ShardCall::ReleaseAll {
                owner: client.to_string(),
            };
            match self.call_retrying(shard, request)? {
                ShardReply::Released(fs) => freed.extend(fs),
                other => return Err(unexpected(shard, &other)),
            }
        }
        freed.sort_unstable();
        Ok(freed)
    }

    /// What `client` holds, lowest first, read from the shards' owner indexes (no message).
    pub fn held_by(&self, client: &str) -> Result<Vec<u64>, FreqError> {
        let owner = client.to_string();
        let mut held = Vec::new();
        for s in &self.inner.shared {
            if let Some(r) = s.readers() {
                held.extend(r.owners.lookup(&owner));
            }
        }
        held.sort_unstable();
        Ok(held)
    }

    fn held_count(&self, client: &str) -> usize {
        let owner = client.to_string();
        self.inner
            .shared
            .iter()
            .filter_map(|s| s.readers())
            .map(|r| r.owners.lookup(&owner).len())
            .sum()
    }

    /// Reclaims every expired lease now (the shards also do it on their own timers).
    pub fn reap_expired(&self) -> Result<Vec<(u64, String)>, FreqError> {
        let mut reaped = Vec::new();
        for shard in 0..self.shard_count() {
            match self.call_retrying(shard, || ShardCall::Reap)? {
                ShardReply::Reaped(r) => reaped.extend(r),
                other => return Err(unexpected(shard, &other)),
            }
        }
        reaped.sort_unstable();
        Ok(reaped)
    }

    /// A snapshot of every shard, read from the tables (no message to any shard).
    pub fn status(&self) -> Status {
        let mut shards = Vec::new();
        let mut free = Vec::new();
        let mut allocations = Vec::new();
        for (i, s) in self.inner.shared.iter().enumerate() {
            let (restarts, alive, replicas, in_sync) = match &self.inner.shards {
                Servers::Single(servers) => (
                    servers[i].generation().saturating_sub(1),
                    servers[i].is_alive(),
                    Vec::new(),
                    false,
                ),
                Servers::Pairs(pairs) => {
                    let pair = &pairs[i];
                    let st = pair.shared.state();
                    let applied = [pair.shared.applied(0), pair.shared.applied(1)];
                    let replicas: Vec<ReplicaStatus> = (0..2)
                        .map(|r| ReplicaStatus {
                            replica: r,
                            role: st.roles[r],
                            applied: applied[r],
                            lag: applied[1 - r].saturating_sub(applied[r]),
                            restarts: pair.servers[r].generation().saturating_sub(1),
                        })
                        .collect();
                    (
                        replicas.iter().map(|r| r.restarts).sum(),
                        st.roles[st.primary] == Role::Primary,
                        replicas,
                        st.in_sync,
                    )
                }
            };
            shards.push(ShardStatus {
                shard: i,
                ranges: self.inner.config.layout.ranges(i).to_vec(),
                free: s.load().free(),
                allocated: s.load().allocated(),
                recovered: s.recovered(),
                restarts,
                alive,
                replicas,
                in_sync,
            });
            if let Some(r) = s.readers() {
                free.extend(
                    r.free
                        .to_vec()
                        .into_iter()
                        .map(|(first, last)| FreqRange { first, last }),
                );
                allocations.extend(r.allocations.to_vec());
            }
        }
        free.sort_unstable();
        allocations.sort_unstable_by_key(|(f, _)| *f);
        Status {
            pool_size: self.pool_size(),
            strategy: self.inner.config.strategy,
            durability: self.inner.config.durability,
            shards,
            free,
            allocations,
        }
    }

    /// Verifies the invariants in every shard (each shard checks itself with nothing in flight):
    /// every frequency exactly once, free or allocated to one owner; the owner index agrees; disk
    /// and memory agree; and across shards, free plus allocated equals the pool. With
    /// replication, when both replicas of a shard run, it waits for the pair to be in sync and
    /// compares them too. Returns the violations; empty means consistent.
    pub fn check(&self) -> Result<Vec<String>, FreqError> {
        let mut out = Vec::new();
        let mut total = 0u64;
        for shard in 0..self.shard_count() {
            // With both replicas running, compare them: let the backup finish catching up.
            self.wait_for_pair_if_both_up(shard);
            match self.call_retrying(shard, || ShardCall::Check)? {
                ShardReply::Checked(v) => out.extend(v),
                other => return Err(unexpected(shard, &other)),
            }
            let load = self.inner.shared[shard].load();
            total += load.free() + load.allocated();
        }
        if total != self.pool_size() {
            out.push(format!(
                "free plus allocated is {total}, the pool holds {}",
                self.pool_size()
            ));
        }
        Ok(out)
    }

    /// A handle for the client `name`: its allocations are released when it is dropped, unless
    /// [`Options::release_on_drop`] is off or [`Client::detach`] is called (Erlang's links). One
    /// open handle per name.
    pub fn client(&self, name: &str) -> Result<Client, FreqError> {
        check_name(name)?;
        if !self.inner.clients.lock().insert(name.to_string()) {
            return Err(FreqError::ClientInUse(name.to_string()));
        }
        Ok(Client {
            name: name.to_string(),
            alloc: self.clone(),
            release_on_drop: self.inner.options.release_on_drop,
        })
    }

    /// Injects a fault into a shard (for tests of supervision and recovery). The call itself
    /// returns the shard's failure. With replication, [`Fault::Panic`] and
    /// [`Fault::PanicPrimary`] hit the primary and [`Fault::PanicBackup`] the backup
    /// (`NotBackup`, with nothing done, when the shard has no running backup).
    pub fn inject_fault(&self, shard: usize, fault: Fault) -> Result<(), FreqError> {
        if let (Fault::PanicBackup, Servers::Pairs(pairs)) = (fault, &self.inner.shards) {
            self.check_running()?;
            let pair = pairs.get(shard).ok_or(FreqError::Stopped)?;
            let st = pair.shared.state();
            let backup = 1 - st.primary;
            if st.roles[backup] != Role::Backup {
                return Err(FreqError::NotBackup { shard });
            }
            let call = ShardCall::Inject(fault);
            return match pair.servers[backup].call_timeout(call, self.inner.options.call_timeout) {
                Ok(r) => r.map(|_| ()),
                // Still starting (its role is set before it is installed): nothing happened.
                Err(OtpError::NoProc) => Err(FreqError::NotBackup { shard }),
                Err(e) => Err(shard_error(shard, e)),
            };
        }
        self.call(shard, ShardCall::Inject(fault)).map(|_| ())
    }

    /// How many times shard `shard` has been started (1, then 2 after its first restart...).
    /// With replication: starts of both replicas, minus one.
    pub fn shard_generation(&self, shard: usize) -> u64 {
        match &self.inner.shards {
            Servers::Single(servers) => servers.get(shard).map_or(0, Server::generation),
            Servers::Pairs(pairs) => pairs.get(shard).map_or(0, |p| {
                (p.servers[0].generation() + p.servers[1].generation()).saturating_sub(1)
            }),
        }
    }

    /// With replication: waits until shard `shard` has a primary and an in-sync backup, up to
    /// `timeout` (how tests see a failover and catch-up complete without sleeping). Without
    /// replication: waits until the shard runs.
    pub fn wait_for_sync(&self, shard: usize, timeout: Duration) -> Result<(), FreqError> {
        let deadline = Instant::now() + timeout;
        match &self.inner.shards {
            Servers::Single(servers) => {
                let server = servers.get(shard).ok_or(FreqError::Stopped)?;
                while !server.is_alive() {
                    let left = deadline.saturating_duration_since(Instant::now());
                    server
                        .wait_for_generation(server.generation() + 1, left)
                        .map_err(|e| shard_error(shard, e))?;
                }
                Ok(())
            }
            Servers::Pairs(pairs) => {
                let pair = pairs.get(shard).ok_or(FreqError::Stopped)?;
                loop {
                    let st = pair.shared.state();
                    if st.in_sync && st.roles[st.primary] == Role::Primary {
                        return Ok(());
                    }
                    if !pair.shared.wait_change(st.version, deadline) {
                        return Err(shard_error(shard, OtpError::Timeout));
                    }
                }
            }
        }
    }

    /// Waits until shard `shard` has been started `generation` times, up to `timeout`: how tests
    /// see a restart happen without sleeping.
    pub fn wait_for_shard_generation(
        &self,
        shard: usize,
        generation: u64,
        timeout: Duration,
    ) -> Result<u64, FreqError> {
        match &self.inner.shards {
            Servers::Single(servers) => {
                let server = servers.get(shard).ok_or(FreqError::Stopped)?;
                server
                    .wait_for_generation(generation, timeout)
                    .map_err(|e| shard_error(shard, e))
            }
            Servers::Pairs(pairs) => {
                let pair = pairs.get(shard).ok_or(FreqError::Stopped)?;
                let deadline = Instant::now() + timeout;
                loop {
                    // Every start changes the pair's roles, so its version is the clock here.
                    let version = pair.shared.state().version;
                    let g = self.shard_generation(shard);
                    if g >= generation {
                        return Ok(g);
                    }
                    if !pair.shared.wait_change(version, deadline) {
                        return Err(shard_error(shard, OtpError::Timeout));
                    }
                }
            }
        }
    }

    /// Per shard: allocations loaded from disk at its last start, and how long that open took.
    pub fn recovery(&self) -> Vec<(u64, Duration)> {
        self.inner
            .shared
            .iter()
            .map(|s| (s.recovered(), s.open_time()))
            .collect()
    }

    /// Stops the shards (each flushes what it holds) and the supervisor. Every clone then gets
    /// `Stopped` or a shard error.
    pub fn stop(&self) {
        self.inner.stopped.store(true, Ordering::Release);
        if let Some(sup) = self.inner.supervisor.lock().take() {
            sup.stop();
        }
    }
}

/// A named client: the course's client process. Dropping it releases what it holds unless it is
/// detached or the allocator's `release_on_drop` is off.
pub struct Client {
    name: String,
    alloc: Allocator,
    release_on_drop: bool,
}

impl Client {
    /// The client's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Allocates a frequency.
    pub fn allocate(&self) -> Result<u64, FreqError> {
        self.alloc.allocate(&self.name)
    }

    /// Allocates a frequency with a lease.
    pub fn allocate_with_lease(&self, lease: Duration) -> Result<u64, FreqError> {
        self.alloc.allocate_with_lease(&self.name, lease)
    }

    /// Frees a frequency this client holds.
    pub fn deallocate(&self, freq: u64) -> Result<(), FreqError> {
        self.alloc.deallocate(freq, &self.name)
    }

    /// What this client holds.
    pub fn held(&self) -> Result<Vec<u64>, FreqError> {
        self.alloc.held_by(&self.name)
    }

    /// Frees everything this client holds.
    pub fn release_all(&self) -> Result<Vec<u64>, FreqError> {
        self.alloc.release_all(&self.name)
    }

    /// Drops the handle without releasing what it holds (unlinks).
    pub fn detach(mut self) {
        self.release_on_drop = false;
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        if self.release_on_drop {
            // Nobody to report to from a destructor; a failure leaves the frequencies held, and
            // leases or `release_all` reclaim them.
            let _ = self.alloc.release_all(&self.name);
        }
        self.alloc.inner.clients.lock().remove(&self.name);
    }
}

fn check_name(name: &str) -> Result<(), FreqError> {
    if name.is_empty() || name.len() > 255 {
        return Err(FreqError::BadClientName(name.to_string()));
    }
    Ok(())
}

fn shard_error(shard: usize, e: OtpError) -> FreqError {
    FreqError::ShardFailed {
        shard,
        reason: e.to_string(),
    }
}

/// Starts the shards' supervisor. A shard that cannot start reports why in its typed error (the
/// supervisor only has the text): corrupt or foreign contents, a disk failure.
fn start_supervisor(
    spec: SupervisorSpec,
    shared: &[Arc<ShardShared>],
) -> Result<Supervisor, FreqError> {
    Supervisor::start(spec).map_err(|e| {
        shared
            .iter()
            .find_map(|s| s.take_init_error())
            .unwrap_or_else(|| FreqError::ShardFailed {
                shard: usize::MAX,
                reason: format!("could not start the shards: {e}"),
            })
    })
}

fn unexpected(shard: usize, reply: &ShardReply) -> FreqError {
    FreqError::ShardFailed {
        shard,
        reason: format!("unexpected reply {reply:?}"),
    }
}
