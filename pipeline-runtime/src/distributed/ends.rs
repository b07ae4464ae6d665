//! The typed ends of a group of distributed stages in the caller: the *feed* thread
//! encodes the group's input into batches for the broker, the *collect* thread decodes
//! what comes back and hands it to the next piece. Between them, untyped, is the broker
//! task ([`super::caller`]).

use std::any::Any;

use crossbeam_channel::{Receiver, Sender, select};

use super::wire::{BatchWriter, RECORD_OVERHEAD, RecAt, TAG_ONE, WBody, WRec};
use crate::batch::Batch;
use crate::caller::output::{Output, recv_chan};
use crate::error::{Error, Worker};
use crate::stage::{Body, Rec};

/// From the feed thread to the broker task.
#[derive(Debug)]
pub(crate) enum ToBroker {
    /// One message: its records' sequence numbers and its bytes.
    Batch { seqs: Vec<u64>, payload: Vec<u8> },
}

/// To the collect thread: records that are done (from the broker, from the broker task's
/// failures, or passed by the feed thread), or a `stream` stage's consumed count.
#[derive(Debug)]
pub(crate) enum Back {
    Recs(Vec<WRec>),
    /// Records of a result message, read in place.
    Batch(bytes::Bytes, Vec<RecAt>),
    Consumed(u64, u32, u64),
}

/// What the feed thread needs besides its input.
pub(crate) struct FeedCtx {
    pub stop: Receiver<()>,
    pub to_broker: tokio::sync::mpsc::Sender<ToBroker>,
    pub back: Sender<Back>,
    /// The most bytes a batch may have (the broker's `max_payload`, less headers).
    pub room: usize,
    pub limit: usize,
    pub batch: usize,
    pub stage: String,
    pub idx: u32,
}

/// The feed thread's typed half (`In` is the group's input type).
pub(crate) trait FeedEnd: Send {
    /// Runs the feed: `rx` is the group's `Receiver<Batch<In>>`.
    fn run(self: Box<Self>, rx: Box<dyn Any + Send>, ctx: FeedCtx);
}

/// The collect thread's typed half (`Out` is the group's output type).
pub(crate) trait CollectEnd: Send {
    /// Runs the collector: `out` is the next piece's `Output<Out>`.
    fn run(self: Box<Self>, rx: Receiver<Back>, out: Box<dyn Any + Send>, stop: Receiver<()>);
}

pub(crate) struct Feed<In> {
    pub encode: fn(&In, &mut Vec<u8>) -> Result<(), String>,
}

pub(crate) struct Collect<Out> {
    pub decode: fn(&[u8]) -> Result<Out, String>,
    pub stage: String,
    pub idx: u32,
}

impl<In: Send + 'static> FeedEnd for Feed<In> {
    fn run(self: Box<Self>, rx: Box<dyn Any + Send>, ctx: FeedCtx) {
        let rx = *rx
            .downcast::<Receiver<Batch<In>>>()
            .expect("input channel of the group's first stage");
        let mut b = Batching {
            w: BatchWriter::new(),
            seqs: Vec::new(),
            ctx,
        };
        while let Some(batch) = recv_chan(&rx, &b.ctx.stop) {
            for rec in batch {
                if !self.add(rec, &mut b) {
                    return;
                }
            }
            if rx.is_empty() && !b.flush() {
                return;
            }
        }
        b.flush();
    }
}

/// The batch being filled.
struct Batching {
    w: BatchWriter,
    seqs: Vec<u64>,
    ctx: FeedCtx,
}

impl Batching {
    /// Sends the batch; false once the broker task is gone.
    fn flush(&mut self) -> bool {
        if self.w.count() == 0 {
            return true;
        }
        let w = std::mem::replace(&mut self.w, BatchWriter::new());
        let seqs = std::mem::take(&mut self.seqs);
        let msg = ToBroker::Batch {
            seqs,
            payload: w.finish(),
        };
        self.ctx.to_broker.blocking_send(msg).is_ok()
    }

    fn fail(&self, seq: u64, e: Error) {
        let body = WBody::Failed(self.ctx.idx, Box::new(e));
        let _ = self.ctx.back.send(Back::Recs(vec![WRec { seq, body }]));
    }

    /// The record just pushed at `mark` made the batch too large: move it to the next
    /// batch, or fail its item if it is too large alone. False once the broker task is gone.
    fn overflow(&mut self, seq: u64, mark: usize) -> bool {
        let raw = self.w.take_last(mark);
        if raw.len() + 4 > self.ctx.room {
            let message = format!(
                "the item is {} bytes encoded, more than the broker's max_payload of {} bytes",
                raw.len() - RECORD_OVERHEAD + 4,
                self.ctx.limit
            );
            let stage = self.ctx.stage.clone();
            self.fail(
                seq,
                Error::Broker {
                    stage,
                    item: seq,
                    message,
                },
            );
            return true;
        }
        if !self.flush() {
            return false;
        }
        self.w.push_raw(&raw);
        self.seqs.push(seq);
        true
    }
}

