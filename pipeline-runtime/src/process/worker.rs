//! The loop of a worker process: read records from the previous stage, run the stage
//! function, write the outputs to the next stage, ack what is done.
//!
//! Runs in a process forked by the supervisor (single-threaded), after the runtime's first
//! steps (see [`crate::process::supervisor`]), or on a caller's thread for a `pipe_next`
//! half that is not `subprocess`. [`run()`] sets a worker up in steps — its slot and output
//! links made known to the panic hook and to fault injection, the stage's `init`, its
//! links — and hands over to a `Loop`, whose steps are named for what they do: `serve`
//! takes records until the input ends; `refill` flushes, acks and waits for input once
//! everything received was handled; `record` handles one record, with `push_outputs`
//! choosing what comes of it (a failure for a stage that gave up, a `pipe_next` half's
//! part, the stage function's outcome, or the record itself passed on); `hand_over` is the
//! last step of a worker to be replaced. A `stream` stage's worker instead runs
//! [`crate::stream`]'s reader over its links (`LinkPort`).
//!
//! A record that is already a failure or a drop passes through unchanged, byte for byte.
//! Acks go upstream only after the outputs of the acked records were flushed downstream,
//! so at every moment each item is held by exactly one side of a link.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;
use std::os::fd::AsFd;
use std::rc::Rc;
use std::sync::atomic::Ordering;

use crate::error::{Error, Worker};
use crate::guard::apply;
use crate::meter::{Meter, Sink};
use crate::os::sys::{self, SlotState};
use crate::process::budget::GiveUp;
use crate::process::protocol::{self, WorkerMsg};
use crate::process::runs::{RunCx, RunPos};
use crate::stage::{
    Body, ConsumeFn, Emit, PipeRole, ProduceFn, Stage, StreamFn, WireOps, WorkerFn,
};
use crate::stream::{Next, Port, StreamPull};
use crate::transport::link::{
    Commit, LinkReceiver, LinkSender, NO_TAG, RecRef, TAG_CONSUMED, TAG_FAILED, TAG_MANY, TAG_ONE,
    TAG_RUN, Tag,
};
use crate::transport::pipe::{End, PipeReader, PipeWriter};
use crate::transport::{record, run};

/// Records processed between two flush-and-ack points when the local queue is long.
const ACK_EVERY: usize = 512;

/// What a worker gets: from the supervisor (a process, `F = OwnedFd`) or from the caller
/// (a link worker on a thread, `F = RtFd`).
pub(crate) struct WorkerCtx<F> {
    pub idx: u32,
    pub ins: Vec<F>,
    pub outs: Vec<F>,
    pub credit: usize,
    /// 0 for the first worker of a slot, then one more per replacement.
    pub epoch: u32,
    pub slot: &'static SlotState,
    /// Set for the stand-in of a stage past its restart budget: every item fails with it.
    pub give_up: Option<GiveUp>,
    /// The control socket to the supervisor (none for a worker on a thread).
    pub ctl: Option<F>,
    /// A `pipe_next` half: the couple's byte-stream socket.
    pub stream: Option<F>,
    /// This worker's position in its stage, and the stage's number of workers.
    pub position: usize,
    pub of: usize,
    /// A replacement skips its inputs' old records until `RESYNC` — except on links made
    /// fresh with it (a `pipe_next` consumer replaced with its producer).
    pub resync_inputs: bool,
    /// The current epochs of the senders of its input links.
    pub in_epochs: Vec<u32>,
    /// Where its time accounting goes: `None` for its slot (a process worker).
    pub meter: Option<Sink>,
}

/// How a worker's loop ended.
pub(crate) enum WorkerEnd {
    /// End of input; everything sent was acked; `FINISHED` was sent.
    Finished,
    /// It must be replaced (its state may be broken); what it finished was acked.
    Restart,
    /// Its `init` failed (reported on the control socket).
    InitFailed,
}

fn tell<F: AsFd>(ctl: &Option<F>, msg: &WorkerMsg) {
    if let Some(c) = ctl {
        protocol::send(c, msg);
    }
}

