//! The loop of a worker process: read records from the previous stage, run the stage
//! function, write the outputs to the next stage, ack what is done.
//!
//! Runs in a process forked by the supervisor (single-threaded), after the runtime's first
//! steps (see [`crate::supervisor`]). A record that is already a failure or a drop passes
//! through unchanged, byte for byte. Acks go upstream only after the outputs of the acked
//! records were flushed downstream, so at every moment each item is held by exactly one
//! side of a link.

use std::io;
use std::os::fd::OwnedFd;

use crate::error::{Error, Worker};
use crate::link::{Commit, LinkReceiver, LinkSender, TAG_MANY, TAG_ONE};
use crate::record;
use crate::stage::{Body, Emit, Stage, apply};

/// Records processed between two flush-and-ack points when the local queue is long.
const ACK_EVERY: usize = 512;

pub(crate) fn run<In: Send + 'static, Out: Send + 'static>(
    stage: &Stage<In, Out>,
    idx: u32,
    ins: Vec<OwnedFd>,
    outs: Vec<OwnedFd>,
    credit: usize,
) -> io::Result<()> {
    let wire = stage.wire.expect("process stages have wire functions");
    let me = Worker::Process(std::process::id());
    let mut rx = LinkReceiver::new(ins);
    let mut tx = LinkSender::new(outs, credit);
    let mut emit = Emit::new();
    let mut extra = Vec::new();
    let mut since_ack = 0usize;
    let corrupt = |c: crate::link::Corrupt| io::Error::new(io::ErrorKind::InvalidData, c.0);
    loop {
        if rx.is_empty() {
            tx.flush()?;
            rx.send_acks();
            if rx.finished() {
                break;
            }
            rx.fill(true, &mut extra).map_err(corrupt)?;
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
        if r.tag == TAG_ONE || r.tag == TAG_MANY {
            let body = match record::decode(r.tag, rx.payload(&r), wire.decode_in) {
                Ok(body) => apply(&*stage.f, idx, &stage.name, me, r.seq, body, &mut emit),
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
        rx.done(r);
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
    Ok(())
}
