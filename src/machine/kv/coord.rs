//! The coordination commands of the key-value store (docs/coordination.md): revisions and
//! ranges, leases, locks with fencing tokens, elections, transactions and the change feed that
//! watches read. Encoded as one tag byte ([`COORD_TAG`]) and a postcard body, beside the
//! hand-encoded put/get of the hot path.

use serde::{Deserialize, Serialize};

/// The tag byte of an encoded [`CoordCommand`] or [`CoordReply`].
pub const COORD_TAG: u8 = 16;

/// The longest key, in bytes.
pub const KEY_BYTES_MAX: usize = 4096;
/// The longest value, in bytes (a batch holds at most `--batch-kib`, 1 MiB by default).
pub const VALUE_BYTES_MAX: usize = 1 << 20;
/// The most compares, and the most operations in each branch, of one transaction.
pub const TXN_OPS_MAX: usize = 128;
/// The most entries one range answer carries (a larger range continues: [`RangeReply::more`]).
pub const RANGE_LIMIT_MAX: u32 = 10_000;
/// The most events one change-feed answer carries (whole revisions: may be exceeded by the
/// events of the last revision it includes).
pub const CHANGES_LIMIT_MAX: u32 = 10_000;
/// The shortest lease, in milliseconds.
pub const LEASE_TTL_MS_MIN: u64 = 1_000;
/// The longest lease, in milliseconds (seven days).
pub const LEASE_TTL_MS_MAX: u64 = 7 * 24 * 3600 * 1000;

/// The revision of every write: its command's place in the merged order of all shards. The
/// high 44 bits are the batch's global position plus one (`slot · shards + shard + 1`), the
/// low 20 bits the command's index in its batch (a batch holds at most 2^20 commands), so
/// revisions grow along the merged order and 0 is never one (it means "now" in a request).
#[must_use]
pub const fn revision_of(position: u64, index: u32) -> u64 {
    ((position + 1) << INDEX_BITS) | (index as u64 & INDEX_MASK)
}

/// The first revision of the batch at global position `position`.
#[must_use]
pub const fn first_revision_at(position: u64) -> u64 {
    revision_of(position, 0)
}

/// The global position a revision's command was committed at.
#[must_use]
pub const fn position_of(revision: u64) -> Option<u64> {
    (revision >> INDEX_BITS).checked_sub(1)
}

const INDEX_BITS: u32 = 20;
const INDEX_MASK: u64 = (1 << INDEX_BITS) - 1;

/// A set of keys: one key, every key with a prefix, or a span `[start, end)` (an empty `end`:
/// to the last key).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyRange {
    /// One key.
    Key(Vec<u8>),
    /// Every key that starts with these bytes (the empty prefix: every key).
    Prefix(Vec<u8>),
    /// Keys from `start` (included) to `end` (excluded; empty: no end).
    Span {
        /// The first key.
        start: Vec<u8>,
        /// The key past the last (empty: no end).
        end: Vec<u8>,
    },
}

impl KeyRange {
    /// True if `key` is in the range.
    #[must_use]
    pub fn contains(&self, key: &[u8]) -> bool {
        match self {
            KeyRange::Key(one) => key == one.as_slice(),
            KeyRange::Prefix(prefix) => key.starts_with(prefix),
            KeyRange::Span { start, end } => {
                key >= start.as_slice() && (end.is_empty() || key < end.as_slice())
            }
        }
    }

    /// The first key the range can hold.
    #[must_use]
    pub fn start(&self) -> &[u8] {
        match self {
            KeyRange::Key(key) | KeyRange::Prefix(key) => key,
            KeyRange::Span { start, .. } => start,
        }
    }

    /// The range from `key` (included) on: what a continuation asks for.
    #[must_use]
    pub fn from_key(&self, key: &[u8]) -> KeyRange {
        match self {
            KeyRange::Key(one) => KeyRange::Key(one.clone()),
            KeyRange::Prefix(prefix) => KeyRange::Span {
                start: key.max(prefix.as_slice()).to_vec(),
                end: prefix_end(prefix),
            },
            KeyRange::Span { start, end } => {
                KeyRange::Span { start: key.max(start.as_slice()).to_vec(), end: end.clone() }
            }
        }
    }

    fn longest_key(&self) -> usize {
        match self {
            KeyRange::Key(key) | KeyRange::Prefix(key) => key.len(),
            KeyRange::Span { start, end } => start.len().max(end.len()),
        }
    }
}

