//! What travels to and from a shard: the client protocol (what the allocator asks of a shard) and
//! the replication protocol (what a primary asks of its backup), as two separate sets of plain
//! data messages: no closures, no handles, nothing that could not cross a network later.
//!
//! A shard's generic server takes one request type, so the two protocols share an envelope
//! ([`ShardRequest`], [`ShardResponse`]); everything inside it is protocol-specific. The
//! signals between replicas and the allocator ([`ShardError`]'s `NotPrimary`, `NotBackup`,
//! `ReplicaGap`) travel here and never reach a user.

use super::error::{FreqError, ShardError};
use super::pool::{Allocation, Change};
use super::range::FreqRange;

/// A fault to inject into a shard, for tests of supervision and recovery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// The shard panics while handling the request; its supervisor restarts it. With
    /// replication, the primary panics (as [`Fault::PanicPrimary`]).
    Panic,
    /// With replication: the shard's primary panics; its backup takes over if it was in sync.
    /// Without replication, as [`Fault::Panic`].
    PanicPrimary,
    /// With replication: the shard's backup panics (the call fails if there is no live backup).
    /// Without replication, as [`Fault::Panic`].
    PanicBackup,
}

/// One numbered state change of a shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// Its sequence number (1 for a shard's first change).
    pub seq: u64,
    /// What changed.
    pub change: Change,
}

/// A replica's whole state, for a full state transfer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The sequence number of the last change it includes.
    pub seq: u64,
    /// Every allocation (everything else of the shard is free).
    pub allocations: Vec<(u64, Allocation)>,
}

/// What a replica holds, for comparing the two replicas of a pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaDump {
    /// The replica (0 or 1).
    pub replica: usize,
    /// Its applied sequence number.
    pub seq: u64,
    /// Its allocations, lowest frequency first.
    pub allocations: Vec<(u64, Allocation)>,
    /// Its free ranges, lowest first.
    pub free: Vec<FreqRange>,
    /// Invariant violations it found in itself (tables, disk against memory).
    pub violations: Vec<String>,
}

/// The client protocol: what the allocator asks of a shard (of its primary, with replication).
#[derive(Debug, Clone)]
pub(crate) enum ClientCall {
    Allocate {
        owner: String,
        lease_ms: Option<u64>,
    },
    Deallocate {
        freq: u64,
        owner: String,
    },
    ReleaseAll {
        owner: String,
    },
    Reap,
    Check,
    Inject(Fault),
}

/// The client protocol's successful answers.
#[derive(Debug)]
pub(crate) enum ClientReply {
    Allocated(u64),
    Deallocated,
    Released(Vec<u64>),
    Reaped(Vec<(u64, String)>),
    Checked(Vec<String>),
}

/// The replication protocol: what a primary asks of its backup (see [`ReplicaLink`]).
///
/// [`ReplicaLink`]: super::replica::ReplicaLink
#[derive(Debug, Clone)]
pub(crate) enum LinkCall {
    Applied,
    Append(Vec<LogEntry>),
    Install(Snapshot),
    Dump,
}

/// The replication protocol's successful answers.
#[derive(Debug)]
pub(crate) enum LinkReply {
    /// The replica's applied sequence number.
    Applied(u64),
    /// The replica's contents.
    Dumped(Box<ReplicaDump>),
}

/// The envelope a shard's generic server takes: one protocol or the other.
#[derive(Debug, Clone)]
pub(crate) enum ShardRequest {
    Client(ClientCall),
    Link(LinkCall),
    /// A replication request from the partner on another node, sent at `epoch`.
    RemoteLink {
        epoch: u64,
        call: LinkCall,
    },
}

/// The answer to a [`ShardRequest`], in the request's protocol.
#[derive(Debug)]
pub(crate) enum ShardResponse {
    Client(Result<ClientReply, ShardError>),
    Link(Result<LinkReply, ShardError>),
}

impl ShardResponse {
    /// The answer to a client request, as the allocator's caller sees it; a replication signal
    /// that reaches this point (it should not: the endpoint handles them) becomes `ShardFailed`.
    pub(crate) fn into_client(self, shard: usize) -> Result<ClientReply, FreqError> {
        match self {
            ShardResponse::Client(r) => r.map_err(|e| e.into_freq(shard)),
            ShardResponse::Link(r) => Err(FreqError::ShardFailed {
                shard,
                reason: format!("replication answer {r:?} to a client request"),
            }),
        }
    }
}

/// Timer and notification input of a shard.
#[derive(Debug)]
pub(crate) enum ShardInfo {
    /// The earliest lease may have expired.
    LeaseTick,
    /// With replication: the other replica (re)joined, so a primary catches it up.
    CatchUp,
}
