//! The loop of a worker process: read records from the previous stage, run the stage
//! function, write the outputs to the next stage, ack what is done.
//!
//! Runs in a process forked by the supervisor (single-threaded), after the runtime's first
//! steps (see [`crate::supervisor`]). A record that is already a failure or a drop passes
//! through unchanged, byte for byte. Acks go upstream only after the outputs of the acked
//! records were flushed downstream, so at every moment each item is held by exactly one
//! side of a link.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::Ordering;

use crate::error::{Error, Worker};
use crate::link::{Commit, LinkReceiver, LinkSender, TAG_MANY, TAG_ONE};
use crate::record;
use crate::stage::{Body, Emit, Stage, apply};
use crate::sys::{self, SlotState};

/// Records processed between two flush-and-ack points when the local queue is long.
const ACK_EVERY: usize = 512;

/// What a worker process gets from the supervisor.
pub(crate) struct WorkerCtx {
    pub idx: u32,
    pub ins: Vec<OwnedFd>,
    pub outs: Vec<OwnedFd>,
    pub credit: usize,
    /// 0 for the first worker of a slot, then one more per replacement.
    pub epoch: u32,
    pub slot: &'static SlotState,
    /// Set for the stand-in of a stage past its restart budget: every item fails with it.
    pub give_up: Option<GiveUp>,
    /// The control socket to the supervisor.
    pub ctl: OwnedFd,
    /// This worker's position in its stage, and the stage's number of workers.
    pub position: usize,
    pub of: usize,
}

/// Control messages from a worker to the supervisor.
pub(crate) const CTL_FINISHED: u8 = 1;
pub(crate) const CTL_INIT_OK: u8 = 2;
pub(crate) const CTL_INIT_FAILED: u8 = 3;

/// Exit code of a worker that asks to be replaced (a panic in a stage with `init` state).
pub(crate) const EXIT_RESTART: i32 = 123;

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

pub(crate) fn run<In: Send + 'static, Out: Send + 'static>(
    stage: &Stage<In, Out>,
    ctx: WorkerCtx,
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
        ..
    } = ctx;
    let mut f = if give_up.is_some() {
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
    let _ = sys::send(ctl.as_fd(), &[CTL_INIT_OK], false);
    let mut restart = false;
    let wire = stage.wire.expect("process stages have wire functions");
    let me = Worker::Process(std::process::id());
    let (mut rx, mut tx) = if epoch == 0 {
        (LinkReceiver::new(ins), LinkSender::new(outs, credit))
    } else {
        (
            LinkReceiver::replacement(ins, epoch),
            LinkSender::replacement(outs, credit, epoch)?,
        )
    };
    let mut emit = Emit::new();
    let mut extra = Vec::new();
    let mut since_ack = 0usize;
    let corrupt = |c: crate::link::Corrupt| io::Error::new(io::ErrorKind::InvalidData, c.0);
    loop {
        if rx.is_empty() {
            tx.flush()?;
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
            if rx.fill(true, &mut extra).map_err(corrupt)? {
                tx.read_acks()?;
            }
            extra.clear();
            continue;
        }
        let Some(r) = rx.next().map_err(corrupt)? else {
            continue;
        };
        loop {
            match tx.reserve()? {
                Commit::Ready => break,
                Commit::NeedCredit => {
                    tx.flush()?;
                    rx.send_acks();
                    tx.wait_credit(&mut extra)?;
                }
            }
        }
        slot.since.store(sys::now_ns(), Ordering::Relaxed);
        slot.running.store(r.seq + 1, Ordering::Release);
        if let (Some(g), true) = (&give_up, r.tag == TAG_ONE || r.tag == TAG_MANY) {
            let e = Error::GaveUp {
                stage: stage.name.to_string(),
                item: r.seq,
                restarts: g.restarts,
                secs: g.secs,
                cause: g.cause.clone(),
            };
            tx.push(r.seq, |out| record::encode_failed(r.seq, idx, &e, out))?;
        } else if r.tag == TAG_ONE || r.tag == TAG_MANY {
            let body = match record::decode(r.tag, rx.payload(&r), wire.decode_in) {
                Ok(body) => {
                    let out = apply(&mut f, idx, &stage.name, me, r.seq, body, &mut emit);
                    restart = stage.opts.stateful
                        && matches!(&out, Body::Failed(_, e) if matches!(**e, Error::Panicked { .. }));
                    out
                }
                Err(message) => Body::Failed(
                    idx,
                    Box::new(Error::Codec {
                        stage: stage.name.to_string(),
                        item: r.seq,
                        worker: me,
                        what: "decode".into(),
                        message,
                    }),
                ),
            };
            tx.push(r.seq, |out| {
                if let Err(message) = record::encode(r.seq, &body, wire.encode_out, out) {
                    let e = Error::Codec {
                        stage: stage.name.to_string(),
                        item: r.seq,
                        worker: me,
                        what: "encode the output of".into(),
                        message,
                    };
                    record::encode_failed(r.seq, idx, &e, out);
                }
            })?;
        } else {
            tx.push(r.seq, |out| out.extend_from_slice(rx.raw(&r)))?;
        }
        slot.running.store(0, Ordering::Release);
        rx.done(r);
        if restart {
            // The state may be half-updated: hand over what is done, then be replaced.
            tx.flush()?;
            wait_acked(&mut tx)?;
            rx.send_acks();
            rx.drain_acks();
            return Ok(WorkerEnd::Restart);
        }
        since_ack += 1;
        if since_ack >= ACK_EVERY {
            // Keep the sender's credit flowing while a long local queue is processed.
            since_ack = 0;
            tx.flush()?;
            rx.send_acks();
        }
    }
    tx.finish()?;
    rx.drain_acks();
    let _ = sys::send(ctl.as_fd(), &[CTL_FINISHED], false);
    Ok(WorkerEnd::Finished)
}

