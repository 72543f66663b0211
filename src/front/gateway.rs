//! The front ends' way into the cluster: one [`Client`] shared by every connection, with an
//! async face. A request is submitted with a callback that completes a tokio channel on the
//! client's connection thread ([`Client::submit_with`]), so no thread waits per request.
//!
//! Requests to one shard are gathered across connections: the first to find a shard's outbox
//! empty yields once to the runtime, so that every other connection ready to run adds its own,
//! then sends them all, one frame per run of reads or of writes. Each connection's requests
//! keep their order (one outbox per shard, sent under a lock in the order added). Without
//! this, each of 256 connections sending one request at a time cost a frame of its own, and
//! the front end served a sixth of what the native client does (BENCHMARKS.md).
//!
//! Reads are queries (the shard leader's read index, linearizable: protocol.md §5.3), writes
//! are commands for the log: their replies come once a majority has them durable.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::oneshot;

use super::FrontConfig;
use crate::client::{
    Callback, Client, ClientError, ClientOptions, Position, Response, ShardStatus,
};
use crate::core::batch::COMMAND_HEADER_BYTES;
use crate::core::{ClusterId, ReadOptions};
use crate::machine::kv::{CoordCommand, CoordError, CoordReply};
use crate::machine::{KvCommand, KvReply, shard_for_key};

/// Whether a request reads (a query: never in the log) or writes (a command for the log).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Answered by the shard leader's state machine after a read-index round.
    Read,
    /// Committed through the log, durable on a majority before its reply.
    Write,
}

/// Why a request through a front end failed; [`RequestError::code`] is the stable name each
/// front end reports.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// No reply in time: no leader (an election runs, or a majority is down) or a slow one.
    #[error(
        "no reply from the shard's leader within {0:?} (no leader, or no majority): a write may \
         or may not have been applied; try again"
    )]
    Timeout(Duration),
    /// The cluster cannot be reached, or refused the request for now.
    #[error("the cluster is unavailable: {0}")]
    Unavailable(String),
    /// The command does not fit in one of the node's batches.
    #[error(
        "the command takes {bytes} bytes, more than the node's limit of {max} (key and value together)"
    )]
    TooLarge {
        /// The encoded command's size.
        bytes: usize,
        /// The largest that fits.
        max: usize,
    },
    /// The shard's leader has no disk space left; nothing was applied.
    #[error("out of disk space: {0}")]
    OutOfSpace(String),
    /// The cluster refused the command for good.
    #[error("rejected by the cluster: {0}")]
    Rejected(String),
    /// A reply the front end cannot read (a bug, or another state machine behind the node).
    #[error("a reply that is not a key-value reply: {0}")]
    BadReply(String),
    /// A stale read whose member is further behind than the read's bound: refused, not
    /// answered older.
    #[error("{0}")]
    TooStale(String),
    /// The store refused a coordination command (nothing of it applied): an unknown lease,
    /// a compacted revision, a key over the limit, …
    #[error("{0}")]
    Coordination(CoordError),
    /// A transaction whose keys and lock names lie on several shards: refused before it was
    /// sent (a transaction runs on one shard; put its keys under one hash tag).
    #[error(
        "the transaction's keys lie on shards {0:?}; a transaction runs on one shard: put its keys and locks under one hash tag, such as {{tag}}key (docs/coordination.md)"
    )]
    CrossShard(Vec<u16>),
}

impl RequestError {
    /// The error's stable code, as the front ends name it.
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            RequestError::Timeout(_) => "timeout",
            RequestError::Unavailable(_) => "unavailable",
            RequestError::TooLarge { .. } => "too_large",
            RequestError::OutOfSpace(_) => "out_of_space",
            RequestError::Rejected(_) => "rejected",
            RequestError::BadReply(_) => "bad_reply",
            RequestError::TooStale(_) => "too_stale",
            RequestError::Coordination(error) => error.code(),
            RequestError::CrossShard(_) => "cross_shard",
        }
    }
}

