//! The core's hot loop: propose → accept → commit through three replicas in one thread, messages
//! handed over in memory, persists durable at once, a no-op apply that walks every command.
//! Reports commands per second at 1, 64 and 1024 commands of 16 bytes per batch, next to a
//! memcpy of the same encoded bytes measured in the same run.
//!
//! `cargo bench --bench core`
//!
//! The log has no compaction yet (it comes with snapshots), so a fresh cluster is built every
//! `ROUNDS_PER_CLUSTER` rounds, outside the timed part, to keep memory flat.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests and benches may unwrap.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use quorum::sim::direct::DirectCluster;

const PAYLOAD: [u8; 16] = [7; 16];
const ROUNDS_PER_CLUSTER: u64 = 2_048;

fn propose_accept_commit(c: &mut Criterion) {
    let mut group = c.benchmark_group("core/propose-accept-commit-3-replicas");
    for batch in [1usize, 64, 1024] {
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_with_input(
            BenchmarkId::new("commands-per-batch", batch),
            &batch,
            |b, &batch| {
                b.iter_custom(|rounds| {
                    let mut elapsed = Duration::ZERO;
                    let mut done = 0;
                    while done < rounds {
                        let mut cluster = DirectCluster::new(3, batch);
                        let now = Instant::now();
                        for _ in 0..ROUNDS_PER_CLUSTER.min(rounds - done) {
                            let committed = cluster.propose_and_commit(batch, black_box(&PAYLOAD));
                            assert_eq!(committed, batch as u64, "every command commits each round");
                            done += 1;
                        }
                        elapsed += now.elapsed();
                    }
                    elapsed
                });
            },
        );
    }
    group.finish();
}

/// The physical floor in the same run: copying a batch's encoded bytes once (one command is 16
/// bytes of payload plus a 20-byte header), as many commands per element as above.
fn memcpy_baseline(c: &mut Criterion) {
    let mut group = c.benchmark_group("core/baseline-memcpy-of-batch-bytes");
    for batch in [1usize, 64, 1024] {
        let bytes = batch * (PAYLOAD.len() + quorum::core::batch::COMMAND_HEADER_BYTES);
        let source = vec![3u8; bytes];
        let mut target = vec![0u8; bytes];
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_with_input(BenchmarkId::new("commands-per-batch", batch), &batch, |b, _| {
            b.iter(|| {
                target.copy_from_slice(black_box(&source));
                black_box(&target);
            });
        });
    }
    group.finish();
}

criterion_group!(benches, propose_accept_commit, memcpy_baseline);
criterion_main!(benches);
