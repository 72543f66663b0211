//! The log: appends, group commit, reads, truncation and recovery over a [`Backend`].
//!
//! Appends are a memcpy into the current segment. A sync is split in three so that the slow
//! part runs on any thread: [`Wal::start_sync`] (on the appending thread: stamps the watermark,
//! collects the segments to flush), [`PendingSync::run`] (anywhere: `fdatasync`),
//! [`Wal::finish_sync`] (on the appending thread: moves the durable position, or poisons the log).
//! One sync covers every record appended before it started (group commit). A failed sync is
//! never retried: the log is poisoned and every later call fails with [`Error::Poisoned`].

use std::collections::VecDeque;
use std::path::PathBuf;
use std::thread::JoinHandle;

use crate::backend::{Backend, Segment, Syncer};
use crate::error::{Error, Result};
use crate::format::KIND_SEGMENT_END;
use crate::format::{
    Decoded, RECORD_ALIGN, RECORD_HEADER_BYTES, Record, SEGMENT_HEADER_BYTES, SegmentHeader,
    WATERMARK_BYTES, WATERMARK_OFFSET, Watermark, decode_record, encode_head, encode_record,
    encode_record_split, record_bytes,
};

/// The file [`Wal::set_metadata`] writes.
pub const METADATA_FILE: &str = "metadata";
/// Present while the log is known to have lost records that may have been acknowledged: written
/// (durably) before recovery cuts them, removed by [`Wal::finish_repair`] (docs/wal-format.md,
/// "Damage").
pub const REPAIR_FILE: &str = "repair";
const METADATA_MAGIC: u32 = u32::from_le_bytes(*b"QMET");
/// Largest metadata blob.
pub const METADATA_BYTES_MAX: usize = 4096;

/// How a log is laid out.
#[derive(Clone, Debug)]
pub struct Options {
    /// Bytes per segment file, a multiple of 4096. An existing log keeps the size it was
    /// created with.
    pub segment_bytes: u64,
    /// Prepare the next segment on a background thread while the current one fills.
    pub prepare_ahead: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options { segment_bytes: 64 << 20, prepare_ahead: true }
    }
}

/// Whether a damaged record may have been acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Synced {
    /// A completed sync covered it: it was durable, so possibly acknowledged, and is now lost.
    Certainly,
    /// The last sync may or may not have completed before the crash.
    Possibly,
}

/// A damaged range at the end of the log that recovery cut but did not drop silently: the
/// replica must treat it as possibly acknowledged and repair it from its peers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Damage {
    /// The segment file.
    pub segment: PathBuf,
    /// The byte offset in it where the damage starts.
    pub offset: u64,
    /// The global position where the damage starts; the log continues from here.
    pub position: u64,
    /// What was wrong.
    pub reason: &'static str,
    /// Whether it had been made durable.
    pub synced: Synced,
}

/// What recovery found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Where the first record is.
    pub first_position: u64,
    /// Where the next record will go.
    pub end_position: u64,
    /// Valid records found (each checksum verified).
    pub records: u64,
    /// Bytes of records and padding scanned.
    pub bytes: u64,
    /// Damage that may have been acknowledged (empty after a clean shutdown or a plain crash).
    pub damaged: Vec<Damage>,
    /// Bytes of a torn tail that no completed sync covered, cut silently: never acknowledged.
    pub torn_tail_bytes: u64,
    /// The metadata last written with [`Wal::set_metadata`].
    pub metadata: Option<Vec<u8>>,
    /// The log lost records a completed sync had made durable ([`Synced::Certainly`]), now or
    /// at an earlier opening whose repair was not finished ([`Wal::finish_repair`]): its owner
    /// must recover them from elsewhere before it relies on the log again. Only
    /// [`Wal::open_repairing`] opens such a log.
    pub repair_pending: bool,
}

/// The watermarks of all segments together: the highest confirmed and target positions, and
/// whether any watermark was torn (then the target is unknown).
#[derive(Clone, Copy, Debug)]
struct Marks {
    confirmed: u64,
    target: u64,
    torn: bool,
}

/// A sync started by [`Wal::start_sync`]; run it anywhere, then hand the outcome back.
pub struct PendingSync {
    target: u64,
    /// Where the unsynced bytes start: the durable position when the sync was started.
    from: u64,
    /// Each segment with unsynced writes, oldest first, and its flush.
    syncers: Vec<(u64, Box<dyn Syncer>)>,
}

/// The result of [`PendingSync::run`].
#[derive(Debug)]
pub struct SyncOutcome {
    target: u64,
    from: u64,
    /// The segment whose flush failed, with the failure.
    result: std::result::Result<(), (u64, std::io::Error)>,
}

/// Where the log stands with the next segment ([`Wal::check_space`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Space {
    /// The next segment is made, or being made, or not needed yet: appends go on.
    Available,
    /// The next segment could not be made for lack of disk space: the tail segment's room is
    /// all that is left. Nothing is lost, the log is not poisoned, and the segment is tried
    /// again every [`NO_SPACE_RETRY`] by [`Wal::check_space`]; its owner should stop taking
    /// new work until the space is back.
    Full {
        /// The segment that could not be made.
        path: PathBuf,
    },
}

/// How often [`Wal::check_space`] tries again to make a segment the disk had no room for.
pub const NO_SPACE_RETRY: std::time::Duration = std::time::Duration::from_millis(200);

/// The next segment, prepared ahead of the rotation that needs it.
enum Next<S> {
    None,
    /// Being made on a thread; after a failure for lack of space, with the path of the
    /// segment refused (the log reports itself full until this attempt succeeds).
    Preparing(u64, JoinHandle<Result<S>>, Option<PathBuf>),
    Ready(u64, S),
    /// Segment `number` could not be made at `since` (no space): tried again from
    /// [`Wal::check_space`].
    NoSpace {
        number: u64,
        path: PathBuf,
        since: std::time::Instant,
    },
}

impl PendingSync {
    /// The position this sync makes durable.
    #[must_use]
    pub fn target(&self) -> u64 {
        self.target
    }

