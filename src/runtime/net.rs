//! A shard's connections. Every node dials every other member's shard port and uses that
//! connection only to send; what it receives arrives on the connections the others dialled.
//! Clients dial too and get their replies back on their own connection.
//!
//! Each connection starts with a handshake (`Hello` → `HelloReply`) naming cluster, node,
//! shard and protocol version; a mismatch is refused with a reason, logged on both sides.
//! Frames are size-checked before allocation, read into buffers that grow as their bytes
//! arrive, and verified before use; a bad frame closes that connection only.
//!
//! What one connection may cost is bounded: the node serves at most `--connections-max`
//! clients (more are refused with a reason; peers never count), each client at most
//! `--client-queue-mib` of bytes waiting for it, each frame started must be whole within
//! `--read-timeout-ms`, a client silent for `--idle-timeout-ms` is closed, and so is any
//! connection whose other end takes nothing for `--write-timeout-ms`. Each shard sweeps its
//! connections against these every [`SWEEP_INTERVAL`], on the shard's coarse clock (set each
//! tick, so the hot path reads no clock). Dead peers are noticed by TCP keep-alive on every
//! socket, and a peer that dials again replaces its previous incoming connection.
//!
//! Snapshot pieces and state digests, which read a file or hash the whole state, are served
//! one at a time: a piece is read on the blocking pool, and digests are shared between the
//! clients that ask at once and spaced out so that they take at most a fifth of the reactor.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, RawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_lite::AsyncWriteExt;
use glommio::channels::local_channel;
use glommio::net::{TcpListener, TcpStream};
use quorum_wal::MmapBackend;

use super::Control;
use super::Hosted;
use super::host::{Cut, HostRef, Link, fail, pump, with_shard};
use super::metrics::Refusal;
use crate::core::{ClusterId, Message, NodeId};
use crate::runtime::config::NodeConfig;
use crate::shard::SnapshotReader;
use crate::transport::codec::{
    Body, Encoder, Frame, Hello, HelloReply, Member, PROTOCOL_VERSION, Role, ShardStatus,
};
use crate::transport::framing::{
    ConnectionError, FrameReader, Outgoing, ReadProgress, encode_into, read_frame_async,
};
use crate::transport::shard_address;

