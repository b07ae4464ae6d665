//! Running `stream` stages: the stage function pulls its input as an iterator ([`Items`])
//! and its outputs become new items.
//!
//! # The problem
//! A stream stage breaks the pipeline's rule of one outcome per item: it may take a
//! thousand items and yield one, or none and yield many. The collector still has to know
//! when an item's room in the pipeline is free, failures from earlier stages must still
//! reach the caller, and the workers of one stage must never give two outputs one number.
//! The same rules hold for a worker on a thread (its input a channel) and for one in a
//! process (its input links).
//!
//! # The approach
//! One loop, [`run`], drives the user's iterator for every kind of worker, and one reader,
//! [`StreamPull`], supplies its input and takes its outputs. Only moving records is left to
//! a [`Port`]: the channel pair of a thread worker ([`crate::caller::stream_pull`]) or the
//! links of a process worker (in `process::worker`). For each input record the reader does
//! one of three things:
//! - an item's values are handed to the iterator, and the item is counted *consumed*;
//! - an item that failed before this stage (or whose input cannot be decoded) goes on as a
//!   failure under a new number, and is counted consumed too;
//! - a `CONSUMED` record of an earlier stream stage goes on as it is, uncounted.
//!
//! Whenever the reader runs out of input, and whenever the port has enough outputs waiting,
//! it sends the consumed count as one `CONSUMED` record, which tells the collector that
//! those items have no outcome of their own and their room is free; then the port flushes
//! (and, on links, acks).
//!
//! # Invariants
//! - Outputs are numbered `w, w + n, w + 2n, …` for worker `w` of `n` (a replacement of a
//!   process worker starts `epoch << 40` higher), so numbers never collide.
//! - A record that goes on (a failure, passed or made here; a `CONSUMED` count) is handed
//!   to the port before its input record is let go, so on links no ack overtakes it. An
//!   item whose values were queued is let go at once: it has no outcome of its own, and
//!   the next flush reports it in the `CONSUMED` count.
//! - A panic in the user's function fails one new item and ends the stream; whatever the
//!   function did not take is then consumed without output, so the stages before this one
//!   can finish.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::rc::Rc;

use crate::error::{Error, Worker, panic_message};
use crate::stage::{Body, Items, Pull, StreamFn};
use crate::transport::link::NO_SEQ;

/// The transport under one stream worker: where its input records come from and where its
/// outputs go. [`StreamPull`] holds the logic; a port only moves records.
pub(crate) trait Port {
    type In;
    type Out;
    /// A record to pass on as it came (a failure, a `CONSUMED` count), in the port's form.
    type Pass;
    /// The port's hold on an item that could not be decoded, given back to [`Port::done`].
    type Held;

    /// The next record received and not taken yet. An item's values are appended to
    /// `vals`, and the item is let go at once: it is finished once its values are queued.
    fn take(&mut self, vals: &mut VecDeque<Self::In>) -> Next<Self::Pass, Self::Held>;
    /// Everything received was taken (and flushed): waits for more. `false` at the end of
    /// the input.
    fn receive(&mut self) -> bool;
    /// The failure of the undecodable item `held` was handed to the port: it is finished.
    fn done(&mut self, held: Self::Held);
    /// Sends a new record: an output, a failure, or this stage's `CONSUMED` count.
    fn send(&mut self, seq: u64, body: Body<Self::Out>);
    /// Passes a record on, renumbered to `seq` if given; it is then finished.
    fn pass(&mut self, rec: Self::Pass, seq: Option<u64>);
    /// Enough outputs wait to be worth a flush now.
    fn full(&self) -> bool;
    /// Sends what waits (and acks what is done).
    fn flush(&mut self);
    /// After the last flush: ends the output.
    fn finish(&mut self);
}

/// What [`Port::take`] found.
pub(crate) enum Next<P, H> {
    /// An item; its values, if it has any for this stage, were appended to the queue.
    Item,
    /// An item whose input cannot be decoded: it fails here, under a new number.
    Undecodable(Box<Error>, H),
    /// An item that failed before this stage: it goes on under a new number.
    Failed(P),
    /// A `CONSUMED` count of an earlier stream stage: it goes on as it is, uncounted.
    Consumed(P),
    /// Nothing left to take: flush, then [`Port::receive`].
    Empty,
    /// The port was stopped or failed: the input ends here.
    Stop,
}

