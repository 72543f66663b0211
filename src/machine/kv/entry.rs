//! One key's state: its value and the revisions and count that describe its life.

use super::Bytes24;
use super::coord::KeyValue;

/// A key's value and its metadata.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Entry {
    pub(super) value: Bytes24,
    /// The revision of the put that created it.
    pub(super) create: u64,
    /// The revision of its last write.
    pub(super) modified: u64,
    /// Writes since it was created.
    pub(super) version: u64,
    /// The lease it lives by (0: none).
    pub(super) lease: u64,
}

impl Entry {
    /// The entry a put at `revision` leaves, `previous` being the key's entry before.
    pub(super) fn put(previous: Option<&Entry>, value: &[u8], revision: u64, lease: u64) -> Entry {
        Entry {
            value: Bytes24::from_slice(value),
            create: previous.map_or(revision, |previous| previous.create),
            modified: revision,
            version: previous.map_or(1, |previous| previous.version + 1),
            lease,
        }
    }

    /// The entry as a reader sees it.
    pub(super) fn key_value(&self, key: &[u8], keys_only: bool) -> KeyValue {
        KeyValue {
            key: key.to_vec(),
            value: if keys_only { Vec::new() } else { self.value.to_vec() },
            create_revision: self.create,
            mod_revision: self.modified,
            version: self.version,
            lease: self.lease,
        }
    }

    /// Feeds the entry's fields to a digest.
    pub(super) fn hash_into(&self, hasher: &mut xxhash_rust::xxh3::Xxh3) {
        hasher.update(&self.value);
        for field in [self.create, self.modified, self.version, self.lease] {
            hasher.update(&field.to_le_bytes());
        }
    }
}
