//! The loop of a worker process: read records from the previous stage, run the stage
//! function, write the outputs to the next stage, ack what is done.
//!
//! Runs in a process forked by the supervisor (single-threaded), after the runtime's first
//! steps (see [`crate::process::supervisor`]). A record that is already a failure or a drop passes
//! through unchanged, byte for byte. Acks go upstream only after the outputs of the acked
//! records were flushed downstream, so at every moment each item is held by exactly one
//! side of a link.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;
use std::os::fd::AsFd;
use std::rc::Rc;
use std::sync::atomic::Ordering;

use crate::error::{Error, Worker};
use crate::os::sys::{self, SlotState};
use crate::process::protocol::{self, WorkerMsg};
use crate::stage::{Body, Emit, PipeRole, Stage, StreamFn, WireOps, apply};
use crate::stream::{Next, Port, StreamPull};
use crate::transport::link::{
    Commit, LinkReceiver, LinkSender, NO_TAG, RecRef, TAG_CONSUMED, TAG_FAILED, TAG_MANY, TAG_ONE,
};
use crate::transport::pipe::{End, PipeReader, PipeWriter};
use crate::transport::record;

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

/// Why a stage gave up (see [`Error::GaveUp`]).
#[derive(Debug, Clone)]
pub(crate) struct GiveUp {
    pub restarts: u32,
    pub secs: f64,
    pub cause: String,
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

/// Sends every batched output, then says (for the restart budget) that the outputs of the
/// first `finished` items have left this worker.
fn flush_sent<F: AsFd>(
    tx: &mut LinkSender<F>,
    slot: &crate::os::sys::SlotState,
    finished: u64,
) -> io::Result<()> {
    tx.flush()?;
    slot.sent.store(finished, Ordering::Relaxed);
    Ok(())
}

pub(crate) fn run<In: Send + 'static, Out: Send + 'static, F: AsFd + 'static>(
    stage: &Stage<In, Out>,
    ctx: WorkerCtx<F>,
) -> io::Result<WorkerEnd> {
    if let (Some(f), None) = (&stage.stream, &ctx.give_up) {
        let f = std::sync::Arc::clone(f);
        return run_stream(stage, &*f, ctx);
    }
    let WorkerCtx {
        idx,
        ins,
        outs,
        credit,
        epoch,
        slot,
        give_up,
        ctl,
        stream,
        resync_inputs: ctx_resync,
        position,
        in_epochs,
        ..
    } = ctx;
    if ctl.is_some() {
        crate::os::current::set_slot(slot);
        *OUTPUT_FDS.lock().unwrap_or_else(|p| p.into_inner()) = outs
            .iter()
            .map(|f| std::os::fd::AsRawFd::as_raw_fd(&f.as_fd()))
            .collect();
    }
    let mut f = if give_up.is_some() || stage.pipe.is_some() {
        Box::new(|_: In, _: &mut Emit<Out>| Ok(())) as crate::stage::WorkerFn<In, Out>
    } else {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (stage.make)())) {
            Ok(Ok(f)) => f,
            Ok(Err(message)) => return init_failed(&ctl, &message),
            Err(p) => {
                return init_failed(
                    &ctl,
                    &format!("panicked: {}", crate::error::panic_message(p.as_ref())),
                );
            }
        }
    };
    tell(&ctl, &WorkerMsg::InitOk);
    let mut restart = false;
    // An item is acked upstream only once the next stage acked what this worker made of
    // it: until the item leaves the process stages, its sender still holds it, so any death
    // along the way (even two) fails or requeues it upstream, and nothing is lost. Each
    // record pushed downstream carries the tag of the record it came from.
    let credit_acked = |rx: &mut LinkReceiver<F>, tx: &mut LinkSender<F>| {
        for t in tx.take_acked() {
            rx.credit_tag(t);
        }
    };
    let wire = stage.wire.expect("process stages have wire functions");
    let me = if ctl.is_some() {
        Worker::Process(std::process::id())
    } else {
        Worker::Thread(position)
    };
    let resync = ctx_resync;
    let (mut rx, mut tx) = if epoch == 0 {
        (LinkReceiver::new(ins), LinkSender::new(outs, credit))
    } else {
        (
            if resync {
                LinkReceiver::replacement(ins, epoch, &in_epochs)
            } else {
                LinkReceiver::new(ins)
            },
            LinkSender::replacement(outs, credit, epoch)?,
        )
    };
    let mut emit = Emit::new();
    let mut extra = Vec::new();
    let mut since_ack = 0usize;
    let mut finished = 0u64;
    // Start times are only read by the supervisor's timeout check.
    let timed = stage.opts.timeout.is_some();
    loop {
        if rx.is_empty() {
            flush_sent(&mut tx, slot, finished)?;
            tx.read_acks()?;
            credit_acked(&mut rx, &mut tx);
            rx.send_acks();
            if tx.has_requeued() {
                // A worker downstream died: resend what it held before anything else.
                tx.wait_credit(&mut extra)?;
                continue;
            }
            if rx.finished() {
                break;
            }
            extra.clear();
            tx.watch(&mut extra);
            match rx.fill(true, &mut extra) {
                Ok(true) => tx.read_acks()?,
                Ok(false) => {}
                Err(c) => report_corrupt(&ctl, &mut rx, c)?,
            }
            extra.clear();
            continue;
        }
        let r = match rx.next() {
            Ok(Some(r)) => r,
            Ok(None) => continue,
            Err(c) => {
                report_corrupt(&ctl, &mut rx, c)?;
                continue;
            }
        };
        let tag = LinkReceiver::<F>::origin(&r);
        let small = r.small;
        loop {
            match tx.reserve()? {
                Commit::Ready => break,
                Commit::NeedCredit => {
                    flush_sent(&mut tx, slot, finished)?;
                    credit_acked(&mut rx, &mut tx);
                    rx.send_acks();
                    tx.wait_credit(&mut extra)?;
                }
            }
        }
        if timed {
            slot.since.store(sys::now_ns(), Ordering::Relaxed);
        }
        slot.running.store(r.seq + 1, Ordering::Release);
        // Whether the stage function ran on this record and succeeded (restart budget).
        let mut ran_ok = false;
        if let (Some(g), true) = (&give_up, r.tag == TAG_ONE || r.tag == TAG_MANY) {
            let e = Error::GaveUp {
                stage: stage.name.to_string(),
                item: r.seq,
                restarts: g.restarts,
                secs: g.secs,
                cause: g.cause.clone(),
            };
            tx.push(tag, |out| record::encode_failed(r.seq, idx, &e, out))?;
        } else if let Some(PipeRole::Producer(pf)) = &stage.pipe {
            // Forward the item first, so the consumer reads while we write.
            tx.push(tag, |out| out.extend_from_slice(rx.raw(&r)))?;
            flush_sent(&mut tx, slot, finished)?;
            if (r.tag == TAG_ONE || r.tag == TAG_MANY)
                && let Ok(body) = record::decode(r.tag, rx.payload(&r), wire.decode_in)
            {
                let fd = stream.as_ref().expect("a producer has its stream").as_fd();
                for x in elements(body) {
                    produce(&**pf, &stage.name, me, r.seq, x, fd)?;
                }
            }
        } else if let Some(PipeRole::Consumer(cf)) = &stage.pipe {
            let body = if r.tag == TAG_ONE || r.tag == TAG_MANY {
                match record::decode(r.tag, rx.payload(&r), wire.decode_in) {
                    Ok(body) => {
                        let fd = stream.as_ref().expect("a consumer has its stream").as_fd();
                        consume(&**cf, idx, &stage.name, me, r.seq, body, fd, &mut emit)?
                    }
                    Err(message) => Body::Failed(
                        idx,
                        Box::new(codec_error(&stage.name, r.seq, me, "decode", message)),
                    ),
                }
            } else {
                Body::Dropped(u32::MAX)
            };
            if matches!(body, Body::Dropped(u32::MAX)) {
                tx.push(tag, |out| out.extend_from_slice(rx.raw(&r)))?;
            } else {
                tx.push(tag, |out| {
                    let e = |m| codec_error(&stage.name, r.seq, me, "encode the output of", m);
                    record::encode_or_fail(r.seq, &body, wire.encode_out, out, idx, e);
                })?;
            }
        } else if r.tag == TAG_ONE || r.tag == TAG_MANY {
            let body = match record::decode(r.tag, rx.payload(&r), wire.decode_in) {
                Ok(body) => {
                    let out = apply(&mut f, idx, &stage.name, me, r.seq, body, &mut emit);
                    ran_ok = !matches!(out, Body::Failed(..));
                    restart = stage.opts.stateful
                        && matches!(&out, Body::Failed(_, e) if matches!(**e, Error::Panicked { .. }));
                    out
                }
                Err(message) => Body::Failed(
                    idx,
                    Box::new(codec_error(&stage.name, r.seq, me, "decode", message)),
                ),
            };
            tx.push(tag, |out| {
                let e = |m| codec_error(&stage.name, r.seq, me, "encode the output of", m);
                record::encode_or_fail(r.seq, &body, wire.encode_out, out, idx, e);
            })?;
        } else {
            tx.push(tag, |out| out.extend_from_slice(rx.raw(&r)))?;
        }
        slot.running.store(0, Ordering::Release);
        slot.panic_len.store(0, Ordering::Relaxed);
        if ran_ok {
            finished += 1;
            slot.done.store(finished, Ordering::Relaxed);
        }
        rx.release(r);
        if small {
            flush_sent(&mut tx, slot, finished)?;
        }
        if restart {
            // The state may be half-updated: hand over what is done, then be replaced.
            flush_sent(&mut tx, slot, finished)?;
            wait_acked(&mut tx)?;
            credit_acked(&mut rx, &mut tx);
            rx.send_acks();
            rx.drain_acks();
            return Ok(WorkerEnd::Restart);
        }
        since_ack += 1;
        if since_ack >= ACK_EVERY {
            // Keep the sender's credit flowing while a long local queue is processed.
            since_ack = 0;
            flush_sent(&mut tx, slot, finished)?;
            tx.read_acks()?;
            credit_acked(&mut rx, &mut tx);
            rx.send_acks();
        }
    }
    tx.finish()?;
    credit_acked(&mut rx, &mut tx);
    rx.drain_acks();
    tell(&ctl, &WorkerMsg::Finished);
    Ok(WorkerEnd::Finished)
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
    let failure = crate::stage::guarded(stage, me, seq, || pf(x, &mut w));
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
        let consumer_failure = crate::stage::guarded(stage, me, seq, || cf(x, &mut reader, emit));
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
    ctx: WorkerCtx<F>,
) -> io::Result<WorkerEnd> {
    let (rx, tx) = if ctx.epoch == 0 {
        (
            LinkReceiver::new(ctx.ins),
            LinkSender::new(ctx.outs, ctx.credit),
        )
    } else {
        (
            LinkReceiver::replacement(ctx.ins, ctx.epoch, &ctx.in_epochs),
            LinkSender::replacement(ctx.outs, ctx.credit, ctx.epoch)?,
        )
    };
    tell(&ctx.ctl, &WorkerMsg::InitOk);
    let me = if ctx.ctl.is_some() {
        Worker::Process(std::process::id())
    } else {
        Worker::Thread(ctx.position)
    };
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
