//! The command table (docs/redis.md): which Redis commands a node serves, their arity as
//! `COMMAND` reports it, and each request's arguments checked into a [`Command`]. A command
//! not in the table gets Redis's "unknown command" error; one reserved for the coordination
//! API (expiry, transactions, scans, pub/sub) gets an error saying it is not served yet.

use bytes::Bytes;

use super::reply::{Protocol, Reply};
use crate::machine::kv::coord::{LEASE_TTL_MS_MAX, LEASE_TTL_MS_MIN, RANGE_LIMIT_MAX};

/// One served command, as `COMMAND` describes it.
pub struct Spec {
    /// Its name, lowercase.
    pub name: &'static str,
    /// Redis's arity: N arguments exactly (the name counted), or at least N if negative.
    pub arity: i64,
    /// Redis's flags for it.
    pub flags: &'static [&'static str],
    /// Position of the first key, the last (-1: the last argument), and the step between.
    pub keys: (i64, i64, i64),
}

const fn spec(
    name: &'static str,
    arity: i64,
    flags: &'static [&'static str],
    keys: (i64, i64, i64),
) -> Spec {
    Spec { name, arity, flags, keys }
}

const READ: &[&str] = &["readonly", "fast"];
const WRITE: &[&str] = &["write", "denyoom"];
const LOCAL: &[&str] = &["fast", "loading", "stale"];
const SUBSCRIBE: &[&str] = &["pubsub", "noscript", "loading", "stale"];
const SESSION: &[&str] = &["noscript", "loading", "stale", "fast", "allow_busy"];

/// Every command served.
pub const TABLE: &[Spec] = &[
    spec("get", 2, READ, (1, 1, 1)),
    spec("strlen", 2, READ, (1, 1, 1)),
    spec("exists", -2, READ, (1, -1, 1)),
    spec("mget", -2, READ, (1, -1, 1)),
    spec("set", -3, WRITE, (1, 1, 1)),
    spec("setex", 4, WRITE, (1, 1, 1)),
    spec("psetex", 4, WRITE, (1, 1, 1)),
    spec("expire", 3, &["write", "fast"], (1, 1, 1)),
    spec("pexpire", 3, &["write", "fast"], (1, 1, 1)),
    spec("persist", 2, &["write", "fast"], (1, 1, 1)),
    spec("ttl", 2, READ, (1, 1, 1)),
    spec("pttl", 2, READ, (1, 1, 1)),
    spec("setnx", 3, WRITE, (1, 1, 1)),
    spec("getset", 3, WRITE, (1, 1, 1)),
    spec("mset", -3, WRITE, (1, -1, 2)),
    spec("del", -2, &["write"], (1, -1, 1)),
    spec("append", 3, WRITE, (1, 1, 1)),
    spec("incr", 2, WRITE, (1, 1, 1)),
    spec("decr", 2, WRITE, (1, 1, 1)),
    spec("incrby", 3, WRITE, (1, 1, 1)),
    spec("decrby", 3, WRITE, (1, 1, 1)),
    spec("ping", -1, LOCAL, (0, 0, 0)),
    spec("echo", 2, LOCAL, (0, 0, 0)),
    spec("hello", -1, LOCAL, (0, 0, 0)),
    spec("auth", -2, LOCAL, (0, 0, 0)),
    spec("select", 2, LOCAL, (0, 0, 0)),
    spec("client", -2, LOCAL, (0, 0, 0)),
    spec("command", -1, LOCAL, (0, 0, 0)),
    spec("info", -1, LOCAL, (0, 0, 0)),
    spec("config", -2, LOCAL, (0, 0, 0)),
    spec("quit", -1, LOCAL, (0, 0, 0)),
    spec("reset", 1, LOCAL, (0, 0, 0)),
    spec("multi", 1, SESSION, (0, 0, 0)),
    spec("exec", 1, &["noscript", "loading", "stale", "skip_slowlog"], (0, 0, 0)),
    spec("discard", 1, SESSION, (0, 0, 0)),
    spec("watch", -2, SESSION, (1, -1, 1)),
    spec("unwatch", 1, SESSION, (0, 0, 0)),
    spec("scan", -2, &["readonly"], (0, 0, 0)),
    spec("keys", 2, &["readonly"], (0, 0, 0)),
    spec("dbsize", 1, READ, (0, 0, 0)),
    spec("subscribe", -2, SUBSCRIBE, (0, 0, 0)),
    spec("psubscribe", -2, SUBSCRIBE, (0, 0, 0)),
    spec("unsubscribe", -1, SUBSCRIBE, (0, 0, 0)),
    spec("punsubscribe", -1, SUBSCRIBE, (0, 0, 0)),
];

