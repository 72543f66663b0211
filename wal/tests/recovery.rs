//! Crash, corruption and failure tests of the log over the simulated disk, and one over real
//! files on this machine's disk.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests may unwrap.

use proptest::prelude::*;
use quorum_wal::format::SEGMENT_HEADER_BYTES;
use quorum_wal::{Error, MmapBackend, Options, Record, SimBackend, Synced, Tear, Wal};

const SEGMENT_BYTES: u64 = 16 * 1024;

fn options() -> Options {
    Options { segment_bytes: SEGMENT_BYTES, prepare_ahead: false }
}

fn payload(index: usize) -> Vec<u8> {
    (0..(index * 37) % 700).map(|byte| (byte as u8).wrapping_add(index as u8)).collect()
}

fn record(index: usize, payload: &[u8]) -> Record<'_> {
    Record {
        kind: 1 + (index % 3) as u8,
        slot: index as u64,
        ballot_round: 7,
        ballot_node: 2,
        payload,
    }
}

/// Every record of the log as (position, slot, payload).
fn contents<B: quorum_wal::Backend>(wal: &Wal<B>) -> Vec<(u64, u64, Vec<u8>)> {
    wal.iter_from(wal.first_position())
        .map(|item| item.map(|(position, record)| (position, record.slot, record.payload.to_vec())))
        .collect::<Result<_, _>>()
        .unwrap()
}

#[test]
fn records_round_trip_across_segments_and_reopen() {
    let disk = SimBackend::new();
    let (mut wal, recovery) = Wal::open(disk.clone(), options()).unwrap();
    assert_eq!(recovery.records, 0);
    let mut expected = Vec::new();
    for index in 0..200 {
        let bytes = payload(index);
        let position = wal.append(&record(index, &bytes)).unwrap();
        expected.push((position, index as u64, bytes));
    }
    wal.sync().unwrap();
    assert!(expected.last().unwrap().0 / SEGMENT_BYTES >= 3, "the test spans several segments");
    assert_eq!(contents(&wal), expected);
    let read = wal.read(expected[17].0).unwrap();
    assert_eq!((read.slot, read.payload), (17, &expected[17].2[..]));
    drop(wal);
    let (wal, recovery) = Wal::open(disk, options()).unwrap();
    assert_eq!(recovery.records, 200);
    assert!(recovery.damaged.is_empty());
    assert_eq!(contents(&wal), expected);
}

/// After every operation, crash two ways: losing every unsynced write, and keeping all of them.
/// Every record covered by a completed sync must come back, in order, unchanged.
#[test]
fn a_record_appended_in_two_parts_is_the_record_of_both_together() {
    let (mut whole, _) = Wal::open(SimBackend::new(), options()).unwrap();
    let (mut split, _) = Wal::open(SimBackend::new(), options()).unwrap();
    for index in 0..100 {
        let bytes = payload(index);
        let cut = index % (bytes.len() + 1);
        let (head, rest) = bytes.split_at(cut);
        let at_whole = whole.append(&record(index, &bytes)).unwrap();
        let at_split = split.append_split(&record(index, head), rest).unwrap();
        assert_eq!(at_whole, at_split);
    }
    whole.sync().unwrap();
    split.sync().unwrap();
    assert_eq!(contents(&split), contents(&whole));
}

