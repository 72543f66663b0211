//! A replicated SQLite: SQL statements are the commands of a Quorum cluster, and every
//! replica applies them, in the log's order, to its own SQLite database (README.md).
//!
//! - [`command`]: a statement and its typed parameters as bytes in the log;
//! - [`reply`]: what applying one answers (rows changed, rows, or SQLite's error);
//! - [`determinism`]: what is refused because replicas could disagree, and how;
//! - [`machine`]: the state machine, one database per shard;
//! - [`client`]: executing and querying through a cluster.

pub mod client;
pub mod command;
pub mod determinism;
pub mod machine;
pub mod reply;

pub use command::{Statement, Value};
pub use machine::SqliteMachine;
pub use reply::{ErrorKind, Outcome, Reply, StatementError};
