//! Reads without the log (protocol.md §5.3): a leader answers a read once it has confirmed,
//! after the read arrived, that it was still the leader, and has applied up to the read's
//! index.
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
//!   arrived before it started; reads arriving meanwhile wait for the next.
//! - **Leadership lost** (a step-down, a higher ballot): the reads pending are aborted, for
//!   their clients to retry at the new leader.
//!
//! Pure bookkeeping: the replica sends the heartbeats and emits the actions.

use super::quorum::VoteSet;
use super::types::{RequestId, Slot};

/// Reads confirmed by a round, with the next round to start if reads wait for one.
pub(super) type Confirmed = (Vec<(RequestId, Slot)>, Option<u64>);

/// A round being counted: its number, who acked it, and the reads it confirms.
#[derive(Debug)]
struct Round {
    number: u64,
    acks: VoteSet,
    reads: Vec<(RequestId, Slot)>,
}

/// A leader's reads: the round in flight and the reads waiting for the next.
#[derive(Debug, Default)]
pub(super) struct ReadRounds {
    /// The last round number started (0: none). Heartbeats carry it.
    last: u64,
    in_flight: Option<Round>,
    waiting: Vec<(RequestId, Slot)>,
}

impl ReadRounds {
    /// The round heartbeats carry now.
    pub(super) fn current(&self) -> u64 {
        self.last
    }

    /// Registers a read at `index`. Returns the round to start now (its number), if none is
    /// in flight: the caller sends its heartbeats and counts its own ack.
    pub(super) fn add(&mut self, id: RequestId, index: Slot) -> Option<u64> {
        self.waiting.push((id, index));
        self.maybe_start()
    }

    fn maybe_start(&mut self) -> Option<u64> {
        if self.in_flight.is_some() || self.waiting.is_empty() {
            return None;
        }
        self.last += 1;
        let reads = std::mem::take(&mut self.waiting);
        self.in_flight = Some(Round { number: self.last, acks: VoteSet::default(), reads });
        Some(self.last)
    }

    /// Voter `index` acked round `round`. Once `is_quorum` holds for the acks, the round's reads
    /// are confirmed: returned, with the next round to start, if reads wait for one.
    pub(super) fn on_ack(
        &mut self,
        index: usize,
        round: u64,
        is_quorum: impl Fn(VoteSet) -> bool,
    ) -> Option<Confirmed> {
        let in_flight = self.in_flight.as_mut()?;
        // An ack of a later heartbeat of the same round counts too: it was sent after the
        // round began. Acks of earlier rounds do not.
        if round != in_flight.number {
            return None;
        }
        in_flight.acks.insert(index);
        if !is_quorum(in_flight.acks) {
            return None;
        }
        let confirmed = self.in_flight.take().map(|round| round.reads).unwrap_or_default();
        Some((confirmed, self.maybe_start()))
    }

    /// Leadership ended: every read pending, to abort.
    pub(super) fn abort(&mut self) -> Vec<RequestId> {
        let mut ids: Vec<RequestId> = self.waiting.drain(..).map(|(id, _)| id).collect();
        if let Some(round) = self.in_flight.take() {
            ids.extend(round.reads.into_iter().map(|(id, _)| id));
        }
        ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(n: u64) -> (RequestId, Slot) {
        (RequestId { client: 1, sequence: n }, Slot(n))
    }

    #[test]
    fn a_round_confirms_the_reads_before_it_and_the_next_takes_the_rest() {
        let mut rounds = ReadRounds::default();
        let majority = |acks: VoteSet| acks.count() >= 2;
        assert_eq!(rounds.add(read(1).0, read(1).1), Some(1));
        assert_eq!(rounds.add(read(2).0, read(2).1), None, "one round at a time");
        assert_eq!(rounds.on_ack(0, 1, majority), None, "the leader's own ack is one");
        assert_eq!(rounds.on_ack(1, 0, majority), None, "an ack of an older round");
        let (confirmed, next) = rounds.on_ack(1, 1, majority).unwrap();
        assert_eq!(confirmed, vec![read(1)]);
        assert_eq!(next, Some(2), "the read that waited starts the next round");
        assert_eq!(rounds.current(), 2);
        assert_eq!(rounds.on_ack(0, 1, majority), None, "round 1 is over");
        assert_eq!(rounds.abort(), vec![read(2).0]);
        assert!(rounds.abort().is_empty());
    }
}
