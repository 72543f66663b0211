//! Saving a cluster backup: every shard's state at one merged-order position, in one file
//! (the format: `storage::backup`; the choice of position: docs/operations.md, "Backup and
//! restore").
//!
//! Shards snapshot on their own, each at its own slot, so no set of snapshots a node holds
//! is at one position. The backup is built from them: each shard's newest snapshot is
//! fetched, a position `P` is chosen that the cluster has committed on every shard and that
//! no snapshot is past, and each shard's committed log from its snapshot's slot up to `P` is
//! read from the node and applied here, through the same exactly-once applier the replicas
//! run and with the cluster's session limits, so the state here is the one every replica had
//! at `P`. Each is then written as a snapshot at `⌈(P − k) / S⌉`. Memory: one shard's state
//! at a time (a snapshot streams).

use std::io::Write as _;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

use super::{
    ClientError, ClientOptions, FRAME_BYTES_MAX, fetch_snapshot, handshake, node_status_with,
    random_client_id,
};
use crate::core::{ClusterId, Message, NodeId, Slot, Value};
use crate::machine::{Applier, SessionLimits, StateMachine};
use crate::storage::backup::{BackupHeader, BackupSection, slot_for_position};
use crate::storage::snapshot::{SnapshotError, SnapshotHeader, read_snapshot, write_snapshot};
use crate::transport::codec::{Body, Encoder, Frame, ShardStatus};
use crate::transport::framing::{read_frame, write_frame};

/// Attempts at a backup while the shards' logs move under it (a new snapshot releasing what
/// the backup was about to read).
const ATTEMPTS_MAX: u32 = 5;

/// A backup written ([`save_backup`]).
#[derive(Clone, Debug)]
pub struct SavedBackup {
    /// Its header: the position, and each shard's slot, length and digest.
    pub header: BackupHeader,
    /// The file's length.
    pub bytes: u64,
    /// The member it was read from.
    pub source: String,
}

/// Why a backup could not be saved. Nothing is left at the output path then.
#[derive(Debug, thiserror::Error)]
pub enum BackupSaveError {
    /// The cluster could not be reached, refused us, or sent something wrong.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The cluster applies the merged order of all shards (`--apply total`).
    #[error(
        "the cluster applies the merged order of all shards (--apply total): its shards take no \
         snapshots of their own, so it cannot be backed up shard by shard"
    )]
    ApplyTotal,
    /// The node does not report its session limits (a node older than this client).
    #[error(
        "{address} does not report its session limits (an older node): the backup cannot \
         apply the log as the cluster does"
    )]
    NoSessionLimits {
        /// The member asked.
        address: String,
    },
    /// A shard's snapshot does not restore.
    #[error("shard {shard}'s snapshot: {error}")]
    Snapshot {
        /// The shard.
        shard: u16,
        /// Why.
        error: SnapshotError,
    },
    /// A shard's log, as the node sent it, cannot be applied.
    #[error("shard {shard}'s log: {reason}")]
    Log {
        /// The shard.
        shard: u16,
        /// Why.
        reason: String,
    },
    /// A file could not be written.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS's error.
        source: std::io::Error,
    },
    /// The shards kept releasing their logs behind new snapshots while the backup read them.
    #[error(
        "the shards released their logs behind newer snapshots while the backup read them, \
         {0} times: try again (a larger --snapshot-every-mib makes it rarer)"
    )]
    Moving(u32),
}

/// What stopped one attempt.
enum Stop {
    /// A shard's log before this slot is released (a newer snapshot): try again.
    Moved,
    Failed(BackupSaveError),
}

impl<E: Into<BackupSaveError>> From<E> for Stop {
    fn from(error: E) -> Stop {
        Stop::Failed(error.into())
    }
}

/// Files removed when dropped unless kept: nothing half-written is left behind.
struct Scratch(Vec<PathBuf>);

