//! Damaged files on real `quorum node` processes under load (issue #21, point 5): a voter is
//! killed, its files are damaged as disks damage them, and it is started again on them, while
//! writers go on against the other two. Each time the damaged voter must notice, start (never
//! refuse to), repair from its peers before it votes (protocol.md §3.9), and catch up; then one
//! of the two healthy voters is killed, so the damaged one is needed for every commit and read
//! after it, and every acknowledged write is read back.
//!
//! The damage, one kind per round: a byte flipped inside a synced record with valid records
//! after it, a byte flipped in a segment's header, a zeroed 4 KiB page in the middle of a
//! segment, an emptied data directory, and (with snapshots on) a byte flipped in the snapshot
//! file. tests/repair.rs runs the sharpest case in one process (the damaged replica the only
//! live holder of the newest writes); this file runs the whole node.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests may unwrap.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{Cluster, Writers, assert_none_lost};

const NODES: usize = 3;
const WRITERS: usize = 6;

/// The nodes on this machine's two cores: one scenario at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// What a round does to the killed voter's shard directory.
type Damage = fn(&Path) -> String;

/// The WAL segments of a shard directory, oldest first.
fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut segments: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "wal"))
        .collect();
    segments.sort();
    segments
}

fn edit_file(path: &Path, edit: impl FnOnce(&mut Vec<u8>)) {
    let mut bytes = std::fs::read(path).unwrap();
    edit(&mut bytes);
    std::fs::write(path, bytes).unwrap();
}

/// Segment headers take the first 4 KiB (docs/wal-format.md); records follow.
const HEADER_BYTES: usize = 4096;

fn flip_a_record_byte(dir: &Path) -> String {
    let segment = segments(dir).remove(0);
    // Inside the first record: the segment's later records stay valid.
    edit_file(&segment, |bytes| bytes[HEADER_BYTES + 20] ^= 0x10);
    format!("a byte flipped in the first record of {}", segment.display())
}

fn flip_a_header_byte(dir: &Path) -> String {
    let segment = segments(dir).remove(0);
    edit_file(&segment, |bytes| bytes[8] ^= 0x01);
    format!("a byte flipped in the header of {}", segment.display())
}

fn zero_a_page(dir: &Path) -> String {
    let segment = segments(dir).remove(0);
    edit_file(&segment, |bytes| bytes[4 * 4096..5 * 4096].fill(0));
    format!("bytes 16384..20480 of {} zeroed", segment.display())
}

fn empty_the_directory(dir: &Path) -> String {
    let mut removed = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        std::fs::remove_file(entry.unwrap().path()).unwrap();
        removed += 1;
    }
    format!("the directory emptied ({removed} files)")
}

fn flip_a_snapshot_byte(dir: &Path) -> String {
    let snapshot = dir.join("snapshot");
    assert!(snapshot.exists(), "no snapshot was written in {}", dir.display());
    let len = std::fs::metadata(&snapshot).unwrap().len() as usize;
    edit_file(&snapshot, |bytes| bytes[len / 2] ^= 0x04);
    format!("a byte flipped mid-file in {} ({len} bytes)", snapshot.display())
}

/// What a log line of the damaged voter must say: it knows its log may lack what it
/// acknowledged, and repairs before it votes.
const REPAIRING: &str = "will not vote until every other voter has said what it holds";

