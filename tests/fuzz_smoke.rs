//! The fuzz targets of `fuzz/` (docs/fuzzing.md), run for a bounded time from the test
//! command, so that CI fuzzes every decoder on every change: `scripts/fuzz.sh --seconds 10`.
//! Where cargo fuzz is not installed the test says it is skipped and passes without running
//! anything (`.ci/run` installs it, so CI runs it). Also, ignored: the writer of the seed
//! corpora, from the project's own encoders.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests may unwrap.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use bytes::Bytes;
use quorum::core::{
    Ballot, BatchBuilder, ClusterId, Message, NodeId, RequestId, RoleKind, Slot, SlotRun, Value,
};
use quorum::machine::{Applier, KvCommand, KvStore, SessionLimits, StateSummary};
use quorum::storage::record;
use quorum::storage::snapshot::{Snapshot, SnapshotHeader};
use quorum::transport::codec::{
    Body, Encoder, Frame, Hello, HelloReply, Member, PREFIX_BYTES, Reply, ReplyStatus, Requests,
    Role, ShardStatus,
};
use quorum_wal::format::{
    SEGMENT_HEADER_BYTES, SegmentHeader, Watermark, encode_record, record_bytes,
};

/// Seconds each target runs in the test: 9 targets, about 90 s, plus the build.
const SECONDS_PER_TARGET: u32 = 10;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Said straight to the terminal: the test harness captures `eprintln!` of passing tests.
fn say(text: &str) {
    let mut stderr = std::io::stderr().lock();
    let _ = writeln!(stderr, "fuzz_smoke: {text}");
}

#[test]
fn every_fuzz_target_runs_clean_for_a_bounded_time() {
    let installed = Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|output| output.status.success());
    if !installed {
        say("skipped: cargo fuzz is not installed (cargo install --locked cargo-fuzz@0.13.1)");
        return;
    }
    let status = Command::new(root().join("scripts/fuzz.sh"))
        .args(["--seconds", &SECONDS_PER_TARGET.to_string()])
        .current_dir(root())
        // Its own build's flags, not those this test was built with.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .status()
        .expect("scripts/fuzz.sh starts");
    assert!(status.success(), "scripts/fuzz.sh failed ({status}): see its output above");
}

/// Writes `bytes` as `fuzz/corpus/<target>/<name>`.
fn seed(target: &str, name: &str, bytes: &[u8]) {
    let dir: PathBuf = root().join("fuzz/corpus").join(target);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), bytes).unwrap();
}

fn kv_batch(client: u64) -> Bytes {
    let commands = [
        KvCommand::Put { key: b"k".to_vec(), value: b"v1".to_vec() },
        KvCommand::Get { key: b"k".to_vec() },
        KvCommand::CompareAndSet {
            key: b"k".to_vec(),
            expected: Some(b"v1".to_vec()),
            new: b"v2".to_vec(),
        },
        KvCommand::CompareAndSet { key: b"n".to_vec(), expected: None, new: b"v".to_vec() },
        KvCommand::Delete { key: b"k".to_vec() },
        KvCommand::Append { entry: b"e".to_vec() },
    ];
    let mut builder = BatchBuilder::new(1 << 16);
    for (sequence, command) in commands.iter().enumerate() {
        builder.push(RequestId { client, sequence: sequence as u64 + 1 }, &command.encode());
    }
    builder.push(RequestId { client, sequence: 99 }, b"not a command");
    builder.take()
}

