//! The coordination API on the native client (docs/coordination.md): puts with leases, range
//! reads that are one consistent cut of the merged order across shards, change feeds merged
//! across shards in revision order, leases on every shard, locks with fencing tokens,
//! elections and single-shard transactions.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use super::{Client, ClientError, Response};
use crate::core::ReadOptions;
use crate::machine::kv::coord::{CHANGES_WAIT_MS_MAX, RANGE_LIMIT_MAX, first_revision_at};
use crate::machine::kv::watch::{WatchRound, reflected};
use crate::machine::kv::{
    Change, CoordCommand, CoordError, CoordReply, Holder, KeyRange, LeaseInfo, RangeReply, Txn,
    TxnResult,
};
use crate::machine::{KvReply, shard_for_key};

/// How long a read that waits for a shard to reach a revision sleeps between tries.
const CATCH_UP_PAUSE: Duration = Duration::from_millis(1);

/// How a range is read.
#[derive(Clone, Copy, Debug, Default)]
pub struct RangeOptions {
    /// At most this many keys (0: the most one answer carries).
    pub limit: u32,
    /// The revision to read at (0: now).
    pub revision: u64,
    /// Leave the values out.
    pub keys_only: bool,
    /// The consistency of each shard's read.
    pub read: ReadOptions,
}

/// A transaction's outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnOutcome {
    /// True if the compares held and `success` ran.
    pub succeeded: bool,
    /// The transaction's revision.
    pub revision: u64,
    /// One result per operation of the branch that ran.
    pub results: Vec<TxnResult>,
}

/// A lease granted on every shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lease {
    /// Its id.
    pub id: u64,
    /// Its time to live, in milliseconds.
    pub ttl_ms: u64,
}

impl Client {
    /// Sends a coordination command to `shard`: a read as a query read as `read` says, any other
    /// command through the log. A refusal is [`ClientError::Coordination`].
    ///
    /// # Errors
    /// See [`ClientError`].
    pub fn coordinate(
        &self,
        shard: u16,
        command: &CoordCommand,
        read: ReadOptions,
    ) -> Result<(CoordReply, Response), ClientError> {
        command.check().map_err(ClientError::Coordination)?;
        let encoded = command.encode();
        let response = if command.is_read() {
            self.query_with(shard, &encoded, read)?
        } else {
            self.call(shard, &encoded)?
        };
        match KvReply::decode(&response.body) {
            Some(KvReply::Coord(CoordReply::Refused(error))) => {
                Err(ClientError::Coordination(error))
            }
            Some(KvReply::Coord(reply)) => Ok((reply, response)),
            other => Err(ClientError::BadReply(format!("a coordination command got {other:?}"))),
        }
    }

    fn shard_of(&self, key: &[u8]) -> u16 {
        shard_for_key(key, usize::from(self.shards())) as u16
    }

    /// Writes `key`, living by `lease` (0: none); returns the write's revision.
    ///
    /// # Errors
    /// [`CoordError::LeaseNotFound`] for a lease that is not there; see [`ClientError`].
    pub fn put_leased(&self, key: &[u8], value: &[u8], lease: u64) -> Result<u64, ClientError> {
        let command = CoordCommand::Put { key: key.to_vec(), value: value.to_vec(), lease };
        match self.coordinate(self.shard_of(key), &command, ReadOptions::default())?.0 {
            CoordReply::Put { revision, .. } => Ok(revision),
            other => Err(unexpected("a put", &other)),
        }
    }

