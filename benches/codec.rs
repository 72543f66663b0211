//! Batches and frames: building a batch of 16-byte commands, reading it back, checking its
//! structure (what a follower does before persisting it), and encoding and decoding the Accept
//! frame that carries it (decoding checks the batch too). Reports commands per second, next to
//! a memcpy of the same encoded bytes measured in the same run.
//!
//! `cargo bench --bench codec`

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests and benches may unwrap.

use std::hint::black_box;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use quorum::core::{
    Ballot, BatchBuilder, BatchReader, ClusterId, Message, NodeId, RequestId, Slot, Value,
    check_batch,
};
use quorum::transport::codec::{Body, Encoder, Frame, decode};

const PAYLOAD: [u8; 16] = [7; 16];

fn batch(commands: usize) -> Bytes {
    let mut builder = BatchBuilder::new(usize::MAX);
    for sequence in 0..commands as u64 {
        builder.push(RequestId { client: 1, sequence }, &PAYLOAD);
    }
    builder.take()
}

fn accept(batch: Bytes) -> Frame {
    Frame {
        cluster_id: ClusterId(7),
        from: NodeId(1),
        shard: 0,
        body: Body::Peer(Message::Accept {
            ballot: Ballot::new(3, NodeId(1)),
            first_slot: Slot(100),
            count: 1,
            value: Value::Batch(batch),
            commit_index: Slot(99),
        }),
    }
}

fn codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec");
    for commands in [64usize, 1024] {
        group.throughput(Throughput::Elements(commands as u64));
        let encoded = batch(commands);
        group.bench_with_input(BenchmarkId::new("batch-build", commands), &commands, |b, &n| {
            b.iter(|| black_box(batch(n)));
        });
        group.bench_with_input(BenchmarkId::new("batch-read", commands), &encoded, |b, bytes| {
            b.iter(|| {
                let mut total = 0usize;
                for command in BatchReader::new(bytes) {
                    total += command.unwrap().1.len();
                }
                black_box(total)
            });
        });
        group.bench_with_input(BenchmarkId::new("batch-check", commands), &encoded, |b, bytes| {
            b.iter(|| check_batch(black_box(bytes)).unwrap());
        });
        let frame = accept(encoded.clone());
        let mut encoder = Encoder::default();
        group.bench_with_input(BenchmarkId::new("frame-encode", commands), &frame, |b, frame| {
            let (mut head, mut payloads) = (Vec::new(), Vec::new());
            b.iter(|| {
                head.clear();
                payloads.clear();
                encoder.encode(black_box(frame), &mut head, &mut payloads);
                black_box(head.len())
            });
        });
        let wire = Bytes::from(Encoder::default().encode_to_vec(&frame)[4..].to_vec());
        group.bench_with_input(BenchmarkId::new("frame-decode", commands), &wire, |b, wire| {
            b.iter(|| black_box(decode(black_box(wire)).unwrap()));
        });
        group.bench_with_input(BenchmarkId::new("memcpy", commands), &encoded, |b, bytes| {
            let mut target = vec![0u8; bytes.len()];
            b.iter(|| {
                target.copy_from_slice(black_box(bytes));
                black_box(target[0])
            });
        });
    }
    group.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