/// Commands Redis has that come with the coordination API (leases, txn, ranges, watch).
const NOT_YET: &[&str] = &[
    "expireat",
    "pexpireat",
    "getex",
    "getdel",
    "publish",
    "flushdb",
    "flushall",
    "randomkey",
    "rename",
    "renamenx",
    "type",
    "msetnx",
    "incrbyfloat",
    "setrange",
    "getrange",
    "substr",
    "copy",
    "move",
    "object",
    "dump",
    "restore",
    "touch",
    "unlink",
];

/// A `SET` condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Condition {
    /// Always.
    Always,
    /// `NX`: only if the key is absent.
    IfAbsent,
    /// `XX`: only if the key is present.
    IfPresent,
}

/// A request, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// `PING [message]`.
    Ping(Option<Bytes>),
    /// `ECHO message`.
    Echo(Bytes),
    /// `HELLO [protover [AUTH user pass] [SETNAME name]]`.
    Hello {
        /// The protocol asked for.
        protocol: Option<Protocol>,
        /// A connection name to set.
        name: Option<Bytes>,
    },
    /// `AUTH [user] password`, with its argument count: there are no passwords.
    Auth(usize),
    /// `SELECT 0`.
    Select,
    /// `QUIT`.
    Quit,
    /// `RESET`.
    Reset,
    /// `CLIENT SETNAME name`.
    ClientSetName(Bytes),
    /// `CLIENT GETNAME`.
    ClientGetName,
    /// `CLIENT ID`.
    ClientId,
    /// `CLIENT INFO`.
    ClientInfo,
    /// `CLIENT SETINFO …` and others answered `OK` without effect.
    ClientIgnored,
    /// `COMMAND` (the table), `COMMAND COUNT`, `COMMAND DOCS`, `COMMAND INFO name…`.
    Table(Option<Vec<Bytes>>),
    /// `COMMAND COUNT`.
    TableCount,
    /// `COMMAND DOCS …`: none kept.
    TableDocs,
    /// `INFO [section]`.
    Info,
    /// `CONFIG GET parameter…`.
    ConfigGet(Vec<Bytes>),
    /// `GET key`.
    Get(Bytes),
    /// `STRLEN key`.
    Strlen(Bytes),
    /// `EXISTS key…`.
    Exists(Vec<Bytes>),
    /// `MGET key…`.
    MGet(Vec<Bytes>),
    /// `SET key value [NX|XX] [GET] [KEEPTTL]`.
    Set {
        /// The key.
        key: Bytes,
        /// The value.
        value: Bytes,
        /// When to set.
        condition: Condition,
        /// Reply with the old value.
        get: bool,
    },
    /// `SET key value EX|PX n`, `SETEX`, `PSETEX`: a put living by a lease of `ttl_ms`.
    SetExpiring {
        /// The key.
        key: Bytes,
        /// The value.
        value: Bytes,
        /// Its time to live, in milliseconds.
        ttl_ms: u64,
    },
    /// `EXPIRE key seconds`, `PEXPIRE key ms` (in milliseconds; 0 or less deletes the key).
    Expire(Bytes, i64),
    /// `TTL key` (false) or `PTTL key` (true).
    Ttl(Bytes, bool),
    /// `PERSIST key`.
    Persist(Bytes),
    /// `SETNX key value`.
    SetNx(Bytes, Bytes),
    /// `GETSET key value`.
    GetSet(Bytes, Bytes),
    /// `MSET key value…`.
    MSet(Vec<(Bytes, Bytes)>),
    /// `DEL key…`.
    Del(Vec<Bytes>),
    /// `APPEND key value`.
    Append(Bytes, Bytes),
    /// `INCR`, `DECR`, `INCRBY`, `DECRBY`: the key and what to add.
    IncrBy(Bytes, i64),
    /// `MULTI`.
    Multi,
    /// `EXEC`.
    Exec,
    /// `DISCARD`.
    Discard,
    /// `WATCH key…`.
    Watch(Vec<Bytes>),
    /// `UNWATCH`.
    Unwatch,
    /// `SCAN cursor [MATCH pattern] [COUNT count] [TYPE type]`.
    Scan {
        /// Where to continue (0: from the start).
        cursor: u64,
        /// The keys to list (none: all).
        pattern: Option<Bytes>,
        /// Keys to list at most in this call.
        count: u32,
        /// A `TYPE` other than `string` was asked for: there are no such keys.
        other_type: bool,
    },
    /// `KEYS pattern`.
    Keys(Bytes),
    /// `DBSIZE`.
    DbSize,
    /// `SUBSCRIBE channel…`.
    Subscribe(Vec<Bytes>),
    /// `PSUBSCRIBE pattern…`.
    PSubscribe(Vec<Bytes>),
    /// `UNSUBSCRIBE [channel…]`.
    Unsubscribe(Vec<Bytes>),
    /// `PUNSUBSCRIBE [pattern…]`.
    PUnsubscribe(Vec<Bytes>),
}

