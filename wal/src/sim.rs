//! A simulated disk for the log: each segment has an image "as synced" (the disk), the writes
//! made since (dirty pages), and an image "as cached" (the page cache, which a restarted process
//! reads). A crash keeps the synced image plus any chosen subset of the writes made since, each
//! possibly torn at 512-byte or 4 KiB granularity; bits can be flipped; syncs can be made to
//! fail. Tests and the cluster simulator use it to check recovery against every crash they can
//! think of.
//!
//! A failed sync behaves as Linux's writeback does after EIO: the writes it covered are no
//! longer dirty (no later sync writes them, a crash loses them) but stay in the page cache, so
//! a process that opens the file again reads them as if they were on the disk, until
//! [`Backend::drop_cache`]. Dropping the `Wal` without [`SimBackend::crash`] is a process
//! restart: the page cache, dirty pages included, stays.
//!
//! Directory entries: every operation that creates, renames or removes a file ends with a
//! directory sync, as the real backend's do; one can be made to fail
//! ([`SimBackend::fail_directory_syncs`]), and with
//! [`SimBackend::lose_unsynced_entries_on_crash`] a crash undoes the changes no directory sync
//! made durable (the knob for lost directory entries on crash).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::backend::{Backend, FileSink, Segment, Syncer};
use crate::error::{Error, Result};

/// A write made since the last sync of its segment.
#[derive(Clone, Debug)]
pub struct PendingWrite {
    /// Byte offset in the segment.
    pub offset: usize,
    /// The bytes written.
    pub bytes: Vec<u8>,
}

#[derive(Debug, Default)]
struct SegmentState {
    /// What the disk holds.
    synced: Vec<u8>,
    /// Writes not yet written back (dirty pages), in order: a sync writes them, a crash keeps
    /// any subset.
    pending: Vec<PendingWrite>,
    /// What the page cache holds: `synced` with every write since applied, including those
    /// whose writeback failed. What [`Backend::open`] reads.
    cached: Vec<u8>,
}

impl SegmentState {
    /// A segment whose disk and page cache hold `image`.
    fn clean(image: Vec<u8>) -> SegmentState {
        SegmentState { cached: image.clone(), synced: image, pending: Vec::new() }
    }
}

/// `write` applied to `image`.
fn apply(image: &mut [u8], write: &PendingWrite) {
    image[write.offset..write.offset + write.bytes.len()].copy_from_slice(&write.bytes);
}

/// A name in the simulated directory.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Entry {
    Segment(u64),
    Spare(u64),
    File(String),
}

/// A change to the directory that no directory sync has made durable yet, with what undoing
/// it takes.
#[derive(Debug)]
enum EntryChange {
    /// `entry` appeared (a new file renamed into place), replacing one with the durable image
    /// `replaced`, if any. Undone, it vanishes and the replaced one is back.
    Created { entry: Entry, replaced: Option<Vec<u8>> },
    /// `entry` was deleted; the disk held `image`. Undone, it reappears.
    Removed { entry: Entry, image: Vec<u8> },
    /// `from` was renamed to `to`, replacing `replaced`. Undone, the file has its old name.
    Renamed { from: Entry, to: Entry, replaced: Option<Vec<u8>> },
}

#[derive(Debug, Default)]
struct DiskState {
    segments: BTreeMap<u64, SegmentState>,
    files: BTreeMap<String, Vec<u8>>,
    /// Released segments kept for reuse: their durable images, by old number.
    spares: BTreeMap<u64, Vec<u8>>,
    failing_syncs: u32,
    space_bytes: Option<u64>,
    /// Directory changes made since the last directory sync that succeeded, in order.
    unsynced_entries: Vec<EntryChange>,
    failing_directory_syncs: u32,
    /// A crash undoes `unsynced_entries` ([`SimBackend::lose_unsynced_entries_on_crash`]).
    lose_unsynced_entries: bool,
}

impl DiskState {
    /// Takes `entry`'s durable image out of the directory.
    fn take(&mut self, entry: &Entry) -> Option<Vec<u8>> {
        match entry {
            Entry::Segment(number) => self.segments.remove(number).map(|segment| segment.synced),
            Entry::Spare(number) => self.spares.remove(number),
            Entry::File(name) => self.files.remove(name),
        }
    }

