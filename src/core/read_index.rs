//! Reads without the log (protocol.md §5.3–§5.5): a leader answers a read once it has
//! confirmed, after the read arrived, that it was still the leader, and has applied up to the
//! read's index.
//!
//! - **The index.** A read's index is the leader's commit position when it arrives, but never
//!   below the first slot of the leader's own ballot: below that lie the slots phase 1
//!   recovered, which may hold writes an earlier leader acknowledged and this one has not yet
//!   committed. Every write acknowledged before the read began sits below its index.
//! - **The confirmation.** Reads are confirmed in rounds: the leader numbers a round, sends a
//!   heartbeat carrying the number to every voter, and counts the acks that echo it. A voter
//!   acks a heartbeat only if it has promised no higher ballot; so once a majority (the leader
//!   included) acked round `r`, no other leader had completed phase 1 when those acks were
//!   sent, and no write acknowledged by one can be missing. One round confirms every read that
//!   arrived before it started; reads arriving meanwhile wait for the next, which the leader
//!   starts at its next flush while fewer than [`ROUNDS_IN_FLIGHT_MAX`] are out. An ack of
//!   round `r` counts for every round up to `r`: it was sent after they all started.
//! - **The lease** (§5.4): a confirmed round also tells when it started; with leases on, the
//!   leader may answer reads at once until that start plus the lease (shorter than the
//!   election timeout by the clock-drift margin), since no voter of that majority helps elect
//!   another leader within an election timeout of acking.
//! - **Reads through the leader** (§5.5): a follower or learner asks its leader for a read
//!   index (`Reader::Remote` on the leader's side, `ThroughLeader` on the asker's), waits
//!   until it has applied that far, and answers from its own state.
//! - **Leadership lost** (a step-down, a higher ballot): the reads pending are aborted, for
//!   their clients to retry at the new leader.
//!
//! Pure bookkeeping: the replica sends the messages and emits the actions.

use super::quorum::VoteSet;
use super::types::{NodeId, RequestId, Slot};

/// How fresh a read must be, and so who may answer it and how (protocol.md §5.3–§5.5).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Consistency {
    /// Linearizable, by the leader's read index: one heartbeat round per batch of reads.
    /// Other members send the client to the leader.
    #[default]
    Linearizable,
    /// Linearizable while clocks keep the stated drift bound: the leader answers at once while
    /// it holds a lease (`--read-lease`), else by its read index. Other members send the client
    /// to the leader.
    Lease,
    /// Linearizable, by any member: the leader by its read index, a follower or learner by
    /// asking its leader for one and answering from its own state once it has applied that far.
    Follower,
    /// Any member answers at once from what it has applied, and says how far that is; never
    /// older than the client's floor, and refused when older than the request's bound.
    Stale,
}

impl Consistency {
    /// Every consistency, by the name the command line and the HTTP API give it.
    pub const NAMES: [(&'static str, Consistency); 4] = [
        ("linearizable", Consistency::Linearizable),
        ("lease", Consistency::Lease),
        ("follower", Consistency::Follower),
        ("stale", Consistency::Stale),
    ];

    /// The consistency `name` names, if any.
    #[must_use]
    pub fn from_name(name: &str) -> Option<Consistency> {
        Self::NAMES.iter().find(|(known, _)| *known == name).map(|(_, consistency)| *consistency)
    }

    /// Its name.
    #[must_use]
    pub fn name(self) -> &'static str {
        Self::NAMES.iter().find(|(_, known)| *known == self).map_or("linearizable", |(n, _)| n)
    }
}

/// A bound on how far behind a stale read may be, as a person writes it: a count of slots
/// (`50`) or a time since the member last knew itself up to date (`250ms`, `2s`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StalenessBound {
    /// Committed slots heard of and not applied.
    Slots(u64),
    /// Milliseconds.
    Millis(u64),
}

impl StalenessBound {
    /// Reads `50`, `250ms` or `2s`.
    ///
    /// # Errors
    /// Anything else, with a message saying what is expected.
    pub fn parse(text: &str) -> Result<StalenessBound, String> {
        let number = |digits: &str| {
            digits
                .trim()
                .parse::<u64>()
                .map_err(|_| format!("`{text}` is not a count of slots (50) or a time (250ms, 2s)"))
        };
        if let Some(ms) = text.strip_suffix("ms") {
            Ok(StalenessBound::Millis(number(ms)?))
        } else if let Some(seconds) = text.strip_suffix('s') {
            Ok(StalenessBound::Millis(number(seconds)?.saturating_mul(1000)))
        } else {
            Ok(StalenessBound::Slots(number(text)?))
        }
    }
}