impl From<ClientError> for RequestError {
    fn from(error: ClientError) -> RequestError {
        match error {
            ClientError::Timeout(timeout) => RequestError::Timeout(timeout),
            ClientError::OutOfSpace(reason) => RequestError::OutOfSpace(reason),
            ClientError::Rejected(reason) => RequestError::Rejected(reason),
            ClientError::BadReply(reason) => RequestError::BadReply(reason),
            error @ ClientError::TooStale { .. } => RequestError::TooStale(error.to_string()),
            ClientError::Coordination(error) => RequestError::Coordination(error),
            ClientError::CrossShard(shards) => RequestError::CrossShard(shards),
            // The session was evicted or the reply window passed it: not applied now; the
            // client registers a new session for the next request.
            error @ (ClientError::Expired | ClientError::SessionExpired) => {
                RequestError::Unavailable(error.to_string())
            }
            error => RequestError::Unavailable(error.to_string()),
        }
    }
}

/// A request waiting in a shard's outbox.
struct Entry {
    access: Access,
    /// How a read is read (unused for a write).
    read: ReadOptions,
    command: Vec<u8>,
    callback: Callback,
    /// Its sequence number, once sent (to abandon it after a timeout).
    sequence: Arc<OnceLock<u64>>,
}

/// One shard's requests not yet sent.
#[derive(Default)]
struct Outbox {
    entries: Vec<Entry>,
    /// A task will send them: those added meanwhile go with them.
    flushing: bool,
}

/// Sends a shard's outbox when dropped.
struct FlushOnDrop<'a> {
    gateway: &'a Gateway,
    shard: u16,
}

impl Drop for FlushOnDrop<'_> {
    fn drop(&mut self) {
        self.gateway.flush(self.shard);
    }
}

/// The cluster, as the front ends use it.
pub struct Gateway {
    client: Client,
    /// Per shard: requests waiting to be sent.
    outboxes: Vec<Mutex<Outbox>>,
    /// Per shard: held while an outbox's requests are taken and sent, so that requests added
    /// later are sent later.
    sending: Vec<Mutex<()>>,
    request_timeout: Duration,
    command_bytes_max: usize,
    node: String,
    cluster_id: ClusterId,
    next_append_shard: AtomicU64,
}

/// Requests submitted to one shard, not yet answered: [`Submitted::wait`] gives their
/// outcomes.
pub struct Submitted<'a> {
    gateway: &'a Gateway,
    shard: u16,
    sequences: Vec<Arc<OnceLock<u64>>>,
    receivers: Vec<oneshot::Receiver<Result<Response, ClientError>>>,
    deadline: tokio::time::Instant,
}

impl Submitted<'_> {
    /// The outcomes, in the order submitted; a request not answered by the deadline fails
    /// with [`RequestError::Timeout`] and is abandoned (not re-sent again).
    pub async fn wait(self) -> Vec<Result<Response, RequestError>> {
        let mut outcomes = Vec::with_capacity(self.receivers.len());
        let mut abandoned = Vec::new();
        for (receiver, sequence) in self.receivers.into_iter().zip(&self.sequences) {
            let outcome = match tokio::time::timeout_at(self.deadline, receiver).await {
                Ok(Ok(result)) => result.map_err(RequestError::from),
                // The callback was dropped uncalled: the client closed.
                Ok(Err(_)) => Err(RequestError::Unavailable("the client closed".into())),
                Err(_) => {
                    abandoned.extend(sequence.get().copied());
                    Err(RequestError::Timeout(self.gateway.request_timeout))
                }
            };
            outcomes.push(outcome);
        }
        if !abandoned.is_empty() {
            self.gateway.client.abandon(self.shard, &abandoned);
        }
        outcomes
    }
}

/// A coordination command's reply in `response`, or the refusal it is.
fn coordination_reply(response: Response) -> Result<(CoordReply, Response), RequestError> {
    match KvReply::decode(&response.body) {
        Some(KvReply::Coord(CoordReply::Refused(error))) => Err(RequestError::Coordination(error)),
        Some(KvReply::Coord(reply)) => Ok((reply, response)),
        Some(KvReply::Invalid) => {
            Err(RequestError::Rejected("the store could not decode the command".into()))
        }
        other => Err(RequestError::BadReply(format!("a coordination command got {other:?}"))),
    }
}

