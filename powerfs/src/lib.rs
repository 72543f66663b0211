//! A FUSE file system for power-loss tests: every change lives in memory, and a simulated
//! power cut throws away what no sync covered.
//!
//! What counts as durable (the strict POSIX reading, what a program may rely on):
//! - a file's bytes and size, once an `fsync`/`fdatasync` of that file (a FUSE `FSYNC`
//!   request) has completed: it covers the writes that reached the daemon before it arrived.
//!   A sync completes after the latency given at mount (a disk's), on a thread of its own;
//! - a directory's entries (files and directories created, renamed in or out, removed), once
//!   an `fsync` of that directory (`FSYNCDIR`) came after the change. Syncing a file does not
//!   make its name durable, nor does syncing the parent of its parent.
//!
//! [`PowerFs::power_off`] is the instant the power goes: nothing becomes durable after it (a
//! sync still at the disk fails with EIO, as does every change). [`PowerFs::cut_power`] then
//! unmounts (the kernel's page cache of the mount goes with it, so no dropped byte can still
//! be served), reverts every unsynced change, and mounts again; the processes using the mount
//! must be gone by then (killed: the cut models the machine dying). A cut either drops every
//! unsynced change, or ([`Cut::Scattered`]) keeps a random part of them, page by page and
//! directory by directory: writeback in any order, as a disk that reorders writes leaves it.
//!
//! Faults on demand, besides the cut: [`PowerFs::fail_syncs`] makes the next file syncs of
//! chosen files fail with EIO, as a disk that cannot write them back: the writes such a sync
//! covered are lost to the disk (the daemon reverts them to the last sync), as Linux leaves a
//! failed writeback, though the kernel's page cache may still serve them to the process that
//! wrote them. [`PowerFs::limit_space`] caps the bytes all files hold together: a write,
//! `fallocate` or size change that would grow past it fails with ENOSPC (writes inside a
//! file's size, as into a preallocated segment, still succeed), until the limit is lifted.
//!
//! Not modelled: torn pages (a 4 KiB page is kept or dropped whole), bit rot, read errors,
//! hard links, symbolic links, extended attributes, permissions
//! (everyone is root). Writes go through the kernel in write-through mode (no FUSE writeback
//! cache), so each write reaches this daemon before the system call returns; the test `probe`
//! checks the request sequence the WAL's file operations produce.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::{OsStr, OsString};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::time::{Duration, Instant, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow,
    WriteFlags,
};

/// The unit a cut keeps or drops.
const PAGE: u64 = 4096;

/// How long the kernel may cache names and attributes: every change goes through this mount,
/// which keeps its caches coherent, and a cut remounts.
const TTL: Duration = Duration::from_secs(60);

/// What a power cut keeps of the unsynced changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cut {
    /// Nothing: the files are exactly what the syncs made durable.
    DropAll,
    /// A random part, from this seed: each unsynced page of a file and each unsynced
    /// directory is kept (as written last) or reverted (to its last sync) by a coin toss, and
    /// each file's size too.
    Scattered(u64),
}

/// What the file system has seen and done since it was made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// `WRITE` requests.
    pub writes: u64,
    /// Bytes written.
    pub bytes_written: u64,
    /// `FSYNC` requests (fsync and fdatasync of files).
    pub file_syncs: u64,
    /// `FSYNCDIR` requests.
    pub dir_syncs: u64,
    /// Files and directories created, renamed and removed.
    pub dir_changes: u64,
    /// `FALLOCATE` requests.
    pub fallocates: u64,
    /// Power cuts.
    pub cuts: u64,
    /// Unsynced pages reverted by cuts (a page kept by a scattered cut is not counted).
    pub pages_dropped: u64,
    /// Unsynced directories reverted by cuts.
    pub dirs_reverted: u64,
    /// Files whose unsynced size change a cut reverted.
    pub sizes_reverted: u64,
    /// File syncs failed with EIO on demand ([`PowerFs::fail_syncs`]).
    pub syncs_failed: u64,
    /// Writes, fallocates and size changes refused with ENOSPC ([`PowerFs::limit_space`]).
    pub no_space: u64,
}

/// What a cut did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CutReport {
    /// Unsynced pages reverted.
    pub pages_dropped: u64,
    /// Unsynced pages kept (scattered cuts only).
    pub pages_kept: u64,
    /// Directories whose unsynced entries were reverted.
    pub dirs_reverted: u64,
    /// Files whose unsynced size change was reverted.
    pub sizes_reverted: u64,
    /// Files and directories no durable name reaches any more, forgotten.
    pub inodes_forgotten: u64,
}

