//! A shard's snapshot: its applied state at a slot (the state machine and the session table),
//! so that the WAL before that slot can go (docs/snapshots.md).
//!
//! ```text
//! 0 magic u64 "QRMSNAP\x01" │ 8 version u32 │ 12 shard u16 │ 14 zero u16 │ 16 cluster_id u64
//! 24 slot u64 │ 32 body_len u64 │ 40 crc32c u32 (bytes 0..40, then the body) │ 44 zero u32
//! 48 body: the applier's image (`Applier::snapshot`)
//! ```
//!
//! Every slot below `slot` is applied in the image, none at or above it. Little-endian.
//!
//! A snapshot is never held in memory whole (docs/snapshots.md, "Streams"): it is written in
//! one pass ([`write_snapshot`]: the header with its length and checksum zero, then the body
//! as the state machine streams it, counted and checksummed on the way, then the header
//! completed in place), read in one pass ([`read_snapshot`]: the header checked first, the
//! body streamed into the restore, its length and checksum checked at the end, whatever the
//! restore made of it), and received in pieces appended to a file ([`Assembly`], which keeps
//! only where it stands and the checksum so far). The fields of an image are read from a
//! stream by [`ImageReader`], which never allocates more than it has read.

use std::io::{Read, Write};

use bytes::Bytes;

use crate::core::{ClusterId, Slot};

const MAGIC: u64 = u64::from_le_bytes(*b"QRMSNAP\x01");
/// 2: the applier image carries the session eviction state (seen commands, each session's last
/// use and dropped mark, the evicted ids). 3: each session's register-session nonce.
const VERSION: u32 = 3;
/// Bytes before the body.
pub const HEADER_BYTES: usize = 48;
/// The bytes the checksum covers before the body: the header up to the checksum.
const HEADER_CHECKED_BYTES: usize = 40;
/// Writes and reads of an image are gathered in buffers of this size.
const STREAM_BUFFER_BYTES: usize = 256 << 10;
/// A length-prefixed field is read in steps of at most this many bytes, so that a damaged
/// length never allocates more than the stream holds.
const FIELD_STEP_BYTES: usize = 64 << 10;

/// The snapshot's file name, next to the WAL's segments.
pub const FILE_NAME: &str = "snapshot";

/// Why a snapshot was refused. Nothing is changed by a refused snapshot.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    /// Shorter than its header or than the body its header announces (or longer).
    #[error("snapshot truncated: {0}")]
    Truncated(&'static str),
    /// Not a snapshot, or a format this build does not read.
    #[error("not a Quorum snapshot of a known version: {0}")]
    Format(&'static str),
    /// The checksum does not match: damaged on disk or on the wire.
    #[error("snapshot checksum mismatch (damaged)")]
    Checksum,
    /// A snapshot of another cluster or shard.
    #[error(
        "snapshot of cluster {cluster} shard {shard}, expected cluster {expected_cluster} shard {expected_shard}"
    )]
    Elsewhere {
        /// The snapshot's cluster.
        cluster: u64,
        /// The snapshot's shard.
        shard: u16,
        /// This replica's cluster.
        expected_cluster: u64,
        /// This replica's shard.
        expected_shard: u16,
    },
    /// The body does not decode as the state machine's image.
    #[error("snapshot image malformed: {0}")]
    Image(&'static str),
    /// Reading the snapshot's stream failed (the OS's error, as text).
    #[error("snapshot unreadable: {0}")]
    Unreadable(String),
}

impl SnapshotError {
    /// A failed read of an image's stream: cut short (a truncated stream) or the OS's error.
    #[must_use]
    pub fn reading(error: &std::io::Error) -> SnapshotError {
        if error.kind() == std::io::ErrorKind::UnexpectedEof {
            SnapshotError::Truncated("the image ends inside a field")
        } else {
            SnapshotError::Unreadable(error.to_string())
        }
    }
}

/// Who a snapshot belongs to and where it stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotHeader {
    /// The cluster.
    pub cluster_id: ClusterId,
    /// The shard.
    pub shard: u16,
    /// Every slot below is applied in the image.
    pub slot: Slot,
}

/// A header as read: who and where, the body's length and the checksum it names.
#[derive(Clone, Copy, Debug)]
struct HeadFields {
    header: SnapshotHeader,
    body_bytes: u64,
    crc: u32,
}

/// The header of a snapshot of `body_bytes` bytes of body whose crc32c is `body_crc`.
fn encode_header(header: SnapshotHeader, body_bytes: u64, body_crc: u32) -> [u8; HEADER_BYTES] {
    let mut head = [0u8; HEADER_BYTES];
    head[..8].copy_from_slice(&MAGIC.to_le_bytes());
    head[8..12].copy_from_slice(&VERSION.to_le_bytes());
    head[12..14].copy_from_slice(&header.shard.to_le_bytes());
    head[16..24].copy_from_slice(&header.cluster_id.0.to_le_bytes());
    head[24..32].copy_from_slice(&header.slot.0.to_le_bytes());
    head[32..40].copy_from_slice(&body_bytes.to_le_bytes());
    let body_len = usize::try_from(body_bytes).expect("a body written here fits the address space");
    let crc =
        crc32c::crc32c_combine(crc32c::crc32c(&head[..HEADER_CHECKED_BYTES]), body_crc, body_len);
    head[40..44].copy_from_slice(&crc.to_le_bytes());
    head
}