    /// Flushes every segment with unsynced writes, oldest first. Blocks: run it on a helper
    /// thread, never on a reactor.
    #[must_use]
    pub fn run(self) -> SyncOutcome {
        let (target, from) = (self.target, self.from);
        for (number, syncer) in self.syncers {
            if let Err(error) = syncer.sync() {
                return SyncOutcome { target, from, result: Err((number, error)) };
            }
        }
        SyncOutcome { target, from, result: Ok(()) }
    }

    /// A success outcome for this sync while its flush is still to run: a bug on purpose,
    /// for the test-only `QUORUM_TEST_ACK_BEFORE_SYNC` (src/runtime/host.rs), which hands it
    /// to [`Wal::finish_sync`] first and flushes after, to show the power-loss test catches a
    /// node that acknowledges before its records are on disk. Nothing else calls it.
    #[doc(hidden)]
    #[must_use]
    pub fn outcome_before_flush(&self) -> SyncOutcome {
        SyncOutcome { target: self.target, from: self.from, result: Ok(()) }
    }

    /// Treats the writes as durable without flushing them: for runs that trade durability
    /// for speed (benchmarks with durability off). A crash then loses what the OS had not
    /// written back, acknowledged or not.
    #[must_use]
    pub fn skip(self) -> SyncOutcome {
        SyncOutcome { target: self.target, from: self.from, result: Ok(()) }
    }
}

/// The write-ahead log.
pub struct Wal<B: Backend> {
    backend: B,
    options: Options,
    segment_bytes: u64,
    /// Open segments, consecutive numbers, oldest first; the last holds the tail.
    segments: VecDeque<(u64, B::Segment)>,
    tail_offset: usize,
    generation: u32,
    durable: u64,
    sync_in_flight: bool,
    poisoned: bool,
    /// The next segment: being prepared on a thread, ready, or refused for lack of space.
    next: Next<B::Segment>,
    /// Released segment files kept for reuse, by their old numbers: a new segment made from
    /// one needs no zeros (docs/wal-format.md, "Recycling").
    spares: Vec<u64>,
    /// A large record's header and small payload, encoded (reused).
    head: Vec<u8>,
}

/// A record whose second payload part is at least this large is written from its parts
/// ([`Segment::write_parts`]) rather than gathered with the records around it.
const WRITE_IN_PARTS_BYTES: usize = 64 << 10;

/// Mapped bytes of the tail segment kept behind its durable point (recent batches are read
/// again soon: applied, sent to learners); older ones are unmapped as the tail advances.
const UNMAP_BEHIND_BYTES: usize = 2 << 20;

/// Released segments kept as spares at most; the rest are deleted (their disk space returns).
const SPARES_MAX: usize = 4;

/// Generations at or above this are damage, not history: each opening and each suffix
/// truncation raises the generation by one, so no log reaches 2^31, and one read from disk
/// must leave room for the generations recovery and later truncations go on to (u32
/// arithmetic that overflows would panic). A damaged log naming 2^31 - 1 opens once more:
/// that opening writes 2^31.
pub const GENERATION_LIMIT: u32 = 1 << 31;

impl<B: Backend> std::fmt::Debug for Wal<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wal")
            .field("segments", &self.segments.iter().map(|(number, _)| *number).collect::<Vec<_>>())
            .field("end_position", &self.end_position())
            .field("durable", &self.durable)
            .field("poisoned", &self.poisoned)
            .finish()
    }
}

impl<B: Backend> Wal<B> {
    /// Opens (or creates) the log, recovering what is on disk. Everything recovered is synced
    /// before this returns, so it is durable whatever the page cache held.
    ///
    /// # Errors
    /// `Corrupt` for damage followed by valid records, or a broken segment sequence; the
    /// failing I/O call otherwise.
    pub fn open(backend: B, options: Options) -> Result<(Wal<B>, Recovery)> {
        Wal::open_with(backend, options, false)
    }

    /// Opens the log like [`Wal::open`], but where damage lies in the range a completed sync
    /// covered (records that may have been acknowledged, followed by valid ones or not), cuts
    /// the log there instead of refusing to open: for an owner that can recover what was cut
    /// from elsewhere (a replica, from its peers). Before anything is cut, the file
    /// [`REPAIR_FILE`] is written durably, so a crash before the repair finishes still knows;
    /// [`Recovery::repair_pending`] says so, at this opening and every later one until
    /// [`Wal::finish_repair`].
    ///
    /// A segment whose header is damaged ends the log the same way: it and every later
    /// segment are removed, and the damage reported as certainly synced.
    ///
    /// # Errors
    /// `Corrupt` for a broken segment sequence; the failing I/O call otherwise.
    pub fn open_repairing(backend: B, options: Options) -> Result<(Wal<B>, Recovery)> {
        Wal::open_with(backend, options, true)
    }

    fn open_with(backend: B, options: Options, cut_damage: bool) -> Result<(Wal<B>, Recovery)> {
        // Room for the header, a record and a segment-end marker, in whole pages.
        let smallest =
            ((SEGMENT_HEADER_BYTES + RECORD_HEADER_BYTES) as u64 * 2).next_multiple_of(4096);
        if options.segment_bytes % 4096 != 0 || options.segment_bytes < smallest {
            return Err(Error::BadOption(format!(
                "segment_bytes {} must be a multiple of 4096 and at least {smallest}",
                options.segment_bytes
            )));
        }
        backend.remove_leftovers()?;
        let mut numbers = backend.list()?;
        numbers.sort_unstable();
        let metadata = read_metadata(&backend)?;
        let mut wal = Wal {
            segment_bytes: options.segment_bytes,
            backend,
            options,
            segments: VecDeque::new(),
            tail_offset: SEGMENT_HEADER_BYTES,
            generation: 0,
            durable: 0,
            sync_in_flight: false,
            poisoned: false,
            next: Next::None,
            spares: Vec::new(),
            head: Vec::new(),
        };
        wal.spares = wal.backend.spares()?;
        wal.spares.sort_unstable();
        while wal.spares.len() > SPARES_MAX {
            let spare = wal.spares.remove(0);
            wal.backend.remove_spare(spare)?;
        }
        let repair_pending = cut_damage && wal.backend.read_file(REPAIR_FILE)?.is_some();
        let mut recovery = Recovery { metadata, repair_pending, ..Recovery::default() };
        let confirmed = if numbers.is_empty() {
            let segment = wal.create_segment(0)?;
            wal.segments.push_back((0, segment));
            wal.first_position()
        } else {
            wal.recover(&numbers, &mut recovery, cut_damage)?
        };
        recovery.first_position = wal.first_position();
        recovery.end_position = wal.end_position();
        // Whatever we read may sit only in the page cache (a process crash keeps it there):
        // make it durable before anyone builds on it.
        wal.sync_everything(confirmed)?;
        wal.maybe_prepare_next(None);
        Ok((wal, recovery))
    }