/// How long the dialled side waits for a `Hello`, and the dialling side for its answer.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Reconnect back-off bounds.
const BACKOFF_MIN: Duration = Duration::from_millis(20);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Connections in their handshake the node takes on past `--connections-max`: a peer (which
/// never counts against the limit) can still get in while clients fill it. Past this too, a
/// new connection is closed at once, unread.
pub const HANDSHAKES_EXTRA: usize = 64;

/// How often each shard checks its connections against their timeouts.
const SWEEP_INTERVAL: Duration = Duration::from_millis(250);

/// A connection gives back a read buffer that grew once it has carried no frame for this
/// long: one that pauses between bursts keeps it (giving it back at every pause cost an
/// allocation and more reads per frame).
const SHRINK_AFTER: Duration = Duration::from_secs(1);

/// TCP keep-alive: probes after this long without traffic, this often, this many times. A
/// peer whose machine vanished (no reset ever comes) is noticed within about 25 s.
const KEEPALIVE_IDLE_SECONDS: libc::c_int = 10;
const KEEPALIVE_INTERVAL_SECONDS: libc::c_int = 5;
const KEEPALIVE_PROBES: libc::c_int = 3;

/// A digest is computed at most this often relative to its own cost: the next one waits four
/// times as long as the last one took, so a flood of digest requests takes at most a fifth of
/// the shard's reactor.
const DIGEST_SPACING: u32 = 4;

/// What the connection tasks of one shard share.
pub struct ShardNet<S: Hosted> {
    /// The node's configuration.
    pub config: Arc<NodeConfig>,
    /// Which shard.
    pub shard: u16,
    /// The shard's state.
    pub host: HostRef<S>,
    control: Arc<Control>,
    /// The shard's coarse clock, set each tick: connections note when their frames start and
    /// end without reading the system clock.
    clock: Cell<Instant>,
    last_sweep: Cell<Instant>,
    connections: RefCell<HashMap<u64, Rc<Watched>>>,
    next_connection: Cell<u64>,
    /// Each peer's newest incoming connection: an older one it left behind (its dialler
    /// restarted, or gave up on it) is closed when the new one arrives.
    incoming_peers: RefCell<HashMap<NodeId, Rc<Watched>>>,
    refusals: RefusalLog,
    /// One snapshot read at a time on the blocking pool: a flood of pulls queues here, so a
    /// WAL sync waits behind one piece's read at most.
    snapshot_reads: glommio::sync::Semaphore,
    digests: Digests,
}

impl<S: Hosted> ShardNet<S> {
    /// The connection state of shard `shard`.
    pub fn new(
        config: Arc<NodeConfig>,
        shard: u16,
        host: HostRef<S>,
        control: Arc<Control>,
    ) -> Rc<ShardNet<S>> {
        let now = Instant::now();
        Rc::new(ShardNet {
            config,
            shard,
            host,
            control,
            clock: Cell::new(now),
            last_sweep: Cell::new(now),
            connections: RefCell::new(HashMap::new()),
            next_connection: Cell::new(0),
            incoming_peers: RefCell::new(HashMap::new()),
            refusals: RefusalLog::default(),
            snapshot_reads: glommio::sync::Semaphore::new(1),
            digests: Digests::default(),
        })
    }

    /// A connection refused before it was served: counted for the metrics, and logged.
    fn refused(&self, refusal: Refusal, reason: &str, peer: Option<SocketAddr>) {
        self.control.metrics[usize::from(self.shard)].count_refusal(refusal);
        self.refusals.refused(self.shard, reason, peer);
    }

    /// A tick: sets the coarse clock and, every [`SWEEP_INTERVAL`], closes the connections
    /// past their timeouts. Returns the time.
    pub fn on_tick(&self) -> Instant {
        let now = Instant::now();
        self.clock.set(now);
        if now.duration_since(self.last_sweep.get()) >= SWEEP_INTERVAL {
            self.last_sweep.set(now);
            self.sweep(now);
        }
        now
    }

    fn sweep(&self, now: Instant) {
        let config = &self.config;
        let read_timeout = Duration::from_millis(u64::from(config.read_timeout_ms));
        let write_timeout = Duration::from_millis(u64::from(config.write_timeout_ms));
        let idle_timeout = (config.idle_timeout_ms > 0)
            .then(|| Duration::from_millis(u64::from(config.idle_timeout_ms)));
        // Each closing at debug; how many for each reason at info (ten thousand idle clients
        // timing out together make one line).
        let mut closed: [(&str, u64); 3] = [
            ("a frame was not whole within --read-timeout-ms", 0),
            ("the other end took nothing it was sent for --write-timeout-ms", 0),
            ("idle for --idle-timeout-ms", 0),
        ];
        for watched in self.connections.borrow().values() {
            if watched.closed.get() {
                continue;
            }
            let past = |since: Option<Instant>, timeout: Duration| {
                since.is_some_and(|since| now.duration_since(since) > timeout)
            };
            if past(Some(watched.last_frame.get()), SHRINK_AFTER) {
                // Its reader waits with a grown buffer: woken, it gives it back.
                if let Some(waker) = watched.shrink_waker.take() {
                    waker.wake();
                }
            }
            let reason = if past(watched.frame_started.get(), read_timeout) {
                0
            } else if past(watched.writing_since.get(), write_timeout) {
                1
            } else if watched.kind.get() == Kind::Client
                && watched.frame_started.get().is_none()
                && idle_timeout.is_some_and(|idle| past(Some(watched.last_frame.get()), idle))
            {
                2
            } else {
                continue;
            };
            let (kind, peer) = (watched.kind.get(), watched.peer);
            let why = closed[reason].0;
            tracing::debug!(shard = self.shard, ?kind, ?peer, reason = why, "closing a connection");
            closed[reason].1 += 1;
            watched.close();
        }
        for (reason, connections) in closed {
            if connections > 0 {
                tracing::info!(shard = self.shard, connections, reason, "connections closed");
            }
        }
    }

    /// Watches a new connection until the returned registration is dropped.
    fn watch(&self, fd: RawFd, peer: Option<SocketAddr>, kind: Kind) -> Registration<'_, S> {
        let id = self.next_connection.get();
        self.next_connection.set(id + 1);
        let now = self.clock.get();
        let watched = Rc::new(Watched {
            fd,
            peer,
            kind: Cell::new(kind),
            frame_started: Cell::new(None),
            last_frame: Cell::new(now),
            writing_since: Cell::new(None),
            shrink_waker: Cell::new(None),
            closed: Cell::new(false),
        });
        self.connections.borrow_mut().insert(id, watched.clone());
        Registration { net: self, id, watched }
    }

    /// Reads with a reader of the shard's snapshot file on the blocking pool, one read at a
    /// time per shard.
    async fn read_snapshot<T: Send + 'static>(
        &self,
        read: impl FnOnce(SnapshotReader<MmapBackend>) -> T + Send + 'static,
    ) -> T {
        let reader = self.host.borrow().shard.snapshot_reader();
        // The semaphore is never closed: a permit always comes.
        let _permit = self.snapshot_reads.acquire_permit(1).await;
        glommio::executor().spawn_blocking(move || read(reader)).await
    }

    /// The shard's status with the state's digest. Hashing the whole state runs on the
    /// shard's thread (the state lives there), so digests are computed one at a time and
    /// spaced by [`DIGEST_SPACING`] times their cost; a request answered by a digest that
    /// began after it arrived shares it.
    async fn digest_status(&self) -> ShardStatus {
        let asked = Instant::now();
        let _permit = self.digests.turn.acquire_permit(1).await;
        if let Some((began, status)) = &*self.digests.last.borrow() {
            if *began >= asked {
                return *status;
            }
        }
        let wait = self.digests.next_at.get().saturating_duration_since(Instant::now());
        if !wait.is_zero() {
            glommio::timer::sleep(wait).await;
        }
        let began = Instant::now();
        let status = self.host.borrow().status(true);
        let took = began.elapsed();
        self.digests.next_at.set(Instant::now() + took * DIGEST_SPACING);
        if took > Duration::from_millis(10) {
            let took_us = took.as_micros() as u64;
            tracing::debug!(shard = self.shard, took_us, "state digest computed on the reactor");
        }
        *self.digests.last.borrow_mut() = Some((began, status));
        status
    }
}

