//! The state machine a node runs (and the simulator): the built-in key-value store, with one
//! test-only trap.
//!
//! `quorum node` has no way to load another state machine, yet the runtime must be tested
//! with one that panics (a shard whose executor dies must stop the node). With the
//! environment variable [`PANIC_ON_KEY_VARIABLE`] set, the store panics when it applies a put
//! of that key. An environment variable rather than a flag: it is not in `--help`, cannot be
//! put in a config file by mistake, and says what it is for in its name. Unset, the store is
//! the plain [`KvStore`] (one branch per command).

use super::{KvCommandRef, KvReply, KvStore, QueryWait, StateMachine, StateSummary, Timer};
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

    // Every provided method the store overrides is passed on: a default taken here instead
    // would quietly change what a node does (the store's watches held at the leader became
    // polls answered at once, until session 16). `tests::every_override_is_passed_on`.

    fn query_wait(&self, request: &[u8], reply: &KvReply) -> Option<QueryWait> {
        self.store.query_wait(request, reply)
    }

    fn wait_refused(&self, request: &[u8]) -> Option<KvReply> {
        self.store.wait_refused(request)
    }

    fn change_mark(&self) -> u64 {
        self.store.change_mark()
    }

    fn changed_since(&self, mark: u64, visit: &mut dyn FnMut(&[u8])) -> bool {
        self.store.changed_since(mark, visit)
    }

    fn reply_size_bytes(reply: &KvReply) -> usize {
        KvStore::reply_size_bytes(reply)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::KvCommand;
    use crate::machine::kv::{CoordCommand, HISTORY_BYTES_DEFAULT, KeyRange};

    /// The node's machine answers every provided method as the store it wraps does.
    #[test]
    fn every_override_is_passed_on() {
        let mut node = NodeMachine::from_environment(HISTORY_BYTES_DEFAULT);
        let mut store = KvStore::with_history_bytes(HISTORY_BYTES_DEFAULT);
        let put = KvCommand::Put { key: b"k".to_vec(), value: b"v".to_vec() }.encode();
        let (node_mark, store_mark) = (node.change_mark(), store.change_mark());
        assert_eq!(node.apply_at(7, &put), store.apply_at(7, &put));
        assert_eq!(node.change_mark(), store.change_mark());
        assert_ne!(node.change_mark(), node_mark, "a put moves the change mark");

        fn changed(machine: &impl StateMachine, mark: u64) -> (bool, Vec<Vec<u8>>) {
            let mut keys = Vec::new();
            let told = machine.changed_since(mark, &mut |key| keys.push(key.to_vec()));
            (told, keys)
        }
        let by_node = changed(&node, node_mark);
        let by_store = changed(&store, store_mark);
        assert_eq!(by_node, by_store);
        assert_eq!(by_node, (true, vec![b"k".to_vec()]));

        let wait = CoordCommand::ChangesWait {
            range: KeyRange::Key(b"k".to_vec()),
            from: 8,
            limit: 0,
            locks: false,
            wait_ms: 1_000,
        }
        .encode();
        let (node_reply, store_reply) = (node.query(&wait), store.query(&wait));
        assert_eq!(node_reply, store_reply);
        let held = node.query_wait(&wait, &node_reply);
        assert_eq!(held, store.query_wait(&wait, &store_reply));
        assert!(held.is_some(), "a watch with nothing to give yet waits at the leader");
        assert_eq!(node.wait_refused(&wait), store.wait_refused(&wait));
        assert!(node.wait_refused(&wait).is_some());
        assert_eq!(
            NodeMachine::reply_size_bytes(&node_reply),
            KvStore::reply_size_bytes(&store_reply)
        );
    }
}