/// What a read asks besides its payload.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadOptions {
    /// How fresh it must be.
    pub consistency: Consistency,
    /// A stale read reflects at least every slot below this one (a client's last position on
    /// the shard, so that its reads never go back); the member waits until it has applied that
    /// far.
    pub from_slot: Slot,
    /// A stale read is refused, not answered, if the member knows of more than this many
    /// committed slots it has not applied.
    pub behind_slots_max: Option<u64>,
    /// A stale read is refused, not answered, if the member last knew itself up to date with
    /// its leader (or source) longer than this many milliseconds ago, on its own clock.
    pub behind_ms_max: Option<u64>,
}

impl ReadOptions {
    /// A read of `consistency`, bounded by `bound` if given (only a stale read takes one).
    ///
    /// # Errors
    /// A bound on a read that is not stale.
    pub fn new(
        consistency: Consistency,
        bound: Option<StalenessBound>,
    ) -> Result<ReadOptions, &'static str> {
        let mut read = ReadOptions { consistency, ..ReadOptions::default() };
        match (bound, consistency) {
            (None, _) => {}
            (Some(_), consistency) if consistency != Consistency::Stale => {
                return Err("a staleness bound is for stale reads only");
            }
            (Some(StalenessBound::Slots(slots)), _) => read.behind_slots_max = Some(slots),
            (Some(StalenessBound::Millis(ms)), _) => read.behind_ms_max = Some(ms),
        }
        Ok(read)
    }
}

/// How far behind a replica may be, by its own view (protocol.md §5.5).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Staleness {
    /// Committed slots it has heard of and not yet applied.
    pub slots: u64,
    /// Ticks since it last knew it had everything its leader (or source) had committed; for a
    /// leader, since a majority last acknowledged it.
    pub ticks: u64,
}

/// How [`crate::core::Replica::read`] took a read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadPath {
    /// Answered from the leader's lease, at once.
    Lease,
    /// Waits for the leader's next confirmation round.
    Round,
    /// Asked of the leader: waits for its read index.
    ThroughLeader,
    /// A stale read: answered at once (once the client's floor is applied).
    Stale,
}

/// Who waits for a round's confirmation: a read of this replica's own client, or a peer that
/// asked for a read index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Reader {
    /// A client's read on this replica.
    Local(RequestId),
    /// A follower's or learner's request for a read index, answered with the same nonce.
    Remote { node: NodeId, nonce: u64 },
}

/// A round that reached a majority.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Confirmed {
    /// The reads it confirms, each with its index.
    pub(super) reads: Vec<(Reader, Slot)>,
    /// The tick the round started at: its heartbeats left then or later.
    pub(super) started_tick: u64,
    /// The next round to start now, if reads wait for one.
    pub(super) next: Option<u64>,
}

/// A round being counted: its number, who acked it, and the reads it confirms.
#[derive(Debug)]
struct Round {
    number: u64,
    started_tick: u64,
    acks: VoteSet,
    reads: Vec<(Reader, Slot)>,
}

/// Rounds a leader keeps out at once: reads that arrive while one is out go in the next at the
/// leader's next flush instead of waiting for it to come back, so a read waits one round trip,
/// not up to two.
pub const ROUNDS_IN_FLIGHT_MAX: usize = 4;

/// A leader's reads: the rounds in flight, oldest first, and the reads waiting for the next.
#[derive(Debug, Default)]
pub(super) struct ReadRounds {
    /// The last round number started (0: none). Heartbeats carry it.
    last: u64,
    in_flight: std::collections::VecDeque<Round>,
    waiting: Vec<(Reader, Slot)>,
}

impl ReadRounds {
    /// The round heartbeats carry now.
    pub(super) fn current(&self) -> u64 {
        self.last
    }

