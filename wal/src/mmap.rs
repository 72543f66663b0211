//! Segments as files, read through a memory mapping (memmap2) and written with `pwrite`. A
//! segment is created at full size with `fallocate`, so running out of disk is a clean
//! `NoSpace` at creation; zero-filled with real writes and synced, so a later `fdatasync`
//! converts no extents; created under a temporary name and renamed, with the directory synced,
//! so a crash never leaves a half-made segment; mapped read-only with its pages populated.
//!
//! Why writes do not go through the mapping: writeback of a page written through a shared
//! mapping must write-protect it in every page table that maps it, which costs a TLB shootdown
//! (an interrupt to every core running the process) on each sync. Measured on the build
//! machine under the node's load, those shootdowns were about 15 % of all CPU time and made a
//! sync about three times slower than `pwrite` + `fdatasync`. Reads still come zero-copy from
//! the mapping, which shares the page cache the writes go into. A segment is never truncated
//! while mapped (reads past the end would SIGBUS): space comes back by deleting whole segments.
//! Released segments are kept as spares (`{number}.spare`) and reused for new ones: a header
//! written over the old records (whose checksums were seeded with their old number), no zeros.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

use memmap2::{Mmap, MmapOptions};

use crate::backend::{Backend, FileRange, FileSink, Segment, Syncer};
use crate::error::{Error, Result};

/// Segments in files under one directory.
#[derive(Clone, Debug)]
pub struct MmapBackend {
    dir: PathBuf,
    /// The mappings of segments set aside as spares: a spare is reused only once no buffer
    /// shares its mapping any more (the old bytes would change under it).
    set_aside: Arc<Mutex<HashMap<u64, Weak<Mmap>>>>,
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io { op, path: path.to_path_buf(), source }
}

impl MmapBackend {
    /// Segments under `dir`, created if missing, durably: a directory's entry lives in its
    /// parent, so the parent of each directory created is fsynced, and the parent of `dir`
    /// always (a process that crashed between creating `dir` and syncing its parent left an
    /// entry a power loss would take, with every segment in it). `dir` itself is fsynced too,
    /// making the entries a crashed process changed without syncing durable before anything
    /// builds on them.
    ///
    /// # Errors
    /// A directory cannot be created, opened or fsynced.
    pub fn new(dir: impl Into<PathBuf>) -> Result<MmapBackend> {
        let dir = dir.into();
        let mut missing = Vec::new();
        let mut level = dir.as_path();
        while !level.as_os_str().is_empty() && !level.exists() {
            missing.push(level.to_path_buf());
            level = level.parent().unwrap_or_else(|| Path::new(""));
        }
        std::fs::create_dir_all(&dir).map_err(io("create directory", &dir))?;
        let parent_of = |path: &Path| match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let mut to_sync = vec![dir.clone(), parent_of(&dir)];
        to_sync.extend(missing.iter().map(|created| parent_of(created)));
        to_sync.dedup();
        for path in &to_sync {
            sync_directory(path)?;
        }
        Ok(MmapBackend { dir, set_aside: Arc::default() })
    }

    /// The numbers of the files named `{number:016x}{suffix}` in the directory.
    fn numbered(&self, suffix: &str) -> Result<Vec<u64>> {
        let mut numbers = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(io("read directory", &self.dir))? {
            let entry = entry.map_err(io("read directory", &self.dir))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(hex) = name.strip_suffix(suffix) {
                if let Ok(number) = u64::from_str_radix(hex, 16) {
                    numbers.push(number);
                }
            }
        }
        Ok(numbers)
    }

    fn spare_path(&self, number: u64) -> PathBuf {
        self.dir.join(format!("{number:016x}.spare"))
    }

    fn sync_dir(&self) -> Result<()> {
        sync_directory(&self.dir)
    }
}

/// fsync of a directory: makes its entries (files created, renamed or removed in it) durable.
fn sync_directory(path: &Path) -> Result<()> {
    let dir = File::open(path).map_err(io("open directory", path))?;
    dir.sync_all().map_err(io("fsync directory", path))
}

