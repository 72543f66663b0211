//! The front ends with real, unmodified clients against one cluster of three real `quorum
//! node` processes (two shards, each node serving HTTP and the Redis protocol): the curl
//! examples of docs/http.md, exactly as written; redis-cli; the programs of clients/ (Python
//! urllib, http.client, requests and redis-py; C libcurl and hiredis; Go redigo and net/http;
//! Java HttpClient). Values written through one front end are read through another and through
//! the native client. Malformed and oversized input is refused without harm to anyone else.
//! Last, the leader of a shard is killed while every client above but requests writes through
//! it (the writers of clients/: a shell loop of curl and one of redis-cli, redis-py, urllib,
//! hiredis, libcurl, redigo, net/http, Java HttpClient, all at once): each retries or
//! reconnects to the other nodes as an application would and goes on writing; every write any
//! of them saw acknowledged is there afterwards, and the HTTP coordination scenario runs again
//! through a survivor. docs/redis.md, "Real clients", says which client runs which part.
//!
//! A client whose tool is not installed is reported SKIPPED (with the package to install) and
//! not run; .ci/run installs them all, so in CI none is skipped. One cluster serves the whole
//! file, so the file costs one start-up.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests may unwrap.

mod common;

use std::io::{BufRead, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Cluster;

/// The repository's root.
fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// True if `program` is on the path (or, for an absolute path, the file is there).
fn installed(program: &str) -> bool {
    if program.starts_with('/') {
        return std::path::Path::new(program).exists();
    }
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {program}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A Python that has redis-py and requests (Debian's, whatever else is first on the path).
fn python() -> Option<String> {
    ["/usr/bin/python3", "python3"].into_iter().map(str::to_string).find(|python| {
        Command::new(python)
            .args(["-c", "import redis, requests"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// Runs a command; its stdout, or an error with everything it printed.
fn run(command: &mut Command) -> Result<String, String> {
    let output = command.output().map_err(|error| format!("{command:?}: {error}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        return Err(format!(
            "{command:?} exited {}:\n{stdout}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(stdout)
}

/// Steps that each pass, fail or are skipped; failures are gathered, so every step runs.
#[derive(Default)]
struct Steps {
    failures: Vec<String>,
    passed: usize,
    skipped: Vec<String>,
}

impl Steps {
    fn run(&mut self, name: &str, step: impl FnOnce() -> Result<(), String>) {
        let started = Instant::now();
        match step() {
            Ok(()) => {
                self.passed += 1;
                println!("passed: {name} ({:.1} s)", started.elapsed().as_secs_f64());
            }
            Err(reason) => {
                println!("FAILED: {name}: {reason}");
                self.failures.push(format!("{name}: {reason}"));
            }
        }
    }

    /// Runs the step if every tool is installed; else says SKIPPED and which package to get.
    fn run_with(
        &mut self,
        name: &str,
        tools: &[(&str, &str)],
        step: impl FnOnce() -> Result<(), String>,
    ) {
        if self.have(name, tools) {
            self.run(name, step);
        }
    }

    /// True if every tool is installed; else says SKIPPED and which package to get.
    fn have(&mut self, name: &str, tools: &[(&str, &str)]) -> bool {
        if let Some((tool, package)) = tools.iter().find(|(tool, _)| !installed(tool)) {
            println!("SKIPPED: {name}: `{tool}` is not installed (apt-get install {package})");
            self.skipped.push(name.to_string());
            return false;
        }
        true
    }
}

fn http(cluster: &Cluster, index: usize) -> String {
    cluster.nodes[index].http.clone().unwrap()
}

fn redis(cluster: &Cluster, index: usize) -> String {
    cluster.nodes[index].redis.clone().unwrap()
}

/// Sends `request` on a new connection and reads until the node closes it or 5 s pass.
fn exchange(address: &str, request: &[u8]) -> Result<Vec<u8>, String> {
    let mut stream = TcpStream::connect(address).map_err(|error| error.to_string())?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    stream.write_all(request).map_err(|error| error.to_string())?;
    let mut answer = Vec::new();
    match stream.read_to_end(&mut answer) {
        Ok(_) => Ok(answer),
        Err(error) => {
            Err(format!("no close after {:?}: {error}", String::from_utf8_lossy(&answer)))
        }
    }
}

/// The `sh` blocks under docs/http.md's "Examples", each with the `output` block after it.
fn doc_examples() -> Vec<(String, Option<String>)> {
    let text = std::fs::read_to_string(root().join("docs/http.md")).unwrap();
    let examples =
        text.split("\n## Examples\n").nth(1).expect("docs/http.md has an Examples section");
    let examples = examples.split("\n## ").next().unwrap();
    let mut blocks: Vec<(String, String)> = Vec::new();
    let mut lines = examples.lines();
    while let Some(line) = lines.next() {
        if let Some(kind) = line.strip_prefix("```").filter(|kind| !kind.is_empty()) {
            let body: Vec<&str> = lines.by_ref().take_while(|line| *line != "```").collect();
            blocks.push((kind.to_string(), body.join("\n") + "\n"));
        }
    }
    let mut pairs = Vec::new();
    let mut blocks = blocks.into_iter().peekable();
    while let Some((kind, body)) = blocks.next() {
        assert_eq!(kind, "sh", "an `{kind}` block without an `sh` block before it");
        let output = blocks.next_if(|(kind, _)| kind == "output").map(|(_, body)| body);
        pairs.push((body, output));
    }
    pairs
}

fn curl_docs(cluster: &Cluster) -> Result<(), String> {
    let examples = doc_examples();
    if examples.len() < 6 {
        return Err(format!("only {} examples found in docs/http.md", examples.len()));
    }
    for (script, expected) in examples {
        let output = run(Command::new("bash")
            .args(["-c", &format!("set -euo pipefail\n{script}")])
            .env("HTTP", http(cluster, 1)))?;
        if let Some(expected) = expected {
            if output != expected {
                return Err(format!("example\n{script}printed\n{output}instead of\n{expected}"));
            }
        }
    }
    Ok(())
}

/// curl: `args` against node `index`'s HTTP front end; its output.
fn curl_at(cluster: &Cluster, index: usize, args: &[&str]) -> Result<String, String> {
    let address = http(cluster, index);
    let args: Vec<String> = args.iter().map(|arg| arg.replace("$HTTP", &address)).collect();
    run(Command::new("curl").args(["-gs"]).args(&args))
}

/// The number after `"name":` in a JSON text.
fn json_number(text: &str, name: &str) -> Result<u64, String> {
    let pattern = format!("\"{name}\":");
    let at = text.find(&pattern).ok_or_else(|| format!("no `{name}` in {text}"))?;
    let digits: String =
        text[at + pattern.len()..].chars().take_while(char::is_ascii_digit).collect();
    digits.parse().map_err(|_| format!("`{name}` is not a number in {text}"))
}

/// Leases, locks, fenced writes and a live watch over HTTP: a key put with a 1 s lease goes
/// once it expires (not before); a lock whose holder's lease expires passes to the next in
/// line, and the first holder's fenced write with its old token is refused while the new
/// holder's lands; a watch stream started before a write sees it.
fn http_coordination(cluster: &Cluster) -> Result<(), String> {
    let granted = Instant::now();
    let lease =
        curl_at(cluster, 0, &["-X", "POST", "-d", r#"{"ttl_ms":1000}"#, "http://$HTTP/v1/leases"])?;
    let lease = json_number(&lease, "id")?;
    let url = format!("http://$HTTP/v1/kv/http:leased?lease={lease}");
    curl_at(cluster, 0, &["-X", "PUT", "--data-binary", "short-lived", &url])?;
    let get = |index| curl_at(cluster, index, &["http://$HTTP/v1/kv/http:leased"]);
    if !get(1)?.contains("short-lived") {
        return Err("the leased key is not there".into());
    }
    while get(2)?.contains("short-lived") {
        if granted.elapsed() > Duration::from_secs(10) {
            return Err("the key of a 1 s lease is there after 10 s".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if granted.elapsed() < Duration::from_millis(1000) {
        return Err(format!("the key of a 1 s lease went after {:?}", granted.elapsed()));
    }
    fenced_after_expiry(cluster)?;
    live_watch(cluster)
}

fn fenced_after_expiry(cluster: &Cluster) -> Result<(), String> {
    let grant = |ttl: &str| -> Result<u64, String> {
        let body = format!("{{\"ttl_ms\":{ttl}}}");
        json_number(
            &curl_at(cluster, 1, &["-X", "POST", "-d", &body, "http://$HTTP/v1/leases"])?,
            "id",
        )
    };
    let (first, second) = (grant("1000")?, grant("30000")?);
    let lock = |lease: u64, timeout: u64| -> Result<String, String> {
        let body = format!("{{\"lease\":{lease},\"timeout_ms\":{timeout}}}");
        curl_at(cluster, 2, &["-X", "POST", "-d", &body, "http://$HTTP/v1/locks/{fence}lock"])
    };
    let first_token = json_number(&lock(first, 0)?, "token")?;
    // The first holder's lease expires (nobody keeps it alive): the lock passes on.
    let taken = lock(second, 10_000)?;
    let second_token = json_number(&taken, "token")?;
    if second_token <= first_token {
        return Err(format!("tokens {first_token} then {second_token}: they must grow"));
    }
    let write = |value: &str, token: u64| {
        let url = format!("http://$HTTP/v1/kv/{{fence}}out?lock={{fence}}lock&token={token}");
        curl_at(cluster, 0, &["-w", " %{http_code}", "-X", "PUT", "--data-binary", value, &url])
    };
    let late = write("late", first_token)?;
    if !late.contains("fence_failed") || !late.ends_with(" 412") {
        return Err(format!("the old holder's fenced write answered {late}"));
    }
    let landed = write("current", second_token)?;
    if !landed.ends_with(" 200") {
        return Err(format!("the holder's fenced write answered {landed}"));
    }
    let value = curl_at(cluster, 1, &["http://$HTTP/v1/kv/{fence}out"])?;
    if value.trim() != r#"{"key":"{fence}out","value":"current"}"# {
        return Err(format!("the fenced key holds {value}"));
    }
    curl_at(cluster, 1, &["-X", "DELETE", &format!("http://$HTTP/v1/leases/{second}")])?;
    Ok(())
}

fn live_watch(cluster: &Cluster) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|error| error.to_string())?;
    let headers = dir.path().join("headers");
    let url = format!("http://{}/v1/watch?prefix=live/&limit=1&timeout_ms=20000", http(cluster, 1));
    let watcher = Command::new("curl")
        .args(["-sN", "-D"])
        .arg(&headers)
        .arg(&url)
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|error| error.to_string())?;
    // Once the headers are in, the watch has its first revision: a later write is after it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(&headers).map_or(true, |text| !text.contains("\r\n\r\n")) {
        if Instant::now() > deadline {
            return Err("the watch stream did not start".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    curl_at(cluster, 2, &["-X", "PUT", "--data-binary", "later", "http://$HTTP/v1/kv/live/k"])?;
    let output = watcher.wait_with_output().map_err(|error| error.to_string())?;
    let line = String::from_utf8_lossy(&output.stdout).into_owned();
    let first: u64 = std::fs::read_to_string(&headers)
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("quorum-watch-revision: "))
        .and_then(|value| value.trim().parse().ok())
        .ok_or("no quorum-watch-revision header")?;
    let revision = json_number(&line, "revision")?;
    let want = format!(
        "{{\"key\":\"live/k\",\"revision\":{revision},\"type\":\"put\",\"value\":\"later\"}}\n"
    );
    if line != want || revision < first {
        return Err(format!("the watch printed {line:?} (from revision {first})"));
    }
    Ok(())
}

/// Expiry through redis-cli: SET PX goes after its TTL (not before), PTTL/TTL count down,
/// EXPIRE, PERSIST, and an expiry under the store's shortest lease is refused.
fn redis_expiry(cluster: &Cluster) -> Result<(), String> {
    let (host, port) =
        redis(cluster, 0).rsplit_once(':').map(|(h, p)| (h.to_string(), p.to_string())).unwrap();
    let cli = |args: &[&str]| {
        run(Command::new("redis-cli").args(["-h", &host, "-p", &port]).args(args))
            .map(|out| out.trim_end().to_string())
    };
    let expect = |args: &[&str], want: &str| -> Result<(), String> {
        let got = cli(args)?;
        if got != want {
            return Err(format!("redis-cli {args:?} printed {got:?}, not {want:?}"));
        }
        Ok(())
    };
    let set = Instant::now();
    expect(&["SET", "rx:short", "v", "PX", "1500"], "OK")?;
    let pttl: i64 = cli(&["PTTL", "rx:short"])?.parse().map_err(|_| "PTTL is not a number")?;
    if !(1..=1500).contains(&pttl) {
        return Err(format!("PTTL of a 1500 ms key: {pttl}"));
    }
    expect(&["TTL", "rx:short"], if pttl >= 500 { "1" } else { "0" })
        .or_else(|_| expect(&["TTL", "rx:short"], "1"))?;
    while cli(&["GET", "rx:short"])? == "v" {
        if set.elapsed() > Duration::from_secs(10) {
            return Err("a key SET with PX 1500 is there after 10 s".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if set.elapsed() < Duration::from_millis(1500) {
        return Err(format!("a key SET with PX 1500 went after {:?}", set.elapsed()));
    }
    expect(&["TTL", "rx:short"], "-2")?;
    expect(&["SET", "rx:kept", "v", "EX", "100"], "OK")?;
    expect(&["PERSIST", "rx:kept"], "1")?;
    expect(&["TTL", "rx:kept"], "-1")?;
    expect(&["PERSIST", "rx:kept"], "0")?;
    expect(&["EXPIRE", "rx:none", "100"], "0")?;
    expect(&["EXPIRE", "rx:kept", "100"], "1")?;
    expect(&["TTL", "rx:kept"], "100").or_else(|_| expect(&["TTL", "rx:kept"], "99"))?;
    expect(&["GET", "rx:kept"], "v")?;
    expect(&["SETEX", "rx:setex", "50", "w"], "OK")?;
    expect(&["GET", "rx:setex"], "w")?;
    expect(
        &["SET", "rx:tiny", "v", "PX", "500"],
        "ERR invalid expire time in 'set' command: Quorum's shortest expiry is 1000 ms (a lease's minimum; docs/redis.md)",
    )?;
    expect(&["SET", "rx:kept", "plain"], "OK")?;
    expect(&["TTL", "rx:kept"], "-1")
}

fn redis_cli(cluster: &Cluster) -> Result<(), String> {
    let (host, port) =
        redis(cluster, 2).rsplit_once(':').map(|(h, p)| (h.to_string(), p.to_string())).unwrap();
    let cli =
        |args: &[&str]| run(Command::new("redis-cli").args(["-h", &host, "-p", &port]).args(args));
    let expect = |args: &[&str], want: &str| -> Result<(), String> {
        let got = cli(args)?;
        if got != want {
            return Err(format!("redis-cli {args:?} printed {got:?}, not {want:?}"));
        }
        Ok(())
    };
    expect(&["SET", "cli:k", "v"], "OK\n")?;
    expect(&["GET", "cli:k"], "v\n")?;
    expect(&["GET", "native:greeting"], "from the native client\n")?;
    expect(&["PING"], "PONG\n")?;
    expect(&["SET", "cli:k", "w", "NX"], "\n")?;
    expect(&["SET", "cli:k", "w", "XX", "GET"], "v\n")?;
    expect(&["APPEND", "cli:k", "xyz"], "4\n")?;
    expect(&["STRLEN", "cli:k"], "4\n")?;
    expect(&["MSET", "cli:a", "1", "cli:b", "2"], "OK\n")?;
    expect(&["MGET", "cli:a", "cli:b", "cli:none"], "1\n2\n\n")?;
    expect(&["DEL", "cli:a", "cli:none"], "1\n")?;
    expect(&["EXISTS", "cli:a", "cli:b"], "1\n")?;
    expect(&["DECRBY", "cli:n", "3"], "-3\n")?;
    // redis-cli prints an error reply with an empty line after it.
    expect(&["FROB", "x"], "ERR unknown command 'FROB', with args beginning with: 'x' \n\n")?;
    let info = cli(&["INFO"])?;
    if !info.contains("redis_version:") {
        return Err(format!("INFO: {info}"));
    }
    // A scripted session on one connection, as a person would pipe it in; RESP3 too.
    let session = run(Command::new("bash").args([
        "-c",
        &format!("printf 'HELLO 3\\nSET cli:s one\\nGET cli:s\\nCLIENT SETNAME me\\nCLIENT GETNAME\\n' | redis-cli -h {host} -p {port}"),
    ]))?;
    if !session.ends_with("OK\none\nOK\nme\n") || !session.contains("proto") {
        return Err(format!("scripted session printed {session:?}"));
    }
    redis_cli_coordination(&host, &port)?;
    redis_cli_subscribe(cluster)?;
    // redis-benchmark, briefly: pipelining works end to end.
    if installed("redis-benchmark") {
        run(Command::new("redis-benchmark").args([
            "-h", &host, "-p", &port, "-t", "set,get", "-n", "2000", "-P", "16", "-c", "4", "-q",
        ]))?;
    }
    Ok(())
}

/// redis-cli's --scan over a prefix, KEYS of a glob refused, and a transaction typed in.
fn redis_cli_coordination(host: &str, port: &str) -> Result<(), String> {
    let cli =
        |args: &[&str]| run(Command::new("redis-cli").args(["-h", host, "-p", port]).args(args));
    let mut wanted: Vec<String> = (0..30).map(|i| format!("pre{i:02}")).collect();
    let mut mset = vec!["MSET".to_string()];
    for key in &wanted {
        mset.extend([key.clone(), "v".into()]);
    }
    mset.extend(["prx".into(), "v".into(), "apre".into(), "v".into()]);
    cli(&mset.iter().map(String::as_str).collect::<Vec<_>>())?;
    wanted.sort();
    let listed = cli(&["--scan", "--pattern", "pre*"])?;
    let mut listed: Vec<String> = listed.lines().map(str::to_string).collect();
    listed.sort();
    if listed != wanted {
        return Err(format!("redis-cli --scan --pattern 'pre*' listed {listed:?}"));
    }
    let refused = cli(&["KEYS", "a?c"])?;
    if !refused.starts_with("ERR Quorum serves only prefix patterns") {
        return Err(format!("KEYS 'a?c' printed {refused:?}"));
    }
    let typed = run(Command::new("bash").args([
        "-c",
        &format!(
            "printf 'EXEC\\nMULTI\\nSET {{t}}a 1\\nINCR {{t}}a\\nGET {{t}}a\\nEXEC\\nMULTI\\nSETNX {{t}}a 2\\nEXEC\\n' | redis-cli -h {host} -p {port}"
        ),
    ]))?;
    let want = "ERR EXEC without MULTI\n\nOK\nQUEUED\nQUEUED\nQUEUED\nOK\n2\n2\nOK\n";
    if !typed.starts_with(want) || !typed.contains("EXECABORT") {
        return Err(format!("a typed transaction printed {typed:?}"));
    }
    Ok(())
}

/// redis-cli SUBSCRIBE to a key's keyspace channel on one node sees a SET made through another
/// after the confirmation (Redis's watch; it has no lock with a fencing token).
fn redis_cli_subscribe(cluster: &Cluster) -> Result<(), String> {
    let address = |index| {
        let (host, port) = redis(cluster, index)
            .rsplit_once(':')
            .map(|(h, p)| (h.to_string(), p.to_string()))
            .unwrap();
        ["-h".to_string(), host, "-p".into(), port]
    };
    let channel = "__keyspace@0__:cli:watched";
    let mut subscriber = Command::new("redis-cli")
        .args(address(1))
        .args(["SUBSCRIBE", channel])
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|error| error.to_string())?;
    let lines = collect_lines(&mut subscriber);
    let printed = |count: usize| -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while lines.lock().unwrap().len() < count && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        lines.lock().unwrap().iter().map(|(_, line)| line.clone()).collect()
    };
    let confirmed = printed(3);
    let written =
        run(Command::new("redis-cli").args(address(0)).args(["SET", "cli:watched", "later"]));
    let seen = printed(6);
    subscriber.kill().ok();
    subscriber.wait().ok();
    written?;
    if confirmed != ["subscribe", channel, "1"]
        || seen.len() != 6
        || seen[3..] != ["message", channel, "set"]
    {
        return Err(format!("redis-cli SUBSCRIBE printed {seen:?}"));
    }
    Ok(())
}

/// Runs one of clients/'s programs; it prints `OK NAME` at the end when every check held.
fn client_program(command: &mut Command, name: &str) -> Result<(), String> {
    let output = run(command)?;
    if !output.lines().any(|line| line == format!("OK {name}")) {
        return Err(format!("no `OK {name}` in:\n{output}"));
    }
    Ok(())
}

/// What every client program wrote, read back through the native client and the other front
/// end: `NAME:http` and `NAME:redis` where the program speaks each.
fn cross_check(cluster: &Cluster, written: &[(&str, bool, bool)]) -> Result<(), String> {
    let client = cluster.client(Duration::from_secs(10))?;
    for (name, over_http, over_redis) in written {
        for (speaks, key, value) in [
            (*over_http, format!("{name}:http"), format!("written by {name} over HTTP")),
            (*over_redis, format!("{name}:redis"), format!("written by {name} over RESP")),
        ] {
            if !speaks {
                continue;
            }
            let native = client.get(key.as_bytes()).map_err(|error| error.to_string())?;
            if native.as_deref() != Some(value.as_bytes()) {
                return Err(format!("the native client reads {key} as {native:?}"));
            }
            // Through the HTTP front end of node 3, raw.
            let url = format!("http://{}/v1/kv/{key}", http(cluster, 2));
            let raw = run(Command::new("curl").args([
                "-s",
                "-H",
                "Accept: application/octet-stream",
                &url,
            ]))?;
            if raw != value {
                return Err(format!("curl reads {key} as {raw:?}"));
            }
        }
    }
    Ok(())
}

fn hostile_input(cluster: &Cluster) -> Result<(), String> {
    let address = redis(cluster, 0);
    for (request, want) in [
        (&b"*1\r\n$x\r\n"[..], "-ERR Protocol error: invalid bulk length\r\n"),
        (b"*99999999\r\n", "-ERR Protocol error: invalid multibulk length\r\n"),
        (b"*1\r\n:5\r\n", "-ERR Protocol error: expected '$', got ':'\r\n"),
        (
            b"PING\r\n*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2000000\r\n",
            "+PONG\r\n-ERR Protocol error: invalid bulk length\r\n",
        ),
        (b"SET k \"unbalanced\r\n", "-ERR Protocol error: unbalanced quotes in request\r\n"),
    ] {
        let answer = exchange(&address, request)?;
        if answer != want.as_bytes() {
            return Err(format!(
                "{:?} got {:?}, not {want:?}",
                String::from_utf8_lossy(request),
                String::from_utf8_lossy(&answer)
            ));
        }
    }
    // Random bytes to both front ends: each connection answers or closes, never hangs the
    // node.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..200 {
        let bytes: Vec<u8> = (0..64)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        for front in [address.clone(), http(cluster, 0)] {
            let mut stream = TcpStream::connect(&front).map_err(|error| error.to_string())?;
            stream.write_all(&bytes).map_err(|error| error.to_string())?;
            drop(stream);
        }
    }
    // HTTP that is not HTTP, a header block that never ends.
    let answer = exchange(&http(cluster, 0), b"NOT HTTP AT ALL\r\n\r\n")?;
    if !answer.starts_with(b"HTTP/1.1 400") {
        return Err(format!("garbage HTTP got {:?}", String::from_utf8_lossy(&answer)));
    }
    // Clients that hang up right after their request: the requests they left behind do not
    // hold up anyone else's to the same shard.
    for n in 0..100 {
        let mut stream = TcpStream::connect(http(cluster, 0)).map_err(|error| error.to_string())?;
        let request =
            format!("PUT /v1/kv/hung-up-{n} HTTP/1.1\r\nhost: x\r\ncontent-length: 1\r\n\r\nv");
        stream.write_all(request.as_bytes()).map_err(|error| error.to_string())?;
        drop(stream);
        let mut stream =
            TcpStream::connect(redis(cluster, 0)).map_err(|error| error.to_string())?;
        stream
            .write_all(format!("SET hung-up-{n} v\r\nGET hung-up-{n}\r\n").as_bytes())
            .map_err(|error| error.to_string())?;
        drop(stream);
    }
    let answer = exchange(&address, b"SET after-hang-ups yes\r\nGET after-hang-ups\r\nQUIT\r\n")?;
    if answer != b"+OK\r\n$3\r\nyes\r\n+OK\r\n" {
        return Err(format!(
            "after clients hung up, SET and GET got {:?}",
            String::from_utf8_lossy(&answer)
        ));
    }
    // Idle connections by the hundred cost nothing to the others.
    let idle: Vec<TcpStream> = (0..200)
        .flat_map(|_| [TcpStream::connect(redis(cluster, 0)), TcpStream::connect(http(cluster, 0))])
        .collect::<Result<_, _>>()
        .map_err(|error| error.to_string())?;
    let pong = exchange(&address, b"PING\r\nQUIT\r\n")?;
    if pong != b"+PONG\r\n+OK\r\n" {
        return Err(format!("after hostile input PING got {:?}", String::from_utf8_lossy(&pong)));
    }
    let health =
        run(Command::new("curl").args(["-s", &format!("http://{}/health", http(cluster, 0))]))?;
    if health != "{\"status\":\"up\"}\n" {
        return Err(format!("after hostile input /health got {health:?}"));
    }
    drop(idle);
    Ok(())
}

/// Lines a child prints, each with when it arrived.
fn collect_lines(child: &mut std::process::Child) -> Arc<Mutex<Vec<(Instant, String)>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let stdout = child.stdout.take().unwrap();
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            sink.lock().unwrap().push((Instant::now(), line));
        }
    });
    lines
}

/// The front end a client speaks.
#[derive(Clone, Copy, PartialEq)]
enum Front {
    Resp,
    Http,
}

/// A client program of the leader kill: `build`, if any, compiles it, then `program SECONDS
/// failover-NAME ADDRESS...` writes through the addresses of its front end, the victim's
/// first, and prints each key it saw acknowledged (clients/python/writer.py's interface).
struct Writer {
    name: &'static str,
    front: Front,
    build: Option<Command>,
    program: Command,
}

/// Kills the leader of shard 0 while every writer writes through it and then, once their
/// connection to it fails, through the others: each must write both before the kill and more
/// than 1 s after it, and every write any of them saw acknowledged must be there afterwards.
fn leader_killed(cluster: &mut Cluster, mut writers: Vec<Writer>) -> Result<(), String> {
    for build in writers.iter_mut().filter_map(|writer| writer.build.as_mut()) {
        run(build)?;
    }
    let victim = cluster.shard_leader(0).ok_or("shard 0 has no leader")?;
    let survivors: Vec<usize> = (0..3).filter(|index| *index != victim).collect();
    let mut running = Vec::new();
    for writer in &mut writers {
        let addresses: Vec<String> = std::iter::once(victim)
            .chain(survivors.iter().copied())
            .map(|index| match writer.front {
                Front::Resp => redis(cluster, index),
                Front::Http => http(cluster, index),
            })
            .collect();
        let mut child = writer
            .program
            .arg("8")
            .arg(format!("failover-{}", writer.name))
            .args(&addresses)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|error| format!("{}: {error}", writer.name))?;
        let lines = collect_lines(&mut child);
        running.push((writer.name, child, lines));
    }
    // The kill comes once every writer writes through the victim (a JVM starts slower than a
    // C program), 2 s in or up to 4 s, with 4 s or more of the writers' 8 s left after it.
    let started = Instant::now();
    let writing = |running: &[(_, _, Arc<Mutex<Vec<_>>>)]| {
        running.iter().all(|(_, _, lines)| !lines.lock().unwrap().is_empty())
    };
    while started.elapsed() < Duration::from_secs(2)
        || !writing(&running) && started.elapsed() < Duration::from_secs(4)
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    cluster.kill(victim);
    let killed = Instant::now();
    println!("killed node {} (shard 0's leader), {:?} in", victim + 1, killed - started);
    let mut acked: Vec<(String, String)> = Vec::new();
    let mut failures = Vec::new();
    for (name, mut child, lines) in running {
        let status = child.wait().map_err(|error| error.to_string())?;
        // Its own count of acknowledgements and errors, or why it failed.
        let mut stderr = String::new();
        child.stderr.take().unwrap().read_to_string(&mut stderr).ok();
        let stderr = stderr.trim();
        // The reader thread may still hold the last lines.
        std::thread::sleep(Duration::from_millis(100));
        let lines = lines.lock().unwrap();
        let before = lines.iter().filter(|(at, _)| *at < killed).count();
        let after = lines.iter().filter(|(at, _)| *at > killed + Duration::from_secs(1)).count();
        println!(
            "{name}: {} writes acknowledged, {before} before the kill, {after} more than 1 s \
             after it ({stderr})",
            lines.len()
        );
        if !status.success() || before == 0 || after == 0 {
            failures.push(format!(
                "{name} exited {status}, {before} acknowledged before the kill and {after} more \
                 than 1 s after it: {stderr}"
            ));
        }
        let prefix = format!("failover-{name}:");
        for (_, key) in lines.iter() {
            let n = key.strip_prefix(&prefix).ok_or(format!("{name} printed {key}"))?;
            acked.push((key.clone(), format!("value {n}")));
        }
        // And the last of each through a survivor's HTTP front end, raw.
        for (_, key) in lines.iter().rev().take(3) {
            let url = format!("http://{}/v1/kv/{key}", http(cluster, survivors[1]));
            let raw = run(Command::new("curl").args([
                "-s",
                "-H",
                "Accept: application/octet-stream",
                &url,
            ]))?;
            if raw != format!("value {}", &key[prefix.len()..]) {
                failures.push(format!("after the kill curl reads {key} as {raw:?}"));
            }
        }
    }
    let lost = common::lost_writes(cluster, &acked, 4);
    if !lost.is_empty() {
        failures.push(format!(
            "{} of {} acknowledged writes lost, e.g. {:?}",
            lost.len(),
            acked.len(),
            &lost[..lost.len().min(5)]
        ));
    }
    if failures.is_empty() { Ok(()) } else { Err(failures.join("; ")) }
}

/// Waits until every node's HTTP front end answers /health.
fn await_front_ends(cluster: &Cluster) {
    let deadline = Instant::now() + Duration::from_secs(20);
    for index in 0..cluster.nodes.len() {
        while exchange(
            &http(cluster, index),
            b"GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        )
        .map_or(true, |answer| !answer.starts_with(b"HTTP/1.1 200"))
        {
            assert!(
                Instant::now() < deadline,
                "node {}'s HTTP front end does not answer",
                index + 1
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

const HIREDIS: &[(&str, &str)] = &[
    ("cc", "build-essential"),
    ("pkg-config --exists hiredis || test -e /usr/include/hiredis/hiredis.h", "libhiredis-dev"),
];
const LIBCURL: &[(&str, &str)] =
    &[("cc", "build-essential"), ("curl-config", "libcurl4-openssl-dev")];
const REDIGO: &[(&str, &str)] = &[
    ("go", "golang-go"),
    (
        "test -d /usr/share/gocode/src/github.com/gomodule/redigo",
        "golang-github-gomodule-redigo-dev",
    ),
];

/// `go` as the Go programs of clients/ are built: GOPATH mode, Debian's redigo.
fn go(build: &std::path::Path) -> Command {
    let mut go = Command::new("go");
    go.env("GO111MODULE", "off")
        .env("GOPATH", "/usr/share/gocode")
        .env("GOFLAGS", "")
        .env("GOCACHE", build.join("gocache"));
    go
}

/// The leader kill's writers whose tools are installed (the others are SKIPPED), one per
/// client.
fn writers(steps: &mut Steps, build: &std::path::Path) -> Vec<Writer> {
    use Front::{Http, Resp};
    let clients = root().join("clients");
    let command = |program: &str, args: &[&str]| {
        let mut command = Command::new(program);
        command.args(args);
        command
    };
    let shell = |tool| command("bash", &[clients.join("shell/writer.sh").to_str().unwrap(), tool]);
    let binary = |name| build.join(name).to_str().unwrap().to_string();
    let cc = |source: &str, library, name| {
        let source = clients.join(source);
        command("cc", &[source.to_str().unwrap(), "-O1", library, "-o", &binary(name)])
    };
    let mut go_build = go(build);
    go_build.args(["build", "-o", &binary("writer_go"), "writer.go"]);
    go_build.current_dir(clients.join("go/writer"));
    let java = binary("java");
    let javac =
        command("javac", &["-d", &java, clients.join("java/Writer.java").to_str().unwrap()]);
    let python = |python: &str, script| {
        command(python, &[clients.join("python").join(script).to_str().unwrap()])
    };
    // (name, source under clients/, front end, tools, program, build)
    let mut candidates = vec![
        ("curl", "shell/writer.sh", Http, &[("curl", "curl")][..], shell("curl"), None),
        (
            "redis-cli",
            "shell/writer.sh",
            Resp,
            &[("redis-cli", "redis-tools")],
            shell("redis-cli"),
            None,
        ),
        (
            "urllib",
            "python/http_writer.py",
            Http,
            &[("python3", "python3")],
            python("python3", "http_writer.py"),
            None,
        ),
        (
            "hiredis",
            "c/writer_hiredis.c",
            Resp,
            HIREDIS,
            command(&binary("writer_hiredis"), &[]),
            Some(cc("c/writer_hiredis.c", "-lhiredis", "writer_hiredis")),
        ),
        (
            "libcurl",
            "c/writer_curl.c",
            Http,
            LIBCURL,
            command(&binary("writer_curl"), &[]),
            Some(cc("c/writer_curl.c", "-lcurl", "writer_curl")),
        ),
        // One Go program, built once (by the first), for both.
        (
            "redigo",
            "go/writer/writer.go",
            Resp,
            REDIGO,
            command(&binary("writer_go"), &["resp"]),
            Some(go_build),
        ),
        (
            "nethttp",
            "go/writer/writer.go",
            Http,
            REDIGO,
            command(&binary("writer_go"), &["http"]),
            None,
        ),
        (
            "java",
            "java/Writer.java",
            Http,
            &[("javac", "default-jdk-headless")],
            command("java", &["-cp", &java, "Writer"]),
            Some(javac),
        ),
    ];
    match self::python() {
        Some(interpreter) => candidates.push((
            "redis-py",
            "python/writer.py",
            Resp,
            &[],
            python(&interpreter, "writer.py"),
            None,
        )),
        None => {
            println!(
                "SKIPPED: the leader kill's redis-py writer: no python3 with redis-py (apt-get install python3-redis)"
            );
            steps.skipped.push("the leader kill's redis-py writer".into());
        }
    }
    candidates
        .into_iter()
        .filter(|(name, source, _, tools, _, _)| {
            steps.have(&format!("the leader kill's {name} writer (clients/{source})"), tools)
        })
        .map(|(name, _, front, _, program, build)| Writer { name, front, build, program })
        .collect()
}

#[test]
fn real_clients_through_every_front_end_read_each_others_writes_and_keep_them_across_a_leader_kill()
{
    let dir = tempfile::tempdir().unwrap();
    let dirs = (1..=3).map(|n| dir.path().join(format!("node-{n}"))).collect();
    let mut cluster = Cluster::start_with_front_ends(19, dirs, dir.path(), &[], 2);
    cluster.await_serving(Duration::from_secs(30));
    await_front_ends(&cluster);
    let native = cluster.client(Duration::from_secs(10)).unwrap();
    native.put(b"native:greeting", b"from the native client").unwrap();
    let build = dir.path().join("build");
    std::fs::create_dir_all(&build).unwrap();
    let clients = root().join("clients");
    let mut steps = Steps::default();
    let mut written: Vec<(&str, bool, bool)> = Vec::new();

    steps.run_with("curl: every example of docs/http.md", &[("curl", "curl")], || {
        curl_docs(&cluster)
    });
    steps.run_with("curl: leases, locks, fenced writes, a live watch", &[("curl", "curl")], || {
        http_coordination(&cluster)
    });
    steps.run_with("redis-cli", &[("redis-cli", "redis-tools"), ("curl", "curl")], || {
        redis_cli(&cluster)
    });
    steps.run_with(
        "redis-cli: SET EX/PX, EXPIRE, TTL, PERSIST",
        &[("redis-cli", "redis-tools")],
        || redis_expiry(&cluster),
    );
    match python() {
        Some(python) => {
            steps.run("Python: urllib, requests, redis-py (clients/python/kv.py)", || {
                client_program(
                    Command::new(&python).arg(clients.join("python/kv.py")).args([
                        http(&cluster, 0),
                        redis(&cluster, 1),
                        "python".into(),
                    ]),
                    "python",
                )
            });
            written.push(("python", true, true));
            steps.run("redis-py: WATCH/MULTI/EXEC, SCAN, KEYS, keyspace SUBSCRIBE (clients/python/coordination.py)", || {
                client_program(
                    Command::new(&python)
                        .arg(clients.join("python/coordination.py"))
                        .args([redis(&cluster, 0), redis(&cluster, 1)]),
                    "coordination",
                )
            });
        }
        None => println!(
            "SKIPPED: Python: no python3 with redis-py and requests (apt-get install python3-redis python3-requests)"
        ),
    }
    // The standard library alone: any python3 runs it, with or without redis-py and requests.
    steps.run_with(
        "Python: urllib, http.client: a lease that expires, a lock with fenced writes, a watch from a revision (clients/python/http_coordination.py)",
        &[("python3", "python3")],
        || {
            client_program(
                Command::new("python3")
                    .arg(clients.join("python/http_coordination.py"))
                    .args([http(&cluster, 1), "urllib".into()]),
                "urllib",
            )
        },
    );
    steps.run_with("C: hiredis (clients/c/kv_hiredis.c)", HIREDIS, || {
        let binary = build.join("kv_hiredis");
        run(Command::new("cc")
            .arg(clients.join("c/kv_hiredis.c"))
            .args(["-O1", "-lhiredis", "-o"])
            .arg(&binary))?;
        let (host, port) = redis(&cluster, 2)
            .rsplit_once(':')
            .map(|(h, p)| (h.to_string(), p.to_string()))
            .unwrap();
        client_program(Command::new(&binary).args([host, port, "hiredis".into()]), "hiredis")
    });
    written.push(("hiredis", false, true));
    steps.run_with("C: libcurl (clients/c/kv_curl.c)", LIBCURL, || {
        let binary = build.join("kv_curl");
        run(Command::new("cc")
            .arg(clients.join("c/kv_curl.c"))
            .args(["-O1", "-lcurl", "-o"])
            .arg(&binary))?;
        client_program(Command::new(&binary).args([http(&cluster, 1), "libcurl".into()]), "libcurl")
    });
    written.push(("libcurl", true, false));
    steps.run_with("Go: redigo and net/http (clients/go/kv_redigo.go)", REDIGO, || {
        client_program(
            go(&build)
                .args(["run", "kv_redigo.go", &http(&cluster, 2), &redis(&cluster, 0), "redigo"])
                .current_dir(clients.join("go")),
            "redigo",
        )
    });
    written.push(("redigo", true, true));
    steps.run_with(
        "Java: java.net.http.HttpClient (clients/java/Kv.java)",
        &[("java", "default-jdk-headless")],
        || {
            client_program(
                Command::new("java")
                    .arg(clients.join("java/Kv.java"))
                    .args([http(&cluster, 0), "java".into()]),
                "java",
            )
        },
    );
    written.push(("java", true, false));
    let ran: Vec<(&str, bool, bool)> = written
        .into_iter()
        .filter(|(name, _, _)| {
            !steps.skipped.iter().any(|skipped| skipped.to_lowercase().contains(name))
        })
        .collect();
    steps.run_with(
        "writes of each client read through the native client and curl",
        &[("curl", "curl")],
        || cross_check(&cluster, &ran),
    );
    steps.run_with("malformed, oversized and idle connections", &[("curl", "curl")], || {
        hostile_input(&cluster)
    });
    let writers = writers(&mut steps, &build);
    steps.run_with(
        &format!("a shard leader killed under {} writers, one per client", writers.len()),
        &[("curl", "curl")],
        || leader_killed(&mut cluster, writers),
    );
    // The coordination scenario again on the shards whose leader moved: leases, locks and
    // watches are the new leader's after the kill.
    let survivor = cluster.nodes.iter().position(|node| node.child.is_some()).unwrap();
    steps.run_with(
        "urllib coordination after the kill (clients/python/http_coordination.py)",
        &[("python3", "python3")],
        || {
            client_program(
                Command::new("python3")
                    .arg(clients.join("python/http_coordination.py"))
                    .args([http(&cluster, survivor), "urllib-after-kill".into()]),
                "urllib-after-kill",
            )
        },
    );
    println!(
        "{} passed, {} failed, {} skipped",
        steps.passed,
        steps.failures.len(),
        steps.skipped.len()
    );
    assert!(steps.failures.is_empty(), "{}", steps.failures.join("\n\n"));
}
