//! Three shard replicas with real write-ahead logs on this machine's disk, wired in one thread:
//! propose a batch at the leader, then deliver messages and run every sync (`msync`, real
//! durability) until the batch is committed and applied on all three. The syncs of the three
//! replicas run one after another here; on three machines they overlap, so this is a floor for
//! one shard, not a cluster figure (that is `quorum bench`'s job).
//!
//! `cargo bench --bench shard`

#![allow(clippy::unwrap_used, clippy::expect_used)] // Benches may unwrap.

use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use quorum::core::{ClusterId, Config, NodeId, RequestId, RoleKind};
use quorum::shard::{Shard, settle_wired};
use quorum::state_machine::{KvCommand, KvStore};
use quorum_wal::{MmapBackend, Options};

const CLUSTER: ClusterId = ClusterId(5);

struct Trio {
    shards: Vec<Option<Shard<MmapBackend, KvStore>>>,
    _dir: tempfile::TempDir,
    sequence: u64,
}

impl Trio {
    fn new(batch: usize) -> Trio {
        let dir = tempfile::tempdir().unwrap();
        let options = Options { segment_bytes: 256 << 20, prepare_ahead: true };
        let shards = (1..=3u16)
            .map(|node| {
                let mut config =
                    Config::new(CLUSTER, NodeId(node), vec![NodeId(1), NodeId(2), NodeId(3)]);
                config.batch_commands_max = batch;
                let backend = MmapBackend::new(dir.path().join(node.to_string())).unwrap();
                Some(Shard::open(config, backend, options.clone(), KvStore::default(), 64).unwrap())
            })
            .collect();
        let mut trio = Trio { shards, _dir: dir, sequence: 0 };
        while trio.first().replica().role() != RoleKind::Leader {
            trio.first().on_tick().unwrap();
            trio.settle();
        }
        trio
    }

    fn settle(&mut self) {
        settle_wired(&mut self.shards, |_, _| {}).unwrap();
    }

    /// Replica 1, which the bench makes the leader.
    fn first(&mut self) -> &mut Shard<MmapBackend, KvStore> {
        self.shards[0].as_mut().expect("every replica is up")
    }

    fn round(&mut self, commands: &[Vec<u8>]) {
        for command in commands {
            self.sequence += 1;
            let id = RequestId { client: 1, sequence: self.sequence };
            self.first().propose(id, command).unwrap().unwrap();
        }
        self.first().flush().unwrap();
        self.settle();
    }
}

fn committed_writes(c: &mut Criterion) {
    let mut group = c.benchmark_group("shard/3-replicas-one-thread-fsync");
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(5));
    for batch in [1usize, 64, 1024] {
        let commands: Vec<Vec<u8>> = (0..batch)
            .map(|index| {
                KvCommand::Put { key: format!("k{}", index % 100).into(), value: vec![1; 16] }
                    .encode()
            })
            .collect();
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_with_input(
            BenchmarkId::new("16-byte-puts-per-batch", batch),
            &batch,
            |b, &batch| {
                let mut trio = Trio::new(batch);
                b.iter_custom(|rounds| {
                    let started = Instant::now();
                    for _ in 0..rounds {
                        trio.round(&commands);
                    }
                    started.elapsed()
                });
            },
        );
    }
    group.finish();
}

criterion_group!(benches, committed_writes);
criterion_main!(benches);