/// Appended bytes not yet handed to the file: consecutive appends gather here and go out in
/// one `pwrite`, so an append costs a memcpy and the system call is paid once per sync (or per
/// [`FLUSH_BYTES`]).
#[derive(Default)]
struct Staging {
    /// Initialized up to its length, which only grows (no zero-fill per append); `used`
    /// bytes of it are staged.
    bytes: Vec<u8>,
    used: usize,
    /// The file offset `bytes[0]` stands for.
    offset: usize,
    /// The part of `bytes` declared written (file offsets), to go to the file.
    declared: Option<(usize, usize)>,
    /// The first write that failed since the last syncer: the next sync reports it, so the
    /// log poisons itself and nothing written after it is acknowledged.
    error: Option<std::io::Error>,
}

/// A new segment's zeros are written back this many bytes at a time.
const ZERO_FLUSH_BYTES: u64 = 4 << 20;

/// The tail's mapping is given back in steps of this many bytes.
const UNMAP_STEP_BYTES: usize = 1 << 20;

/// Staged bytes beyond which they go to the file without waiting for a sync.
const FLUSH_BYTES: usize = 1 << 20;

/// The page size writes are padded to.
const PAGE_BYTES: usize = 4096;

static ZERO_PAGE: [u8; PAGE_BYTES] = [0; PAGE_BYTES];

/// `pwritev` until every slice is written.
fn write_all_vectored_at(
    file: &File,
    mut slices: &mut [std::io::IoSlice<'_>],
    mut offset: u64,
) -> std::io::Result<()> {
    while !slices.is_empty() {
        match rustix::io::pwritev(file, slices, offset) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(written) => {
                offset += written as u64;
                std::io::IoSlice::advance_slices(&mut slices, written);
            }
            Err(rustix::io::Errno::INTR) => {}
            Err(error) => return Err(error.into()),
        }
    }
    Ok(())
}

impl Staging {
    /// Writes the declared bytes, padded with zeros to the end of their last page when
    /// nothing is staged after them: a write that ends mid-page makes the kernel read the
    /// page first if it is not cached (a recycled segment's pages are not), on this thread.
    /// The page is written back whole anyway, and what lies past the log's end is unwritten
    /// space, so zeros there are right.
    fn write_declared(&mut self, file: &File, segment_bytes: usize) {
        if let Some((start, mut end)) = self.declared.take() {
            if end - self.offset == self.used {
                let padded = end.next_multiple_of(PAGE_BYTES).min(segment_bytes);
                let (from, to) = (end - self.offset, padded - self.offset);
                if self.bytes.len() < to {
                    self.bytes.resize(to, 0);
                }
                self.bytes[from..to].fill(0);
                end = padded;
            }
            let bytes = &self.bytes[start - self.offset..end - self.offset];
            if let Err(error) = file.write_all_at(bytes, start as u64) {
                self.error.get_or_insert(error);
            }
        }
    }

    fn flush(&mut self, file: &File, segment_bytes: usize) {
        self.write_declared(file, segment_bytes);
        self.used = 0;
    }
}

/// A segment file: read through its mapping, written with `pwrite`.
pub struct MmapSegment {
    map: Arc<Mmap>,
    /// The whole mapping as one shared buffer: a shared read is a slice of it (a reference
    /// count, no allocation).
    whole: bytes::Bytes,
    file: Arc<File>,
    /// Interior mutability lets a read (`&self`) flush first, so reads see every append.
    staging: RefCell<Staging>,
    /// Below this offset the mapping's pages were given back (`unmap_below`).
    unmapped: usize,
}

impl MmapSegment {
    fn new(map: Mmap, file: File) -> MmapSegment {
        let map = Arc::new(map);
        MmapSegment {
            whole: bytes::Bytes::from_owner(WholeMap(Arc::clone(&map))),
            map,
            file: Arc::new(file),
            staging: RefCell::new(Staging::default()),
            unmapped: 0,
        }
    }
}

impl Segment for MmapSegment {
    fn bytes(&self) -> &[u8] {
        self.staging.borrow_mut().flush(&self.file, self.map.len());
        &self.map
    }

