//! The faults powerfs injects on demand, on a real mount: syncs that fail with EIO (and lose
//! the writes they covered, as a failed writeback does), and a space limit that refuses
//! growth with ENOSPC until it is lifted.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;

use quorum_powerfs::{Cut, PowerFs, unavailable};

fn mount(dir: &tempfile::TempDir) -> Option<PowerFs> {
    if let Some(reason) = unavailable() {
        println!("skipped: {reason}");
        return None;
    }
    let mountpoint = dir.path().join("mnt");
    std::fs::create_dir(&mountpoint).unwrap();
    match PowerFs::mount(&mountpoint, std::time::Duration::ZERO) {
        Ok(fs) => Some(fs),
        Err(error) => {
            println!("skipped: cannot mount FUSE here: {error}");
            None
        }
    }
}

#[test]
fn a_failed_sync_is_eio_for_the_matching_file_only_and_loses_what_it_covered() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut fs) = mount(&dir) else { return };
    let root = fs.path().to_path_buf();
    std::fs::create_dir(root.join("d")).unwrap();
    let mut a = File::create(root.join("d/a.wal")).unwrap();
    let mut b = File::create(root.join("d/b.other")).unwrap();
    File::open(root.join("d")).unwrap().sync_all().unwrap();
    File::open(&root).unwrap().sync_all().unwrap();
    a.write_all(b"synced").unwrap();
    a.sync_data().unwrap();
    fs.fail_syncs(1, |path| path.ends_with(".wal"));
    a.write_all_at(b"LOST!!", 0).unwrap();
    b.write_all(b"kept").unwrap();
    b.sync_data().unwrap();
    let error = a.sync_data().unwrap_err();
    assert_eq!(error.raw_os_error(), Some(libc::EIO), "{error}");
    // Only one: the next sync succeeds (and has nothing left to write: the pages were lost).
    a.sync_data().unwrap();
    assert_eq!(fs.counters().syncs_failed, 1);
    drop((a, b));
    // What the disk holds, without the page cache: the cut remounts; nothing unsynced is left
    // to drop, so what it shows is what the failed sync left.
    fs.power_off();
    let report = fs.cut_power(Cut::DropAll).unwrap();
    assert_eq!(report.pages_dropped, 0, "{report:?}");
    assert_eq!(std::fs::read(root.join("d/a.wal")).unwrap(), b"synced");
    assert_eq!(std::fs::read(root.join("d/b.other")).unwrap(), b"kept");
}

#[test]
fn a_space_limit_refuses_growth_with_enospc_not_writes_inside_a_file_until_lifted() {
    let dir = tempfile::tempdir().unwrap();
    let Some(fs) = mount(&dir) else { return };
    let root = fs.path().to_path_buf();
    let segment = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(root.join("segment"))
        .unwrap();
    rustix::fs::fallocate(&segment, rustix::fs::FallocateFlags::empty(), 0, 64 << 10).unwrap();
    assert_eq!(fs.used_bytes(), 64 << 10);
    fs.limit_space(Some(80 << 10));
    // Inside the preallocated size: fine.
    segment.write_all_at(&[7; 4096], 8192).unwrap();
    // A second file past the limit: refused, at fallocate and at write.
    let other = File::create(root.join("other")).unwrap();
    let error = rustix::fs::fallocate(&other, rustix::fs::FallocateFlags::empty(), 0, 32 << 10)
        .unwrap_err();
    assert_eq!(error, rustix::io::Errno::NOSPC);
    let error = other.write_all_at(&[1; 20 << 10], 0).unwrap_err();
    assert_eq!(error.raw_os_error(), Some(libc::ENOSPC), "{error}");
    // Within what is left: fine.
    other.write_all_at(&[1; 8 << 10], 0).unwrap();
    assert!(fs.counters().no_space >= 2);
    fs.limit_space(None);
    rustix::fs::fallocate(&other, rustix::fs::FallocateFlags::empty(), 0, 32 << 10).unwrap();
    assert_eq!(fs.used_bytes(), 96 << 10);
}