/// The first key past every key with `prefix` (empty: there is none, every key has it).
#[must_use]
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return end;
        }
    }
    Vec::new()
}

/// A key as a range read or a change shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    /// The key.
    pub key: Vec<u8>,
    /// Its value (empty when the read asked for keys only).
    pub value: Vec<u8>,
    /// The revision of the write that created it (since it was last absent).
    pub create_revision: u64,
    /// The revision of its last write.
    pub mod_revision: u64,
    /// Writes since it was created, that one included (1 after its first put).
    pub version: u64,
    /// The lease it lives by (0: none).
    pub lease: u64,
}

/// What a range read answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeReply {
    /// The keys, sorted, at most the limit.
    pub entries: Vec<KeyValue>,
    /// True if keys of the range lie past the last entry (ask again from the key after it).
    pub more: bool,
    /// The revision the answer reflects: every write up to it on this shard, none after.
    pub revision: u64,
}

/// One change, as a watch receives it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// The revision of the write (several changes of one command share it, in order).
    pub revision: u64,
    /// What changed.
    pub kind: ChangeKind,
    /// The key, or the lock or election's name.
    pub key: Vec<u8>,
    /// The new value (a put), or the holder's value (a lock or election taken).
    pub value: Vec<u8>,
}

/// What a [`Change`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChangeKind {
    /// A key was written.
    Put,
    /// A key was deleted (by a delete, a transaction, or its lease's end).
    Delete,
    /// A lock (or election) has a new holder, with this fencing token.
    Locked {
        /// The holder's lease.
        lease: u64,
        /// The holder's fencing token.
        token: u64,
    },
    /// A lock (or election) has no holder now.
    Unlocked,
    /// An election's leader proclaimed a new value.
    Proclaimed,
}

/// What a change-feed read answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangesReply {
    /// The changes in the range from the asked revision on, in revision order.
    pub changes: Vec<Change>,
    /// Every change of the range up to this revision is in `changes` (or there was none):
    /// the next read asks from the revision after it.
    pub through: u64,
    /// True if changes past `through` were left for the next read (the limit).
    pub more: bool,
}

/// A lock or election's holder.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// The lease it holds by.
    pub lease: u64,
    /// Its fencing token: the revision at which it took the lock, so it only grows for a name.
    pub token: u64,
    /// The value it holds with (an election's proclaimed value).
    pub value: Vec<u8>,
}

/// A lease as [`CoordReply::Leases`] lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseInfo {
    /// Its id.
    pub id: u64,
    /// Its time to live, in milliseconds.
    pub ttl_ms: u64,
    /// Keys that live by it.
    pub keys: u64,
    /// Locks it holds or waits for.
    pub locks: u64,
    /// Keep-alives applied since its grant (what an expiry must name: [`CoordCommand::LeaseExpire`]).
    pub refreshes: u64,
}

/// A comparison of a transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Compare {
    /// A key's field against a value (an absent key has version, revisions and lease 0 and
    /// no value: [`Target::Value`] compares it as absent).
    Key {
        /// The key.
        key: Vec<u8>,
        /// How.
        op: CompareOp,
        /// Against what.
        target: Target,
    },
    /// The lock (or election) `name` is held with fencing token `token`.
    LockHeld {
        /// The lock's name.
        name: Vec<u8>,
        /// The token.
        token: u64,
    },
}

/// How a [`Compare::Key`] compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareOp {
    /// Equal.
    Equal,
    /// Not equal.
    NotEqual,
    /// The key's field is less.
    Less,
    /// The key's field is greater.
    Greater,
}

/// What a [`Compare::Key`] compares a key's field with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Target {
    /// The value (`None`: absent; an absent key is less than every value).
    Value(Option<Vec<u8>>),
    /// The version (0: absent).
    Version(u64),
    /// The create revision (0: absent).
    CreateRevision(u64),
    /// The mod revision (0: absent).
    ModRevision(u64),
    /// The lease (0: none or absent).
    Lease(u64),
}

/// One operation of a transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnOp {
    /// Write a key (lease 0: none).
    Put {
        /// The key.
        key: Vec<u8>,
        /// The value.
        value: Vec<u8>,
        /// The lease it lives by (0: none).
        lease: u64,
    },
    /// Delete the keys of a range.
    Delete(KeyRange),
    /// Read the keys of a range, as the transaction's writes before it left them.
    Range {
        /// The keys.
        range: KeyRange,
        /// At most this many (0: [`RANGE_LIMIT_MAX`]).
        limit: u32,
    },
}

