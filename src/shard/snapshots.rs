//! A shard's snapshots: taking its own (the image streamed into its file on the shard's
//! thread, made durable on a helper), serving pieces of the durable one, and installing a
//! peer's (each piece appended to a file as it comes, the whole checked and restored from the
//! file, then made durable on the helper). No snapshot is ever held in memory whole, so a
//! state of many GiB costs a piece's worth of memory (docs/snapshots.md, "Streams").

use bytes::Bytes;
use quorum_wal::{Backend, FileSink};

use crate::core::{ClusterId, Config, Message, NodeId, Slot};
use crate::machine::{Applier, SessionLimits, StateMachine};
use crate::storage::snapshot::{
    Assembled, Assembly, FILE_NAME, HEADER_BYTES, Piece, SnapshotError, SnapshotHeader,
    read_snapshot, write_snapshot,
};

use super::{Hooks, Shard, ShardError};

/// Images at least this large are a pause worth spreading (tens of milliseconds): members
/// take them out of phase.
const PHASED_IMAGE_BYTES: u64 = 16 << 20;

/// This member's rank (voters in order, then learners) and the number of members; rank 0 if
/// it is not listed.
pub(super) fn member_rank(config: &Config) -> (u64, u64) {
    let members = config.voters.iter().chain(&config.learners);
    let rank = members.clone().position(|member| *member == config.node).unwrap_or(0);
    (rank as u64, members.count().max(1) as u64)
}

/// A snapshot being written: its file streamed on the shard's thread, to be made durable off
/// it ([`PendingSnapshot::run`]); hand the outcome to [`Shard::finish_snapshot`].
pub struct PendingSnapshot<B: Backend> {
    /// The file, whole but not yet durable, or what stopped its writing.
    file: quorum_wal::Result<B::FileSink>,
    header: SnapshotHeader,
    bytes: u64,
    /// How long streaming the image took (on the shard's thread: a pause in its service).
    image_time: std::time::Duration,
    /// A peer's snapshot being installed, not one taken here.
    install: bool,
}

/// The outcome of [`PendingSnapshot::run`].
pub struct SnapshotWritten {
    header: SnapshotHeader,
    bytes: u64,
    result: quorum_wal::Result<()>,
}

impl<B: Backend> PendingSnapshot<B> {
    /// The snapshot's slot.
    #[must_use]
    pub fn slot(&self) -> Slot {
        self.header.slot
    }

    /// True if this is a peer's snapshot being installed, not one taken here.
    #[must_use]
    pub fn is_install(&self) -> bool {
        self.install
    }

    /// How long streaming its image took, on the shard's thread.
    #[must_use]
    pub fn image_time(&self) -> std::time::Duration {
        self.image_time
    }

    /// Makes the snapshot file durable and puts it in place (written back a few MiB at a
    /// time, fsync, rename, directory fsync). Blocks: run it on a helper thread.
    #[must_use]
    pub fn run(self) -> SnapshotWritten {
        let result = self.file.and_then(FileSink::finish);
        SnapshotWritten { header: self.header, bytes: self.bytes, result }
    }
}

/// Streams a snapshot under `header` into a new file that will replace the one beside the
/// log: `write_body` writes the applier's image, the header is completed at the end.
fn stream_snapshot<B: Backend>(
    backend: &B,
    header: SnapshotHeader,
    write_body: impl FnOnce(&mut dyn std::io::Write) -> std::io::Result<()>,
) -> quorum_wal::Result<(B::FileSink, u64)> {
    let mut file = backend.create_file(FILE_NAME)?;
    let written = write_snapshot(header, &mut file, write_body)
        .and_then(|(head, total)| file.write_at(0, &head).map(|()| total));
    match written {
        Ok(total) => Ok((file, total)),
        Err(source) => Err(file.failure().unwrap_or(quorum_wal::Error::Io {
            op: "write the snapshot's image",
            path: FILE_NAME.into(),
            source,
        })),
    }
}

/// A snapshot beside the log: its header and size.
pub(super) type Current = (SnapshotHeader, u64);

