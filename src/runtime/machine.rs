//! The state machine a node runs: the built-in key-value store, with one test-only trap.
//!
//! `quorum node` has no way to load another state machine, yet the runtime must be tested
//! with one that panics (a shard whose executor dies must stop the node). With the
//! environment variable [`PANIC_ON_KEY_VARIABLE`] set, the store panics when it applies a put
//! of that key. An environment variable rather than a flag: it is not in `--help`, cannot be
//! put in a config file by mistake, and says what it is for in its name. Unset, the store is
//! the plain [`KvStore`] (one branch per command).

use crate::machine::{KvCommandRef, KvReply, KvStore, StateMachine, StateSummary, Timer};
use crate::storage::snapshot::SnapshotError;

/// Test-only: a node whose environment sets this makes its key-value store panic when it
/// applies a put of the variable's value as a key.
pub const PANIC_ON_KEY_VARIABLE: &str = "QUORUM_TEST_PANIC_ON_KEY";

/// The key-value store, maybe with the test-only trap.
#[derive(Debug, Default)]
pub struct NodeMachine {
    store: KvStore,
    panic_on_key: Option<Box<[u8]>>,
}

impl NodeMachine {
    /// The store, with the trap the environment asks for (logged: a node running with it is
    /// one bad key away from stopping).
    pub fn from_environment(history_bytes: usize) -> NodeMachine {
        let panic_on_key = std::env::var_os(PANIC_ON_KEY_VARIABLE)
            .map(|key| key.into_encoded_bytes().into_boxed_slice());
        static WARNED: std::sync::Once = std::sync::Once::new();
        if let Some(key) = &panic_on_key {
            WARNED.call_once(|| {
                tracing::warn!(
                    key = %String::from_utf8_lossy(key),
                    "{PANIC_ON_KEY_VARIABLE} is set: a put of this key panics (test only)"
                )
            });
        }
        NodeMachine { store: KvStore::with_history_bytes(history_bytes), panic_on_key }
    }
}

impl StateMachine for NodeMachine {
    type Reply = KvReply;

    fn apply(&mut self, command: &[u8]) -> KvReply {
        let revision = self.store.revision() + 1;
        self.apply_at(revision, command)
    }

    fn apply_at(&mut self, revision: u64, command: &[u8]) -> KvReply {
        if let Some(trap) = &self.panic_on_key {
            match KvCommandRef::decode(command) {
                Some(KvCommandRef::Put { key, .. }) if key == &trap[..] => {
                    panic!("test-only panic: a put of key {:?}", String::from_utf8_lossy(key));
                }
                _ => {}
            }
        }
        self.store.apply_at(revision, command)
    }

    fn query(&self, request: &[u8]) -> KvReply {
        self.store.query(request)
    }

    fn timers(&self, out: &mut Vec<Timer>) {
        self.store.timers(out);
    }

    fn timer_command(&self, timer: &Timer) -> Vec<u8> {
        self.store.timer_command(timer)
    }

    fn orders_across_shards(reply: &KvReply) -> bool {
        KvStore::orders_across_shards(reply)
    }

    fn encode_reply(reply: &KvReply, out: &mut Vec<u8>) {
        KvStore::encode_reply(reply, out);
    }

    fn decode_reply(bytes: &[u8]) -> Option<KvReply> {
        KvStore::decode_reply(bytes)
    }

    fn summary(&self) -> StateSummary {
        self.store.summary()
    }

    fn snapshot(&self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        self.store.snapshot(out)
    }

    /// The trap is not part of the state: a restored store has none (a test that needs it
    /// after a snapshot restore sets nothing up for it).
    fn restore(image: &mut dyn std::io::Read) -> Result<NodeMachine, SnapshotError> {
        Ok(NodeMachine { store: KvStore::restore(image)?, panic_on_key: None })
    }
}
