//! A shard's generic server (`freq-shard-N`, or `freq-shard-N-a`/`-b` for a pair's replicas): a
//! [`ShardCore`] and, with replication, a [`Replication`] (its place in the pair and the link to
//! its partner). One server type for both: a replicated shard is a core plus a link.
//!
//! Architecture Invariant: a shard's tables are written only by its callbacks, one at a time under
//! the shard's state lock: on its own thread, or on a caller's thread for a direct call
//! ([`Context::allow_direct_calls`], on only for a single shard outside `Sync`, where group
//! commit needs the calls queued on the shard's thread). Other threads read them through
//! [`ShardShared`](super::ShardShared) (counts for routing, table readers for status), never by
//! messaging the shard.
//!
//! ## Group commit
//! In [`Durability::Sync`] a shard handles every request waiting in its mailbox, collecting the
//! changes in one batch and keeping each caller's reply handle. When the mailbox is momentarily
//! empty (`handle_drained`) it writes the batch to its disk table, flushes once, and only then
//! replies to everyone. Many clients share one `fsync`; none is acknowledged before its change is
//! on disk. In `Interval` the batch is written at the drain and the replies go out right after,
//! without waiting for a flush (the disk table's background timer flushes): a crash of the shard
//! alone loses nothing acknowledged, a crash of the process loses at most the last interval. In
//! `None` nothing is written. With replication the batch is shipped to the backup first (see
//! `replica.rs`).
//!
//! ## Restarts
//! A shard that panics or fails a disk write exits; its supervisor starts a new instance, whose
//! `init` reopens the disk table and rebuilds the pool from the allocations on disk. What was
//! applied in memory but not yet on disk is dropped with the old instance, and the callers waiting
//! for it get an error, so no one was told of a change that is gone.

use super::error::{FreqError, ShardError};
use super::pair::Role;
use super::protocol::{ClientCall, ClientReply, LinkCall, ShardInfo, ShardRequest, ShardResponse};
use super::replica::{ReplicaArgs, Replication};
use super::shard_core::{CoreArgs, ShardCore};
use super::store::Durability;
use crate::otp::{Context, GenServer, ReplyTo};

/// What a shard's server is started with (again on every restart).
#[derive(Clone)]
pub(crate) struct ShardArgs {
    pub core: CoreArgs,
    /// With replication: this replica's place in its pair.
    pub replica: Option<ReplicaArgs>,
}

/// A shard's server state: see the [module docs](self).
pub(crate) struct Shard {
    core: ShardCore,
    replication: Option<Replication>,
}

impl Shard {
    fn start(args: ShardArgs, ctx: &mut Context<Self>) -> Result<Self, FreqError> {
        let core = ShardCore::start(args.core)?;
        let durability = core.durability();
        let shard = match args.replica {
            None => {
                let mut shard = Shard {
                    core,
                    replication: None,
                };
                shard.schedule_lease_timer(ctx);
                shard
            }
            Some(replica) => {
                let (replication, role) = Replication::join(replica, &core);
                let mut shard = Shard {
                    core,
                    replication: Some(replication),
                };
                if role == Role::Primary {
                    shard.become_serving(ctx);
                    ctx.send_self(ShardInfo::CatchUp);
                }
                shard
            }
        };
        // Group commit needs the calls queued on the shard's thread, so that many share one
        // flush; otherwise a call is a few table operations, cheaper than the two thread hops
        // it would take to run it there. A replica's calls stay on its thread: they ship to
        // the partner at the drain.
        ctx.allow_direct_calls(shard.replication.is_none() && durability != Durability::Sync);
        Ok(shard)
    }

    fn label(&self) -> String {
        match &self.replication {
            Some(r) => r.label(&self.core),
            None => format!("shard {}", self.core.index()),
        }
    }

    fn schedule_lease_timer(&mut self, ctx: &mut Context<Self>) {
        if let Some(delay) = self.core.next_lease_timer() {
            ctx.send_after(delay, ShardInfo::LeaseTick);
        }
    }

    /// Starts serving as primary; `false` when the control plane (for a partner on another
    /// node) did not let it yet.
    fn become_serving(&mut self, ctx: &mut Context<Self>) -> bool {
        if let Some(r) = self.replication.as_mut() {
            if !r.become_serving(&self.core) {
                return false;
            }
        }
        self.schedule_lease_timer(ctx);
        true
    }

    /// Whether this instance serves clients: a single shard always; a replica while primary.
    fn is_primary(&self) -> bool {
        self.replication
            .as_ref()
            .is_none_or(|r| r.role() == Role::Primary)
    }

    /// Commits the batch (shipping it first with replication), then lets a primary catch its
    /// backup up.
    fn commit(&mut self, ctx: &mut Context<Self>) -> Result<(), FreqError> {
        let Some(r) = self.replication.as_mut() else {
            return self.core.commit(|_| Ok(()));
        };
        self.core.commit(|entries| r.ship(entries))?;
        if let Some(delay) = r.after_commit(&self.core) {
            ctx.send_after(delay, ShardInfo::CatchUp);
        }
        Ok(())
    }