/// The slot a machine that persists itself holds ([`StateMachine::persisted_slot`]), if it
/// holds the snapshot's (`snapshot_at`) or later: it is then kept, and only the session table
/// comes from the snapshot.
pub(super) fn persisted_past<S: StateMachine>(
    machine: &S,
    snapshot_at: Option<Slot>,
    shard: u16,
) -> Option<Slot> {
    let held = if S::PERSISTS { machine.persisted_slot()? } else { return None };
    if snapshot_at.is_some_and(|at| at > held) {
        return None;
    }
    tracing::info!(
        shard,
        slot = held.0,
        "the state machine persists itself and holds the batches up to this slot: only the \
         session table comes from the snapshot, and only later batches are applied"
    );
    Some(held)
}

/// The applier a shard opens with, and the snapshot beside the log (header and size) if there
/// is one, read in one pass and checked as `owner`'s: the snapshot's machine, or with `keep`
/// `machine` and only the snapshot's session table.
///
/// # Errors
/// The file cannot be read, or is damaged or another shard's.
pub(super) fn open_applier<B: Backend, S: StateMachine>(
    backend: &B,
    owner: (ClusterId, u16),
    sessions: SessionLimits,
    machine: S,
    keep: bool,
) -> Result<(Applier<S>, Option<Current>), super::ShardError> {
    let Some(mut file) = backend.open_file(FILE_NAME)? else {
        return Ok((Applier::new(machine, sessions), None));
    };
    let (header, bytes, applier) = read_snapshot(&mut file, owner, |body| {
        if keep {
            Applier::restore_sessions(body, sessions, machine)
        } else {
            Applier::restore(body, sessions)
        }
    })?;
    Ok((applier, Some((header, bytes))))
}

/// The slot of the snapshot beside the log, from its header, if there is one of a known
/// version.
pub(super) fn snapshot_slot<B: Backend>(backend: &B) -> Result<Option<Slot>, super::ShardError> {
    let range = backend.read_file_range(FILE_NAME, HEADER_BYTES, 0, 0)?;
    Ok(range.and_then(|range| crate::storage::snapshot::slot_in_header(&range.head)))
}

/// [`Journal::snapshot_piece`], from the snapshot file in `backend`'s directory.
pub(super) fn read_snapshot_piece<B: Backend>(
    backend: &B,
    slot: Option<Slot>,
    offset: u64,
    piece_bytes: usize,
    commit_index: Slot,
) -> Result<Option<Message>, ShardError> {
    let Some(range) = backend.read_file_range(FILE_NAME, HEADER_BYTES, offset, piece_bytes)? else {
        return Ok(None);
    };
    let Some(held) = crate::storage::snapshot::slot_in_header(&range.head) else {
        return Ok(None); // Damaged: a restart would refuse it too.
    };
    if slot.is_some_and(|slot| slot != held) || offset >= range.total {
        return Ok(None); // Replaced by a newer one: the reader asks again from 0.
    }
    let bytes = Bytes::from(range.bytes);
    Ok(Some(Message::Snapshot { slot: held, offset, total: range.total, bytes, commit_index }))
}

/// Reads pieces of a shard's snapshot file without the shard: a runtime can answer pulls on
/// a helper thread (a piece is up to 32 MiB read from disk). It reads the file, so a newer
/// snapshot replacing it meanwhile is never mixed in (one opening per piece).
pub struct SnapshotReader<B: Backend> {
    backend: B,
    piece_bytes: usize,
    commit_index: Slot,
}

impl<B: Backend> SnapshotReader<B> {
    /// The piece of the snapshot at `slot` (any, with `None`) from `offset` on, if there is
    /// such a snapshot (see [`Journal::snapshot_piece`]).
    ///
    /// # Errors
    /// The file cannot be read.
    pub fn piece(&self, slot: Option<Slot>, offset: u64) -> Result<Option<Message>, ShardError> {
        read_snapshot_piece(&self.backend, slot, offset, self.piece_bytes, self.commit_index)
    }

