//! What a shard keeps on disk besides the WAL's own framing: the [`record`]s it appends (promises,
//! accepted batches, commit marks) and the [`snapshot`] image format; and the [`backup`] file
//! that holds every shard's snapshot of a cluster at one position.

pub mod backup;
pub mod record;
pub mod snapshot;
