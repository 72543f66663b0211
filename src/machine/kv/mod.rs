//! The built-in key-value store: Quorum's own state machine, behind `quorum kv`, the front
//! ends and the bench. Beside put/get it keeps what a coordination service needs
//! (docs/coordination.md): every key's revisions and version, the recent changes (watches and
//! reads at a past revision), leases, and locks with fencing tokens.

mod command;
pub mod coord;
mod entry;
mod history;
mod image;
mod locks;
pub mod watch;

use std::collections::{BTreeMap, BTreeSet, HashMap};

pub use command::{KvCommand, KvCommandRef, KvReply};
pub use coord::{
    Change, ChangeKind, ChangesReply, Compare, CompareOp, CoordCommand, CoordError, CoordReply,
    Holder, KeyRange, KeyValue, LeaseInfo, RangeReply, Target, Txn, TxnOp, TxnResult,
};
pub use history::HISTORY_BYTES_DEFAULT;

use super::{QueryWait, StateMachine, StateSummary, WaitOn};
use crate::storage::snapshot::SnapshotError;
use coord::{CHANGES_LIMIT_MAX, COORD_TAG, RANGE_LIMIT_MAX};
use entry::Entry;
use history::{Event, History};
use locks::{Locks, Released};

/// The shard a key belongs to: a stable hash, the same on every node and every build. A key
/// with a hash tag, a non-empty `{…}` (the first `{` and the first `}` after it, as Redis
/// Cluster reads them), is placed by the tag alone: keys and locks that share a tag share a
/// shard, so one transaction can touch them all (docs/coordination.md).
#[must_use]
pub fn shard_for_key(key: &[u8], shards: usize) -> usize {
    assert!(shards > 0, "no shards");
    (xxhash_rust::xxh3::xxh3_64(hash_tag(key)) % shards as u64) as usize
}

/// What of `key` places it: its hash tag if it has one, else all of it.
fn hash_tag(key: &[u8]) -> &[u8] {
    let Some(open) = key.iter().position(|&byte| byte == b'{') else { return key };
    match key[open + 1..].iter().position(|&byte| byte == b'}') {
        Some(length) if length > 0 => &key[open + 1..open + 1 + length],
        _ => key,
    }
}

/// Keys and values up to 24 bytes live inside the table itself: a lookup compares the key
/// without following a pointer, and a small value is updated without the allocator (the KV
/// store's lookups were a third of a node's CPU with heap-allocated keys).
type Bytes24 = smallvec::SmallVec<[u8; 24]>;

/// A lease: its TTL, and what lives by it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Lease {
    ttl_ms: u64,
    /// Keep-alives applied since the grant.
    refreshes: u64,
    keys: BTreeSet<Bytes24>,
    /// Locks it holds or waits for.
    locks: BTreeSet<Bytes24>,
}

/// The built-in replicated key-value store. Its hasher is seeded at random per replica
/// (keys come from clients; nothing depends on the map's order).
#[derive(Clone, Debug, Default)]
pub struct KvStore {
    entries: HashMap<Bytes24, Entry, foldhash::fast::RandomState>,
    /// The keys again, in order, for ranges.
    ordered: BTreeSet<Bytes24>,
    /// The revision of the last command applied (0: none).
    revision: u64,
    history: History,
    leases: BTreeMap<u64, Lease>,
    locks: Locks,
}

/// Equal states: the same keys with the same metadata, leases and locks, at the same revision.
/// The recent changes are not compared: like the log, they are the past, and a replica restored
/// from a snapshot holds less of it.
impl PartialEq for KvStore {
    fn eq(&self, other: &KvStore) -> bool {
        self.entries.len() == other.entries.len()
            && self.entries.iter().all(|(key, value)| other.entries.get(key) == Some(value))
            && self.revision == other.revision
            && self.leases == other.leases
            && self.locks == other.locks
    }
}

impl Eq for KvStore {}

impl KvStore {
    /// A store that keeps at most `history_bytes` of recent changes (default
    /// [`HISTORY_BYTES_DEFAULT`]); reads and watches from before them are refused.
    #[must_use]
    pub fn with_history_bytes(history_bytes: usize) -> KvStore {
        KvStore { history: History::new(history_bytes), ..KvStore::default() }
    }