    /// The header of segment `number` (its mapped `bytes`), checked against the file: its
    /// number, its size (`expected_bytes`: the log's, for every segment but the first), and
    /// a number whose positions stay in the lower half of the u64 positions (no log grows
    /// there, and refusing it leaves the log room to grow without a position overflowing).
    fn check_header(
        &self,
        number: u64,
        bytes: &[u8],
        expected_bytes: Option<u64>,
    ) -> Result<SegmentHeader> {
        let corrupt =
            |offset, reason| Error::Corrupt { segment: self.backend.path(number), offset, reason };
        let header = SegmentHeader::decode(bytes).map_err(|reason| corrupt(0, reason))?;
        if header.segment_number != number {
            return Err(corrupt(16, "segment number in the header differs from the file name"));
        }
        if header.segment_bytes != bytes.len() as u64
            || expected_bytes.is_some_and(|expected| header.segment_bytes != expected)
        {
            return Err(corrupt(24, "segment size differs from the file's or the log's"));
        }
        if number > u64::MAX / 2 / header.segment_bytes.max(1) {
            return Err(corrupt(16, "segment number beyond the positions a log reaches"));
        }
        Ok(header)
    }

    /// Opens every segment, checks its header and reads its watermark: the highest marks and
    /// watermark generation. With `cut_damage`, a segment whose header is damaged ends the log:
    /// it and the later ones are removed, and the damage is reported as certainly synced.
    fn open_segments(
        &mut self,
        numbers: &[u64],
        recovery: &mut Recovery,
        cut_damage: bool,
    ) -> Result<(Marks, u32)> {
        let mut watermark_generation = 0u32;
        let mut marks = Marks { confirmed: 0, target: 0, torn: false };
        let mut header_damage = None;
        for (at, &number) in numbers.iter().enumerate() {
            // What the page cache holds past the last completed sync may be bytes a failed
            // writeback never wrote: read the disk instead (docs/wal-format.md, Recovery).
            // Every segment, since no clean shutdown is recorded: it costs a cold read of the
            // log, which recovery scans whole anyway (320 MiB: 0.22-0.31 s instead of 0.15 s warm).
            self.backend.drop_cache(number)?;
            let segment = self.backend.open(number)?;
            let expected_bytes = (number != numbers[0]).then_some(self.segment_bytes);
            let header = match self.check_header(number, segment.bytes(), expected_bytes) {
                Ok(header) => header,
                // A file whose name puts its positions past 2^63 is not this log's damaged
                // segment but no log's: refused as ever (the fuzzer found the overflow).
                Err(Error::Corrupt { offset, reason, .. })
                    if cut_damage && number <= u64::MAX / 2 / self.segment_bytes.max(1) =>
                {
                    // A header is synced before its segment gets a name, so a crash never
                    // tears one: this is damage, and the segment's records (perhaps
                    // acknowledged) cannot be read as this log's. The log ends before it.
                    drop(segment);
                    for &later in &numbers[at..] {
                        self.backend.remove(later)?;
                    }
                    header_damage = Some((number, offset, reason));
                    break;
                }
                Err(error) => return Err(error),
            };
            self.segment_bytes = header.segment_bytes;
            match Watermark::decode(segment.bytes()) {
                Some(watermark) if watermark.generation >= GENERATION_LIMIT => {
                    return Err(Error::Corrupt {
                        segment: self.backend.path(number),
                        offset: (WATERMARK_OFFSET + 16) as u64,
                        reason: "watermark generation beyond any a log reaches",
                    });
                }
                Some(watermark) => {
                    watermark_generation = watermark_generation.max(watermark.generation);
                    marks.confirmed = marks.confirmed.max(watermark.confirmed);
                    marks.target = marks.target.max(watermark.target);
                }
                None => marks.torn = true,
            }
            self.segments.push_back((number, segment));
        }
        if let Some((number, offset, reason)) = header_damage {
            if self.segments.is_empty() {
                let segment = self.create_segment(number)?;
                self.segments.push_back((number, segment));
            }
            recovery.damaged.push(Damage {
                segment: self.backend.path(number),
                offset,
                position: number * self.segment_bytes,
                reason,
                synced: Synced::Certainly,
            });
        }
        Ok((marks, watermark_generation))
    }