/// A file's bytes, with what its last sync made durable.
#[derive(Debug, Default)]
struct FileData {
    bytes: Vec<u8>,
    durable_len: u64,
    /// Changes so far (writes, size changes): the clock a sync's arrival is told by.
    changes: u64,
    /// Pages written, truncated or extended since the last sync, with the change that last
    /// touched each.
    dirty: BTreeMap<u64, u64>,
    /// The durable bytes of the dirty pages that lie below `durable_len` (what a revert
    /// restores; a dirty page at or past it reverts to nothing).
    undo: HashMap<u64, Vec<u8>>,
}

/// A file as an `FSYNC` request found it when it arrived: what the sync makes durable when
/// it completes (later writes are not covered).
#[derive(Debug)]
struct SyncPoint {
    changes: u64,
    len: u64,
    /// The dirty pages' bytes then.
    pages: HashMap<u64, Vec<u8>>,
}

impl FileData {
    /// Records the durable content of the pages `[start, end)` touch, before they change.
    fn touch(&mut self, start: u64, end: u64) {
        if end <= start {
            return;
        }
        self.changes += 1;
        for page in start / PAGE..end.div_ceil(PAGE) {
            if self.dirty.insert(page, self.changes).is_some() {
                continue;
            }
            let from = page * PAGE;
            if from < self.durable_len {
                // Untouched since the sync, so the current bytes are the durable ones.
                let to = ((page + 1) * PAGE).min(self.durable_len) as usize;
                self.undo.insert(page, self.bytes[from as usize..to].to_vec());
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let end = offset + data.len() as u64;
        if (self.bytes.len() as u64) < end {
            // The gap a write past the end opens reads as zeros, and is new too.
            self.touch(self.bytes.len() as u64, end);
            self.bytes.resize(end as usize, 0);
        }
        self.touch(offset, end);
        self.bytes[offset as usize..end as usize].copy_from_slice(data);
    }

    fn set_len(&mut self, len: u64) {
        let current = self.bytes.len() as u64;
        self.touch(len.min(current), len.max(current));
        self.bytes.resize(len as usize, 0);
    }

    fn page(&self, page: u64, len: u64) -> Vec<u8> {
        let from = (page * PAGE).min(len) as usize;
        let to = ((page + 1) * PAGE).min(len) as usize;
        self.bytes[from..to].to_vec()
    }

    /// What a sync arriving now covers.
    fn sync_point(&self) -> SyncPoint {
        let len = self.bytes.len() as u64;
        let pages = self.dirty.keys().map(|page| (*page, self.page(*page, len))).collect();
        SyncPoint { changes: self.changes, len, pages }
    }

    /// A sync completes: everything as it was at `point` is durable.
    fn sync_to(&mut self, point: SyncPoint) {
        self.durable_len = point.len;
        let mut undo = HashMap::new();
        self.dirty.retain(|page, changed| {
            let later = *changed > point.changes;
            // Changed again since the sync arrived: a revert goes back to the bytes it synced.
            if let (true, Some(bytes)) = (later, point.pages.get(page)) {
                undo.insert(*page, bytes.clone());
            }
            later
        });
        self.undo.retain(|page, _| self.dirty.contains_key(page));
        self.undo.extend(undo);
        self.undo.retain(|page, _| page * PAGE < point.len);
    }

    #[cfg(test)]
    fn sync(&mut self) {
        let point = self.sync_point();
        self.sync_to(point);
    }

    /// Reverts the unsynced changes, all or by coin tosses; returns (dropped, kept) pages and
    /// whether the size was reverted.
    fn cut(&mut self, rng: &mut Option<Rng>) -> (u64, u64, bool) {
        let keep_len = rng.as_mut().is_some_and(Rng::coin);
        let len_reverted = !keep_len && self.durable_len != self.bytes.len() as u64;
        let len = if keep_len { self.bytes.len() as u64 } else { self.durable_len };
        let (mut dropped, mut kept) = (0, 0);
        self.bytes.resize(len as usize, 0);
        for page in std::mem::take(&mut self.dirty).into_keys() {
            let from = page * PAGE;
            if from >= len {
                continue;
            }
            if rng.as_mut().is_some_and(Rng::coin) {
                kept += 1;
                continue;
            }
            dropped += 1;
            let to = ((page + 1) * PAGE).min(len) as usize;
            let region = &mut self.bytes[from as usize..to];
            region.fill(0);
            if let Some(old) = self.undo.get(&page) {
                let n = old.len().min(region.len());
                region[..n].copy_from_slice(&old[..n]);
            }
        }
        self.undo.clear();
        // What survived is what the disk holds now: durable.
        self.durable_len = len;
        (dropped, kept, len_reverted)
    }
}

#[derive(Debug)]
enum Content {
    File(FileData),
    Dir {
        entries: BTreeMap<OsString, u64>,
        /// The entries as the last `FSYNCDIR` of this directory left them.
        durable: BTreeMap<OsString, u64>,
    },
}

#[derive(Debug)]
struct Inode {
    content: Content,
    perm: u16,
    mtime: SystemTime,
}

/// A tiny xorshift generator: the cut's coin tosses, reproducible from a seed.
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn coin(&mut self) -> bool {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 & 1 == 1
    }
}

#[derive(Debug)]
struct State {
    inodes: HashMap<u64, Inode>,
    next_inode: u64,
    counters: Counters,
    /// How long a file sync takes.
    sync_latency: Duration,
    /// False from [`PowerFs::power_off`] to the end of the cut: every change and sync fails,
    /// and a sync under way when the power went makes nothing durable.
    powered: bool,
    /// Power cuts so far: tells a sync that arrived before one.
    epoch: u64,
    /// Request names in arrival order, while tracing (the probe test reads them).
    trace: Option<Vec<String>>,
    /// File syncs to fail with EIO: how many more, and of which files (by path).
    failing_syncs: Option<(u32, PathMatch)>,
    /// The bytes all files may hold together.
    space_limit: Option<u64>,
}

/// Which files a fault strikes: a test of the path from the mount's root (`data/shard-0/…`).
#[derive(Clone)]
struct PathMatch(Arc<dyn Fn(&str) -> bool + Send + Sync>);

impl std::fmt::Debug for PathMatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PathMatch")
    }
}

