//! The handles of a running pipeline: [`Results`] (streaming), [`Running`] and [`Ticket`]
//! (work items), and what they report ([`Stats`], [`Report`]).

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, select};

use crate::caller::collector::{Ring, Slot};
use crate::caller::engine::Engine;
use crate::caller::output::Batch;
use crate::caller::shared::Shared;
use crate::error::Error;
use crate::progress::{self, Display};
use crate::stage::Body;

/// How results come out of a pipeline.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Shape {
    pub ordered: bool,
    pub stream_first: Option<u32>,
}

/// The results of [`Pipeline::run`](crate::Pipeline::run), in input order unless a stage is `unordered`.
///
/// Dropping it stops the pipeline at once: the feeding thread stops, every worker process
/// is killed, every process is reaped and every descriptor closed before `drop` returns
/// (a thread stuck inside a stage function or a blocking input iterator is detached).
pub struct Results<Out> {
    engine: Engine,
    /// (After `engine`: dropped once it stopped, it draws the final figures.)
    progress: Option<Display>,
    rx: Receiver<Batch<Out>>,
    ordered: bool,
    /// Index of the first `stream` stage, if any.
    stream_first: Option<u32>,
    ring: Ring<Out>,
    ready: VecDeque<Result<Out, Error>>,
    release: usize,
    ended: bool,
}

impl<Out> fmt::Debug for Results<Out> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Results")
            .field("ordered", &self.ordered)
            .field("ended", &self.ended)
            .finish()
    }
}

impl<Out: Send + 'static> Results<Out> {
    pub(crate) fn new(
        engine: Engine,
        rx: Receiver<Batch<Out>>,
        shape: Shape,
        progress: progress::Options,
    ) -> Self {
        // (Numbers after a stream stage are the stream's own: not bounded by the window.)
        let reach = match shape.stream_first {
            Some(_) => u64::MAX,
            None => 2 * engine.shared.window.cap() as u64 + 1024,
        };
        Results {
            progress: Display::start(progress, &engine),
            engine,
            rx,
            ordered: shape.ordered,
            stream_first: shape.stream_first,
            ring: Ring {
                base: 0,
                slots: VecDeque::new(),
                reach,
            },
            ready: VecDeque::new(),
            release: 0,
            ended: false,
        }
    }

    fn deliver(&mut self, body: Body<Out>) {
        if self.stream_first.is_none() {
            // (After a stream stage, outputs are new items that took no room at the feeder.)
            self.engine.shared.count_outcome(&body);
            self.release += 1;
        }
        match body {
            Body::One(v) => self.ready.push_back(Ok(v)),
            Body::Many(vs) => self.ready.extend(vs.into_iter().map(Ok)),
            Body::Dropped(_) | Body::Consumed(..) => {}
            Body::Failed(_, e) => self.ready.push_back(Err(*e)),
        }
    }

    /// A `stream` stage consumed `n` items: their room in the pipeline is free again.
    fn consumed(&mut self, stage: u32, n: u64) {
        if self.stream_first == Some(stage) {
            self.release += n as usize;
        }
    }

    /// Gives the room of delivered items back to the feeder (and counts them finished).
    fn give_back(&mut self) {
        let n = std::mem::take(&mut self.release);
        if n > 0 {
            self.engine
                .shared
                .completed
                .fetch_add(n as u64, Ordering::Relaxed);
            self.engine.shared.window.give_back(n);
        }
    }

    fn advance(&mut self) {
        loop {
            match self.ring.slots.front() {
                Some(Slot::Taken) => {}
                Some(Slot::Ready(_)) if self.ordered => {}
                _ => return,
            }
            self.ring.base += 1;
            if let Some(Slot::Ready(b)) = self.ring.slots.pop_front() {
                self.deliver(b);
            }
        }
    }

    /// Statistics so far (counts of finished items).
    pub fn stats(&self) -> Stats {
        stats_of(&self.engine.shared)
    }
}

