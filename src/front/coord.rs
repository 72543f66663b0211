//! The coordination API (docs/coordination.md) as the front ends use it: the native client's
//! calls (`client/coord.rs`) made async over the [`Gateway`], so that no thread waits per
//! request. The pure parts (which shards a range spans, the cut a range is read at, the
//! merge of the shards' answers, a transaction's shard) are the client's own functions, and
//! a watch merges its shards' change feeds with the same [`WatchRound`]; what is here is the
//! sending and the waiting.
//!
//! One difference from the client: a watch over several shards long-polls all of them at once
//! ([`CoordCommand::ChangesWait`] to each), and as soon as one answers with changes, reads the
//! others without waiting and ends the round. Each shard's answer is still one complete answer
//! from the round's revision, so the merge keeps every change exactly once and in order; the
//! reads left waiting are answered later and dropped.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{Gateway, RequestError};
use crate::client::{
    Lease, RangeOptions, TxnOutcome, at_cut, lease_id_random, merge_leases, merge_range,
    paced_as_poll, range_cut, range_shards, txn_shard,
};
use crate::core::ReadOptions;
use crate::machine::kv::coord::{CHANGES_WAIT_MS_MAX, KeyValue};
use crate::machine::kv::watch::{WatchRound, reflected};
use crate::machine::kv::{
    Change, ChangesReply, CoordCommand, CoordError, CoordReply, Holder, KeyRange, LeaseInfo,
    RangeReply, Txn,
};

/// How long a range read that waits for a shard to reach its cut sleeps between tries.
const CATCH_UP_PAUSE: Duration = Duration::from_millis(1);

/// The longest pause between polls of a watch whose shards cannot hold its reads.
const POLL_PAUSE_MAX: Duration = Duration::from_millis(10);

fn unexpected(what: &str, reply: &CoordReply) -> RequestError {
    RequestError::BadReply(format!("{what} answered {reply:?}"))
}

fn refused(error: CoordError) -> RequestError {
    RequestError::Coordination(error)
}

impl Gateway {
    /// Writes `key` living by `lease` (0: none), as a coordination put; its revision and the
    /// key before.
    ///
    /// # Errors
    /// [`CoordError::LeaseNotFound`]; see [`RequestError`].
    pub async fn put_leased(
        &self,
        key: &[u8],
        value: &[u8],
        lease: u64,
    ) -> Result<(u64, Option<KeyValue>), RequestError> {
        let command = CoordCommand::Put { key: key.to_vec(), value: value.to_vec(), lease };
        match self.coordinate(self.shard_of(key), &command, ReadOptions::default()).await? {
            CoordReply::Put { revision, previous } => Ok((revision, previous)),
            other => Err(unexpected("a put", &other)),
        }
    }

    /// Reads the keys of `range` at one revision, a consistent cut across the shards it spans,
    /// as [`crate::client::Client::range`] does (docs/coordination.md, "Range reads").
    ///
    /// # Errors
    /// [`CoordError::Compacted`]; see [`RequestError`].
    pub async fn range(
        &self,
        range: &KeyRange,
        options: RangeOptions,
    ) -> Result<RangeReply, RequestError> {
        let shards = range_shards(range, self.shards());
        let command = |revision| CoordCommand::Range {
            range: range.clone(),
            limit: options.limit,
            revision,
            keys_only: options.keys_only,
        };
        let first = command(options.revision);
        let asked: Vec<(u16, &CoordCommand)> =
            shards.iter().map(|&shard| (shard, &first)).collect();
        let mut answers = Vec::with_capacity(shards.len());
        for outcome in self.coordinate_many(&asked, options.read).await {
            match outcome? {
                (CoordReply::Range(reply), response) => answers.push((reply, response.slot.0)),
                (other, _) => return Err(unexpected("a range read", &other)),
            }
        }
        let cut = range_cut(options.revision, answers.iter().map(|(_, slot)| *slot), self.shards());
        let given = options.revision != 0;
        let deadline = Instant::now() + self.request_timeout();
        let again = command(cut);
        for (index, &shard) in shards.iter().enumerate() {
            // A shard past the cut is read at it (it undoes what came after); one behind it
            // is read again once it has reached it.
            while !at_cut(answers[index].1, shard, self.shards(), cut, given) {
                match self.coordinate_at(shard, &again, options.read).await? {
                    (CoordReply::Range(reply), response)
                        if reflected(response.slot.0, shard, self.shards()) >= cut =>
                    {
                        answers[index] = (reply, response.slot.0);
                        break;
                    }
                    (CoordReply::Range(_), _) => {}
                    (other, _) => return Err(unexpected("a range read", &other)),
                }
                if Instant::now() >= deadline {
                    return Err(RequestError::Timeout(self.request_timeout()));
                }
                tokio::time::sleep(CATCH_UP_PAUSE).await;
            }
        }
        Ok(merge_range(answers.into_iter().map(|(reply, _)| reply), options.limit, cut))
    }

