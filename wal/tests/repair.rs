//! Damage in the range a completed sync covered: never cut silently. A plain open refuses it
//! (or reports it, at the end of the log); [`Wal::open_repairing`] cuts it, reports it, and
//! keeps a durable repair marker until the owner says it recovered what was lost.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests may unwrap.

use quorum_wal::format::SEGMENT_HEADER_BYTES;
use quorum_wal::{Backend, Error, Options, Record, SimBackend, Synced, Wal};

const SEGMENT_BYTES: u64 = 64 * 1024;

fn options() -> Options {
    Options { segment_bytes: SEGMENT_BYTES, prepare_ahead: false }
}

fn record(slot: u64, payload: &[u8]) -> Record<'_> {
    Record { kind: 1, slot, ballot_round: 3, ballot_node: 1, payload }
}

fn slots<B: Backend>(wal: &Wal<B>) -> Vec<u64> {
    wal.iter_from(wal.first_position()).map(|item| item.unwrap().1.slot).collect()
}

/// Three synced rounds of 40 records of 300 bytes in segment 0: the watermark of the last sync
/// confirms everything the first two wrote. Returns the disk and the records' positions.
fn synced_log() -> (SimBackend, Vec<u64>) {
    let disk = SimBackend::new();
    let (mut wal, _) = Wal::open(disk.clone(), options()).unwrap();
    let mut positions = Vec::new();
    for round in 0..3u64 {
        for index in 0..40 {
            positions.push(wal.append(&record(round * 40 + index, &[7u8; 300])).unwrap());
        }
        wal.sync().unwrap();
    }
    assert!(positions.iter().all(|position| *position < SEGMENT_BYTES), "one segment");
    drop(wal);
    (disk.crash_losing_unsynced(), positions)
}

/// Zeroes 4 KiB of segment 0's durable image from `position` (a record's start, so that
/// recovery meets zeros where a header should be).
fn zero_from(disk: &SimBackend, position: u64) {
    let mut image = disk.synced_image(0).unwrap();
    let at = position as usize;
    assert!(at >= SEGMENT_HEADER_BYTES, "not the header");
    image[at..at + 4096].fill(0);
    disk.set_synced_image(0, image);
}

#[test]
fn a_zeroed_page_below_the_confirmed_mark_before_valid_records_is_refused() {
    let (disk, positions) = synced_log();
    zero_from(&disk, positions[20]);
    match Wal::open(disk, options()) {
        Err(Error::Corrupt { reason, .. }) => assert!(reason.contains("zeros"), "{reason}"),
        Ok((wal, _)) => panic!("log silently cut to {} records", slots(&wal).len()),
        Err(other) => panic!("unexpected {other}"),
    }
}

#[test]
fn a_zeroed_page_below_the_confirmed_mark_at_the_end_is_reported_as_certainly_synced() {
    let (disk, positions) = synced_log();
    // Zero from record 60 (written by the second sync, confirmed by the third) to
    // the end of the log: nothing valid follows, yet a completed sync covered it.
    let mut image = disk.synced_image(0).unwrap();
    image[positions[60] as usize..].fill(0);
    disk.set_synced_image(0, image);
    let (_, recovery) = Wal::open(disk, options()).unwrap();
    assert_eq!(recovery.damaged.len(), 1, "zeros below the confirmed mark are lost records");
    assert_eq!(recovery.damaged[0].synced, Synced::Certainly);
}

