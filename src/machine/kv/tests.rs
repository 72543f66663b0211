//! The store's own tests: revisions, ranges at past revisions, the change feed, leases,
//! locks and fencing, transactions, images.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::coord::{LEASE_TTL_MS_MIN, TXN_OPS_MAX, prefix_end};
use super::*;

fn put(key: &[u8], value: &[u8]) -> Vec<u8> {
    KvCommand::Put { key: key.to_vec(), value: value.to_vec() }.encode()
}

fn coord(store: &mut KvStore, revision: u64, command: CoordCommand) -> CoordReply {
    match store.apply_at(revision, &command.encode()) {
        KvReply::Coord(reply) => reply,
        other => panic!("not a coordination reply: {other:?}"),
    }
}

fn read(store: &KvStore, command: CoordCommand) -> CoordReply {
    match store.query(&command.encode()) {
        KvReply::Coord(reply) => reply,
        other => panic!("not a coordination reply: {other:?}"),
    }
}

fn range_at(store: &KvStore, range: KeyRange, revision: u64) -> RangeReply {
    match read(store, CoordCommand::Range { range, limit: 0, revision, keys_only: false }) {
        CoordReply::Range(reply) => reply,
        other => panic!("{other:?}"),
    }
}

fn key(key: &[u8]) -> KeyRange {
    KeyRange::Key(key.to_vec())
}

#[test]
fn summary_depends_on_content_and_revisions_not_on_the_map() {
    let mut a = KvStore::default();
    let mut b = KvStore::default();
    a.apply_at(1, &put(b"x", b"1"));
    a.apply_at(2, &put(b"y", b"2"));
    b.apply_at(1, &put(b"x", b"1"));
    b.apply_at(2, &put(b"y", b"2"));
    assert_eq!(a.summary(), b.summary());
    b.apply(&put(b"x", b"3"));
    assert_ne!(a.summary(), b.summary());
    assert_eq!(b.summary().entries, 2);
    // The same values written at other revisions are another state.
    let mut c = KvStore::default();
    c.apply_at(5, &put(b"x", b"1"));
    c.apply_at(6, &put(b"y", b"2"));
    assert_ne!(a.summary(), c.summary());
    assert_eq!(KvStore::default().apply(&[9, 9, 9]), KvReply::Invalid);
}

#[test]
fn revisions_follow_the_merged_order() {
    assert!(revision_of(0, 0) > 0, "0 is never a revision");
    assert!(revision_of(7, (1 << 20) - 1) < revision_of(8, 0));
    assert_eq!(coord::position_of(revision_of(41, 3)), Some(41));
    assert_eq!(coord::position_of(5), None);
}

use coord::revision_of;

#[test]
fn a_key_carries_its_create_and_mod_revision_and_version() {
    let mut store = KvStore::default();
    store.apply_at(10, &put(b"k", b"a"));
    store.apply_at(20, &put(b"k", b"b"));
    let entry = &range_at(&store, key(b"k"), 0).entries[0];
    assert_eq!((entry.create_revision, entry.mod_revision, entry.version), (10, 20, 2));
    assert_eq!(entry.value, b"b");
    store.apply_at(30, &KvCommand::Delete { key: b"k".to_vec() }.encode());
    assert!(range_at(&store, key(b"k"), 0).entries.is_empty());
    store.apply_at(40, &put(b"k", b"c"));
    let entry = &range_at(&store, key(b"k"), 0).entries[0];
    assert_eq!((entry.create_revision, entry.mod_revision, entry.version), (40, 40, 1));
    // A put through the coordination command answers its revision and what it replaced.
    let reply = coord(
        &mut store,
        50,
        CoordCommand::Put { key: b"k".to_vec(), value: b"d".to_vec(), lease: 0 },
    );
    let CoordReply::Put { revision: 50, previous: Some(previous) } = reply else { panic!() };
    assert_eq!((previous.value.as_slice(), previous.version), (&b"c"[..], 1));
}

