//! Batches: the value of one slot. A batch is encoded once by the leader and the same bytes go
//! to the WAL, onto the wire and to learners (ARCHITECTURE.md, "Frames carry batches"); here they are shared by reference
//! count, never copied.
//!
//! Encoding, little-endian, repeated for each command:
//!
//! ```text
//! client u64 | sequence u64 | payload_len u32 | payload [payload_len]
//! ```

use bytes::Bytes;

use super::types::RequestId;

/// Bytes of a command's header in a batch.
pub const COMMAND_HEADER_BYTES: usize = 8 + 8 + 4;

/// The value a slot holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    /// Fills a hole or skips a slot; applies as nothing.
    Noop,
    /// Client commands, encoded as this module describes.
    Batch(Bytes),
}

impl Value {
    /// True if both are no-ops or the very same buffer (the same bytes at the same address):
    /// then they are equal without comparing a byte. False says nothing.
    #[must_use]
    pub fn same_buffer(&self, other: &Value) -> bool {
        match (self, other) {
            (Value::Noop, Value::Noop) => true,
            (Value::Batch(a), Value::Batch(b)) => a.as_ptr() == b.as_ptr() && a.len() == b.len(),
            _ => false,
        }
    }

    /// Bytes of the encoded batch; zero for a no-op.
    #[must_use]
    pub fn len_bytes(&self) -> usize {
        match self {
            Value::Noop => 0,
            Value::Batch(bytes) => bytes.len(),
        }
    }

    /// True for a no-op.
    #[must_use]
    pub fn is_noop(&self) -> bool {
        matches!(self, Value::Noop)
    }

    /// True for a batch.
    #[must_use]
    pub fn is_batch(&self) -> bool {
        matches!(self, Value::Batch(_))
    }
}

/// Gathers proposals into one batch. Closing a batch hands its bytes over and starts a fresh
/// buffer sized from the batch just closed: one allocation per batch, none per command at a
/// steady load.
#[derive(Debug)]
pub struct BatchBuilder {
    buffer: Vec<u8>,
    commands: usize,
    bytes_max: usize,
}

impl BatchBuilder {
    /// A builder for batches of at most `bytes_max` bytes.
    #[must_use]
    pub fn new(bytes_max: usize) -> BatchBuilder {
        BatchBuilder {
            buffer: Vec::with_capacity(Self::capacity_for(0, bytes_max)),
            commands: 0,
            bytes_max,
        }
    }

    /// A buffer a little larger than the last batch, so that a steady load never regrows it.
    fn capacity_for(last_len: usize, bytes_max: usize) -> usize {
        (last_len + last_len / 4 + 256).min(bytes_max)
    }

    /// Commands gathered so far.
    #[must_use]
    pub fn commands(&self) -> usize {
        self.commands
    }

    /// Bytes gathered so far.
    #[must_use]
    pub fn len_bytes(&self) -> usize {
        self.buffer.len()
    }

    /// True if nothing was gathered.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.commands == 0
    }

    /// True if a command with `payload_bytes` of payload fits.
    #[must_use]
    pub fn fits(&self, payload_bytes: usize) -> bool {
        self.buffer.len() + COMMAND_HEADER_BYTES + payload_bytes <= self.bytes_max
    }

    /// Appends one command. The caller checks [`fits`](Self::fits) first.
    pub fn push(&mut self, id: RequestId, payload: &[u8]) {
        assert!(
            self.fits(payload.len()),
            "batch overflow: {} + {}",
            self.buffer.len(),
            payload.len()
        );
        let payload_len = u32::try_from(payload.len()).expect("payload length fits u32");
        self.buffer.extend_from_slice(&id.client.to_le_bytes());
        self.buffer.extend_from_slice(&id.sequence.to_le_bytes());
        self.buffer.extend_from_slice(&payload_len.to_le_bytes());
        self.buffer.extend_from_slice(payload);
        self.commands += 1;
    }

    /// Closes the batch and returns its bytes; the builder is empty afterwards.
    pub fn take(&mut self) -> Bytes {
        let fresh = Vec::with_capacity(Self::capacity_for(self.buffer.len(), self.bytes_max));
        self.commands = 0;
        Bytes::from(std::mem::replace(&mut self.buffer, fresh))
    }
}

/// A batch that does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed batch at byte {offset}: {reason}")]
pub struct MalformedBatch {
    /// Where decoding stopped.
    pub offset: usize,
    /// What was wrong there.
    pub reason: &'static str,
}