    /// Runs a transaction on the shard of every key and lock it names.
    ///
    /// # Errors
    /// [`RequestError::CrossShard`] if they lie on several; see [`RequestError`].
    pub async fn txn(&self, txn: &Txn) -> Result<TxnOutcome, RequestError> {
        let command = CoordCommand::Txn(txn.clone());
        let shard = txn_shard(&command, self.shards()).map_err(RequestError::CrossShard)?;
        match self.coordinate(shard, &command, ReadOptions::default()).await? {
            CoordReply::Txn { succeeded, revision, results } => {
                Ok(TxnOutcome { succeeded, revision, results })
            }
            other => Err(unexpected("a transaction", &other)),
        }
    }

    /// Grants lease `id` for `ttl_ms` on `shards`, in order; false if the first already has
    /// one of that id (nothing granted: choose another).
    ///
    /// # Errors
    /// [`CoordError::BadTtl`], [`CoordError::LeaseExists`] past the first shard; see
    /// [`RequestError`].
    pub async fn lease_grant_on(
        &self,
        shards: &[u16],
        id: u64,
        ttl_ms: u64,
    ) -> Result<bool, RequestError> {
        let command = CoordCommand::LeaseGrant { id, ttl_ms };
        for (granted, &shard) in shards.iter().enumerate() {
            match self.coordinate(shard, &command, ReadOptions::default()).await {
                Ok(_) => {}
                Err(RequestError::Coordination(CoordError::LeaseExists { .. })) if granted == 0 => {
                    return Ok(false);
                }
                Err(error) => return Err(error),
            }
        }
        Ok(true)
    }

    /// Grants a lease of `ttl_ms` on every shard under a fresh random id, as
    /// [`crate::client::Client::lease_grant`] does.
    ///
    /// # Errors
    /// [`CoordError::BadTtl`]; see [`RequestError`].
    pub async fn lease_grant(&self, ttl_ms: u64) -> Result<Lease, RequestError> {
        let shards: Vec<u16> = (0..self.shards()).collect();
        loop {
            let id =
                lease_id_random().map_err(|error| RequestError::Rejected(error.to_string()))?;
            if self.lease_grant_on(&shards, id, ttl_ms).await? {
                return Ok(Lease { id, ttl_ms });
            }
        }
    }

    /// Keeps lease `id` alive for another TTL on every shard that has it; the TTL.
    ///
    /// # Errors
    /// [`CoordError::LeaseNotFound`] if no shard has it; see [`RequestError`].
    pub async fn lease_keep_alive(&self, id: u64) -> Result<u64, RequestError> {
        let mut ttl_ms = u64::MAX;
        for reply in self.lease_replies(id, &CoordCommand::LeaseKeepAlive { id }).await? {
            match reply {
                CoordReply::Lease { ttl_ms: ttl, .. } => ttl_ms = ttl_ms.min(ttl),
                other => return Err(unexpected("a keep-alive", &other)),
            }
        }
        Ok(ttl_ms)
    }

