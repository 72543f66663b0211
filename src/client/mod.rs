//! The client library: a blocking client that talks to a whole cluster.
//!
//! Give it any member's address. It learns the shard count, the members and each shard's
//! leader from the handshake, keeps one connection per shard to that shard's leader, follows
//! `NotLeader` redirects, and pipelines any number of outstanding requests per connection.
//! Every request carries a request id `(client, sequence)`; after a disconnect or a redirect
//! the outstanding requests are sent again with the same ids, so a retry is never applied
//! twice (the replicated session table answers it with the first reply).
//!
//! Reads never enter the log (protocol.md §5.3–§5.5); each names a [`Consistency`]:
//! `Linearizable` (the default) and `Lease` go to the leader, `Follower` and `Stale` to one
//! member chosen per client ([`ClientOptions::read_member`]), so readers spread over the
//! members. A client's stale reads of a shard never go back before what its earlier reads of
//! it reflected.
//!
//! ```no_run
//! use quorum::client::{Client, ClientOptions, Consistency, ReadOptions};
//! let client = Client::connect(&["127.0.0.1:7000".to_string()], ClientOptions::default())?;
//! client.put(b"key", b"value")?;
//! assert_eq!(client.get(b"key")?, Some(b"value".to_vec()));
//! let stale = ReadOptions { consistency: Consistency::Stale, ..ReadOptions::default() };
//! let read = client.get_with(b"key", stale)?;
//! println!("{:?} as of slot {} of shard {}", read.value, read.slot.0, read.shard);
//! # Ok::<(), quorum::client::ClientError>(())
//! ```

mod backup;
mod cluster;
mod coord;
mod lane;
mod snapshot;
mod tail;

use std::collections::BTreeMap;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::core::{ClusterId, NodeId, RequestId, Slot};
use crate::machine::{KvCommand, KvReply, shard_for_key};
use crate::transport::codec::{Body, Encoder, Frame, Hello, HelloReply, PROTOCOL_VERSION, Role};
use crate::transport::framing::{ConnectionError, read_frame, write_frame};
use crate::transport::shard_address;

pub use crate::core::{Consistency, ReadOptions};
pub use crate::transport::codec::MoveRefused;
/// What [`node_status`] reports of each shard.
pub use crate::transport::codec::ShardStatus;
pub use backup::{BackupSaveError, SavedBackup, save_backup};
pub use cluster::{ClusterStatus, MemberStatus, Problem, cluster_status, move_leader};
pub use coord::{
    Lease, RangeOptions, TxnOutcome, Watch, at_cut, lease_id_random, merge_leases, merge_range,
    paced_as_poll, range_cut, range_shards, txn_shard,
};
pub use lane::{Callback, Completion};
use lane::{Lane, Notify, Target};
pub use snapshot::{FetchedSnapshot, fetch_snapshot, fetch_snapshot_into};
pub use tail::{Tail, TailBatch};

/// The largest frame a client reads.
const FRAME_BYTES_MAX: usize = 256 << 20;

/// How a client behaves.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// The cluster to talk to; `ClusterId(0)` accepts any.
    pub cluster_id: ClusterId,
    /// How long one request may take, retries included, before it fails with `Timeout`.
    pub request_timeout: Duration,
    /// How long to wait for a connection and its handshake.
    pub connect_timeout: Duration,
    /// The label this client's connections carry in the handshake (nodes log it); random if
    /// `None`. Not the id of its sessions: each shard assigns those (protocol.md §5.1).
    pub client_id: Option<u64>,
    /// The member follower and stale reads go to first (others if it cannot be reached);
    /// `None`: one picked from the client's label, so that clients spread over the members.
    pub read_member: Option<NodeId>,
}

impl Default for ClientOptions {
    fn default() -> ClientOptions {
        ClientOptions {
            cluster_id: ClusterId(0),
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(2),
            client_id: None,
            read_member: None,
        }
    }
}