/// A corrupt frame arrived on an input link: the supervisor is told (it kills the sender,
/// whose replacement starts the link afresh) and the link is discarded until then. A worker
/// with no supervisor (none here) fails instead.
fn report_corrupt<F: AsFd>(
    ctl: &Option<F>,
    rx: &mut LinkReceiver<F>,
    c: crate::transport::link::Corrupt,
) -> io::Result<()> {
    if ctl.is_none() {
        return Err(io::Error::new(io::ErrorKind::InvalidData, c.what));
    }
    rx.void(c.link);
    tell(ctl, &WorkerMsg::Corrupt(c));
    Ok(())
}

/// The output links of the worker this process runs (process workers only), for
/// [`inject_corrupt_frame`].
static OUTPUT_FDS: std::sync::Mutex<Vec<std::os::fd::RawFd>> = std::sync::Mutex::new(Vec::new());

/// Fault injection for tests: writes a corrupt message (see `link::corrupt_message` for the
/// kinds) on every output link of the worker process running the calling stage, as a buggy
/// or hostile worker would. Does nothing outside a worker process.
#[doc(hidden)]
pub fn inject_corrupt_frame(kind: u8) {
    let fds = OUTPUT_FDS.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let m = crate::transport::link::corrupt_message(kind);
    for fd in fds {
        // SAFETY: `fd` is one of this worker's output links, recorded when its loop took
        // them; the stage calling this runs inside that loop, which owns them and keeps them
        // open, and a worker process has no other thread that could close them.
        unsafe { sys::send_raw(fd, &m) };
    }
}

/// Runs one worker until its input ends, it must be replaced, or its `init` fails.
pub(crate) fn run<In: Send + 'static, Out: Send + 'static, F: AsFd + 'static>(
    stage: &Stage<In, Out>,
    ctx: WorkerCtx<F>,
) -> io::Result<WorkerEnd> {
    if let (Some(f), None) = (&stage.stream, &ctx.give_up) {
        let f = std::sync::Arc::clone(f);
        return run_stream(stage, &*f, ctx);
    }
    if ctx.ctl.is_some() {
        watch_slot(ctx.slot, &ctx.outs);
    }
    let f = match make_fn(stage, &ctx) {
        Ok(f) => f,
        Err(message) => return init_failed(&ctx.ctl, &message),
    };
    tell(&ctx.ctl, &WorkerMsg::InitOk);
    Loop::new(stage, f, ctx)?.serve()
}

/// A process worker's own slot and output links, for the panic hook and for
/// [`inject_corrupt_frame`].
fn watch_slot<F: AsFd>(slot: &'static SlotState, outs: &[F]) {
    crate::os::current::set_slot(slot);
    *OUTPUT_FDS.lock().unwrap_or_else(|p| p.into_inner()) = outs
        .iter()
        .map(|f| std::os::fd::AsRawFd::as_raw_fd(&f.as_fd()))
        .collect();
}

/// The stage function of this worker: runs the stage's `init` (`Err` is its message). The
/// stand-in of a stage that gave up and the halves of a `pipe_next` pair have none.
fn make_fn<In, Out, F>(
    stage: &Stage<In, Out>,
    ctx: &WorkerCtx<F>,
) -> Result<WorkerFn<In, Out>, String> {
    if ctx.give_up.is_some() || stage.pipe.is_some() {
        return Ok(crate::kernel::worker_fn(|_: In, _: &mut Emit<Out>| Ok(())));
    }
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (stage.make)())) {
        Ok(r) => r,
        Err(p) => Err(format!(
            "panicked: {}",
            crate::error::panic_message(p.as_ref())
        )),
    }
}

impl<F: AsFd> WorkerCtx<F> {
    /// Takes the input and output links; a replacement takes them over (see
    /// [`crate::transport::link`]).
    fn links(&mut self) -> io::Result<(LinkReceiver<F>, LinkSender<F>)> {
        let (ins, outs) = (
            std::mem::take(&mut self.ins),
            std::mem::take(&mut self.outs),
        );
        if self.epoch == 0 {
            return Ok((LinkReceiver::new(ins), LinkSender::new(outs, self.credit)));
        }
        let rx = if self.resync_inputs {
            LinkReceiver::replacement(ins, self.epoch, &self.in_epochs)
        } else {
            LinkReceiver::new(ins)
        };
        Ok((rx, LinkSender::replacement(outs, self.credit, self.epoch)?))
    }
}