    fn bytes_mut(&mut self, offset: usize, len: usize) -> &mut [u8] {
        assert!(offset + len <= self.map.len(), "write past the segment end");
        let staging = self.staging.get_mut();
        if offset != staging.offset + staging.used {
            staging.flush(&self.file, self.map.len());
            staging.offset = offset;
        }
        let start = staging.used;
        staging.used += len;
        if staging.bytes.len() < staging.used {
            staging.bytes.resize(staging.used, 0);
        }
        &mut staging.bytes[start..staging.used]
    }

    fn wrote(&mut self, offset: usize, len: usize) {
        let staging = self.staging.get_mut();
        match staging.declared {
            Some((start, end)) if end == offset => staging.declared = Some((start, offset + len)),
            None => staging.declared = Some((offset, offset + len)),
            // Not adjacent (a watermark, then a record): the earlier part goes out first.
            Some(_) => {
                staging.write_declared(&self.file, self.map.len());
                staging.declared = Some((offset, offset + len));
            }
        }
        if staging.used >= FLUSH_BYTES {
            staging.flush(&self.file, self.map.len());
        }
    }

    fn write_parts(&mut self, offset: usize, parts: &[&[u8]]) {
        let len: usize = parts.iter().map(|part| part.len()).sum();
        let segment_bytes = self.map.len();
        assert!(offset + len <= segment_bytes, "write past the segment end");
        let staging = self.staging.get_mut();
        // What is staged lies before `offset`: it goes out first, so writes stay in order.
        staging.flush(&self.file, segment_bytes);
        staging.offset = offset + len;
        // Padded to the end of the last page, as `Staging::write_declared` does and why.
        let end = offset + len;
        let padding = end.next_multiple_of(PAGE_BYTES).min(segment_bytes) - end;
        let mut slices: Vec<std::io::IoSlice<'_>> = parts
            .iter()
            .chain(std::iter::once(&&ZERO_PAGE[..padding]))
            .filter(|part| !part.is_empty())
            .map(|part| std::io::IoSlice::new(part))
            .collect();
        if let Err(error) = write_all_vectored_at(&self.file, &mut slices, offset as u64) {
            staging.error.get_or_insert(error);
        }
    }

    fn syncer(&mut self) -> Box<dyn Syncer> {
        let staging = self.staging.get_mut();
        staging.flush(&self.file, self.map.len());
        Box::new(FileSyncer { file: Arc::clone(&self.file), write_error: staging.error.take() })
    }

    fn shared(&self, offset: usize, len: usize) -> Option<bytes::Bytes> {
        self.staging.borrow_mut().flush(&self.file, self.map.len());
        let end = offset.checked_add(len).filter(|end| *end <= self.map.len())?;
        Some(self.whole.slice(offset..end))
    }

    fn unmap_below(&mut self, offset: usize) {
        // In steps of a few MiB, so the system call is rare.
        let end = offset - offset % UNMAP_STEP_BYTES;
        if end <= self.unmapped {
            return;
        }
        // SAFETY: as in `retire`: a shared read-only file mapping; the pages stay in the page
        // cache and a later read of this range faults them back in.
        let _ = unsafe {
            self.map.unchecked_advise_range(
                memmap2::UncheckedAdvice::DontNeed,
                self.unmapped,
                end - self.unmapped,
            )
        };
        self.unmapped = end;
    }

    fn retire(&mut self) {
        let staging = self.staging.get_mut();
        staging.flush(&self.file, self.map.len());
        // Nothing is appended here again: the staging buffer (as large as the largest sync's
        // worth of records, megabytes under large writes) is given back, or every sealed
        // segment would keep one.
        staging.bytes = Vec::new();
        // SAFETY: a shared, read-only file mapping: dropping its pages only unmaps them from
        // this process (the page cache keeps them); a later read faults them back in from it.
        let _ = unsafe { self.map.unchecked_advise(memmap2::UncheckedAdvice::DontNeed) };
    }
}