/// Why a request failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// No answer within the request timeout. The request may still be applied later.
    #[error("no reply within {0:?}; the request may or may not have been applied")]
    Timeout(Duration),
    /// No member could be reached.
    #[error("cannot reach the cluster: {0}")]
    Disconnected(String),
    /// The cluster refused the connection (wrong cluster id, protocol version…).
    #[error("refused by the cluster: {0}")]
    Refused(String),
    /// The cluster refused the request for good.
    #[error("request rejected: {0}")]
    Rejected(String),
    /// The shard's leader is out of disk space: the request was not applied (nor written).
    /// The node resumes by itself once space is freed; retrying is up to the caller.
    #[error("out of disk space: {0}")]
    OutOfSpace(String),
    /// The request is older than what the server's session keeps (a count and a byte bound
    /// on replies): it was not applied now, and whether it was before is forgotten. Retrying
    /// with a new request is up to the caller.
    #[error("request expired from the session window")]
    Expired,
    /// The cluster evicted this client's session after it sat idle: the request was not
    /// applied, and no request of this client will be. Connect a new [`Client`] (it gets a
    /// new client id) and retry there, checking first whether the writes that timed out took
    /// effect.
    #[error(
        "this client's session expired (evicted while idle); the request was not applied: \
         connect a new client and retry"
    )]
    SessionExpired,
    /// A stale read was refused: the member that got it is further behind than the read's
    /// bound allows (protocol.md §5.5). Another member, or a later try, may answer.
    #[error(
        "shard {shard}: the member is {behind_slots} slots and {behind_ms} ms behind by its own \
         view, beyond the read's bound"
    )]
    TooStale {
        /// The shard.
        shard: u16,
        /// Committed slots it had heard of and not applied.
        behind_slots: u64,
        /// Milliseconds since it last knew itself up to date, on its clock.
        behind_ms: u64,
    },
    /// A reply that does not decode.
    #[error("malformed reply: {0}")]
    BadReply(String),
    /// The store refused a coordination command (docs/coordination.md); nothing of it was
    /// applied.
    #[error("{0}")]
    Coordination(crate::machine::kv::CoordError),
    /// A transaction names keys or locks of several shards: it would not be atomic. Keep
    /// what one transaction touches on one shard (docs/coordination.md).
    #[error(
        "the transaction's keys lie on shards {0:?}; a transaction runs on one shard (docs/coordination.md)"
    )]
    CrossShard(Vec<u16>),
    /// A tail asked for slots a shard's log no longer holds: a snapshot at `slot` stands for
    /// them (the node's `--snapshot-every-mib`).
    #[error(
        "shard {shard}'s log before slot {} was released behind a snapshot; fetch the \
         snapshot (`quorum snapshot`, `client::fetch_snapshot`) and tail from its slot, or \
         tail from a later position",
        .slot.0
    )]
    Compacted {
        /// The shard.
        shard: u16,
        /// The snapshot's slot: the log is kept from here.
        slot: Slot,
    },
}

/// A committed command's reply and where it was committed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// The shard.
    pub shard: u16,
    /// The slot of the shard's log its batch was committed in.
    pub slot: Slot,
    /// Its place in that batch.
    pub index: u32,
    /// True if this was a retry of a request applied before (the body is its first reply).
    pub duplicate: bool,
    /// The state machine's reply.
    pub body: Bytes,
}

/// A key's value as a read found it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Read {
    /// The value, if the key is set.
    pub value: Option<Vec<u8>>,
    /// The key's shard.
    pub shard: u16,
    /// The state read reflects every slot of the shard's log below this one, and none above.
    pub slot: Slot,
}

/// Where a command sits in the cluster's one log: slot `s` of shard `k` is global position
/// `s * shards + k`; `index` orders commands inside the batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    /// The global position of the batch.
    pub global: u64,
    /// The command's place in the batch.
    pub index: u32,
}

/// What the client knows about the cluster.
#[derive(Debug, Default)]
struct Membership {
    members: BTreeMap<NodeId, String>,
}

/// State shared by the client's handle and its connection threads.
struct Shared {
    options: ClientOptions,
    client_id: u64,
    shards: u16,
    seeds: Vec<String>,
    membership: Mutex<Membership>,
    closed: AtomicBool,
}

