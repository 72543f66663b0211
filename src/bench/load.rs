//! The load: KV puts (and gets, by `read_ratio`) on random keys, from one driver thread per
//! shard through the client library. Gets are reads off the log with the spec's consistency
//! (protocol.md §5.3–§5.5), of keys written once before the load starts; reads and writes are
//! counted and timed apart. Closed loop: each driver keeps its share of the concurrent
//! requests outstanding, sending a new one as each completes. Open loop: requests go out on a
//! fixed schedule and latency counts from the scheduled time, so a stall is not hidden by
//! requests that were never sent (coordinated omission).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rand_core::{RngCore, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

use crate::client::{Client, Completion, Consistency, ReadOptions};
use crate::machine::{KvCommandRef, shard_for_key};

/// What load to apply.
#[derive(Clone, Debug)]
pub struct LoadSpec {
    /// Concurrent requests (closed loop), spread evenly over the shards.
    pub clients: usize,
    /// Bytes of each written value.
    pub payload_bytes: usize,
    /// Measured time.
    pub duration: Duration,
    /// Time before measuring.
    pub warmup: Duration,
    /// Fraction of requests that are gets.
    pub read_ratio: f64,
    /// How the gets are read; `None`: as commands ordered in the log (how gets went before
    /// reads left the log, for comparison).
    pub consistency: Option<Consistency>,
    /// Distinct keys.
    pub keys: u64,
    /// Open loop at this many requests per second, instead of a closed loop.
    pub rate: Option<f64>,
    /// Load only this shard (every request, and the whole rate); the others stay idle.
    pub only_shard: Option<u16>,
    /// What the requests are.
    pub workload: Workload,
    /// Watchers, one key each ([`Workload::Watch`] only).
    pub watchers: usize,
    /// `Some(n)`: `clients` are clients with connections of their own, each keeping `n`
    /// requests outstanding (`super::pipeline`); `None`: `clients` concurrent requests over
    /// the bench's one client.
    pub pipeline: Option<usize>,
}

/// What a load's requests are.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Workload {
    /// Puts and gets of random keys.
    #[default]
    Kv,
    /// Lock and unlock cycles, each worker on a lock of its own (`super::locks`).
    Lock,
    /// Watchers of a key each, and puts to those keys at a rate (`super::watch`).
    Watch,
}

impl Workload {
    /// Its name on the command line and in the bench row.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Workload::Kv => "kv",
            Workload::Lock => "lock",
            Workload::Watch => "watch",
        }
    }
}

/// What a load run measured.
pub struct LoadResult {
    /// Requests completed in the measured window.
    pub ops: u64,
    /// Of them, writes.
    pub writes: u64,
    /// Latency of the reads alone, in nanoseconds.
    pub read_latency: Histogram<u64>,
    /// Latency of the writes alone, in nanoseconds.
    pub write_latency: Histogram<u64>,
    /// Requests that failed (timeouts, rejections) in the window.
    pub errors: u64,
    /// Requests an open loop could not send because too many were outstanding.
    pub unsent: u64,
    /// The measured window's length.
    pub seconds: f64,
    /// Latency from submit (open loop: from the scheduled time) to reply, in nanoseconds
    /// (the watch workload: from a put's scheduled time to its event's delivery).
    pub latency: Histogram<u64>,
    /// What only the watch workload measures.
    pub watch: Option<super::watch::WatchCounts>,
}

/// Most requests an open-loop driver keeps outstanding before it stops sending.
pub(super) const OPEN_LOOP_OUTSTANDING_MAX: usize = 1 << 20;

fn key_name(index: u64) -> Vec<u8> {
    format!("key{index:010}").into_bytes()
}

/// Keys that live on each shard.
pub(super) fn keys_by_shard(keys: u64, shards: u16) -> Vec<Vec<Vec<u8>>> {
    let mut by_shard = vec![Vec::new(); usize::from(shards)];
    for index in 0..keys {
        let key = key_name(index);
        by_shard[shard_for_key(&key, usize::from(shards))].push(key);
    }
    by_shard
}