impl Drop for MmapSegment {
    fn drop(&mut self) {
        // Unsynced, so never acknowledged; written anyway so the file matches what was read.
        let len = self.map.len();
        self.staging.get_mut().flush(&self.file, len);
    }
}

/// A mapping, owned by the buffers that share it: it outlives the segment (even its file's
/// deletion) until the last of them is dropped.
struct WholeMap(Arc<Mmap>);

impl AsRef<[u8]> for WholeMap {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// Makes a segment's writes durable with `fdatasync`, or reports the write that failed.
struct FileSyncer {
    file: Arc<File>,
    write_error: Option<std::io::Error>,
}

impl Syncer for FileSyncer {
    fn sync(self: Box<Self>) -> std::io::Result<()> {
        if let Some(error) = self.write_error {
            return Err(error);
        }
        self.file.sync_data()
    }
}

/// Reads are made this many bytes at a time by [`read_whole`] (into one buffer, reused).
const READ_BYTES: usize = 1 << 20;

/// Reads all of `file` with `pread`, discarding the bytes: they land in the page cache, and a
/// failure is an error with its offset instead of a fault on a mapping.
fn read_whole(file: &File, path: &Path) -> Result<()> {
    let len = file.metadata().map_err(io("stat", path))?.len();
    let mut buffer = vec![0u8; READ_BYTES];
    let mut offset = 0u64;
    while offset < len {
        let want = usize::try_from(len - offset).unwrap_or(usize::MAX).min(buffer.len());
        match file.read_at(&mut buffer[..want], offset) {
            Ok(0) => {
                let source = std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
                return Err(Error::Read { path: path.to_path_buf(), offset, source });
            }
            Ok(read) => offset += read as u64,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(source) => return Err(Error::Read { path: path.to_path_buf(), offset, source }),
        }
    }
    Ok(())
}

fn map(file: &File, path: &Path) -> Result<Mmap> {
    // SAFETY: the file is ours alone (the log's directory is not shared) and is never truncated
    // while mapped, so the mapping stays valid for its lifetime.
    unsafe { MmapOptions::new().populate().map(file) }.map_err(io("mmap", path))
}

/// [`map`] without reading the file in: for a recycled segment, whose old bytes are never
/// read (the pages appends write are cached as they are written).
fn map_unpopulated(file: &File, path: &Path) -> Result<Mmap> {
    // SAFETY: as in `map`.
    unsafe { MmapOptions::new().map(file) }.map_err(io("mmap", path))
}

/// True for ENOSPC (and EDQUOT: a quota is a full disk too).
fn is_no_space(error: &std::io::Error) -> bool {
    let code = error.raw_os_error();
    code == Some(rustix::io::Errno::NOSPC.raw_os_error())
        || code == Some(rustix::io::Errno::DQUOT.raw_os_error())
}

impl MmapBackend {
    /// A new segment's file under its temporary name, at full size and durable (not yet
    /// renamed into place). Any ENOSPC is an `Io` error the caller turns into `NoSpace`.
    fn create_temporary(&self, temporary: &Path, bytes: u64, header: &[u8]) -> Result<File> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(temporary)
            .map_err(io("create", temporary))?;
        rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, bytes).map_err(
            |error| Error::Io { op: "fallocate", path: temporary.into(), source: error.into() },
        )?;
        // Real zeros, not unwritten extents: a later fdatasync then converts no extents.
        file.write_all(header).map_err(io("write", temporary))?;
        let zeros = vec![0u8; 1 << 20];
        let mut written = header.len() as u64;
        while written < bytes {
            let chunk = (bytes - written).min(zeros.len() as u64) as usize;
            file.write_all(&zeros[..chunk]).map_err(io("write", temporary))?;
            written += chunk as u64;
            // Written back a few MiB at a time: one flush of the whole segment would queue
            // tens of megabytes at the disk ahead of the live log's syncs.
            if written % ZERO_FLUSH_BYTES < zeros.len() as u64 {
                file.sync_data().map_err(io("fdatasync", temporary))?;
            }
        }
        file.sync_all().map_err(io("fsync", temporary))?;
        Ok(file)
    }
}

