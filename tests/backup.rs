//! Backup and restore with real processes: `quorum snapshot save` from a 3-node, 2-shard
//! cluster under writes (snapshots every MiB, so the backup starts from real snapshots and
//! replays logs after them); the backup's digests equal a model of the source at the backup's
//! position, built from the writes the source acknowledged and where it committed them;
//! `quorum snapshot restore` into a fresh 3-node cluster of another id, whose members all
//! report those digests at those slots; writes go on there. A damaged or cut backup is
//! refused with a clear error, and no data directory is left.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Cluster, quorum};
use quorum::machine::kv::coord::revision_of;
use quorum::machine::{KvCommand, KvStore, StateMachine as _, shard_for_key};

/// An acknowledged put: where it was committed, and what.
#[derive(Clone, Debug)]
struct Acked {
    shard: u16,
    slot: u64,
    index: u32,
    key: String,
    value: String,
}

/// Writers putting unique keys until stopped, recording where each acknowledged put was
/// committed; the count of puts that failed (whose fate is unknown).
fn start_writers(
    cluster: &Cluster,
    count: usize,
    acked: &Arc<Mutex<Vec<Acked>>>,
    failed: &Arc<Mutex<usize>>,
    stop: &Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<()>> {
    (0..count)
        .map(|writer| {
            let client = cluster.client(Duration::from_secs(10)).unwrap();
            let (acked, failed, stop) = (acked.clone(), failed.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let key = format!("w{writer}-{n}");
                    let value = format!("{key}/{}", "v".repeat(300));
                    let shard = shard_for_key(key.as_bytes(), usize::from(client.shards())) as u16;
                    let put =
                        KvCommand::Put { key: key.clone().into(), value: value.clone().into() };
                    match client.call(shard, &put.encode()) {
                        Ok(response) => acked.lock().unwrap().push(Acked {
                            shard,
                            slot: response.slot.0,
                            index: response.index,
                            key,
                            value,
                        }),
                        Err(_) => *failed.lock().unwrap() += 1,
                    }
                }
            })
        })
        .collect()
}

/// Each shard's state in the source when every slot below `slots[k]` was applied: the
/// acknowledged puts below it, in log order.
fn model(acked: &[Acked], slots: &[u64]) -> Vec<(u64, u64)> {
    (0..slots.len())
        .map(|shard| {
            let mut puts: Vec<&Acked> = acked
                .iter()
                .filter(|put| usize::from(put.shard) == shard && put.slot < slots[shard])
                .collect();
            puts.sort_by_key(|put| (put.slot, put.index));
            let mut store = KvStore::default();
            for put in puts {
                let command =
                    KvCommand::Put { key: put.key.clone().into(), value: put.value.clone().into() };
                // Each write's revision is its place in the merged order (docs/coordination.md).
                let position = put.slot * slots.len() as u64 + shard as u64;
                store.apply_at(revision_of(position, put.index), &command.encode());
            }
            let summary = store.summary();
            (summary.entries, summary.digest)
        })
        .collect()
}

