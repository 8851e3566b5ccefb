//! The in-process [`ReplicaLink`]: the replication protocol as calls on the partner replica's
//! generic server. A network link (`crate::dist`) implements the same trait over a connection.

use std::time::Duration;

use super::error::{FreqError, ShardError};
use super::protocol::{LinkCall, LinkReply, LogEntry, ReplicaDump, ShardInfo, ShardRequest};
use super::protocol::{ShardResponse, Snapshot};
use super::replica::ReplicaLink;
use super::shard::Shard;
use crate::otp::Server;

/// Calls on the other replica's server, each bounded by the call timeout.
pub(crate) struct InProcessLink {
    shard: usize,
    to: Server<Shard>,
    timeout: Duration,
}

impl InProcessLink {
    /// A link of shard `shard` to the replica behind `to`.
    pub(crate) fn new(shard: usize, to: Server<Shard>, timeout: Duration) -> Self {
        InProcessLink { shard, to, timeout }
    }

    fn failed(&self, reason: String) -> ShardError {
        FreqError::ShardFailed {
            shard: self.shard,
            reason: format!("replica link: {reason}"),
        }
        .into()
    }

    fn call(&self, request: LinkCall) -> Result<LinkReply, ShardError> {
        match self
            .to
            .call_timeout(ShardRequest::Link(request), self.timeout)
        {
            Ok(ShardResponse::Link(r)) => r,
            Ok(ShardResponse::Client(r)) => Err(self.failed(format!("client answer {r:?}"))),
            Err(e) => Err(self.failed(e.to_string())),
        }
    }

    fn seq(&self, request: LinkCall) -> Result<u64, ShardError> {
        match self.call(request)? {
            LinkReply::Applied(seq) => Ok(seq),
            other => Err(self.failed(format!("unexpected reply {other:?}"))),
        }
    }
}

impl ReplicaLink for InProcessLink {
    fn applied(&self) -> Result<u64, ShardError> {
        self.seq(LinkCall::Applied)
    }

    fn append(&self, entries: &[LogEntry]) -> Result<u64, ShardError> {
        self.seq(LinkCall::Append(entries.to_vec()))
    }

    fn install(&self, snapshot: Snapshot) -> Result<u64, ShardError> {
        self.seq(LinkCall::Install(snapshot))
    }

    fn dump(&self) -> Result<ReplicaDump, ShardError> {
        match self.call(LinkCall::Dump)? {
            LinkReply::Dumped(d) => Ok(*d),
            other => Err(self.failed(format!("unexpected reply {other:?}"))),
        }
    }

    fn nudge(&self) {
        // Nobody to tell if the other replica is down: it catches this one up when it starts.
        let _ = self.to.send(ShardInfo::CatchUp);
    }
}
