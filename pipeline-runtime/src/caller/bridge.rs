//! The caller's side of a running pipeline: thread stages, bridges to and from process
//! stages, the feeder, and the bookkeeping they share.
//!
//! # Shape
//! Stages are type-erased behind [`AnyStage`]; each erased stage knows its own `In`/`Out`
//! types and makes the typed pieces that touch them (channels, bridges, workers), handing
//! them to its neighbours as `Box<dyn Any>`. Composition already checked that neighbouring
//! types agree, so every downcast succeeds.
//!
//! Between two pieces in the caller, items move as batches (`Vec<Rec<T>>`) on bounded
//! crossbeam channels; between a piece in the caller and a process stage, as link records
//! ([`crate::transport::link`]). Every item carries its sequence number end to end and is exactly one
//! record at every point (outputs of one item travel together, a dropped or failed item
//! travels as a marker), so the collector can restore order and account for every item.
//!
//! # Stopping
//! Every blocking receive or send on a channel also watches `stop`, a channel that is
//! never sent to: dropping its sender (when the pipeline is dropped) wakes them all.
//! Threads blocked on sockets wake when the processes on the other side are killed.

use std::any::Any;
use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, select};

use crate::error::{Error, Worker};
use crate::os::fds::RtFd;
use crate::process::protocol::{self, CallerMsg};
use crate::stage::{Body, Emit, Opts, Rec, Stage, apply};
use crate::transport::link::{Commit, LinkReceiver, LinkSender};
use crate::transport::record::{self, Enc};

/// How often an idle sender reads death notices (see [`Output::service`]).
const IDLE_SERVICE: Duration = Duration::from_millis(20);

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

