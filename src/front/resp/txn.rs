//! Optimistic transactions (docs/redis.md, "Transactions"): `WATCH`, `MULTI`, `EXEC`,
//! `DISCARD`, `UNWATCH`, as store transactions on one shard.
//!
//! `WATCH` reads each key's mod revision (0 if absent), linearizably. `MULTI` queues the
//! commands that can run in a transaction (the data commands on plain values, [`queueable`]).
//! `EXEC` then runs in two store transactions on the keys' shard:
//!
//! 1. a read of every key the queued commands touch, if every watched key still has the mod
//!    revision `WATCH` saw (else `EXEC` answers the null array, as Redis does);
//! 2. the queued commands are run here over those values, in order, giving their replies and
//!    the keys' new values; then one write of those values, if every watched key and every key
//!    read still has the mod revision seen.
//!
//! The second may find a key changed that was read but not watched: that is no reason to fail
//! the `EXEC`, so it runs again from 1, at most [`ROUNDS_MAX`] times. Each reply is what the
//! command gave on the values at the revision the write took effect after, so the queued
//! commands take effect together and in order, as Redis's do.
//!
//! Invariant: every watched and queued key lies on one shard ([`Transaction::shard`]); a key
//! of another is refused when named, with `CROSSSLOT` and the fix (a hash tag).

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;

use super::command::{Command, Condition, stored_integer};
use super::reply::{Reply, failure};
use crate::client::RangeOptions;
use crate::front::{Gateway, RequestError};
use crate::machine::kv::coord::{KeyValue, TXN_OPS_MAX, TxnResult};
use crate::machine::kv::{Compare, CompareOp, KeyRange, Target, Txn, TxnOp};

/// How many times `EXEC` reads and writes again while keys it read (but did not watch) change
/// between its read and its write.
const ROUNDS_MAX: usize = 64;

/// Commands queued in one `MULTI` at most: a bound on what a connection holds.
const QUEUED_MAX: usize = 4096;

/// One connection's transaction state.
#[derive(Debug, Default)]
pub struct Transaction {
    /// Each watched key and its mod revision when watched (0: absent).
    watched: BTreeMap<Bytes, u64>,
    /// The commands queued since `MULTI`; `None` outside one.
    queued: Option<Vec<Command>>,
    /// A command was refused while queuing: `EXEC` answers `EXECABORT`.
    aborted: bool,
    /// The shard of every watched and queued key.
    shard: Option<u16>,
}

/// True for the commands a `MULTI` can queue: reads and writes of plain values. The
/// conditional `SET`s, `SETNX` and the expiry commands are not (a store transaction has one
/// set of compares, not one per command; an expiry needs a lease granted first).
pub fn queueable(command: &Command) -> bool {
    matches!(
        command,
        Command::Get(_)
            | Command::Strlen(_)
            | Command::Exists(_)
            | Command::MGet(_)
            | Command::Set { condition: Condition::Always, get: false, .. }
            | Command::GetSet(..)
            | Command::MSet(_)
            | Command::Del(_)
            | Command::Append(..)
            | Command::IncrBy(..)
    )
}

/// The keys a queueable command touches.
fn keys(command: &Command) -> Vec<&Bytes> {
    match command {
        Command::Get(key)
        | Command::Strlen(key)
        | Command::Set { key, .. }
        | Command::GetSet(key, _)
        | Command::Append(key, _)
        | Command::IncrBy(key, _) => vec![key],
        Command::Exists(keys) | Command::MGet(keys) | Command::Del(keys) => keys.iter().collect(),
        Command::MSet(pairs) => pairs.iter().map(|(key, _)| key).collect(),
        _ => Vec::new(),
    }
}

/// The error for a key on another shard than the transaction's.
fn cross_slot() -> Reply {
    Reply::error(
        "CROSSSLOT Keys in request don't hash to the same slot: a Quorum transaction runs on one \
         shard, so give its keys one hash tag, as {user1}:name and {user1}:mail (docs/redis.md)",
    )
}

impl Transaction {
    /// True between `MULTI` and `EXEC` or `DISCARD`.
    pub fn in_multi(&self) -> bool {
        self.queued.is_some()
    }