    /// The value of `key`, read locally (not linearizable on its own).
    #[must_use]
    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.entries.get(key).map(|entry| entry.value.as_slice())
    }

    /// How many keys are set.
    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True if no key is set.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The revision of the last command applied (0: none).
    #[must_use]
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// Every lease with its TTL and the keep-alives applied to it: what the shard's leader
    /// times expiries by.
    pub fn leases(&self) -> impl Iterator<Item = LeaseInfo> + '_ {
        self.leases.iter().map(|(&id, lease)| LeaseInfo {
            id,
            ttl_ms: lease.ttl_ms,
            keys: lease.keys.len() as u64,
            locks: lease.locks.len() as u64,
            refreshes: lease.refreshes,
        })
    }

    /// Writes `key` at `revision`; returns the entry it replaced.
    fn put(&mut self, key: &[u8], value: &[u8], lease: u64, revision: u64) -> Option<Entry> {
        let previous = match self.entries.get_mut(key) {
            Some(held) => {
                let entry = Entry::put(Some(held), value, revision, lease);
                Some(std::mem::replace(held, entry))
            }
            None => {
                self.entries
                    .insert(Bytes24::from_slice(key), Entry::put(None, value, revision, lease));
                self.ordered.insert(Bytes24::from_slice(key));
                None
            }
        };
        let before = previous.as_ref().map_or(0, |entry| entry.lease);
        if before != lease {
            self.unbind(before, key);
            if let Some(lease) = self.leases.get_mut(&lease) {
                lease.keys.insert(Bytes24::from_slice(key));
            }
        }
        self.history.push(Event {
            revision,
            kind: ChangeKind::Put,
            key: Bytes24::from_slice(key),
            value: Bytes24::from_slice(value),
            previous: previous.clone(),
        });
        previous
    }

    /// Deletes `key` at `revision`; returns the entry it held.
    fn delete(&mut self, key: &[u8], revision: u64) -> Option<Entry> {
        let previous = self.entries.remove(key)?;
        self.ordered.remove(key);
        self.unbind(previous.lease, key);
        self.history.push(Event {
            revision,
            kind: ChangeKind::Delete,
            key: Bytes24::from_slice(key),
            value: Bytes24::new(),
            previous: Some(previous.clone()),
        });
        Some(previous)
    }

    /// Deletes every key of `range` at `revision`; returns how many.
    fn delete_range(&mut self, range: &KeyRange, revision: u64) -> u64 {
        let keys: Vec<Bytes24> = self.keys_in(range).cloned().collect();
        for key in &keys {
            self.delete(key, revision);
        }
        keys.len() as u64
    }

    fn unbind(&mut self, lease: u64, key: &[u8]) {
        if let Some(lease) = self.leases.get_mut(&lease) {
            lease.keys.remove(key);
        }
    }

    /// The keys of `range` held now, in order.
    fn keys_in<'a>(&'a self, range: &'a KeyRange) -> Box<dyn Iterator<Item = &'a Bytes24> + 'a> {
        match range {
            KeyRange::Key(key) => {
                Box::new(self.entries.get_key_value(key.as_slice()).map(|(k, _)| k).into_iter())
            }
            _ => Box::new(
                self.ordered
                    .range::<[u8], _>((
                        std::ops::Bound::Included(range.start()),
                        std::ops::Bound::Unbounded,
                    ))
                    .take_while(move |key| range.contains(key)),
            ),
        }
    }

    /// The keys of `range` at `revision` (0: now), at most `limit` (0: the most).
    fn range(
        &self,
        range: &KeyRange,
        limit: u32,
        revision: u64,
        keys_only: bool,
    ) -> Result<RangeReply, CoordError> {
        let limit = if limit == 0 { RANGE_LIMIT_MAX } else { limit.min(RANGE_LIMIT_MAX) } as usize;
        if revision == 0 || revision >= self.revision {
            // Nothing this shard applied lies past the revision: the state as it is.
            let mut entries = Vec::new();
            let mut more = false;
            for key in self.keys_in(range) {
                if entries.len() == limit {
                    more = true;
                    break;
                }
                entries.push(self.entries[key].key_value(key, keys_only));
            }
            return Ok(RangeReply { entries, more, revision: revision.max(self.revision) });
        }
        if revision < self.history.compacted() {
            return Err(CoordError::Compacted {
                requested: revision,
                oldest: self.history.compacted(),
            });
        }
        // Undo, newest first, every change to the range after `revision`: the last one undone
        // for a key leaves what it held then.
        let mut then: BTreeMap<&[u8], Option<&Entry>> = BTreeMap::new();
        for event in self.history.after(revision).filter(|event| range.contains(&event.key)) {
            then.insert(&event.key, event.previous.as_ref());
        }
        for key in self.keys_in(range) {
            then.entry(key).or_insert_with(|| self.entries.get(key.as_slice()));
        }
        let mut held = then.into_iter().filter_map(|(key, entry)| Some((key, entry?)));
        let entries: Vec<KeyValue> =
            held.by_ref().take(limit).map(|(key, entry)| entry.key_value(key, keys_only)).collect();
        Ok(RangeReply { entries, more: held.next().is_some(), revision })
    }

    fn changes(&self, range: &KeyRange, from: u64, limit: u32, locks: bool) -> CoordReply {
        let from = from.max(1);
        if from <= self.history.compacted() {
            return CoordReply::Refused(CoordError::Compacted {
                requested: from,
                oldest: self.history.compacted() + 1,
            });
        }
        let limit =
            if limit == 0 { CHANGES_LIMIT_MAX } else { limit.min(CHANGES_LIMIT_MAX) } as usize;
        CoordReply::Changes(self.history.changes(range, from, limit, locks, self.revision))
    }

    /// Ends lease `id` at `revision`: deletes its keys, releases its locks.
    fn end_lease(&mut self, id: u64, revision: u64) -> CoordReply {
        let Some(lease) = self.leases.remove(&id) else {
            return CoordReply::Refused(CoordError::LeaseNotFound { id });
        };
        for key in &lease.keys {
            self.delete(key, revision);
        }
        for name in &lease.locks {
            self.unlock(name, id, revision);
        }
        CoordReply::Revoked { revision, keys: lease.keys.len() as u64 }
    }

    /// The leader's expiry of lease `id`, which saw `refreshes` keep-alives: refused if another
    /// was applied since.
    fn expire_lease(&mut self, id: u64, refreshes: u64, revision: u64) -> CoordReply {
        if self.leases.get(&id).is_some_and(|lease| lease.refreshes != refreshes) {
            return CoordReply::Refused(CoordError::LeaseRefreshed { id });
        }
        match self.end_lease(id, revision) {
            CoordReply::Revoked { revision, keys } => CoordReply::Expired { id, revision, keys },
            other => other,
        }
    }

    fn lock(&mut self, name: &[u8], lease: u64, value: &[u8], revision: u64) -> CoordReply {
        let Some(held_by) = self.leases.get_mut(&lease) else {
            return CoordReply::Refused(CoordError::LeaseNotFound { id: lease });
        };
        held_by.locks.insert(Bytes24::from_slice(name));
        let (holder, held, ahead) = self.locks.lock(name, lease, value, revision);
        if held && holder.token == revision {
            self.lock_event(name, Some(&holder), revision);
        }
        CoordReply::Lock { holder, held, ahead }
    }

    /// `lease` lets go of lock `name` (or leaves its line); true if it held or waited.
    fn unlock(&mut self, name: &[u8], lease: u64, revision: u64) -> bool {
        if let Some(held_by) = self.leases.get_mut(&lease) {
            held_by.locks.remove(name);
        }
        match self.locks.release(name, lease, revision) {
            Released::Nothing => false,
            Released::LeftLine => true,
            Released::Handed(next) => {
                self.lock_event(name, next.as_ref(), revision);
                true
            }
        }
    }

    fn lock_event(&mut self, name: &[u8], holder: Option<&Holder>, revision: u64) {
        let (kind, value) = match holder {
            Some(holder) => (
                ChangeKind::Locked { lease: holder.lease, token: holder.token },
                Bytes24::from_slice(&holder.value),
            ),
            None => (ChangeKind::Unlocked, Bytes24::new()),
        };
        self.history.push(Event {
            revision,
            kind,
            key: Bytes24::from_slice(name),
            value,
            previous: None,
        });
    }

    fn holds(&self, compare: &Compare) -> bool {
        use std::cmp::Ordering;
        let (key, op, target) = match compare {
            Compare::LockHeld { name, token } => {
                return self.locks.holder(name).is_some_and(|holder| holder.token == *token);
            }
            Compare::Key { key, op, target } => (key, op, target),
        };
        let entry = self.entries.get(key.as_slice());
        let field = |field: fn(&Entry) -> u64| entry.map_or(0, field);
        let ordering = match target {
            Target::Value(expected) => {
                entry.map(|entry| entry.value.as_slice()).cmp(&expected.as_deref())
            }
            Target::Version(version) => field(|entry| entry.version).cmp(version),
            Target::CreateRevision(revision) => field(|entry| entry.create).cmp(revision),
            Target::ModRevision(revision) => field(|entry| entry.modified).cmp(revision),
            Target::Lease(lease) => field(|entry| entry.lease).cmp(lease),
        };
        match op {
            CompareOp::Equal => ordering == Ordering::Equal,
            CompareOp::NotEqual => ordering != Ordering::Equal,
            CompareOp::Less => ordering == Ordering::Less,
            CompareOp::Greater => ordering == Ordering::Greater,
        }
    }

    fn txn(&mut self, txn: &Txn, revision: u64) -> CoordReply {
        let succeeded = txn.compares.iter().all(|compare| self.holds(compare));
        let ops = if succeeded { &txn.success } else { &txn.failure };
        // Refused whole before anything is written: a put by a lease that does not exist.
        for op in ops {
            if let TxnOp::Put { lease, .. } = op
                && *lease != 0
                && !self.leases.contains_key(lease)
            {
                return CoordReply::Refused(CoordError::LeaseNotFound { id: *lease });
            }
        }
        let mut results = Vec::with_capacity(ops.len());
        for op in ops {
            results.push(match op {
                TxnOp::Put { key, value, lease } => TxnResult::Put(
                    self.put(key, value, *lease, revision).map(|entry| entry.key_value(key, false)),
                ),
                TxnOp::Delete(range) => TxnResult::Deleted(self.delete_range(range, revision)),
                TxnOp::Range { range, limit } => match self.range(range, *limit, 0, false) {
                    Ok(reply) => TxnResult::Range(reply),
                    Err(_) => unreachable!("a read of the present is never compacted"),
                },
            });
        }
        CoordReply::Txn { succeeded, revision, results }
    }

    /// Applies a coordination command at `revision`.
    fn apply_coord(&mut self, command: &CoordCommand, revision: u64) -> CoordReply {
        if let Err(error) = command.check() {
            return CoordReply::Refused(error);
        }
        match command {
            CoordCommand::Put { key, value, lease } => {
                if *lease != 0 && !self.leases.contains_key(lease) {
                    return CoordReply::Refused(CoordError::LeaseNotFound { id: *lease });
                }
                let previous = self.put(key, value, *lease, revision);
                CoordReply::Put {
                    revision,
                    previous: previous.map(|entry| entry.key_value(key, false)),
                }
            }
            CoordCommand::Delete(range) => {
                CoordReply::Deleted { revision, count: self.delete_range(range, revision) }
            }
            CoordCommand::Txn(txn) => self.txn(txn, revision),
            CoordCommand::LeaseGrant { id, ttl_ms } => {
                if *id == 0 {
                    return CoordReply::Refused(CoordError::ZeroLease);
                }
                if self.leases.contains_key(id) {
                    return CoordReply::Refused(CoordError::LeaseExists { id: *id });
                }
                self.leases.insert(*id, Lease { ttl_ms: *ttl_ms, ..Lease::default() });
                CoordReply::Lease { id: *id, ttl_ms: *ttl_ms }
            }
            CoordCommand::LeaseKeepAlive { id } => match self.leases.get_mut(id) {
                Some(lease) => {
                    lease.refreshes += 1;
                    CoordReply::Lease { id: *id, ttl_ms: lease.ttl_ms }
                }
                None => CoordReply::Refused(CoordError::LeaseNotFound { id: *id }),
            },
            CoordCommand::LeaseRevoke { id } => self.end_lease(*id, revision),
            CoordCommand::LeaseExpire { id, refreshes } => {
                self.expire_lease(*id, *refreshes, revision)
            }
            CoordCommand::Lock { name, lease, value } => self.lock(name, *lease, value, revision),
            CoordCommand::Unlock { name, lease } => {
                CoordReply::Unlocked(self.unlock(name, *lease, revision))
            }
            CoordCommand::Proclaim { name, token, value } => match self.locks.holder_mut(name) {
                Some(holder) if holder.token == *token => {
                    holder.value = value.clone();
                    self.history.push(Event {
                        revision,
                        kind: ChangeKind::Proclaimed,
                        key: Bytes24::from_slice(name),
                        value: Bytes24::from_slice(value),
                        previous: None,
                    });
                    CoordReply::Proclaimed { revision }
                }
                _ => CoordReply::Refused(CoordError::NotHolder { token: *token }),
            },
            CoordCommand::Range { .. }
            | CoordCommand::Changes { .. }
            | CoordCommand::ChangesWait { .. }
            | CoordCommand::LeaseList
            | CoordCommand::LockHolder { .. } => self.read_coord(command),
        }
    }

    /// Answers a coordination read.
    fn read_coord(&self, command: &CoordCommand) -> CoordReply {
        if let Err(error) = command.check() {
            return CoordReply::Refused(error);
        }
        match command {
            CoordCommand::Range { range, limit, revision, keys_only } => {
                match self.range(range, *limit, *revision, *keys_only) {
                    Ok(reply) => CoordReply::Range(reply),
                    Err(error) => CoordReply::Refused(error),
                }
            }
            CoordCommand::Changes { range, from, limit, locks }
            | CoordCommand::ChangesWait { range, from, limit, locks, .. } => {
                self.changes(range, *from, *limit, *locks)
            }
            CoordCommand::LeaseList => CoordReply::Leases(self.leases().collect()),
            CoordCommand::LockHolder { name } => {
                CoordReply::Holder(self.locks.holder(name).cloned())
            }
            _ => CoordReply::Refused(CoordError::NotARead),
        }
    }

    fn apply_kv(&mut self, command: KvCommandRef<'_>, revision: u64) -> KvReply {
        match command {
            KvCommandRef::Get { key } => {
                KvReply::Value(self.entries.get(key).map(|entry| entry.value.to_vec()))
            }
            KvCommandRef::Put { key, value } => {
                self.put(key, value, 0, revision);
                KvReply::Done
            }
            KvCommandRef::Delete { key } => {
                self.delete(key, revision);
                KvReply::Done
            }
            KvCommandRef::CompareAndSet { key, expected, new } => {
                let previous = self.entries.get(key).map(|entry| entry.value.to_vec());
                let succeeded = previous.as_deref() == expected;
                if succeeded {
                    self.put(key, new, 0, revision);
                }
                KvReply::CompareAndSet { succeeded, previous }
            }
            KvCommandRef::Append { .. } => KvReply::Done,
        }
    }
}

