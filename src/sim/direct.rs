//! A fault-free, clock-free cluster in one thread: messages are handed over in memory in the
//! order sent, and every persist is durable at once. It measures the cost of the protocol
//! itself (the core bench, the allocation test) with nothing else in the way.

use std::collections::VecDeque;

use crate::core::{
    Action, BatchReader, ClusterId, Config, Envelope, NodeId, Replica, RequestId, RoleKind,
};

const CLUSTER: ClusterId = ClusterId(1);

/// Replicas of one shard wired directly to each other.
pub struct DirectCluster {
    replicas: Vec<Replica>,
    queue: VecDeque<(usize, Envelope)>,
    actions: Vec<Action>,
    applied_commands: Vec<u64>,
    leader: usize,
    next_sequence: u64,
}

impl DirectCluster {
    /// `voters` replicas with default timing and `batch_commands_max`; replica 0 is elected.
    ///
    /// # Panics
    /// If replica 0 does not become leader (a bug).
    #[must_use]
    pub fn new(voters: usize, batch_commands_max: usize) -> DirectCluster {
        let ids: Vec<NodeId> = (1..=voters as u16).map(NodeId).collect();
        let replicas = ids
            .iter()
            .map(|id| {
                let mut config = Config::new(CLUSTER, *id, ids.clone());
                config.batch_commands_max = batch_commands_max;
                // No disk to serve compacted slots from, and none needed: nobody lags here.
                config.retain_slots = u64::MAX;
                Replica::new(config).expect("valid config")
            })
            .collect();
        let mut cluster = DirectCluster {
            replicas,
            queue: VecDeque::with_capacity(1024),
            actions: Vec::with_capacity(1024),
            applied_commands: vec![0; voters],
            leader: 0,
            next_sequence: 0,
        };
        while cluster.replicas[0].role() != RoleKind::Leader {
            cluster.replicas[0].on_tick();
            cluster.run_until_quiet();
        }
        cluster
    }

    /// Proposes `commands` commands of `payload` at the leader, flushes, and delivers every
    /// message until nothing moves. Returns how many commands the leader committed meanwhile.
    pub fn propose_and_commit(&mut self, commands: usize, payload: &[u8]) -> u64 {
        let before = self.applied_commands[self.leader];
        let leader = &mut self.replicas[self.leader];
        for _ in 0..commands {
            self.next_sequence += 1;
            let id = RequestId { client: 1, sequence: self.next_sequence };
            leader.propose(id, payload).expect("the pipeline drains between rounds");
        }
        leader.flush();
        self.run_until_quiet();
        self.applied_commands[self.leader] - before
    }

    /// Commands each replica has committed and (no-op) applied.
    #[must_use]
    pub fn applied_commands(&self) -> &[u64] {
        &self.applied_commands
    }

    /// Delivers messages and completes persists until no replica has anything left to do.
    pub fn run_until_quiet(&mut self) {
        loop {
            let mut progressed = false;
            for index in 0..self.replicas.len() {
                progressed |= self.drain(index);
            }
            while let Some((to, envelope)) = self.queue.pop_front() {
                progressed = true;
                self.replicas[to].on_message(envelope).expect("members only");
                self.drain(to);
            }
            if !progressed {
                return;
            }
        }
    }

    fn drain(&mut self, index: usize) -> bool {
        let mut actions = std::mem::take(&mut self.actions);
        self.replicas[index].take_actions(&mut actions);
        let any = !actions.is_empty();
        let from = self.replicas[index].node();
        for action in actions.drain(..) {
            match action {
                Action::Send { to, message } => {
                    self.queue.push_back((
                        to.0 as usize - 1,
                        Envelope { cluster_id: CLUSTER, from, message },
                    ));
                }
                Action::Persist { seq, then_send, .. } => {
                    self.replicas[index].on_persisted(seq);
                    if let Some((to, message)) = then_send {
                        self.queue.push_back((
                            to.0 as usize - 1,
                            Envelope { cluster_id: CLUSTER, from, message },
                        ));
                    }
                }
                Action::Commit { value, .. } => {
                    if let crate::core::Value::Batch(bytes) = value {
                        // A no-op apply that still walks every command, as a real one must.
                        let commands = BatchReader::new(&bytes).filter(Result::is_ok).count();
                        self.applied_commands[index] += commands as u64;
                    }
                }
                // No reads here: the benches propose only.
                Action::Repaired | Action::ReadReady { .. } | Action::ReadsAborted { .. } => {}
                Action::SendArchived { .. } => {
                    unreachable!("nothing is compacted here: retain_slots is unbounded")
                }
            }
        }
        self.actions = actions;
        any
    }
}
