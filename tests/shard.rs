//! Three shard replicas with real write-ahead logs (on the simulated disk), wired in one thread:
//! commands commit and apply identically on every replica, and a replica that crashes, losing
//! what it had not synced, comes back from its log and catches up.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests may unwrap.

use std::collections::HashMap;

use quorum::core::{ClusterId, Config, NodeId, RequestId, RoleKind, Slot};
use quorum::machine::kv::coord::WATCHES_WAITING_MAX;
use quorum::machine::kv::{Change, ChangeKind, ChangesReply, CoordCommand, CoordError, KeyRange};
use quorum::machine::{
    CoordReply, KvCommand, KvReply, KvStore, Outcome, SessionLimits, StateMachine as _,
    register_request,
};
use quorum::shard::{Shard, ShardError, ShardSettings, settle_wired};
use quorum_wal::{Backend as _, Options, SimBackend};

const CLUSTER: ClusterId = ClusterId(3);

fn options() -> Options {
    Options { segment_bytes: 64 * 1024, prepare_ahead: false }
}

fn config(node: u16) -> Config {
    Config::new(CLUSTER, NodeId(node), vec![NodeId(1), NodeId(2), NodeId(3)])
}

/// A configuration that keeps only `retain_slots` committed slots in memory.
fn config_retaining(node: u16, retain_slots: u64) -> Config {
    Config { retain_slots, ..config(node) }
}

struct Cluster {
    shards: Vec<Option<Shard<SimBackend, KvStore>>>,
    disks: Vec<SimBackend>,
    replies: HashMap<RequestId, KvReply>,
    /// Register-session commands' outcomes: the session ids.
    registered: HashMap<RequestId, u64>,
    /// The session the harness's puts go under, once registered.
    session: Option<u64>,
    /// Every answer to a query, from any replica, in the order they came out (a leader that
    /// lost its leadership must not answer a parked read: its answers count too).
    answers: Vec<(RequestId, KvReply)>,
}

impl Cluster {
    fn new() -> Cluster {
        Cluster::retaining(Config::RETAIN_SLOTS_DEFAULT)
    }

    /// Replicas that snapshot every `every_bytes` of log and keep 4 slots in memory.
    fn snapshotting(every_bytes: u64) -> Cluster {
        let disks: Vec<SimBackend> = (0..3).map(|_| SimBackend::new()).collect();
        let shards = (0..3)
            .map(|index| Some(open_snapshotting(index as u16 + 1, &disks[index], every_bytes)))
            .collect();
        Cluster {
            shards,
            disks,
            replies: HashMap::new(),
            registered: HashMap::new(),
            session: None,
            answers: Vec::new(),
        }
    }

    fn retaining(retain_slots: u64) -> Cluster {
        let disks: Vec<SimBackend> = (0..3).map(|_| SimBackend::new()).collect();
        let shards = (0..3)
            .map(|index| {
                Some(
                    Shard::open(
                        config_retaining(index as u16 + 1, retain_slots),
                        disks[index].clone(),
                        options(),
                        KvStore::default(),
                        SessionLimits::with_replies_max(64),
                    )
                    .unwrap(),
                )
            })
            .collect();
        Cluster {
            shards,
            disks,
            replies: HashMap::new(),
            registered: HashMap::new(),
            session: None,
            answers: Vec::new(),
        }
    }

    /// Elects a leader, commits ten puts, and stops a follower (cleanly: its log is whole).
    /// Returns the leader, the stopped follower and its commit position.
    fn write_ten_then_stop_a_follower(&mut self) -> (usize, usize, Slot) {
        while self.leader().is_none() {
            self.tick();
        }
        for sequence in 1..=10 {
            self.put(sequence, &format!("key-{}", sequence % 7), &format!("value-{sequence}"));
        }
        let leader = self.leader().unwrap();
        let victim = (leader + 1) % 3;
        let stopped_at = self.shards[victim].as_ref().unwrap().replica().commit_index();
        self.shards[victim] = None;
        (leader, victim, stopped_at)
    }

    /// Delivers messages and completes syncs until nothing moves.
    fn settle(&mut self) {
        let (replies, registered) = (&mut self.replies, &mut self.registered);
        let answers = &mut self.answers;
        settle_wired(&mut self.shards, |shard, applied| {
            let leading = shard.replica().role() == RoleKind::Leader;
            for applied in applied {
                if let (true, Outcome::Applied(reply)) = (applied.id.is_query(), &applied.outcome) {
                    answers.push((applied.id, reply.clone()));
                }
                if !leading {
                    continue;
                }
                match applied.outcome {
                    Outcome::Applied(reply) | Outcome::Duplicate(reply) => {
                        replies.insert(applied.id, reply);
                    }
                    Outcome::Registered(session) => {
                        registered.insert(applied.id, session);
                    }
                    Outcome::Expired | Outcome::SessionExpired => {}
                }
            }
        })
        .unwrap();
    }