    fn handle_client(
        &mut self,
        request: ClientCall,
        from: ReplyTo<ShardResponse>,
        ctx: &mut Context<Self>,
    ) -> Result<(), FreqError> {
        if let ClientCall::Inject(fault) = request {
            panic!("fault {fault:?} injected into {}", self.label());
        }
        if !self.is_primary() {
            from.reply(ShardResponse::Client(Err(ShardError::NotPrimary)));
            return Ok(());
        }
        if self.replication.as_ref().is_some_and(|r| !r.is_serving()) && !self.become_serving(ctx) {
            from.reply(ShardResponse::Client(Err(ShardError::NotPrimary)));
            return Ok(());
        }
        let result = match request {
            ClientCall::Reap => {
                let reaped = self.core.reap().map(ClientReply::Reaped);
                self.schedule_lease_timer(ctx);
                reaped.map_err(ShardError::from)
            }
            ClientCall::Check => {
                // Compare disk and memory with nothing in flight; what was held for the batch
                // is durable now, so it is answered at once.
                self.commit(ctx)?;
                let mut out = self.core.self_check(&self.label())?;
                if let Some(r) = &self.replication {
                    r.compare(&self.core, &mut out)?;
                }
                Ok(ClientReply::Checked(out))
            }
            client => {
                let (result, leased) = self.core.apply_client(client);
                if leased {
                    self.schedule_lease_timer(ctx);
                }
                result
            }
        };
        if self.replication.is_some() {
            self.core.publish_load();
        }
        self.core.respond(from, result);
        Ok(())
    }

    fn handle_link(
        &mut self,
        request: LinkCall,
        epoch: Option<u64>,
        from: ReplyTo<ShardResponse>,
    ) -> Result<(), FreqError> {
        let Some(r) = self.replication.as_mut() else {
            from.reply(ShardResponse::Link(Err(ShardError::NotBackup)));
            return Ok(());
        };
        match r.handle_link(&mut self.core, request, epoch) {
            Ok(reply) => {
                from.reply(ShardResponse::Link(Ok(reply)));
                Ok(())
            }
            // Refusals leave the replica as it was.
            Err(
                e @ (ShardError::NotBackup | ShardError::ReplicaGap { .. } | ShardError::Fenced(_)),
            ) => {
                from.reply(ShardResponse::Link(Err(e)));
                Ok(())
            }
            // Anything else (a disk failure, a change that does not apply) leaves it unsure of
            // its state: restart from disk and be caught up again.
            Err(e) => {
                let shard = self.core.index();
                let e = e.into_freq(shard);
                from.reply(ShardResponse::Link(Err(FreqError::ShardFailed {
                    shard,
                    reason: e.to_string(),
                }
                .into())));
                Err(e)
            }
        }
    }
}

impl Drop for Shard {
    fn drop(&mut self) {
        if let Some(r) = &self.replication {
            r.leave();
        }
    }
}

impl GenServer for Shard {
    type Args = ShardArgs;
    type Call = ShardRequest;
    type Reply = ShardResponse;
    type Cast = ();
    type Info = ShardInfo;
    type Error = ShardFailure;

    fn init(args: ShardArgs, ctx: &mut Context<Self>) -> Result<Self, ShardFailure> {
        let shared = std::sync::Arc::clone(&args.core.shared);
        Shard::start(args, ctx).map_err(|e| {
            shared.set_last_failure(e.to_string());
            ShardFailure::from(e)
        })
    }

    fn handle_call(
        &mut self,
        request: ShardRequest,
        from: ReplyTo<ShardResponse>,
        ctx: &mut Context<Self>,
    ) -> Result<(), ShardFailure> {
        match request {
            ShardRequest::Client(call) => self.handle_client(call, from, ctx),
            ShardRequest::Link(call) => self.handle_link(call, None, from),
            ShardRequest::RemoteLink { epoch, call } => self.handle_link(call, Some(epoch), from),
        }
        .map_err(ShardFailure::from)
    }

    fn handle_info(&mut self, msg: ShardInfo, ctx: &mut Context<Self>) -> Result<(), ShardFailure> {
        match msg {
            ShardInfo::LeaseTick => {
                self.core.lease_timer_fired();
                if self.is_primary() {
                    self.core.reap()?;
                    if self.replication.is_some() {
                        self.core.publish_load();
                    }
                    self.schedule_lease_timer(ctx);
                }
            }
            ShardInfo::CatchUp => {
                let Some(r) = self.replication.as_mut() else {
                    return Ok(());
                };
                r.catch_up_due();
                if r.role() == Role::Primary && !r.is_serving() {
                    let _ = self.become_serving(ctx);
                }
                // The catch-up itself runs in handle_drained, right after this.
            }
        }
        Ok(())
    }

    fn handle_drained(&mut self, ctx: &mut Context<Self>) -> Result<(), ShardFailure> {
        self.commit(ctx).map_err(ShardFailure::from)
    }

    fn terminate(&mut self, reason: &crate::otp::ExitReason) {
        if !reason.is_normal() {
            self.core.record_failure(reason.to_string());
        }
        self.core.close();
    }
}

/// The error a shard's callback exits with: its `FreqError`, carried inside the exit reason
/// ([`crate::otp::ExitReason::Error`]) to whoever asked for the start, which takes it back out
/// typed ([`ShardFailure::take`]). `FreqError` is not `Clone` (it holds I/O errors), and an exit
/// reason is shared, so the error is handed over once; later readers see its text.
#[derive(Debug)]
pub(crate) struct ShardFailure {
    text: String,
    error: parking_lot::Mutex<Option<FreqError>>,
}

impl ShardFailure {
    /// The error itself, the first time it is asked for.
    pub(crate) fn take(&self) -> Option<FreqError> {
        self.error.lock().take()
    }
}

impl From<FreqError> for ShardFailure {
    fn from(error: FreqError) -> Self {
        ShardFailure {
            text: error.to_string(),
            error: parking_lot::Mutex::new(Some(error)),
        }
    }
}

impl std::fmt::Display for ShardFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::error::Error for ShardFailure {}