    /// Checks that `keys` lie on the transaction's shard (the first keys choose it).
    fn claim<'a>(
        &mut self,
        keys: impl IntoIterator<Item = &'a Bytes>,
        shard_of: impl Fn(&[u8]) -> u16,
    ) -> Result<(), Reply> {
        let mut shard = self.shard;
        for key in keys {
            let of = shard_of(key);
            if *shard.get_or_insert(of) != of {
                return Err(cross_slot());
            }
        }
        self.shard = shard;
        Ok(())
    }

    /// `MULTI`.
    pub fn begin(&mut self) -> Reply {
        if self.in_multi() {
            return Reply::error("ERR MULTI calls can not be nested");
        }
        self.queued = Some(Vec::new());
        self.aborted = false;
        Reply::OK
    }

    /// A command sent inside `MULTI`: queued (`+QUEUED`), or refused, which aborts the `EXEC`.
    pub fn queue(&mut self, command: Command, shard_of: impl Fn(&[u8]) -> u16) -> Reply {
        let refused = if !queueable(&command) {
            Err(Reply::error(format!(
                "ERR Command not allowed inside a transaction: Quorum's MULTI queues GET, SET \
                 (without options), GETSET, MGET, MSET, DEL, EXISTS, STRLEN, APPEND, INCR, DECR, \
                 INCRBY and DECRBY (docs/redis.md); this was {}",
                command_name(&command)
            )))
        } else if self.queued.as_ref().is_some_and(|queued| queued.len() >= QUEUED_MAX) {
            Err(Reply::error(format!("ERR a transaction queues at most {QUEUED_MAX} commands")))
        } else {
            self.claim(keys(&command), shard_of)
        };
        match (refused, &mut self.queued) {
            (Ok(()), Some(queued)) => {
                queued.push(command);
                Reply::Simple("QUEUED")
            }
            (Ok(()), None) => Reply::error("ERR internal: queued outside MULTI"),
            (Err(reply), _) => {
                self.refused();
                reply
            }
        }
    }

    /// A request inside `MULTI` was refused (it could not be parsed, say): `EXEC` will abort.
    pub fn refused(&mut self) {
        if self.in_multi() {
            self.aborted = true;
        }
    }

    /// `DISCARD`.
    pub fn discard(&mut self) -> Reply {
        if !self.in_multi() {
            return Reply::error("ERR DISCARD without MULTI");
        }
        *self = Transaction::default();
        Reply::OK
    }

    /// `UNWATCH` (and what `RESET` does).
    pub fn unwatch(&mut self) -> Reply {
        if !self.in_multi() {
            *self = Transaction::default();
        }
        Reply::OK
    }

    /// `EXEC`: the watched keys and the queued commands, the state cleared; or the reply if
    /// there is nothing to run.
    pub fn take(&mut self) -> Result<(BTreeMap<Bytes, u64>, Vec<Command>), Reply> {
        let Some(queued) = self.queued.take() else {
            return Err(Reply::error("ERR EXEC without MULTI"));
        };
        let aborted = self.aborted;
        let watched = std::mem::take(&mut self.watched);
        *self = Transaction::default();
        if aborted {
            return Err(Reply::error(
                "EXECABORT Transaction discarded because of previous errors.",
            ));
        }
        Ok((watched, queued))
    }
}

/// `WATCH key…`: each key's mod revision read, linearizably (a key watched already keeps the
/// revision it was first watched at, as in Redis).
pub async fn watch(gateway: &Gateway, transaction: &mut Transaction, keys: Vec<Bytes>) -> Reply {
    if transaction.in_multi() {
        return Reply::error("ERR WATCH inside MULTI is not allowed");
    }
    if let Err(reply) = transaction.claim(keys.iter(), |key| gateway.shard_of(key)) {
        return reply;
    }
    if transaction.watched.len() + keys.len() > TXN_OPS_MAX {
        return Reply::error(format!("ERR Quorum watches at most {TXN_OPS_MAX} keys at once"));
    }
    let options = RangeOptions { limit: 1, keys_only: true, ..RangeOptions::default() };
    for key in keys {
        if transaction.watched.contains_key(&key) {
            continue;
        }
        let range = KeyRange::Key(key.to_vec());
        match gateway.range(&range, options).await {
            Ok(reply) => {
                let revision = reply.entries.first().map_or(0, |entry| entry.mod_revision);
                transaction.watched.insert(key, revision);
            }
            Err(error) => return failure(&error),
        }
    }
    Reply::OK
}

/// A compare that `key` still has mod revision `revision` (0: still absent).
fn unchanged(key: &[u8], revision: u64) -> Compare {
    Compare::Key { key: key.to_vec(), op: CompareOp::Equal, target: Target::ModRevision(revision) }
}

/// What `EXEC` reads of a key.
fn read_op(key: &[u8]) -> TxnOp {
    TxnOp::Range { range: KeyRange::Key(key.to_vec()), limit: 1 }
}

/// The keys a transaction's read saw, in the order read: each with its state.
fn entries(
    keys: &BTreeSet<Bytes>,
    results: Vec<TxnResult>,
) -> Result<BTreeMap<Bytes, Option<KeyValue>>, RequestError> {
    if results.len() != keys.len() {
        return Err(RequestError::BadReply(format!(
            "{} results for {} reads",
            results.len(),
            keys.len()
        )));
    }
    let mut read = BTreeMap::new();
    for (key, result) in keys.iter().zip(results) {
        let TxnResult::Range(reply) = result else {
            return Err(RequestError::BadReply(format!("a read answered {result:?}")));
        };
        read.insert(key.clone(), reply.entries.into_iter().next());
    }
    Ok(read)
}

