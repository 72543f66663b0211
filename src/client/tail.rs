//! Tailing a node's committed log: one subscription per shard (a connection to the shard's
//! port, a `Subscribe` from the slot that holds or follows the start position), merged into
//! global position order by [`Merge`], or one shard alone. The node serves what it has
//! committed from its log, then what commits as it commits, without a gap or a repeat; it
//! sends only as fast as this side reads. A broken connection is taken up again from the
//! first slot not received (the node restarted, say), for as long as the request timeout.

use std::collections::VecDeque;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{
    ClientError, ClientOptions, FRAME_BYTES_MAX, check_shard, handshake, random_client_id,
};
use crate::core::{Message, NodeId, SLOT_MAX, Slot, SlotRun, Value};
use crate::machine::merge::Merge;
use crate::transport::codec::{Body, Encoder, Frame};
use crate::transport::framing::{read_frame, write_frame};

/// A committed batch, as a tail hands it out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TailBatch {
    /// Its global position: `slot · shards + shard`.
    pub position: u64,
    /// The shard.
    pub shard: u16,
    /// The slot in that shard's log.
    pub slot: Slot,
    /// The batch, in the batch encoding (see [`crate::core::BatchReader`]).
    pub batch: Bytes,
    /// How long the merge held it: from the arrival of its shard's run to its turn in the
    /// global order (zero when tailing one shard).
    pub held: Duration,
}

/// What one shard's subscription delivered, or why it ended.
struct Arrival {
    shard: u16,
    runs: Result<Vec<SlotRun>, ClientError>,
    at: Instant,
}

/// A subscription to a node's committed log.
pub struct Tail {
    shards: u16,
    arrivals: mpsc::Receiver<Arrival>,
    /// `None` when tailing one shard.
    merge: Option<Merge>,
    /// Per shard, the arrival time of each batch slot not yet handed out.
    waiting: Vec<VecDeque<(Slot, Instant)>>,
    ready: VecDeque<TailBatch>,
}

impl Tail {
    /// Subscribes to the node at `address` (`HOST:PORT`, its listen address) from global
    /// position `from`: to every shard, merged, or to `shard` alone.
    ///
    /// # Errors
    /// The node cannot be reached or refuses us, `shard` does not exist, or `from` lies beyond
    /// the last slot a log may reach (a node refuses such a subscription and closes the
    /// connection: protocol.md §2.1).
    pub fn subscribe(
        address: &str,
        options: &ClientOptions,
        from: u64,
        shard: Option<u16>,
    ) -> Result<Tail, ClientError> {
        let client_id = random_client_id();
        let first = handshake(options, client_id, address, 0)?;
        let shards = first.reply.shards;
        if let Some(shard) = shard {
            check_shard(shard, shards)?;
        }
        let start = Merge::new(shards, from);
        let wanted: Vec<u16> = match shard {
            Some(shard) => vec![shard],
            None => (0..shards).collect(),
        };
        for shard in &wanted {
            let slot = start.expected_slot(*shard).expect("a shard of the node");
            if slot > SLOT_MAX {
                return Err(ClientError::Rejected(format!(
                    "position {from} is slot {} of shard {shard}, beyond the last slot a log \
                     may reach ({})",
                    slot.0, SLOT_MAX.0
                )));
            }
        }
        let (sender, arrivals) = mpsc::channel();
        let mut first = Some(first.stream);
        for shard in wanted {
            // Shard 0's connection is the one that asked how many shards there are.
            let mut stream = match first.take().filter(|_| shard == 0) {
                Some(stream) => stream,
                None => handshake(options, client_id, address, shard)?.stream,
            };
            let subscription = Subscription {
                address: address.to_string(),
                options: options.clone(),
                client_id,
                shard,
                next_slot: start.expected_slot(shard).expect("a shard of the node"),
            };
            subscription.subscribe(&mut stream)?;
            let sender = sender.clone();
            std::thread::Builder::new()
                .name(format!("tail-{shard}"))
                .spawn(move || subscription.read(stream, &sender))
                .map_err(|error| io(&error))?;
        }
        Ok(Tail {
            shards,
            arrivals,
            merge: shard.is_none().then_some(start),
            waiting: vec![VecDeque::new(); usize::from(shards)],
            ready: VecDeque::new(),
        })
    }

    /// The node's shard count.
    #[must_use]
    pub fn shards(&self) -> u16 {
        self.shards
    }

    /// The next committed batch, waiting for it as long as it takes.
    ///
    /// # Errors
    /// The connection to the node broke, or it sent something out of order.
    pub fn next_batch(&mut self) -> Result<TailBatch, ClientError> {
        loop {
            if let Some(batch) = self.ready.pop_front() {
                return Ok(batch);
            }
            let arrival = self
                .arrivals
                .recv()
                .map_err(|_| ClientError::Disconnected("every subscription ended".into()))?;
            self.take(arrival)?;
        }
    }

