//! Reading Redis requests (RESP2/RESP3 requests are the same): arrays of bulk strings
//! (`*2\r\n$3\r\nGET\r\n$1\r\nk\r\n`), as every client library sends them, and inline
//! commands (`GET k\r\n`), as a person types them into telnet.
//!
//! A request is input: every length is checked against [`Limits`] before anything is
//! allocated for it, a bulk string is taken whole from the read buffer without a copy, and the
//! parser keeps its place between reads, so a request arriving a byte at a time costs no more
//! than one arriving at once. Anything it cannot read is a [`ParseError`], after which the
//! connection is answered with the reason and closed, as Redis does.
//!
//! Why not a RESP crate: the crates (`redis-protocol` is the best kept) decode whole frames of
//! any type, nested, for clients; a server needs only this request subset, with limits checked
//! as the lengths arrive and its place kept across reads, which they do not offer.

use bytes::{Buf, Bytes, BytesMut};

/// The most a request may announce or hold.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Arguments in one request, the command's name included.
    pub arguments_max: usize,
    /// Bytes of one argument.
    pub bulk_bytes_max: usize,
    /// Bytes of all of one request's arguments.
    pub request_bytes_max: usize,
    /// Bytes of an inline command's line.
    pub inline_bytes_max: usize,
}

/// Digits and sign of a length line, at most (`*` or `$`, up to 20 characters, `\r\n`).
const LENGTH_LINE_BYTES_MAX: usize = 24;

/// A request that cannot be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// An array's count that is not a number, or too large.
    #[error("invalid multibulk length")]
    BadCount,
    /// An argument that does not start with `$`.
    #[error("expected '$', got '{0}'")]
    ExpectedBulk(char),
    /// A bulk string's length that is not a number, negative, or over the limit.
    #[error("invalid bulk length")]
    BadBulkLength,
    /// A bulk string not followed by `\r\n`.
    #[error("bulk string not terminated by CRLF")]
    Unterminated,
    /// A request's arguments over the limit together.
    #[error("request larger than {0} bytes")]
    RequestTooLarge(usize),
    /// An inline line over the limit.
    #[error("too big inline request")]
    InlineTooLong,
    /// An inline line with an unbalanced quote.
    #[error("unbalanced quotes in request")]
    UnbalancedQuotes,
}

/// A request in the middle of arriving.
#[derive(Debug)]
struct Partial {
    /// Arguments still to come.
    remaining: usize,
    /// Those read so far.
    arguments: Vec<Bytes>,
    /// The length of the bulk string being read, once its header was.
    bulk: Option<usize>,
    /// Bytes of the arguments so far.
    bytes: usize,
}

/// Reads requests out of a connection's buffer, keeping its place between reads.
#[derive(Debug)]
pub struct RequestParser {
    limits: Limits,
    partial: Option<Partial>,
}

/// The number on a `*N\r\n` or `$N\r\n` line at the front of `buffer`, and the line's length;
/// `Ok(None)` while the line is incomplete.
fn length_line(buffer: &[u8], error: ParseError) -> Result<Option<(i64, usize)>, ParseError> {
    let window = &buffer[..buffer.len().min(LENGTH_LINE_BYTES_MAX)];
    let Some(end) = window.windows(2).position(|pair| pair == b"\r\n") else {
        return if buffer.len() >= LENGTH_LINE_BYTES_MAX { Err(error) } else { Ok(None) };
    };
    let digits = std::str::from_utf8(&buffer[1..end]).map_err(|_| error.clone())?;
    let number: i64 = digits.parse().map_err(|_| error)?;
    Ok(Some((number, end + 2)))
}

