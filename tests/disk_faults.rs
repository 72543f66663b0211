//! Disk faults on real `quorum node` processes (issue #21, points 2 and 3): three nodes, each
//! data directory on its own powerfs mount (powerfs/: the FUSE file system of the power-loss
//! test, which injects faults on demand), under concurrent writers.
//!
//! - **A failed sync is fatal** (`a_failed_sync_stops_the_node_and_loses_no_acknowledged_write`):
//!   the leader's next WAL `fdatasync` fails with EIO (and the writes it covered are lost to
//!   the disk, as a failed writeback leaves them). The leader must exit non-zero at once,
//!   naming the segment and the bytes; the other two must go on serving; restarted on the same
//!   directory, it must rejoin. Then a follower's snapshot `fsync` fails: it must exit too, and
//!   rejoin. Every acknowledged write is read back at the end.
//! - **A full disk is survivable** (`a_full_disk_refuses_writes_and_resumes_without_a_restart`):
//!   a follower's disk fills (its WAL cannot make its next segment): the cluster goes on, the
//!   follower pauses, and catches up by itself once the space is back; then the leader's disk
//!   fills: clients get the out-of-space error, no node exits, and once the space is back
//!   writes succeed again, no restart. Every acknowledged write is read back at the end.
//!
//! Needs `/dev/fuse`, `fusermount3` and the right to mount (root); otherwise each test prints
//! `skipped: <reason>` and returns. docs/disk-faults.md has the design.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests may unwrap.

mod common;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{Cluster, Writers, lost_writes};
use quorum_powerfs::{PowerFs, unavailable};

const CLUSTER: u64 = 78;
const NODES: usize = 3;
const WRITERS: usize = 6;
const SEGMENT_BYTES: u64 = 1 << 20;

/// The nodes on this machine's two cores: one scenario at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// One powerfs mount per node (in a temporary directory that also holds the nodes' logs), or
/// why not (the test then skips). Declare the cluster after them: it must stop first.
fn mount() -> Result<(tempfile::TempDir, Vec<PowerFs>), String> {
    if let Some(reason) = unavailable() {
        return Err(reason);
    }
    let dir = tempfile::tempdir().unwrap();
    let mut disks = Vec::new();
    for index in 0..NODES {
        let mountpoint = dir.path().join(format!("mnt-{}", index + 1));
        std::fs::create_dir(&mountpoint).unwrap();
        let fs = PowerFs::mount(&mountpoint, Duration::from_millis(1))
            .map_err(|error| format!("cannot mount FUSE at {}: {error}", mountpoint.display()))?;
        disks.push(fs);
    }
    Ok((dir, disks))
}

/// Three nodes, each on its mount, started with `args`.
fn start(dir: &tempfile::TempDir, disks: &[PowerFs], args: &[&str]) -> Cluster {
    let data_dirs = disks.iter().map(|fs| fs.path().join("data")).collect();
    Cluster::start(CLUSTER, data_dirs, dir.path(), args)
}

fn is_wal_segment(path: &str) -> bool {
    path.contains("shard-0/") && path.ends_with(".wal")
}