/// Digests of the state: whose turn it is, when the next may start, and the last one.
struct Digests {
    turn: glommio::sync::Semaphore,
    next_at: Cell<Instant>,
    last: RefCell<Option<(Instant, ShardStatus)>>,
}

impl Default for Digests {
    fn default() -> Digests {
        Digests {
            turn: glommio::sync::Semaphore::new(1),
            next_at: Cell::new(Instant::now()),
            last: RefCell::new(None),
        }
    }
}

/// Refused connections logged one by one in each second; more are counted, not logged.
const REFUSALS_LOGGED_PER_SECOND: u32 = 10;

/// Connections refused: each is one event with its reason and the peer's address, up to
/// [`REFUSALS_LOGGED_PER_SECOND`] a second; past that (a flood) they are counted and the
/// count logged when the next second begins, so that refusing costs no more than accepting.
#[derive(Default)]
struct RefusalLog {
    second_began: Cell<Option<Instant>>,
    logged: Cell<u32>,
    unlogged: Cell<u64>,
}

impl RefusalLog {
    fn refused(&self, shard: u16, reason: &str, peer: Option<SocketAddr>) {
        let now = Instant::now();
        let began = self.second_began.get();
        if began.is_none_or(|at| now.duration_since(at) >= Duration::from_secs(1)) {
            let unlogged = self.unlogged.replace(0);
            if unlogged > 0 {
                tracing::warn!(shard, unlogged, "more connections refused in the last second");
            }
            self.second_began.set(Some(now));
            self.logged.set(0);
        }
        if self.logged.get() < REFUSALS_LOGGED_PER_SECOND {
            self.logged.set(self.logged.get() + 1);
            let peer = peer.map_or_else(|| "unknown".to_string(), |peer| peer.to_string());
            tracing::warn!(shard, %peer, reason, "connection refused");
        } else {
            self.unlogged.set(self.unlogged.get() + 1);
        }
    }
}

/// What a connection is, for its timeouts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Accepted, before its `Hello`.
    Handshake,
    /// A peer's, incoming.
    Peer,
    /// A client's.
    Client,
    /// A client's that tails the log: it only reads, so it is never idle.
    Tail,
    /// Ours, to a peer.
    Dialled,
}

/// A connection as its shard's sweep sees it.
pub struct Watched {
    fd: RawFd,
    peer: Option<SocketAddr>,
    kind: Cell<Kind>,
    /// When the frame being read began, while one is.
    frame_started: Cell<Option<Instant>>,
    /// When the last frame was whole (or the connection opened).
    last_frame: Cell<Instant>,
    /// When a write last made progress, while one is under way.
    writing_since: Cell<Option<Instant>>,
    /// Its reader, waiting with a read buffer that grew (see [`SHRINK_AFTER`]).
    shrink_waker: Cell<Option<std::task::Waker>>,
    closed: Cell<bool>,
}

