//! `SCAN`, `KEYS` and `DBSIZE` (docs/redis.md, "Scans") as range reads of the store, each at
//! one revision across the shards.
//!
//! Only patterns a range can serve are taken: a literal prefix and then `*` (`user:*`), `*`
//! alone, or a literal key; any other glob is refused with an error saying so, rather than
//! filtered here from a read of every key.
//!
//! A `SCAN` cursor names the key to continue from. Clients read the cursor as a number
//! (redis-py's `int()`, redis-cli's `strtoull`), so the node keeps the continuation keys in a
//! table shared by its connections ([`Cursors`], at most [`CURSORS_MAX`], the oldest forgotten
//! first) and hands out their numbers. A cursor is good on the node that gave it. Each call
//! reads at the present revision from its continuation key on, so a key present for the
//! whole scan is returned exactly once, as Redis promises.

use std::collections::BTreeMap;
use std::sync::Mutex;

use bytes::Bytes;

use super::reply::{Reply, failure};
use crate::client::RangeOptions;
use crate::front::{Gateway, RequestError};
use crate::machine::kv::KeyRange;

/// Continuation keys a node keeps for `SCAN` cursors at most.
pub const CURSORS_MAX: usize = 4096;

/// Keys `KEYS` and `DBSIZE` read at most; past it they refuse (use `SCAN`).
const KEYS_MAX: usize = 1_000_000;

/// The node's open `SCAN` cursors: each number's continuation key.
#[derive(Debug, Default)]
pub struct Cursors {
    next: u64,
    open: BTreeMap<u64, Vec<u8>>,
}

impl Cursors {
    /// A new cursor continuing from `key`.
    fn open(&mut self, key: Vec<u8>) -> u64 {
        self.next += 1;
        let cursor = self.next;
        self.open.insert(cursor, key);
        while self.open.len() > CURSORS_MAX {
            self.open.pop_first();
        }
        cursor
    }
}

/// The keys `pattern` matches, as a range; an error for a glob that is not a prefix.
///
/// # Errors
/// The reply for a pattern with `?`, `[` or a `*` before its end.
pub fn range_of(pattern: &[u8]) -> Result<KeyRange, Reply> {
    let mut literal = Vec::with_capacity(pattern.len());
    let mut bytes = pattern.iter();
    while let Some(&byte) = bytes.next() {
        match byte {
            b'\\' => literal.push(*bytes.next().unwrap_or(&b'\\')),
            b'*' if bytes.len() == 0 => return Ok(KeyRange::Prefix(literal)),
            b'*' | b'?' | b'[' => {
                return Err(Reply::error(format!(
                    "ERR Quorum serves only prefix patterns (a literal prefix then *, * alone, or a \
                     literal key): '{}' is not one (docs/redis.md)",
                    String::from_utf8_lossy(pattern)
                )));
            }
            other => literal.push(other),
        }
    }
    Ok(KeyRange::Key(literal))
}

/// The first key after `key`.
fn after(key: &[u8]) -> Vec<u8> {
    let mut next = key.to_vec();
    next.push(0);
    next
}

/// `SCAN cursor [MATCH pattern] [COUNT count]`: the next cursor (0: done) and up to `count`
/// keys.
pub async fn scan(
    gateway: &Gateway,
    cursors: &Mutex<Cursors>,
    cursor: u64,
    pattern: Option<Bytes>,
    count: u32,
) -> Reply {
    let range = match pattern.as_deref().map(range_of).transpose() {
        Ok(range) => range.unwrap_or(KeyRange::Prefix(Vec::new())),
        Err(reply) => return reply,
    };
    let asked = if cursor == 0 {
        range
    } else {
        let from = cursors.lock().ok().and_then(|cursors| cursors.open.get(&cursor).cloned());
        let Some(from) = from else {
            return Reply::error(format!(
                "ERR invalid cursor {cursor}: a Quorum SCAN cursor is good on the node that gave it, \
                 for the last {CURSORS_MAX} cursors it gave (docs/redis.md)"
            ));
        };
        range.from_key(&from)
    };
    let options = RangeOptions { limit: count, keys_only: true, ..RangeOptions::default() };
    let reply = match gateway.range(&asked, options).await {
        Ok(reply) => reply,
        Err(error) => return failure(&error),
    };
    let next = match reply.entries.last() {
        Some(last) if reply.more => {
            cursors.lock().map_or(0, |mut cursors| cursors.open(after(&last.key)))
        }
        _ => 0,
    };
    let keys = reply.entries.into_iter().map(|entry| Reply::Bulk(Bytes::from(entry.key))).collect();
    Reply::Array(vec![Reply::text(next.to_string()), Reply::Array(keys)])
}

/// Every key of `range`, read at one revision (a page at a time, the pages after the first at
/// the first's revision).
async fn all_keys(gateway: &Gateway, range: &KeyRange) -> Result<Vec<Vec<u8>>, Reply> {
    let mut options = RangeOptions { keys_only: true, ..RangeOptions::default() };
    let mut asked = range.clone();
    let mut keys = Vec::new();
    loop {
        let reply =
            gateway.range(&asked, options).await.map_err(|error: RequestError| failure(&error))?;
        options.revision = reply.revision;
        keys.extend(reply.entries.into_iter().map(|entry| entry.key));
        let Some(last) = keys.last().filter(|_| reply.more) else { return Ok(keys) };
        if keys.len() >= KEYS_MAX {
            return Err(Reply::error(format!(
                "ERR more than {KEYS_MAX} keys: Quorum's KEYS and DBSIZE stop there; use SCAN"
            )));
        }
        asked = range.from_key(&after(last));
    }
}

/// `KEYS pattern`.
pub async fn keys(gateway: &Gateway, pattern: &[u8]) -> Reply {
    let keys = match range_of(pattern) {
        Ok(range) => all_keys(gateway, &range).await,
        Err(reply) => Err(reply),
    };
    match keys {
        Ok(keys) => {
            Reply::Array(keys.into_iter().map(|key| Reply::Bulk(Bytes::from(key))).collect())
        }
        Err(reply) => reply,
    }
}

/// `DBSIZE`: every key counted, at one revision.
pub async fn dbsize(gateway: &Gateway) -> Reply {
    match all_keys(gateway, &KeyRange::Prefix(Vec::new())).await {
        Ok(keys) => Reply::Integer(keys.len() as i64),
        Err(reply) => reply,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_prefix_patterns_become_ranges() {
        assert_eq!(range_of(b"pre*"), Ok(KeyRange::Prefix(b"pre".to_vec())));
        assert_eq!(range_of(b"*"), Ok(KeyRange::Prefix(Vec::new())));
        assert_eq!(range_of(b"exact"), Ok(KeyRange::Key(b"exact".to_vec())));
        assert_eq!(range_of(b"a\\*b*"), Ok(KeyRange::Prefix(b"a*b".to_vec())));
        for glob in [&b"a?c"[..], b"*x", b"a*b*", b"[ab]*"] {
            let Err(Reply::Error(text)) = range_of(glob) else { unreachable!("{glob:?}") };
            assert!(text.contains("only prefix patterns"), "{text}");
        }
    }

    #[test]
    fn cursors_are_numbered_and_the_oldest_forgotten() {
        let mut cursors = Cursors::default();
        let first = cursors.open(b"a".to_vec());
        assert_ne!(first, 0);
        for _ in 0..CURSORS_MAX {
            cursors.open(b"b".to_vec());
        }
        assert!(!cursors.open.contains_key(&first));
        assert_eq!(cursors.open.len(), CURSORS_MAX);
    }
}