/// What one [`TxnOp`] did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnResult {
    /// A put: the key's previous state (`None`: it was absent).
    Put(Option<KeyValue>),
    /// A delete: how many keys it removed.
    Deleted(u64),
    /// A range read.
    Range(RangeReply),
}

/// A transaction: if every compare holds, `success` runs, else `failure`; atomically, at one
/// revision.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Txn {
    /// The compares, all of which must hold.
    pub compares: Vec<Compare>,
    /// What runs if they do.
    pub success: Vec<TxnOp>,
    /// What runs if one does not.
    pub failure: Vec<TxnOp>,
}

/// A coordination command (docs/coordination.md). Reads ([`CoordCommand::Range`],
/// [`CoordCommand::Changes`], the lease and lock questions) may be sent as queries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CoordCommand {
    /// Write a key, living by `lease` (0: none); answers [`CoordReply::Put`].
    Put {
        /// The key.
        key: Vec<u8>,
        /// The value.
        value: Vec<u8>,
        /// The lease (0: none); it must exist.
        lease: u64,
    },
    /// Delete the keys of a range; answers [`CoordReply::Deleted`].
    Delete(KeyRange),
    /// Read the keys of a range at a revision (0: now); answers [`CoordReply::Range`].
    Range {
        /// The keys.
        range: KeyRange,
        /// At most this many (0: [`RANGE_LIMIT_MAX`]).
        limit: u32,
        /// The revision to read at (0: the newest).
        revision: u64,
        /// Leave the values out.
        keys_only: bool,
    },
    /// The changes of a range from revision `from` on; answers [`CoordReply::Changes`].
    Changes {
        /// The keys (or, with `locks`, the names of locks and elections).
        range: KeyRange,
        /// The first revision wanted.
        from: u64,
        /// At most about this many (0: [`CHANGES_LIMIT_MAX`]).
        limit: u32,
        /// Watch locks and elections instead of keys.
        locks: bool,
    },
    /// A transaction; answers [`CoordReply::Txn`].
    Txn(Txn),
    /// Grant lease `id` (nonzero, chosen by the client) for `ttl_ms`; answers
    /// [`CoordReply::Lease`].
    LeaseGrant {
        /// The id.
        id: u64,
        /// Its time to live, in milliseconds.
        ttl_ms: u64,
    },
    /// Keep lease `id` alive for another TTL; answers [`CoordReply::Lease`].
    LeaseKeepAlive {
        /// The id.
        id: u64,
    },
    /// End lease `id`: its keys are deleted and its locks released; answers
    /// [`CoordReply::Revoked`].
    LeaseRevoke {
        /// The id.
        id: u64,
    },
    /// End lease `id` because its TTL passed with no keep-alive: proposed by the shard's
    /// leader, which saw `refreshes` keep-alives; refused ([`CoordError::LeaseRefreshed`]) if
    /// another was applied since, so a lease kept alive in time never ends.
    LeaseExpire {
        /// The id.
        id: u64,
        /// The keep-alives the leader had seen applied.
        refreshes: u64,
    },
    /// Every lease; answers [`CoordReply::Leases`].
    LeaseList,
    /// Take lock `name` for `lease`, or wait in line; answers [`CoordReply::Lock`]. The lease
    /// ending releases it, or gives up the place in line.
    Lock {
        /// The lock's name.
        name: Vec<u8>,
        /// The lease it holds by.
        lease: u64,
        /// A value the holder shows (an election's candidate value).
        value: Vec<u8>,
    },
    /// Release lock `name` held by `lease`, or leave its line; answers [`CoordReply::Unlocked`].
    Unlock {
        /// The lock's name.
        name: Vec<u8>,
        /// The lease.
        lease: u64,
    },
    /// The holder of lock `name`; answers [`CoordReply::Holder`].
    LockHolder {
        /// The lock's name.
        name: Vec<u8>,
    },
    /// An election's leader (the holder with fencing token `token`) proclaims a new value;
    /// answers [`CoordReply::Proclaimed`].
    Proclaim {
        /// The election's name.
        name: Vec<u8>,
        /// The leader's fencing token.
        token: u64,
        /// The value.
        value: Vec<u8>,
    },
    /// [`CoordCommand::Changes`] that waits: while the range has no change from `from` on, the
    /// shard's leader holds the read (confirmed by its read index first) until one is applied
    /// or `wait_ms` passes, then answers [`CoordReply::Changes`] from the state as applied then
    /// (empty, with the present `through`, on time out). A watch's long poll. At most
    /// [`WATCHES_WAITING_MAX`] wait on one shard; past it the read is refused with
    /// [`CoordError::TooManyWatches`]. Last of the enum, so that the encodings of the others
    /// are those of earlier versions.
    ChangesWait {
        /// The keys (or, with `locks`, the names of locks and elections).
        range: KeyRange,
        /// The first revision wanted.
        from: u64,
        /// At most about this many (0: [`CHANGES_LIMIT_MAX`]).
        limit: u32,
        /// Watch locks and elections instead of keys.
        locks: bool,
        /// How long to wait for a change, in milliseconds (longer waits are cut to [`CHANGES_WAIT_MS_MAX`]).
        wait_ms: u32,
    },
}

