//! `quorum tail`: print a node's committed log as it grows, merged across shards in global
//! position order (or one shard's), from any position.

use std::fmt::Write as _;
use std::io::Write as _;
use std::process::ExitCode;

use hdrhistogram::Histogram;
use quorum::client::{ClientOptions, Tail, TailBatch};
use quorum::core::{BatchReader, ClusterId};
use quorum::machine::KvCommand;

#[derive(clap::Args)]
pub struct TailArgs {
    /// The node to read from, HOST:PORT (its --listen address): a voter or a learner.
    #[arg(long, value_name = "HOST:PORT")]
    cluster: String,
    /// The global position to start at (slot i of shard k is position i × shards + k).
    #[arg(long, value_name = "POSITION", default_value_t = 0)]
    from: u64,
    /// Only this shard's log (positions stay global); default: every shard, merged.
    #[arg(long, value_name = "K")]
    shard: Option<u16>,
    /// One JSON object per line instead of text.
    #[arg(long)]
    json: bool,
    /// Exit after printing this many commands (default: follow forever).
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    /// The cluster's id; when given, a node of another cluster refuses us.
    #[arg(long)]
    cluster_id: Option<u64>,
    /// On exit, print to stderr how long the merge held batches back waiting for other shards
    /// (from the arrival of a batch's own shard run to its turn in the global order): p50, p99,
    /// max. Needs --count.
    #[arg(long, requires = "count")]
    hold_report: bool,
}

pub fn run(args: &TailArgs) -> ExitCode {
    let options =
        ClientOptions { cluster_id: ClusterId(args.cluster_id.unwrap_or(0)), ..Default::default() };
    let mut tail = match Tail::subscribe(&args.cluster, &options, args.from, args.shard) {
        Ok(tail) => tail,
        Err(error) => {
            eprintln!("quorum tail: {error}");
            return ExitCode::FAILURE;
        }
    };
    let mut held = Histogram::<u64>::new(3).expect("valid histogram precision");
    let mut printed = 0;
    let stdout = std::io::stdout();
    let mut line = String::new();
    while args.count.is_none_or(|count| printed < count) {
        let batch = match tail.next_batch() {
            Ok(batch) => batch,
            Err(error) => {
                eprintln!("quorum tail: {error}");
                return ExitCode::FAILURE;
            }
        };
        let _ = held.record(batch.held.as_micros() as u64);
        let mut out = stdout.lock();
        for (index, command) in BatchReader::new(&batch.batch).enumerate() {
            let Ok((id, payload)) = command else {
                eprintln!("quorum tail: the batch at position {} is malformed", batch.position);
                return ExitCode::FAILURE;
            };
            line.clear();
            format_command(&mut line, &batch, index, id.client, id.sequence, payload, args.json);
            if writeln!(out, "{line}").is_err() {
                return ExitCode::SUCCESS; // The reader went away (a pipe closed).
            }
            printed += 1;
            if args.count.is_some_and(|count| printed >= count) {
                break;
            }
        }
        let _ = out.flush();
    }
    if args.hold_report {
        eprintln!(
            "merge hold over {} batches: p50 {} us, p99 {} us, max {} us",
            held.len(),
            held.value_at_quantile(0.5),
            held.value_at_quantile(0.99),
            held.max()
        );
    }
    ExitCode::SUCCESS
}

fn format_command(
    line: &mut String,
    batch: &TailBatch,
    index: usize,
    client: u64,
    sequence: u64,
    payload: &[u8],
    json: bool,
) {
    let described = describe(payload);
    if json {
        let object = serde_json::json!({
            "position": batch.position,
            "index": index,
            "shard": batch.shard,
            "slot": batch.slot.0,
            "client": client,
            "sequence": sequence,
            "command": described,
            "payload_hex": hex(payload),
        });
        let _ = write!(line, "{object}");
    } else {
        let _ = write!(
            line,
            "{}.{index}\tshard {} slot {}\tclient {client:016x} #{sequence}\t{described}",
            batch.position, batch.shard, batch.slot.0
        );
    }
}

/// A key-value command as text; other payloads as their length.
fn describe(payload: &[u8]) -> String {
    let text = |bytes: &[u8]| format!("{:?}", String::from_utf8_lossy(bytes));
    match KvCommand::decode(payload) {
        Some(KvCommand::Get { key }) => format!("get {}", text(&key)),
        Some(KvCommand::Put { key, value }) => format!("put {} {}", text(&key), text(&value)),
        Some(KvCommand::Delete { key }) => format!("del {}", text(&key)),
        Some(KvCommand::CompareAndSet { key, expected, new }) => format!(
            "cas {} {} {}",
            text(&key),
            expected.as_deref().map_or("<absent>".to_string(), text),
            text(&new)
        ),
        Some(KvCommand::Append { entry }) => format!("append {}", text(&entry)),
        None => format!("{} bytes", payload.len()),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut out, byte| {
        let _ = write!(out, "{byte:02x}");
        out
    })
}