impl State {
    fn new() -> State {
        let root = Inode {
            content: Content::Dir { entries: BTreeMap::new(), durable: BTreeMap::new() },
            perm: 0o755,
            mtime: SystemTime::now(),
        };
        State {
            inodes: HashMap::from([(INodeNo::ROOT.0, root)]),
            next_inode: INodeNo::ROOT.0 + 1,
            counters: Counters::default(),
            sync_latency: Duration::ZERO,
            powered: true,
            epoch: 0,
            trace: None,
            failing_syncs: None,
            space_limit: None,
        }
    }

    /// The path of `ino` from the root (`a/b/c`), if a name reaches it.
    fn path_of(&self, ino: u64) -> Option<String> {
        let mut pending = vec![(INodeNo::ROOT.0, String::new())];
        while let Some((dir, path)) = pending.pop() {
            let Some(Inode { content: Content::Dir { entries, .. }, .. }) = self.inodes.get(&dir)
            else {
                continue;
            };
            for (name, child) in entries {
                let joined = if path.is_empty() {
                    name.to_string_lossy().into_owned()
                } else {
                    format!("{path}/{}", name.to_string_lossy())
                };
                if *child == ino {
                    return Some(joined);
                }
                pending.push((*child, joined));
            }
        }
        None
    }

    /// The bytes the files a name reaches hold together.
    fn used_bytes(&self) -> u64 {
        let mut used = 0;
        let mut pending = vec![INodeNo::ROOT.0];
        while let Some(ino) = pending.pop() {
            match self.inodes.get(&ino).map(|inode| &inode.content) {
                Some(Content::Dir { entries, .. }) => pending.extend(entries.values().copied()),
                Some(Content::File(data)) => used += data.bytes.len() as u64,
                None => {}
            }
        }
        used
    }

    /// Whether growing file `ino` to `end` bytes stays within the space limit; counts a refusal.
    fn room_for(&mut self, ino: u64, end: u64) -> bool {
        let Some(limit) = self.space_limit else { return true };
        let len = match self.inodes.get(&ino).map(|inode| &inode.content) {
            Some(Content::File(data)) => data.bytes.len() as u64,
            _ => return true,
        };
        if end <= len || self.used_bytes() + (end - len) <= limit {
            return true;
        }
        self.counters.no_space += 1;
        false
    }

    /// Whether this sync of `ino` is one to fail; if so, the writes it covered are lost to
    /// the disk (reverted to the last sync), as a failed writeback leaves them.
    fn sync_fails(&mut self, ino: u64) -> bool {
        let Some((remaining, matching)) = &self.failing_syncs else { return false };
        let matching = matching.clone();
        if *remaining == 0 || !self.path_of(ino).is_some_and(|path| (matching.0)(&path)) {
            return false;
        }
        if let Some((remaining, _)) = &mut self.failing_syncs {
            *remaining -= 1;
        }
        self.counters.syncs_failed += 1;
        if let Ok(file) = self.file_mut(ino) {
            file.cut(&mut None);
        }
        true
    }

    fn note(&mut self, what: impl FnOnce() -> String) {
        if let Some(trace) = &mut self.trace {
            trace.push(what());
        }
    }