/// Most change-feed reads that wait ([`CoordCommand::ChangesWait`]) one shard holds at once.
pub const WATCHES_WAITING_MAX: usize = crate::machine::WAITING_QUERIES_MAX;

/// The longest a change-feed read waits at the shard, in milliseconds: well under a client's
/// request timeout (10 s by default), so that a waiting read is never taken for a lost one.
pub const CHANGES_WAIT_MS_MAX: u32 = 5_000;

/// The reply to a [`CoordCommand`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CoordReply {
    /// A put: its revision, and the key's previous state.
    Put {
        /// The put's revision.
        revision: u64,
        /// The key before (`None`: absent).
        previous: Option<KeyValue>,
    },
    /// A delete: its revision and how many keys it removed.
    Deleted {
        /// The delete's revision.
        revision: u64,
        /// Keys removed.
        count: u64,
    },
    /// A range read.
    Range(RangeReply),
    /// A change-feed read.
    Changes(ChangesReply),
    /// A transaction: whether its compares held, its revision, and what each op did.
    Txn {
        /// True if `success` ran.
        succeeded: bool,
        /// The transaction's revision.
        revision: u64,
        /// One result per operation of the branch that ran.
        results: Vec<TxnResult>,
    },
    /// A lease granted or kept alive.
    Lease {
        /// Its id.
        id: u64,
        /// Its time to live, in milliseconds, from now.
        ttl_ms: u64,
    },
    /// A lease ended: the keys deleted with it.
    Revoked {
        /// The revoke's revision.
        revision: u64,
        /// Keys deleted.
        keys: u64,
    },
    /// A lease ended by its leader's expiry ([`CoordCommand::LeaseExpire`]): the keys deleted
    /// with it.
    Expired {
        /// The lease.
        id: u64,
        /// The expiry's revision.
        revision: u64,
        /// Keys deleted.
        keys: u64,
    },
    /// The leases.
    Leases(Vec<LeaseInfo>),
    /// A lock taken (`held`) or waited for.
    Lock {
        /// The holder now: this lease's, if it took the lock.
        holder: Holder,
        /// True if the asking lease holds it.
        held: bool,
        /// Leases ahead in line (0 if held).
        ahead: u64,
    },
    /// A lock released or a line left (`false`: the lease neither held nor waited for it).
    Unlocked(bool),
    /// A lock's holder (`None`: free).
    Holder(Option<Holder>),
    /// A value proclaimed.
    Proclaimed {
        /// The proclamation's revision.
        revision: u64,
    },
    /// Refused; nothing changed.
    Refused(CoordError),
}

