//! Disk faults the log must survive without losing what it acknowledged (issue #22): a full
//! disk in the middle of a rotation, a restart after a failed fsync, directory entries a crash
//! loses, and leftovers of interrupted file replacements. Over the simulated disk first, where
//! the exact sequence can be forced; over real files where this machine lets a test force it:
//! a full tmpfs, and a real failed writeback (ext4 on a loop device over a full tmpfs), each in
//! a child process with a mount namespace of its own (root only; skipped otherwise, saying so).

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests may unwrap.

use quorum_wal::{Error, MmapBackend, NO_SPACE_RETRY, Options, Record, SimBackend, Space, Wal};

const SEGMENT_BYTES: u64 = 16 * 1024;

fn options() -> Options {
    Options { segment_bytes: SEGMENT_BYTES, prepare_ahead: false }
}

fn record(slot: u64, payload: &[u8]) -> Record<'_> {
    Record { kind: 1, slot, ballot_round: 3, ballot_node: 1, payload }
}

/// Every record of the log as (slot, payload).
fn contents<B: quorum_wal::Backend>(wal: &Wal<B>) -> Vec<(u64, Vec<u8>)> {
    wal.iter_from(wal.first_position())
        .map(|item| item.map(|(_, record)| (record.slot, record.payload.to_vec())))
        .collect::<Result<_, _>>()
        .unwrap()
}

/// Asserts two logs are equal, showing only their slots when they are not (payloads are long).
#[track_caller]
fn assert_same_log(got: &[(u64, Vec<u8>)], expected: &[(u64, Vec<u8>)], what: &str) {
    let slots = |log: &[(u64, Vec<u8>)]| log.iter().map(|(slot, _)| *slot).collect::<Vec<_>>();
    assert_eq!(slots(got), slots(expected), "{what}");
    assert!(got == expected, "{what}: same slots, different payloads");
}

/// Appends records of `payload_bytes` until the next segment cannot be had; returns what was
/// appended and the error.
fn fill_until_no_space<B: quorum_wal::Backend>(
    wal: &mut Wal<B>,
    payload_bytes: usize,
    log: &mut Vec<(u64, Vec<u8>)>,
) -> Error {
    loop {
        let slot = log.len() as u64;
        let bytes = vec![slot as u8; payload_bytes];
        match wal.append(&record(slot, &bytes)) {
            Ok(_) => log.push((slot, bytes)),
            Err(error) => return error,
        }
    }
}