/// Who a worker is, in the errors of its items.
fn worker_id<F>(ctl: &Option<F>, position: usize) -> Worker {
    if ctl.is_some() {
        Worker::Process(std::process::id())
    } else {
        Worker::Thread(position)
    }
}

/// What became of one record (see [`Loop::record`]).
enum Handled {
    /// Its outputs were pushed; `ran_ok` when the stage function ran on it and succeeded
    /// (for the restart budget).
    Pushed { ran_ok: bool },
    /// The stage function panicked in a stateful stage: the worker must be replaced.
    Restart,
}

/// The loop of a worker of an ordinary stage, a `pipe_next` half, or the stand-in of a
/// stage that gave up.
struct Loop<'s, In, Out, F> {
    stage: &'s Stage<In, Out>,
    wire: WireOps<In, Out>,
    f: WorkerFn<In, Out>,
    emit: Emit<Out>,
    idx: u32,
    me: Worker,
    slot: &'static SlotState,
    give_up: Option<GiveUp>,
    ctl: Option<F>,
    /// A `pipe_next` half's byte stream.
    stream: Option<F>,
    rx: LinkReceiver<F>,
    tx: LinkSender<F>,
    /// Descriptors to poll while waiting on the links (reused).
    extra: Vec<libc::pollfd>,
    /// Records handled since the last flush-and-ack point.
    since_ack: usize,
    /// Items the stage function finished successfully (for the restart budget).
    finished: u64,
    /// Start times are only read by the supervisor's timeout check.
    timed: bool,
    meter: Meter,
    /// Where a run's answer is written before it is pushed (reused).
    scratch: Vec<u8>,
    /// A run this worker answered only in part before it must be replaced, and how many
    /// of its items it answered (see `LinkReceiver::send_partial`).
    partial: Option<(RecRef, u32)>,
}

impl<'s, In, Out, F: AsFd> Loop<'s, In, Out, F> {
    fn new(
        stage: &'s Stage<In, Out>,
        f: WorkerFn<In, Out>,
        mut ctx: WorkerCtx<F>,
    ) -> io::Result<Self> {
        let me = worker_id(&ctx.ctl, ctx.position);
        let (rx, tx) = ctx.links()?;
        let sink = ctx.meter.take().unwrap_or(Sink::Slot(ctx.slot));
        Ok(Loop {
            stage,
            wire: stage.wire.expect("process stages have wire functions"),
            f,
            emit: Emit::new(),
            idx: ctx.idx,
            me,
            slot: ctx.slot,
            give_up: ctx.give_up,
            ctl: ctx.ctl,
            stream: ctx.stream,
            rx,
            tx,
            extra: Vec::new(),
            since_ack: 0,
            finished: 0,
            timed: stage.opts.timeout.is_some(),
            meter: Meter::new(sink),
            scratch: Vec::new(),
            partial: None,
        })
    }

    /// Handles records until the input ends (or the worker must be replaced).
    fn serve(mut self) -> io::Result<WorkerEnd> {
        loop {
            if self.rx.is_empty() {
                if !self.refill()? {
                    break;
                }
                continue;
            }
            let r = match self.rx.next() {
                Ok(Some(r)) => r,
                Ok(None) => continue,
                Err(c) => {
                    report_corrupt(&self.ctl, &mut self.rx, c)?;
                    continue;
                }
            };
            if let Handled::Restart = self.record(r)? {
                self.hand_over()?;
                return Ok(WorkerEnd::Restart);
            }
        }
        self.meter.done();
        self.tx.finish()?;
        self.credit_acked();
        self.rx.drain_acks();
        tell(&self.ctl, &WorkerMsg::Finished);
        Ok(WorkerEnd::Finished)
    }

