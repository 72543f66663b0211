//! Pipelined clients (`quorum bench --pipeline N`): `clients` clients, each a [`Client`] of its
//! own (its own connection to each shard's leader, its own connection threads, its own
//! session), each keeping N requests outstanding on its connection and sending a new one as
//! each completes, as `redis-benchmark -c C -P N` does but with a window that slides instead
//! of emptying. Client k sends to the k-th loaded shard, round robin. Concurrency is
//! clients × N. One driver thread per loaded shard makes the requests of that shard's clients
//! and sends each client's refill as one frame on that client's connection.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::load::{Driver, LoadResult, LoadSpec, Progress, Window, keys_by_shard, preload};
use crate::client::{Callback, Client};

/// A request's outcome, as its client's callback reports it to the driver.
struct Done {
    client: usize,
    started: Instant,
    write: bool,
    ok: bool,
}

/// Runs the key-value load from `clients`, each keeping `spec.pipeline` requests outstanding.
///
/// # Errors
/// No clients; the spec is unusable (no keys on a shard); the keys could not be preloaded.
pub fn run(
    clients: &[Arc<Client>],
    spec: &LoadSpec,
    progress: &Arc<Progress>,
) -> Result<LoadResult, String> {
    let first = clients.first().ok_or("no clients")?;
    let shards = first.shards();
    let by_shard = keys_by_shard(spec.keys.max(1), shards);
    super::load::check_shards(spec, shards, &by_shard)?;
    if spec.read_ratio > 0.0 {
        preload(first, spec, &by_shard)?;
    }
    let loaded: Vec<u16> = spec.only_shard.map_or_else(|| (0..shards).collect(), |k| vec![k]);
    let begin = Instant::now();
    let window =
        Arc::new(Window { start: begin + spec.warmup, end: begin + spec.warmup + spec.duration });
    let mut handles = Vec::new();
    for (rank, shard) in loaded.iter().copied().enumerate() {
        let mine: Vec<Arc<Client>> =
            clients.iter().skip(rank).step_by(loaded.len()).cloned().collect();
        if mine.is_empty() {
            continue;
        }
        let keys = by_shard[usize::from(shard)].clone();
        let driver = Driver::new(shard, spec.pipeline.unwrap_or(1), keys, spec);
        let (window, progress) = (window.clone(), progress.clone());
        let handle = std::thread::Builder::new()
            .name(format!("quorum-load-{shard}"))
            .spawn(move || drive(&mine, driver, &window, &progress))
            .map_err(|error| format!("spawning a load driver: {error}"))?;
        handles.push(handle);
    }
    let mut total = LoadResult::empty(spec.duration.as_secs_f64());
    for handle in handles {
        let part = handle.join().map_err(|_| "a load driver panicked".to_string())?;
        total.merge(&part)?;
    }
    Ok(total)
}

/// The closed loop of one shard's clients: refill each client's window as its replies come.
fn drive(
    clients: &[Arc<Client>],
    mut driver: Driver,
    window: &Window,
    progress: &Progress,
) -> LoadResult {
    let (sender, replies) = mpsc::channel::<Done>();
    let mut tally = LoadResult::empty(0.0);
    let mut refill = vec![driver.window; clients.len()];
    while Instant::now() < window.end {
        for (index, count) in refill.iter_mut().enumerate() {
            if *count > 0 {
                send(&clients[index], index, &mut driver, *count, &sender);
                *count = 0;
            }
        }
        let Ok(first) = replies.recv_timeout(Duration::from_millis(100)) else { continue };
        let mut completed = 0;
        for done in std::iter::once(first).chain(replies.try_iter()) {
            tally.record(window, done.started, done.write, done.ok);
            refill[done.client] += 1;
            completed += 1;
        }
        progress.completed.fetch_add(completed, Ordering::Relaxed);
    }
    tally
}

/// Sends `count` new requests on one client's connection: the writes (and gets through the
/// log) in one frame, gets off the log in another.
fn send(
    client: &Client,
    index: usize,
    driver: &mut Driver,
    count: usize,
    sender: &mpsc::Sender<Done>,
) {
    let commands: Vec<(Vec<u8>, bool)> = (0..count).map(|_| driver.command()).collect();
    let started = Instant::now();
    for as_command in [true, false] {
        // Through the log (no read options), a get is a command like a write.
        let group: Vec<&(Vec<u8>, bool)> = commands
            .iter()
            .filter(|(_, write)| (*write || driver.read.is_none()) == as_command)
            .collect();
        if group.is_empty() {
            continue;
        }
        let requests: Vec<&[u8]> = group.iter().map(|(command, _)| command.as_slice()).collect();
        let callbacks: Vec<Callback> = group
            .iter()
            .map(|(_, write)| {
                let (sender, write) = (sender.clone(), *write);
                Box::new(move |result: Result<_, _>| {
                    // The driver is gone once the window has ended: nothing waits for it.
                    let _ = sender.send(Done { client: index, started, write, ok: result.is_ok() });
                }) as Callback
            })
            .collect();
        let read = if as_command { None } else { driver.read };
        client.submit_with(driver.shard, read, &requests, callbacks);
    }
}