/// `EXEC` of `queued` with `watched`: the array of the commands' replies, or the null array if
/// a watched key changed.
pub async fn exec(gateway: &Gateway, watched: BTreeMap<Bytes, u64>, queued: Vec<Command>) -> Reply {
    let touched: BTreeSet<Bytes> = queued.iter().flat_map(keys).cloned().collect();
    let named = touched.iter().chain(watched.keys()).collect::<BTreeSet<_>>().len();
    if named > TXN_OPS_MAX {
        return Reply::error(format!(
            "ERR the transaction names {named} keys; a Quorum transaction takes at most {TXN_OPS_MAX}"
        ));
    }
    if queued.is_empty() && watched.is_empty() {
        return Reply::Array(Vec::new());
    }
    for _ in 0..ROUNDS_MAX {
        match exec_round(gateway, &watched, &queued, &touched).await {
            Ok(Some(reply)) => return reply,
            Ok(None) => {}
            Err(RequestError::CrossShard(_)) => return cross_slot(),
            Err(error) => return failure(&error),
        }
    }
    Reply::error(format!(
        "TRYAGAIN the transaction's keys changed between its read and its write {ROUNDS_MAX} times in a row"
    ))
}

/// One read and write of `EXEC`; `None` if a key read but not watched changed in between.
async fn exec_round(
    gateway: &Gateway,
    watched: &BTreeMap<Bytes, u64>,
    queued: &[Command],
    touched: &BTreeSet<Bytes>,
) -> Result<Option<Reply>, RequestError> {
    let watched_compares: Vec<Compare> =
        watched.iter().map(|(key, revision)| unchanged(key, *revision)).collect();
    let read = Txn {
        compares: watched_compares.clone(),
        success: touched.iter().map(|key| read_op(key)).collect(),
        failure: Vec::new(),
    };
    let outcome = gateway.txn(&read).await?;
    if !outcome.succeeded {
        return Ok(Some(Reply::NullArray));
    }
    let before = entries(touched, outcome.results)?;
    let mut values: Values = before
        .iter()
        .map(|(key, entry)| (key.clone(), entry.as_ref().map(|entry| entry.value.clone())))
        .collect();
    let mut written = BTreeSet::new();
    let replies: Vec<Reply> =
        queued.iter().map(|command| apply(command, &mut values, &mut written)).collect();
    if written.is_empty() {
        // Nothing to write: the read was the transaction, at one revision.
        return Ok(Some(Reply::Array(replies)));
    }
    let mut expected: BTreeMap<&Bytes, u64> =
        watched.iter().map(|(key, revision)| (key, *revision)).collect();
    for (key, entry) in &before {
        expected.entry(key).or_insert(entry.as_ref().map_or(0, |entry| entry.mod_revision));
    }
    let success = written
        .iter()
        .map(|key| match values.get(key).cloned().flatten() {
            Some(value) => TxnOp::Put { key: key.to_vec(), value, lease: 0 },
            None => TxnOp::Delete(KeyRange::Key(key.to_vec())),
        })
        .collect();
    let write = Txn {
        compares: expected.iter().map(|(key, revision)| unchanged(key, *revision)).collect(),
        success,
        failure: watched.keys().map(|key| read_op(key)).collect(),
    };
    let outcome = gateway.txn(&write).await?;
    if outcome.succeeded {
        return Ok(Some(Reply::Array(replies)));
    }
    let now = entries(&watched.keys().cloned().collect(), outcome.results)?;
    let changed = now.iter().any(|(key, entry)| {
        entry.as_ref().map_or(0, |entry| entry.mod_revision)
            != watched.get(key).copied().unwrap_or(0)
    });
    Ok(changed.then_some(Reply::NullArray))
}

/// The values `EXEC` runs its queued commands over, and the keys they write.
type Values = BTreeMap<Bytes, Option<Vec<u8>>>;

fn value(values: &Values, key: &Bytes) -> Option<Vec<u8>> {
    values.get(key).cloned().flatten()
}

fn set(values: &mut Values, written: &mut BTreeSet<Bytes>, key: &Bytes, new: Option<Vec<u8>>) {
    values.insert(key.clone(), new);
    written.insert(key.clone());
}