    /// Everything received was handled: flushes and acks it, resends what a dead worker
    /// downstream held, then waits for more input. `false` at the end of the input.
    fn refill(&mut self) -> io::Result<bool> {
        self.meter.done();
        self.flush_sent()?;
        self.tx.read_acks()?;
        self.credit_acked();
        self.rx.send_acks();
        if self.tx.has_requeued() {
            // A worker downstream died: resend what it held before anything else.
            self.tx.wait_credit(&mut self.extra)?;
            return Ok(true);
        }
        if self.rx.finished() {
            return Ok(false);
        }
        self.extra.clear();
        self.tx.watch(&mut self.extra);
        match self.rx.fill(true, &mut self.extra) {
            Ok(true) => self.tx.read_acks()?,
            Ok(false) => {}
            Err(c) => report_corrupt(&self.ctl, &mut self.rx, c)?,
        }
        self.extra.clear();
        Ok(true)
    }

    /// One record: waits for room downstream, pushes what comes of it (with the slot saying
    /// which item runs), lets it go, and flushes and acks when it is time.
    fn record(&mut self, r: RecRef) -> io::Result<Handled> {
        if r.tag == TAG_RUN && self.stage.pipe.is_none() {
            return self.run_record(r);
        }
        self.wait_room()?;
        if r.first {
            let (items, arrived) = self.rx.arrival();
            self.meter.begin(items, Some(arrived));
        }
        let slot = self.slot;
        if self.timed {
            slot.since.store(sys::now_ns(), Ordering::Relaxed);
        }
        slot.running.store(r.seq + 1, Ordering::Release);
        let handled = self.push_outputs(&r)?;
        slot.running.store(0, Ordering::Release);
        slot.panic_len.store(0, Ordering::Relaxed);
        if let Handled::Pushed { ran_ok: true } = handled {
            self.finished += 1;
            slot.done.store(self.finished, Ordering::Relaxed);
        }
        if let Handled::Restart = handled {
            self.rx.release(r);
            if r.small {
                self.flush_sent()?;
            }
            return Ok(handled);
        }
        self.let_go(r, 1)?;
        Ok(handled)
    }

    /// A run: the stage function over its items (see [`crate::process::runs`]), answered
    /// by one run — in pieces, if its outputs are large.
    fn run_record(&mut self, r: RecRef) -> io::Result<Handled> {
        let count = run::weight(self.rx.raw(&r));
        // Each run of a message is a batch of its own: its items waited from the message's
        // arrival until now.
        let (_, arrived) = self.rx.arrival();
        self.meter.begin(u64::from(count), Some(arrived));
        let tag = LinkReceiver::<F>::origin(&r);
        let mut pos = RunPos::new(r.seq, count);
        let mut held = false;
        let share = count.div_ceil(self.tx.width() as u32);
        while !pos.over() {
            self.wait_room()?;
            pos.piece(share);
            self.answer_piece(&r, &mut pos);
            if !pos.over() && !held {
                // More pieces follow: the run is done only once all are acked.
                self.tx.hold(tag);
                held = true;
            } else if held {
                self.tx.hold(tag);
            }
            let piece_tag = if pos.restart && pos.done < count && !held {
                NO_TAG
            } else {
                tag
            };
            let scratch = &self.scratch;
            self.tx
                .push(piece_tag, |out| out.extend_from_slice(scratch))?;
        }
        if held && !(pos.restart && pos.done < count) {
            self.tx.unhold(tag);
        }
        self.finished += pos.ran_ok;
        self.slot.done.store(self.finished, Ordering::Relaxed);
        if pos.restart {
            if pos.done < count {
                self.partial = Some((r, pos.done));
            }
            self.rx.release(r);
            self.flush_sent()?;
            return Ok(Handled::Restart);
        }
        self.let_go(r, count as usize)?;
        Ok(Handled::Pushed { ran_ok: false })
    }

    /// Answers the next piece of run `r` into `scratch`.
    fn answer_piece(&mut self, r: &RecRef, pos: &mut RunPos) {
        self.scratch.clear();
        let mut cx = RunCx {
            emit: &mut self.emit,
            stage: &self.stage.name,
            idx: self.idx,
            me: self.me,
            slot: self.slot,
            timed: self.timed,
            give_up: self.give_up.as_ref(),
            stateful: self.stage.opts.stateful,
        };
        (self.wire.run)(
            &mut self.f,
            &mut cx,
            self.rx.payload(r),
            pos,
            &mut self.scratch,
        );
    }