    fn tick(&mut self) {
        for shard in self.shards.iter_mut().flatten() {
            shard.on_tick().unwrap();
        }
        self.settle();
    }

    fn leader(&self) -> Option<usize> {
        (0..3).find(|index| {
            self.shards[*index]
                .as_ref()
                .is_some_and(|shard| shard.replica().role() == RoleKind::Leader)
        })
    }

    /// The session the puts go under, registered through the log on first use.
    fn session(&mut self) -> u64 {
        if let Some(session) = self.session {
            return session;
        }
        let (id, payload) = register_request([7; 16]);
        for _ in 0..1_000 {
            if let Some(leader) = self.leader() {
                let shard = self.shards[leader].as_mut().unwrap();
                if shard.propose(id, &payload).unwrap().is_ok() {
                    shard.flush().unwrap();
                    self.settle();
                    if let Some(&session) = self.registered.get(&id) {
                        self.session = Some(session);
                        return session;
                    }
                }
            }
            self.tick();
        }
        panic!("the session was never registered");
    }

    fn put(&mut self, sequence: u64, key: &str, value: &str) {
        let id = RequestId { client: self.session(), sequence };
        let command = KvCommand::Put { key: key.into(), value: value.into() }.encode();
        for _ in 0..1_000 {
            if let Some(leader) = self.leader() {
                let shard = self.shards[leader].as_mut().unwrap();
                if shard.propose(id, &command).unwrap().is_ok() {
                    shard.flush().unwrap();
                    self.settle();
                    if self.replies.contains_key(&id) {
                        return;
                    }
                }
            }
            self.tick();
        }
        panic!("put {sequence} never committed");
    }
}

/// Snapshots sent in pieces this small, so that every install here takes several.
const PIECE_BYTES: usize = 1000;

fn snapshot_settings(every_bytes: u64) -> ShardSettings {
    ShardSettings {
        snapshot_every_bytes: every_bytes,
        snapshot_piece_bytes: PIECE_BYTES,
        ..ShardSettings::new(SessionLimits::with_replies_max(64))
    }
}

fn open_snapshotting(node: u16, disk: &SimBackend, every_bytes: u64) -> Shard<SimBackend, KvStore> {
    let config = config_retaining(node, 4);
    Shard::open_with(
        config,
        disk.clone(),
        options(),
        KvStore::default(),
        snapshot_settings(every_bytes),
    )
    .unwrap()
}

#[test]
fn snapshots_release_the_log_and_a_replica_behind_them_installs_one() {
    let mut cluster = Cluster::snapshotting(16 * 1024);
    // A follower stops while the others write several segments' worth, snapshot, and release
    // the segments their snapshots cover.
    let (leader, victim, stopped_at) = cluster.write_ten_then_stop_a_follower();
    let long = "v".repeat(1000);
    for sequence in 11..=400 {
        cluster.put(sequence, &format!("key-{}", sequence % 7), &format!("{long}{sequence}"));
    }
    let leader_shard = cluster.shards[leader].as_ref().unwrap();
    let stats = leader_shard.snapshot_stats();
    assert!(stats.taken >= 2, "{stats:?}");
    assert!(stats.released_bytes >= 2 * 64 * 1024, "{stats:?}");
    let first = leader_shard.wal().first_position();
    assert!(first > 2 * 64 * 1024, "the leader's log was released up to {first}");
    assert!(stats.current.unwrap().0 > stopped_at);
    assert!(stats.current.unwrap().1 > 4 * PIECE_BYTES as u64, "sent in several pieces: {stats:?}");
    // It comes back: what it lacks is in no one's log any more, so it is sent a snapshot, in
    // pieces it pulls one by one.
    cluster.shards[victim] =
        Some(open_snapshotting(victim as u16 + 1, &cluster.disks[victim], 16 * 1024));
    for _ in 0..200 {
        cluster.tick();
    }
    let commits: Vec<_> = cluster
        .shards
        .iter()
        .map(|shard| shard.as_ref().unwrap().replica().commit_index())
        .collect();
    assert_eq!(commits[victim], commits[leader], "caught up");
    assert_eq!(cluster.shards[victim].as_ref().unwrap().snapshot_stats().installed, 1);
    let stores: Vec<&KvStore> =
        cluster.shards.iter().map(|shard| shard.as_ref().unwrap().machine()).collect();
    assert_eq!(stores[0], stores[1]);
    assert_eq!(stores[1], stores[2]);
    assert_eq!(stores[victim].get(b"key-3").map(<[u8]>::len), Some(1003));
    // A retry of a request applied inside the snapshot is not applied again on the replica
    // that installed it: the session table came with the state.
    let applied_before: Vec<u64> =
        cluster.shards.iter().map(|shard| shard.as_ref().unwrap().applied_commands()).collect();
    cluster.replies.clear();
    for sequence in 340..=400 {
        cluster.put(sequence, "retried", "must not be applied");
    }
    for _ in 0..20 {
        cluster.tick();
    }
    for (index, shard) in cluster.shards.iter().enumerate() {
        let shard = shard.as_ref().unwrap();
        assert_eq!(shard.applied_commands(), applied_before[index], "replica {index}");
        assert_eq!(shard.machine().get(b"retried"), None, "replica {index}");
    }
    // Restarted from its snapshot and what its log kept, the leader has the same state and
    // promise.
    let old = cluster.shards[leader].take().unwrap();
    let (summary, promised, commit) =
        (old.machine().summary(), old.replica().promised(), old.replica().commit_index());
    drop(old);
    let reopened = open_snapshotting(leader as u16 + 1, &cluster.disks[leader], 16 * 1024);
    assert_eq!(reopened.machine().summary(), summary);
    assert_eq!(reopened.replica().promised(), promised);
    assert_eq!(reopened.replica().commit_index(), commit);
    assert!(reopened.wal().first_position() >= first);
}

