//! The feeder: the thread that pulls the pipeline's input (the user's iterator, a source,
//! or submitted work items) and sends it to the first stage, within the window.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, select};

use crate::batch::Batch;
use crate::caller::fan_in::{self, Iter, Pulled};
use crate::caller::output::{IDLE_SERVICE, Output};
use crate::caller::shared::Shared;
use crate::caller::threads::{Rt, User};
use crate::caller::window::Window;
use crate::error::Error;
use crate::stage::{Body, Rec};

/// The most items the feeder pulls at once (one batch, sent as one or more runs).
const MAX_CHUNK: usize = 4096;

/// Pulls items from the input and feeds them to the first stage, within the window.
pub(crate) enum Feed<In> {
    Iter(Fill<In>),
    /// A source: the iterator is made on the feeding thread.
    Lazy(
        String,
        Box<dyn FnOnce() -> Box<dyn Iterator<Item = In> + Send> + Send>,
    ),
    Chan(Receiver<(u64, In)>),
    /// A fan-in: several sources, each pulled on a thread of its own.
    Merge(Vec<fan_in::Made<In>>),
    /// What a `Merge` becomes once its sources' threads run.
    Merged(Receiver<Pulled<In>>),
}

/// Pulls up to `n` items of an input into a batch: made where the iterator's type is
/// known (see [`fill_from`]), so a chunk costs one indirect call, not one per item.
pub(crate) type Fill<In> = Box<dyn FnMut(&mut Vec<In>, usize) + Send>;

/// The [`Fill`] of iterator `it`.
pub(crate) fn fill_from<I: Iterator + Send + 'static>(mut it: I) -> Fill<I::Item> {
    Box::new(move |items, n| items.extend(it.by_ref().take(n)))
}

/// Starts the feeding thread: it pulls `feed` (in user code: flagged, so a stop does not
/// wait for an iterator that blocks forever) and sends it to `out`, then ends the input.
pub(crate) fn spawn_feeder<In: Send + 'static>(
    feed: Feed<In>,
    mut out: Output<In>,
    rt: &Rt,
) -> io::Result<()> {
    let feed = match feed {
        Feed::Merge(sources) => Feed::Merged(fan_in::spawn_sources(sources, rt)?),
        feed => feed,
    };
    let stop = rt.stop.clone();
    let shared = Arc::clone(&rt.shared);
    let in_user = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&in_user);
    rt.threads.spawn_flagged("feeder", flag, move || {
        let user = User(&in_user);
        let ok = match feed {
            Feed::Iter(mut it) => feed_iter(
                |n, seq| pull_chunk(&mut it, n, seq, &None, user),
                &mut out,
                &shared,
                &stop,
            ),
            Feed::Lazy(name, make) => {
                let mut it = fill_from(make_source(make, user));
                let name = Some(name);
                feed_iter(
                    |n, seq| pull_chunk(&mut it, n, seq, &name, user),
                    &mut out,
                    &shared,
                    &stop,
                )
            }
            Feed::Merged(rx) => feed_iter(
                |n, seq| pull_merged(&rx, n, seq, &stop),
                &mut out,
                &shared,
                &stop,
            ),
            Feed::Merge(_) => unreachable!("a fan-in's sources were started above"),
            Feed::Chan(rx) => feed_chan(&rx, &mut out, &stop),
        };
        if ok && stop.try_recv() != Err(crossbeam_channel::TryRecvError::Disconnected) {
            let _ = out.flush();
            out.finish();
        }
    })
}

/// Makes a source's iterator; if that panics, an iterator whose first item panics with the
/// same message (so the failure is an item's outcome like any other).
fn make_source<In: 'static>(
    make: Box<dyn FnOnce() -> Iter<In> + Send>,
    user: User<'_>,
) -> Iter<In> {
    match user.run(make) {
        Ok(it) => it,
        Err(p) => {
            let message = crate::error::panic_message(p.as_ref());
            Box::new(std::iter::once_with(move || -> In {
                std::panic::panic_any(message)
            }))
        }
    }
}

/// Feeds what `pull(n, seq)` pulls (up to `n` records numbered from `seq`, and whether the
/// input ended), taking room in the window chunk by chunk (chunks grow while the input is
/// quick, shrink when it is slow). False if the pipeline stopped.
fn feed_iter<In>(
    mut pull: impl FnMut(usize, &mut u64) -> (Batch<In>, bool),
    out: &mut Output<In>,
    shared: &Shared,
    stop: &Receiver<()>,
) -> bool {
    let window = &shared.window;
    let mut chunk = 1usize;
    let mut seq = 0u64;
    loop {
        let Some(n) = take_room(window, chunk, out) else {
            return false;
        };
        let t0 = Instant::now();
        let (batch, ended) = pull(n, &mut seq);
        shared.issued.store(seq, Ordering::Release);
        window.give_back(n - batch.len());
        if !batch.is_empty() && out.send(batch, stop).is_err() {
            return false;
        }
        if ended {
            return true;
        }
        chunk = if t0.elapsed() > Duration::from_millis(1) {
            (chunk / 2).max(1)
        } else {
            (chunk * 2).min(MAX_CHUNK)
        };
        if out.flush().is_err() {
            return false;
        }
    }
}