    /// Lets record `r` (of `items` items) go, and flushes and acks when it is time.
    fn let_go(&mut self, r: RecRef, items: usize) -> io::Result<()> {
        self.rx.release(r);
        if r.small {
            self.flush_sent()?;
        }
        self.since_ack += items;
        if self.since_ack >= ACK_EVERY {
            // Keep the sender's credit flowing while a long local queue is processed.
            self.since_ack = 0;
            self.flush_sent()?;
            self.tx.read_acks()?;
            self.credit_acked();
            self.rx.send_acks();
        }
        Ok(())
    }

    /// Waits until a link downstream has credit for one more record.
    fn wait_room(&mut self) -> io::Result<()> {
        loop {
            match self.tx.reserve()? {
                Commit::Ready => return Ok(()),
                Commit::NeedCredit => {
                    self.meter.idle();
                    self.flush_sent()?;
                    self.credit_acked();
                    self.rx.send_acks();
                    self.tx.wait_credit(&mut self.extra)?;
                    self.meter.busy();
                }
            }
        }
    }

    /// Pushes downstream what this worker makes of record `r`, tagged with `r`'s origin.
    fn push_outputs(&mut self, r: &RecRef) -> io::Result<Handled> {
        let stage = self.stage;
        let item = r.tag == TAG_ONE || r.tag == TAG_MANY;
        let tag = LinkReceiver::<F>::origin(r);
        if let (Some(g), true) = (&self.give_up, item) {
            let e = Error::GaveUp {
                stage: stage.name.to_string(),
                item: r.seq,
                restarts: g.restarts,
                secs: g.secs,
                cause: g.cause.clone(),
            };
            self.tx
                .push(tag, |out| record::encode_failed(r.seq, self.idx, &e, out))?;
        } else if let Some(PipeRole::Producer(pf)) = &stage.pipe {
            self.producer(&**pf, r, item)?;
        } else if let Some(PipeRole::Consumer(cf)) = &stage.pipe {
            if item {
                let body = self.consumer(&**cf, r)?;
                self.push_body(tag, r.seq, &body)?;
            } else {
                self.tx
                    .push(tag, |out| out.extend_from_slice(self.rx.raw(r)))?;
            }
        } else if item {
            return self.apply_fn(r);
        } else {
            self.tx
                .push(tag, |out| out.extend_from_slice(self.rx.raw(r)))?;
        }
        Ok(Handled::Pushed { ran_ok: false })
    }

    /// The stage function on an item: pushes its outcome.
    fn apply_fn(&mut self, r: &RecRef) -> io::Result<Handled> {
        let (name, idx, me) = (&self.stage.name, self.idx, self.me);
        let out = match record::decode(r.tag, self.rx.payload(r), self.wire.decode_in) {
            Ok(body) => {
                let f = &mut self.f;
                apply(
                    &mut |x, e| f.call(x, e),
                    idx,
                    name,
                    me,
                    r.seq,
                    body,
                    &mut self.emit,
                )
            }
            Err(message) => self.undecodable(r, message),
        };
        let panicked = matches!(&out, Body::Failed(_, e) if matches!(**e, Error::Panicked { .. }));
        let ran_ok = !matches!(out, Body::Failed(..));
        self.push_body(LinkReceiver::<F>::origin(r), r.seq, &out)?;
        Ok(if panicked && self.stage.opts.stateful {
            Handled::Restart
        } else {
            Handled::Pushed { ran_ok }
        })
    }

    /// A `pipe_next` producer: forwards the record first, so the consumer reads while this
    /// worker writes, then writes each value's bytes on the stream.
    fn producer(&mut self, pf: &ProduceFn<In>, r: &RecRef, item: bool) -> io::Result<()> {
        let tag = LinkReceiver::<F>::origin(r);
        self.tx
            .push(tag, |out| out.extend_from_slice(self.rx.raw(r)))?;
        self.flush_sent()?;
        if item && let Ok(body) = record::decode(r.tag, self.rx.payload(r), self.wire.decode_in) {
            let fd = self.stream.as_ref().expect("a producer has its stream");
            for x in elements(body) {
                produce(pf, &self.stage.name, self.me, r.seq, x, fd.as_fd())?;
            }
        }
        Ok(())
    }

