//! The watch workload (`quorum bench --workload watch`): put-to-event delivery latency.
//!
//! `watchers` threads each hold a [`Watch`] of a key of their own (`watch-{i}`, spread over
//! the shards by the key's hash) and wait on it ([`Watch::wait`]: on one shard, a change-feed
//! read held at the leader until the key changes). One writer puts to those keys in turn at a
//! fixed rate (open loop), each value carrying the put's number for its key and the time the
//! put was due. A watcher takes each event's latency as the time [`Watch::wait`] returned it
//! minus that due time: what a user sees from deciding to write to learning of it, a writer
//! that falls behind included (latency counts from when the put was due, not when it left, as
//! in the key-value open loop). The watchers share one [`Client`], whose blocking calls wake
//! only their own waiter; the writer has a client of its own, as it would be a process of
//! its own, so that its puts do not queue in the watchers' client.
//!
//! Each event is checked: a put's number seen twice by its key's watcher is a duplicate, an
//! event of a lower revision than the one before it is out of order, and a put acknowledged
//! to the writer that its watcher had not seen by the end of a drain of [`DRAIN`] once
//! writing stops is missed. All three must be 0.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{OnceLock, mpsc};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

use super::load::{LoadResult, LoadSpec, OPEN_LOOP_OUTSTANDING_MAX, Progress, Window};
use crate::client::{Client, ClientOptions, Completion, Watch};
use crate::machine::kv::{Change, KeyRange};
use crate::machine::{KvCommandRef, shard_for_key};

/// Puts per second when the spec names no rate: the goal of issue #18 is at this rate.
pub const PUTS_PER_SEC_DEFAULT: f64 = 10_000.0;

/// How long the watchers may take to see the last puts once writing stopped (and the writer
/// to get their answers): a put acknowledged but not seen by then counts as missed, so this
/// is long beside any delivery latency, even on a loaded machine.
const DRAIN: Duration = Duration::from_secs(10);

/// How long one [`Watch::wait`] lasts: short, so that a watcher notices the end of the run.
const WAIT_ROUND: Duration = Duration::from_millis(250);

/// Tries to open a watch (each a read of the present revision) before a watcher gives up.
const WATCH_OPEN_ATTEMPTS: usize = 10;

/// Each watcher thread's stack: it only blocks in the client.
const WATCHER_STACK_BYTES: usize = 256 * 1024;

/// What only the watch workload measures (the row's `ops_per_sec` is events delivered per
/// second and its latencies are delivery latencies, put due to event received).
#[derive(Clone, Debug, Default, Serialize)]
pub struct WatchCounts {
    /// Watchers, one key each.
    pub watchers: usize,
    /// The puts per second asked for.
    pub puts_per_sec_target: f64,
    /// Puts acknowledged per second in the measured window.
    pub puts_per_sec: f64,
    /// Put latency, due to acknowledged, median, microseconds.
    pub put_p50_us: f64,
    /// 99th percentile.
    pub put_p99_us: f64,
    /// Puts acknowledged (the whole run).
    pub puts_acknowledged: u64,
    /// Events delivered (the whole run, warm-up and drain included).
    pub events: u64,
    /// Acknowledged puts their watcher never saw.
    pub missed: u64,
    /// Events seen a second time.
    pub duplicated: u64,
    /// Events received after one of a later revision.
    pub out_of_order: u64,
    /// Puts that failed or had no answer by the end of the drain (one may still have been
    /// applied, and its event seen: that is no error of the watch).
    pub put_errors: u64,
    /// Failed [`Watch::wait`] calls and undecodable events.
    pub wait_errors: u64,
}

/// A put's value: its number for its key and when it was due (nanoseconds from the start),
/// little-endian, padded to `bytes`.
fn encode_value(number: u64, due_ns: u64, bytes: usize) -> Vec<u8> {
    let mut value = Vec::with_capacity(bytes.max(16));
    value.extend_from_slice(&number.to_le_bytes());
    value.extend_from_slice(&due_ns.to_le_bytes());
    value.resize(bytes.max(16), 0);
    value
}

fn decode_value(value: &[u8]) -> Option<(u64, u64)> {
    let number = u64::from_le_bytes(value.get(..8)?.try_into().ok()?);
    let due_ns = u64::from_le_bytes(value.get(8..16)?.try_into().ok()?);
    Some((number, due_ns))
}