    fn attr(&self, ino: u64) -> Result<FileAttr, Errno> {
        let inode = self.inodes.get(&ino).ok_or(Errno::ENOENT)?;
        let (kind, size, nlink) = match &inode.content {
            Content::File(data) => (FileType::RegularFile, data.bytes.len() as u64, 1),
            Content::Dir { .. } => (FileType::Directory, 0, 2),
        };
        Ok(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: inode.mtime,
            mtime: inode.mtime,
            ctime: inode.mtime,
            crtime: inode.mtime,
            kind,
            perm: inode.perm,
            nlink,
            uid: 0,
            gid: 0,
            rdev: 0,
            flags: 0,
            blksize: PAGE as u32,
        })
    }

    fn entries(&self, dir: u64) -> Result<&BTreeMap<OsString, u64>, Errno> {
        match self.inodes.get(&dir).map(|inode| &inode.content) {
            Some(Content::Dir { entries, .. }) => Ok(entries),
            Some(Content::File(_)) => Err(Errno::ENOTDIR),
            None => Err(Errno::ENOENT),
        }
    }

    fn entries_mut(&mut self, dir: u64) -> Result<&mut BTreeMap<OsString, u64>, Errno> {
        match self.inodes.get_mut(&dir) {
            Some(Inode { content: Content::Dir { entries, .. }, mtime, .. }) => {
                *mtime = SystemTime::now();
                Ok(entries)
            }
            Some(_) => Err(Errno::ENOTDIR),
            None => Err(Errno::ENOENT),
        }
    }

    fn file_mut(&mut self, ino: u64) -> Result<&mut FileData, Errno> {
        match self.inodes.get_mut(&ino) {
            Some(Inode { content: Content::File(data), mtime, .. }) => {
                *mtime = SystemTime::now();
                Ok(data)
            }
            Some(_) => Err(Errno::EISDIR),
            None => Err(Errno::ENOENT),
        }
    }

    fn make(
        &mut self,
        parent: u64,
        name: &OsStr,
        content: Content,
        perm: u16,
    ) -> Result<u64, Errno> {
        if self.entries(parent)?.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        let ino = self.next_inode;
        self.next_inode += 1;
        self.inodes.insert(ino, Inode { content, perm, mtime: SystemTime::now() });
        self.entries_mut(parent)?.insert(name.to_owned(), ino);
        self.counters.dir_changes += 1;
        Ok(ino)
    }

    fn remove(&mut self, parent: u64, name: &OsStr, want_dir: bool) -> Result<(), Errno> {
        let ino = *self.entries(parent)?.get(name).ok_or(Errno::ENOENT)?;
        match (&self.inodes[&ino].content, want_dir) {
            (Content::Dir { entries, .. }, true) if !entries.is_empty() => {
                return Err(Errno::ENOTEMPTY);
            }
            (Content::Dir { .. }, false) => return Err(Errno::EISDIR),
            (Content::File(_), true) => return Err(Errno::ENOTDIR),
            _ => {}
        }
        // The inode stays: an open descriptor may still read it, and a cut may bring the
        // name back. A cut forgets what no durable name reaches.
        self.entries_mut(parent)?.remove(name);
        self.counters.dir_changes += 1;
        Ok(())
    }

    fn rename(&mut self, from: u64, name: &OsStr, to: u64, new_name: &OsStr) -> Result<(), Errno> {
        let ino = *self.entries(from)?.get(name).ok_or(Errno::ENOENT)?;
        if let Some(&target) = self.entries(to)?.get(new_name) {
            if target == ino {
                return Ok(());
            }
            if let Content::Dir { entries, .. } = &self.inodes[&target].content {
                if !entries.is_empty() {
                    return Err(Errno::ENOTEMPTY);
                }
            }
        }
        self.entries_mut(from)?.remove(name);
        self.entries_mut(to)?.insert(new_name.to_owned(), ino);
        self.counters.dir_changes += 1;
        Ok(())
    }

    fn cut(&mut self, cut: Cut) -> CutReport {
        let mut rng = match cut {
            Cut::DropAll => None,
            Cut::Scattered(seed) => Some(Rng(seed | 1)),
        };
        let mut report = CutReport::default();
        // Directories first: which names survive decides which inodes do.
        let mut dirs: Vec<u64> = self.inodes.keys().copied().collect();
        dirs.sort_unstable();
        for ino in &dirs {
            if let Some(Inode { content: Content::Dir { entries, durable }, .. }) =
                self.inodes.get_mut(ino)
            {
                if entries != durable {
                    if rng.as_mut().is_some_and(Rng::coin) {
                        durable.clone_from(entries);
                    } else {
                        entries.clone_from(durable);
                        report.dirs_reverted += 1;
                    }
                }
            }
        }
        let mut reachable = BTreeSet::from([INodeNo::ROOT.0]);
        let mut pending = vec![INodeNo::ROOT.0];
        while let Some(ino) = pending.pop() {
            if let Some(Inode { content: Content::Dir { entries, .. }, .. }) = self.inodes.get(&ino)
            {
                for child in entries.values() {
                    if reachable.insert(*child) {
                        pending.push(*child);
                    }
                }
            }
        }
        let before = self.inodes.len();
        self.inodes.retain(|ino, _| reachable.contains(ino));
        report.inodes_forgotten = (before - self.inodes.len()) as u64;
        for ino in reachable {
            if let Some(Inode { content: Content::File(data), .. }) = self.inodes.get_mut(&ino) {
                let (dropped, kept, size_reverted) = data.cut(&mut rng);
                report.pages_dropped += dropped;
                report.pages_kept += kept;
                report.sizes_reverted += u64::from(size_reverted);
            }
        }
        self.counters.cuts += 1;
        self.counters.pages_dropped += report.pages_dropped;
        self.counters.dirs_reverted += report.dirs_reverted;
        self.counters.sizes_reverted += report.sizes_reverted;
        report
    }
}