    /// Reads the keys of `range` at one revision: a consistent cut of the merged order across
    /// every shard the range spans (every write up to the revision, none after; the answer
    /// names it). With `options.revision` 0 the cut is at the newest revision the shards'
    /// reads reflect, and shards behind it are read again once they reach it. A continuation
    /// (`more`) asks again from the key after the last, at the answer's revision.
    ///
    /// # Errors
    /// [`CoordError::Compacted`] for a revision older than the shards keep; see
    /// [`ClientError`].
    pub fn range(
        &self,
        range: &KeyRange,
        options: RangeOptions,
    ) -> Result<RangeReply, ClientError> {
        let shards = range_shards(range, self.shards());
        let ask = |shard: u16, revision: u64| -> Result<(RangeReply, u64), ClientError> {
            let command = CoordCommand::Range {
                range: range.clone(),
                limit: options.limit,
                revision,
                keys_only: options.keys_only,
            };
            match self.coordinate(shard, &command, options.read)? {
                (CoordReply::Range(reply), response) => Ok((reply, response.slot.0)),
                (other, _) => Err(unexpected("a range read", &other)),
            }
        };
        let mut answers = Vec::with_capacity(shards.len());
        for &shard in &shards {
            answers.push(ask(shard, options.revision)?);
        }
        let cut = range_cut(options.revision, answers.iter().map(|(_, slot)| *slot), self.shards());
        self.catch_up_to(&shards, &mut answers, cut, options.revision != 0, ask)?;
        Ok(merge_range(answers.into_iter().map(|(reply, _)| reply), options.limit, cut))
    }

    /// Reads again, at `cut`, each shard whose answer is not at it: one past it (it undoes what
    /// came after), one behind it once it has reached it. With `given` (a revision asked for),
    /// an answer at or past the cut was read at it already.
    fn catch_up_to(
        &self,
        shards: &[u16],
        answers: &mut [(RangeReply, u64)],
        cut: u64,
        given: bool,
        ask: impl Fn(u16, u64) -> Result<(RangeReply, u64), ClientError>,
    ) -> Result<(), ClientError> {
        let deadline = Instant::now() + self.shared.options.request_timeout;
        for (index, &shard) in shards.iter().enumerate() {
            if at_cut(answers[index].1, shard, self.shards(), cut, given) {
                continue;
            }
            loop {
                let (reply, reached) = ask(shard, cut)?;
                if reflected(reached, shard, self.shards()) >= cut {
                    answers[index] = (reply, reached);
                    break;
                }
                if Instant::now() >= deadline {
                    return Err(ClientError::Timeout(self.shared.options.request_timeout));
                }
                std::thread::sleep(CATCH_UP_PAUSE);
            }
        }
        Ok(())
    }

    /// Deletes the keys of `range`; returns how many. A range over several shards is deleted
    /// shard by shard (each shard's part atomic, not the whole).
    ///
    /// # Errors
    /// See [`ClientError`].
    pub fn delete_range(&self, range: &KeyRange) -> Result<u64, ClientError> {
        let mut count = 0;
        for shard in range_shards(range, self.shards()) {
            let command = CoordCommand::Delete(range.clone());
            match self.coordinate(shard, &command, ReadOptions::default())?.0 {
                CoordReply::Deleted { count: deleted, .. } => count += deleted,
                other => return Err(unexpected("a delete", &other)),
            }
        }
        Ok(count)
    }

    /// Runs a transaction: atomic and linearizable on the shard that holds every key and lock
    /// it names.
    ///
    /// # Errors
    /// [`ClientError::CrossShard`] if its keys lie on several shards (docs/coordination.md);
    /// see [`ClientError`].
    pub fn txn(&self, txn: &Txn) -> Result<TxnOutcome, ClientError> {
        let command = CoordCommand::Txn(txn.clone());
        let shard = txn_shard(&command, self.shards()).map_err(ClientError::CrossShard)?;
        match self.coordinate(shard, &command, ReadOptions::default())?.0 {
            CoordReply::Txn { succeeded, revision, results } => {
                Ok(TxnOutcome { succeeded, revision, results })
            }
            other => Err(unexpected("a transaction", &other)),
        }
    }

