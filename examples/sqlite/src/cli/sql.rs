//! `quorum-sqlite exec` and `query`: one statement through a cluster, its result printed as
//! a table or as JSON.

use std::process::ExitCode;
use std::time::Duration;

use quorum_sqlite::client::{SqlClient, SqlClientError};
use quorum_sqlite::determinism::check_statement;
use quorum_sqlite::{Outcome, Value};

/// Which of the two subcommands.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A command: applied once on every replica.
    Exec,
    /// A read-only query.
    Query,
}

/// The flags and arguments of `exec` and `query`.
#[derive(clap::Args)]
pub struct SqlArgs {
    /// Any members of the cluster, HOST:PORT[,HOST:PORT…] (their shard 0 port).
    #[arg(long, value_name = "HOST:PORT,…")]
    cluster: String,
    /// The cluster's id (default: any).
    #[arg(long, default_value_t = 0)]
    cluster_id: u64,
    /// The shard whose database to use.
    #[arg(long, default_value_t = 0)]
    shard: u16,
    /// How long to wait for the answer, retries included, in ms.
    #[arg(long, value_name = "MS", default_value_t = 10_000)]
    timeout_ms: u64,
    /// Print JSON: exec, one object; query, one object per row (JSON Lines).
    #[arg(long)]
    json: bool,
    /// One SQL statement.
    sql: String,
    /// Its parameters, for ?1, ?2…: null, 42, 1.5, text, or i:42, r:1.5, t:text, x:HEX.
    #[arg(allow_hyphen_values = true)]
    params: Vec<String>,
}

/// A parameter from the command line (see [`SqlArgs::params`]).
pub fn parse_param(text: &str) -> Result<Value, String> {
    if let Some(rest) = text.strip_prefix("i:") {
        return rest.parse().map(Value::Integer).map_err(|_| format!("not an integer: {rest}"));
    }
    if let Some(rest) = text.strip_prefix("r:") {
        return rest.parse().map(Value::Real).map_err(|_| format!("not a real: {rest}"));
    }
    if let Some(rest) = text.strip_prefix("t:") {
        return Ok(Value::Text(rest.to_string()));
    }
    if let Some(hex) = text.strip_prefix("x:") {
        if hex.len() % 2 != 0 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(format!("not hexadecimal bytes: {hex}"));
        }
        let bytes = (0..hex.len()).step_by(2).map(|at| u8::from_str_radix(&hex[at..at + 2], 16));
        return Ok(Value::Blob(bytes.collect::<Result<_, _>>().map_err(|e| e.to_string())?));
    }
    if text.eq_ignore_ascii_case("null") {
        return Ok(Value::Null);
    }
    if let Ok(integer) = text.parse::<i64>() {
        return Ok(Value::Integer(integer));
    }
    let numeric = text.chars().all(|c| c.is_ascii_digit() || "+-.eE".contains(c));
    match text.parse::<f64>() {
        Ok(real) if numeric && real.is_finite() => Ok(Value::Real(real)),
        _ => Ok(Value::Text(text.to_string())),
    }
}

/// Runs `exec` or `query`: exit 0 with the result printed, 1 if the statement failed or
/// the cluster did not answer (the reason on stderr), 2 for unusable arguments.
pub fn run(args: &SqlArgs, mode: Mode) -> ExitCode {
    let name = if mode == Mode::Exec { "exec" } else { "query" };
    let params: Result<Vec<Value>, String> = args.params.iter().map(|p| parse_param(p)).collect();
    let params = match params {
        Ok(params) => params,
        Err(error) => {
            eprintln!("quorum-sqlite {name}: {error}");
            return ExitCode::from(2);
        }
    };
    // Refused here, before any connection: the same check the client makes before proposing.
    if let Err(error) = check_statement(&args.sql, &params) {
        eprintln!("quorum-sqlite {name}: {error}");
        return ExitCode::FAILURE;
    }
    let seeds: Vec<String> = args.cluster.split(',').map(|seed| seed.trim().to_string()).collect();
    let timeout = Duration::from_millis(args.timeout_ms);
    let result =
        SqlClient::connect(&seeds, args.cluster_id, timeout).and_then(|client| match mode {
            Mode::Exec => client.execute(args.shard, &args.sql, params),
            Mode::Query => client.query(args.shard, &args.sql, params),
        });
    match result {
        Ok(outcome) => {
            print!("{}", render(&outcome, mode, args.json));
            ExitCode::SUCCESS
        }
        Err(error @ SqlClientError::Statement(_)) => {
            eprintln!("quorum-sqlite {name}: {error}");
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("quorum-sqlite {name}: {}: {error}", args.cluster);
            ExitCode::FAILURE
        }
    }
}

