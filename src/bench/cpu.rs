//! CPU time over the measured window, read from `/proc` at the window's edges (nothing is
//! added to the nodes' hot path). The embedded cluster shares this process with the load:
//! the nodes' share is the process's user + system time less that of the client's threads
//! (the client library's connection threads, `quorum-client-…`, the load's drivers and
//! watchers, `quorum-load…` and `watch-…`, and the main thread, which samples the counters).
//! A `--target` is counted when its members listen on this host: the processes that hold
//! their listening sockets, found through `/proc/net/tcp` and `/proc/*/fd`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::time::Instant;

use serde::Serialize;

/// Names (as `/proc` shows them, at most 15 bytes) of the threads that belong to the load.
const CLIENT_THREAD_PREFIXES: [&str; 3] = ["quorum-client", "quorum-load", "watch-"];

/// Whose CPU time counts as the nodes'.
#[derive(Clone, Debug)]
pub enum CpuScope {
    /// The nodes run in this process, beside the load.
    Embedded,
    /// The nodes are these local processes; the load is this whole process.
    Local(Vec<u32>),
    /// The nodes' time cannot be read here (why); the load is this whole process.
    Unknown(String),
}

impl CpuScope {
    /// What the CPU figures cover, for the row and the table.
    #[must_use]
    pub fn describe(&self) -> String {
        match self {
            CpuScope::Embedded => "embedded: this process less the client's threads".into(),
            CpuScope::Local(pids) => {
                let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
                format!("local node processes {}", pids.join(","))
            }
            CpuScope::Unknown(why) => format!("nodes not measured: {why}"),
        }
    }
}

/// CPU ticks at one instant.
#[derive(Clone, Debug)]
pub struct CpuSample {
    at: Instant,
    /// This process's ticks, every thread's, ended ones' included.
    own: u64,
    /// The nodes' ticks, if they run in other processes that can be read.
    nodes: Option<u64>,
    /// The embedded load's threads' ticks, by thread id.
    client: HashMap<u32, u64>,
}

/// What the window cost, per committed write and in cores kept busy.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CpuFigures {
    /// The nodes' user + system CPU per committed write, µs (`None`: not measured).
    pub cpu_us_per_write: Option<f64>,
    /// The load's (the bench client's) CPU per committed write, µs.
    pub cpu_us_per_write_client: Option<f64>,
    /// The nodes' CPU seconds per second of the window (2.0: two cores kept busy).
    pub cpu_cores_nodes: Option<f64>,
    /// The load's CPU seconds per second of the window.
    pub cpu_cores_client: Option<f64>,
    /// What the figures cover.
    pub cpu_measured: String,
}

fn ticks_per_second() -> f64 {
    // SAFETY: sysconf reads a constant of the system and has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// The thread's or process's name and its user + system ticks, from a `stat` file.
fn stat_ticks(path: &str) -> Option<(String, u64)> {
    let text = std::fs::read_to_string(path).ok()?;
    // The name sits in parentheses and may hold spaces or parentheses itself.
    let (open, close) = (text.find('(')?, text.rfind(')')?);
    let name = text.get(open + 1..close)?.to_string();
    let fields: Vec<&str> = text.get(close + 2..)?.split_whitespace().collect();
    // Fields 14 and 15 of stat(5) (utime, stime); the slice starts at field 3.
    let user: u64 = fields.get(11)?.parse().ok()?;
    let system: u64 = fields.get(12)?.parse().ok()?;
    Some((name, user + system))
}

/// Ticks of this process's threads that belong to the load, the main thread included, by
/// thread id.
fn client_thread_ticks() -> HashMap<u32, u64> {
    let main = std::process::id();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return HashMap::new() };
    tasks
        .filter_map(Result::ok)
        .filter_map(|task| {
            let tid: u32 = task.file_name().to_string_lossy().parse().ok()?;
            let (name, ticks) = stat_ticks(&format!("/proc/self/task/{tid}/stat"))?;
            let client = tid == main || CLIENT_THREAD_PREFIXES.iter().any(|p| name.starts_with(p));
            client.then_some((tid, ticks))
        })
        .collect()
}

/// Reads the ticks of `scope` now.
#[must_use]
pub fn sample(scope: &CpuScope) -> CpuSample {
    let at = Instant::now();
    let own = stat_ticks("/proc/self/stat").map_or(0, |(_, ticks)| ticks);
    let (nodes, client) = match scope {
        CpuScope::Embedded => (None, client_thread_ticks()),
        CpuScope::Local(pids) => {
            let each = pids.iter().map(|pid| stat_ticks(&format!("/proc/{pid}/stat")));
            (each.map(|read| read.map(|(_, ticks)| ticks)).sum(), HashMap::new())
        }
        CpuScope::Unknown(_) => (None, HashMap::new()),
    };
    CpuSample { at, own, nodes, client }
}

/// The load's ticks between two samples: the embedded load's threads one by one (a thread
/// that ended between them takes its ticks with it, so a sum of sums could go backwards),
/// otherwise this whole process.
fn client_ticks(scope: &CpuScope, before: &CpuSample, after: &CpuSample) -> u64 {
    match scope {
        CpuScope::Embedded => after
            .client
            .iter()
            .map(|(tid, ticks)| ticks.saturating_sub(before.client.get(tid).copied().unwrap_or(0)))
            .sum(),
        _ => after.own.saturating_sub(before.own),
    }
}

