//! One shard's connection: a thread that connects to the shard's leader (or, for reads any
//! member may answer, to one chosen member), re-sends what is outstanding after every
//! (re)connection, and reads replies; callers write their requests on the current connection
//! themselves, under the lane's lock.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{ClientError, FRAME_BYTES_MAX, Response, Shared, handshake, random_bytes};
use crate::core::{BatchBuilder, NodeId, ReadOptions, RequestId};
use crate::machine::{REGISTER_NONCE_BYTES, register_request};
use crate::transport::codec::{Body, Encoder, Frame, Reply, ReplyStatus, Requests};
use crate::transport::framing::{Outgoing, read_frame};

/// Pause before re-sending requests a busy leader turned away.
const BUSY_PAUSE: Duration = Duration::from_millis(2);
/// Pause between connection attempts after every member failed.
const RECONNECT_PAUSE: Duration = Duration::from_millis(50);
/// Redirects followed in one connection attempt (a leader hint can be stale).
const REDIRECTS_MAX: usize = 3;

struct Pending {
    command: Bytes,
    /// How its frame asks the queries in it to be read.
    read: ReadOptions,
    /// The session it was first sent under: every retry goes under the same one, or a retry
    /// under a new session could apply it twice.
    session: Option<u64>,
    result: Option<Result<Response, ClientError>>,
    /// Where to deliver the result instead of keeping it for a waiter.
    notify: Option<Notify>,
    /// What its waiter waits on (one per request: a reply wakes its own waiter, not every
    /// thread waiting on the lane).
    waker: Option<Arc<Condvar>>,
}

/// Where a request's outcome goes instead of to a waiting [`super::Ticket`].
pub(super) enum Notify {
    /// Sent on a channel, with its shard and sequence ([`super::Client::submit_notify`]).
    Channel(std::sync::mpsc::Sender<Completion>),
    /// Handed to a function, once ([`super::Client::submit_with`]).
    Callback(Callback),
}

/// A function given a request's outcome, once, on the client's connection thread (so it must
/// not block: complete a channel, wake a task): see [`super::Client::submit_with`].
pub type Callback = Box<dyn FnOnce(Result<Response, ClientError>) + Send>;

/// The outcome of a request submitted with [`super::Client::submit_notify`].
#[derive(Debug)]
pub struct Completion {
    /// The shard.
    pub shard: u16,
    /// The request's sequence number.
    pub sequence: u64,
    /// Its outcome.
    pub result: Result<Response, ClientError>,
}

#[derive(Default)]
struct LaneState {
    /// The connection to write on, if up.
    writer: Option<Arc<TcpStream>>,
    /// The leader to try first.
    leader: Option<NodeId>,
    /// Requests without a final reply, by sequence.
    outstanding: BTreeMap<u64, Pending>,
    /// The session the shard registered for this client (protocol.md §5.1), once it has.
    session: Option<u64>,
    /// The register-session command in flight: sent on every connection until answered.
    registering: Option<(RequestId, [u8; REGISTER_NONCE_BYTES])>,
    /// The last reason a connection failed (reported on timeout).
    last_error: Option<ClientError>,
    encoder: Encoder,
}

/// Whom a lane talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Target {
    /// The shard's leader, followed through redirects; requests go under the session it
    /// registers.
    Leader,
    /// One member, whatever its role (follower and stale reads, protocol.md §5.5), then the
    /// others if it cannot be reached. Reads need no session: requests carry the client's
    /// label.
    Member(NodeId),
}

pub(super) struct Lane {
    shared: Arc<Shared>,
    shard: u16,
    target: Target,
    state: Mutex<LaneState>,
    /// Held while writing to the socket, so that the reader, which needs only `state`, is
    /// never held up by a large write.
    write_lock: Mutex<()>,
}

/// An encoded frame and the connection it is for.
type ToWrite = Option<(Arc<TcpStream>, Outgoing)>;