/// The text printed for an outcome. JSON objects list a row's columns in the statement's
/// order (built here: `serde_json`'s maps sort their keys).
pub fn render(outcome: &Outcome, mode: Mode, json: bool) -> String {
    match (mode, json) {
        (Mode::Exec, true) => {
            let rowid = outcome.last_insert_rowid.map_or("null".to_string(), |id| id.to_string());
            let mut object =
                format!("{{\"changes\":{},\"last_insert_rowid\":{rowid}", outcome.changes);
            if !outcome.columns.is_empty() {
                object.push_str(&format!(",\"rows\":[{}]", rows_json(outcome).join(",")));
            }
            object.push_str("}\n");
            object
        }
        (Mode::Exec, false) => {
            let mut text = format!(
                "{} row{} changed",
                outcome.changes,
                if outcome.changes == 1 { "" } else { "s" }
            );
            if let Some(rowid) = outcome.last_insert_rowid {
                text.push_str(&format!(", last insert rowid {rowid}"));
            }
            text.push('\n');
            if !outcome.columns.is_empty() {
                text.push_str(&table(outcome));
            }
            text
        }
        (Mode::Query, true) => rows_json(outcome).iter().map(|row| format!("{row}\n")).collect(),
        (Mode::Query, false) => table(outcome),
    }
}

/// A value as JSON: a blob as `{"blob": "HEX"}`, a real that JSON cannot hold (NaN, an
/// infinity) as null.
fn value_json(value: &Value) -> serde_json::Value {
    match value {
        Value::Null => serde_json::Value::Null,
        Value::Integer(integer) => (*integer).into(),
        Value::Real(real) => {
            serde_json::Number::from_f64(*real).map_or(serde_json::Value::Null, Into::into)
        }
        Value::Text(text) => text.clone().into(),
        Value::Blob(bytes) => {
            let hex: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
            serde_json::json!({ "blob": hex })
        }
    }
}

/// Each row as one JSON object, its columns in order.
fn rows_json(outcome: &Outcome) -> Vec<String> {
    outcome
        .rows
        .iter()
        .map(|row| {
            let fields: Vec<String> = outcome
                .columns
                .iter()
                .zip(row)
                .map(|(column, value)| {
                    format!("{}:{}", serde_json::Value::from(column.as_str()), value_json(value))
                })
                .collect();
            format!("{{{}}}", fields.join(","))
        })
        .collect()
}

/// Columns aligned, a rule under the header, then `(N rows)`.
fn table(outcome: &Outcome) -> String {
    let cells: Vec<Vec<String>> =
        outcome.rows.iter().map(|row| row.iter().map(ToString::to_string).collect()).collect();
    let widths: Vec<usize> = outcome
        .columns
        .iter()
        .enumerate()
        .map(|(k, column)| {
            let widest = cells.iter().map(|row| row[k].chars().count()).max().unwrap_or(0);
            widest.max(column.chars().count())
        })
        .collect();
    let line = |values: &[String]| {
        let padded: Vec<String> =
            values.iter().zip(&widths).map(|(value, width)| format!("{value:<width$}")).collect();
        format!("{}\n", padded.join(" | ").trim_end())
    };
    let mut text = line(&outcome.columns);
    let rule: Vec<String> = widths.iter().map(|width| "-".repeat(*width)).collect();
    text.push_str(&format!("{}\n", rule.join("-+-")));
    for row in &cells {
        text.push_str(&line(row));
    }
    let count = outcome.rows.len();
    text.push_str(&format!("({count} row{})\n", if count == 1 { "" } else { "s" }));
    text
}
