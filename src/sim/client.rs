//! Simulated clients: each keeps one request outstanding, follows redirects, and retries the
//! same request id elsewhere when a reply does not come, as the real client library will.

use crate::core::{ReadOptions, RequestId, Slot};
use crate::machine::{KvCommand, KvReply};

use super::coord::{CoordStep, Locker, Watcher};
use super::linearizability::{KvOp, KvResult};

/// A request a client is waiting on.
#[derive(Clone, Debug)]
pub struct Pending {
    /// The request id, the same on every retry.
    pub id: RequestId,
    /// A register-session command, sent before the operation while the client has no
    /// session on the key's shard; the operation follows once it is answered.
    pub register: bool,
    /// Which of the shared keys.
    pub key: usize,
    /// The key's shard.
    pub shard: usize,
    /// The operation, as the linearizability checker sees it.
    pub op: KvOp,
    /// How a get is read (protocol.md §5.3–§5.5); linearizable for the rest.
    pub read: ReadOptions,
    /// The encoded command (the register-session command's, while `register`).
    pub payload: Vec<u8>,
    /// When it was first sent.
    pub invoke_us: u64,
    /// The node it was last sent to.
    pub target: usize,
    /// Sent to `target` whatever the client's leader hint says (until a redirect or a
    /// timeout): a client with a stale view of who leads.
    pub pinned: bool,
    /// A coordination request (`op` and `key` matter only for the transactions on shared
    /// keys).
    pub coord: Option<CoordStep>,
}

impl Pending {
    /// The operation's encoded command (`unfenced`: the planted bug of fenced writes sent
    /// without their compare).
    pub fn encoded(&self, unfenced: bool) -> Vec<u8> {
        match &self.coord {
            Some(step) => {
                super::coord::command(step, &key_bytes(self.key), &self.op, unfenced).encode()
            }
            None => encode(self.key, &self.op),
        }
    }

    /// True if it goes as a query (protocol.md §5.2): answered where it is ordered, never
    /// applied.
    pub fn is_read(&self) -> bool {
        match &self.coord {
            Some(step) => super::coord::command(step, &[], &self.op, false).is_read(),
            None => self.op == KvOp::Get,
        }
    }
}

/// What a simulated client does.
#[derive(Debug)]
pub enum Role {
    /// Reads and writes the shared keys (some compare-and-sets and gets as transactions).
    Kv,
    /// Takes a lock under a lease and writes through its fencing token.
    Locker(Locker),
    /// Follows the shared keys' changes.
    Watcher(Watcher),
}

/// One simulated client.
#[derive(Debug)]
pub struct SimClient {
    /// The client's number, which makes the values it writes unique (its requests go under
    /// the sessions the shards register).
    pub id: u64,
    /// Its session on each shard, once registered.
    pub sessions: Vec<Option<u64>>,
    /// The last sequence number used.
    pub sequence: u64,
    /// The request in flight.
    pub pending: Option<Pending>,
    /// The leader last heard of, per shard (a node index).
    pub leader_hint: Vec<Option<usize>>,
    /// Bumped whenever the client moves on, so stale timers are ignored.
    pub timer_token: u64,
    /// Per key, the last value this client saw (to aim compare-and-sets at live values).
    pub seen: Vec<Option<u64>>,
    /// Per shard, the highest position a read of this client reflected: its stale reads
    /// start there, as the client library's do.
    pub read_floor: Vec<Slot>,
    /// What it does.
    pub role: Role,
}

impl SimClient {
    /// Client number `id`, with nothing sent yet.
    pub fn new(id: u64, knobs: &super::knobs::Knobs) -> SimClient {
        SimClient {
            id,
            sessions: vec![None; knobs.shards],
            sequence: 0,
            pending: None,
            leader_hint: vec![None; knobs.shards],
            timer_token: 0,
            seen: vec![None; knobs.keys],
            read_floor: vec![Slot(0); knobs.shards],
            role: Role::Kv,
        }
    }
}

/// The key's bytes.
pub fn key_bytes(key: usize) -> Vec<u8> {
    format!("key-{key}").into_bytes()
}

/// Encodes an operation on `key` as a KV command.
pub fn encode(key: usize, op: &KvOp) -> Vec<u8> {
    let key = key_bytes(key);
    let command = match op {
        KvOp::Get => KvCommand::Get { key },
        KvOp::Put(value) => KvCommand::Put { key, value: value.to_le_bytes().to_vec() },
        KvOp::Delete => KvCommand::Delete { key },
        KvOp::CompareAndSet { expected, new } => KvCommand::CompareAndSet {
            key,
            expected: expected.map(|value| value.to_le_bytes().to_vec()),
            new: new.to_le_bytes().to_vec(),
        },
    };
    command.encode()
}

fn decode_value(bytes: &Option<Vec<u8>>) -> Option<u64> {
    bytes.as_ref().map(|bytes| {
        let array: [u8; 8] = bytes.as_slice().try_into().expect("simulated values are 8 bytes");
        u64::from_le_bytes(array)
    })
}

/// The checker's view of a store reply.
pub fn result_of(reply: &KvReply) -> KvResult {
    match reply {
        KvReply::Done => KvResult::Done,
        KvReply::Value(value) => KvResult::Value(decode_value(value)),
        KvReply::CompareAndSet { succeeded, previous } => {
            KvResult::CompareAndSet { succeeded: *succeeded, previous: decode_value(previous) }
        }
        KvReply::Invalid | KvReply::Coord(_) => {
            panic!("the simulator sends only valid key-value commands")
        }
    }
}

/// A node's answer to a client.
#[derive(Clone, Debug)]
pub enum ClientReply {
    /// The command was applied (now or before: a retry gets the first reply), or the read
    /// answered, at this slot (a read: its state reflects every slot below).
    Applied(KvReply, Slot),
    /// A stale read refused: the member was further behind than its bound.
    TooStale,
    /// A register-session command was applied: the session's id.
    Registered(u64),
    /// Not the leader; try this node.
    Redirect(Option<usize>),
    /// The leader's pipeline is full; try again shortly.
    Busy,
}
