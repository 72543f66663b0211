//! One Redis connection's state (its protocol, name, id) and how it runs a pipeline.
//!
//! Replies go out in the order the requests came. What takes effect in that order: requests
//! on one shard (so on one key) take effect in the order sent, a read seeing every earlier
//! write of the pipeline to its shard; requests on different shards, sent together, may take
//! effect in either order, as a pipeline spread over the nodes of a Redis Cluster does. A
//! request sent after the reply to another is ordered after it (every write and read is
//! linearizable). So a pipeline of one shard's requests leaves as few frames (a run of reads,
//! then a run of writes, until a read follows a write), and shards work in parallel.
//!
//! Commands that need more than one step (`DEL`'s count, `MGET`, `MSET`, the conditional and
//! read-modify-write ones, as compare-and-set loops) wait for the requests before them and
//! finish before the next start.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;

use super::command::{Command, Condition, TABLE, describe, parse, stored_integer};
use super::expiry;
use super::pubsub::Subscriptions;
use super::reply::{Protocol, Reply, failure};
use super::scan::{self, Cursors};
use super::txn::{self, Transaction};
use crate::front::{Access, Gateway, RequestError};
use crate::machine::{KvCommand, KvReply};

/// Compare-and-set rounds a read-modify-write command tries before giving up on a key that
/// changes under it each time.
const UPDATE_ROUNDS_MAX: usize = 64;

/// What the node's connections share: the gateway and the count for `INFO`.
pub struct Shared {
    /// The cluster.
    pub gateway: Arc<Gateway>,
    /// Open Redis connections.
    pub connections: AtomicUsize,
    /// Where this front end listens.
    pub listen: SocketAddr,
    /// The node's open `SCAN` cursors.
    pub cursors: std::sync::Mutex<Cursors>,
}

/// One connection's state.
pub struct Session {
    shared: Arc<Shared>,
    id: u64,
    peer: SocketAddr,
    name: Option<Bytes>,
    protocol: Protocol,
    quit: bool,
    transaction: Transaction,
    subscriptions: Subscriptions,
}

/// How a one-request reply is made from the store's answer.
#[derive(Clone, Copy, Debug)]
enum Finish {
    /// `GET`: the value or null.
    Value,
    /// `STRLEN`: its length, 0 if absent.
    Length,
    /// `EXISTS` of one key: 1 or 0.
    Exists,
    /// `SET`: OK.
    Ok,
    /// `SET … NX`: OK, or null if the key was there.
    SetIfAbsent,
    /// `SETNX`: 1 or 0.
    SetNx,
}

/// A request's plan.
enum Step {
    /// Answered already.
    Done(Reply),
    /// One request to one shard.
    Single { shard: u16, access: Access, command: Vec<u8>, finish: Finish },
    /// Several steps, run alone.
    Complex(Command),
    /// Several steps that change the connection's state (`EXEC`, `WATCH`), run alone.
    Session(Command),
}

/// One phase of a shard's requests in a pipeline: its reads, then its writes.
type Phase = (Vec<Queued>, Vec<Queued>);

/// A single request waiting in a pipeline: its reply's place and what it is.
struct Queued {
    at: usize,
    access: Access,
    command: Vec<u8>,
    finish: Finish,
}

fn finish(how: Finish, reply: Result<KvReply, RequestError>) -> Reply {
    let reply = match reply {
        Ok(reply) => reply,
        Err(error) => return failure(&error),
    };
    match (how, reply) {
        (Finish::Value, KvReply::Value(value)) => Reply::optional(value),
        (Finish::Length, KvReply::Value(value)) => {
            Reply::Integer(value.map_or(0, |value| value.len() as i64))
        }
        (Finish::Exists, KvReply::Value(value)) => Reply::Integer(i64::from(value.is_some())),
        (Finish::Ok, KvReply::Done) => Reply::OK,
        (Finish::SetIfAbsent, KvReply::CompareAndSet { succeeded, .. }) => {
            if succeeded {
                Reply::OK
            } else {
                Reply::Null
            }
        }
        (Finish::SetNx, KvReply::CompareAndSet { succeeded, .. }) => {
            Reply::Integer(i64::from(succeeded))
        }
        (_, other) => failure(&RequestError::BadReply(format!("{other:?}"))),
    }
}