    /// Grants a lease of `ttl` on every shard (so that keys and locks anywhere can live by it),
    /// under a fresh random id.
    ///
    /// # Errors
    /// [`CoordError::BadTtl`]; see [`ClientError`].
    pub fn lease_grant(&self, ttl: Duration) -> Result<Lease, ClientError> {
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        loop {
            let id = lease_id_random().map_err(|error| ClientError::Rejected(error.to_string()))?;
            let mut granted = 0;
            for shard in 0..self.shards() {
                let command = CoordCommand::LeaseGrant { id, ttl_ms };
                match self.coordinate(shard, &command, ReadOptions::default()) {
                    Ok(_) => granted += 1,
                    // Taken (by chance) where nothing was granted yet: another id.
                    Err(ClientError::Coordination(CoordError::LeaseExists { .. }))
                        if granted == 0 =>
                    {
                        break;
                    }
                    Err(error) => return Err(error),
                }
            }
            if granted == self.shards() {
                return Ok(Lease { id, ttl_ms });
            }
        }
    }

    /// Keeps lease `id` alive on every shard for another TTL, counted from when this call
    /// began; returns the TTL.
    ///
    /// # Errors
    /// [`CoordError::LeaseNotFound`] if it ended on some shard (its keys there are gone, its
    /// locks released); see [`ClientError`].
    pub fn lease_keep_alive(&self, id: u64) -> Result<u64, ClientError> {
        let mut ttl_ms = u64::MAX;
        for shard in 0..self.shards() {
            let command = CoordCommand::LeaseKeepAlive { id };
            match self.coordinate(shard, &command, ReadOptions::default())?.0 {
                CoordReply::Lease { ttl_ms: ttl, .. } => ttl_ms = ttl_ms.min(ttl),
                other => return Err(unexpected("a keep-alive", &other)),
            }
        }
        Ok(ttl_ms)
    }

    /// Ends lease `id` on every shard: its keys are deleted, its locks released. Returns the
    /// keys deleted.
    ///
    /// # Errors
    /// [`CoordError::LeaseNotFound`] if no shard had it; see [`ClientError`].
    pub fn lease_revoke(&self, id: u64) -> Result<u64, ClientError> {
        let (mut keys, mut found) = (0, false);
        for shard in 0..self.shards() {
            let command = CoordCommand::LeaseRevoke { id };
            match self.coordinate(shard, &command, ReadOptions::default()) {
                Ok((CoordReply::Revoked { keys: deleted, .. }, _)) => {
                    keys += deleted;
                    found = true;
                }
                Ok((other, _)) => return Err(unexpected("a revoke", &other)),
                Err(ClientError::Coordination(CoordError::LeaseNotFound { .. })) => {}
                Err(error) => return Err(error),
            }
        }
        if !found {
            return Err(ClientError::Coordination(CoordError::LeaseNotFound { id }));
        }
        Ok(keys)
    }

    /// Every lease, with the keys and locks that live by it on all shards.
    ///
    /// # Errors
    /// See [`ClientError`].
    pub fn leases(&self) -> Result<Vec<LeaseInfo>, ClientError> {
        let mut leases: BTreeMap<u64, LeaseInfo> = BTreeMap::new();
        for shard in 0..self.shards() {
            match self.coordinate(shard, &CoordCommand::LeaseList, ReadOptions::default())?.0 {
                CoordReply::Leases(list) => merge_leases(&mut leases, list),
                other => return Err(unexpected("a lease list", &other)),
            }
        }
        Ok(leases.into_values().collect())
    }

