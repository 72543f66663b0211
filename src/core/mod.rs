//! The Multi-Paxos core: one shard replica as a pure state machine.
//!
//! Nothing here does I/O, reads a clock, spawns a thread or asks the OS for randomness
//! (`tests/tidy.rs` keeps it so). Inputs are method calls on [`Replica`]: `on_message`,
//! `on_tick`, `on_persisted`, `propose`, `flush`. Outputs are [`Action`]s the runtime drains:
//! sends, persists that carry the replies they must precede, and commits in slot order. The
//! protocol and its numbered invariants are in `docs/protocol.md`.

pub mod batch;
pub mod config;
pub mod election;
pub mod feed;
pub mod log;
pub mod message;
pub mod quorum;
pub mod read_index;
pub mod repair;
pub mod replica;
pub mod types;

pub use batch::{BatchBuilder, BatchReader, MalformedBatch, Value, check_batch};
pub use config::{Config, ConfigError};
pub use feed::Feed;
pub use message::{Action, Envelope, InvalidMessage, Message, Record, SlotRun};
pub use quorum::{VoteSet, Voters};
pub use read_index::{Consistency, ReadOptions, ReadPath, Staleness, StalenessBound};
pub use replica::{ProposeError, RefusedMessage, Replica, RoleKind, TransferError};
pub use types::{Ballot, ClusterId, NodeId, PersistSeq, ROUND_MAX, RequestId, SLOT_MAX, Slot};
