//! The key-value commands and replies on the wire: a tag byte, then length-prefixed fields (the
//! hot path, encoded by hand), or the coordination commands' tag and their postcard body.

use super::coord::{COORD_TAG, CoordReply};
use crate::storage::snapshot::put_field;

/// A key-value command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvCommand {
    /// Read a key.
    Get {
        /// The key.
        key: Vec<u8>,
    },
    /// Set a key.
    Put {
        /// The key.
        key: Vec<u8>,
        /// The new value.
        value: Vec<u8>,
    },
    /// Remove a key.
    Delete {
        /// The key.
        key: Vec<u8>,
    },
    /// Set a key to `new` only if it holds `expected` (`None`: only if absent).
    CompareAndSet {
        /// The key.
        key: Vec<u8>,
        /// The value the key must hold.
        expected: Option<Vec<u8>>,
        /// The value to set.
        new: Vec<u8>,
    },
    /// An opaque log entry: changes no key; its committed position is the reply's slot and
    /// index (append-only log use).
    Append {
        /// The entry.
        entry: Vec<u8>,
    },
}

/// The reply to a [`KvCommand`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvReply {
    /// A put or delete took effect.
    Done,
    /// The value read (`None`: absent).
    Value(Option<Vec<u8>>),
    /// A compare-and-set: whether it took effect, and the value the key held before.
    CompareAndSet {
        /// True if the value matched and was replaced.
        succeeded: bool,
        /// The value the key held when the command applied.
        previous: Option<Vec<u8>>,
    },
    /// The command did not decode; nothing changed.
    Invalid,
    /// The reply to a coordination command ([`super::CoordCommand`]).
    Coord(CoordReply),
}

const GET: u8 = 1;
const PUT: u8 = 2;
const DELETE: u8 = 3;
const CAS: u8 = 4;
const APPEND: u8 = 5;

const REPLY_DONE: u8 = 1;
const REPLY_ABSENT: u8 = 2;
const REPLY_VALUE: u8 = 3;
const REPLY_CAS: u8 = 4;
const REPLY_INVALID: u8 = 5;

fn take_field<'a>(rest: &mut &'a [u8]) -> Option<&'a [u8]> {
    let (length, tail) = rest.split_first_chunk::<4>()?;
    let length = u32::from_le_bytes(*length) as usize;
    if tail.len() < length {
        return None;
    }
    let (value, tail) = tail.split_at(length);
    *rest = tail;
    Some(value)
}

impl KvReply {
    /// Encodes the reply: a tag byte, then length-prefixed fields.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            KvReply::Done => out.push(REPLY_DONE),
            KvReply::Value(None) => out.push(REPLY_ABSENT),
            KvReply::Value(Some(value)) => {
                out.push(REPLY_VALUE);
                put_field(out, value);
            }
            KvReply::CompareAndSet { succeeded, previous } => {
                out.push(REPLY_CAS);
                out.push(u8::from(*succeeded));
                match previous {
                    Some(previous) => {
                        out.push(1);
                        put_field(out, previous);
                    }
                    None => out.push(0),
                }
            }
            KvReply::Invalid => out.push(REPLY_INVALID),
            KvReply::Coord(reply) => reply.encode(out),
        }
    }

    /// Decodes a reply; `None` if the bytes are not one.
    #[must_use]
    pub fn decode(bytes: &[u8]) -> Option<KvReply> {
        if bytes.first() == Some(&COORD_TAG) {
            return CoordReply::decode(bytes).map(KvReply::Coord);
        }
        let (&tag, mut rest) = bytes.split_first()?;
        let reply = match tag {
            REPLY_DONE => KvReply::Done,
            REPLY_ABSENT => KvReply::Value(None),
            REPLY_VALUE => KvReply::Value(Some(take_field(&mut rest)?.to_vec())),
            REPLY_CAS => {
                let (&succeeded, tail) = rest.split_first()?;
                let (&present, tail) = tail.split_first()?;
                rest = tail;
                let previous = match present {
                    0 => None,
                    1 => Some(take_field(&mut rest)?.to_vec()),
                    _ => return None,
                };
                let succeeded = match succeeded {
                    0 => false,
                    1 => true,
                    _ => return None,
                };
                KvReply::CompareAndSet { succeeded, previous }
            }
            REPLY_INVALID => KvReply::Invalid,
            _ => return None,
        };
        rest.is_empty().then_some(reply)
    }
}

impl KvCommand {
    /// Encodes the command: a tag byte, then length-prefixed (u32 little-endian) fields;
    /// `expected` carries a presence byte first.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        self.borrowed().encode()
    }

    /// The command, borrowing its fields.
    #[must_use]
    pub fn borrowed(&self) -> KvCommandRef<'_> {
        match self {
            KvCommand::Get { key } => KvCommandRef::Get { key },
            KvCommand::Put { key, value } => KvCommandRef::Put { key, value },
            KvCommand::Delete { key } => KvCommandRef::Delete { key },
            KvCommand::CompareAndSet { key, expected, new } => {
                KvCommandRef::CompareAndSet { key, expected: expected.as_deref(), new }
            }
            KvCommand::Append { entry } => KvCommandRef::Append { entry },
        }
    }

    /// Decodes a command; `None` if the bytes are not one.
    #[must_use]
    pub fn decode(bytes: &[u8]) -> Option<KvCommand> {
        let owned = |bytes: &[u8]| bytes.to_vec();
        Some(match KvCommandRef::decode(bytes)? {
            KvCommandRef::Get { key } => KvCommand::Get { key: owned(key) },
            KvCommandRef::Put { key, value } => {
                KvCommand::Put { key: owned(key), value: owned(value) }
            }
            KvCommandRef::Delete { key } => KvCommand::Delete { key: owned(key) },
            KvCommandRef::CompareAndSet { key, expected, new } => KvCommand::CompareAndSet {
                key: owned(key),
                expected: expected.map(owned),
                new: owned(new),
            },
            KvCommandRef::Append { entry } => KvCommand::Append { entry: owned(entry) },
        })
    }
}

