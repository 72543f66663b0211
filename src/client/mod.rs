//! The client library: a blocking client that talks to a whole cluster.
//!
//! Give it any member's address. It learns the shard count, the members and each shard's
//! leader from the handshake, keeps one connection per shard to that shard's leader, follows
//! `NotLeader` redirects, and pipelines any number of outstanding requests per connection.
//! Every request carries a request id `(client, sequence)`; after a disconnect or a redirect
//! the outstanding requests are sent again with the same ids, so a retry is never applied
//! twice (the replicated session table answers it with the first reply).
//!
//! ```no_run
//! use quorum::client::{Client, ClientOptions};
//! let client = Client::connect(&["127.0.0.1:7000".to_string()], ClientOptions::default())?;
//! client.put(b"key", b"value")?;
//! assert_eq!(client.get(b"key")?, Some(b"value".to_vec()));
//! # Ok::<(), quorum::client::ClientError>(())
//! ```

mod backup;
mod cluster;
mod lane;
mod snapshot;
mod tail;

use std::collections::BTreeMap;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::core::{ClusterId, NodeId, RequestId, Slot};
use crate::machine::{KvCommand, KvReply, shard_for_key};
use crate::transport::codec::{Body, Encoder, Frame, Hello, HelloReply, PROTOCOL_VERSION, Role};
use crate::transport::framing::{ConnectionError, read_frame, write_frame};
use crate::transport::shard_address;

/// What [`node_status`] reports of each shard.
pub use crate::transport::codec::ShardStatus;
pub use backup::{BackupSaveError, SavedBackup, save_backup};
pub use cluster::{ClusterStatus, MemberStatus, Problem, cluster_status};
pub use lane::Completion;
use lane::Lane;
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
}

impl Default for ClientOptions {
    fn default() -> ClientOptions {
        ClientOptions {
            cluster_id: ClusterId(0),
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(2),
            client_id: None,
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
    /// A reply that does not decode.
    #[error("malformed reply: {0}")]
    BadReply(String),
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
                    let lanes =
                        (0..reply.shards).map(|shard| Lane::start(shared.clone(), shard)).collect();
                    return Ok(Client {
                        shared,
                        lanes,
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
        lane.submit(&sequences, commands, None);
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
        lane.submit(&sequences, commands, Some(notify));
        first
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
    /// [`StateMachine::query`](crate::machine::StateMachine::query) (protocol.md §5.2),
    /// and waits for the answer. A query is never applied: it may be retried freely.
    ///
    /// # Errors
    /// See [`ClientError`].
    pub fn query(&self, shard: u16, request: &[u8]) -> Result<Response, ClientError> {
        let lane = &self.lanes[usize::from(shard)];
        let deadline = Instant::now() + self.shared.options.request_timeout;
        let sequence = self.next_sequence.fetch_add(1, Ordering::Relaxed) | RequestId::QUERY_BIT;
        lane.submit(&[sequence], &[request], None);
        Ticket { lane: lane.clone(), sequence, deadline }.wait()
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

    /// Reads `key`, linearizably: a query ([`Client::query`]), ordered in the log like a write.
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
        for lane in &self.lanes {
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
