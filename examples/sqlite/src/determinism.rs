//! Keeping SQL deterministic: every replica must compute the same result from the same
//! statement, so nothing may read a clock, randomness, the machine's time zone or the state of
//! one connection (which a replica restored from a snapshot does not share).
//!
//! Two layers, because neither alone is enough:
//!
//! - On every replica's connection ([`guard`]), authoritative and identical everywhere:
//!   - an authorizer, consulted by SQLite while it prepares a statement, denies the functions
//!     that are non-deterministic whatever their arguments (`random()`, `CURRENT_TIMESTAMP`…),
//!     pragmas, `ATTACH`, transaction control, temporary objects (they live in one
//!     connection, not in the database) and writes to the bookkeeping table;
//!   - the same functions, and the date and time functions, are overridden with application
//!     functions. The first raise an error when called at all; the date and time functions
//!     raise one when given `'now'`, no time value, or the `localtime`/`utc` modifiers, and
//!     otherwise are computed by SQLite's own built-ins on a private connection. This catches
//!     what the authorizer cannot see: arguments known only at run time, column defaults,
//!     triggers and views.
//! - Before a statement is proposed ([`check_statement`]), a conservative lexical check that
//!   refuses the same constructs with a clear error and without a round trip. It cannot
//!   prepare the statement (the client has no schema), so the replicas' check stays the rule.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use rusqlite::Connection;
use rusqlite::functions::{Context, FunctionFlags};
use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
use rusqlite::types::{ToSqlOutput, Value as SqlValue, ValueRef};

use crate::command::Value;
use crate::reply::{ErrorKind, StatementError};

/// The table where each database records the position it has applied through.
pub const APPLIED_TABLE: &str = "_quorum_applied";

/// Functions refused whatever their arguments: randomness, the clock, and connection state
/// (`changes()`, `last_insert_rowid()`: a connection opened on a restored snapshot starts
/// them afresh, so replicas would disagree).
pub const REFUSED_FUNCTIONS: &[&str] = &[
    "random",
    "randomblob",
    "current_timestamp",
    "current_date",
    "current_time",
    "changes",
    "total_changes",
    "last_insert_rowid",
    "load_extension",
];

/// Date and time functions with the index of their time-value argument: refused with
/// `'now'` there, with no argument there, or with a `localtime` or `utc` modifier.
pub const TIME_FUNCTIONS: &[(&str, usize)] = &[
    ("date", 0),
    ("time", 0),
    ("datetime", 0),
    ("julianday", 0),
    ("unixepoch", 0),
    ("strftime", 1),
    ("timediff", 0),
];

/// What the message of an error raised by this module starts with: how the state machine
/// tells a refusal from any other SQL error.
pub const REFUSAL_PREFIX: &str = "non-deterministic: ";

fn refusal(message: impl std::fmt::Display) -> StatementError {
    StatementError::new(ErrorKind::NonDeterministic, message.to_string())
}

/// The switch and the last reason of the authorizer on one connection: the checks apply to
/// users' statements only, not to the state machine's own bookkeeping.
#[derive(Clone, Debug, Default)]
pub struct Guard {
    /// True while a user's statement is prepared or run.
    pub checking: Arc<AtomicBool>,
    /// Why the authorizer last denied something.
    pub denied: Arc<Mutex<Option<String>>>,
}

impl Guard {
    /// Takes the reason of the last denial, if any.
    pub fn take_denial(&self) -> Option<String> {
        self.denied.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take()
    }
}

/// Installs the checks on `connection` (see the module's documentation).
///
/// # Errors
/// SQLite refused to register a function.
pub fn guard(connection: &Connection) -> rusqlite::Result<Guard> {
    let flags = FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC;
    for name in REFUSED_FUNCTIONS.iter().filter(|name| **name != "load_extension") {
        let message = format!("{REFUSAL_PREFIX}{name}() differs between replicas");
        connection.create_scalar_function(*name, -1, flags, move |_: &Context<'_>| {
            Err::<SqlValue, _>(rusqlite::Error::UserFunctionError(message.clone().into()))
        })?;
    }
    for &(name, time_argument) in TIME_FUNCTIONS {
        let builtin = Connection::open_in_memory()?;
        connection.create_scalar_function(name, -1, flags, move |context: &Context<'_>| {
            time_function(&builtin, name, time_argument, context)
        })?;
    }
    let guard = Guard::default();
    let (checking, denied) = (guard.checking.clone(), guard.denied.clone());
    connection.authorizer(Some(move |context: AuthContext<'_>| {
        if !checking.load(Ordering::Relaxed) {
            return Authorization::Allow;
        }
        match authorize(&context.action) {
            Ok(()) => Authorization::Allow,
            Err(reason) => {
                *denied.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(reason);
                Authorization::Deny
            }
        }
    }));
    Ok(guard)
}