/// A client of one cluster. Cheap to share between threads (`&Client` is enough to submit).
pub struct Client {
    shared: Arc<Shared>,
    lanes: Vec<Arc<Lane>>,
    /// Per shard, the lane to the member follower and stale reads go to, once used.
    member_lanes: Vec<OnceLock<Arc<Lane>>>,
    /// Per shard, the highest slot a read has reflected: stale reads start there.
    read_floors: Vec<AtomicU64>,
    next_sequence: AtomicU64,
    next_append_shard: AtomicU64,
}

/// 16 random bytes from the operating system, or, should it fail, a hash of the time, the
/// process and a counter (good enough for a nonce that must merely differ from others').
fn random_bytes() -> [u8; 16] {
    let mut bytes = [0; 16];
    if getrandom::fill(&mut bytes).is_err() {
        bytes[..8].copy_from_slice(&random_client_id().to_le_bytes());
        bytes[8..].copy_from_slice(&random_client_id().to_le_bytes());
    }
    bytes
}

fn random_client_id() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos() as u64);
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    hasher.update(&now.to_le_bytes());
    hasher.update(&std::process::id().to_le_bytes());
    hasher.update(&COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    hasher.digest().max(1)
}

/// `shard` of a node that has `shards`, or an error that says how many it has.
fn check_shard(shard: u16, shards: u16) -> Result<(), ClientError> {
    if shard >= shards {
        return Err(ClientError::BadReply(format!(
            "shard {shard} does not exist: the node has {shards} (0 to {})",
            shards.saturating_sub(1)
        )));
    }
    Ok(())
}

/// A handshake's outcome: the connection, the node that answered, and what it said.
struct Handshake {
    stream: TcpStream,
    node: NodeId,
    /// The cluster the node answered for (its own, when we asked for any).
    cluster_id: ClusterId,
    reply: HelloReply,
}

/// Connects to shard `shard` at `base` and runs the handshake.
fn handshake(
    options: &ClientOptions,
    client_id: u64,
    base: &str,
    shard: u16,
) -> Result<Handshake, ClientError> {
    let address = shard_address(base, shard)
        .map_err(|error| ClientError::Disconnected(format!("{base}: {error}")))?;
    let disconnected =
        |error: &dyn std::fmt::Display| ClientError::Disconnected(format!("{address}: {error}"));
    let mut stream = TcpStream::connect_timeout(&address, options.connect_timeout)
        .map_err(|error| disconnected(&error))?;
    stream.set_nodelay(true).map_err(|error| disconnected(&error))?;
    stream.set_read_timeout(Some(options.connect_timeout)).map_err(|error| disconnected(&error))?;
    let hello = Frame {
        cluster_id: options.cluster_id,
        from: NodeId(0),
        shard,
        body: Body::Hello(Hello { version: PROTOCOL_VERSION, role: Role::Client(client_id) }),
    };
    write_frame(&mut stream, &mut Encoder::default(), &hello)
        .map_err(|error| disconnected(&error))?;
    let answer = read_frame(&mut stream, FRAME_BYTES_MAX).map_err(|error| disconnected(&error))?;
    stream.set_read_timeout(None).map_err(|error| disconnected(&error))?;
    let Body::HelloReply(reply) = answer.body else {
        return Err(ClientError::BadReply("expected a hello reply".into()));
    };
    if let Some(reason) = reply.refusal {
        return Err(ClientError::Refused(format!("{address}: {reason}")));
    }
    Ok(Handshake { stream, node: answer.from, cluster_id: answer.cluster_id, reply })
}

