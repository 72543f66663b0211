//! Property tests: quorum arithmetic, ballot order, and decoders that never panic.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests and benches may unwrap.

use proptest::prelude::*;
use quorum::core::{Ballot, BatchBuilder, BatchReader, NodeId, RequestId, VoteSet, Voters};
use quorum::machine::KvCommand;

proptest! {
    /// Any two majorities of the same voters share a voter: the heart of Paxos safety.
    #[test]
    fn any_two_majorities_intersect(voters in 1usize..=9, a in any::<u64>(), b in any::<u64>()) {
        let set = Voters::new((1..=voters as u16).map(NodeId).collect());
        let pick = |mask: u64| {
            let mut votes = VoteSet::EMPTY;
            for index in 0..voters {
                if mask & (1 << index) != 0 {
                    votes.insert(index);
                }
            }
            votes
        };
        let (first, second) = (pick(a), pick(b));
        if set.is_quorum(first) && set.is_quorum(second) {
            prop_assert!((0..voters).any(|index| first.contains(index) && second.contains(index)));
        }
        prop_assert_eq!(set.majority(), voters / 2 + 1);
    }

    /// Ballots order by round, then node: a total order in which two nodes never share a ballot.
    #[test]
    fn ballots_order_by_round_then_node(r1 in 0u64..100, n1 in 0u16..10, r2 in 0u64..100, n2 in 0u16..10) {
        let (a, b) = (Ballot::new(r1, NodeId(n1)), Ballot::new(r2, NodeId(n2)));
        prop_assert_eq!(a.cmp(&b), (r1, n1).cmp(&(r2, n2)));
        prop_assert_eq!(a == b, r1 == r2 && n1 == n2);
    }

    /// A batch decodes to exactly the commands encoded into it, in order.
    #[test]
    fn batch_encoding_round_trips(commands in prop::collection::vec((any::<u64>(), any::<u64>(), prop::collection::vec(any::<u8>(), 0..64)), 0..50)) {
        let mut builder = BatchBuilder::new(1 << 20);
        for (client, sequence, payload) in &commands {
            builder.push(RequestId { client: *client, sequence: *sequence }, payload);
        }
        let bytes = builder.take();
        let decoded: Vec<(RequestId, Vec<u8>)> = BatchReader::new(&bytes)
            .map(|command| command.map(|(id, payload)| (id, payload.to_vec())))
            .collect::<Result<_, _>>()
            .unwrap();
        let expected: Vec<(RequestId, Vec<u8>)> = commands
            .into_iter()
            .map(|(client, sequence, payload)| (RequestId { client, sequence }, payload))
            .collect();
        prop_assert_eq!(decoded, expected);
    }

    /// Arbitrary bytes never make the batch decoder panic or loop.
    #[test]
    fn batch_decoder_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let count = BatchReader::new(&bytes).take(1_000).count();
        prop_assert!(count <= bytes.len() / 20 + 1);
    }

    /// Arbitrary bytes never make the KV command decoder panic.
    #[test]
    fn kv_decoder_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..128)) {
        if let Some(command) = KvCommand::decode(&bytes) {
            prop_assert_eq!(command.encode(), bytes);
        }
    }
}