/// Redis's text for a command it does not know, with the first arguments shown.
fn unknown(name: &[u8], arguments: &[Bytes]) -> Reply {
    let shown: String = arguments
        .iter()
        .take(8)
        .map(|argument| {
            format!("'{}' ", String::from_utf8_lossy(&argument[..argument.len().min(64)]))
        })
        .collect();
    let name = String::from_utf8_lossy(&name[..name.len().min(64)]);
    Reply::error(format!("ERR unknown command '{name}', with args beginning with: {shown}"))
}

fn arity_error(name: &str) -> Reply {
    Reply::error(format!("ERR wrong number of arguments for '{name}' command"))
}

fn syntax_error() -> Reply {
    Reply::error("ERR syntax error")
}

fn integer(argument: &[u8]) -> Result<i64, Reply> {
    std::str::from_utf8(argument)
        .ok()
        .and_then(|text| text.parse().ok())
        .ok_or_else(|| Reply::error("ERR value is not an integer or out of range"))
}

fn upper(argument: &[u8]) -> String {
    String::from_utf8_lossy(argument).to_ascii_uppercase()
}

/// Checks a request's arguments into a command, or the error reply to give.
pub fn parse(arguments: Vec<Bytes>) -> Result<Command, Reply> {
    let Some((name, rest)) = arguments.split_first() else {
        return Err(Reply::error("ERR empty command"));
    };
    let lower = String::from_utf8_lossy(name).to_ascii_lowercase();
    let Some(spec) = TABLE.iter().find(|spec| spec.name == lower) else {
        if NOT_YET.contains(&lower.as_str()) {
            return Err(Reply::error(format!(
                "ERR command '{lower}' is not served by Quorum (docs/redis.md lists what is)"
            )));
        }
        return Err(unknown(name, rest));
    };
    let count = arguments.len() as i64;
    let fits = if spec.arity >= 0 { count == spec.arity } else { count >= -spec.arity };
    if !fits {
        return Err(arity_error(spec.name));
    }
    if let Some(command) = parse_data(spec.name, rest)? {
        return Ok(command);
    }
    match parse_session(spec.name, rest)? {
        Some(command) => Ok(command),
        None => parse_connection(spec.name, name, rest),
    }
}

/// The commands that change what the connection does next (transactions); `None` for the
/// others.
fn parse_session(name: &str, rest: &[Bytes]) -> Result<Option<Command>, Reply> {
    Ok(Some(match name {
        "multi" => Command::Multi,
        "exec" => Command::Exec,
        "discard" => Command::Discard,
        "watch" => Command::Watch(rest.to_vec()),
        "unwatch" => Command::Unwatch,
        "subscribe" => Command::Subscribe(rest.to_vec()),
        "psubscribe" => Command::PSubscribe(rest.to_vec()),
        "unsubscribe" => Command::Unsubscribe(rest.to_vec()),
        "punsubscribe" => Command::PUnsubscribe(rest.to_vec()),
        _ => return Ok(None),
    }))
}

/// An integer as Redis reads one from a value: decimal, no spaces, within i64.
///
/// # Errors
/// Redis's "not an integer" reply.
pub fn stored_integer(value: &[u8]) -> Result<i64, Reply> {
    let not_integer = || Reply::error("ERR value is not an integer or out of range");
    let text = std::str::from_utf8(value).map_err(|_| not_integer())?;
    if text.is_empty() || text.len() > 20 || text.starts_with('+') || text.trim() != text {
        return Err(not_integer());
    }
    text.parse().map_err(|_| not_integer())
}