impl Drop for Scratch {
    fn drop(&mut self) {
        for path in &self.0 {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> BackupSaveError + 'a {
    move |source| BackupSaveError::Io { op, path: path.to_path_buf(), source }
}

/// Saves a backup of the cluster reached through `seeds` to `path` (first as
/// `{path}.partial`, renamed once whole and synced): every shard's state at one merged-order
/// position the cluster has committed, as the state machines `make(shard)` makes (the
/// cluster's own kind: its snapshots are restored into them, and its log applied to them).
/// Writes may go on meanwhile.
///
/// # Errors
/// See [`BackupSaveError`]; nothing is left at `path` or beside it.
pub fn save_backup<S: StateMachine>(
    seeds: &[String],
    options: &ClientOptions,
    path: &Path,
    make: impl Fn(u16) -> S,
) -> Result<SavedBackup, BackupSaveError> {
    let (address, cluster_id) = first_answering(seeds, options)?;
    for _ in 0..ATTEMPTS_MAX {
        match attempt(&address, cluster_id, options, path, &make) {
            Ok(saved) => return Ok(saved),
            Err(Stop::Moved) => continue,
            Err(Stop::Failed(error)) => return Err(error),
        }
    }
    Err(BackupSaveError::Moving(ATTEMPTS_MAX))
}

/// The first seed that answers, and the cluster it answers for.
fn first_answering(
    seeds: &[String],
    options: &ClientOptions,
) -> Result<(String, ClusterId), ClientError> {
    let mut last_error = ClientError::Disconnected("no address given".into());
    for seed in seeds {
        match handshake(options, random_client_id(), seed, 0) {
            Ok(answer) => return Ok((seed.clone(), answer.cluster_id)),
            Err(error @ ClientError::Refused(_)) => return Err(error),
            Err(error) => last_error = error,
        }
    }
    Err(last_error)
}

/// The node's shard statuses, checked for what a backup needs.
fn backup_statuses(
    address: &str,
    options: &ClientOptions,
) -> Result<(Vec<ShardStatus>, SessionLimits), BackupSaveError> {
    let statuses = node_status_with(address, options, false)?;
    let first = statuses.first().ok_or_else(|| ClientError::BadReply("no shard".into()))?;
    if statuses.iter().any(|status| status.apply_total) {
        return Err(BackupSaveError::ApplyTotal);
    }
    let limits = first
        .session_limits
        .ok_or_else(|| BackupSaveError::NoSessionLimits { address: address.to_string() })?;
    Ok((statuses, limits))
}

fn attempt<S: StateMachine>(
    address: &str,
    cluster_id: ClusterId,
    options: &ClientOptions,
    path: &Path,
    make: &impl Fn(u16) -> S,
) -> Result<SavedBackup, Stop> {
    let (statuses, limits) = backup_statuses(address, options)?;
    let shards = statuses.len() as u16;
    let mut scratch = Scratch(Vec::new());
    // Each shard's newest snapshot, to a file beside the output.
    let mut snapshots = Vec::new();
    for shard in 0..shards {
        let file = with_suffix(path, &format!(".shard-{shard}.partial"));
        scratch.0.push(file.clone());
        let fetched = fetch_snapshot(address, options, shard, &file)?;
        snapshots.push(fetched.map(|fetched| (fetched.header.slot, file)));
    }
    let position = choose_position(address, options, &snapshots)?;
    let partial = with_suffix(path, ".partial");
    scratch.0.push(partial.clone());
    let mut out = std::fs::File::create(&partial).map_err(io("create", &partial))?;
    out.write_all(&vec![0; BackupHeader::encoded_bytes(shards)]).map_err(io("write", &partial))?;
    let mut offset = BackupHeader::encoded_bytes(shards) as u64;
    let mut sections = Vec::new();
    for (shard, snapshot) in (0..shards).zip(&snapshots) {
        let (from, mut applier) = match snapshot {
            Some((slot, file)) => (*slot, restore(file, (cluster_id, shard), limits)?),
            None => (Slot(0), Applier::new(make(shard), limits)),
        };
        let to = slot_for_position(position, shards, shard);
        replay(address, options, (shard, shards), from, to, &mut applier)?;
        let header = SnapshotHeader { cluster_id, shard, slot: to };
        let (head, bytes) = write_snapshot(header, &mut out, |body| applier.snapshot(body))
            .map_err(io("write", &partial))?;
        out.write_all_at(&head, offset).map_err(io("write", &partial))?;
        offset += bytes;
        let summary = applier.machine().summary();
        let (entries, digest) = (summary.entries, summary.digest);
        sections.push(BackupSection { slot: to, snapshot_bytes: bytes, entries, digest });
    }
    let created_unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64);
    let header = BackupHeader { cluster_id, position, created_unix_ms, sections };
    out.write_all_at(&header.encode(), 0).map_err(io("write", &partial))?;
    out.sync_all().map_err(io("sync", &partial))?;
    std::fs::rename(&partial, path).map_err(io("rename", &partial))?;
    if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        std::fs::File::open(dir).and_then(|dir| dir.sync_all()).map_err(io("sync", dir))?;
    }
    Ok(SavedBackup { header, bytes: offset, source: address.to_string() })
}