fn key_of(watcher: usize) -> Vec<u8> {
    format!("watch-{watcher}").into_bytes()
}

/// When the writer started, and the measured window.
struct Start {
    begin: Instant,
    window: Window,
}

/// What the writer and the watchers share.
struct Shared<'a> {
    /// Set once every watch is open, as the writer starts.
    start: OnceLock<Start>,
    progress: &'a Progress,
    /// Watchers whose watch is open: the writer starts once all are.
    ready: AtomicUsize,
    /// Set once writing stopped; then `last_sent` holds each key's last put number.
    done: AtomicBool,
    last_sent: Vec<AtomicU64>,
}

/// One watcher's findings.
#[derive(Clone, Default)]
struct Seen {
    /// Delivery latencies of the events received in the window, nanoseconds.
    latencies_ns: Vec<u64>,
    /// Every put number received, in order.
    numbers: Vec<u64>,
    /// The revision of the last event received.
    revision_last: u64,
    out_of_order: u64,
    errors: u64,
}

impl Seen {
    fn take(&mut self, shared: &Shared<'_>, changes: &[Change], at: Instant) {
        if changes.is_empty() {
            return;
        }
        // Events come only once the writer started, so the start is set by then.
        let Some(start) = shared.start.get() else {
            self.errors += changes.len() as u64;
            return;
        };
        for change in changes {
            let Some((number, due_ns)) = decode_value(&change.value) else {
                self.errors += 1;
                continue;
            };
            // A watch gives changes in revision order. (Not necessarily in the order the
            // puts were sent: a put the client sent again after a later one was taken is
            // applied after it.)
            if change.revision < self.revision_last {
                self.out_of_order += 1;
            }
            self.revision_last = change.revision;
            self.numbers.push(number);
            if start.window.contains(at) {
                let due = start.begin + Duration::from_nanos(due_ns);
                let latency = at.saturating_duration_since(due).as_nanos() as u64;
                self.latencies_ns.push(latency.max(1_000));
            }
        }
        shared.progress.completed.fetch_add(changes.len() as u64, Ordering::Relaxed);
    }
}

/// Watcher `index`: opens its watch, then takes events until writing stopped and it saw its
/// key's last put, or the drain ran out.
fn watch_one(client: &Client, shared: &Shared<'_>, index: usize) -> Seen {
    let mut seen = Seen::default();
    let opened: Option<Watch<'_>> = (0..WATCH_OPEN_ATTEMPTS).find_map(|_| {
        let opened = client.watch(KeyRange::Key(key_of(index)), 0, false);
        seen.errors += u64::from(opened.is_err());
        opened.ok()
    });
    // Counted even if it failed, so that the writer does not wait for it forever (its key's
    // puts then count as missed).
    shared.ready.fetch_add(1, Ordering::SeqCst);
    let Some(mut watch) = opened else { return seen };
    let mut drain_end: Option<Instant> = None;
    loop {
        match watch.wait(WAIT_ROUND) {
            Ok(changes) => seen.take(shared, &changes, Instant::now()),
            Err(_) => seen.errors += 1,
        }
        if shared.done.load(Ordering::SeqCst) {
            let last = shared.last_sent[index].load(Ordering::SeqCst);
            let end = *drain_end.get_or_insert_with(|| Instant::now() + DRAIN);
            if seen.numbers.last().is_some_and(|seen| *seen >= last) || Instant::now() >= end {
                return seen;
            }
        }
    }
}

/// The writer's findings.
struct Written {
    /// Per key, the put numbers acknowledged.
    acknowledged: Vec<Vec<u64>>,
    /// Put latency, due to acknowledged, of the puts acknowledged in the window.
    latency: Histogram<u64>,
    in_window: u64,
    errors: u64,
    unsent: u64,
}

/// A put to send: its command, its key, its number for the key, when it is due (nanoseconds
/// from the start).
type Put = (Vec<u8>, usize, u64, u64);

/// A put in flight: its key, its number for the key, when it was due.
type InFlight = HashMap<(u16, u64), (usize, u64, Instant)>;

impl Written {
    fn settle(&mut self, window: &Window, in_flight: &mut InFlight, completion: &Completion) {
        let Some((key, number, due)) = in_flight.remove(&(completion.shard, completion.sequence))
        else {
            return;
        };
        let now = Instant::now();
        if completion.result.is_err() {
            self.errors += 1;
            return;
        }
        self.acknowledged[key].push(number);
        if window.contains(now) {
            self.in_window += 1;
            let nanos = now.saturating_duration_since(due).as_nanos() as u64;
            self.latency.saturating_record(nanos.max(1_000));
        }
    }
}