    /// Puts `image` in the directory as `entry` (on the disk and in the page cache).
    fn put(&mut self, entry: &Entry, image: Vec<u8>) {
        match entry {
            Entry::Segment(number) => {
                self.segments.insert(*number, SegmentState::clean(image));
            }
            Entry::Spare(number) => {
                self.spares.insert(*number, image);
            }
            Entry::File(name) => {
                self.files.insert(name.clone(), image);
            }
        }
    }

    /// Undoes a directory change that a crash did not let reach the disk.
    fn undo(&mut self, change: &EntryChange) {
        match change {
            EntryChange::Created { entry, replaced } => {
                self.take(entry);
                if let Some(image) = replaced {
                    self.put(entry, image.clone());
                }
            }
            EntryChange::Removed { entry, image } => self.put(entry, image.clone()),
            EntryChange::Renamed { from, to, replaced } => {
                if let Some(image) = self.take(to) {
                    self.put(from, image);
                }
                if let Some(image) = replaced {
                    self.put(to, image.clone());
                }
            }
        }
    }

    /// The directory sync that ends each operation that changed the directory, as the real
    /// backend does: every change so far becomes durable, or (when made to fail) none.
    fn sync_directory(&mut self) -> Result<()> {
        if self.failing_directory_syncs > 0 {
            self.failing_directory_syncs -= 1;
            let source = std::io::Error::from_raw_os_error(5); // EIO
            return Err(Error::Io { op: "fsync directory", path: PathBuf::from("sim"), source });
        }
        self.unsynced_entries.clear();
        Ok(())
    }
}

/// An in-memory disk shared by the log and the test that crashes it.
#[derive(Clone, Debug, Default)]
pub struct SimBackend {
    state: Arc<Mutex<DiskState>>,
}

/// How much of each unsynced write survives a crash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tear {
    /// All of it.
    Whole,
    /// Only its first `n` sectors of `sector_bytes` (512 or 4096).
    Sectors {
        /// Sectors kept.
        n: usize,
        /// Sector size.
        sector_bytes: usize,
    },
}

impl SimBackend {
    /// An empty disk.
    #[must_use]
    pub fn new() -> SimBackend {
        SimBackend::default()
    }

    fn lock(&self) -> MutexGuard<'_, DiskState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The next `count` syncs fail with EIO and make nothing durable. As on Linux, the writes
    /// a failed sync covered are then lost to the disk (no later sync writes them) but still
    /// read from the page cache until it is dropped ([`Backend::drop_cache`]).
    pub fn fail_syncs(&self, count: u32) {
        self.lock().failing_syncs = count;
    }

    /// The next `count` directory syncs fail with EIO: the operation that ends with one (a
    /// segment created, reused, set aside or removed; a small file replaced) has changed the
    /// directory, but returns the error, and its change stays unsynced: a crash loses it if
    /// [`SimBackend::lose_unsynced_entries_on_crash`] is set.
    pub fn fail_directory_syncs(&self, count: u32) {
        self.lock().failing_directory_syncs = count;
    }

    /// Lost directory entries on crash: when `lose` is set, a crash undoes every directory
    /// change that no directory sync made durable: a file created or renamed into place
    /// vanishes (what it replaced is back), a removed one reappears, a renamed one has its old
    /// name again. Not set (the default), a crash keeps them all. Every operation of this
    /// backend ends with a directory sync, as the real one's do, so only changes whose sync
    /// failed ([`SimBackend::fail_directory_syncs`]) are ever unsynced. The disks a crash
    /// returns keep the setting.
    pub fn lose_unsynced_entries_on_crash(&self, lose: bool) {
        self.lock().lose_unsynced_entries = lose;
    }

    /// Directory changes a crash would lose now (if set to: see
    /// [`SimBackend::lose_unsynced_entries_on_crash`]).
    #[must_use]
    pub fn unsynced_entries(&self) -> usize {
        self.lock().unsynced_entries.len()
    }

    /// Limits the space for new segments: creating one beyond it fails with ENOSPC.
    pub fn limit_space(&self, bytes: u64) {
        self.lock().space_bytes = Some(bytes);
    }

