//! The handles of a running pipeline: [`Results`] (streaming), [`Running`] and [`Ticket`]
//! (work items), and what they report ([`Stats`], [`Report`]).

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, select};

use crate::batch::Batch;
use crate::caller::collector::{Ring, Slot};
use crate::caller::engine::Engine;
use crate::caller::shared::Shared;
use crate::error::Error;
use crate::progress::{self, Display};
use crate::stage::{Body, Rec};
use crate::stats::{Stats, stats_of};

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
    /// The batch being read (see [`Results::take`]).
    batch: crate::batch::IntoRecs<Out>,
    /// Values next in order, already counted (see [`Results::read`]).
    direct: std::vec::IntoIter<Out>,
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
            batch: Batch::default().into_iter(),
            direct: Vec::new().into_iter(),
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

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        // The values of an in-order dense batch are returned here, inline in the caller's
        // loop; everything else in `next_slow`. (While `direct` holds values, `ready` is
        // empty: `direct` is filled only when everything before it was returned.)
        match self.direct.next() {
            Some(v) => Some(Ok(v)),
            None => self.next_slow(),
        }
    }
}

impl<Out: Send + 'static> Results<Out> {
    #[inline(never)]
    fn next_slow(&mut self) -> Option<Result<Out, Error>> {
        loop {
            if let Some(r) = self.ready.pop_front() {
                return Some(r);
            }
            if let Some(v) = self.direct.next() {
                return Some(Ok(v));
            }
            if let Some(rec) = self.batch.next() {
                if let Some(r) = self.take(rec) {
                    return Some(r);
                }
                continue;
            }
            if self.ended {
                return None;
            }
            self.give_back();
            match self.rx.recv() {
                Ok(batch) => self.read(batch),
                Err(_) => self.end_of_results(),
            }
        }
    }
}

impl<Out: Send + 'static> Results<Out> {
    /// Starts reading `batch`. A dense batch that is next in order, with nothing waiting in
    /// the ring, is taken whole: its values are returned as they are, one check each.
    fn read(&mut self, batch: Batch<Out>) {
        match batch {
            Batch::Dense { first, items }
                if self.ordered && first == self.ring.base && self.ring.slots.is_empty() =>
            {
                self.ring.base += items.len() as u64;
                if self.stream_first.is_none() {
                    self.release += items.len();
                }
                self.direct = items.into_iter();
            }
            batch => self.batch = batch.into_iter(),
        }
    }

    /// One record of the batch being read. The next output in order, with nothing waiting
    /// in the ring, is returned as it is (the common case, and the cheap one); anything
    /// else goes through the ring or `ready`.
    #[inline]
    fn take(&mut self, rec: Rec<Out>) -> Option<Result<Out, Error>> {
        let next_in_order = self.ordered && rec.seq == self.ring.base && self.ring.slots.is_empty();
        match rec.body {
            Body::One(v) if next_in_order => {
                self.ring.base += 1;
                if self.stream_first.is_none() {
                    self.release += 1;
                }
                return Some(Ok(v));
            }
            Body::Consumed(stage, n) => self.consumed(stage, n),
            body if next_in_order => {
                self.ring.base += 1;
                self.deliver(body);
            }
            body if self.ordered => {
                self.ring.put(rec.seq, Slot::Ready(body));
            }
            body => {
                // (After a stream stage, numbers are the stream's: no ring.)
                if self.stream_first.is_some() || self.ring.put(rec.seq, Slot::Taken) {
                    self.deliver(body);
                }
            }
        }
        self.advance();
        None
    }

    /// Every producer is gone: what is still unfinished gets its cause.
    fn end_of_results(&mut self) {
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
    /// Calls of [`Running::submit`] under way (counted under `submit`'s lock, so that a
    /// shutdown that took the sender sees every submit that had it).
    submitting: std::sync::atomic::AtomicUsize,
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
            submitting: std::sync::atomic::AtomicUsize::new(0),
            next_seq: AtomicU64::new(0),
            tickets,
            engine: Mutex::new(engine),
            shared,
        })
    }

    /// Submits one item. Blocks while the pipeline is full (backpressure). `Err` only if
    /// the pipeline has shut down; otherwise the ticket will get exactly one outcome.
    pub fn submit(&self, item: In) -> Result<Ticket<Out>, Error> {
        let tx = {
            let tx = self.submit.lock().unwrap_or_else(|p| p.into_inner());
            let tx = tx.clone().ok_or(Error::Closed)?;
            self.submitting.fetch_add(1, Ordering::AcqRel);
            tx
        };
        let r = self.submit_with(&tx, item);
        self.submitting.fetch_sub(1, Ordering::AcqRel);
        r
    }

    /// [`Running::submit`] once it has the sender.
    fn submit_with(&self, tx: &Sender<(u64, In)>, item: In) -> Result<Ticket<Out>, Error> {
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
        // With every submitted item finished (and no more to come), nothing is in the
        // pipeline: stopping it now loses nothing, and takes its workers down at once
        // rather than passing the end of input through every stage in turn.
        let idle =
            self.submitting.load(Ordering::Acquire) == 0 && stats_of(&self.shared).in_flight == 0;
        let graceful = idle || engine.wait(Instant::now() + deadline);
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
