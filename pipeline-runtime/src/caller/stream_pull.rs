//! The input and output of a `stream` stage's thread worker: it pulls items from the
//! stage's channel and sends its outputs on (see [`crate::stream`]).

use std::collections::VecDeque;

use crossbeam_channel::Receiver;

use crate::caller::output::{Batch, Output, recv_chan};
use crate::error::Error;
use crate::stage::{Body, Rec};

/// A thread worker of a `stream` stage: pulls from the stage's channel, sends outputs on.
pub(crate) struct ChanPull<In, Out> {
    pub(crate) rx: Receiver<Batch<In>>,
    pub(crate) stop: Receiver<()>,
    pub(crate) buf: VecDeque<Rec<In>>,
    pub(crate) vals: VecDeque<In>,
    pub(crate) out: Output<Out>,
    pub(crate) out_batch: Batch<Out>,
    pub(crate) next_seq: u64,
    pub(crate) stride: u64,
    pub(crate) consumed: u64,
    pub(crate) position: u64,
    pub(crate) idx: u32,
    pub(crate) stopped: bool,
}

impl<In, Out> ChanPull<In, Out> {
    fn new_seq(&mut self) -> u64 {
        let s = self.next_seq;
        self.next_seq += self.stride;
        s
    }

    fn flush(&mut self) {
        if self.consumed > 0 {
            let n = std::mem::take(&mut self.consumed);
            self.out_batch.push(Rec {
                seq: crate::transport::link::NO_SEQ,
                body: Body::Consumed(self.idx, n),
            });
        }
        if !self.out_batch.is_empty() && !self.stopped {
            let batch = std::mem::take(&mut self.out_batch);
            if self.out.send(batch, &self.stop).is_err() {
                self.stopped = true;
            }
        }
    }
}

impl<In, Out> crate::stage::Pull<In> for ChanPull<In, Out> {
    fn pull(&mut self) -> Option<In> {
        loop {
            if let Some(v) = self.vals.pop_front() {
                return Some(v);
            }
            if self.stopped {
                return None;
            }
            let Some(r) = self.buf.pop_front() else {
                self.flush();
                match recv_chan(&self.rx, &self.stop) {
                    Some(b) => self.buf.extend(b),
                    None => return None,
                }
                continue;
            };
            match r.body {
                Body::Consumed(i, n) => {
                    // From an earlier stream stage: pass it on.
                    self.out_batch.push(Rec {
                        seq: r.seq,
                        body: Body::Consumed(i, n),
                    });
                    continue;
                }
                Body::One(v) => self.vals.push_back(v),
                Body::Many(vs) => self.vals.extend(vs),
                Body::Dropped(_) => {}
                Body::Failed(i, e) => {
                    let seq = self.new_seq();
                    self.out_batch.push(Rec {
                        seq,
                        body: Body::Failed(i, e),
                    });
                }
            }
            self.consumed += 1;
            self.position += 1;
        }
    }
}

impl<In, Out> crate::stream::StreamIo<In, Out> for ChanPull<In, Out> {
    fn emit(&mut self, value: Out) {
        let seq = self.new_seq();
        self.out_batch.push(Rec {
            seq,
            body: Body::One(value),
        });
        if self.out_batch.len() >= 256 {
            self.flush();
        }
    }

    fn fail(&mut self, e: Error) {
        let seq = self.new_seq();
        self.out_batch.push(Rec {
            seq,
            body: Body::Failed(self.idx, Box::new(e)),
        });
    }

    fn position(&self) -> u64 {
        self.position
    }

    fn finish(&mut self) {
        self.flush();
    }
}
