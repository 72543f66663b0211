//! Quorum: a high-throughput batched replication engine.
//!
//! A cluster's log is split into shards, each a Multi-Paxos instance run by its own core. This
//! crate holds the protocol core ([`core`]), the deterministic simulator that proves it
//! ([`sim`]), and the state machine interface ([`machine`]). See `ARCHITECTURE.md`.

#[cfg(feature = "cli")]
pub mod bench;
pub mod client;
pub mod core;
pub mod machine;
pub mod runtime;
pub mod shard;
pub mod sim;
pub mod storage;
pub mod transport;