fn frames() -> Vec<Frame> {
    let ballot = Ballot::new(3, NodeId(2));
    let batch = Value::Batch(kv_batch(7));
    let runs = vec![
        SlotRun { first_slot: Slot(4), count: 1, ballot, value: batch.clone(), chosen: false },
        SlotRun { first_slot: Slot(5), count: 3, ballot, value: Value::Noop, chosen: true },
    ];
    let messages = [
        Message::Probe { round: 3, commit_index: Slot(2) },
        Message::ProbeReply { round: 3, granted: true, promised: ballot },
        Message::Prepare { ballot, from_slot: Slot(4) },
        Message::Promise {
            ballot,
            from_slot: Slot(4),
            runs: runs.clone(),
            next_slot: Some(Slot(8)),
        },
        Message::Accept {
            ballot,
            first_slot: Slot(8),
            count: 1,
            value: batch,
            commit_index: Slot(4),
        },
        Message::Accepted { ballot, first_slot: Slot(8), count: 1 },
        Message::Rejected { ballot, promised: Ballot::new(4, NodeId(3)) },
        Message::Heartbeat { ballot, commit_index: Slot(9), read_round: 0 },
        Message::HeartbeatAck { ballot, read_round: 0 },
        Message::CatchUpRequest { from_slot: Slot(1) },
        Message::Subscribe { from_slot: Slot(1) },
        Message::Chosen { runs, commit_index: Slot(8) },
        Message::Snapshot {
            slot: Slot(8),
            offset: 16,
            total: 64,
            bytes: Bytes::from_static(b"a snapshot piece"),
            commit_index: Slot(8),
        },
        Message::SnapshotPull { slot: Slot(8), offset: 32 },
        Message::RepairQuery { nonce: 11 },
        Message::RepairReport {
            nonce: 11,
            promised: ballot,
            slot_end: Slot(9),
            commit_index: Slot(8),
        },
    ];
    let mut bodies: Vec<Body> = messages.into_iter().map(Body::Peer).collect();
    bodies.extend([
        Body::Hello(Hello { version: 5, role: Role::Peer }),
        Body::Hello(Hello { version: 5, role: Role::Client(42) }),
        Body::HelloReply(HelloReply {
            refusal: None,
            shards: 2,
            leader: Some(NodeId(1)),
            members: vec![
                Member { id: NodeId(1), address: "127.0.0.1:7001".into(), learner: false },
                Member { id: NodeId(4), address: "127.0.0.1:7004".into(), learner: true },
            ],
        }),
        Body::HelloReply(HelloReply {
            refusal: Some("wrong cluster".into()),
            shards: 0,
            leader: None,
            members: vec![],
        }),
        Body::Requests(Requests::linearizable(kv_batch(42))),
        Body::Replies(vec![
            Reply {
                sequence: 1,
                status: ReplyStatus::Applied,
                slot: Slot(8),
                index: 0,
                body: Bytes::from_static(b"\x01"),
            },
            Reply {
                sequence: 2,
                status: ReplyStatus::NotLeader { hint: Some(NodeId(2)) },
                slot: Slot(0),
                index: 0,
                body: Bytes::new(),
            },
        ]),
        Body::StatusRequest { digest: true },
        Body::Status(ShardStatus {
            role: RoleKind::Leader,
            leader: Some(NodeId(1)),
            commit_index: Slot(8),
            applied_commands: 6,
            summary: StateSummary { entries: 1, digest: 77 },
            syncs: 3,
            not_durable: false,
            voters: 3,
            egress_bytes: 1000,
            chosen_bytes: 100,
            batches: 2,
            promised: quorum::core::Ballot { round: 4, node: NodeId(1) },
            applied_index: Slot(8),
            sessions: 5,
            snapshot_slot: Some(Slot(4)),
            apply_total: false,
            session_limits: Some(SessionLimits::DEFAULT),
        }),
    ]);
    // Senders as the decoder's checks want them: a proposal from its ballot's node.
    bodies
        .into_iter()
        .map(|body| Frame { cluster_id: ClusterId(7), from: NodeId(2), shard: 1, body })
        .collect()
}

fn applier_image(limits: SessionLimits) -> Vec<u8> {
    let mut applier = Applier::new(KvStore::default(), limits);
    for client in [5, 6, 7] {
        applier.apply_batch(Slot(1), 1, &kv_batch(client), |_, _| {}).unwrap();
    }
    let mut image = Vec::new();
    applier.snapshot(&mut image).unwrap();
    image
}