fn send_chan<T>(
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

/// The in-flight bound: the feeder takes credit per item, the collector gives it back when
/// the item is delivered. It bounds every queue and the reorder buffer at once.
#[derive(Debug)]
pub(crate) struct Window {
    state: Mutex<(usize, bool)>,
    cv: Condvar,
    cap: usize,
}

impl Window {
    pub(crate) fn new(cap: usize) -> Self {
        Window {
            state: Mutex::new((0, false)),
            cv: Condvar::new(),
            cap: cap.max(1),
        }
    }

    /// Blocks until at least one item may enter; returns how many (≤ `want`), or 0 once closed.
    pub(crate) fn take(&self, want: usize) -> usize {
        let mut g = self.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if g.1 {
                return 0;
            }
            if g.0 < self.cap {
                let n = want.min(self.cap - g.0).max(1);
                g.0 += n;
                return n;
            }
            g = self.cv.wait(g).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Like [`Window::take`], but gives up after `wait`: `None` on timeout.
    pub(crate) fn take_timeout(&self, want: usize, wait: Duration) -> Option<usize> {
        let mut g = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let deadline = Instant::now() + wait;
        loop {
            if g.1 {
                return Some(0);
            }
            if g.0 < self.cap {
                let n = want.min(self.cap - g.0).max(1);
                g.0 += n;
                return Some(n);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            g = self
                .cv
                .wait_timeout(g, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Like [`Window::take`] but never blocks (0 if full or closed).
    pub(crate) fn try_take(&self, want: usize) -> usize {
        let mut g = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if g.1 || g.0 >= self.cap {
            return 0;
        }
        let n = want.min(self.cap - g.0).max(1);
        g.0 += n;
        n
    }

    pub(crate) fn give_back(&self, n: usize) {
        if n == 0 {
            return;
        }
        let mut g = self.state.lock().unwrap_or_else(|p| p.into_inner());
        g.0 = g.0.saturating_sub(n);
        drop(g);
        self.cv.notify_all();
    }

    /// The most items the pipeline holds at once.
    pub(crate) fn cap(&self) -> usize {
        self.cap
    }

    pub(crate) fn close(&self) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).1 = true;
        self.cv.notify_all();
    }
}

/// What the pieces of one running pipeline share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub names: Vec<Arc<str>>,
    pub failed: Vec<AtomicU64>,
    pub dropped: Vec<AtomicU64>,
    pub restarts: Vec<AtomicU64>,
    pub completed: AtomicU64,
    pub issued: AtomicU64,
    /// Set when the pipeline was stopped abnormally: the cause every unfinished item gets.
    pub abort: Mutex<Option<Error>>,
    /// Set when the user's side stops the pipeline (drop, shutdown deadline).
    pub stopping: std::sync::atomic::AtomicBool,
    /// The control socket to the supervisor, once it is ready (weak: closing it is the
    /// engine's business).
    pub supervisor: std::sync::OnceLock<std::sync::Weak<RtFd>>,
    /// The control thread has seen the supervisor end (and set `abort` if it had a cause).
    pub control_done: std::sync::atomic::AtomicBool,
    pub window: Window,
}

impl Shared {
    pub(crate) fn new(names: Vec<Arc<str>>, window: usize) -> Self {
        let n = names.len();
        let zeros = || (0..n).map(|_| AtomicU64::new(0)).collect::<Vec<_>>();
        Shared {
            names,
            failed: zeros(),
            dropped: zeros(),
            restarts: zeros(),
            completed: AtomicU64::new(0),
            issued: AtomicU64::new(0),
            abort: Mutex::new(None),
            stopping: std::sync::atomic::AtomicBool::new(false),
            supervisor: std::sync::OnceLock::new(),
            control_done: std::sync::atomic::AtomicBool::new(false),
            window: Window::new(window),
        }
    }

    /// Counts one item's terminal outcome.
    pub(crate) fn count<T>(&self, body: &Body<T>) {
        self.count_outcome(body);
        self.completed.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a failure or a drop (the caller counts completions itself, in bulk).
    pub(crate) fn count_outcome<T>(&self, body: &Body<T>) {
        match body {
            Body::Dropped(i) => {
                if let Some(c) = self.dropped.get(*i as usize) {
                    c.fetch_add(1, Ordering::Relaxed);
                }
            }
            Body::Failed(i, _) => {
                if let Some(c) = self.failed.get(*i as usize) {
                    c.fetch_add(1, Ordering::Relaxed);
                }
            }
            _ => {}
        }
    }

    /// The error an unfinished item gets when the pipeline stops under it.
    pub(crate) fn unfinished(&self, seq: u64) -> Error {
        if self.supervisor.get().is_some()
            && !self.stopping.load(Ordering::Acquire)
            && !self.control_done.load(Ordering::Acquire)
        {
            // The links may close before the control thread has read why the supervisor
            // stopped (`Stopped`, or its death): wait for it (once, bounded) so the items
            // get that cause rather than "shut down".
            let deadline = Instant::now() + Duration::from_secs(2);
            while !self.control_done.load(Ordering::Acquire) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
            self.control_done.store(true, Ordering::Release);
        }
        match &*self.abort.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(Error::Died {
                stage,
                worker,
                cause,
                ..
            }) => Error::Died {
                stage: stage.clone(),
                item: seq,
                worker: *worker,
                cause: format!("{cause}; the pipeline was stopped"),
            },
            _ => Error::ShutDown { item: seq },
        }
    }

    pub(crate) fn set_abort(&self, e: Error) {
        let mut g = self.abort.lock().unwrap_or_else(|p| p.into_inner());
        if g.is_none() {
            *g = Some(e);
        }
    }

    /// A corrupt frame from a worker of process stage `stage` (on the caller's link `c.link`,
    /// which is that worker's slot): the supervisor kills and replaces the worker, and `rx`
    /// discards that link until the replacement says `HELLO`. Without a supervisor (it
    /// never happens) the pipeline is stopped instead. Returns whether to carry on.
    pub(crate) fn report_corrupt<F: std::os::fd::AsFd>(
        &self,
        stage: u32,
        rx: &mut LinkReceiver<F>,
        c: crate::transport::link::Corrupt,
        name: &str,
    ) -> bool {
        tracing::warn!(stage = %name, link = c.link, "forkpipe: corrupt frame from a worker: {}", c.what);
        let Some(sup) = self.supervisor.get().and_then(std::sync::Weak::upgrade) else {
            self.set_abort(Error::Start(format!(
                "corrupt frame from stage '{name}': {}",
                c.what
            )));
            return false;
        };
        rx.void(c.link);
        protocol::send(&*sup, &CallerMsg::Corrupt { stage, report: c });
        true
    }
}

/// The threads of one pipeline, joined with a deadline on stop: a thread stuck in user
/// code (an endless stage function, a blocking input iterator) cannot be interrupted, so it
/// is detached rather than waited for forever.
#[derive(Debug, Default)]
pub(crate) struct Threads {
    list: Mutex<Vec<Spawned>>,
}

#[derive(Debug)]
struct Spawned {
    handle: JoinHandle<()>,
    done: Receiver<()>,
    /// Set while the thread runs user code that may block forever (the input iterator).
    in_user: Option<Arc<std::sync::atomic::AtomicBool>>,
}

impl Threads {
    pub(crate) fn spawn(&self, name: &str, f: impl FnOnce() + Send + 'static) -> io::Result<()> {
        self.spawn_inner(name, None, f)
    }

    /// [`Threads::spawn`] for a thread that flags (in `in_user`) the times it spends in user
    /// code: a stop does not wait for it then (it could wait forever), it detaches it.
    pub(crate) fn spawn_flagged(
        &self,
        name: &str,
        in_user: Arc<std::sync::atomic::AtomicBool>,
        f: impl FnOnce() + Send + 'static,
    ) -> io::Result<()> {
        self.spawn_inner(name, Some(in_user), f)
    }

    fn spawn_inner(
        &self,
        name: &str,
        in_user: Option<Arc<std::sync::atomic::AtomicBool>>,
        f: impl FnOnce() + Send + 'static,
    ) -> io::Result<()> {
        let (done_tx, done_rx) = crossbeam_channel::bounded::<()>(0);
        let handle = std::thread::Builder::new()
            .name(format!("forkpipe-{name}"))
            .spawn(move || {
                let _done = done_tx; // dropped when the thread ends, however it ends
                f();
            })?;
        self.list
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Spawned {
                handle,
                done: done_rx,
                in_user,
            });
        Ok(())
    }

    /// Joins every thread that ends before `deadline`; detaches the others (at once, one
    /// that is in user code). Returns true if all ended.
    pub(crate) fn join(&self, deadline: Instant) -> bool {
        let list = std::mem::take(&mut *self.list.lock().unwrap_or_else(|p| p.into_inner()));
        let mut all = true;
        for Spawned {
            handle: h,
            done,
            in_user,
        } in list
        {
            let mut left = deadline.saturating_duration_since(Instant::now());
            if in_user.is_some_and(|u| u.load(Ordering::Acquire)) {
                // Give it a moment to come back from a quick call; then let it go.
                left = left.min(Duration::from_millis(50));
            }
            match done.recv_timeout(left) {
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                    all = false;
                    tracing::warn!(thread = ?h.thread().name(), "forkpipe: thread still busy in user code; detached");
                }
                _ => {
                    let _ = h.join();
                }
            }
        }
        all
    }
}

/// Context for spawning a pipeline's pieces.
pub(crate) struct Rt {
    pub stop: Receiver<()>,
    /// Each thread worker reports its `init` here once.
    pub inits: Sender<Result<(), Error>>,
    pub threads: Arc<Threads>,
    pub shared: Arc<Shared>,
}

/// A stage with its types erased (see the module docs).
pub(crate) trait AnyStage: Send + Sync {
    fn name(&self) -> &str;
    fn opts(&self) -> &Opts;
    /// A channel into this stage: (`Output<In>`, `Receiver<Batch<In>>`), boxed.
    fn input_channel(&self, cap: usize) -> (Box<dyn Any + Send>, Box<dyn Any + Send>);
    /// Runs this (thread) stage: `rx` from [`AnyStage::input_channel`], `out`: `Output<Out>`.
    fn spawn_threads(
        self: Arc<Self>,
        idx: u32,
        rx: Box<dyn Any + Send>,
        out: Box<dyn Any + Send>,
        rt: &Rt,
    ) -> io::Result<()>;
    /// An `Output<In>` writing straight to this (process) stage's workers.
    fn link_output(&self, idx: u32, links: Vec<RtFd>, credit: usize) -> Box<dyn Any + Send>;
    /// A thread moving batches from `rx` (`Receiver<Batch<In>>`) into this stage's workers.
    fn spawn_dispatcher(
        &self,
        idx: u32,
        rx: Box<dyn Any + Send>,
        links: Vec<RtFd>,
        credit: usize,
        rt: &Rt,
    ) -> io::Result<()>;
    /// A thread moving this (process) stage's outputs from `links` into `out` (`Output<Out>`).
    fn spawn_merger(
        &self,
        idx: u32,
        links: Vec<RtFd>,
        out: Box<dyn Any + Send>,
        rt: &Rt,
    ) -> io::Result<()>;
    /// The body of a worker process of this stage (in the child). Returns when its input
    /// ended and everything it sent was acknowledged.
    fn worker_main(
        &self,
        ctx: crate::process::worker::WorkerCtx<std::os::fd::OwnedFd>,
    ) -> io::Result<crate::process::worker::WorkerEnd>;
    /// Runs a worker of this link stage on a thread of the caller (the halves of a
    /// `pipe_next` pair that are not `subprocess`).
    fn spawn_link_worker(
        self: Arc<Self>,
        ctx: crate::process::worker::WorkerCtx<RtFd>,
        rt: &Rt,
    ) -> io::Result<()>;
}

impl<In: Send + 'static, Out: Send + 'static> AnyStage for Stage<In, Out> {
    fn name(&self) -> &str {
        &self.name
    }

    fn opts(&self) -> &Opts {
        &self.opts
    }

    fn input_channel(&self, cap: usize) -> (Box<dyn Any + Send>, Box<dyn Any + Send>) {
        let (tx, rx) = crossbeam_channel::bounded::<Batch<In>>(cap);
        let split = if self.opts.process {
            1
        } else {
            self.opts.workers
        };
        (Box::new(Output::Chan { tx, split }), Box::new(rx))
    }

    fn spawn_threads(
        self: Arc<Self>,
        idx: u32,
        rx: Box<dyn Any + Send>,
        out: Box<dyn Any + Send>,
        rt: &Rt,
    ) -> io::Result<()> {
        let rx = *rx
            .downcast::<Receiver<Batch<In>>>()
            .expect("input channel of this stage");
        let out = *out.downcast::<Output<Out>>().expect("output of this stage");
        if let Some(f) = &self.stream {
            for w in 0..self.opts.workers {
                let pull = crate::caller::stream_pull::ChanPull::<In, Out> {
                    rx: rx.clone(),
                    stop: rt.stop.clone(),
                    buf: VecDeque::new(),
                    vals: VecDeque::new(),
                    out: out.try_clone().expect("thread stages write to channels"),
                    out_batch: Vec::new(),
                    next_seq: w as u64,
                    stride: self.opts.workers as u64,
                    consumed: 0,
                    position: 0,
                    idx,
                    stopped: false,
                };
                let f = Arc::clone(f);
                let name = self.name.to_string();
                let inits = rt.inits.clone();
                rt.threads.spawn(&format!("{}-{w}", self.name), move || {
                    let _ = inits.send(Ok(()));
                    drop(inits);
                    crate::stream::run(
                        &*f,
                        std::rc::Rc::new(std::cell::RefCell::new(pull)),
                        &name,
                        Worker::Thread(w),
                    );
                })?;
            }
            return Ok(());
        }
        for w in 0..self.opts.workers {
            let rx = rx.clone();
            let mut out = out.try_clone().expect("thread stages write to channels");
            let stop = rt.stop.clone();
            let me = Arc::clone(&self);
            let inits = rt.inits.clone();
            rt.threads.spawn(&format!("{}-{w}", self.name), move || {
                let worker = Worker::Thread(w);
                let make = || match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (me.make)())) {
                    Ok(r) => r,
                    Err(p) => Err(format!("panicked: {}", crate::error::panic_message(p.as_ref()))),
                };
                let mut f = match make() {
                    Ok(f) => {
                        let _ = inits.send(Ok(()));
                        f
                    }
                    Err(message) => {
                        let _ = inits.send(Err(Error::Init { stage: me.name.to_string(), worker, message }));
                        return;
                    }
                };
                drop(inits);
                let mut emit = Emit::new();
                while let Some(batch) = recv_chan(&rx, &stop) {
                    let mut out_batch: Batch<Out> = Vec::with_capacity(batch.len());
                    for r in batch {
                        let body = apply(&mut f, idx, &me.name, worker, r.seq, r.body, &mut emit);
                        let panicked = matches!(&body, Body::Failed(_, e) if matches!(**e, Error::Panicked { .. }));
                        out_batch.push(Rec { seq: r.seq, body });
                        if panicked && me.opts.stateful {
                            // Its state may be half-updated: start afresh.
                            f = match make() {
                                Ok(f) => f,
                                Err(message) => {
                                    let stage = me.name.to_string();
                                    Box::new(move |_: In, _: &mut Emit<Out>| {
                                        Err(format!("init of stage '{stage}' failed after a panic: {message}"))
                                    })
                                }
                            };
                        }
                    }
                    if out.send(out_batch, &stop).is_err() {
                        return;
                    }
                }
            })?;
        }
        Ok(())
    }

    fn link_output(&self, idx: u32, links: Vec<RtFd>, credit: usize) -> Box<dyn Any + Send> {
        let wire = self.wire.expect("process stages have wire functions");
        Box::new(Output::<In>::Links {
            tx: Box::new(LinkSender::new(links, credit)),
            enc: wire.encode_in,
            stage_idx: idx,
            stage: Arc::from(&*self.name),
        })
    }

    fn spawn_dispatcher(
        &self,
        idx: u32,
        rx: Box<dyn Any + Send>,
        links: Vec<RtFd>,
        credit: usize,
        rt: &Rt,
    ) -> io::Result<()> {
        let rx = *rx
            .downcast::<Receiver<Batch<In>>>()
            .expect("input channel of this stage");
        let mut out = *self
            .link_output(idx, links, credit)
            .downcast::<Output<In>>()
            .expect("link output");
        let stop = rt.stop.clone();
        rt.threads.spawn(&format!("{}-in", self.name), move || {
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

    fn spawn_merger(
        &self,
        _idx: u32,
        links: Vec<RtFd>,
        out: Box<dyn Any + Send>,
        rt: &Rt,
    ) -> io::Result<()> {
        let wire = self.wire.expect("process stages have wire functions");
        let mut out = *out.downcast::<Output<Out>>().expect("output of this stage");
        let stop = rt.stop.clone();
        let shared = Arc::clone(&rt.shared);
        let name = self.name.clone();
        rt.threads.spawn(&format!("{}-out", self.name), move || {
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
                let mut batch = Vec::new();
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
                    let body = match record::decode(r.tag, rx.payload(&r), wire.decode_out) {
                        Ok(b) => b,
                        Err(message) => Body::Failed(
                            _idx,
                            Box::new(Error::Codec {
                                stage: name.to_string(),
                                item: r.seq,
                                worker: Worker::Process(std::process::id()),
                                what: "decode the output of".into(),
                                message,
                            }),
                        ),
                    };
                    batch.push(Rec { seq: r.seq, body });
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

    fn worker_main(
        &self,
        ctx: crate::process::worker::WorkerCtx<std::os::fd::OwnedFd>,
    ) -> io::Result<crate::process::worker::WorkerEnd> {
        crate::process::worker::run(self, ctx)
    }

    fn spawn_link_worker(
        self: Arc<Self>,
        ctx: crate::process::worker::WorkerCtx<RtFd>,
        rt: &Rt,
    ) -> io::Result<()> {
        let inits = rt.inits.clone();
        let name = format!("{}-{}", self.name, ctx.position);
        rt.threads.spawn(&name, move || {
            let _ = inits.send(Ok(()));
            drop(inits);
            if let Err(e) = crate::process::worker::run(&*self, ctx) {
                tracing::debug!(stage = %self.name, "forkpipe: link worker thread ended: {e}");
            }
        })
    }
}

/// Pulls items from the input and feeds them to the first stage, within the window.
pub(crate) enum Feed<In> {
    Iter(Box<dyn Iterator<Item = In> + Send>),
    /// A source: the iterator is made on the feeding thread.
    Lazy(
        String,
        Box<dyn FnOnce() -> Box<dyn Iterator<Item = In> + Send> + Send>,
    ),
    Chan(Receiver<(u64, In)>),
}

pub(crate) fn spawn_feeder<In: Send + 'static>(
    feed: Feed<In>,
    mut out: Output<In>,
    rt: &Rt,
) -> io::Result<()> {
    let stop = rt.stop.clone();
    let shared = Arc::clone(&rt.shared);
    let in_user = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = Arc::clone(&in_user);
    rt.threads.spawn_flagged("feeder", flag, move || {
        let user = |on: bool| in_user.store(on, Ordering::Release);
        let window = &shared.window;
        let mut chunk = 1usize;
        let mut source: Option<String> = None;
        let feed = match feed {
            Feed::Lazy(name, make) => {
                source = Some(name);
                user(true);
                let made = std::panic::catch_unwind(std::panic::AssertUnwindSafe(make));
                user(false);
                match made {
                    Ok(it) => Feed::Iter(it),
                    Err(p) => {
                        let message = crate::error::panic_message(p.as_ref());
                        Feed::Iter(Box::new(std::iter::once_with(move || -> In {
                            std::panic::panic_any(message)
                        })))
                    }
                }
            }
            f => f,
        };
        let ok = match feed {
            Feed::Lazy(..) => unreachable!("made into an iterator above"),
            Feed::Iter(mut it) => {
                let mut seq = 0u64;
                loop {
                    let mut n = window.try_take(chunk);
                    if n == 0 {
                        if out.flush().is_err() {
                            break false;
                        }
                        n = loop {
                            match window.take_timeout(chunk, IDLE_SERVICE) {
                                Some(n) => break n,
                                None => {
                                    if out.service().is_err() {
                                        break 0;
                                    }
                                }
                            }
                        };
                        if n == 0 {
                            break false;
                        }
                    }
                    let t0 = Instant::now();
                    let mut batch = Vec::with_capacity(n);
                    let mut ended = false;
                    for _ in 0..n {
                        user(true);
                        let next =
                            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| it.next()));
                        user(false);
                        match next {
                            Ok(Some(x)) => {
                                batch.push(Rec {
                                    seq,
                                    body: Body::One(x),
                                });
                                seq += 1;
                            }
                            Ok(None) => {
                                ended = true;
                                break;
                            }
                            Err(p) => {
                                let message = crate::error::panic_message(p.as_ref());
                                let e = Error::Input {
                                    stage: source.clone(),
                                    item: seq,
                                    message,
                                };
                                batch.push(Rec {
                                    seq,
                                    body: Body::Failed(u32::MAX, Box::new(e)),
                                });
                                seq += 1;
                                ended = true;
                                break;
                            }
                        }
                    }
                    let unused = n - batch.len();
                    shared.issued.store(seq, Ordering::Release);
                    window.give_back(unused);
                    if !batch.is_empty() && out.send(batch, &stop).is_err() {
                        break false;
                    }
                    if ended {
                        break true;
                    }
                    let slow = t0.elapsed() > Duration::from_millis(1);
                    chunk = if slow {
                        (chunk / 2).max(1)
                    } else {
                        (chunk * 2).min(512)
                    };
                    if out.flush().is_err() {
                        break false;
                    }
                }
            }
            Feed::Chan(rx) => loop {
                let first = match rx.try_recv() {
                    Ok(x) => x,
                    Err(_) => {
                        if out.flush().is_err() {
                            break false;
                        }
                        let got = loop {
                            select! {
                                recv(rx) -> r => break r.ok(),
                                recv(stop) -> _ => break None,
                                default(IDLE_SERVICE) => {
                                    if out.service().is_err() {
                                        break None;
                                    }
                                }
                            }
                        };
                        match got {
                            Some(x) => x,
                            None => {
                                break stop.try_recv()
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
                // Credit is taken per item by `submit` (see `Running::submit`).
                let batch = batch
                    .into_iter()
                    .map(|(seq, x)| Rec {
                        seq,
                        body: Body::One(x),
                    })
                    .collect();
                if out.send(batch, &stop).is_err() {
                    break false;
                }
            },
        };
        if ok && stop.try_recv() != Err(crossbeam_channel::TryRecvError::Disconnected) {
            let _ = out.flush();
            out.finish();
        }
    })
}