impl<In: Send + 'static> Feed<In> {
    /// Adds one record to the batch (or passes it on); false once the broker task is gone.
    fn add(&self, rec: Rec<In>, b: &mut Batching) -> bool {
        let seq = rec.seq;
        let mark = b.w.len();
        let pushed = match rec.body {
            Body::One(x) => b.w.push_one(seq, |buf| (self.encode)(&x, buf)),
            Body::Many(xs) => self.many(&xs).map(|vs| {
                b.w.push(&WRec {
                    seq,
                    body: WBody::Many(vs),
                })
            }),
            Body::Dropped(i) => return pass(b, seq, WBody::Dropped(i)),
            Body::Failed(i, e) => return pass(b, seq, WBody::Failed(i, e)),
            Body::Consumed(i, n) => return b.ctx.back.send(Back::Consumed(seq, i, n)).is_ok(),
        };
        if let Err(message) = pushed {
            let e = Error::Codec {
                stage: b.ctx.stage.clone(),
                item: seq,
                worker: Worker::Process(std::process::id()),
                what: "encode the input of".into(),
                message,
            };
            b.fail(seq, e);
            return true;
        }
        if b.w.len() + 4 > b.ctx.room {
            return b.overflow(seq, mark);
        }
        b.seqs.push(seq);
        if b.w.count() as usize >= b.ctx.batch {
            return b.flush();
        }
        true
    }

    fn many(&self, xs: &[In]) -> Result<Vec<Vec<u8>>, String> {
        xs.iter()
            .map(|x| {
                let mut v = Vec::new();
                (self.encode)(x, &mut v).map(|()| v)
            })
            .collect()
    }
}

fn pass(b: &Batching, seq: u64, body: WBody) -> bool {
    b.ctx
        .back
        .send(Back::Recs(vec![WRec { seq, body }]))
        .is_ok()
}

impl<Out: Send + 'static> CollectEnd for Collect<Out> {
    fn run(self: Box<Self>, rx: Receiver<Back>, out: Box<dyn Any + Send>, stop: Receiver<()>) {
        let mut out = *out
            .downcast::<Output<Out>>()
            .expect("output of the group's last stage");
        loop {
            let back = select! {
                recv(rx) -> r => match r { Ok(b) => b, Err(_) => break },
                recv(stop) -> _ => return,
            };
            let batch: Batch<Out> = match back {
                Back::Recs(recs) => recs.into_iter().map(|r| self.rec(r)).collect(),
                Back::Batch(b, recs) => recs.iter().map(|r| self.rec_at(&b, r)).collect(),
                Back::Consumed(seq, i, n) => Batch::Recs(vec![Rec {
                    seq,
                    body: Body::Consumed(i, n),
                }]),
            };
            if out.send(batch, &stop).is_err() {
                return;
            }
        }
        let _ = out.flush();
        out.finish();
    }
}

impl<Out> Collect<Out> {
    fn rec(&self, r: WRec) -> Rec<Out> {
        let seq = r.seq;
        let body = match r.body {
            WBody::One(v) => match (self.decode)(&v) {
                Ok(x) => Body::One(x),
                Err(m) => self.undecodable(seq, m),
            },
            WBody::Many(vs) => match vs.iter().map(|v| (self.decode)(v)).collect() {
                Ok(xs) => Body::Many(xs),
                Err(m) => self.undecodable(seq, m),
            },
            WBody::Dropped(i) => Body::Dropped(i),
            WBody::Failed(i, e) => Body::Failed(i, e),
        };
        Rec { seq, body }
    }

    /// Record `r` of the result message `b`; a value is decoded where it is.
    fn rec_at(&self, b: &[u8], r: &RecAt) -> Rec<Out> {
        if r.tag != TAG_ONE {
            return match r.read(b) {
                Ok(rec) => self.rec(rec),
                Err(m) => Rec {
                    seq: r.seq,
                    body: self.undecodable(r.seq, m),
                },
            };
        }
        let body = match (self.decode)(r.one(b)) {
            Ok(x) => Body::One(x),
            Err(m) => self.undecodable(r.seq, m),
        };
        Rec { seq: r.seq, body }
    }

    fn undecodable(&self, seq: u64, message: String) -> Body<Out> {
        Body::Failed(
            self.idx,
            Box::new(Error::Codec {
                stage: self.stage.clone(),
                item: seq,
                worker: Worker::Process(std::process::id()),
                what: "decode the output of".into(),
                message,
            }),
        )
    }
}