impl<Out: Send + 'static> Iterator for Results<Out> {
    type Item = Result<Out, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(r) = self.ready.pop_front() {
                return Some(r);
            }
            if self.ended {
                return None;
            }
            self.give_back();
            match self.rx.recv() {
                Ok(batch) => {
                    for rec in batch {
                        if let Body::Consumed(stage, n) = rec.body {
                            self.consumed(stage, n);
                        } else if self.ordered {
                            self.ring.put(rec.seq, Slot::Ready(rec.body));
                        } else if self.stream_first.is_some() || self.ring.put(rec.seq, Slot::Taken)
                        {
                            // (After a stream stage, numbers are the stream's: no ring.)
                            self.deliver(rec.body);
                        }
                    }
                    self.advance();
                }
                Err(_) => {
                    // Every producer is gone: what is still unfinished gets its cause.
                    self.ended = true;
                    self.engine.shared.end();
                    let issued = if self.stream_first.is_some() {
                        0 // outputs of a stream stage: nothing is known to be missing
                    } else {
                        self.engine.shared.issued.load(Ordering::Acquire)
                    };
                    let end = issued.max(self.ring.base + self.ring.slots.len() as u64);
                    let mut seq = self.ring.base;
                    while seq < end {
                        let slot = self.ring.slots.pop_front().unwrap_or(Slot::Pending);
                        match slot {
                            Slot::Ready(b) => self.deliver(b),
                            Slot::Pending => {
                                let e = self.engine.shared.unfinished(seq);
                                self.deliver(Body::Failed(u32::MAX, Box::new(e)));
                            }
                            Slot::Taken => {}
                        }
                        seq += 1;
                    }
                    self.ring.base = end;
                    self.give_back();
                    let graceful = self.engine.wait(Instant::now() + Duration::from_secs(5));
                    finished(&self.engine.shared, graceful);
                    self.progress = None;
                }
            }
        }
    }
}

/// Per-stage counts. Counts are of items (input sequence numbers), not of outputs.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StageStats {
    /// The stage's name (a fan-out's is its branches', as written: `(index | store, thumb)`).
    pub name: String,
    /// Where the stage is: empty for a stage of the pipeline's own chain, `[b]` for one of
    /// branch `b` of the fan-out listed before it (`[b, c]` in a fan-out nested there).
    pub branch: Vec<usize>,
    /// Finished items that reached this stage.
    pub items_in: u64,
    /// Finished items that left this stage with outputs.
    pub items_out: u64,
    /// Items that failed at this stage.
    pub failed: u64,
    /// Items this stage dropped (no output).
    pub dropped: u64,
    /// Worker processes of this stage replaced after a death.
    pub restarts: u64,
    /// Its workers (threads or processes).
    pub workers: usize,
    /// Time its workers spent working on items (the stage function and its per-item
    /// overhead, not waiting for input or for room downstream), summed over the workers.
    pub busy: Duration,
    /// Time items waited in front of it (from arriving at its input to its worker starting
    /// on them), summed over the items. Measured per batch (see the README).
    pub queued: Duration,
}

impl StageStats {
    /// The share of its workers' time spent busy over `elapsed`: 1.0 is every worker busy
    /// all the time.
    pub fn utilization(&self, elapsed: Duration) -> f64 {
        let capacity = elapsed.as_secs_f64() * self.workers.max(1) as f64;
        if capacity > 0.0 {
            (self.busy.as_secs_f64() / capacity).min(1.0)
        } else {
            0.0
        }
    }
}

/// Statistics of a pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Items that entered the pipeline.
    pub submitted: u64,
    /// Items with a final outcome.
    pub completed: u64,
    /// Items in the pipeline now (entered, not finished): `submitted - completed`.
    pub in_flight: u64,
    /// One entry per stage, in order; a fan-out's entry is followed by its branches' stages
    /// (see [`StageStats::branch`]).
    pub stages: Vec<StageStats>,
    /// Time since the pipeline started (until its last item finished, once it has).
    pub elapsed: Duration,
}

impl Stats {
    /// The stage whose workers are busiest (busy time per worker over the elapsed time):
    /// the one to give more workers, or to make faster. `None` before any stage worked.
    pub fn bottleneck(&self) -> Option<&StageStats> {
        self.stages
            .iter()
            .filter(|s| !s.busy.is_zero())
            .max_by(|a, b| {
                let (ua, ub) = (a.utilization(self.elapsed), b.utilization(self.elapsed));
                ua.total_cmp(&ub)
            })
    }
}

