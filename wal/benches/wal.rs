//! WAL throughput next to the physical limits measured in the same run.
//!
//! `cargo bench -p quorum-wal --bench wal`
//!
//! - `append`: records appended without sync (a memcpy into the mapping), against a memcpy of
//!   the same records into a pre-faulted buffer.
//! - `append-sync`: N records per sync, against `pwrite` + `fdatasync` of the same bytes into a
//!   preallocated, zero-filled file.
//! - `recover-1GiB`: opening a 1 GiB log, every checksum verified.
//!
//! Segment preparation (zero-filling a new segment) happens before the timed part; it runs on
//! a background thread in real use.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Benches may unwrap.

use std::fs::{File, OpenOptions};
use std::hint::black_box;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use quorum_wal::format::record_bytes;
use quorum_wal::{MmapBackend, Options, Record, Wal};

const SEGMENT_BYTES: u64 = 256 << 20;

fn fresh_wal(dir: &tempfile::TempDir) -> Wal<MmapBackend> {
    let _ = std::fs::remove_dir_all(dir.path().join("log"));
    let options = Options { segment_bytes: SEGMENT_BYTES, prepare_ahead: false };
    Wal::open(MmapBackend::new(dir.path().join("log")).unwrap(), options).unwrap().0
}

fn record(payload: &[u8]) -> Record<'_> {
    Record { kind: 1, slot: 0, ballot_round: 1, ballot_node: 1, payload }
}

/// A log reused across samples; a new one (untimed) only when the segment is full.
struct Appender {
    dir: tempfile::TempDir,
    wal: Option<Wal<MmapBackend>>,
}

impl Appender {
    fn new() -> Appender {
        Appender { dir: tempfile::tempdir().unwrap(), wal: None }
    }

    /// Appends `iterations` records, syncing every `per_sync` of them, and times it.
    fn timed(&mut self, payload: &[u8], iterations: u64, per_sync: Option<u64>) -> Duration {
        self.timed_as(payload, false, iterations, per_sync)
    }

    /// [`Appender::timed`], each record appended whole or (`split`) as a 16-byte head and the
    /// rest where it lies (`Wal::append_split`, as a node logs a batch).
    fn timed_as(
        &mut self,
        payload: &[u8],
        split: bool,
        iterations: u64,
        per_sync: Option<u64>,
    ) -> Duration {
        let size = record_bytes(payload.len()) as u64;
        let mut elapsed = Duration::ZERO;
        let mut done = 0u64;
        while done < iterations {
            let room = |wal: &Wal<MmapBackend>| {
                (SEGMENT_BYTES - wal.end_position() % SEGMENT_BYTES) / size
            };
            if self.wal.as_ref().is_none_or(|wal| room(wal) == 0) {
                self.wal = None;
                self.wal = Some(fresh_wal(&self.dir));
            }
            let wal = self.wal.as_mut().unwrap();
            let batch = (iterations - done).min(room(wal));
            let started = Instant::now();
            for index in 0..batch {
                let position = if split {
                    let (head, rest) = payload.split_at(16);
                    wal.append_split(&record(head), rest).unwrap()
                } else {
                    wal.append(&record(payload)).unwrap()
                };
                black_box(position);
                if per_sync.is_some_and(|every| (index + 1) % every == 0) {
                    wal.sync().unwrap();
                }
            }
            if per_sync.is_some() {
                wal.sync().unwrap();
            }
            elapsed += started.elapsed();
            done += batch;
        }
        elapsed
    }
}

fn append(c: &mut Criterion) {
    let mut appender = Appender::new();
    let mut group = c.benchmark_group("wal/append-no-sync");
    group.measurement_time(Duration::from_secs(4));
    for size in [16usize, 1024, 64 * 1024, 512 * 1024] {
        let payload = vec![5u8; size];
        group.throughput(Throughput::ElementsAndBytes {
            elements: 1,
            bytes: record_bytes(size) as u64,
        });
        group.bench_with_input(BenchmarkId::new("wal", size), &size, |b, _| {
            b.iter_custom(|iterations| appender.timed(&payload, iterations, None));
        });
        if size >= 64 * 1024 {
            // A batch of 64 KiB or more goes to the file from where it lies (`pwritev`).
            group.bench_with_input(BenchmarkId::new("wal-split", size), &size, |b, _| {
                b.iter_custom(|iterations| appender.timed_as(&payload, true, iterations, None));
            });
        }
        // The floor: memcpy of the same encoded bytes into a pre-faulted buffer, sequentially.
        let mut target = vec![1u8; SEGMENT_BYTES as usize];
        let source = vec![5u8; record_bytes(size)];
        group.bench_with_input(BenchmarkId::new("memcpy", size), &size, |b, _| {
            let mut offset = 0;
            b.iter(|| {
                if offset + source.len() > target.len() {
                    offset = 0;
                }
                target[offset..offset + source.len()].copy_from_slice(black_box(&source));
                offset += source.len();
            });
        });
    }
    group.finish();
}

