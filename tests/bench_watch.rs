//! `quorum bench --workload watch`, run briefly on an embedded cluster: the watchers get the
//! puts' events, each once and in order, and none is missed.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests may unwrap.

use std::time::Duration;

use quorum::bench::load::{LoadSpec, Workload};
use quorum::bench::{self, BenchSpec};
use quorum::runtime::config::{ApplyMode, Durability};

#[test]
fn the_watch_workload_delivers_every_acknowledged_put_once_and_in_order() {
    let spec = BenchSpec {
        load: LoadSpec {
            clients: 1,
            payload_bytes: 16,
            duration: Duration::from_secs(1),
            warmup: Duration::from_millis(200),
            read_ratio: 0.0,
            consistency: None,
            keys: 1,
            rate: Some(2_000.0),
            only_shard: None,
            workload: Workload::Watch,
            watchers: 20,
            pipeline: None,
        },
        shards: 2,
        voters: 3,
        durability: Durability::Fsync,
        apply: ApplyMode::Shard,
        target: None,
        cluster_id: 0,
        progress: false,
    };
    let row = bench::run(&spec).unwrap();
    assert_eq!(row.workload, "watch");
    let watch = row.watch.clone().expect("the watch workload's numbers");
    assert_eq!(watch.watchers, 20);
    assert!(watch.puts_acknowledged > 500, "{watch:?}");
    assert!(watch.events >= watch.puts_acknowledged, "{watch:?}");
    assert_eq!(watch.missed, 0, "{watch:?}");
    assert_eq!(watch.duplicated, 0, "{watch:?}");
    assert_eq!(watch.out_of_order, 0, "{watch:?}");
    assert_eq!(watch.put_errors, 0, "{watch:?}");
    assert_eq!(watch.wait_errors, 0, "{watch:?}");
    assert!(row.ops_per_sec > 0.0, "events delivered in the window");
    assert!(row.p99_us > 0.0, "{row:?}");
    assert!(row.p99_us >= row.p50_us, "{row:?}");
}