impl StateMachine for KvStore {
    type Reply = KvReply;

    /// A get or a coordination read; any other command sent as a query is refused and
    /// changes nothing.
    fn query(&self, request: &[u8]) -> KvReply {
        if request.first() == Some(&COORD_TAG) {
            return KvReply::Coord(match CoordCommand::decode(request) {
                Some(command) => self.read_coord(&command),
                None => CoordReply::Refused(CoordError::Malformed),
            });
        }
        match KvCommandRef::decode(request) {
            Some(KvCommandRef::Get { key }) => {
                KvReply::Value(self.entries.get(key).map(|entry| entry.value.to_vec()))
            }
            _ => KvReply::Invalid,
        }
    }

    /// A [`CoordCommand::ChangesWait`] that found no change waits on its range's keys.
    fn query_wait(&self, request: &[u8], reply: &KvReply) -> Option<QueryWait> {
        let KvReply::Coord(CoordReply::Changes(found)) = reply else { return None };
        if !found.changes.is_empty() || found.more || request.first() != Some(&COORD_TAG) {
            return None;
        }
        let Some(CoordCommand::ChangesWait { range, wait_ms, .. }) = CoordCommand::decode(request)
        else {
            return None;
        };
        if wait_ms == 0 {
            return None;
        }
        let on = match range {
            KeyRange::Key(key) => WaitOn::Key(key),
            KeyRange::Prefix(prefix) => WaitOn::Prefix(prefix),
            KeyRange::Span { .. } => WaitOn::Any,
        };
        Some(QueryWait { on, wait_ms: u64::from(wait_ms.min(coord::CHANGES_WAIT_MS_MAX)) })
    }