/// The store's reply to one encoded request, decoded.
fn decode(
    response: Result<crate::client::Response, RequestError>,
) -> Result<KvReply, RequestError> {
    let response = response?;
    KvReply::decode(&response.body)
        .ok_or_else(|| RequestError::BadReply(format!("{} bytes", response.body.len())))
}

impl Session {
    /// A new connection's session.
    pub fn new(shared: Arc<Shared>, id: u64, peer: SocketAddr) -> Session {
        Session {
            shared,
            id,
            peer,
            name: None,
            protocol: Protocol::Resp2,
            quit: false,
            transaction: Transaction::default(),
            subscriptions: Subscriptions::default(),
        }
    }

    /// True once the client said `QUIT`.
    pub fn quit(&self) -> bool {
        self.quit
    }

    /// Runs a pipeline's requests, appending their replies in order to `out`; requests after
    /// a `QUIT` are not run.
    pub async fn run(&mut self, requests: Vec<Vec<Bytes>>, out: &mut Vec<u8>) {
        let mut replies: Vec<(Option<Reply>, Protocol)> = Vec::with_capacity(requests.len());
        let mut queued: Vec<(u16, Queued)> = Vec::new();
        for arguments in requests {
            if self.quit {
                break;
            }
            let at = replies.len();
            if let Some(refused) = self.subscribed_refusal(&arguments) {
                replies.push((Some(refused), self.protocol));
                continue;
            }
            let step = match parse(arguments) {
                Ok(command) => self.plan_in_context(command),
                Err(reply) => {
                    self.transaction.refused();
                    Step::Done(reply)
                }
            };
            match step {
                Step::Done(reply) => replies.push((Some(reply), self.protocol)),
                Step::Single { shard, access, command, finish } => {
                    replies.push((None, self.protocol));
                    queued.push((shard, Queued { at, access, command, finish }));
                }
                Step::Complex(command) => {
                    self.run_queued(std::mem::take(&mut queued), &mut replies).await;
                    let reply = self.run_complex(command).await;
                    replies.push((Some(reply), self.protocol));
                }
                Step::Session(command) => {
                    self.run_queued(std::mem::take(&mut queued), &mut replies).await;
                    for reply in self.run_session(command).await {
                        replies.push((Some(reply), self.protocol));
                    }
                }
            }
        }
        self.run_queued(queued, &mut replies).await;
        for (reply, protocol) in replies {
            reply.unwrap_or_else(|| Reply::error("ERR internal: no reply")).encode(protocol, out);
        }
    }

    /// What a command needs, in the connection's state: inside `MULTI`, queued.
    fn plan_in_context(&mut self, command: Command) -> Step {
        match command {
            Command::Multi => Step::Done(self.transaction.begin()),
            Command::Discard => Step::Done(self.transaction.discard()),
            Command::Exec
            | Command::Watch(_)
            | Command::Subscribe(_)
            | Command::PSubscribe(_)
            | Command::Unsubscribe(_)
            | Command::PUnsubscribe(_)
                if !self.transaction.in_multi() =>
            {
                Step::Session(command)
            }
            Command::Exec | Command::Watch(_) => Step::Session(command),
            // RESP2's subscribed mode answers a PING with a message-shaped array.
            Command::Ping(message)
                if self.subscriptions.active() && self.protocol == Protocol::Resp2 =>
            {
                let message = Reply::Bulk(message.unwrap_or_default());
                Step::Done(Reply::Array(vec![Reply::text("pong"), message]))
            }
            Command::Unwatch if !self.transaction.in_multi() => {
                Step::Done(self.transaction.unwatch())
            }
            Command::Quit | Command::Reset => self.plan(command),
            command if self.transaction.in_multi() => {
                let gateway = self.shared.gateway.clone();
                Step::Done(self.transaction.queue(command, |key| gateway.shard_of(key)))
            }
            command => self.plan(command),
        }
    }