    /// Scans the segments; returns the highest position a completed sync confirmed.
    fn recover(
        &mut self,
        numbers: &[u64],
        recovery: &mut Recovery,
        cut_damage: bool,
    ) -> Result<u64> {
        for pair in numbers.windows(2) {
            if pair[1] != pair[0] + 1 {
                return Err(Error::Corrupt {
                    segment: self.backend.path(pair[0] + 1),
                    offset: 0,
                    reason: "segment missing from the middle of the log",
                });
            }
        }
        let (marks, watermark_generation) = self.open_segments(numbers, recovery, cut_damage)?;
        let mut generation_max = 0u32;
        // Scan every record of every segment, verifying each checksum.
        // The log is the longest run of valid records from the first segment: a segment goes on
        // into the next only through its end marker (or with no room left for one). Anything
        // else ends the log: unused space, a record older than one before it (left over from a
        // truncated suffix), or damage.
        let mut damage: Option<(usize, usize, &'static str)> = None;
        let mut end = (0, SEGMENT_HEADER_BYTES);
        'segments: for index in 0..self.segments.len() {
            let (number, segment) = &self.segments[index];
            let bytes = segment.bytes();
            let mut offset = SEGMENT_HEADER_BYTES;
            end = (index, offset);
            loop {
                match decode_record(&bytes[offset..], *number) {
                    Decoded::Record(_, generation, _) if generation >= GENERATION_LIMIT => {
                        damage =
                            Some((index, offset, "record generation beyond any a log reaches"));
                        break 'segments;
                    }
                    Decoded::Record(record, generation, size) if generation >= generation_max => {
                        generation_max = generation;
                        if record.kind == KIND_SEGMENT_END && index + 1 == self.segments.len() {
                            // A marker with no segment after it leads nowhere: the log ends
                            // before it, and the marker is cleared with the rest past the end.
                            // Left in place, the tail would sit after it, and the next
                            // recovery, stopping at the marker, would drop every record
                            // appended there (issue #22: a full disk in a rotation, or a
                            // truncation that removed the next segment, then a crash).
                            break 'segments;
                        }
                        recovery.bytes += size as u64;
                        offset += size;
                        end = (index, offset);
                        if record.kind == KIND_SEGMENT_END {
                            continue 'segments;
                        }
                        recovery.records += 1;
                    }
                    Decoded::Unwritten if bytes.len() - offset < RECORD_HEADER_BYTES => {
                        continue 'segments;
                    }
                    Decoded::Unwritten
                        if number * self.segment_bytes + (offset as u64) < marks.confirmed =>
                    {
                        // A completed sync covered this position, so a record or the end
                        // marker was written here: zeros are lost data (a zeroed page), not
                        // the end of the log.
                        damage = Some((index, offset, "zeros below the confirmed watermark"));
                        break 'segments;
                    }
                    Decoded::Record(..) | Decoded::Unwritten => break 'segments,
                    Decoded::Damaged(reason) => {
                        damage = Some((index, offset, reason));
                        break 'segments;
                    }
                }
            }
        }
        if let Some((index, offset, reason)) = damage {
            let position = self.segments[index].0 * self.segment_bytes + offset as u64;
            // Below the confirmed mark every write was durable, so damage there followed by
            // valid records is corruption, not a torn write: refuse to guess.
            if position < marks.confirmed
                && !cut_damage
                && self.valid_record_after(index, offset, generation_max)
            {
                return Err(Error::Corrupt {
                    segment: self.backend.path(self.segments[index].0),
                    offset: offset as u64,
                    reason,
                });
            }
            self.classify_tail_damage(index, offset, reason, marks, recovery);
        }
        {
            let certain = recovery.damaged.iter().find(|damage| damage.synced == Synced::Certainly);
            if let Some(damage) = certain.filter(|_| cut_damage && !recovery.repair_pending) {
                // Durably, before a byte is cut: a crash during the repair must not leave a
                // log that looks whole. Only for damage a completed sync covered for certain:
                // where the last sync may not have completed, a torn record is what a crash
                // during it leaves (never acknowledged), and after a power loss every member
                // may hold one; bit rot there instead is not told apart (docs/wal-format.md).
                let note = format!(
                    "{} at {} offset {}\n",
                    damage.reason,
                    damage.segment.display(),
                    damage.offset
                );
                self.backend.write_file_atomic(REPAIR_FILE, note.as_bytes())?;
                recovery.repair_pending = true;
            }
        }
        // Segments past the end hold nothing of the log: drop them. Past the end of the last
        // one, clear whatever a crash left (writes that landed beyond a hole, older records),
        // so that nothing but zeros ever follows the log.
        while self.segments.len() > end.0 + 1 {
            let (number, segment) = self.segments.pop_back().expect("more than one");
            drop(segment);
            self.backend.remove(number)?;
        }
        self.tail_offset = end.1;
        let segment = &mut self.segments.back_mut().expect("a log has a segment").1;
        if let Some(last) = segment.bytes()[end.1..].iter().rposition(|byte| *byte != 0) {
            segment.bytes_mut(end.1, last + 1).fill(0);
            segment.wrote(end.1, last + 1);
        }
        // New records outrank anything left on disk past the tail.
        self.generation = generation_max.max(watermark_generation) + 1;
        Ok(marks.confirmed)
    }

    /// True if a valid record of this generation or later lies after `offset` in segment
    /// `index` or at the start of any later segment: then the damage is not a torn tail.
    fn valid_record_after(&self, index: usize, offset: usize, generation_min: u32) -> bool {
        let valid = |decoded: Decoded<'_>| matches!(decoded, Decoded::Record(_, generation, _) if generation >= generation_min);
        let (number, segment) = &self.segments[index];
        let bytes = segment.bytes();
        let mut at = offset + RECORD_ALIGN;
        while at + RECORD_HEADER_BYTES <= bytes.len() {
            if bytes[at..at + RECORD_HEADER_BYTES].iter().any(|byte| *byte != 0)
                && valid(decode_record(&bytes[at..], *number))
            {
                return true;
            }
            at += RECORD_ALIGN;
        }
        self.segments.iter().skip(index + 1).any(|(number, segment)| {
            valid(decode_record(&segment.bytes()[SEGMENT_HEADER_BYTES..], *number))
        })
    }

    fn classify_tail_damage(
        &self,
        index: usize,
        offset: usize,
        reason: &'static str,
        marks: Marks,
        recovery: &mut Recovery,
    ) {
        let (number, segment) = &self.segments[index];
        let position = *number * self.segment_bytes + offset as u64;
        let bytes = segment.bytes();
        let garbage_end =
            bytes.iter().rposition(|byte| *byte != 0).map_or(offset, |last| last + 1).max(offset);
        let synced = if position < marks.confirmed {
            Some(Synced::Certainly)
        } else if position < marks.target || marks.torn {
            // The last sync may have completed; a torn watermark tells nothing, so assume so.
            Some(Synced::Possibly)
        } else {
            None
        };
        match synced {
            None => recovery.torn_tail_bytes += (garbage_end - offset) as u64,
            Some(synced) => recovery.damaged.push(Damage {
                segment: self.backend.path(*number),
                offset: offset as u64,
                position,
                reason,
                synced,
            }),
        }
    }