/// Large records go to the file from their parts (no gathering copy); small ones are staged.
/// Mixed, on real files, they read back the same as whole appends, before and after reopen.
#[test]
fn large_records_written_from_their_parts_read_back_on_real_files() {
    let options = Options { segment_bytes: 1 << 20, prepare_ahead: false };
    let (split_dir, whole_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let open = |dir: &tempfile::TempDir| {
        Wal::open(MmapBackend::new(dir.path()).unwrap(), options.clone()).unwrap().0
    };
    let (mut split, mut whole) = (open(&split_dir), open(&whole_dir));
    for index in 0..40 {
        // Small, then large of odd lengths (padding to 8 and to a page both vary).
        let len = if index % 3 == 0 { 300 + index } else { (64 << 10) + index * 4099 };
        let bytes: Vec<u8> = (0..len).map(|byte| (byte * 7 + index) as u8).collect();
        let (head, rest) = bytes.split_at(5 + index % 11);
        let at_split = split.append_split(&record(index, head), rest).unwrap();
        assert_eq!(at_split, whole.append(&record(index, &bytes)).unwrap());
        if index % 4 == 1 {
            split.sync().unwrap();
        }
    }
    assert_eq!(contents(&split), contents(&whole), "read through the mapping");
    split.sync().unwrap();
    whole.sync().unwrap();
    let expected = contents(&whole);
    assert!(expected.last().unwrap().0 >= 3 << 20, "the test spans several segments");
    drop((split, whole));
    let (reopened, recovery) =
        Wal::open(MmapBackend::new(split_dir.path()).unwrap(), options).unwrap();
    assert!(recovery.damaged.is_empty(), "{:?}", recovery.damaged);
    assert_eq!(contents(&reopened), expected);
}

#[test]
fn crash_at_every_sync_point_and_record_boundary_keeps_every_synced_record() {
    let disk = SimBackend::new();
    let (mut wal, _) = Wal::open(disk.clone(), options()).unwrap();
    let mut appended = Vec::new();
    let mut synced = 0;
    for index in 0..120 {
        let bytes = payload(index);
        let position = wal.append(&record(index, &bytes)).unwrap();
        appended.push((position, index as u64, bytes));
        if index % 4 == 3 {
            wal.sync().unwrap();
            synced = appended.len();
        }
        for (keep_unsynced, image) in
            [(false, disk.crash_losing_unsynced()), (true, disk.crash(|_, _| Some(Tear::Whole)))]
        {
            let (recovered, recovery) = Wal::open(image, options()).unwrap();
            let got = contents(&recovered);
            let expected = if keep_unsynced { appended.len() } else { synced };
            assert_eq!(got.len(), expected, "after record {index}, unsynced kept: {keep_unsynced}");
            assert_eq!(got[..], appended[..expected]);
            assert!(recovery.damaged.is_empty(), "{:?}", recovery.damaged);
        }
    }
}

/// A bounded enumeration: for every subset of the unsynced writes, each whole or torn to its
/// first 512-byte sector, recovery succeeds and returns every synced record and then a prefix of
/// the rest.
#[test]
fn any_subset_of_unsynced_writes_recovers_the_synced_prefix() {
    let disk = SimBackend::new();
    let (mut wal, _) = Wal::open(disk.clone(), options()).unwrap();
    let mut appended = Vec::new();
    for index in 0..6 {
        let bytes = vec![index as u8 + 1; 300 + index * 200];
        appended.push((wal.append(&record(index, &bytes)).unwrap(), index as u64, bytes));
        if index == 1 {
            wal.sync().unwrap();
        }
    }
    let pending: usize = disk.pending_writes().iter().map(|(_, writes)| writes.len()).sum();
    assert_eq!(pending, 4);
    let tears = [None, Some(Tear::Whole), Some(Tear::Sectors { n: 1, sector_bytes: 512 })];
    let mut cases = 0;
    for choice in 0..3usize.pow(pending as u32) {
        let image = disk.crash(|_, index| tears[choice / 3usize.pow(index as u32) % 3]);
        let (wal, _) = Wal::open(image, options()).unwrap();
        let got = contents(&wal);
        assert!(got.len() >= 2, "case {choice}: lost a synced record");
        assert_eq!(
            got[..],
            appended[..got.len()],
            "case {choice}: recovered something never written"
        );
        cases += 1;
    }
    assert_eq!(cases, 81);
}

#[test]
fn torn_unsynced_tail_is_cut_and_counted() {
    let disk = SimBackend::new();
    let (mut wal, _) = Wal::open(disk.clone(), options()).unwrap();
    wal.append(&record(0, b"durable")).unwrap();
    wal.sync().unwrap();
    wal.append(&record(1, &[9u8; 2000])).unwrap();
    let image = disk.crash(|_, _| Some(Tear::Sectors { n: 1, sector_bytes: 512 }));
    let (wal, recovery) = Wal::open(image, options()).unwrap();
    assert_eq!(contents(&wal).len(), 1);
    assert!(recovery.damaged.is_empty(), "a torn write no sync covered is not damage");
    assert!(recovery.torn_tail_bytes > 0);
}

/// A bit flipped in any byte of a synced record (header or payload) is detected. Followed by
/// valid records it is an error naming segment and offset; at the end it is reported as damage,
/// never silently dropped.
#[test]
fn bit_flip_in_every_field_of_a_record_is_detected() {
    let disk = SimBackend::new();
    let (mut wal, _) = Wal::open(disk.clone(), options()).unwrap();
    let victim = wal.append(&record(0, b"the victim's payload")).unwrap();
    wal.append(&record(1, b"after")).unwrap();
    wal.sync().unwrap();
    let last = wal.append(&record(2, b"and after")).unwrap();
    wal.sync().unwrap();
    drop(wal);
    for (target, followed) in [(victim, true), (last, false)] {
        // Every byte of the record: header, payload and padding.
        let size = quorum_wal::format::record_bytes(if followed { 20 } else { 9 });
        for byte in 0..size {
            for bit in [0u8, 7] {
                let image = disk.crash_losing_unsynced();
                image.flip_bit(0, target as usize + byte, bit);
                match Wal::open(image, options()) {
                    Err(Error::Corrupt { offset, .. }) => {
                        assert!(followed, "byte {byte}: error though nothing valid follows");
                        assert_eq!(offset, target);
                    }
                    Ok((wal, recovery)) => {
                        assert!(
                            !followed,
                            "byte {byte} bit {bit}: corruption before valid records accepted"
                        );
                        assert_eq!(recovery.damaged.len(), 1, "byte {byte}: damage not reported");
                        assert_eq!(recovery.damaged[0].position, target);
                        assert_eq!(contents(&wal).len(), 2);
                    }
                    Err(other) => panic!("byte {byte}: unexpected {other}"),
                }
            }
        }
    }
}

#[test]
fn damage_in_a_range_a_completed_sync_confirmed_is_reported_as_certainly_synced() {
    let disk = SimBackend::new();
    let (mut wal, _) = Wal::open(disk.clone(), options()).unwrap();
    let first = wal.append(&record(0, b"one")).unwrap();
    wal.sync().unwrap();
    wal.append(&record(1, b"two")).unwrap();
    wal.sync().unwrap(); // this sync's watermark confirms everything below record 1
    drop(wal);
    let recovered_after_damage_then_reopened = {
        // Recovery's own sync keeps what the old watermarks confirmed.
        let image = disk.crash_losing_unsynced();
        let (wal, _) = Wal::open(image.clone(), options()).unwrap();
        drop(wal);
        image.flip_bit(0, first as usize + 33, 1);
        image.flip_bit(0, first as usize + 33 + 40, 1);
        Wal::open(image, options()).unwrap().1
    };
    assert_eq!(recovered_after_damage_then_reopened.damaged[0].synced, Synced::Certainly);
    // Damage the last record: it lies above the confirmed mark, so it is "possibly" synced.
    let second = first + quorum_wal::format::record_bytes(3) as u64;
    let image = disk.crash_losing_unsynced();
    image.flip_bit(0, second as usize + 33, 1);
    let (_, recovery) = Wal::open(image, options()).unwrap();
    assert_eq!(recovery.damaged[0].synced, Synced::Possibly);
    // The first record is below it, and nothing valid follows once the second is damaged too.
    let image = disk.crash_losing_unsynced();
    image.flip_bit(0, second as usize + 33, 1);
    image.flip_bit(0, first as usize + 33, 1);
    let (_, recovery) = Wal::open(image, options()).unwrap();
    assert_eq!(recovery.damaged[0].position, first);
    assert_eq!(recovery.damaged[0].synced, Synced::Certainly);
}

#[test]
fn failed_sync_poisons_the_log() {
    let disk = SimBackend::new();
    let (mut wal, _) = Wal::open(disk.clone(), options()).unwrap();
    let position = wal.append(&record(0, b"x")).unwrap();
    disk.fail_syncs(1);
    match wal.sync() {
        Err(Error::Sync { path, offset, end_offset, .. }) => {
            // The error names the segment and the bytes the sync was to make durable.
            assert!(path.ends_with("0000000000000000.wal"), "{}", path.display());
            assert!(offset < end_offset, "{offset}..{end_offset}");
        }
        other => panic!("expected a sync error, got {other:?}"),
    }
    assert!(matches!(wal.append(&record(1, b"y")), Err(Error::Poisoned)));
    assert!(matches!(wal.sync(), Err(Error::Poisoned)));
    assert!(matches!(wal.read(position), Err(Error::Poisoned)));
    assert_eq!(wal.durable_position(), wal.first_position(), "nothing became durable");
}

#[test]
fn sync_runs_on_another_thread_while_appends_continue() {
    let disk = SimBackend::new();
    let (mut wal, _) = Wal::open(disk, options()).unwrap();
    wal.append(&record(0, b"a")).unwrap();
    let pending = wal.start_sync().unwrap().unwrap();
    let target = pending.target();
    let flusher = std::thread::spawn(move || pending.run());
    wal.append(&record(1, b"b")).unwrap();
    assert!(wal.start_sync().unwrap().is_none(), "one sync at a time");
    let durable = wal.finish_sync(flusher.join().unwrap()).unwrap();
    assert_eq!(durable, target);
    assert!(wal.end_position() > durable, "the later append waits for the next sync");
    assert_eq!(wal.sync().unwrap(), wal.end_position());
}

/// Group commit as a runtime drives it: appends never wait; a sync thread flushes; whatever was
/// appended while a flush ran goes in the next one.
#[test]
fn group_commit_through_the_sync_thread() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options { segment_bytes: 1 << 20, prepare_ahead: true };
    let (mut wal, _) = Wal::open(MmapBackend::new(dir.path()).unwrap(), options.clone()).unwrap();
    let syncer = quorum_wal::SyncThread::spawn("test-sync").unwrap();
    let mut in_flight = false;
    let mut syncs = 0;
    for index in 0..5_000 {
        wal.append(&record(index, &payload(index))).unwrap();
        if in_flight {
            if let Some(outcome) = syncer.try_outcome() {
                wal.finish_sync(outcome).unwrap();
                in_flight = false;
                syncs += 1;
            }
        }
        if !in_flight {
            if let Some(pending) = wal.start_sync().unwrap() {
                syncer.submit(pending);
                in_flight = true;
            }
        }
    }
    if in_flight {
        wal.finish_sync(syncer.wait_outcome().unwrap()).unwrap();
    }
    assert_eq!(wal.sync().unwrap(), wal.end_position());
    assert!(syncs < 5_000, "each sync covered many appends");
    drop(wal);
    let (wal, recovery) = Wal::open(MmapBackend::new(dir.path()).unwrap(), options).unwrap();
    assert_eq!(recovery.records, 5_000);
    assert_eq!(contents(&wal).len(), 5_000);
}