    /// `EXEC`, `WATCH` and the subscriptions: their replies (one per channel for these).
    async fn run_session(&mut self, command: Command) -> Vec<Reply> {
        let gateway = self.shared.gateway.clone();
        let subscriptions = &mut self.subscriptions;
        vec![match command {
            Command::Exec => match self.transaction.take() {
                Ok((watched, queued)) => txn::exec(&gateway, watched, queued).await,
                Err(reply) => reply,
            },
            Command::Watch(keys) => txn::watch(&gateway, &mut self.transaction, keys).await,
            Command::Subscribe(names) => {
                return subscriptions.subscribe(&gateway, names, false).await;
            }
            Command::PSubscribe(names) => {
                return subscriptions.subscribe(&gateway, names, true).await;
            }
            Command::Unsubscribe(names) => return subscriptions.unsubscribe(names, false),
            Command::PUnsubscribe(names) => return subscriptions.unsubscribe(names, true),
            other => Reply::error(format!("ERR internal: {other:?} is not a session command")),
        }]
    }

    /// In RESP2's subscribed mode, the refusal of a command other than the subscriptions',
    /// `PING`, `QUIT` and `RESET` (Redis's).
    fn subscribed_refusal(&self, arguments: &[Bytes]) -> Option<Reply> {
        if !self.subscriptions.active() || self.protocol != Protocol::Resp2 {
            return None;
        }
        let name = String::from_utf8_lossy(arguments.first()?).to_ascii_lowercase();
        let allowed =
            ["subscribe", "psubscribe", "unsubscribe", "punsubscribe", "ping", "quit", "reset"];
        (!allowed.contains(&name.as_str())).then(|| {
            Reply::error(format!(
                "ERR Can't execute '{name}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context"
            ))
        })
    }

    /// The next message a subscription pushes, when one is queued.
    pub fn poll_push(&mut self, context: &mut std::task::Context<'_>) -> std::task::Poll<Reply> {
        self.subscriptions.poll_push(context)
    }

    /// Appends `reply` and every message queued now to `out`.
    pub fn push(&mut self, reply: Option<Reply>, out: &mut Vec<u8>) {
        if let Some(reply) = reply {
            reply.encode(self.protocol, out);
        }
        self.subscriptions.drain(self.protocol, out);
    }

    /// What a command needs; the connection's own commands are answered here.
    fn plan(&mut self, command: Command) -> Step {
        let gateway = self.shared.gateway.clone();
        let single =
            |key: &Bytes, access, command: KvCommand, finish| match gateway.encode(&command) {
                Ok(bytes) => {
                    Step::Single { shard: gateway.shard_of(key), access, command: bytes, finish }
                }
                Err(error) => Step::Done(failure(&error)),
            };
        let get = |key: &Bytes| KvCommand::Get { key: key.to_vec() };
        match command {
            Command::Get(key) => single(&key, Access::Read, get(&key), Finish::Value),
            Command::Strlen(key) => single(&key, Access::Read, get(&key), Finish::Length),
            Command::Exists(keys) if keys.len() == 1 => {
                single(&keys[0], Access::Read, get(&keys[0]), Finish::Exists)
            }
            Command::Set { key, value, condition: Condition::Always, get: false } => {
                let put = KvCommand::Put { key: key.to_vec(), value: value.to_vec() };
                single(&key, Access::Write, put, Finish::Ok)
            }
            Command::Set { key, value, condition: Condition::IfAbsent, get: false } => {
                let cas = KvCommand::CompareAndSet {
                    key: key.to_vec(),
                    expected: None,
                    new: value.to_vec(),
                };
                single(&key, Access::Write, cas, Finish::SetIfAbsent)
            }
            Command::SetNx(key, value) => {
                let cas = KvCommand::CompareAndSet {
                    key: key.to_vec(),
                    expected: None,
                    new: value.to_vec(),
                };
                single(&key, Access::Write, cas, Finish::SetNx)
            }
            Command::Exists(_)
            | Command::MGet(_)
            | Command::Set { .. }
            | Command::GetSet(..)
            | Command::MSet(_)
            | Command::Del(_)
            | Command::Append(..)
            | Command::IncrBy(..)
            | Command::SetExpiring { .. }
            | Command::Expire(..)
            | Command::Ttl(..)
            | Command::Persist(_)
            | Command::Scan { .. }
            | Command::Keys(_)
            | Command::DbSize => Step::Complex(command),
            local => Step::Done(self.answer_locally(local)),
        }
    }