/// `check_space` until it says `want`, appending nothing; panics after 5 s.
fn await_space(wal: &mut Wal<SimBackend>, want: fn(&Space) -> bool, what: &str) -> Space {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let space = wal.check_space().unwrap();
        if want(&space) {
            return space;
        }
        assert!(std::time::Instant::now() < deadline, "{what}: still {space:?}");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Issue #21, point 3. With segments prepared ahead, a full disk shows in `check_space`
/// (`Space::Full`, naming the segment) as soon as the next segment cannot be made, while the
/// tail still has room; the log is not poisoned by it, appends into the tail and syncs go on,
/// and once the tail is full an append fails with `NoSpace`, again without poisoning. When
/// space comes back, `check_space` tries again by itself and the log goes on into new
/// segments; a restart finds every record.
#[test]
fn a_full_disk_is_reported_ahead_never_poisons_and_the_log_resumes_when_space_returns() {
    let disk = SimBackend::new();
    // Room for the first segment and the one prepared ahead of it, not a third.
    disk.limit_space(SEGMENT_BYTES * 2);
    let options = Options { segment_bytes: SEGMENT_BYTES, prepare_ahead: true };
    let (mut wal, _) = Wal::open(disk.clone(), options.clone()).unwrap();
    let mut log = Vec::new();
    let append = |wal: &mut Wal<SimBackend>, log: &mut Vec<(u64, Vec<u8>)>| {
        let slot = log.len() as u64;
        let bytes = vec![slot as u8; 500];
        let result = wal.append(&record(slot, &bytes));
        if result.is_ok() {
            log.push((slot, bytes));
        }
        result
    };
    // Into segment 1 (prepared ahead): then segment 2's preparation fails.
    while wal.end_position() < SEGMENT_BYTES + 1000 {
        append(&mut wal, &mut log).unwrap();
        wal.sync().unwrap();
    }
    let full = await_space(&mut wal, |space| matches!(space, Space::Full { .. }), "filling");
    let Space::Full { path } = full else { unreachable!() };
    assert!(path.ends_with("0000000000000002.wal"), "{}", path.display());
    // The tail's room still takes appends, durably.
    let error = loop {
        match append(&mut wal, &mut log) {
            Ok(_) => wal.sync().map(|_| ()).unwrap(),
            Err(error) => break error,
        }
    };
    assert!(matches!(error, Error::NoSpace { .. }), "{error}");
    assert!(matches!(append(&mut wal, &mut log), Err(Error::NoSpace { .. })), "not poisoned");
    assert_eq!(wal.sync().unwrap(), wal.end_position(), "syncs go on");
    let before = log.len();
    // Space is back: the retry (no call but check_space) makes the segment.
    disk.limit_space(u64::MAX);
    std::thread::sleep(NO_SPACE_RETRY);
    await_space(&mut wal, |space| *space == Space::Available, "space freed");
    for _ in 0..100 {
        append(&mut wal, &mut log).unwrap();
    }
    wal.sync().unwrap();
    assert!(wal.end_position() > 2 * SEGMENT_BYTES, "into segment 2 and on");
    assert!(log.len() > before + 50);
    drop(wal);
    let (wal, recovery) = Wal::open(disk.crash_losing_unsynced(), options).unwrap();
    assert!(recovery.damaged.is_empty(), "{:?}", recovery.damaged);
    assert_same_log(&contents(&wal), &log, "after the restart");
}

/// Issue #22, point 2. The disk fills while the log rotates: the next segment cannot be made.
/// The log is synced (so whatever the rotation wrote into the full segment is durable) and
/// dropped as a crash would; the restart appends small records into the room left, syncs them
/// (a replica would acknowledge them), and the next restart must find every one of them.
///
/// Before the fix, the rotation wrote the segment-end marker first; the first restart saw the
/// marker and put its tail after it, and the second restart, finding no segment after the
/// marker, took the log to end there and zeroed the acknowledged records behind it.
#[test]
fn a_full_disk_during_rotation_loses_no_record_acknowledged_after_restart() {
    let disk = SimBackend::new();
    disk.limit_space(SEGMENT_BYTES);
    let (mut wal, _) = Wal::open(disk.clone(), options()).unwrap();
    let mut log = Vec::new();
    // Records of 1032 bytes leave room for small ones once the next no longer fits.
    let error = fill_until_no_space(&mut wal, 1000, &mut log);
    assert!(matches!(error, Error::NoSpace { .. }), "{error}");
    wal.sync().unwrap();
    drop(wal);
    // Restart: the disk is still full; small records still fit in the first segment.
    let (mut wal, recovery) = Wal::open(disk.crash_losing_unsynced(), options()).unwrap();
    assert!(recovery.damaged.is_empty(), "{:?}", recovery.damaged);
    assert_same_log(&contents(&wal), &log, "after the first restart");
    for _ in 0..5 {
        let slot = log.len() as u64;
        wal.append(&record(slot, b"small")).unwrap();
        log.push((slot, b"small".to_vec()));
    }
    wal.sync().unwrap(); // acknowledged from here on
    let disk = wal.backend().clone();
    drop(wal);
    let (wal, recovery) = Wal::open(disk.crash_losing_unsynced(), options()).unwrap();
    assert!(recovery.damaged.is_empty(), "{:?}", recovery.damaged);
    assert_same_log(&contents(&wal), &log, "records acknowledged after the restart");
}

/// The same tail by another road: a truncation into a segment sealed by its end marker
/// removes the segments after it at once (durably), while the zeros it writes over the marker
/// wait for the next sync. A crash in between leaves a durable marker that leads nowhere; the
/// records appended and synced after the restart must survive the next one.
#[test]
fn a_truncation_that_removed_the_next_segment_then_a_crash_loses_no_later_record() {
    let disk = SimBackend::new();
    let (mut wal, _) = Wal::open(disk.clone(), options()).unwrap();
    let mut log = Vec::new();
    let mut positions = Vec::new();
    while wal.end_position() < SEGMENT_BYTES + 8192 {
        let slot = log.len() as u64;
        let bytes = vec![slot as u8; 1000];
        positions.push(wal.append(&record(slot, &bytes)).unwrap());
        log.push((slot, bytes));
    }
    wal.sync().unwrap();
    let in_first = positions.iter().filter(|position| **position < SEGMENT_BYTES).count();
    assert!(in_first < positions.len(), "the log reached the second segment");
    wal.truncate_suffix(positions[in_first - 1]).unwrap();
    drop(wal);
    // The zeros never reached the disk: the first segment comes back whole, the second is gone.
    let (mut wal, recovery) = Wal::open(disk.crash_losing_unsynced(), options()).unwrap();
    assert!(recovery.damaged.is_empty(), "{:?}", recovery.damaged);
    log.truncate(in_first);
    assert_same_log(&contents(&wal), &log, "after the crash that undid the truncation");
    for _ in 0..5 {
        let slot = log.len() as u64;
        wal.append(&record(slot, b"small")).unwrap();
        log.push((slot, b"small".to_vec()));
    }
    wal.sync().unwrap();
    let disk = wal.backend().clone();
    drop(wal);
    let (wal, recovery) = Wal::open(disk.crash_losing_unsynced(), options()).unwrap();
    assert!(recovery.damaged.is_empty(), "{:?}", recovery.damaged);
    assert_same_log(&contents(&wal), &log, "records acknowledged after the restart");
}

/// Issue #22, point 4. A sync fails (EIO): the node stops without retrying. Linux has marked
/// the pages it could not write clean and keeps them, so the restarted process (the machine
/// did not crash) would read records that never reached the disk, and its first sync, with
/// nothing dirty to write, would succeed: they would look durable, and be lost by the next
/// crash, with every record acknowledged after them (the log ends at the hole).
///
/// Recovery drops the page cache before reading: it recovers only what the disk holds.
#[test]
fn a_restart_after_a_failed_sync_recovers_what_the_disk_holds_not_the_page_cache() {
    let disk = SimBackend::new();
    let (mut wal, _) = Wal::open(disk.clone(), options()).unwrap();
    let mut log = Vec::new();
    for slot in 0..6 {
        let bytes = vec![slot as u8; 300];
        wal.append(&record(slot, &bytes)).unwrap();
        log.push((slot, bytes));
        if slot == 2 {
            wal.sync().unwrap();
        }
    }
    disk.fail_syncs(1);
    assert!(matches!(wal.sync(), Err(Error::Sync { .. })));
    drop(wal);
    log.truncate(3);
    let cached = disk.cached_image(0).unwrap();
    assert_ne!(cached, disk.synced_image(0).unwrap(), "the page cache holds the failed writes");
    // A process restart: the same disk, its page cache as the failed writeback left it.
    let (mut wal, recovery) = Wal::open(disk.clone(), options()).unwrap();
    assert!(recovery.damaged.is_empty(), "{:?}", recovery.damaged);
    assert_same_log(&contents(&wal), &log, "recovered after the failed sync");
    assert_eq!(wal.durable_position(), wal.end_position());
    for slot in 3..5 {
        wal.append(&record(slot, b"after the restart")).unwrap();
        log.push((slot, b"after the restart".to_vec()));
    }
    wal.sync().unwrap(); // acknowledged
    let disk = wal.backend().clone();
    drop(wal);
    let (wal, _) = Wal::open(disk.crash_losing_unsynced(), options()).unwrap();
    assert_same_log(&contents(&wal), &log, "after a machine crash");
}

/// Issue #22, point 8. A crash while a segment was being created or a small file replaced
/// leaves its temporary (`{name}.new`); the next open deletes them (a segment's is as large as
/// a segment, and nothing else ever would), and touches nothing else.
#[test]
fn opening_a_log_deletes_the_temporaries_an_interrupted_write_left() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options { segment_bytes: 64 << 10, prepare_ahead: false };
    let (mut wal, _) = Wal::open(MmapBackend::new(dir.path()).unwrap(), options.clone()).unwrap();
    wal.append(&record(0, b"kept")).unwrap();
    wal.sync().unwrap();
    wal.set_metadata(b"promised 2.1").unwrap();
    drop(wal);
    let leftovers = ["0000000000000001.wal.new", "metadata.new", "snapshot.new", "snapshot.7.new"];
    for name in leftovers {
        std::fs::write(dir.path().join(name), vec![9u8; 64 << 10]).unwrap();
    }
    std::fs::write(dir.path().join("notes.txt"), b"not ours to delete").unwrap();
    let (wal, recovery) = Wal::open(MmapBackend::new(dir.path()).unwrap(), options).unwrap();
    for name in leftovers {
        assert!(!dir.path().join(name).exists(), "{name} was left behind");
    }
    assert!(dir.path().join("notes.txt").exists());
    assert_eq!(recovery.metadata.as_deref(), Some(&b"promised 2.1"[..]));
    assert_same_log(&contents(&wal), &[(0, b"kept".to_vec())], "after the open");
}