    fn take(&mut self, arrival: Arrival) -> Result<(), ClientError> {
        let shards = u64::from(self.shards);
        let runs = arrival.runs?;
        let Some(merge) = &mut self.merge else {
            for run in runs {
                if let Value::Batch(batch) = run.value {
                    // The node's word: slots up to SLOT_MAX (checked by the decoder), which
                    // times the shard count may not fit a position.
                    let position = run
                        .first_slot
                        .0
                        .checked_mul(shards)
                        .and_then(|position| position.checked_add(u64::from(arrival.shard)))
                        .ok_or_else(|| {
                            ClientError::BadReply(format!(
                                "slot {} of shard {} has no global position",
                                run.first_slot.0, arrival.shard
                            ))
                        })?;
                    self.ready.push_back(TailBatch {
                        position,
                        shard: arrival.shard,
                        slot: run.first_slot,
                        batch,
                        held: Duration::ZERO,
                    });
                }
            }
            return Ok(());
        };
        for run in runs {
            merge
                .push(arrival.shard, run.first_slot, run.count, &run.value)
                .map_err(|error| ClientError::BadReply(error.to_string()))?;
            if run.value.is_batch() {
                self.waiting[usize::from(arrival.shard)].push_back((run.first_slot, arrival.at));
            }
        }
        while let Some(merged) = merge.pop() {
            let waiting = &mut self.waiting[usize::from(merged.shard)];
            // Runs before the start position were dropped by the merge: so are their times.
            while waiting.front().is_some_and(|(slot, _)| *slot < merged.slot) {
                waiting.pop_front();
            }
            let held = waiting.pop_front().map_or(Duration::ZERO, |(_, at)| at.elapsed());
            self.ready.push_back(TailBatch {
                position: merged.position,
                shard: merged.shard,
                slot: merged.slot,
                batch: merged.batch,
                held,
            });
        }
        Ok(())
    }
}

fn io(error: &dyn std::fmt::Display) -> ClientError {
    ClientError::Disconnected(error.to_string())
}

/// One shard's subscription: where it stands, and how to take it up again.
struct Subscription {
    address: String,
    options: ClientOptions,
    client_id: u64,
    shard: u16,
    /// The first slot not yet received.
    next_slot: Slot,
}

impl Subscription {
    fn subscribe(&self, stream: &mut std::net::TcpStream) -> Result<(), ClientError> {
        let subscribe = Frame {
            cluster_id: self.options.cluster_id,
            from: NodeId(0),
            shard: self.shard,
            body: Body::Peer(Message::Subscribe { from_slot: self.next_slot }),
        };
        write_frame(stream, &mut Encoder::default(), &subscribe).map_err(|e| io(&e))
    }

    /// Reads committed runs until the tail is dropped. A broken connection (the node
    /// restarting, say) is taken up again from the first slot not received, for as long as
    /// the options' request timeout; then the error is handed on.
    fn read(mut self, mut stream: std::net::TcpStream, sender: &mpsc::Sender<Arrival>) {
        loop {
            let error = match read_frame(&mut stream, FRAME_BYTES_MAX) {
                Ok(Frame { body: Body::Peer(Message::Chosen { runs, .. }), .. }) => {
                    if let Some(last) = runs.last() {
                        self.next_slot = self.next_slot.max(last.end_slot());
                    }
                    let arrival = Arrival { shard: self.shard, runs: Ok(runs), at: Instant::now() };
                    if sender.send(arrival).is_err() {
                        return; // The tail was dropped.
                    }
                    continue;
                }
                Ok(Frame { body: Body::Peer(Message::Snapshot { slot, .. }), .. }) => {
                    ClientError::Compacted { shard: self.shard, slot }
                }
                Ok(frame) => ClientError::BadReply(format!(
                    "shard {} sent a {} frame to a subscription",
                    self.shard,
                    frame.body.kind()
                )),
                Err(error) => match self.reconnect() {
                    Some(fresh) => {
                        stream = fresh;
                        continue;
                    }
                    None => ClientError::Disconnected(format!("shard {}: {error}", self.shard)),
                },
            };
            let _ =
                sender.send(Arrival { shard: self.shard, runs: Err(error), at: Instant::now() });
            return;
        }
    }

    /// Connects and subscribes again, backing off, until the request timeout runs out.
    fn reconnect(&self) -> Option<std::net::TcpStream> {
        let deadline = Instant::now() + self.options.request_timeout;
        let mut pause = Duration::from_millis(20);
        while Instant::now() < deadline {
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_secs(1));
            let Ok(mut handshake) =
                handshake(&self.options, self.client_id, &self.address, self.shard)
            else {
                continue;
            };
            if self.subscribe(&mut handshake.stream).is_ok() {
                return Some(handshake.stream);
            }
        }
        None
    }
}