    /// Runs queued single requests: per shard, runs of reads then writes, each run one frame;
    /// the shards' runs go out together, round by round.
    async fn run_queued(
        &self,
        queued: Vec<(u16, Queued)>,
        replies: &mut [(Option<Reply>, Protocol)],
    ) {
        if queued.is_empty() {
            return;
        }
        // Per shard, its phases: the reads and then the writes of each.
        let mut phases: BTreeMap<u16, Vec<Phase>> = BTreeMap::new();
        for (shard, request) in queued {
            let list = phases.entry(shard).or_default();
            let new_phase = match list.last() {
                None => true,
                // A read after a write must see it: it waits for the next phase.
                Some((_, writes)) => request.access == Access::Read && !writes.is_empty(),
            };
            if new_phase {
                list.push((Vec::new(), Vec::new()));
            }
            if let Some((reads, writes)) = list.last_mut() {
                match request.access {
                    Access::Read => reads.push(request),
                    Access::Write => writes.push(request),
                }
            }
        }
        let gateway = &self.shared.gateway;
        let rounds = phases.values().map(Vec::len).max().unwrap_or(0);
        let mut phases: Vec<(u16, std::vec::IntoIter<Phase>)> =
            phases.into_iter().map(|(shard, list)| (shard, list.into_iter())).collect();
        for _ in 0..rounds {
            let mut waiting = Vec::new();
            for (shard, list) in &mut phases {
                let Some((reads, writes)) = list.next() else { continue };
                for (access, group) in [(Access::Read, reads), (Access::Write, writes)] {
                    if group.is_empty() {
                        continue;
                    }
                    let commands: Vec<&[u8]> =
                        group.iter().map(|request| &request.command[..]).collect();
                    let submitted = gateway.submit(*shard, access, &commands).await;
                    waiting.push((submitted, group));
                }
            }
            for (submitted, group) in waiting {
                for (outcome, request) in submitted.wait().await.into_iter().zip(group) {
                    replies[request.at].0 = Some(finish(request.finish, decode(outcome)));
                }
            }
        }
    }

    /// Sends `commands` (each with its key) all at once, one submission per shard; their
    /// outcomes in the order given.
    async fn many(
        &self,
        access: Access,
        commands: Vec<(Bytes, KvCommand)>,
    ) -> Result<Vec<Result<KvReply, RequestError>>, RequestError> {
        let gateway = &self.shared.gateway;
        let count = commands.len();
        let mut by_shard: BTreeMap<u16, (Vec<usize>, Vec<Vec<u8>>)> = BTreeMap::new();
        for (at, (key, command)) in commands.into_iter().enumerate() {
            let (places, encoded) = by_shard.entry(gateway.shard_of(&key)).or_default();
            places.push(at);
            encoded.push(gateway.encode(&command)?);
        }
        let mut waiting = Vec::with_capacity(by_shard.len());
        for (shard, (places, encoded)) in by_shard {
            let slices: Vec<&[u8]> = encoded.iter().map(Vec::as_slice).collect();
            waiting.push((places, gateway.submit(shard, access, &slices).await));
        }
        let mut outcomes: Vec<Option<Result<KvReply, RequestError>>> =
            (0..count).map(|_| None).collect();
        for (places, submitted) in waiting {
            for (at, outcome) in places.into_iter().zip(submitted.wait().await) {
                outcomes[at] = Some(decode(outcome));
            }
        }
        Ok(outcomes
            .into_iter()
            .map(|outcome| {
                outcome.unwrap_or_else(|| Err(RequestError::BadReply("no outcome".into())))
            })
            .collect())
    }