    /// The piece a client fetching the snapshot pulled: of the snapshot at `slot` if it is
    /// still the one here, else the first piece of the one here, else an empty piece of
    /// total 0.
    ///
    /// # Errors
    /// The file cannot be read.
    pub fn piece_for_client(&self, slot: Slot, offset: u64) -> Result<Message, ShardError> {
        let asked = (slot != Slot(0)).then(|| self.piece(Some(slot), offset));
        Ok(match asked.transpose()?.flatten() {
            Some(piece) => piece,
            None => self.piece(None, 0)?.unwrap_or(Message::Snapshot {
                slot: Slot(0),
                offset: 0,
                total: 0,
                bytes: Bytes::new(),
                commit_index: self.commit_index,
            }),
        })
    }
}

/// A peer's snapshot being installed: checked and restored, its file being written durably
/// (by the same helper as the shard's own snapshots) before the shard goes on from it.
pub(super) struct Installing<S: StateMachine, F> {
    pub(super) applier: Applier<S>,
    pub(super) header: SnapshotHeader,
    pub(super) bytes: u64,
    /// The sender's commit position, for the core.
    pub(super) commit_index: Slot,
    /// The file the pieces were written to, until its finish is handed out by
    /// [`Shard::start_snapshot`].
    pub(super) file: Option<F>,
}

/// Snapshot bookkeeping of a shard; `F` the files its backend writes.
#[derive(Debug)]
pub(super) struct Snapshots<F> {
    /// The newest durable snapshot's header and size. Its bytes stay in its file (read back
    /// for a reader below the log's floor): an image may be large.
    pub(super) current: Option<(SnapshotHeader, u64)>,
    pub(super) writing: bool,
    /// The WAL's end when the last snapshot was started.
    pub(super) taken_at_position: u64,
    /// This member's rank among the members and their number, until its phase is taken: once
    /// an image is large enough to be a pause worth spreading, one interval is lengthened by
    /// `rank/members` of itself, putting members out of phase (see [`Shard::start_snapshot`]).
    pub(super) phase: Option<(u64, u64)>,
    pub(super) taken: u64,
    pub(super) installed: u64,
    pub(super) refused: u64,
    /// Why the last peer's snapshot refused was.
    pub(super) last_refusal: Option<SnapshotError>,
    pub(super) released_bytes: u64,
    /// A peer's snapshot arriving in pieces, written to a file as they come.
    pub(super) arriving: Assembly<F>,
}

impl<F: std::io::Write> Snapshots<F> {
    /// No snapshot yet, of the shard `owner` (cluster, shard).
    pub(super) fn new(owner: (ClusterId, u16)) -> Snapshots<F> {
        Snapshots {
            current: None,
            writing: false,
            taken_at_position: 0,
            phase: None,
            taken: 0,
            installed: 0,
            refused: 0,
            last_refusal: None,
            released_bytes: 0,
            arriving: Assembly::new(owner),
        }
    }
}

/// What a shard did with snapshots since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SnapshotStats {
    /// Snapshots taken and made durable here.
    pub taken: u64,
    /// Snapshots received from peers and installed.
    pub installed: u64,
    /// Snapshots received from peers and refused: damaged, cut short, foreign, or not
    /// restorable (the old state kept).
    pub refused: u64,
    /// WAL bytes released behind snapshots.
    pub released_bytes: u64,
    /// The newest snapshot's slot and size.
    pub current: Option<(Slot, u64)>,
}

impl<B: Backend, S: StateMachine, H: Hooks> Shard<B, S, H> {
    /// The first piece of the newest durable snapshot, if there is one (a tail below the
    /// floor learns from it where the log resumes).
    ///
    /// # Errors
    /// The file cannot be read.
    pub fn snapshot_first_piece(&self) -> Result<Option<Message>, ShardError> {
        if self.snapshots.current.is_none() {
            return Ok(None);
        }
        self.snapshot_piece(None, 0)
    }

    /// [`Journal::snapshot_piece`] in this shard's piece size, at its commit position.
    pub(super) fn snapshot_piece(
        &self,
        slot: Option<Slot>,
        offset: u64,
    ) -> Result<Option<Message>, ShardError> {
        let (piece_bytes, commit) =
            (self.settings.snapshot_piece_bytes, self.replica.commit_index());
        self.journal.snapshot_piece(slot, offset, piece_bytes, commit)
    }