/// Numbers the temporaries of files being written ([`Backend::create_file`]), so that two
/// written at once never share one.
static FILE_SINKS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A file being written in one pass ([`FileSink`]): `{name}.{n}.new` until finished.
#[derive(Debug)]
pub struct MmapFileSink {
    file: File,
    temporary: PathBuf,
    path: PathBuf,
    dir: PathBuf,
    written: u64,
    failure: Option<Error>,
    finished: bool,
}

impl MmapFileSink {
    /// Notes a failed write as a typed error (the first one), and returns the OS's.
    fn failed(&mut self, source: std::io::Error, op: &'static str) -> std::io::Error {
        if self.failure.is_none() {
            let copy = match source.raw_os_error() {
                Some(code) => std::io::Error::from_raw_os_error(code),
                None => std::io::Error::new(source.kind(), source.to_string()),
            };
            self.failure = Some(if is_no_space(&source) {
                Error::NoSpace { path: self.path.clone() }
            } else {
                Error::Io { op, path: self.temporary.clone(), source: copy }
            });
        }
        source
    }

    /// Starts the writeback of `offset..offset + len` and waits for it (and for any earlier
    /// writeback of those pages).
    fn write_back(&self, offset: u64, len: u64) -> Result<()> {
        use std::os::fd::AsRawFd;
        let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE
            | libc::SYNC_FILE_RANGE_WRITE
            | libc::SYNC_FILE_RANGE_WAIT_AFTER;
        let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
            return Ok(()); // Beyond any file: the fsync below writes it.
        };
        // SAFETY: a plain system call on a descriptor this sink owns; no memory is passed.
        let done = unsafe { libc::sync_file_range(self.file.as_raw_fd(), offset, len, flags) };
        if done == 0 {
            return Ok(());
        }
        let source = std::io::Error::last_os_error();
        if source.raw_os_error() == Some(libc::ENOSYS)
            || source.raw_os_error() == Some(libc::EINVAL)
        {
            return Ok(()); // Not supported here (some file systems): the fsync does it all.
        }
        Err(Error::Io { op: "sync_file_range", path: self.temporary.clone(), source })
    }
}

impl Write for MmapFileSink {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        match self.file.write(bytes) {
            Ok(written) => {
                self.written += written as u64;
                Ok(written)
            }
            Err(source) if source.kind() == std::io::ErrorKind::Interrupted => Err(source),
            Err(source) => Err(self.failed(source, "write")),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl FileSink for MmapFileSink {
    type Reader = File;

    fn write_at(&mut self, offset: u64, bytes: &[u8]) -> std::io::Result<()> {
        self.file.write_all_at(bytes, offset).map_err(|source| self.failed(source, "pwrite"))
    }

    fn read_back(&mut self) -> Result<File> {
        File::open(&self.temporary).map_err(io("open", &self.temporary))
    }

    fn written_bytes(&self) -> u64 {
        self.written
    }

    fn failure(&mut self) -> Option<Error> {
        self.failure.take()
    }

    fn finish(mut self) -> Result<()> {
        if let Some(failure) = self.failure.take() {
            return Err(failure);
        }
        // Written back a few MiB at a time, as a new segment's zeros: a snapshot of a hundred
        // megabytes flushed at once would hold the live log's syncs behind it.
        let mut offset = 0;
        while offset < self.written {
            let len = ZERO_FLUSH_BYTES.min(self.written - offset);
            self.write_back(offset, len)?;
            offset += len;
        }
        self.file.sync_all().map_err(io("fsync", &self.temporary))?;
        std::fs::rename(&self.temporary, &self.path).map_err(io("rename", &self.path))?;
        self.finished = true;
        sync_directory(&self.dir)
    }
}

impl Drop for MmapFileSink {
    fn drop(&mut self) {
        if !self.finished {
            // Given up (or failed): its space comes back now, not at the next start.
            let _ = std::fs::remove_file(&self.temporary);
        }
    }
}

impl Backend for MmapBackend {
    type Segment = MmapSegment;
    type FileSink = MmapFileSink;
    type FileReader = File;