/// The commands on keys; `None` for the others.
fn parse_data(name: &str, rest: &[Bytes]) -> Result<Option<Command>, Reply> {
    let key = |at: usize| rest[at].clone();
    Ok(Some(match name {
        "get" => Command::Get(key(0)),
        "strlen" => Command::Strlen(key(0)),
        "exists" => Command::Exists(rest.to_vec()),
        "mget" => Command::MGet(rest.to_vec()),
        "set" => parse_set(rest)?,
        "setnx" => Command::SetNx(key(0), key(1)),
        "setex" | "psetex" => {
            let scale = if name == "setex" { 1000 } else { 1 };
            let ttl_ms = expiry_ms(integer(&rest[1])?, scale, name)?;
            Command::SetExpiring { key: key(0), value: key(2), ttl_ms }
        }
        "expire" | "pexpire" => {
            let scale = if name == "expire" { 1000 } else { 1 };
            Command::Expire(key(0), integer(&rest[1])?.saturating_mul(scale))
        }
        "ttl" => Command::Ttl(key(0), false),
        "pttl" => Command::Ttl(key(0), true),
        "persist" => Command::Persist(key(0)),
        "getset" => Command::GetSet(key(0), key(1)),
        "mset" => {
            if rest.len() % 2 != 0 {
                return Err(arity_error("mset"));
            }
            Command::MSet(rest.chunks(2).map(|pair| (pair[0].clone(), pair[1].clone())).collect())
        }
        "del" => Command::Del(rest.to_vec()),
        "scan" => parse_scan(rest)?,
        "keys" => Command::Keys(key(0)),
        "dbsize" => Command::DbSize,
        "append" => Command::Append(key(0), key(1)),
        "incr" => Command::IncrBy(key(0), 1),
        "decr" => Command::IncrBy(key(0), -1),
        "incrby" => Command::IncrBy(key(0), integer(&rest[1])?),
        "decrby" => {
            let by = integer(&rest[1])?;
            let negated =
                by.checked_neg().ok_or_else(|| Reply::error("ERR decrement would overflow"))?;
            Command::IncrBy(key(0), negated)
        }
        _ => return Ok(None),
    }))
}

/// The connection's own commands (`name` as sent, for the unknown-command error).
fn parse_connection(lower: &str, name: &[u8], rest: &[Bytes]) -> Result<Command, Reply> {
    Ok(match lower {
        "ping" => match rest {
            [] => Command::Ping(None),
            [message] => Command::Ping(Some(message.clone())),
            _ => return Err(arity_error("ping")),
        },
        "echo" => Command::Echo(rest[0].clone()),
        "hello" => parse_hello(rest)?,
        "auth" => Command::Auth(rest.len()),
        "select" => match integer(&rest[0]) {
            Ok(0) => Command::Select,
            Ok(_) => return Err(Reply::error("ERR DB index is out of range")),
            Err(error) => return Err(error),
        },
        "quit" => Command::Quit,
        "reset" => Command::Reset,
        "client" => parse_client(rest)?,
        "command" => match rest.first().map(|sub| upper(sub)).as_deref() {
            None => Command::Table(None),
            Some("COUNT") => Command::TableCount,
            Some("DOCS") => Command::TableDocs,
            Some("INFO") => Command::Table(Some(rest[1..].to_vec())),
            Some(other) => {
                return Err(Reply::error(format!(
                    "ERR unknown subcommand '{other}'. Try COMMAND HELP."
                )));
            }
        },
        "info" => Command::Info,
        "config" => match upper(&rest[0]).as_str() {
            "GET" if rest.len() >= 2 => Command::ConfigGet(rest[1..].to_vec()),
            "GET" => return Err(arity_error("config|get")),
            other => {
                return Err(Reply::error(format!(
                    "ERR CONFIG {other} is not served: a node's settings are its flags (quorum node --help)"
                )));
            }
        },
        _ => return Err(unknown(name, rest)),
    })
}

fn parse_scan(rest: &[Bytes]) -> Result<Command, Reply> {
    let cursor = std::str::from_utf8(&rest[0])
        .ok()
        .and_then(|text| text.parse().ok())
        .ok_or_else(|| Reply::error("ERR invalid cursor"))?;
    let (mut pattern, mut count, mut other_type) = (None, 10, false);
    let mut options = rest[1..].iter();
    while let Some(option) = options.next() {
        let value = options.next().ok_or_else(syntax_error)?;
        match upper(option).as_str() {
            "MATCH" => pattern = Some(value.clone()),
            "COUNT" => {
                count = match integer(value)? {
                    n if n < 1 => return Err(syntax_error()),
                    n => u32::try_from(n).unwrap_or(u32::MAX).min(RANGE_LIMIT_MAX),
                };
            }
            // Every key holds a string.
            "TYPE" => other_type = !value.eq_ignore_ascii_case(b"string"),
            _ => return Err(syntax_error()),
        }
    }
    Ok(Command::Scan { cursor, pattern, count, other_type })
}