/// Why a coordination command was refused (nothing of it applied).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum CoordError {
    /// A key longer than [`KEY_BYTES_MAX`].
    #[error("a key of {len} bytes; keys hold at most {max}")]
    KeyTooLarge {
        /// Its length.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// A value longer than [`VALUE_BYTES_MAX`].
    #[error("a value of {len} bytes; values hold at most {max}")]
    ValueTooLarge {
        /// Its length.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// Too many compares or operations.
    #[error("a transaction with {count} {what}; at most {max}")]
    TooManyOps {
        /// What was counted.
        what: String,
        /// How many.
        count: u64,
        /// The limit.
        max: u64,
    },
    /// A lease id of 0, or one not granted (or already ended).
    #[error("no lease {id}")]
    LeaseNotFound {
        /// The id.
        id: u64,
    },
    /// A grant of lease id 0, which means "no lease".
    #[error("lease id 0 means no lease; grant another id")]
    ZeroLease,
    /// A grant of an id that is in use.
    #[error("lease {id} exists")]
    LeaseExists {
        /// The id.
        id: u64,
    },
    /// A TTL out of bounds.
    #[error("a lease TTL of {ttl_ms} ms; between {min_ms} and {max_ms} ms")]
    BadTtl {
        /// The TTL asked.
        ttl_ms: u64,
        /// The shortest.
        min_ms: u64,
        /// The longest.
        max_ms: u64,
    },
    /// An expiry after a keep-alive the leader had not seen: the lease lives on.
    #[error("lease {id} was kept alive since its expiry was decided")]
    LeaseRefreshed {
        /// The id.
        id: u64,
    },
    /// A read or watch from before the oldest revision kept.
    #[error("revision {requested} is compacted; the oldest available is {oldest}")]
    Compacted {
        /// The revision asked.
        requested: u64,
        /// The oldest revision that can be read or watched from.
        oldest: u64,
    },
    /// A proclamation by someone who does not hold the election.
    #[error("election is not held with fencing token {token}")]
    NotHolder {
        /// The token given.
        token: u64,
    },
    /// The command did not decode.
    #[error("the command does not decode")]
    Malformed,
    /// A write sent as a query (only reads are answered off the log).
    #[error("a write cannot be sent as a read")]
    NotARead,
    /// A change-feed read that would wait ([`CoordCommand::ChangesWait`]) while the shard
    /// already holds its most: poll without waiting, or later.
    #[error("{max} watches already wait on this shard; poll, or wait later")]
    TooManyWatches {
        /// The most that wait on one shard ([`WATCHES_WAITING_MAX`]).
        max: u64,
    },
}

impl CoordError {
    /// The error's stable code, as the front ends report it (snake case, never renamed).
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            CoordError::KeyTooLarge { .. } => "key_too_large",
            CoordError::ValueTooLarge { .. } => "value_too_large",
            CoordError::TooManyOps { .. } => "too_many_ops",
            CoordError::LeaseNotFound { .. } => "lease_not_found",
            CoordError::ZeroLease => "zero_lease",
            CoordError::LeaseExists { .. } => "lease_exists",
            CoordError::BadTtl { .. } => "bad_ttl",
            CoordError::LeaseRefreshed { .. } => "lease_refreshed",
            CoordError::Compacted { .. } => "compacted",
            CoordError::NotHolder { .. } => "not_holder",
            CoordError::Malformed => "malformed",
            CoordError::NotARead => "not_a_read",
            CoordError::TooManyWatches { .. } => "too_many_watches",
        }
    }
}