    /// Takes lock `name` for `lease`, waiting in line (first come, first served) for at most
    /// `wait`; returns the holder, this lease, with its fencing token. A lease that ends
    /// releases the lock. Given up after `wait`, it leaves the line.
    ///
    /// # Errors
    /// [`ClientError::Timeout`] after `wait`; [`CoordError::LeaseNotFound`]; see
    /// [`ClientError`].
    pub fn lock(
        &self,
        name: &[u8],
        lease: u64,
        value: &[u8],
        wait: Duration,
    ) -> Result<Holder, ClientError> {
        let shard = self.shard_of(name);
        let command = CoordCommand::Lock { name: name.to_vec(), lease, value: value.to_vec() };
        let holder = match self.coordinate(shard, &command, ReadOptions::default())?.0 {
            CoordReply::Lock { holder, held: true, .. } => return Ok(holder),
            CoordReply::Lock { holder, .. } => holder,
            other => return Err(unexpected("a lock", &other)),
        };
        let _ = holder;
        let deadline = Instant::now() + wait;
        let mut pause = Duration::from_millis(1);
        loop {
            if let Some(holder) = self.lock_holder(name)?
                && holder.lease == lease
            {
                return Ok(holder);
            }
            if Instant::now() >= deadline {
                let _ = self.unlock(name, lease);
                return Err(ClientError::Timeout(wait));
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }

    /// Releases lock `name` held by `lease` (or leaves its line); false if the lease neither
    /// held nor waited for it.
    ///
    /// # Errors
    /// See [`ClientError`].
    pub fn unlock(&self, name: &[u8], lease: u64) -> Result<bool, ClientError> {
        let command = CoordCommand::Unlock { name: name.to_vec(), lease };
        match self.coordinate(self.shard_of(name), &command, ReadOptions::default())?.0 {
            CoordReply::Unlocked(released) => Ok(released),
            other => Err(unexpected("an unlock", &other)),
        }
    }

    /// The holder of lock (or election) `name`, linearizably.
    ///
    /// # Errors
    /// See [`ClientError`].
    pub fn lock_holder(&self, name: &[u8]) -> Result<Option<Holder>, ClientError> {
        let command = CoordCommand::LockHolder { name: name.to_vec() };
        match self.coordinate(self.shard_of(name), &command, ReadOptions::default())?.0 {
            CoordReply::Holder(holder) => Ok(holder),
            other => Err(unexpected("a lock holder", &other)),
        }
    }

    /// The leader of election `name` (holding with fencing token `token`) proclaims `value`;
    /// returns the proclamation's revision.
    ///
    /// # Errors
    /// [`CoordError::NotHolder`] if `token` no longer leads; see [`ClientError`].
    pub fn proclaim(&self, name: &[u8], token: u64, value: &[u8]) -> Result<u64, ClientError> {
        let command = CoordCommand::Proclaim { name: name.to_vec(), token, value: value.to_vec() };
        match self.coordinate(self.shard_of(name), &command, ReadOptions::default())?.0 {
            CoordReply::Proclaimed { revision } => Ok(revision),
            other => Err(unexpected("a proclamation", &other)),
        }
    }

    /// A watch of `range` (keys, or with `locks` lock and election names) from revision `from`
    /// (0: from now on).
    ///
    /// # Errors
    /// See [`ClientError`] (finding the present revision).
    pub fn watch(&self, range: KeyRange, from: u64, locks: bool) -> Result<Watch<'_>, ClientError> {
        let shards = range_shards(&range, self.shards());
        let next = if from != 0 {
            from
        } else {
            // Now: past everything the shards' reads reflect.
            let now = self.range(
                &range,
                RangeOptions { limit: 1, keys_only: true, ..RangeOptions::default() },
            )?;
            now.revision + 1
        };
        Ok(Watch { client: self, range, shards, next, locks })
    }
}

/// Changes of a range, in revision order, each exactly once, across shards and leader
/// changes ([`Client::watch`]). Resumable from [`Watch::next_revision`].
pub struct Watch<'a> {
    client: &'a Client,
    range: KeyRange,
    shards: Vec<u16>,
    next: u64,
    locks: bool,
}

