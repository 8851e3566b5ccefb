//! The seam between a cluster node's allocator and `crate::dist` (which `freq` never imports):
//! `dist` implements [`Membership`] to give the allocator the endpoints of shards served on
//! other nodes and the network half of a replicated shard whose partner replica runs on another
//! node; the allocator hands `dist` a [`ReplicaHandle`] to this node's replica.

use std::sync::Arc;
use std::time::Duration;

use super::endpoint::ShardEndpoint;
use super::error::{FreqError, ShardError};
use super::pair::{PairShared, Role};
use super::protocol::ShardResponse;
use super::protocol::{ClientCall, ClientReply, LinkCall, LinkReply, ShardInfo, ShardRequest};
use super::replica::{PairControl, ReplicaLink};
use super::shard::Shard;
use super::shard_core::ShardShared;
use crate::otp::{OtpError, Server};

/// What a cluster node's allocator needs from `crate::dist` to open its part of the cluster.
pub(crate) trait Membership {
    /// Which replica of `shard` runs on this node: `Some(0)` for a shard without replicas
    /// served here, `Some(0)`/`Some(1)` for this node's replica of a replicated shard, `None`
    /// when the shard has no replica here.
    fn replica_here(&self, shard: usize) -> Option<usize>;
    /// The endpoint of a shard with no replica here; `shared` is the load record it publishes
    /// the shard's free count in.
    fn remote(&self, shard: usize, shared: Arc<ShardShared>) -> Box<dyn ShardEndpoint>;
    /// For this node's replica of a replicated shard: its link to the partner's node, its
    /// control plane, and the endpoint that routes the shard's calls (here while this replica
    /// is primary, else to the primary's node).
    fn replica(&self, shard: usize, local: LocalReplica) -> ReplicaWiring;
}

/// This node's replica of a replicated cluster shard, as the allocator gives it to `dist`.
pub(crate) struct LocalReplica {
    /// Which replica (0 or 1).
    pub replica: usize,
    /// Calls on it.
    pub handle: ReplicaHandle,
    /// The shard's shared part (counts for routing, readers).
    pub shared: Arc<ShardShared>,
}

/// The network half of a replica: see [`Membership::replica`].
pub(crate) struct ReplicaWiring {
    pub link: Arc<dyn ReplicaLink>,
    pub control: Arc<dyn PairControl>,
    pub endpoint: Box<dyn ShardEndpoint>,
}

/// This node's replica of a replicated shard: its server and its pair state, behind the few
/// operations `dist` needs (serve a client call, apply a partner's replication request, learn
/// its role from the control plane).
#[derive(Clone)]
pub(crate) struct ReplicaHandle {
    shard: usize,
    server: Server<Shard>,
    pair: Arc<PairShared>,
}

impl ReplicaHandle {
    pub(crate) fn new(shard: usize, server: Server<Shard>, pair: Arc<PairShared>) -> Self {
        ReplicaHandle {
            shard,
            server,
            pair,
        }
    }

    /// A client request to this replica. One that is not primary (or not serving yet) answers
    /// [`FreqError::ShardUnreachable`]: nothing was done, the caller may try elsewhere.
    pub(crate) fn client_call(
        &self,
        request: ClientCall,
        timeout: Duration,
    ) -> Result<Result<ClientReply, FreqError>, OtpError> {
        let not_serving = |why: &str| FreqError::ShardUnreachable {
            shard: self.shard,
            reason: format!("its replica on this node {why}"),
        };
        match self
            .server
            .call_timeout(ShardRequest::Client(request), timeout)
        {
            Ok(ShardResponse::Client(Err(ShardError::NotPrimary))) => Ok(Err(not_serving(
                "is not its primary now (the control plane has not confirmed it)",
            ))),
            Ok(r) => Ok(r.into_client(self.shard)),
            Err(OtpError::NoProc) => Ok(Err(not_serving("is restarting"))),
            Err(e) => Err(e),
        }
    }

    /// A replication request from the partner on another node, sent at `epoch`.
    pub(crate) fn link_call(
        &self,
        epoch: u64,
        call: LinkCall,
        timeout: Duration,
    ) -> Result<LinkReply, ShardError> {
        match self
            .server
            .call_timeout(ShardRequest::RemoteLink { epoch, call }, timeout)
        {
            Ok(ShardResponse::Link(r)) => r,
            Ok(ShardResponse::Client(r)) => Err(FreqError::ShardFailed {
                shard: self.shard,
                reason: format!("client answer {r:?} to a replication request"),
            }
            .into()),
            Err(e) => Err(FreqError::ShardFailed {
                shard: self.shard,
                reason: format!("its replica on this node: {e}"),
            }
            .into()),
        }
    }

    /// Tells the replica to look at its role again (it was assigned one, or its partner came
    /// back): a primary starts serving and catches its backup up.
    pub(crate) fn nudge(&self) {
        let _ = self.server.send(ShardInfo::CatchUp);
    }

    /// How many instances of the replica have started (a restart is a new one).
    pub(crate) fn generation(&self) -> u64 {
        self.server.generation()
    }

    /// Gives the replica `role` at `epoch`, its partner `partner` (see [`PairShared::assign`]).
    pub(crate) fn assign(&self, me: usize, role: Role, partner: Role, epoch: u64) {
        self.pair.assign(me, role, partner, epoch);
    }

    /// How its partner stands now (see [`PairShared::assign_partner`]); whether that changed.
    pub(crate) fn assign_partner(&self, me: usize, partner: Role) -> bool {
        self.pair.assign_partner(me, partner)
    }

    /// The role the control plane last gave it, and the epoch.
    pub(crate) fn assigned(&self) -> (Option<Role>, u64) {
        let st = self.pair.state();
        (st.assigned, st.epoch)
    }

    /// Its role now (down while restarting), whether it has its partner in sync (as primary),
    /// and its applied sequence number.
    pub(crate) fn state(&self, me: usize) -> (Role, bool, u64) {
        let st = self.pair.state();
        (st.roles[me], st.in_sync, self.pair.applied(me))
    }
}