#[test]
fn ranges_are_sorted_limited_and_continue() {
    let mut store = KvStore::default();
    for (revision, name) in [b"b/2", b"a/1", b"b/1", b"b/3", b"c/1"].iter().enumerate() {
        store.apply_at(revision as u64 + 1, &put(*name, b"v"));
    }
    let keys = |reply: &RangeReply| -> Vec<Vec<u8>> {
        reply.entries.iter().map(|entry| entry.key.clone()).collect()
    };
    let prefix = KeyRange::Prefix(b"b/".to_vec());
    assert_eq!(keys(&range_at(&store, prefix.clone(), 0)), [b"b/1", b"b/2", b"b/3"]);
    let span = KeyRange::Span { start: b"a".to_vec(), end: b"b/2".to_vec() };
    assert_eq!(keys(&range_at(&store, span, 0)), [&b"a/1"[..], b"b/1"]);
    let all = KeyRange::Span { start: Vec::new(), end: Vec::new() };
    assert_eq!(range_at(&store, all, 0).entries.len(), 5);
    // Two at a time, continuing from the key after the last.
    let mut seen = Vec::new();
    let mut range = prefix;
    loop {
        let command =
            CoordCommand::Range { range: range.clone(), limit: 2, revision: 0, keys_only: true };
        let CoordReply::Range(reply) = read(&store, command) else { panic!() };
        assert!(reply.entries.iter().all(|entry| entry.value.is_empty()), "keys only");
        seen.extend(keys(&reply));
        if !reply.more {
            break;
        }
        let mut next = seen.last().cloned().unwrap_or_default();
        next.push(0);
        range = range.from_key(&next);
    }
    assert_eq!(seen, [b"b/1", b"b/2", b"b/3"]);
    assert_eq!(prefix_end(b"a\xff\xff"), b"b");
    assert_eq!(prefix_end(b"\xff"), b"");
}

/// A random history of puts, deletes, leases and transactions.
#[derive(Clone, Debug)]
enum Op {
    Put(u8, u8),
    Delete(u8),
    DeletePrefix(u8),
    Txn { key: u8, version: u64, then: u8 },
    Grant(u8),
    PutLeased(u8, u8, u8),
    Revoke(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..12u8, any::<u8>()).prop_map(|(key, value)| Op::Put(key, value)),
        2 => (0..12u8).prop_map(Op::Delete),
        1 => (0..3u8).prop_map(Op::DeletePrefix),
        2 => (0..12u8, 0..3u64, any::<u8>()).prop_map(|(key, version, then)| Op::Txn { key, version, then }),
        1 => (1..4u8).prop_map(Op::Grant),
        2 => (0..12u8, any::<u8>(), 1..4u8).prop_map(|(key, value, lease)| Op::PutLeased(key, value, lease)),
        1 => (1..4u8).prop_map(Op::Revoke),
    ]
}

fn name(key: u8) -> Vec<u8> {
    format!("{}/{key:02}", key % 3).into_bytes()
}

fn command(op: &Op) -> Vec<u8> {
    match op {
        Op::Put(key, value) => put(&name(*key), &[*value]),
        Op::Delete(key) => KvCommand::Delete { key: name(*key) }.encode(),
        Op::DeletePrefix(prefix) => {
            CoordCommand::Delete(KeyRange::Prefix(format!("{prefix}/").into_bytes())).encode()
        }
        Op::Txn { key, version, then } => CoordCommand::Txn(Txn {
            compares: vec![Compare::Key {
                key: name(*key),
                op: CompareOp::Equal,
                target: Target::Version(*version),
            }],
            success: vec![TxnOp::Put { key: name(*key), value: vec![*then], lease: 0 }],
            failure: vec![TxnOp::Delete(KeyRange::Key(name(key.wrapping_add(1) % 12)))],
        })
        .encode(),
        Op::Grant(lease) => {
            CoordCommand::LeaseGrant { id: u64::from(*lease), ttl_ms: LEASE_TTL_MS_MIN }.encode()
        }
        Op::PutLeased(key, value, lease) => {
            CoordCommand::Put { key: name(*key), value: vec![*value], lease: u64::from(*lease) }
                .encode()
        }
        Op::Revoke(lease) => CoordCommand::LeaseRevoke { id: u64::from(*lease) }.encode(),
    }
}