impl Watch<'_> {
    /// The revision the next change will be at or after: where to resume.
    #[must_use]
    pub fn next_revision(&self) -> u64 {
        self.next
    }

    /// The changes since the last call, in revision order (empty if there are none yet): every
    /// shard is asked for its changes from [`Watch::next_revision`], and only those up to the
    /// lowest revision every shard is known complete through are given, so a change of a shard
    /// that answered late is never skipped.
    ///
    /// # Errors
    /// [`CoordError::Compacted`] if the shards no longer keep the changes from
    /// [`Watch::next_revision`]; see [`ClientError`].
    pub fn poll(&mut self) -> Result<Vec<Change>, ClientError> {
        self.poll_waiting(0)
    }

    /// [`Watch::poll`], each shard holding the read up to `wait_ms` while it has nothing
    /// ([`CoordCommand::ChangesWait`]; 0: a plain [`CoordCommand::Changes`]). The answer goes
    /// through the same bookkeeping, so waiting changes only when it comes.
    fn poll_waiting(&mut self, wait_ms: u32) -> Result<Vec<Change>, ClientError> {
        let shards = self.client.shards();
        let mut round = WatchRound::new(self.next);
        for &shard in &self.shards {
            let (range, from, limit, locks) = (self.range.clone(), self.next, 0, self.locks);
            let command = if wait_ms == 0 {
                CoordCommand::Changes { range, from, limit, locks }
            } else {
                CoordCommand::ChangesWait { range, from, limit, locks, wait_ms }
            };
            let (reply, response) =
                self.client.coordinate(shard, &command, ReadOptions::default())?;
            let CoordReply::Changes(found) = reply else {
                return Err(unexpected("a change feed", &reply));
            };
            round.add(found, response.slot.0, response.shard, shards);
        }
        let (changes, next) = round.finish();
        self.next = next;
        Ok(changes)
    }

    /// Waits up to `timeout` for changes; returns them (empty if none came). A watch on one
    /// shard (a key's, or any on a one-shard node) waits at the shard's leader
    /// ([`CoordCommand::ChangesWait`]), which answers as soon as a change of the range is
    /// applied. A watch over several shards polls them, pausing 1 ms doubling to 10 ms while
    /// nothing comes: a wait at one shard would hold up the changes of the others. So does a
    /// watch whose shard refused to hold it ([`CoordError::TooManyWatches`], or a node from
    /// before waiting reads, which finds the command malformed).
    ///
    /// # Errors
    /// See [`Watch::poll`].
    pub fn wait(&mut self, timeout: Duration) -> Result<Vec<Change>, ClientError> {
        let deadline = Instant::now() + timeout;
        let mut pause = Duration::from_millis(1);
        let mut held = self.shards.len() == 1;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let wait_ms = if held {
                u32::try_from(left.as_millis()).unwrap_or(u32::MAX).min(CHANGES_WAIT_MS_MAX)
            } else {
                0
            };
            let asked = Instant::now();
            let changes = match self.poll_waiting(wait_ms) {
                Err(ClientError::Coordination(
                    CoordError::TooManyWatches { .. } | CoordError::Malformed,
                )) if wait_ms > 0 => {
                    held = false;
                    continue;
                }
                other => other?,
            };
            if !changes.is_empty() || Instant::now() >= deadline {
                return Ok(changes);
            }
            if paced_as_poll(wait_ms, asked.elapsed()) {
                std::thread::sleep(pause.min(deadline.saturating_duration_since(Instant::now())));
                pause = (pause * 2).min(Duration::from_millis(10));
            }
        }
    }
}

// The pure parts of the coordination calls, shared with the front ends' async versions
// (`front::coord`), so that both read the same cut and merge the same way.

/// True if a watch round that found nothing is followed by a pause before the next: it did
/// not wait at the shards (`wait_ms` 0), or they did not hold it (a node that answers a wait
/// at once, empty, long before its time), so asking again at once would spin.
#[must_use]
pub fn paced_as_poll(wait_ms: u32, took: Duration) -> bool {
    wait_ms == 0 || took < Duration::from_millis(u64::from(wait_ms) / 2)
}