    /// The newest spare nothing reads any more, taken out of the pool.
    fn take_spare(&mut self) -> Option<u64> {
        let index = self.spares.iter().rposition(|spare| self.backend.spare_ready(*spare))?;
        Some(self.spares.remove(index))
    }

    fn create_segment(&mut self, number: u64) -> Result<B::Segment> {
        let spare = self.take_spare();
        create(&self.backend, number, self.segment_bytes, spare)
    }

    /// Prepares the next segment on a thread of its own, first dropping segment `release`
    /// from the caches there (both may block).
    ///
    /// Only while segments are new files: a new file's zeros then take the pages `release`
    /// gives back, rather than pages the machine never touched (`release_cache`). Once
    /// released segments come back as spares, a sealed segment's cached pages are left: its
    /// file returns as a later segment and is written over in place, with no page to
    /// allocate and no block to map (4 KiB writes: ~100 K/s with the drop, ~125 K/s without,
    /// BENCHMARKS.md).
    fn maybe_prepare_next(&mut self, release: Option<u64>) {
        if !self.options.prepare_ahead || !matches!(self.next, Next::None) {
            if let Some(number) = release.filter(|_| self.spares.is_empty()) {
                self.backend.release_cache(number);
            }
            return;
        }
        let number = self.tail_segment() + 1;
        let backend = self.backend.clone();
        let bytes = self.segment_bytes;
        let spare = self.take_spare();
        let release = release.filter(|_| spare.is_none());
        let handle = std::thread::Builder::new().name("wal-prepare".into()).spawn(move || {
            if let Some(number) = release {
                backend.release_cache(number);
            }
            create(&backend, number, bytes, spare)
        });
        match handle {
            Ok(handle) => self.next = Next::Preparing(number, handle, None),
            Err(_) => self.spares.extend(spare),
        }
    }

    /// Segment `number`, for a rotation: the one prepared ahead, or made now.
    fn take_next(&mut self, number: u64) -> Result<B::Segment> {
        match std::mem::replace(&mut self.next, Next::None) {
            Next::Preparing(prepared, handle, _) => {
                let made = join_preparation(handle);
                if prepared == number {
                    return made;
                }
                // Made for a tail a truncation has since removed.
                if made.is_ok() {
                    self.backend.remove(prepared)?;
                }
                self.create_segment(number)
            }
            Next::Ready(prepared, segment) if prepared == number => Ok(segment),
            Next::Ready(stale, segment) => {
                drop(segment);
                self.backend.remove(stale)?;
                self.create_segment(number)
            }
            Next::NoSpace { number: refused, path, since }
                if self.options.prepare_ahead
                    && refused == number
                    && since.elapsed() < NO_SPACE_RETRY =>
            {
                // Refused a moment ago: no new attempt on this thread before the retry is due
                // (`check_space` makes it on a thread). Without preparation ahead (the
                // simulator's logs: no clock may decide) every rotation tries again.
                self.next = Next::NoSpace { number: refused, path: path.clone(), since };
                Err(Error::NoSpace { path })
            }
            Next::NoSpace { .. } | Next::None => self.create_segment(number),
        }
    }

    /// Whether the log can get its next segment, without blocking: collects a finished
    /// preparation, and after a failure for lack of space tries again (on a thread) once
    /// [`NO_SPACE_RETRY`] has passed. Call it often (every tick): it is cheap.
    ///
    /// A full disk is not an error here: [`Space::Full`] says appends may soon fail with
    /// `NoSpace` (once the tail segment is full), so the owner should stop taking new work.
    /// Nothing already written is affected, and the log is not poisoned.
    ///
    /// # Errors
    /// `Poisoned`, or an I/O failure preparing the segment other than a full disk (a failed
    /// sync of the new file, say: never retried).
    pub fn check_space(&mut self) -> Result<Space> {
        self.check_poisoned()?;
        if matches!(&self.next, Next::Preparing(_, handle, _) if handle.is_finished()) {
            let Next::Preparing(number, handle, _) = std::mem::replace(&mut self.next, Next::None)
            else {
                unreachable!("matched above")
            };
            match join_preparation(handle) {
                Ok(segment) => self.next = Next::Ready(number, segment),
                Err(Error::NoSpace { path }) => {
                    let since = std::time::Instant::now();
                    self.next = Next::NoSpace { number, path, since };
                }
                Err(error) => return Err(error),
            }
        }
        let retry = match &self.next {
            Next::NoSpace { number, path, since } if since.elapsed() >= NO_SPACE_RETRY => {
                Some((*number, path.clone()))
            }
            _ => None,
        };
        if let Some((number, path)) = retry {
            self.next = Next::None;
            if number == self.tail_segment() + 1 {
                self.maybe_prepare_next(None);
            }
            match &mut self.next {
                Next::Preparing(_, _, after_no_space) => *after_no_space = Some(path),
                // Not prepared ahead (or no thread): the next rotation makes it, and says.
                _ => return Ok(Space::Available),
            }
        }
        Ok(match &self.next {
            Next::NoSpace { path, .. } | Next::Preparing(_, _, Some(path)) => {
                Space::Full { path: path.clone() }
            }
            _ => Space::Available,
        })
    }

    fn tail_segment(&self) -> u64 {
        self.segments.back().expect("a log has a segment").0
    }

    /// The position of the first record kept.
    #[must_use]
    pub fn first_position(&self) -> u64 {
        self.segments.front().expect("a log has a segment").0 * self.segment_bytes
            + SEGMENT_HEADER_BYTES as u64
    }

    /// Where the next record goes.
    #[must_use]
    pub fn end_position(&self) -> u64 {
        self.tail_segment() * self.segment_bytes + self.tail_offset as u64
    }

    /// Everything below this is durable.
    #[must_use]
    pub fn durable_position(&self) -> u64 {
        self.durable
    }

    /// The size of this log's segments.
    #[must_use]
    pub fn segment_bytes(&self) -> u64 {
        self.segment_bytes
    }

