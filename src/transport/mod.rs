//! The transport between nodes. This first part is the wire format (`codec`): frames of a
//! FlatBuffers header (schema in `schema/quorum.fbs`) followed by the batches they carry, so a
//! batch is never copied into or out of a message. Connections, handshakes and back-pressure
//! come with the node.

pub mod codec;
pub mod framing;

/// The address of shard `shard` at a member's base address `HOST:PORT`: shard `k` listens on
/// `PORT + k`.
///
/// # Errors
/// The address does not resolve, or the shard's port is past 65535.
pub fn shard_address(base: &str, shard: u16) -> std::io::Result<std::net::SocketAddr> {
    use std::net::ToSocketAddrs;
    let mut address = base
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::other(format!("{base} resolves to no address")))?;
    let port = address.port().checked_add(shard).ok_or_else(|| {
        std::io::Error::other(format!("{base}: shard {shard}'s port is past 65535"))
    })?;
    address.set_port(port);
    Ok(address)
}

#[allow(
    clippy::all,
    clippy::pedantic,
    clippy::undocumented_unsafe_blocks,
    clippy::unwrap_used,
    missing_docs,
    unsafe_op_in_unsafe_fn,
    unused_imports,
    deprecated,
    non_camel_case_types,
    unused_lifetimes
)]
mod generated {
    include!("generated/quorum_generated.rs");
}