#[test]
fn a_failed_sync_stops_the_node_and_loses_no_acknowledged_write() {
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let started = Instant::now();
    let (dir, disks) = match mount() {
        Ok(mounted) => mounted,
        Err(reason) => return println!("skipped: {reason}"),
    };
    let mut cluster = start(&dir, &disks, &["--snapshot-every-mib", "1", "--retain-slots", "64"]);
    cluster.await_serving(Duration::from_secs(30));
    let writers = Writers::start(&cluster, WRITERS);
    writers.await_acked(200, Duration::from_secs(20), "before the fault");

    // (a) A WAL sync fails: the leader's, a follower's, the leader's again.
    let mut acked_while_down = 0;
    for round in 0..3 {
        let leader = cluster.await_leader(Duration::from_secs(10));
        let victim = if round == 1 { (leader + 1) % NODES } else { leader };
        let before = disks[victim].counters();
        disks[victim].fail_syncs(1, is_wal_segment);
        let acked_at_fault = writers.acked();
        // Generous: on a loaded machine the victim's next sync, and its exit from a FUSE mount, can
        // take seconds.
        let status = cluster.await_exit(victim, Duration::from_secs(60));
        assert!(!status.success(), "a node whose sync failed exits in error: {status}");
        let counters = disks[victim].counters();
        assert_eq!(counters.syncs_failed, before.syncs_failed + 1, "{counters:?}");
        let line = cluster
            .log_text(victim)
            .lines()
            .rfind(|line| line.contains("fdatasync failed on"))
            .map(str::to_string)
            .unwrap_or_else(|| panic!("no sync error logged:\n{}", cluster.tail(victim)));
        assert!(
            line.contains(".wal") && line.contains("bytes ") && line.contains("never retried"),
            "{line}"
        );
        let event = cluster.log_text(victim).lines().any(|line| line.contains("WAL sync failed"));
        assert!(event, "no `WAL sync failed` event:\n{}", cluster.tail(victim));
        let role = if victim == leader { "leader" } else { "follower" };
        println!("node {} ({role}) exited ({status}) after its failed sync: {line}", victim + 1);
        // The other two go on serving.
        writers.await_acked(200, Duration::from_secs(30), "with the failed node down");
        acked_while_down += writers.acked() - acked_at_fault;
        // Restarted on the same directory (what its disk holds: the failed sync's writes
        // were lost to it), it rejoins.
        cluster.spawn(victim);
        let new_leader = cluster.await_leader(Duration::from_secs(10));
        cluster.await_caught_up(victim, new_leader, Duration::from_secs(30));
        cluster.assert_none_exited("after the restart");
    }

    // (b) A follower's next snapshot sync fails.
    let leader = cluster.await_leader(Duration::from_secs(10));
    let follower = (leader + 2) % NODES;
    let failed_before = disks[follower].counters().syncs_failed;
    // A snapshot is streamed into `snapshot.{n}.new`, then synced and renamed into place.
    disks[follower].fail_syncs(1, |path| {
        let name = path.rsplit('/').next().unwrap_or(path);
        name.starts_with("snapshot.") && name.ends_with(".new")
    });
    let status = cluster.await_exit(follower, Duration::from_secs(60));
    assert!(!status.success(), "{status}");
    assert_eq!(disks[follower].counters().syncs_failed, failed_before + 1);
    let event = cluster.await_log(follower, "/snapshot.", Duration::ZERO);
    assert!(event.contains("snapshot write failed"), "its own event first: {event}");
    let line = cluster
        .log_text(follower)
        .lines()
        .find(|line| line.contains("/snapshot.") && line.contains("shard failed"))
        .map(str::to_string)
        .unwrap_or_else(|| panic!("no shard failure logged:\n{}", cluster.tail(follower)));
    assert!(line.contains("fsync failed"), "{line}");
    assert!(line.contains(".new"), "the temporary's sync failed, before any rename: {line}");
    println!("node {} exited ({status}) after its failed snapshot sync: {line}", follower + 1);
    writers.await_acked(100, Duration::from_secs(30), "with the follower down");
    cluster.spawn(follower);
    cluster.await_caught_up(
        follower,
        cluster.await_leader(Duration::from_secs(10)),
        Duration::from_secs(30),
    );

    let seen = writers.stop();
    cluster.await_serving(Duration::from_secs(30));
    let lost = lost_writes(&cluster, &seen.acked, WRITERS);
    assert!(
        lost.is_empty(),
        "{} acknowledged writes lost, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    cluster.assert_none_exited("at the end");
    println!(
        "failed syncs: {} writes acknowledged ({acked_while_down} while a failed node was \
         down), all read back, 0 lost; {} puts failed (timed out or cut off); {:.1} s",
        seen.acked.len(),
        seen.other_errors,
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn a_full_disk_refuses_writes_and_resumes_without_a_restart() {
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let started = Instant::now();
    // No snapshots: no segment is released into a spare, so each new one needs new space.
    let (dir, disks) = match mount() {
        Ok(mounted) => mounted,
        Err(reason) => return println!("skipped: {reason}"),
    };
    let mut cluster = start(&dir, &disks, &["--snapshot-every-mib", "0"]);
    cluster.await_serving(Duration::from_secs(30));
    let writers = Writers::start(&cluster, WRITERS);
    writers.await_acked(200, Duration::from_secs(20), "before the fault");
    // Room for less than a segment: the next one the WAL prepares is refused.
    let headroom = SEGMENT_BYTES / 2;

    // A follower's disk fills: it pauses, the cluster goes on, and it resumes by itself.
    let leader = cluster.await_leader(Duration::from_secs(10));
    let follower = (0..NODES).find(|index| *index != leader).unwrap();
    let fs = &disks[follower];
    fs.limit_space(Some(fs.used_bytes() + headroom));
    let line = cluster.await_log(follower, "out of disk space", Duration::from_secs(60));
    println!("node {} (follower): {line}", follower + 1);
    assert!(disks[follower].counters().no_space > 0);
    writers.await_acked(200, Duration::from_secs(30), "with a follower out of space");
    cluster.assert_none_exited("with a follower out of space");
    disks[follower].limit_space(None);
    cluster.await_log(follower, "disk space is back", Duration::from_secs(10));
    cluster.await_caught_up(
        follower,
        cluster.await_leader(Duration::from_secs(10)),
        Duration::from_secs(30),
    );
    cluster.assert_none_exited("after the follower's space came back");

    // The leader's disk fills: clients are told, plainly; nothing exits; it resumes.
    let leader = cluster.await_leader(Duration::from_secs(10));
    let fs = &disks[leader];
    fs.limit_space(Some(fs.used_bytes() + headroom));
    let line = cluster.await_log(leader, "out of disk space", Duration::from_secs(60));
    println!("node {} (leader): {line}", leader + 1);
    let deadline = Instant::now() + Duration::from_secs(20);
    while writers.seen.lock().unwrap().out_of_space == 0 {
        assert!(Instant::now() < deadline, "no client was told the disk is full");
        std::thread::sleep(Duration::from_millis(20));
    }
    let message = writers.seen.lock().unwrap().out_of_space_message.clone().unwrap();
    assert!(message.contains("out of disk space") && message.contains(".wal"), "{message}");
    println!("a client was told: {message}");
    std::thread::sleep(Duration::from_millis(500));
    cluster.assert_none_exited("with the leader out of space");
    disks[leader].limit_space(None);
    cluster.await_log(leader, "disk space is back", Duration::from_secs(10));
    writers.await_acked(200, Duration::from_secs(30), "after the leader's space came back");
    cluster.assert_none_exited("after the leader's space came back");

    let seen = writers.stop();
    cluster.await_serving(Duration::from_secs(30));
    let lost = lost_writes(&cluster, &seen.acked, WRITERS);
    assert!(
        lost.is_empty(),
        "{} acknowledged writes lost, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    cluster.assert_none_exited("at the end");
    for (index, fs) in disks.iter().enumerate() {
        println!("node {}'s file system: {:?}", index + 1, fs.counters());
    }
    println!(
        "full disks: {} writes acknowledged, all read back, 0 lost; {} refused out of space, \
         {} failed otherwise (timed out or redirected); no restart; {:.1} s",
        seen.acked.len(),
        seen.out_of_space,
        seen.other_errors,
        started.elapsed().as_secs_f64()
    );
}