    fn check_poisoned(&self) -> Result<()> {
        if self.poisoned { Err(Error::Poisoned) } else { Ok(()) }
    }

    /// Appends a record (a memcpy into the mapping) and returns its position. Not durable until
    /// a sync started after it completes.
    ///
    /// # Errors
    /// `Poisoned`, `RecordTooLarge`, or the failure to get the next segment (`NoSpace`, I/O).
    pub fn append(&mut self, record: &Record<'_>) -> Result<u64> {
        self.append_split(record, &[])
    }

    /// [`Wal::append`] of a record whose payload is `record.payload` followed by `rest`: the
    /// same record, without the caller first copying the two together.
    ///
    /// # Errors
    /// See [`Wal::append`].
    pub fn append_split(&mut self, record: &Record<'_>, rest: &[u8]) -> Result<u64> {
        self.check_poisoned()?;
        if record.kind == 0 || record.kind == KIND_SEGMENT_END {
            return Err(Error::BadOption(format!(
                "record kind {} is reserved (use 1 to 254)",
                record.kind
            )));
        }
        let size = record_bytes(record.payload.len() + rest.len());
        if size > self.segment_bytes as usize - SEGMENT_HEADER_BYTES {
            return Err(Error::RecordTooLarge { bytes: size, segment_bytes: self.segment_bytes });
        }
        if self.tail_offset + size > self.segment_bytes as usize {
            self.rotate()?;
        }
        let position = self.end_position();
        let offset = self.tail_offset;
        let generation = self.generation;
        let (number, segment) = self.segments.back_mut().expect("a log has a segment");
        if rest.len() >= WRITE_IN_PARTS_BYTES {
            // A large batch goes to the file from where it is, not copied next to its head.
            let head = &mut self.head;
            head.resize(RECORD_HEADER_BYTES + record.payload.len(), 0);
            encode_head(record, rest, generation, *number, head);
            let padding = size - head.len() - rest.len();
            segment.write_parts(offset, &[head, rest, &[0; RECORD_ALIGN][..padding]]);
        } else {
            let out = segment.bytes_mut(offset, size);
            encode_record_split(record, rest, generation, *number, out);
            segment.wrote(offset, size);
        }
        self.tail_offset += size;
        Ok(position)
    }

    /// Lets every segment but the tail give back the memory that caches it (after reading
    /// the whole log at start-up, say); all but the last of them leave the page cache too
    /// (blocking; see `rotate`). They stay readable.
    pub fn retire_sealed(&mut self) {
        let sealed = self.segments.len().saturating_sub(1);
        for (index, (number, segment)) in self.segments.iter_mut().take(sealed).enumerate() {
            segment.retire();
            if index + 1 < sealed {
                self.backend.release_cache(*number);
            }
        }
    }

    fn rotate(&mut self) -> Result<()> {
        let number = self.tail_segment() + 1;
        // The next segment first: `create` returns it durable, so the end marker written below
        // always leads somewhere. Written before it, a marker could become durable while the
        // next segment could not be had (a full disk), and a restart would put new records
        // after a marker that leads nowhere (issue #22; recovery also refuses that tail).
        // A failure here leaves this segment as it was: the append can be retried.
        let segment = match self.take_next(number) {
            Ok(segment) => segment,
            Err(Error::NoSpace { path }) => {
                let since = std::time::Instant::now();
                self.next = Next::NoSpace { number, path: path.clone(), since };
                return Err(Error::NoSpace { path });
            }
            Err(error) => return Err(error),
        };
        // Mark where this segment's records end, so recovery can tell it from a hole.
        if self.segment_bytes as usize - self.tail_offset >= RECORD_HEADER_BYTES {
            let marker = Record {
                kind: KIND_SEGMENT_END,
                slot: 0,
                ballot_round: 0,
                ballot_node: 0,
                payload: &[],
            };
            let (offset, generation) = (self.tail_offset, self.generation);
            let (number, segment) = self.segments.back_mut().expect("a log has a segment");
            let out = segment.bytes_mut(offset, RECORD_HEADER_BYTES);
            encode_record(&marker, generation, *number, out);
            segment.wrote(offset, RECORD_HEADER_BYTES);
        }
        // Nothing appends to it again: its cached pages need not stay resident. The one
        // before it too, again: reads soon after it was sealed (applying, catching up) may
        // have brought some of its pages back. That one was sealed a whole segment ago and
        // synced since: it leaves the page cache too (off this thread, see below).
        for (_, segment) in self.segments.iter_mut().rev().take(2) {
            segment.retire();
        }
        let release = self.segments.iter().rev().nth(1).map(|(number, _)| *number);
        self.segments.push_back((number, segment));
        self.tail_offset = SEGMENT_HEADER_BYTES;
        self.maybe_prepare_next(release);
        Ok(())
    }

    /// Starts a sync of everything appended so far: stamps each segment's watermark and
    /// returns the flush to run. `None` if a sync is already under way (it finishes first;
    /// group commit) or nothing new was appended.
    ///
    /// # Errors
    /// `Poisoned`.
    pub fn start_sync(&mut self) -> Result<Option<PendingSync>> {
        self.check_poisoned()?;
        let target = self.end_position();
        if self.sync_in_flight || target <= self.durable {
            return Ok(None);
        }
        self.sync_in_flight = true;
        let watermark = Watermark { confirmed: self.durable, target, generation: self.generation };
        let first_dirty = self.durable / self.segment_bytes;
        let mut syncers = Vec::new();
        for (number, segment) in
            self.segments.iter_mut().filter(|(number, _)| *number >= first_dirty)
        {
            watermark.encode(segment.bytes_mut(0, SEGMENT_HEADER_BYTES));
            segment.wrote(WATERMARK_OFFSET, WATERMARK_BYTES);
            syncers.push((*number, segment.syncer()));
        }
        Ok(Some(PendingSync { target, from: self.durable, syncers }))
    }

