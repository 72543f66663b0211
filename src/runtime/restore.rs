//! Building a node's data directory from a cluster backup (`quorum snapshot restore`;
//! docs/operations.md, "Backup and restore"), so that a new cluster starts from it.
//!
//! Each shard's directory gets the backup's snapshot of that shard as its snapshot file, made
//! the new cluster's (its cluster id rewritten, the checksum with it), and nothing else: a
//! shard that opens a directory holding only a snapshot starts from it, its log empty from
//! the snapshot's slot on, and (its directory not being new) votes at once, as its peers
//! restored from the same backup do. The directory is built beside its final place and
//! renamed into it only once every byte of the backup was checked and synced: a damaged or
//! cut backup leaves nothing behind.

use std::io::{BufReader, BufWriter, Read as _};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

use crate::core::ClusterId;
use crate::storage::backup::{BackupError, BackupHeader};
use crate::storage::snapshot::{FILE_NAME, SnapshotError, copy_snapshot_for};

/// Why a backup could not be restored. The data directory is then left as it was.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The backup is damaged, cut, or not a backup.
    #[error("{}: {error}; nothing was restored", path.display())]
    Backup {
        /// The backup file.
        path: PathBuf,
        /// What is wrong with it.
        error: BackupError,
    },
    /// One shard's snapshot in the backup is damaged or cut.
    #[error("{}: shard {shard}'s snapshot: {error}; nothing was restored", path.display())]
    Snapshot {
        /// The backup file.
        path: PathBuf,
        /// The shard.
        shard: u16,
        /// What is wrong with it.
        error: SnapshotError,
    },
    /// The data directory holds something already.
    #[error(
        "{} is not empty: a restore builds a new data directory (move it away or name another)",
        .0.display()
    )]
    NotEmpty(PathBuf),
    /// A file could not be read or written.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS's error.
        source: std::io::Error,
    },
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> RestoreError + 'a {
    move |source| RestoreError::Io { op, path: path.to_path_buf(), source }
}

/// A directory removed when dropped unless kept.
struct Building(Option<PathBuf>);

