//! Whole-log recovery (`Wal::open`, `Wal::open_repairing`) over a simulated disk whose
//! segment files and metadata file hold a real log damaged by the fuzzer: bytes overwritten,
//! files cut short or lengthened, files renamed, headers and watermarks made to check again
//! after the damage (so that recovery reads past them). Opening returns a log or a typed
//! error, never panics; a log that opens reads every record without panicking, takes an
//! append, and reopens with the same records.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use quorum_wal::format::{SEGMENT_HEADER_BYTES, WATERMARK_BYTES, WATERMARK_OFFSET, Watermark};
use quorum_wal::{
    Backend, Error, GENERATION_LIMIT, METADATA_FILE, Options, REPAIR_FILE, Record, SimBackend, Wal,
};

/// The smallest segments the log takes: a few KiB of input reaches every part of them.
const OPTIONS: Options = Options { segment_bytes: 12 << 10, prepare_ahead: false };

/// A log on a simulated disk: its segment images by number, and its metadata file.
struct Image {
    segments: Vec<(u64, Vec<u8>)>,
    metadata: Option<Vec<u8>>,
}

/// Three segments of records of assorted kinds and sizes, one suffix truncation (so records
/// carry two generations), some metadata; all synced.
fn base() -> &'static Image {
    static BASE: OnceLock<Image> = OnceLock::new();
    BASE.get_or_init(|| {
        let disk = SimBackend::new();
        let (mut wal, _) = Wal::open(disk.clone(), OPTIONS).expect("an empty log opens");
        let payload = |index: u64| vec![index as u8; (index as usize * 131) % 1500];
        let mut cut = 0;
        for index in 0..30 {
            let bytes = payload(index);
            let position = wal.append(&record(index, &bytes)).expect("append");
            if index == 20 {
                cut = position;
            }
        }
        wal.sync().expect("sync");
        wal.truncate_suffix(cut).expect("truncate");
        for index in 20..32 {
            let bytes = payload(index + 7);
            wal.append(&record(index, &bytes)).expect("append");
        }
        wal.set_metadata(b"promised 3.1").expect("metadata");
        wal.sync().expect("sync");
        drop(wal);
        let mut numbers = disk.list().expect("list");
        numbers.sort_unstable();
        let segments = numbers
            .into_iter()
            .map(|number| (number, disk.synced_image(number).expect("a segment")))
            .collect();
        let metadata = disk.read_file(METADATA_FILE).expect("read");
        Image { segments, metadata }
    })
}

fn record(index: u64, payload: &[u8]) -> Record<'_> {
    Record { kind: 1 + (index % 3) as u8, slot: index, ballot_round: 3, ballot_node: 1, payload }
}

/// Every record from the first, as (position, kind, slot, payload); an error ends the list.
fn contents(wal: &Wal<SimBackend>) -> Vec<(u64, u8, u64, Vec<u8>)> {
    wal.iter_from(wal.first_position())
        .map_while(Result::ok)
        .map(|(position, record)| (position, record.kind, record.slot, record.payload.to_vec()))
        .collect()
}

fn open(
    disk: SimBackend,
    repairing: bool,
) -> quorum_wal::Result<(Wal<SimBackend>, quorum_wal::Recovery)> {
    if repairing { Wal::open_repairing(disk, OPTIONS) } else { Wal::open(disk, OPTIONS) }
}