    /// The piece a client fetching the snapshot pulled (see
    /// `runtime::Host::answer_snapshot_pull`): of the snapshot at `slot` if it is still the
    /// one here, else the first piece of the one here, else an empty piece of total 0.
    ///
    /// # Errors
    /// The file cannot be read.
    pub fn snapshot_piece_for_client(
        &self,
        slot: Slot,
        offset: u64,
    ) -> Result<Message, ShardError> {
        self.snapshot_reader().piece_for_client(slot, offset)
    }

    /// A reader of this shard's snapshot file in its piece size, at its commit position, for
    /// a helper thread.
    #[must_use]
    pub fn snapshot_reader(&self) -> SnapshotReader<B> {
        SnapshotReader {
            backend: self.journal.wal().backend().clone(),
            piece_bytes: self.settings.snapshot_piece_bytes,
            commit_index: self.replica.commit_index(),
        }
    }

    /// What this shard did with snapshots.
    #[must_use]
    pub fn snapshot_stats(&self) -> SnapshotStats {
        SnapshotStats {
            taken: self.snapshots.taken,
            installed: self.snapshots.installed,
            refused: self.snapshots.refused,
            released_bytes: self.snapshots.released_bytes,
            current: self.snapshots.current.map(|(header, bytes)| (header.slot, bytes)),
        }
    }

    /// Why the last peer's snapshot this shard refused was refused (damaged, cut short,
    /// foreign, or an image that does not restore), if it refused one.
    #[must_use]
    pub fn snapshot_refusal(&self) -> Option<&SnapshotError> {
        self.snapshots.last_refusal.as_ref()
    }

    /// Starts a snapshot if one is due (`snapshot_every_bytes` of WAL since the last, and at
    /// least four times the last snapshot's size; the first one later by the member's phase)
    /// and none is being written: the applied state's image is taken now, on this thread; run
    /// the returned write on a helper thread, then hand its outcome to
    /// [`Shard::finish_snapshot`].
    ///
    /// Every member writes the same log, so all snapshot at about the same time; with a large
    /// state, while two followers of three build their images (a pause of their service) no
    /// majority acknowledges. Once an image reaches `PHASED_IMAGE_BYTES`, member `k` of `n`
    /// waits `k/n` of an interval more for its next one; later ones come an interval apart
    /// on every member, so the phases stay. (Small images are left in step: spreading their
    /// short pauses cost 4 KiB writes 6–25 % of their throughput, BENCHMARKS.md.)
    ///
    /// A peer's snapshot being installed comes first: its write is returned the same way
    /// (with no image time), as soon as no write of ours is under way.
    pub fn start_snapshot(&mut self) -> Option<PendingSnapshot<B>> {
        if self.snapshots.writing {
            return None;
        }
        if let Some(installing) = &mut self.installing {
            let file = Ok(installing.file.take()?);
            self.snapshots.writing = true;
            let (header, bytes) = (installing.header, installing.bytes);
            let image_time = std::time::Duration::ZERO;
            return Some(PendingSnapshot { file, header, bytes, image_time, install: true });
        }
        let every = self.settings.snapshot_every_bytes;
        let end = self.journal.wal().end_position();
        // A snapshot costs about its own size (the image is built on this thread): at least
        // four times that much log goes by between two, however small `every` is.
        let last_bytes = self.snapshots.current.map_or(0, |(_, bytes)| bytes);
        let due = every.max(4 * last_bytes);
        let phase = match self.snapshots.phase {
            Some((rank, members)) if last_bytes >= PHASED_IMAGE_BYTES => due / members * rank,
            _ => 0,
        };
        if every == 0
            || self.snapshots.writing
            || self.committer.forwarded.is_some()
            || end - self.snapshots.taken_at_position < due + phase
        {
            return None;
        }
        if last_bytes >= PHASED_IMAGE_BYTES {
            self.snapshots.phase = None;
        }
        Some(self.take_snapshot())
    }