/// The puts due by now, numbered `from` on in the run: the watchers' keys in turn.
fn send_due(
    client: &Client,
    shared: &Shared<'_>,
    (from, to): (u64, u64),
    spec: (f64, usize),
    in_flight: &mut InFlight,
    notify: &mpsc::Sender<Completion>,
) {
    let (rate, bytes) = spec;
    let begin = shared.start.get().expect("the writer started").begin;
    let (watchers, shards) = (shared.last_sent.len(), usize::from(client.shards()));
    let mut by_shard: Vec<Vec<Put>> = vec![Vec::new(); shards];
    for put in from..to {
        let key = (put % watchers as u64) as usize;
        let number = put / watchers as u64 + 1;
        let due_ns = (put as f64 / rate * 1e9) as u64;
        let name = key_of(key);
        let value = encode_value(number, due_ns, bytes);
        let command = KvCommandRef::Put { key: &name, value: &value }.encode();
        by_shard[shard_for_key(&name, shards)].push((command, key, number, due_ns));
        shared.last_sent[key].store(number, Ordering::Relaxed);
    }
    for (shard, puts) in by_shard.iter().enumerate() {
        if puts.is_empty() {
            continue;
        }
        let commands: Vec<&[u8]> = puts.iter().map(|(command, ..)| command.as_slice()).collect();
        let first = client.submit_notify(shard as u16, &commands, notify);
        for (offset, (_, key, number, due_ns)) in puts.iter().enumerate() {
            let due = begin + Duration::from_nanos(*due_ns);
            in_flight.insert((shard as u16, first + offset as u64), (*key, *number, due));
        }
    }
}

/// Puts at `rate` until the window ends, then waits up to [`DRAIN`] for their answers.
fn write(client: &Client, shared: &Shared<'_>, rate: f64, bytes: usize) -> Written {
    let (sender, completions) = mpsc::channel::<Completion>();
    let mut in_flight = InFlight::new();
    let mut written = Written {
        acknowledged: vec![Vec::new(); shared.last_sent.len()],
        latency: LoadResult::empty(0.0).latency,
        in_window: 0,
        errors: 0,
        unsent: 0,
    };
    let Start { begin, window } = shared.start.get().expect("the writer started");
    let mut scheduled: u64 = 0;
    while Instant::now() < window.end {
        let now = Instant::now();
        // Puts 0..due are due by now: put k at k / rate.
        let due = (now.duration_since(*begin).as_secs_f64() * rate) as u64 + 1;
        let room = OPEN_LOOP_OUTSTANDING_MAX.saturating_sub(in_flight.len()) as u64;
        let send_to = due.min(scheduled + room);
        if send_to < due && window.contains(now) {
            written.unsent += due - send_to;
        }
        send_due(client, shared, (scheduled, send_to), (rate, bytes), &mut in_flight, &sender);
        scheduled = due;
        let next_due = *begin + Duration::from_secs_f64(scheduled as f64 / rate);
        let wait =
            next_due.saturating_duration_since(Instant::now()).max(Duration::from_micros(50));
        if let Ok(completion) = completions.recv_timeout(wait) {
            for completion in std::iter::once(completion).chain(completions.try_iter()) {
                written.settle(window, &mut in_flight, &completion);
            }
        }
    }
    shared.done.store(true, Ordering::SeqCst);
    let drain_end = Instant::now() + DRAIN;
    while !in_flight.is_empty() && Instant::now() < drain_end {
        if let Ok(completion) = completions.recv_timeout(Duration::from_millis(10)) {
            written.settle(window, &mut in_flight, &completion);
        }
    }
    written.errors += in_flight.len() as u64;
    written
}

/// Missed and duplicated events: each key's acknowledged puts against what its watcher saw.
fn compare(acknowledged: &[Vec<u64>], seen: &[Seen]) -> (u64, u64) {
    let (mut missed, mut duplicated) = (0, 0);
    for (acknowledged, seen) in acknowledged.iter().zip(seen) {
        let mut numbers = seen.numbers.clone();
        numbers.sort_unstable();
        let before = numbers.len();
        numbers.dedup();
        duplicated += (before - numbers.len()) as u64;
        let never_seen = acknowledged.iter().filter(|n| numbers.binary_search(n).is_err());
        missed += never_seen.count() as u64;
    }
    (missed, duplicated)
}

