//! Where a piece in the caller sends its records: a channel to the next piece, or the links
//! to the workers of the next process stage.
//!
//! Every blocking receive or send on a channel also watches `stop`, a channel that is never
//! sent to: dropping its sender (when the pipeline is dropped) wakes them all. Threads
//! blocked on sockets wake when the processes on the other side are killed.

use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TryRecvError, TrySendError, select};
use crossbeam_utils::Backoff;

use crate::os::fds::RtFd;
use crate::transport::link::{Commit, LinkSender, NO_TAG};
use crate::transport::record::{self, Enc, Items, RunEnc};
use crate::transport::run::RUN_MIN;

/// How often an idle sender reads death notices (see [`Output::service`]).
pub(crate) const IDLE_SERVICE: Duration = Duration::from_millis(20);

use crate::batch::Batch;

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
        /// `enc` over a run, inlined (see [`record::encode_run`]).
        enc_run: RunEnc<T>,
        stage_idx: u32,
        stage: Arc<str>,
        /// Consecutive items travel as runs (see [`crate::transport::run`]).
        runs: bool,
    },
}

/// How the caller sends to a process stage: the credit of each link, and whether items
/// may travel as runs (see `Kinds::runs`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct LinkPlan {
    pub credit: usize,
    pub runs: bool,
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

    pub(crate) fn send(
        &mut self,
        batch: impl Into<Batch<T>>,
        stop: &Receiver<()>,
    ) -> Result<(), Stopped> {
        let batch = batch.into();
        if let Output::Links { runs: true, tx, .. } = self
            && batch.len() >= RUN_MIN * tx.width()
        {
            return self.send_runs(batch);
        }
        self.send_records(batch, stop)
    }

    /// Sends `batch` with a record per item (submitted work items go this way: each
    /// one's result is passed on as soon as it is done, and they spread over the workers
    /// one by one).
    pub(crate) fn send_records(
        &mut self,
        batch: impl Into<Batch<T>>,
        stop: &Receiver<()>,
    ) -> Result<(), Stopped> {
        let mut batch = batch.into();
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
                ..
            } => {
                for rec in batch {
                    ready(tx)?;
                    tx.push(NO_TAG, |out| {
                        let e = record::input_error(stage, rec.seq);
                        record::encode_or_fail(rec.seq, &rec.body, *enc, out, *stage_idx, e);
                    })
                    .map_err(|_| Stopped)?;
                }
                Ok(())
            }
        }
    }

    /// Sends `batch` to a process stage as runs of consecutive items, each as long as the
    /// chosen link's credit and [`RUN_BYTES`](crate::transport::run::RUN_BYTES) allow; a large item goes in a run of its own.
    fn send_runs(&mut self, batch: Batch<T>) -> Result<(), Stopped> {
        let Output::Links {
            tx,
            enc,
            enc_run,
            stage_idx,
            stage,
            ..
        } = self
        else {
            unreachable!("send_runs on links")
        };
        let items = match &batch {
            Batch::Recs(recs) => Items::Recs(recs),
            Batch::Dense { first, items } => Items::Values(*first, items),
        };
        // A batch is shared among the stage's workers (one run each, to the least loaded).
        let share = items.len().div_ceil(tx.width());
        let mut i = 0;
        while i < items.len() {
            ready(tx)?;
            let rest = items.from(i);
            let mut took = 1;
            match rest {
                Items::Recs(recs) if !record::runnable(&recs[0].body) => tx.push(NO_TAG, |out| {
                    let (r, e) = (&recs[0], record::input_error(stage, recs[0].seq));
                    record::encode_or_fail(r.seq, &r.body, *enc, out, *stage_idx, e);
                }),
                _ => {
                    let room = tx.room().min(share);
                    let cx = (*stage_idx, &**stage);
                    tx.push(NO_TAG, |out| took = enc_run(out, rest, room, cx))
                }
            }
            .map_err(|_| Stopped)?;
            i += took;
        }
        Ok(())
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

/// Waits until a link has credit for the next record.
fn ready(tx: &mut LinkSender<RtFd>) -> Result<(), Stopped> {
    loop {
        match tx.reserve().map_err(|_| Stopped)? {
            Commit::Ready => return Ok(()),
            Commit::NeedCredit => {
                tx.flush().map_err(|_| Stopped)?;
                tx.wait_credit(&mut Vec::new()).map_err(|_| Stopped)?;
            }
        }
    }
}

/// Sends `batch` on `tx`, or `Stopped` once the pipeline stops. Like a channel's own
/// `send`, it retries a full channel a few times (spinning, then yielding) before it
/// sleeps: a stage that waits microseconds for its neighbour should not pay a futex
/// wait and wake for it (a `select!` alone sleeps at once).
pub(crate) fn send_chan<T>(
    tx: &Sender<Batch<T>>,
    mut batch: Batch<T>,
    stop: &Receiver<()>,
) -> Result<(), Stopped> {
    let backoff = Backoff::new();
    while !backoff.is_completed() {
        match tx.try_send(batch) {
            Ok(()) => return Ok(()),
            Err(TrySendError::Disconnected(_)) => return Err(Stopped),
            Err(TrySendError::Full(b)) => batch = b,
        }
        backoff.snooze();
    }
    select! {
        send(tx, batch) -> r => r.map_err(|_| Stopped),
        recv(stop) -> _ => Err(Stopped),
    }
}

/// The next batch from `rx`, or `None` at its end or once the pipeline stops (retrying an
/// empty channel before it sleeps, as [`send_chan`]).
pub(crate) fn recv_chan<T>(rx: &Receiver<Batch<T>>, stop: &Receiver<()>) -> Option<Batch<T>> {
    let backoff = Backoff::new();
    while !backoff.is_completed() {
        match rx.try_recv() {
            Ok(b) => return Some(b),
            Err(TryRecvError::Disconnected) => return None,
            Err(TryRecvError::Empty) => backoff.snooze(),
        }
    }
    select! {
        recv(rx) -> r => r.ok(),
        recv(stop) -> _ => None,
    }
}