/// `quorum status --cluster --json --digest`, once it answers (a node may still be starting).
fn status_json(seed: &str, cluster_id: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (code, stdout, stderr) = quorum(&[
            "status",
            "--cluster",
            seed,
            "--cluster-id",
            cluster_id,
            "--json",
            "--digest",
        ]);
        if code == 0 {
            return serde_json::from_str(stdout.trim()).unwrap();
        }
        assert!(Instant::now() < deadline, "no status in 20 s: {stderr}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_backup_under_writes_restores_into_a_new_cluster_with_the_sources_digests() {
    let dir = tempfile::tempdir().unwrap();
    let flags = ["--shards", "2", "--snapshot-every-mib", "1"];
    let dirs = (1..=3).map(|n| dir.path().join(format!("source-{n}"))).collect();
    let source = Cluster::start(51, dirs, dir.path(), &flags);
    let _ = source.await_leader(Duration::from_secs(20));
    let seed = source.nodes[0].address.clone();

    let (acked, failed) = (Arc::new(Mutex::new(Vec::new())), Arc::new(Mutex::new(0)));
    let stop = Arc::new(AtomicBool::new(false));
    let writers = start_writers(&source, 8, &acked, &failed, &stop);
    // Until both shards have snapshots, so the backup starts from them.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = status_json(&seed, "51");
        let shards = status["members"][0]["shards"].as_array().unwrap().clone();
        if shards.iter().all(|shard| shard["snapshot_slot"].as_u64().is_some()) {
            break;
        }
        assert!(Instant::now() < deadline, "no snapshots in a minute: {status}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let file = dir.path().join("cluster.backup");
    let file_text = file.to_str().unwrap();
    let (code, stdout, stderr) = quorum(&[
        "snapshot",
        "save",
        "--cluster",
        &seed,
        "--cluster-id",
        "51",
        "--out",
        file_text,
        "--json",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let saved: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert_eq!(*failed.lock().unwrap(), 0, "a put of unknown fate would make the model guess");

    let slots: Vec<u64> =
        saved["shards"].as_array().unwrap().iter().map(|s| s["slot"].as_u64().unwrap()).collect();
    let position = saved["position"].as_u64().unwrap();
    for (shard, slot) in slots.iter().enumerate() {
        assert_eq!(*slot, (position.saturating_sub(shard as u64)).div_ceil(2), "{saved}");
    }
    let below = acked.iter().filter(|put| put.slot < slots[usize::from(put.shard)]).count();
    assert!(
        below > 1000 && below < acked.len(),
        "writes before and after: {below} of {}",
        acked.len()
    );
    let expected = model(&acked, &slots);
    for (shard, (entries, digest)) in expected.iter().enumerate() {
        let section = &saved["shards"][shard];
        assert_eq!(section["entries"], *entries, "shard {shard}: {saved}");
        assert_eq!(section["digest"], format!("{digest:016x}"), "shard {shard}: {saved}");
    }
    drop(source);

    // A fresh cluster of another id from the backup.
    let restored_dirs: Vec<_> = (1..=3).map(|n| dir.path().join(format!("restored-{n}"))).collect();
    let ports: Vec<u16> =
        (0..3).map(|_| quorum::bench::embedded::free_port_range(2).unwrap()).collect();
    let peers =
        (1..=3).map(|n| format!("{n}=127.0.0.1:{}", ports[n - 1])).collect::<Vec<_>>().join(",");
    for (n, data) in (1..=3).zip(&restored_dirs) {
        let id = n.to_string();
        let (code, _, stderr) = quorum(&[
            "snapshot",
            "restore",
            file_text,
            "--data-dir",
            data.to_str().unwrap(),
            "--id",
            &id,
            "--peers",
            &peers,
            "--cluster-id",
            "52",
        ]);
        assert_eq!(code, 0, "{stderr}");
    }
    let specs = (0..3)
        .map(|n| common::NodeSpec {
            address: format!("127.0.0.1:{}", ports[n]),
            data_dir: restored_dirs[n].clone(),
            wrapper: Vec::new(),
        })
        .collect();
    let restored = Cluster::start_on(52, specs, dir.path(), &["--shards", "2"]);
    let seed = restored.nodes[0].address.clone();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        let status = status_json(&seed, "52");
        if status["healthy"] == true {
            break status;
        }
        assert!(Instant::now() < deadline, "the restored cluster is not healthy: {status}");
        std::thread::sleep(Duration::from_millis(100));
    };
    for member in status["members"].as_array().unwrap() {
        for (shard, (entries, digest)) in expected.iter().enumerate() {
            let got = &member["shards"][shard];
            // Started from the backup's snapshot; an idle shard's leader may have skipped on
            // since (no-ops: the state is the same).
            assert_eq!(got["snapshot_slot"], slots[shard], "{member}");
            assert!(got["applied_index"].as_u64().unwrap() >= slots[shard], "{member}");
            assert_eq!(got["entries"], *entries, "{member}");
            assert_eq!(got["digest"], format!("{digest:016x}"), "{member}");
        }
    }
    // Writes go on, and what was acknowledged before the position reads back.
    let client = restored.client(Duration::from_secs(10)).unwrap();
    client.put(b"after-restore", b"yes").unwrap();
    assert_eq!(client.get(b"after-restore").unwrap().as_deref(), Some(&b"yes"[..]));
    let before = acked.iter().find(|put| put.slot < slots[usize::from(put.shard)]).unwrap();
    assert_eq!(client.get(before.key.as_bytes()).unwrap(), Some(before.value.clone().into_bytes()));
    let after = acked.iter().find(|put| put.slot >= slots[usize::from(put.shard)]).unwrap();
    assert_eq!(client.get(after.key.as_bytes()).unwrap(), None, "{after:?} is past the backup");

    // A damaged or cut backup is refused, and leaves no directory.
    let bytes = std::fs::read(&file).unwrap();
    let mut flipped = bytes.clone();
    flipped[bytes.len() / 2] ^= 0x20;
    for (name, damaged, says) in [
        ("flipped", &flipped[..], "checksum mismatch"),
        ("cut", &bytes[..bytes.len() * 2 / 3], "truncated"),
    ] {
        let damaged_file = dir.path().join(name);
        std::fs::write(&damaged_file, damaged).unwrap();
        let data = dir.path().join(format!("from-{name}"));
        let (code, _, stderr) = quorum(&[
            "snapshot",
            "restore",
            damaged_file.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
            "--id",
            "1",
            "--peers",
            &peers,
            "--cluster-id",
            "52",
        ]);
        assert_eq!(code, 1, "{name}: {stderr}");
        assert!(
            stderr.contains(says) && stderr.contains("nothing was restored"),
            "{name}: {stderr}"
        );
        assert!(!data.exists(), "{name}: a data directory was left");
        let staging = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(Result::ok)
            .filter(|entry| entry.file_name().to_string_lossy().contains("restoring"))
            .count();
        assert_eq!(staging, 0, "{name}: a half-built directory was left");
    }
}

#[test]
fn a_cluster_applying_the_merged_order_is_not_backed_up_shard_by_shard() {
    let dir = tempfile::tempdir().unwrap();
    let node = Cluster::start(53, vec![dir.path().join("node")], dir.path(), &["--apply", "total"]);
    node.await_serving(Duration::from_secs(20));
    let out = dir.path().join("cluster.backup");
    let (code, _, stderr) = quorum(&[
        "snapshot",
        "save",
        "--cluster",
        &node.nodes[0].address,
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("--apply total"), "{stderr}");
    assert!(!out.exists(), "nothing written");
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|entry| entry.file_name().to_string_lossy().contains("partial"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