    /// A `pipe_next` consumer: the outcome of an item, read from the producer's stream.
    fn consumer(&mut self, cf: &ConsumeFn<In, Out>, r: &RecRef) -> io::Result<Body<Out>> {
        let body = match record::decode(r.tag, self.rx.payload(r), self.wire.decode_in) {
            Ok(body) => body,
            Err(message) => return Ok(self.undecodable(r, message)),
        };
        let fd = self.stream.as_ref().expect("a consumer has its stream");
        let (name, idx, me) = (&self.stage.name, self.idx, self.me);
        consume(cf, idx, name, me, r.seq, body, fd.as_fd(), &mut self.emit)
    }

    /// The outcome of an item whose input cannot be decoded.
    fn undecodable(&self, r: &RecRef, message: String) -> Body<Out> {
        let e = codec_error(&self.stage.name, r.seq, self.me, "decode", message);
        Body::Failed(self.idx, Box::new(e))
    }

    /// Pushes the outcome `body` of item `seq` (a failure in its place if it cannot be
    /// encoded).
    fn push_body(&mut self, tag: Tag, seq: u64, body: &Body<Out>) -> io::Result<()> {
        let (name, idx, me, enc) = (&self.stage.name, self.idx, self.me, self.wire.encode_out);
        self.tx.push(tag, |out| {
            let e = |m| codec_error(name, seq, me, "encode the output of", m);
            record::encode_or_fail(seq, body, enc, out, idx, e);
        })
    }

    /// Sends every batched output, then says (for the restart budget) that the outputs of
    /// the items finished so far have left this worker.
    fn flush_sent(&mut self) -> io::Result<()> {
        self.tx.flush()?;
        self.slot.sent.store(self.finished, Ordering::Relaxed);
        Ok(())
    }

    /// An item is acked upstream only once the next stage acked what this worker made of
    /// it: until the item leaves the process stages, its sender still holds it, so any
    /// death along the way (even two) fails or requeues it upstream, and nothing is lost.
    /// Each record pushed downstream carries the tag of the record it came from.
    fn credit_acked(&mut self) {
        for t in self.tx.take_acked() {
            self.rx.credit_tag(t);
        }
    }

    /// Before a replacement (the state may be half-updated): hands over what is done.
    fn hand_over(&mut self) -> io::Result<()> {
        self.meter.done();
        self.flush_sent()?;
        wait_acked(&mut self.tx)?;
        self.credit_acked();
        self.rx.send_acks();
        self.rx.drain_acks();
        if let Some((r, m)) = self.partial.take() {
            self.rx.send_partial(&r, m);
        }
        Ok(())
    }
}

/// The values of a record body (several after an `Emit` stage).
fn elements<T>(body: Body<T>) -> Vec<T> {
    match body {
        Body::One(v) => vec![v],
        Body::Many(vs) => vs,
        _ => Vec::new(),
    }
}

/// Runs the producer on one value and ends its stream.
fn produce<In>(
    pf: &crate::stage::ProduceFn<In>,
    stage: &str,
    me: Worker,
    seq: u64,
    x: In,
    fd: std::os::fd::BorrowedFd<'_>,
) -> io::Result<()> {
    let mut w = PipeWriter::new(fd, seq);
    let failure = crate::guard::guarded(stage, me, seq, || pf(x, &mut w));
    w.finish(failure.as_ref())
}