    fn wait_refused(&self, _request: &[u8]) -> Option<KvReply> {
        Some(KvReply::Coord(CoordReply::Refused(CoordError::TooManyWatches {
            max: coord::WATCHES_WAITING_MAX as u64,
        })))
    }

    fn change_mark(&self) -> u64 {
        self.revision
    }

    /// Keys and lock names alike (a lock watch waits on its name).
    fn changed_since(&self, mark: u64, visit: &mut dyn FnMut(&[u8])) -> bool {
        let Some(events) = self.history.since(mark) else { return false };
        for event in events {
            visit(&event.key);
        }
        true
    }

    /// Applied outside a replica (a test, a tool): each command one revision past the last.
    fn apply(&mut self, command: &[u8]) -> KvReply {
        self.apply_at(self.revision + 1, command)
    }

    fn apply_at(&mut self, revision: u64, command: &[u8]) -> KvReply {
        self.revision = self.revision.max(revision);
        if command.first() == Some(&COORD_TAG) {
            return KvReply::Coord(match CoordCommand::decode(command) {
                Some(command) => self.apply_coord(&command, revision),
                None => CoordReply::Refused(CoordError::Malformed),
            });
        }
        match KvCommandRef::decode(command) {
            None => KvReply::Invalid,
            Some(command) => self.apply_kv(command, revision),
        }
    }