#[test]
fn a_shard_that_starts_from_a_snapshot_refuses_total_order_apply() {
    let mut cluster = Cluster::snapshotting(16 * 1024);
    while cluster.leader().is_none() {
        cluster.tick();
    }
    let long = "v".repeat(1000);
    for sequence in 1..=60 {
        cluster.put(sequence, &format!("key-{}", sequence % 7), &long);
    }
    let leader = cluster.leader().unwrap();
    assert!(cluster.shards[leader].as_ref().unwrap().snapshot_stats().taken >= 1);
    cluster.shards[leader] = None;
    let settings =
        ShardSettings { apply: quorum::shard::ApplyTo::Forward, ..snapshot_settings(16 * 1024) };
    let config = config_retaining(leader as u16 + 1, 4);
    let disk = cluster.disks[leader].clone();
    let opened = Shard::open_with(config, disk, options(), KvStore::default(), settings);
    let error = opened.err().expect("refused");
    assert!(matches!(error, ShardError::ForwardFromSnapshot(_)), "{error}");
    assert!(error.to_string().contains("--apply total needs the whole log"), "{error}");
}

#[test]
fn a_damaged_snapshot_file_is_refused_at_start() {
    let disk = SimBackend::new();
    disk.write_file_atomic("snapshot", b"QRMSNAP\x01 but not much else").unwrap();
    let opened = Shard::open_with(
        config(1),
        disk,
        options(),
        KvStore::default(),
        snapshot_settings(16 * 1024),
    );
    let error = opened.err().expect("refused");
    assert!(matches!(error, ShardError::Snapshot(_)), "{error}");
    assert!(error.to_string().contains("snapshot"), "{error}");
}

#[test]
fn commands_commit_identically_and_a_crashed_replica_recovers_from_its_log() {
    let mut cluster = Cluster::new();
    while cluster.leader().is_none() {
        cluster.tick();
    }
    for sequence in 1..=50 {
        cluster.put(sequence, &format!("key-{}", sequence % 7), &format!("value-{sequence}"));
    }
    assert_eq!(cluster.replies.len(), 50);
    // Crash a follower: everything in memory is lost; its log keeps what it synced.
    let leader = cluster.leader().unwrap();
    let victim = (leader + 1) % 3;
    cluster.shards[victim] = None;
    cluster.disks[victim] = cluster.disks[victim].crash_losing_unsynced();
    for sequence in 51..=80 {
        cluster.put(sequence, &format!("key-{}", sequence % 7), &format!("value-{sequence}"));
    }
    let reopened = Shard::open(
        config(victim as u16 + 1),
        cluster.disks[victim].clone(),
        options(),
        KvStore::default(),
        SessionLimits::with_replies_max(64),
    )
    .unwrap();
    assert!(
        reopened.wal().end_position() > reopened.wal().first_position(),
        "the log kept the synced acceptances"
    );
    cluster.shards[victim] = Some(reopened);
    for _ in 0..200 {
        cluster.tick();
    }
    let stores: Vec<&KvStore> =
        cluster.shards.iter().map(|shard| shard.as_ref().unwrap().machine()).collect();
    assert_eq!(stores[0], stores[1]);
    assert_eq!(stores[1], stores[2]);
    assert_eq!(stores[0].get(b"key-3"), Some(&b"value-80"[..]));
}

