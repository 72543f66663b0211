//! Where segments live. The log's logic (format, recovery, group commit) is written once over
//! this trait; [`crate::mmap::MmapBackend`] puts segments in memory-mapped files and
//! [`crate::sim::SimBackend`] in memory, with crashes, torn writes, bit flips and failing syncs.
//!
//! # Correctness
//! An implementation must keep these promises, which recovery relies on:
//! - `create` returns a segment whose bytes are all zero but for the header given, and which
//!   survives a crash once `create` returns (file, size and directory entry durable). `reuse`
//!   returns one with the header given and any bytes after it, as durable.
//! - A spare is never listed as a segment, whatever the moment of a crash.
//! - A [`Syncer`] makes durable every write made to its segment before [`Segment::syncer`] was
//!   called, or fails; a failure says nothing about which of those writes survive.
//! - `write_file_atomic` leaves either the old or the new content after a crash, never a mix,
//!   and so does a [`FileSink`] (the old content until [`FileSink::finish`] returns).
//! - After `drop_cache`, `open` reads no byte of a write whose writeback failed.

use std::path::PathBuf;

use crate::error::Result;

/// One segment's bytes, mapped or in memory.
pub trait Segment: Send {
    /// The whole segment.
    fn bytes(&self) -> &[u8];
    /// `len` bytes at `offset`, to write into; [`Segment::wrote`] must follow.
    fn bytes_mut(&mut self, offset: usize, len: usize) -> &mut [u8];
    /// The bytes at `offset..offset + len` were written (a simulated disk records the write).
    fn wrote(&mut self, offset: usize, len: usize);
    /// Writes `parts`, one after the other, at `offset`: [`Segment::bytes_mut`], a copy of
    /// each and [`Segment::wrote`], unless the backend can write them from where they are.
    fn write_parts(&mut self, offset: usize, parts: &[&[u8]]) {
        let len = parts.iter().map(|part| part.len()).sum();
        let mut out = self.bytes_mut(offset, len);
        for part in parts {
            let (into, rest) = out.split_at_mut(part.len());
            into.copy_from_slice(part);
            out = rest;
        }
        self.wrote(offset, len);
    }
    /// A handle that makes every write so far durable, runnable on any thread.
    fn syncer(&mut self) -> Box<dyn Syncer>;
    /// The log no longer appends to this segment: it may give back the memory that caches
    /// it (reads still work, only slower).
    fn retire(&mut self) {}
    /// The bytes below `offset` are durable and were probably read already: the memory that
    /// maps them may be given back (reads still work, faulting them in again).
    fn unmap_below(&mut self, _offset: usize) {}
    /// `len` bytes at `offset` as a reference-counted buffer that shares the segment's memory
    /// (no copy), if the backend can; it stays valid after the segment is dropped.
    fn shared(&self, _offset: usize, _len: usize) -> Option<bytes::Bytes> {
        None
    }
}

/// Makes a set of writes durable. Runs off the appending thread (docs/wal-format.md).
pub trait Syncer: Send {
    /// Blocks until the writes are durable.
    ///
    /// # Errors
    /// The OS's error; the log then poisons itself and never retries (the fsyncgate lesson).
    fn sync(self: Box<Self>) -> std::io::Result<()>;
}

