//! Frames read off a byte stream: the node's buffered async reader (`FrameReader`) and the
//! client's blocking `read_frame`, over any bytes, arriving in any pieces, with the stream
//! now and then having nothing for the moment. Neither panics, both stop at an error, and
//! both read the same frames.

#![no_main]

use std::io::{self, Read};
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_lite::AsyncRead;
use libfuzzer_sys::fuzz_target;
use quorum::transport::codec::Frame;
use quorum::transport::framing::{FrameReader, read_frame};

/// Frames read before the stream or a frame ends it; enough to cover the input.
const FRAMES_MAX: usize = 1 << 12;

/// A stream handing out `data` in pieces whose sizes cycle through `sizes`, and every
/// `pending_every`-th read having nothing for now (it wakes its reader at once).
struct Pieces<'a> {
    data: &'a [u8],
    sizes: &'a [u8],
    reads: usize,
    pending_every: usize,
}

impl Pieces<'_> {
    fn next_piece(&mut self, room: usize) -> usize {
        let size = self.sizes.get(self.reads % self.sizes.len().max(1)).copied().unwrap_or(0);
        self.reads += 1;
        // A size of 0 means "all it has room for": large frames then arrive in few reads.
        let size = if size == 0 { usize::MAX } else { usize::from(size) };
        size.min(room).min(self.data.len())
    }
}

impl AsyncRead for Pieces<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // Never twice in a row: a stream that is always pending would never end.
        if this.pending_every >= 2 && this.reads % this.pending_every == this.pending_every - 1 {
            this.reads += 1;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        Poll::Ready(this.read(buf))
    }
}

impl Read for Pieces<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.next_piece(buf.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

fuzz_target!(|input: &[u8]| {
    // The first bytes set the frame limit, how often the stream pauses and the piece sizes.
    let Some((&[limit, pending_every, sizes_len], rest)) = input.split_first_chunk::<3>() else {
        return;
    };
    let (sizes, data) = rest.split_at(usize::from(sizes_len % 16).min(rest.len()));
    // Limits from 4 bytes to 1 MiB, around the frames a few KiB of input can hold.
    let max = 4usize << (limit % 19);
    let pieces = || Pieces { data, sizes, reads: 0, pending_every: usize::from(pending_every % 9) };

    let mut blocking: Vec<Frame> = Vec::new();
    let mut stream = pieces();
    stream.pending_every = 0;
    while blocking.len() < FRAMES_MAX {
        match read_frame(&mut stream, max) {
            Ok(frame) => blocking.push(frame),
            Err(_) => break,
        }
    }

    let mut buffered: Vec<Frame> = Vec::new();
    let mut reader = FrameReader::new(pieces());
    futures_lite::future::block_on(async {
        while buffered.len() < FRAMES_MAX {
            match reader.next_frame(max, &()).await {
                Ok(frame) => buffered.push(frame),
                Err(_) => break,
            }
        }
    });
    assert_eq!(buffered, blocking, "both readers read the same frames");
});