fn parse_set(rest: &[Bytes]) -> Result<Command, Reply> {
    let (key, value) = (rest[0].clone(), rest[1].clone());
    let (mut condition, mut get, mut ttl_ms) = (Condition::Always, false, None);
    let mut options = rest[2..].iter();
    while let Some(option) = options.next() {
        match upper(option).as_str() {
            "NX" if condition == Condition::Always => condition = Condition::IfAbsent,
            "XX" if condition == Condition::Always => condition = Condition::IfPresent,
            "GET" => get = true,
            // A plain SET clears an expiry, as in Redis; keeping it is not served yet.
            "KEEPTTL" => {
                return Err(Reply::error(
                    "ERR SET with KEEPTTL is not served by Quorum yet (docs/redis.md)",
                ));
            }
            unit @ ("EX" | "PX") if ttl_ms.is_none() => {
                let amount = options.next().ok_or_else(syntax_error)?;
                let scale = if unit == "EX" { 1000 } else { 1 };
                ttl_ms = Some(expiry_ms(integer(amount)?, scale, "set")?);
            }
            "EXAT" | "PXAT" => {
                return Err(Reply::error(
                    "ERR SET with EXAT/PXAT is not served by Quorum yet: use EX or PX (docs/redis.md)",
                ));
            }
            _ => return Err(syntax_error()),
        }
    }
    match ttl_ms {
        None => Ok(Command::Set { key, value, condition, get }),
        Some(ttl_ms) if condition == Condition::Always && !get => {
            Ok(Command::SetExpiring { key, value, ttl_ms })
        }
        Some(_) => Err(Reply::error(
            "ERR SET with an expiry and NX, XX or GET is not served by Quorum yet (docs/redis.md)",
        )),
    }
}

/// An expiry in milliseconds (`amount` of `scale` ms), checked: positive, and no shorter than
/// the store's shortest lease, [`LEASE_TTL_MS_MIN`] (a shorter one is refused rather than
/// lengthened).
fn expiry_ms(amount: i64, scale: i64, name: &str) -> Result<u64, Reply> {
    let invalid = || Reply::error(format!("ERR invalid expire time in '{name}' command"));
    let ms =
        u64::try_from(amount.checked_mul(scale).ok_or_else(invalid)?).map_err(|_| invalid())?;
    if ms == 0 || ms > LEASE_TTL_MS_MAX {
        return Err(invalid());
    }
    if ms < LEASE_TTL_MS_MIN {
        return Err(Reply::error(format!(
            "ERR invalid expire time in '{name}' command: Quorum's shortest expiry is {LEASE_TTL_MS_MIN} ms (a lease's minimum; docs/redis.md)"
        )));
    }
    Ok(ms)
}

fn parse_hello(rest: &[Bytes]) -> Result<Command, Reply> {
    let Some((version, mut options)) = rest.split_first() else {
        return Ok(Command::Hello { protocol: None, name: None });
    };
    let protocol = match integer(version) {
        Ok(2) => Protocol::Resp2,
        Ok(3) => Protocol::Resp3,
        _ => return Err(Reply::error("NOPROTO unsupported protocol version")),
    };
    let mut name = None;
    while let Some((option, tail)) = options.split_first() {
        match (upper(option).as_str(), tail) {
            // No passwords: any user and password is the default user's.
            ("AUTH", [_, _, tail @ ..]) => options = tail,
            ("SETNAME", [value, tail @ ..]) => {
                name = Some(value.clone());
                options = tail;
            }
            _ => {
                return Err(Reply::error(format!(
                    "ERR Syntax error in HELLO option '{}'",
                    upper(option)
                )));
            }
        }
    }
    Ok(Command::Hello { protocol: Some(protocol), name })
}

