//! Quorum: a high-throughput batched replication engine.
//!
//! A cluster's log is split into shards, each a Multi-Paxos instance run by its own core. This
//! crate holds the protocol core ([`core`]), the deterministic simulator that proves it
//! ([`sim`]), and the state machine interface ([`state_machine`]). See `ARCHITECTURE.md`.

#[cfg(feature = "cli")]
pub mod bench;
pub mod client;
pub mod core;
pub mod log_record;
pub mod merge;
pub mod node_config;
pub mod runtime;
pub mod shard;
pub mod sim;
pub mod snapshot;
pub mod state_machine;
pub mod total_order;
pub mod transport;