/// A KV reply as the answer to one kind of command, or why not.
fn expect_reply(response: Result<Response, RequestError>) -> Result<KvReply, RequestError> {
    let response = response?;
    match KvReply::decode(&response.body) {
        Some(KvReply::Invalid) => {
            Err(RequestError::Rejected("the store could not decode the command".into()))
        }
        Some(reply) => Ok(reply),
        None => Err(RequestError::BadReply(format!("{} bytes", response.body.len()))),
    }
}

impl Gateway {
    /// Connects to the node and its peers (`config.seeds`).
    ///
    /// # Errors
    /// No seed answered, or the cluster refused the client.
    pub fn connect(config: &FrontConfig) -> Result<Gateway, ClientError> {
        let options = ClientOptions {
            cluster_id: config.cluster_id,
            request_timeout: config.request_timeout,
            ..ClientOptions::default()
        };
        let client = Client::connect(&config.seeds, options)?;
        let shards = usize::from(client.shards());
        Ok(Gateway {
            outboxes: (0..shards).map(|_| Mutex::new(Outbox::default())).collect(),
            sending: (0..shards).map(|_| Mutex::new(())).collect(),
            client,
            request_timeout: config.request_timeout,
            command_bytes_max: config.batch_bytes_max.saturating_sub(COMMAND_HEADER_BYTES),
            node: config.seeds.first().cloned().unwrap_or_default(),
            cluster_id: config.cluster_id,
            next_append_shard: AtomicU64::new(0),
        })
    }

    /// The largest encoded command the node takes: a key and its value (and, for a
    /// compare-and-set, the expected value) must fit in it with a few bytes of framing.
    #[must_use]
    pub fn command_bytes_max(&self) -> usize {
        self.command_bytes_max
    }

    /// The shard `key` lives on.
    #[must_use]
    pub fn shard_of(&self, key: &[u8]) -> u16 {
        shard_for_key(key, usize::from(self.client.shards())) as u16
    }

    /// Shards in the cluster.
    #[must_use]
    pub fn shards(&self) -> u16 {
        self.client.shards()
    }

    /// `command`, encoded, if it fits in a batch.
    ///
    /// # Errors
    /// [`RequestError::TooLarge`].
    pub fn encode(&self, command: &KvCommand) -> Result<Vec<u8>, RequestError> {
        let bytes = command.encode();
        if bytes.len() > self.command_bytes_max {
            return Err(RequestError::TooLarge { bytes: bytes.len(), max: self.command_bytes_max });
        }
        Ok(bytes)
    }

