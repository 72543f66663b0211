//! What a statement's application answers, and its bytes.
//!
//! ```text
//! ok:    0 u8 | changes u64 | has_rowid u8 | rowid i64 | column_count u32 | (len u32 | name)*
//!        | row_count u32 | row*      row = value list as in command.rs
//! error: 1 u8 | kind u8 | len u32 | message
//! ```

use crate::command::{DecodeError, Reader, Value, put_bytes, put_values};

/// What a statement did: for a write, the rows it changed and the rowid it inserted; for a
/// read (or `RETURNING`), the rows.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Outcome {
    /// Rows inserted, updated or deleted by the statement, its triggers included.
    pub changes: u64,
    /// The rowid of the last row the statement inserted; `None` if it inserted none.
    pub last_insert_rowid: Option<i64>,
    /// The result's column names (empty for a statement that returns no rows).
    pub columns: Vec<String>,
    /// The result's rows, each as many values as there are columns.
    pub rows: Vec<Vec<Value>>,
}

/// Why a statement was not applied. The same on every replica: the message is SQLite's own,
/// or one of this crate's, never anything that depends on the machine.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct StatementError {
    /// What kind of failure.
    pub kind: ErrorKind,
    /// What SQLite (or the determinism check) said.
    pub message: String,
}

/// The kinds of [`StatementError`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// SQLite refused or failed the statement: syntax, a constraint, a missing table…
    Sql,
    /// The statement would read a clock, randomness or connection state, so replicas could
    /// disagree; refused.
    NonDeterministic,
    /// A read-only query that would write; refused.
    NotReadOnly,
    /// The command's bytes do not decode, or it is not exactly one statement.
    Malformed,
    /// The result is larger than a reply may be.
    TooLarge,
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ErrorKind::Sql => "SQL error",
            ErrorKind::NonDeterministic => "non-deterministic SQL refused",
            ErrorKind::NotReadOnly => "not a read-only statement",
            ErrorKind::Malformed => "malformed statement",
            ErrorKind::TooLarge => "result too large",
        })
    }
}

impl ErrorKind {
    fn code(self) -> u8 {
        match self {
            ErrorKind::Sql => 1,
            ErrorKind::NonDeterministic => 2,
            ErrorKind::NotReadOnly => 3,
            ErrorKind::Malformed => 4,
            ErrorKind::TooLarge => 5,
        }
    }

    fn from_code(code: u8) -> Result<ErrorKind, DecodeError> {
        Ok(match code {
            1 => ErrorKind::Sql,
            2 => ErrorKind::NonDeterministic,
            3 => ErrorKind::NotReadOnly,
            4 => ErrorKind::Malformed,
            5 => ErrorKind::TooLarge,
            other => return Err(DecodeError::Tag(other)),
        })
    }
}

impl StatementError {
    /// An error of `kind` saying `message`.
    #[must_use]
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> StatementError {
        StatementError { kind, message: message.into() }
    }
}

/// The reply to one statement.
pub type Reply = Result<Outcome, StatementError>;

/// Appends a reply's bytes to `out`.
pub fn encode_reply(reply: &Reply, out: &mut Vec<u8>) {
    match reply {
        Ok(outcome) => {
            out.push(0);
            out.extend_from_slice(&outcome.changes.to_le_bytes());
            out.push(u8::from(outcome.last_insert_rowid.is_some()));
            out.extend_from_slice(&outcome.last_insert_rowid.unwrap_or(0).to_le_bytes());
            out.extend_from_slice(&(outcome.columns.len() as u32).to_le_bytes());
            for column in &outcome.columns {
                put_bytes(out, column.as_bytes());
            }
            out.extend_from_slice(&(outcome.rows.len() as u32).to_le_bytes());
            for row in &outcome.rows {
                put_values(out, row);
            }
        }
        Err(error) => {
            out.push(1);
            out.push(error.kind.code());
            put_bytes(out, error.message.as_bytes());
        }
    }
}

/// The reply [`encode_reply`] wrote.
///
/// # Errors
/// The bytes are not a reply.
pub fn decode_reply(bytes: &[u8]) -> Result<Reply, DecodeError> {
    let mut reader = Reader { rest: bytes };
    let reply = match reader.u8()? {
        0 => {
            let changes = reader.u64()?;
            let has_rowid = reader.u8()?;
            let rowid = reader.u64()? as i64;
            let last_insert_rowid = match has_rowid {
                0 => None,
                1 => Some(rowid),
                other => return Err(DecodeError::Tag(other)),
            };
            let count = reader.u32()? as usize;
            if count > reader.rest.len() {
                return Err(DecodeError::Truncated);
            }
            let mut columns = Vec::with_capacity(count);
            for _ in 0..count {
                columns.push(reader.text()?);
            }
            let count = reader.u32()? as usize;
            if count > reader.rest.len() {
                return Err(DecodeError::Truncated);
            }
            let mut rows = Vec::with_capacity(count);
            for _ in 0..count {
                rows.push(reader.values()?);
            }
            Ok(Outcome { changes, last_insert_rowid, columns, rows })
        }
        1 => {
            let kind = ErrorKind::from_code(reader.u8()?)?;
            Err(StatementError { kind, message: reader.text()? })
        }
        tag => return Err(DecodeError::Tag(tag)),
    };
    reader.finish()?;
    Ok(reply)
}
