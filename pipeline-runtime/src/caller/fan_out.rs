//! Broadcast fan-out: `pipeline![parse | (index | store, thumbnail) | report]`.
//!
//! # The approach
//! A fan-out is one piece of the outer pipeline, in the caller (a thread stage to its
//! neighbours: [`FanOut`] is an [`AnyStage`] of its own), whose branches are whole
//! pipelines of their own: each branch is started with `Pipeline::start` when the outer
//! pipeline starts (before the outer supervisor is forked and before any outer thread
//! exists), so a branch keeps everything a chain has — its process stages talk to each other
//! directly, its workers are supervised, its `pipe_next` pairs are couples — and the outer
//! pipeline sees one thread stage.
//!
//! Two threads run it. The *dispatcher* takes each item from the outer input channel,
//! submits a clone of it to every branch ([`Running::submit`], which blocks while that
//! branch is full: a slow branch slows the fan-out's input) and queues the item's tickets;
//! the *combiner* takes the queue in order, waits for the tickets branch by branch and makes
//! the item's one outcome: the branches' outputs in branch order, or the first failing
//! branch's error (renumbered to the outer item). Items that arrive already failed or
//! dropped pass through the queue, so order is kept.
//!
//! # Invariants
//! - Every item entering the fan-out leaves it exactly once, in input order.
//! - Memory is bounded: the queue holds at most [`QUEUE`] items, each branch its window.
//! - On stop (the outer pipeline dropped), whichever thread sees it first kills every branch
//!   (which reaps its processes); a thread blocked in a branch's `submit` then wakes with
//!   `Closed`. At the end of the input, the combiner shuts the branches down gracefully; one
//!   that does not end so makes the pipeline's shutdown report not graceful.

use std::any::Any;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, select};

use crate::batch::Batch;
use crate::caller::output::{Output, recv_chan};
use crate::caller::shared::Shared;
use crate::caller::threads::Rt;
use crate::erase::AnyStage;
use crate::error::Error;
use crate::handles::{Running, Ticket};
use crate::process::protocol::Shipment;
use crate::stage::{Body, Opts, Rec};

/// The most items between the dispatcher and the combiner.
pub(crate) const QUEUE: usize = 1024;

/// How long the branches get to finish gracefully at the end of the input.
const SHUTDOWN: Duration = Duration::from_secs(5);

/// A branch of a fan-out before it starts: a pipeline (see `Pipeline::fan_out`).
pub(crate) trait Branch<In, Out>: Send {
    /// The source it starts with, if any (refused).
    fn source(&self) -> Option<&str>;
    /// Starts it as branch `b` of the fan-out `fan_out` (refusing a `stream` stage).
    fn start(self: Box<Self>, b: usize, fan_out: &str) -> Result<Running<In, Out>, Error>;
}

type BoxedBranch<In, Out> = Box<dyn Branch<In, Out>>;

/// The fan-out piece of a pipeline: its branches, then (once started) their handles.
pub(crate) struct FanOut<In, Out> {
    name: String,
    opts: Opts,
    branches: Mutex<Option<Vec<BoxedBranch<In, Out>>>>,
    running: Mutex<Option<Branches<In, Out>>>,
    clone: fn(&In) -> In,
}

/// The started branches, shared by the dispatcher and the combiner.
type Branches<In, Out> = Arc<[Running<In, Out>]>;

/// One item on its way from the dispatcher to the combiner.
enum Entry<Out> {
    /// Its tickets: `tickets[b][k]` for branch `b` and the item's `k`-th value (an item with
    /// several values upstream sends each to every branch).
    /// `None`: the branch had shut down (only while the pipeline stops).
    Item(u64, Vec<Vec<Option<Ticket<Out>>>>),
    /// An item that arrived failed or dropped: it goes on as it is.
    Pass(Rec<Out>),
}

impl<In: Send + 'static, Out: Send + 'static> FanOut<In, Out> {
    /// The fan-out `name` (its branches, as written) of `branches`; `clone` copies an item
    /// for each branch but the last.
    pub(crate) fn new(
        name: String,
        branches: Vec<Box<dyn Branch<In, Out>>>,
        clone: fn(&In) -> In,
    ) -> Self {
        FanOut {
            name,
            // One piece on threads of the caller (two threads; it holds what its queue does).
            opts: Opts::default(),
            branches: Mutex::new(Some(branches)),
            running: Mutex::new(None),
            clone,
        }
    }