/// Checks the magic and version of a snapshot's header (`head` holds at least the header).
fn check_format(head: &[u8]) -> Result<(), SnapshotError> {
    if head[..8] != MAGIC.to_le_bytes() {
        return Err(SnapshotError::Format("bad magic"));
    }
    if head[8..12] != VERSION.to_le_bytes() {
        return Err(SnapshotError::Format("unsupported version"));
    }
    Ok(())
}

/// Reads a header and checks what can be checked without the body: format, reserved bytes,
/// the slot's range, and that it is `owner`'s (cluster, shard).
fn decode_header(
    head: &[u8; HEADER_BYTES],
    owner: (ClusterId, u16),
) -> Result<HeadFields, SnapshotError> {
    let u64_at = |at: usize| u64::from_le_bytes(head[at..at + 8].try_into().expect("8"));
    check_format(head)?;
    if head[14..16] != [0; 2] || head[44..HEADER_BYTES] != [0; 4] {
        return Err(SnapshotError::Format("reserved bytes set"));
    }
    let header = SnapshotHeader {
        cluster_id: ClusterId(u64_at(16)),
        shard: u16::from_le_bytes([head[12], head[13]]),
        slot: Slot(u64_at(24)),
    };
    if header.slot > crate::core::SLOT_MAX {
        // A replica goes on from this slot: it must be one a message may name too.
        return Err(SnapshotError::Format("a slot beyond the last one a log may reach"));
    }
    if header.cluster_id != owner.0 || header.shard != owner.1 {
        return Err(SnapshotError::Elsewhere {
            cluster: header.cluster_id.0,
            shard: header.shard,
            expected_cluster: owner.0.0,
            expected_shard: owner.1,
        });
    }
    let crc = u32::from_le_bytes(head[40..44].try_into().expect("4"));
    Ok(HeadFields { header, body_bytes: u64_at(32), crc })
}

/// The slot a snapshot's first bytes name, if they start a snapshot of a known version (the
/// rest is checked when the whole is read: [`read_snapshot`]).
#[must_use]
pub fn slot_in_header(head: &[u8]) -> Option<Slot> {
    let head = head.get(..HEADER_BYTES)?;
    check_format(head).ok()?;
    Some(Slot(u64::from_le_bytes(head[24..32].try_into().expect("8"))))
}

/// Gathers an image's small writes into large ones, counting and checksumming the bytes.
struct ChecksummedWriter<'a> {
    out: &'a mut dyn Write,
    buffer: Vec<u8>,
    crc: u32,
    bytes: u64,
}

impl ChecksummedWriter<'_> {
    fn drain(&mut self) -> std::io::Result<()> {
        self.crc = crc32c::crc32c_append(self.crc, &self.buffer);
        self.out.write_all(&self.buffer)?;
        self.buffer.clear();
        Ok(())
    }
}

impl Write for ChecksummedWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        if self.buffer.len() + bytes.len() > STREAM_BUFFER_BYTES {
            self.drain()?;
        }
        if bytes.len() >= STREAM_BUFFER_BYTES {
            self.crc = crc32c::crc32c_append(self.crc, bytes);
            self.out.write_all(bytes)?;
        } else {
            self.buffer.extend_from_slice(bytes);
        }
        self.bytes += bytes.len() as u64;
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.drain()?;
        self.out.flush()
    }
}

/// Writes a snapshot in one pass to `out`: the header with its length and checksum zero, then
/// the body `write_body` streams (gathered in large writes, counted and checksummed on the
/// way). Returns the completed header, to be written over the first [`HEADER_BYTES`] (with a
/// positioned write: `out` may be a file of many GiB), and the snapshot's length.
///
/// # Errors
/// `out`'s or `write_body`'s error; what was written is then no snapshot.
pub fn write_snapshot(
    header: SnapshotHeader,
    out: &mut dyn Write,
    write_body: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> std::io::Result<([u8; HEADER_BYTES], u64)> {
    out.write_all(&[0; HEADER_BYTES])?;
    let mut body = ChecksummedWriter {
        out,
        buffer: Vec::with_capacity(STREAM_BUFFER_BYTES),
        crc: 0,
        bytes: 0,
    };
    write_body(&mut body)?;
    body.flush()?;
    let head = encode_header(header, body.bytes, body.crc);
    Ok((head, HEADER_BYTES as u64 + body.bytes))
}

/// A snapshot's body as a stream: at most its announced length, checksummed as it is read.
struct BodyReader<'a> {
    input: &'a mut dyn Read,
    left: u64,
    crc: u32,
}

impl Read for BodyReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let want = usize::try_from(self.left).unwrap_or(usize::MAX).min(out.len());
        if want == 0 {
            return Ok(0);
        }
        let read = self.input.read(&mut out[..want])?;
        self.crc = crc32c::crc32c_append(self.crc, &out[..read]);
        self.left -= read as u64;
        Ok(read)
    }
}

