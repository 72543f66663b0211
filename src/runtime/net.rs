//! A shard's connections. Every node dials every other member's shard port and uses that
//! connection only to send; what it receives arrives on the connections the others dialled.
//! Clients dial too and get their replies back on their own connection.
//!
//! Each connection starts with a handshake (`Hello` → `HelloReply`) naming cluster, node,
//! shard and protocol version; a mismatch is refused with a reason, logged on both sides.
//! Frames are size-checked before allocation and verified before use; a bad frame closes that
//! connection only.

use std::os::fd::{FromRawFd, IntoRawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use futures_lite::AsyncWriteExt;
use glommio::channels::local_channel;
use glommio::net::{TcpListener, TcpStream};

use super::host::{HostRef, Link, pump, with_shard};
use crate::core::{ClusterId, Message, NodeId};
use crate::node_config::NodeConfig;
use crate::transport::codec::{
    Body, Encoder, Frame, Hello, HelloReply, Member, PROTOCOL_VERSION, Role,
};
use crate::transport::framing::{ConnectionError, Outgoing, encode_into, read_frame_async};
use crate::transport::shard_address;

/// How long the dialled side waits for a `Hello`, and the dialling side for its answer.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Reconnect back-off bounds.
const BACKOFF_MIN: Duration = Duration::from_millis(20);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// What the connection tasks of one shard share.
pub struct ShardNet {
    /// The node's configuration.
    pub config: Arc<NodeConfig>,
    /// Which shard.
    pub shard: u16,
    /// The shard's state.
    pub host: HostRef,
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

/// Accepts connections forever, each served by its own task.
pub async fn accept_loop(net: Rc<ShardNet>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok(stream) => {
                let net = net.clone();
                glommio::spawn_local(async move {
                    let peer = stream.peer_addr().ok();
                    if let Err(error) = serve(&net, stream).await {
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
                tracing::warn!(shard = net.shard, %error, "accept failed");
                glommio::timer::sleep(BACKOFF_MIN).await;
            }
        }
    }
}

fn header_of(net: &ShardNet, body: Body) -> Frame {
    Frame { cluster_id: net.config.cluster_id, from: net.config.id, shard: net.shard, body }
}

fn hello_reply(net: &ShardNet, refusal: Option<String>) -> Frame {
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
fn check_hello(net: &ShardNet, frame: &Frame, hello: &Hello) -> Option<String> {
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

async fn serve(net: &Rc<ShardNet>, mut stream: TcpStream) -> Result<(), ConnectionError> {
    stream.set_nodelay(true).map_err(glommio_error)?;
    let first = read_handshake(&mut stream, HELLO_BYTES_MAX, "hello").await?;
    let Body::Hello(hello) = first.body else {
        return Err(ConnectionError::Protocol("the first frame is not a hello".into()));
    };
    if let Some(reason) = check_hello(net, &first, &hello) {
        let _ = send(&mut stream, &hello_reply(net, Some(reason.clone()))).await;
        return Err(ConnectionError::Protocol(reason));
    }
    send(&mut stream, &hello_reply(net, None)).await?;
    match hello.role {
        Role::Peer => serve_peer(net, stream, first.from).await,
        Role::Client(client) => serve_client(net, stream, client).await,
    }
}

/// Frames from the same sender must keep the handshake's identity.
fn check_sender(net: &ShardNet, frame: &Frame, from: NodeId) -> Result<(), ConnectionError> {
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

async fn serve_peer(
    net: &Rc<ShardNet>,
    stream: TcpStream,
    from: NodeId,
) -> Result<(), ConnectionError> {
    let max = net.config.frame_bytes_max();
    let mut reader = futures_lite::io::BufReader::with_capacity(256 << 10, stream);
    loop {
        let frame = read_frame_async(&mut reader, max).await?;
        check_sender(net, &frame, from)?;
        let Body::Peer(message) = frame.body else {
            return Err(ConnectionError::Protocol("a peer sent a non-protocol frame".into()));
        };
        with_shard(&net.host, |host| host.on_peer_message(from, message));
    }
}

async fn serve_client(
    net: &Rc<ShardNet>,
    stream: TcpStream,
    client: u64,
) -> Result<(), ConnectionError> {
    let (reader, mut writer) = futures_lite::io::split(stream);
    let (bell, rings) = local_channel::new_bounded(1);
    let connection = net.host.borrow_mut().add_client(client, Link::new(bell));
    let writer_host = net.host.clone();
    let shard = net.shard;
    let write_task = glommio::spawn_local(async move {
        let take = |spare| {
            let taken = writer_host.borrow_mut().take_client_bytes(connection, spare);
            if taken.is_none() {
                tracing::warn!(shard, client, "client does not read its replies; disconnecting");
            }
            taken
        };
        let _ = write_link(&rings, &mut writer, take).await;
        let _ = writer.close().await;
    });
    let result = read_client(net, reader, connection).await;
    net.host.borrow_mut().remove_client(connection);
    // Dropping the link dropped the bell's sender: the writer ends after its last write.
    write_task.await;
    result
}

async fn read_client(
    net: &Rc<ShardNet>,
    reader: futures_lite::io::ReadHalf<TcpStream>,
    connection: u64,
) -> Result<(), ConnectionError> {
    let max = net.config.frame_bytes_max();
    let mut reader = futures_lite::io::BufReader::with_capacity(256 << 10, reader);
    loop {
        let frame = read_frame_async(&mut reader, max).await?;
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
                let mut host = net.host.borrow_mut();
                let status = host.status(digest);
                host.send_to_client(connection, Body::Status(status));
            }
            Body::Peer(Message::Subscribe { from_slot }) => {
                net.host.borrow_mut().subscribe_client(connection, from_slot);
                pump(&net.host);
            }
            Body::Peer(Message::SnapshotPull { slot, offset }) => {
                with_shard(&net.host, |host| host.answer_snapshot_pull(connection, slot, offset));
            }
            _ => return Err(ConnectionError::Protocol("a client sent a peer frame".into())),
        }
    }
}

/// Keeps a connection to one peer's shard up and writes what the shard sends it.
pub async fn dial_loop(net: Rc<ShardNet>, peer: NodeId, base: String) {
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

async fn dial_once(net: &Rc<ShardNet>, peer: NodeId, base: &str) -> Result<(), DialError> {
    let address = shard_address(base, net.shard)?;
    let mut stream =
        TcpStream::connect_timeout(address, HANDSHAKE_TIMEOUT).await.map_err(glommio_error)?;
    stream.set_nodelay(true).map_err(glommio_error)?;
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
    write_link(&rings, &mut stream, |spare| Some(host.borrow_mut().take_peer_bytes(peer, spare)))
        .await?;
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
async fn write_link<W: futures_lite::AsyncWrite + Unpin>(
    rings: &local_channel::LocalReceiver<()>,
    writer: &mut W,
    mut take: impl FnMut(Outgoing) -> Option<Outgoing>,
) -> std::io::Result<()> {
    let mut spare = Outgoing::default();
    while rings.recv().await.is_some() {
        let Some(mut out) = take(spare) else { return Ok(()) };
        for slice in out.slices() {
            writer.write_all(slice).await?;
        }
        out.clear();
        spare = out;
    }
    Ok(())
}
