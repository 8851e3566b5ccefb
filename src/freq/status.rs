//! What [`Allocator::status`](super::Allocator::status) reports: plain data.

use std::time::Duration;

use super::pair::Role;
use super::pool::Allocation;
use super::range::FreqRange;
use super::router::Routing;
use super::store::Durability;

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
    /// While the supervisor's restart backoff holds back its restart (with replication: a
    /// replica's): how long until the next try. `None` when no restart waits.
    pub restart_in: Option<Duration>,
    /// While a restart waits: which consecutive restart of the shard it is (failed starts
    /// count; with replication, the waiting replica's). 0 when none waits.
    pub restart_attempt: u32,
    /// With replication, each replica's state (empty without).
    pub replicas: Vec<ReplicaStatus>,
    /// With replication, whether the backup has everything the primary has.
    pub in_sync: bool,
    /// In a cluster: the node that serves the shard (`None` for a store served by one process);
    /// with replicas, its primary's node as the control plane has it.
    pub node: Option<String>,
    /// In a cluster with replicas: the shard's epoch (raised by every failover).
    pub epoch: Option<u64>,
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
    /// In a cluster: the node the replica runs on.
    pub node: Option<String>,
}

/// A view of the allocator, read from the shards' tables without messaging them (a dirty read,
/// like `ets:tab2list/1` on a table others write). At quiescence it is exact. Taken while
/// operations run, counts and tables are read at slightly different moments, so they may
/// disagree by the operations in flight, and in `Sync` it may show changes not yet flushed
/// (their callers have not been answered). For a verified view use
/// [`Allocator::check`](super::Allocator::check).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// Frequencies in the pool.
    pub pool_size: u64,
    /// The routing strategy.
    pub strategy: Routing,
    /// The durability.
    pub durability: Durability,
    /// Per shard.
    pub shards: Vec<ShardStatus>,
    /// Free ranges, lowest first.
    pub free: Vec<FreqRange>,
    /// Every allocation, lowest frequency first.
    pub allocations: Vec<(u64, Allocation)>,
}