impl CoordCommand {
    /// The command's bytes: [`COORD_TAG`], then its postcard encoding.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![COORD_TAG];
        // Serializing plain data to a Vec cannot fail.
        out.extend(postcard::to_allocvec(self).unwrap_or_default());
        out
    }

    /// The command in `bytes`; `None` if they are not one.
    #[must_use]
    pub fn decode(bytes: &[u8]) -> Option<CoordCommand> {
        decode_body(bytes)
    }

    /// True for a command that changes nothing (it may be sent as a query).
    #[must_use]
    pub fn is_read(&self) -> bool {
        matches!(
            self,
            CoordCommand::Range { .. }
                | CoordCommand::Changes { .. }
                | CoordCommand::ChangesWait { .. }
                | CoordCommand::LeaseList
                | CoordCommand::LockHolder { .. }
        )
    }

    /// Checks the sizes a command may have: keys, values, operation counts, the TTL.
    ///
    /// # Errors
    /// The first bound it passes.
    pub fn check(&self) -> Result<(), CoordError> {
        match self {
            CoordCommand::Put { key, value, .. } => check_write(key, value),
            CoordCommand::Delete(range)
            | CoordCommand::Range { range, .. }
            | CoordCommand::Changes { range, .. }
            | CoordCommand::ChangesWait { range, .. } => check_key_len(range.longest_key()),
            CoordCommand::Txn(txn) => {
                let count = |what: &str, count: usize| {
                    if count > TXN_OPS_MAX {
                        Err(CoordError::TooManyOps {
                            what: what.to_string(),
                            count: count as u64,
                            max: TXN_OPS_MAX as u64,
                        })
                    } else {
                        Ok(())
                    }
                };
                count("compares", txn.compares.len())?;
                count("operations on success", txn.success.len())?;
                count("operations on failure", txn.failure.len())?;
                for compare in &txn.compares {
                    match compare {
                        Compare::Key { key, target, .. } => {
                            check_key_len(key.len())?;
                            if let Target::Value(Some(value)) = target {
                                check_value_len(value.len())?;
                            }
                        }
                        Compare::LockHeld { name, .. } => check_key_len(name.len())?,
                    }
                }
                for op in txn.success.iter().chain(&txn.failure) {
                    match op {
                        TxnOp::Put { key, value, .. } => check_write(key, value)?,
                        TxnOp::Delete(range) | TxnOp::Range { range, .. } => {
                            check_key_len(range.longest_key())?;
                        }
                    }
                }
                Ok(())
            }
            CoordCommand::LeaseGrant { ttl_ms, .. } => {
                if (LEASE_TTL_MS_MIN..=LEASE_TTL_MS_MAX).contains(ttl_ms) {
                    Ok(())
                } else {
                    Err(CoordError::BadTtl {
                        ttl_ms: *ttl_ms,
                        min_ms: LEASE_TTL_MS_MIN,
                        max_ms: LEASE_TTL_MS_MAX,
                    })
                }
            }
            CoordCommand::Lock { name, value, .. } | CoordCommand::Proclaim { name, value, .. } => {
                check_write(name, value)
            }
            CoordCommand::Unlock { name, .. } | CoordCommand::LockHolder { name } => {
                check_key_len(name.len())
            }
            CoordCommand::LeaseKeepAlive { .. }
            | CoordCommand::LeaseRevoke { .. }
            | CoordCommand::LeaseExpire { .. }
            | CoordCommand::LeaseList => Ok(()),
        }
    }

    /// Every key and lock name the command touches, for routing it to a shard.
    pub fn keys(&self) -> Vec<&[u8]> {
        match self {
            CoordCommand::Put { key, .. } => vec![key],
            CoordCommand::Delete(range)
            | CoordCommand::Range { range, .. }
            | CoordCommand::Changes { range, .. }
            | CoordCommand::ChangesWait { range, .. } => vec![range.start()],
            CoordCommand::Txn(txn) => {
                let mut keys: Vec<&[u8]> = Vec::new();
                for compare in &txn.compares {
                    keys.push(match compare {
                        Compare::Key { key, .. } => key,
                        Compare::LockHeld { name, .. } => name,
                    });
                }
                for op in txn.success.iter().chain(&txn.failure) {
                    keys.push(match op {
                        TxnOp::Put { key, .. } => key,
                        TxnOp::Delete(range) | TxnOp::Range { range, .. } => range.start(),
                    });
                }
                keys
            }
            CoordCommand::Lock { name, .. }
            | CoordCommand::Unlock { name, .. }
            | CoordCommand::LockHolder { name }
            | CoordCommand::Proclaim { name, .. } => vec![name],
            CoordCommand::LeaseGrant { .. }
            | CoordCommand::LeaseKeepAlive { .. }
            | CoordCommand::LeaseRevoke { .. }
            | CoordCommand::LeaseExpire { .. }
            | CoordCommand::LeaseList => Vec::new(),
        }
    }
}

/// A tag byte and a postcard body with nothing after it.
fn decode_body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Option<T> {
    let (&COORD_TAG, body) = bytes.split_first()? else { return None };
    let (value, rest) = postcard::take_from_bytes(body).ok()?;
    rest.is_empty().then_some(value)
}

fn check_key_len(len: usize) -> Result<(), CoordError> {
    if len > KEY_BYTES_MAX {
        return Err(CoordError::KeyTooLarge { len: len as u64, max: KEY_BYTES_MAX as u64 });
    }
    Ok(())
}

fn check_value_len(len: usize) -> Result<(), CoordError> {
    if len > VALUE_BYTES_MAX {
        return Err(CoordError::ValueTooLarge { len: len as u64, max: VALUE_BYTES_MAX as u64 });
    }
    Ok(())
}

fn check_write(key: &[u8], value: &[u8]) -> Result<(), CoordError> {
    check_key_len(key.len())?;
    check_value_len(value.len())
}

impl CoordReply {
    /// Appends the reply's bytes ([`COORD_TAG`], then postcard) to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(COORD_TAG);
        // Serializing plain data to a Vec cannot fail.
        out.extend(postcard::to_allocvec(self).unwrap_or_default());
    }

    /// The reply in `bytes`; `None` if they are not one.
    #[must_use]
    pub fn decode(bytes: &[u8]) -> Option<CoordReply> {
        decode_body(bytes)
    }
}