    /// Reads `keys`, all at once.
    async fn read_many(&self, keys: &[Bytes]) -> Result<Vec<Option<Vec<u8>>>, RequestError> {
        let gets =
            keys.iter().map(|key| (key.clone(), KvCommand::Get { key: key.to_vec() })).collect();
        let mut values = Vec::with_capacity(keys.len());
        for outcome in self.many(Access::Read, gets).await? {
            match outcome? {
                KvReply::Value(value) => values.push(value),
                other => return Err(RequestError::BadReply(format!("a get answered {other:?}"))),
            }
        }
        Ok(values)
    }

    /// Writes `commands` (each with its key), all at once; the first failure, if any.
    async fn write_many(&self, commands: Vec<(Bytes, KvCommand)>) -> Result<(), RequestError> {
        let outcomes = self.many(Access::Write, commands).await?;
        outcomes.into_iter().find_map(Result::err).map_or(Ok(()), Err)
    }

    /// Sets `key` to what `change` makes of its current value (`None`: leave it), by
    /// compare-and-set, again while another writer changes it first. The value before and
    /// whether it wrote.
    async fn update(
        &self,
        key: &Bytes,
        change: impl Fn(Option<&[u8]>) -> Result<Option<Vec<u8>>, Reply>,
    ) -> Result<(Option<Vec<u8>>, Option<Vec<u8>>), Reply> {
        let gateway = &self.shared.gateway;
        let mut current = gateway.get(key).await.map_err(|error| failure(&error))?;
        for _ in 0..UPDATE_ROUNDS_MAX {
            let Some(new) = change(current.as_deref())? else { return Ok((current, None)) };
            let (succeeded, previous) = gateway
                .compare_and_set(key, current.as_deref(), &new)
                .await
                .map_err(|error| failure(&error))?;
            if succeeded {
                return Ok((current, Some(new)));
            }
            current = previous;
        }
        Err(Reply::error(format!(
            "TRYAGAIN the key changed under {UPDATE_ROUNDS_MAX} compare-and-sets in a row"
        )))
    }

    async fn run_complex(&self, command: Command) -> Reply {
        match self.complex(command).await {
            Ok(reply) | Err(reply) => reply,
        }
    }

    async fn complex(&self, command: Command) -> Result<Reply, Reply> {
        let failed = |error: RequestError| failure(&error);
        Ok(match command {
            Command::Exists(keys) => {
                let values = self.read_many(&keys).await.map_err(failed)?;
                Reply::Integer(values.iter().filter(|value| value.is_some()).count() as i64)
            }
            Command::MGet(keys) => {
                let values = self.read_many(&keys).await.map_err(failed)?;
                Reply::Array(values.into_iter().map(Reply::optional).collect())
            }
            Command::MSet(pairs) => {
                let puts = pairs
                    .into_iter()
                    .map(|(key, value)| {
                        let put = KvCommand::Put { key: key.to_vec(), value: value.to_vec() };
                        (key, put)
                    })
                    .collect();
                self.write_many(puts).await.map_err(failed)?;
                Reply::OK
            }
            Command::Del(mut keys) => {
                keys.sort();
                keys.dedup();
                let values = self.read_many(&keys).await.map_err(failed)?;
                let present: Vec<(Bytes, KvCommand)> = keys
                    .into_iter()
                    .zip(values)
                    .filter(|(_, value)| value.is_some())
                    .map(|(key, _)| {
                        let delete = KvCommand::Delete { key: key.to_vec() };
                        (key, delete)
                    })
                    .collect();
                let count = present.len() as i64;
                self.write_many(present).await.map_err(failed)?;
                Reply::Integer(count)
            }
            Command::SetExpiring { key, value, ttl_ms } => {
                expiry::set_expiring(&self.shared.gateway, &key, &value, ttl_ms).await
            }
            Command::Expire(key, ttl_ms) => {
                expiry::set_expiry(&self.shared.gateway, &key, Some(ttl_ms)).await
            }
            Command::Persist(key) => expiry::set_expiry(&self.shared.gateway, &key, None).await,
            Command::Ttl(key, millis) => expiry::ttl(&self.shared.gateway, &key, millis).await,
            Command::Scan { other_type: true, .. } => {
                Reply::Array(vec![Reply::text("0"), Reply::Array(Vec::new())])
            }
            Command::Scan { cursor, pattern, count, other_type: false } => {
                let (gateway, cursors) = (&self.shared.gateway, &self.shared.cursors);
                scan::scan(gateway, cursors, cursor, pattern, count).await
            }
            Command::Keys(pattern) => scan::keys(&self.shared.gateway, &pattern).await,
            Command::DbSize => scan::dbsize(&self.shared.gateway).await,
            other => return self.read_modify_write(other).await,
        })
    }

