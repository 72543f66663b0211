//! Reading and writing whole frames on a byte stream, async (the node) or blocking (the
//! client). The length prefix is checked against the limit before anything is allocated, and
//! a body's buffer grows as its bytes arrive: a sender announcing a large frame and sending
//! little costs the receiver what it sent, not what it announced.
//!
//! The node reads each connection through a [`FrameReader`], whose buffer is small while the
//! connection idles and grows only while reads keep filling it: ten thousand idle
//! connections hold a few KiB each, not a quarter of a MiB.

use std::future::Future;
use std::io::{self, Read, Write};
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

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

/// A body of a frame not yet arrived is first given room for at most this many bytes.
const BODY_ROOM_FIRST_BYTES: usize = 64 << 10;

/// A body's next read is given this much room at first (zeroed, so made resident, ahead of
/// the bytes that fill it); the room doubles while reads fill it, up to
/// [`BODY_READ_BYTES_MAX`]: memory runs ahead of the bytes only as fast as they come.
const BODY_READ_BYTES_MIN: usize = 64 << 10;

/// The most room a body's read is given.
const BODY_READ_BYTES_MAX: usize = 1 << 20;

/// A connection's read buffer holds this much while it idles, and to begin with.
pub const READ_BUFFER_MIN_BYTES: usize = 4 << 10;

/// A connection's read buffer grows, while reads fill it or a frame needs it, up to this
/// much: many frames are taken in by one read (as the 256 KiB buffer every connection had
/// from the start did). A frame larger than this is read into its own body.
pub const READ_BUFFER_MAX_BYTES: usize = 256 << 10;

/// A frame's body being read: its bytes so far, and the room its next read gets.
struct PartialBody {
    /// The bytes read; between [`PartialBody::room`] and [`PartialBody::took`], the room
    /// after them too.
    bytes: Vec<u8>,
    filled: usize,
    len: usize,
    read_bytes: usize,
}

impl PartialBody {
    /// A body of `len` bytes, starting with `first`.
    fn new(len: usize, first: &[u8]) -> PartialBody {
        debug_assert!(first.len() < len, "a body read whole needs no room");
        let mut bytes = Vec::with_capacity(len.min(BODY_ROOM_FIRST_BYTES.max(first.len())));
        bytes.extend_from_slice(first);
        PartialBody { bytes, filled: first.len(), len, read_bytes: BODY_READ_BYTES_MIN }
    }

    fn is_whole(&self) -> bool {
        self.filled == self.len
    }

    /// Makes room for the next read and returns it. The capacity grows fourfold at a time,
    /// never past the frame's length, so a frame's memory follows the bytes that came.
    fn room(&mut self) -> &mut [u8] {
        debug_assert!(self.filled < self.len, "a whole body needs no room");
        if self.filled == self.bytes.capacity() {
            let target = (4 * self.filled).max(BODY_ROOM_FIRST_BYTES).min(self.len);
            self.bytes.reserve_exact(target - self.filled);
        }
        let room =
            (self.bytes.capacity() - self.filled).min(self.len - self.filled).min(self.read_bytes);
        self.bytes.resize(self.filled + room, 0);
        &mut self.bytes[self.filled..]
    }

    /// The last read into the room took `read` bytes; the next room doubles if this one was
    /// filled whole (the bytes come fast).
    fn took(&mut self, read: usize) -> Result<(), ConnectionError> {
        if read == 0 {
            return Err(ConnectionError::Truncated);
        }
        let offered = self.bytes.len() - self.filled;
        self.filled += read;
        self.bytes.truncate(self.filled);
        // (A room cut short by the capacity or the frame's end says nothing of the rate.)
        if read == offered && offered == self.read_bytes {
            self.read_bytes = (2 * self.read_bytes).min(BODY_READ_BYTES_MAX);
        }
        Ok(())
    }

    fn into_bytes(self) -> Bytes {
        debug_assert!(self.is_whole(), "only a whole body decodes");
        Bytes::from(self.bytes)
    }
}

/// Reads one frame's body (everything after the prefix); the body is checked by [`decode`].
/// Reads nothing past the frame (for a handshake, before the stream goes to a
/// [`FrameReader`]).
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
    let mut body = PartialBody::new(len, &[]);
    while !body.is_whole() {
        let read = reader.read(body.room()).await.map_err(mid_frame)?;
        body.took(read)?;
    }
    Ok(decode(&body.into_bytes())?)
}

