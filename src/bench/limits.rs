//! The machine's physical limits, measured in the same run as the benchmark so each result
//! can be read against them (the build machine is shared and noisy): single-thread memcpy,
//! `fdatasync` of 4 KiB writes into a preallocated, zeroed file on the data directory's
//! filesystem, and one loopback TCP stream.

use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;

/// What was measured.
#[derive(Clone, Debug, Serialize)]
pub struct Limits {
    /// Single-thread memcpy of 256 MiB buffers (from RAM, not cache), GB/s (10^9 bytes).
    pub memcpy_gb_per_sec: f64,
    /// `pwrite` of 4 KiB + `fdatasync`, sequential, one thread: syncs per second.
    pub fsyncs_per_sec: f64,
    /// Median latency of one such sync, microseconds.
    pub fsync_p50_us: f64,
    /// One loopback TCP stream, Gbit/s.
    pub loopback_gbit_per_sec: f64,
}

fn memcpy_gb_per_sec() -> f64 {
    let source = vec![0x5au8; 256 << 20];
    let mut target = vec![0u8; 256 << 20];
    target.copy_from_slice(&source); // fault the pages in first
    let rounds = 4;
    let start = Instant::now();
    for round in 0..rounds {
        target.copy_from_slice(&source);
        std::hint::black_box(&target[round]);
    }
    (rounds * source.len()) as f64 / start.elapsed().as_secs_f64() / 1e9
}

fn fsync_rate(dir: &Path, run_for: Duration) -> std::io::Result<(f64, f64)> {
    let path = dir.join("fsync-probe");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)?;
    let size = 16u64 << 20;
    let zeros = vec![0u8; 1 << 20];
    for offset in (0..size).step_by(zeros.len()) {
        file.write_all_at(&zeros, offset)?;
    }
    file.sync_all()?;
    let block = vec![0xa5u8; 4096];
    let mut latencies = Vec::new();
    let start = Instant::now();
    let mut offset = 0;
    while start.elapsed() < run_for {
        let began = Instant::now();
        file.write_all_at(&block, offset)?;
        file.sync_data()?;
        latencies.push(began.elapsed());
        offset = (offset + 4096) % size;
    }
    let rate = latencies.len() as f64 / start.elapsed().as_secs_f64();
    latencies.sort();
    let median = latencies.get(latencies.len() / 2).copied().unwrap_or_default();
    drop(file);
    let _ = std::fs::remove_file(&path);
    Ok((rate, median.as_secs_f64() * 1e6))
}

fn loopback_gbit_per_sec(bytes: usize) -> std::io::Result<f64> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let address = listener.local_addr()?;
    let reader = std::thread::spawn(move || -> std::io::Result<usize> {
        let (mut stream, _) = listener.accept()?;
        let mut buffer = vec![0u8; 256 << 10];
        let mut total = 0;
        loop {
            let read = stream.read(&mut buffer)?;
            if read == 0 {
                return Ok(total);
            }
            total += read;
        }
    });
    let mut stream = std::net::TcpStream::connect(address)?;
    let chunk = vec![0x3cu8; 256 << 10];
    let start = Instant::now();
    let mut sent = 0;
    while sent < bytes {
        stream.write_all(&chunk)?;
        sent += chunk.len();
    }
    stream.shutdown(std::net::Shutdown::Write)?;
    let received = reader.join().map_err(|_| std::io::Error::other("reader panicked"))??;
    Ok(received as f64 * 8.0 / start.elapsed().as_secs_f64() / 1e9)
}

/// Measures the limits (about two seconds), probing `fsync` in `dir`.
///
/// # Errors
/// The probe file or the loopback socket failed.
pub fn measure(dir: &Path) -> std::io::Result<Limits> {
    let memcpy_gb_per_sec = memcpy_gb_per_sec();
    let (fsyncs_per_sec, fsync_p50_us) = fsync_rate(dir, Duration::from_secs(1))?;
    let loopback_gbit_per_sec = loopback_gbit_per_sec(2 << 30)?;
    Ok(Limits { memcpy_gb_per_sec, fsyncs_per_sec, fsync_p50_us, loopback_gbit_per_sec })
}