#[test]
fn a_replica_behind_what_the_others_keep_in_memory_catches_up_from_their_logs() {
    let mut cluster = Cluster::retaining(4);
    // A follower stops (cleanly: its log is whole) while the others commit far past it.
    let (leader, victim, stopped_at) = cluster.write_ten_then_stop_a_follower();
    for sequence in 11..=150 {
        cluster.put(sequence, &format!("key-{}", sequence % 7), &format!("value-{sequence}"));
    }
    let leader_shard = cluster.shards[leader].as_ref().unwrap();
    let base = leader_shard.replica().log().base();
    assert!(base > stopped_at, "the leader compacted past the stopped follower ({base:?})");
    // It comes back from its log and catches up: the slots it lacks are in no one's memory.
    let reopened = Shard::open(
        config_retaining(victim as u16 + 1, 4),
        cluster.disks[victim].clone(),
        options(),
        KvStore::default(),
        SessionLimits::with_replies_max(64),
    )
    .unwrap();
    cluster.shards[victim] = Some(reopened);
    for _ in 0..200 {
        cluster.tick();
    }
    let commits: Vec<_> = cluster
        .shards
        .iter()
        .map(|shard| shard.as_ref().unwrap().replica().commit_index())
        .collect();
    assert_eq!(commits[victim], commits[leader], "caught up");
    let stores: Vec<&KvStore> =
        cluster.shards.iter().map(|shard| shard.as_ref().unwrap().machine()).collect();
    assert_eq!(stores[0], stores[1]);
    assert_eq!(stores[1], stores[2]);
    assert_eq!(stores[victim].get(b"key-3"), Some(&b"value-150"[..]));
    // Read back in parts of any size, the leader's log gives the same runs as in one read.
    let leader_shard = cluster.shards[leader].as_ref().unwrap();
    let (from, end) = (Slot(1), leader_shard.replica().log().base());
    let whole = leader_shard.archived_runs(from, end, usize::MAX).unwrap();
    assert_eq!(whole.first().map(|run| run.first_slot), Some(from));
    assert_eq!(whole.last().map(quorum::core::SlotRun::end_slot), Some(end));
    let mut parts = Vec::new();
    let mut at = from;
    while at < end {
        let part = leader_shard.archived_runs(at, end, 1).unwrap();
        assert_eq!(part.len(), 1, "a budget of one byte still reads one slot");
        at = part[0].end_slot();
        parts.extend(part);
    }
    assert_eq!(parts, whole);
    // And it keeps no more in memory than it was told to.
    let victim_log = cluster.shards[victim].as_ref().unwrap().replica().log();
    assert!(commits[victim].0 - victim_log.base().0 <= 4 + 4 / 4 + 1, "{victim_log:?}");
}

#[test]
fn a_promise_whose_records_were_released_survives_a_restart() {
    use quorum::core::{Ballot, BatchBuilder, Envelope, Message, SlotRun, Value};
    let disk = SimBackend::new();
    let mut shard = open_snapshotting(2, &disk, 8 * 1024);
    // A new log directory repairs first (protocol.md §3.9): the two peers, new as well,
    // report that they hold nothing.
    let mut outbox = Vec::new();
    while outbox.is_empty() {
        shard.on_tick().unwrap();
        shard.take_outbox(&mut outbox);
    }
    for (to, query) in outbox.drain(..) {
        let Message::RepairQuery { nonce } = query else { panic!("{query:?}") };
        let report = Message::RepairReport {
            nonce,
            promised: Ballot::ZERO,
            slot_end: Slot(0),
            commit_index: Slot(0),
        };
        shard
            .on_message(Envelope { cluster_id: CLUSTER, from: to, message: report })
            .unwrap()
            .unwrap();
    }
    let pending = shard.start_sync().unwrap().expect("the repair's end waits for a sync");
    shard.finish_sync(pending.run()).unwrap();
    assert!(!shard.replica().is_repairing());
    // Node 3 stands for election with a high ballot: node 2 promises it (a `Promised` record).
    let high = Ballot::new(9, NodeId(3));
    let prepare = Message::Prepare { ballot: high, from_slot: Slot(0) };
    shard
        .on_message(Envelope { cluster_id: CLUSTER, from: NodeId(3), message: prepare })
        .unwrap()
        .unwrap();
    let pending = shard.start_sync().unwrap().expect("the promise waits for a sync");
    shard.finish_sync(pending.run()).unwrap();
    assert_eq!(shard.replica().promised(), high);
    // Then it only learns chosen values (no ballot in those records), several segments' worth,
    // snapshotting and releasing the segment that held the promise.
    for slot in 0..300u64 {
        let mut batch = BatchBuilder::new(1 << 20);
        let command = KvCommand::Put { key: b"k".to_vec(), value: vec![b'x'; 1000] }.encode();
        batch.push(RequestId { client: 5, sequence: slot + 1 }, &command);
        let run = SlotRun {
            first_slot: Slot(slot),
            count: 1,
            ballot: Ballot::new(1, NodeId(1)),
            value: Value::Batch(batch.take()),
            chosen: true,
        };
        let chosen = Message::Chosen { runs: vec![run], commit_index: Slot(slot + 1) };
        shard
            .on_message(Envelope { cluster_id: CLUSTER, from: NodeId(1), message: chosen })
            .unwrap()
            .unwrap();
        if let Some(pending) = shard.start_sync().unwrap() {
            shard.finish_sync(pending.run()).unwrap();
        }
        if let Some(pending) = shard.start_snapshot() {
            shard.finish_snapshot(pending.run()).unwrap();
        }
    }
    assert_eq!(shard.replica().commit_index(), Slot(300));
    assert!(shard.wal().first_position() > 64 * 1024, "the promise's segment was released");
    drop(shard);
    let reopened = open_snapshotting(2, &disk, 8 * 1024);
    assert_eq!(reopened.replica().promised(), high, "the promise survived its records");
    assert_eq!(reopened.replica().commit_index(), Slot(300));
}