#[test]
fn out_of_space_is_a_clean_error_and_loses_nothing() {
    let disk = SimBackend::new();
    disk.limit_space(SEGMENT_BYTES * 2);
    let (mut wal, _) = Wal::open(disk.clone(), options()).unwrap();
    let mut appended = 0;
    let error = loop {
        match wal.append(&record(appended, &[1u8; 1000])) {
            Ok(_) => appended += 1,
            Err(error) => break error,
        }
    };
    assert!(matches!(error, Error::NoSpace { .. }), "{error}");
    wal.sync().unwrap();
    drop(wal);
    let (wal, _) = Wal::open(disk, options()).unwrap();
    assert_eq!(contents(&wal).len(), appended);
}

#[test]
fn truncated_suffix_stays_gone_after_new_appends_and_a_crash() {
    let disk = SimBackend::new();
    let (mut wal, _) = Wal::open(disk.clone(), options()).unwrap();
    let keep = wal.append(&record(0, b"keep")).unwrap();
    let cut = wal.append(&record(1, b"replaced, never committed")).unwrap();
    wal.append(&record(2, b"also replaced")).unwrap();
    wal.sync().unwrap();
    wal.truncate_suffix(cut).unwrap();
    wal.append(&record(3, b"new")).unwrap();
    wal.sync().unwrap();
    let (wal, _) = Wal::open(disk.crash_losing_unsynced(), options()).unwrap();
    let slots: Vec<u64> = contents(&wal).iter().map(|(_, slot, _)| *slot).collect();
    assert_eq!(slots, vec![0, 3]);
    assert_eq!(wal.first_position(), keep);
}