/// Checks that `bytes` parse as a batch: every command's header is whole and its payload ends
/// within the batch. A scan of the lengths, no copy: what a follower runs on a batch from a
/// peer before persisting it, so that one that would fail apply (on every replay, for ever)
/// never reaches the log. Request ids are not checked: any pair of numbers is one.
///
/// # Errors
/// Where the first command that does not parse starts, and why.
pub fn check_batch(bytes: &[u8]) -> Result<(), MalformedBatch> {
    // Slices rather than offsets: the bounds checks fold into the two `get`s, which halves
    // the time per command (each step waits for the length it just read).
    let mut rest = bytes;
    while !rest.is_empty() {
        let offset = || bytes.len() - rest.len();
        let Some((header, body)) = rest.split_first_chunk::<COMMAND_HEADER_BYTES>() else {
            return Err(MalformedBatch { offset: offset(), reason: "truncated command header" });
        };
        let payload_len = u32::from_le_bytes([header[16], header[17], header[18], header[19]]);
        let Some(after) = body.get(payload_len as usize..) else {
            return Err(MalformedBatch { offset: offset(), reason: "payload runs past the end" });
        };
        rest = after;
    }
    Ok(())
}

/// Iterates over the commands of an encoded batch, borrowing payloads from it. Batches that come
/// from peers or disks are input: a malformed one yields an error, never a panic.
#[derive(Debug, Clone)]
pub struct BatchReader<'a> {
    bytes: &'a [u8],
    offset: usize,
}

impl<'a> BatchReader<'a> {
    /// A reader over `bytes`.
    #[must_use]
    pub fn new(bytes: &'a [u8]) -> BatchReader<'a> {
        BatchReader { bytes, offset: 0 }
    }
}

impl<'a> Iterator for BatchReader<'a> {
    type Item = Result<(RequestId, &'a [u8]), MalformedBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        let rest = &self.bytes[self.offset..];
        if rest.is_empty() {
            return None;
        }
        let Some((header, body)) = rest.split_first_chunk::<COMMAND_HEADER_BYTES>() else {
            let error = MalformedBatch { offset: self.offset, reason: "truncated command header" };
            self.offset = self.bytes.len();
            return Some(Err(error));
        };
        let field =
            |at: usize| u64::from_le_bytes(header[at..at + 8].try_into().unwrap_or_default());
        let id = RequestId { client: field(0), sequence: field(8) };
        let payload_len = u32::from_le_bytes([header[16], header[17], header[18], header[19]]);
        let payload_len = payload_len as usize;
        if body.len() < payload_len {
            let error = MalformedBatch { offset: self.offset, reason: "payload runs past the end" };
            self.offset = self.bytes.len();
            return Some(Err(error));
        }
        self.offset += COMMAND_HEADER_BYTES + payload_len;
        Some(Ok((id, &body[..payload_len])))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_round_trips_commands_in_order() {
        let mut builder = BatchBuilder::new(1024);
        builder.push(RequestId { client: 1, sequence: 2 }, b"hello");
        builder.push(RequestId { client: 3, sequence: 4 }, b"");
        let bytes = builder.take();
        assert!(builder.is_empty());
        let commands: Vec<_> = BatchReader::new(&bytes).collect::<Result<_, _>>().unwrap();
        assert_eq!(commands.len(), 2);
        assert_eq!(commands[0], (RequestId { client: 1, sequence: 2 }, &b"hello"[..]));
        assert_eq!(commands[1], (RequestId { client: 3, sequence: 4 }, &b""[..]));
    }

    #[test]
    fn truncated_batch_is_an_error_not_a_panic() {
        let mut builder = BatchBuilder::new(1024);
        builder.push(RequestId { client: 1, sequence: 2 }, b"hello");
        let bytes = builder.take();
        for cut in 1..bytes.len() {
            let result: Result<Vec<_>, _> = BatchReader::new(&bytes[..cut]).collect();
            assert!(result.is_err(), "cut at {cut} decoded");
            assert_eq!(check_batch(&bytes[..cut]).err(), result.err(), "cut at {cut}");
        }
        assert_eq!(check_batch(&bytes), Ok(()));
        assert_eq!(check_batch(&[]), Ok(()), "no commands");
    }

    #[test]
    fn a_payload_length_past_the_end_is_refused_whatever_its_size() {
        for payload_len in [6u32, 1 << 31, u32::MAX] {
            let mut bytes = vec![0u8; COMMAND_HEADER_BYTES + 5];
            bytes[16..20].copy_from_slice(&payload_len.to_le_bytes());
            let error = check_batch(&bytes).unwrap_err();
            assert_eq!(error, MalformedBatch { offset: 0, reason: "payload runs past the end" });
        }
    }
}