type Model = BTreeMap<Vec<u8>, Vec<u8>>;

fn values(reply: &RangeReply) -> Model {
    reply.entries.iter().map(|entry| (entry.key.clone(), entry.value.clone())).collect()
}

fn all() -> KeyRange {
    KeyRange::Prefix(Vec::new())
}

proptest! {
    /// A read at any past revision gives the state the store had then; the change feed from
    /// any revision, replayed over the state before it, gives the state now; an image
    /// restores all of it.
    #[test]
    fn reads_at_past_revisions_and_changes_agree_with_the_history(
        ops in proptest::collection::vec(op(), 1..80),
        history_bytes in prop_oneof![Just(usize::MAX), 500..5000usize],
    ) {
        let mut store = KvStore::with_history_bytes(history_bytes);
        let mut states: Vec<(u64, Model)> = Vec::new();
        for (at, op) in ops.iter().enumerate() {
            let revision = revision_of(at as u64 * 3, at as u32 % 5);
            store.apply_at(revision, &command(op));
            states.push((revision, values(&range_at(&store, all(), 0))));
            // Lease bookkeeping: no key outlives its lease, none names a lease that is gone.
            let leases: Vec<u64> = store.leases().map(|lease| lease.id).collect();
            for entry in &range_at(&store, all(), 0).entries {
                prop_assert!(entry.lease == 0 || leases.contains(&entry.lease));
            }
        }
        for (index, (revision, state)) in states.iter().enumerate() {
            let command = CoordCommand::Range { range: all(), limit: 0, revision: *revision, keys_only: false };
            match read(&store, command) {
                CoordReply::Range(reply) => prop_assert_eq!(&values(&reply), state, "at {}", revision),
                CoordReply::Refused(CoordError::Compacted { oldest, .. }) => {
                    prop_assert!(history_bytes != usize::MAX && *revision < oldest);
                }
                other => prop_assert!(false, "{:?}", other),
            }
            // Replaying the feed from the next revision over this state gives the last one.
            let Some((next, _)) = states.get(index + 1) else { continue };
            let feed = CoordCommand::Changes { range: all(), from: *next, limit: 0, locks: false };
            match read(&store, feed) {
                CoordReply::Changes(changes) => {
                    let mut replayed = state.clone();
                    let mut last = 0;
                    for change in &changes.changes {
                        prop_assert!(change.revision >= last && change.revision >= *next);
                        last = change.revision;
                        match change.kind {
                            ChangeKind::Put => { replayed.insert(change.key.clone(), change.value.clone()); }
                            ChangeKind::Delete => { replayed.remove(&change.key); }
                            _ => prop_assert!(false, "a lock change among keys"),
                        }
                    }
                    prop_assert_eq!(changes.through, store.revision());
                    prop_assert_eq!(&replayed, &states.last().unwrap().1);
                }
                CoordReply::Refused(CoordError::Compacted { .. }) => prop_assert!(history_bytes != usize::MAX),
                other => prop_assert!(false, "{:?}", other),
            }
        }
        let mut image = Vec::new();
        store.snapshot(&mut image).unwrap();
        let restored = KvStore::restore(&mut image.as_slice()).unwrap();
        // The restored store keeps the default history bound; everything else is equal.
        prop_assert_eq!(restored.summary(), store.summary());
        prop_assert_eq!(values(&range_at(&restored, all(), 0)), values(&range_at(&store, all(), 0)));
        let mut again = Vec::new();
        restored.snapshot(&mut again).unwrap();
        if history_bytes == usize::MAX {
            prop_assert_eq!(&again, &image);
        }
        for cut in [0, 1, 8, image.len() / 2, image.len() - 1] {
            prop_assert!(KvStore::restore(&mut &image[..cut]).is_err(), "cut at {}", cut);
        }
    }
}