/// A [`KvCommand`] read in place: its fields borrow the encoded bytes (the apply path
/// allocates only what the store keeps).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvCommandRef<'a> {
    /// Read a key.
    Get {
        /// The key.
        key: &'a [u8],
    },
    /// Set a key.
    Put {
        /// The key.
        key: &'a [u8],
        /// The new value.
        value: &'a [u8],
    },
    /// Remove a key.
    Delete {
        /// The key.
        key: &'a [u8],
    },
    /// Compare-and-set.
    CompareAndSet {
        /// The key.
        key: &'a [u8],
        /// The value the key must hold (`None`: absent).
        expected: Option<&'a [u8]>,
        /// The value to set.
        new: &'a [u8],
    },
    /// An opaque log entry.
    Append {
        /// The entry.
        entry: &'a [u8],
    },
}

impl<'a> KvCommandRef<'a> {
    /// Encodes the command (see [`KvCommand::encode`]) into a buffer of exactly its size.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let field = put_field;
        let fields = |fields: &[&[u8]]| fields.iter().map(|bytes| 4 + bytes.len()).sum::<usize>();
        let mut out = Vec::with_capacity(
            2 + match self {
                KvCommandRef::Get { key } | KvCommandRef::Delete { key } => fields(&[key]),
                KvCommandRef::Put { key, value } => fields(&[key, value]),
                KvCommandRef::CompareAndSet { key, expected, new } => {
                    fields(&[key, expected.unwrap_or_default(), new])
                }
                KvCommandRef::Append { entry } => fields(&[entry]),
            },
        );
        match *self {
            KvCommandRef::Get { key } => {
                out.push(GET);
                field(&mut out, key);
            }
            KvCommandRef::Put { key, value } => {
                out.push(PUT);
                field(&mut out, key);
                field(&mut out, value);
            }
            KvCommandRef::Delete { key } => {
                out.push(DELETE);
                field(&mut out, key);
            }
            KvCommandRef::CompareAndSet { key, expected, new } => {
                out.push(CAS);
                field(&mut out, key);
                match expected {
                    Some(expected) => {
                        out.push(1);
                        field(&mut out, expected);
                    }
                    None => out.push(0),
                }
                field(&mut out, new);
            }
            KvCommandRef::Append { entry } => {
                out.push(APPEND);
                field(&mut out, entry);
            }
        }
        out
    }

    /// Decodes a command in place; `None` if the bytes are not one.
    #[must_use]
    pub fn decode(bytes: &'a [u8]) -> Option<KvCommandRef<'a>> {
        let field = take_field;
        let (&tag, mut rest) = bytes.split_first()?;
        let command = match tag {
            GET => KvCommandRef::Get { key: field(&mut rest)? },
            PUT => KvCommandRef::Put { key: field(&mut rest)?, value: field(&mut rest)? },
            DELETE => KvCommandRef::Delete { key: field(&mut rest)? },
            CAS => {
                let key = field(&mut rest)?;
                let (&present, tail) = rest.split_first()?;
                rest = tail;
                let expected = match present {
                    0 => None,
                    1 => Some(field(&mut rest)?),
                    _ => return None,
                };
                KvCommandRef::CompareAndSet { key, expected, new: field(&mut rest)? }
            }
            APPEND => KvCommandRef::Append { entry: field(&mut rest)? },
            _ => return None,
        };
        rest.is_empty().then_some(command)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_commands_round_trip_and_garbage_is_invalid() {
        let commands = [
            KvCommand::Get { key: b"a".to_vec() },
            KvCommand::Put { key: b"a".to_vec(), value: vec![0; 9] },
            KvCommand::Delete { key: vec![] },
            KvCommand::CompareAndSet { key: b"a".to_vec(), expected: None, new: b"x".to_vec() },
            KvCommand::CompareAndSet {
                key: b"a".to_vec(),
                expected: Some(vec![]),
                new: b"x".to_vec(),
            },
            KvCommand::Append { entry: b"entry".to_vec() },
        ];
        for command in commands {
            assert_eq!(KvCommand::decode(&command.encode()), Some(command.clone()));
            let encoded = command.encode();
            for cut in 0..encoded.len() {
                assert_eq!(KvCommand::decode(&encoded[..cut]), None);
            }
        }
    }

    #[test]
    fn kv_replies_round_trip_and_cuts_are_refused() {
        let replies = [
            KvReply::Done,
            KvReply::Value(None),
            KvReply::Value(Some(b"v".to_vec())),
            KvReply::CompareAndSet { succeeded: true, previous: None },
            KvReply::CompareAndSet { succeeded: false, previous: Some(b"old".to_vec()) },
            KvReply::Invalid,
        ];
        for reply in replies {
            let mut encoded = Vec::new();
            reply.encode(&mut encoded);
            assert_eq!(KvReply::decode(&encoded), Some(reply.clone()));
            for cut in 0..encoded.len() {
                assert_eq!(KvReply::decode(&encoded[..cut]), None);
            }
        }
    }
}
