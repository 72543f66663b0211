//! Quorum's write-ahead log: memory-mapped, preallocated segments of checksummed records, group
//! commit with the flush off the appending thread, and recovery that cuts a torn tail but never
//! silently drops what may have been acknowledged. The format is in `docs/wal-format.md`.
//!
//! The crate knows no runtime: it takes bytes, returns positions, and hands the blocking flush
//! back to the caller to run where it likes.

pub mod backend;
pub mod error;
pub mod format;
pub mod log;
pub mod mmap;
pub mod sim;
pub mod sync_thread;

pub use backend::{Backend, FileRange, FileSink, Segment, Syncer};
pub use error::{Error, Result};
pub use format::Record;
pub use log::{
    Damage, GENERATION_LIMIT, Iter, METADATA_BYTES_MAX, METADATA_FILE, NO_SPACE_RETRY, Options,
    PendingSync, REPAIR_FILE, Recovery, Space, SyncOutcome, Synced, Wal,
};
pub use mmap::{MmapBackend, MmapFileSink};
pub use sim::{SimBackend, SimFileSink, Tear};
pub use sync_thread::SyncThread;
