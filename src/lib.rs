//! # freqalloc
//!
//! A persistent, sharded allocator of a finite pool of identifiers ("frequencies"), built on Rust
//! analogues of Erlang's ETS (in-memory concurrent tables), DETS (disk tables), `gen_server` and
//! `supervisor`. It re-creates, as real software, the frequency server of week 3 of a course on
//! concurrent Erlang: sharding, replication, multicore, bulk storage, OTP, and distribution: a
//! freqalloc node speaks the Erlang distribution protocol, so BEAM processes call it with the
//! course's own messages.
//!
//! ## A tour in three steps
//!
//! Tables first, as in the course's "bulk storage" step: an ETS-like table in memory, a DETS-like
//! table on disk, the same operations on both.
//!
//! ```
//! use freqalloc::dets::{DiskTable, FlushPolicy, OpenOptions};
//! use freqalloc::ets::Table;
//! use freqalloc::{ReadTable, TableType, WriteTable};
//!
//! // In memory: a protected ordered_set, written by its owner, read by anyone.
//! let mut free: Table<u64, u64> = Table::new(TableType::OrderedSet);
//! free.insert_many([(20, 25), (10, 15)]);
//! assert_eq!(free.first(), Some(10));
//!
//! // On disk: the same contract, durable on every write.
//! let dir = tempfile::tempdir()?;
//! let opts = OpenOptions::new(TableType::Set).flush_policy(FlushPolicy::EveryWrite);
//! let mut held: DiskTable<u64, String> = DiskTable::open(dir.path(), opts)?;
//! held.insert(10, "radio-7".to_string())?;
//! assert_eq!(held.lookup(&10)?, vec!["radio-7".to_string()]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Then the frequency server itself: shards on their own threads under a supervisor, their
//! state in those tables, a front end with the course's API.
//!
//! ```
//! use freqalloc::freq::{parse_pool, Allocator, Durability, Layout, Options, StoreConfig, Routing};
//!
//! let dir = tempfile::tempdir()?;
//! let config = StoreConfig {
//!     layout: Layout::one_shard_per_range(&parse_pool("10-15,20-25")?)?,
//!     strategy: Routing::MostFree,
//!     durability: Durability::Sync, // acknowledged only once on disk (group commit)
//!     client_limit: None,
//!     replicas: 1,          // 2: a primary/backup pair per shard
//!     cluster: None,
//! };
//! Allocator::init(dir.path(), config, false)?;
//! let alloc = Allocator::open(dir.path(), Options::default())?;
//! let f = alloc.allocate("radio-7")?;
//! alloc.stop();
//! drop(alloc);
//!
//! // Reopened: every shard rebuilds its tables from disk.
//! let alloc = Allocator::open(dir.path(), Options::default())?;
//! assert_eq!(alloc.held_by("radio-7")?, vec![f]);
//! assert!(alloc.check()?.is_empty());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## Code map
//!
//! | module | what it is | Erlang |
//! |---|---|---|
//! | [`table`] | the table contract shared by ETS and DETS: [`TableType`], [`ReadTable`], [`WriteTable`] | - |
//! | [`control`] | the cluster's control plane: shard primaries and epochs in a Raft log ([`ControlNode`]) | - |
//! | [`codec`] | value encoding (serde + bincode 2.0.1): the one file that knows bincode | `term_to_binary` |
//! | [`ets`] | in-memory concurrent tables (the hash types on `dashmap`, `ordered_set` on a `BTreeMap`) | `ets` |
//! | [`dets`] | `sled`-backed disk tables with the same API, durable on demand | `dets` |
//! | [`otp`] | generic server and supervisor on named OS threads | `gen_server`, `supervisor` |
//! | [`freq`] | the frequency allocator: layout, pool, shards, router, front end | the course's `frequency` |
//! | [`dist`] | Erlang distribution: a hidden node (epmd, handshake, framing, monitors), the `frequency` service, [`dist::RemoteAllocator`], a node's part of a cluster ([`dist::ClusterMember`]: its shards, replicas of its neighbours' shards, failover driven by the control log) | `net_kernel`, `dist_util`, C nodes |
//!
//! Dependencies point one way: `dist` uses `freq` and `control`; `control` uses `codec` and
//! sled only; `freq` uses `otp`, `ets`, `dets` (and never
//! `dist`); `dets` uses `ets` (`to_ets`, `from_ets`); `ets` and `dets` share `table` and `codec`;
//! `otp` knows no tables.

pub mod codec;
pub mod control;
pub mod dets;
pub mod dist;
pub mod ets;
pub mod freq;
pub mod io_words;
pub mod otp;
pub mod table;

pub use control::ControlNode;
pub use table::{Counter, ReadTable, TableInfo, TableType, WriteTable};

/// The README's Rust examples, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