fuzz_target!(|input: &[u8]| {
    // Byte 0: flags. Byte 1: how far the file names move (scaled by the flags' top bits). Then damage: a file index (the
    // segments in order, then the metadata file), a 16-bit offset, a length, and the bytes
    // written there; a length of 0 cuts the file at the offset, 255 lengthens it with zeros.
    let Some((&[flags, shift], mut damage)) = input.split_first_chunk::<2>() else { return };
    let repairing = flags & 1 != 0;
    let reseal_headers = flags & 2 != 0;
    let reseal_watermarks = flags & 4 != 0;
    let drop_last = flags & 8 != 0;
    let repair_file = flags & 16 != 0;
    let base = base();
    let mut segments = base.segments.clone();
    if drop_last {
        segments.pop();
    }
    // Names far out too (the top three flag bits scale the move by bytes): positions are
    // segment numbers times the segment size, which must not overflow.
    let shift = u64::from(shift) << (8 * u32::from(flags >> 5));
    for (number, _) in &mut segments {
        *number += shift;
    }
    let mut metadata = base.metadata.clone();
    while let Some((&[file, low, high, len], rest)) = damage.split_first_chunk::<4>() {
        let file = usize::from(file) % (segments.len() + 1);
        let target = match segments.get_mut(file) {
            Some((_, image)) => image,
            None => metadata.get_or_insert_with(Vec::new),
        };
        let offset = usize::from(u16::from_le_bytes([low, high]));
        match len {
            0 => {
                target.truncate(offset);
                damage = rest;
            }
            255 => {
                target.resize(target.len() + offset, 0);
                damage = rest;
            }
            len => {
                let (bytes, rest) = rest.split_at(usize::from(len).min(rest.len()));
                let offset = offset % (target.len() + 1);
                let end = (offset + bytes.len()).min(target.len());
                target[offset..end].copy_from_slice(&bytes[..end - offset]);
                damage = rest;
            }
        }
    }
    for (number, image) in &mut segments {
        if reseal_headers && image.len() >= SEGMENT_HEADER_BYTES {
            // The header names the file it is in, and its checksum holds again.
            if shift != 0 {
                image[16..24].copy_from_slice(&number.to_le_bytes());
            }
            let crc = quorum_wal_crc(&image[0..32]);
            image[32..36].copy_from_slice(&crc.to_le_bytes());
        }
        if reseal_watermarks && image.len() >= SEGMENT_HEADER_BYTES {
            let block = &mut image[WATERMARK_OFFSET..WATERMARK_OFFSET + WATERMARK_BYTES];
            let crc = quorum_wal_crc(&block[0..20]);
            block[20..24].copy_from_slice(&crc.to_le_bytes());
        }
    }

    let disk = SimBackend::new();
    for (number, image) in segments {
        disk.set_synced_image(number, image);
    }
    if let Some(metadata) = metadata {
        disk.write_file_atomic(METADATA_FILE, &metadata).expect("the simulated disk writes");
    }
    if repair_file {
        disk.write_file_atomic(REPAIR_FILE, b"").expect("the simulated disk writes");
    }
    let Ok((mut wal, _)) = open(disk.clone(), repairing) else { return };
    let _ = wal.iter_from(wal.first_position()).count();
    let payload = [7u8; 40];
    let record =
        Record { kind: 1, slot: 1 << 40, ballot_round: 9, ballot_node: 2, payload: &payload };
    if wal.append(&record).is_err() || wal.sync().is_err() {
        return;
    }
    let before = contents(&wal);
    drop(wal);
    // Each opening raises the generation: a log damaged to name the last one a log may have
    // opens once, and is refused after (`GENERATION_LIMIT`).
    let numbers = disk.list().expect("the simulated disk lists");
    let at_limit = numbers.iter().filter_map(|number| disk.synced_image(*number)).any(|image| {
        Watermark::decode(&image).is_some_and(|mark| mark.generation >= GENERATION_LIMIT)
    });
    match open(disk, repairing) {
        Ok((wal, _)) => assert_eq!(contents(&wal), before, "a reopened log holds what it held"),
        Err(Error::Corrupt { .. }) if at_limit => {}
        Err(error) => panic!("a log that recovered and synced does not reopen: {error}"),
    }
});

/// The CRC-32C both headers carry.
fn quorum_wal_crc(bytes: &[u8]) -> u32 {
    crc32c::crc32c(bytes)
}
