//! Times recovery of a log: builds one of `SIZE_MIB` MiB of 1 KiB records in `DIR` if it is
//! not there, then opens it and reports the rate. Drop the page cache between runs
//! (`sync; echo 3 > /proc/sys/vm/drop_caches`, as root) to time a cold read from the disk.
//!
//! `cargo run --release -p quorum-wal --example recover -- DIR [SIZE_MIB]`

#![allow(clippy::unwrap_used, clippy::expect_used)] // A measuring tool may unwrap.

use std::time::Instant;

use quorum_wal::{MmapBackend, Options, Record, Wal};

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = args.next().expect("usage: recover DIR [SIZE_MIB]");
    let size_mib: u64 =
        args.next().map_or(1024, |text| text.parse().expect("SIZE_MIB is a number"));
    let options = Options { segment_bytes: 64 << 20, prepare_ahead: false };
    let fresh = !std::path::Path::new(&dir).join("0000000000000000.wal").exists();
    if fresh {
        let (mut wal, _) = Wal::open(MmapBackend::new(&dir).unwrap(), options.clone()).unwrap();
        let payload = vec![7u8; 1024];
        let records = (size_mib << 20) / quorum_wal::format::record_bytes(payload.len()) as u64;
        for slot in 0..records {
            wal.append(&Record {
                kind: 1,
                slot,
                ballot_round: 1,
                ballot_node: 1,
                payload: &payload,
            })
            .unwrap();
        }
        wal.sync().unwrap();
        println!("built a log of {records} records in {dir}");
    }
    let started = Instant::now();
    let (_, recovery) = Wal::open(MmapBackend::new(&dir).unwrap(), options).unwrap();
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "recovered {} records, {:.0} MiB, every checksum verified, in {:.3} s: {:.2} GB/s",
        recovery.records,
        recovery.bytes as f64 / (1 << 20) as f64,
        seconds,
        recovery.bytes as f64 / seconds / 1e9
    );
}