/// Issue #22, point 8. A new log directory's entry lives in its parent: unless the parent is
/// fsynced, a power loss can take the directory with every segment in it. Checked by tracing
/// the system calls of a child process (this test binary again) that creates a log three
/// levels below an existing directory: each new level's parent must be opened and fsynced.
/// Needs `strace`; reports itself skipped without it.
#[test]
fn creating_a_log_directory_fsyncs_the_parent_of_each_new_level() {
    const CHILD: &str = "QUORUM_WAL_TEST_CREATE_DIRECTORY";
    if let Some(dir) = std::env::var_os(CHILD) {
        MmapBackend::new(dir).unwrap();
        return;
    }
    if std::process::Command::new("strace").arg("-V").output().is_err() {
        eprintln!(
            "SKIPPED creating_a_log_directory_fsyncs_the_parent_of_each_new_level: no strace"
        );
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let root_path = root.path().canonicalize().unwrap();
    let log_dir = root_path.join("node").join("data").join("shard-3");
    let trace = root_path.join("trace.txt");
    let output = std::process::Command::new("strace")
        .args(["-f", "-qq", "-s", "4096", "-e", "trace=openat,fsync,close", "-o"])
        .arg(&trace)
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", "creating_a_log_directory_fsyncs_the_parent_of_each_new_level"])
        .args(["--test-threads", "1", "--nocapture"])
        .env(CHILD, &log_dir)
        .output()
        .unwrap();
    assert_child_passed(&output);
    assert!(log_dir.is_dir());
    // Which paths were fsynced: follow each descriptor from its openat to its close.
    let mut open = std::collections::HashMap::new();
    let mut fsynced = std::collections::BTreeSet::new();
    for line in std::fs::read_to_string(&trace).unwrap().lines() {
        let call = line.split_once(' ').map_or(line, |(_, call)| call.trim_start());
        let result = call.rsplit_once(" = ").and_then(|(_, result)| result.parse::<i64>().ok());
        if let (Some(rest), Some(fd)) = (call.strip_prefix("openat("), result) {
            if let Some(path) = rest.split('"').nth(1) {
                open.insert(fd, path.to_string());
            }
        } else if let Some(rest) = call.strip_prefix("fsync(") {
            let fd: i64 = rest.split(')').next().unwrap().parse().unwrap();
            if result == Some(0) {
                fsynced.extend(open.get(&fd).cloned());
            }
        } else if let Some(rest) = call.strip_prefix("close(") {
            open.remove(&rest.split(')').next().unwrap().parse::<i64>().unwrap());
        }
    }
    for dir in [&root_path, &root_path.join("node"), &root_path.join("node/data"), &log_dir] {
        let dir = dir.to_str().unwrap().to_string();
        assert!(fsynced.contains(&dir), "{dir} was not fsynced; fsynced: {fsynced:?}");
    }
}

/// Issue #22, point 8, on the simulated disk's model of lost directory entries: with
/// `lose_unsynced_entries_on_crash` set, a crash undoes every directory change whose directory
/// sync did not succeed. A new segment whose sync failed vanishes, a segment set aside comes
/// back, a replaced metadata file is the old one again; recovery keeps every synced record
/// through each, and the log goes on.
#[test]
fn directory_changes_a_crash_undoes_never_lose_a_synced_record() {
    let disk = SimBackend::new();
    disk.lose_unsynced_entries_on_crash(true);
    let (mut wal, _) = Wal::open(disk.clone(), options()).unwrap();
    wal.set_metadata(b"promised 1.1").unwrap();
    let mut log = Vec::new();
    let append = |wal: &mut Wal<SimBackend>, log: &mut Vec<(u64, Vec<u8>)>| {
        let slot = log.len() as u64;
        let bytes = vec![slot as u8; 1000];
        let appended = wal.append(&record(slot, &bytes));
        if appended.is_ok() {
            log.push((slot, bytes));
        }
        appended
    };
    // The next segment is made, but its directory sync fails: the append fails.
    while wal.end_position() + 1032 <= SEGMENT_BYTES {
        append(&mut wal, &mut log).unwrap();
    }
    disk.fail_directory_syncs(1);
    let error = append(&mut wal, &mut log).unwrap_err();
    assert!(matches!(error, Error::Io { op: "fsync directory", .. }), "{error}");
    assert_eq!(disk.unsynced_entries(), 1);
    wal.sync().unwrap();
    drop(wal);
    let disk = disk.crash_losing_unsynced();
    assert_eq!(quorum_wal::Backend::list(&disk).unwrap(), vec![0], "the new segment vanished");
    let (mut wal, recovery) = Wal::open(disk.clone(), options()).unwrap();
    assert!(recovery.damaged.is_empty(), "{:?}", recovery.damaged);
    assert_same_log(&contents(&wal), &log, "after losing the new segment");
    // Three segments more, then the first is set aside, but that directory sync fails.
    while wal.end_position() < 3 * SEGMENT_BYTES + 8192 {
        append(&mut wal, &mut log).unwrap();
    }
    wal.sync().unwrap();
    disk.fail_directory_syncs(1);
    assert!(wal.release_prefix(SEGMENT_BYTES).is_err());
    assert!(!quorum_wal::Backend::list(&disk).unwrap().contains(&0), "set aside before the crash");
    // And the metadata's replacement is not durable either: the log is poisoned.
    disk.fail_directory_syncs(1);
    assert!(wal.set_metadata(b"promised 2.1").is_err());
    drop(wal);
    let disk = disk.crash_losing_unsynced();
    assert!(quorum_wal::Backend::list(&disk).unwrap().contains(&0), "the set-aside came back");
    let (mut wal, recovery) = Wal::open(disk.clone(), options()).unwrap();
    assert!(recovery.damaged.is_empty(), "{:?}", recovery.damaged);
    assert_eq!(recovery.metadata.as_deref(), Some(&b"promised 1.1"[..]), "the old metadata");
    assert_same_log(&contents(&wal), &log, "after the set-aside came back");
    for _ in 0..20 {
        append(&mut wal, &mut log).unwrap();
    }
    wal.sync().unwrap();
    let disk = wal.backend().clone();
    drop(wal);
    let (wal, _) = Wal::open(disk.crash_losing_unsynced(), options()).unwrap();
    assert_same_log(&contents(&wal), &log, "after the last crash");
}

/// Runs test `name` of this binary again in a child process with its own mount namespace
/// (`unshare --mount`), so that the file systems it mounts are private to it and vanish with
/// it, and `CHILD_ENV` set. `None` (the test skips itself, saying why) unless this runs as root
/// with `unshare`, `mount`, and `more_tools`.
fn in_private_mount_namespace(name: &str, more_tools: &[&str]) -> Option<std::process::Output> {
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|output| String::from_utf8_lossy(&output.stdout).trim() == "0");
    let missing: Vec<&str> = ["unshare", "mount"]
        .iter()
        .chain(more_tools)
        .copied()
        .filter(|tool| {
            std::process::Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()
                .map_or(true, |output| !output.status.success())
        })
        .collect();
    if !root || !missing.is_empty() {
        eprintln!("SKIPPED {name}: needs root (root: {root}) and {missing:?}");
        return None;
    }
    let output = std::process::Command::new("unshare")
        .args(["--mount", "--propagation", "private"])
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", name, "--test-threads", "1", "--nocapture"])
        .env(CHILD_ENV, "1")
        .output()
        .unwrap();
    Some(output)
}

