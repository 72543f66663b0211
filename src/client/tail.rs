//! Tailing a node's committed log: one subscription per shard (a connection to the shard's
//! port, a `Subscribe` from the slot that holds or follows the start position), merged into
//! global position order by [`Merge`], or one shard alone. The node serves what it has
//! committed from its log, then what commits as it commits, without a gap or a repeat; it
//! sends only as fast as this side reads.

use std::collections::VecDeque;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{ClientError, ClientOptions, FRAME_BYTES_MAX, handshake, random_client_id};
use crate::core::{Message, NodeId, Slot, SlotRun, Value};
use crate::merge::Merge;
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

/// What one shard's subscription delivered.
struct Arrival {
    shard: u16,
    runs: Vec<SlotRun>,
    at: Instant,
}

/// A subscription to a node's committed log.
pub struct Tail {
    shards: u16,
    arrivals: mpsc::Receiver<Result<Arrival, ClientError>>,
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
    /// The node cannot be reached or refuses us, or `shard` does not exist.
    pub fn subscribe(
        address: &str,
        options: &ClientOptions,
        from: u64,
        shard: Option<u16>,
    ) -> Result<Tail, ClientError> {
        let client_id = random_client_id();
        let first = handshake(options, client_id, address, 0)?;
        let shards = first.reply.shards;
        if let Some(shard) = shard.filter(|shard| *shard >= shards) {
            return Err(ClientError::BadReply(format!(
                "shard {shard} does not exist: the node has {shards} (0 to {})",
                shards - 1
            )));
        }
        let start = Merge::new(shards, from);
        let wanted: Vec<u16> = match shard {
            Some(shard) => vec![shard],
            None => (0..shards).collect(),
        };
        let (sender, arrivals) = mpsc::channel();
        let mut first = Some(first.stream);
        for shard in wanted {
            let mut stream = match (shard, first.take()) {
                (0, Some(stream)) => stream,
                (_, unused) => {
                    first = unused;
                    handshake(options, client_id, address, shard)?.stream
                }
            };
            let from_slot = start.expected_slot(shard).expect("a shard of the node");
            let subscribe = Frame {
                cluster_id: options.cluster_id,
                from: NodeId(0),
                shard,
                body: Body::Peer(Message::Subscribe { from_slot }),
            };
            let io = |error: &dyn std::fmt::Display| ClientError::Disconnected(error.to_string());
            write_frame(&mut stream, &mut Encoder::default(), &subscribe)
                .map_err(|error| io(&error))?;
            let sender = sender.clone();
            std::thread::Builder::new()
                .name(format!("tail-{shard}"))
                .spawn(move || read_shard(stream, shard, &sender))
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
                .map_err(|_| ClientError::Disconnected("every subscription ended".into()))??;
            self.take(arrival)?;
        }
    }

    fn take(&mut self, arrival: Arrival) -> Result<(), ClientError> {
        let shards = u64::from(self.shards);
        let Some(merge) = &mut self.merge else {
            for run in arrival.runs {
                if let Value::Batch(batch) = run.value {
                    self.ready.push_back(TailBatch {
                        position: run.first_slot.0 * shards + u64::from(arrival.shard),
                        shard: arrival.shard,
                        slot: run.first_slot,
                        batch,
                        held: Duration::ZERO,
                    });
                }
            }
            return Ok(());
        };
        for run in arrival.runs {
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

/// Reads one shard's committed runs until the connection ends.
fn read_shard(
    mut stream: std::net::TcpStream,
    shard: u16,
    sender: &mpsc::Sender<Result<Arrival, ClientError>>,
) {
    loop {
        let result = match read_frame(&mut stream, FRAME_BYTES_MAX) {
            Ok(Frame { body: Body::Peer(Message::Chosen { runs, .. }), .. }) => {
                Ok(Arrival { shard, runs, at: Instant::now() })
            }
            Ok(frame) => Err(ClientError::BadReply(format!(
                "shard {shard} sent a {} frame to a subscription",
                frame.body.kind()
            ))),
            Err(error) => Err(ClientError::Disconnected(format!("shard {shard}: {error}"))),
        };
        let failed = result.is_err();
        if sender.send(result).is_err() || failed {
            return;
        }
    }
}