    /// Writes made since the last sync, per segment, in order.
    #[must_use]
    pub fn pending_writes(&self) -> Vec<(u64, Vec<PendingWrite>)> {
        self.lock()
            .segments
            .iter()
            .map(|(number, state)| (*number, state.pending.clone()))
            .collect()
    }

    /// The disk after a crash in which, of the writes made since the last sync of each segment,
    /// `survives(segment, index)` decides which reach the disk and how much of each. A new
    /// backend: the old one (and any log on it) is dead.
    #[must_use]
    pub fn crash(&self, mut survives: impl FnMut(u64, usize) -> Option<Tear>) -> SimBackend {
        let state = self.lock();
        let mut disk = DiskState {
            files: state.files.clone(),
            spares: state.spares.clone(),
            space_bytes: state.space_bytes,
            lose_unsynced_entries: state.lose_unsynced_entries,
            ..DiskState::default()
        };
        for (number, segment) in &state.segments {
            let mut image = segment.synced.clone();
            for (index, write) in segment.pending.iter().enumerate() {
                let kept = match survives(*number, index) {
                    None => 0,
                    Some(Tear::Whole) => write.bytes.len(),
                    Some(Tear::Sectors { n, sector_bytes }) => {
                        // Sectors are aligned on the disk, not on the write.
                        let end = ((write.offset / sector_bytes) + n) * sector_bytes;
                        end.saturating_sub(write.offset).min(write.bytes.len())
                    }
                };
                image[write.offset..write.offset + kept].copy_from_slice(&write.bytes[..kept]);
            }
            disk.segments.insert(*number, SegmentState::clean(image));
        }
        if state.lose_unsynced_entries {
            for change in state.unsynced_entries.iter().rev() {
                disk.undo(change);
            }
        }
        SimBackend { state: Arc::new(Mutex::new(disk)) }
    }

    /// The disk after a crash that loses every unsynced write.
    #[must_use]
    pub fn crash_losing_unsynced(&self) -> SimBackend {
        self.crash(|_, _| None)
    }

    /// Flips one bit of a segment's durable image (bit rot). A page cache that holds the page
    /// hides it until dropped, as a real one would.
    pub fn flip_bit(&self, segment: u64, offset: usize, bit: u8) {
        let mut state = self.lock();
        let image = &mut state.segments.get_mut(&segment).expect("segment exists").synced;
        image[offset] ^= 1 << bit;
    }

    /// The durable image of a segment.
    #[must_use]
    pub fn synced_image(&self, segment: u64) -> Option<Vec<u8>> {
        self.lock().segments.get(&segment).map(|state| state.synced.clone())
    }

    /// Replaces the durable image of a segment (to plant arbitrary bytes), the page cache's
    /// too, and forgets its unsynced writes.
    pub fn set_synced_image(&self, segment: u64, image: Vec<u8>) {
        self.lock().segments.insert(segment, SegmentState::clean(image));
    }

    /// The page cache's image of a segment: what a process opening it reads before
    /// [`Backend::drop_cache`].
    #[must_use]
    pub fn cached_image(&self, segment: u64) -> Option<Vec<u8>> {
        self.lock().segments.get(&segment).map(|state| state.cached.clone())
    }
}

/// A segment of a simulated disk: the log writes into `written`; syncs apply the recorded
/// writes to the shared durable image.
pub struct SimSegment {
    number: u64,
    written: Vec<u8>,
    disk: SimBackend,
}

impl Segment for SimSegment {
    fn bytes(&self) -> &[u8] {
        &self.written
    }

    fn bytes_mut(&mut self, offset: usize, len: usize) -> &mut [u8] {
        &mut self.written[offset..offset + len]
    }

    fn wrote(&mut self, offset: usize, len: usize) {
        let bytes = self.written[offset..offset + len].to_vec();
        let mut state = self.disk.lock();
        let segment = state.segments.get_mut(&self.number).expect("segment exists on its disk");
        let write = PendingWrite { offset, bytes };
        apply(&mut segment.cached, &write);
        segment.pending.push(write);
    }

