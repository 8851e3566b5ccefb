//! The shard endpoint: the one kind of shard the allocator talks to, whether the shard is a
//! single server or a primary/backup pair. The allocator routes, retries and reports over
//! [`ShardEndpoint`] and never asks which kind it has; `crate::dist` can implement the trait for
//! a shard on another node (the client protocol is plain data, see `protocol.rs`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::error::{FreqError, ShardError};
use super::pair::{PairShared, Role};
use super::protocol::{ClientCall, ClientReply, Fault, ShardRequest, ShardResponse};
use super::shard::Shard;
use super::status::ReplicaStatus;
use crate::otp::{OtpError, Server};

/// How a shard is doing, for [`Status`](super::Status).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Health {
    /// How many times it has been restarted (both replicas' restarts, with replication).
    pub restarts: u64,
    /// Whether an instance serves (with replication: whether a primary does).
    pub alive: bool,
    /// With replication, each replica's state (empty without).
    pub replicas: Vec<ReplicaStatus>,
    /// With replication, whether the backup has everything the primary has.
    pub in_sync: bool,
    /// In a cluster: the node serving the shard now, if the endpoint knows better than the
    /// layout (a replicated shard's primary moves on failover).
    pub node: Option<String>,
    /// In a cluster with replicas: the shard's epoch.
    pub epoch: Option<u64>,
}

/// One shard, as the allocator sees it.
///
/// A call's outer `Err` is a failure to deliver or to hear back ([`OtpError`]): the allocator
/// decides from it whether the call may have happened (see `allocator.rs`, `classify`). The
/// inner result is the shard's own answer.
pub(crate) trait ShardEndpoint: Send + Sync {
    /// Sends a client request to the shard (its primary, with replication) and waits up to
    /// `timeout` for the answer.
    fn call(
        &self,
        request: ClientCall,
        timeout: Duration,
    ) -> Result<Result<ClientReply, FreqError>, OtpError>;

    /// How many times the shard has been started (with replication: starts of both replicas,
    /// minus one).
    fn generation(&self) -> u64;

    /// Waits until the shard has been started `generation` times, up to `timeout`.
    fn wait_for_generation(&self, generation: u64, timeout: Duration) -> Result<u64, OtpError>;

    /// Waits until the shard serves (with replication: a primary with an in-sync backup).
    fn wait_ready(&self, timeout: Duration) -> Result<(), OtpError>;

    /// Waits, up to `timeout`, for a replicated shard whose replicas both run to be in sync
    /// (so that a check compares them); nothing to wait for otherwise.
    fn settle(&self, _timeout: Duration) {}

    /// How the shard is doing.
    fn health(&self) -> Health;

    /// Injects `fault` (the call itself returns the shard's failure).
    fn inject(&self, fault: Fault, timeout: Duration) -> Result<(), FreqError>;

    /// For a shard whose tables are not in this process (on another node): what `owner` holds
    /// on it, asked of the shard. `None` for a local shard (its tables are read directly).
    fn held(&self, _owner: &str, _timeout: Duration) -> Option<Result<Vec<u64>, FreqError>> {
        None
    }
}

/// The error of a call to shard `shard` that failed in transport.
pub(crate) fn shard_error(shard: usize, e: OtpError) -> FreqError {
    FreqError::ShardFailed {
        shard,
        reason: e.to_string(),
    }
}

/// A single shard: one server.
pub(crate) struct SingleShard {
    index: usize,
    server: Server<Shard>,
}

impl SingleShard {
    /// Shard `index`, served by `server`.
    pub(crate) fn new(index: usize, server: Server<Shard>) -> Self {
        SingleShard { index, server }
    }
}

impl ShardEndpoint for SingleShard {
    fn call(
        &self,
        request: ClientCall,
        timeout: Duration,
    ) -> Result<Result<ClientReply, FreqError>, OtpError> {
        self.server
            .call_timeout(ShardRequest::Client(request), timeout)
            .map(|r| r.into_client(self.index))
    }

    fn generation(&self) -> u64 {
        self.server.generation()
    }

    fn wait_for_generation(&self, generation: u64, timeout: Duration) -> Result<u64, OtpError> {
        self.server.wait_for_generation(generation, timeout)
    }

    fn wait_ready(&self, timeout: Duration) -> Result<(), OtpError> {
        let deadline = Instant::now() + timeout;
        while !self.server.is_alive() {
            let left = deadline.saturating_duration_since(Instant::now());
            self.server
                .wait_for_generation(self.server.generation() + 1, left)?;
        }
        Ok(())
    }

    fn health(&self) -> Health {
        Health {
            restarts: self.server.generation().saturating_sub(1),
            alive: self.server.is_alive(),
            replicas: Vec::new(),
            in_sync: false,
            node: None,
            epoch: None,
        }
    }

    fn inject(&self, fault: Fault, timeout: Duration) -> Result<(), FreqError> {
        match self.call(ClientCall::Inject(fault), timeout) {
            Ok(r) => r.map(|_| ()),
            Err(e) => Err(shard_error(self.index, e)),
        }
    }
}