/// Blocking form of [`read_frame_async`].
///
/// # Errors
/// As [`read_frame_async`].
pub fn read_frame<R: Read>(reader: &mut R, max: usize) -> Result<Frame, ConnectionError> {
    let mut prefix = [0u8; PREFIX_BYTES];
    reader.read_exact(&mut prefix).map_err(|error| eof_between_frames(error, 0))?;
    let len = frame_length(prefix, max)?;
    let mut body = PartialBody::new(len, &[]);
    while !body.is_whole() {
        match reader.read(body.room()) {
            Ok(read) => body.took(read)?,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(mid_frame(error)),
        }
    }
    Ok(decode(&body.into_bytes())?)
}

/// What a [`FrameReader`] tells its owner as it reads (the node's timeouts follow frames), and
/// asks it.
pub trait ReadProgress {
    /// The first byte of a frame arrived.
    fn frame_started(&self) {}
    /// The frame is whole.
    fn frame_finished(&self) {}
    /// The stream has nothing more for now and the reader's buffer has grown: true to give
    /// it back now. False keeps it (a busy stream pausing would only grow it again), and the
    /// owner wakes `waker` later, once the stream has been quiet a while, to be asked again.
    fn may_shrink(&self, waker: &Waker) -> bool {
        let _ = waker;
        true
    }
}

/// Nothing to tell.
impl ReadProgress for () {}

/// Reads frames from a stream through a buffer that is small while the stream idles: it
/// starts at [`READ_BUFFER_MIN_BYTES`], doubles up to [`READ_BUFFER_MAX_BYTES`] while reads
/// fill it or a frame needs it, and goes back to the minimum when the stream has nothing more
/// for now with nothing buffered (once [`ReadProgress::may_shrink`] agrees). A frame larger
/// than that is read into its own body, which grows as its bytes arrive.
pub struct FrameReader<R> {
    reader: R,
    buffer: Vec<u8>,
    /// The bytes read and not yet taken: `buffer[start..end]`.
    start: usize,
    end: usize,
    /// The last read filled all the room it had: more is likely waiting.
    filled_up: bool,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// A reader with no buffer yet (one is allocated by the first read).
    pub fn new(reader: R) -> FrameReader<R> {
        FrameReader { reader, buffer: Vec::new(), start: 0, end: 0, filled_up: false }
    }

    /// The read buffer's size now.
    #[must_use]
    pub fn buffer_bytes(&self) -> usize {
        self.buffer.len()
    }

    fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// Reads more into the buffer: the bytes read, 0 at the end of the stream.
    async fn fill(&mut self, progress: &impl ReadProgress) -> io::Result<usize> {
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
        }
        let grow = std::mem::take(&mut self.filled_up) && self.buffer.len() < READ_BUFFER_MAX_BYTES;
        if grow || self.end == self.buffer.len() {
            if self.start > 0 {
                self.buffer.copy_within(self.start..self.end, 0);
                (self.start, self.end) = (0, self.end - self.start);
            }
            if grow || self.end == self.buffer.len() {
                let grown = (2 * self.buffer.len()).max(READ_BUFFER_MIN_BYTES);
                self.buffer.resize(grown.min(READ_BUFFER_MAX_BYTES).max(self.end + 1), 0);
            }
        }
        Fill { reader: self, progress }.await
    }

    /// Reads the next frame, telling `progress` when its first byte arrives and when it is
    /// whole.
    ///
    /// # Errors
    /// [`ConnectionError::Closed`] at a clean end between frames; any other error means the
    /// connection is unusable.
    pub async fn next_frame(
        &mut self,
        max: usize,
        progress: &impl ReadProgress,
    ) -> Result<Frame, ConnectionError> {
        if self.buffered() == 0 && self.fill(progress).await? == 0 {
            return Err(ConnectionError::Closed);
        }
        progress.frame_started();
        while self.buffered() < PREFIX_BYTES {
            if self.fill(progress).await.map_err(mid_frame)? == 0 {
                return Err(ConnectionError::Truncated);
            }
        }
        let mut prefix = [0u8; PREFIX_BYTES];
        prefix.copy_from_slice(&self.buffer[self.start..self.start + PREFIX_BYTES]);
        let len = frame_length(prefix, max)?;
        self.start += PREFIX_BYTES;
        let body = if len <= READ_BUFFER_MAX_BYTES {
            // Through the buffer, which grows to hold it as its bytes come: one read may
            // bring the frames after it too.
            while self.buffered() < len {
                if self.fill(progress).await.map_err(mid_frame)? == 0 {
                    return Err(ConnectionError::Truncated);
                }
            }
            let body = Bytes::copy_from_slice(&self.buffer[self.start..self.start + len]);
            self.start += len;
            body
        } else {
            let mut body = PartialBody::new(len, &self.buffer[self.start..self.end]);
            self.start = self.end;
            while !body.is_whole() {
                let read = self.reader.read(body.room()).await.map_err(mid_frame)?;
                body.took(read)?;
            }
            body.into_bytes()
        };
        progress.frame_finished();
        Ok(decode(&body)?)
    }
}

