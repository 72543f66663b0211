//! Segments as memory-mapped files (memmap2). A segment is created at full size with
//! `fallocate`, so running out of disk is a clean `NoSpace` at creation and never a SIGBUS on a
//! write; zero-filled with real writes and synced, so a later `fdatasync` converts no extents;
//! created under a temporary name and renamed, with the directory synced, so a crash never
//! leaves a half-made segment; mapped with its pages populated, and each page written once so
//! that appends take no write faults. Syncs `msync` the written range. A segment is never
//! truncated while mapped (reads past the end would SIGBUS): space comes back by deleting whole
//! segments.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::{MmapMut, MmapOptions};

use crate::backend::{Backend, Segment, Syncer};
use crate::error::{Error, Result};

/// Segments in files under one directory.
#[derive(Clone, Debug)]
pub struct MmapBackend {
    dir: PathBuf,
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io { op, path: path.to_path_buf(), source }
}

impl MmapBackend {
    /// Segments under `dir`, created if missing.
    ///
    /// # Errors
    /// The directory cannot be created.
    pub fn new(dir: impl Into<PathBuf>) -> Result<MmapBackend> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(io("create directory", &dir))?;
        Ok(MmapBackend { dir })
    }

    fn sync_dir(&self) -> Result<()> {
        let dir = File::open(&self.dir).map_err(io("open directory", &self.dir))?;
        dir.sync_all().map_err(io("fsync directory", &self.dir))
    }
}

/// A mapped segment's memory, shared between the appending thread (which writes through it)
/// and sync threads (which only `msync` ranges of it and never read or write it).
struct Mapping {
    pointer: *mut u8,
    len: usize,
    _map: MmapMut,
}

// SAFETY: the mapping is plain memory owned by `_map`, alive as long as this struct. Writes go
// only through `MmapSegment::bytes_mut` (which needs `&mut` of the one segment owning them);
// other threads only pass the address range to `msync`, which creates no Rust reference.
unsafe impl Send for Mapping {}
// SAFETY: as above: shared use is limited to `msync` of the address range.
unsafe impl Sync for Mapping {}

/// A mapped segment file.
pub struct MmapSegment {
    mapping: Arc<Mapping>,
    /// One past the last byte written through the mapping.
    written_end: usize,
}

const PAGE_BYTES: usize = 4096;

impl MmapSegment {
    fn new(mut map: MmapMut, prepare_from: usize) -> MmapSegment {
        let pointer = map.as_mut_ptr();
        let len = map.len();
        let mut segment =
            MmapSegment { mapping: Arc::new(Mapping { pointer, len, _map: map }), written_end: 0 };
        segment.pre_dirty(prepare_from);
        segment
    }

    /// Writes each page from `from` on once (with the zero it already holds), so that the
    /// kernel maps it writable now: an append then never takes a write fault on a clean page.
    /// Syncs flush ranges, not the file, so these pages stay dirty until the log reaches them.
    fn pre_dirty(&mut self, from: usize) {
        if from >= self.mapping.len {
            return;
        }
        let start = from.div_ceil(PAGE_BYTES) * PAGE_BYTES;
        for page in (start..self.mapping.len).step_by(PAGE_BYTES) {
            // SAFETY: `page` is inside the mapping; a volatile write of the byte already there
            // (zero past the tail) changes nothing but the page's state.
            unsafe {
                let byte = self.mapping.pointer.add(page);
                std::ptr::write_volatile(byte, std::ptr::read_volatile(byte));
            }
        }
    }
}

impl Segment for MmapSegment {
    fn bytes(&self) -> &[u8] {
        // SAFETY: the mapping lives as long as `self`; no `&mut` to it exists while `&self` is
        // borrowed (writes need `&mut self`), and sync threads create no references.
        unsafe { std::slice::from_raw_parts(self.mapping.pointer, self.mapping.len) }
    }

    fn bytes_mut(&mut self, offset: usize, len: usize) -> &mut [u8] {
        assert!(offset + len <= self.mapping.len, "write past the segment end");
        // SAFETY: in bounds (checked); `&mut self` makes this the only reference to the memory.
        unsafe { std::slice::from_raw_parts_mut(self.mapping.pointer.add(offset), len) }
    }

    fn wrote(&mut self, offset: usize, len: usize) {
        self.written_end = self.written_end.max(offset + len);
    }

