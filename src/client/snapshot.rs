//! Fetching a shard's newest snapshot from a node, so that a reader can start from the state it
//! holds and then tail the log from its slot (the log before it may be gone). The node sends it
//! in pieces; this side appends each to a file (or any sink) as it comes ([`Assembly`]),
//! pulling each next one, and checks the whole: a snapshot of any size costs one piece of
//! memory.

use std::path::Path;

use super::{
    ClientError, ClientOptions, FRAME_BYTES_MAX, check_shard, handshake, random_client_id,
};
use crate::core::{ClusterId, Message, NodeId, Slot};
use crate::storage::snapshot::{Assembled, Assembly, Piece, SnapshotHeader};
use crate::transport::codec::{Body, Encoder, Frame};
use crate::transport::framing::{read_frame, write_frame};

/// A snapshot fetched and checked ([`fetch_snapshot`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FetchedSnapshot {
    /// Who and where: every slot below its slot is applied in it.
    pub header: SnapshotHeader,
    /// Its length (the file's).
    pub bytes: u64,
}

/// The newest snapshot of `shard` on the node at `address` (`HOST:PORT`, its listen address),
/// written to the file `path` in the snapshot file format (first as `{path}.partial`, renamed
/// once whole, checked and synced); `None` if it has none (it has not taken one yet, or
/// applies in total order). Restore it with [`crate::storage::snapshot::read_snapshot`] over
/// the file and [`crate::machine::Applier::restore`], then tail from its slot.
///
/// # Errors
/// The node cannot be reached or refuses us, stops answering for the request timeout, sends
/// a snapshot that does not check, or the file cannot be written.
pub fn fetch_snapshot(
    address: &str,
    options: &ClientOptions,
    shard: u16,
    path: &Path,
) -> Result<Option<FetchedSnapshot>, ClientError> {
    let mut partial = path.as_os_str().to_owned();
    partial.push(".partial");
    let partial = std::path::PathBuf::from(partial);
    let file_error = |error: &dyn std::fmt::Display| {
        ClientError::BadReply(format!("cannot write {}: {error}", path.display()))
    };
    let fetched = fetch_snapshot_into(address, options, shard, || std::fs::File::create(&partial));
    let fetched = match fetched {
        Ok(Some((fetched, file))) => (fetched, file),
        Ok(None) => return Ok(None),
        Err(error) => {
            let _ = std::fs::remove_file(&partial);
            return Err(error);
        }
    };
    fetched.1.sync_all().map_err(|error| file_error(&error))?;
    std::fs::rename(&partial, path).map_err(|error| file_error(&error))?;
    Ok(Some(fetched.0))
}

/// [`fetch_snapshot`] into any sink: `open` makes one for each snapshot started (another may
/// replace the first while it is fetched: the node took a newer one), and the sink of the
/// whole one is returned, its bytes the snapshot's, checked.
///
/// # Errors
/// See [`fetch_snapshot`].
pub fn fetch_snapshot_into<W: std::io::Write>(
    address: &str,
    options: &ClientOptions,
    shard: u16,
    mut open: impl FnMut() -> std::io::Result<W>,
) -> Result<Option<(FetchedSnapshot, W)>, ClientError> {
    let client_id = random_client_id();
    let first = handshake(options, client_id, address, 0)?;
    check_shard(shard, first.reply.shards)?;
    let mut stream = match shard {
        0 => first.stream,
        _ => handshake(options, client_id, address, shard)?.stream,
    };
    let disconnected = |error: &dyn std::fmt::Display| {
        ClientError::Disconnected(format!("{address} shard {shard}: {error}"))
    };
    stream.set_read_timeout(Some(options.request_timeout)).map_err(|e| disconnected(&e))?;
    let mut encoder = Encoder::default();
    let mut pull = |stream: &mut std::net::TcpStream, slot: Slot, offset: u64| {
        let frame = Frame {
            cluster_id: options.cluster_id,
            from: NodeId(0),
            shard,
            body: Body::Peer(Message::SnapshotPull { slot, offset }),
        };
        write_frame(stream, &mut encoder, &frame).map_err(|e| disconnected(&e))
    };
    // Slot 0 names no snapshot: the node answers with the first piece of its newest.
    pull(&mut stream, Slot(0), 0)?;
    let mut assembly = None;
    loop {
        let frame = read_frame(&mut stream, FRAME_BYTES_MAX).map_err(|e| disconnected(&e))?;
        let Body::Peer(Message::Snapshot { slot, offset, total, bytes, .. }) = frame.body else {
            return Err(ClientError::BadReply(format!(
                "shard {shard} answered a snapshot pull with a {} frame",
                frame.body.kind()
            )));
        };
        if total == 0 {
            return Ok(None);
        }
        // Cluster 0 accepts any: then the node's own.
        let cluster = match options.cluster_id {
            ClusterId(0) => frame.cluster_id,
            cluster => cluster,
        };
        let assembly = assembly.get_or_insert_with(|| Assembly::new((cluster, shard)));
        let piece = assembly.take(slot, offset, total, &bytes, &mut open).map_err(|error| {
            ClientError::BadReply(format!("shard {shard}'s snapshot cannot be written: {error}"))
        })?;
        match piece {
            Piece::Whole(Assembled { header, bytes, out }) => {
                return Ok(Some((FetchedSnapshot { header, bytes }, out)));
            }
            Piece::Pull(slot, offset) => pull(&mut stream, slot, offset)?,
            Piece::Refused(error) => return Err(ClientError::BadReply(error.to_string())),
            Piece::Ignored => {
                return Err(ClientError::BadReply(format!(
                    "shard {shard} sent a snapshot piece out of order ({offset} of {total})"
                )));
            }
        }
    }
}