    /// Starts every branch; returns what they share, for the outer pipeline's stats.
    fn start_branches(&self) -> Result<Vec<Arc<Shared>>, Error> {
        let name = &self.name;
        let branches = lock(&self.branches)
            .take()
            .ok_or_else(|| Error::Start(format!("the fan-out '{name}' was started twice")))?;
        if branches.is_empty() {
            return Err(Error::Start(format!(
                "the fan-out '{name}' has no branch: give it at least one"
            )));
        }
        let mut running = Vec::with_capacity(branches.len());
        for (b, branch) in branches.into_iter().enumerate() {
            if let Some(s) = branch.source() {
                return Err(Error::Start(format!(
                    "branch {b} of the fan-out '{name}' starts with the source '{s}': a \
                     source can only start a pipeline"
                )));
            }
            running.push(branch.start(b, name)?);
        }
        let shared = running.iter().map(Running::shared).collect();
        *lock(&self.running) = Some(running.into());
        Ok(shared)
    }

    /// Runs the fan-out: `rx` is its input, `out` the next piece's.
    fn spawn(
        &self,
        idx: u32,
        rx: Receiver<Batch<In>>,
        out: Output<Out>,
        rt: &Rt,
    ) -> io::Result<()> {
        let name = &self.name;
        let running = lock(&self.running)
            .take()
            .expect("a fan-out is prepared before it is spawned");
        let (qtx, qrx) = crossbeam_channel::bounded::<Entry<Out>>(QUEUE);
        let clone = self.clone;
        let (stop, branches) = (rt.stop.clone(), Arc::clone(&running));
        rt.threads.spawn(&format!("{name}-dispatch"), move || {
            dispatch(&rx, &branches, &qtx, &stop, clone);
        })?;
        let (stop, shared) = (rt.stop.clone(), Arc::clone(&rt.shared));
        rt.threads.spawn(&format!("{name}-combine"), move || {
            combine(idx, &qrx, out, &running, &stop);
            shut_down(&running, &shared);
        })?;
        let _ = rt.inits.send(Ok(()));
        Ok(())
    }
}

/// A fan-out is a thread stage to its neighbours: it never runs in a worker process, so
/// what only process stages and `pipe_next` halves do is never asked of it.
impl<In: Send + 'static, Out: Send + 'static> AnyStage for FanOut<In, Out> {
    fn name(&self) -> &str {
        &self.name
    }

    fn opts(&self) -> &Opts {
        &self.opts
    }

    fn input_channel(&self, cap: usize) -> (Box<dyn Any + Send>, Box<dyn Any + Send>) {
        let (tx, rx) = crossbeam_channel::bounded::<Batch<In>>(cap);
        (Box::new(Output::Chan { tx, split: 1 }), Box::new(rx))
    }

    fn spawn_threads(
        self: Arc<Self>,
        idx: u32,
        rx: Box<dyn Any + Send>,
        out: Box<dyn Any + Send>,
        rt: &Rt,
    ) -> io::Result<()> {
        let (rx, out) = crate::erase::unbox::<In, Out>(rx, out, "fan-out");
        self.spawn(idx, rx, out, rt)
    }

    fn prepare(&self) -> Result<Vec<Arc<Shared>>, Error> {
        self.start_branches()
    }