impl Lane {
    pub(super) fn start(shared: Arc<Shared>, shard: u16, target: Target) -> Arc<Lane> {
        let state = match target {
            Target::Leader => LaneState {
                registering: Some(register_request(random_bytes())),
                ..LaneState::default()
            },
            Target::Member(_) => {
                LaneState { session: Some(shared.client_id), ..LaneState::default() }
            }
        };
        let lane = Arc::new(Lane {
            shared,
            shard,
            target,
            state: Mutex::new(state),
            write_lock: Mutex::new(()),
        });
        let runner = lane.clone();
        std::thread::Builder::new()
            .name(format!("quorum-client-{shard}"))
            .spawn(move || runner.run())
            .expect("spawning a client thread");
        lane
    }

    fn lock(&self) -> MutexGuard<'_, LaneState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn frame(&self, body: Body) -> Frame {
        Frame {
            cluster_id: self.shared.options.cluster_id,
            from: NodeId(0),
            shard: self.shard,
            body,
        }
    }

    /// Encodes requests for the current connection, after the register-session command if
    /// `register` and one is in flight; without a connection they wait for the next, and
    /// without a session for its registration. Write the result with [`Lane::write_out`]
    /// after releasing the state lock.
    fn send(
        &self,
        state: &mut LaneState,
        register: bool,
        sequences: impl Iterator<Item = u64>,
    ) -> ToWrite {
        let writer = state.writer.clone()?;
        // One frame per way of reading: a frame's queries share one consistency.
        let mut frames: Vec<(ReadOptions, BatchBuilder)> = Vec::new();
        fn builder_for(
            frames: &mut Vec<(ReadOptions, BatchBuilder)>,
            read: ReadOptions,
        ) -> &mut BatchBuilder {
            let at = frames.iter().position(|(options, _)| *options == read).unwrap_or_else(|| {
                frames.push((read, BatchBuilder::new(usize::MAX)));
                frames.len() - 1
            });
            &mut frames[at].1
        }
        if let (true, Some((id, payload))) = (register, &state.registering) {
            builder_for(&mut frames, ReadOptions::default()).push(*id, payload);
        }
        let current = state.session;
        for sequence in sequences {
            if let Some(pending) = state.outstanding.get_mut(&sequence) {
                let Some(session) = pending.session.or(current) else { continue };
                pending.session = Some(session);
                let id = RequestId { client: session, sequence };
                builder_for(&mut frames, pending.read).push(id, &pending.command);
            }
        }
        let mut out = Outgoing::default();
        for (read, mut builder) in frames {
            if builder.is_empty() {
                continue;
            }
            let frame = self.frame(Body::Requests(Requests { batch: builder.take(), read }));
            out.push(&mut state.encoder, &frame);
        }
        if out.is_empty() {
            return None;
        }
        Some((writer, out))
    }

    /// [`Lane::send`] under the state lock, then [`Lane::write_out`] after it.
    fn send_now(&self, register: bool, sequences: impl Iterator<Item = u64>) {
        let mut state = self.lock();
        let outgoing = self.send(&mut state, register, sequences);
        drop(state);
        self.write_out(outgoing);
    }

    /// Writes what [`Lane::send`] encoded.
    fn write_out(&self, to_write: ToWrite) {
        let Some((writer, out)) = to_write else { return };
        let _writing = self.write_lock.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if out.slices().try_for_each(|slice| (&*writer).write_all(slice)).is_err() {
            // The reader sees the broken connection and reconnects; the requests stay
            // outstanding and go again then (a retry is safe: same request ids).
            let _ = writer.shutdown(Shutdown::Both);
        }
    }

    pub(super) fn submit(
        &self,
        sequences: &[u64],
        commands: &[&[u8]],
        read: ReadOptions,
        notify: Option<&std::sync::mpsc::Sender<Completion>>,
    ) {
        let notifies = sequences.iter().map(|_| notify.cloned().map(Notify::Channel));
        self.submit_notifying(sequences, commands, read, notifies);
    }

    /// [`Lane::submit`], each request's outcome going where its `notifies` entry says.
    pub(super) fn submit_notifying(
        &self,
        sequences: &[u64],
        commands: &[&[u8]],
        read: ReadOptions,
        notifies: impl Iterator<Item = Option<Notify>>,
    ) {
        let mut state = self.lock();
        for ((sequence, command), notify) in sequences.iter().zip(commands).zip(notifies) {
            let pending = Pending {
                command: Bytes::copy_from_slice(command),
                read,
                session: None,
                result: None,
                notify,
                waker: None,
            };
            state.outstanding.insert(*sequence, pending);
        }
        let outgoing = self.send(&mut state, false, sequences.iter().copied());
        drop(state);
        self.write_out(outgoing);
    }

    pub(super) fn wait(&self, sequence: u64, deadline: Instant) -> Result<Response, ClientError> {
        let mut state = self.lock();
        loop {
            let Some(pending) = state.outstanding.get_mut(&sequence) else {
                return Err(ClientError::BadReply("request waited on twice".into()));
            };
            if let Some(result) = pending.result.take() {
                state.outstanding.remove(&sequence);
                return result;
            }
            let now = Instant::now();
            if now >= deadline {
                state.outstanding.remove(&sequence);
                let timeout = self.shared.options.request_timeout;
                // A connection that answered nothing for a whole request timeout may lead to a
                // node that vanished (a partition keeps TCP silent, not broken): drop it, so
                // the reader reconnects, to another member if that one does not answer
                // (docs/partitions.md, the third finding). What is outstanding goes again under
                // the same ids, so nothing applies twice.
                if let Some(writer) = &state.writer {
                    let _ = writer.shutdown(Shutdown::Both);
                }
                return Err(match state.last_error.clone() {
                    Some(ClientError::Refused(reason)) => ClientError::Refused(reason),
                    // Registering the session was refused for want of disk space.
                    Some(ClientError::OutOfSpace(reason)) => ClientError::OutOfSpace(reason),
                    Some(error) if state.writer.is_none() => error,
                    _ => ClientError::Timeout(timeout),
                });
            }
            let waker = pending.waker.get_or_insert_with(|| Arc::new(Condvar::new())).clone();
            state = waker
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }

    /// Forgets requests nobody waits for any more: they are no longer re-sent after a
    /// reconnection, and a reply that still comes is dropped (they may still be applied).
    pub(super) fn abandon(&self, sequences: impl Iterator<Item = u64>) {
        let mut state = self.lock();
        for sequence in sequences {
            state.outstanding.remove(&sequence);
        }
    }

    pub(super) fn close(&self) {
        let mut state = self.lock();
        if let Some(writer) = state.writer.take() {
            let _ = writer.shutdown(Shutdown::Both);
        }
    }

    fn closed(&self) -> bool {
        self.shared.closed.load(Ordering::SeqCst)
    }

    /// Candidates to connect to, the known leader (or the lane's member) first.
    fn candidates(&self, leader: Option<NodeId>) -> Vec<String> {
        let membership = self.shared.membership.lock().unwrap_or_else(|e| e.into_inner());
        let mut list: Vec<String> = Vec::new();
        let first = match self.target {
            Target::Leader => leader,
            Target::Member(member) => Some(member),
        };
        if let Some(address) = first.and_then(|first| membership.members.get(&first)) {
            list.push(address.clone());
        }
        list.extend(membership.members.values().cloned());
        list.extend(self.shared.seeds.iter().cloned());
        let mut seen = std::collections::HashSet::new();
        list.retain(|address| seen.insert(address.clone()));
        list
    }

    /// Connects to the shard's leader, following the handshake's leader hint.
    fn connect(&self) -> Result<(TcpStream, NodeId), ClientError> {
        let leader = self.lock().leader;
        let mut last = ClientError::Disconnected("no member to connect to".into());
        // A member that knows no leader (a deposed one, or one mid-election) is taken only if
        // no other names one: else every client may settle on it for a whole partition
        // (docs/partitions.md, the second finding).
        let mut leaderless = None;
        for address in self.candidates(leader) {
            let mut address = address;
            for _ in 0..=REDIRECTS_MAX {
                let options = &self.shared.options;
                let handshake =
                    match handshake(options, self.shared.client_id, &address, self.shard) {
                        Ok(handshake) => handshake,
                        Err(error @ ClientError::Refused(_)) => return Err(error),
                        Err(error) => {
                            last = error;
                            break;
                        }
                    };
                let members = &handshake.reply.members;
                {
                    let mut membership =
                        self.shared.membership.lock().unwrap_or_else(|e| e.into_inner());
                    for member in members {
                        membership.members.insert(member.id, member.address.clone());
                    }
                }
                if self.target != Target::Leader {
                    return Ok((handshake.stream, handshake.node));
                }
                if handshake.reply.leader.is_none() {
                    leaderless.get_or_insert((handshake.stream, handshake.node));
                    break;
                }
                let hinted = handshake.reply.leader.filter(|leader| *leader != handshake.node);
                let redirect = hinted.and_then(|leader| {
                    members.iter().find(|member| member.id == leader).map(|m| m.address.clone())
                });
                match redirect {
                    Some(next) if next != address => address = next,
                    _ => return Ok((handshake.stream, handshake.node)),
                }
            }
        }
        leaderless.ok_or(last)
    }

    fn run(self: Arc<Lane>) {
        while !self.closed() {
            let (stream, node) = match self.connect() {
                Ok(connected) => connected,
                Err(error) => {
                    self.lock().last_error = Some(error);
                    std::thread::sleep(RECONNECT_PAUSE);
                    continue;
                }
            };
            let Ok(writer) = stream.try_clone() else { continue };
            let outgoing = {
                let mut state = self.lock();
                state.writer = Some(Arc::new(writer));
                state.leader = Some(node);
                state.last_error = None;
                let sequences: Vec<u64> = state.outstanding.keys().copied().collect();
                self.send(&mut state, true, sequences.into_iter())
            };
            self.write_out(outgoing);
            let error = self.read_replies(stream);
            let mut state = self.lock();
            if let Some(writer) = state.writer.take() {
                let _ = writer.shutdown(Shutdown::Both);
            }
            state.last_error = Some(error);
        }
    }

    /// Reads replies until the connection fails or the leader sends us elsewhere.
    fn read_replies(&self, mut stream: TcpStream) -> ClientError {
        loop {
            let frame = match read_frame(&mut stream, FRAME_BYTES_MAX) {
                Ok(frame) => frame,
                Err(error) => return error.into(),
            };
            let Body::Replies(replies) = frame.body else {
                return ClientError::BadReply("expected replies".into());
            };
            let mut busy = Vec::new();
            let mut redirect = None;
            let (mut register, mut registered) = (false, false);
            {
                let mut state = self.lock();
                for reply in replies {
                    match self.settle(&mut state, reply) {
                        Settled::Done => {}
                        Settled::Busy(sequence) => busy.push(sequence),
                        Settled::NotLeader(hint) => redirect = Some(hint),
                        Settled::Register => register = true,
                        Settled::Registered => registered = true,
                    }
                }
            }
            if let Some(hint) = redirect {
                self.lock().leader = hint;
                // No leader yet (an election runs), or a stale hint: do not spin on it.
                std::thread::sleep(BUSY_PAUSE);
                return ClientError::Disconnected("redirected to the shard's leader".into());
            }
            if registered {
                // What waited for the session goes now.
                let waiting: Vec<u64> = self
                    .lock()
                    .outstanding
                    .iter()
                    .filter(|(_, pending)| pending.session.is_none())
                    .map(|(sequence, _)| *sequence)
                    .collect();
                self.send_now(false, waiting.into_iter());
            }
            if register {
                // Again after a busy leader turned it away, or anew for a forgotten session.
                std::thread::sleep(BUSY_PAUSE);
                self.send_now(true, std::iter::empty());
            }
            if !busy.is_empty() {
                std::thread::sleep(BUSY_PAUSE);
                self.send_now(false, busy.into_iter());
            }
        }
    }

    /// Settles the register-session command's reply: `None` if `reply` is not one.
    fn settle_registration(&self, state: &mut LaneState, reply: &Reply) -> Option<Settled> {
        let (id, _) = state.registering?;
        if reply.sequence != id.sequence {
            return None;
        }
        Some(match reply.status {
            ReplyStatus::Registered => match <[u8; 8]>::try_from(&reply.body[..]) {
                Ok(client) => {
                    state.session = Some(u64::from_le_bytes(client));
                    state.registering = None;
                    Settled::Registered
                }
                Err(_) => {
                    let reason = format!("a session id of {} bytes", reply.body.len());
                    state.last_error = Some(ClientError::BadReply(reason));
                    Settled::Done
                }
            },
            ReplyStatus::Busy => Settled::Register,
            ReplyStatus::NotLeader { hint } => Settled::NotLeader(hint),
            ReplyStatus::OutOfSpace => {
                let reason = String::from_utf8_lossy(&reply.body).into_owned();
                state.last_error = Some(ClientError::OutOfSpace(reason));
                Settled::Done
            }
            // Refused for good (a node that does not know the command): the requests waiting
            // for the session time out with this reason.
            _ => {
                let reason = String::from_utf8_lossy(&reply.body);
                let reason = format!("registering a session: {:?} {reason}", reply.status);
                state.last_error = Some(ClientError::Rejected(reason));
                Settled::Done
            }
        })
    }

    fn settle(&self, state: &mut LaneState, reply: Reply) -> Settled {
        if let Some(settled) = self.settle_registration(state, &reply) {
            return settled;
        }
        let Some(pending) = state.outstanding.get_mut(&reply.sequence) else {
            // Already timed out, or answered twice: nothing waits for it.
            return Settled::Done;
        };
        let result = match reply.status {
            ReplyStatus::Applied | ReplyStatus::Duplicate => Ok(Response {
                shard: self.shard,
                slot: reply.slot,
                index: reply.index,
                duplicate: reply.status == ReplyStatus::Duplicate,
                body: reply.body,
            }),
            ReplyStatus::Expired => Err(ClientError::Expired),
            ReplyStatus::SessionExpired => Err(ClientError::SessionExpired),
            ReplyStatus::Registered => Err(ClientError::BadReply(
                "a session id for a request that is not a registration".into(),
            )),
            ReplyStatus::Rejected => {
                Err(ClientError::Rejected(String::from_utf8_lossy(&reply.body).into_owned()))
            }
            ReplyStatus::OutOfSpace => {
                Err(ClientError::OutOfSpace(String::from_utf8_lossy(&reply.body).into_owned()))
            }
            ReplyStatus::TooStale => {
                let (behind_slots, behind_ms) =
                    ReplyStatus::too_stale_of(&reply.body).unwrap_or((u64::MAX, u64::MAX));
                Err(ClientError::TooStale { shard: self.shard, behind_slots, behind_ms })
            }
            ReplyStatus::Busy => return Settled::Busy(reply.sequence),
            ReplyStatus::NotLeader { hint } => return Settled::NotLeader(hint),
        };
        let forgotten = matches!(result, Err(ClientError::SessionExpired))
            && pending.session.is_some()
            && pending.session == state.session;
        match pending.notify.take() {
            Some(Notify::Channel(notify)) => {
                let completion = Completion { shard: self.shard, sequence: reply.sequence, result };
                // A receiver that is gone no longer cares.
                let _ = notify.send(completion);
                state.outstanding.remove(&reply.sequence);
            }
            Some(Notify::Callback(callback)) => {
                state.outstanding.remove(&reply.sequence);
                callback(result);
            }
            None => {
                pending.result = Some(result);
                if let Some(waker) = &pending.waker {
                    waker.notify_one();
                }
            }
        }
        if forgotten {
            // The shard forgot the session: this request may have been applied under it, so
            // it failed; later ones go under a new session (those sent under the old one
            // stay with it and fail alike).
            state.session = None;
            state.registering = Some(register_request(random_bytes()));
            return Settled::Register;
        }
        Settled::Done
    }
}

enum Settled {
    Done,
    Busy(u64),
    NotLeader(Option<NodeId>),
    /// Send the register-session command (again).
    Register,
    /// The session is registered: send what waited for it.
    Registered,
}