impl Client {
    /// Connects to the cluster through any of `seeds` (member addresses, `HOST:PORT`).
    ///
    /// # Errors
    /// No seed answered, or the cluster refused us.
    pub fn connect(seeds: &[String], options: ClientOptions) -> Result<Client, ClientError> {
        let client_id = options.client_id.unwrap_or_else(random_client_id);
        let mut last_error = ClientError::Disconnected("no address given".into());
        for seed in seeds {
            match handshake(&options, client_id, seed, 0) {
                Ok(handshake) => {
                    let reply = handshake.reply;
                    if reply.shards == 0 {
                        return Err(ClientError::BadReply("the cluster reports 0 shards".into()));
                    }
                    let members = reply.members.iter().map(|m| (m.id, m.address.clone())).collect();
                    let shared = Arc::new(Shared {
                        options,
                        client_id,
                        shards: reply.shards,
                        seeds: seeds.to_vec(),
                        membership: Mutex::new(Membership { members }),
                        closed: AtomicBool::new(false),
                    });
                    let lanes = (0..reply.shards)
                        .map(|shard| Lane::start(shared.clone(), shard, Target::Leader))
                        .collect();
                    return Ok(Client {
                        shared,
                        lanes,
                        member_lanes: (0..reply.shards).map(|_| OnceLock::new()).collect(),
                        read_floors: (0..reply.shards).map(|_| AtomicU64::new(0)).collect(),
                        next_sequence: AtomicU64::new(1),
                        next_append_shard: AtomicU64::new(0),
                    });
                }
                Err(error @ ClientError::Refused(_)) => return Err(error),
                Err(error) => last_error = error,
            }
        }
        Err(last_error)
    }

    /// Shards per node in this cluster.
    #[must_use]
    pub fn shards(&self) -> u16 {
        self.shared.shards
    }

    /// The members the client knows, with their addresses.
    #[must_use]
    pub fn members(&self) -> Vec<(NodeId, String)> {
        let membership = self.shared.membership.lock().unwrap_or_else(|e| e.into_inner());
        membership.members.iter().map(|(id, address)| (*id, address.clone())).collect()
    }

    /// The label this client's connections carry (see [`ClientOptions::client_id`]).
    #[must_use]
    pub fn id(&self) -> u64 {
        self.shared.client_id
    }

    /// Sends commands to one shard without waiting; each ticket waits for its reply.
    /// Commands sent in one call travel in one frame.
    ///
    /// # Panics
    /// `shard` is not below [`Client::shards`].
    pub fn submit_many(&self, shard: u16, commands: &[&[u8]]) -> Vec<Ticket> {
        let lane = &self.lanes[usize::from(shard)];
        let deadline = Instant::now() + self.shared.options.request_timeout;
        let first = self.next_sequence.fetch_add(commands.len() as u64, Ordering::Relaxed);
        let sequences: Vec<u64> = (first..first + commands.len() as u64).collect();
        lane.submit(&sequences, commands, ReadOptions::default(), None);
        sequences
            .into_iter()
            .map(|sequence| Ticket { lane: lane.clone(), sequence, deadline })
            .collect()
    }

    /// Sends commands to one shard without waiting; each outcome is sent to `notify` as it
    /// arrives (in any order). Requests submitted this way are retried like any other but
    /// never time out: the caller keeps its own clock. Returns the first sequence number;
    /// the commands get consecutive ones.
    ///
    /// # Panics
    /// `shard` is not below [`Client::shards`].
    pub fn submit_notify(
        &self,
        shard: u16,
        commands: &[&[u8]],
        notify: &std::sync::mpsc::Sender<Completion>,
    ) -> u64 {
        let lane = &self.lanes[usize::from(shard)];
        let first = self.next_sequence.fetch_add(commands.len() as u64, Ordering::Relaxed);
        let sequences: Vec<u64> = (first..first + commands.len() as u64).collect();
        lane.submit(&sequences, commands, ReadOptions::default(), Some(notify));
        first
    }

    /// Sends read-only requests to one shard without waiting, read as `read` says; each
    /// outcome is sent to `notify` as it arrives, like [`Client::submit_notify`]'s. Returns
    /// the first sequence number; the requests get consecutive ones.
    ///
    /// # Panics
    /// `shard` is not below [`Client::shards`].
    pub fn submit_reads_notify(
        &self,
        shard: u16,
        requests: &[&[u8]],
        read: ReadOptions,
        notify: &std::sync::mpsc::Sender<Completion>,
    ) -> u64 {
        let (lane, read) = self.read_lane(shard, read);
        let count = requests.len() as u64;
        let first = self.next_sequence.fetch_add(count, Ordering::Relaxed);
        let sequences: Vec<u64> =
            (first..first + count).map(|sequence| sequence | RequestId::QUERY_BIT).collect();
        lane.submit(&sequences, requests, read, Some(notify));
        first | RequestId::QUERY_BIT
    }

