//! The store's snapshot image: a magic number, the revision, the keys sorted with their
//! metadata, the leases, the locks, and the recent changes. An image without the magic is
//! the first format's (keys and values only), read as keys written at revision 0.

use super::coord::ChangeKind;
use super::entry::Entry;
use super::history::{Event, History};
use super::locks::Lock;
use super::{Bytes24, KvStore, Lease};
use crate::storage::snapshot::{ImageReader, SnapshotError, write_field, write_u64};

const MAGIC: u64 = u64::from_le_bytes(*b"QKVIMG02");

/// The most bytes of recent changes an image keeps (the newest whole revisions): a replica
/// restored from it can serve watches and past reads over them at once, and a snapshot stays
/// close to the size of the state. The rest of the history lives only in memory.
const HISTORY_IMAGE_BYTES: usize = 1 << 20;

pub(super) fn write(store: &KvStore, out: &mut dyn std::io::Write) -> std::io::Result<()> {
    write_u64(out, MAGIC)?;
    write_u64(out, store.revision)?;
    let mut entries: Vec<(&Bytes24, &Entry)> = store.entries.iter().collect();
    entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
    write_u64(out, entries.len() as u64)?;
    for (key, entry) in entries {
        write_field(out, key)?;
        write_entry(out, entry)?;
    }
    write_u64(out, store.leases.len() as u64)?;
    for (id, lease) in &store.leases {
        for field in [*id, lease.ttl_ms, lease.refreshes] {
            write_u64(out, field)?;
        }
    }
    write_u64(out, store.locks.by_name.len() as u64)?;
    for (name, lock) in &store.locks.by_name {
        write_field(out, name)?;
        write_field(out, &postcard::to_allocvec(lock).map_err(std::io::Error::other)?)?;
    }
    let (compacted, events) = store.history.newest(HISTORY_IMAGE_BYTES);
    write_u64(out, compacted)?;
    write_u64(out, events.len() as u64)?;
    for event in events {
        write_u64(out, event.revision)?;
        match event.kind {
            ChangeKind::Put => write_u64(out, 0)?,
            ChangeKind::Delete => write_u64(out, 1)?,
            ChangeKind::Locked { lease, token } => {
                write_u64(out, 2)?;
                write_u64(out, lease)?;
                write_u64(out, token)?;
            }
            ChangeKind::Unlocked => write_u64(out, 3)?,
            ChangeKind::Proclaimed => write_u64(out, 4)?,
        }
        write_field(out, &event.key)?;
        write_field(out, &event.value)?;
        match &event.previous {
            Some(entry) => {
                write_u64(out, 1)?;
                write_entry(out, entry)?;
            }
            None => write_u64(out, 0)?,
        }
    }
    Ok(())
}

fn write_entry(out: &mut dyn std::io::Write, entry: &Entry) -> std::io::Result<()> {
    write_field(out, &entry.value)?;
    for field in [entry.create, entry.modified, entry.version, entry.lease] {
        write_u64(out, field)?;
    }
    Ok(())
}

fn read_entry(reader: &mut ImageReader<'_>, value: &mut Vec<u8>) -> Result<Entry, SnapshotError> {
    reader.field_into(value)?;
    Ok(Entry {
        value: Bytes24::from_slice(value),
        create: reader.u64()?,
        modified: reader.u64()?,
        version: reader.u64()?,
        lease: reader.u64()?,
    })
}

pub(super) fn read(image: &mut dyn std::io::Read) -> Result<KvStore, SnapshotError> {
    let mut reader = ImageReader::new(image);
    let first = reader.u64()?;
    let mut store = KvStore::default();
    let (mut key, mut value) = (Vec::new(), Vec::new());
    if first != MAGIC {
        // The first format: `first` keys, each with its value.
        for _ in 0..first {
            reader.field_into(&mut key)?;
            reader.field_into(&mut value)?;
            insert(&mut store, &key, Entry::put(None, &value, 0, 0))?;
        }
        reader.finish("bytes after the last entry")?;
        return Ok(store);
    }
    store.revision = reader.u64()?;
    // Counts are not reserved from: a damaged count must not allocate without bound.
    for _ in 0..reader.u64()? {
        reader.field_into(&mut key)?;
        let entry = read_entry(&mut reader, &mut value)?;
        insert(&mut store, &key, entry)?;
    }
    read_leases_and_locks(&mut reader, &mut store, &mut key, &mut value)?;
    store.history = read_history(&mut reader, &store, &mut key, &mut value)?;
    reader.finish("bytes after the last change")?;
    Ok(store)
}

