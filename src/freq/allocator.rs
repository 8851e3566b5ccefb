//! The front end: [`Allocator`], with the same API as the course's single frequency server,
//! over shards that run in parallel under a supervisor.

use std::cell::Cell;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use super::clock::{LeaseClock, SystemLeaseClock};
use super::endpoint::{shard_error, ReplicatedShard, ShardEndpoint, SingleShard};
use super::error::LayoutError;
use super::error::{FreqError, StoreError};
use super::layout::{coalesce, Layout};
use super::link::InProcessLink;
use super::member::{LocalReplica, Membership, ReplicaHandle};
use super::pair::PairShared;
use super::protocol::{ClientCall, ClientReply, Fault};
use super::range::FreqRange;
use super::replica::{ReplicaArgs, DEFAULT_LOG_ENTRIES};
use super::router::{choose, fallback_order, Pick, Routing};
use super::shard::{Shard, ShardArgs, ShardFailure};
use super::shard_core::{load, CoreArgs, ShardShared};
use super::status::{ShardStatus, Status};
use super::store::{
    adopt_legacy, check_shards, create_meta, new_store_id, read_config, read_meta, register_shards,
    remove_meta, replica_dir, shard_dir, stray_shard_dirs, write_config, write_identities, Created,
    Durability, MetaId, StoreConfig,
};
use crate::otp::{
    self, ChildSpec, ExitReason, OtpError, RestartBackoff, RestartClock, Server, Supervisor,
    SupervisorSpec, SystemRestartClock,
};

/// Run-time options of an [`Allocator`] (what is not stored with the pool).
#[derive(Clone)]
pub struct Options {
    /// Whether dropping a [`Client`] releases what it holds (Erlang's links). Default: `true`.
    pub release_on_drop: bool,
    /// The clock for allocation times and leases. Default: the system clock.
    pub clock: Arc<dyn LeaseClock>,
    /// How long a caller waits for a shard. Default: 5 s (OTP's call timeout).
    pub call_timeout: Duration,
    /// Restart intensity of the shards' supervisor: at most this many restarts...
    pub max_restarts: u32,
    /// ...within this period, or the supervisor gives up. Default: 10 in 10 s. With a
    /// [`restart_backoff`](Options::restart_backoff) the intensity is raised to what every
    /// shard failing forever under that backoff needs
    /// ([`RestartBackoff::max_restarts_within`] the period, per shard or replica), so the
    /// supervisor never gives up on a shard; `max_restarts` is then only a lower bound.
    pub restart_period: Duration,
    /// How the shards' supervisor spaces the restarts of a shard that keeps failing (a full
    /// disk in `sync`, say): the `n`-th consecutive restart waits `min(10 ms * 2^(n-1), 1 s)`,
    /// and a shard that ran 10 s without failing starts again from 10 ms. Such a shard is
    /// retried at most once a second, forever, and comes back by itself once the cause is
    /// gone; meanwhile its callers get its last failure at once. `None`: restart at once, and
    /// give up after `max_restarts` (OTP's behaviour; the shard then stays down).
    /// Default: `Some(RestartBackoff::exponential(10 ms, 1 s).healthy_after(10 s))`.
    pub restart_backoff: Option<RestartBackoff>,
    /// The clock of the shards' supervisor (its intensity window and backoff delays).
    /// Default: the system clock; tests use a [`ManualRestartClock`](otp::ManualRestartClock).
    pub restart_clock: Arc<dyn RestartClock>,
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
            clock: Arc::new(SystemLeaseClock),
            call_timeout: otp::DEFAULT_CALL_TIMEOUT,
            max_restarts: 10,
            restart_period: Duration::from_secs(10),
            restart_backoff: Some(DEFAULT_RESTART_BACKOFF),
            restart_clock: Arc::new(SystemRestartClock),
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
            .field("restart_backoff", &self.restart_backoff)
            .field("replica_dirs", &self.replica_dirs)
            .field("replica_log_entries", &self.replica_log_entries)
            .finish_non_exhaustive()
    }
}

/// The shards' default restart backoff ([`Options::restart_backoff`]): 10 ms doubling up to
/// 1 s, reset after 10 s without a failure.
const DEFAULT_RESTART_BACKOFF: RestartBackoff =
    RestartBackoff::exponential(Duration::from_millis(10), Duration::from_secs(1))
        .healthy_after(Duration::from_secs(10));

/// One stored setting to change with [`Allocator::set_config`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigChange {
    /// How allocations pick a shard.
    Strategy(Routing),
    /// How operations reach the disk.
    Durability(Durability),
    /// The per-client limit (`None`: no limit).
    Limit(Option<usize>),
}

/// Options for the short opens of `init` and `set_config`, which allocate nothing.
fn quiet_options() -> Options {
    Options {
        release_on_drop: false,
        ..Options::default()
    }
}

/// A creation that failed for lack of space says so, naming the store.
fn disk_full_in(e: FreqError, dir: &Path) -> FreqError {
    let full = {
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        let mut found = false;
        while let Some(err) = cur {
            if let Some(io) = err.downcast_ref::<std::io::Error>() {
                found |=
                    io.kind() == std::io::ErrorKind::StorageFull || io.raw_os_error() == Some(28);
            }
            if let Some(StoreError::DiskFull { .. }) = err.downcast_ref::<StoreError>() {
                found = true;
            }
            found |= err.to_string().contains("No space left on device");
            cur = err.source();
        }
        found
    };
    if full {
        StoreError::DiskFull {
            path: dir.to_path_buf(),
        }
        .into()
    } else {
        e
    }
}

/// What [`Allocator::init`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InitOutcome {
    /// A new store was created.
    Created,
    /// The store existed with this pool and these settings; nothing was changed.
    Existing,
    /// The store existed and its pool grew by this many frequencies.
    Grown(u64),
}

/// Which shards of a cluster store run here, and how to reach the others.
type RemotePart<'a> = &'a dyn Membership;

