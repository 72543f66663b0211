//! A command or query as it travels through the log: one SQL statement and its parameters.
//!
//! The encoding is small and hand-written so that every replica decodes exactly the same
//! bytes into exactly the same statement (no serializer version to agree on):
//!
//! ```text
//! version u8 = 1 | sql_len u32 | sql (UTF-8) | param_count u32 | param*
//! param = tag u8 (0 null, 1 integer, 2 real, 3 text, 4 blob) | payload
//!   integer: i64 LE   real: f64 bits LE   text, blob: len u32 LE | bytes
//! ```
//!
//! Decoding never panics: bytes that are not a command give a [`DecodeError`].

use std::fmt;

/// The encoding's version byte: a later format can be told apart.
const VERSION: u8 = 1;

const TAG_NULL: u8 = 0;
const TAG_INTEGER: u8 = 1;
const TAG_REAL: u8 = 2;
const TAG_TEXT: u8 = 3;
const TAG_BLOB: u8 = 4;

/// A typed SQL value: a statement parameter or a column of a result row.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// SQL NULL.
    Null,
    /// A 64-bit signed integer.
    Integer(i64),
    /// A 64-bit float.
    Real(f64),
    /// UTF-8 text.
    Text(String),
    /// Bytes.
    Blob(Vec<u8>),
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => f.write_str("NULL"),
            Value::Integer(value) => write!(f, "{value}"),
            Value::Real(value) => write!(f, "{value}"),
            Value::Text(text) => f.write_str(text),
            Value::Blob(bytes) => {
                f.write_str("x'")?;
                for byte in bytes {
                    write!(f, "{byte:02x}")?;
                }
                f.write_str("'")
            }
        }
    }
}

/// One SQL statement with its parameters (`?1`, `?2`… in order).
#[derive(Clone, Debug, PartialEq)]
pub struct Statement {
    /// The SQL text: exactly one statement.
    pub sql: String,
    /// The values bound to its parameters.
    pub params: Vec<Value>,
}

/// Why bytes are not an encoded [`Statement`] or value list.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The bytes end before the encoding does.
    #[error("truncated: the encoding ends early")]
    Truncated,
    /// An encoding version this build does not know.
    #[error("unknown encoding version {0}")]
    Version(u8),
    /// A value's tag is none of the five types.
    #[error("unknown value tag {0}")]
    Tag(u8),
    /// Text that is not UTF-8.
    #[error("text is not UTF-8")]
    Utf8,
    /// Bytes left over after the encoding.
    #[error("{0} bytes after the end of the encoding")]
    Trailing(usize),
}

impl Statement {
    /// A statement with parameters.
    #[must_use]
    pub fn new(sql: impl Into<String>, params: Vec<Value>) -> Statement {
        Statement { sql: sql.into(), params }
    }

    /// The statement's bytes, as proposed to the log.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(9 + self.sql.len() + 16 * self.params.len());
        out.push(VERSION);
        put_bytes(&mut out, self.sql.as_bytes());
        put_values(&mut out, &self.params);
        out
    }

    /// The statement [`Statement::encode`] wrote.
    ///
    /// # Errors
    /// The bytes are not such an encoding.
    pub fn decode(bytes: &[u8]) -> Result<Statement, DecodeError> {
        let mut reader = Reader { rest: bytes };
        let version = reader.u8()?;
        if version != VERSION {
            return Err(DecodeError::Version(version));
        }
        let sql = reader.text()?;
        let params = reader.values()?;
        reader.finish()?;
        Ok(Statement { sql, params })
    }
}

/// Appends `bytes` with a u32 length prefix. Longer than `u32::MAX` cannot happen: a command
/// is bounded by the batch size long before.
pub(crate) fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    let length = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&length.to_le_bytes());
    out.extend_from_slice(&bytes[..length as usize]);
}

/// Appends a count-prefixed list of values.
pub(crate) fn put_values(out: &mut Vec<u8>, values: &[Value]) {
    out.extend_from_slice(&(values.len() as u32).to_le_bytes());
    for value in values {
        put_value(out, value);
    }
}

fn put_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Null => out.push(TAG_NULL),
        Value::Integer(integer) => {
            out.push(TAG_INTEGER);
            out.extend_from_slice(&integer.to_le_bytes());
        }
        Value::Real(real) => {
            out.push(TAG_REAL);
            out.extend_from_slice(&real.to_bits().to_le_bytes());
        }
        Value::Text(text) => {
            out.push(TAG_TEXT);
            put_bytes(out, text.as_bytes());
        }
        Value::Blob(blob) => {
            out.push(TAG_BLOB);
            put_bytes(out, blob);
        }
    }
}

/// Reads the encodings of this module from a byte slice, never past its end.
pub(crate) struct Reader<'a> {
    pub(crate) rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        let (&byte, rest) = self.rest.split_first().ok_or(DecodeError::Truncated)?;
        self.rest = rest;
        Ok(byte)
    }

    pub(crate) fn u64(&mut self) -> Result<u64, DecodeError> {
        let (bytes, rest) = self.rest.split_first_chunk::<8>().ok_or(DecodeError::Truncated)?;
        self.rest = rest;
        Ok(u64::from_le_bytes(*bytes))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        let (bytes, rest) = self.rest.split_first_chunk::<4>().ok_or(DecodeError::Truncated)?;
        self.rest = rest;
        Ok(u32::from_le_bytes(*bytes))
    }

    pub(crate) fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let length = self.u32()? as usize;
        if self.rest.len() < length {
            return Err(DecodeError::Truncated);
        }
        let (bytes, rest) = self.rest.split_at(length);
        self.rest = rest;
        Ok(bytes)
    }

    pub(crate) fn text(&mut self) -> Result<String, DecodeError> {
        let bytes = self.bytes()?;
        String::from_utf8(bytes.to_vec()).map_err(|_| DecodeError::Utf8)
    }

    /// A count-prefixed list; the count is checked against the bytes left (each value is at
    /// least one byte), so a forged count cannot make it allocate more than the input.
    pub(crate) fn values(&mut self) -> Result<Vec<Value>, DecodeError> {
        let count = self.u32()? as usize;
        if count > self.rest.len() {
            return Err(DecodeError::Truncated);
        }
        let mut values = Vec::with_capacity(count);
        for _ in 0..count {
            values.push(self.value()?);
        }
        Ok(values)
    }

    fn value(&mut self) -> Result<Value, DecodeError> {
        Ok(match self.u8()? {
            TAG_NULL => Value::Null,
            TAG_INTEGER => Value::Integer(self.u64()? as i64),
            TAG_REAL => Value::Real(f64::from_bits(self.u64()?)),
            TAG_TEXT => Value::Text(self.text()?),
            TAG_BLOB => Value::Blob(self.bytes()?.to_vec()),
            tag => return Err(DecodeError::Tag(tag)),
        })
    }

    pub(crate) fn finish(&self) -> Result<(), DecodeError> {
        match self.rest.len() {
            0 => Ok(()),
            left => Err(DecodeError::Trailing(left)),
        }
    }
}