/// Reads a snapshot in one pass from `input`: checks its header (format, and that it is
/// `owner`'s: cluster and shard), hands `restore` its body as a buffered stream, reads what
/// `restore` left, and checks the length and the checksum. A damaged, cut or overlong
/// snapshot is refused whatever `restore` made of it (which is then dropped), so nothing
/// built from a bad stream survives. Returns the header, the snapshot's length and what
/// `restore` made.
///
/// # Errors
/// What is wrong with it, or `restore`'s error.
pub fn read_snapshot<T>(
    input: &mut dyn Read,
    owner: (ClusterId, u16),
    restore: impl FnOnce(&mut dyn Read) -> Result<T, SnapshotError>,
) -> Result<(SnapshotHeader, u64, T), SnapshotError> {
    let mut head = [0u8; HEADER_BYTES];
    input.read_exact(&mut head).map_err(|error| match SnapshotError::reading(&error) {
        SnapshotError::Truncated(_) => SnapshotError::Truncated("shorter than the header"),
        other => other,
    })?;
    let fields = decode_header(&head, owner)?;
    let crc = crc32c::crc32c(&head[..HEADER_CHECKED_BYTES]);
    let mut body = BodyReader { input, left: fields.body_bytes, crc };
    let mut buffered = std::io::BufReader::with_capacity(STREAM_BUFFER_BYTES, &mut body);
    let restored = restore(&mut buffered);
    // What the restore left is read too: the checksum covers every byte.
    std::io::copy(&mut buffered, &mut std::io::sink())
        .map_err(|error| SnapshotError::reading(&error))?;
    drop(buffered);
    if body.left > 0 {
        return Err(SnapshotError::Truncated("the body is shorter than its header says"));
    }
    let mut after = [0u8; 1];
    if body.input.read(&mut after).map_err(|error| SnapshotError::reading(&error))? > 0 {
        return Err(SnapshotError::Truncated("body length differs from the header's"));
    }
    if body.crc != fields.crc {
        return Err(SnapshotError::Checksum);
    }
    Ok((fields.header, HEADER_BYTES as u64 + fields.body_bytes, restored?))
}

/// A snapshot copied under another cluster id ([`copy_snapshot_for`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Copied {
    /// The copy's completed header, to be written over its first [`HEADER_BYTES`].
    pub head: [u8; HEADER_BYTES],
    /// The copy's header (the original's, with the new cluster id).
    pub header: SnapshotHeader,
    /// Its length, the original's.
    pub bytes: u64,
}

/// Copies the snapshot at the start of `input` (`owner`'s: cluster and shard), in one pass,
/// to `out` as the same snapshot of cluster `to`: `out` gets a zeroed header then the body,
/// and the completed header is returned, to be written over the first [`HEADER_BYTES`] (the
/// checksum covers the cluster id, so it cannot be known before the body has gone by). The
/// original is checked on the way, as [`read_snapshot`] would: a damaged or cut one is
/// refused (and what was written is no snapshot). `input` is read to the snapshot's end and
/// no further, so snapshots may follow each other in one stream.
///
/// # Errors
/// The outer error is `out`'s; the inner one what is wrong with the snapshot read.
pub fn copy_snapshot_for(
    input: &mut dyn Read,
    owner: (ClusterId, u16),
    to: ClusterId,
    out: &mut dyn Write,
) -> std::io::Result<Result<Copied, SnapshotError>> {
    let mut head = [0u8; HEADER_BYTES];
    if let Err(error) = input.read_exact(&mut head) {
        return Ok(Err(match SnapshotError::reading(&error) {
            SnapshotError::Truncated(_) => SnapshotError::Truncated("shorter than the header"),
            other => other,
        }));
    }
    let fields = match decode_header(&head, owner) {
        Ok(fields) => fields,
        Err(error) => return Ok(Err(error)),
    };
    out.write_all(&[0; HEADER_BYTES])?;
    let mut original = crc32c::crc32c(&head[..HEADER_CHECKED_BYTES]);
    let mut body_crc = 0;
    let mut left = fields.body_bytes;
    let mut buffer = vec![0u8; STREAM_BUFFER_BYTES];
    while left > 0 {
        let want = usize::try_from(left).unwrap_or(usize::MAX).min(buffer.len());
        let read = match input.read(&mut buffer[..want]) {
            Ok(0) => {
                return Ok(Err(SnapshotError::Truncated(
                    "the body is shorter than its header says",
                )));
            }
            Ok(read) => read,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(error) => return Ok(Err(SnapshotError::reading(&error))),
        };
        original = crc32c::crc32c_append(original, &buffer[..read]);
        body_crc = crc32c::crc32c_append(body_crc, &buffer[..read]);
        out.write_all(&buffer[..read])?;
        left -= read as u64;
    }
    if original != fields.crc {
        return Ok(Err(SnapshotError::Checksum));
    }
    let header = SnapshotHeader { cluster_id: to, ..fields.header };
    let head = encode_header(header, fields.body_bytes, body_crc);
    Ok(Ok(Copied { head, header, bytes: HEADER_BYTES as u64 + fields.body_bytes }))
}

/// A snapshot's bytes, checked, with its header: the whole in memory, for tests, fuzzing and
/// small tools (a shard never holds one: [`write_snapshot`], [`read_snapshot`]).
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// Who and where.
    pub header: SnapshotHeader,
    /// The whole encoding (header and body), as written to disk and sent to peers.
    pub bytes: Bytes,
}

impl Snapshot {
    /// The encoding of `body` (an applier's image) under `header`.
    #[must_use]
    pub fn encode(header: SnapshotHeader, body: &[u8]) -> Snapshot {
        Snapshot::encode_with(header, |out| out.write_all(body))
    }