#[test]
fn released_prefix_deletes_whole_segments_only() {
    let disk = SimBackend::new();
    let (mut wal, _) = Wal::open(disk.clone(), options()).unwrap();
    let mut positions = Vec::new();
    for index in 0..100 {
        positions.push(wal.append(&record(index, &[0u8; 500])).unwrap());
    }
    wal.sync().unwrap();
    let keep_from = positions[60];
    wal.release_prefix(keep_from).unwrap();
    assert!(wal.first_position() <= keep_from);
    assert!(wal.first_position() > positions[0]);
    assert!(matches!(wal.read(positions[0]), Err(Error::BadPosition(_))));
    assert_eq!(wal.read(keep_from).unwrap().slot, 60);
    drop(wal);
    let (wal, _) = Wal::open(disk, options()).unwrap();
    assert_eq!(contents(&wal).last().unwrap().1, 99);
}

#[test]
fn metadata_is_replaced_atomically_and_survives_reopen() {
    let disk = SimBackend::new();
    let (mut wal, recovery) = Wal::open(disk.clone(), options()).unwrap();
    assert_eq!(recovery.metadata, None);
    wal.set_metadata(b"promised 4.2").unwrap();
    wal.set_metadata(b"promised 5.1").unwrap();
    let (_, recovery) = Wal::open(disk.crash_losing_unsynced(), options()).unwrap();
    assert_eq!(recovery.metadata.as_deref(), Some(&b"promised 5.1"[..]));
}