pub(super) struct Driver {
    pub(super) shard: u16,
    pub(super) window: usize,
    pub(super) keys: Vec<Vec<u8>>,
    pub(super) value: Vec<u8>,
    pub(super) read_ratio: f64,
    /// `None`: gets are sent as commands, through the log.
    pub(super) read: Option<ReadOptions>,
    pub(super) rng: Xoshiro256PlusPlus,
}

impl Driver {
    /// Shard `shard`'s driver: `window` requests outstanding, over `keys`, as `spec` says.
    pub(super) fn new(shard: u16, window: usize, keys: Vec<Vec<u8>>, spec: &LoadSpec) -> Driver {
        Driver {
            shard,
            window: window.max(1),
            keys,
            value: vec![0xA5; spec.payload_bytes],
            read_ratio: spec.read_ratio,
            read: spec
                .consistency
                .map(|consistency| ReadOptions { consistency, ..ReadOptions::default() }),
            rng: Xoshiro256PlusPlus::seed_from_u64(u64::from(shard) + 1),
        }
    }

    /// One command, and whether it writes.
    pub(super) fn command(&mut self) -> (Vec<u8>, bool) {
        let key = &self.keys[(self.rng.next_u64() % self.keys.len() as u64) as usize];
        let read = (self.rng.next_u64() as f64 / u64::MAX as f64) < self.read_ratio;
        if read {
            (KvCommandRef::Get { key }.encode(), false)
        } else {
            (KvCommandRef::Put { key, value: &self.value }.encode(), true)
        }
    }

    /// Sends `commands` (each with whether it writes): writes as commands, reads off the log.
    /// Returns each one's sequence number, in order.
    fn submit(
        &self,
        client: &Client,
        commands: &[(Vec<u8>, bool)],
        notify: &mpsc::Sender<Completion>,
    ) -> Vec<u64> {
        // Through the log, a get is a command like a write.
        let as_command = |write: bool| write || self.read.is_none();
        let pick = |write: bool| -> Vec<&[u8]> {
            let kind = |w: &bool| as_command(*w) == write;
            commands.iter().filter(|(_, w)| kind(w)).map(|(c, _)| c.as_slice()).collect()
        };
        let (writes, reads) = (pick(true), pick(false));
        let mut next_write =
            if writes.is_empty() { 0 } else { client.submit_notify(self.shard, &writes, notify) };
        let mut next_read = match self.read {
            Some(read) if !reads.is_empty() => {
                client.submit_reads_notify(self.shard, &reads, read, notify)
            }
            _ => 0,
        };
        let mut sequences = Vec::with_capacity(commands.len());
        for (_, write) in commands {
            let next = if as_command(*write) { &mut next_write } else { &mut next_read };
            sequences.push(*next);
            *next += 1;
        }
        sequences
    }
}

/// Writes every key of the loaded shards once, so that the load's gets find values (not
/// counted).
pub(super) fn preload(
    client: &Client,
    spec: &LoadSpec,
    by_shard: &[Vec<Vec<u8>>],
) -> Result<(), String> {
    let value = vec![0x5A; spec.payload_bytes];
    for (shard, keys) in by_shard.iter().enumerate() {
        let shard = shard as u16;
        if spec.only_shard.is_some_and(|only| only != shard) {
            continue;
        }
        for chunk in keys.chunks(1024) {
            let put = |key: &Vec<u8>| KvCommandRef::Put { key, value: &value }.encode();
            let commands: Vec<Vec<u8>> = chunk.iter().map(put).collect();
            let slices: Vec<&[u8]> = commands.iter().map(Vec::as_slice).collect();
            for ticket in client.submit_many(shard, &slices) {
                ticket.wait().map_err(|error| format!("preloading the keys: {error}"))?;
            }
        }
    }
    Ok(())
}

/// Counters the progress line reads while the load runs.
#[derive(Default)]
pub struct Progress {
    /// Requests completed so far, warm-up included.
    pub completed: AtomicU64,
}

/// The measured part of a run.
pub(super) struct Window {
    pub(super) start: Instant,
    pub(super) end: Instant,
}

impl Window {
    pub(super) fn contains(&self, at: Instant) -> bool {
        at >= self.start && at < self.end
    }
}