fn init_failed(ctl: &OwnedFd, message: &str) -> io::Result<WorkerEnd> {
    let mut m = vec![CTL_INIT_FAILED];
    m.extend_from_slice(&message.as_bytes()[..message.len().min(60_000)]);
    let _ = sys::send(ctl.as_fd(), &m, false);
    Ok(WorkerEnd::InitFailed)
}

/// Waits until everything sent downstream was acked (so nothing needs requeueing when
/// this worker goes).
fn wait_acked(tx: &mut LinkSender<OwnedFd>) -> io::Result<()> {
    let mut extra = Vec::new();
    while tx.unacked() > 0 || tx.has_requeued() {
        tx.wait_progress(&mut extra)?;
    }
    Ok(())
}

/// A process worker of a `stream` stage (see [`crate::stream`]).
fn run_stream<In: Send + 'static, Out: Send + 'static>(
    stage: &Stage<In, Out>,
    f: &crate::stage::StreamFn<In, Out>,
    ctx: WorkerCtx,
) -> io::Result<WorkerEnd> {
    let WorkerCtx {
        idx,
        ins,
        outs,
        credit,
        epoch,
        ctl,
        position,
        of,
        ..
    } = ctx;
    let (rx, tx) = if epoch == 0 {
        (LinkReceiver::new(ins), LinkSender::new(outs, credit))
    } else {
        (
            LinkReceiver::replacement(ins, epoch),
            LinkSender::replacement(outs, credit, epoch)?,
        )
    };
    let _ = sys::send(ctl.as_fd(), &[CTL_INIT_OK], false);
    let me = Worker::Process(std::process::id());
    let io = std::rc::Rc::new(std::cell::RefCell::new(LinkPull::<In, Out> {
        rx,
        tx,
        wire: stage.wire.expect("process stages have wire functions"),
        vals: std::collections::VecDeque::new(),
        // A replacement numbers its outputs apart from those of the workers before it.
        next_seq: ((epoch as u64) << 40) + position as u64,
        stride: of as u64,
        consumed: 0,
        position: 0,
        idx,
        name: stage.name.to_string(),
        me,
        error: None,
        extra: Vec::new(),
    }));
    crate::stream::run(f, io.clone(), &stage.name, me);
    let mut io = io.borrow_mut();
    if let Some(e) = io.error.take() {
        return Err(e);
    }
    let _ = sys::send(ctl.as_fd(), &[CTL_FINISHED], false);
    Ok(WorkerEnd::Finished)
}

struct LinkPull<In, Out> {
    rx: LinkReceiver<OwnedFd>,
    tx: LinkSender<OwnedFd>,
    wire: crate::stage::WireOps<In, Out>,
    vals: std::collections::VecDeque<In>,
    next_seq: u64,
    stride: u64,
    consumed: u64,
    position: u64,
    idx: u32,
    name: String,
    me: Worker,
    /// The first link failure; the loop then winds down.
    error: Option<io::Error>,
    extra: Vec<libc::pollfd>,
}

impl<In, Out> LinkPull<In, Out> {
    fn send(&mut self, seq: u64, write: impl FnOnce(&mut Vec<u8>)) {
        if self.error.is_some() {
            return;
        }
        let r = (|| {
            loop {
                match self.tx.reserve()? {
                    Commit::Ready => break,
                    Commit::NeedCredit => {
                        self.tx.flush()?;
                        self.rx.send_acks();
                        self.tx.wait_credit(&mut self.extra)?;
                    }
                }
            }
            self.tx.push(seq, write)
        })();
        if let Err(e) = r {
            self.error = Some(e);
        }
    }