#[test]
fn a_missing_segment_in_the_middle_is_an_error() {
    let disk = SimBackend::new();
    let (mut wal, _) = Wal::open(disk.clone(), options()).unwrap();
    for index in 0..100 {
        wal.append(&record(index, &[0u8; 500])).unwrap();
    }
    wal.sync().unwrap();
    drop(wal);
    let image = disk.crash_losing_unsynced();
    quorum_wal::Backend::remove(&image, 1).unwrap();
    assert!(matches!(Wal::open(image, options()), Err(Error::Corrupt { .. })));
}

#[test]
fn real_files_on_this_machines_disk_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options { segment_bytes: 1 << 20, prepare_ahead: true };
    let (mut wal, _) = Wal::open(MmapBackend::new(dir.path()).unwrap(), options.clone()).unwrap();
    let mut expected = Vec::new();
    for index in 0..3_000 {
        let bytes = payload(index);
        expected.push((wal.append(&record(index, &bytes)).unwrap(), index as u64, bytes));
        if index % 100 == 99 {
            wal.sync().unwrap();
        }
    }
    wal.sync().unwrap();
    wal.set_metadata(b"epoch 3").unwrap();
    drop(wal);
    let (wal, recovery) = Wal::open(MmapBackend::new(dir.path()).unwrap(), options).unwrap();
    assert_eq!(recovery.records, 3_000);
    assert_eq!(recovery.metadata.as_deref(), Some(&b"epoch 3"[..]));
    assert_eq!(contents(&wal), expected);
}

#[test]
fn shared_reads_see_staged_appends_and_outlive_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let real = Options { segment_bytes: 1 << 20, prepare_ahead: true };
    let (mut wal, _) = Wal::open(MmapBackend::new(dir.path()).unwrap(), real).unwrap();
    let mut shared = Vec::new();
    for index in 0..2_000 {
        let bytes = payload(index);
        let position = wal.append(&record(index, &bytes)).unwrap();
        // Not synced yet: the append may still be staged; a read must see it anyway.
        let copy = wal.read_shared(position).unwrap().expect("mapped segments share");
        assert_eq!(&copy[..], &bytes[..], "record {index}");
        // Its writer, knowing the length, gets the same bytes without a read-back.
        let appended = wal.shared_appended(position, bytes.len()).expect("within the log");
        assert_eq!(&appended[..], &bytes[..], "record {index}");
        assert!(wal.shared_appended(position, 1 << 20).is_none(), "past the log's end");
        shared.push((copy, bytes));
        if index % 300 == 299 {
            wal.sync().unwrap();
        }
    }
    drop(wal);
    // The buffers keep their mappings alive after the log (and its segments) are gone.
    for (copy, bytes) in shared {
        assert_eq!(copy, bytes);
    }
    let (wal, _) = Wal::open(SimBackend::new(), options()).unwrap();
    assert!(matches!(wal.read_shared(wal.first_position()), Err(_) | Ok(None)));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Whatever bytes a segment holds past a valid header, opening never panics.
    #[test]
    fn recovery_never_panics_on_arbitrary_segment_bytes(
        noise in prop::collection::vec(any::<u8>(), 0..2048),
        at in 0usize..(16 * 1024 - SEGMENT_HEADER_BYTES - 2048),
        whole_file in any::<bool>(),
    ) {
        let disk = SimBackend::new();
        let (mut wal, _) = Wal::open(disk.clone(), options()).unwrap();
        wal.append(&record(0, b"a record")).unwrap();
        wal.sync().unwrap();
        drop(wal);
        let image = disk.crash_losing_unsynced();
        let mut bytes = image.synced_image(0).unwrap();
        if whole_file {
            for (index, byte) in bytes.iter_mut().enumerate() {
                *byte = noise.get(index % noise.len().max(1)).copied().unwrap_or(0);
            }
        } else {
            let start = SEGMENT_HEADER_BYTES + at;
            bytes[start..start + noise.len()].copy_from_slice(&noise);
        }
        image.set_synced_image(0, bytes);
        let _ = Wal::open(image, options());
    }
}

