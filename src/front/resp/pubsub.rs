//! Keyspace subscriptions (docs/redis.md, "Subscriptions"): `SUBSCRIBE __keyspace@0__:KEY` and
//! `PSUBSCRIBE __keyspace@0__:PREFIX*`, named as Redis's keyspace notifications, delivered from
//! watches of the store.
//!
//! Each subscription is a task running a [`FrontWatch`] of its key or prefix from the
//! revision at subscribe time (found before the confirmation is sent, so a write acknowledged
//! after the confirmation is always delivered). The task pushes each change, as Redis's
//! `message` (or `pmessage`) with the event `set` or `del`, into the connection's bounded
//! queue ([`PUSHES_MAX`]); a connection that does not take them holds its watches back, which
//! resume from where they were. The connection writes what is queued whenever it is not
//! running a pipeline, so it keeps reading requests while messages arrive.
//!
//! Messages carry their subscription's number: one queued before an `UNSUBSCRIBE` is dropped,
//! not delivered after the confirmation.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::reply::{Protocol, Reply, failure};
use super::scan::range_of;
use crate::front::coord::FrontWatch;
use crate::front::{Gateway, RequestError};
use crate::machine::kv::{Change, ChangeKind, CoordError, KeyRange};

/// The channel prefix of a key's changes: Redis's keyspace notifications of database 0.
pub const KEYSPACE: &[u8] = b"__keyspace@0__:";

/// Messages queued for a connection at most.
const PUSHES_MAX: usize = 1024;

/// How long a subscription's watch waits for changes in one call.
const WAIT: Duration = Duration::from_secs(60);