    fn list(&self) -> Result<Vec<u64>> {
        self.numbered(".wal")
    }

    fn create(&self, number: u64, bytes: u64, header: &[u8]) -> Result<MmapSegment> {
        let path = self.path(number);
        let temporary = self.dir.join(format!("{number:016x}.wal.new"));
        self.create_temporary(&temporary, bytes, header)
            .map_err(|error| {
                // Its space comes back: a full disk is survivable, and the next try starts clean.
                let _ = std::fs::remove_file(&temporary);
                match error {
                    Error::Io { source, .. } if is_no_space(&source) => {
                        Error::NoSpace { path: path.clone() }
                    }
                    error => error,
                }
            })
            .and_then(|file| {
                std::fs::rename(&temporary, &path).map_err(io("rename", &path))?;
                self.sync_dir()?;
                // Not populated: its pages are in the page cache (just written), so a read faults
                // one in without I/O, and the process maps only what it reads (its resident
                // memory stays the few MiB around the tail, not whole segments).
                let map = map_unpopulated(&file, &path)?;
                Ok(MmapSegment::new(map, file))
            })
    }

    fn open(&self, number: u64) -> Result<MmapSegment> {
        let path = self.path(number);
        let file =
            OpenOptions::new().read(true).write(true).open(&path).map_err(io("open", &path))?;
        // Recovery is about to read every byte through the mapping; a read error there (a bad
        // sector) is a SIGBUS, which kills the process without saying where. Read it with
        // `pread` first: an error is then `Error::Read` naming the file and the offset, and the
        // pages the mapping then reads are the ones just read (docs/wal-format.md, Segments).
        read_whole(&file, &path)?;
        let map = map(&file, &path)?;
        Ok(MmapSegment::new(map, file))
    }

    fn drop_cache(&self, number: u64) -> Result<()> {
        // POSIX_FADV_DONTNEED drops the clean pages that nothing maps (the process that wrote
        // them is gone); dirty pages it only starts writing back, and keeps: they hold writes
        // still to be made durable, which recovery's own sync makes so or reports failed.
        //
        // No fdatasync first. It would add nothing for dirty pages (recovery syncs them anyway)
        // and is wrong after a failed writeback: the error was reported to the process that
        // saw it, so a sync through a new descriptor succeeds without writing the pages the
        // kernel marked clean, and would seem to vouch for bytes that never reached the disk.
        let path = self.path(number);
        let file = File::open(&path).map_err(io("open", &path))?;
        rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed)
            .map_err(|error| Error::Io { op: "posix_fadvise", path, source: error.into() })
    }

    fn release_cache(&self, number: u64) {
        // The pages go back to the kernel's free lists, and the next segment's pages come from
        // there. Left in the page cache, they would stay until memory runs short, and every new
        // segment would take pages the machine has never touched: on the build machine's VM
        // that costs 150 ms of CPU per 64 MiB written instead of 6 ms (BENCHMARKS.md). Only
        // clean pages go; a failure changes nothing.
        if let Ok(file) = File::open(self.path(number)) {
            let _ = rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed);
        }
    }

    fn remove(&self, number: u64) -> Result<()> {
        let path = self.path(number);
        std::fs::remove_file(&path).map_err(io("remove", &path))?;
        self.sync_dir()
    }

    fn set_aside(&self, number: u64, segment: MmapSegment) -> Result<()> {
        let mapping = Arc::downgrade(&segment.map);
        drop(segment);
        self.set_aside
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(number, mapping);
        let (path, spare) = (self.path(number), self.spare_path(number));
        std::fs::rename(&path, &spare).map_err(io("rename", &spare))?;
        self.sync_dir()
    }

    fn spares(&self) -> Result<Vec<u64>> {
        self.numbered(".spare")
    }

    fn spare_ready(&self, spare: u64) -> bool {
        let mut set_aside =
            self.set_aside.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let ready = set_aside.get(&spare).is_none_or(|mapping| mapping.strong_count() == 0);
        if ready {
            set_aside.remove(&spare);
        }
        ready
    }