/// A file written in one pass under a temporary name ([`Backend::create_file`]: a snapshot of
/// any size, never held in memory whole), then put in place of its name, atomically and
/// durably, by [`FileSink::finish`]. Dropped unfinished, it is gone (its temporary deleted); a
/// crash before `finish` returns leaves the file it was to replace, or none.
pub trait FileSink: std::io::Write + Send {
    /// Reads it back ([`FileSink::read_back`]).
    type Reader: std::io::Read + Send + 'static;
    /// Writes `bytes` at `offset`, over bytes already written (a header completed once the
    /// body is written); the next [`std::io::Write::write`] still appends.
    ///
    /// # Errors
    /// The OS's error.
    fn write_at(&mut self, offset: u64, bytes: &[u8]) -> std::io::Result<()>;
    /// The bytes written so far, from the first: a peer's snapshot is restored from what
    /// arrived before it replaces the one in place.
    ///
    /// # Errors
    /// The failing I/O call.
    fn read_back(&mut self) -> Result<Self::Reader>;
    /// Bytes appended so far.
    fn written_bytes(&self) -> u64;
    /// The typed error of the first write that failed (`NoSpace` for a full disk), if one did:
    /// a write returns only the OS's error.
    fn failure(&mut self) -> Option<crate::Error>;
    /// Makes it durable and puts it in place of its name: written back a few MiB at a time
    /// (one flush of a large file would queue it all at the disk ahead of the log's syncs),
    /// fsynced, renamed over the name, the directory fsynced. Blocks: run it off the thread
    /// that serves. A write that failed fails it (nothing is renamed).
    ///
    /// # Errors
    /// The failing I/O call, or the write that failed; the old file then stands.
    fn finish(self) -> Result<()>
    where
        Self: Sized;
}