    /// Takes the outcome of a sync: on success everything below its target is durable.
    ///
    /// # Errors
    /// The sync's failure, as [`Error::Sync`] naming the segment and the bytes it left
    /// unconfirmed; the log is poisoned from then on.
    pub fn finish_sync(&mut self, outcome: SyncOutcome) -> Result<u64> {
        self.sync_in_flight = false;
        match outcome.result {
            Ok(()) => {
                self.durable = self.durable.max(outcome.target.min(self.end_position()));
                // The tail's mapped pages well behind the durable point go back: the process's
                // memory holds what is being written and read now, not the whole segment.
                if let Some((number, segment)) = self.segments.back_mut() {
                    let start = *number * self.segment_bytes;
                    let offset = self.durable.saturating_sub(start) as usize;
                    segment.unmap_below(offset.saturating_sub(UNMAP_BEHIND_BYTES));
                }
                Ok(self.durable)
            }
            Err((number, source)) => {
                // Never retried: the kernel may have dropped the dirty pages it failed to write.
                self.poisoned = true;
                let start = number * self.segment_bytes;
                let end = start + self.segment_bytes;
                let offset = outcome.from.clamp(start, end) - start;
                let end_offset = outcome.target.clamp(start, end) - start;
                let path = self.backend.path(number);
                Err(Error::Sync { path, offset, end_offset, source })
            }
        }
    }

    /// Syncs on this thread and waits (tests, tools, start-up).
    ///
    /// # Errors
    /// As [`Wal::start_sync`] and [`Wal::finish_sync`].
    pub fn sync(&mut self) -> Result<u64> {
        match self.start_sync()? {
            Some(pending) => self.finish_sync(pending.run()),
            None => Ok(self.durable),
        }
    }

    /// Flushes every segment, keeping in the watermarks what the recovered ones confirmed.
    fn sync_everything(&mut self, confirmed: u64) -> Result<()> {
        let end = self.end_position();
        let watermark =
            Watermark { confirmed: confirmed.min(end), target: end, generation: self.generation };
        let mut syncers = Vec::new();
        for (number, segment) in &mut self.segments {
            watermark.encode(segment.bytes_mut(0, SEGMENT_HEADER_BYTES));
            segment.wrote(WATERMARK_OFFSET, WATERMARK_BYTES);
            syncers.push((*number, segment.syncer()));
        }
        self.sync_in_flight = true;
        let from = self.first_position();
        self.finish_sync(PendingSync { target: end, from, syncers }.run())?;
        Ok(())
    }

    /// The record at `position`, borrowed from the mapping (zero-copy).
    ///
    /// # Errors
    /// `Poisoned`, or `BadPosition` if no record starts there.
    pub fn read(&self, position: u64) -> Result<Record<'_>> {
        self.check_poisoned()?;
        match self.decode_at(position) {
            Some(Decoded::Record(record, _, _)) if record.kind != KIND_SEGMENT_END => Ok(record),
            _ => Err(Error::BadPosition(position)),
        }
    }

    /// The payload of the record at `position`, sharing the log's memory instead of copying
    /// it, if the backend can (memory-mapped segments can; `None` otherwise).
    ///
    /// # Errors
    /// `position` is not a record's, or the log is poisoned.
    pub fn read_shared(&self, position: u64) -> Result<Option<bytes::Bytes>> {
        let len = self.read(position)?.payload.len();
        Ok(self.shared_appended(position, len))
    }

    /// The payload of the record this log appended at `position`, `len` bytes long, shared
    /// from the log's memory without reading the record back or checking it again: for the
    /// writer that appended it and knows its length. `None` if the backend cannot share, or
    /// the payload is not within the log.
    #[must_use]
    pub fn shared_appended(&self, position: u64, len: usize) -> Option<bytes::Bytes> {
        let end = position.checked_add((RECORD_HEADER_BYTES + len) as u64)?;
        if position < self.first_position() || end > self.end_position() {
            return None;
        }
        let index = usize::try_from((position / self.segment_bytes) - self.first_segment()).ok()?;
        let offset = usize::try_from(position % self.segment_bytes).ok()? + RECORD_HEADER_BYTES;
        self.segments.get(index)?.1.shared(offset, len)
    }

    fn first_segment(&self) -> u64 {
        self.segments.front().expect("a log has a segment").0
    }

    fn decode_at(&self, position: u64) -> Option<Decoded<'_>> {
        if position < self.first_position() || position >= self.end_position() {
            return None;
        }
        let number = position / self.segment_bytes;
        let offset = (position % self.segment_bytes) as usize;
        let index = usize::try_from(number - self.segments.front()?.0).ok()?;
        let bytes = self.segments.get(index)?.1.bytes();
        if offset == 0 {
            // A record ended exactly at the previous segment's end.
            return Some(Decoded::Unwritten);
        }
        if offset < SEGMENT_HEADER_BYTES || offset % RECORD_ALIGN != 0 {
            return None;
        }
        Some(decode_record(&bytes[offset..], number))
    }

    /// The directory the log lives in (for files kept next to it, such as snapshots).
    #[must_use]
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The records from `position` (a record's position, or [`Wal::first_position`]) to the end.
    #[must_use]
    pub fn iter_from(&self, position: u64) -> Iter<'_, B> {
        Iter { wal: self, position }
    }

    /// Drops every record from `position` on, by zeroing them in place (a mapped file is never
    /// shortened). Durable with the next sync; until then a crash brings them back.
    ///
    /// # Errors
    /// `Poisoned`, `BadPosition`, or the failure to delete a later segment.
    pub fn truncate_suffix(&mut self, position: u64) -> Result<()> {
        self.check_poisoned()?;
        let end = self.end_position();
        if position != end && !matches!(self.decode_at(position), Some(Decoded::Record(..))) {
            return Err(Error::BadPosition(position));
        }
        let number = position / self.segment_bytes;
        while self.tail_segment() > number {
            let (removed, segment) = self.segments.pop_back().expect("more than one segment");
            drop(segment);
            self.backend.remove(removed)?;
            self.tail_offset = self.segment_bytes as usize;
        }
        let offset = (position % self.segment_bytes) as usize;
        let tail = self.tail_offset.min(self.segment_bytes as usize);
        let segment = &mut self.segments.back_mut().expect("a log has a segment").1;
        segment.bytes_mut(offset, tail - offset).fill(0);
        segment.wrote(offset, tail - offset);
        self.tail_offset = offset;
        // Records written from now on outrank anything a crash might bring back.
        self.generation += 1;
        self.durable = self.durable.min(position);
        Ok(())
    }

    /// Deletes every whole segment that lies below `position` (a snapshot covers them).
    ///
    /// # Errors
    /// `Poisoned`, or the failing delete.
    pub fn release_prefix(&mut self, position: u64) -> Result<()> {
        self.check_poisoned()?;
        let number = position / self.segment_bytes;
        while self.segments.len() > 1
            && self.segments.front().is_some_and(|(first, _)| *first < number)
        {
            let (removed, segment) = self.segments.pop_front().expect("checked");
            if self.spares.len() < SPARES_MAX {
                self.backend.set_aside(removed, segment)?;
                self.spares.push(removed);
            } else {
                drop(segment);
                self.backend.remove(removed)?;
            }
        }
        Ok(())
    }

    /// The owner recovered what the log lost ([`Recovery::repair_pending`]) and made it
    /// durable in the log: later openings no longer report the repair. Blocks (a file is
    /// deleted and the directory synced).
    ///
    /// # Errors
    /// `Poisoned`, or the failing I/O call.
    pub fn finish_repair(&mut self) -> Result<()> {
        self.check_poisoned()?;
        self.backend.remove_file(REPAIR_FILE)
    }

    /// Replaces the durable metadata (promised ballot, epoch: bytes opaque to the log)
    /// atomically and durably. Blocks: call it off the reactor.
    ///
    /// # Errors
    /// `Poisoned`, `BadOption` if larger than [`METADATA_BYTES_MAX`], or the failing I/O call
    /// (which poisons the log: a promise that may not be durable must not be acted on), except
    /// `NoSpace`: the new file could not be written, the old one stands.
    pub fn set_metadata(&mut self, bytes: &[u8]) -> Result<()> {
        self.check_poisoned()?;
        if bytes.len() > METADATA_BYTES_MAX {
            return Err(Error::BadOption(format!(
                "metadata of {} bytes exceeds {METADATA_BYTES_MAX}",
                bytes.len()
            )));
        }
        let mut file = Vec::with_capacity(12 + bytes.len());
        file.extend_from_slice(&METADATA_MAGIC.to_le_bytes());
        file.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        file.extend_from_slice(&crc32c::crc32c(bytes).to_le_bytes());
        file.extend_from_slice(bytes);
        // A full disk refuses the new file before anything is synced or renamed: the old
        // metadata stands, nothing is lost, and the caller must not act on the new one.
        self.backend
            .write_file_atomic(METADATA_FILE, &file)
            .inspect_err(|error| self.poisoned |= !matches!(error, Error::NoSpace { .. }))
    }
}

