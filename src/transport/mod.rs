//! The transport between nodes. This first part is the wire format (`codec`): frames of a
//! FlatBuffers header (schema in `schema/quorum.fbs`) followed by the batches they carry, so a
//! batch is never copied into or out of a message. Connections, handshakes and back-pressure
//! come with the node.

pub mod codec;
pub mod framing;

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