    /// The commands that read a key and write what they make of it, by compare-and-set.
    async fn read_modify_write(&self, command: Command) -> Result<Reply, Reply> {
        Ok(match command {
            Command::Set { key, value, condition, get } => {
                let (before, written) = self
                    .update(&key, |current| {
                        let write = match condition {
                            Condition::Always => true,
                            Condition::IfAbsent => current.is_none(),
                            Condition::IfPresent => current.is_some(),
                        };
                        Ok(write.then(|| value.to_vec()))
                    })
                    .await?;
                match (get, written) {
                    (true, _) => Reply::optional(before),
                    (false, Some(_)) => Reply::OK,
                    (false, None) => Reply::Null,
                }
            }
            Command::GetSet(key, value) => {
                let (before, _) = self.update(&key, |_| Ok(Some(value.to_vec()))).await?;
                Reply::optional(before)
            }
            Command::Append(key, suffix) => {
                let (_, written) = self
                    .update(&key, |current| {
                        let mut value = current.unwrap_or_default().to_vec();
                        value.extend_from_slice(&suffix);
                        Ok(Some(value))
                    })
                    .await?;
                Reply::Integer(written.map_or(0, |value| value.len() as i64))
            }
            Command::IncrBy(key, by) => {
                let (_, written) = self
                    .update(&key, |current| {
                        let number = current.map_or(Ok(0), stored_integer)?;
                        let sum = number.checked_add(by).ok_or_else(|| {
                            Reply::error("ERR increment or decrement would overflow")
                        })?;
                        Ok(Some(sum.to_string().into_bytes()))
                    })
                    .await?;
                let text = written.unwrap_or_default();
                Reply::Integer(stored_integer(&text)?)
            }
            other => Reply::error(format!("ERR internal: {other:?} is not a data command")),
        })
    }

    /// The connection's own commands: no cluster request.
    fn answer_locally(&mut self, command: Command) -> Reply {
        match command {
            Command::Ping(None) => Reply::Simple("PONG"),
            Command::Ping(Some(message)) | Command::Echo(message) => Reply::Bulk(message),
            Command::Hello { protocol, name } => {
                if let Some(protocol) = protocol {
                    self.protocol = protocol;
                }
                if name.is_some() {
                    self.name = name;
                }
                self.hello()
            }
            Command::Auth(1) => Reply::error(
                "ERR AUTH <password> called without any password configured for the default user. \
                 Are you sure your configuration is correct?",
            ),
            // A user and a password: the default user takes any (Redis's `nopass`).
            Command::Auth(_) | Command::Select | Command::ClientIgnored => Reply::OK,
            Command::Quit => {
                self.quit = true;
                Reply::OK
            }
            Command::Reset => {
                self.protocol = Protocol::Resp2;
                self.name = None;
                self.transaction = Transaction::default();
                self.subscriptions.clear();
                Reply::Simple("RESET")
            }
            Command::ClientSetName(name) => {
                self.name = (!name.is_empty()).then_some(name);
                Reply::OK
            }
            Command::ClientGetName => Reply::optional(self.name.as_ref().map(|name| name.to_vec())),
            Command::ClientId => Reply::Integer(self.id as i64),
            Command::ClientInfo => Reply::text(self.client_info()),
            Command::Table(names) => command_table(names),
            Command::TableCount => Reply::Integer(TABLE.len() as i64),
            Command::TableDocs => Reply::Map(Vec::new()),
            Command::Info => Reply::text(self.info()),
            Command::ConfigGet(patterns) => config_get(&patterns),
            data => Reply::error(format!("ERR internal: {data:?} is not a connection command")),
        }
    }