impl Cut for Watched {
    fn cut(&self) {
        self.close();
    }
}

impl Watched {
    /// Cuts the connection: its socket is shut down both ways, so the tasks reading and
    /// writing it end at once. (The descriptor stays open until they drop the stream, so it
    /// cannot be reused meanwhile.)
    pub fn close(&self) {
        if !self.closed.replace(true) {
            // SAFETY: `shutdown` has no memory effects; the descriptor is open (its stream
            // lives as long as the task that holds this registration).
            unsafe { libc::shutdown(self.fd, libc::SHUT_RDWR) };
        }
    }
}

/// A connection's place among its shard's watched ones, given up when dropped.
struct Registration<'a, S: Hosted> {
    net: &'a ShardNet<S>,
    id: u64,
    watched: Rc<Watched>,
}

impl<S: Hosted> Drop for Registration<'_, S> {
    fn drop(&mut self) {
        self.net.connections.borrow_mut().remove(&self.id);
        let mut peers = self.net.incoming_peers.borrow_mut();
        peers.retain(|_, watched| !Rc::ptr_eq(watched, &self.watched));
    }
}

/// Reading progress, noted on the shard's coarse clock.
struct Progress<'a> {
    clock: &'a Cell<Instant>,
    watched: &'a Watched,
}

impl ReadProgress for Progress<'_> {
    fn frame_started(&self) {
        self.watched.frame_started.set(Some(self.clock.get()));
    }

    fn frame_finished(&self) {
        self.watched.frame_started.set(None);
        self.watched.last_frame.set(self.clock.get());
    }

    fn may_shrink(&self, waker: &std::task::Waker) -> bool {
        let quiet = self.clock.get().duration_since(self.watched.last_frame.get());
        if quiet >= SHRINK_AFTER {
            return true;
        }
        self.watched.shrink_waker.set(Some(waker.clone()));
        false
    }
}

/// Which of [`Control`]'s connection counts.
type Count = fn(&Control) -> &AtomicUsize;

/// A place counted in one of [`Control`]'s connection counts, given back when dropped.
struct Counted {
    control: Arc<Control>,
    count: Count,
}