#[test]
fn open_repairing_cuts_mid_log_damage_and_keeps_a_durable_marker_until_finished() {
    let (disk, positions) = synced_log();
    disk.flip_bit(0, positions[30] as usize + 40, 3);
    assert!(matches!(Wal::open(disk.clone(), options()), Err(Error::Corrupt { .. })));
    let (wal, recovery) = Wal::open_repairing(disk.clone(), options()).unwrap();
    assert_eq!(slots(&wal), (0..30).collect::<Vec<_>>(), "cut at the damaged record");
    assert_eq!(recovery.damaged.len(), 1);
    assert_eq!(recovery.damaged[0].position, positions[30]);
    assert_eq!(recovery.damaged[0].synced, Synced::Certainly);
    assert!(recovery.repair_pending);
    drop(wal);
    // A crash now, whatever survives of the cut, still knows the log needs repair.
    for image in [disk.crash_losing_unsynced(), disk.crash(|_, _| Some(quorum_wal::Tear::Whole))] {
        let (_, recovery) = Wal::open_repairing(image, options()).unwrap();
        assert!(recovery.repair_pending, "the repair marker did not survive the crash");
    }
    let (mut wal, recovery) = Wal::open_repairing(disk.clone(), options()).unwrap();
    assert!(recovery.repair_pending);
    wal.append(&record(30, b"repaired")).unwrap();
    wal.sync().unwrap();
    wal.finish_repair().unwrap();
    drop(wal);
    let (wal, recovery) = Wal::open_repairing(disk.crash_losing_unsynced(), options()).unwrap();
    assert!(!recovery.repair_pending, "finished repairs are not reported again");
    assert!(recovery.damaged.is_empty());
    assert_eq!(slots(&wal).len(), 31);
}

#[test]
fn open_repairing_reports_nothing_for_a_clean_log_or_a_torn_unsynced_tail() {
    let (disk, _) = synced_log();
    let (mut wal, recovery) = Wal::open_repairing(disk.clone(), options()).unwrap();
    assert!(!recovery.repair_pending);
    wal.append(&record(500, &[1u8; 3000])).unwrap();
    drop(wal);
    let image = disk.crash(|_, _| Some(quorum_wal::Tear::Sectors { n: 1, sector_bytes: 512 }));
    let (_, recovery) = Wal::open_repairing(image.clone(), options()).unwrap();
    assert!(!recovery.repair_pending, "a torn write no sync covered was never acknowledged");
    assert!(image.read_file(quorum_wal::REPAIR_FILE).unwrap().is_none());
}

/// A synced log of two segments (records of 300 bytes, 8 KiB of them in segment 1); the records
/// written.
fn two_segment_log() -> (SimBackend, u64) {
    let disk = SimBackend::new();
    let (mut wal, _) = Wal::open(disk.clone(), options()).unwrap();
    let mut slot = 0;
    while wal.end_position() < SEGMENT_BYTES + 8192 {
        wal.append(&record(slot, &[7u8; 300])).unwrap();
        slot += 1;
    }
    wal.sync().unwrap();
    drop(wal);
    (disk.crash_losing_unsynced(), slot)
}

#[test]
fn a_damaged_segment_header_is_refused_by_open_and_cut_with_a_marker_by_open_repairing() {
    for damaged in [0u64, 1] {
        let (disk, written) = two_segment_log();
        disk.flip_bit(damaged, 8, 0); // The format version: the header's checksum fails.
        assert!(
            matches!(Wal::open(disk.clone(), options()), Err(Error::Corrupt { offset: 0, .. })),
            "segment {damaged}"
        );
        let (wal, recovery) = Wal::open_repairing(disk.clone(), options()).unwrap();
        let kept = slots(&wal);
        assert!(kept.len() < written as usize, "segment {damaged}: nothing was cut");
        assert_eq!(kept, (0..kept.len() as u64).collect::<Vec<_>>(), "a prefix is kept");
        if damaged == 0 {
            assert!(kept.is_empty(), "the records of a segment with a damaged header are dropped");
        }
        assert_eq!(recovery.damaged.len(), 1, "segment {damaged}");
        assert_eq!(recovery.damaged[0].synced, Synced::Certainly);
        assert_eq!(recovery.damaged[0].position, damaged * SEGMENT_BYTES);
        assert!(recovery.repair_pending, "segment {damaged}: no repair marker");
        drop(wal);
        // The cut is durable and the log opens plainly now, still asking for its repair.
        let (mut wal, recovery) =
            Wal::open_repairing(disk.crash_losing_unsynced(), options()).unwrap();
        assert!(recovery.repair_pending);
        assert_eq!(slots(&wal), kept);
        wal.append(&record(kept.len() as u64, b"repaired")).unwrap();
        wal.sync().unwrap();
        assert!(Wal::open(disk.crash_losing_unsynced(), options()).is_ok());
    }
}