/// The shards a range spans: a key's own, else every shard.
#[must_use]
pub fn range_shards(range: &KeyRange, shards: u16) -> Vec<u16> {
    match range {
        KeyRange::Key(key) => vec![shard_for_key(key, usize::from(shards)) as u16],
        _ => (0..shards).collect(),
    }
}

/// The revision a range read is a cut at: `revision` if one was asked (nonzero), else now,
/// from the slots the shards' first answers reflect (`reached`).
#[must_use]
pub fn range_cut(revision: u64, reached: impl Iterator<Item = u64>, shards: u16) -> u64 {
    if revision != 0 {
        return revision;
    }
    // Now: the cut below the first slot no shard has reached, `r · shards`, r being the
    // highest next slot among the answers. Every write acknowledged before this read lies
    // below it (its shard had committed it, so that shard's next slot is past it), and
    // shards behind reach it by their idle skips (to the highest commit of the others).
    let round = reached.max().unwrap_or(0);
    first_revision_at(round * u64::from(shards)) - 1
}

/// True if `shard`'s answer, reflecting its slots below `slot`, is at `cut` already (with
/// `given`, a revision asked for, any answer at or past it was read at it).
#[must_use]
pub fn at_cut(slot: u64, shard: u16, shards: u16, cut: u64, given: bool) -> bool {
    let reached = reflected(slot, shard, shards);
    reached == cut || (given && reached >= cut)
}

/// The shards' answers at one cut as one reply: sorted, at most `limit` (0: the most one
/// answer carries), `more` if any shard had more or the limit cut it.
#[must_use]
pub fn merge_range(answers: impl Iterator<Item = RangeReply>, limit: u32, cut: u64) -> RangeReply {
    let limit = if limit == 0 { RANGE_LIMIT_MAX } else { limit } as usize;
    let mut more = false;
    let mut entries = Vec::new();
    for reply in answers {
        more |= reply.more;
        entries.extend(reply.entries);
    }
    entries.sort_by(|a, b| a.key.cmp(&b.key));
    if entries.len() > limit {
        entries.truncate(limit);
        more = true;
    }
    RangeReply { entries, more, revision: cut }
}

/// The shard a transaction (or any command) runs on: the one every key and lock name it
/// touches lives on; the shards they span if there are several.
///
/// # Errors
/// The shards, sorted, when there is more than one.
pub fn txn_shard(command: &CoordCommand, shards: u16) -> Result<u16, Vec<u16>> {
    let spanned: BTreeSet<u16> =
        command.keys().iter().map(|key| shard_for_key(key, usize::from(shards)) as u16).collect();
    if spanned.len() > 1 {
        return Err(spanned.into_iter().collect());
    }
    Ok(spanned.first().copied().unwrap_or(0))
}

/// A fresh random lease id: nonzero, below 2^63 (ids with the top bit set are left for ids
/// that carry meaning of their own, as the Redis front end's expiry leases do).
///
/// # Errors
/// The operating system gave no randomness.
pub fn lease_id_random() -> Result<u64, getrandom::Error> {
    loop {
        let mut id = [0; 8];
        getrandom::fill(&mut id)?;
        let id = u64::from_le_bytes(id) >> 1;
        if id != 0 {
            return Ok(id);
        }
    }
}

/// Adds one shard's lease list to `leases`: the keys and locks of a lease summed over shards.
pub fn merge_leases(leases: &mut BTreeMap<u64, LeaseInfo>, list: Vec<LeaseInfo>) {
    for lease in list {
        let held =
            leases.entry(lease.id).or_insert(LeaseInfo { keys: 0, locks: 0, ..lease.clone() });
        held.keys += lease.keys;
        held.locks += lease.locks;
        held.refreshes = held.refreshes.max(lease.refreshes);
    }
}

fn unexpected(what: &str, reply: &CoordReply) -> ClientError {
    ClientError::BadReply(format!("{what} answered {reply:?}"))
}
