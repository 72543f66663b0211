//! Fetching a shard's newest snapshot from a node, so that a reader can start from the state it
//! holds and then tail the log from its slot (the log before it may be gone). The node sends it
//! in pieces; this side assembles them ([`Assembly`]), pulling each next one, and checks the
//! whole.

use super::{
    ClientError, ClientOptions, FRAME_BYTES_MAX, check_shard, handshake, random_client_id,
};
use crate::core::{ClusterId, Message, NodeId, Slot};
use crate::storage::snapshot::{ASSEMBLY_BYTES_MAX, Assembly, Piece, Snapshot};
use crate::transport::codec::{Body, Encoder, Frame};
use crate::transport::framing::{read_frame, write_frame};

/// The newest snapshot of `shard` on the node at `address` (`HOST:PORT`, its listen address),
/// checked; `None` if it has none (it has not taken one yet, or applies in total order).
/// Restore it with [`crate::machine::Applier::restore`] (its `body`), then tail from its
/// slot.
///
/// # Errors
/// The node cannot be reached or refuses us, stops answering for the request timeout, or sends
/// a snapshot that does not check.
pub fn fetch_snapshot(
    address: &str,
    options: &ClientOptions,
    shard: u16,
) -> Result<Option<Snapshot>, ClientError> {
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
    let mut assembly = Assembly::default();
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
        match assembly.take(slot, offset, total, bytes, ASSEMBLY_BYTES_MAX) {
            Piece::Whole(bytes) => {
                // Cluster 0 accepts any: then the node's own.
                let cluster = match options.cluster_id {
                    ClusterId(0) => frame.cluster_id,
                    cluster => cluster,
                };
                return Snapshot::decode(bytes, cluster, shard)
                    .map(Some)
                    .map_err(|error| ClientError::BadReply(error.to_string()));
            }
            Piece::Pull(slot, offset) => pull(&mut stream, slot, offset)?,
            Piece::Ignored => {
                return Err(ClientError::BadReply(format!(
                    "shard {shard} sent a snapshot piece out of order ({offset} of {total})"
                )));
            }
        }
    }
}