    /// Sends requests to one shard without waiting, as one frame; each outcome is handed to
    /// its callback (one per request, in order) as it arrives, on the client's connection
    /// thread, so a callback must not block. `read`: the requests are read-only queries read
    /// as it says ([`Client::query_with`]); `None`: they are commands for the log. Like
    /// [`Client::submit_notify`]'s, they are retried but never time out: a caller that gives up
    /// calls [`Client::abandon`]. Returns the sequence numbers, in order (for `abandon`).
    ///
    /// # Panics
    /// `shard` is not below [`Client::shards`], or `callbacks` and `requests` differ in length.
    pub fn submit_with(
        &self,
        shard: u16,
        read: Option<ReadOptions>,
        requests: &[&[u8]],
        callbacks: Vec<Callback>,
    ) -> Vec<u64> {
        assert_eq!(requests.len(), callbacks.len(), "one callback per request");
        let (lane, options, query_bit) = match read {
            Some(read) => {
                let (lane, read) = self.read_lane(shard, read);
                (lane, read, RequestId::QUERY_BIT)
            }
            None => (self.lanes[usize::from(shard)].clone(), ReadOptions::default(), 0),
        };
        let count = requests.len() as u64;
        let first = self.next_sequence.fetch_add(count, Ordering::Relaxed);
        let sequences: Vec<u64> =
            (first..first + count).map(|sequence| sequence | query_bit).collect();
        let notifies = callbacks.into_iter().map(|callback| Some(Notify::Callback(callback)));
        lane.submit_notifying(&sequences, requests, options, notifies);
        sequences
    }

    /// Forgets requests of one shard sent with [`Client::submit_with`],
    /// [`Client::submit_notify`] or [`Client::submit_reads_notify`] that the caller no longer
    /// waits for: they are not re-sent after a reconnection, and their callbacks are dropped
    /// uncalled. Whether a write among them was applied is unknown.
    ///
    /// # Panics
    /// `shard` is not below [`Client::shards`].
    pub fn abandon(&self, shard: u16, sequences: &[u64]) {
        let index = usize::from(shard);
        self.lanes[index].abandon(sequences.iter().copied());
        // Reads of another consistency went by the member's lane.
        if let Some(lane) = self.member_lanes[index].get() {
            lane.abandon(sequences.iter().copied());
        }
    }

    /// The lane a read goes by, and its options with the shard's floor for a stale one.
    fn read_lane(&self, shard: u16, mut read: ReadOptions) -> (Arc<Lane>, ReadOptions) {
        let index = usize::from(shard);
        match read.consistency {
            Consistency::Linearizable | Consistency::Lease => (self.lanes[index].clone(), read),
            Consistency::Follower | Consistency::Stale => {
                if read.consistency == Consistency::Stale {
                    let floor = Slot(self.read_floors[index].load(Ordering::Relaxed));
                    read.from_slot = read.from_slot.max(floor);
                }
                let lane = self.member_lanes[index].get_or_init(|| {
                    Lane::start(self.shared.clone(), shard, Target::Member(self.read_member()))
                });
                (lane.clone(), read)
            }
        }
    }

    /// The member follower and stale reads go to.
    fn read_member(&self) -> NodeId {
        if let Some(member) = self.shared.options.read_member {
            return member;
        }
        let members: Vec<NodeId> = self.members().into_iter().map(|(id, _)| id).collect();
        let pick = (self.shared.client_id % members.len().max(1) as u64) as usize;
        members.get(pick).copied().unwrap_or(NodeId(1))
    }