    /// Registers a read at `index`. Returns the round to start now (its number), if none is
    /// in flight: the caller sends its heartbeats and counts its own ack.
    pub(super) fn add(&mut self, reader: Reader, index: Slot, now: u64) -> Option<u64> {
        self.waiting.push((reader, index));
        self.maybe_start(now)
    }

    /// Starts a round even if no read waits (a lease renewal), unless one is in flight.
    pub(super) fn renew(&mut self, now: u64) -> Option<u64> {
        if !self.in_flight.is_empty() {
            return None;
        }
        self.start(now)
    }

    fn maybe_start(&mut self, now: u64) -> Option<u64> {
        if !self.in_flight.is_empty() || self.waiting.is_empty() {
            return None;
        }
        self.start(now)
    }

    /// At a flush: a round for the reads that wait, if fewer than [`ROUNDS_IN_FLIGHT_MAX`] are
    /// out (every read that arrived in one burst of inputs shares it).
    pub(super) fn maybe_pipeline(&mut self, now: u64) -> Option<u64> {
        if self.waiting.is_empty() || self.in_flight.len() >= ROUNDS_IN_FLIGHT_MAX {
            return None;
        }
        self.start(now)
    }

    fn start(&mut self, now: u64) -> Option<u64> {
        self.last += 1;
        let reads = std::mem::take(&mut self.waiting);
        let round = Round { number: self.last, started_tick: now, acks: VoteSet::default(), reads };
        self.in_flight.push_back(round);
        Some(self.last)
    }

    /// Voter `index` acked round `round`, so every round up to it. The oldest rounds for which
    /// `is_quorum` now holds are confirmed: their reads, the latest one's start, and the next
    /// round to start if reads wait for one and none is left out.
    pub(super) fn on_ack(
        &mut self,
        index: usize,
        round: u64,
        now: u64,
        is_quorum: impl Fn(VoteSet) -> bool,
    ) -> Option<Confirmed> {
        // An ack of a later heartbeat counts for every round started before it: it was sent
        // after they began. Acks of rounds before the oldest in flight count for none.
        for in_flight in self.in_flight.iter_mut().take_while(|r| r.number <= round) {
            in_flight.acks.insert(index);
        }
        let mut confirmed: Option<Confirmed> = None;
        while self.in_flight.front().is_some_and(|oldest| is_quorum(oldest.acks)) {
            let Some(Round { reads, started_tick, .. }) = self.in_flight.pop_front() else {
                break;
            };
            let all =
                confirmed.get_or_insert(Confirmed { reads: Vec::new(), started_tick, next: None });
            all.reads.extend(reads);
            all.started_tick = started_tick;
        }
        let mut confirmed = confirmed?;
        confirmed.next = self.maybe_start(now);
        Some(confirmed)
    }

    /// Leadership ended: every read pending, to abort.
    pub(super) fn abort(&mut self) -> Vec<Reader> {
        let mut readers: Vec<Reader> = self.waiting.drain(..).map(|(reader, _)| reader).collect();
        for round in self.in_flight.drain(..) {
            readers.extend(round.reads.into_iter().map(|(reader, _)| reader));
        }
        readers
    }
}

/// A request for a read index sent to the leader, and the reads it is for.
#[derive(Debug)]
struct Asked {
    nonce: u64,
    reads: Vec<RequestId>,
    /// When it was last sent (resent every heartbeat interval until answered).
    sent_tick: u64,
    /// When it was first sent (its reads are aborted once it is this old).
    first_tick: u64,
}

/// A follower's or learner's reads through its leader (protocol.md §5.5): one request for a
/// read index in flight at a time, for every read that arrived before it was sent.
#[derive(Debug, Default)]
pub(super) struct ThroughLeader {
    /// The next nonce; starts from a number that differs at every start
    /// ([`crate::core::Replica::seed_nonces`]), so that an answer meant for an earlier
    /// incarnation is never taken for this one's.
    nonce_next: u64,
    asked: Option<Asked>,
    waiting: Vec<RequestId>,
}

impl ThroughLeader {
    /// Nonces start here.
    pub(super) fn seed(&mut self, nonce: u64) {
        self.nonce_next = nonce;
    }

    /// Registers a read; returns the nonce of a request to send now, if none is in flight.
    pub(super) fn add(&mut self, id: RequestId, now: u64) -> Option<u64> {
        self.waiting.push(id);
        self.maybe_ask(now)
    }