/// Runs one queued command over `values` (every key it touches is there), noting the keys it
/// writes; its reply. An error (a value that is not an integer) is that command's reply
/// alone, as in Redis, and it writes nothing.
fn apply(command: &Command, values: &mut Values, written: &mut BTreeSet<Bytes>) -> Reply {
    match command {
        Command::Get(key) => Reply::optional(value(values, key)),
        Command::Strlen(key) => Reply::Integer(value(values, key).map_or(0, |v| v.len() as i64)),
        Command::Exists(keys) => {
            Reply::Integer(keys.iter().filter(|key| value(values, key).is_some()).count() as i64)
        }
        Command::MGet(keys) => {
            Reply::Array(keys.iter().map(|key| Reply::optional(value(values, key))).collect())
        }
        Command::Set { key, value: new, .. } => {
            set(values, written, key, Some(new.to_vec()));
            Reply::OK
        }
        Command::GetSet(key, new) => {
            let before = value(values, key);
            set(values, written, key, Some(new.to_vec()));
            Reply::optional(before)
        }
        Command::MSet(pairs) => {
            for (key, new) in pairs {
                set(values, written, key, Some(new.to_vec()));
            }
            Reply::OK
        }
        Command::Del(keys) => {
            let mut count = 0;
            for key in keys {
                // A key named twice is deleted (and counted) once.
                if value(values, key).is_some() {
                    set(values, written, key, None);
                    count += 1;
                }
            }
            Reply::Integer(count)
        }
        Command::Append(key, suffix) => {
            let mut new = value(values, key).unwrap_or_default();
            new.extend_from_slice(suffix);
            let length = new.len() as i64;
            set(values, written, key, Some(new));
            Reply::Integer(length)
        }
        Command::IncrBy(key, by) => {
            let sum = value(values, key).map_or(Ok(0), |v| stored_integer(&v)).and_then(|n| {
                n.checked_add(*by)
                    .ok_or_else(|| Reply::error("ERR increment or decrement would overflow"))
            });
            match sum {
                Ok(sum) => {
                    set(values, written, key, Some(sum.to_string().into_bytes()));
                    Reply::Integer(sum)
                }
                Err(reply) => reply,
            }
        }
        other => Reply::error(format!(
            "ERR internal: {} cannot run in a transaction",
            command_name(other)
        )),
    }
}

/// A command's name, for errors.
fn command_name(command: &Command) -> String {
    let debug = format!("{command:?}");
    debug.split(['(', ' ', '{']).next().unwrap_or_default().to_ascii_uppercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(commands: &[Command], start: &[(&str, &str)]) -> (Vec<Reply>, BTreeSet<Bytes>) {
        let mut values = Values::new();
        for command in commands {
            for key in keys(command) {
                values.insert(key.clone(), None);
            }
        }
        for (key, value) in start {
            values.insert(Bytes::from(key.to_string()), Some(value.as_bytes().to_vec()));
        }
        let mut written = BTreeSet::new();
        let replies = commands.iter().map(|c| apply(c, &mut values, &mut written)).collect();
        (replies, written)
    }

    #[test]
    fn queued_commands_run_in_order_over_the_values_read() {
        let k = Bytes::from("k");
        let (replies, written) = run(
            &[
                Command::IncrBy(k.clone(), 2),
                Command::Get(k.clone()),
                Command::Append(k.clone(), "x".into()),
                Command::IncrBy(k.clone(), 1),
                Command::Del(vec![k.clone(), k.clone()]),
                Command::Exists(vec![k.clone()]),
            ],
            &[("k", "40")],
        );
        assert_eq!(replies[0], Reply::Integer(42));
        assert_eq!(replies[1], Reply::text("42"));
        assert_eq!(replies[2], Reply::Integer(3));
        assert!(matches!(replies[3], Reply::Error(_)), "{:?}", replies[3]);
        assert_eq!(replies[4], Reply::Integer(1));
        assert_eq!(replies[5], Reply::Integer(0));
        assert_eq!(written.len(), 1);
        let (_, written) = run(&[Command::Get(k.clone()), Command::Del(vec![k])], &[]);
        assert!(written.is_empty());
    }

    #[test]
    fn a_transaction_stays_on_one_shard_and_aborts_after_a_refused_command() {
        let mut transaction = Transaction::default();
        assert_eq!(transaction.take(), Err(Reply::error("ERR EXEC without MULTI")));
        assert_eq!(transaction.begin(), Reply::OK);
        let shard_of = |key: &[u8]| u16::from(key[0] == b'b');
        assert_eq!(transaction.queue(Command::Get("a1".into()), shard_of), Reply::Simple("QUEUED"));
        assert_eq!(transaction.queue(Command::Get("b1".into()), shard_of), cross_slot());
        assert!(
            matches!(transaction.take(), Err(Reply::Error(text)) if text.starts_with("EXECABORT"))
        );
        assert!(!transaction.in_multi());
        transaction.begin();
        let refused = transaction.queue(Command::Ping(None), shard_of);
        assert!(matches!(refused, Reply::Error(text) if text.contains("PING")));
        assert_eq!(transaction.discard(), Reply::OK);
        assert_eq!(transaction.discard(), Reply::error("ERR DISCARD without MULTI"));
    }
}