impl Drop for Building {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn sync_dir(dir: &Path) -> Result<(), RestoreError> {
    std::fs::File::open(dir).and_then(|file| file.sync_all()).map_err(io("sync", dir))
}

/// Builds `data_dir` (absent or empty) from the backup at `backup` for a node of the cluster
/// `cluster_id`, and returns the backup's header (its position, and each shard's slot and
/// digest). Start the node with as many shards as the backup has.
///
/// # Errors
/// See [`RestoreError`]; `data_dir` is then as it was.
pub fn restore_backup(
    backup: &Path,
    data_dir: &Path,
    cluster_id: ClusterId,
) -> Result<BackupHeader, RestoreError> {
    let occupied = std::fs::read_dir(data_dir).map(|mut entries| entries.next().is_some());
    match occupied {
        Ok(true) => return Err(RestoreError::NotEmpty(data_dir.to_path_buf())),
        Err(error) if error.kind() == std::io::ErrorKind::NotADirectory => {
            return Err(RestoreError::NotEmpty(data_dir.to_path_buf()));
        }
        Ok(false) | Err(_) => {}
    }
    let name = data_dir.file_name().map_or("data".into(), |name| name.to_string_lossy());
    let parent =
        data_dir.parent().filter(|dir| !dir.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(io("create", parent))?;
    let staging = parent.join(format!(".{name}.restoring-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir(&staging).map_err(io("create", &staging))?;
    let mut building = Building(Some(staging.clone()));
    let file = std::fs::File::open(backup).map_err(io("open", backup))?;
    let mut input = BufReader::with_capacity(256 << 10, file);
    let refused = |error| RestoreError::Backup { path: backup.to_path_buf(), error };
    let header = BackupHeader::read(&mut input).map_err(refused)?;
    for (shard, section) in (0..header.shards()).zip(&header.sections) {
        let dir = staging.join(format!("shard-{shard}"));
        std::fs::create_dir(&dir).map_err(io("create", &dir))?;
        let path = dir.join(FILE_NAME);
        let file = std::fs::File::create(&path).map_err(io("create", &path))?;
        let mut out = BufWriter::with_capacity(256 << 10, file);
        let owner = (header.cluster_id, shard);
        let copied = copy_snapshot_for(&mut input, owner, cluster_id, &mut out)
            .map_err(io("write", &path))?
            .map_err(|error| RestoreError::Snapshot { path: backup.to_path_buf(), shard, error })?;
        if copied.bytes != section.snapshot_bytes || copied.header.slot != section.slot {
            return Err(refused(BackupError::Inconsistent(format!(
                "shard {shard}'s snapshot is {} bytes at slot {}, its header says {} at {}",
                copied.bytes, copied.header.slot.0, section.snapshot_bytes, section.slot.0
            ))));
        }
        let file = out.into_inner().map_err(|error| io("write", &path)(error.into_error()))?;
        file.write_all_at(&copied.head, 0).map_err(io("write", &path))?;
        file.sync_all().map_err(io("sync", &path))?;
        sync_dir(&dir)?;
    }
    let mut after = [0u8; 1];
    if input.read(&mut after).map_err(io("read", backup))? > 0 {
        let reason = "bytes after the last shard's snapshot".to_string();
        return Err(refused(BackupError::Inconsistent(reason)));
    }
    sync_dir(&staging)?;
    if data_dir.exists() {
        std::fs::remove_dir(data_dir).map_err(io("replace", data_dir))?;
    }
    std::fs::rename(&staging, data_dir).map_err(io("rename", &staging))?;
    building.0 = None;
    sync_dir(parent)?;
    Ok(header)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::backup::{BackupSection, slot_for_position};
    use crate::storage::snapshot::{HEADER_BYTES, Snapshot, SnapshotHeader};

    /// A backup of two shards of cluster 7 at position 9, each snapshot's body its shard's.
    fn backup() -> Vec<u8> {
        let snapshots: Vec<Snapshot> = (0..2)
            .map(|shard| {
                let slot = slot_for_position(9, 2, shard);
                let header = SnapshotHeader { cluster_id: ClusterId(7), shard, slot };
                Snapshot::encode(header, &vec![shard as u8; 1000])
            })
            .collect();
        let sections = snapshots
            .iter()
            .map(|snapshot| BackupSection {
                slot: snapshot.header.slot,
                snapshot_bytes: snapshot.bytes.len() as u64,
                entries: 1,
                digest: 2,
            })
            .collect();
        let header =
            BackupHeader { cluster_id: ClusterId(7), position: 9, created_unix_ms: 0, sections };
        let mut bytes = header.encode();
        for snapshot in &snapshots {
            bytes.extend_from_slice(&snapshot.bytes);
        }
        bytes
    }

    #[test]
    fn a_restore_gives_each_shard_its_snapshot_under_the_new_cluster() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("backup");
        std::fs::write(&file, backup()).unwrap();
        let data = dir.path().join("node-1");
        let header = restore_backup(&file, &data, ClusterId(8)).unwrap();
        assert_eq!(header.position, 9);
        for shard in 0..2u16 {
            let bytes = std::fs::read(data.join(format!("shard-{shard}")).join(FILE_NAME)).unwrap();
            let snapshot = Snapshot::decode(bytes.into(), ClusterId(8), shard).unwrap();
            assert_eq!(snapshot.header.slot, slot_for_position(9, 2, shard));
            assert_eq!(snapshot.body(), &vec![shard as u8; 1000][..]);
        }
        let error = restore_backup(&file, &data, ClusterId(8)).unwrap_err();
        assert!(matches!(error, RestoreError::NotEmpty(_)), "{error}");
    }

    #[test]
    fn a_damaged_or_cut_backup_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let good = backup();
        let header_bytes = BackupHeader::encoded_bytes(2);
        let mut flipped = good.clone();
        flipped[header_bytes + HEADER_BYTES + 500] ^= 1;
        let mut longer = good.clone();
        longer.push(0);
        let cases: [(&[u8], &str); 5] = [
            (&flipped, "shard 0's snapshot: snapshot checksum mismatch"),
            (&good[..good.len() - 10], "shard 1's snapshot: snapshot truncated"),
            (&good[..header_bytes - 1], "the backup is truncated"),
            (&good[..header_bytes + 100], "shard 0's snapshot: snapshot truncated"),
            (&longer, "bytes after the last shard's snapshot"),
        ];
        for (bytes, says) in cases {
            let file = dir.path().join("backup");
            std::fs::write(&file, bytes).unwrap();
            let data = dir.path().join("node");
            let error = restore_backup(&file, &data, ClusterId(8)).unwrap_err().to_string();
            assert!(error.contains(says), "{error:?} does not say {says:?}");
            assert!(error.ends_with("nothing was restored"), "{error}");
            assert!(!data.exists(), "{error}: the data directory was made");
            let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
            assert_eq!(left.len(), 1, "only the backup is left: {left:?}");
        }
    }
}