const CHILD_ENV: &str = "QUORUM_WAL_TEST_IN_NAMESPACE";

fn is_child() -> bool {
    std::env::var_os(CHILD_ENV).is_some()
}

/// Runs a shell command of the test's setup; panics with its output if it fails.
fn run(command: &str) -> String {
    let output = std::process::Command::new("sh").args(["-c", command]).output().unwrap();
    assert!(
        output.status.success(),
        "`{command}` failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[track_caller]
fn assert_child_passed(output: &std::process::Output) {
    assert!(
        output.status.success() && String::from_utf8_lossy(&output.stdout).contains("1 passed"),
        "the child failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Issue #22, point 2, on real files: a tmpfs of two and a half segments fills when the log
/// rotates into a third (`fallocate` fails: `NoSpace`); the log is synced and dropped, the
/// restart appends small records and syncs them, and the next restart must find them all.
#[test]
fn a_full_real_disk_during_rotation_loses_no_record_acknowledged_after_restart() {
    let name = "a_full_real_disk_during_rotation_loses_no_record_acknowledged_after_restart";
    if !is_child() {
        if let Some(output) = in_private_mount_namespace(name, &[]) {
            assert_child_passed(&output);
        }
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mount = dir.path().to_str().unwrap();
    run(&format!("mount -t tmpfs -o size=2560k tmpfs {mount}"));
    let options = Options { segment_bytes: 1 << 20, prepare_ahead: false };
    let open = || Wal::open(MmapBackend::new(dir.path().join("log")).unwrap(), options.clone());
    let (mut wal, _) = open().unwrap();
    let mut log = Vec::new();
    let error = fill_until_no_space(&mut wal, 3000, &mut log);
    assert!(matches!(error, Error::NoSpace { .. }), "{error}");
    assert!(log.len() > 300, "two segments filled: {}", log.len());
    wal.sync().unwrap();
    drop(wal);
    let (mut wal, recovery) = open().unwrap();
    assert!(recovery.damaged.is_empty(), "{:?}", recovery.damaged);
    assert_same_log(&contents(&wal), &log, "after the first restart");
    for _ in 0..5 {
        let slot = log.len() as u64;
        wal.append(&record(slot, b"small")).unwrap();
        log.push((slot, b"small".to_vec()));
    }
    wal.sync().unwrap();
    drop(wal);
    let (wal, _) = open().unwrap();
    assert_same_log(&contents(&wal), &log, "records acknowledged after the restart");
    drop(wal);
    run(&format!("umount {mount}"));
}

/// Issue #22, point 4, on a real kernel: ext4 on a loop device whose backing file lies on a
/// full tmpfs, with the backing blocks under the log's tail punched out, so the writeback of
/// the next records fails (the loop device cannot allocate: the kernel reports an I/O error
/// and fdatasync fails). The kernel keeps the pages it could not write, marked clean: a
/// restart that read through the page cache would recover records the disk does not hold.
/// Recovery must find exactly what is on the disk, and what it then acknowledges must survive
/// a remount (every cached page gone). Needs root, `mkfs.ext4` and `filefrag`; else skipped.
#[test]
fn a_restart_after_a_failed_fsync_on_a_real_disk_recovers_what_the_disk_holds() {
    let name = "a_restart_after_a_failed_fsync_on_a_real_disk_recovers_what_the_disk_holds";
    if !is_child() {
        if let Some(output) = in_private_mount_namespace(name, &["mkfs.ext4", "filefrag"]) {
            assert_child_passed(&output);
        }
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let (tmpfs, mnt) = (work.path().join("tmpfs"), work.path().join("mnt"));
    std::fs::create_dir(&tmpfs).unwrap();
    std::fs::create_dir(&mnt).unwrap();
    let (tmpfs, mnt) = (tmpfs.to_str().unwrap(), mnt.to_str().unwrap());
    run(&format!("mount -t tmpfs -o size=48m tmpfs {tmpfs}"));
    run(&format!("truncate -s 32m {tmpfs}/backing && mkfs.ext4 -q -F -b 4096 {tmpfs}/backing"));
    run(&format!("mount -o loop {tmpfs}/backing {mnt}"));
    let log_dir = std::path::Path::new(mnt).join("log");
    let options = Options { segment_bytes: 1 << 20, prepare_ahead: false };
    let open = || Wal::open(MmapBackend::new(&log_dir).unwrap(), options.clone());
    let (mut wal, _) = open().unwrap();
    // Records of exactly one page each: the header page, then three durable records.
    let page_record = |slot: u64| (slot, vec![slot as u8 + 1; 4096 - 32]);
    let mut log: Vec<(u64, Vec<u8>)> = (0..3).map(page_record).collect();
    for (slot, bytes) in &log {
        wal.append(&record(*slot, bytes)).unwrap();
    }
    wal.sync().unwrap();
    // Punch out the backing blocks of the segment's pages 4 on, then fill the tmpfs.
    let segment = log_dir.join("0000000000000000.wal");
    let extents = run(&format!("filefrag -v {}", segment.display()));
    for line in extents.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let number = |field: &str| field.trim_end_matches(['.', ':']).parse::<u64>().ok();
        let (Some(logical), Some(logical_end), Some(physical)) = (
            fields.get(1).and_then(|field| number(field)),
            fields.get(2).and_then(|field| number(field)),
            fields.get(3).and_then(|field| number(field)),
        ) else {
            continue;
        };
        let first = logical.max(4);
        if first <= logical_end {
            let (offset, len) =
                ((physical + first - logical) * 4096, (logical_end - first + 1) * 4096);
            run(&format!("fallocate -p -o {offset} -l {len} {tmpfs}/backing"));
        }
    }
    run(&format!("fallocate -l $(df -B1 --output=avail {tmpfs} | tail -1) {tmpfs}/filler || true"));
    for slot in 3..6 {
        let (slot, bytes) = page_record(slot);
        wal.append(&record(slot, &bytes)).unwrap();
    }
    let error = wal.sync().unwrap_err();
    assert!(matches!(error, Error::Sync { .. }), "{error}");
    drop(wal);
    run(&format!("rm {tmpfs}/filler"));
    // The process restarts; the machine does not: the page cache is as the failure left it.
    let (mut wal, recovery) = open().unwrap();
    assert!(recovery.damaged.is_empty(), "{:?}", recovery.damaged);
    assert_same_log(&contents(&wal), &log, "recovered after the failed fsync");
    for slot in 3..5 {
        wal.append(&record(slot, b"acknowledged after the restart")).unwrap();
        log.push((slot, b"acknowledged after the restart".to_vec()));
    }
    wal.sync().unwrap();
    drop(wal);
    run(&format!("umount {mnt} && mount -o loop {tmpfs}/backing {mnt}"));
    let (wal, _) = open().unwrap();
    assert_same_log(&contents(&wal), &log, "after a remount");
    drop(wal);
    run(&format!("umount {mnt}"));
}