/// Makes segment `number`, from a spare if there is one.
fn create<B: Backend>(
    backend: &B,
    number: u64,
    segment_bytes: u64,
    spare: Option<u64>,
) -> Result<B::Segment> {
    let mut header = vec![0u8; SEGMENT_HEADER_BYTES];
    SegmentHeader { segment_number: number, segment_bytes }.encode(&mut header);
    // A new segment's watermark claims nothing (the maxima recovery takes ignore it): it is
    // made before the log knows what will be durable when the segment comes into use.
    Watermark { confirmed: 0, target: 0, generation: 0 }.encode(&mut header);
    match spare {
        Some(spare) => backend.reuse(spare, number, segment_bytes, &header),
        None => backend.create(number, segment_bytes, &header),
    }
}

/// The segment a preparation thread made, or why not.
fn join_preparation<S>(handle: JoinHandle<Result<S>>) -> Result<S> {
    handle.join().unwrap_or_else(|_| Err(Error::BadOption("segment preparation panicked".into())))
}

fn read_metadata<B: Backend>(backend: &B) -> Result<Option<Vec<u8>>> {
    let Some(file) = backend.read_file(METADATA_FILE)? else { return Ok(None) };
    let corrupt =
        |reason| Error::Corrupt { segment: PathBuf::from(METADATA_FILE), offset: 0, reason };
    if file.len() < 12 || file[0..4] != METADATA_MAGIC.to_le_bytes() {
        return Err(corrupt("metadata file has no valid header"));
    }
    let length = u32::from_le_bytes([file[4], file[5], file[6], file[7]]) as usize;
    let crc = u32::from_le_bytes([file[8], file[9], file[10], file[11]]);
    let bytes = &file[12..];
    if bytes.len() != length || crc32c::crc32c(bytes) != crc {
        return Err(corrupt("metadata checksum mismatch"));
    }
    Ok(Some(bytes.to_vec()))
}

/// Iterates over records in position order; see [`Wal::iter_from`].
pub struct Iter<'a, B: Backend> {
    wal: &'a Wal<B>,
    position: u64,
}

impl<'a, B: Backend> Iterator for Iter<'a, B> {
    type Item = Result<(u64, Record<'a>)>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.position >= self.wal.end_position() {
                return None;
            }
            match self.wal.decode_at(self.position) {
                Some(Decoded::Record(record, _, _)) if record.kind == KIND_SEGMENT_END => {
                    let number = self.position / self.wal.segment_bytes + 1;
                    self.position = number * self.wal.segment_bytes + SEGMENT_HEADER_BYTES as u64;
                }
                Some(Decoded::Record(record, _, size)) => {
                    let position = self.position;
                    self.position += size as u64;
                    return Some(Ok((position, record)));
                }
                Some(Decoded::Unwritten) => {
                    // The rest of this segment is unused: go on at the next one.
                    let at_boundary = self.position % self.wal.segment_bytes == 0;
                    let number = self.position / self.wal.segment_bytes + u64::from(!at_boundary);
                    self.position = number * self.wal.segment_bytes + SEGMENT_HEADER_BYTES as u64;
                }
                _ => {
                    let position = self.position;
                    self.position = u64::MAX;
                    return Some(Err(Error::BadPosition(position)));
                }
            }
        }
    }
}
