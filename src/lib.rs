//! Quorum: a high-throughput batched replication engine.
//!
//! A program hands Quorum commands and gets them back durably replicated, in one agreed order,
//! on every replica. A cluster's log is split into shards, each a Multi-Paxos instance run by
//! its own core; each shard applies its commands to a [`StateMachine`] the program supplies
//! (or to the built-in [`KvStore`]).
//!
//! - Embed a node: [`Node::builder`] with a [`NodeConfig`], then
//!   [`NodeBuilder::state_machine`] and [`NodeStart::start`] (docs/embedding.md).
//! - Talk to a cluster: [`client::Client`] (proposals, queries, the KV commands, tails of the
//!   committed log, snapshots).
//! - Serve HTTP/JSON and the Redis protocol beside a node (feature `front`):
//!   `front::FrontEnds::start` (docs/http.md, docs/redis.md).
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use quorum::{Node, NodeConfig, NodeSettings};
//!
//! let config = NodeConfig::resolve(NodeSettings {
//!     id: Some(1),
//!     listen: Some("127.0.0.1:7000".into()),
//!     peers: Some("1=127.0.0.1:7000".into()),
//!     data_dir: Some("/tmp/quorum-1".into()),
//!     ..NodeSettings::default()
//! })?;
//! let node = Node::start(config)?; // the built-in key-value store
//! let client = node.client()?;
//! client.put(b"greeting", b"hello")?;
//! assert_eq!(client.get(b"greeting")?, Some(b"hello".to_vec()));
//! node.stop();
//! node.wait()?;
//! # Ok(())
//! # }
//! ```
//!
//! The modules marked hidden below are the project's own way in for its tests, benches, fuzz
//! targets, simulator and binary. They are not API: no stability is promised for them, and
//! `cargo doc` does not show them. ARCHITECTURE.md maps them, lowest layer first.

// The layers, lowest first (ARCHITECTURE.md, Layout; tests/tidy.rs keeps every import pointing
// down this list).
#[cfg(feature = "cli")]
#[doc(hidden)]
pub mod bench;
pub mod client;
#[doc(hidden)]
pub mod core;
#[cfg(feature = "front")]
pub mod front;
#[doc(hidden)]
pub mod machine;
#[doc(hidden)]
pub mod runtime;
#[doc(hidden)]
pub mod shard;
#[doc(hidden)]
pub mod sim;
#[doc(hidden)]
pub mod storage;
#[doc(hidden)]
pub mod transport;

pub use crate::core::{ClusterId, NodeId, RequestId, Slot};
pub use crate::machine::{KvCommand, KvReply, KvStore, StateMachine, StateSummary, shard_for_key};
pub use crate::runtime::config::{
    ApplyMode, Durability, NodeConfig, NodeConfigError, NodeSettings,
};
pub use crate::runtime::metrics::{NodeProbe, NotReady};
pub use crate::runtime::{Hosted, Node, NodeBuilder, NodeError, NodeStart};
pub use crate::storage::snapshot::{
    ImageReader, SnapshotError, SnapshotHeader, read_snapshot, write_field, write_u64,
};