/// What the authorizer allows in a user's statement.
fn authorize(action: &AuthAction<'_>) -> Result<(), String> {
    let bookkeeping = |table: &str| table.eq_ignore_ascii_case(APPLIED_TABLE);
    match action {
        AuthAction::Function { function_name } => {
            let name = function_name.to_ascii_lowercase();
            if REFUSED_FUNCTIONS.contains(&name.as_str()) {
                return Err(format!("{REFUSAL_PREFIX}{name}() differs between replicas"));
            }
            Ok(())
        }
        AuthAction::Pragma { pragma_name, .. } => {
            Err(format!("{REFUSAL_PREFIX}PRAGMA {pragma_name} changes or reads one connection"))
        }
        AuthAction::Attach { .. } | AuthAction::Detach { .. } => {
            Err(format!("{REFUSAL_PREFIX}ATTACH and DETACH reach files outside the database"))
        }
        AuthAction::Transaction { .. } | AuthAction::Savepoint { .. } => Err(format!(
            "{REFUSAL_PREFIX}transaction control is the replicated log's: each command is \
             applied in its own savepoint"
        )),
        AuthAction::CreateTempIndex { .. }
        | AuthAction::CreateTempTable { .. }
        | AuthAction::CreateTempTrigger { .. }
        | AuthAction::CreateTempView { .. } => Err(format!(
            "{REFUSAL_PREFIX}temporary objects live in one connection, not in the replicated \
             database"
        )),
        AuthAction::Insert { table_name }
        | AuthAction::Delete { table_name }
        | AuthAction::Update { table_name, .. }
        | AuthAction::DropTable { table_name }
        | AuthAction::AlterTable { table_name, .. }
            if bookkeeping(table_name) =>
        {
            Err(format!("{APPLIED_TABLE} is the replication's own bookkeeping: read-only"))
        }
        _ => Ok(()),
    }
}

/// A date and time function: refused if it would read the clock or the time zone, else
/// SQLite's own built-in computed on `builtin` (a private connection without the overrides).
fn time_function(
    builtin: &Connection,
    name: &str,
    time_argument: usize,
    context: &Context<'_>,
) -> rusqlite::Result<SqlValue> {
    let refuse = |why: &str| {
        let message = format!("{REFUSAL_PREFIX}{name}() {why}");
        Err(rusqlite::Error::UserFunctionError(message.into()))
    };
    let arguments = context.len();
    if arguments <= time_argument {
        return refuse("without a time value reads the clock");
    }
    for index in 0..arguments {
        let ValueRef::Text(text) = context.get_raw(index) else { continue };
        let text = String::from_utf8_lossy(text).trim().to_ascii_lowercase();
        if index == time_argument && text == "now" {
            return refuse("of 'now' reads the clock");
        }
        if index > time_argument && (text == "localtime" || text == "utc") {
            return refuse("with 'localtime' or 'utc' depends on the machine's time zone");
        }
    }
    let placeholders: Vec<String> = (1..=arguments).map(|k| format!("?{k}")).collect();
    let sql = format!("SELECT {name}({})", placeholders.join(","));
    let mut statement = builtin.prepare_cached(&sql)?;
    let values = (0..arguments).map(|index| ToSqlOutput::Borrowed(context.get_raw(index)));
    statement.query_row(rusqlite::params_from_iter(values), |row| row.get::<_, SqlValue>(0))
}