/// Delivers messages and completes syncs and snapshot writes until nothing moves, except that
/// the first write of a peer's snapshot that replica `holder` hands out (one at a slot above
/// `above`) is held back and returned, as a runtime's helper thread would still be running it.
fn settle_holding_an_install(
    cluster: &mut Cluster,
    holder: usize,
    above: Slot,
) -> Option<quorum::shard::PendingSnapshot<SimBackend>> {
    use quorum::core::{Envelope, Message};
    let mut held = None;
    loop {
        let mut moved = false;
        let mut mail: Vec<(usize, NodeId, Message)> = Vec::new();
        for (index, shard) in cluster.shards.iter_mut().enumerate() {
            let Some(shard) = shard.as_mut() else { continue };
            if let Some(pending) = shard.start_sync().unwrap() {
                shard.finish_sync(pending.run()).unwrap();
                moved = true;
            }
            if held.is_none() {
                if let Some(pending) = shard.start_snapshot() {
                    if index == holder && pending.slot() > above {
                        held = Some(pending);
                    } else {
                        shard.finish_snapshot(pending.run()).unwrap();
                    }
                    moved = true;
                }
            }
            let mut out = Vec::new();
            shard.take_outbox(&mut out);
            shard.take_replies(&mut Vec::new());
            let from = NodeId(index as u16 + 1);
            mail.extend(
                out.into_iter().map(|(to, message)| (usize::from(to.0) - 1, from, message)),
            );
        }
        for (to, from, message) in mail {
            moved = true;
            if let Some(shard) = cluster.shards.get_mut(to).and_then(Option::as_mut) {
                shard.on_message(Envelope { cluster_id: CLUSTER, from, message }).unwrap().unwrap();
            }
        }
        if !moved || held.is_some() {
            return held;
        }
    }
}

#[test]
fn a_peers_snapshot_is_durable_before_the_replica_goes_on_from_it_and_written_off_its_thread() {
    let mut cluster = Cluster::snapshotting(16 * 1024);
    let (leader, victim, stopped_at) = cluster.write_ten_then_stop_a_follower();
    let long = "v".repeat(1000);
    for sequence in 11..=400 {
        cluster.put(sequence, &format!("key-{}", sequence % 7), &format!("{long}{sequence}"));
    }
    cluster.shards[victim] =
        Some(open_snapshotting(victim as u16 + 1, &cluster.disks[victim], 16 * 1024));
    // The pieces arrive and are put together; the whole snapshot's write is handed out like
    // one of the replica's own, to run on a helper thread, and nothing is installed yet.
    let mut held = None;
    for _ in 0..200 {
        for shard in cluster.shards.iter_mut().flatten() {
            shard.on_tick().unwrap();
        }
        held = settle_holding_an_install(&mut cluster, victim, stopped_at);
        let shard = cluster.shards[victim].as_ref().unwrap();
        assert_eq!(
            shard.snapshot_stats().installed,
            0,
            "installed on the shard's thread before its write was handed out"
        );
        if held.is_some() {
            break;
        }
    }
    let pending = held.expect("the write of the peer's snapshot was handed out");
    let shard = cluster.shards[victim].as_mut().unwrap();
    assert!(shard.replica().commit_index() < pending.slot(), "went on before the write");
    assert_eq!(shard.machine().get(b"key-3").map(<[u8]>::len), Some(8), "the old state serves");
    // Not durable yet: a crash now restarts from the old state and its log.
    let file = cluster.disks[victim].read_file(quorum::storage::snapshot::FILE_NAME).unwrap();
    let slot_on_disk = file.as_deref().and_then(quorum::storage::snapshot::slot_in_header);
    assert!(slot_on_disk.is_none_or(|slot| slot < pending.slot()), "{slot_on_disk:?}");
    let slot = pending.slot();
    shard.finish_snapshot(pending.run()).unwrap();
    assert_eq!(shard.snapshot_stats().installed, 1);
    assert!(shard.replica().commit_index() >= slot);
    assert_eq!(shard.machine().get(b"key-3").map(<[u8]>::len), Some(1003));
    for _ in 0..100 {
        cluster.tick();
    }
    let commits: Vec<_> = cluster
        .shards
        .iter()
        .map(|shard| shard.as_ref().unwrap().replica().commit_index())
        .collect();
    assert_eq!(commits[victim], commits[leader], "caught up");
}