/// Every shard has keys, and `--only-shard` names one of them.
pub(super) fn check_shards(
    spec: &LoadSpec,
    shards: u16,
    by_shard: &[Vec<Vec<u8>>],
) -> Result<(), String> {
    if let Some(shard) = by_shard.iter().position(Vec::is_empty) {
        return Err(format!(
            "--keys {} leaves shard {shard} without keys; use more keys",
            spec.keys
        ));
    }
    if let Some(only) = spec.only_shard.filter(|only| *only >= shards) {
        return Err(format!(
            "--only-shard {only}: the cluster has {shards} shards (0 to {})",
            shards - 1
        ));
    }
    Ok(())
}

/// Runs the load against `client`'s cluster.
///
/// # Errors
/// The spec is unusable (no keys on a shard).
pub fn run(
    client: &Arc<Client>,
    spec: &LoadSpec,
    progress: &Arc<Progress>,
) -> Result<LoadResult, String> {
    match spec.workload {
        Workload::Lock => return super::locks::run(client, spec, progress),
        Workload::Watch => return super::watch::run(client, spec, progress),
        Workload::Kv => {}
    }
    let shards = client.shards();
    let by_shard = keys_by_shard(spec.keys.max(1), shards);
    check_shards(spec, shards, &by_shard)?;
    if spec.read_ratio > 0.0 {
        preload(client, spec, &by_shard)?;
    }
    // The shards that get load, each with its share of the requests and of the rate.
    let loaded = spec.only_shard.map_or(shards, |_| 1);
    let begin = Instant::now();
    let window =
        Arc::new(Window { start: begin + spec.warmup, end: begin + spec.warmup + spec.duration });
    let stop = Arc::new(AtomicBool::new(false));
    let mut handles = Vec::new();
    for (shard, keys) in by_shard.into_iter().enumerate() {
        let shard = shard as u16;
        if spec.only_shard.is_some_and(|only| only != shard) {
            continue;
        }
        let rank = spec.only_shard.map_or(shard, |_| 0);
        let share = spec.clients / usize::from(loaded)
            + usize::from(usize::from(rank) < spec.clients % usize::from(loaded));
        let mut driver = Driver::new(shard, share, keys, spec);
        let rate = spec.rate.map(|rate| rate / f64::from(loaded));
        let (client, window, stop, progress) =
            (client.clone(), window.clone(), stop.clone(), progress.clone());
        // Named, so that its CPU time counts as the client's (`super::cpu`).
        let handle =
            std::thread::Builder::new().name(format!("quorum-load-{shard}")).spawn(move || {
                match rate {
                    None => closed_loop(&client, &mut driver, &window, &stop, &progress),
                    Some(rate) => open_loop(&client, &mut driver, rate, &window, &stop, &progress),
                }
            });
        handles.push(handle.map_err(|error| format!("spawning a load driver: {error}"))?);
    }
    let mut total = LoadResult::empty(spec.duration.as_secs_f64());
    for handle in handles {
        let part = handle.join().map_err(|_| "a load driver panicked".to_string())?;
        total.merge(&part)?;
    }
    stop.store(true, Ordering::SeqCst);
    Ok(total)
}

impl LoadResult {
    /// Adds `part`'s counts and latencies to these.
    pub(super) fn merge(&mut self, part: &LoadResult) -> Result<(), String> {
        self.ops += part.ops;
        self.writes += part.writes;
        self.errors += part.errors;
        self.unsent += part.unsent;
        self.latency.add(&part.latency).map_err(|error| error.to_string())?;
        self.read_latency.add(&part.read_latency).map_err(|error| error.to_string())?;
        self.write_latency.add(&part.write_latency).map_err(|error| error.to_string())
    }

    pub(super) fn empty(seconds: f64) -> LoadResult {
        let histogram =
            || Histogram::new_with_bounds(1_000, 120_000_000_000, 3).expect("valid bounds");
        LoadResult {
            ops: 0,
            writes: 0,
            read_latency: histogram(),
            write_latency: histogram(),
            errors: 0,
            unsent: 0,
            seconds,
            latency: histogram(),
            watch: None,
        }
    }