    /// Coordination writes: their revisions follow real time across shards.
    fn orders_across_shards(reply: &KvReply) -> bool {
        matches!(reply, KvReply::Coord(_))
    }

    fn encode_reply(reply: &KvReply, out: &mut Vec<u8>) {
        reply.encode(out);
    }

    fn decode_reply(bytes: &[u8]) -> Option<KvReply> {
        KvReply::decode(bytes)
    }

    fn reply_size_bytes(reply: &KvReply) -> usize {
        // A tag byte, then each field with its 4-byte length (`KvReply::encode`).
        match reply {
            KvReply::Done | KvReply::Value(None) | KvReply::Invalid => 1,
            KvReply::Value(Some(value)) => 1 + 4 + value.len(),
            KvReply::CompareAndSet { previous: None, .. } => 3,
            KvReply::CompareAndSet { previous: Some(previous), .. } => 3 + 4 + previous.len(),
            KvReply::Coord(_) => {
                let mut encoded = Vec::new();
                reply.encode(&mut encoded);
                encoded.len()
            }
        }
    }

    /// One per lease: its TTL, restarted by each keep-alive.
    fn timers(&self, out: &mut Vec<super::Timer>) {
        out.extend(self.leases.iter().map(|(&id, lease)| super::Timer {
            id,
            generation: lease.refreshes,
            ttl_ms: lease.ttl_ms,
        }));
    }