/// Room for up to `chunk` items; while the window is full, flushes and services the output
/// (death notices must be read while waiting). `None` once the pipeline stopped.
fn take_room<In>(window: &Window, chunk: usize, out: &mut Output<In>) -> Option<usize> {
    let n = window.try_take(chunk);
    if n > 0 {
        return Some(n);
    }
    out.flush().ok()?;
    loop {
        match window.take_timeout(chunk, IDLE_SERVICE) {
            Some(0) => return None,
            Some(n) => return Some(n),
            None => out.service().ok()?,
        }
    }
}

/// Pulls up to `n` items, numbering them from `seq`; a panic of the iterator fails that item
/// and ends the input. Returns the batch (dense unless a panic failed an item) and whether
/// the input ended.
fn pull_chunk<In>(
    fill: &mut Fill<In>,
    n: usize,
    seq: &mut u64,
    source: &Option<String>,
    user: User<'_>,
) -> (Batch<In>, bool) {
    let first = *seq;
    let mut items = Vec::with_capacity(n);
    // One guard for the chunk: a panic ends the input anyway.
    let pulled = user.run(|| fill(&mut items, n));
    *seq += items.len() as u64;
    let ended = items.len() < n;
    let batch = Batch::Dense { first, items };
    let Err(p) = pulled else {
        return (batch, ended);
    };
    let e = Error::Input {
        stage: source.clone(),
        item: *seq,
        message: crate::error::panic_message(p.as_ref()),
    };
    let mut recs = batch.into_recs();
    recs.push(Rec {
        seq: *seq,
        body: Body::Failed(u32::MAX, Box::new(e)),
    });
    *seq += 1;
    (Batch::Recs(recs), true)
}

/// Pulls up to `n` items of a fan-in (waiting for the first only), numbering them from
/// `seq`; a source's panic fails one item and the others go on. Returns the records and
/// whether the input ended (every source did, or the pipeline stopped).
fn pull_merged<In>(
    rx: &Receiver<Pulled<In>>,
    n: usize,
    seq: &mut u64,
    stop: &Receiver<()>,
) -> (Batch<In>, bool) {
    let mut batch = Vec::with_capacity(n.min(1024));
    let first = select! {
        recv(rx) -> r => r.ok(),
        recv(stop) -> _ => None,
    };
    let Some(first) = first else {
        return (Batch::Recs(batch), true);
    };
    let mut next = Some(first);
    while let Some(pulled) = next {
        let body = match pulled {
            Pulled::Item(x) => Body::One(x),
            Pulled::Panicked(stage, message) => Body::Failed(
                u32::MAX,
                Box::new(Error::Input {
                    stage: Some(stage),
                    item: *seq,
                    message,
                }),
            ),
        };
        batch.push(Rec { seq: *seq, body });
        *seq += 1;
        if batch.len() == n {
            break;
        }
        next = rx.try_recv().ok();
    }
    (Batch::Recs(batch), false)
}

/// Feeds submitted work items (credit was taken per item by `Running::submit`), up to 512
/// per batch. False if the pipeline stopped.
fn feed_chan<In>(rx: &Receiver<(u64, In)>, out: &mut Output<In>, stop: &Receiver<()>) -> bool {
    loop {
        let first = match rx.try_recv() {
            Ok(x) => x,
            Err(_) => {
                if out.flush().is_err() {
                    return false;
                }
                match wait_submitted(rx, out, stop) {
                    Some(x) => x,
                    None => {
                        return stop.try_recv()
                            != Err(crossbeam_channel::TryRecvError::Disconnected);
                    }
                }
            }
        };
        let mut batch = vec![first];
        while batch.len() < 512 {
            match rx.try_recv() {
                Ok(x) => batch.push(x),
                Err(_) => break,
            }
        }
        let batch: Vec<Rec<In>> = batch
            .into_iter()
            .map(|(seq, x)| Rec {
                seq,
                body: Body::One(x),
            })
            .collect();
        if out.send_records(batch, stop).is_err() {
            return false;
        }
    }
}

/// Waits for the next submitted item, servicing the output meanwhile; `None` at the end of
/// the submissions, on stop, or if the output failed.
fn wait_submitted<In>(
    rx: &Receiver<(u64, In)>,
    out: &mut Output<In>,
    stop: &Receiver<()>,
) -> Option<(u64, In)> {
    loop {
        select! {
            recv(rx) -> r => return r.ok(),
            recv(stop) -> _ => return None,
            default(IDLE_SERVICE) => out.service().ok()?,
        }
    }
}