    /// Takes a snapshot now, due or not (see [`Shard::start_snapshot`]).
    ///
    /// # Panics
    /// Committed runs are forwarded ([`ApplyTo::Forward`]): the state is not here.
    pub fn take_snapshot(&mut self) -> PendingSnapshot<B> {
        assert!(self.committer.forwarded.is_none(), "a forwarding shard holds no state");
        let header = SnapshotHeader {
            cluster_id: self.replica.config().cluster_id,
            shard: self.settings.shard,
            slot: self.replica.commit_index(),
        };
        let started = std::time::Instant::now();
        // A machine that persists itself holds what this snapshot covers durably before the
        // snapshot lets the log below it go (a restart may start from the machine).
        let synced = self.committer.applier.machine_mut().sync().map_err(|source| {
            quorum_wal::Error::Io { op: "sync the state machine", path: FILE_NAME.into(), source }
        });
        let applier = &self.committer.applier;
        let streamed = synced.and_then(|()| {
            stream_snapshot(self.journal.wal().backend(), header, |out| applier.snapshot(out))
        });
        let image_time = started.elapsed();
        self.snapshots.writing = true;
        self.snapshots.taken_at_position = self.journal.wal().end_position();
        let bytes = streamed.as_ref().map_or(0, |(_, bytes)| *bytes);
        let file = streamed.map(|(file, _)| file);
        PendingSnapshot { file, header, bytes, image_time, install: false }
    }

    /// A snapshot's write finished: it becomes the one readers below the floor are sent, and
    /// the WAL drops the segments it covers (whatever its size: readers stream it too).
    ///
    /// # Errors
    /// The write failed, or the WAL failed to release. The shard is then failed: a
    /// snapshot that may be half-written is never built upon.
    pub fn finish_snapshot(&mut self, written: SnapshotWritten) -> Result<(), ShardError> {
        self.snapshots.writing = false;
        if self.installing.as_ref().is_some_and(|installing| installing.file.is_none()) {
            return self.finish_install(written);
        }
        if let Err(quorum_wal::Error::NoSpace { path }) = &written.result {
            // A full disk refused the file before anything was synced or renamed: the last
            // snapshot stands and nothing is lost. The next one is due a whole interval on.
            tracing::warn!(shard = self.settings.shard, path = %path.display(), "snapshot not written: out of disk space");
            return Ok(());
        }
        let shard = self.settings.shard;
        if let Err(error) = &written.result {
            tracing::error!(shard, slot = written.header.slot.0, %error, "snapshot write failed");
        }
        written.result?;
        let slot = written.header.slot;
        if self.snapshots.current.is_some_and(|(current, _)| current.slot > slot) {
            return Ok(()); // One installed meanwhile is newer (and durable).
        }
        self.snapshots.current = Some((written.header, written.bytes));
        self.snapshots.taken += 1;
        let (promised, base) = (self.replica.promised(), self.replica.log().base());
        let released_bytes = self.journal.release_below(slot, base, promised)?;
        self.snapshots.released_bytes += released_bytes;
        let bytes = written.bytes;
        tracing::info!(shard, slot = slot.0, bytes, released_bytes, "snapshot taken");
        Ok(())
    }

    /// A piece of a peer's snapshot (put together, then installed, pulling each next piece),
    /// or a peer's pull of the next piece of this one.
    pub(super) fn on_snapshot_message(
        &mut self,
        from: NodeId,
        message: Message,
    ) -> Result<(), ShardError> {
        match message {
            Message::Snapshot { slot, offset, total, bytes, commit_index } => {
                if self.committer.forwarded.is_some() {
                    return Ok(()); // Never released with forwarding (see `install`).
                }
                let backend = self.journal.wal().backend();
                let open = || backend.create_file(FILE_NAME).map_err(std::io::Error::other);
                let commit = self.replica.commit_index();
                match self.snapshots.arriving.receive(commit, slot, offset, total, &bytes, open) {
                    Ok(Piece::Whole(assembled)) => self.install(from, assembled, commit_index),
                    Ok(Piece::Pull(slot, offset)) => {
                        self.replica.on_snapshot_piece();
                        self.outbox.push((from, Message::SnapshotPull { slot, offset }));
                    }
                    Ok(Piece::Ignored) => {}
                    Ok(Piece::Refused(error)) => self.refused(from, slot, &error),
                    Err(error) => {
                        // A full disk, say: dropped; the reader asks again at its next
                        // catch-up.
                        let shard = self.settings.shard;
                        tracing::warn!(shard, slot = slot.0, %error, "a peer's snapshot could not be written");
                    }
                }
            }
            Message::SnapshotPull { slot, offset } => {
                if let Some(piece) = self.snapshot_piece(Some(slot), offset)? {
                    self.outbox.push((from, piece));
                }
            }
            _ => unreachable!("only snapshot messages come here"),
        }
        Ok(())
    }