/// A replicated shard: two replicas' servers and their pair state.
pub(crate) struct ReplicatedShard {
    index: usize,
    servers: [Server<Shard>; 2],
    pair: Arc<PairShared>,
    /// Set when the allocator stops: calls then fail at once instead of waiting for a primary.
    stopped: Arc<AtomicBool>,
}

impl ReplicatedShard {
    /// Shard `index`, served by the replicas behind `servers`.
    pub(crate) fn new(
        index: usize,
        servers: [Server<Shard>; 2],
        pair: Arc<PairShared>,
        stopped: Arc<AtomicBool>,
    ) -> Self {
        ReplicatedShard {
            index,
            servers,
            pair,
            stopped,
        }
    }

    fn stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    /// Sends `request` to the primary. A call that never reached a primary (none serving, or the
    /// roles changed under it) waits for the roles to change and is sent again, up to
    /// `timeout`; a call in flight when the primary fails is not retried.
    fn call_primary(
        &self,
        request: ClientCall,
        timeout: Duration,
    ) -> Result<Result<ClientReply, FreqError>, OtpError> {
        let deadline = Instant::now() + timeout;
        loop {
            let st = self.pair.state();
            if st.roles[st.primary] == Role::Primary {
                let server = &self.servers[st.primary];
                let generation = server.generation();
                let left = deadline.saturating_duration_since(Instant::now());
                match server.call_timeout(ShardRequest::Client(request.clone()), left) {
                    Ok(ShardResponse::Client(Err(ShardError::NotPrimary))) => {}
                    Ok(response) => return Ok(response.into_client(self.index)),
                    // A primary still in `init` (its role is set before it is installed), or
                    // one that just died: wait for its next start or a role change.
                    Err(OtpError::NoProc) => {
                        if self.stopped() {
                            return Err(OtpError::NoProc);
                        }
                        if self.pair.state().version == st.version {
                            let left = deadline.saturating_duration_since(Instant::now());
                            server.wait_for_generation(generation + 1, left)?;
                        }
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
            if self.stopped() {
                return Err(OtpError::NoProc);
            }
            if !self.pair.wait_change(st.version, deadline) {
                return Err(OtpError::Timeout);
            }
        }
    }
}

impl ShardEndpoint for ReplicatedShard {
    fn call(
        &self,
        request: ClientCall,
        timeout: Duration,
    ) -> Result<Result<ClientReply, FreqError>, OtpError> {
        self.call_primary(request, timeout)
    }

    fn generation(&self) -> u64 {
        (self.servers[0].generation() + self.servers[1].generation()).saturating_sub(1)
    }

    fn wait_for_generation(&self, generation: u64, timeout: Duration) -> Result<u64, OtpError> {
        let deadline = Instant::now() + timeout;
        loop {
            // Every start changes the pair's roles, so its version is the clock here.
            let version = self.pair.state().version;
            let g = self.generation();
            if g >= generation {
                return Ok(g);
            }
            if !self.pair.wait_change(version, deadline) {
                return Err(OtpError::Timeout);
            }
        }
    }

    fn wait_ready(&self, timeout: Duration) -> Result<(), OtpError> {
        let deadline = Instant::now() + timeout;
        loop {
            let st = self.pair.state();
            if st.in_sync && st.roles[st.primary] == Role::Primary {
                return Ok(());
            }
            if !self.pair.wait_change(st.version, deadline) {
                return Err(OtpError::Timeout);
            }
        }
    }

    fn settle(&self, timeout: Duration) {
        if self.pair.state().roles.iter().all(|r| *r != Role::Down) {
            let _ = self.wait_ready(timeout);
        }
    }

    fn health(&self) -> Health {
        let st = self.pair.state();
        let applied = [self.pair.applied(0), self.pair.applied(1)];
        let replicas: Vec<ReplicaStatus> = (0..2)
            .map(|r| ReplicaStatus {
                replica: r,
                role: st.roles[r],
                applied: applied[r],
                lag: applied[1 - r].saturating_sub(applied[r]),
                // A replica rebuilt from its partner at open counts as restarted.
                restarts: self.servers[r].generation().saturating_sub(1) + self.pair.rebuilt(r),
                node: None,
            })
            .collect();
        Health {
            restarts: replicas.iter().map(|r| r.restarts).sum(),
            alive: st.roles[st.primary] == Role::Primary,
            replicas,
            in_sync: st.in_sync,
            node: None,
            epoch: None,
        }
    }

    fn inject(&self, fault: Fault, timeout: Duration) -> Result<(), FreqError> {
        if fault != Fault::PanicBackup {
            return match self.call_primary(ClientCall::Inject(fault), timeout) {
                Ok(r) => r.map(|_| ()),
                Err(e) => Err(shard_error(self.index, e)),
            };
        }
        let shard = self.index;
        let st = self.pair.state();
        let backup = 1 - st.primary;
        if st.roles[backup] != Role::Backup {
            return Err(FreqError::NoBackup { shard });
        }
        let call = ShardRequest::Client(ClientCall::Inject(fault));
        match self.servers[backup].call_timeout(call, timeout) {
            Ok(r) => r.into_client(shard).map(|_| ()),
            // Still starting (its role is set before it is installed): nothing happened.
            Err(OtpError::NoProc) => Err(FreqError::NoBackup { shard }),
            Err(e) => Err(shard_error(shard, e)),
        }
    }
}