    fn maybe_ask(&mut self, now: u64) -> Option<u64> {
        if self.asked.is_some() || self.waiting.is_empty() {
            return None;
        }
        let nonce = self.nonce_next;
        self.nonce_next = self.nonce_next.wrapping_add(1);
        let reads = std::mem::take(&mut self.waiting);
        self.asked = Some(Asked { nonce, reads, sent_tick: now, first_tick: now });
        Some(nonce)
    }

    /// The leader answered `nonce` with `index`: the reads it is for, and the nonce of the next
    /// request to send, if reads wait for one. A refusal (`None`) changes nothing: the request
    /// goes again at the next [`ThroughLeader::on_tick`], to whoever leads then.
    pub(super) fn on_reply(
        &mut self,
        nonce: u64,
        index: Option<Slot>,
        now: u64,
    ) -> Option<(Vec<RequestId>, Option<u64>)> {
        let asked = self.asked.as_ref()?;
        if asked.nonce != nonce {
            return None;
        }
        index?;
        let reads = self.asked.take().map(|asked| asked.reads).unwrap_or_default();
        Some((reads, self.maybe_ask(now)))
    }

    /// Time passed: the nonce to send again if the request waited `resend_ticks`, and the reads
    /// to abort if it waited `abort_ticks` (then nothing is pending any more).
    pub(super) fn on_tick(
        &mut self,
        now: u64,
        resend_ticks: u64,
        abort_ticks: u64,
    ) -> (Option<u64>, Vec<RequestId>) {
        let Some(asked) = &mut self.asked else { return (None, Vec::new()) };
        if now >= asked.first_tick + abort_ticks {
            return (None, self.abort());
        }
        if now < asked.sent_tick + resend_ticks {
            return (None, Vec::new());
        }
        asked.sent_tick = now;
        (Some(asked.nonce), Vec::new())
    }

    /// Every read pending, to abort.
    pub(super) fn abort(&mut self) -> Vec<RequestId> {
        let mut ids = std::mem::take(&mut self.waiting);
        if let Some(asked) = self.asked.take() {
            ids.extend(asked.reads);
        }
        ids
    }
}

/// When a replica last knew it was up to date with what its leader or source had committed,
/// for stale reads' bound in time (protocol.md §5.5).
#[derive(Debug, Default)]
pub(super) struct Freshness {
    /// The highest commit position heard of, and the tick it was last heard at.
    told: Slot,
    told_tick: u64,
    /// The replica had applied everything it was told as of this tick.
    as_of_tick: u64,
}

impl Freshness {
    /// A leader or source said, at `now`, that it had committed below `commit_index`; this
    /// replica has committed below `own`.
    pub(super) fn told(&mut self, commit_index: Slot, own: Slot, now: u64) {
        if commit_index >= self.told {
            self.told = commit_index;
            self.told_tick = now;
        }
        if own >= commit_index {
            self.as_of_tick = self.as_of_tick.max(now);
        }
    }

    /// This replica has committed below `own` now.
    pub(super) fn on_commit(&mut self, own: Slot) {
        if own >= self.told {
            self.as_of_tick = self.as_of_tick.max(self.told_tick);
        }
    }