    /// The encoding of the image `write_body` streams, under `header` ([`write_snapshot`]
    /// into memory).
    ///
    /// # Panics
    /// `write_body` failed.
    #[must_use]
    pub fn encode_with(
        header: SnapshotHeader,
        write_body: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
    ) -> Snapshot {
        let mut out = Vec::new();
        let (head, _) = write_snapshot(header, &mut out, write_body).expect("an image in memory");
        out[..HEADER_BYTES].copy_from_slice(&head);
        Snapshot { header, bytes: Bytes::from(out) }
    }

    /// Checks a snapshot's encoding: format, checksum, and that it is this shard's
    /// ([`read_snapshot`] over the bytes).
    ///
    /// # Errors
    /// What is wrong with it.
    pub fn decode(
        bytes: Bytes,
        cluster_id: ClusterId,
        shard: u16,
    ) -> Result<Snapshot, SnapshotError> {
        let (header, ..) = read_snapshot(&mut &bytes[..], (cluster_id, shard), |_| Ok(()))?;
        Ok(Snapshot { header, bytes })
    }

    /// The applier's image.
    #[must_use]
    pub fn body(&self) -> &[u8] {
        &self.bytes[HEADER_BYTES..]
    }
}

/// A snapshot arriving in pieces ([`crate::core::Message::Snapshot`]), in order: one at a time,
/// each next one pulled by the receiver, so a snapshot of any size crosses the network in
/// frames of bounded size and never floods a connection's queue. Each piece is appended to
/// `W` (a file) as it comes; the assembly keeps only the header, where it stands and the
/// checksum so far, so a snapshot of many GiB costs no more memory than one piece. The header
/// is checked as soon as it is whole (a foreign or lying one goes before its body is written),
/// the checksum once the last piece came.
#[derive(Debug)]
pub struct Assembly<W> {
    /// The cluster and shard a snapshot must be of.
    owner: (ClusterId, u16),
    /// The snapshot being put together.
    partial: Option<Partial<W>>,
    /// A piece was added since another snapshot's first piece was last turned down.
    progressed: bool,
}

/// A snapshot being put together.
#[derive(Debug)]
struct Partial<W> {
    slot: Slot,
    total: u64,
    received: u64,
    /// Its first bytes, up to the whole header.
    head: Vec<u8>,
    /// The header, once whole and checked.
    fields: Option<HeadFields>,
    /// The checksum of what the header's covers, so far.
    crc: u32,
    out: W,
}

/// A snapshot whose pieces all came, its header and checksum checked.
#[derive(Debug)]
pub struct Assembled<W> {
    /// Who and where.
    pub header: SnapshotHeader,
    /// Its length.
    pub bytes: u64,
    /// Where its bytes were written.
    pub out: W,
}

/// What a piece of a snapshot leads to.
#[derive(Debug)]
pub enum Piece<W> {
    /// The snapshot is whole, its checksum checked.
    Whole(Assembled<W>),
    /// Ask the sender for the bytes from this offset of the snapshot at this slot.
    Pull(Slot, u64),
    /// Nothing: a piece already held, out of order, of a snapshot not ahead, or too short to
    /// be one.
    Ignored,
    /// The snapshot is refused (damaged, cut, foreign or lying about its length): what was
    /// written of it is dropped.
    Refused(SnapshotError),
}

impl<W> Piece<W> {
    /// The next pull, if this piece leads to one.
    #[must_use]
    pub fn pull(&self) -> Option<(Slot, u64)> {
        match self {
            Piece::Pull(slot, offset) => Some((*slot, *offset)),
            _ => None,
        }
    }
}

impl<W: Write> Partial<W> {
    /// Appends `bytes` (the next ones): checks the header once whole (as `owner`'s, at the
    /// message's slot, announcing the message's total), and feeds the checksum. `Ok(Err)`:
    /// refused.
    fn append(
        &mut self,
        bytes: &[u8],
        owner: (ClusterId, u16),
    ) -> std::io::Result<Result<(), SnapshotError>> {
        self.out.write_all(bytes)?;
        self.received += bytes.len() as u64;
        let mut rest = bytes;
        if self.fields.is_none() {
            let take = (HEADER_BYTES - self.head.len()).min(rest.len());
            self.head.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            let Ok(head) = <&[u8; HEADER_BYTES]>::try_from(&self.head[..]) else {
                return Ok(Ok(())); // Not whole yet.
            };
            let fields = match decode_header(head, owner) {
                Ok(fields) => fields,
                Err(error) => return Ok(Err(error)),
            };
            if fields.header.slot != self.slot {
                return Ok(Err(SnapshotError::Format("the header names another slot")));
            }
            if fields.body_bytes.checked_add(HEADER_BYTES as u64) != Some(self.total) {
                return Ok(Err(SnapshotError::Truncated("body length differs from the header's")));
            }
            self.crc = crc32c::crc32c(&head[..HEADER_CHECKED_BYTES]);
            self.fields = Some(fields);
        }
        self.crc = crc32c::crc32c_append(self.crc, rest);
        Ok(Ok(()))
    }
}

impl<W: Write> Assembly<W> {
    /// An assembly of snapshots of `owner` (cluster, shard).
    #[must_use]
    pub fn new(owner: (ClusterId, u16)) -> Assembly<W> {
        Assembly { owner, partial: None, progressed: false }
    }