    fn timer_command(&self, timer: &super::Timer) -> Vec<u8> {
        CoordCommand::LeaseExpire { id: timer.id, refreshes: timer.generation }.encode()
    }

    fn snapshot(&self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        image::write(self, out)
    }

    fn restore(image: &mut dyn std::io::Read) -> Result<KvStore, SnapshotError> {
        image::read(image)
    }

    fn summary(&self) -> StateSummary {
        // Order-independent: the sum of one hash per entry, lease and lock.
        let mut digest = self.entries.iter().fold(0u64, |sum, (key, entry)| {
            let mut hasher = xxhash_rust::xxh3::Xxh3::new();
            hasher.update(&(key.len() as u64).to_le_bytes());
            hasher.update(key);
            entry.hash_into(&mut hasher);
            sum.wrapping_add(hasher.digest())
        });
        for (id, lease) in &self.leases {
            let mut hasher = xxhash_rust::xxh3::Xxh3::new();
            hasher.update(b"lease");
            for field in [*id, lease.ttl_ms, lease.refreshes] {
                hasher.update(&field.to_le_bytes());
            }
            digest = digest.wrapping_add(hasher.digest());
        }
        for (name, lock) in &self.locks.by_name {
            let mut hasher = xxhash_rust::xxh3::Xxh3::new();
            hasher.update(b"lock");
            hasher.update(name);
            hasher.update(&postcard::to_allocvec(lock).unwrap_or_default());
            digest = digest.wrapping_add(hasher.digest());
        }
        StateSummary { entries: self.entries.len() as u64, digest }
    }
}

#[cfg(test)]
mod tests;