/// Runs the consumer on each value of an item, reading the producer's stream, and decides
/// the item's outcome (see [`crate::transport::pipe`]).
#[allow(clippy::too_many_arguments)]
fn consume<In, Out>(
    cf: &crate::stage::ConsumeFn<In, Out>,
    idx: u32,
    stage: &str,
    me: Worker,
    seq: u64,
    body: Body<In>,
    fd: std::os::fd::BorrowedFd<'_>,
    emit: &mut Emit<Out>,
) -> io::Result<Body<Out>> {
    let mut failed: Option<(u32, Box<Error>)> = None;
    for x in elements(body) {
        let mut reader = PipeReader::new(fd, seq);
        let consumer_failure = crate::guard::guarded(stage, me, seq, || cf(x, &mut reader, emit));
        let (end, read_to_end) = reader.finish()?;
        if failed.is_some() {
            continue;
        }
        failed = match (end, consumer_failure) {
            // The producer failed on its own while the consumer was still reading: its
            // cause wins, even if the consumer returned `Ok` on the cut stream.
            (End::Failed(e), c) if read_to_end || c.is_some() => Some((idx.saturating_sub(1), e)),
            (_, Some(c)) => Some((idx, Box::new(c))),
            _ => None,
        };
    }
    let mut outs = std::mem::replace(emit, Emit::new());
    Ok(match failed {
        Some((i, e)) => Body::Failed(i, e),
        None => match outs.len() {
            0 => Body::Dropped(idx),
            1 => Body::One(outs.take_one()),
            _ => Body::Many(outs.take_all()),
        },
    })
}

fn init_failed<F: AsFd>(ctl: &Option<F>, message: &str) -> io::Result<WorkerEnd> {
    let cut = message.floor_char_boundary(60_000);
    tell(ctl, &WorkerMsg::InitFailed(message[..cut].to_string()));
    Ok(WorkerEnd::InitFailed)
}

/// Waits until everything sent downstream was acked (so nothing needs requeueing when
/// this worker goes).
fn wait_acked<F: AsFd>(tx: &mut LinkSender<F>) -> io::Result<()> {
    let mut extra = Vec::new();
    while tx.unacked() > 0 || tx.has_requeued() {
        tx.wait_progress(&mut extra)?;
    }
    Ok(())
}

/// A process worker of a `stream` stage (see [`crate::stream`]).
fn run_stream<In: Send + 'static, Out: Send + 'static, F: AsFd + 'static>(
    stage: &Stage<In, Out>,
    f: &StreamFn<In, Out>,
    mut ctx: WorkerCtx<F>,
) -> io::Result<WorkerEnd> {
    let (rx, tx) = ctx.links()?;
    tell(&ctx.ctl, &WorkerMsg::InitOk);
    let me = worker_id(&ctx.ctl, ctx.position);
    let port = LinkPort {
        rx,
        tx,
        wire: stage.wire.expect("process stages have wire functions"),
        idx: ctx.idx,
        name: stage.name.to_string(),
        me,
        error: None,
        extra: Vec::new(),
    };
    // A replacement numbers its outputs apart from those of the workers before it.
    let first_seq = (u64::from(ctx.epoch) << 40) + ctx.position as u64;
    let io = Rc::new(RefCell::new(StreamPull::new(
        port,
        first_seq,
        ctx.of as u64,
        ctx.idx,
    )));
    crate::stream::run(f, &io, &stage.name, me);
    if let Some(e) = io.borrow_mut().port.error.take() {
        return Err(e);
    }
    tell(&ctx.ctl, &WorkerMsg::Finished);
    Ok(WorkerEnd::Finished)
}

/// The links of a process worker of a `stream` stage. Records of earlier stages that go on
/// as they came are copied from the input message straight into the output batch.
struct LinkPort<In, Out, F> {
    rx: LinkReceiver<F>,
    tx: LinkSender<F>,
    wire: WireOps<In, Out>,
    idx: u32,
    name: String,
    me: Worker,
    /// The first link failure; the stream then winds down.
    error: Option<io::Error>,
    extra: Vec<libc::pollfd>,
}

impl<In, Out, F: AsFd> LinkPort<In, Out, F> {
    /// Waits until a link downstream has credit for one more record; `false` once the port
    /// failed.
    fn ready(&mut self) -> bool {
        if self.error.is_none()
            && let Err(e) = self.wait_room()
        {
            self.error = Some(e);
        }
        self.error.is_none()
    }