    /// A peer's snapshot refused: the old state stands, and the reader asks again at its
    /// next catch-up.
    fn refused(&mut self, from: NodeId, slot: Slot, error: &SnapshotError) {
        self.snapshots.refused += 1;
        self.snapshots.last_refusal = Some(error.clone());
        let shard = self.settings.shard;
        tracing::warn!(shard, from = from.0, slot = slot.0, %error, "a peer's snapshot refused");
    }

    /// A peer's snapshot, whole and its checksum checked: restored here from its file (read
    /// back in one pass, checked again on the way), then written durably by the helper that
    /// writes the shard's own ([`Shard::start_snapshot`]), and only then do the state machine
    /// and the replica go on from it ([`Shard::finish_snapshot`]); the shard serves on from
    /// its old state meanwhile. Nothing changes if it is refused, not ahead of this replica,
    /// or another is being installed (its file is then dropped).
    fn install(&mut self, from: NodeId, assembled: Assembled<B::FileSink>, commit_index: Slot) {
        if self.committer.forwarded.is_some() || self.installing.is_some() {
            // Never released with forwarding (a confused peer); or one is under way, and the
            // reader asks again from its next catch-up.
            return;
        }
        let Assembled { header, bytes, out: mut file } = assembled;
        if header.slot <= self.replica.commit_index() {
            return;
        }
        let owner = (self.replica.config().cluster_id, self.settings.shard);
        let sessions = self.settings.sessions;
        let restored =
            file.read_back().map_err(|error| SnapshotError::Unreadable(error.to_string()));
        let restored = restored.and_then(|mut reader| {
            read_snapshot(&mut reader, owner, |body| Applier::<S>::restore(body, sessions))
        });
        match restored {
            Ok((_, _, applier)) => {
                let file = Some(file);
                self.installing = Some(Installing { applier, header, bytes, commit_index, file });
            }
            Err(error) => self.refused(from, header.slot, &error),
        }
    }

    /// A peer's snapshot is durable next to the log: the state machine and the replica go on
    /// from it (unless the replica got past its slot meanwhile: the file is then simply the
    /// newest snapshot).
    ///
    /// # Errors
    /// The write failed (the shard is then failed, as for its own snapshots).
    fn finish_install(&mut self, written: SnapshotWritten) -> Result<(), ShardError> {
        let installing = self.installing.take().expect("an install was being written");
        let (shard, slot) = (self.settings.shard, installing.header.slot);
        if let Err(error) = &written.result {
            tracing::error!(shard, slot = slot.0, %error, "a peer's snapshot could not be made durable");
        }
        written.result?;
        tracing::info!(
            shard,
            slot = slot.0,
            bytes = installing.bytes,
            "snapshot from a peer installed"
        );
        self.journal.installed(slot);
        self.snapshots.current = Some((installing.header, installing.bytes));
        if slot <= self.replica.commit_index() {
            return Ok(());
        }
        self.committer.applier = installing.applier;
        // The machine is the snapshot's now: every later batch is applied to it.
        self.committer.persisted = None;
        self.snapshots.installed += 1;
        self.hooks.installed(slot);
        self.replica.install_snapshot(slot, installing.commit_index);
        self.process_actions()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::ClusterId;

    #[test]
    fn members_are_ranked_voters_first() {
        let voters = vec![NodeId(1), NodeId(2), NodeId(3)];
        let config = |node: u16| Config {
            learners: vec![NodeId(4)],
            ..Config::new(ClusterId(1), NodeId(node), voters.clone())
        };
        let ranks: Vec<(u64, u64)> = (1..=4).map(|node| member_rank(&config(node))).collect();
        assert_eq!(ranks, [(0, 4), (1, 4), (2, 4), (3, 4)]);
        assert_eq!(member_rank(&config(9)), (0, 4), "not a member: no phase");
    }
}