/// The merged position of the backup: every shard committed below it (the lowest of
/// `commit_k · S + k`), and no shard's snapshot past it (at least `slot_k · S + k`), waiting
/// for the shards to commit that far if a snapshot is ahead of another shard's commit (an idle
/// shard's leader skips forward within a few ticks).
fn choose_position(
    address: &str,
    options: &ClientOptions,
    snapshots: &[Option<(Slot, PathBuf)>],
) -> Result<u64, BackupSaveError> {
    let shards = snapshots.len() as u64;
    let floor = (0..shards)
        .zip(snapshots)
        .filter_map(|(shard, snapshot)| snapshot.as_ref().map(|(slot, _)| slot.0 * shards + shard))
        .max()
        .unwrap_or(0);
    let deadline = std::time::Instant::now() + options.request_timeout;
    loop {
        let (statuses, _) = backup_statuses(address, options)?;
        let committed = (0..shards)
            .zip(&statuses)
            .map(|(shard, status)| status.commit_index.0.saturating_mul(shards) + shard)
            .min()
            .unwrap_or(0);
        if committed >= floor || std::time::Instant::now() >= deadline {
            // Past the deadline, the replay waits for the commits itself (and times out).
            return Ok(committed.max(floor));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn restore<S: StateMachine>(
    file: &Path,
    owner: (ClusterId, u16),
    limits: SessionLimits,
) -> Result<Applier<S>, BackupSaveError> {
    let mut input = std::fs::File::open(file).map_err(io("open", file))?;
    let restored = read_snapshot(&mut input, owner, |body| Applier::restore(body, limits));
    let (_, _, applier) =
        restored.map_err(|error| BackupSaveError::Snapshot { shard: owner.1, error })?;
    Ok(applier)
}

/// Applies `shard`'s committed batches of slots `from..to` to `applier`, as the node's log
/// holds them (a subscription from `from`, read until it passes `to`), at the merged-order
/// positions of a node with `shards` shards.
fn replay<S: StateMachine>(
    address: &str,
    options: &ClientOptions,
    (shard, shards): (u16, u16),
    from: Slot,
    to: Slot,
    applier: &mut Applier<S>,
) -> Result<(), Stop> {
    if from >= to {
        return Ok(());
    }
    let mut stream = handshake(options, random_client_id(), address, shard)?.stream;
    let disconnected =
        |error: &dyn std::fmt::Display| ClientError::Disconnected(format!("{address}: {error}"));
    stream.set_read_timeout(Some(options.request_timeout)).map_err(|e| disconnected(&e))?;
    let subscribe = Frame {
        cluster_id: options.cluster_id,
        from: NodeId(0),
        shard,
        body: Body::Peer(Message::Subscribe { from_slot: from }),
    };
    write_frame(&mut stream, &mut Encoder::default(), &subscribe).map_err(|e| disconnected(&e))?;
    let log = |reason: String| Stop::Failed(BackupSaveError::Log { shard, reason });
    let mut next = from;
    while next < to {
        let frame = read_frame(&mut stream, FRAME_BYTES_MAX).map_err(|e| disconnected(&e))?;
        let runs = match frame.body {
            Body::Peer(Message::Chosen { runs, .. }) => runs,
            // The log before `from` went behind a newer snapshot since it was fetched.
            Body::Peer(Message::Snapshot { .. }) => return Err(Stop::Moved),
            other => return Err(log(format!("a {} frame in a subscription", other.kind()))),
        };
        for run in runs {
            if run.first_slot > next {
                return Err(log(format!("slots {}..{} missing", next.0, run.first_slot.0)));
            }
            if run.end_slot() <= next || run.first_slot >= to {
                next = next.max(run.end_slot());
                continue;
            }
            if let Value::Batch(batch) = &run.value {
                if run.count != 1 {
                    return Err(log(format!("a batch over {} slots", run.count)));
                }
                let position = run.first_slot.0 * u64::from(shards) + u64::from(shard);
                applier
                    .apply_batch(run.first_slot, position, batch, |_, _| {})
                    .map_err(|error| log(format!("slot {}: {error}", run.first_slot.0)))?;
            }
            next = run.end_slot();
        }
    }
    Ok(())
}
