//! The store's recent changes, in revision order: what a watch reads from a past revision, and
//! what a read at a past revision undoes. Bounded in bytes; the oldest go first (compaction).
//! Indexed by key as well: a key's watch reads its key's events, not every key's (1,000
//! watchers of a key each, at 10,000 puts a second, otherwise scan ten million events a
//! second between them).

use std::collections::{HashMap, VecDeque};

use super::Bytes24;
use super::coord::{Change, ChangeKind, ChangesReply, KeyRange};
use super::entry::Entry;

/// The bytes of history a store keeps by default (per shard): at 100-byte writes about
/// 300,000 changes; at the coordination rates of a few thousand writes a second, minutes.
pub const HISTORY_BYTES_DEFAULT: usize = 64 << 20;

/// What the key index takes per change it numbers, and per key it holds (the map's entry and
/// the numbers' own allocation): counted in the bound, so that `--history-mib` bounds the
/// history with its index. Estimates from the types' sizes; the same on every replica.
const INDEX_BYTES_PER_CHANGE: usize = 16;
const INDEX_BYTES_PER_KEY: usize = 128;

/// One change, with what it replaced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Event {
    pub(super) revision: u64,
    pub(super) kind: ChangeKind,
    pub(super) key: Bytes24,
    /// A put's value, or a lock holder's.
    pub(super) value: Bytes24,
    /// For a key's change: the entry before it (`None`: absent). Locks keep none.
    pub(super) previous: Option<Entry>,
}

impl Event {
    /// What the event takes in memory: itself, and what its key and values hold on the heap
    /// (a [`Bytes24`] of more than 24 bytes).
    fn bytes(&self) -> usize {
        let heap = |bytes: &Bytes24| if bytes.spilled() { bytes.capacity() } else { 0 };
        std::mem::size_of::<Event>()
            + heap(&self.key)
            + heap(&self.value)
            + self.previous.as_ref().map_or(0, |entry| heap(&entry.value))
    }

    /// A lock or election's change, not a key's.
    pub(super) fn is_lock(&self) -> bool {
        matches!(
            self.kind,
            ChangeKind::Locked { .. } | ChangeKind::Unlocked | ChangeKind::Proclaimed
        )
    }
}

/// The recent changes.
#[derive(Clone, Debug)]
pub(super) struct History {
    events: VecDeque<Event>,
    bytes: usize,
    bytes_max: usize,
    /// The newest revision dropped (0: none): reads at it and after, and watches from the one
    /// after it, have every change they need.
    compacted: u64,
    /// Events dropped so far: event `i` of `events` is number `dropped + i`.
    dropped: u64,
    /// The numbers of each key's (or lock name's) events, oldest first.
    by_key: HashMap<Bytes24, VecDeque<u64>, foldhash::fast::RandomState>,
}

/// The changes and the bounds, not the bookkeeping derived from them (a restored history
/// numbers its events from 0).
impl PartialEq for History {
    fn eq(&self, other: &History) -> bool {
        (self.events == other.events)
            && (self.bytes, self.bytes_max, self.compacted)
                == (other.bytes, other.bytes_max, other.compacted)
    }
}

impl Eq for History {}

impl Default for History {
    fn default() -> History {
        History::new(HISTORY_BYTES_DEFAULT)
    }
}

impl History {
    pub(super) fn new(bytes_max: usize) -> History {
        History {
            events: VecDeque::new(),
            bytes: 0,
            bytes_max,
            compacted: 0,
            dropped: 0,
            by_key: HashMap::default(),
        }
    }

    pub(super) fn bytes_max(&self) -> usize {
        self.bytes_max
    }

    pub(super) fn compacted(&self) -> u64 {
        self.compacted
    }

    /// The newest whole revisions of at most `bytes_max` bytes, oldest first, and the
    /// compaction mark that goes with them (every change after it is among them). The same
    /// for every replica that holds at least those changes, however much more it holds.
    pub(super) fn newest(&self, bytes_max: usize) -> (u64, Vec<&Event>) {
        let mut first = self.events.len();
        let mut bytes = 0;
        while first > 0 {
            let revision = self.events[first - 1].revision;
            let mut start = first;
            let mut taken = bytes;
            while start > 0 && self.events[start - 1].revision == revision {
                taken += self.events[start - 1].bytes();
                start -= 1;
            }
            if taken > bytes_max {
                break;
            }
            (first, bytes) = (start, taken);
        }
        let compacted = match self.events.get(first) {
            Some(event) if first > 0 => event.revision - 1,
            _ if first == self.events.len() && first > 0 => self.events[first - 1].revision,
            _ => self.compacted,
        };
        (compacted, self.events.range(first..).collect())
    }

    /// Records a change; drops the oldest whole revisions past the bound.
    pub(super) fn push(&mut self, event: Event) {
        debug_assert!(self.events.back().is_none_or(|last| last.revision <= event.revision));
        self.bytes += event.bytes() + INDEX_BYTES_PER_CHANGE;
        let number = self.dropped + self.events.len() as u64;
        let numbers = self.by_key.entry(event.key.clone()).or_insert_with(|| {
            self.bytes += INDEX_BYTES_PER_KEY;
            VecDeque::new()
        });
        numbers.push_back(number);
        self.events.push_back(event);
        while self.bytes > self.bytes_max {
            let Some(oldest) = self.events.front().map(|event| event.revision) else { break };
            // A whole revision at a time: a watch never sees half of a command.
            while self.events.front().is_some_and(|event| event.revision == oldest) {
                let Some(dropped) = self.events.pop_front() else { break };
                self.bytes -= dropped.bytes() + INDEX_BYTES_PER_CHANGE;
                self.forget(&dropped.key);
            }
            self.compacted = oldest;
        }
    }