    /// The tick the replica was last known up to date at.
    pub(super) fn as_of_tick(&self) -> u64 {
        self.as_of_tick
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(n: u64) -> (Reader, Slot) {
        (Reader::Local(RequestId { client: 1, sequence: n }), Slot(n))
    }

    #[test]
    fn a_round_confirms_the_reads_before_it_and_the_next_takes_the_rest() {
        let mut rounds = ReadRounds::default();
        let majority = |acks: VoteSet| acks.count() >= 2;
        assert_eq!(rounds.add(read(1).0, read(1).1, 5), Some(1));
        assert_eq!(rounds.add(read(2).0, read(2).1, 6), None, "one round at a time");
        assert_eq!(rounds.on_ack(0, 1, 7, majority), None, "the leader's own ack is one");
        assert_eq!(rounds.on_ack(1, 0, 7, majority), None, "an ack of an older round");
        let confirmed = rounds.on_ack(1, 1, 8, majority).unwrap();
        assert_eq!(confirmed.reads, vec![read(1)]);
        assert_eq!(confirmed.started_tick, 5, "the round's start, not the ack's arrival");
        assert_eq!(confirmed.next, Some(2), "the read that waited starts the next round");
        assert_eq!(rounds.current(), 2);
        assert_eq!(rounds.on_ack(0, 1, 9, majority), None, "round 1 is over");
        assert_eq!(rounds.abort(), vec![read(2).0]);
        assert!(rounds.abort().is_empty());
    }

    #[test]
    fn rounds_pipeline_at_a_flush_and_a_later_ack_confirms_the_earlier_ones() {
        let mut rounds = ReadRounds::default();
        let majority = |acks: VoteSet| acks.count() >= 2;
        assert_eq!(rounds.add(read(1).0, read(1).1, 1), Some(1));
        assert_eq!(rounds.add(read(2).0, read(2).1, 2), None, "waits for a flush");
        assert_eq!(rounds.maybe_pipeline(2), Some(2), "the flush sends it out beside round 1");
        for n in 3..=ROUNDS_IN_FLIGHT_MAX as u64 + 2 {
            rounds.add(read(n).0, read(n).1, n);
            rounds.maybe_pipeline(n);
        }
        assert_eq!(rounds.maybe_pipeline(9), None, "nothing waits");
        rounds.add(read(9).0, read(9).1, 9);
        assert_eq!(rounds.maybe_pipeline(9), None, "the most rounds are out");
        for round in 1..=ROUNDS_IN_FLIGHT_MAX as u64 {
            assert_eq!(rounds.on_ack(0, round, 9, majority), None, "the leader's own");
        }
        let confirmed = rounds.on_ack(1, 3, 10, majority).unwrap();
        assert_eq!(
            confirmed.reads,
            vec![read(1), read(2), read(3)],
            "round 3's ack covers 1 and 2"
        );
        assert_eq!(confirmed.started_tick, 3);
        assert_eq!(confirmed.next, None, "round 4 is still out");
        assert_eq!(rounds.on_ack(1, 2, 11, majority), None, "a late ack of a confirmed round");
    }

    #[test]
    fn a_renewal_starts_an_empty_round_only_when_none_is_in_flight() {
        let mut rounds = ReadRounds::default();
        assert_eq!(rounds.renew(3), Some(1));
        assert_eq!(rounds.renew(4), None);
        assert_eq!(rounds.add(read(1).0, read(1).1, 4), None, "waits for the next round");
        let confirmed = rounds.on_ack(0, 1, 5, |_| true).unwrap();
        assert!(confirmed.reads.is_empty());
        assert_eq!((confirmed.started_tick, confirmed.next), (3, Some(2)));
    }

    #[test]
    fn reads_through_the_leader_take_only_the_answer_to_their_own_request() {
        let mut through = ThroughLeader::default();
        through.seed(100);
        let id = |n| RequestId { client: 1, sequence: n };
        assert_eq!(through.add(id(1), 0), Some(100));
        assert_eq!(through.add(id(2), 0), None, "one request in flight");
        assert_eq!(through.on_reply(99, Some(Slot(5)), 1), None, "another request's answer");
        assert_eq!(through.on_reply(100, None, 1), None, "a refusal: ask again later");
        assert_eq!(through.on_tick(1, 2, 10), (None, vec![]));
        assert_eq!(through.on_tick(2, 2, 10), (Some(100), vec![]), "sent again");
        let (reads, next) = through.on_reply(100, Some(Slot(5)), 3).unwrap();
        assert_eq!((reads, next), (vec![id(1)], Some(101)));
        assert_eq!(through.on_tick(13, 2, 10), (None, vec![id(2)]), "too old: aborted");
        assert!(through.abort().is_empty());
    }

    #[test]
    fn freshness_counts_from_the_last_position_told_that_was_reached() {
        let mut freshness = Freshness::default();
        freshness.told(Slot(10), Slot(4), 7);
        assert_eq!(freshness.as_of_tick(), 0, "behind what it was told");
        freshness.on_commit(Slot(9));
        assert_eq!(freshness.as_of_tick(), 0);
        freshness.on_commit(Slot(10));
        assert_eq!(freshness.as_of_tick(), 7, "up to date as of when it was told");
        freshness.told(Slot(10), Slot(10), 12);
        assert_eq!(freshness.as_of_tick(), 12);
    }
}
