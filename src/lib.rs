//! # freqalloc
//!
//! A persistent, sharded allocator of a finite pool of identifiers ("frequencies"), built on Rust
//! analogues of Erlang's ETS (in-memory concurrent tables), DETS (disk tables), `gen_server` and
//! `supervisor`. It re-creates, as real software, the frequency server of week 3 of a course on
//! concurrent Erlang: sharding, replication, multicore, bulk storage and OTP.
//!
//! ## Code map
//!
//! | module | what it is | Erlang |
//! |---|---|---|
//! | [`table`] | the table contract shared by ETS and DETS: [`TableType`], [`ReadTable`], [`WriteTable`] | - |
//! | [`ets`] | in-memory concurrent tables (`dashmap` and an ordered backend) | `ets` |
//! | [`dets`] | `sled`-backed disk tables with the same API, durable on demand | `dets` |
//! | [`otp`] | generic server and supervisor on named OS threads | `gen_server`, `supervisor` |
//! | [`freq`] | the frequency allocator: pool, shards, router | the course's `frequency` |
//!
//! Dependencies point one way: `freq` uses `otp`, `ets`, `dets`; `dets` uses `ets`; `otp` knows no
//! tables.

pub mod codec;
pub mod dets;
pub mod ets;
pub mod freq;
pub mod otp;
pub mod table;

pub use table::{Counter, ReadTable, TableInfo, TableType, WriteTable};

/// The README's Rust examples, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
