//! The frequency allocator: the course's frequency server, sharded, persistent and supervised.
//!
//! The course's server holds a list of free frequencies and a list of allocations, and answers
//! `allocate` and `deallocate`. Here:
//!
//! - **sharding**: the pool is split over shards ([`Layout`]); each shard is a generic server
//!   ([`crate::otp`]) on its own thread, whose callbacks are the only writers of its tables (outside
//!   `Sync` durability they may run on the caller's thread: direct calls, see
//!   [`crate::otp::Context::allow_direct_calls`]);
//! - **routing**: [`Allocator`] decides in the caller's thread which shard serves an allocation
//!   ([`Routing`]), from counts every shard publishes, so no router process sits on every request;
//!   deallocation goes straight to the owning shard;
//! - **bulk storage**: a shard's free ranges, allocations and owner index live in in-memory tables
//!   ([`crate::ets`]) any thread may read; allocations are mirrored to a disk table
//!   ([`crate::dets`]) and the rest is rebuilt from them at open;
//! - **durability**: [`Durability::Sync`] acknowledges only what is on disk, with group commit;
//!   `Interval` and `None` trade that for speed;
//! - **replication** (`replicas: 2`): each shard is a primary/backup pair that acknowledges a
//!   change only once both replicas applied it, and fails over to the backup. Both replicas run
//!   the same shard core as a single shard; a replica adds its place in the pair and a link to
//!   its partner (the crate's `ReplicaLink` trait), and the allocator sees every shard, single or
//!   pair, through one endpoint trait;
//! - **supervision**: shards run under a one-for-one supervisor; a shard that crashes is restarted
//!   and rebuilds its tables from disk. A call in flight when its shard crashes gets
//!   [`FreqError::ShardFailed`] and is *not* retried (an allocation might otherwise be made twice);
//!   a call that finds no running instance waits for the restart and is sent once more
//!   (deallocations, releases, checks) or goes to another shard (allocations).
//!
//! ```
//! use freqalloc::freq::{Allocator, Layout, Routing, parse_pool};
//!
//! let layout = Layout::one_shard_per_range(&parse_pool("10-15,20-25")?)?;
//! let alloc = Allocator::in_memory(layout, Routing::RoundRobin, None)?;
//! let radio = alloc.client("radio-7")?;
//! let a = radio.allocate()?;
//! let b = radio.allocate()?;
//! assert_eq!((a, b), (10, 20)); // alternating shards, lowest free first
//! drop(radio); // like a linked process dying: its frequencies are released
//! assert!(alloc.held_by("radio-7")?.is_empty());
//! # Ok::<(), freqalloc::freq::FreqError>(())
//! ```

mod allocator;
mod clock;
mod cluster;
mod endpoint;
mod error;
mod layout;
mod link;
mod member;
mod pair;
mod pool;
mod protocol;
mod range;
mod replica;
mod router;
mod shard;
mod shard_core;
mod status;
mod store;

pub use allocator::{check_client_name, Allocator, Client, ConfigChange, InitOutcome, Options};
pub use clock::{LeaseClock, ManualLeaseClock, SystemLeaseClock};
pub use cluster::{ClusterLayout, MAX_NODES};
pub(crate) use endpoint::{Health, ShardEndpoint};
pub(crate) use error::ShardError;
pub use error::{FreqError, LayoutError, StoreError};
pub use layout::{coalesce, parse_pool, Layout, DEFAULT_MAX_SHARDS, MAX_SHARDS};
pub(crate) use member::{LocalReplica, Membership, ReplicaHandle, ReplicaWiring};
pub use pair::Role;
pub use pool::{Allocation, Change, Load, Pool, PoolReaders, Violation};
pub(crate) use protocol::{ClientCall, ClientReply};
pub use protocol::{Fault, LogEntry, ReplicaDump, Snapshot};
pub(crate) use protocol::{LinkCall, LinkReply};
pub use range::FreqRange;
pub use replica::DEFAULT_LOG_ENTRIES;
pub(crate) use replica::{PairControl, ReplicaLink};
pub use router::{choose, fallback_order, hash_name, Pick, Routing};
pub use shard_core::{ShardShared, DISK_VERSION};
pub use status::{ReplicaStatus, ShardStatus, Status};
pub use store::{
    meta_path, read_config, replica_dir, shard_dir, write_config, Durability, StoreConfig,
    META_FILE,
};
