//! A state machine that persists itself (`StateMachine::persisted_slot`): a restart keeps it
//! and applies only the batches after the slot it holds, taking only the session table from
//! the snapshot; a request it already applied is never applied again (a retry is answered
//! `Expired`); a machine behind the snapshot is replaced by the snapshot's; and the machine
//! is synced before a snapshot lets the log below it go.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests may unwrap.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use quorum::core::{ClusterId, Config, NodeId, RequestId, RoleKind, Slot};
use quorum::machine::{
    KvCommand, KvReply, KvStore, Outcome, SessionLimits, StateMachine, StateSummary,
    register_request,
};
use quorum::shard::{Shard, ShardSettings, settle_wired};
use quorum::storage::snapshot::SnapshotError;
use quorum_wal::{Options, SimBackend};

/// What the persisted machine's own "disk" holds: its state as of its last committed batch,
/// the slot of that batch, and how often it was synced and commands were applied to it.
#[derive(Default)]
struct Disk {
    image: Vec<u8>,
    slot: Option<Slot>,
    synced_slot: Option<Slot>,
    syncs: u64,
    applied: u64,
}

/// The key-value store, committing its state and slot to a shared `Disk` at every batch end
/// (as a database commits a transaction) and reopened from it.
struct Persisted {
    kv: KvStore,
    opened_at: Option<Slot>,
    disk: Rc<RefCell<Disk>>,
}

impl Persisted {
    fn open(disk: &Rc<RefCell<Disk>>) -> Persisted {
        let held = disk.borrow();
        let kv = if held.image.is_empty() {
            KvStore::default()
        } else {
            KvStore::restore(&mut &held.image[..]).unwrap()
        };
        Persisted { kv, opened_at: held.slot, disk: Rc::clone(disk) }
    }
}

impl Persisted {
    fn machine_get(&self, key: &[u8]) -> Option<&[u8]> {
        self.kv.get(key)
    }
}

impl StateMachine for Persisted {
    type Reply = KvReply;
    const PERSISTS: bool = true;

    fn apply(&mut self, command: &[u8]) -> KvReply {
        self.disk.borrow_mut().applied += 1;
        self.kv.apply(command)
    }

    fn on_batch_applied(&mut self, slot: Slot) {
        let mut image = Vec::new();
        self.kv.snapshot(&mut image).unwrap();
        let mut disk = self.disk.borrow_mut();
        (disk.image, disk.slot) = (image, Some(slot));
    }

    fn persisted_slot(&self) -> Option<Slot> {
        self.opened_at
    }

    fn sync(&mut self) -> std::io::Result<()> {
        let mut disk = self.disk.borrow_mut();
        disk.syncs += 1;
        disk.synced_slot = disk.slot;
        Ok(())
    }

    fn query(&self, request: &[u8]) -> KvReply {
        self.kv.query(request)
    }

    fn encode_reply(reply: &KvReply, out: &mut Vec<u8>) {
        KvStore::encode_reply(reply, out);
    }

    fn decode_reply(bytes: &[u8]) -> Option<KvReply> {
        KvStore::decode_reply(bytes)
    }

    fn summary(&self) -> StateSummary {
        self.kv.summary()
    }

    fn snapshot(&self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        self.kv.snapshot(out)
    }

    fn restore(image: &mut dyn std::io::Read) -> Result<Persisted, SnapshotError> {
        // A snapshot's machine: its own disk, holding nothing yet.
        let disk = Rc::new(RefCell::new(Disk::default()));
        Ok(Persisted { kv: KvStore::restore(image)?, opened_at: None, disk })
    }
}

/// One voter, with a snapshot every 8 KiB of log.
fn open(wal: &SimBackend, disk: &Rc<RefCell<Disk>>) -> Shard<SimBackend, Persisted> {
    let config = Config::new(ClusterId(5), NodeId(1), vec![NodeId(1)]);
    let settings = ShardSettings {
        snapshot_every_bytes: 8 * 1024,
        ..ShardSettings::new(SessionLimits::with_replies_max(64))
    };
    let options = Options { segment_bytes: 64 * 1024, prepare_ahead: false };
    Shard::open_with(config, wal.clone(), options, Persisted::open(disk), settings).unwrap()
}

/// Runs the shard until it leads, then proposes `command` under `id` and settles.
fn call(
    shard: &mut Option<Shard<SimBackend, Persisted>>,
    id: RequestId,
    command: &[u8],
) -> Outcome<KvReply> {
    let mut outcomes = HashMap::new();
    let mut shards = [shard.take()];
    for _ in 0..1_000 {
        let leader = shards[0].as_mut().unwrap();
        if leader.replica().role() != RoleKind::Leader {
            leader.on_tick().unwrap();
        } else if leader.propose(id, command).unwrap().is_ok() {
            leader.flush().unwrap();
        }
        settle_wired(&mut shards, |_, applied| {
            outcomes.extend(applied.into_iter().map(|applied| (applied.id, applied.outcome)));
        })
        .unwrap();
        if let Some(outcome) = outcomes.remove(&id) {
            *shard = shards[0].take();
            return outcome;
        }
    }
    panic!("request {id:?} never applied");
}