/// Many crash cycles on one disk: random appends, syncs and crashes that keep any subset of
/// the unsynced writes, whole or torn. After each, the log must hold every record a completed
/// sync covered, then a prefix of the rest, in order, and nothing else; and it must go on
/// working. (This found stale bytes left past the end of a segment by one crash, read as
/// corruption after the next.)
#[test]
fn repeated_crashes_with_random_subsets_keep_the_log_a_prefix() {
    use rand::{Rng, SeedableRng};
    for seed in 0..60u64 {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut disk = SimBackend::new();
        let (mut wal, _) = Wal::open(disk.clone(), options()).unwrap();
        let mut log: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut synced = 0;
        for round in 0..30 {
            for _ in 0..rng.random_range(1..40) {
                let slot = rng.random_range(0..1_000_000);
                let bytes: Vec<u8> =
                    (0..rng.random_range(0..3_000)).map(|_| rng.random()).collect();
                wal.append(&Record {
                    kind: 1,
                    slot,
                    ballot_round: 1,
                    ballot_node: 1,
                    payload: &bytes,
                })
                .unwrap();
                log.push((slot, bytes));
                if rng.random_ratio(1, 8) {
                    wal.sync().unwrap();
                    synced = log.len();
                }
            }
            let keep = rng.random_range(0..=100u32);
            let torn = rng.random_range(0..=100u32);
            let image = disk.crash(|_, _| {
                if rng.random_range(0..100) >= keep {
                    return None;
                }
                if rng.random_range(0..100) >= torn {
                    return Some(Tear::Whole);
                }
                let sector_bytes = if rng.random() { 512 } else { 4096 };
                Some(Tear::Sectors { n: rng.random_range(0..4), sector_bytes })
            });
            drop(wal);
            let (reopened, _) = Wal::open(image.clone(), options())
                .unwrap_or_else(|error| panic!("seed {seed} round {round}: {error}"));
            let got: Vec<(u64, Vec<u8>)> =
                contents(&reopened).into_iter().map(|(_, slot, bytes)| (slot, bytes)).collect();
            assert!(got.len() >= synced, "seed {seed} round {round}: lost a synced record");
            assert!(got.len() <= log.len(), "seed {seed} round {round}: records from nowhere");
            assert_eq!(got[..], log[..got.len()], "seed {seed} round {round}: not a prefix");
            log.truncate(got.len());
            synced = log.len();
            wal = reopened;
            disk = image;
        }
    }
}

