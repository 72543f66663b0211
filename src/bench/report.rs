//! Printing bench rows: a table for people, one JSON line per run for tools, an SVG plot of
//! throughput and p99 latency against the swept parameter.

use std::path::Path;

use plotters::prelude::*;

use super::BenchRow;

/// The conditions every row of a table shares, as one line.
#[must_use]
pub fn conditions(row: &BenchRow) -> String {
    let durability = if row.durability == "none" {
        "durability NONE (no fsync: not durable)".to_string()
    } else {
        "durability fsync".to_string()
    };
    let load = match row.rate {
        Some(rate) => format!("open loop at {rate:.0} req/s"),
        None => format!("closed loop, {}", concurrency(row.clients, row.pipeline)),
    };
    format!(
        "cluster {} ({} voters, apply {}), {durability}, {load}, {}-byte values, read ratio {} \
         (first run), {} keys, {:.0}s measured after {:.0}s warm-up",
        row.cluster,
        row.voters,
        row.apply,
        row.payload_bytes,
        row.read_ratio,
        row.keys,
        row.seconds,
        row.warmup_seconds
    )
}

/// What `clients` and `pipeline` put in flight, in words.
#[must_use]
pub fn concurrency(clients: usize, pipeline: Option<usize>) -> String {
    match pipeline {
        None => format!("{clients} concurrent requests over one client"),
        Some(depth) => format!(
            "{clients} clients with connections of their own, {depth} requests outstanding \
             each ({} concurrent)",
            clients * depth
        ),
    }
}

/// A CPU figure, or `-` where it was not measured.
fn cpu_cell(value: Option<f64>) -> String {
    value.map_or("-".to_string(), |micros| format!("{micros:.2}"))
}

/// The limits line, and where the payload rate stands against them.
#[must_use]
pub fn limits_line(limits: &super::limits::Limits) -> String {
    format!(
        "physical limits measured in this run: memcpy {:.1} GB/s (one thread), fdatasync {:.0}/s \
         (4 KiB, p50 {:.0} µs, one thread), loopback TCP {:.1} Gbit/s (one stream)",
        limits.memcpy_gb_per_sec,
        limits.fsyncs_per_sec,
        limits.fsync_p50_us,
        limits.loopback_gbit_per_sec
    )
}

/// The header of the table of reads and writes apart.
#[must_use]
pub fn split_header() -> String {
    format!(
        "{:>6} {:>7} {:>5} {:>12} {:>12} {:>9} {:>9} {:>9} {:>12} {:>9} {:>9} {:>9}",
        "shards",
        "clients",
        "ratio",
        "reads",
        "read ops/s",
        "p50 µs",
        "p99 µs",
        "p99.9 µs",
        "write ops/s",
        "p50 µs",
        "p99 µs",
        "p99.9 µs"
    )
}

/// One row of the table of reads and writes apart.
#[must_use]
pub fn split_line(row: &BenchRow) -> String {
    let split = &row.split;
    format!(
        "{:>6} {:>7} {:>5} {:>12} {:>12.0} {:>9.0} {:>9.0} {:>9.0} {:>12.0} {:>9.0} {:>9.0} {:>9.0}",
        row.shards,
        row.clients,
        row.read_ratio,
        row.consistency,
        split.read_ops_per_sec,
        split.read_p50_us,
        split.read_p99_us,
        split.read_p999_us,
        split.write_ops_per_sec,
        split.write_p50_us,
        split.write_p99_us,
        split.write_p999_us
    )
}

/// The header of the watch workload's table (the main table's ops/s are events delivered
/// per second and its latencies delivery latencies).
#[must_use]
pub fn watch_header() -> String {
    format!(
        "{:>8} {:>10} {:>10} {:>9} {:>9} {:>10} {:>10} {:>7} {:>10} {:>12} {:>6}",
        "watchers",
        "puts/s",
        "events/s",
        "p50 µs",
        "p99 µs",
        "max µs",
        "put p99 µs",
        "missed",
        "duplicated",
        "out of order",
        "errors"
    )
}

/// One row of the watch workload's table (empty for a row of another workload).
#[must_use]
pub fn watch_line(row: &BenchRow) -> String {
    let Some(watch) = &row.watch else { return String::new() };
    format!(
        "{:>8} {:>10.0} {:>10.0} {:>9.0} {:>9.0} {:>10.0} {:>10.0} {:>7} {:>10} {:>12} {:>6}",
        watch.watchers,
        watch.puts_per_sec,
        row.ops_per_sec,
        row.p50_us,
        row.p99_us,
        row.max_us,
        watch.put_p99_us,
        watch.missed,
        watch.duplicated,
        watch.out_of_order,
        watch.put_errors + watch.wait_errors
    )
}

/// The table's header.
#[must_use]
pub fn header() -> String {
    format!(
        "{:>6} {:>7} {:>5} {:>12} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8} {:>12} {:>12} {:>6}",
        "shards",
        "clients",
        "pipe",
        "ops/s",
        "MB/s",
        "p50 µs",
        "p90 µs",
        "p99 µs",
        "p99.9 µs",
        "max µs",
        "cmd/batch",
        "fsync/s",
        "peak MiB",
        "cpu µs/write",
        "client µs/w",
        "errors"
    )
}

/// One row of the table.
#[must_use]
pub fn line(row: &BenchRow) -> String {
    format!(
        "{:>6} {:>7} {:>5} {:>12.0} {:>8.2} {:>9.0} {:>9.0} {:>9.0} {:>9.0} {:>9.0} {:>9.1} {:>8.0} {:>8} {:>12} {:>12} {:>6}",
        row.shards,
        row.clients,
        row.pipeline.map_or("-".to_string(), |depth| depth.to_string()),
        row.ops_per_sec,
        row.payload_mb_per_sec,
        row.p50_us,
        row.p90_us,
        row.p99_us,
        row.p999_us,
        row.max_us,
        row.commands_per_batch,
        row.fsyncs_per_sec,
        row.peak_rss_mib.map_or("-".to_string(), |mib| format!("{mib:.0}")),
        cpu_cell(row.cpu.cpu_us_per_write),
        cpu_cell(row.cpu.cpu_us_per_write_client),
        row.errors
    )
}

/// Plots throughput and p99 against `parameter` (its value per row).
///
/// # Errors
/// The file cannot be written.
pub fn plot(
    path: &Path,
    parameter: &str,
    rows: &[(f64, &BenchRow)],
) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::new(path, (900, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(450);
    let x_max = rows.iter().map(|(x, _)| *x).fold(1.0, f64::max) * 1.1;
    let x_min = rows.iter().map(|(x, _)| *x).fold(f64::MAX, f64::min).min(x_max) * 0.9;
    let ops: fn(&BenchRow) -> f64 = |row| row.ops_per_sec;
    let p99: fn(&BenchRow) -> f64 = |row| row.p99_us;
    let panels = [("committed ops/s", ops, left), ("p99 latency (µs)", p99, right)];
    for (title, value, area) in panels {
        let y_max = rows.iter().map(|(_, row)| value(row)).fold(1.0, f64::max) * 1.15;
        let mut chart = ChartBuilder::on(&area)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(70)
            .build_cartesian_2d(x_min..x_max, 0.0..y_max)?;
        chart.configure_mesh().x_desc(parameter).draw()?;
        let points: Vec<(f64, f64)> = rows.iter().map(|(x, row)| (*x, value(row))).collect();
        chart.draw_series(LineSeries::new(points.clone(), &BLUE))?;
        chart.draw_series(points.into_iter().map(|point| Circle::new(point, 4, BLUE.filled())))?;
    }
    root.present()?;
    Ok(())
}