#[test]
fn queries_are_answered_by_the_read_index_and_never_written_to_the_log() {
    let mut cluster = Cluster::new();
    while cluster.leader().is_none() {
        cluster.tick();
    }
    for sequence in 1..=10 {
        cluster.put(sequence, &format!("key-{}", sequence % 3), &format!("value-{sequence}"));
    }
    let leader = cluster.leader().unwrap();
    let session = cluster.session();
    let ends = |cluster: &Cluster| -> Vec<u64> {
        cluster.shards.iter().map(|shard| shard.as_ref().unwrap().wal().end_position()).collect()
    };
    let before = ends(&cluster);
    let get = KvCommand::Get { key: b"key-1".to_vec() }.encode();
    for n in 0..10_000u64 {
        let id = RequestId { client: session, sequence: RequestId::QUERY_BIT | (100 + n) };
        let shard = cluster.shards[leader].as_mut().unwrap();
        shard.propose(id, &get).unwrap().unwrap();
        if n % 100 == 99 {
            cluster.settle();
        }
    }
    cluster.settle();
    assert_eq!(ends(&cluster), before, "a query was written to some replica's log");
    let answered: Vec<&KvReply> =
        cluster.replies.iter().filter(|(id, _)| id.is_query()).map(|(_, reply)| reply).collect();
    assert_eq!(answered.len(), 10_000, "every query answered");
    assert!(answered.iter().all(|reply| **reply == KvReply::Value(Some(b"value-10".to_vec()))));
    // A follower does not answer: it sends the client to the leader.
    let follower = (leader + 1) % 3;
    let id = RequestId { client: session, sequence: RequestId::QUERY_BIT | 1 };
    let refused = cluster.shards[follower].as_mut().unwrap().propose(id, &get).unwrap();
    assert!(matches!(refused, Err(quorum::core::ProposeError::NotLeader { .. })), "{refused:?}");
}

#[test]
fn a_read_waits_for_its_confirmation_round_and_a_lost_leadership_aborts_it() {
    let mut cluster = Cluster::new();
    while cluster.leader().is_none() {
        cluster.tick();
    }
    cluster.put(1, "k", "v1");
    let leader = cluster.leader().unwrap();
    let session = cluster.session();
    // The other two voters are gone: the read cannot be confirmed, so it is never answered.
    let mut others: Vec<_> = (0..3).filter(|i| *i != leader).collect();
    let parked: Vec<_> = others.iter().map(|i| cluster.shards[*i].take()).collect();
    let get = KvCommand::Get { key: b"k".to_vec() }.encode();
    let id = RequestId { client: session, sequence: RequestId::QUERY_BIT | 7 };
    cluster.shards[leader].as_mut().unwrap().propose(id, &get).unwrap().unwrap();
    let mut aborted = Vec::new();
    for _ in 0..200 {
        cluster.tick();
        cluster.shards[leader].as_mut().unwrap().take_aborted_reads(&mut aborted);
        if !aborted.is_empty() {
            break;
        }
    }
    assert!(!cluster.replies.contains_key(&id), "a read was answered without a majority");
    assert_eq!(aborted.first().map(|(read, _)| *read), Some(id), "check-quorum aborts it");
    for (index, shard) in others.drain(..).zip(parked) {
        cluster.shards[index] = shard;
    }
}

// Change-feed reads that wait at the leader (`CoordCommand::ChangesWait`, shard/reads.rs).

impl Cluster {
    /// Sends the leader a change-feed read of `range` from the revision after its present one,
    /// waiting up to `wait_ms`, and settles; returns the read's id.
    fn watch(&mut self, sequence: u64, range: KeyRange, wait_ms: u32) -> RequestId {
        let session = self.session();
        let leader = self.leader().expect("a leader");
        let from = self.shards[leader].as_ref().unwrap().machine().revision() + 1;
        let command =
            CoordCommand::ChangesWait { range, from, limit: 0, locks: false, wait_ms }.encode();
        let id = RequestId { client: session, sequence: RequestId::QUERY_BIT | sequence };
        self.shards[leader].as_mut().unwrap().propose(id, &command).unwrap().unwrap();
        self.settle();
        id
    }

