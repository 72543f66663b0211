//! The probe: the file operations the WAL makes (wal/src/mmap.rs), on a real mount, and the
//! FUSE requests they turn into, measured rather than assumed; then what a power cut leaves.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;

use quorum_powerfs::{Cut, PowerFs, mounted_at, unavailable};

fn position(trace: &[String], what: &str) -> usize {
    trace
        .iter()
        .position(|line| line.starts_with(what))
        .unwrap_or_else(|| panic!("no `{what}` in the trace: {trace:#?}"))
}

#[test]
fn the_wal_sequence_reaches_the_daemon_as_expected_and_a_cut_keeps_only_what_was_synced() {
    if let Some(reason) = unavailable() {
        println!("skipped: {reason}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mountpoint = dir.path().join("mnt");
    std::fs::create_dir(&mountpoint).unwrap();
    let mut fs = match PowerFs::mount(&mountpoint, std::time::Duration::ZERO) {
        Ok(fs) => fs,
        Err(error) => {
            println!("skipped: cannot mount FUSE here: {error}");
            return;
        }
    };
    // What `PowerFs` looks for to know an unmount took.
    assert!(mounted_at(&mountpoint).unwrap());
    let log = mountpoint.join("log");
    std::fs::create_dir(&log).unwrap();
    File::open(&mountpoint).unwrap().sync_all().unwrap();
    fs.start_trace();

    // A segment as `MmapBackend::create` makes one.
    let temporary = log.join("0.wal.new");
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&temporary)
        .unwrap();
    rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, 1 << 20)
        .expect("fallocate on the FUSE mount");
    file.write_all(&[0x51; 4096]).unwrap();
    file.write_all(&vec![0; (1 << 20) - 4096]).unwrap();
    file.sync_data().unwrap();
    file.sync_all().unwrap();
    std::fs::rename(&temporary, log.join("0.wal")).unwrap();
    File::open(&log).unwrap().sync_all().unwrap();
    // SAFETY: a private test file nobody truncates while mapped.
    let map = unsafe { memmap2_like_map(&file) };
    assert_eq!(map[0], 0x51, "a read-only shared mapping reads through the page cache");

    // An append, synced; then one never synced, and a file whose name is never synced.
    file.write_all_at(&[0xA1; 4096], 4096).unwrap();
    file.sync_data().unwrap();
    file.write_all_at(&[0xB2; 4096], 8192).unwrap();
    let trace = fs.take_trace();
    File::create(log.join("unsynced-name")).unwrap().sync_all().unwrap();

    let fallocate = position(&trace, "fallocate");
    assert!(trace[fallocate].ends_with("mode=0"), "{}", trace[fallocate]);
    let rename = position(&trace, "rename");
    let sync_dir = position(&trace, "fsyncdir");
    assert!(rename < sync_dir, "{trace:#?}");
    assert!(trace.iter().any(|line| line.ends_with("datasync=true")), "fdatasync: {trace:#?}");
    assert!(trace.iter().any(|line| line.ends_with("datasync=false")), "fsync: {trace:#?}");
    // Write-through: the unsynced write reached the daemon before `pwrite` returned, and no
    // sync came after it.
    let last = trace.last().unwrap();
    assert!(last.starts_with("write") && last.contains(" 8192 4096"), "{trace:#?}");

    // SAFETY: unmapping the mapping made above, once.
    unsafe { rustix::mm::munmap(map.as_ptr() as *mut _, map.len()).unwrap() };
    drop(file);
    let report = fs.cut_power(Cut::DropAll).unwrap();
    assert!(report.pages_dropped >= 1 && report.dirs_reverted >= 1, "{report:?}");

    let bytes = std::fs::read(log.join("0.wal")).unwrap();
    assert_eq!(bytes.len(), 1 << 20);
    assert!(bytes[..4096].iter().all(|b| *b == 0x51));
    assert!(bytes[4096..8192].iter().all(|b| *b == 0xA1), "the synced append survives");
    assert!(bytes[8192..12288].iter().all(|b| *b == 0), "the unsynced append is gone");
    assert!(!log.join("unsynced-name").exists(), "a name whose directory was not synced is gone");
    assert!(!log.join("0.wal.new").exists());
    let counters = fs.counters();
    assert_eq!(counters.cuts, 1);
    assert!(mounted_at(&mountpoint).unwrap(), "mounted again after the cut");
    let writes = trace.iter().filter(|line| line.starts_with("write")).count();
    let others: Vec<&String> = trace.iter().filter(|line| !line.starts_with("write")).collect();
    println!("probe: {writes} writes and {others:?}\ncut: {report:?}\ncounters: {counters:?}");
    drop(fs);
    assert!(!mounted_at(&mountpoint).unwrap(), "unmounted when dropped");
}

/// A read-only shared mapping of the whole file, populated, as the WAL maps segments.
///
/// # Safety
/// The file must not shrink while mapped.
unsafe fn memmap2_like_map(file: &File) -> &'static [u8] {
    let len = file.metadata().unwrap().len() as usize;
    // SAFETY: a fresh mapping of a file descriptor; the caller keeps the file's length.
    unsafe {
        let ptr = rustix::mm::mmap(
            std::ptr::null_mut(),
            len,
            rustix::mm::ProtFlags::READ,
            rustix::mm::MapFlags::SHARED | rustix::mm::MapFlags::POPULATE,
            file,
            0,
        )
        .unwrap();
        std::slice::from_raw_parts(ptr.cast::<u8>(), len)
    }
}