    /// Sends a read-only request to one shard, read as `read` says, and waits for the answer
    /// (never applied: it may be retried freely). Its [`Response::slot`] is the position its
    /// state reflects: every slot below applied.
    ///
    /// # Errors
    /// See [`ClientError`]; [`ClientError::TooStale`] for a stale read beyond its bound.
    pub fn query_with(
        &self,
        shard: u16,
        request: &[u8],
        read: ReadOptions,
    ) -> Result<Response, ClientError> {
        let (lane, read) = self.read_lane(shard, read);
        let deadline = Instant::now() + self.shared.options.request_timeout;
        let sequence = self.next_sequence.fetch_add(1, Ordering::Relaxed) | RequestId::QUERY_BIT;
        lane.submit(&[sequence], &[request], read, None);
        let response = Ticket { lane, sequence, deadline }.wait()?;
        self.read_floors[usize::from(shard)].fetch_max(response.slot.0, Ordering::Relaxed);
        Ok(response)
    }

    /// Reads `key` as `read` says, with where the state read stands.
    ///
    /// # Errors
    /// See [`Client::query_with`].
    pub fn get_with(&self, key: &[u8], read: ReadOptions) -> Result<Read, ClientError> {
        let shard = shard_for_key(key, usize::from(self.shared.shards)) as u16;
        let command = KvCommand::Get { key: key.to_vec() };
        let response = self.query_with(shard, &command.encode(), read)?;
        match KvReply::decode(&response.body) {
            Some(KvReply::Value(value)) => Ok(Read { value, shard, slot: response.slot }),
            other => Err(ClientError::BadReply(format!("a get answered {other:?}"))),
        }
    }

    /// Sends one command to one shard and waits for its reply.
    ///
    /// # Errors
    /// See [`ClientError`].
    pub fn call(&self, shard: u16, command: &[u8]) -> Result<Response, ClientError> {
        let mut tickets = self.submit_many(shard, &[command]);
        tickets.pop().expect("one ticket per command").wait()
    }

    /// Sends a read-only request to one shard, answered by its state machine's
    /// [`StateMachine::query`](crate::machine::StateMachine::query) (protocol.md §5.2) by
    /// the leader's read index, without the log (§5.3), and waits for the answer. A query is
    /// never applied: it may be retried freely. [`Client::query_with`] reads with another
    /// consistency.
    ///
    /// # Errors
    /// See [`ClientError`].
    pub fn query(&self, shard: u16, request: &[u8]) -> Result<Response, ClientError> {
        self.query_with(shard, request, ReadOptions::default())
    }

    fn kv(&self, key: &[u8], command: &KvCommand) -> Result<KvReply, ClientError> {
        let shard = shard_for_key(key, usize::from(self.shared.shards)) as u16;
        let response = match command {
            KvCommand::Get { .. } => self.query(shard, &command.encode())?,
            _ => self.call(shard, &command.encode())?,
        };
        KvReply::decode(&response.body)
            .ok_or_else(|| ClientError::BadReply("a reply that is not a KV reply".into()))
    }

    /// Sets `key` to `value`.
    ///
    /// # Errors
    /// See [`ClientError`].
    pub fn put(&self, key: &[u8], value: &[u8]) -> Result<(), ClientError> {
        let command = KvCommand::Put { key: key.to_vec(), value: value.to_vec() };
        self.kv(key, &command).map(|_| ())
    }

    /// Reads `key`, linearizably: a query ([`Client::query`]) the leader answers by its read
    /// index, without the log.
    ///
    /// # Errors
    /// See [`ClientError`].
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, ClientError> {
        match self.kv(key, &KvCommand::Get { key: key.to_vec() })? {
            KvReply::Value(value) => Ok(value),
            other => Err(ClientError::BadReply(format!("a get answered {other:?}"))),
        }
    }

    /// Removes `key`.
    ///
    /// # Errors
    /// See [`ClientError`].
    pub fn delete(&self, key: &[u8]) -> Result<(), ClientError> {
        self.kv(key, &KvCommand::Delete { key: key.to_vec() }).map(|_| ())
    }

    /// Sets `key` to `new` if it holds `expected` (`None`: if absent). Returns whether it did
    /// and the value the key held.
    ///
    /// # Errors
    /// See [`ClientError`].
    pub fn compare_and_set(
        &self,
        key: &[u8],
        expected: Option<&[u8]>,
        new: &[u8],
    ) -> Result<(bool, Option<Vec<u8>>), ClientError> {
        let command = KvCommand::CompareAndSet {
            key: key.to_vec(),
            expected: expected.map(<[u8]>::to_vec),
            new: new.to_vec(),
        };
        match self.kv(key, &command)? {
            KvReply::CompareAndSet { succeeded, previous } => Ok((succeeded, previous)),
            other => Err(ClientError::BadReply(format!("a compare-and-set answered {other:?}"))),
        }
    }

