//! The lock workload (`quorum bench --workload lock`): each of `clients` slots holds a lease of
//! its own and takes and releases a lock of its own name, over and over; one cycle is a lock
//! and an unlock, both coordination writes (answered once every shard has committed past
//! them, docs/coordination.md). Closed loop from one driver thread through the client's
//! asynchronous submission, like the key-value load; counted and timed per cycle.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::load::{LoadResult, LoadSpec, Progress, Window};
use crate::client::{Client, Completion};
use crate::machine::kv::{CoordCommand, CoordReply};
use crate::machine::{KvReply, shard_for_key};

/// How long a slot's lease lives without a keep-alive: longer than any run.
const LEASE_TTL: Duration = Duration::from_secs(3600);

/// One slot: its lock, its lease, and the cycle under way.
struct Slot {
    name: Vec<u8>,
    shard: u16,
    lease: u64,
    /// When the cycle's lock was sent.
    started: Instant,
    locked: bool,
}

impl Slot {
    fn command(&self) -> Vec<u8> {
        let name = self.name.clone();
        if self.locked {
            CoordCommand::Unlock { name, lease: self.lease }.encode()
        } else {
            CoordCommand::Lock { name, lease: self.lease, value: Vec::new() }.encode()
        }
    }
}

/// True if a completion is a coordination reply that was not refused.
fn succeeded(completion: &Completion) -> bool {
    let Ok(response) = &completion.result else { return false };
    matches!(KvReply::decode(&response.body), Some(KvReply::Coord(reply)) if !matches!(reply, CoordReply::Refused(_)))
}

/// Runs the lock workload against `client`'s cluster.
///
/// # Errors
/// A lease could not be granted.
pub fn run(
    client: &Arc<Client>,
    spec: &LoadSpec,
    progress: &Arc<Progress>,
) -> Result<LoadResult, String> {
    let shards = usize::from(client.shards());
    let mut slots = Vec::with_capacity(spec.clients.max(1));
    for index in 0..spec.clients.max(1) {
        let lease = client.lease_grant(LEASE_TTL).map_err(|error| error.to_string())?.id;
        let name = format!("bench-lock-{index}").into_bytes();
        let shard = shard_for_key(&name, shards) as u16;
        slots.push(Slot { name, shard, lease, started: Instant::now(), locked: false });
    }
    let begin = Instant::now();
    let window = Window { start: begin + spec.warmup, end: begin + spec.warmup + spec.duration };
    let (sender, completions) = mpsc::channel::<Completion>();
    let mut by_sequence: HashMap<(u16, u64), usize> = HashMap::with_capacity(slots.len() * 2);
    // The next commands of the given slots, one submission per shard (one frame each), as
    // the key-value load sends what each burst of completions frees.
    let send = |ready: &[usize], slots: &[Slot], by_sequence: &mut HashMap<(u16, u64), usize>| {
        for shard in 0..shards as u16 {
            let these: Vec<usize> =
                ready.iter().copied().filter(|&s| slots[s].shard == shard).collect();
            if these.is_empty() {
                continue;
            }
            let commands: Vec<Vec<u8>> = these.iter().map(|&s| slots[s].command()).collect();
            let borrowed: Vec<&[u8]> = commands.iter().map(Vec::as_slice).collect();
            let first = client.submit_notify(shard, &borrowed, &sender);
            for (offset, &slot) in these.iter().enumerate() {
                by_sequence.insert((shard, first + offset as u64), slot);
            }
        }
    };
    let all: Vec<usize> = (0..slots.len()).collect();
    send(&all, &slots, &mut by_sequence);
    let mut tally = LoadResult::empty(spec.duration.as_secs_f64());
    let mut ready = Vec::new();
    while Instant::now() < window.end {
        let Ok(first) = completions.recv_timeout(Duration::from_millis(100)) else { continue };
        let mut completion = Some(first);
        while let Some(done) = completion.take().or_else(|| completions.try_recv().ok()) {
            let Some(slot) = by_sequence.remove(&(done.shard, done.sequence)) else { continue };
            let ok = succeeded(&done);
            let state = &mut slots[slot];
            if state.locked || !ok {
                // A cycle ends with its unlock (or fails at either step).
                tally.record(&window, state.started, true, ok);
                progress.completed.fetch_add(1, Ordering::Relaxed);
                state.locked = false;
                state.started = Instant::now();
            } else {
                state.locked = true;
            }
            ready.push(slot);
        }
        send(&ready, &slots, &mut by_sequence);
        ready.clear();
    }
    for slot in &slots {
        let _ = client.lease_revoke(slot.lease);
    }
    Ok(tally)
}
