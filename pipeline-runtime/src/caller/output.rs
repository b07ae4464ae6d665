//! Where a piece in the caller sends its records: a channel to the next piece, or the links
//! to the workers of the next process stage.
//!
//! Every blocking receive or send on a channel also watches `stop`, a channel that is never
//! sent to: dropping its sender (when the pipeline is dropped) wakes them all. Threads
//! blocked on sockets wake when the processes on the other side are killed.

use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, select};

use crate::error::{Error, Worker};
use crate::os::fds::RtFd;
use crate::stage::Rec;
use crate::transport::link::{Commit, LinkSender};
use crate::transport::record::{self, Enc};

/// How often an idle sender reads death notices (see [`Output::service`]).
pub(crate) const IDLE_SERVICE: Duration = Duration::from_millis(20);

/// A batch of records between two pieces in the caller.
pub(crate) type Batch<T> = Vec<Rec<T>>;

/// The pipeline is stopping: the piece that got this should end quietly.
#[derive(Debug)]
pub(crate) struct Stopped;

/// Where a piece in the caller sends its records.
pub(crate) enum Output<T> {
    /// To the next piece in the caller (split into `split` parts for parallel workers).
    Chan { tx: Sender<Batch<T>>, split: usize },
    /// Straight to the workers of the next (process) stage.
    Links {
        tx: Box<LinkSender<RtFd>>,
        enc: Enc<T>,
        stage_idx: u32,
        stage: Arc<str>,
    },
}

impl<T> Output<T> {
    pub(crate) fn try_clone(&self) -> Option<Output<T>> {
        match self {
            Output::Chan { tx, split } => Some(Output::Chan {
                tx: tx.clone(),
                split: *split,
            }),
            Output::Links { .. } => None,
        }
    }

    pub(crate) fn send(&mut self, mut batch: Batch<T>, stop: &Receiver<()>) -> Result<(), Stopped> {
        match self {
            Output::Chan { tx, split } => {
                let parts = (*split).min(batch.len()).max(1);
                let per = batch.len().div_ceil(parts).max(1);
                while batch.len() > per {
                    let rest = batch.split_off(per);
                    send_chan(tx, batch, stop)?;
                    batch = rest;
                }
                send_chan(tx, batch, stop)
            }
            Output::Links {
                tx,
                enc,
                stage_idx,
                stage,
            } => {
                for rec in batch {
                    loop {
                        match tx.reserve().map_err(|_| Stopped)? {
                            Commit::Ready => break,
                            Commit::NeedCredit => {
                                tx.flush().map_err(|_| Stopped)?;
                                tx.wait_credit(&mut Vec::new()).map_err(|_| Stopped)?;
                            }
                        }
                    }
                    tx.push(crate::transport::link::NO_TAG, |out| {
                        let e = |message| Error::Codec {
                            stage: stage.to_string(),
                            item: rec.seq,
                            worker: Worker::Process(std::process::id()),
                            what: "encode the input of".into(),
                            message,
                        };
                        record::encode_or_fail(rec.seq, &rec.body, *enc, out, *stage_idx, e);
                    })
                    .map_err(|_| Stopped)?;
                }
                Ok(())
            }
        }
    }

    /// Reads acks and death notices and resends requeued records, without blocking: what an
    /// idle sender must do now and then, or the items a dead worker held would wait for it.
    pub(crate) fn service(&mut self) -> Result<(), Stopped> {
        match self {
            Output::Chan { .. } => Ok(()),
            Output::Links { tx, .. } => {
                tx.read_acks().map_err(|_| Stopped)?;
                if tx.has_requeued() {
                    tx.pump().map_err(|_| Stopped)?;
                    tx.flush().map_err(|_| Stopped)?;
                }
                Ok(())
            }
        }
    }

    pub(crate) fn flush(&mut self) -> Result<(), Stopped> {
        match self {
            Output::Chan { .. } => Ok(()),
            Output::Links { tx, .. } => tx.flush().map_err(|_| Stopped),
        }
    }

    /// End of input for this output.
    pub(crate) fn finish(self) {
        if let Output::Links { mut tx, .. } = self {
            let _ = tx.finish();
        }
    }
}

pub(crate) fn send_chan<T>(
    tx: &Sender<Batch<T>>,
    batch: Batch<T>,
    stop: &Receiver<()>,
) -> Result<(), Stopped> {
    select! {
        send(tx, batch) -> r => r.map_err(|_| Stopped),
        recv(stop) -> _ => Err(Stopped),
    }
}

pub(crate) fn recv_chan<T>(rx: &Receiver<Batch<T>>, stop: &Receiver<()>) -> Option<Batch<T>> {
    select! {
        recv(rx) -> r => r.ok(),
        recv(stop) -> _ => None,
    }
}