#[test]
fn the_change_feed_keeps_whole_revisions_and_reports_compaction() {
    let mut store = KvStore::with_history_bytes(4000);
    // One command, three changes at one revision.
    let grant = CoordCommand::LeaseGrant { id: 7, ttl_ms: 5000 };
    assert_eq!(coord(&mut store, 1, grant), CoordReply::Lease { id: 7, ttl_ms: 5000 });
    for (revision, name) in [(2, b"a"), (3, b"b"), (4, b"c")] {
        let command = CoordCommand::Put { key: name.to_vec(), value: b"v".to_vec(), lease: 7 };
        coord(&mut store, revision, command);
    }
    assert_eq!(
        coord(&mut store, 5, CoordCommand::LeaseRevoke { id: 7 }),
        CoordReply::Revoked { revision: 5, keys: 3 }
    );
    let feed = |store: &KvStore, from, limit| match read(
        store,
        CoordCommand::Changes { range: all(), from, limit, locks: false },
    ) {
        CoordReply::Changes(changes) => changes,
        other => panic!("{other:?}"),
    };
    let first = feed(&store, 2, 2);
    assert_eq!(first.changes.len(), 2);
    assert_eq!(first.through, 3);
    let rest = feed(&store, first.through + 1, 2);
    // The revoke's three deletes come together, past the limit.
    assert_eq!(rest.changes.iter().map(|change| change.revision).collect::<Vec<_>>(), [4, 5, 5, 5]);
    assert!(rest.changes[1..].iter().all(|change| change.kind == ChangeKind::Delete));
    assert_eq!(rest.through, 5);
    assert!(feed(&store, 6, 0).changes.is_empty());
    assert_eq!(feed(&store, 9, 0).through, 8, "a feed ahead of the store never goes back");
    // A small history drops old revisions; a feed or read from before them is refused.
    for revision in 10..40 {
        store.apply_at(revision, &put(b"k", &[0; 50]));
    }
    let refused =
        read(&store, CoordCommand::Changes { range: all(), from: 2, limit: 0, locks: false });
    let CoordReply::Refused(CoordError::Compacted { requested: 2, oldest }) = refused else {
        panic!("{refused:?}")
    };
    assert!(oldest > 2 && oldest <= 40);
    assert!(
        matches!(feed(&store, oldest, 0).changes.first(), Some(change) if change.revision == oldest)
    );
    let refused =
        read(&store, CoordCommand::Range { range: all(), limit: 0, revision: 3, keys_only: false });
    assert!(matches!(refused, CoordReply::Refused(CoordError::Compacted { .. })), "{refused:?}");
}

