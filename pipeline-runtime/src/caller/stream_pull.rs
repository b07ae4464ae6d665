//! The port of a `stream` stage's thread worker: it takes records from the stage's channel
//! and sends its outputs on in batches (the logic is [`crate::stream`]'s).

use std::collections::VecDeque;

use crossbeam_channel::Receiver;

use crate::batch::Batch;
use crate::caller::output::{Output, recv_chan};
use crate::stage::{Body, Rec};
use crate::stream::{Next, Port};

/// Outputs batched before a flush, when the input does not run out first.
const OUT_BATCH: usize = 256;

/// The channels of a thread worker of a `stream` stage.
pub(crate) struct ChanPort<In, Out> {
    rx: Receiver<Batch<In>>,
    stop: Receiver<()>,
    /// Records received, not taken yet.
    buf: VecDeque<Rec<In>>,
    out: Output<Out>,
    /// Outputs not sent yet.
    out_batch: Vec<Rec<Out>>,
    /// The pipeline is stopping: nothing more is read or sent.
    stopped: bool,
}

impl<In, Out> ChanPort<In, Out> {
    /// A worker reading `rx` and sending to `out`, both until `stop`.
    pub(crate) fn new(rx: Receiver<Batch<In>>, stop: Receiver<()>, out: Output<Out>) -> Self {
        ChanPort {
            rx,
            stop,
            buf: VecDeque::new(),
            out,
            out_batch: Vec::new(),
            stopped: false,
        }
    }
}

impl<In, Out> Port for ChanPort<In, Out> {
    type In = In;
    type Out = Out;
    type Pass = Rec<Out>;
    type Held = ();

    fn take(&mut self, vals: &mut VecDeque<In>) -> Next<Rec<Out>, ()> {
        if self.stopped {
            return Next::Stop;
        }
        let Some(r) = self.buf.pop_front() else {
            return Next::Empty;
        };
        match r.body {
            Body::One(v) => vals.push_back(v),
            Body::Many(vs) => vals.extend(vs),
            Body::Dropped(_) => {}
            Body::Failed(i, e) => {
                return Next::Failed(Rec {
                    seq: r.seq,
                    body: Body::Failed(i, e),
                });
            }
            Body::Consumed(i, n) => {
                return Next::Consumed(Rec {
                    seq: r.seq,
                    body: Body::Consumed(i, n),
                });
            }
        }
        Next::Item
    }

    fn receive(&mut self) -> bool {
        match recv_chan(&self.rx, &self.stop) {
            Some(b) => {
                self.buf.extend(b);
                true
            }
            None => false,
        }
    }

    fn done(&mut self, (): ()) {}

    fn send(&mut self, seq: u64, body: Body<Out>) {
        self.out_batch.push(Rec { seq, body });
    }

    fn pass(&mut self, mut rec: Rec<Out>, seq: Option<u64>) {
        if let Some(seq) = seq {
            rec.seq = seq;
        }
        self.out_batch.push(rec);
    }

    fn full(&self) -> bool {
        self.out_batch.len() >= OUT_BATCH
    }

    fn flush(&mut self) {
        if !self.out_batch.is_empty() && !self.stopped {
            let batch = std::mem::take(&mut self.out_batch);
            if self.out.send(batch, &self.stop).is_err() {
                self.stopped = true;
            }
        }
    }

    fn finish(&mut self) {}
}