    fn syncer(&mut self) -> Box<dyn Syncer> {
        let count =
            self.disk.lock().segments.get(&self.number).map_or(0, |segment| segment.pending.len());
        Box::new(SimSyncer { number: self.number, count, disk: self.disk.clone() })
    }
}

struct SimSyncer {
    number: u64,
    count: usize,
    disk: SimBackend,
}

impl Syncer for SimSyncer {
    fn sync(self: Box<Self>) -> std::io::Result<()> {
        let mut state = self.disk.lock();
        let failing = state.failing_syncs > 0;
        state.failing_syncs = state.failing_syncs.saturating_sub(1);
        let Some(segment) = state.segments.get_mut(&self.number) else {
            return if failing { Err(std::io::Error::from_raw_os_error(5)) } else { Ok(()) };
        };
        let count = self.count.min(segment.pending.len());
        let done: Vec<PendingWrite> = segment.pending.drain(..count).collect();
        if failing {
            // Linux after a failed writeback: the pages are marked clean and kept. No later
            // sync writes them and a crash loses them, but reads still see them (`cached`).
            return Err(std::io::Error::from_raw_os_error(5)); // EIO
        }
        for write in &done {
            apply(&mut segment.synced, write);
        }
        Ok(())
    }
}

/// A file being written in one pass ([`FileSink`]): its bytes in memory (the simulator's
/// files are small) until [`FileSink::finish`] replaces the file as
/// [`Backend::write_file_atomic`] does, failing syncs and directory entries alike. Unfinished,
/// it is nowhere on the disk: a crash loses it whole.
#[derive(Debug)]
pub struct SimFileSink {
    disk: SimBackend,
    name: String,
    bytes: Vec<u8>,
}

impl std::io::Write for SimFileSink {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.bytes.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl FileSink for SimFileSink {
    type Reader = std::io::Cursor<Vec<u8>>;

    fn write_at(&mut self, offset: u64, bytes: &[u8]) -> std::io::Result<()> {
        let start = usize::try_from(offset).map_err(std::io::Error::other)?;
        let end = start + bytes.len();
        if self.bytes.len() < end {
            self.bytes.resize(end, 0);
        }
        self.bytes[start..end].copy_from_slice(bytes);
        Ok(())
    }

    fn read_back(&mut self) -> Result<Self::Reader> {
        Ok(std::io::Cursor::new(self.bytes.clone()))
    }

    fn written_bytes(&self) -> u64 {
        self.bytes.len() as u64
    }

    fn failure(&mut self) -> Option<Error> {
        None
    }

    fn finish(self) -> Result<()> {
        self.disk.write_file_atomic(&self.name, &self.bytes)
    }
}

impl Backend for SimBackend {
    type Segment = SimSegment;
    type FileSink = SimFileSink;
    type FileReader = std::io::Cursor<Vec<u8>>;

    fn list(&self) -> Result<Vec<u64>> {
        Ok(self.lock().segments.keys().copied().collect())
    }

    fn create(&self, number: u64, bytes: u64, header: &[u8]) -> Result<SimSegment> {
        let mut state = self.lock();
        let used: u64 = state.segments.values().map(|segment| segment.synced.len() as u64).sum();
        if state.space_bytes.is_some_and(|space| used + bytes > space) {
            return Err(Error::NoSpace { path: self.path(number) });
        }
        let mut image = vec![0u8; usize::try_from(bytes).expect("segment fits memory")];
        image[..header.len()].copy_from_slice(header);
        let replaced = state.segments.insert(number, SegmentState::clean(image.clone()));
        let entry = Entry::Segment(number);
        let replaced = replaced.map(|segment| segment.synced);
        state.unsynced_entries.push(EntryChange::Created { entry, replaced });
        state.sync_directory()?;
        drop(state);
        Ok(SimSegment { number, written: image, disk: self.clone() })
    }

    fn open(&self, number: u64) -> Result<SimSegment> {
        let image = self.lock().segments.get(&number).map(|segment| segment.cached.clone());
        let Some(written) = image else {
            let source = std::io::Error::from(std::io::ErrorKind::NotFound);
            return Err(Error::Io { op: "open", path: self.path(number), source });
        };
        Ok(SimSegment { number, written, disk: self.clone() })
    }

