//! What a shard keeps on disk besides the WAL's own framing: the [`record`]s it appends (promises,
//! accepted batches, commit marks) and the [`snapshot`] image format.

pub mod record;
pub mod snapshot;