    /// Takes the piece `offset..offset + bytes.len()` of the `total`-byte snapshot at `slot`,
    /// appending it to the sink of the snapshot it belongs to (`open` makes one for a new
    /// snapshot, after the one it replaces was dropped). A first piece of the one being
    /// assembled (its sender was asked again) resumes where it stands. A first piece of
    /// another replaces it if newer, or if no piece came since the last one turned down (its
    /// sender stopped: crashed, or its snapshot replaced); otherwise it is turned down, so two
    /// senders never take turns starting over.
    ///
    /// # Errors
    /// Making or writing the sink failed; the snapshot being assembled is then dropped.
    pub fn take(
        &mut self,
        slot: Slot,
        offset: u64,
        total: u64,
        bytes: &[u8],
        open: impl FnOnce() -> std::io::Result<W>,
    ) -> std::io::Result<Piece<W>> {
        let end = offset.saturating_add(bytes.len() as u64);
        if end > total || total < HEADER_BYTES as u64 {
            return Ok(Piece::Ignored);
        }
        match &self.partial {
            Some(held) if held.slot == slot && held.total == total => {
                if offset != held.received {
                    // A first piece again (the sender was asked again): go on from here.
                    return Ok(if offset == 0 {
                        Piece::Pull(slot, held.received)
                    } else {
                        Piece::Ignored
                    });
                }
            }
            Some(held) if offset == 0 && slot <= held.slot && self.progressed => {
                self.progressed = false;
                return Ok(Piece::Ignored);
            }
            _ if offset == 0 => {
                self.partial = None; // Its sink goes before the next is made.
                let out = open()?;
                let (received, head, fields, crc) = (0, Vec::with_capacity(HEADER_BYTES), None, 0);
                self.partial = Some(Partial { slot, total, received, head, fields, crc, out });
            }
            _ => return Ok(Piece::Ignored),
        }
        let held = self.partial.as_mut().expect("held above");
        let appended = held.append(bytes, self.owner);
        let refused = match appended {
            Ok(Ok(())) => None,
            Ok(Err(refused)) => Some(refused),
            Err(error) => {
                self.partial = None;
                return Err(error);
            }
        };
        if let Some(refused) = refused {
            self.partial = None;
            return Ok(Piece::Refused(refused));
        }
        self.progressed = true;
        if held.received < total {
            return Ok(Piece::Pull(slot, held.received));
        }
        let held = self.partial.take().expect("held above");
        let fields = held.fields.expect("a whole snapshot has its header");
        if held.crc != fields.crc {
            return Ok(Piece::Refused(SnapshotError::Checksum));
        }
        Ok(Piece::Whole(Assembled { header: fields.header, bytes: total, out: held.out }))
    }

    /// [`Assembly::take`] for a replica at commit position `commit`: a piece of a snapshot
    /// not ahead of it is ignored (nothing to gain), and a partial one it has gone past is
    /// dropped, its sink with it.
    ///
    /// # Errors
    /// See [`Assembly::take`].
    pub fn receive(
        &mut self,
        commit: Slot,
        slot: Slot,
        offset: u64,
        total: u64,
        bytes: &[u8],
        open: impl FnOnce() -> std::io::Result<W>,
    ) -> std::io::Result<Piece<W>> {
        if self.partial.as_ref().is_some_and(|held| held.slot <= commit) {
            self.partial = None;
        }
        if slot <= commit {
            return Ok(Piece::Ignored);
        }
        self.take(slot, offset, total, bytes, open)
    }

    /// Bytes received of a snapshot not yet whole.
    #[must_use]
    pub fn held_bytes(&self) -> u64 {
        self.partial.as_ref().map_or(0, |held| held.received)
    }
}

/// Reads the fields of an image from a stream, in order. A stream cut short is
/// [`SnapshotError::Truncated`], never a panic; a length prefix never makes it allocate more
/// than it has read (a field is read in steps).
pub struct ImageReader<'a> {
    input: &'a mut dyn Read,
}

impl std::fmt::Debug for ImageReader<'_> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("ImageReader")
    }
}

