//! Quorum's write-ahead log: memory-mapped, preallocated segments with checksummed records and
//! group commit. See `docs/wal-format.md` (issue: the WAL) for the format once it lands.
//!
//! This crate is deliberately empty until the WAL issue is built; the workspace layout is fixed
//! now so that the core and the runtime can depend on it by name.
