//! The log's errors: operational failures with their context (docs/style.md, Errors).

use std::path::PathBuf;

/// A log operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O call failed.
    #[error("WAL {op} failed on {path}: {source}")]
    Io {
        /// The operation: "open", "fallocate", "fdatasync", "mmap", …
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// Reading a file failed at a known place (a bad sector, say): recovery reads segments
    /// with `pread`, so that such a read is this error rather than a SIGBUS on the mapping.
    #[error("WAL read failed on {path} at byte {offset}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The byte offset where the failing read started.
        offset: u64,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A sync of a segment failed: its bytes from `offset` to `end_offset` (what this sync was
    /// to make durable there) may or may not be on disk. The log is poisoned: never retried
    /// (after a failed writeback the kernel may have dropped the pages it could not write).
    #[error(
        "WAL fdatasync failed on {path} (bytes {offset}..{end_offset} not confirmed durable; \
         the log is poisoned, never retried): {source}"
    )]
    Sync {
        /// The segment's file.
        path: PathBuf,
        /// Where the bytes the sync was to make durable start in it.
        offset: u64,
        /// Where they end.
        end_offset: u64,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The disk is full: the next segment (or a small file) could not be allocated. Nothing
    /// was lost, and the log is not poisoned.
    #[error("WAL out of disk space creating {path}: free space, or release a prefix")]
    NoSpace {
        /// The segment that could not be created.
        path: PathBuf,
    },
    /// A sync failed earlier: durability is lost, so the log accepts nothing more. Recover by
    /// reopening, which trusts only what is on disk (and peers for the rest).
    #[error("WAL poisoned by an earlier failed sync; reopen it to recover")]
    Poisoned,
    /// Bytes on disk that cannot be a valid log and are followed by valid records, so they are
    /// not a torn tail: refusing to guess.
    #[error("WAL corrupt in segment {segment} at byte {offset}: {reason}")]
    Corrupt {
        /// The segment's file.
        segment: PathBuf,
        /// The byte offset within it.
        offset: u64,
        /// What is wrong there.
        reason: &'static str,
    },
    /// A record larger than a segment can hold.
    #[error("record of {bytes} bytes exceeds the largest a {segment_bytes}-byte segment holds")]
    RecordTooLarge {
        /// The record's encoded size.
        bytes: usize,
        /// The segment size.
        segment_bytes: u64,
    },
    /// A position that does not hold a record, or lies outside the log.
    #[error("no record at position {0}")]
    BadPosition(u64),
    /// An option value that cannot work.
    #[error("bad WAL option: {0}")]
    BadOption(String),
}

/// Shorthand.
pub type Result<T> = std::result::Result<T, Error>;