/// A compact table: one line per stage (a branch's stages indented under their fan-out),
/// the bottleneck marked.
///
/// ```text
/// stage        workers      in     out  failed  busy  queued     items/s  restarts
/// parse              4   10000   10000       0   38%   0.41s      48,123         0
/// store              1   10000   10000       0   97%   12.3s      48,120         0  <- bottleneck
/// ```
impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bottleneck = self.bottleneck().map(|b| b as *const StageStats);
        let secs = self.elapsed.as_secs_f64();
        let width = (self.stages.iter())
            .map(|s| s.name.chars().count() + 2 * s.branch.len())
            .max()
            .unwrap_or(0)
            .max(5);
        writeln!(
            f,
            "{:<width$}  {:>7} {:>9} {:>9} {:>7} {:>5} {:>8} {:>11} {:>8}",
            "stage", "workers", "in", "out", "failed", "busy", "queued", "items/s", "restarts"
        )?;
        for s in &self.stages {
            let name = format!("{}{}", "  ".repeat(s.branch.len()), s.name);
            let rate = if secs > 0.0 {
                s.items_in as f64 / secs
            } else {
                0.0
            };
            write!(
                f,
                "{name:<width$}  {:>7} {:>9} {:>9} {:>7} {:>4.0}% {:>7.2}s {:>11.0} {:>8}",
                s.workers,
                s.items_in,
                s.items_out,
                s.failed,
                100.0 * s.utilization(self.elapsed),
                s.queued.as_secs_f64(),
                rate,
                s.restarts
            )?;
            if bottleneck == Some(s as *const StageStats) {
                write!(f, "  <- bottleneck")?;
            }
            writeln!(f)?;
        }
        write!(
            f,
            "{} items in {:.2}s ({} in flight)",
            self.completed, secs, self.in_flight
        )
    }
}

/// The `tracing` event of a pipeline's end, with its stats table.
fn finished(shared: &Shared, graceful: bool) {
    let stats = stats_of(shared);
    let _in = shared.span.enter();
    tracing::info!(
        graceful,
        completed = stats.completed,
        "forkpipe: pipeline finished\n{stats}"
    );
}

pub(crate) fn stats_of(shared: &Shared) -> Stats {
    let completed = shared.completed.load(Ordering::Relaxed);
    let mut stages = Vec::new();
    stage_stats(shared, &[], &mut stages);
    let submitted = shared.issued.load(Ordering::Relaxed);
    let end = shared.ended.get().copied().unwrap_or_else(Instant::now);
    Stats {
        submitted,
        completed,
        in_flight: submitted.saturating_sub(completed),
        stages,
        elapsed: end.saturating_duration_since(shared.started),
    }
}

/// The stats of the stages `shared` is about, each followed by those of its branches (a
/// fan-out's), whose place is `path` and the branch's index.
fn stage_stats(shared: &Shared, path: &[usize], into: &mut Vec<StageStats>) {
    let mut items_in = shared.completed.load(Ordering::Relaxed);
    for (i, name) in shared.names.iter().enumerate() {
        let failed = shared.failed[i].load(Ordering::Relaxed);
        let dropped = shared.dropped[i].load(Ordering::Relaxed);
        let out = items_in.saturating_sub(failed + dropped);
        into.push(StageStats {
            name: name.to_string(),
            branch: path.to_vec(),
            items_in,
            items_out: out,
            failed,
            dropped,
            restarts: shared.restarts[i].load(Ordering::Relaxed),
            workers: shared.workers[i],
            busy: Duration::from_nanos(shared.times[i].busy.load(Ordering::Relaxed)),
            queued: Duration::from_nanos(shared.times[i].queued.load(Ordering::Relaxed)),
        });
        items_in = out;
        for (b, branch) in shared.branches[i].iter().enumerate() {
            let mut at = path.to_vec();
            at.push(b);
            stage_stats(branch, &at, into);
        }
    }
}

/// What [`Running::shutdown`] reports.
#[derive(Debug, Clone)]
pub struct Report {
    graceful: bool,
    stats: Stats,
}

impl Report {
    /// True if every submitted item finished and every worker exited on its own before the
    /// shutdown deadline.
    pub fn is_graceful(&self) -> bool {
        self.graceful
    }

    /// Final statistics.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }
}

type TicketMap<Out> = Mutex<(bool, HashMap<u64, Sender<Body<Out>>>)>;