/// One read into a [`FrameReader`]'s buffer. While the stream has nothing for it, a buffer
/// that grew and holds nothing is given back for a small one: a connection that goes quiet
/// keeps [`READ_BUFFER_MIN_BYTES`].
struct Fill<'a, R, P> {
    reader: &'a mut FrameReader<R>,
    progress: &'a P,
}

impl<R: AsyncRead + Unpin, P: ReadProgress> Future for Fill<'_, R, P> {
    type Output = io::Result<usize>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let fill = self.get_mut();
        let (state, progress) = (&mut *fill.reader, fill.progress);
        let end = state.end;
        match Pin::new(&mut state.reader).poll_read(cx, &mut state.buffer[end..]) {
            Poll::Ready(Ok(read)) => {
                state.end += read;
                state.filled_up = state.end == state.buffer.len();
                Poll::Ready(Ok(read))
            }
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            Poll::Pending => {
                if state.start == state.end
                    && state.buffer.len() > READ_BUFFER_MIN_BYTES
                    && progress.may_shrink(cx.waker())
                {
                    // A later poll may read into another buffer than this one: the stream
                    // keeps none of ours while it waits.
                    state.buffer = vec![0; READ_BUFFER_MIN_BYTES];
                    (state.start, state.end) = (0, 0);
                }
                Poll::Pending
            }
        }
    }
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

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;
    use crate::core::{ClusterId, NodeId};
    use crate::transport::codec::{Body, Requests};

    /// A stream that hands out scripted chunks, then has nothing more for now (`Pending`)
    /// or ends.
    struct Script {
        chunks: VecDeque<Vec<u8>>,
        ends: bool,
    }

    impl AsyncRead for Script {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut [u8],
        ) -> Poll<io::Result<usize>> {
            let Some(mut chunk) = self.chunks.pop_front() else {
                return if self.ends { Poll::Ready(Ok(0)) } else { Poll::Pending };
            };
            let read = chunk.len().min(buf.len());
            buf[..read].copy_from_slice(&chunk[..read]);
            if read < chunk.len() {
                self.chunks.push_front(chunk.split_off(read));
            }
            Poll::Ready(Ok(read))
        }
    }

    fn status_request(shard: u16) -> Vec<u8> {
        let body = Body::StatusRequest { digest: shard % 2 == 0 };
        let frame = Frame { cluster_id: ClusterId(3), from: NodeId(0), shard, body };
        Encoder::default().encode_to_vec(&frame)
    }

    /// The next frame, or `None` if the stream has nothing more for now.
    fn next(reader: &mut FrameReader<Script>) -> Option<Result<Frame, ConnectionError>> {
        futures_lite::future::block_on(futures_lite::future::poll_once(
            reader.next_frame(1 << 20, &()),
        ))
    }

    #[test]
    fn frames_come_out_whole_however_the_stream_cuts_them() {
        let frames: Vec<Vec<u8>> = (0..50).map(status_request).collect();
        let stream: Vec<u8> = frames.concat();
        for cut in [1, 3, 7, 100, 4096, stream.len()] {
            let chunks = stream.chunks(cut).map(<[u8]>::to_vec).collect();
            let mut reader = FrameReader::new(Script { chunks, ends: true });
            for shard in 0..50 {
                let frame = next(&mut reader).unwrap().unwrap();
                assert_eq!(frame.shard, shard, "cut every {cut} bytes");
            }
            assert!(matches!(next(&mut reader), Some(Err(ConnectionError::Closed))));
        }
        let mut cut_short = stream[..stream.len() - 2].to_vec();
        cut_short.truncate(frames[0].len() + 3);
        let script = Script { chunks: VecDeque::from([cut_short]), ends: true };
        let mut reader = FrameReader::new(script);
        assert!(next(&mut reader).unwrap().is_ok());
        assert!(matches!(next(&mut reader), Some(Err(ConnectionError::Truncated))));
    }

    #[test]
    fn the_read_buffer_grows_while_reads_fill_it_and_shrinks_when_the_stream_waits() {
        // Twice the largest buffer of small frames at once, then nothing for now.
        let one = status_request(0).len();
        let frames = 2 * READ_BUFFER_MAX_BYTES / one + 1;
        let burst: Vec<u8> =
            (0..frames).flat_map(|shard| status_request(shard as u16 % 7)).collect();
        let mut reader = FrameReader::new(Script { chunks: VecDeque::from([burst]), ends: false });
        let mut largest = 0;
        for _ in 0..frames {
            assert!(next(&mut reader).unwrap().is_ok());
            largest = largest.max(reader.buffer_bytes());
        }
        assert_eq!(largest, READ_BUFFER_MAX_BYTES, "grown while reads filled it");
        // Its owner says the stream was busy a moment ago: the buffer stays, and it is to be
        // woken to ask again.
        let keeps = Keeps(std::cell::Cell::new(false));
        let pending = futures_lite::future::block_on(futures_lite::future::poll_once(
            reader.next_frame(1 << 20, &keeps),
        ));
        assert!(pending.is_none(), "nothing more for now");
        assert_eq!(reader.buffer_bytes(), READ_BUFFER_MAX_BYTES);
        assert!(keeps.0.get(), "asked to be woken");
        // Quiet a while: given back.
        assert!(next(&mut reader).is_none(), "nothing more for now");
        assert_eq!(reader.buffer_bytes(), READ_BUFFER_MIN_BYTES, "an idle connection keeps little");
    }

    /// An owner whose stream was busy a moment ago.
    struct Keeps(std::cell::Cell<bool>);

    impl ReadProgress for Keeps {
        fn may_shrink(&self, _waker: &Waker) -> bool {
            self.0.set(true);
            false
        }
    }

    #[test]
    fn a_frame_larger_than_the_buffer_grows_it_and_the_frames_after_come_in_the_same_read() {
        let big = Frame {
            cluster_id: ClusterId(3),
            from: NodeId(0),
            shard: 1,
            body: Body::Requests(Requests::linearizable(Bytes::from(vec![7u8; 20 << 10]))),
        };
        let mut stream = Encoder::default().encode_to_vec(&big);
        stream.extend((0..10).flat_map(status_request));
        let reads = std::rc::Rc::new(std::cell::Cell::new(0));
        let counted = Counted {
            script: Script { chunks: VecDeque::from([stream]), ends: true },
            reads: reads.clone(),
        };
        let mut reader = FrameReader::new(counted);
        let frame = futures_lite::future::block_on(reader.next_frame(1 << 20, &())).unwrap();
        assert_eq!(frame, big);
        for shard in 0..10 {
            let frame = futures_lite::future::block_on(reader.next_frame(1 << 20, &())).unwrap();
            assert_eq!(frame.shard, shard);
        }
        // 4, 8, 16 then 32 KiB of buffer: four reads for 21 KiB of frames (the frame was
        // larger than the buffer at first; it grew to hold it).
        assert!(reads.get() <= 4, "{} reads", reads.get());
    }

    /// A stream that counts its reads.
    struct Counted {
        script: Script,
        reads: std::rc::Rc<std::cell::Cell<usize>>,
    }

    impl AsyncRead for Counted {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut [u8],
        ) -> Poll<io::Result<usize>> {
            self.reads.set(self.reads.get() + 1);
            Pin::new(&mut self.script).poll_read(cx, buf)
        }
    }

    #[test]
    fn a_body_grows_with_its_bytes_not_with_the_length_announced() {
        let len = 60 << 20;
        let mut body = PartialBody::new(len, &[1; 100]);
        assert!(body.bytes.capacity() <= BODY_ROOM_FIRST_BYTES);
        // A sender trickling 1000 bytes at a time: the room stays at its first size.
        for _ in 0..200 {
            let room = body.room().len();
            assert!(room <= BODY_READ_BYTES_MIN, "{room} bytes of room for a trickle");
            body.took(1000.min(room)).unwrap();
            let capacity = body.bytes.capacity();
            assert!(capacity <= (4 * body.filled).max(BODY_ROOM_FIRST_BYTES), "{capacity}");
        }
        // A sender filling every room: it doubles, up to its maximum.
        let mut rooms = Vec::new();
        while !body.is_whole() {
            let room = body.room().len();
            rooms.push(room);
            body.took(room).unwrap();
        }
        assert_eq!(rooms.iter().max(), Some(&BODY_READ_BYTES_MAX));
        assert_eq!(body.into_bytes().len(), len);
        assert!(matches!(PartialBody::new(8, &[]).took(0), Err(ConnectionError::Truncated)));
    }
}