/// A stream worker's input and output over a [`Port`] (see the module essay).
pub(crate) struct StreamPull<P: Port> {
    pub(crate) port: P,
    /// Values of the items taken, not pulled yet.
    vals: VecDeque<P::In>,
    next_seq: u64,
    stride: u64,
    /// Items consumed since the last `CONSUMED` record.
    consumed: u64,
    /// Items consumed so far.
    position: u64,
    /// This stage's index.
    idx: u32,
}

impl<P: Port> StreamPull<P> {
    /// The reader of a worker of stage `idx` whose outputs are numbered `first_seq`,
    /// `first_seq + stride`, ….
    pub(crate) fn new(port: P, first_seq: u64, stride: u64, idx: u32) -> Self {
        StreamPull {
            port,
            vals: VecDeque::new(),
            next_seq: first_seq,
            stride,
            consumed: 0,
            position: 0,
            idx,
        }
    }

    fn new_seq(&mut self) -> u64 {
        let s = self.next_seq;
        self.next_seq += self.stride;
        s
    }

    /// Reports the items consumed since the last time, then flushes the port.
    fn flush(&mut self) {
        if self.consumed > 0 {
            let n = std::mem::take(&mut self.consumed);
            self.port.send(NO_SEQ, Body::Consumed(self.idx, n));
        }
        self.port.flush();
    }

    fn emit(&mut self, value: P::Out) {
        let seq = self.new_seq();
        self.port.send(seq, Body::One(value));
        if self.port.full() {
            self.flush();
        }
    }

    /// Fails a new item with `e`.
    fn fail(&mut self, e: Box<Error>) {
        let seq = self.new_seq();
        self.port.send(seq, Body::Failed(self.idx, e));
    }

    /// End: everything flushed and reported, the output ended.
    fn finish(&mut self) {
        self.flush();
        self.port.finish();
    }
}

impl<P: Port> Pull<P::In> for StreamPull<P> {
    fn pull(&mut self) -> Option<P::In> {
        loop {
            if let Some(v) = self.vals.pop_front() {
                return Some(v);
            }
            match self.port.take(&mut self.vals) {
                Next::Item => {}
                Next::Undecodable(e, held) => {
                    self.fail(e);
                    self.port.done(held);
                }
                Next::Failed(rec) => {
                    let seq = self.new_seq();
                    self.port.pass(rec, Some(seq));
                }
                Next::Consumed(rec) => {
                    self.port.pass(rec, None);
                    continue;
                }
                Next::Empty => {
                    self.flush();
                    if !self.port.receive() {
                        return None;
                    }
                    continue;
                }
                Next::Stop => return None,
            }
            self.consumed += 1;
            self.position += 1;
        }
    }
}

/// Runs the stream function of stage `name` on one worker's share of the input, reading
/// and writing through `io`; afterwards `io`'s port says how it went.
pub(crate) fn run<P: Port + 'static>(
    f: &StreamFn<P::In, P::Out>,
    io: &Rc<RefCell<StreamPull<P>>>,
    name: &str,
    worker: Worker,
) {
    let src: Rc<RefCell<dyn Pull<P::In>>> = io.clone();
    let mut failure = None;
    match catch_unwind(AssertUnwindSafe(|| f(Items { src }))) {
        Ok(mut it) => loop {
            match catch_unwind(AssertUnwindSafe(|| it.next())) {
                Ok(Some(v)) => io.borrow_mut().emit(v),
                Ok(None) => break,
                Err(p) => {
                    failure = Some(panic_message(p.as_ref()));
                    break;
                }
            }
        },
        Err(p) => failure = Some(panic_message(p.as_ref())),
    }
    let mut io = io.borrow_mut();
    if let Some(message) = failure {
        let item = io.position;
        io.fail(Box::new(Error::Panicked {
            stage: name.to_string(),
            item,
            worker,
            message: format!("{message} (in the stream, after {item} items)"),
        }));
    }
    // What the function did not take is consumed without output, so the stages before
    // this one can finish.
    while io.pull().is_some() {}
    io.finish();
}