    fn drop_cache(&self, number: u64) -> Result<()> {
        let mut state = self.lock();
        if let Some(segment) = state.segments.get_mut(&number) {
            // Clean pages go; dirty ones stay (they are still to be written).
            let mut image = segment.synced.clone();
            for write in &segment.pending {
                apply(&mut image, write);
            }
            segment.cached = image;
        }
        Ok(())
    }

    fn remove(&self, number: u64) -> Result<()> {
        let mut state = self.lock();
        if let Some(segment) = state.segments.remove(&number) {
            let (entry, image) = (Entry::Segment(number), segment.synced);
            state.unsynced_entries.push(EntryChange::Removed { entry, image });
            state.sync_directory()?;
        }
        Ok(())
    }

    fn set_aside(&self, number: u64, segment: SimSegment) -> Result<()> {
        drop(segment);
        let mut state = self.lock();
        if let Some(segment) = state.segments.remove(&number) {
            // Its unsynced writes may or may not have reached the disk: a spare's bytes
            // are stale either way.
            let replaced = state.spares.insert(number, segment.synced);
            let (from, to) = (Entry::Segment(number), Entry::Spare(number));
            state.unsynced_entries.push(EntryChange::Renamed { from, to, replaced });
            state.sync_directory()?;
        }
        Ok(())
    }

    fn spares(&self) -> Result<Vec<u64>> {
        Ok(self.lock().spares.keys().copied().collect())
    }

    fn reuse(&self, spare: u64, number: u64, bytes: u64, header: &[u8]) -> Result<SimSegment> {
        let mut state = self.lock();
        let Some(mut image) = state.spares.remove(&spare) else {
            drop(state);
            return self.create(number, bytes, header);
        };
        if image.len() as u64 != bytes {
            drop(state);
            return self.create(number, bytes, header);
        }
        // The header is durable before the rename, as on real files.
        image[..header.len()].copy_from_slice(header);
        let replaced = state.segments.insert(number, SegmentState::clean(image.clone()));
        let (from, to) = (Entry::Spare(spare), Entry::Segment(number));
        let replaced = replaced.map(|segment| segment.synced);
        state.unsynced_entries.push(EntryChange::Renamed { from, to, replaced });
        state.sync_directory()?;
        drop(state);
        Ok(SimSegment { number, written: image, disk: self.clone() })
    }

    fn remove_spare(&self, spare: u64) -> Result<()> {
        let mut state = self.lock();
        if let Some(image) = state.spares.remove(&spare) {
            state.unsynced_entries.push(EntryChange::Removed { entry: Entry::Spare(spare), image });
            state.sync_directory()?;
        }
        Ok(())
    }

    fn path(&self, number: u64) -> PathBuf {
        PathBuf::from(format!("sim/{number:016x}.wal"))
    }

    fn read_file(&self, name: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.lock().files.get(name).cloned())
    }

    fn create_file(&self, name: &str) -> Result<SimFileSink> {
        let (disk, name, bytes) = (self.clone(), name.to_string(), Vec::new());
        Ok(SimFileSink { disk, name, bytes })
    }

    fn open_file(&self, name: &str) -> Result<Option<Self::FileReader>> {
        Ok(self.read_file(name)?.map(std::io::Cursor::new))
    }

    fn remove_file(&self, name: &str) -> Result<()> {
        let mut state = self.lock();
        if let Some(image) = state.files.remove(name) {
            let entry = Entry::File(name.to_string());
            state.unsynced_entries.push(EntryChange::Removed { entry, image });
            state.sync_directory()?;
        }
        Ok(())
    }

    fn write_file_atomic(&self, name: &str, bytes: &[u8]) -> Result<()> {
        let mut state = self.lock();
        if state.failing_syncs > 0 {
            state.failing_syncs -= 1;
            let source = std::io::Error::from_raw_os_error(5);
            return Err(Error::Io {
                op: "fsync",
                path: PathBuf::from(format!("sim/{name}")),
                source,
            });
        }
        let replaced = state.files.insert(name.to_string(), bytes.to_vec());
        let entry = Entry::File(name.to_string());
        state.unsynced_entries.push(EntryChange::Created { entry, replaced });
        state.sync_directory()
    }
}