    /// Drops the oldest event, of `key`, from the key index.
    fn forget(&mut self, key: &Bytes24) {
        self.dropped += 1;
        if let Some(numbers) = self.by_key.get_mut(key) {
            numbers.pop_front();
            if numbers.is_empty() {
                self.by_key.remove(key);
                self.bytes -= INDEX_BYTES_PER_KEY;
            }
        }
    }

    /// Puts back an image's bookkeeping ([`History::push`] then brings in its events).
    pub(super) fn restored(bytes_max: usize, compacted: u64) -> History {
        History { compacted, ..History::new(bytes_max) }
    }

    /// The key events after `revision`, newest first: what a read at `revision` undoes.
    pub(super) fn after(&self, revision: u64) -> impl Iterator<Item = &Event> {
        let first = self.events.partition_point(|event| event.revision <= revision);
        self.events.range(first..).rev().filter(|event| !event.is_lock())
    }

    /// Every event after `revision`, keys' and locks', oldest first; `None` if some of them
    /// were dropped (compacted).
    pub(super) fn since(&self, revision: u64) -> Option<impl Iterator<Item = &Event>> {
        if revision < self.compacted {
            return None;
        }
        let first = self.events.partition_point(|event| event.revision <= revision);
        Some(self.events.range(first..))
    }

    /// The changes of `range` (keys, or with `locks` lock names) from revision `from` on, at
    /// most about `limit` (whole revisions); `newest` is the store's latest revision.
    pub(super) fn changes(
        &self,
        range: &KeyRange,
        from: u64,
        limit: usize,
        locks: bool,
        newest: u64,
    ) -> ChangesReply {
        let first = self.events.partition_point(|event| event.revision < from);
        let mut changes: Vec<Change> = Vec::new();
        let mut through = newest.max(from.saturating_sub(1));
        let mut more = false;
        for event in self.candidates(range, first) {
            if changes.len() >= limit
                && changes.last().is_some_and(|c| c.revision != event.revision)
            {
                // Every event before this one was looked at.
                through = event.revision - 1;
                more = true;
                break;
            }
            if event.is_lock() == locks && range.contains(&event.key) {
                changes.push(Change {
                    revision: event.revision,
                    kind: event.kind,
                    key: event.key.to_vec(),
                    value: event.value.to_vec(),
                });
            }
        }
        ChangesReply { changes, through, more }
    }

    /// The events from `first` on that may be of `range`, oldest first: a key's own, through
    /// the index; for a prefix or a span, all of them. (An event skipped is one `changes`
    /// would not take; where it stops for `limit` is a later revision, no less complete.)
    fn candidates<'a>(
        &'a self,
        range: &KeyRange,
        first: usize,
    ) -> Box<dyn Iterator<Item = &'a Event> + 'a> {
        let KeyRange::Key(key) = range else { return Box::new(self.events.range(first..)) };
        let Some(numbers) = self.by_key.get(key.as_slice()) else {
            return Box::new(std::iter::empty());
        };
        let from = self.dropped + first as u64;
        let start = numbers.partition_point(|&number| number < from);
        let dropped = self.dropped;
        Box::new(
            numbers.range(start..).map(move |&number| &self.events[(number - dropped) as usize]),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(revision: u64, key: &str, lock: bool) -> Event {
        let kind = if lock { ChangeKind::Unlocked } else { ChangeKind::Put };
        let value = Bytes24::from_slice(&revision.to_le_bytes());
        Event { revision, kind, key: Bytes24::from_slice(key.as_bytes()), value, previous: None }
    }

    /// What `changes` gives for a key without the index: every event looked at.
    fn scanned(history: &History, key: &str, from: u64, locks: bool) -> Vec<Change> {
        let range = KeyRange::Key(key.as_bytes().to_vec());
        let events = history.events.iter().filter(|event| event.revision >= from);
        events
            .filter(|event| event.is_lock() == locks && range.contains(&event.key))
            .map(|event| Change {
                revision: event.revision,
                kind: event.kind,
                key: event.key.to_vec(),
                value: event.value.to_vec(),
            })
            .collect()
    }

    /// Through compaction, the index finds exactly the events a scan finds, and a limit
    /// stops at a revision before the next of the key's events.
    #[test]
    fn a_keys_changes_through_the_index_are_those_a_scan_finds() {
        // Small enough that the oldest events go while the test pushes.
        let mut history = History::new(40 * std::mem::size_of::<Event>());
        let keys = ["a", "b", "c", "lock"];
        let mut revision = 0;
        for step in 0..500u64 {
            revision += 1 + step % 2;
            // Two events of one revision now and then (a command that changes two keys).
            for key in
                keys.iter().cycle().skip((step * 7 % 5) as usize).take(1 + (step % 3 == 0) as usize)
            {
                history.push(event(revision, key, *key == "lock"));
            }
            let from = history.compacted() + 1 + step % 7;
            for key in keys {
                let locks = key == "lock";
                let range = KeyRange::Key(key.as_bytes().to_vec());
                let all = history.changes(&range, from, usize::MAX, locks, revision);
                assert_eq!(
                    all.changes,
                    scanned(&history, key, from, locks),
                    "step {step} key {key}"
                );
                assert!(!all.more);
                let some = history.changes(&range, from, 2, locks, revision);
                assert_eq!(some.changes[..], all.changes[..some.changes.len()]);
                if some.more {
                    let next = &all.changes[some.changes.len()];
                    assert_eq!(some.through, next.revision - 1, "step {step} key {key}");
                }
            }
        }
        assert!(history.compacted() > 0, "the test compacted");
        let indexed: usize = history.by_key.values().map(VecDeque::len).sum();
        assert_eq!(indexed, history.events.len(), "every event kept is indexed once");
    }
}
