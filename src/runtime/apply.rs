//! Total-order apply on a node (`--apply total`): an executor of its own runs the node's one
//! state machine ([`TotalApplier`]); each shard sends it its committed runs and gets back the
//! outcomes of the commands it carried, for the clients waiting there. Two single-producer
//! channels per shard (glommio's shared channels), so the shards' hot paths share nothing but
//! these queues.

use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use glommio::channels::shared_channel::{self, SharedReceiver, SharedSender};
use glommio::{LocalExecutorBuilder, Placement};

use super::{Control, Hosted, NodeError};
use crate::machine::total_order::{Committed, TotalApplier};
use crate::machine::{AppliedCommand, StateMachine};
use crate::runtime::config::NodeConfig;

/// The node's one state machine, shared for status questions (its executor is the only other
/// user).
pub type TotalRef<S> = Arc<Mutex<TotalApplier<S>>>;

/// Outcomes of applied commands, for the shard that carried them.
type Outcomes<S> = Vec<AppliedCommand<<S as StateMachine>::Reply>>;

/// The applier's ends of one shard's channels: committed runs in, outcomes out.
type ApplierEnds<S> = (SharedReceiver<Vec<Committed>>, SharedSender<Outcomes<S>>);

/// Messages a channel holds before its sender waits.
const CHANNEL_CAPACITY: usize = 1024;

/// One shard's ends of its channels to the applier.
pub struct ShardLink<S: Hosted> {
    pub(super) runs: SharedSender<Vec<Committed>>,
    pub(super) outcomes: SharedReceiver<Outcomes<S>>,
    pub(super) total: TotalRef<S>,
}

/// The running applier, holding each shard's link until its executor takes it.
pub struct TotalApply<S: Hosted> {
    links: Vec<Option<ShardLink<S>>>,
}

impl<S: Hosted> TotalApply<S> {
    /// Shard `shard`'s link (taken once).
    pub fn link(&mut self, shard: u16) -> ShardLink<S> {
        self.links[usize::from(shard)].take().expect("one link per shard")
    }
}

/// Starts the applier's executor, applying to `machine`.
///
/// # Errors
/// The executor cannot be started.
pub fn start<S: Hosted>(
    config: &NodeConfig,
    control: &Arc<Control>,
    threads: &mut Vec<JoinHandle<Result<(), NodeError>>>,
    machine: S,
) -> Result<TotalApply<S>, NodeError> {
    let total = Arc::new(Mutex::new(TotalApplier::new(config.shards, machine, config.sessions)));
    let mut links = Vec::new();
    let mut ends = Vec::new();
    for _ in 0..config.shards {
        let (runs, runs_in) = shared_channel::new_bounded(CHANNEL_CAPACITY);
        let (outcomes_out, outcomes) = shared_channel::new_bounded(CHANNEL_CAPACITY);
        links.push(Some(ShardLink { runs, outcomes, total: total.clone() }));
        ends.push((runs_in, outcomes_out));
    }
    let failed = |reason: String| NodeError::Executor { shard: config.shards, reason };
    let applier_control = control.clone();
    let handle = LocalExecutorBuilder::new(Placement::Unbound)
        .name("apply")
        .io_memory(256 << 10)
        .spawn(move || run_apply(total, ends, applier_control))
        .map_err(|error| failed(format!("cannot start the applier: {error}")))?;
    threads.push(super::watch_executor(handle, "the total-order applier".into(), control.clone()));
    Ok(TotalApply { links })
}

async fn run_apply<S: Hosted>(
    total: TotalRef<S>,
    ends: Vec<ApplierEnds<S>>,
    control: Arc<Control>,
) -> Result<(), NodeError> {
    let mut receivers = Vec::new();
    let mut senders = Vec::new();
    for (runs_in, outcomes_out) in ends {
        receivers.push(runs_in.connect().await);
        senders.push(outcomes_out.connect().await);
    }
    let senders = Rc::new(senders);
    for (shard, receiver) in receivers.into_iter().enumerate() {
        let (total, senders, control) = (total.clone(), senders.clone(), control.clone());
        glommio::spawn_local(async move {
            while let Some(runs) = receiver.recv().await {
                let mut outcomes: Vec<Outcomes<S>> =
                    (0..senders.len()).map(|_| Vec::new()).collect();
                let result = {
                    let mut total = total.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                    let pushed = runs.iter().try_for_each(|run| {
                        total.push(shard as u16, run, |to, applied| {
                            outcomes[usize::from(to)].push(applied);
                        })
                    });
                    publish_metrics(&total, &control);
                    pushed
                };
                if let Err(error) = result {
                    tracing::error!(shard, %error, "total-order apply failed; stopping the node");
                    control.failed.store(true, Ordering::SeqCst);
                    control.stop.store(true, Ordering::SeqCst);
                    return;
                }
                for (to, outcomes) in outcomes.into_iter().enumerate() {
                    if !outcomes.is_empty() && senders[to].send(outcomes).await.is_err() {
                        return; // That shard stopped.
                    }
                }
            }
        })
        .detach();
    }
    while !control.stop.load(Ordering::SeqCst) {
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// Publishes what the node's one state machine applied, for every shard, where scrapes read it
/// (the shards publish the rest): once per message of runs, under the lock it already holds.
fn publish_metrics<S: StateMachine>(total: &TotalApplier<S>, control: &Control) {
    let shards = (control.metrics.len() as u64).max(1);
    let (next, sessions) = (total.next_position(), total.sessions() as u64);
    for (index, metrics) in control.metrics.iter().enumerate() {
        // The merge applied every position below its next: shard k's slots below
        // ⌈(next − k) / S⌉ (as `Host::status` reports it).
        let applied = next.saturating_sub(index as u64).div_ceil(shards);
        metrics.applied_slot.store(applied, Ordering::Relaxed);
        let commands = total.applied_by_shard(index as u16);
        metrics.commands_applied.store(commands, Ordering::Relaxed);
        metrics.sessions.store(sessions, Ordering::Relaxed);
    }
}