/// How long a subscription pauses after its watch failed (no leader, say), before again.
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// One subscription: its number and the task delivering it, stopped when it is dropped.
struct Subscription {
    number: u64,
    task: JoinHandle<()>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A connection's subscriptions, to channels and to patterns, and their messages' queue.
pub struct Subscriptions {
    channels: BTreeMap<Bytes, Subscription>,
    patterns: BTreeMap<Bytes, Subscription>,
    sender: mpsc::Sender<(u64, Reply)>,
    receiver: mpsc::Receiver<(u64, Reply)>,
    next: u64,
}

impl Default for Subscriptions {
    fn default() -> Subscriptions {
        let (sender, receiver) = mpsc::channel(PUSHES_MAX);
        Subscriptions {
            channels: BTreeMap::new(),
            patterns: BTreeMap::new(),
            sender,
            receiver,
            next: 0,
        }
    }
}

/// The range a channel (or, with `pattern`, a channel pattern) names; an error if it is not a
/// keyspace channel or its pattern is not a prefix.
fn range_of_channel(name: &[u8], pattern: bool) -> Result<KeyRange, Reply> {
    let Some(key) = name.strip_prefix(KEYSPACE) else {
        return Err(Reply::error(format!(
            "ERR Quorum serves only keyspace channels, {}KEY (and with PSUBSCRIBE {}PREFIX*): \
             '{}' is not one; PUBLISH is not served (docs/redis.md)",
            String::from_utf8_lossy(KEYSPACE),
            String::from_utf8_lossy(KEYSPACE),
            String::from_utf8_lossy(name)
        )));
    };
    if pattern { range_of(key) } else { Ok(KeyRange::Key(key.to_vec())) }
}

/// The message for `change`: `message channel event`, or `pmessage pattern channel event`.
fn message(pattern: Option<&Bytes>, change: &Change) -> Option<Reply> {
    let event = match change.kind {
        ChangeKind::Put => "set",
        ChangeKind::Delete => "del",
        _ => return None,
    };
    let mut channel = KEYSPACE.to_vec();
    channel.extend_from_slice(&change.key);
    let (channel, event) = (Reply::Bulk(Bytes::from(channel)), Reply::text(event));
    Some(Reply::Push(match pattern {
        Some(pattern) => {
            vec![Reply::text("pmessage"), Reply::Bulk(pattern.clone()), channel, event]
        }
        None => vec![Reply::text("message"), channel, event],
    }))
}

/// A subscription's task: its watch's changes, as messages, into `sender`, until the
/// connection goes or it is unsubscribed.
async fn deliver(
    mut watch: FrontWatch,
    gateway: Arc<Gateway>,
    range: KeyRange,
    number: u64,
    pattern: Option<Bytes>,
    sender: mpsc::Sender<(u64, Reply)>,
) {
    loop {
        match watch.wait(WAIT).await {
            Ok(changes) => {
                for change in &changes {
                    let Some(reply) = message(pattern.as_ref(), change) else { continue };
                    if sender.send((number, reply)).await.is_err() {
                        return;
                    }
                }
            }
            Err(RequestError::Coordination(CoordError::Compacted { .. })) => {
                // The changes since are no longer kept: they are lost, as a Redis message is
                // to a client that was away; deliver from now on.
                tracing::warn!("a keyspace subscription fell behind the kept changes");
                if let Ok(now) = FrontWatch::start(gateway.clone(), range.clone(), 0, false).await {
                    watch = now;
                }
            }
            Err(error) => {
                tracing::debug!(%error, "a keyspace subscription's watch failed; again");
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    }
}

impl Subscriptions {
    /// Channels and patterns subscribed to.
    pub fn count(&self) -> usize {
        self.channels.len() + self.patterns.len()
    }

    /// True in subscribed mode: at least one subscription.
    pub fn active(&self) -> bool {
        self.count() > 0
    }

    /// `SUBSCRIBE` (or, with `pattern`, `PSUBSCRIBE`) of `names`: a confirmation for each.
    pub async fn subscribe(
        &mut self,
        gateway: &Arc<Gateway>,
        names: Vec<Bytes>,
        pattern: bool,
    ) -> Vec<Reply> {
        let mut ranges = Vec::with_capacity(names.len());
        for name in &names {
            match range_of_channel(name, pattern) {
                Ok(range) => ranges.push(range),
                Err(reply) => return vec![reply],
            }
        }
        let kind = if pattern { "psubscribe" } else { "subscribe" };
        let mut replies = Vec::with_capacity(names.len());
        for (name, range) in names.into_iter().zip(ranges) {
            let subscribed = if pattern { &self.patterns } else { &self.channels };
            if !subscribed.contains_key(&name) {
                let watch = match FrontWatch::start(gateway.clone(), range.clone(), 0, false).await
                {
                    Ok(watch) => watch,
                    Err(error) => {
                        replies.push(failure(&error));
                        return replies;
                    }
                };
                self.next += 1;
                let number = self.next;
                let shown = pattern.then(|| name.clone());
                let (gateway, sender) = (gateway.clone(), self.sender.clone());
                let task = tokio::spawn(deliver(watch, gateway, range, number, shown, sender));
                let subscribed = if pattern { &mut self.patterns } else { &mut self.channels };
                subscribed.insert(name.clone(), Subscription { number, task });
            }
            replies.push(self.confirmation(kind, Reply::Bulk(name)));
        }
        replies
    }

    fn confirmation(&self, kind: &'static str, name: Reply) -> Reply {
        Reply::Push(vec![Reply::text(kind), name, Reply::Integer(self.count() as i64)])
    }

    /// `UNSUBSCRIBE` (or, with `pattern`, `PUNSUBSCRIBE`) of `names` (none: all): a
    /// confirmation for each.
    pub fn unsubscribe(&mut self, names: Vec<Bytes>, pattern: bool) -> Vec<Reply> {
        let kind = if pattern { "punsubscribe" } else { "unsubscribe" };
        let subscribed = if pattern { &self.patterns } else { &self.channels };
        let names = if names.is_empty() { subscribed.keys().cloned().collect() } else { names };
        if names.is_empty() {
            return vec![self.confirmation(kind, Reply::Null)];
        }
        let mut replies = Vec::with_capacity(names.len());
        for name in names {
            let subscribed = if pattern { &mut self.patterns } else { &mut self.channels };
            subscribed.remove(&name);
            replies.push(self.confirmation(kind, Reply::Bulk(name)));
        }
        replies
    }

    /// Every subscription ended (`RESET`).
    pub fn clear(&mut self) {
        self.channels.clear();
        self.patterns.clear();
    }

    /// True if subscription `number` is still on.
    fn current(&self, number: u64) -> bool {
        self.channels.values().chain(self.patterns.values()).any(|s| s.number == number)
    }

    /// The next message to deliver, when one is queued.
    pub fn poll_push(&mut self, context: &mut Context<'_>) -> Poll<Reply> {
        loop {
            match self.receiver.poll_recv(context) {
                Poll::Ready(Some((number, reply))) if self.current(number) => {
                    return Poll::Ready(reply);
                }
                Poll::Ready(Some(_)) => {}
                // The queue keeps a sender of its own, so it never closes.
                Poll::Ready(None) | Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// Appends every message queued now to `out`.
    pub fn drain(&mut self, protocol: Protocol, out: &mut Vec<u8>) {
        while let Ok((number, reply)) = self.receiver.try_recv() {
            if self.current(number) {
                reply.encode(protocol, out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyspace_channels_name_a_key_or_a_prefix() {
        assert_eq!(range_of_channel(b"__keyspace@0__:k", false), Ok(KeyRange::Key(b"k".to_vec())));
        assert_eq!(
            range_of_channel(b"__keyspace@0__:user:*", true),
            Ok(KeyRange::Prefix(b"user:".to_vec()))
        );
        assert!(range_of_channel(b"news", false).is_err());
        assert!(range_of_channel(b"__keyspace@0__:a?c", true).is_err());
        let change =
            Change { revision: 9, kind: ChangeKind::Delete, key: b"k".to_vec(), value: Vec::new() };
        let Some(Reply::Push(parts)) = message(None, &change) else { unreachable!() };
        assert_eq!(parts[1], Reply::text("__keyspace@0__:k"));
        assert_eq!(parts[2], Reply::text("del"));
    }
}