    fn ship(&self) -> Result<Shipment, String> {
        Err("a fan-out runs in the caller".into())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Sends every item to every branch and its tickets to the combiner.
fn dispatch<In, Out: Send + 'static>(
    rx: &Receiver<Batch<In>>,
    branches: &[Running<In, Out>],
    queue: &Sender<Entry<Out>>,
    stop: &Receiver<()>,
    clone: fn(&In) -> In,
) where
    In: Send + 'static,
{
    while let Some(batch) = recv_chan(rx, stop) {
        for rec in batch {
            let entry = match rec.body {
                Body::One(x) => Entry::Item(rec.seq, submit(branches, vec![x], clone)),
                Body::Many(xs) => Entry::Item(rec.seq, submit(branches, xs, clone)),
                Body::Dropped(i) => Entry::Pass(Rec {
                    seq: rec.seq,
                    body: Body::Dropped(i),
                }),
                Body::Failed(i, e) => Entry::Pass(Rec {
                    seq: rec.seq,
                    body: Body::Failed(i, e),
                }),
                Body::Consumed(i, n) => Entry::Pass(Rec {
                    seq: rec.seq,
                    body: Body::Consumed(i, n),
                }),
            };
            let sent = select! {
                send(queue, entry) -> r => r.is_ok(),
                recv(stop) -> _ => false,
            };
            if !sent {
                kill(branches);
                return;
            }
        }
    }
    if stop.try_recv() == Err(crossbeam_channel::TryRecvError::Disconnected) {
        kill(branches);
    }
}

/// Submits each of `values` to every branch: `tickets[b][k]`. A branch that has shut down
/// (only when the pipeline is stopping) gives no ticket; the combiner fails the item.
fn submit<In, Out: Send + 'static>(
    branches: &[Running<In, Out>],
    values: Vec<In>,
    clone: fn(&In) -> In,
) -> Vec<Vec<Option<Ticket<Out>>>>
where
    In: Send + 'static,
{
    let mut tickets: Vec<Vec<_>> = branches.iter().map(|_| Vec::new()).collect();
    for x in values {
        let last = branches.len() - 1;
        let mut x = Some(x);
        for (b, branch) in branches.iter().enumerate() {
            let value = if b == last {
                x.take().expect("the value, for the last branch")
            } else {
                clone(x.as_ref().expect("the value"))
            };
            tickets[b].push(branch.submit(value).ok());
        }
    }
    tickets
}

/// Shuts the branches down gracefully (each is stopped already if the pipeline stopped); a
/// branch that does not end gracefully makes the whole pipeline's end not graceful.
fn shut_down<In: Send + 'static, Out: Send + 'static>(
    branches: &[Running<In, Out>],
    shared: &Shared,
) {
    for (b, branch) in branches.iter().enumerate() {
        if !branch.finish(SHUTDOWN).is_graceful() && !shared.stopping.load(Ordering::Acquire) {
            shared.set_abort(Error::Start(format!(
                "branch {b} of a fan-out did not shut down gracefully"
            )));
        }
    }
}

/// Makes each item's outcome, in order, and sends it on.
fn combine<In: Send + 'static, Out: Send + 'static>(
    idx: u32,
    queue: &Receiver<Entry<Out>>,
    mut out: Output<Out>,
    branches: &[Running<In, Out>],
    stop: &Receiver<()>,
) {
    loop {
        let entry = select! {
            recv(queue) -> r => match r { Ok(e) => e, Err(_) => break },
            recv(stop) -> _ => return kill(branches),
        };
        let rec = match entry {
            Entry::Pass(rec) => rec,
            Entry::Item(seq, tickets) => match outcome(idx, seq, tickets, stop) {
                Some(body) => Rec { seq, body },
                None => return kill(branches),
            },
        };
        if out.send(vec![rec], stop).is_err() {
            return kill(branches);
        }
    }
}

/// The outcome of item `seq` of the fan-out `idx`: the branches' outputs in branch order,
/// or the first failing branch's error. `None` if the pipeline stopped meanwhile.
fn outcome<Out>(
    idx: u32,
    seq: u64,
    tickets: Vec<Vec<Option<Ticket<Out>>>>,
    stop: &Receiver<()>,
) -> Option<Body<Out>> {
    let mut outputs = Vec::new();
    for t in tickets.into_iter().flatten() {
        let r = match t {
            Some(t) => t.wait_or_stop(stop)?,
            None => Err(Error::ShutDown { item: seq }),
        };
        match r {
            Ok(mut v) => outputs.append(&mut v),
            Err(e) => return Some(Body::Failed(idx, Box::new(e.renumbered(seq)))),
        }
    }
    Some(match outputs.len() {
        0 => Body::Dropped(idx),
        1 => Body::One(outputs.pop().expect("one output")),
        _ => Body::Many(outputs),
    })
}

fn kill<In: Send + 'static, Out: Send + 'static>(branches: &[Running<In, Out>]) {
    for b in branches {
        b.kill();
    }
}