    fn reuse(&self, spare: u64, number: u64, bytes: u64, header: &[u8]) -> Result<MmapSegment> {
        let spare_path = self.spare_path(spare);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&spare_path)
            .map_err(io("open", &spare_path))?;
        let len = file.metadata().map_err(io("stat", &spare_path))?.len();
        if len != bytes {
            // Not a segment of this log's size: no use.
            drop(file);
            self.remove_spare(spare)?;
            return self.create(number, bytes, header);
        }
        // The header first, durably, while the file is still a spare: a crash before the
        // rename leaves a spare (never listed as a segment), after it a whole segment.
        file.write_all_at(header, 0).map_err(io("write", &spare_path))?;
        file.sync_data().map_err(io("fdatasync", &spare_path))?;
        let path = self.path(number);
        std::fs::rename(&spare_path, &path).map_err(io("rename", &path))?;
        self.sync_dir()?;
        // Not populated: that would read the old bytes from the disk for nothing. Appends
        // write whole pages (see `Staging::write_declared`), so they never wait for a read.
        let map = map_unpopulated(&file, &path)?;
        Ok(MmapSegment::new(map, file))
    }

    fn remove_spare(&self, spare: u64) -> Result<()> {
        let path = self.spare_path(spare);
        std::fs::remove_file(&path).map_err(io("remove", &path))?;
        self.sync_dir()
    }

    fn remove_leftovers(&self) -> Result<()> {
        // Every temporary this backend makes ends in `.new` (segments being created as
        // `{name}.new`, `write_file_atomic`'s files such as `metadata.new`, and files written
        // in one pass such as the shard's snapshots, `snapshot.{n}.new`); none is ever read
        // after a restart, and a crash leaves it behind.
        let mut removed = false;
        for entry in std::fs::read_dir(&self.dir).map_err(io("read directory", &self.dir))? {
            let entry = entry.map_err(io("read directory", &self.dir))?;
            let is_leftover = entry.file_name().to_str().is_some_and(|name| name.ends_with(".new"));
            if is_leftover && entry.file_type().is_ok_and(|kind| kind.is_file()) {
                let path = entry.path();
                std::fs::remove_file(&path).map_err(io("remove", &path))?;
                removed = true;
            }
        }
        // Not needed for safety (a removal a crash undoes is done again at the next start),
        // but then the space is back for good.
        if removed { self.sync_dir() } else { Ok(()) }
    }

    fn path(&self, number: u64) -> PathBuf {
        self.dir.join(format!("{number:016x}.wal"))
    }

    fn read_file(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let path = self.dir.join(name);
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(Error::Io { op: "read", path, source }),
        }
    }

    fn read_file_range(
        &self,
        name: &str,
        head: usize,
        offset: u64,
        len: usize,
    ) -> Result<Option<FileRange>> {
        let path = self.dir.join(name);
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(Error::Io { op: "open", path, source }),
        };
        // One descriptor: a replacement (a rename over the name) does not change what it reads.
        let total = file.metadata().map_err(io("stat", &path))?.len();
        let read = |at: u64, len: usize| -> Result<Vec<u8>> {
            let len = usize::try_from(total.saturating_sub(at)).unwrap_or(usize::MAX).min(len);
            let mut bytes = vec![0; len];
            file.read_exact_at(&mut bytes, at).map_err(io("read", &path))?;
            Ok(bytes)
        };
        Ok(Some(FileRange { head: read(0, head)?, bytes: read(offset, len)?, total }))
    }

    fn create_file(&self, name: &str) -> Result<MmapFileSink> {
        let path = self.dir.join(name);
        let number = FILE_SINKS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let temporary = self.dir.join(format!("{name}.{number}.new"));
        let file = File::create(&temporary).map_err(|source| {
            if is_no_space(&source) {
                Error::NoSpace { path: path.clone() }
            } else {
                Error::Io { op: "create", path: temporary.clone(), source }
            }
        })?;
        let dir = self.dir.clone();
        let (written, failure, finished) = (0, None, false);
        Ok(MmapFileSink { file, temporary, path, dir, written, failure, finished })
    }

    fn open_file(&self, name: &str) -> Result<Option<File>> {
        let path = self.dir.join(name);
        match File::open(&path) {
            Ok(file) => Ok(Some(file)),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(Error::Io { op: "open", path, source }),
        }
    }

    fn remove_file(&self, name: &str) -> Result<()> {
        let path = self.dir.join(name);
        match std::fs::remove_file(&path) {
            Ok(()) => self.sync_dir(),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(Error::Io { op: "remove", path, source }),
        }
    }

    fn write_file_atomic(&self, name: &str, bytes: &[u8]) -> Result<()> {
        let path = self.dir.join(name);
        let temporary = self.dir.join(format!("{name}.new"));
        // A full disk refuses the file before anything is synced or renamed: the old content
        // stands, the partial file goes (its space comes back), and the error says `NoSpace`.
        let no_space = |source: std::io::Error, op| {
            if is_no_space(&source) {
                let _ = std::fs::remove_file(&temporary);
                Error::NoSpace { path: path.clone() }
            } else {
                Error::Io { op, path: temporary.clone(), source }
            }
        };
        let mut file = File::create(&temporary).map_err(|source| no_space(source, "create"))?;
        // Written back a few MiB at a time, as a new segment's zeros: a snapshot of a hundred
        // megabytes flushed at once would hold the live log's syncs behind it.
        for chunk in bytes.chunks(ZERO_FLUSH_BYTES as usize) {
            file.write_all(chunk).map_err(|source| no_space(source, "write"))?;
            if bytes.len() > chunk.len() {
                file.sync_data().map_err(io("fdatasync", &temporary))?;
            }
        }
        file.sync_all().map_err(io("fsync", &temporary))?;
        std::fs::rename(&temporary, &path).map_err(io("rename", &path))?;
        self.sync_dir()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // Tests may unwrap.

    use super::*;

    /// A file written in one pass is invisible until finished, patched in place, read back
    /// before it is, and gone without a trace if dropped unfinished.
    #[test]
    fn a_streamed_file_replaces_its_name_only_when_finished() {
        use std::io::Read;
        let dir = tempfile::tempdir().unwrap();
        let backend = MmapBackend::new(dir.path()).unwrap();
        backend.write_file_atomic("image", b"old").unwrap();
        let mut sink = backend.create_file("image").unwrap();
        let mut other = backend.create_file("image").unwrap();
        sink.write_all(b"....body").unwrap();
        sink.write_at(0, b"head").unwrap();
        other.write_all(b"given up").unwrap();
        assert_eq!(sink.written_bytes(), 8);
        let mut back = Vec::new();
        sink.read_back().unwrap().read_to_end(&mut back).unwrap();
        assert_eq!(back, b"headbody");
        assert_eq!(backend.read_file("image").unwrap().unwrap(), b"old");
        drop(other);
        sink.finish().unwrap();
        let mut read = Vec::new();
        backend.open_file("image").unwrap().unwrap().read_to_end(&mut read).unwrap();
        assert_eq!(read, b"headbody");
        assert!(backend.open_file("absent").unwrap().is_none());
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, ["image"], "no temporary left behind");
    }

    /// A read that fails is an error naming the file and the offset, never a panic or a fault.
    /// (A directory opened as a file fails every read, with EISDIR; a bad sector cannot be
    /// made on this machine's kernel, which has neither device-mapper nor fault injection.)
    #[test]
    fn a_failing_read_is_an_error_with_path_and_offset() {
        let dir = tempfile::tempdir().unwrap();
        let file = File::open(dir.path()).unwrap();
        match read_whole(&file, dir.path()) {
            Err(Error::Read { path, offset, source }) => {
                assert_eq!(path, dir.path());
                assert_eq!(offset, 0);
                assert_eq!(source.raw_os_error(), Some(21), "EISDIR: {source}");
            }
            other => panic!("expected a read error, got {other:?}"),
        }
    }
}
