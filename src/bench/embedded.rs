//! A whole cluster inside this process: `voters` nodes on loopback, each with its own
//! temporary data directory, real TCP between them and real WAL files. Shard `k` of every
//! node runs on core `k` (ARCHITECTURE.md, "One glommio executor per shard"). The data is removed when the cluster is dropped.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::client::node_status;
use crate::core::{ClusterId, NodeId, RoleKind};
use crate::runtime::Node;
use crate::runtime::config::{ApplyMode, Durability, NodeConfig, NodeSettings};

/// The cluster id every embedded cluster uses.
pub const EMBEDDED_CLUSTER_ID: u64 = 0x5155_4f52;

/// What an embedded cluster is made of.
#[derive(Clone, Debug)]
pub struct EmbeddedSpec {
    /// Voters (nodes).
    pub voters: u16,
    /// Shards per node.
    pub shards: u16,
    /// Whether acknowledgements wait for fsync.
    pub durability: Durability,
    /// WAL segment size in MiB.
    pub wal_segment_mib: u32,
    /// Where committed commands are applied.
    pub apply: ApplyMode,
    /// Lease reads on (protocol.md §5.4).
    pub read_lease: bool,
}

/// A running in-process cluster.
pub struct EmbeddedCluster {
    nodes: Vec<Node>,
    addresses: Vec<String>,
    dir: tempfile::TempDir,
}

/// A base port with `count` free ports above it on 127.0.0.1, below the kernel's range of
/// ephemeral ports: a port from that range can be taken by any outgoing connection in the
/// moment a node is down, and the node could not listen on it again.
///
/// # Errors
/// No such range found after many tries.
pub fn free_port_range(count: u16) -> Result<u16, String> {
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (floor, ceiling) = (10_000u16, ephemeral_low.saturating_sub(count));
    if ceiling <= floor {
        return Err(format!("no room for {count} ports below the ephemeral range"));
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.subsec_nanos());
    let mut seed = u64::from(nanos)
        ^ (u64::from(std::process::id()) << 32)
        ^ CALLS.fetch_add(1, Ordering::Relaxed).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    for _ in 0..1000 {
        // xorshift: processes and threads probing at once start at different places.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let base = floor + (seed % u64::from(ceiling - floor)) as u16;
        if (0..count).all(|k| std::net::TcpListener::bind(("127.0.0.1", base + k)).is_ok()) {
            return Ok(base);
        }
    }
    Err(format!("found no {count} free consecutive ports on 127.0.0.1"))
}

impl EmbeddedCluster {
    /// Starts the nodes and waits until every shard has a leader.
    ///
    /// # Errors
    /// A node did not start, or no leader came up within 10 seconds.
    pub fn start(spec: &EmbeddedSpec) -> Result<EmbeddedCluster, String> {
        let dir = tempfile::Builder::new()
            .prefix("quorum-embedded-")
            .tempdir()
            .map_err(|error| format!("cannot create a temporary directory: {error}"))?;
        let mut addresses = Vec::new();
        for _ in 0..spec.voters {
            addresses.push(format!("127.0.0.1:{}", free_port_range(spec.shards)?));
        }
        let peers: Vec<String> = addresses
            .iter()
            .enumerate()
            .map(|(i, address)| format!("{}={address}", i + 1))
            .collect();
        let peers = peers.join(",");
        let mut nodes = Vec::new();
        for (index, address) in addresses.iter().enumerate() {
            let settings = NodeSettings {
                id: Some(index as u16 + 1),
                cluster_id: Some(EMBEDDED_CLUSTER_ID),
                listen: Some(address.clone()),
                peers: Some(peers.clone()),
                data_dir: Some(dir.path().join(format!("node-{}", index + 1))),
                shards: Some(spec.shards),
                wal_segment_mib: Some(spec.wal_segment_mib),
                apply: Some(spec.apply),
                durability: Some(spec.durability),
                // A bench opens a few connections; three nodes share this process's files.
                connections_max: Some(1024),
                read_lease: Some(spec.read_lease),
                ..NodeSettings::default()
            };
            let config = NodeConfig::resolve(settings).map_err(|error| error.to_string())?;
            nodes.push(Node::start(config).map_err(|error| error.to_string())?);
        }
        let cluster = EmbeddedCluster { nodes, addresses, dir };
        cluster.await_leaders(Duration::from_secs(10))?;
        Ok(cluster)
    }

    /// The nodes' addresses.
    #[must_use]
    pub fn addresses(&self) -> &[String] {
        &self.addresses
    }

    /// The cluster's id.
    #[must_use]
    pub fn cluster_id(&self) -> ClusterId {
        ClusterId(EMBEDDED_CLUSTER_ID)
    }

    /// Where the nodes keep their data.
    #[must_use]
    pub fn data_dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    fn await_leaders(&self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut leaders: Vec<Option<NodeId>> = Vec::new();
            for address in &self.addresses {
                if let Ok(statuses) = node_status(address, self.cluster_id(), false) {
                    leaders.resize(statuses.len().max(leaders.len()), None);
                    for (shard, status) in statuses.iter().enumerate() {
                        if status.role == RoleKind::Leader {
                            leaders[shard] = status.leader;
                        }
                    }
                }
            }
            if !leaders.is_empty() && leaders.iter().all(Option::is_some) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("no leader for every shard within {timeout:?}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops every node and removes the data.
    ///
    /// # Errors
    /// A node failed while running.
    pub fn stop(self) -> Result<(), String> {
        for node in &self.nodes {
            node.stop();
        }
        let mut result = Ok(());
        for node in self.nodes {
            if let Err(error) = node.wait() {
                result = Err(error.to_string());
            }
        }
        result
    }
}