    /// Every answer read `id` got, from any replica.
    fn answers_to(&self, id: RequestId) -> Vec<&KvReply> {
        self.answers
            .iter()
            .filter(|(answered, _)| *answered == id)
            .map(|(_, reply)| reply)
            .collect()
    }

    /// The change feed read `id` was answered with, once; `None` while it is not answered.
    fn changes_of(&self, id: RequestId) -> Option<ChangesReply> {
        let answers = self.answers_to(id);
        assert!(answers.len() <= 1, "read {id:?} answered {} times: {answers:?}", answers.len());
        match answers.first()? {
            KvReply::Coord(CoordReply::Changes(found)) => Some(found.clone()),
            other => panic!("read {id:?} answered {other:?}"),
        }
    }

    fn leader_revision(&self) -> u64 {
        self.shards[self.leader().unwrap()].as_ref().unwrap().machine().revision()
    }
}

/// A cluster with a leader and a session, and `key` written once.
fn cluster_with(key: &str) -> Cluster {
    let mut cluster = Cluster::new();
    while cluster.leader().is_none() {
        cluster.tick();
    }
    cluster.put(1, key, "first");
    cluster
}

fn put_change(key: &str, value: &str, revision: u64) -> Change {
    Change { revision, kind: ChangeKind::Put, key: key.into(), value: value.into() }
}

#[test]
fn a_parked_change_feed_read_wakes_when_its_key_is_written_and_not_for_another_key() {
    let mut cluster = cluster_with("watched");
    let id = cluster.watch(1, KeyRange::Key(b"watched".to_vec()), 5_000);
    assert_eq!(cluster.changes_of(id), None, "nothing changed since: the read waits");
    // Other keys, one of them the watched key with more after it, do not answer it.
    cluster.put(2, "other", "o");
    cluster.put(3, "watched-not", "o");
    cluster.put(4, "watche", "o");
    assert_eq!(cluster.changes_of(id), None, "answered for a write to another key");
    // Its key written, it is answered at once (its wait was 5,000 ticks), with the write.
    cluster.put(5, "watched", "second");
    let revision = cluster.leader_revision();
    let found = cluster.changes_of(id).expect("woken by its key's write");
    assert_eq!(found.changes, vec![put_change("watched", "second", revision)]);
    assert_eq!(found.through, revision);
    assert!(!found.more);
    // Answered once: a later write of the key does not answer it again.
    cluster.put(6, "watched", "third");
    assert_eq!(cluster.answers_to(id).len(), 1);
}

#[test]
fn a_parked_prefix_read_wakes_for_a_key_under_its_prefix_only() {
    let mut cluster = cluster_with("dir/first");
    let id = cluster.watch(1, KeyRange::Prefix(b"dir/".to_vec()), 5_000);
    cluster.put(2, "dir", "not under dir/");
    cluster.put(3, "dirt/x", "nor this");
    cluster.put(4, "other", "nor this");
    assert_eq!(cluster.changes_of(id), None, "answered for a key outside its prefix");
    cluster.put(5, "dir/second", "under");
    let revision = cluster.leader_revision();
    let found = cluster.changes_of(id).expect("woken by a key under its prefix");
    assert_eq!(found.changes, vec![put_change("dir/second", "under", revision)]);
}

#[test]
fn a_parked_read_answers_empty_at_its_deadline_and_only_then() {
    let mut cluster = cluster_with("k");
    let before = cluster.leader_revision();
    // One tick is a millisecond (ShardSettings::tick_us).
    let id = cluster.watch(1, KeyRange::Key(b"k".to_vec()), 40);
    for tick in 1..40 {
        cluster.tick();
        assert_eq!(cluster.changes_of(id), None, "answered {tick} ticks into a 40 ms wait");
    }
    cluster.tick();
    let found = cluster.changes_of(id).expect("answered at its deadline");
    assert!(found.changes.is_empty(), "{found:?}");
    assert!(!found.more);
    assert!(found.through >= before, "through {} is before {before}", found.through);
    // Answered: a write of its key now does not answer it again.
    cluster.put(2, "k", "late");
    assert_eq!(cluster.answers_to(id).len(), 1);
}