/// A pipeline started for work items ([`Pipeline::start`](crate::Pipeline::start)). `Send + Sync`: submit from
/// any number of threads.
///
/// Dropping it stops the pipeline at once, like dropping [`Results`]; unfinished tickets
/// then resolve to [`Error::ShutDown`]. [`Running::shutdown`] instead finishes the items in
/// flight first.
pub struct Running<In, Out> {
    submit: Mutex<Option<Sender<(u64, In)>>>,
    next_seq: AtomicU64,
    tickets: Arc<TicketMap<Out>>,
    engine: Mutex<Engine>,
    shared: Arc<Shared>,
    /// (After `engine`: see [`Results`]'s.)
    progress: Mutex<Option<Display>>,
}

impl<In, Out> fmt::Debug for Running<In, Out> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Running")
            .field("next_seq", &self.next_seq)
            .finish()
    }
}

/// The outcome of one submitted item; see [`Ticket::wait`].
pub struct Ticket<Out> {
    seq: u64,
    rx: Receiver<Body<Out>>,
    shared: Arc<Shared>,
}

impl<Out> fmt::Debug for Ticket<Out> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ticket").field("item", &self.seq).finish()
    }
}

impl<Out> Ticket<Out> {
    /// The item's sequence number (the order of submission, from 0).
    pub fn item(&self) -> u64 {
        self.seq
    }

    /// Blocks until the item is done; its one output, or its error. An item with no output
    /// gives [`Error::NoOutput`], one with several [`Error::ManyOutputs`] (use
    /// [`Ticket::wait_all`] for those stages).
    pub fn wait(self) -> Result<Out, Error> {
        let seq = self.seq;
        let mut all = self.wait_all_inner()?;
        match all.len() {
            1 => Ok(all.pop().expect("one output")),
            count => Err(Error::ManyOutputs { item: seq, count }),
        }
    }

    /// Blocks until the item is done; all its outputs (none if a stage dropped it).
    pub fn wait_all(self) -> Result<Vec<Out>, Error> {
        match self.rx.recv() {
            Ok(Body::Dropped(_)) => Ok(Vec::new()),
            other => Self::convert(self.seq, &self.shared, other),
        }
    }

    /// [`Ticket::wait_all`], unless `stop` ends first (then `None`).
    pub(crate) fn wait_or_stop(self, stop: &Receiver<()>) -> Option<Result<Vec<Out>, Error>> {
        let r = select! {
            recv(self.rx) -> r => r,
            recv(stop) -> _ => return None,
        };
        Some(match r {
            Ok(Body::Dropped(_)) => Ok(Vec::new()),
            other => Self::convert(self.seq, &self.shared, other),
        })
    }

    fn wait_all_inner(self) -> Result<Vec<Out>, Error> {
        let r = self.rx.recv();
        Self::convert(self.seq, &self.shared, r)
    }

    fn convert(
        seq: u64,
        shared: &Shared,
        r: Result<Body<Out>, crossbeam_channel::RecvError>,
    ) -> Result<Vec<Out>, Error> {
        match r {
            Ok(Body::One(v)) => Ok(vec![v]),
            Ok(Body::Many(vs)) => Ok(vs),
            Ok(Body::Dropped(i)) => Err(Error::NoOutput {
                stage: shared
                    .names
                    .get(i as usize)
                    .map_or("?".into(), |s| s.to_string()),
                item: seq,
            }),
            Ok(Body::Failed(_, e)) => Err(*e),
            Ok(Body::Consumed(..)) | Err(_) => Err(Error::ShutDown { item: seq }),
        }
    }
}

impl<In: Send + 'static, Out: Send + 'static> Running<In, Out> {
    pub(crate) fn new(
        engine: Engine,
        tx: Sender<(u64, In)>,
        final_rx: Receiver<Batch<Out>>,
        progress: progress::Options,
    ) -> Result<Self, Error> {
        let shared = Arc::clone(&engine.shared);
        let tickets: Arc<TicketMap<Out>> = Arc::new(Mutex::new((false, HashMap::new())));
        let t = Arc::clone(&tickets);
        let sh = Arc::clone(&shared);
        let stop = engine.stop_rx.clone();
        engine
            .threads
            .spawn("resolver", move || resolve(final_rx, t, sh, stop))
            .map_err(|e| Error::Start(format!("could not spawn a thread: {e}")))?;
        Ok(Running {
            progress: Mutex::new(Display::start(progress, &engine)),
            submit: Mutex::new(Some(tx)),
            next_seq: AtomicU64::new(0),
            tickets,
            engine: Mutex::new(engine),
            shared,
        })
    }

