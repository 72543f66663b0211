//! The Redis-protocol front end (docs/redis.md): RESP2, and RESP3 after `HELLO 3`, on a
//! tokio task per connection. A connection reads what has arrived, runs every whole request in
//! it as one pipeline (at most [`PIPELINE_MAX`] at a time), writes the replies in order, and
//! reads again; a client that does not read its replies stops being read (TCP pushes back)
//! and is closed after [`WRITE_TIMEOUT`]. A request that cannot be parsed gets
//! `-ERR Protocol error: …` and its connection is closed, as Redis does.

pub(super) mod command;
mod expiry;
pub(super) mod parse;
mod pubsub;
mod reply;
mod scan;
mod session;
mod txn;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::Poll;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use super::Gateway;
use parse::{Limits, RequestParser};
use session::{Session, Shared};

/// Requests run as one pipeline at most; more wait for the next round.
pub const PIPELINE_MAX: usize = 1024;
/// A connection whose client takes none of its replies for this long is closed.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Arguments in one request at most (`MSET` with 32,767 pairs).
const ARGUMENTS_MAX: usize = 65_536;
/// An inline command's line at most (Redis's limit).
const INLINE_BYTES_MAX: usize = 64 << 10;
/// What a read asks for at least.
const READ_BYTES: usize = 16 << 10;

/// Serves the Redis protocol on `listener` until the runtime stops.
pub async fn serve(listener: TcpListener, gateway: Arc<Gateway>, connections_max: usize) {
    let listen = listener.local_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let bulk_bytes_max = gateway.command_bytes_max();
    let limits = Limits {
        arguments_max: ARGUMENTS_MAX,
        bulk_bytes_max,
        // Room for a full value beside its key and a few more, and for MSETs of small ones.
        request_bytes_max: bulk_bytes_max.saturating_mul(2).max(16 << 20),
        inline_bytes_max: INLINE_BYTES_MAX,
    };
    let shared = Arc::new(Shared {
        gateway,
        connections: AtomicUsize::new(0),
        listen,
        cursors: std::sync::Mutex::default(),
    });
    let permits = Arc::new(Semaphore::new(connections_max));
    let next_id = AtomicU64::new(1);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "Redis accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::warn!(%peer, connections_max, "Redis connection refused: too many connections");
            tokio::spawn(refuse(stream));
            continue;
        };
        let _ = stream.set_nodelay(true);
        let session = Session::new(shared.clone(), next_id.fetch_add(1, Ordering::Relaxed), peer);
        let shared = shared.clone();
        tokio::spawn(async move {
            shared.connections.fetch_add(1, Ordering::Relaxed);
            if let Err(reason) = connection(stream, session, limits).await {
                tracing::info!(%peer, %reason, "Redis connection closed");
            }
            shared.connections.fetch_sub(1, Ordering::Relaxed);
            drop(permit);
        });
    }
}

/// The whole requests `buffer` holds (at most [`PIPELINE_MAX`]), and the parse error that
/// ended them, if one did.
fn whole_requests(
    parser: &mut RequestParser,
    buffer: &mut BytesMut,
) -> (Vec<Vec<bytes::Bytes>>, Option<parse::ParseError>) {
    let mut requests = Vec::new();
    while requests.len() < PIPELINE_MAX {
        match parser.next(buffer) {
            Ok(Some(request)) if request.is_empty() => {}
            Ok(Some(request)) => requests.push(request),
            Ok(None) => break,
            Err(error) => return (requests, Some(error)),
        }
    }
    (requests, None)
}

/// What an idle connection wakes for.
enum Wake {
    /// Bytes from the client (0: it closed).
    Read(std::io::Result<usize>),
    /// A message one of its subscriptions pushes.
    Push(reply::Reply),
}

/// Waits for the client's next bytes or a subscription's next message, whichever comes
/// first. Both waits can be dropped unfinished without loss: a read that did not complete
/// read nothing, and a message not yet taken stays queued.
async fn wake(stream: &mut TcpStream, buffer: &mut BytesMut, session: &mut Session) -> Wake {
    let mut read = std::pin::pin!(stream.read_buf(buffer));
    std::future::poll_fn(|context| {
        if let Poll::Ready(reply) = session.poll_push(context) {
            return Poll::Ready(Wake::Push(reply));
        }
        read.as_mut().poll(context).map(Wake::Read)
    })
    .await
}

/// Tells a connection over the limit why it is closed, as Redis does.
async fn refuse(mut stream: TcpStream) {
    let reply = b"-ERR max number of clients reached\r\n";
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(reply)).await;
}

/// Serves one connection until it closes; the reason if it was not an ordinary end.
async fn connection(
    mut stream: TcpStream,
    mut session: Session,
    limits: Limits,
) -> Result<(), String> {
    let mut buffer = BytesMut::with_capacity(READ_BYTES);
    let mut parser = RequestParser::new(limits);
    let mut out = Vec::new();
    loop {
        let (requests, failure) = whole_requests(&mut parser, &mut buffer);
        let mut pushed = None;
        if requests.is_empty() && failure.is_none() {
            if buffer.capacity() - buffer.len() < READ_BYTES / 4 {
                buffer.reserve(READ_BYTES);
            }
            match wake(&mut stream, &mut buffer, &mut session).await {
                Wake::Read(Ok(0)) if buffer.is_empty() && !parser.in_request() => return Ok(()),
                Wake::Read(Ok(0)) => {
                    return Err("the client closed in the middle of a request".into());
                }
                Wake::Read(Ok(_)) => continue,
                Wake::Read(Err(error)) => return Err(format!("read: {error}")),
                Wake::Push(reply) => pushed = Some(reply),
            }
        }
        session.run(requests, &mut out).await;
        // A subscription's messages go out between pipelines' replies, never inside them.
        session.push(pushed, &mut out);
        if let Some(error) = &failure {
            reply::Reply::error(format!("ERR Protocol error: {error}"))
                .encode(reply::Protocol::Resp2, &mut out);
        }
        match tokio::time::timeout(WRITE_TIMEOUT, stream.write_all(&out)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => return Err(format!("write: {error}")),
            Err(_) => return Err(format!("the client took no reply for {WRITE_TIMEOUT:?}")),
        }
        out.clear();
        if out.capacity() > 1 << 20 {
            out.shrink_to(READ_BYTES);
        }
        if let Some(error) = failure {
            return Err(format!("protocol error: {error}"));
        }
        if session.quit() {
            return Ok(());
        }
    }
}
