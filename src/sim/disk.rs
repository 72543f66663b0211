//! The simulated disk of one shard replica: the WAL's simulated backend, which keeps an image
//! "as written" and one "as synced". The real shard runs its real WAL on it. A crash keeps the
//! synced image and, at random, any subset of the writes made since, each possibly torn at
//! 512-byte or 4 KiB granularity; a restart recovers through the WAL's own recovery. Faults
//! are planted here: failing syncs, a full disk, and damage to a crashed disk.

use rand_core::RngCore;
use rand_xoshiro::Xoshiro256PlusPlus;

use quorum_wal::{Backend as _, Options, SimBackend, Tear};

/// The disk of one shard replica.
pub struct SimDisk {
    backend: SimBackend,
    segment_bytes: u64,
    /// WAL bytes released behind snapshots, over every incarnation before the running one.
    pub released_bytes: u64,
    /// Peers' snapshots refused, over every incarnation before the running one.
    pub refused_snapshots: u64,
    /// The log's durable position before and after the last completed sync: what that sync's
    /// watermark confirms is below the first (docs/wal-format.md, "Watermarks").
    durable_positions: (u64, u64),
}

/// A simulated disk whose crashes undo directory changes no directory sync made durable.
fn lossy_backend() -> SimBackend {
    let backend = SimBackend::new();
    backend.lose_unsynced_entries_on_crash(true);
    backend
}

impl SimDisk {
    /// A new, empty disk for a log of `segment_bytes` segments (small, so that runs cross
    /// many segments and snapshots release many).
    #[must_use]
    pub fn new(segment_bytes: u64) -> SimDisk {
        SimDisk {
            backend: lossy_backend(),
            segment_bytes,
            released_bytes: 0,
            refused_snapshots: 0,
            durable_positions: (0, 0),
        }
    }

    /// The WAL's options on this disk (segments prepared when needed, not ahead: nothing runs
    /// beside the simulation).
    #[must_use]
    pub fn options(&self) -> Options {
        Options { segment_bytes: self.segment_bytes, prepare_ahead: false }
    }

    /// The disk a (re)started replica opens its log on. A restarted node finds the space it
    /// ran out of freed.
    #[must_use]
    pub fn to_start(&self) -> SimBackend {
        self.backend.limit_space(u64::MAX);
        self.backend.clone()
    }

    /// The log opened at durable position `durable`.
    pub fn opened(&mut self, durable: u64) {
        self.durable_positions = (durable, durable);
    }

    /// A sync completed: the log is durable up to `durable`.
    pub fn synced(&mut self, durable: u64) {
        self.durable_positions = (self.durable_positions.1, durable);
    }

    /// The next sync (or atomic file write) fails with EIO.
    pub fn fail_next_sync(&self) {
        self.backend.fail_syncs(1);
    }

    /// The next directory sync fails with EIO: the change it should have made durable is lost
    /// if the node crashes before another sync of the directory.
    pub fn fail_next_directory_sync(&self) {
        self.backend.fail_directory_syncs(1);
    }

    /// The disk is full: no new segment can be made until the node restarts (space freed).
    pub fn fill(&self) {
        self.backend.limit_space(0);
    }

    /// Damages the durable image of a crashed disk as storage faults do, and returns what it
    /// did: a flipped bit or a zeroed stretch in a segment's records (below the last byte
    /// written), a flipped bit in its header, or the whole directory gone (amnesia). `None` if there was nothing to damage.
    pub fn damage(&mut self, rng: &mut Xoshiro256PlusPlus) -> Option<&'static str> {
        if rng.next_u64() % 4 == 0 {
            self.backend = lossy_backend();
            return Some("wiped");
        }
        // Only where a completed sync's watermark confirms the records were durable: there the
        // WAL can tell lost records from a torn write (below it, it reports them for repair).
        let confirmed = self.durable_positions.0;
        let numbers: Vec<u64> = self.backend.list().ok()?;
        let numbers: Vec<u64> =
            numbers.into_iter().filter(|number| number * self.segment_bytes < confirmed).collect();
        if numbers.is_empty() {
            return None;
        }
        let number = numbers[(rng.next_u64() % numbers.len() as u64) as usize];
        let mut image = self.backend.synced_image(number)?;
        if rng.next_u64() % 8 == 0 {
            // The header's checksummed fields: the segment can no longer be read as this
            // log's, and the WAL cuts the log before it.
            image[(rng.next_u64() % 32) as usize] ^= 1 << (rng.next_u64() % 8);
            self.backend.set_synced_image(number, image);
            return Some("header flipped");
        }
        let header = quorum_wal::format::SEGMENT_HEADER_BYTES;
        let confirmed_here = (confirmed - number * self.segment_bytes).min(image.len() as u64);
        let last = image.iter().rposition(|byte| *byte != 0)?.min(confirmed_here as usize);
        if last <= header {
            return None;
        }
        let at = header + (rng.next_u64() % (last - header) as u64) as usize;
        if rng.next_u64() % 2 == 0 {
            image[at] ^= 1 << (rng.next_u64() % 8);
            self.backend.set_synced_image(number, image);
            return Some("bit flipped");
        }
        let at = at / 8 * 8;
        let len = (8 + (rng.next_u64() % 4096) as usize / 8 * 8).min(last - at);
        image[at..at + len].fill(0);
        self.backend.set_synced_image(number, image);
        Some("zeroed")
    }

    /// A crash: the synced image stays; each write made since survives with chance
    /// `survives_ppm` in a million, and a survivor is torn with chance `torn_ppm`.
    pub fn crash(&mut self, rng: &mut Xoshiro256PlusPlus, survives_ppm: u64, torn_ppm: u64) {
        self.backend = self.backend.crash(|_, _| {
            if rng.next_u64() % 1_000_000 >= survives_ppm {
                return None;
            }
            if rng.next_u64() % 1_000_000 >= torn_ppm {
                return Some(Tear::Whole);
            }
            let sector_bytes = if rng.next_u64() % 2 == 0 { 512 } else { 4096 };
            Some(Tear::Sectors { n: (rng.next_u64() % 4) as usize, sector_bytes })
        });
    }

    /// True while the disk holds a repair marker: its replica has not finished a repair (of
    /// damage, or of a new directory) and may not hold what it acknowledged.
    pub fn repair_marked(&self) -> bool {
        self.backend.read_file(quorum_wal::REPAIR_FILE).ok().flatten().is_some()
    }
}
