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
use quorum::machine::{KvCommand, KvStore, Outcome, SessionLimits, register_request};
use quorum::shard::{Shard, settle_wired};
use quorum_wal::{MmapBackend, Options};

const CLUSTER: ClusterId = ClusterId(5);

struct Trio {
    shards: Vec<Option<Shard<MmapBackend, KvStore>>>,
    _dir: tempfile::TempDir,
    sequence: u64,
    /// The session the bench's commands go under (registered through the log).
    session: u64,
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
                // Nothing compacted: the read-back bench compares memory with the WAL.
                config.retain_slots = u64::MAX;
                let backend = MmapBackend::new(dir.path().join(node.to_string())).unwrap();
                Some(
                    Shard::open(
                        config,
                        backend,
                        options.clone(),
                        KvStore::default(),
                        SessionLimits::with_replies_max(64),
                    )
                    .unwrap(),
                )
            })
            .collect();
        let mut trio = Trio { shards, _dir: dir, sequence: 0, session: 0 };
        // Every replica starts on a new directory and first repairs (protocol.md §3.9): all
        // tick until their surveys are done, then only the first, which so becomes the leader.
        while trio.shards.iter().flatten().any(|shard| shard.replica().is_repairing()) {
            for shard in trio.shards.iter_mut().flatten() {
                shard.on_tick().unwrap();
            }
            trio.settle();
        }
        while trio.first().replica().role() != RoleKind::Leader {
            trio.first().on_tick().unwrap();
            trio.settle();
        }
        let (register, payload) = register_request([1; 16]);
        trio.first().propose(register, &payload).unwrap().unwrap();
        trio.first().flush().unwrap();
        let mut session = None;
        settle_wired(&mut trio.shards, |_, applied| {
            for applied in applied {
                if let Outcome::Registered(id) = applied.outcome {
                    session = Some(id);
                }
            }
        })
        .unwrap();
        trio.session = session.expect("the bench's session is registered");
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
            let id = RequestId { client: self.session, sequence: self.sequence };
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

/// Serving 256 committed slots (64 puts of 16 bytes each) to a lagging peer: from memory, as
/// a replica does above its compacted base, and read back from the WAL, as it does below
/// (`archived_runs`: the records naming them replayed into a scratch log). Same log, same
/// slots, so the ratio is the price of compaction for a reader that far behind.
fn archived_reads(c: &mut Criterion) {
    let mut group = c.benchmark_group("shard/serve-256-committed-slots");
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(3));
    group.throughput(Throughput::Elements(256));
    let commands: Vec<Vec<u8>> = (0..64)
        .map(|index| {
            KvCommand::Put { key: format!("k{index}").into(), value: vec![1; 16] }.encode()
        })
        .collect();
    let mut trio = Trio::new(64);
    for round in 0..4096 {
        trio.round(&commands);
        if round % 8 == 7 {
            // A tick writes the commit position down, lazily, as a replica does once a tick
            // (a node at 1,400 batches a second and 200 ticks: every 7 batches).
            trio.first().on_tick().unwrap();
            trio.settle();
        }
    }
    let leader = trio.first();
    let commit = leader.replica().commit_index();
    let from = quorum::core::Slot(commit.0 / 2);
    let end = quorum::core::Slot(from.0 + 256);
    let (from_memory, _) = leader.replica().log().runs_from(from, end, usize::MAX);
    let from_wal = leader.archived_runs(from, end, usize::MAX).unwrap();
    assert_eq!(from_wal, from_memory, "the WAL gives back what memory holds");
    group.bench_function("from-memory", |b| {
        b.iter(|| leader.replica().log().runs_from(from, end, usize::MAX));
    });
    group.bench_function("from-wal", |b| {
        b.iter(|| leader.archived_runs(from, end, usize::MAX).unwrap())
    });
    group.finish();
}

criterion_group!(benches, committed_writes, archived_reads);
criterion_main!(benches);