#[test]
fn leases_refuse_bad_input_and_an_expiry_loses_to_a_keep_alive() {
    let mut store = KvStore::default();
    let refused = |reply: CoordReply| match reply {
        CoordReply::Refused(error) => error,
        other => panic!("not refused: {other:?}"),
    };
    assert_eq!(
        refused(coord(&mut store, 1, CoordCommand::LeaseGrant { id: 0, ttl_ms: 5000 })),
        CoordError::ZeroLease
    );
    assert!(matches!(
        refused(coord(&mut store, 2, CoordCommand::LeaseGrant { id: 1, ttl_ms: 0 })),
        CoordError::BadTtl { ttl_ms: 0, .. }
    ));
    assert!(matches!(
        refused(coord(&mut store, 3, CoordCommand::LeaseGrant { id: 1, ttl_ms: u64::MAX })),
        CoordError::BadTtl { .. }
    ));
    coord(&mut store, 4, CoordCommand::LeaseGrant { id: 1, ttl_ms: 5000 });
    assert_eq!(
        refused(coord(&mut store, 5, CoordCommand::LeaseGrant { id: 1, ttl_ms: 5000 })),
        CoordError::LeaseExists { id: 1 }
    );
    let leased = CoordCommand::Put { key: b"k".to_vec(), value: b"v".to_vec(), lease: 2 };
    assert_eq!(refused(coord(&mut store, 6, leased)), CoordError::LeaseNotFound { id: 2 });
    assert!(range_at(&store, key(b"k"), 0).entries.is_empty(), "nothing applied");
    coord(&mut store, 7, CoordCommand::Put { key: b"k".to_vec(), value: b"v".to_vec(), lease: 1 });
    // The leader saw no keep-alive; one was applied before its expiry: the lease lives.
    coord(&mut store, 8, CoordCommand::LeaseKeepAlive { id: 1 });
    assert_eq!(
        refused(coord(&mut store, 9, CoordCommand::LeaseExpire { id: 1, refreshes: 0 })),
        CoordError::LeaseRefreshed { id: 1 }
    );
    assert_eq!(range_at(&store, key(b"k"), 0).entries.len(), 1);
    let CoordReply::Leases(leases) = read(&store, CoordCommand::LeaseList) else { panic!() };
    assert_eq!((leases[0].id, leases[0].keys, leases[0].refreshes), (1, 1, 1));
    assert_eq!(
        coord(&mut store, 10, CoordCommand::LeaseExpire { id: 1, refreshes: 1 }),
        CoordReply::Expired { id: 1, revision: 10, keys: 1 }
    );
    assert!(range_at(&store, key(b"k"), 0).entries.is_empty());
    assert_eq!(
        refused(coord(&mut store, 11, CoordCommand::LeaseKeepAlive { id: 1 })),
        CoordError::LeaseNotFound { id: 1 }
    );
    // A key put again without its lease no longer dies with it.
    coord(&mut store, 12, CoordCommand::LeaseGrant { id: 3, ttl_ms: 5000 });
    coord(&mut store, 13, CoordCommand::Put { key: b"j".to_vec(), value: b"1".to_vec(), lease: 3 });
    store.apply_at(14, &put(b"j", b"2"));
    assert_eq!(
        coord(&mut store, 15, CoordCommand::LeaseRevoke { id: 3 }),
        CoordReply::Revoked { revision: 15, keys: 0 }
    );
    assert_eq!(range_at(&store, key(b"j"), 0).entries[0].value, b"2");
}

/// A store with leases 1 and 2 granted at revisions 1 and 2.
fn two_leases() -> KvStore {
    let mut store = KvStore::default();
    for (revision, id) in [(1, 1), (2, 2)] {
        coord(&mut store, revision, CoordCommand::LeaseGrant { id, ttl_ms: 5000 });
    }
    store
}

/// Lease `lease` takes (or waits for) lock `job`, showing the value `holder LEASE`.
fn lock(lease: u64) -> CoordCommand {
    CoordCommand::Lock {
        name: b"job".to_vec(),
        lease,
        value: format!("holder {lease}").into_bytes(),
    }
}

#[test]
fn a_fenced_write_fails_once_the_lock_has_moved_on() {
    let mut store = two_leases();
    let CoordReply::Lock { holder: first, held: true, .. } = coord(&mut store, 10, lock(1)) else {
        panic!()
    };
    assert_eq!(first.token, 10);
    let CoordReply::Lock { held: false, ahead: 1, .. } = coord(&mut store, 11, lock(2)) else {
        panic!()
    };
    let fenced = |token: u64, value: &[u8]| {
        CoordCommand::Txn(Txn {
            compares: vec![Compare::LockHeld { name: b"job".to_vec(), token }],
            success: vec![TxnOp::Put { key: b"out".to_vec(), value: value.to_vec(), lease: 0 }],
            failure: vec![],
        })
    };
    assert!(matches!(
        coord(&mut store, 12, fenced(10, b"one")),
        CoordReply::Txn { succeeded: true, .. }
    ));
    // The first holder's lease ends (it paused past its TTL): the second takes the lock.
    coord(&mut store, 20, CoordCommand::LeaseExpire { id: 1, refreshes: 0 });
    let CoordReply::Holder(Some(second)) =
        read(&store, CoordCommand::LockHolder { name: b"job".to_vec() })
    else {
        panic!()
    };
    assert_eq!((second.lease, second.token), (2, 20));
    assert!(second.token > first.token, "tokens only grow");
    assert!(matches!(
        coord(&mut store, 21, fenced(20, b"two")),
        CoordReply::Txn { succeeded: true, .. }
    ));
    // The first holder wakes and writes with its old token: refused, the second's work stays.
    assert!(matches!(
        coord(&mut store, 22, fenced(10, b"late")),
        CoordReply::Txn { succeeded: false, .. }
    ));
    assert_eq!(range_at(&store, key(b"out"), 0).entries[0].value, b"two");
}