    /// Ends lease `id` on every shard that has it: its keys deleted, its locks released; the
    /// keys deleted.
    ///
    /// # Errors
    /// [`CoordError::LeaseNotFound`] if no shard has it; see [`RequestError`].
    pub async fn lease_revoke(&self, id: u64) -> Result<u64, RequestError> {
        let mut keys = 0;
        for reply in self.lease_replies(id, &CoordCommand::LeaseRevoke { id }).await? {
            match reply {
                CoordReply::Revoked { keys: deleted, .. } => keys += deleted,
                other => return Err(unexpected("a revoke", &other)),
            }
        }
        Ok(keys)
    }

    /// The replies to `command` about lease `id` of the shards that have it (a lease of the
    /// Redis front end lives on its key's shard alone).
    ///
    /// # Errors
    /// [`CoordError::LeaseNotFound`] if no shard has it; see [`RequestError`].
    async fn lease_replies(
        &self,
        id: u64,
        command: &CoordCommand,
    ) -> Result<Vec<CoordReply>, RequestError> {
        let mut replies = Vec::new();
        for outcome in self.every_shard(command).await {
            match outcome {
                Ok(reply) => replies.push(reply),
                Err(RequestError::Coordination(CoordError::LeaseNotFound { .. })) => {}
                Err(error) => return Err(error),
            }
        }
        if replies.is_empty() {
            return Err(refused(CoordError::LeaseNotFound { id }));
        }
        Ok(replies)
    }

    /// Every lease, its keys and locks counted over all shards.
    ///
    /// # Errors
    /// See [`RequestError`].
    pub async fn leases(&self) -> Result<Vec<LeaseInfo>, RequestError> {
        let mut leases = BTreeMap::new();
        for outcome in self.every_shard(&CoordCommand::LeaseList).await {
            match outcome? {
                CoordReply::Leases(list) => merge_leases(&mut leases, list),
                other => return Err(unexpected("a lease list", &other)),
            }
        }
        Ok(leases.into_values().collect())
    }

    /// `command` sent to every shard at once; the replies in shard order.
    async fn every_shard(&self, command: &CoordCommand) -> Vec<Result<CoordReply, RequestError>> {
        let asked: Vec<(u16, &CoordCommand)> = (0..self.shards()).map(|s| (s, command)).collect();
        let outcomes = self.coordinate_many(&asked, ReadOptions::default()).await;
        outcomes.into_iter().map(|outcome| outcome.map(|(reply, _)| reply)).collect()
    }

    /// Takes lock `name` for `lease`, waiting in line for at most `wait`: the holder (this
    /// lease, with its fencing token), or `None` once `wait` passed (the line is left). While
    /// it waits, it waits at the shard for the lock to change ([`CoordCommand::ChangesWait`]
    /// on its name) rather than polling.
    ///
    /// # Errors
    /// [`CoordError::LeaseNotFound`]; see [`RequestError`].
    pub async fn lock(
        &self,
        name: &[u8],
        lease: u64,
        value: &[u8],
        wait: Duration,
    ) -> Result<Option<Holder>, RequestError> {
        let shard = self.shard_of(name);
        let command = CoordCommand::Lock { name: name.to_vec(), lease, value: value.to_vec() };
        match self.coordinate(shard, &command, ReadOptions::default()).await? {
            CoordReply::Lock { holder, held: true, .. } => return Ok(Some(holder)),
            CoordReply::Lock { .. } => {}
            other => return Err(unexpected("a lock", &other)),
        }
        let deadline = Instant::now() + wait;
        let asked = CoordCommand::LockHolder { name: name.to_vec() };
        loop {
            let (reply, response) =
                self.coordinate_at(shard, &asked, ReadOptions::default()).await?;
            match reply {
                CoordReply::Holder(Some(holder)) if holder.lease == lease => {
                    return Ok(Some(holder));
                }
                CoordReply::Holder(_) => {}
                other => return Err(unexpected("a lock holder", &other)),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                self.unlock(name, lease).await?;
                return Ok(None);
            }
            // Wait for the lock's next change after what that answer reflected.
            let changes = CoordCommand::ChangesWait {
                range: KeyRange::Key(name.to_vec()),
                from: reflected(response.slot.0, shard, self.shards()) + 1,
                limit: 1,
                locks: true,
                wait_ms: u32::try_from(left.as_millis())
                    .unwrap_or(u32::MAX)
                    .min(CHANGES_WAIT_MS_MAX),
            };
            match self.coordinate(shard, &changes, ReadOptions::default()).await {
                Ok(_) => {}
                Err(RequestError::Coordination(
                    CoordError::TooManyWatches { .. } | CoordError::Compacted { .. },
                )) => tokio::time::sleep(POLL_PAUSE_MAX.min(left)).await,
                Err(error) => return Err(error),
            }
        }
    }

