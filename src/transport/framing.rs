//! Reading and writing whole frames on a byte stream, async (the node) or blocking (the
//! client). The length prefix is checked against the limit before the body is allocated.

use std::io::{self, Read, Write};

use bytes::Bytes;
use futures_lite::{AsyncRead, AsyncReadExt};

use super::codec::{Encoder, Frame, FrameError, PREFIX_BYTES, decode, frame_length};

/// Why a connection stopped.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    /// The peer closed it between frames.
    #[error("closed by the other side")]
    Closed,
    /// The socket failed, or the peer closed it in the middle of a frame.
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    /// The peer sent a frame we refuse.
    #[error("bad frame: {0}")]
    Frame(#[from] FrameError),
    /// The peer closed the connection in the middle of a frame.
    #[error("closed in the middle of a frame")]
    Truncated,
    /// The peer broke the protocol.
    #[error("{0}")]
    Protocol(String),
}

/// An error while reading the rest of a frame whose first byte arrived.
fn mid_frame(error: io::Error) -> ConnectionError {
    if error.kind() == io::ErrorKind::UnexpectedEof {
        ConnectionError::Truncated
    } else {
        ConnectionError::Io(error)
    }
}

fn eof_between_frames(error: io::Error, read: usize) -> ConnectionError {
    if error.kind() == io::ErrorKind::UnexpectedEof && read == 0 {
        ConnectionError::Closed
    } else {
        ConnectionError::Io(error)
    }
}

/// Reads one frame's body (everything after the prefix); the body is checked by [`decode`].
///
/// # Errors
/// [`ConnectionError::Closed`] at a clean end; any other error means the connection is unusable.
pub async fn read_frame_async<R: AsyncRead + Unpin>(
    reader: &mut R,
    max: usize,
) -> Result<Frame, ConnectionError> {
    let mut prefix = [0u8; PREFIX_BYTES];
    let first = reader.read(&mut prefix).await?;
    if first == 0 {
        return Err(ConnectionError::Closed);
    }
    reader.read_exact(&mut prefix[first..]).await.map_err(mid_frame)?;
    let len = frame_length(prefix, max)?;
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body).await.map_err(mid_frame)?;
    Ok(decode(&Bytes::from(body))?)
}

/// Blocking form of [`read_frame_async`].
///
/// # Errors
/// As [`read_frame_async`].
pub fn read_frame<R: Read>(reader: &mut R, max: usize) -> Result<Frame, ConnectionError> {
    let mut prefix = [0u8; PREFIX_BYTES];
    reader.read_exact(&mut prefix).map_err(|error| eof_between_frames(error, 0))?;
    let len = frame_length(prefix, max)?;
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body).map_err(mid_frame)?;
    Ok(decode(&Bytes::from(body))?)
}

/// Appends `frame`, encoded, to `out`: the bytes to write to the stream.
pub fn encode_into(encoder: &mut Encoder, frame: &Frame, out: &mut Vec<u8>) {
    let mut payloads = Vec::new();
    encoder.encode(frame, out, &mut payloads);
    for payload in payloads {
        out.extend_from_slice(&payload);
    }
}

/// Payloads at least this large are sent from where they are instead of being copied next to
/// their frame's header: a batch goes to every peer without a copy in user space.
const SHARE_FROM_BYTES: usize = 16 << 10;

/// Encoded frames waiting for one connection, in order: small parts copied together, large
/// payloads (batches) held by reference.
#[derive(Default)]
pub struct Outgoing {
    bytes: Vec<u8>,
    /// Each payload follows `bytes[..at]`; `at` never decreases.
    shared: Vec<(usize, Bytes)>,
    shared_bytes: usize,
    payloads: Vec<Bytes>,
}

impl Outgoing {
    /// Appends `frame`, encoded.
    pub fn push(&mut self, encoder: &mut Encoder, frame: &Frame) {
        encoder.encode(frame, &mut self.bytes, &mut self.payloads);
        for payload in self.payloads.drain(..) {
            if payload.len() >= SHARE_FROM_BYTES {
                self.shared_bytes += payload.len();
                self.shared.push((self.bytes.len(), payload));
            } else {
                self.bytes.extend_from_slice(&payload);
            }
        }
    }

    /// Bytes waiting.
    #[must_use]
    pub fn len(&self) -> usize {
        self.bytes.len() + self.shared_bytes
    }

    /// Nothing waits.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets everything (keeping the allocations).
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.shared.clear();
        self.shared_bytes = 0;
    }

    /// The bytes to write, in order.
    pub fn slices(&self) -> impl Iterator<Item = &[u8]> {
        let mut from = 0;
        let shared = self.shared.iter().flat_map(move |(at, payload)| {
            let copied = &self.bytes[from..*at];
            from = *at;
            [copied, &payload[..]]
        });
        let last = self.shared.last().map_or(0, |(at, _)| *at);
        shared.chain(std::iter::once(&self.bytes[last..])).filter(|slice| !slice.is_empty())
    }
}

/// Writes one frame, blocking.
///
/// # Errors
/// The socket failed.
pub fn write_frame<W: Write>(
    writer: &mut W,
    encoder: &mut Encoder,
    frame: &Frame,
) -> io::Result<()> {
    let mut out = Vec::new();
    encode_into(encoder, frame, &mut out);
    writer.write_all(&out)
}