#[test]
fn an_elections_leader_proclaims_and_its_changes_are_watched() {
    let mut store = two_leases();
    coord(&mut store, 10, lock(1));
    coord(&mut store, 11, lock(2));
    coord(&mut store, 20, CoordCommand::LeaseExpire { id: 1, refreshes: 0 });
    // Elections: the leader proclaims; someone else's token is refused.
    assert!(matches!(
        coord(
            &mut store,
            23,
            CoordCommand::Proclaim { name: b"job".to_vec(), token: 20, value: b"v2".to_vec() }
        ),
        CoordReply::Proclaimed { revision: 23 }
    ));
    assert_eq!(
        coord(
            &mut store,
            24,
            CoordCommand::Proclaim { name: b"job".to_vec(), token: 10, value: b"x".to_vec() }
        ),
        CoordReply::Refused(CoordError::NotHolder { token: 10 })
    );
    let CoordReply::Changes(changes) =
        read(&store, CoordCommand::Changes { range: all(), from: 1, limit: 0, locks: true })
    else {
        panic!()
    };
    let kinds: Vec<ChangeKind> = changes.changes.iter().map(|change| change.kind).collect();
    assert_eq!(
        kinds,
        [
            ChangeKind::Locked { lease: 1, token: 10 },
            ChangeKind::Locked { lease: 2, token: 20 },
            ChangeKind::Proclaimed
        ]
    );
    assert_eq!(
        coord(&mut store, 25, CoordCommand::Unlock { name: b"job".to_vec(), lease: 2 }),
        CoordReply::Unlocked(true)
    );
    assert_eq!(
        read(&store, CoordCommand::LockHolder { name: b"job".to_vec() }),
        CoordReply::Holder(None)
    );
    // Locks and leases survive an image.
    coord(&mut store, 26, lock(2));
    let mut image = Vec::new();
    store.snapshot(&mut image).unwrap();
    let restored = KvStore::restore(&mut image.as_slice()).unwrap();
    assert_eq!(restored, store);
}

#[test]
fn a_transaction_is_all_or_nothing_and_bounded() {
    let mut store = KvStore::default();
    store.apply_at(1, &put(b"a", b"1"));
    let txn = |compares, success| CoordCommand::Txn(Txn { compares, success, failure: vec![] });
    let put_op = |key: &[u8], lease| TxnOp::Put { key: key.to_vec(), value: b"x".to_vec(), lease };
    // The second put names a lease that does not exist: the first is not applied either.
    let refused = coord(&mut store, 2, txn(vec![], vec![put_op(b"b", 0), put_op(b"c", 9)]));
    assert_eq!(refused, CoordReply::Refused(CoordError::LeaseNotFound { id: 9 }));
    assert!(range_at(&store, key(b"b"), 0).entries.is_empty());
    let too_many = txn(vec![], (0..=TXN_OPS_MAX).map(|_| put_op(b"b", 0)).collect());
    assert!(matches!(
        coord(&mut store, 3, too_many),
        CoordReply::Refused(CoordError::TooManyOps { .. })
    ));
    let value_is = |value: &[u8]| Compare::Key {
        key: b"a".to_vec(),
        op: CompareOp::Equal,
        target: Target::Value(Some(value.to_vec())),
    };
    let read_back = TxnOp::Range { range: KeyRange::Prefix(Vec::new()), limit: 0 };
    let CoordReply::Txn { succeeded: true, revision: 4, results } =
        coord(&mut store, 4, txn(vec![value_is(b"1")], vec![put_op(b"b", 0), read_back.clone()]))
    else {
        panic!()
    };
    let TxnResult::Range(seen) = &results[1] else { panic!() };
    assert_eq!(seen.entries.len(), 2, "a read in a transaction sees its earlier writes");
    let CoordReply::Txn { succeeded: false, results, .. } =
        coord(&mut store, 5, txn(vec![value_is(b"2")], vec![put_op(b"z", 0)]))
    else {
        panic!()
    };
    assert!(results.is_empty());
    let big = CoordCommand::Put { key: vec![0; coord::KEY_BYTES_MAX + 1], value: vec![], lease: 0 };
    assert!(matches!(
        coord(&mut store, 6, big),
        CoordReply::Refused(CoordError::KeyTooLarge { .. })
    ));
    // Garbage after the tag is refused, not guessed at.
    assert_eq!(
        store.apply_at(7, &[coord::COORD_TAG, 200, 1]),
        KvReply::Coord(CoordReply::Refused(CoordError::Malformed))
    );
    // A write sent as a query changes nothing.
    assert_eq!(
        store.query(&CoordCommand::LeaseRevoke { id: 1 }.encode()),
        KvReply::Coord(CoordReply::Refused(CoordError::NotARead))
    );
}