/// The figures between two samples, for `writes` committed in `window_seconds`. The rate
/// between the samples is scaled to the load's window, which they bracket within a few ms.
#[must_use]
pub fn figures(
    scope: &CpuScope,
    before: &CpuSample,
    after: &CpuSample,
    writes: u64,
    window_seconds: f64,
) -> CpuFigures {
    let span = after.at.duration_since(before.at).as_secs_f64();
    let cores = |from: u64, to: u64| {
        (span > 0.0).then(|| to.saturating_sub(from) as f64 / ticks_per_second() / span)
    };
    let client_ticks = client_ticks(scope, before, after);
    let nodes = match scope {
        CpuScope::Embedded => cores(0, after.own.saturating_sub(before.own + client_ticks)),
        _ => before.nodes.zip(after.nodes).and_then(|(from, to)| cores(from, to)),
    };
    let client = cores(0, client_ticks);
    let per_write = |cores: Option<f64>| {
        cores.filter(|_| writes > 0).map(|cores| cores * window_seconds / writes as f64 * 1e6)
    };
    CpuFigures {
        cpu_us_per_write: per_write(nodes),
        cpu_us_per_write_client: per_write(client),
        cpu_cores_nodes: nodes,
        cpu_cores_client: client,
        cpu_measured: scope.describe(),
    }
}

/// Whose time to count for a target cluster of these member addresses: the local processes
/// listening on them, or why not.
#[must_use]
pub fn target_scope(addresses: &[String]) -> CpuScope {
    let listening = listening_inodes();
    let owners = socket_owners();
    let mut pids = Vec::new();
    for address in addresses {
        let Some(socket) = address.to_socket_addrs().ok().and_then(|mut all| all.next()) else {
            return CpuScope::Unknown(format!("cannot resolve {address}"));
        };
        if !is_local(socket.ip()) {
            return CpuScope::Unknown(format!("{address} is not on this host"));
        }
        let inode = listening
            .iter()
            .find(|(bound, _)| {
                bound.port() == socket.port()
                    && (bound.ip() == socket.ip() || bound.ip().is_unspecified())
            })
            .map(|(_, inode)| *inode);
        let Some(pid) = inode.and_then(|inode| owners.get(&inode)) else {
            return CpuScope::Unknown(format!("found no local process listening on {address}"));
        };
        if !pids.contains(pid) {
            pids.push(*pid);
        }
    }
    CpuScope::Local(pids)
}

/// An address of this host's: one a socket can be bound to.
fn is_local(ip: IpAddr) -> bool {
    ip.is_loopback() || std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

/// Listening TCP sockets and their inodes, from `/proc/net/tcp` and `tcp6`.
fn listening_inodes() -> Vec<(SocketAddr, u64)> {
    let mut sockets = Vec::new();
    for (file, v6) in [("/proc/net/tcp", false), ("/proc/net/tcp6", true)] {
        let Ok(text) = std::fs::read_to_string(file) else { continue };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // local_address is field 1, st is field 3 (0A: listening), inode is field 9.
            if fields.len() < 10 || fields[3] != "0A" {
                continue;
            }
            let (Some(address), Ok(inode)) = (parse_hex_address(fields[1], v6), fields[9].parse())
            else {
                continue;
            };
            sockets.push((address, inode));
        }
    }
    sockets
}

/// `0100007F:1D4C` (the IP as the kernel's 32-bit words in host order, then the port).
fn parse_hex_address(text: &str, v6: bool) -> Option<SocketAddr> {
    let (ip, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let words: Vec<u32> = (0..ip.len() / 8)
        .map(|k| u32::from_str_radix(ip.get(k * 8..k * 8 + 8)?, 16).ok())
        .collect::<Option<_>>()?;
    let bytes: Vec<u8> = words.iter().flat_map(|word| word.to_ne_bytes()).collect();
    let ip = if v6 {
        IpAddr::from(<[u8; 16]>::try_from(bytes).ok()?)
    } else {
        IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?)
    };
    Some(SocketAddr::new(ip, port))
}

/// Socket inode to the pid holding it, over the processes this user may look into.
fn socket_owners() -> HashMap<u64, u32> {
    let mut owners = HashMap::new();
    let Ok(processes) = std::fs::read_dir("/proc") else { return owners };
    for process in processes.filter_map(Result::ok) {
        let Ok(pid) = process.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(fds) = std::fs::read_dir(process.path().join("fd")) else { continue };
        for fd in fds.filter_map(Result::ok) {
            let Ok(link) = std::fs::read_link(fd.path()) else { continue };
            let link = link.to_string_lossy();
            let inode = link.strip_prefix("socket:[").and_then(|rest| rest.strip_suffix(']'));
            if let Some(inode) = inode.and_then(|inode| inode.parse().ok()) {
                owners.insert(inode, pid);
            }
        }
    }
    owners
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_addresses_parse() {
        let v4 = parse_hex_address("0100007F:1D4C", false).unwrap();
        assert_eq!(v4, "127.0.0.1:7500".parse().unwrap());
        let v6 = parse_hex_address("00000000000000000000000001000000:1D4C", true).unwrap();
        assert_eq!(v6, "[::1]:7500".parse().unwrap());
    }

    #[test]
    fn this_process_has_ticks_and_a_name() {
        let (name, _) = stat_ticks("/proc/self/stat").unwrap();
        assert!(!name.is_empty());
    }
}