    fn hello(&self) -> Reply {
        let proto = match self.protocol {
            Protocol::Resp2 => 2,
            Protocol::Resp3 => 3,
        };
        Reply::Map(vec![
            (Reply::text("server"), Reply::text("quorum")),
            (Reply::text("version"), Reply::text(REDIS_VERSION)),
            (Reply::text("proto"), Reply::Integer(proto)),
            (Reply::text("id"), Reply::Integer(self.id as i64)),
            (Reply::text("mode"), Reply::text("standalone")),
            (Reply::text("role"), Reply::text("master")),
            (Reply::text("modules"), Reply::Array(Vec::new())),
        ])
    }

    fn client_info(&self) -> String {
        let name = self
            .name
            .as_ref()
            .map(|name| String::from_utf8_lossy(name).into_owned())
            .unwrap_or_default();
        let resp = if self.protocol == Protocol::Resp3 { 3 } else { 2 };
        format!(
            "id={} addr={} laddr={} name={name} db=0 resp={resp}\n",
            self.id, self.peer, self.shared.listen
        )
    }

    fn info(&self) -> String {
        let gateway = &self.shared.gateway;
        format!(
            "# Server\r\nredis_version:{REDIS_VERSION}\r\nquorum_version:{}\r\nredis_mode:standalone\r\n\
             process_id:{}\r\ntcp_port:{}\r\n\r\n# Clients\r\nconnected_clients:{}\r\n\r\n\
             # Persistence\r\naof_enabled:1\r\n\r\n# Replication\r\nrole:master\r\n\r\n\
             # Cluster\r\ncluster_enabled:0\r\n\r\n# Quorum\r\nnode:{}\r\nshards:{}\r\n",
            env!("CARGO_PKG_VERSION"),
            std::process::id(),
            self.shared.listen.port(),
            self.shared.connections.load(Ordering::Relaxed),
            gateway.node_address(),
            gateway.shards(),
        )
    }
}

/// `COMMAND` (every served command) or `COMMAND INFO name…` (those, null for others).
fn command_table(names: Option<Vec<Bytes>>) -> Reply {
    let Some(names) = names else { return Reply::Array(TABLE.iter().map(describe).collect()) };
    Reply::Array(
        names
            .iter()
            .map(|name| {
                let lower = String::from_utf8_lossy(name).to_ascii_lowercase();
                TABLE.iter().find(|spec| spec.name == lower).map_or(Reply::Null, describe)
            })
            .collect(),
    )
}

/// `CONFIG GET`: what tools ask for (redis-benchmark: `save`, `appendonly`), answered for
/// what a node does: no snapshots to disk, every write in a log synced before the reply.
fn config_get(patterns: &[Bytes]) -> Reply {
    let known =
        [("save", ""), ("appendonly", "yes"), ("appendfsync", "always"), ("databases", "1")];
    let pairs = known
        .iter()
        .filter(|(name, _)| {
            patterns.iter().any(|pattern| {
                &pattern[..] == b"*" || pattern.eq_ignore_ascii_case(name.as_bytes())
            })
        })
        .map(|(name, value)| (Reply::text(*name), Reply::text(*value)))
        .collect();
    Reply::Map(pairs)
}

/// The Redis version a node reports (`INFO`, `HELLO`): the one whose commands it follows, so
/// that clients checking a version for the commands they use find them.
const REDIS_VERSION: &str = "7.0.0";