    /// Appends an opaque entry to the log (shards taken in turn) and returns its committed
    /// position.
    ///
    /// # Errors
    /// See [`ClientError`].
    pub fn append(&self, entry: &[u8]) -> Result<Position, ClientError> {
        let shards = u64::from(self.shared.shards);
        let shard = (self.next_append_shard.fetch_add(1, Ordering::Relaxed) % shards) as u16;
        let command = KvCommand::Append { entry: entry.to_vec() };
        let response = self.call(shard, &command.encode())?;
        Ok(self.position(&response))
    }

    /// Where a response's command sits in the cluster's one log.
    #[must_use]
    pub fn position(&self, response: &Response) -> Position {
        let shards = u64::from(self.shared.shards);
        Position {
            global: response.slot.0 * shards + u64::from(response.shard),
            index: response.index,
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        for lane in self.lanes.iter().chain(self.member_lanes.iter().filter_map(OnceLock::get)) {
            lane.close();
        }
    }
}

/// A submitted request; [`Ticket::wait`] gives its reply.
pub struct Ticket {
    lane: Arc<Lane>,
    sequence: u64,
    deadline: Instant,
}

impl Ticket {
    /// Waits for the reply, at most until the request timeout.
    ///
    /// # Errors
    /// See [`ClientError`].
    pub fn wait(self) -> Result<Response, ClientError> {
        self.lane.wait(self.sequence, self.deadline)
    }
}

/// Asks one node how each of its shards is doing; with `digest`, also for each state
/// machine's summary (a hash of the whole state: costly on a large one).
///
/// # Errors
/// The node cannot be reached or refuses us.
pub fn node_status(
    address: &str,
    cluster_id: ClusterId,
    digest: bool,
) -> Result<Vec<ShardStatus>, ClientError> {
    let options = ClientOptions { cluster_id, ..ClientOptions::default() };
    node_status_with(address, &options, digest)
}

/// [`node_status`] with these options (their cluster id and connect timeout; a digest may
/// take up to the request timeout).
///
/// # Errors
/// The node cannot be reached or refuses us.
pub fn node_status_with(
    address: &str,
    options: &ClientOptions,
    digest: bool,
) -> Result<Vec<ShardStatus>, ClientError> {
    let options = options.clone();
    let client_id = random_client_id();
    let first = handshake(&options, client_id, address, 0)?;
    let shards = first.reply.shards;
    let mut statuses = Vec::new();
    for shard in 0..shards {
        let mut stream = if shard == 0 {
            first
                .stream
                .try_clone()
                .map_err(|error| ClientError::Disconnected(error.to_string()))?
        } else {
            handshake(&options, client_id, address, shard)?.stream
        };
        let ask = Frame {
            cluster_id: options.cluster_id,
            from: NodeId(0),
            shard,
            body: Body::StatusRequest { digest },
        };
        let io = |error: &dyn std::fmt::Display| ClientError::Disconnected(error.to_string());
        // A digest hashes the whole state, spaced from the last: it may take a while.
        let wait = if digest { options.request_timeout } else { options.connect_timeout };
        stream.set_read_timeout(Some(wait)).map_err(|error| io(&error))?;
        write_frame(&mut stream, &mut Encoder::default(), &ask).map_err(|error| io(&error))?;
        match read_frame(&mut stream, FRAME_BYTES_MAX).map_err(|error| io(&error))?.body {
            Body::Status(status) => statuses.push(status),
            _ => return Err(ClientError::BadReply("expected a status".into())),
        }
    }
    let _ = first.node;
    Ok(statuses)
}

impl From<ConnectionError> for ClientError {
    fn from(error: ConnectionError) -> ClientError {
        ClientError::Disconnected(error.to_string())
    }
}