/// Runs the watch workload against `client`'s cluster: `spec.watchers` watchers, puts at
/// `spec.rate` (10,000 a second if unset), measured over `spec.duration` after `spec.warmup`
/// (counted from when every watch is open).
///
/// # Errors
/// No watcher, or a watcher thread could not be started.
pub fn run(client: &Client, spec: &LoadSpec, progress: &Progress) -> Result<LoadResult, String> {
    if spec.watchers == 0 {
        return Err("--watchers must be at least 1".into());
    }
    let rate = spec.rate.unwrap_or(PUTS_PER_SEC_DEFAULT);
    let shared = Shared {
        start: OnceLock::new(),
        progress,
        ready: AtomicUsize::new(0),
        done: AtomicBool::new(false),
        last_sent: (0..spec.watchers).map(|_| AtomicU64::new(0)).collect(),
    };
    // The writer has a client of its own, as a writer and its watchers would be apart: its
    // puts do not queue behind the watchers' requests in the client.
    let addresses: Vec<String> = client.members().into_iter().map(|(_, address)| address).collect();
    let options =
        ClientOptions { request_timeout: Duration::from_secs(30), ..ClientOptions::default() };
    let writer = Client::connect(&addresses, options)
        .map_err(|error| format!("the writer's client: {error}"))?;
    let (written, seen) = std::thread::scope(|scope| -> Result<(Written, Vec<Seen>), String> {
        let mut watchers = Vec::with_capacity(spec.watchers);
        for index in 0..spec.watchers {
            let shared = &shared;
            let thread = std::thread::Builder::new()
                .name(format!("watch-{index}"))
                .stack_size(WATCHER_STACK_BYTES)
                .spawn_scoped(scope, move || watch_one(client, shared, index))
                .map_err(|error| format!("starting watcher {index}: {error}"))?;
            watchers.push(thread);
        }
        while shared.ready.load(Ordering::SeqCst) < spec.watchers {
            std::thread::sleep(Duration::from_millis(5));
        }
        let begin = Instant::now();
        let window =
            Window { start: begin + spec.warmup, end: begin + spec.warmup + spec.duration };
        let _ = shared.start.set(Start { begin, window });
        let written = write(&writer, &shared, rate, spec.payload_bytes);
        // A watcher that panicked saw nothing: its key's puts count as missed, and it as an
        // error.
        let lost = Seen { errors: 1, ..Seen::default() };
        let seen: Vec<Seen> = watchers
            .into_iter()
            .map(|thread| thread.join().unwrap_or_else(|_| lost.clone()))
            .collect();
        Ok((written, seen))
    })?;
    Ok(tally(spec, rate, &written, &seen))
}

/// The row's numbers from what the writer and the watchers found.
fn tally(spec: &LoadSpec, rate: f64, written: &Written, seen: &[Seen]) -> LoadResult {
    let seconds = spec.duration.as_secs_f64();
    let mut result = LoadResult::empty(seconds);
    for watcher in seen {
        for latency in &watcher.latencies_ns {
            result.latency.saturating_record(*latency);
            result.read_latency.saturating_record(*latency);
        }
        result.ops += watcher.latencies_ns.len() as u64;
    }
    let wait_errors: u64 = seen.iter().map(|watcher| watcher.errors).sum();
    result.errors = wait_errors + written.errors;
    result.unsent = written.unsent;
    result.write_latency = written.latency.clone();
    let (missed, duplicated) = compare(&written.acknowledged, seen);
    let micros = |quantile: f64| written.latency.value_at_quantile(quantile) as f64 / 1000.0;
    result.watch = Some(WatchCounts {
        watchers: spec.watchers,
        puts_per_sec_target: rate,
        puts_per_sec: written.in_window as f64 / seconds,
        put_p50_us: micros(0.5),
        put_p99_us: micros(0.99),
        puts_acknowledged: written.acknowledged.iter().map(|numbers| numbers.len() as u64).sum(),
        events: seen.iter().map(|watcher| watcher.numbers.len() as u64).sum(),
        missed,
        duplicated,
        out_of_order: seen.iter().map(|watcher| watcher.out_of_order).sum(),
        put_errors: written.errors,
        wait_errors,
    });
    result
}
