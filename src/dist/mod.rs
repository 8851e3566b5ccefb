//! Erlang distribution: freqalloc as a (hidden) node of a real Erlang cluster.
//!
//! - [`Node`]: epmd registration, handshakes (via erl_dist), our own framing (buffered reads,
//!   one outbox per connection sent in one non-blocking `send` per batch by the thread that
//!   queued it or by the reader once its input is drained, `TCP_NODELAY`), one connection per
//!   peer, ticks, registered names, monitors, `net_kernel`'s `is_auth`.
//! - [`FrequencyService`]: the `frequency` name, answering the course's raw messages and
//!   `gen_server:call`s over a [`crate::freq::Allocator`], pids as owners, released on exit.
//! - [`RemoteAllocator`]: the allocator's operations from Rust over distribution.
//!
//! `otp`, `ets`, `dets` and `freq` never import this module. See the README's "Running a node"
//! and <https://www.erlang.org/doc/apps/erts/erl_dist_protocol.html>.
//!
//! ```no_run
//! use freqalloc::dist::RemoteAllocator;
//! let remote = RemoteAllocator::connect("freq@localhost", "secret")?;
//! let f = remote.allocate("radio-7")?;
//! remote.deallocate(f, "radio-7")?;
//! # Ok::<(), freqalloc::dist::DistError>(())
//! ```

mod blocking;
mod client;
mod cluster;
mod cookie;
pub mod epmd;
mod error;
pub mod frame;
mod node;
mod replica_wire;
mod service;
mod shard_wire;
pub mod term;

pub use client::{ClientOptions, PendingCall, RemoteAllocator, RemoteShard, RemoteStatus};
pub use cluster::{ClusterMember, LOADS_INTERVAL};
pub use cookie::resolve_cookie;
pub use eetf::{Pid, Reference, Term};
pub use error::DistError;
pub use node::{split_name, Delivery, Handler, Node, NodeConfig, NodeHandle};
pub use service::{
    error_atom, parse_pid_owner, pid_owner, FrequencyService, ServiceOptions, PID_OWNER_PREFIX,
    SERVICE_NAME,
};
pub use shard_wire::SHARD_SERVICE;