/// Splits an inline line into arguments: runs of non-blank bytes, or quoted strings with
/// Redis's escapes (`"a b"`, `'it''s'` is not: single quotes take `\'` only).
fn split_inline(line: &[u8]) -> Result<Vec<Bytes>, ParseError> {
    let mut arguments = Vec::new();
    let mut at = 0;
    while at < line.len() {
        while at < line.len() && line[at].is_ascii_whitespace() {
            at += 1;
        }
        if at == line.len() {
            break;
        }
        let mut argument = Vec::new();
        match line[at] {
            quote @ (b'"' | b'\'') => {
                at += 1;
                loop {
                    let Some(&byte) = line.get(at) else {
                        return Err(ParseError::UnbalancedQuotes);
                    };
                    at += 1;
                    match byte {
                        b'\\' if quote == b'"' => {
                            let Some(&next) = line.get(at) else {
                                return Err(ParseError::UnbalancedQuotes);
                            };
                            at += 1;
                            argument.push(match next {
                                b'n' => b'\n',
                                b'r' => b'\r',
                                b't' => b'\t',
                                b'b' => 8,
                                b'a' => 7,
                                other => other,
                            });
                        }
                        b'\\' if line.get(at) == Some(&b'\'') => {
                            at += 1;
                            argument.push(b'\'');
                        }
                        byte if byte == quote => break,
                        byte => argument.push(byte),
                    }
                }
                // A closing quote must end the argument.
                if line.get(at).is_some_and(|byte| !byte.is_ascii_whitespace()) {
                    return Err(ParseError::UnbalancedQuotes);
                }
            }
            _ => {
                while at < line.len() && !line[at].is_ascii_whitespace() {
                    argument.push(line[at]);
                    at += 1;
                }
            }
        }
        arguments.push(Bytes::from(argument));
    }
    Ok(arguments)
}

impl RequestParser {
    /// A parser with these limits.
    #[must_use]
    pub fn new(limits: Limits) -> RequestParser {
        RequestParser { limits, partial: None }
    }

    /// True if part of a request has been read.
    #[must_use]
    pub fn in_request(&self) -> bool {
        self.partial.is_some()
    }

    /// The next whole request at the front of `buffer`, taken out of it: `Ok(Some(args))`
    /// (empty for an empty request, which gets no reply), or `Ok(None)` until more arrives.
    ///
    /// # Errors
    /// A request that cannot be read; the connection cannot go on after it.
    pub fn next(&mut self, buffer: &mut BytesMut) -> Result<Option<Vec<Bytes>>, ParseError> {
        if self.partial.is_none() {
            let Some(&first) = buffer.first() else { return Ok(None) };
            if first != b'*' {
                return self.inline(buffer);
            }
            let Some((count, line)) = length_line(buffer, ParseError::BadCount)? else {
                return Ok(None);
            };
            buffer.advance(line);
            if count <= 0 {
                // `*0` and `*-1` are no request at all (Redis skips them too).
                return Ok(Some(Vec::new()));
            }
            let count = usize::try_from(count).map_err(|_| ParseError::BadCount)?;
            if count > self.limits.arguments_max {
                return Err(ParseError::BadCount);
            }
            self.partial = Some(Partial {
                remaining: count,
                arguments: Vec::with_capacity(count.min(64)),
                bulk: None,
                bytes: 0,
            });
        }
        let limits = self.limits;
        let Some(partial) = self.partial.as_mut() else { return Ok(None) };
        while partial.remaining > 0 {
            let length = match partial.bulk {
                Some(length) => length,
                None => {
                    let Some(&first) = buffer.first() else { return Ok(None) };
                    if first != b'$' {
                        return Err(ParseError::ExpectedBulk(char::from(first)));
                    }
                    let Some((length, line)) = length_line(buffer, ParseError::BadBulkLength)?
                    else {
                        return Ok(None);
                    };
                    let length = usize::try_from(length).map_err(|_| ParseError::BadBulkLength)?;
                    if length > limits.bulk_bytes_max {
                        return Err(ParseError::BadBulkLength);
                    }
                    let total = partial.bytes.saturating_add(length);
                    if total > limits.request_bytes_max {
                        return Err(ParseError::RequestTooLarge(limits.request_bytes_max));
                    }
                    buffer.advance(line);
                    partial.bytes = total;
                    partial.bulk = Some(length);
                    length
                }
            };
            if buffer.len() < length + 2 {
                // Room for the rest of the string, so the reads that bring it need not regrow
                // the buffer; within the limits just checked.
                buffer.reserve(length + 2 - buffer.len());
                return Ok(None);
            }
            if &buffer[length..length + 2] != b"\r\n" {
                return Err(ParseError::Unterminated);
            }
            let argument = buffer.split_to(length).freeze();
            buffer.advance(2);
            partial.arguments.push(argument);
            partial.bulk = None;
            partial.remaining -= 1;
        }
        Ok(self.partial.take().map(|partial| partial.arguments))
    }