/// Writes the seed corpora: `cargo test --release --test fuzz_smoke -- --ignored`. Small
/// (a few KiB per target); the fuzzer grows its own from them.
#[test]
#[ignore = "writes fuzz/corpus/: run by hand when an encoding changes"]
fn write_seed_corpora() {
    let mut encoder = Encoder::default();
    let mut stream = Vec::new();
    for (index, frame) in frames().iter().enumerate() {
        let encoded = encoder.encode_to_vec(frame);
        seed("frame", &format!("seed-{index:02}-{}", frame.body.kind()), &encoded[PREFIX_BYTES..]);
        if index % 4 == 0 {
            stream.extend_from_slice(&encoded);
        }
    }
    // frame_stream: a 1 MiB limit, a pause every third read, pieces of 5 bytes and of all
    // the room there is, then frames back to back.
    let mut input = vec![18, 3, 2, 5, 0];
    input.extend_from_slice(&stream);
    seed("frame_stream", "seed-frames", &input);
    let mut input = vec![18, 0, 0];
    input.extend_from_slice(&stream[..stream.len() - 3]);
    seed("frame_stream", "seed-cut-short", &input);

    seed("batch", "seed-kv", &kv_batch(7));
    seed("batch", "seed-empty", &[]);

    for (index, record) in [
        quorum::core::Record::Promised { ballot: Ballot::new(3, NodeId(2)) },
        quorum::core::Record::Accepted {
            ballot: Ballot::new(3, NodeId(2)),
            first_slot: Slot(4),
            count: 1,
            value: Value::Batch(kv_batch(7)),
        },
        quorum::core::Record::Chosen { first_slot: Slot(5), count: 3, value: Value::Noop },
        quorum::core::Record::Committed { commit_index: Slot(8) },
    ]
    .iter()
    .enumerate()
    {
        let mut head = Vec::new();
        let (wal_record, rest) = record::encode_split(record, &mut head);
        let payload = [wal_record.payload, rest].concat();
        let wal_record = quorum_wal::Record { payload: &payload, ..wal_record };
        // As a WAL record under segment 1...
        let mut input = vec![1u8; 1 + record_bytes(payload.len())];
        encode_record(&wal_record, 2, 1, &mut input[1..]);
        seed("wal_record", &format!("seed-record-{index}"), &input);
        // ...and as the fields alone.
        let mut fields = vec![0, wal_record.kind];
        fields.extend_from_slice(&wal_record.slot.to_le_bytes());
        fields.extend_from_slice(&wal_record.ballot_round.to_le_bytes());
        fields.extend_from_slice(&wal_record.ballot_node.to_le_bytes());
        fields.extend_from_slice(&payload);
        seed("wal_record", &format!("seed-fields-{index}"), &fields);
    }
    let mut header = vec![0u8; 1 + SEGMENT_HEADER_BYTES];
    SegmentHeader { segment_number: 3, segment_bytes: 12 << 10 }.encode(&mut header[1..]);
    Watermark { confirmed: 3 << 12, target: 4 << 12, generation: 1 }.encode(&mut header[1..]);
    seed("wal_record", "seed-segment-header", &header);

    // wal_recovery: flags, shift, then (file, offset u16, length, bytes) damage.
    seed("wal_recovery", "seed-whole", &[0, 0]);
    seed("wal_recovery", "seed-repairing-resealed", &[3, 0]);
    seed("wal_recovery", "seed-renamed", &[2, 5]);
    seed("wal_recovery", "seed-last-dropped", &[8, 0]);
    let mut damage = vec![5, 0, 1, 0x40, 0x10, 8];
    damage.extend_from_slice(&[0xFF; 8]);
    damage.extend_from_slice(&[0, 0x00, 0x20, 0]);
    seed("wal_recovery", "seed-damaged", &damage);
    seed("wal_recovery", "seed-metadata", &[0, 0, 3, 12, 0, 4, b'x', b'y', b'z', b'w']);

    let image = applier_image(SessionLimits::DEFAULT);
    seed("snapshot", "seed-image", &[[0].as_slice(), &image].concat());
    let small = SessionLimits {
        replies_max: 2,
        reply_bytes_max: 64,
        sessions_max: 1,
        idle_commands_min: 1,
        evicted_max: 1,
    };
    seed(
        "snapshot",
        "seed-image-small-limits",
        &[[0x23].as_slice(), &applier_image(small)].concat(),
    );
    let header = SnapshotHeader { cluster_id: ClusterId(7), shard: 3, slot: Slot(9) };
    let file = Snapshot::encode(header, &image);
    seed("snapshot", "seed-file", &[[0].as_slice(), &file.bytes].concat());

    seed(
        "config",
        "seed-voter",
        b"id = 1\ncluster_id = 7\nlisten = \"127.0.0.1:7001\"\n\
          peers = \"1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003\"\n\
          learners = \"4=127.0.0.1:7004\"\ndata_dir = \"/var/lib/quorum/1\"\nshards = 2\n",
    );
    seed(
        "config",
        "seed-learner",
        b"id = 4\ncluster_id = 7\nlisten = \"127.0.0.1:7004\"\n\
          peers = \"1=127.0.0.1:7001\"\nlearners = \"4=127.0.0.1:7004,5=[::1]:7005\"\n\
          learner = true\nupstream = 5\ndata_dir = \"d\"\nshards = 1\n\
          durability = \"none\"\napply = \"total\"\ntick_ms = 5\n\
          heartbeat_interval_ms = 50\nelection_timeout_ms = 500\nwal_segment_mib = 1\n\
          retain_slots = 100\nretain_mib = 4\nsnapshot_every_mib = 0\nsnapshot_piece_kib = 64\n\
          batch_bytes_max = 65536\nbatch_commands_max = 100\npipeline_depth_max = 8\n\
          connections_max = 10\nidle_timeout_ms = 0\nread_timeout_ms = 1000\n\
          write_timeout_ms = 1000\nclient_queue_mib = 1\npin_cores = false\nfirst_core = 1\n",
    );
}