    /// Releases lock `name` held by `lease` (or leaves its line); false if it neither held
    /// nor waited.
    ///
    /// # Errors
    /// See [`RequestError`].
    pub async fn unlock(&self, name: &[u8], lease: u64) -> Result<bool, RequestError> {
        let command = CoordCommand::Unlock { name: name.to_vec(), lease };
        match self.coordinate(self.shard_of(name), &command, ReadOptions::default()).await? {
            CoordReply::Unlocked(released) => Ok(released),
            other => Err(unexpected("an unlock", &other)),
        }
    }

    /// The holder of lock `name`, linearizably.
    ///
    /// # Errors
    /// See [`RequestError`].
    pub async fn lock_holder(&self, name: &[u8]) -> Result<Option<Holder>, RequestError> {
        let command = CoordCommand::LockHolder { name: name.to_vec() };
        match self.coordinate(self.shard_of(name), &command, ReadOptions::default()).await? {
            CoordReply::Holder(holder) => Ok(holder),
            other => Err(unexpected("a lock holder", &other)),
        }
    }
}

/// Changes of a range in revision order, each exactly once, across shards and leader changes:
/// [`crate::client::Watch`] for the front ends. Resumable from [`FrontWatch::next_revision`].
pub struct FrontWatch {
    gateway: Arc<Gateway>,
    range: KeyRange,
    shards: Vec<u16>,
    next: u64,
    locks: bool,
    /// The shards hold waiting reads (false once one refused to: then it polls).
    held: bool,
}

impl FrontWatch {
    /// A watch of `range` (keys, or with `locks` lock and election names) from revision
    /// `from` (0: from now on).
    ///
    /// # Errors
    /// See [`RequestError`] (finding the present revision).
    pub async fn start(
        gateway: Arc<Gateway>,
        range: KeyRange,
        from: u64,
        locks: bool,
    ) -> Result<FrontWatch, RequestError> {
        let shards = range_shards(&range, gateway.shards());
        let next = if from != 0 {
            from
        } else {
            let options = RangeOptions { limit: 1, keys_only: true, ..RangeOptions::default() };
            gateway.range(&range, options).await?.revision + 1
        };
        Ok(FrontWatch { gateway, range, shards, next, locks, held: true })
    }

    /// The revision the next change will be at or after: where to resume.
    #[must_use]
    pub fn next_revision(&self) -> u64 {
        self.next
    }