/// `pwrite` + `fdatasync` of `per_sync` records' bytes at a time into a preallocated,
/// zero-filled file: the raw disk path the WAL is compared with.
fn raw_pwrite_fdatasync(file: &File, bytes: &[u8], per_sync: u64, iterations: u64) -> Duration {
    let file_bytes = SEGMENT_BYTES;
    let started = Instant::now();
    let mut offset = 0u64;
    let mut pending = 0;
    for _ in 0..iterations {
        if offset + bytes.len() as u64 > file_bytes {
            offset = 0;
        }
        file.write_all_at(bytes, offset).unwrap();
        offset += bytes.len() as u64;
        pending += 1;
        if pending == per_sync {
            file.sync_data().unwrap();
            pending = 0;
        }
    }
    if pending > 0 {
        file.sync_data().unwrap();
    }
    started.elapsed()
}

fn zeroed_file(dir: &tempfile::TempDir) -> File {
    let path = dir.path().join("raw");
    let mut file =
        OpenOptions::new().read(true).write(true).create(true).truncate(true).open(path).unwrap();
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..(SEGMENT_BYTES >> 20) {
        file.write_all(&zeros).unwrap();
    }
    file.sync_all().unwrap();
    file
}

fn append_sync(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let raw = zeroed_file(&dir);
    let mut appender = Appender::new();
    let mut group = c.benchmark_group("wal/append-sync");
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(4));
    for size in [16usize, 1024, 64 * 1024] {
        for per_sync in [1u64, 64, 1024] {
            if size == 64 * 1024 && per_sync == 1024 {
                continue; // 64 MiB per sync: minutes per sample on this disk; see BENCHMARKS.md.
            }
            let payload = vec![5u8; size];
            let encoded = vec![5u8; record_bytes(size)];
            let bytes = per_sync * record_bytes(size) as u64;
            group.throughput(Throughput::ElementsAndBytes { elements: per_sync, bytes });
            let id = format!("{size}B-x{per_sync}");
            group.bench_function(BenchmarkId::new("wal", &id), |b| {
                b.iter_custom(|iterations| {
                    appender.timed(&payload, iterations * per_sync, Some(per_sync))
                });
            });
            group.bench_function(BenchmarkId::new("pwrite-fdatasync", &id), |b| {
                b.iter_custom(|iterations| {
                    raw_pwrite_fdatasync(&raw, &encoded, per_sync, iterations * per_sync)
                });
            });
        }
    }
    group.finish();
}

fn recover(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let options = Options { segment_bytes: 64 << 20, prepare_ahead: false };
    let log_bytes: u64 = 1 << 30;
    {
        let mut wal = Wal::open(MmapBackend::new(dir.path()).unwrap(), options.clone()).unwrap().0;
        let payload = vec![7u8; 1024];
        let records = log_bytes / record_bytes(payload.len()) as u64;
        for index in 0..records {
            wal.append(&Record {
                kind: 1,
                slot: index,
                ballot_round: 1,
                ballot_node: 1,
                payload: &payload,
            })
            .unwrap();
        }
        wal.sync().unwrap();
    }
    let mut group = c.benchmark_group("wal/recover");
    group.sample_size(10);
    group.throughput(Throughput::Bytes(log_bytes));
    group.bench_function("1GiB-of-1KiB-records", |b| {
        b.iter(|| {
            let (_, recovery) =
                Wal::open(MmapBackend::new(dir.path()).unwrap(), options.clone()).unwrap();
            assert!(recovery.records > 1_000_000);
            black_box(recovery.records)
        });
    });
    group.finish();
}

criterion_group!(benches, append, append_sync, recover);
criterion_main!(benches);