fn parse_client(rest: &[Bytes]) -> Result<Command, Reply> {
    let sub = upper(&rest[0]);
    Ok(match (sub.as_str(), rest.len()) {
        ("SETNAME", 2) => {
            if rest[1].iter().any(|byte| *byte <= b' ' || *byte > b'~') {
                return Err(Reply::error(
                    "ERR Client names cannot contain spaces, newlines or special characters.",
                ));
            }
            Command::ClientSetName(rest[1].clone())
        }
        ("GETNAME", 1) => Command::ClientGetName,
        ("ID", 1) => Command::ClientId,
        ("INFO", 1) => Command::ClientInfo,
        // What client libraries send as they connect: their name and version, and flags that
        // change nothing here.
        ("SETINFO", 3) | ("NO-EVICT", 2) | ("NO-TOUCH", 2) | ("REPLY", 2) => Command::ClientIgnored,
        _ => {
            return Err(Reply::error(format!(
                "ERR unknown subcommand or wrong number of arguments for 'client|{}'",
                sub.to_ascii_lowercase()
            )));
        }
    })
}

/// `COMMAND`'s entry for one command.
pub fn describe(spec: &Spec) -> Reply {
    let flags = spec.flags.iter().map(|flag| Reply::Simple(flag)).collect();
    Reply::Array(vec![
        Reply::text(spec.name),
        Reply::Integer(spec.arity),
        Reply::Array(flags),
        Reply::Integer(spec.keys.0),
        Reply::Integer(spec.keys.1),
        Reply::Integer(spec.keys.2),
        Reply::Array(Vec::new()),
        Reply::Array(Vec::new()),
        Reply::Array(Vec::new()),
        Reply::Array(Vec::new()),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(text: &str) -> Vec<Bytes> {
        text.split(' ').map(|word| Bytes::from(word.to_string())).collect()
    }

    #[allow(clippy::panic)]
    #[test]
    fn requests_become_commands_or_redis_errors() {
        assert_eq!(parse(args("GET k")), Ok(Command::Get(Bytes::from("k"))));
        assert_eq!(
            parse(args("set k v nx get")),
            Ok(Command::Set {
                key: "k".into(),
                value: "v".into(),
                condition: Condition::IfAbsent,
                get: true
            })
        );
        assert_eq!(parse(args("SET k v NX XX")), Err(syntax_error()));
        assert_eq!(parse(args("GET")), Err(arity_error("get")));
        assert_eq!(parse(args("MSET a 1 b")), Err(arity_error("mset")));
        assert!(parse(args("DECRBY k -9223372036854775808")).is_err());
        let Err(Reply::Error(text)) = parse(args("FROB a b")) else { panic!() };
        assert_eq!(text, "ERR unknown command 'FROB', with args beginning with: 'a' 'b' ");
        assert_eq!(parse(args("multi")), Ok(Command::Multi));
        assert_eq!(parse(args("WATCH a b")), Ok(Command::Watch(vec!["a".into(), "b".into()])));
        assert_eq!(parse(args("WATCH")), Err(arity_error("watch")));
        assert_eq!(
            parse(args("SCAN 7 match pre* COUNT 100")),
            Ok(Command::Scan {
                cursor: 7,
                pattern: Some("pre*".into()),
                count: 100,
                other_type: false
            })
        );
        assert_eq!(parse(args("SCAN x")), Err(Reply::error("ERR invalid cursor")));
        assert_eq!(parse(args("SCAN 0 COUNT 0")), Err(syntax_error()));
        let Err(Reply::Error(text)) = parse(args("PUBLISH c m")) else { panic!() };
        assert!(text.contains("is not served by Quorum"), "{text}");
        assert_eq!(
            parse(args("SET k v PX 1500")),
            Ok(Command::SetExpiring { key: "k".into(), value: "v".into(), ttl_ms: 1500 })
        );
        let Err(Reply::Error(text)) = parse(args("SET k v PX 999")) else { panic!() };
        assert!(text.contains("shortest expiry is 1000 ms"), "{text}");
        assert!(parse(args("SET k v EX 0")).is_err());
        assert!(parse(args("SET k v EX 10 NX")).is_err());
        assert_eq!(parse(args("PEXPIRE k -5")), Ok(Command::Expire("k".into(), -5)));
        assert_eq!(
            parse(args("HELLO 3 SETNAME me")),
            Ok(Command::Hello { protocol: Some(Protocol::Resp3), name: Some("me".into()) })
        );
        assert!(parse(args("HELLO 4")).is_err());
        assert!(parse(args("SELECT 1")).is_err());
    }

    #[test]
    fn stored_integers_are_read_as_redis_reads_them() {
        assert_eq!(stored_integer(b"-12"), Ok(-12));
        assert!(stored_integer(b" 1").is_err());
        assert!(stored_integer(b"+1").is_err());
        assert!(stored_integer(b"9223372036854775808").is_err());
        assert!(stored_integer(b"").is_err());
    }
}