    /// Sends encoded commands (all reads or all writes) to one shard, with those other
    /// connections send at the same moment; they take effect in the order given, and after
    /// what this connection submitted before.
    pub async fn submit(&self, shard: u16, access: Access, commands: &[&[u8]]) -> Submitted<'_> {
        self.submit_as(shard, access, ReadOptions::default(), commands).await
    }

    /// [`Gateway::submit`], reads read as `read` says.
    pub async fn submit_as(
        &self,
        shard: u16,
        access: Access,
        read: ReadOptions,
        commands: &[&[u8]],
    ) -> Submitted<'_> {
        let deadline = tokio::time::Instant::now() + self.request_timeout;
        let mut receivers = Vec::with_capacity(commands.len());
        let mut sequences = Vec::with_capacity(commands.len());
        let entries = commands.iter().map(|command| {
            let (sender, receiver) = oneshot::channel();
            receivers.push(receiver);
            let sequence = Arc::new(OnceLock::new());
            sequences.push(sequence.clone());
            let callback: Callback = Box::new(move |result| {
                // A receiver gone gave up waiting.
                let _ = sender.send(result);
            });
            Entry { access, read, command: command.to_vec(), callback, sequence }
        });
        let outbox = &self.outboxes[usize::from(shard)];
        let flush = {
            let mut outbox = outbox.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            outbox.entries.extend(entries);
            !std::mem::replace(&mut outbox.flushing, true)
        };
        if flush {
            // Let the other connections ready to run add theirs, then send everything: when
            // the guard drops, also if this task is dropped while it yields (an HTTP client
            // that hung up), or the outbox would wait for a flush that never comes.
            let _flush = FlushOnDrop { gateway: self, shard };
            tokio::task::yield_now().await;
        }
        Submitted { gateway: self, shard, sequences, receivers, deadline }
    }

    /// Sends what waits in `shard`'s outbox: one frame per run of reads or writes, in order.
    fn flush(&self, shard: u16) {
        let _sending = self.sending[usize::from(shard)]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let entries = {
            let mut outbox = self.outboxes[usize::from(shard)]
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            outbox.flushing = false;
            std::mem::take(&mut outbox.entries)
        };
        let mut entries = entries.into_iter().peekable();
        while let Some(first) = entries.next() {
            let (access, options) = (first.access, first.read);
            let mut run = vec![first];
            let same = |entry: &Entry| {
                entry.access == access && (access == Access::Write || entry.read == options)
            };
            while let Some(next) = entries.next_if(same) {
                run.push(next);
            }
            let mut slots = Vec::with_capacity(run.len());
            let mut owned_commands = Vec::with_capacity(run.len());
            let mut owned_callbacks: Vec<Callback> = Vec::with_capacity(run.len());
            for entry in run {
                slots.push(entry.sequence);
                owned_commands.push(entry.command);
                owned_callbacks.push(entry.callback);
            }
            let commands: Vec<&[u8]> = owned_commands.iter().map(Vec::as_slice).collect();
            let read = (access == Access::Read).then_some(options);
            let sent = self.client.submit_with(shard, read, &commands, owned_callbacks);
            for (slot, sequence) in slots.iter().zip(sent) {
                let _ = slot.set(sequence);
            }
        }
    }

    /// Sends one KV command to its key's shard and waits for the reply.
    ///
    /// # Errors
    /// See [`RequestError`].
    pub async fn kv(
        &self,
        key: &[u8],
        access: Access,
        command: &KvCommand,
    ) -> Result<KvReply, RequestError> {
        self.kv_as(key, access, ReadOptions::default(), command).await
    }

    /// [`Gateway::kv`], a read read as `read` says.
    ///
    /// # Errors
    /// See [`RequestError`].
    pub async fn kv_as(
        &self,
        key: &[u8],
        access: Access,
        read: ReadOptions,
        command: &KvCommand,
    ) -> Result<KvReply, RequestError> {
        let bytes = self.encode(command)?;
        let submitted = self.submit_as(self.shard_of(key), access, read, &[&bytes]).await;
        let outcome = submitted.wait().await.pop();
        expect_reply(outcome.unwrap_or_else(|| Err(RequestError::BadReply("no outcome".into()))))
    }

    /// Reads `key`, linearizably.
    ///
    /// # Errors
    /// See [`RequestError`].
    pub async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, RequestError> {
        self.get_with(key, ReadOptions::default()).await
    }

    /// Reads `key` as `read` says (docs/http.md, "Reads").
    ///
    /// # Errors
    /// See [`RequestError`].
    pub async fn get_with(
        &self,
        key: &[u8],
        read: ReadOptions,
    ) -> Result<Option<Vec<u8>>, RequestError> {
        let command = KvCommand::Get { key: key.to_vec() };
        match self.kv_as(key, Access::Read, read, &command).await? {
            KvReply::Value(value) => Ok(value),
            other => Err(RequestError::BadReply(format!("a get answered {other:?}"))),
        }
    }

    /// Sets `key` to `value`.
    ///
    /// # Errors
    /// See [`RequestError`].
    pub async fn put(&self, key: &[u8], value: &[u8]) -> Result<(), RequestError> {
        let command = KvCommand::Put { key: key.to_vec(), value: value.to_vec() };
        self.kv(key, Access::Write, &command).await.map(|_| ())
    }

    /// Removes `key` (whether or not it was there).
    ///
    /// # Errors
    /// See [`RequestError`].
    pub async fn delete(&self, key: &[u8]) -> Result<(), RequestError> {
        self.kv(key, Access::Write, &KvCommand::Delete { key: key.to_vec() }).await.map(|_| ())
    }

    /// Sets `key` to `new` if it holds `expected` (`None`: if absent); whether it did, and
    /// what the key held.
    ///
    /// # Errors
    /// See [`RequestError`].
    pub async fn compare_and_set(
        &self,
        key: &[u8],
        expected: Option<&[u8]>,
        new: &[u8],
    ) -> Result<(bool, Option<Vec<u8>>), RequestError> {
        let command = KvCommand::CompareAndSet {
            key: key.to_vec(),
            expected: expected.map(<[u8]>::to_vec),
            new: new.to_vec(),
        };
        match self.kv(key, Access::Write, &command).await? {
            KvReply::CompareAndSet { succeeded, previous } => Ok((succeeded, previous)),
            other => Err(RequestError::BadReply(format!("a compare-and-set answered {other:?}"))),
        }
    }

    /// Sends a coordination command to `shard`: a read as a query read as `read` says, any
    /// other command through the log (as [`Client::coordinate`] does, without a thread
    /// waiting). A refusal is [`RequestError::Coordination`].
    ///
    /// # Errors
    /// See [`RequestError`].
    pub async fn coordinate(
        &self,
        shard: u16,
        command: &CoordCommand,
        read: ReadOptions,
    ) -> Result<CoordReply, RequestError> {
        self.coordinate_at(shard, command, read).await.map(|(reply, _)| reply)
    }

    /// [`Gateway::coordinate`], with the response the reply came in: the slot its shard's
    /// state reflected (what a range's cut and a watch's merge need).
    ///
    /// # Errors
    /// See [`RequestError`].
    pub async fn coordinate_at(
        &self,
        shard: u16,
        command: &CoordCommand,
        read: ReadOptions,
    ) -> Result<(CoordReply, Response), RequestError> {
        let mut outcomes = self.coordinate_many(&[(shard, command)], read).await;
        outcomes.pop().unwrap_or_else(|| Err(RequestError::BadReply("no outcome".into())))
    }

    /// Sends coordination commands to their shards all at once (each after those before it to
    /// the same shard) and waits for every reply; the outcomes in the order given.
    pub async fn coordinate_many(
        &self,
        commands: &[(u16, &CoordCommand)],
        read: ReadOptions,
    ) -> Vec<Result<(CoordReply, Response), RequestError>> {
        let mut waiting = Vec::with_capacity(commands.len());
        for (shard, command) in commands {
            let encoded = command.check().map_err(RequestError::Coordination).and_then(|()| {
                let bytes = command.encode();
                if bytes.len() > self.command_bytes_max {
                    return Err(RequestError::TooLarge {
                        bytes: bytes.len(),
                        max: self.command_bytes_max,
                    });
                }
                Ok(bytes)
            });
            waiting.push(match encoded {
                Ok(bytes) => {
                    let access = if command.is_read() { Access::Read } else { Access::Write };
                    Ok(self.submit_as(*shard, access, read, &[&bytes]).await)
                }
                Err(error) => Err(error),
            });
        }
        let mut outcomes = Vec::with_capacity(waiting.len());
        for submitted in waiting {
            let outcome = match submitted {
                Ok(submitted) => submitted
                    .wait()
                    .await
                    .pop()
                    .unwrap_or_else(|| Err(RequestError::BadReply("no outcome".into()))),
                Err(error) => Err(error),
            };
            outcomes.push(outcome.and_then(coordination_reply));
        }
        outcomes
    }

    /// How long a request may wait for the cluster.
    #[must_use]
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// Appends an opaque entry to the log (shards taken in turn); its committed position.
    ///
    /// # Errors
    /// See [`RequestError`].
    pub async fn append(&self, entry: &[u8]) -> Result<Position, RequestError> {
        let shards = u64::from(self.client.shards());
        let shard = (self.next_append_shard.fetch_add(1, Ordering::Relaxed) % shards) as u16;
        let bytes = self.encode(&KvCommand::Append { entry: entry.to_vec() })?;
        let outcome = self.submit(shard, Access::Write, &[&bytes]).await.wait().await.pop();
        let response =
            outcome.unwrap_or_else(|| Err(RequestError::BadReply("no outcome".into())))?;
        Ok(self.client.position(&response))
    }

    /// How each shard of this node is doing (its status request, on a blocking thread).
    ///
    /// # Errors
    /// The node does not answer.
    pub async fn status(&self) -> Result<Vec<ShardStatus>, RequestError> {
        let (node, cluster_id) = (self.node.clone(), self.cluster_id);
        tokio::task::spawn_blocking(move || crate::client::node_status(&node, cluster_id, false))
            .await
            .map_err(|error| RequestError::Unavailable(error.to_string()))?
            .map_err(RequestError::from)
    }

    /// This node's client address.
    #[must_use]
    pub fn node_address(&self) -> &str {
        &self.node
    }
}
