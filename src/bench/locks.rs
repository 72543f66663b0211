//! The lock workload (`quorum bench --workload lock`): each of `clients` workers holds a lease
//! of its own and takes and releases a lock of its own name, over and over; one cycle is a
//! lock and an unlock, both coordination writes (answered once every shard has committed past
//! them, docs/coordination.md). Counted and timed per cycle.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::load::{LoadResult, LoadSpec, Progress, Window};
use crate::client::Client;

/// How long a worker's lease lives without a keep-alive: longer than any run.
const LEASE_TTL: Duration = Duration::from_secs(3600);

/// Runs the lock workload against `client`'s cluster.
///
/// # Errors
/// A lease could not be granted.
pub fn run(
    client: &Arc<Client>,
    spec: &LoadSpec,
    progress: &Arc<Progress>,
) -> Result<LoadResult, String> {
    let workers = spec.clients.max(1);
    let mut leases = Vec::with_capacity(workers);
    for _ in 0..workers {
        leases.push(client.lease_grant(LEASE_TTL).map_err(|error| error.to_string())?.id);
    }
    let begin = Instant::now();
    let window =
        Arc::new(Window { start: begin + spec.warmup, end: begin + spec.warmup + spec.duration });
    let stop = Arc::new(AtomicBool::new(false));
    let handles: Vec<_> = leases
        .iter()
        .enumerate()
        .map(|(worker, &lease)| {
            let (client, window, stop, progress) =
                (client.clone(), window.clone(), stop.clone(), progress.clone());
            std::thread::spawn(move || {
                let name = format!("bench-lock-{worker}").into_bytes();
                let mut tally = LoadResult::empty(0.0);
                while Instant::now() < window.end && !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    let cycle = client
                        .lock(&name, lease, b"", Duration::from_secs(10))
                        .and_then(|_| client.unlock(&name, lease));
                    tally.record(&window, started, true, cycle.is_ok());
                    progress.completed.fetch_add(1, Ordering::Relaxed);
                }
                tally
            })
        })
        .collect();
    let mut total = LoadResult::empty(spec.duration.as_secs_f64());
    for handle in handles {
        let part = handle.join().map_err(|_| "a lock worker panicked".to_string())?;
        total.merge(&part)?;
    }
    stop.store(true, Ordering::SeqCst);
    for lease in leases {
        let _ = client.lease_revoke(lease);
    }
    Ok(total)
}