    fn inline(&mut self, buffer: &mut BytesMut) -> Result<Option<Vec<Bytes>>, ParseError> {
        let window = &buffer[..buffer.len().min(self.limits.inline_bytes_max.saturating_add(1))];
        let Some(end) = window.iter().position(|&byte| byte == b'\n') else {
            return if buffer.len() > self.limits.inline_bytes_max {
                Err(ParseError::InlineTooLong)
            } else {
                Ok(None)
            };
        };
        let line = buffer.split_to(end + 1);
        let line = line.strip_suffix(b"\n").unwrap_or(&line);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let arguments = split_inline(line)?;
        if arguments.len() > self.limits.arguments_max {
            return Err(ParseError::BadCount);
        }
        Ok(Some(arguments))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits { arguments_max: 8, bulk_bytes_max: 16, request_bytes_max: 40, inline_bytes_max: 32 }
    }

    fn all(input: &[u8]) -> Result<Vec<Vec<Bytes>>, ParseError> {
        let mut parser = RequestParser::new(limits());
        let mut buffer = BytesMut::from(input);
        let mut requests = Vec::new();
        while let Some(request) = parser.next(&mut buffer)? {
            requests.push(request);
        }
        Ok(requests)
    }

    #[test]
    fn arrays_of_bulk_strings_and_inline_commands_are_read() {
        let requests = all(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\nSET k \"a b\"\r\n*0\r\nPING\n").unwrap();
        let text: Vec<Vec<&[u8]>> =
            requests.iter().map(|r| r.iter().map(|a| &a[..]).collect()).collect();
        assert_eq!(
            text,
            vec![vec![&b"GET"[..], b"k"], vec![b"SET", b"k", b"a b"], vec![], vec![b"PING"]]
        );
    }

    #[test]
    fn a_request_split_at_every_byte_reads_the_same() {
        let input = b"*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$5\r\nva\r\nl\r\n";
        let mut parser = RequestParser::new(limits());
        let mut buffer = BytesMut::new();
        let mut got = None;
        for &byte in input {
            buffer.extend_from_slice(&[byte]);
            if let Some(request) = parser.next(&mut buffer).unwrap() {
                got = Some(request);
            }
        }
        let got = got.unwrap();
        assert_eq!(&got[2][..], b"va\r\nl");
        assert!(buffer.is_empty());
    }

    #[test]
    fn lengths_past_the_limits_are_refused_before_their_bytes_arrive() {
        assert_eq!(all(b"*9\r\n"), Err(ParseError::BadCount));
        assert_eq!(all(b"*1\r\n$17\r\n"), Err(ParseError::BadBulkLength));
        assert_eq!(all(b"*1\r\n$-1\r\n"), Err(ParseError::BadBulkLength));
        assert_eq!(
            all(b"*3\r\n$16\r\n0123456789abcdef\r\n$16\r\n0123456789abcdef\r\n$16\r\n"),
            Err(ParseError::RequestTooLarge(40))
        );
        assert_eq!(all(b"*1\r\n$99999999999999999999999\r\n"), Err(ParseError::BadBulkLength));
        assert_eq!(all(&[b'x'; 40]), Err(ParseError::InlineTooLong));
    }

    #[test]
    fn malformed_requests_are_errors() {
        assert_eq!(all(b"*1\r\n:1\r\n"), Err(ParseError::ExpectedBulk(':')));
        assert_eq!(all(b"*1\r\n$1\r\nab\r\n"), Err(ParseError::Unterminated));
        assert_eq!(all(b"*x\r\n"), Err(ParseError::BadCount));
        assert_eq!(all(b"SET \"a\r\n"), Err(ParseError::UnbalancedQuotes));
    }

    #[test]
    fn random_bytes_never_panic_and_never_hold_more_than_the_limits() {
        // A cheap fuzz: random bytes, and random mutations of a valid pipeline.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut random = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let valid = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\nvv\r\n*1\r\n$4\r\nPING\r\nGET k\r\n";
        for round in 0..20_000 {
            let mut input: Vec<u8> = if round % 2 == 0 {
                (0..random() % 64).map(|_| random() as u8).collect()
            } else {
                valid.to_vec()
            };
            for _ in 0..random() % 4 {
                if input.is_empty() {
                    break;
                }
                let at = (random() as usize) % input.len();
                input[at] = random() as u8;
            }
            let mut parser = RequestParser::new(limits());
            let mut buffer = BytesMut::new();
            for chunk in input.chunks(1 + (random() as usize) % 7) {
                buffer.extend_from_slice(chunk);
                while let Ok(Some(request)) = parser.next(&mut buffer) {
                    assert!(request.len() <= limits().arguments_max);
                    let longest = request.iter().map(Bytes::len).max().unwrap_or(0);
                    assert!(longest <= limits().inline_bytes_max.max(16));
                }
            }
        }
    }
}