impl<'a> ImageReader<'a> {
    /// A reader over `input` (buffer it: fields are read a few bytes at a time).
    #[must_use]
    pub fn new(input: &'a mut dyn Read) -> ImageReader<'a> {
        ImageReader { input }
    }

    /// Fills `out` with the next bytes.
    ///
    /// # Errors
    /// Fewer are left, or the stream failed.
    pub fn exact(&mut self, out: &mut [u8]) -> Result<(), SnapshotError> {
        self.input.read_exact(out).map_err(|error| SnapshotError::reading(&error))
    }

    /// The next little-endian u64.
    ///
    /// # Errors
    /// Fewer than 8 bytes are left, or the stream failed.
    pub fn u64(&mut self) -> Result<u64, SnapshotError> {
        let mut bytes = [0; 8];
        self.exact(&mut bytes)?;
        Ok(u64::from_le_bytes(bytes))
    }

    /// The next `len` bytes, appended to `out`, read in steps so that memory follows what
    /// the stream holds, not what a length announced.
    ///
    /// # Errors
    /// Fewer are left, or the stream failed.
    pub fn bytes_into(&mut self, len: u64, out: &mut Vec<u8>) -> Result<(), SnapshotError> {
        let mut left = len;
        while left > 0 {
            let step = usize::try_from(left).unwrap_or(usize::MAX).min(FIELD_STEP_BYTES);
            let start = out.len();
            out.resize(start + step, 0);
            self.exact(&mut out[start..])?;
            left -= step as u64;
        }
        Ok(())
    }

    /// The next length-prefixed (u32) field, into `out` (cleared first).
    ///
    /// # Errors
    /// It runs past the end, or the stream failed.
    pub fn field_into(&mut self, out: &mut Vec<u8>) -> Result<(), SnapshotError> {
        let mut len = [0; 4];
        self.exact(&mut len)?;
        out.clear();
        self.bytes_into(u64::from(u32::from_le_bytes(len)), out)
    }

    /// The next length-prefixed (u32) field.
    ///
    /// # Errors
    /// It runs past the end, or the stream failed.
    pub fn field(&mut self) -> Result<Vec<u8>, SnapshotError> {
        let mut out = Vec::new();
        self.field_into(&mut out)?;
        Ok(out)
    }

    /// The stream from here: a nested image (the state machine's, after the session table).
    pub fn rest(&mut self) -> &mut dyn Read {
        self.input
    }

    /// Checks that the image ends here.
    ///
    /// # Errors
    /// Bytes are left (`what` says which), or the stream failed.
    pub fn finish(self, what: &'static str) -> Result<(), SnapshotError> {
        let mut byte = [0; 1];
        loop {
            return match self.input.read(&mut byte) {
                Ok(0) => Ok(()),
                Ok(_) => Err(SnapshotError::Image(what)),
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(error) => Err(SnapshotError::reading(&error)),
            };
        }
    }
}

/// Writes a little-endian u64 to an image.
///
/// # Errors
/// `out`'s.
pub fn write_u64(out: &mut dyn Write, value: u64) -> std::io::Result<()> {
    out.write_all(&value.to_le_bytes())
}

/// Writes a length-prefixed (u32) field to an image.
///
/// # Errors
/// `out`'s, or the field is 4 GiB or more.
pub fn write_field(out: &mut dyn Write, bytes: &[u8]) -> std::io::Result<()> {
    let len = u32::try_from(bytes.len()).map_err(|_| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "an image field of 4 GiB or more")
    })?;
    out.write_all(&len.to_le_bytes())?;
    out.write_all(bytes)
}