struct Inner {
    dir: Option<PathBuf>,
    config: StoreConfig,
    options: Options,
    /// One endpoint per shard, whatever its kind.
    shards: Vec<Box<dyn ShardEndpoint>>,
    shared: Vec<Arc<ShardShared>>,
    /// Per shard: whether it runs in this process (in a cluster, only the node's own shards).
    local: Vec<bool>,
    supervisor: Mutex<Option<Supervisor>>,
    ticket: AtomicU64,
    clients: Mutex<HashSet<String>>,
    /// Set by [`Allocator::stop`]: calls then fail with `Stopped` at once instead of waiting
    /// for a restart that will never come.
    stopped: Arc<AtomicBool>,
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
/// use freqalloc::freq::{Allocator, Layout, Routing, parse_pool};
///
/// // The course's layout: two shards, 10-15 and 20-25, balanced by "most free".
/// let layout = Layout::one_shard_per_range(&parse_pool("10-15,20-25")?)?;
/// let alloc = Allocator::in_memory(layout, Routing::MostFree, None)?;
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
    /// `init`).
    ///
    /// Creation is exclusive: of two processes creating a store at once one gets
    /// [`InitOutcome::Created`], the other compares its request with what the winner wrote.
    /// Every shard's directory gets an identity record (see [`Allocator::open`]), and the new
    /// store is opened twice to prove it works; if that fails (a full disk, say) everything this
    /// call created is removed again, so the same `init` can simply be repeated. A replicated
    /// store (whose replicas may live in [`Options::replica_dirs`], given at open) gets its
    /// records at its first open instead, and is not opened here. A directory that holds shard
    /// data but no `meta.json` is refused.
    ///
    /// On an existing store nothing but the pool may change, and only with `grow` (the new
    /// pool containing the old one): a strategy, durability, limit or replica count other than
    /// the stored one is refused (change those with [`Allocator::set_config`]). A growth is
    /// written only while the store is open here, so a store locked by another process is
    /// refused with its `meta.json` untouched.
    pub fn init(
        dir: impl AsRef<Path>,
        config: StoreConfig,
        grow: bool,
    ) -> Result<InitOutcome, FreqError> {
        let dir = dir.as_ref();
        config.check_replicas()?;
        let existing = match read_config(dir)? {
            Some(existing) => existing,
            None => match Allocator::create(dir, &config)? {
                Ok(()) => return Ok(InitOutcome::Created),
                Err(existing) => existing,
            },
        };
        // The same frequencies split another way are the same pool (`0-999` over 4 shards is
        // `0-249,250-499,...`): compare the frequencies, not the ranges.
        let same_pool =
            coalesce(existing.layout.all_ranges()) == coalesce(config.layout.all_ranges());
        let mismatch = |key: &'static str, existing: String, requested: String| -> FreqError {
            StoreError::SettingMismatch {
                path: dir.to_path_buf(),
                key,
                existing,
                requested,
            }
            .into()
        };
        if existing.replicas != config.replicas {
            // The replicas' tables live elsewhere than a single shard's: no conversion (yet).
            return Err(StoreError::ConfigMismatch {
                path: dir.to_path_buf(),
                existing: format!("{} replica(s)", existing.replicas),
                requested: format!("{} replica(s)", config.replicas),
            }
            .into());
        }
        if existing.cluster != config.cluster {
            let show = |c: &Option<super::cluster::ClusterLayout>| match c {
                Some(c) => format!("cluster of {}", c.nodes().join(",")),
                None => "no cluster".to_string(),
            };
            return Err(StoreError::ConfigMismatch {
                path: dir.to_path_buf(),
                existing: show(&existing.cluster),
                requested: show(&config.cluster),
            }
            .into());
        }
        if existing.strategy != config.strategy {
            return Err(mismatch(
                "strategy",
                existing.strategy.to_string(),
                config.strategy.to_string(),
            ));
        }
        if existing.durability != config.durability {
            return Err(mismatch(
                "durability",
                existing.durability.to_string(),
                config.durability.to_string(),
            ));
        }
        if existing.client_limit != config.client_limit {
            let show = |l: Option<usize>| l.map_or("none".to_string(), |l| l.to_string());
            return Err(mismatch(
                "limit",
                show(existing.client_limit),
                show(config.client_limit),
            ));
        }
        if same_pool {
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
            return Ok(InitOutcome::Existing);
        }
        if !grow {
            return Err(StoreError::ConfigMismatch {
                path: dir.to_path_buf(),
                existing: format!("pool {}", existing.layout.pool_string()),
                requested: format!("pool {}", config.layout.pool_string()),
            }
            .into());
        }
        let grown = existing.layout.grow_to(&config.layout.all_ranges())?;
        let added = grown.pool_size() - existing.layout.pool_size();
        // Hold the store open (its shards' locks, and proof that it opens) while meta.json is
        // rewritten: a store in use elsewhere is refused before anything is written.
        let alloc = Allocator::open(dir, quiet_options())?;
        let written = write_config(
            dir,
            &StoreConfig {
                layout: grown,
                ..existing
            },
        );
        alloc.stop();
        written?;
        Ok(InitOutcome::Grown(added))
    }

    /// Creates a new store; `Ok(Err(existing))` when another process created one first.
    fn create(dir: &Path, config: &StoreConfig) -> Result<Result<(), StoreConfig>, FreqError> {
        let stray = stray_shard_dirs(dir)?;
        if !stray.is_empty() {
            return Err(StoreError::StrayShards {
                path: dir.to_path_buf(),
                found: stray,
            }
            .into());
        }
        let made_dir = !dir.exists();
        std::fs::create_dir_all(dir).map_err(|source| {
            if source.kind() == std::io::ErrorKind::StorageFull {
                StoreError::DiskFull {
                    path: dir.to_path_buf(),
                }
            } else {
                StoreError::Io {
                    path: dir.to_path_buf(),
                    source,
                }
            }
        })?;
        let id = new_store_id();
        // A replicated store's replicas may live outside the store (`Options::replica_dirs`,
        // given at open): its records are written, and it is first opened, by its first open.
        let replicated = config.replicas == 2;
        let meta_id = MetaId {
            id: Some(id.clone()),
            unregistered: replicated,
        };
        // Identity records first (under this store's id, so a racing creator's are other
        // files), then meta.json, the commit point.
        let written = if replicated {
            Ok(Created::default())
        } else {
            write_identities(dir, config, &id)
        };
        let created = match written {
            Ok(c) => c,
            Err(e) => {
                if made_dir {
                    let _ = std::fs::remove_dir(dir);
                }
                return Err(e.into());
            }
        };
        match create_meta(dir, config, &meta_id) {
            Ok(Ok(())) => {}
            Ok(Err(existing)) => {
                created.undo(false);
                return Ok(Err(existing));
            }
            Err(e) => {
                created.undo(false);
                return Err(e.into());
            }
        }
        if replicated {
            return Ok(Ok(()));
        }
        // Open, close and open again (what the next commands do), so that the disk tables
        // exist and a disk too small shows now, not at the first allocation. A failure undoes
        // the creation.
        // (A cluster store's proof opens all its shards here: every node's store has every
        // shard's table, and serves its own.)
        let opened = Allocator::open_part(dir, quiet_options(), None)
            .map(|a| a.stop())
            .and_then(|()| Allocator::open_part(dir, quiet_options(), None))
            .map(|a| a.stop());
        if let Err(e) = opened {
            let _ = remove_meta(dir);
            created.undo(true);
            return Err(disk_full_in(e, dir));
        }
        Ok(Ok(()))
    }

    /// Opens the store at `dir` (created by [`Allocator::init`]) and starts its shards, each
    /// rebuilding its tables from disk.
    ///
    /// First it checks that every shard the configuration names is there and is this store's
    /// (an identity record in each shard's directory), and that no file where a disk table
    /// keeps its files is a FIFO or other non-regular file: a deleted shard directory, a
    /// `meta.json` replaced by another store's or edited by hand (`replicas`, shard count) is
    /// refused with [`StoreError::ShardMissing`] or [`StoreError::ShardMismatch`] instead of
    /// starting empty shards that would hand allocations out again. With two replicas, one
    /// replica's missing directory is recreated and rebuilt from its partner. A store written
    /// before identity records gets them at its first open (refused if a shard's directory
    /// holds no disk table); replicas kept in [`Options::replica_dirs`] are not checked.
    ///
    /// A store that is one node's part of a cluster ([`StoreConfig::cluster`]) is refused with
    /// [`FreqError::ClusterStore`]: its node serves it (`freqalloc node`), and opening it here
    /// would serve the other nodes' shards from empty tables.
    pub fn open(dir: impl AsRef<Path>, options: Options) -> Result<Self, FreqError> {
        let dir = dir.as_ref();
        if let Some(c) = read_config(dir)?.and_then(|c| c.cluster) {
            return Err(FreqError::ClusterStore {
                path: dir.to_path_buf(),
                nodes: c.nodes().to_vec(),
            });
        }
        Allocator::open_part(dir, options, None)
    }

    /// Opens the part of the cluster store at `dir` that node `me` serves: its shards run here,
    /// every other shard is reached through the endpoint `remote` makes for it (given the
    /// shard's index and the load record to publish its free count in). `crate::dist` calls
    /// this for `freqalloc node` on a cluster store.
    pub(crate) fn open_member(
        dir: &Path,
        options: Options,
        me: &str,
        member: &dyn Membership,
    ) -> Result<Self, FreqError> {
        let config = read_config(dir)?.ok_or_else(|| StoreError::NoStore(dir.to_path_buf()))?;
        let Some(cluster) = &config.cluster else {
            return Err(FreqError::Layout(LayoutError::BadNodes(format!(
                "the store at {} has no cluster layout (create it with init --nodes)",
                dir.display()
            ))));
        };
        if !cluster.has_node(me) {
            return Err(FreqError::Layout(LayoutError::BadNodes(format!(
                "node {me} is not in the store's cluster (nodes: {})",
                cluster.nodes().join(", ")
            ))));
        }
        Allocator::open_part(dir, options, Some(member))
    }

    /// Opens the store at `dir`: every shard here (`part` `None`), or only those marked local,
    /// the others through remote endpoints.
    fn open_part(
        dir: &Path,
        options: Options,
        part: Option<RemotePart<'_>>,
    ) -> Result<Self, FreqError> {
        let (config, id) = read_meta(dir)?.ok_or_else(|| StoreError::NoStore(dir.to_path_buf()))?;
        config.check_replicas()?;
        if options.replica_dirs.is_none() {
            let store_id = match &id.id {
                Some(store_id) if id.unregistered => {
                    register_shards(dir, &config, store_id)?;
                    store_id.clone()
                }
                Some(store_id) => store_id.clone(),
                None => adopt_legacy(dir, &config)?,
            };
            check_shards(dir, &config, &store_id)?;
        }
        Allocator::start(Some(dir.to_path_buf()), config, options, part)
    }

    /// Changes one stored setting of the store at `dir` (the CLI's `config set`), after
    /// checking that the change loses and doubles nothing; returns the new configuration.
    ///
    /// The store is opened for the change (so a store in use elsewhere is refused) and
    /// `meta.json` is replaced atomically only once every check passed: on any error nothing
    /// changed. Refused: `durability none` while any frequency is allocated (they would be
    /// forgotten at the next open and handed out again). Every strategy, every other
    /// durability (`none` keeps nothing on disk, so leaving it loses nothing) and every limit
    /// are allowed; a limit below what a client holds only stops it allocating more.
    pub fn set_config(
        dir: impl AsRef<Path>,
        change: ConfigChange,
    ) -> Result<StoreConfig, FreqError> {
        let dir = dir.as_ref();
        let alloc = Allocator::open(dir, quiet_options())?;
        let result = (|| {
            let mut config = alloc.config().clone();
            match change {
                ConfigChange::Strategy(s) => config.strategy = s,
                ConfigChange::Limit(l) => config.client_limit = l,
                ConfigChange::Durability(d) => {
                    let held: u64 = alloc
                        .free_per_shard()
                        .iter()
                        .zip(0..)
                        .map(|(free, i)| config.layout.shard_size(i) - free)
                        .sum();
                    if d == Durability::None && config.durability != Durability::None && held > 0 {
                        return Err(StoreError::ConfigRefused {
                            key: "durability".into(),
                            value: d.to_string(),
                            reason: format!(
                                "{held} {} allocated, and a store with durability none forgets {} at the next open (release {} first)",
                                if held == 1 { "frequency is" } else { "frequencies are" },
                                if held == 1 { "it" } else { "them" },
                                if held == 1 { "it" } else { "them" },
                            ),
                        }
                        .into());
                    }
                    config.durability = d;
                }
            }
            write_config(dir, &config)?;
            Ok(config)
        })();
        alloc.stop();
        result
    }

    /// An allocator that keeps nothing on disk, with default options.
    pub fn in_memory(
        layout: Layout,
        strategy: Routing,
        client_limit: Option<usize>,
    ) -> Result<Self, FreqError> {
        Allocator::in_memory_with(layout, strategy, client_limit, Options::default())
    }

    /// An allocator that keeps nothing on disk.
    pub fn in_memory_with(
        layout: Layout,
        strategy: Routing,
        client_limit: Option<usize>,
        options: Options,
    ) -> Result<Self, FreqError> {
        let config = StoreConfig {
            layout,
            strategy,
            durability: Durability::None,
            client_limit,
            replicas: 1,
            cluster: None,
        };
        Allocator::start(None, config, options, None)
    }

    fn start(
        dir: Option<PathBuf>,
        config: StoreConfig,
        options: Options,
        part: Option<RemotePart<'_>>,
    ) -> Result<Self, FreqError> {
        config.check_replicas()?;
        let n = config.layout.shard_count();
        let is_local = |i: usize| part.is_none_or(|m| m.replica_here(i).is_some());
        // A replicated cluster shard runs one replica here, its partner on another node.
        let here = |i: usize| part.and_then(|m| m.replica_here(i)).unwrap_or(0);
        let split_pairs = part.is_some() && config.replicas == 2;
        let replicated = config.replicas == 2;
        let durability = if dir.is_some() {
            config.durability
        } else {
            Durability::None
        };
        // Where replica `r` (or the single shard, `r` 0) of shard `i` keeps its disk table.
        let core_dir = |i: usize, r: usize| -> Option<PathBuf> {
            match (&options.replica_dirs, &dir) {
                (_, None) if !replicated => None,
                (_, Some(d)) if !replicated => Some(shard_dir(d, i)),
                (Some(bases), _) => Some(shard_dir(&bases[r], i)),
                (None, Some(d)) => Some(replica_dir(d, i, r)),
                (None, None) => None,
            }
        };
        // With replication, a pair's shared part names its pair, whose primary depends on what
        // the replicas load: so the replicas load with a shared part of their own first.
        let mut all_args: Vec<Vec<CoreArgs>> = Vec::with_capacity(n);
        for i in 0..n {
            let shared = ShardShared::new(i, None);
            let one = |r: usize| CoreArgs {
                ranges: config.layout.ranges(i).to_vec(),
                dir: core_dir(i, r),
                durability,
                limit: config.client_limit,
                clock: Arc::clone(&options.clock),
                shared: Arc::clone(&shared),
                replicated,
                log_entries: if replicated {
                    options.replica_log_entries.max(1)
                } else {
                    0
                },
                preloaded: Arc::new(Mutex::new(None)),
            };
            all_args.push(if !is_local(i) {
                Vec::new()
            } else if split_pairs {
                vec![one(here(i))]
            } else if replicated {
                vec![one(0), one(1)]
            } else {
                vec![one(0)]
            });
        }
        // Open and rebuild every shard (every replica) at once: each is mostly its own disk and
        // CPU work, and a store of a million allocations must reopen in under two seconds.
        let loaded: Vec<Result<_, FreqError>> = std::thread::scope(|scope| {
            let handles: Vec<_> = all_args
                .iter()
                .flatten()
                .map(|a| scope.spawn(|| load(a)))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(FreqError::Corrupt("a shard panicked while loading".into()))
                    })
                })
                .collect()
        });
        let mut loaded = loaded.into_iter();
        // Replicas found damaged while their partner loaded: (shard, replica).
        let mut rebuilt = Vec::new();
        for (i, pair) in all_args.iter().enumerate() {
            let mut results: Vec<Result<_, FreqError>> = pair
                .iter()
                .map(|_| {
                    loaded
                        .next()
                        .unwrap_or_else(|| Err(FreqError::Corrupt("a shard did not load".into())))
                })
                .collect();
            if replicated && results.len() == 2 {
                for r in 0..2 {
                    if results[1 - r].is_ok() && results[r].as_ref().is_err_and(is_damage) {
                        // The partner is intact: set the damaged copy aside (kept for
                        // inspection, never deleted) and start this replica empty; its partner
                        // becomes primary and catches it up by a full state transfer.
                        let fresh = set_aside(&pair[r]).and_then(|()| load(&pair[r]));
                        if fresh.is_ok() {
                            rebuilt.push((i, r));
                        }
                        results[r] = fresh;
                    }
                }
            }
            for (args, l) in pair.iter().zip(results) {
                *args.preloaded.lock() = Some(l?);
            }
        }
        let stopped = Arc::new(AtomicBool::new(false));
        let mut spec = SupervisorSpec::new(otp::Strategy::OneForOne)
            .name("freq-supervisor")
            .clock(Arc::clone(&options.restart_clock));
        spec = match options.restart_backoff {
            None => spec.intensity(options.max_restarts, options.restart_period),
            Some(backoff) => {
                // Every shard (every replica) may fail forever at once, on one full disk: allow
                // them all their backed-off restarts, so that none is ever given up on.
                let children =
                    u32::try_from(n * all_args.first().map_or(1, Vec::len)).unwrap_or(u32::MAX);
                let needed = backoff
                    .max_restarts_within(options.restart_period)
                    .saturating_mul(children);
                spec.backoff(backoff)
                    .intensity(options.max_restarts.max(needed), options.restart_period)
            }
        };
        let mut shards: Vec<Box<dyn ShardEndpoint>> = Vec::with_capacity(n);
        let mut shared = Vec::with_capacity(n);
        for (i, mut args) in all_args.into_iter().enumerate() {
            if let (false, Some(m)) = (is_local(i), part) {
                let s = ShardShared::new(i, None);
                shards.push(m.remote(i, Arc::clone(&s)));
                shared.push(s);
                continue;
            }
            if let (true, Some(m)) = (split_pairs, part) {
                let r = here(i);
                let mut core = args.remove(0);
                let seq = core.preloaded.lock().as_ref().map_or(0, |l| l.seq());
                let pair = PairShared::new(r, [seq, seq]);
                let s = ShardShared::new(i, Some(Arc::clone(&pair)));
                let server =
                    Server::<Shard>::unstarted(format!("freq-shard-{i}-{}", ["a", "b"][r]));
                let wiring = m.replica(
                    i,
                    LocalReplica {
                        replica: r,
                        handle: ReplicaHandle::new(i, server.clone(), Arc::clone(&pair)),
                        shared: Arc::clone(&s),
                    },
                );
                core.shared = Arc::clone(&s);
                let shard_args = ShardArgs {
                    core,
                    replica: Some(ReplicaArgs {
                        me: r,
                        pair,
                        link: wiring.link,
                        control: Some(wiring.control),
                    }),
                };
                let id = format!("shard-{i}-{}", ["a", "b"][r]);
                spec = spec.child(ChildSpec::for_server(id, &server, move || {
                    shard_args.clone()
                }));
                shards.push(wiring.endpoint);
                shared.push(s);
                continue;
            }
            if !replicated {
                let core = args.remove(0);
                shared.push(Arc::clone(&core.shared));
                let (child, server) = ChildSpec::server::<Shard>(
                    format!("shard-{i}"),
                    format!("freq-shard-{i}"),
                    move || ShardArgs {
                        core: core.clone(),
                        replica: None,
                    },
                );
                spec = spec.child(child);
                shards.push(Box::new(SingleShard::new(i, server)));
                continue;
            }
            let seq = |r: usize| args[r].preloaded.lock().as_ref().map_or(0, |l| l.seq());
            let seqs = [seq(0), seq(1)];
            // The higher applied sequence starts as primary (the other catches up).
            let pair = PairShared::new(usize::from(seqs[1] > seqs[0]), seqs);
            for &(_, r) in rebuilt.iter().filter(|(shard, _)| *shard == i) {
                pair.mark_rebuilt(r);
            }
            let s = ShardShared::new(i, Some(Arc::clone(&pair)));
            let servers = [
                Server::<Shard>::unstarted(format!("freq-shard-{i}-a")),
                Server::<Shard>::unstarted(format!("freq-shard-{i}-b")),
            ];
            for (r, mut core) in args.into_iter().enumerate() {
                core.shared = Arc::clone(&s);
                let shard_args = ShardArgs {
                    core,
                    replica: Some(ReplicaArgs {
                        me: r,
                        pair: Arc::clone(&pair),
                        link: Arc::new(InProcessLink::new(
                            i,
                            servers[1 - r].clone(),
                            options.call_timeout,
                        )),
                        control: None,
                    }),
                };
                let id = format!("shard-{i}-{}", ["a", "b"][r]);
                spec = spec.child(ChildSpec::for_server(id, &servers[r], move || {
                    shard_args.clone()
                }));
            }
            shards.push(Box::new(ReplicatedShard::new(
                i,
                servers,
                pair,
                Arc::clone(&stopped),
            )));
            shared.push(s);
        }
        let supervisor = start_supervisor(spec)?;
        // Round robin continues from the allocations already held, so one-shot processes (the
        // CLI) alternate shards as one long-lived front end would.
        let held: u64 = shared.iter().map(|s| s.load().allocated()).sum();
        let alloc = Allocator {
            inner: Arc::new(Inner {
                dir,
                config,
                options,
                shards,
                shared,
                local: (0..n).map(is_local).collect(),
                supervisor: Mutex::new(Some(supervisor)),
                ticket: AtomicU64::new(held),
                clients: Mutex::new(HashSet::new()),
                stopped,
            }),
        };
        // With replication, start replicating before the first request: each primary catches
        // its backup up (one round trip when both hold the same sequence). A replica that could
        // not come up leaves its shard serving alone, as `status` shows; that is no error here.
        for shard in &alloc.inner.shards {
            shard.settle(alloc.inner.options.call_timeout);
        }
        Ok(alloc)
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

    /// The error for a call to `shard` that found no instance running: while the shard is
    /// down after a failure (e.g. its disk is full), callers are told that failure (the disk
    /// error), not a bare "not running" or "timed out", and, while the restart backoff holds
    /// its restart back, when the next try is ("it is restarting (next try in 640 ms); its
    /// last failure: ..."). `error` as it is otherwise.
    ///
    /// `not_running`: the call found no instance (`NoProc`). Its explanation is then the last
    /// failure even if a new instance is up by now (it may have been restarted between the
    /// call and this check); any other error is explained only while the shard is down.
    fn explain(&self, shard: usize, error: FreqError, not_running: bool) -> FreqError {
        let Some(endpoint) = self.inner.shards.get(shard) else {
            return error;
        };
        if !not_running && endpoint.health().alive {
            return error;
        }
        let last = self.inner.shared.get(shard).and_then(|s| s.last_failure());
        let wait = self.restart_in(shard);
        if last.is_none() && wait.is_none() {
            return error;
        }
        let state = if self.supervisor_gone() {
            "down (restarts stopped after repeated failures)".to_string()
        } else {
            match wait {
                Some(d) => format!("restarting (next try in {} ms)", d.as_millis()),
                None => "restarting".to_string(),
            }
        };
        let reason = match last {
            Some(last) => format!("it is {state}; its last failure: {last}"),
            None => format!("it is {state}"),
        };
        FreqError::ShardFailed { shard, reason }
    }

    /// With a restart backoff, while shard `shard` (a replica of it) waits for its restart:
    /// how long until the next try.
    fn restart_in(&self, shard: usize) -> Option<Duration> {
        self.restart_waits()
            .get(shard)
            .copied()
            .flatten()
            .map(|(wait, _)| wait)
    }

    /// Per shard, if the backoff delays a restart of it: how long until the next try, and
    /// which consecutive restart that is (the soonest replica's, with replication). Read from
    /// what the supervisor publishes: no message, so it answers at once even while the
    /// supervisor is busy starting a shard.
    fn restart_waits(&self) -> Vec<Option<(Duration, u32)>> {
        let mut waits = vec![None; self.shard_count()];
        let delayed = match self.inner.supervisor.lock().as_ref() {
            Some(sup) => sup.restart_waits(),
            None => return waits,
        };
        for c in delayed {
            // Child ids: `shard-N`, or `shard-N-a` / `shard-N-b` with replication.
            let Some(rest) = c.id.strip_prefix("shard-") else {
                continue;
            };
            let index = rest.split('-').next().and_then(|i| i.parse::<usize>().ok());
            if let Some(w) = index.and_then(|i| waits.get_mut(i)) {
                if w.is_none_or(|(old, _)| c.restart_in < old) {
                    *w = Some((c.restart_in, c.attempt));
                }
            }
        }
        waits
    }

    /// Whether the shards' supervisor gave up (no shard that stops is restarted any more).
    fn supervisor_gone(&self) -> bool {
        self.inner
            .supervisor
            .lock()
            .as_ref()
            .is_some_and(|s| s.exit_reason().is_some())
    }

    /// Sends `request` to shard `shard`'s endpoint, with the allocator's call timeout.
    fn send(
        &self,
        shard: usize,
        request: ClientCall,
    ) -> Result<Result<ClientReply, FreqError>, OtpError> {
        let endpoint = self.inner.shards.get(shard).ok_or(OtpError::NoProc)?;
        endpoint.call(request, self.inner.options.call_timeout)
    }

    /// Allocates a frequency to `client` (the course's `allocate/0`), on the shard the strategy
    /// picks; if that shard has none left, on another. `NoFrequency` only when every shard has
    /// none.
    pub fn allocate(&self, client: &str) -> Result<u64, FreqError> {
        self.allocate_inner(client, None)
    }

    /// Allocates with a lease: the shard reclaims the frequency when `lease` has passed, so a
    /// client that never comes back after a crash does not leak it. A lease under 1 ms (one
    /// tick of the lease clock) is [`FreqError::BadLease`], and nothing is allocated.
    pub fn allocate_with_lease(&self, client: &str, lease: Duration) -> Result<u64, FreqError> {
        let ms = u64::try_from(lease.as_millis()).unwrap_or(u64::MAX);
        if ms == 0 {
            return Err(FreqError::BadLease);
        }
        self.allocate_inner(client, Some(ms))
    }

    fn allocate_inner(&self, client: &str, lease_ms: Option<u64>) -> Result<u64, FreqError> {
        check_client_name(client)?;
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
            random: if self.inner.config.strategy == Routing::PowerOfTwoChoices {
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
            let request = ClientCall::Allocate {
                owner: client.to_string(),
                lease_ms,
            };
            match self.send(shard, request) {
                Ok(Ok(ClientReply::Allocated(f))) => return Ok(f),
                Ok(Ok(other)) => return Err(unexpected(shard, &other)),
                Ok(Err(FreqError::NoFrequency { .. })) => continue,
                // On another node that could not be reached: nothing happened, try another.
                Ok(Err(e @ FreqError::ShardUnreachable { .. })) => failure = Some(e),
                Ok(Err(e)) => return Err(e),
                Err(e) => match classify(shard, e) {
                    // Never delivered: skip the shard, another may serve.
                    Failed::NotDelivered { error, restarting } => {
                        failure = Some(self.explain(shard, error, restarting))
                    }
                    // The shard may still make the allocation, so trying another shard could
                    // allocate twice. Not retried.
                    Failed::MaybeDelivered(error) => return Err(error),
                },
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
        check_client_name(client)?;
        let shard = self
            .inner
            .config
            .layout
            .owner_of(freq)
            .ok_or(FreqError::UnknownFrequency(freq))?;
        let request = || ClientCall::Deallocate {
            freq,
            owner: client.to_string(),
        };
        match self.call_retrying(shard, request)? {
            ClientReply::Deallocated => Ok(()),
            other => Err(unexpected(shard, &other)),
        }
    }

    /// Calls a shard; if the call was never delivered because no instance is running (between
    /// a crash and its restart), waits for the restart and tries once more. Safe for any
    /// request: such a call never took effect. (A replicated shard's endpoint already waits for
    /// a primary.)
    fn call_retrying(
        &self,
        shard: usize,
        request: impl Fn() -> ClientCall,
    ) -> Result<ClientReply, FreqError> {
        self.check_running()?;
        let endpoint = self.inner.shards.get(shard).ok_or(FreqError::Stopped)?;
        let timeout = self.inner.options.call_timeout;
        let generation = endpoint.generation();
        match endpoint.call(request(), timeout) {
            Ok(result) => result,
            Err(e) => match classify(shard, e) {
                Failed::NotDelivered { restarting, .. } => {
                    self.check_running()?;
                    if restarting {
                        // Nothing will restart it: say why now, not after a timeout.
                        if self.supervisor_gone() {
                            return Err(self.explain(
                                shard,
                                shard_error(shard, OtpError::NoProc),
                                true,
                            ));
                        }
                        // A restart the backoff holds back for longer than a call may wait:
                        // say why now (the shard's last failure), not after waiting.
                        if self.restart_in(shard).is_some_and(|d| d > timeout) {
                            return Err(self.explain(
                                shard,
                                shard_error(shard, OtpError::NoProc),
                                true,
                            ));
                        }
                        endpoint
                            .wait_for_generation(generation + 1, timeout)
                            .map_err(|e| self.explain(shard, shard_error(shard, e), true))?;
                    }
                    match endpoint.call(request(), timeout) {
                        Ok(result) => result,
                        Err(e) => {
                            let not_running = matches!(e, OtpError::NoProc);
                            Err(self.explain(shard, shard_error(shard, e), not_running))
                        }
                    }
                }
                Failed::MaybeDelivered(error) => Err(error),
            },
        }
    }

    /// Frees everything `client` holds; returns what it freed, lowest first.
    ///
    /// Every shard is asked even when one fails (in a cluster: a shard whose node is down), so
    /// the others release what the client held on them; the call then returns the first
    /// shard's error, and what that shard holds stays held.
    pub fn release_all(&self, client: &str) -> Result<Vec<u64>, FreqError> {
        check_client_name(client)?;
        let mut freed = Vec::new();
        let mut first_error = None;
        for shard in 0..self.shard_count() {
            let request = || ClientCall::ReleaseAll {
                owner: client.to_string(),
            };
            match self.call_retrying(shard, request) {
                Ok(ClientReply::Released(fs)) => freed.extend(fs),
                Ok(other) => {
                    first_error.get_or_insert(unexpected(shard, &other));
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        freed.sort_unstable();
        Ok(freed)
    }

    /// What `client` holds, lowest first, read from the shards' owner indexes (no message).
    pub fn held_by(&self, client: &str) -> Result<Vec<u64>, FreqError> {
        check_client_name(client)?;
        let owner = client.to_string();
        let mut held = Vec::new();
        for (i, s) in self.inner.shared.iter().enumerate() {
            if let Some(r) = s.readers() {
                held.extend(r.owners.lookup(&owner));
            } else if let Some(remote) =
                self.inner.shards[i].held(client, self.inner.options.call_timeout)
            {
                // A shard on another node: asked there.
                held.extend(remote?);
            }
        }
        held.sort_unstable();
        Ok(held)
    }

    /// How many frequencies `client` holds (for the limit). A shard on another node is asked;
    /// one that cannot be reached counts as holding none of them.
    fn held_count(&self, client: &str) -> usize {
        let owner = client.to_string();
        let timeout = self.inner.options.call_timeout;
        self.inner
            .shared
            .iter()
            .zip(&self.inner.shards)
            .map(|(s, e)| match s.readers() {
                Some(r) => r.owners.lookup(&owner).len(),
                None => e
                    .held(client, timeout)
                    .and_then(Result::ok)
                    .map_or(0, |v| v.len()),
            })
            .sum()
    }

    /// A client request to shard `shard` of this process (for a cluster node serving its part
    /// to its peers), with the same retry as the allocator's own calls.
    pub(crate) fn call_shard(
        &self,
        shard: usize,
        request: ClientCall,
    ) -> Result<ClientReply, FreqError> {
        if shard >= self.shard_count() {
            return Err(FreqError::ShardFailed {
                shard,
                reason: format!("no such shard (the pool has {})", self.shard_count()),
            });
        }
        self.call_retrying(shard, || request.clone())
    }

    /// Shard `shard`'s published free and allocated counts.
    pub(crate) fn load_of(&self, shard: usize) -> Option<(u64, u64)> {
        self.inner
            .shared
            .get(shard)
            .map(|s| (s.load().free(), s.load().allocated()))
    }

    /// Whether shard `shard` runs in this process (its tables are here).
    pub(crate) fn is_local(&self, shard: usize) -> bool {
        self.inner.local.get(shard).copied().unwrap_or(false)
    }

    /// What `owner` holds on shard `shard` of this process, read from its owner index.
    pub(crate) fn held_on(&self, shard: usize, owner: &str) -> Vec<u64> {
        self.inner
            .shared
            .get(shard)
            .and_then(|s| s.readers())
            .map(|r| r.owners.lookup(&owner.to_string()))
            .unwrap_or_default()
    }

    /// Reclaims every expired lease now (the shards also do it on their own timers).
    pub fn reap_expired(&self) -> Result<Vec<(u64, String)>, FreqError> {
        let mut reaped = Vec::new();
        for shard in 0..self.shard_count() {
            match self.call_retrying(shard, || ClientCall::Reap)? {
                ClientReply::Reaped(r) => reaped.extend(r),
                other => return Err(unexpected(shard, &other)),
            }
        }
        reaped.sort_unstable();
        Ok(reaped)
    }

    /// A snapshot of every shard, read from the tables and from the restarts the supervisor
    /// delays (no message to any shard or to the supervisor).
    pub fn status(&self) -> Status {
        let waits = self.restart_waits();
        let mut shards = Vec::new();
        let mut free = Vec::new();
        let mut allocations = Vec::new();
        for (i, s) in self.inner.shared.iter().enumerate() {
            let health = self.inner.shards[i].health();
            shards.push(ShardStatus {
                shard: i,
                ranges: self.inner.config.layout.ranges(i).to_vec(),
                free: s.load().free(),
                allocated: s.load().allocated(),
                recovered: s.recovered(),
                restarts: health.restarts,
                alive: health.alive,
                restart_in: waits.get(i).copied().flatten().map(|(wait, _)| wait),
                restart_attempt: waits.get(i).copied().flatten().map_or(0, |(_, n)| n),
                replicas: health.replicas,
                in_sync: health.in_sync,
                node: health.node.or_else(|| {
                    self.inner
                        .config
                        .cluster
                        .as_ref()
                        .and_then(|c| c.node_of(i))
                        .map(str::to_string)
                }),
                epoch: health.epoch,
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
        // Counted in u128: the whole u64 range holds 2^64 frequencies.
        let mut total = 0u128;
        let layout = &self.inner.config.layout;
        for shard in 0..self.shard_count() {
            // With both replicas running, compare them: let the backup finish catching up.
            self.inner.shards[shard].settle(self.inner.options.call_timeout);
            match self.call_retrying(shard, || ClientCall::Check)? {
                ClientReply::Checked(v) => out.extend(v),
                other => return Err(unexpected(shard, &other)),
            }
            let load = self.inner.shared[shard].load();
            let allocated = u128::from(load.allocated());
            // A published free count saturates at u64::MAX (a shard of the whole u64 range with
            // nothing allocated has 2^64 free); the shard's own check above compared its exact
            // count with its free ranges, so a saturated figure stands for what the shard holds.
            let free = match load.free() {
                u64::MAX => layout.shard_count_of(shard).saturating_sub(allocated),
                f => u128::from(f),
            };
            total += free + allocated;
        }
        if total != layout.pool_count() {
            out.push(format!(
                "free plus allocated is {total}, the pool holds {}",
                layout.pool_count()
            ));
        }
        Ok(out)
    }

    /// A handle for the client `name`: its allocations are released when it is dropped, unless
    /// [`Options::release_on_drop`] is off or [`Client::detach`] is called (Erlang's links). One
    /// open handle per name.
    pub fn client(&self, name: &str) -> Result<Client, FreqError> {
        check_client_name(name)?;
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
        self.check_running()?;
        let endpoint = self.inner.shards.get(shard).ok_or(FreqError::Stopped)?;
        endpoint.inject(fault, self.inner.options.call_timeout)
    }

    /// How many times shard `shard` has been started (1, then 2 after its first restart...).
    /// With replication: starts of both replicas, minus one.
    pub fn shard_generation(&self, shard: usize) -> u64 {
        self.inner.shards.get(shard).map_or(0, |e| e.generation())
    }

    /// With replication: waits until shard `shard` has a primary and an in-sync backup, up to
    /// `timeout` (how tests see a failover and catch-up complete without sleeping). Without
    /// replication: waits until the shard runs.
    pub fn wait_for_sync(&self, shard: usize, timeout: Duration) -> Result<(), FreqError> {
        let endpoint = self.inner.shards.get(shard).ok_or(FreqError::Stopped)?;
        endpoint
            .wait_ready(timeout)
            .map_err(|e| shard_error(shard, e))
    }

    /// Waits until shard `shard` has been started `generation` times, up to `timeout`: how tests
    /// see a restart happen without sleeping.
    pub fn wait_for_shard_generation(
        &self,
        shard: usize,
        generation: u64,
        timeout: Duration,
    ) -> Result<u64, FreqError> {
        let endpoint = self.inner.shards.get(shard).ok_or(FreqError::Stopped)?;
        endpoint
            .wait_for_generation(generation, timeout)
            .map_err(|e| shard_error(shard, e))
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

/// Whether a replica failed to load because its files are damaged (not locked, not foreign, not
/// an I/O failure), so that rebuilding it from an intact partner loses nothing.
fn is_damage(e: &FreqError) -> bool {
    matches!(
        e,
        FreqError::Corrupt(_) | FreqError::Disk(crate::dets::DetsError::Corrupted { .. })
    )
}

/// Renames a damaged replica's directory to `replica-N.damaged-SECS` beside it.
fn set_aside(args: &CoreArgs) -> Result<(), FreqError> {
    let Some(dir) = &args.dir else {
        return Ok(());
    };
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".damaged-{secs}"));
    let aside = dir.with_file_name(name);
    std::fs::rename(dir, &aside).map_err(|source| StoreError::Io {
        path: dir.clone(),
        source,
    })?;
    Ok(())
}

/// The one rule for a client name, for every operation (and the CLI's `--client`): 1 to 255
/// bytes, no control characters (a name is printed in status tables and error messages).
pub fn check_client_name(name: &str) -> Result<(), FreqError> {
    // Printable ASCII (the usual name) is checked bytewise, without decoding UTF-8.
    let printable_ascii = name.bytes().all(|b| (0x20..0x7f).contains(&b));
    if name.is_empty() || name.len() > 255 || !printable_ascii && name.chars().any(char::is_control)
    {
        return Err(FreqError::BadClientName(name.to_string()));
    }
    Ok(())
}

/// How the allocator treats a call that failed in transport: the one place where it matches
/// [`OtpError`]s (extend it here when `otp` adds a way to fail).
enum Failed {
    /// The call never reached the shard's code: safe to send again or elsewhere. `restarting`
    /// when no instance runs (the supervisor is restarting it: wait for the next generation).
    NotDelivered { restarting: bool, error: FreqError },
    /// The call may have taken effect (a timeout or a crash while it was pending): never
    /// retried, since an allocation might be made twice.
    MaybeDelivered(FreqError),
}

fn classify(shard: usize, e: OtpError) -> Failed {
    match e {
        OtpError::NoProc => Failed::NotDelivered {
            restarting: true,
            error: shard_error(shard, e),
        },
        // A direct call that never got the shard's state lock: nothing ran, nothing is queued.
        OtpError::NotDelivered => Failed::NotDelivered {
            restarting: false,
            error: shard_error(shard, e),
        },
        e => Failed::MaybeDelivered(shard_error(shard, e)),
    }
}

/// Starts the shards' supervisor. A shard that cannot start reports why in its own typed error,
/// carried inside the supervisor's error (corrupt or foreign contents, a disk failure).
fn start_supervisor(spec: SupervisorSpec) -> Result<Supervisor, FreqError> {
    Supervisor::start(spec).map_err(|e| {
        start_failure(&e).unwrap_or_else(|| FreqError::ShardFailed {
            shard: usize::MAX,
            reason: format!("could not start the shards: {e}"),
        })
    })
}

/// The shard's own error behind a failed start: `ChildStartFailed` → `InitFailed` →
/// `ExitReason::Error` holding the shard's [`ShardFailure`].
fn start_failure(e: &OtpError) -> Option<FreqError> {
    match e {
        OtpError::ChildStartFailed { source, .. } => start_failure(source),
        OtpError::InitFailed(ExitReason::Error(x)) => x.downcast_ref::<ShardFailure>()?.take(),
        _ => None,
    }
}

fn unexpected(shard: usize, reply: &ClientReply) -> FreqError {
    FreqError::ShardFailed {
        shard,
        reason: format!("unexpected reply {reply:?}"),
    }
}