/// Runs `rounds` (what, the damage, a phrase the damaged node must log) on one cluster started with `args`: each round kills a voter, damages it,
/// restarts it, waits for it to repair and catch up, then stops a healthy voter and checks the
/// cluster (the damaged voter now in every majority) still serves; the healthy voter returns.
fn run(args: &[&str], rounds: &[(&str, Damage, &str)]) {
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let data_dirs = (1..=NODES).map(|id| dir.path().join(format!("data-{id}"))).collect();
    let mut cluster = Cluster::start(81, data_dirs, dir.path(), args);
    cluster.await_serving(Duration::from_secs(30));
    let writers = Writers::start(&cluster, WRITERS);
    // Enough writes that segments fill (1 MiB each) and, with snapshots on, one is taken.
    writers.await_acked(6000, Duration::from_secs(60), "before the first fault");
    for (round, (what, damage, noticed)) in rounds.iter().enumerate() {
        let leader = cluster.await_leader(Duration::from_secs(10));
        // A follower, then the leader, in turn.
        let victim = if round % 2 == 0 { (leader + 1) % NODES } else { leader };
        let shard_dir = cluster.nodes[victim].data_dir.join("shard-0");
        cluster.kill(victim);
        let done = damage(&shard_dir);
        let before = cluster.log_text(victim).len();
        cluster.spawn(victim);
        writers.await_acked(300, Duration::from_secs(30), "with the damaged voter restarting");
        let line = await_new_line(&cluster, victim, before, REPAIRING, Duration::from_secs(20));
        // It says what it found.
        await_new_line(&cluster, victim, before, noticed, Duration::ZERO);
        let leader = cluster.await_leader(Duration::from_secs(10));
        cluster.await_caught_up(victim, leader, Duration::from_secs(60));
        cluster.assert_none_exited(what);
        println!("{what}: node {} ({done}) restarted, repaired, caught up: {line}", victim + 1);
        // Its repair must be over (it heard from every other voter, §3.9) before a healthy
        // voter goes: caught up by commit position alone, it may still be waiting for one.
        await_new_line(&cluster, victim, before, "repair finished", Duration::from_secs(30));
        // The damaged voter and one other are now the only majority.
        let healthy = (0..NODES).find(|&index| index != victim).unwrap();
        cluster.kill(healthy);
        writers.await_acked(300, Duration::from_secs(30), "with the damaged voter needed");
        cluster.spawn(healthy);
        cluster.await_caught_up(
            healthy,
            cluster.await_leader(Duration::from_secs(10)),
            Duration::from_secs(60),
        );
    }
    let seen = writers.stop();
    cluster.await_serving(Duration::from_secs(30));
    assert_none_lost(&cluster, &seen.acked);
    cluster.assert_none_exited("at the end");
    println!(
        "{} rounds: {} writes acknowledged, all read back, 0 lost; {} puts failed (timed out or \
         cut off); {:.1} s",
        rounds.len(),
        seen.acked.len(),
        seen.other_errors,
        started.elapsed().as_secs_f64()
    );
}

/// The first line holding `needle` that node `index` logged past byte `from` of its log.
fn await_new_line(
    cluster: &Cluster,
    index: usize,
    from: usize,
    needle: &str,
    timeout: Duration,
) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let text = cluster.log_text(index);
        if let Some(line) =
            text.get(from..).and_then(|new| new.lines().find(|l| l.contains(needle)))
        {
            return line.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "node {} did not log `{needle}` after its damage; it logged:\n{}",
            index + 1,
            text.get(from..).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn damaged_wal_files_and_an_emptied_directory_are_repaired_from_peers_under_load() {
    run(
        &["--snapshot-every-mib", "0"],
        &[
            ("flipped record byte", flip_a_record_byte, "record checksum mismatch at"),
            ("flipped header byte", flip_a_header_byte, "segment header checksum mismatch"),
            // Zeros mid-record fail its checksum; at a record's start they are zeros where a
            // header should be: either way the damage report names the segment.
            ("zeroed page", zero_a_page, "0000000000000000.wal offset"),
            ("emptied directory", empty_the_directory, "the log directory is new"),
        ],
    );
}

#[test]
fn a_damaged_snapshot_is_set_aside_and_repaired_from_peers_under_load() {
    run(
        &["--snapshot-every-mib", "1", "--retain-slots", "64"],
        &[(
            "flipped snapshot byte",
            flip_a_snapshot_byte,
            "snapshot file damaged: its directory is set aside",
        )],
    );
}