/// Refuses, before it is proposed, a statement that is certainly non-deterministic: a call of
/// a refused function, a date or time function with no arguments, or `'now'`, `'localtime'`
/// or `'utc'` (as a literal or a parameter) in a statement that calls a date or time function;
/// and, by its first keywords, a pragma, `ATTACH`/`DETACH`, transaction control or a
/// temporary object.
/// Lexical and conservative: what it lets through, the replicas still check.
///
/// # Errors
/// The refusal, saying what was found.
pub fn check_statement(sql: &str, params: &[Value]) -> Result<(), StatementError> {
    let tokens = tokenize(sql);
    check_leading_keywords(&tokens)?;
    let mut calls_time_function = false;
    for (at, token) in tokens.iter().enumerate() {
        let Token::Word(word) = token else { continue };
        let next = tokens.get(at + 1);
        let called = next == Some(&Token::Open);
        if REFUSED_FUNCTIONS.contains(&word.as_str()) && (called || word.starts_with("current_")) {
            return Err(refusal(format!("{word}() differs between replicas")));
        }
        if called && TIME_FUNCTIONS.iter().any(|(name, _)| name == word) {
            calls_time_function = true;
            if tokens.get(at + 2) == Some(&Token::Close) {
                return Err(refusal(format!("{word}() without a time value reads the clock")));
            }
        }
    }
    if !calls_time_function {
        return Ok(());
    }
    let literals = tokens.iter().filter_map(|token| match token {
        Token::Literal(text) => Some(text.as_str()),
        _ => None,
    });
    let texts = params.iter().filter_map(|param| match param {
        Value::Text(text) => Some(text.as_str()),
        _ => None,
    });
    for text in literals.chain(texts) {
        match text.trim().to_ascii_lowercase().as_str() {
            "now" => return Err(refusal("'now' in a date or time function reads the clock")),
            "localtime" | "utc" => {
                return Err(refusal(format!(
                    "'{text}' in a date or time function depends on the machine's time zone"
                )));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Refuses, by its first keywords, a statement the replicas' authorizer would deny whatever
/// it names: pragmas, `ATTACH`/`DETACH`, transaction control, temporary objects. The same
/// reasons as the authorizer's.
fn check_leading_keywords(tokens: &[Token]) -> Result<(), StatementError> {
    let words: Vec<&str> = tokens
        .iter()
        .take(3)
        .map(|token| match token {
            Token::Word(word) => word.as_str(),
            _ => "",
        })
        .collect();
    match words[..] {
        ["pragma", name, ..] => {
            Err(refusal(format!("PRAGMA {name} changes or reads one connection")))
        }
        ["pragma"] => Err(refusal("PRAGMA changes or reads one connection")),
        ["attach" | "detach", ..] => {
            Err(refusal("ATTACH and DETACH reach files outside the database"))
        }
        ["begin" | "commit" | "end" | "rollback" | "savepoint" | "release", ..] => Err(refusal(
            "transaction control is the replicated log's: each command is applied in its own \
             savepoint",
        )),
        ["create", "temp" | "temporary", ..] => {
            Err(refusal("temporary objects live in one connection, not in the replicated database"))
        }
        _ => Ok(()),
    }
}

/// A token of SQL, as far as [`check_statement`] needs one.
#[derive(Debug, PartialEq)]
enum Token {
    /// A bare or quoted identifier or keyword, lower-cased.
    Word(String),
    /// A string literal's text.
    Literal(String),
    Open,
    Close,
    Other,
}

fn tokenize(sql: &str) -> Vec<Token> {
    let chars: Vec<char> = sql.chars().collect();
    let mut tokens = Vec::new();
    let mut at = 0;
    while at < chars.len() {
        let c = chars[at];
        if c.is_whitespace() {
            at += 1;
        } else if c == '-' && chars.get(at + 1) == Some(&'-') {
            while at < chars.len() && chars[at] != '\n' {
                at += 1;
            }
        } else if c == '/' && chars.get(at + 1) == Some(&'*') {
            at += 2;
            while at < chars.len() && !(chars[at] == '*' && chars.get(at + 1) == Some(&'/')) {
                at += 1;
            }
            at += 2;
        } else if let Some(close) = match c {
            '\'' => Some('\''),
            '"' => Some('"'),
            '`' => Some('`'),
            '[' => Some(']'),
            _ => None,
        } {
            let (text, end) = quoted(&chars, at + 1, close);
            at = end;
            tokens.push(if c == '\'' { Token::Literal(text) } else { Token::Word(lower(&text)) });
        } else if c.is_alphanumeric() || c == '_' {
            let start = at;
            while at < chars.len() && (chars[at].is_alphanumeric() || "_$".contains(chars[at])) {
                at += 1;
            }
            tokens.push(Token::Word(lower(&chars[start..at].iter().collect::<String>())));
        } else {
            tokens.push(match c {
                '(' => Token::Open,
                ')' => Token::Close,
                _ => Token::Other,
            });
            at += 1;
        }
    }
    tokens
}

/// The text of a quoted token from `start` (after the opening quote) and where it ends; a
/// doubled closing quote stands for one.
fn quoted(chars: &[char], start: usize, close: char) -> (String, usize) {
    let mut text = String::new();
    let mut at = start;
    while at < chars.len() {
        if chars[at] == close {
            if close != ']' && chars.get(at + 1) == Some(&close) {
                text.push(close);
                at += 2;
                continue;
            }
            return (text, at + 1);
        }
        text.push(chars[at]);
        at += 1;
    }
    (text, at)
}

fn lower(text: &str) -> String {
    text.to_ascii_lowercase()
}