/// Released segments become spares and the next segments are made from them, their old
/// records left in place (records of one size, so that old records start exactly where the
/// new ones end): after crashes that keep any subset of the unsynced writes (torn or
/// whole), only what was written under the current numbers comes back, and every synced record
/// does.
#[test]
fn recycled_segments_never_bring_back_their_old_records() {
    let disk = SimBackend::new();
    let (mut wal, _) = Wal::open(disk.clone(), options()).unwrap();
    let mut appended = Vec::new();
    let mut index = 0;
    // Several rounds of: fill segments, sync, release all but the tail.
    for _round in 0..10 {
        for _ in 0..40 {
            index += 1;
            let bytes = vec![index as u8; 300];
            appended.push((wal.append(&record(index, &bytes)).unwrap(), index as u64, bytes));
        }
        wal.sync().unwrap();
        let keep_from = appended.last().unwrap().0;
        wal.release_prefix(keep_from).unwrap();
        appended.retain(|(position, _, _)| *position >= wal.first_position());
    }
    assert!(wal.first_position() > 8 * SEGMENT_BYTES, "released {}", wal.first_position());
    assert!(!quorum_wal::Backend::spares(&disk).unwrap().is_empty(), "released segments kept");
    // Go on until the tail segment is a recycled one with old records after the log's end.
    loop {
        let end = wal.end_position();
        let tail = disk.synced_image(end / SEGMENT_BYTES).unwrap();
        if tail[(end % SEGMENT_BYTES) as usize..].iter().any(|byte| *byte != 0) {
            break;
        }
        index += 1;
        let bytes = vec![index as u8; 300];
        appended.push((wal.append(&record(index, &bytes)).unwrap(), index as u64, bytes));
        wal.sync().unwrap();
        wal.release_prefix(wal.end_position()).unwrap();
        appended.retain(|(position, _, _)| *position >= wal.first_position());
    }
    // Unsynced appends into what may be recycled segments, then crashes of every kind.
    let synced = appended.clone();
    for index in 1000..1012 {
        let bytes = vec![index as u8; 300];
        appended.push((wal.append(&record(index, &bytes)).unwrap(), index as u64, bytes));
    }
    let tears = [None, Some(Tear::Whole), Some(Tear::Sectors { n: 1, sector_bytes: 512 })];
    for choice in 0..200usize {
        let image = disk.crash(|_, index| tears[(choice / 3usize.pow(index as u32 % 5)) % 3]);
        let (wal, recovery) = Wal::open(image, options()).unwrap();
        let got = contents(&wal);
        assert!(got.len() >= synced.len(), "case {choice}: lost a synced record");
        assert!(got.len() <= appended.len(), "case {choice}: old records came back");
        assert_eq!(got[..], appended[..got.len()], "case {choice}: a record never written now");
        assert!(recovery.damaged.iter().all(|damage| damage.synced != Synced::Certainly));
    }
    // And a clean reopen keeps going on spares.
    drop(wal);
    let (mut wal, _) = Wal::open(disk.crash_losing_unsynced(), options()).unwrap();
    let before = contents(&wal);
    for index in 2000..2100 {
        wal.append(&record(index, &[index as u8; 300])).unwrap();
    }
    wal.sync().unwrap();
    assert_eq!(contents(&wal)[..before.len()], before[..]);
    assert_eq!(contents(&wal).len(), before.len() + 100);
}

#[test]
fn real_files_are_recycled_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options { segment_bytes: 64 << 10, prepare_ahead: true };
    let (mut wal, _) = Wal::open(MmapBackend::new(dir.path()).unwrap(), options.clone()).unwrap();
    let mut expected = Vec::new();
    for index in 0..3_000 {
        let bytes = payload(index);
        expected.push((wal.append(&record(index, &bytes)).unwrap(), index as u64, bytes));
        if index % 100 == 99 {
            wal.sync().unwrap();
            let keep_from = expected[expected.len() - 50].0;
            wal.release_prefix(keep_from).unwrap();
        }
    }
    wal.sync().unwrap();
    let files: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    let spares = files.iter().filter(|name| name.ends_with(".spare")).count();
    let segments = files.iter().filter(|name| name.ends_with(".wal")).count();
    assert!((1..=4).contains(&spares), "{files:?}");
    assert!(segments <= 4, "{files:?}");
    let first = wal.first_position();
    expected.retain(|(position, _, _)| *position >= first);
    assert_eq!(contents(&wal), expected);
    drop(wal);
    let (wal, recovery) = Wal::open(MmapBackend::new(dir.path()).unwrap(), options).unwrap();
    assert!(recovery.damaged.is_empty(), "{:?}", recovery.damaged);
    assert_eq!(contents(&wal), expected);
}

/// A buffer shared from a released segment's mapping keeps its bytes: that segment is not
/// reused while the buffer lives (a replica keeps such buffers for the slots it holds).
#[test]
fn a_spare_still_read_through_its_mapping_is_not_reused() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options { segment_bytes: 64 << 10, prepare_ahead: false };
    let (mut wal, _) = Wal::open(MmapBackend::new(dir.path()).unwrap(), options).unwrap();
    let first = wal.append(&record(0, &[7u8; 3000])).unwrap();
    wal.sync().unwrap();
    let held = wal.read_shared(first).unwrap().expect("mapped segments share");
    let mut last = first;
    for round in 0..20 {
        for index in 0..40 {
            last = wal.append(&record(index, &[round as u8; 3000])).unwrap();
        }
        wal.sync().unwrap();
        wal.release_prefix(last).unwrap();
    }
    assert!(wal.first_position() > 10 * (64 << 10), "segments were released and made again");
    assert_eq!(&held[..], &[7u8; 3000][..], "the held buffer's bytes changed under it");
    drop(held);
}

