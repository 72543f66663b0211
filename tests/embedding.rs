//! A program's own state machine, hosted by in-process nodes (issue #15, `Node::builder`): a
//! ledger that is not the key-value store, replicated by three nodes with two shards each,
//! written by concurrent clients, read by queries, equal on every replica.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests may unwrap.

use std::sync::Arc;
use std::time::{Duration, Instant};

use quorum::bench::embedded::free_port_range;
use quorum::client::node_status;
use quorum::core::ClusterId;
use quorum::machine::{StateMachine, StateSummary};
use quorum::runtime::Node;
use quorum::runtime::config::{NodeConfig, NodeSettings};
use quorum::storage::snapshot::SnapshotError;

const CLUSTER: u64 = 15;

/// Balances by account: a command adds an amount to an account (`account: u8`, `amount: u64`
/// little-endian) and replies with the new balance; a query (`account`) replies with the
/// balance. Overdrafts are refused with `u64::MAX` and change nothing.
#[derive(Debug, Default)]
struct Ledger {
    balances: [u64; 4],
}

impl StateMachine for Ledger {
    type Reply = u64;

    fn apply(&mut self, command: &[u8]) -> u64 {
        let Some((&account, amount)) = command.split_first() else { return u64::MAX };
        let (Some(balance), Ok(amount)) =
            (self.balances.get_mut(usize::from(account)), <[u8; 8]>::try_from(amount))
        else {
            return u64::MAX;
        };
        *balance = balance.saturating_add(u64::from_le_bytes(amount));
        *balance
    }

    fn query(&self, request: &[u8]) -> u64 {
        request
            .first()
            .and_then(|account| self.balances.get(usize::from(*account)))
            .copied()
            .unwrap_or(u64::MAX)
    }

    fn encode_reply(reply: &u64, out: &mut Vec<u8>) {
        out.extend_from_slice(&reply.to_le_bytes());
    }

    fn decode_reply(bytes: &[u8]) -> Option<u64> {
        Some(u64::from_le_bytes(bytes.try_into().ok()?))
    }

    fn summary(&self) -> StateSummary {
        let digest = self.balances.iter().fold(0u64, |hash, balance| {
            hash.rotate_left(17) ^ balance.wrapping_mul(0x9e37_79b9_7f4a_7c15)
        });
        StateSummary { entries: self.balances.iter().filter(|b| **b > 0).count() as u64, digest }
    }

    /// Streamed: the balances one after the other (a large state writes its image in as many
    /// pieces as it likes; nothing is held whole).
    fn snapshot(&self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        self.balances.iter().try_for_each(|balance| quorum::write_u64(out, *balance))
    }

    /// Read back from the stream; a stream cut short or too long is an error, never a panic.
    fn restore(image: &mut dyn std::io::Read) -> Result<Ledger, SnapshotError> {
        let mut reader = quorum::ImageReader::new(image);
        let mut ledger = Ledger::default();
        for balance in &mut ledger.balances {
            *balance = reader.u64()?;
        }
        reader.finish("a ledger image is four balances")?;
        Ok(ledger)
    }
}

fn deposit(account: u8, amount: u64) -> Vec<u8> {
    let mut command = vec![account];
    command.extend_from_slice(&amount.to_le_bytes());
    command
}

fn balance(body: &[u8]) -> u64 {
    Ledger::decode_reply(body).expect("a ledger reply")
}

#[test]
fn a_programs_own_state_machine_is_replicated_and_queried() {
    let dir = tempfile::tempdir().unwrap();
    let addresses: Vec<String> =
        (0..3).map(|_| format!("127.0.0.1:{}", free_port_range(2).unwrap())).collect();
    let peers: Vec<String> =
        addresses.iter().enumerate().map(|(i, address)| format!("{}={address}", i + 1)).collect();
    let nodes: Vec<Node> = addresses
        .iter()
        .enumerate()
        .map(|(index, address)| {
            let settings = NodeSettings {
                id: Some(index as u16 + 1),
                cluster_id: Some(CLUSTER),
                listen: Some(address.clone()),
                peers: Some(peers.join(",")),
                data_dir: Some(dir.path().join(format!("node-{}", index + 1))),
                shards: Some(2),
                connections_max: Some(256),
                ..NodeSettings::default()
            };
            let config = NodeConfig::resolve(settings).unwrap();
            Node::builder(config).state_machine(|_shard| Ledger::default()).start().unwrap()
        })
        .collect();
    let client = Arc::new(nodes[0].client().unwrap());
    // Four writers, 50 deposits of 1 to account 2 each, on shard 0; one deposit on shard 1.
    let writers: Vec<_> = (0..4)
        .map(|_| {
            let client = client.clone();
            std::thread::spawn(move || {
                let mut last = 0;
                for _ in 0..50 {
                    let response = client.call(0, &deposit(2, 1)).unwrap();
                    assert!(!response.duplicate);
                    let now = balance(&response.body);
                    assert!(now > last, "balances only grow: {last} then {now}");
                    last = now;
                }
            })
        })
        .collect();
    for writer in writers {
        writer.join().unwrap();
    }
    assert_eq!(balance(&client.call(1, &deposit(0, 7)).unwrap().body), 7);
    // Queries read the state as the log orders them; a refused command changes nothing.
    assert_eq!(balance(&client.query(0, &[2]).unwrap().body), 200);
    assert_eq!(balance(&client.call(0, &deposit(9, 1)).unwrap().body), u64::MAX);
    assert_eq!(balance(&client.query(1, &[0]).unwrap().body), 7);
    assert_eq!(balance(&client.query(1, &[2]).unwrap().body), 0, "shards have their own");
    // Every replica of each shard holds the same ledger.
    let expected = {
        let mut ledger = Ledger::default();
        ledger.apply(&deposit(2, 200));
        ledger.summary()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    for address in &addresses {
        loop {
            let statuses = node_status(address, ClusterId(CLUSTER), true).unwrap();
            if statuses[0].summary == expected {
                break;
            }
            assert!(Instant::now() < deadline, "{address}: {:?}", statuses[0].summary);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    drop(client);
    for node in &nodes {
        node.stop();
    }
    for node in nodes {
        node.wait().unwrap();
    }
}