/// The FUSE side: every request takes the state's lock (one request at a time); file syncs
/// complete on the disk thread.
struct Daemon {
    state: Arc<Mutex<State>>,
    disk: mpsc::Sender<QueuedSync>,
}

impl Daemon {
    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A file sync the disk is at.
struct QueuedSync {
    ino: u64,
    point: SyncPoint,
    due: Instant,
    /// The power's epoch it arrived in: a sync the power cut short makes nothing durable.
    epoch: u64,
    reply: ReplyEmpty,
}

/// The disk: completes each sync when it is due (they arrive in order, with one latency),
/// if the power has stayed on since it arrived.
fn disk(state: Arc<Mutex<State>>, queue: mpsc::Receiver<QueuedSync>) {
    for sync in queue {
        std::thread::sleep(sync.due.saturating_duration_since(Instant::now()));
        let mut state = lock(&state);
        if !state.powered || state.epoch != sync.epoch {
            sync.reply.error(Errno::EIO);
            continue;
        }
        match state.file_mut(sync.ino) {
            Ok(file) => {
                file.sync_to(sync.point);
                sync.reply.ok();
            }
            Err(errno) => sync.reply.error(errno),
        }
    }
}

impl Filesystem for Daemon {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        // Larger writes, fewer requests; the kernel caps it at what it supports.
        let _ = config.set_max_write(1 << 20);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let state = self.state();
        let found = state
            .entries(parent.0)
            .and_then(|entries| entries.get(name).copied().ok_or(Errno::ENOENT))
            .and_then(|ino| state.attr(ino));
        match found {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(errno) => reply.error(errno),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.state().attr(ino.0) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(errno) => reply.error(errno),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut state = self.state();
        if !state.powered {
            return reply.error(Errno::EIO);
        }
        let result = (|| {
            if let Some(size) = size {
                state.note(|| format!("truncate {} {size}", ino.0));
                if !state.room_for(ino.0, size) {
                    return Err(Errno::ENOSPC);
                }
                state.file_mut(ino.0)?.set_len(size);
            }
            if let Some(mode) = mode {
                state.inodes.get_mut(&ino.0).ok_or(Errno::ENOENT)?.perm = (mode & 0o7777) as u16;
            }
            state.attr(ino.0)
        })();
        match result {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(errno) => reply.error(errno),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let mut state = self.state();
        if !state.powered {
            return reply.error(Errno::EIO);
        }
        state.note(|| format!("mkdir {name:?}"));
        let content = Content::Dir { entries: BTreeMap::new(), durable: BTreeMap::new() };
        let made = state.make(parent.0, name, content, (mode & !umask & 0o7777) as u16);
        match made.and_then(|ino| state.attr(ino)) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(errno) => reply.error(errno),
        }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let mut state = self.state();
        if !state.powered {
            return reply.error(Errno::EIO);
        }
        state.note(|| format!("create {name:?}"));
        let content = Content::File(FileData::default());
        let made = state.make(parent.0, name, content, (mode & !umask & 0o7777) as u16);
        match made.and_then(|ino| state.attr(ino)) {
            Ok(attr) => {
                reply.created(&TTL, &attr, Generation(0), FileHandle(0), FopenFlags::empty());
            }
            Err(errno) => reply.error(errno),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let mut state = self.state();
        if !state.powered {
            return reply.error(Errno::EIO);
        }
        state.note(|| format!("unlink {name:?}"));
        match state.remove(parent.0, name, false) {
            Ok(()) => reply.ok(),
            Err(errno) => reply.error(errno),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let mut state = self.state();
        if !state.powered {
            return reply.error(Errno::EIO);
        }
        state.note(|| format!("rmdir {name:?}"));
        match state.remove(parent.0, name, true) {
            Ok(()) => reply.ok(),
            Err(errno) => reply.error(errno),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if !flags.is_empty() {
            return reply.error(Errno::EINVAL);
        }
        let mut state = self.state();
        if !state.powered {
            return reply.error(Errno::EIO);
        }
        state.note(|| format!("rename {name:?} {newname:?}"));
        match state.rename(parent.0, name, newparent.0, newname) {
            Ok(()) => reply.ok(),
            Err(errno) => reply.error(errno),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.state().attr(ino.0) {
            // Page cache on (no direct I/O): shared mappings need it.
            Ok(_) => reply.opened(FileHandle(0), FopenFlags::empty()),
            Err(errno) => reply.error(errno),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let state = self.state();
        match state.inodes.get(&ino.0).map(|inode| &inode.content) {
            Some(Content::File(data)) => {
                let start = (offset as usize).min(data.bytes.len());
                let end = (start + size as usize).min(data.bytes.len());
                reply.data(&data.bytes[start..end]);
            }
            Some(_) => reply.error(Errno::EISDIR),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let mut state = self.state();
        if !state.powered {
            return reply.error(Errno::EIO);
        }
        state.note(|| format!("write {} {offset} {}", ino.0, data.len()));
        state.counters.writes += 1;
        state.counters.bytes_written += data.len() as u64;
        if !state.room_for(ino.0, offset + data.len() as u64) {
            return reply.error(Errno::ENOSPC);
        }
        match state.file_mut(ino.0) {
            Ok(file) => {
                file.write(offset, data);
                reply.written(data.len() as u32);
            }
            Err(errno) => reply.error(errno),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // A close makes nothing durable.
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let mut state = self.state();
        if !state.powered {
            return reply.error(Errno::EIO);
        }
        state.note(|| format!("fsync {} datasync={datasync}", ino.0));
        state.counters.file_syncs += 1;
        if state.sync_fails(ino.0) {
            return reply.error(Errno::EIO);
        }
        let (due, epoch) = (Instant::now() + state.sync_latency, state.epoch);
        // fdatasync covers the size too (a read needs both).
        let point = match state.file_mut(ino.0) {
            Ok(file) => file.sync_point(),
            Err(errno) => return reply.error(errno),
        };
        // The disk takes its time, without holding up other requests; until it is done a
        // cut drops what the sync covers.
        let queued = QueuedSync { ino: ino.0, point, due, epoch, reply };
        if let Err(unsent) = self.disk.send(queued) {
            unsent.0.reply.error(Errno::EIO);
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let state = self.state();
        let entries = match state.entries(ino.0) {
            Ok(entries) => entries,
            Err(errno) => return reply.error(errno),
        };
        let listed = [(OsStr::new("."), ino.0), (OsStr::new(".."), ino.0)]
            .into_iter()
            .chain(entries.iter().map(|(name, child)| (name.as_os_str(), *child)));
        for (index, (name, child)) in listed.enumerate().skip(offset as usize) {
            let kind = match state.inodes.get(&child).map(|inode| &inode.content) {
                Some(Content::Dir { .. }) => FileType::Directory,
                _ => FileType::RegularFile,
            };
            if reply.add(INodeNo(child), index as u64 + 1, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let mut state = self.state();
        if !state.powered {
            return reply.error(Errno::EIO);
        }
        state.note(|| format!("fsyncdir {}", ino.0));
        state.counters.dir_syncs += 1;
        match state.inodes.get_mut(&ino.0) {
            Some(Inode { content: Content::Dir { entries, durable }, .. }) => {
                durable.clone_from(entries);
                reply.ok();
            }
            Some(_) => reply.error(Errno::ENOTDIR),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        // Plenty of room, unless a limit is set.
        let state = self.state();
        let (blocks, free) = match state.space_limit {
            Some(limit) => (limit / PAGE, limit.saturating_sub(state.used_bytes()) / PAGE),
            None => (1 << 24, 1 << 24),
        };
        reply.statfs(blocks, free, free, 1 << 20, 1 << 20, PAGE as u32, 255, PAGE as u32);
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let mut state = self.state();
        if !state.powered {
            return reply.error(Errno::EIO);
        }
        state.note(|| format!("fallocate {} {offset} {length} mode={mode}", ino.0));
        state.counters.fallocates += 1;
        if mode != 0 {
            return reply.error(Errno::EOPNOTSUPP);
        }
        if !state.room_for(ino.0, offset + length) {
            return reply.error(Errno::ENOSPC);
        }
        match state.file_mut(ino.0) {
            Ok(file) => {
                let end = offset + length;
                if (file.bytes.len() as u64) < end {
                    file.set_len(end);
                }
                reply.ok();
            }
            Err(errno) => reply.error(errno),
        }
    }
}

/// Why the file system cannot be mounted here, if it cannot: tests then skip, saying so.
#[must_use]
pub fn unavailable() -> Option<String> {
    if !Path::new("/dev/fuse").exists() {
        return Some("/dev/fuse is missing".to_string());
    }
    let found = std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| dir.join("fusermount3").is_file())
    });
    if !found {
        return Some("fusermount3 is not installed (Debian package fuse3)".to_string());
    }
    None
}

/// A mounted power-loss file system, unmounted when dropped.
pub struct PowerFs {
    state: Arc<Mutex<State>>,
    disk: mpsc::Sender<QueuedSync>,
    mountpoint: PathBuf,
    session: Option<fuser::BackgroundSession>,
}

impl PowerFs {
    /// Mounts an empty file system at `mountpoint` (an existing empty directory), whose file
    /// syncs complete after `sync_latency` (a disk's: the time a node acknowledging too early
    /// is exposed; zero makes that window too short for a test to hit).
    ///
    /// # Errors
    /// The mount failed (no `/dev/fuse`, no `fusermount3`, no permission).
    pub fn mount(mountpoint: impl Into<PathBuf>, sync_latency: Duration) -> io::Result<PowerFs> {
        let state = Arc::new(Mutex::new(State::new()));
        lock(&state).sync_latency = sync_latency;
        let (sender, queue) = mpsc::channel();
        let on_disk = Arc::clone(&state);
        std::thread::Builder::new()
            .name("powerfs-disk".to_string())
            .spawn(move || disk(on_disk, queue))?;
        let mut fs = PowerFs { state, disk: sender, mountpoint: mountpoint.into(), session: None };
        fs.mount_again()?;
        Ok(fs)
    }

    fn mount_again(&mut self) -> io::Result<()> {
        let mut config = fuser::Config::default();
        config.mount_options = vec![
            fuser::MountOption::FSName("powerfs".to_string()),
            fuser::MountOption::Subtype("powerfs".to_string()),
        ];
        config.n_threads = Some(2);
        let daemon = Daemon { state: Arc::clone(&self.state), disk: self.disk.clone() };
        self.session = Some(fuser::spawn_mount(daemon, &self.mountpoint, &config)?);
        Ok(())
    }

    /// Where it is mounted.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.mountpoint
    }

    /// The power goes, now: from this instant nothing more becomes durable (a sync the disk
    /// is still at fails), and every change fails with EIO. Call it before killing the
    /// processes, which may take a while to die (the kernel waits out their requests in
    /// flight), then [`PowerFs::cut_power`].
    pub fn power_off(&self) {
        let mut state = self.lock();
        state.powered = false;
        state.epoch += 1;
    }

    /// Simulates a power cut (after [`PowerFs::power_off`], or as if it had just been
    /// called): unmounts (nothing of the old mount's page cache survives),
    /// reverts what `cut` says of the unsynced changes, mounts again. Every process that had
    /// the mount open must have exited first.
    ///
    /// # Errors
    /// Unmounting or mounting again failed.
    pub fn cut_power(&mut self, cut: Cut) -> io::Result<CutReport> {
        self.unmount()?;
        let report = {
            let mut state = self.lock();
            let report = state.cut(cut);
            state.powered = true;
            state.epoch += 1;
            report
        };
        self.mount_again()?;
        Ok(report)
    }

    /// What the file system has seen since it was made.
    #[must_use]
    pub fn counters(&self) -> Counters {
        self.lock().counters
    }

    /// The next `count` file syncs (`fsync`, `fdatasync`) of files whose path from the mount's
    /// root (`data/shard-0/0000000000000003.wal`) `matching` accepts fail with EIO, and the
    /// writes each covered are lost to the disk (reverted to the file's last good sync). Other
    /// files' syncs go on as before. Replaces any earlier request; `count` 0 cancels.
    pub fn fail_syncs(&self, count: u32, matching: impl Fn(&str) -> bool + Send + Sync + 'static) {
        self.lock().failing_syncs = Some((count, PathMatch(Arc::new(matching))));
    }

    /// Caps the bytes all files hold together at `limit` (`None` lifts the cap): growing a
    /// file past it (a write past its end, `fallocate`, a size change) fails with ENOSPC.
    /// Writes within a file's size are never refused.
    pub fn limit_space(&self, limit: Option<u64>) {
        self.lock().space_limit = limit;
    }

    /// The bytes the files hold together now.
    #[must_use]
    pub fn used_bytes(&self) -> u64 {
        self.lock().used_bytes()
    }

    /// Starts recording the requests (names and arguments) in arrival order.
    pub fn start_trace(&self) {
        self.lock().trace = Some(Vec::new());
    }

    /// The requests recorded since [`PowerFs::start_trace`], and stops recording.
    #[must_use]
    pub fn take_trace(&self) -> Vec<String> {
        self.lock().trace.take().unwrap_or_default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl PowerFs {
    /// Unmounts and waits for the request threads to end. One of them may end with
    /// ECONNABORTED (it read the device after the kernel ended the connection): that is the
    /// end, not a failure. A mount still listed afterwards is.
    fn unmount(&mut self) -> io::Result<()> {
        if let Some(session) = self.session.take() {
            match session.umount_and_join() {
                Err(error) if error.raw_os_error() == Some(libc::ECONNABORTED) => {}
                other => other?,
            }
        }
        if mounted_at(&self.mountpoint)? {
            let path = self.mountpoint.display();
            return Err(io::Error::other(format!("{path} is still mounted")));
        }
        Ok(())
    }
}

/// Whether a powerfs file system is mounted at `path` (per `/proc/self/mountinfo`).
///
/// # Errors
/// The path or the mount table cannot be read.
pub fn mounted_at(path: &Path) -> io::Result<bool> {
    let path = path.canonicalize()?;
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")?;
    // "id parent dev root MOUNTPOINT options ... - TYPE SOURCE super-options"
    Ok(mounts.lines().any(|line| {
        let Some((mount, fs)) = line.split_once(" - ") else { return false };
        let mut fs = fs.split(' ');
        mount.split(' ').nth(4) == path.to_str()
            && fs.next().is_some_and(|kind| kind.starts_with("fuse"))
            && fs.next() == Some("powerfs")
    }))
}

impl Drop for PowerFs {
    fn drop(&mut self) {
        let _ = self.unmount();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // Tests may unwrap.

    use super::*;

    fn file_with(bytes: &[u8]) -> FileData {
        let mut file = FileData::default();
        file.write(0, bytes);
        file.sync();
        file
    }

    #[test]
    fn a_cut_reverts_unsynced_writes_and_sizes() {
        let mut file = file_with(&[1; 10_000]);
        file.write(5000, &[2; 100]);
        file.set_len(20_000);
        file.write(15_000, &[3; 10]);
        let (dropped, kept, size_reverted) = file.cut(&mut None);
        assert_eq!(file.bytes, vec![1; 10_000]);
        assert_eq!((kept, size_reverted), (0, true));
        assert_eq!(dropped, 2, "pages 1 and 2 lie below the durable length");
    }

    #[test]
    fn a_cut_keeps_what_a_sync_covered() {
        let mut file = file_with(&[1; 5000]);
        file.write(0, &[2; 10]);
        file.sync();
        file.write(4096, &[3; 10]);
        file.set_len(100);
        file.cut(&mut None);
        let mut expected = vec![1; 5000];
        expected[..10].fill(2);
        assert_eq!(file.bytes, expected);
    }

    #[test]
    fn a_sync_covers_what_was_written_before_it_arrived_not_after() {
        let mut file = file_with(&[1; 8192]);
        file.write(0, &[2; 10]);
        file.write(4096, &[3; 10]);
        let point = file.sync_point();
        file.write(0, &[4; 10]);
        file.write(8192, &[5; 10]);
        file.sync_to(point);
        file.cut(&mut None);
        let mut expected = vec![1; 8192];
        expected[..10].fill(2);
        expected[4096..4106].fill(3);
        assert_eq!(file.bytes, expected);
    }

    #[test]
    fn a_scattered_cut_keeps_whole_pages_or_their_synced_bytes() {
        let mut file = file_with(&vec![1; 64 * 4096]);
        for page in 0..64 {
            file.write(page * PAGE, &[2; 4096]);
        }
        let (dropped, kept, _) = file.cut(&mut Some(Rng(7)));
        assert!(dropped > 0 && kept > 0, "{dropped} dropped, {kept} kept");
        for page in file.bytes.chunks(4096) {
            assert!(page.iter().all(|b| *b == 1) || page.iter().all(|b| *b == 2));
        }
    }

    #[test]
    fn a_cut_reverts_unsynced_names_and_forgets_what_none_reaches() {
        let mut state = State::new();
        let root = INodeNo::ROOT.0;
        let dir = state
            .make(
                root,
                OsStr::new("d"),
                Content::Dir { entries: BTreeMap::new(), durable: BTreeMap::new() },
                0o755,
            )
            .unwrap();
        let synced =
            state.make(dir, OsStr::new("a"), Content::File(file_with(b"a")), 0o644).unwrap();
        let Some(Inode { content: Content::Dir { entries, durable }, .. }) =
            state.inodes.get_mut(&root)
        else {
            panic!()
        };
        durable.clone_from(entries);
        let Some(Inode { content: Content::Dir { entries, durable }, .. }) =
            state.inodes.get_mut(&dir)
        else {
            panic!()
        };
        durable.clone_from(entries);
        state.make(dir, OsStr::new("b"), Content::File(file_with(b"b")), 0o644).unwrap();
        state.rename(dir, OsStr::new("a"), dir, OsStr::new("c")).unwrap();
        let report = state.cut(Cut::DropAll);
        assert_eq!(report.inodes_forgotten, 1, "b");
        assert_eq!(
            state.entries(dir).unwrap().clone(),
            BTreeMap::from([(OsString::from("a"), synced)])
        );
    }
}