    /// Submits one item. Blocks while the pipeline is full (backpressure). `Err` only if
    /// the pipeline has shut down; otherwise the ticket will get exactly one outcome.
    pub fn submit(&self, item: In) -> Result<Ticket<Out>, Error> {
        let tx = self
            .submit
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or(Error::Closed)?;
        if self.shared.window.take(1) == 0 {
            return Err(Error::Closed);
        }
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let (ttx, trx) = crossbeam_channel::bounded(1);
        {
            let mut t = self.tickets.lock().unwrap_or_else(|p| p.into_inner());
            if t.0 {
                self.shared.window.give_back(1);
                return Err(Error::Closed);
            }
            t.1.insert(seq, ttx);
        }
        if tx.send((seq, item)).is_err() {
            self.tickets
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .1
                .remove(&seq);
            self.shared.window.give_back(1);
            return Err(Error::Closed);
        }
        self.shared.issued.fetch_max(seq + 1, Ordering::Relaxed);
        Ok(Ticket {
            seq,
            rx: trx,
            shared: Arc::clone(&self.shared),
        })
    }

    /// Statistics so far.
    pub fn stats(&self) -> Stats {
        stats_of(&self.shared)
    }

    /// Graceful shutdown: no more submits; the items in flight finish (within 5 s, after
    /// which the rest is killed and the report says so).
    pub fn shutdown(self) -> Result<Report, Error> {
        self.shutdown_within(Duration::from_secs(5))
    }

    /// [`Running::shutdown`] with another deadline.
    pub fn shutdown_within(self, deadline: Duration) -> Result<Report, Error> {
        Ok(self.finish(deadline))
    }

    /// What the pieces of this pipeline share (for a fan-out's stats).
    pub(crate) fn shared(&self) -> Arc<Shared> {
        Arc::clone(&self.shared)
    }

    /// Stops now, like dropping it (a submit blocked meanwhile returns `Closed`).
    pub(crate) fn kill(&self) {
        self.submit.lock().unwrap_or_else(|p| p.into_inner()).take();
        self.engine.lock().unwrap_or_else(|p| p.into_inner()).kill();
    }

    /// [`Running::shutdown_within`], on a shared handle.
    pub(crate) fn finish(&self, deadline: Duration) -> Report {
        self.submit.lock().unwrap_or_else(|p| p.into_inner()).take();
        let mut engine = self.engine.lock().unwrap_or_else(|p| p.into_inner());
        let graceful = engine.wait(Instant::now() + deadline);
        engine.kill();
        self.shared.end();
        *self.progress.lock().unwrap_or_else(|p| p.into_inner()) = None; // its last frame
        let aborted = self
            .shared
            .abort
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some();
        finished(&self.shared, graceful && !aborted);
        Report {
            graceful: graceful && !aborted,
            stats: stats_of(&self.shared),
        }
    }
}

fn resolve<Out>(
    rx: Receiver<Batch<Out>>,
    tickets: Arc<TicketMap<Out>>,
    shared: Arc<Shared>,
    stop: Receiver<()>,
) {
    loop {
        let batch = select! {
            recv(rx) -> r => match r { Ok(b) => b, Err(_) => break },
            recv(stop) -> _ => break,
        };
        let mut n = 0;
        for rec in batch {
            let t = tickets
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .1
                .remove(&rec.seq);
            if let Some(t) = t {
                // (No entry: a duplicate of an item already resolved, after a worker death.)
                shared.count(&rec.body);
                n += 1;
                let _ = t.send(rec.body);
            }
        }
        shared.window.give_back(n);
    }
    let rest: Vec<_> = {
        let mut t = tickets.lock().unwrap_or_else(|p| p.into_inner());
        t.0 = true;
        t.1.drain().collect()
    };
    for (seq, t) in rest {
        let e = shared.unfinished(seq);
        let _ = t.send(Body::Failed(u32::MAX, Box::new(e)));
    }
}