fn insert(store: &mut KvStore, key: &[u8], entry: Entry) -> Result<(), SnapshotError> {
    if store.entries.insert(Bytes24::from_slice(key), entry).is_some() {
        return Err(SnapshotError::Image("a key appears twice"));
    }
    store.ordered.insert(Bytes24::from_slice(key));
    Ok(())
}

/// The leases and locks, and what lives by each lease (rebuilt from the keys and locks).
fn read_leases_and_locks(
    reader: &mut ImageReader<'_>,
    store: &mut KvStore,
    key: &mut Vec<u8>,
    value: &mut Vec<u8>,
) -> Result<(), SnapshotError> {
    for _ in 0..reader.u64()? {
        let id = reader.u64()?;
        let lease = Lease { ttl_ms: reader.u64()?, refreshes: reader.u64()?, ..Lease::default() };
        if id == 0 || store.leases.insert(id, lease).is_some() {
            return Err(SnapshotError::Image("a lease id is 0 or appears twice"));
        }
    }
    for _ in 0..reader.u64()? {
        reader.field_into(key)?;
        reader.field_into(value)?;
        let lock: Lock = postcard::from_bytes(value)
            .map_err(|_| SnapshotError::Image("a lock does not decode"))?;
        let leases = lock.holder.iter().map(|holder| holder.lease);
        for lease in leases.chain(lock.waiters.iter().map(|(lease, _)| *lease)) {
            let Some(lease) = store.leases.get_mut(&lease) else {
                return Err(SnapshotError::Image("a lock names a lease that does not exist"));
            };
            lease.locks.insert(Bytes24::from_slice(key));
        }
        if store.locks.by_name.insert(Bytes24::from_slice(key), lock).is_some() {
            return Err(SnapshotError::Image("a lock appears twice"));
        }
    }
    for (key, entry) in &store.entries {
        if entry.lease != 0 {
            let Some(lease) = store.leases.get_mut(&entry.lease) else {
                return Err(SnapshotError::Image("a key names a lease that does not exist"));
            };
            lease.keys.insert(key.clone());
        }
    }
    Ok(())
}

/// The recent changes, in revision order, none past the store's revision.
fn read_history(
    reader: &mut ImageReader<'_>,
    store: &KvStore,
    key: &mut Vec<u8>,
    value: &mut Vec<u8>,
) -> Result<History, SnapshotError> {
    let compacted = reader.u64()?;
    let mut history = History::restored(store.history.bytes_max(), compacted);
    let mut last = compacted;
    for _ in 0..reader.u64()? {
        let revision = reader.u64()?;
        let kind = match reader.u64()? {
            0 => ChangeKind::Put,
            1 => ChangeKind::Delete,
            2 => ChangeKind::Locked { lease: reader.u64()?, token: reader.u64()? },
            3 => ChangeKind::Unlocked,
            4 => ChangeKind::Proclaimed,
            _ => return Err(SnapshotError::Image("a change of unknown kind")),
        };
        reader.field_into(key)?;
        reader.field_into(value)?;
        let (event_key, event_value) = (Bytes24::from_slice(key), Bytes24::from_slice(value));
        let previous = match reader.u64()? {
            0 => None,
            1 => Some(read_entry(reader, value)?),
            _ => return Err(SnapshotError::Image("a change's previous entry is garbled")),
        };
        if revision < last || revision > store.revision {
            return Err(SnapshotError::Image("changes out of revision order"));
        }
        last = revision;
        history.push(Event { revision, kind, key: event_key, value: event_value, previous });
    }
    Ok(history)
}