    fn new_seq(&mut self) -> u64 {
        let s = self.next_seq;
        self.next_seq += self.stride;
        s
    }

    fn flush(&mut self) {
        if self.consumed > 0 {
            let n = std::mem::take(&mut self.consumed);
            let idx = self.idx;
            self.send(crate::link::NO_SEQ, |out| {
                let _ = record::encode::<Out>(
                    crate::link::NO_SEQ,
                    &Body::Consumed(idx, n),
                    |_, _| Ok(()),
                    out,
                );
            });
        }
        if self.error.is_none()
            && let Err(e) = self.tx.flush()
        {
            self.error = Some(e);
        }
        self.rx.send_acks();
    }
}

impl<In, Out> crate::stage::Pull<In> for LinkPull<In, Out> {
    fn pull(&mut self) -> Option<In> {
        loop {
            if let Some(v) = self.vals.pop_front() {
                return Some(v);
            }
            if self.error.is_some() {
                return None;
            }
            if self.rx.is_empty() {
                self.flush();
                if self.rx.finished() {
                    return None;
                }
                let mut extra = std::mem::take(&mut self.extra);
                extra.clear();
                self.tx.watch(&mut extra);
                match self.rx.fill(true, &mut extra) {
                    Ok(true) => {
                        let _ = self.tx.read_acks();
                        if self.tx.has_requeued() {
                            let _ = self.tx.pump();
                        }
                    }
                    Ok(false) => {}
                    Err(c) => self.error = Some(io::Error::new(io::ErrorKind::InvalidData, c.0)),
                }
                extra.clear();
                self.extra = extra;
                continue;
            }
            let r = match self.rx.next() {
                Ok(Some(r)) => r,
                Ok(None) => continue,
                Err(c) => {
                    self.error = Some(io::Error::new(io::ErrorKind::InvalidData, c.0));
                    return None;
                }
            };
            match r.tag {
                TAG_ONE | TAG_MANY => {
                    match record::decode(r.tag, self.rx.payload(&r), self.wire.decode_in) {
                        Ok(Body::One(v)) => self.vals.push_back(v),
                        Ok(Body::Many(vs)) => self.vals.extend(vs),
                        Ok(_) => {}
                        Err(message) => {
                            let e = Error::Codec {
                                stage: self.name.clone(),
                                item: r.seq,
                                worker: self.me,
                                what: "decode".into(),
                                message,
                            };
                            let (seq, idx) = (self.new_seq(), self.idx);
                            self.send(seq, |out| record::encode_failed(seq, idx, &e, out));
                        }
                    }
                }
                crate::link::TAG_FAILED => {
                    // Failed before this stage: pass it on under a new number.
                    let seq = self.new_seq();
                    let raw = self.rx.raw(&r).to_vec();
                    self.send(seq, |out| {
                        let at = out.len();
                        out.extend_from_slice(&raw);
                        out[at..at + 8].copy_from_slice(&seq.to_le_bytes());
                    });
                }
                crate::link::TAG_CONSUMED => {
                    let raw = self.rx.raw(&r).to_vec();
                    self.send(r.seq, |out| out.extend_from_slice(&raw));
                    self.rx.done(r);
                    continue;
                }
                _ => {}
            }
            self.rx.done(r);
            self.consumed += 1;
            self.position += 1;
        }
    }
}

impl<In, Out> crate::stream::StreamIo<In, Out> for LinkPull<In, Out> {
    fn emit(&mut self, value: Out) {
        let seq = self.new_seq();
        let (enc, idx, me, name) = (self.wire.encode_out, self.idx, self.me, self.name.clone());
        self.send(seq, |out| {
            if let Err(message) = record::encode(seq, &Body::One(value), enc, out) {
                let e = Error::Codec {
                    stage: name,
                    item: seq,
                    worker: me,
                    what: "encode the output of".into(),
                    message,
                };
                record::encode_failed(seq, idx, &e, out);
            }
        });
    }

    fn fail(&mut self, e: Error) {
        let (seq, idx) = (self.new_seq(), self.idx);
        self.send(seq, |out| record::encode_failed(seq, idx, &e, out));
    }

    fn position(&self) -> u64 {
        self.position
    }

    fn finish(&mut self) {
        self.flush();
        if self.error.is_none()
            && let Err(e) = self.tx.finish()
        {
            self.error = Some(e);
        }
        self.rx.drain_acks();
    }
}