/// Appends a length-prefixed (u32) field (commands and replies, which are in memory).
///
/// # Panics
/// The field is 4 GiB or more.
pub fn put_field(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&u32::try_from(bytes.len()).expect("field fits u32").to_le_bytes());
    out.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    const OWNER: (ClusterId, u16) = (ClusterId(7), 2);

    fn snapshot_at(slot: u64, body_bytes: usize) -> Bytes {
        let body: Vec<u8> = (0..body_bytes).map(|i| (i * 7 + slot as usize) as u8).collect();
        Snapshot::encode(
            SnapshotHeader { cluster_id: OWNER.0, shard: OWNER.1, slot: Slot(slot) },
            &body,
        )
        .bytes
    }

    fn take(
        assembly: &mut Assembly<Vec<u8>>,
        slot: u64,
        snapshot: &Bytes,
        offset: usize,
        len: usize,
    ) -> Piece<Vec<u8>> {
        let end = (offset + len).min(snapshot.len());
        let total = snapshot.len() as u64;
        assembly
            .take(Slot(slot), offset as u64, total, &snapshot[offset..end], || Ok(Vec::new()))
            .unwrap()
    }

    #[test]
    fn a_copy_for_another_cluster_reads_as_that_clusters_and_damage_is_refused() {
        let original = snapshot_at(9, 600_000);
        let mut input = &original[..];
        let mut copy = Vec::new();
        let copied =
            copy_snapshot_for(&mut input, OWNER, ClusterId(8), &mut copy).unwrap().unwrap();
        assert!(input.is_empty(), "read to its end");
        copy[..HEADER_BYTES].copy_from_slice(&copied.head);
        assert_eq!(copied.bytes, original.len() as u64);
        let read = Snapshot::decode(Bytes::from(copy), ClusterId(8), OWNER.1).unwrap();
        assert_eq!(read.header.slot, Slot(9));
        assert_eq!(read.body(), &original[HEADER_BYTES..]);
        // Followed by more bytes: only the snapshot is read.
        let mut longer = original.to_vec();
        longer.extend_from_slice(b"next");
        let mut input = &longer[..];
        copy_snapshot_for(&mut input, OWNER, ClusterId(8), &mut Vec::new()).unwrap().unwrap();
        assert_eq!(input, b"next");
        let copy_of = |bytes: &[u8]| {
            copy_snapshot_for(&mut &bytes[..], OWNER, ClusterId(8), &mut Vec::new()).unwrap()
        };
        let mut flipped = original.to_vec();
        flipped[HEADER_BYTES + 300_000] ^= 4;
        assert_eq!(copy_of(&flipped), Err(SnapshotError::Checksum));
        assert!(matches!(
            copy_of(&original[..original.len() - 1]),
            Err(SnapshotError::Truncated(_))
        ));
        assert!(matches!(copy_of(&original[..20]), Err(SnapshotError::Truncated(_))));
        let foreign =
            copy_snapshot_for(&mut &original[..], (ClusterId(3), 2), ClusterId(8), &mut Vec::new());
        assert!(matches!(foreign.unwrap(), Err(SnapshotError::Elsewhere { cluster: 7, .. })));
    }

    #[test]
    fn pieces_in_order_make_the_whole_and_each_pulls_the_next() {
        let whole = snapshot_at(9, 952);
        let mut assembly = Assembly::new(OWNER);
        for at in [0, 300, 600] {
            assert_eq!(
                take(&mut assembly, 9, &whole, at, 300).pull(),
                Some((Slot(9), at as u64 + 300))
            );
        }
        // A duplicate, a piece from the future and a first piece of the same snapshot (its
        // sender asked again) do not disturb it; the last resumes where it stands.
        assert!(matches!(take(&mut assembly, 9, &whole, 300, 300), Piece::Ignored));
        assert_eq!(take(&mut assembly, 9, &whole, 0, 300).pull(), Some((Slot(9), 900)));
        assert_eq!(assembly.held_bytes(), 900);
        let Piece::Whole(assembled) = take(&mut assembly, 9, &whole, 900, 300) else { panic!() };
        assert_eq!((assembled.header.slot, assembled.bytes), (Slot(9), 1000));
        assert_eq!(assembled.out, whole, "every byte reached the sink, in order");
        assert_eq!(assembly.held_bytes(), 0);
        // Pieces smaller than the header are put together the same way.
        for at in (0..whole.len()).step_by(10) {
            let piece = take(&mut assembly, 9, &whole, at, 10);
            if at + 10 < whole.len() {
                assert_eq!(piece.pull(), Some((Slot(9), at as u64 + 10)));
            } else {
                assert!(matches!(piece, Piece::Whole(Assembled { ref out, .. }) if *out == whole));
            }
        }
    }

    #[test]
    fn another_snapshot_replaces_one_only_if_newer_or_stalled() {
        let mut assembly = Assembly::new(OWNER);
        let [four, five, six] = [4, 5, 6].map(|slot| snapshot_at(slot, 52));
        assert_eq!(take(&mut assembly, 5, &five, 0, 50).pull(), Some((Slot(5), 50)));
        // An older one's first piece is turned down while this one progresses...
        assert!(matches!(take(&mut assembly, 4, &four, 0, 50), Piece::Ignored));
        assert_eq!(take(&mut assembly, 5, &five, 50, 20).pull(), Some((Slot(5), 70)));
        assert!(matches!(take(&mut assembly, 4, &four, 0, 50), Piece::Ignored));
        // ...and taken once nothing came in between (this one's sender stopped).
        assert_eq!(take(&mut assembly, 4, &four, 0, 50).pull(), Some((Slot(4), 50)));
        // A newer one replaces it at once.
        assert_eq!(take(&mut assembly, 6, &six, 0, 50).pull(), Some((Slot(6), 50)));
        assert!(matches!(take(&mut assembly, 4, &four, 50, 50), Piece::Ignored));
        // A piece past its length, or of a total too short to be a snapshot: ignored.
        let total = six.len() as u64;
        let past = assembly.take(Slot(6), 90, total, &six[..20], || Ok(Vec::new())).unwrap();
        assert!(matches!(past, Piece::Ignored));
        let short = assembly.take(Slot(7), 0, 10, &six[..10], || Ok(Vec::new())).unwrap();
        assert!(matches!(short, Piece::Ignored));
        // A replica ignores snapshots not ahead of it, and drops a partial one it went past.
        let receive =
            |assembly: &mut Assembly<Vec<u8>>, commit, slot, snapshot: &Bytes, at: usize| {
                let (total, piece) =
                    (snapshot.len() as u64, &snapshot[at..(at + 50).min(snapshot.len())]);
                assembly
                    .receive(Slot(commit), Slot(slot), at as u64, total, piece, || Ok(Vec::new()))
                    .unwrap()
            };
        let seven = snapshot_at(7, 52);
        assert_eq!(receive(&mut assembly, 6, 7, &seven, 0).pull(), Some((Slot(7), 50)));
        assert!(matches!(receive(&mut assembly, 6, 6, &six, 0), Piece::Ignored));
        assert_eq!(assembly.held_bytes(), 50);
        assert!(matches!(receive(&mut assembly, 7, 7, &seven, 50), Piece::Ignored));
        assert_eq!(assembly.held_bytes(), 0);
    }

    #[test]
    fn a_damaged_cut_foreign_or_lying_stream_of_pieces_is_refused() {
        let whole = snapshot_at(9, 400);
        // Every flipped byte: the header's at once or by the checksum at the end.
        for at in 0..whole.len() {
            let mut damaged = whole.to_vec();
            damaged[at] ^= 0x04;
            let damaged = Bytes::from(damaged);
            let mut assembly = Assembly::new(OWNER);
            let mut outcome = take(&mut assembly, 9, &damaged, 0, 100);
            while let Some((_, offset)) = outcome.pull() {
                outcome = take(&mut assembly, 9, &damaged, offset as usize, 100);
            }
            assert!(matches!(outcome, Piece::Refused(_)), "a flip at byte {at} went unnoticed");
            assert_eq!(assembly.held_bytes(), 0);
        }
        // Another shard's is refused at its first piece, before its body is written.
        let other = Snapshot::encode(
            SnapshotHeader { cluster_id: OWNER.0, shard: 3, slot: Slot(9) },
            &[1; 400],
        );
        let mut assembly = Assembly::new(OWNER);
        let first = take(&mut assembly, 9, &other.bytes, 0, 100);
        assert!(
            matches!(first, Piece::Refused(SnapshotError::Elsewhere { shard: 3, .. })),
            "{first:?}"
        );
        // A total other than its header's (a stream cut short or padded), or another slot.
        for (slot, total) in
            [(9, whole.len() as u64 - 1), (9, whole.len() as u64 + 1), (8, whole.len() as u64)]
        {
            let piece =
                assembly.take(Slot(slot), 0, total, &whole[..100], || Ok(Vec::new())).unwrap();
            assert!(matches!(piece, Piece::Refused(_)), "{slot} {total}: {piece:?}");
        }
        // A sink that fails drops the snapshot and says why.
        let failing = assembly.take(Slot(9), 0, whole.len() as u64, &whole[..100], || {
            Err(std::io::Error::other("no room"))
        });
        assert!(failing.is_err());
        assert_eq!(assembly.held_bytes(), 0);
    }

    #[test]
    fn the_slot_is_read_from_a_header_of_a_known_version() {
        let snapshot = snapshot_at(77, 4);
        assert_eq!(slot_in_header(&snapshot[..HEADER_BYTES]), Some(Slot(77)));
        assert_eq!(slot_in_header(&snapshot[..HEADER_BYTES - 1]), None);
        let mut other = snapshot.to_vec();
        other[8] = 9;
        assert_eq!(slot_in_header(&other), None);
    }

    fn header() -> SnapshotHeader {
        SnapshotHeader { cluster_id: ClusterId(7), shard: 2, slot: Slot(1234) }
    }

    /// A restore that reads the body in fields of 3 bytes (`ImageReader`) and keeps them.
    fn restore_fields(body: &mut dyn Read) -> Result<Vec<u8>, SnapshotError> {
        let mut reader = ImageReader::new(body);
        let mut kept = Vec::new();
        let count = reader.u64()?;
        for _ in 0..count {
            kept.extend(reader.field()?);
        }
        reader.finish("bytes after the last field")?;
        Ok(kept)
    }

    fn fields_image() -> Vec<u8> {
        let mut image = Vec::new();
        write_u64(&mut image, 3).unwrap();
        for field in [&b"abc"[..], b"de", b""] {
            write_field(&mut image, field).unwrap();
        }
        image
    }

    #[test]
    fn round_trips_and_every_damage_is_refused() {
        let snapshot = Snapshot::encode(header(), b"the image");
        let decoded = Snapshot::decode(snapshot.bytes.clone(), ClusterId(7), 2).unwrap();
        assert_eq!(decoded.header, header());
        assert_eq!(decoded.body(), b"the image");
        let fields = Snapshot::encode(header(), &fields_image()).bytes;
        let (read, total, kept) = read_snapshot(&mut &fields[..], OWNER, restore_fields).unwrap();
        assert_eq!((read, total, kept), (header(), fields.len() as u64, b"abcde".to_vec()));
        for bytes in [snapshot.bytes, fields] {
            for at in 0..bytes.len() {
                let mut damaged = bytes.to_vec();
                damaged[at] ^= 0x10;
                assert!(
                    Snapshot::decode(Bytes::from(damaged.clone()), ClusterId(7), 2).is_err(),
                    "a flip at byte {at} went unnoticed"
                );
                assert!(read_snapshot(&mut &damaged[..], OWNER, restore_fields).is_err());
            }
            for len in 0..bytes.len() {
                assert!(Snapshot::decode(bytes.slice(..len), ClusterId(7), 2).is_err());
                let cut = read_snapshot(&mut &bytes[..len], OWNER, restore_fields);
                assert!(matches!(cut, Err(SnapshotError::Truncated(_))), "cut at {len}: {cut:?}");
            }
            let mut longer = bytes.to_vec();
            longer.push(0);
            assert!(read_snapshot(&mut &longer[..], OWNER, restore_fields).is_err());
        }
    }

    #[test]
    fn a_snapshot_written_in_one_pass_is_completed_by_its_header() {
        // Written in small and large writes, the body crosses the buffer several times.
        let parts: Vec<Vec<u8>> =
            (0..40u32).map(|i| vec![i as u8; (i as usize * 37_001) % 300_000]).collect();
        let body: Vec<u8> = parts.concat();
        let mut out = Vec::new();
        let (head, total) = write_snapshot(header(), &mut out, |sink| {
            parts.iter().try_for_each(|part| sink.write_all(part))
        })
        .unwrap();
        assert_eq!(out[..HEADER_BYTES], [0; HEADER_BYTES], "placeholders until completed");
        out[..HEADER_BYTES].copy_from_slice(&head);
        assert_eq!(total, out.len() as u64);
        assert_eq!(out, Snapshot::encode(header(), &body).bytes, "the same bytes as in memory");
    }

    #[test]
    fn a_field_longer_than_its_stream_is_refused_without_allocating_its_length() {
        let mut image = Vec::new();
        image.extend_from_slice(&u32::MAX.to_le_bytes());
        image.extend_from_slice(b"short");
        let mut input = &image[..];
        let mut reader = ImageReader::new(&mut input);
        let mut out = Vec::new();
        assert!(matches!(reader.field_into(&mut out), Err(SnapshotError::Truncated(_))));
        assert!(out.capacity() <= 2 * FIELD_STEP_BYTES, "allocated {}", out.capacity());
    }

    #[test]
    fn another_shards_snapshot_is_refused() {
        let snapshot = Snapshot::encode(header(), b"x");
        let error = Snapshot::decode(snapshot.bytes, ClusterId(7), 3).unwrap_err();
        assert!(matches!(error, SnapshotError::Elsewhere { shard: 2, expected_shard: 3, .. }));
    }
}