impl Counted {
    /// A place in `count` if it holds fewer than `max`.
    fn take(control: &Arc<Control>, count: Count, max: usize) -> Option<Counted> {
        if count(control).fetch_add(1, Ordering::SeqCst) >= max {
            count(control).fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        Some(Counted { control: control.clone(), count })
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        (self.count)(&self.control).fetch_sub(1, Ordering::SeqCst);
    }
}

/// How long a port in use is tried again before the node gives up on it.
const BIND_RETRY: Duration = Duration::from_secs(5);

/// Binds the shard's port (no `SO_REUSEPORT`: two nodes configured onto one port must fail,
/// not share it).
///
/// # Errors
/// The address does not resolve or cannot be bound.
pub fn bind(base: &str, shard: u16) -> std::io::Result<TcpListener> {
    let address = shard_address(base, shard)?;
    // A node killed a moment ago can hold its ports a little longer than its life: glommio's
    // io_uring keeps the listening socket until the kernel tears the ring down. A supervisor
    // restarting it at once must not fail for that, so a busy port is tried again for a while.
    let deadline = std::time::Instant::now() + BIND_RETRY;
    let listener = loop {
        match std::net::TcpListener::bind(address) {
            Err(error)
                if error.kind() == std::io::ErrorKind::AddrInUse
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            result => break result?,
        }
    };
    listener.set_nonblocking(true)?;
    // SAFETY: the descriptor is a bound, listening TCP socket we own and hand over whole.
    Ok(unsafe { TcpListener::from_raw_fd(listener.into_raw_fd()) })
}

/// Turns on TCP keep-alive (see [`KEEPALIVE_IDLE_SECONDS`]): an idle connection whose other
/// end vanished fails instead of lasting forever.
fn keep_alive(fd: RawFd) -> std::io::Result<()> {
    let options = [
        (libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1),
        (libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, KEEPALIVE_IDLE_SECONDS),
        (libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, KEEPALIVE_INTERVAL_SECONDS),
        (libc::IPPROTO_TCP, libc::TCP_KEEPCNT, KEEPALIVE_PROBES),
    ];
    for (level, name, value) in options {
        // SAFETY: setsockopt reads `size_of::<c_int>()` bytes from a live local; the
        // descriptor is an open TCP socket.
        let result = unsafe {
            libc::setsockopt(
                fd,
                level,
                name,
                (&raw const value).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if result != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Bounds how long what a peer connection sent may stay unacknowledged before the kernel
/// gives up on it (`TCP_USER_TIMEOUT`): two election timeouts, at least a second. Without it a
/// link cut by a partition backs off its retransmissions (doubling, to two minutes) and stays
/// silent for seconds after the network heals (docs/partitions.md, the first finding); with it
/// the connection fails, and the dial loop, whose back-off stops at a second, makes a new one.
fn bound_unacknowledged(fd: RawFd, election_timeout_ms: u32) -> std::io::Result<()> {
    let timeout_ms = election_timeout_ms.saturating_mul(2).max(1000);
    let value = libc::c_uint::try_from(timeout_ms).unwrap_or(libc::c_uint::MAX);
    // SAFETY: setsockopt reads `size_of::<c_uint>()` bytes from a live local; the descriptor is
    // an open TCP socket.
    let result = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_USER_TIMEOUT,
            (&raw const value).cast(),
            std::mem::size_of::<libc::c_uint>() as libc::socklen_t,
        )
    };
    if result != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Accepts connections forever, each served by its own task.
pub async fn accept_loop<S: Hosted>(net: Rc<ShardNet<S>>, listener: TcpListener) {
    let open_max = net.config.connections_max as usize + HANDSHAKES_EXTRA;
    loop {
        match listener.accept().await {
            Ok(stream) => {
                // Past the limit, closed unread: nothing of it is kept, not even a task.
                let open: Count = |control| &control.open_connections;
                let Some(place) = Counted::take(&net.control, open, open_max) else {
                    let peer = stream.peer_addr().ok();
                    net.refused(Refusal::OpenMax, "too many connections; closed unread", peer);
                    drop(stream);
                    continue;
                };
                let net = net.clone();
                glommio::spawn_local(async move {
                    let peer = stream.peer_addr().ok();
                    if let Err(error) = serve(&net, stream, peer, place).await {
                        match error {
                            ConnectionError::Closed => {}
                            error => tracing::warn!(
                                shard = net.shard, ?peer, %error, "connection closed"
                            ),
                        }
                    }
                })
                .detach();
            }
            Err(error) => {
                // Out of descriptors, say: logged once a second, tried again shortly.
                net.refused(Refusal::Accept, &format!("accept failed: {error}"), None);
                glommio::timer::sleep(BACKOFF_MIN).await;
            }
        }
    }
}

fn header_of<S: Hosted>(net: &ShardNet<S>, body: Body) -> Frame {
    Frame { cluster_id: net.config.cluster_id, from: net.config.id, shard: net.shard, body }
}

fn hello_reply<S: Hosted>(net: &ShardNet<S>, refusal: Option<String>) -> Frame {
    let members = net
        .config
        .members()
        .map(|(id, address, learner)| Member { id, address: address.to_string(), learner })
        .collect();
    let leader = net.host.borrow().status(false).leader;
    let reply = HelloReply { refusal, shards: net.config.shards, leader, members };
    header_of(net, Body::HelloReply(reply))
}

async fn send(stream: &mut TcpStream, frame: &Frame) -> Result<(), ConnectionError> {
    let mut out = Vec::new();
    encode_into(&mut Encoder::default(), frame, &mut out);
    stream.write_all(&out).await?;
    Ok(())
}

/// Why a `Hello` is refused, if it is.
fn check_hello<S: Hosted>(net: &ShardNet<S>, frame: &Frame, hello: &Hello) -> Option<String> {
    let config = &net.config;
    if hello.version != PROTOCOL_VERSION {
        return Some(format!(
            "protocol version {} refused: this node speaks {PROTOCOL_VERSION}",
            hello.version
        ));
    }
    if frame.shard != net.shard {
        return Some(format!("shard {} dialled the port of shard {}", frame.shard, net.shard));
    }
    let cluster_ok = frame.cluster_id == config.cluster_id
        // A client may leave the cluster id out (0): it only reads what it is told.
        || (matches!(hello.role, Role::Client(_)) && frame.cluster_id == ClusterId(0));
    if !cluster_ok {
        return Some(format!(
            "cluster id {} refused: this is cluster {}",
            frame.cluster_id.0, config.cluster_id.0
        ));
    }
    if hello.role == Role::Peer {
        let known = config.members().any(|(id, _, _)| id == frame.from);
        if !known || frame.from == config.id {
            return Some(format!("node {} is not another member of this cluster", frame.from.0));
        }
    }
    None
}

fn glommio_error<T>(error: glommio::GlommioError<T>) -> ConnectionError {
    ConnectionError::Io(std::io::Error::other(error.to_string()))
}

/// The largest first frame (a `Hello`) accepted: before the handshake nobody may make the
/// node allocate more.
const HELLO_BYTES_MAX: usize = 4096;

async fn serve<S: Hosted>(
    net: &Rc<ShardNet<S>>,
    mut stream: TcpStream,
    peer: Option<SocketAddr>,
    place: Counted,
) -> Result<(), ConnectionError> {
    stream.set_nodelay(true).map_err(glommio_error)?;
    keep_alive(stream.as_raw_fd())?;
    let registration = net.watch(stream.as_raw_fd(), peer, Kind::Handshake);
    let first = read_handshake(&mut stream, HELLO_BYTES_MAX, "hello").await?;
    let Body::Hello(hello) = first.body else {
        return Err(ConnectionError::Protocol("the first frame is not a hello".into()));
    };
    if let Some(reason) = check_hello(net, &first, &hello) {
        net.refused(Refusal::Handshake, &reason, peer);
        let _ = send(&mut stream, &hello_reply(net, Some(reason))).await;
        return Ok(());
    }
    let watched = registration.watched.clone();
    match hello.role {
        Role::Peer => {
            // Peers never count against the limit: there are at most members × shards of
            // them, since each one's newest connection replaces the one before.
            drop(place);
            watched.kind.set(Kind::Peer);
            let replaced = net.incoming_peers.borrow_mut().insert(first.from, watched.clone());
            if let Some(replaced) = replaced {
                tracing::info!(shard = net.shard, peer = first.from.0, "peer dialled again");
                replaced.close();
            }
            send(&mut stream, &hello_reply(net, None)).await?;
            serve_peer(net, stream, first.from, &watched).await
        }
        Role::Client(client) => {
            let max = net.config.connections_max as usize;
            let clients: Count = |control| &control.client_connections;
            let Some(_client_place) = Counted::take(&net.control, clients, max) else {
                let reason = format!(
                    "this node serves at most {max} client connections (--connections-max); \
                     try again later, or another node"
                );
                net.refused(Refusal::ClientsMax, &reason, peer);
                let _ = send(&mut stream, &hello_reply(net, Some(reason))).await;
                // Its write side closed first, so the refusal arrives before the end.
                let _ = stream.shutdown(std::net::Shutdown::Write).await;
                return Ok(());
            };
            watched.kind.set(Kind::Client);
            watched.last_frame.set(net.clock.get());
            send(&mut stream, &hello_reply(net, None)).await?;
            serve_client(net, stream, client, &watched).await
        }
    }
}

/// Frames from the same sender must keep the handshake's identity.
fn check_sender<S: Hosted>(
    net: &ShardNet<S>,
    frame: &Frame,
    from: NodeId,
) -> Result<(), ConnectionError> {
    if frame.cluster_id != net.config.cluster_id && from != NodeId(0) {
        return Err(ConnectionError::Protocol(format!(
            "frame from cluster {} on a connection of cluster {}",
            frame.cluster_id.0, net.config.cluster_id.0
        )));
    }
    if frame.from != from || frame.shard != net.shard {
        return Err(ConnectionError::Protocol(format!(
            "frame from node {} shard {} on the connection of node {} shard {}",
            frame.from.0, frame.shard, from.0, net.shard
        )));
    }
    Ok(())
}

async fn serve_peer<S: Hosted>(
    net: &Rc<ShardNet<S>>,
    stream: TcpStream,
    from: NodeId,
    watched: &Watched,
) -> Result<(), ConnectionError> {
    let max = net.config.frame_bytes_max();
    let progress = Progress { clock: &net.clock, watched };
    let mut reader = FrameReader::new(stream);
    loop {
        let frame = reader.next_frame(max, &progress).await?;
        check_sender(net, &frame, from)?;
        let Body::Peer(message) = frame.body else {
            return Err(ConnectionError::Protocol("a peer sent a non-protocol frame".into()));
        };
        if let Message::SnapshotPull { slot, offset } = message {
            // A piece is read from the snapshot file off the reactor. The peer's next frames
            // wait meanwhile, so one peer has one read in flight.
            match net.read_snapshot(move |reader| reader.piece(Some(slot), offset)).await {
                Ok(Some(piece)) => with_shard(&net.host, |host| {
                    host.queue_peer_message(from, piece);
                    Ok(())
                }),
                Ok(None) => {} // Replaced by a newer one: the reader starts again.
                Err(error) => fail(&mut net.host.borrow_mut(), &error),
            }
            continue;
        }
        with_shard(&net.host, |host| host.on_peer_message(from, message));
    }
}

async fn serve_client<S: Hosted>(
    net: &Rc<ShardNet<S>>,
    stream: TcpStream,
    client: u64,
    watched: &Rc<Watched>,
) -> Result<(), ConnectionError> {
    let (reader, mut writer) = futures_lite::io::split(stream);
    let (bell, rings) = local_channel::new_bounded(1);
    let link = Link::new(bell);
    let connection = net.host.borrow_mut().add_client(client, link, watched.clone());
    let (writer_host, writer_net, writer_watched) =
        (net.host.clone(), net.clone(), watched.clone());
    let write_task = glommio::spawn_local(async move {
        let take = |spare| writer_host.borrow_mut().take_client_bytes(connection, spare);
        let progress = Some((&writer_net.clock, &*writer_watched));
        let _ = write_link(&rings, &mut writer, take, progress).await;
        let _ = writer.close().await;
    });
    let result = read_client(net, reader, connection, watched).await;
    net.host.borrow_mut().remove_client(connection);
    if !matches!(result, Ok(()) | Err(ConnectionError::Closed)) {
        // Broken: nothing more is sent. (After a clean end the writer sends what waits, as
        // long as the client takes it.)
        watched.close();
    }
    // Dropping the link dropped the bell's sender: the writer ends after its last write.
    write_task.await;
    result
}

async fn read_client<S: Hosted>(
    net: &Rc<ShardNet<S>>,
    reader: futures_lite::io::ReadHalf<TcpStream>,
    connection: u64,
    watched: &Watched,
) -> Result<(), ConnectionError> {
    let max = net.config.frame_bytes_max();
    let progress = Progress { clock: &net.clock, watched };
    let mut reader = FrameReader::new(reader);
    loop {
        let frame = reader.next_frame(max, &progress).await?;
        check_sender(net, &frame, NodeId(0))?;
        match frame.body {
            Body::Requests(batch) => {
                let mut refused = None;
                with_shard(&net.host, |host| {
                    refused = host.on_requests(connection, &batch)?.err();
                    Ok(())
                });
                if let Some(reason) = refused {
                    return Err(ConnectionError::Protocol(reason));
                }
            }
            Body::StatusRequest { digest } => {
                // One client's next request waits for this answer: a client has one digest
                // in the works at a time.
                let status = if digest {
                    net.digest_status().await
                } else {
                    net.host.borrow().status(false)
                };
                net.host.borrow_mut().send_to_client(connection, Body::Status(status));
            }
            Body::MoveLeader { to } => {
                let mut outcome = None;
                with_shard(&net.host, |host| {
                    outcome = Some(host.move_leader(to)?);
                    Ok(())
                });
                // None: the shard failed, and the node stops.
                if let Some(outcome) = outcome {
                    let reply = Body::MoveLeaderReply(outcome);
                    net.host.borrow_mut().send_to_client(connection, reply);
                }
            }
            Body::Peer(Message::Subscribe { from_slot }) => {
                watched.kind.set(Kind::Tail);
                net.host.borrow_mut().subscribe_client(connection, from_slot);
                pump(&net.host);
            }
            Body::Peer(Message::SnapshotPull { slot, offset }) => {
                // Read off the reactor; this client's next frame waits for it.
                let read = move |reader: SnapshotReader<MmapBackend>| {
                    reader.piece_for_client(slot, offset)
                };
                match net.read_snapshot(read).await {
                    Ok(piece) => {
                        net.host.borrow_mut().send_to_client(connection, Body::Peer(piece))
                    }
                    Err(error) => fail(&mut net.host.borrow_mut(), &error),
                }
            }
            _ => return Err(ConnectionError::Protocol("a client sent a peer frame".into())),
        }
    }
}

/// Keeps a connection to one peer's shard up and writes what the shard sends it.
pub async fn dial_loop<S: Hosted>(net: Rc<ShardNet<S>>, peer: NodeId, base: String) {
    let mut backoff = BACKOFF_MIN;
    loop {
        match dial_once(&net, peer, &base).await {
            Ok(()) => backoff = BACKOFF_MIN,
            Err(DialError::Refused(reason)) => {
                tracing::error!(shard = net.shard, peer = peer.0, %reason, "peer refused us");
                backoff = BACKOFF_MAX;
            }
            Err(DialError::Failed(error)) => {
                tracing::debug!(shard = net.shard, peer = peer.0, %error, "peer unreachable");
            }
        }
        net.host.borrow_mut().set_peer_link(peer, None);
        glommio::timer::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

enum DialError {
    Refused(String),
    Failed(ConnectionError),
}

impl From<ConnectionError> for DialError {
    fn from(error: ConnectionError) -> DialError {
        DialError::Failed(error)
    }
}

impl From<std::io::Error> for DialError {
    fn from(error: std::io::Error) -> DialError {
        DialError::Failed(error.into())
    }
}

async fn dial_once<S: Hosted>(
    net: &Rc<ShardNet<S>>,
    peer: NodeId,
    base: &str,
) -> Result<(), DialError> {
    let address = shard_address(base, net.shard)?;
    let mut stream =
        TcpStream::connect_timeout(address, HANDSHAKE_TIMEOUT).await.map_err(glommio_error)?;
    stream.set_nodelay(true).map_err(glommio_error)?;
    keep_alive(stream.as_raw_fd())?;
    bound_unacknowledged(stream.as_raw_fd(), net.config.election_timeout_ms)?;
    let registration = net.watch(stream.as_raw_fd(), Some(address), Kind::Dialled);
    let hello = Hello { version: PROTOCOL_VERSION, role: Role::Peer };
    send(&mut stream, &header_of(net, Body::Hello(hello))).await?;
    let reply = read_handshake(&mut stream, net.config.frame_bytes_max(), "hello reply").await?;
    match reply.body {
        Body::HelloReply(HelloReply { refusal: None, .. }) => {}
        Body::HelloReply(HelloReply { refusal: Some(reason), .. }) => {
            return Err(DialError::Refused(reason));
        }
        _ => return Err(ConnectionError::Protocol("expected a hello reply".into()).into()),
    }
    tracing::info!(shard = net.shard, peer = peer.0, %address, "connected");
    let (bell, rings) = local_channel::new_bounded(1);
    net.host.borrow_mut().set_peer_link(peer, Some(Link::new(bell)));
    let host = &net.host;
    let take = |spare| Some(host.borrow_mut().take_peer_bytes(peer, spare));
    let progress = Some((&net.clock, &*registration.watched));
    write_link(&rings, &mut stream, take, progress).await?;
    Ok(())
}

/// Reads a handshake frame, giving up after [`HANDSHAKE_TIMEOUT`].
async fn read_handshake(
    stream: &mut TcpStream,
    max: usize,
    what: &str,
) -> Result<Frame, ConnectionError> {
    glommio::timer::timeout(HANDSHAKE_TIMEOUT, async { Ok(read_frame_async(stream, max).await) })
        .await
        .map_err(|_| ConnectionError::Protocol(format!("no {what} within the handshake timeout")))?
}

/// Writes a link's bytes each time its bell rings, until the link is dropped (`Ok`) or `take`
/// says to stop (`None`, also `Ok`). `take` swaps the queued bytes for the spare buffer.
/// With `progress`, each write's progress is noted on the shard's clock, for the sweep's
/// write timeout.
async fn write_link<W: futures_lite::AsyncWrite + Unpin>(
    rings: &local_channel::LocalReceiver<()>,
    writer: &mut W,
    mut take: impl FnMut(Outgoing) -> Option<Outgoing>,
    progress: Option<(&Cell<Instant>, &Watched)>,
) -> std::io::Result<()> {
    let note = |writing: bool| {
        if let Some((clock, watched)) = progress {
            watched.writing_since.set(writing.then(|| clock.get()));
        }
    };
    let mut spare = Outgoing::default();
    while rings.recv().await.is_some() {
        let Some(mut out) = take(spare) else { return Ok(()) };
        for slice in out.slices() {
            let mut rest = slice;
            while !rest.is_empty() {
                note(true);
                let written = writer.write(rest).await?;
                if written == 0 {
                    return Err(std::io::ErrorKind::WriteZero.into());
                }
                rest = &rest[written..];
            }
        }
        note(false);
        out.clear();
        spare = out;
    }
    Ok(())
}
