//! Bridges between the caller and process stages: the channel into a stage, the link
//! output that writes a thread's batches straight to a process stage's workers, the
//! dispatcher thread that does so for a stage fed by a thread stage, and the merger thread
//! that reads a process stage's outputs back into the caller.
//!
//! Between two pieces in the caller, items move as batches (`Vec<Rec<T>>`) on bounded
//! crossbeam channels; between a piece in the caller and a process stage, as link records
//! ([`crate::transport::link`]). Every item carries its sequence number end to end and is
//! exactly one record at every point, so the collector can restore order and account for
//! every item.

use std::any::Any;
use std::io;
use std::sync::Arc;

use crossbeam_channel::{Receiver, select};

use crate::batch::Batch;
use crate::caller::output::{IDLE_SERVICE, LinkPlan, Output};
use crate::caller::threads::Rt;
use crate::error::{Error, Worker};
use crate::os::fds::RtFd;
use crate::stage::{Body, Rec, Stage};
use crate::transport::link::{LinkReceiver, LinkSender, TAG_RUN};
use crate::transport::record;

pub(crate) fn input_channel<In: Send + 'static, Out: Send + 'static>(
    stage: &Stage<In, Out>,
    cap: usize,
) -> (Box<dyn Any + Send>, Box<dyn Any + Send>) {
    let (tx, rx) = crossbeam_channel::bounded::<Batch<In>>(cap);
    let split = if stage.opts.process {
        1
    } else {
        stage.opts.workers
    };
    (Box::new(Output::Chan { tx, split }), Box::new(rx))
}

/// An output writing straight to the workers of process stage `stage` (index `idx`).
pub(crate) fn link_output<In: Send + 'static, Out: Send + 'static>(
    stage: &Stage<In, Out>,
    idx: u32,
    links: Vec<RtFd>,
    plan: LinkPlan,
) -> Output<In> {
    let wire = stage.wire.expect("process stages have wire functions");
    Output::Links {
        tx: Box::new(LinkSender::new(links, plan.credit)),
        enc: wire.encode_in,
        enc_run: wire.encode_run_in,
        stage_idx: idx,
        stage: Arc::from(&*stage.name),
        runs: plan.runs,
    }
}

pub(crate) fn spawn_dispatcher<In: Send + 'static, Out: Send + 'static>(
    stage: &Stage<In, Out>,
    idx: u32,
    rx: Box<dyn Any + Send>,
    links: Vec<RtFd>,
    plan: LinkPlan,
    rt: &Rt,
) -> io::Result<()> {
    let rx = *rx
        .downcast::<Receiver<Batch<In>>>()
        .expect("input channel of this stage");
    let mut out = link_output(stage, idx, links, plan);
    let stop = rt.stop.clone();
    rt.threads.spawn(&format!("{}-in", stage.name), move || {
        loop {
            let batch = match rx.try_recv() {
                Ok(b) => b,
                Err(_) => {
                    if out.flush().is_err() {
                        return;
                    }
                    let got = loop {
                        select! {
                            recv(rx) -> r => break r.ok(),
                            recv(stop) -> _ => break None,
                            default(IDLE_SERVICE) => {
                                if out.service().is_err() {
                                    return;
                                }
                            }
                        }
                    };
                    match got {
                        Some(b) => b,
                        None => break,
                    }
                }
            };
            if out.send(batch, &stop).is_err() {
                return;
            }
        }
        if stop.try_recv() != Err(crossbeam_channel::TryRecvError::Disconnected) {
            out.finish();
        }
    })
}

/// The outcome of item `seq` whose output from stage `idx` could not be decoded.
fn undecodable<T>(stage: &str, idx: u32, seq: u64, message: String) -> Body<T> {
    Body::Failed(
        idx,
        Box::new(Error::Codec {
            stage: stage.to_string(),
            item: seq,
            worker: Worker::Process(std::process::id()),
            what: "decode the output of".into(),
            message,
        }),
    )
}

pub(crate) fn spawn_merger<In: Send + 'static, Out: Send + 'static>(
    stage: &Stage<In, Out>,
    _idx: u32,
    links: Vec<RtFd>,
    out: Box<dyn Any + Send>,
    rt: &Rt,
) -> io::Result<()> {
    let wire = stage.wire.expect("process stages have wire functions");
    let mut out = *out.downcast::<Output<Out>>().expect("output of this stage");
    let stop = rt.stop.clone();
    let shared = Arc::clone(&rt.shared);
    let name = stage.name.clone();
    rt.threads.spawn(&format!("{}-out", stage.name), move || {
        let mut rx = LinkReceiver::new(links);
        let mut extra = Vec::new();
        loop {
            if rx.finished() {
                break;
            }
            if let Err(c) = rx.fill(true, &mut extra)
                && !shared.report_corrupt(_idx, &mut rx, c, &name)
            {
                return;
            }
            let mut batch = Batch::default();
            loop {
                let r = match rx.next() {
                    Ok(Some(r)) => r,
                    Ok(None) => break,
                    Err(c) => {
                        if shared.report_corrupt(_idx, &mut rx, c, &name) {
                            continue;
                        }
                        return;
                    }
                };
                let failed = |seq, message| undecodable(&name, _idx, seq, message);
                let payload = rx.payload(&r);
                if r.tag == TAG_RUN {
                    (wire.decode_run_out)(payload, r.seq, &mut batch, &failed);
                } else {
                    let body = record::decode(r.tag, payload, wire.decode_out)
                        .unwrap_or_else(|message| failed(r.seq, message));
                    batch.recs().push(Rec { seq: r.seq, body });
                }
                rx.done(r);
            }
            if !batch.is_empty() && out.send(batch, &stop).is_err() {
                return;
            }
            rx.send_acks();
        }
        rx.drain_acks();
    })
}