#[test]
fn coordination_commands_and_replies_round_trip_and_refuse_trailing_bytes() {
    let command = CoordCommand::Txn(Txn {
        compares: vec![Compare::LockHeld { name: b"n".to_vec(), token: 3 }],
        success: vec![TxnOp::Delete(KeyRange::Span { start: b"a".to_vec(), end: vec![] })],
        failure: vec![TxnOp::Range { range: KeyRange::Key(b"k".to_vec()), limit: 3 }],
    });
    let encoded = command.encode();
    assert_eq!(CoordCommand::decode(&encoded), Some(command));
    let mut longer = encoded.clone();
    longer.push(0);
    assert_eq!(CoordCommand::decode(&longer), None);
    let reply = KvReply::Coord(CoordReply::Lease { id: 3, ttl_ms: 1000 });
    let mut bytes = Vec::new();
    reply.encode(&mut bytes);
    assert_eq!(KvReply::decode(&bytes), Some(reply.clone()));
    assert_eq!(KvStore::reply_size_bytes(&reply), bytes.len());
}

#[test]
fn an_image_of_the_first_format_still_restores() {
    let mut image = Vec::new();
    crate::write_u64(&mut image, 1).unwrap();
    crate::write_field(&mut image, b"key").unwrap();
    crate::write_field(&mut image, b"value").unwrap();
    let store = KvStore::restore(&mut image.as_slice()).unwrap();
    assert_eq!(store.get(b"key"), Some(&b"value"[..]));
}

#[test]
fn keys_with_one_hash_tag_share_a_shard() {
    assert_eq!(hash_tag(b"{job}lock"), b"job");
    assert_eq!(hash_tag(b"out{job}"), b"job");
    assert_eq!(hash_tag(b"{}x"), b"{}x", "an empty tag is no tag");
    assert_eq!(hash_tag(b"{a"), b"{a");
    assert_eq!(hash_tag(b"x{a}{b}"), b"a", "the first tag");
    for shards in 1..8 {
        let shard = shard_for_key(b"{job}lock", shards);
        assert_eq!(shard_for_key(b"{job}out", shards), shard);
        assert_eq!(shard_for_key(b"job", shards), shard);
    }
}

#[test]
fn a_waiting_change_feed_read_and_an_expiry_round_trip_and_older_commands_keep_their_encoding() {
    let range = KeyRange::Prefix(b"p".to_vec());
    let wait = CoordCommand::ChangesWait {
        range: range.clone(),
        from: 7,
        limit: 2,
        locks: false,
        wait_ms: 500,
    };
    assert_eq!(CoordCommand::decode(&wait.encode()), Some(wait));
    // The waiting read is the last variant: a plain change-feed read keeps its tag.
    let plain = CoordCommand::Changes { range, from: 7, limit: 2, locks: false };
    assert_eq!(plain.encode()[..2], [coord::COORD_TAG, 3]);
    let reply = KvReply::Coord(CoordReply::Expired { id: 9, revision: 1 << 20, keys: 2 });
    let mut bytes = Vec::new();
    reply.encode(&mut bytes);
    assert_eq!(KvReply::decode(&bytes), Some(reply));
}