fn put(key: &str, value: &str) -> Vec<u8> {
    KvCommand::Put { key: key.into(), value: value.into() }.encode()
}

#[test]
fn a_restart_keeps_a_persisted_machine_and_applies_only_what_it_lacks() {
    let (wal, disk) = (SimBackend::new(), Rc::new(RefCell::new(Disk::default())));
    let mut shard = Some(open(&wal, &disk));
    let (register, payload) = register_request([9; 16]);
    let Outcome::Registered(client) = call(&mut shard, register, &payload) else {
        panic!("no session")
    };
    let long = "v".repeat(500);
    for sequence in 1..=60 {
        let id = RequestId { client, sequence };
        let outcome = call(&mut shard, id, &put(&format!("k{}", sequence % 9), &long));
        assert!(matches!(outcome, Outcome::Applied(_)), "{outcome:?}");
    }
    let before = shard.as_ref().unwrap();
    let snapshots = before.snapshot_stats().taken;
    assert!(snapshots > 0, "the log grew past a snapshot interval");
    let summary = before.machine().summary();
    let (snapshot_slot, _) = before.snapshot_stats().current.expect("a snapshot beside the log");
    assert!(disk.borrow().syncs >= snapshots, "synced before each snapshot released the log");
    assert!(disk.borrow().synced_slot.is_some(), "the machine was synced with batches in it");
    let held = disk.borrow().slot;
    assert!(held > Some(snapshot_slot), "batches after the snapshot, held by the machine alone");
    // Stopped (its memory lost) and reopened: the machine is kept at the slot it holds.
    drop(shard);
    let applied_before = disk.borrow().applied;
    let mut shard = Some(open(&wal, &disk));
    let reopened = shard.as_ref().unwrap();
    assert_eq!(disk.borrow().applied, applied_before, "nothing applied again at start");
    assert_eq!(reopened.machine().summary(), summary);
    // A retry of a request the machine applied before the stop, after the snapshot: it is not
    // applied again, and its reply is not known here.
    let retried = RequestId { client, sequence: 60 };
    let outcome = call(&mut shard, retried, &put("k6", "again"));
    assert_eq!(outcome, Outcome::Expired, "a request applied before the restart, retried");
    // Elected again, the shard committed what its log holds: the batches the machine held
    // went through the session table alone.
    let skipped = shard.as_ref().unwrap().skipped_batches();
    assert!(skipped > 0, "the batches after the snapshot were skipped");
    assert_eq!(disk.borrow().applied, applied_before, "nothing applied again");
    assert_eq!(shard.as_ref().unwrap().machine().summary(), summary, "not applied twice");
    // New requests apply as before, once.
    let fresh = RequestId { client, sequence: 61 };
    let outcome = call(&mut shard, fresh, &put("fresh", "x"));
    assert!(matches!(outcome, Outcome::Applied(_)), "{outcome:?}");
    assert_eq!(disk.borrow().applied, applied_before + 1);
    assert_eq!(shard.as_ref().unwrap().machine().summary().entries, summary.entries + 1);
}

#[test]
fn a_persisted_machine_behind_the_snapshot_is_replaced_by_it() {
    let (wal, disk) = (SimBackend::new(), Rc::new(RefCell::new(Disk::default())));
    let mut shard = Some(open(&wal, &disk));
    let (register, payload) = register_request([3; 16]);
    let Outcome::Registered(client) = call(&mut shard, register, &payload) else {
        panic!("no session")
    };
    let long = "w".repeat(500);
    for sequence in 1..=40 {
        call(&mut shard, RequestId { client, sequence }, &put(&format!("k{sequence}"), &long));
    }
    let summary = shard.as_ref().unwrap().machine().summary();
    assert!(shard.as_ref().unwrap().snapshot_stats().taken > 0);
    drop(shard);
    // The machine's storage lost everything (a new disk): it reports no slot, below the
    // snapshot, so the snapshot's machine replaces it and the log after it is applied.
    let empty = Rc::new(RefCell::new(Disk::default()));
    let mut shard = Some(open(&wal, &empty));
    // Elected again, it commits what its log holds; then one more request.
    let outcome = call(&mut shard, RequestId { client, sequence: 41 }, &put("last", "x"));
    assert!(matches!(outcome, Outcome::Applied(_)), "{outcome:?}");
    let shard = shard.unwrap();
    assert_eq!(shard.skipped_batches(), 0);
    assert_eq!(shard.machine().summary().entries, summary.entries + 1);
    assert_eq!(shard.machine().machine_get(b"k40").map(<[u8]>::len), Some(500));
}