    fn wait_room(&mut self) -> io::Result<()> {
        loop {
            match self.tx.reserve()? {
                Commit::Ready => return Ok(()),
                Commit::NeedCredit => {
                    self.tx.flush()?;
                    self.rx.send_acks();
                    self.tx.wait_credit(&mut self.extra)?;
                }
            }
        }
    }

    /// Keeps the first failure.
    fn note(&mut self, r: io::Result<()>) {
        if let Err(e) = r
            && self.error.is_none()
        {
            self.error = Some(e);
        }
    }
}

impl<In, Out, F: AsFd> Port for LinkPort<In, Out, F> {
    type In = In;
    type Out = Out;
    /// The record itself: its bytes are still in the input message, and go from there
    /// straight into the output batch.
    type Pass = RecRef;
    type Held = RecRef;

    fn take(&mut self, vals: &mut VecDeque<In>) -> Next<RecRef, RecRef> {
        if self.error.is_some() {
            return Next::Stop;
        }
        let r = match self.rx.next() {
            Ok(Some(r)) => r,
            Ok(None) => return Next::Empty,
            Err(c) => {
                self.error = Some(io::Error::new(io::ErrorKind::InvalidData, c.what));
                return Next::Stop;
            }
        };
        match r.tag {
            TAG_ONE | TAG_MANY => {
                match record::decode(r.tag, self.rx.payload(&r), self.wire.decode_in) {
                    Ok(Body::One(v)) => vals.push_back(v),
                    Ok(Body::Many(vs)) => vals.extend(vs),
                    Ok(_) => {}
                    Err(message) => {
                        let e = codec_error(&self.name, r.seq, self.me, "decode", message);
                        return Next::Undecodable(Box::new(e), r);
                    }
                }
            }
            TAG_FAILED => return Next::Failed(r),
            TAG_CONSUMED => return Next::Consumed(r),
            _ => {}
        }
        self.rx.done(r);
        Next::Item
    }

    fn receive(&mut self) -> bool {
        if self.rx.finished() {
            return false;
        }
        self.extra.clear();
        self.tx.watch(&mut self.extra);
        match self.rx.fill(true, &mut self.extra) {
            Ok(true) => {
                let _ = self.tx.read_acks();
                if self.tx.has_requeued() {
                    let _ = self.tx.pump();
                }
            }
            Ok(false) => {}
            Err(c) => self.error = Some(io::Error::new(io::ErrorKind::InvalidData, c.what)),
        }
        self.extra.clear();
        true
    }

    fn done(&mut self, r: RecRef) {
        self.rx.done(r);
    }

    fn send(&mut self, seq: u64, body: Body<Out>) {
        if !self.ready() {
            return;
        }
        let (name, idx, me, enc) = (&self.name, self.idx, self.me, self.wire.encode_out);
        let r = self.tx.push(NO_TAG, |out| {
            let e = |m| codec_error(name, seq, me, "encode the output of", m);
            record::encode_or_fail(seq, &body, enc, out, idx, e);
        });
        self.note(r);
    }

    fn pass(&mut self, r: RecRef, seq: Option<u64>) {
        if self.ready() {
            let raw = self.rx.raw(&r);
            let res = self.tx.push(NO_TAG, |out| {
                let at = out.len();
                out.extend_from_slice(raw);
                if let Some(seq) = seq {
                    out[at..at + 8].copy_from_slice(&seq.to_le_bytes());
                }
            });
            self.note(res);
        }
        self.rx.done(r);
    }

    fn full(&self) -> bool {
        false
    }

    fn flush(&mut self) {
        if self.error.is_none() {
            let r = self.tx.flush();
            self.note(r);
        }
        self.rx.send_acks();
    }

    fn finish(&mut self) {
        if self.error.is_none() {
            let r = self.tx.finish();
            self.note(r);
        }
        self.rx.drain_acks();
    }
}

/// The error of an item that could not be encoded or decoded.
fn codec_error(stage: &str, item: u64, worker: Worker, what: &str, message: String) -> Error {
    Error::Codec {
        stage: stage.to_string(),
        item,
        worker,
        what: what.into(),
        message,
    }
}
