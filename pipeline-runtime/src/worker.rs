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

pub(crate) fn run<In: Send + 'static, Out: Send + 'static>(stage: &Stage<In, Out>, ctx: WorkerCtx) -> io::Result<WorkerEnd> {
    let WorkerCtx { idx, ins, outs, credit, epoch, slot, give_up, ctl } = ctx;
    let mut f = if give_up.is_some() {
        Box::new(|_: In, _: &mut Emit<Out>| Ok(())) as crate::stage::WorkerFn<In, Out>
    } else {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (stage.make)())) {
            Ok(Ok(f)) => f,
            Ok(Err(message)) => return init_failed(&ctl, &message),
            Err(p) => return init_failed(&ctl, &format!("panicked: {}", crate::error::panic_message(p.as_ref()))),
        }
    };
    let _ = sys::send(ctl.as_fd(), &[CTL_INIT_OK], false);
    let mut restart = false;
    let wire = stage.wire.expect("process stages have wire functions");
    let me = Worker::Process(std::process::id());
    let (mut rx, mut tx) = if epoch == 0 {
        (LinkReceiver::new(ins), LinkSender::new(outs, credit))
    } else {
        (LinkReceiver::replacement(ins, epoch), LinkSender::replacement(outs, credit, epoch)?)
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
        let Some(r) = rx.next().map_err(corrupt)? else { continue };
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
                    restart = stage.opts.stateful && matches!(&out, Body::Failed(_, e) if matches!(**e, Error::Panicked { .. }));
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