#[test]
fn a_leader_that_loses_its_leadership_aborts_its_parked_reads_with_the_new_leader() {
    let mut cluster = cluster_with("k");
    let id = cluster.watch(1, KeyRange::Key(b"k".to_vec()), 5_000);
    let old = cluster.leader().unwrap();
    let new = (old + 1) % 3;
    let to = NodeId(new as u16 + 1);
    cluster.shards[old].as_mut().unwrap().transfer_leadership(to).unwrap().unwrap();
    for _ in 0..100 {
        cluster.settle();
        if cluster.leader() == Some(new) {
            break;
        }
        cluster.tick();
    }
    assert_eq!(cluster.leader(), Some(new), "the leadership moved");
    let mut aborted = Vec::new();
    cluster.shards[old].as_mut().unwrap().take_aborted_reads(&mut aborted);
    // Aborted as the old leader steps down, which is when it hears the candidate's prepare:
    // it does not know yet who will lead, so it names no one rather than a wrong node.
    assert_eq!(aborted.len(), 1, "{aborted:?}");
    assert_eq!(aborted[0].0, id);
    assert!(aborted[0].1.is_none_or(|hint| hint == to), "{aborted:?}");
    assert_eq!(cluster.changes_of(id), None, "a former leader answered a parked read");
    // Not parked anywhere any more: its key written under the new leader, no one answers it.
    cluster.put(2, "k", "under the new leader");
    assert_eq!(cluster.changes_of(id), None);
}

#[test]
fn past_the_most_parked_a_change_feed_read_is_refused_with_too_many_watches() {
    let mut cluster = cluster_with("k");
    let range = KeyRange::Key(b"k".to_vec());
    let session = cluster.session();
    let leader = cluster.leader().unwrap();
    let from = cluster.leader_revision() + 1;
    let command = CoordCommand::ChangesWait {
        range: range.clone(),
        from,
        limit: 0,
        locks: false,
        wait_ms: 5_000,
    }
    .encode();
    let ids: Vec<RequestId> = (0..=WATCHES_WAITING_MAX as u64)
        .map(|n| RequestId { client: session, sequence: RequestId::QUERY_BIT | (100 + n) })
        .collect();
    for (n, id) in ids.iter().enumerate() {
        cluster.shards[leader].as_mut().unwrap().propose(*id, &command).unwrap().unwrap();
        if n % 1_000 == 999 || n + 1 == WATCHES_WAITING_MAX {
            cluster.settle();
        }
    }
    cluster.settle();
    // The first WATCHES_WAITING_MAX wait; the one past them is refused at once.
    let (last, parked) = ids.split_last().unwrap();
    assert!(
        parked.iter().all(|id| cluster.answers_to(*id).is_empty()),
        "a read within the most was answered"
    );
    let refused = KvReply::Coord(CoordReply::Refused(CoordError::TooManyWatches {
        max: WATCHES_WAITING_MAX as u64,
    }));
    assert_eq!(cluster.answers_to(*last), vec![&refused]);
    // Its key written, every parked read is answered with the write, and there is room again.
    cluster.put(2, "k", "now");
    let revision = cluster.leader_revision();
    let woken = cluster.answers.iter().filter(|(id, _)| parked.contains(id)).count();
    assert_eq!(woken, WATCHES_WAITING_MAX, "every parked read woken once");
    assert_eq!(
        cluster.changes_of(parked[0]).unwrap().changes,
        vec![put_change("k", "now", revision)]
    );
    let again = cluster.watch(1, range, 5_000);
    assert_eq!(cluster.changes_of(again), None, "room again: it waits");
}

#[test]
fn a_follower_answers_a_change_feed_read_at_once_instead_of_holding_it() {
    use quorum::core::{Consistency, ReadOptions};
    let mut cluster = cluster_with("k");
    let follower = (cluster.leader().unwrap() + 1) % 3;
    let from = cluster.leader_revision() + 1;
    let session = cluster.session();
    let range = KeyRange::Key(b"k".to_vec());
    let command = CoordCommand::ChangesWait { range, from, limit: 0, locks: false, wait_ms: 5_000 };
    let id = RequestId { client: session, sequence: RequestId::QUERY_BIT | 1 };
    let options = ReadOptions { consistency: Consistency::Follower, ..ReadOptions::default() };
    let shard = cluster.shards[follower].as_mut().unwrap();
    shard.read(id, &command.encode(), options).unwrap().unwrap();
    cluster.settle();
    let found = cluster.changes_of(id).expect("a follower does not hold a read");
    assert!(found.changes.is_empty(), "{found:?}");
}

#[test]
fn a_read_resent_while_it_is_held_is_the_same_read_and_answered_once() {
    let mut cluster = cluster_with("watched");
    let range = KeyRange::Key(b"watched".to_vec());
    let id = cluster.watch(1, range.clone(), 5_000);
    // The client's retry after its timeout (or a duplicated frame): the same id and command,
    // while the first copy is held. Once this parked it a second time, and the shard stopped
    // on its own assertion.
    assert_eq!(cluster.watch(1, range, 5_000), id);
    assert_eq!(cluster.changes_of(id), None, "nothing changed: the read still waits");
    cluster.put(2, "watched", "second");
    let revision = cluster.leader_revision();
    let found = cluster.changes_of(id).expect("woken by its key's write, and answered once");
    assert_eq!(found.changes, vec![put_change("watched", "second", revision)]);
}