    /// Waits up to `timeout` for changes; returns them (empty if none came).
    ///
    /// # Errors
    /// [`CoordError::Compacted`] if the shards no longer keep the changes from
    /// [`FrontWatch::next_revision`]; see [`RequestError`].
    pub async fn wait(&mut self, timeout: Duration) -> Result<Vec<Change>, RequestError> {
        let deadline = Instant::now() + timeout;
        let mut pause = Duration::from_millis(1);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let wait_ms = if self.held {
                u32::try_from(left.as_millis()).unwrap_or(u32::MAX).min(CHANGES_WAIT_MS_MAX)
            } else {
                0
            };
            let asked = Instant::now();
            let changes = match self.round(wait_ms).await {
                Err(RequestError::Coordination(
                    CoordError::TooManyWatches { .. } | CoordError::Malformed,
                )) if wait_ms > 0 => {
                    self.held = false;
                    continue;
                }
                other => other?,
            };
            if !changes.is_empty() || Instant::now() >= deadline {
                return Ok(changes);
            }
            if paced_as_poll(wait_ms, asked.elapsed()) {
                tokio::time::sleep(pause.min(deadline.saturating_duration_since(Instant::now())))
                    .await;
                pause = (pause * 2).min(POLL_PAUSE_MAX);
            }
        }
    }

    /// The change-feed command for one shard: waiting `wait_ms` (0: not at all).
    fn command(&self, wait_ms: u32) -> CoordCommand {
        let (range, from, limit, locks) = (self.range.clone(), self.next, 0, self.locks);
        if wait_ms == 0 {
            CoordCommand::Changes { range, from, limit, locks }
        } else {
            CoordCommand::ChangesWait { range, from, limit, locks, wait_ms }
        }
    }

    /// One round: every shard's changes from the next revision, merged.
    async fn round(&mut self, wait_ms: u32) -> Result<Vec<Change>, RequestError> {
        let answers = if wait_ms == 0 || self.shards.len() == 1 {
            let command = self.command(wait_ms);
            let asked: Vec<(u16, &CoordCommand)> =
                self.shards.iter().map(|&shard| (shard, &command)).collect();
            let mut answers = Vec::with_capacity(asked.len());
            for (&shard, outcome) in self
                .shards
                .iter()
                .zip(self.gateway.coordinate_many(&asked, ReadOptions::default()).await)
            {
                answers.push((shard, changes_of(outcome)?));
            }
            answers
        } else {
            self.round_held(wait_ms).await?
        };
        let mut round = WatchRound::new(self.next);
        for (shard, (reply, slot)) in answers {
            round.add(reply, slot, shard, self.gateway.shards());
        }
        let (changes, next) = round.finish();
        self.next = next;
        Ok(changes)
    }

    /// A round over several shards that all wait: the first answer with changes ends the
    /// waiting, and the shards not answered yet are read without it.
    async fn round_held(
        &self,
        wait_ms: u32,
    ) -> Result<Vec<(u16, (ChangesReply, u64))>, RequestError> {
        let (sender, mut receiver) = mpsc::channel(self.shards.len());
        let waiting = self.command(wait_ms);
        for &shard in &self.shards {
            let (gateway, sender, command) =
                (self.gateway.clone(), sender.clone(), waiting.clone());
            tokio::spawn(async move {
                let outcome = gateway.coordinate_at(shard, &command, ReadOptions::default()).await;
                // A receiver gone finished its round without this answer.
                let _ = sender.send((shard, outcome)).await;
            });
        }
        drop(sender);
        let mut answers = Vec::with_capacity(self.shards.len());
        while let Some((shard, outcome)) = receiver.recv().await {
            let (reply, slot) = changes_of(outcome)?;
            let found = !reply.changes.is_empty();
            answers.push((shard, (reply, slot)));
            if found || answers.len() == self.shards.len() {
                break;
            }
        }
        let missing: Vec<u16> = self
            .shards
            .iter()
            .copied()
            .filter(|shard| answers.iter().all(|(answered, _)| answered != shard))
            .collect();
        let now = self.command(0);
        let asked: Vec<(u16, &CoordCommand)> = missing.iter().map(|&shard| (shard, &now)).collect();
        for (&shard, outcome) in
            missing.iter().zip(self.gateway.coordinate_many(&asked, ReadOptions::default()).await)
        {
            answers.push((shard, changes_of(outcome)?));
        }
        Ok(answers)
    }
}

/// A change-feed answer and the slot its shard's state reflected.
fn changes_of(
    outcome: Result<(CoordReply, crate::client::Response), RequestError>,
) -> Result<(ChangesReply, u64), RequestError> {
    match outcome? {
        (CoordReply::Changes(reply), response) => Ok((reply, response.slot.0)),
        (other, _) => Err(unexpected("a change feed", &other)),
    }
}