/// A directory of segments and small files.
pub trait Backend: Send + Clone + 'static {
    /// Its segments.
    type Segment: Segment + 'static;
    /// A file being written in one pass ([`Backend::create_file`]).
    type FileSink: FileSink<Reader = Self::FileReader> + 'static;
    /// A file read from its start ([`Backend::open_file`]).
    type FileReader: std::io::Read + Send + 'static;
    /// Segment numbers present, in any order.
    ///
    /// # Errors
    /// The directory cannot be read.
    fn list(&self) -> Result<Vec<u64>>;
    /// Creates segment `number` of `bytes` bytes, zero but for `header` at its start, durable.
    ///
    /// # Errors
    /// `NoSpace` if the disk is full, or the failing I/O call.
    fn create(&self, number: u64, bytes: u64, header: &[u8]) -> Result<Self::Segment>;
    /// Opens an existing segment.
    ///
    /// # Errors
    /// The failing I/O call.
    fn open(&self, number: u64) -> Result<Self::Segment>;
    /// Drops segment `number`'s clean pages from every cache (the OS page cache too), so that
    /// an [`Backend::open`] after it reads what the disk holds, plus the writes still waiting
    /// to be written back (dirty pages are kept: they will still be written, and a sync
    /// reports it if they are not). Recovery calls it for every segment before opening it.
    ///
    /// Why: after a failed writeback, Linux marks the pages it could not write clean and keeps
    /// them. A process restarted then reads them as if they were on the disk, and its first
    /// sync, with nothing dirty to write, succeeds: bytes that were never written would look
    /// durable (docs/wal-format.md, "Recovery reads the disk, not the page cache").
    ///
    /// Unlike [`Backend::release_cache`], not advice: it must not return `Ok` unless the
    /// drop was done.
    ///
    /// # Errors
    /// The failing I/O call.
    fn drop_cache(&self, number: u64) -> Result<()>;
    /// Deletes a segment (durably).
    ///
    /// # Errors
    /// The failing I/O call.
    fn remove(&self, number: u64) -> Result<()>;
    /// Takes segment `number` (`segment`, which it drops) out of the log but keeps its file as
    /// a spare for a later segment, durably and so that [`Backend::list`] no longer names it.
    /// By default, deletes it.
    ///
    /// # Errors
    /// The failing I/O call.
    fn set_aside(&self, number: u64, segment: Self::Segment) -> Result<()> {
        drop(segment);
        self.remove(number)
    }
    /// True if spare `spare` may be reused now: nothing still reads its old bytes (buffers
    /// shared from its mapping, [`Segment::shared`], may outlive the segment).
    fn spare_ready(&self, _spare: u64) -> bool {
        true
    }
    /// The spares [`Backend::set_aside`] kept, by their old numbers.
    ///
    /// # Errors
    /// The directory cannot be read.
    fn spares(&self) -> Result<Vec<u64>> {
        Ok(Vec::new())
    }
    /// Makes spare `spare` segment `number`: `header` at its start, durable, then renamed into
    /// place (durably). Unlike [`Backend::create`], its other bytes are whatever it held: the
    /// records of its old number, whose checksums fail under the new one (docs/wal-format.md).
    /// No zeros are written, so this costs a header's write instead of the segment's.
    ///
    /// # Errors
    /// The failing I/O call; the spare may then be gone.
    fn reuse(&self, spare: u64, number: u64, bytes: u64, header: &[u8]) -> Result<Self::Segment> {
        self.remove_spare(spare)?;
        self.create(number, bytes, header)
    }
    /// Deletes a spare (durably).
    ///
    /// # Errors
    /// The failing I/O call.
    fn remove_spare(&self, _spare: u64) -> Result<()> {
        Ok(())
    }
    /// Segment `number` is sealed and durable, and not expected to be read again soon: drop
    /// its bytes from every cache (the OS page cache too), so that the memory serves the next
    /// segment. Reads still work, from the disk. Advice: it may do nothing. May block.
    fn release_cache(&self, _number: u64) {}
    /// Deletes what an interrupted creation or replacement left: files that are not yet a
    /// segment or a small file, never read, whose space would otherwise never come back
    /// (`{number}.wal.new` is a whole segment). Called by [`crate::Wal::open`] before
    /// anything else, while nothing writes to the directory. By default, nothing.
    ///
    /// # Errors
    /// The failing I/O call.
    fn remove_leftovers(&self) -> Result<()> {
        Ok(())
    }
    /// The path of a segment, for messages.
    fn path(&self, number: u64) -> PathBuf;
    /// Reads a small file, `None` if absent.
    ///
    /// # Errors
    /// The failing I/O call.
    fn read_file(&self, name: &str) -> Result<Option<Vec<u8>>>;
    /// The first `head` bytes of a file written by [`Backend::write_file_atomic`], the bytes
    /// of `offset..offset + len` (fewer past its end) and its length, all from one version of
    /// it (it may be replaced meanwhile); `None` if absent. By default, reads it whole.
    ///
    /// # Errors
    /// The failing I/O call.
    fn read_file_range(
        &self,
        name: &str,
        head: usize,
        offset: u64,
        len: usize,
    ) -> Result<Option<FileRange>> {
        Ok(self.read_file(name)?.map(|bytes| FileRange::of(&bytes, head, offset, len)))
    }
    /// Replaces a small file atomically and durably.
    ///
    /// # Errors
    /// The failing I/O call.
    fn write_file_atomic(&self, name: &str, bytes: &[u8]) -> Result<()>;
    /// Starts writing a file that will replace `name` (any size: it is streamed to the disk,
    /// never held whole), under a temporary name of its own (ending in `.new`, so that
    /// [`Backend::remove_leftovers`] deletes what a crash left); see [`FileSink`]. Several may
    /// be written at once, for the same name too: the last to finish stands.
    ///
    /// # Errors
    /// The failing I/O call (`NoSpace` for a full disk).
    fn create_file(&self, name: &str) -> Result<Self::FileSink>;
    /// A file read from its start, streamed (no size limit), `None` if absent. It reads one
    /// version: a replacement meanwhile changes nothing it reads.
    ///
    /// # Errors
    /// The failing I/O call.
    fn open_file(&self, name: &str) -> Result<Option<Self::FileReader>>;
    /// Deletes a small file durably; nothing if it is absent.
    ///
    /// # Errors
    /// The failing I/O call.
    fn remove_file(&self, name: &str) -> Result<()>;
}

/// Parts of one version of a file ([`Backend::read_file_range`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileRange {
    /// Its first bytes (fewer if it is shorter).
    pub head: Vec<u8>,
    /// The bytes asked for (fewer past its end).
    pub bytes: Vec<u8>,
    /// Its length.
    pub total: u64,
}

impl FileRange {
    /// The parts of `file`.
    #[must_use]
    pub fn of(file: &[u8], head: usize, offset: u64, len: usize) -> FileRange {
        let start = usize::try_from(offset).unwrap_or(usize::MAX).min(file.len());
        let end = start.saturating_add(len).min(file.len());
        FileRange {
            head: file[..head.min(file.len())].to_vec(),
            bytes: file[start..end].to_vec(),
            total: file.len() as u64,
        }
    }
}