    /// Counts a completed request if it completed inside the measured window.
    pub(super) fn record(&mut self, window: &Window, started: Instant, write: bool, ok: bool) {
        let now = Instant::now();
        if !window.contains(now) {
            return;
        }
        if ok {
            self.ops += 1;
            self.writes += u64::from(write);
            let nanos = now.duration_since(started).as_nanos() as u64;
            self.latency.saturating_record(nanos.max(1_000));
            let apart = if write { &mut self.write_latency } else { &mut self.read_latency };
            apart.saturating_record(nanos.max(1_000));
        } else {
            self.errors += 1;
        }
    }
}

fn closed_loop(
    client: &Client,
    driver: &mut Driver,
    window: &Window,
    stop: &AtomicBool,
    progress: &Progress,
) -> LoadResult {
    let (sender, completions) = mpsc::channel::<Completion>();
    let mut in_flight: HashMap<u64, (Instant, bool)> = HashMap::with_capacity(driver.window * 2);
    let mut tally = LoadResult::empty(0.0);
    let send =
        |driver: &mut Driver, count: usize, in_flight: &mut HashMap<u64, (Instant, bool)>| {
            let commands: Vec<(Vec<u8>, bool)> = (0..count).map(|_| driver.command()).collect();
            let now = Instant::now();
            let sequences = driver.submit(client, &commands, &sender);
            for (sequence, (_, write)) in sequences.into_iter().zip(&commands) {
                in_flight.insert(sequence, (now, *write));
            }
        };
    send(driver, driver.window, &mut in_flight);
    while Instant::now() < window.end && !stop.load(Ordering::Relaxed) {
        let Ok(first) = completions.recv_timeout(Duration::from_millis(100)) else { continue };
        let mut done = 1;
        let mut settle = |completion: Completion, tally: &mut LoadResult| {
            if let Some((started, write)) = in_flight.remove(&completion.sequence) {
                tally.record(window, started, write, completion.result.is_ok());
            }
        };
        settle(first, &mut tally);
        while let Ok(completion) = completions.try_recv() {
            settle(completion, &mut tally);
            done += 1;
        }
        progress.completed.fetch_add(done as u64, Ordering::Relaxed);
        send(driver, done, &mut in_flight);
    }
    tally
}

fn open_loop(
    client: &Client,
    driver: &mut Driver,
    rate: f64,
    window: &Window,
    stop: &AtomicBool,
    progress: &Progress,
) -> LoadResult {
    let (sender, completions) = mpsc::channel::<Completion>();
    let mut in_flight: HashMap<u64, (Instant, bool)> = HashMap::new();
    let mut tally = LoadResult::empty(0.0);
    let begin = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / rate.max(1e-3));
    let mut scheduled: u64 = 0;
    while Instant::now() < window.end && !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        // Requests 0..due are due by now: request k at k · interval.
        let due = (now.duration_since(begin).as_secs_f64() * rate) as u64 + 1;
        if due > scheduled {
            let count = (due - scheduled) as usize;
            let room = OPEN_LOOP_OUTSTANDING_MAX.saturating_sub(in_flight.len());
            let send_now = count.min(room);
            if send_now < count && window.contains(now) {
                tally.unsent += (count - send_now) as u64;
            }
            let commands: Vec<(Vec<u8>, bool)> = (0..send_now).map(|_| driver.command()).collect();
            if !commands.is_empty() {
                let sequences = driver.submit(client, &commands, &sender);
                for (offset, (sequence, (_, write))) in
                    sequences.into_iter().zip(&commands).enumerate()
                {
                    // Latency counts from when the request was due, not when it went out.
                    let due_at = begin + interval.mul_f64((scheduled + offset as u64) as f64);
                    in_flight.insert(sequence, (due_at, *write));
                }
            }
            scheduled = due;
        }
        let next_due = begin + interval.mul_f64(scheduled as f64);
        let wait =
            next_due.saturating_duration_since(Instant::now()).max(Duration::from_micros(50));
        if let Ok(completion) = completions.recv_timeout(wait) {
            let mut done = 0u64;
            for completion in std::iter::once(completion).chain(completions.try_iter()) {
                if let Some((started, write)) = in_flight.remove(&completion.sequence) {
                    tally.record(window, started, write, completion.result.is_ok());
                }
                done += 1;
            }
            progress.completed.fetch_add(done, Ordering::Relaxed);
        }
    }
    tally
}