/// Found by the `wal_recovery` fuzz target: a segment whose watermark names generation
/// u32::MAX, its checksum intact (fuzz input `2e00fc2e00fcb400…`, the watermark resealed),
/// made recovery overflow computing the next generation (a panic, overflow checks being on in
/// release). It is refused as corrupt now, and a record of such a generation past the
/// confirmed end is cut as a torn tail.
#[test]
fn a_generation_no_log_reaches_is_damage_not_a_panic() {
    use quorum_wal::format::{WATERMARK_OFFSET, Watermark, encode_record, record_bytes};
    let disk = SimBackend::new();
    let (mut wal, _) = Wal::open(disk.clone(), options()).unwrap();
    for index in 0..5 {
        wal.append(&record(index, &payload(index))).unwrap();
    }
    wal.sync().unwrap();
    let (end, expected) = (wal.end_position(), contents(&wal));
    drop(wal);
    let image = disk.synced_image(0).unwrap();

    let mut watermarked = image.clone();
    let mark = Watermark::decode(&watermarked).unwrap();
    Watermark { generation: u32::MAX, ..mark }.encode(&mut watermarked);
    disk.set_synced_image(0, watermarked);
    let error = Wal::open(disk.clone(), options()).unwrap_err();
    assert!(
        matches!(error, Error::Corrupt { offset, .. } if offset == WATERMARK_OFFSET as u64 + 16),
        "{error}"
    );

    let mut tail = image;
    let stray = record(9, b"from no generation a log reaches");
    let at = end as usize;
    encode_record(&stray, u32::MAX, 0, &mut tail[at..at + record_bytes(stray.payload.len())]);
    disk.set_synced_image(0, tail);
    let (mut wal, recovery) = Wal::open(disk.clone(), options()).unwrap();
    assert_eq!(contents(&wal), expected, "the stray record is not part of the log");
    assert!(recovery.torn_tail_bytes > 0 || !recovery.damaged.is_empty(), "{recovery:?}");
    wal.truncate_suffix(expected[4].0).unwrap();
    wal.append(&record(4, &payload(4))).unwrap();
    wal.sync().unwrap();
    drop(wal);
    let (wal, _) = Wal::open(disk, options()).unwrap();
    assert_eq!(contents(&wal), expected);
}

/// Found by the `wal_recovery` fuzz target (input `ffffffff00200000`: segment files renamed
/// to numbers near 2^64, their headers resealed to agree): the position of a record in such
/// a segment overflowed u64, a panic in `Wal::open`. Such a number is refused as corrupt.
#[test]
fn a_segment_number_past_the_positions_a_log_reaches_is_corrupt_not_a_panic() {
    use quorum_wal::format::SegmentHeader;
    let disk = SimBackend::new();
    let (mut wal, _) = Wal::open(disk.clone(), options()).unwrap();
    wal.append(&record(1, &payload(1))).unwrap();
    wal.sync().unwrap();
    drop(wal);
    let image = disk.synced_image(0).unwrap();
    for number in [u64::MAX, u64::MAX / SEGMENT_BYTES, u64::MAX / 2 / SEGMENT_BYTES + 1] {
        let mut renamed = image.clone();
        SegmentHeader { segment_number: number, segment_bytes: SEGMENT_BYTES }.encode(&mut renamed);
        let far = SimBackend::new();
        far.set_synced_image(number, renamed.clone());
        let error = Wal::open(far, options()).unwrap_err();
        assert!(matches!(error, Error::Corrupt { offset: 16, .. }), "{number}: {error}");
        // Nor is it damage a repairing open may cut, header checksum broken or not (the
        // fuzzer's input: a damaged header under such a name overflowed the cut's position).
        for damaged in [false, true] {
            let mut image = renamed.clone();
            image[8] ^= u8::from(damaged);
            let far = SimBackend::new();
            far.set_synced_image(number, image);
            let error = Wal::open_repairing(far, options()).unwrap_err();
            assert!(matches!(error, Error::Corrupt { .. }), "{number}: {error}");
        }
    }
}