    fn prepare_for_writes(&mut self, offset: usize) {
        self.pre_dirty(offset);
    }

    fn syncer(&mut self) -> Box<dyn Syncer> {
        let len = self.written_end.div_ceil(PAGE_BYTES) * PAGE_BYTES;
        Box::new(RangeSyncer { mapping: Arc::clone(&self.mapping), len: len.min(self.mapping.len) })
    }
}

/// Flushes the written range of a mapping with `msync(MS_SYNC)`: on Linux a datasync of that
/// range of the file, leaving the pre-dirtied pages beyond it alone.
struct RangeSyncer {
    mapping: Arc<Mapping>,
    len: usize,
}

impl Syncer for RangeSyncer {
    fn sync(self: Box<Self>) -> std::io::Result<()> {
        // SAFETY: the range lies inside the mapping, which `self.mapping` keeps alive.
        unsafe {
            rustix::mm::msync(self.mapping.pointer.cast(), self.len, rustix::mm::MsyncFlags::SYNC)
        }
        .map_err(std::io::Error::from)
    }
}

fn map(file: &File, path: &Path) -> Result<MmapMut> {
    // SAFETY: the file is ours alone (the log's directory is not shared) and is never truncated
    // while mapped, so the mapping stays valid for its lifetime.
    unsafe { MmapOptions::new().populate().map_mut(file) }.map_err(io("mmap", path))
}

impl Backend for MmapBackend {
    type Segment = MmapSegment;

    fn list(&self) -> Result<Vec<u64>> {
        let mut numbers = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(io("read directory", &self.dir))? {
            let entry = entry.map_err(io("read directory", &self.dir))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(hex) = name.strip_suffix(".wal") {
                if let Ok(number) = u64::from_str_radix(hex, 16) {
                    numbers.push(number);
                }
            }
        }
        Ok(numbers)
    }

    fn create(&self, number: u64, bytes: u64, header: &[u8]) -> Result<MmapSegment> {
        let path = self.path(number);
        let temporary = self.dir.join(format!("{number:016x}.wal.new"));
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&temporary)
            .map_err(io("create", &temporary))?;
        if let Err(error) =
            rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, bytes)
        {
            let _ = std::fs::remove_file(&temporary);
            if error == rustix::io::Errno::NOSPC {
                return Err(Error::NoSpace { path });
            }
            return Err(Error::Io { op: "fallocate", path: temporary, source: error.into() });
        }
        // Real zeros, not unwritten extents: a later fdatasync then converts no extents.
        file.write_all(header).map_err(io("write", &temporary))?;
        let zeros = vec![0u8; 1 << 20];
        let mut written = header.len() as u64;
        while written < bytes {
            let chunk = (bytes - written).min(zeros.len() as u64) as usize;
            file.write_all(&zeros[..chunk]).map_err(io("write", &temporary))?;
            written += chunk as u64;
        }
        file.sync_all().map_err(io("fsync", &temporary))?;
        std::fs::rename(&temporary, &path).map_err(io("rename", &path))?;
        self.sync_dir()?;
        let map = map(&file, &path)?;
        Ok(MmapSegment::new(map, header.len()))
    }

    fn open(&self, number: u64) -> Result<MmapSegment> {
        let path = self.path(number);
        let file =
            OpenOptions::new().read(true).write(true).open(&path).map_err(io("open", &path))?;
        let map = map(&file, &path)?;
        // Recovery reads it first; the log pre-dirties the tail segment's free pages after.
        Ok(MmapSegment::new(map, usize::MAX))
    }

    fn remove(&self, number: u64) -> Result<()> {
        let path = self.path(number);
        std::fs::remove_file(&path).map_err(io("remove", &path))?;
        self.sync_dir()
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

    fn write_file_atomic(&self, name: &str, bytes: &[u8]) -> Result<()> {
        let path = self.dir.join(name);
        let temporary = self.dir.join(format!("{name}.new"));
        let mut file = File::create(&temporary).map_err(io("create", &temporary))?;
        file.write_all(bytes).map_err(io("write", &temporary))?;
        file.sync_all().map_err(io("fsync", &temporary))?;
        std::fs::rename(&temporary, &path).map_err(io("rename", &path))?;
        self.sync_dir()
    }
}
