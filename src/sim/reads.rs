//! Reads in the simulated workload (protocol.md §5.3–§5.5): which consistency each client get
//! asks for, and the checker of stale reads. Linearizable, lease and follower reads join the
//! history the linearizability checker judges (I10); a stale read is checked against the log
//! instead: its value must be the key's in the state of the shard's chosen log below the
//! position it reports, and one client's stale reads of a shard never go back (I12).

use rand_xoshiro::Xoshiro256PlusPlus;

use crate::core::{Consistency, ReadOptions, Slot, Value};
use crate::machine::{Applier, KvCommand, KvReply, NodeMachine, SessionLimits, StateMachine as _};

use super::checkers::Violation;
use super::client::key_bytes;
use super::knobs::{Knobs, between};

/// The consistency and bounds of a client's next get; `floor` is the client's highest position
/// read on the key's shard (stale reads start there, as the client library's do).
pub fn draw_read(rng: &mut Xoshiro256PlusPlus, knobs: &Knobs, floor: Slot) -> ReadOptions {
    // Leases ask for a lease in most gets; without, lease reads fall back to the read index.
    let weights: [u64; 4] = if knobs.read_lease { [20, 40, 20, 20] } else { [35, 15, 25, 25] };
    let mut pick = between(rng, 0, weights.iter().sum::<u64>() - 1);
    let mut consistency = Consistency::Linearizable;
    for (weight, mode) in weights.iter().zip([
        Consistency::Linearizable,
        Consistency::Lease,
        Consistency::Follower,
        Consistency::Stale,
    ]) {
        if pick < *weight {
            consistency = mode;
            break;
        }
        pick -= weight;
    }
    let mut read = ReadOptions { consistency, ..ReadOptions::default() };
    if consistency == Consistency::Stale {
        read.from_slot = floor;
        match between(rng, 0, 2) {
            0 => read.behind_slots_max = Some(between(rng, 0, 8)),
            1 => read.behind_ms_max = Some(between(rng, 0, 50)),
            _ => {}
        }
    }
    read
}

/// True if a read of this consistency may go to any member (else to the leader).
pub fn anywhere(read: &ReadOptions) -> bool {
    matches!(read.consistency, Consistency::Follower | Consistency::Stale)
}

/// A stale read as its client saw it answered.
#[derive(Clone, Debug)]
pub struct StaleRead {
    /// The client.
    pub client: usize,
    /// The key's shard.
    pub shard: usize,
    /// Which key.
    pub key: usize,
    /// The position it reported: its state reflects every slot below.
    pub slot: Slot,
    /// The value it returned (the simulated values are u64).
    pub value: Option<u64>,
}

/// One client's stale read of a shard reported `slot` after an earlier read of it had reported
/// `floor`: it went back (I12).
pub fn check_monotonic(read: &StaleRead, floor: Slot) -> Result<(), Violation> {
    if read.slot < floor {
        return Err(Violation {
            invariant: "I12 stale reads reflect a prefix at their position, never going back",
            detail: format!(
                "client {} read key {} of shard {} at slot {} after reading at {}",
                read.client, read.key, read.shard, read.slot.0, floor.0
            ),
        });
    }
    Ok(())
}

/// I12: each stale read's value is the key's in the state the shard's chosen log builds below
/// the read's position. The log is replayed from slot 0 through a fresh applier (sessions
/// decide duplicates as on every replica, I9); `chosen` gives each slot's chosen value.
///
/// # Errors
/// The first read whose value differs, or whose position lies beyond what is chosen.
pub fn check_stale_reads(
    reads: &mut [StaleRead],
    shards: usize,
    sessions: SessionLimits,
    chosen: impl Fn(usize, u64) -> Option<Value>,
) -> Result<(), Violation> {
    let invariant = "I12 stale reads reflect a prefix at their position, never going back";
    reads.sort_by_key(|read| (read.shard, read.slot));
    for shard in 0..shards {
        let mut applier = Applier::new(NodeMachine::default(), sessions);
        let mut applied = 0u64;
        for read in reads.iter().filter(|read| read.shard == shard) {
            while applied < read.slot.0 {
                let Some(value) = chosen(shard, applied) else {
                    return Err(Violation {
                        invariant,
                        detail: format!(
                            "shard {shard}: a stale read reports slot {}, but slot {applied} \
                             was never chosen",
                            read.slot.0
                        ),
                    });
                };
                if let Value::Batch(bytes) = value {
                    let position = applied * shards as u64 + shard as u64;
                    let replayed = applier.apply_batch(Slot(applied), position, &bytes, |_, _| {});
                    replayed.map_err(|error| Violation {
                        invariant,
                        detail: format!("shard {shard} slot {applied} does not replay: {error}"),
                    })?;
                }
                applied += 1;
            }
            let get = KvCommand::Get { key: key_bytes(read.key) }.encode();
            let expected = match applier.machine().query(&get) {
                KvReply::Value(value) => value.map(|bytes| {
                    let array: [u8; 8] = bytes.as_slice().try_into().unwrap_or([0; 8]);
                    u64::from_le_bytes(array)
                }),
                other => panic!("a get answered {other:?}"),
            };
            if expected != read.value {
                return Err(Violation {
                    invariant,
                    detail: format!(
                        "client {} read key {} of shard {shard} as {:?} at slot {}, where the \
                         chosen log gives {expected:?}",
                        read.client, read.key, read.value, read.slot.0
                    ),
                });
            }
        }
    }
    Ok(())
}
