//! Replies in RESP2, or in RESP3 once a connection asked for it with `HELLO 3`: the same
//! values, with RESP3's own null and map where they differ.

use bytes::Bytes;

use crate::front::RequestError;

/// The protocol a connection speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// RESP2, every connection's start.
    Resp2,
    /// RESP3, after `HELLO 3`.
    Resp3,
}

/// One reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`.
    Simple(&'static str),
    /// `-ERR …`: the first word is the code.
    Error(String),
    /// `:N`.
    Integer(i64),
    /// `$N` and the bytes.
    Bulk(Bytes),
    /// The null reply (`$-1` in RESP2, `_` in RESP3).
    Null,
    /// `*N` and the elements.
    Array(Vec<Reply>),
    /// `%N` and the pairs in RESP3; a flat array of them in RESP2.
    Map(Vec<(Reply, Reply)>),
    /// The null array (`*-1` in RESP2, `_` in RESP3): `EXEC` after a watched key changed.
    NullArray,
    /// `>N` and the elements in RESP3 (what a subscription pushes); an array in RESP2.
    Push(Vec<Reply>),
}

impl Reply {
    /// `+OK`.
    pub const OK: Reply = Reply::Simple("OK");

    /// An error reply, its text made one line.
    pub fn error(text: impl Into<String>) -> Reply {
        let text: String = text.into();
        Reply::Error(text.replace(['\r', '\n'], " "))
    }

    /// A bulk string of text.
    pub fn text(text: impl Into<String>) -> Reply {
        Reply::Bulk(Bytes::from(text.into()))
    }

    /// A bulk string, or null for `None`.
    pub fn optional(bytes: Option<Vec<u8>>) -> Reply {
        bytes.map_or(Reply::Null, |bytes| Reply::Bulk(Bytes::from(bytes)))
    }

    /// Appends the reply's bytes in `protocol` to `out`.
    pub fn encode(&self, protocol: Protocol, out: &mut Vec<u8>) {
        fn header(out: &mut Vec<u8>, kind: u8, length: usize) {
            out.push(kind);
            out.extend_from_slice(length.to_string().as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        match self {
            Reply::Simple(text) => {
                out.push(b'+');
                out.extend_from_slice(text.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            Reply::Error(text) => {
                out.push(b'-');
                out.extend_from_slice(text.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            Reply::Integer(number) => {
                out.push(b':');
                out.extend_from_slice(number.to_string().as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            Reply::Bulk(bytes) => {
                header(out, b'$', bytes.len());
                out.extend_from_slice(bytes);
                out.extend_from_slice(b"\r\n");
            }
            Reply::Null => match protocol {
                Protocol::Resp2 => out.extend_from_slice(b"$-1\r\n"),
                Protocol::Resp3 => out.extend_from_slice(b"_\r\n"),
            },
            Reply::NullArray => match protocol {
                Protocol::Resp2 => out.extend_from_slice(b"*-1\r\n"),
                Protocol::Resp3 => out.extend_from_slice(b"_\r\n"),
            },
            Reply::Push(elements) if protocol == Protocol::Resp3 => {
                header(out, b'>', elements.len());
                for element in elements {
                    element.encode(protocol, out);
                }
            }
            Reply::Array(elements) | Reply::Push(elements) => {
                header(out, b'*', elements.len());
                for element in elements {
                    element.encode(protocol, out);
                }
            }
            Reply::Map(pairs) => {
                match protocol {
                    Protocol::Resp2 => header(out, b'*', pairs.len() * 2),
                    Protocol::Resp3 => header(out, b'%', pairs.len()),
                }
                for (key, value) in pairs {
                    key.encode(protocol, out);
                    value.encode(protocol, out);
                }
            }
        }
    }
}

/// The reply for a request that failed.
pub fn failure(error: &RequestError) -> Reply {
    let code = match error {
        RequestError::Timeout(_) | RequestError::Unavailable(_) | RequestError::TooStale(_) => {
            "TRYAGAIN"
        }
        RequestError::OutOfSpace(_) => "MISCONF",
        RequestError::TooLarge { .. }
        | RequestError::Rejected(_)
        | RequestError::BadReply(_)
        | RequestError::Coordination(_)
        | RequestError::CrossShard(_) => "ERR",
    };
    Reply::error(format!("{code} {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(reply: &Reply, protocol: Protocol) -> Vec<u8> {
        let mut out = Vec::new();
        reply.encode(protocol, &mut out);
        out
    }

    #[test]
    fn replies_encode_as_resp2_and_resp3() {
        let reply =
            Reply::Array(vec![Reply::OK, Reply::Integer(-3), Reply::text("ab"), Reply::Null]);
        assert_eq!(encoded(&reply, Protocol::Resp2), b"*4\r\n+OK\r\n:-3\r\n$2\r\nab\r\n$-1\r\n");
        assert_eq!(encoded(&reply, Protocol::Resp3), b"*4\r\n+OK\r\n:-3\r\n$2\r\nab\r\n_\r\n");
        let map = Reply::Map(vec![(Reply::text("proto"), Reply::Integer(3))]);
        assert_eq!(encoded(&map, Protocol::Resp2), b"*2\r\n$5\r\nproto\r\n:3\r\n");
        assert_eq!(encoded(&map, Protocol::Resp3), b"%1\r\n$5\r\nproto\r\n:3\r\n");
        assert_eq!(encoded(&Reply::error("ERR a\r\nb"), Protocol::Resp2), b"-ERR a  b\r\n");
        assert_eq!(encoded(&Reply::NullArray, Protocol::Resp2), b"*-1\r\n");
        assert_eq!(encoded(&Reply::NullArray, Protocol::Resp3), b"_\r\n");
        let push = Reply::Push(vec![Reply::text("message")]);
        assert_eq!(encoded(&push, Protocol::Resp2), b"*1\r\n$7\r\nmessage\r\n");
        assert_eq!(encoded(&push, Protocol::Resp3), b">1\r\n$7\r\nmessage\r\n");
    }
}
