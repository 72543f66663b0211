//! A voter whose log on real files lost acknowledged records (a flipped byte in a synced record
//! with valid ones after it, a zeroed page below the confirmed watermark, an emptied data
//! directory) repairs from its peers before it votes again (protocol.md §3.9): while the only
//! other voter that holds the lost writes is down it takes part in no election, and once that
//! voter is back every acknowledged write is on every replica.
//!
//! The scenario makes the damaged replica the only live holder of the newest writes: they
//! commit on it and the leader while the third voter is down; then the leader stops, the
//! damaged replica and the stale third voter are the live majority. Voting with the damaged log
//! would let the two of them fill the lost slots with no-ops.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests may unwrap.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use quorum::core::{ClusterId, Config, NodeId, RequestId, RoleKind};
use quorum::machine::{KvCommand, KvReply, KvStore, Outcome, SessionLimits, register_request};
use quorum::shard::{Shard, settle_wired};
use quorum_wal::{MmapBackend, Options};

const CLUSTER: ClusterId = ClusterId(9);
const WRITES: u64 = 60;
/// Writes 1..=FIRST_PART reach all three voters; the rest only the leader and one follower.
const FIRST_PART: u64 = 20;

fn options() -> Options {
    Options { segment_bytes: 1 << 20, prepare_ahead: false }
}

struct Cluster {
    dirs: Vec<PathBuf>,
    shards: Vec<Option<Shard<MmapBackend, KvStore>>>,
    replies: HashMap<RequestId, KvReply>,
    /// Register-session commands' outcomes: the session ids.
    registered: HashMap<RequestId, u64>,
    /// The session the harness's puts go under, once registered.
    session: Option<u64>,
    _root: tempfile::TempDir,
}

impl Cluster {
    fn new() -> Cluster {
        let root = tempfile::tempdir().unwrap();
        let dirs: Vec<PathBuf> = (1..=3).map(|node| root.path().join(format!("n{node}"))).collect();
        let mut cluster = Cluster {
            dirs,
            shards: vec![None, None, None],
            replies: HashMap::new(),
            registered: HashMap::new(),
            session: None,
            _root: root,
        };
        for index in 0..3 {
            cluster.start(index);
        }
        cluster
    }

    fn start(&mut self, index: usize) {
        let config =
            Config::new(CLUSTER, NodeId(index as u16 + 1), vec![NodeId(1), NodeId(2), NodeId(3)]);
        let backend = MmapBackend::new(&self.dirs[index]).unwrap();
        self.shards[index] = Some(
            Shard::open(
                config,
                backend,
                options(),
                KvStore::default(),
                SessionLimits::with_replies_max(64),
            )
            .unwrap(),
        );
    }

    fn stop(&mut self, index: usize) {
        self.shards[index] = None;
    }

    fn shard(&self, index: usize) -> &Shard<MmapBackend, KvStore> {
        self.shards[index].as_ref().unwrap()
    }

    fn settle(&mut self) {
        let (replies, registered) = (&mut self.replies, &mut self.registered);
        settle_wired(&mut self.shards, |shard, applied| {
            if shard.replica().role() == RoleKind::Leader {
                for applied in applied {
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

    fn put(&mut self, sequence: u64) {
        let id = RequestId { client: self.session(), sequence };
        let command =
            KvCommand::Put { key: format!("key-{sequence}").into(), value: b"v".to_vec() }.encode();
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
        panic!("put {sequence} was never acknowledged");
    }
}

/// The first segment file of a data directory.
fn first_segment(dir: &Path) -> PathBuf {
    let mut segments: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "wal"))
        .collect();
    segments.sort();
    segments.remove(0)
}

fn edit_file(path: &Path, edit: impl FnOnce(&mut Vec<u8>)) {
    let mut bytes = std::fs::read(path).unwrap();
    edit(&mut bytes);
    std::fs::write(path, bytes).unwrap();
}

/// Runs the scenario with `damage` applied to the stopped follower's data directory.
fn acknowledged_writes_survive(damage: impl FnOnce(&Path)) {
    let mut cluster = Cluster::new();
    for _ in 0..200 {
        if cluster.leader().is_some() {
            break;
        }
        cluster.tick();
    }
    let leader = cluster.leader().expect("a new cluster elects a leader once every voter started");
    let (damaged, stale) = ((leader + 1) % 3, (leader + 2) % 3);
    for sequence in 1..=FIRST_PART {
        cluster.put(sequence);
    }
    cluster.stop(stale);
    for sequence in FIRST_PART + 1..=WRITES {
        cluster.put(sequence);
    }
    // Only the leader and `damaged` hold writes FIRST_PART+1..; both stop, and `damaged`
    // loses them on disk.
    cluster.stop(leader);
    cluster.stop(damaged);
    damage(&cluster.dirs[damaged]);
    cluster.start(damaged);
    cluster.start(stale);
    assert!(cluster.shard(damaged).replica().is_repairing(), "the damage went unnoticed");
    for _ in 0..300 {
        cluster.tick();
        assert!(
            cluster.shard(damaged).replica().is_repairing(),
            "the damaged replica stopped repairing while a voter that holds its writes is down"
        );
        assert_eq!(cluster.leader(), None, "a leader was elected with the damaged log's vote");
    }
    // The leader returns: the damaged replica learns what it lost, and votes again.
    cluster.start(leader);
    for _ in 0..500 {
        if !cluster.shard(damaged).replica().is_repairing() && cluster.leader().is_some() {
            break;
        }
        cluster.tick();
    }
    assert!(!cluster.shard(damaged).replica().is_repairing(), "the repair never finished");
    cluster.put(WRITES + 1);
    for _ in 0..50 {
        cluster.tick();
    }
    for index in 0..3 {
        let store = cluster.shard(index).machine();
        for sequence in 1..=WRITES + 1 {
            assert_eq!(
                store.get(format!("key-{sequence}").as_bytes()),
                Some(&b"v"[..]),
                "acknowledged write {sequence} missing on node {}",
                index + 1
            );
        }
    }
    assert_eq!(cluster.shard(0).machine(), cluster.shard(1).machine());
    assert_eq!(cluster.shard(1).machine(), cluster.shard(2).machine());
    // The repair is over for good: a restart does not start another.
    cluster.stop(damaged);
    cluster.start(damaged);
    assert!(!cluster.shard(damaged).replica().is_repairing());
}

#[test]
fn a_flipped_byte_in_a_synced_record_mid_log_is_repaired_from_peers() {
    acknowledged_writes_survive(|dir| {
        // Inside the first record after the segment header: valid records follow it.
        edit_file(&first_segment(dir), |bytes| bytes[4096 + 20] ^= 0x10);
    });
}

#[test]
fn a_zeroed_page_below_the_confirmed_mark_is_repaired_from_peers() {
    acknowledged_writes_survive(|dir| {
        edit_file(&first_segment(dir), |bytes| bytes[4096..8192].fill(0));
    });
}

#[test]
fn an_emptied_data_directory_of_a_voter_is_repaired_from_peers() {
    acknowledged_writes_survive(|dir| {
        for entry in std::fs::read_dir(dir).unwrap() {
            std::fs::remove_file(entry.unwrap().path()).unwrap();
        }
    });
}
