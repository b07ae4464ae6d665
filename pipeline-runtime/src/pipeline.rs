//! Pipelines: composition, start, and the handles of a running pipeline.

use std::any::Any;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::marker::PhantomData;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, select};

use crate::caller::bridge::{self, AnyStage, Batch, Feed, Output, Rt, Shared, Threads};
use crate::error::Error;
use crate::os::fds::{self, RtFd};
use crate::os::sys;
use crate::process::protocol::{self, SupMsg};
use crate::process::supervisor::{self, ProcStage};
use crate::stage::{Body, Consumer, DEFAULT_QUEUE, PipeSide, Producer, Source, Stage};

type FeederFn = Box<
    dyn FnOnce(Option<Box<dyn Any + Send>>, Box<dyn Any + Send>, &Rt) -> std::io::Result<()> + Send,
>;

/// A typed chain of stages taking `In` items and producing `Out` items.
///
/// Built with [`Pipeline::new`] and [`Pipeline::then`] (what `pipeline![a | b]` expands to),
/// then run with [`Pipeline::run`], [`Pipeline::results`] or [`Pipeline::start`]:
///
/// ```
/// use pipeline_runtime::{Pipeline, Stage};
/// let mut p = Pipeline::new(Stage::map("inc", |x: u64| x + 1).subprocess());
/// for _ in 0..9 {
///     p = p.then(Stage::map("inc", |x: u64| x + 1).subprocess());
/// }
/// let out: Vec<u64> = p.run([0u64, 10])?.collect::<Result<_, _>>()?;
/// assert_eq!(out, [10, 20]);
/// # Ok::<(), pipeline_runtime::Error>(())
/// ```
pub struct Pipeline<In, Out> {
    stages: Vec<Arc<dyn AnyStage>>,
    source: Option<String>,
    feeder: FeederFn,
    _types: PhantomData<fn(In) -> Out>,
}

impl<In, Out> fmt::Debug for Pipeline<In, Out> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pipeline")
            .field("source", &self.source)
            .field(
                "stages",
                &self
                    .stages
                    .iter()
                    .map(|s| s.name().to_string())
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// A pipeline whose last stage is a `pipe_next` producer: it needs its consumer before it
/// can run.
#[derive(Debug)]
pub struct PipePending<In, Mid> {
    pipeline: Pipeline<In, Mid>,
    producer: Producer<Mid>,
}

impl<In: Send + 'static, Mid: crate::transport::codec::Wire> PipePending<In, Mid> {
    /// Appends the consumer that reads the producer's bytes.
    pub fn then_consumer<N: crate::transport::codec::Wire>(
        self,
        consumer: Consumer<Mid, N>,
    ) -> Pipeline<In, N> {
        self.pipeline.then_pipe(self.producer, consumer)
    }
}

/// What can start a pipeline: a [`Stage`] (the pipeline takes its input) or a [`Source`]
/// (the pipeline makes its own items; its input type is `()`).
pub trait FirstStage {
    /// The pipeline's input type.
    type In;
    /// The first stage's output type.
    type Out;
    #[doc(hidden)]
    fn into_pipeline(self) -> Pipeline<Self::In, Self::Out>;
}

impl<In: Send + 'static, Out: Send + 'static> FirstStage for Stage<In, Out> {
    type In = In;
    type Out = Out;
    fn into_pipeline(self) -> Pipeline<In, Out> {
        Pipeline {
            stages: vec![Arc::new(self)],
            source: None,
            feeder: Box::new(|feed, out, rt| {
                let feed = *feed
                    .expect("an input feed")
                    .downcast::<Feed<In>>()
                    .expect("feed of the input type");
                let out = *out
                    .downcast::<Output<In>>()
                    .expect("output of the input type");
                bridge::spawn_feeder(feed, out, rt)
            }),
            _types: PhantomData,
        }
    }
}

impl<Out: Send + 'static> FirstStage for Source<Out> {
    type In = ();
    type Out = Out;
    fn into_pipeline(self) -> Pipeline<(), Out> {
        let name = self.name.to_string();
        let make = self.make;
        let feed_name = name.clone();
        Pipeline {
            stages: Vec::new(),
            source: Some(name),
            feeder: Box::new(move |_, out, rt| {
                let out = *out
                    .downcast::<Output<Out>>()
                    .expect("output of the source type");
                bridge::spawn_feeder(Feed::Lazy(feed_name, make), out, rt)
            }),
            _types: PhantomData,
        }
    }
}

impl<In: Send + 'static, Out: Send + 'static> Pipeline<In, Out> {
    /// A pipeline of one stage (or one source).
    pub fn new(first: impl FirstStage<In = In, Out = Out>) -> Self {
        first.into_pipeline()
    }

    /// Appends a stage; its input type must be this pipeline's output type.
    pub fn then<N: Send + 'static>(self, next: Stage<Out, N>) -> Pipeline<In, N> {
        let mut stages = self.stages;
        stages.push(Arc::new(next));
        Pipeline {
            stages,
            source: self.source,
            feeder: self.feeder,
            _types: PhantomData,
        }
    }

    /// Appends a `pipe_next` pair: `producer` writes each item's bytes while `consumer`
    /// reads them (see [`Producer`]). The pair runs `producer`'s `workers` couples.
    pub fn then_pipe<N>(
        self,
        producer: Producer<Out>,
        consumer: Consumer<Out, N>,
    ) -> Pipeline<In, N>
    where
        Out: crate::transport::codec::Wire,
        N: crate::transport::codec::Wire,
    {
        let (mut p, mut c) = (producer.0, consumer.0);
        c.opts.workers = p.opts.workers;
        let process = p.opts.process || c.opts.process;
        p.opts.process = process;
        c.opts.process = process;
        self.then(p).then(c)
    }

    /// Appends the producer of a `pipe_next` pair; the next stage must be its consumer
    /// ([`PipePending::then_consumer`]). What `pipeline![.. | p | c]` expands to.
    pub fn then_producer(self, producer: Producer<Out>) -> PipePending<In, Out> {
        PipePending {
            pipeline: self,
            producer,
        }
    }

    /// Number of stages (a source is not counted).
    pub fn len(&self) -> usize {
        self.stages.len()
    }

    /// True for a pipeline that is only a source.
    pub fn is_empty(&self) -> bool {
        self.stages.is_empty()
    }

    /// Runs the pipeline over `input`, streaming: items are pulled from `input` on a
    /// background thread only as the pipeline's queues free up, and results come out of
    /// the returned iterator — in input order unless a stage is `unordered`.
    ///
    /// Returns `Err` only if the pipeline cannot start. After that every input item has
    /// exactly one outcome in the results: its outputs (zero or more) or one [`Error`].
    /// Dropping the iterator stops the pipeline (see [`Results`]).
    pub fn run<I>(self, input: I) -> Result<Results<Out>, Error>
    where
        I: IntoIterator<Item = In>,
        I::IntoIter: Send + 'static,
    {
        let feed: Box<dyn Any + Send> = Box::new(Feed::Iter(Box::new(input.into_iter())));
        let shape = self.shape();
        let (engine, rx) = self.launch(Some(feed))?;
        Ok(Results::new(engine, rx, shape))
    }

    /// Starts the pipeline for work items: [`Running::submit`] from any thread, then
    /// [`Ticket::wait`].
    pub fn start(self) -> Result<Running<In, Out>, Error> {
        if let Some(i) = self.shape().stream_first {
            return Err(Error::Start(format!(
                "stage '{}' is a `stream` stage: its outputs belong to no submitted item; use `run(input)`",
                self.stages[i as usize].name()
            )));
        }
        let (tx, rx) = crossbeam_channel::unbounded::<(u64, In)>();
        let feed: Box<dyn Any + Send> = Box::new(Feed::Chan(rx));
        let (engine, final_rx) = self.launch(Some(feed))?;
        Running::new(engine, tx, final_rx)
    }

    fn shape(&self) -> Shape {
        let stream = |s: &Arc<dyn AnyStage>| s.opts().stream;
        Shape {
            // Outputs keep input order unless a stage is unordered; after a stream stage
            // with several workers, order is completion order.
            ordered: !self
                .stages
                .iter()
                .any(|s| s.opts().unordered || (stream(s) && s.opts().workers > 1)),
            stream_first: self.stages.iter().position(stream).map(|i| i as u32),
        }
    }

    fn launch(
        self,
        feed: Option<Box<dyn Any + Send>>,
    ) -> Result<(Engine, Receiver<Batch<Out>>), Error> {
        let stages = self.stages;
        let n = stages.len();
        let names: Vec<Arc<str>> = stages.iter().map(|s| Arc::from(s.name())).collect();
        let window = stages
            .iter()
            .map(|s| s.opts().queue * s.opts().workers)
            .sum::<usize>()
            + DEFAULT_QUEUE;
        let shared = Arc::new(Shared::new(names, window));
        // Link stages talk over sockets: process stages, and both halves of a `pipe_next`
        // pair (on threads unless `subprocess`). Only process stages are forked.
        let is_proc = |i: usize| i < n && stages[i].opts().process;
        let is_link =
            |i: usize| i < n && (stages[i].opts().process || stages[i].opts().pipe.is_some());
        let is_producer = |i: usize| i < n && stages[i].opts().pipe == Some(PipeSide::Producer);
        let start_err = |what: &str, e: std::io::Error| Error::Start(format!("{what}: {e}"));

        // Every socket of the pipeline, made before the supervisor is forked.
        let mut caller_in: Vec<Vec<RtFd>> = (0..n).map(|_| Vec::new()).collect();
        let mut caller_out: Vec<Vec<RtFd>> = (0..n).map(|_| Vec::new()).collect();
        let mut w_in: Vec<Vec<Vec<RtFd>>> = stages
            .iter()
            .map(|s| (0..s.opts().workers).map(|_| Vec::new()).collect())
            .collect();
        let mut w_out: Vec<Vec<Vec<RtFd>>> = stages
            .iter()
            .map(|s| (0..s.opts().workers).map(|_| Vec::new()).collect())
            .collect();
        let mut streams: Vec<Vec<Option<RtFd>>> = stages
            .iter()
            .map(|s| (0..s.opts().workers).map(|_| None).collect())
            .collect();
        for i in (0..n).filter(|&i| is_link(i)) {
            if i == 0 || !is_link(i - 1) {
                for wk in w_in[i].iter_mut() {
                    let (a, b) =
                        fds::seqpacket_pair().map_err(|e| start_err("socketpair failed", e))?;
                    caller_in[i].push(a);
                    wk.push(b);
                }
            }
            if is_producer(i) {
                // A pipe_next couple: producer j talks to consumer j only, over a link for
                // the items and a stream socket for the bytes.
                for j in 0..stages[i].opts().workers {
                    let (a, b) =
                        fds::seqpacket_pair().map_err(|e| start_err("socketpair failed", e))?;
                    w_out[i][j].push(a);
                    w_in[i + 1][j].push(b);
                    let (sa, sb) =
                        fds::stream_pair().map_err(|e| start_err("socketpair failed", e))?;
                    crate::transport::pipe::tune(&sa);
                    crate::transport::pipe::tune(&sb);
                    streams[i][j] = Some(sa);
                    streams[i + 1][j] = Some(sb);
                }
            } else if is_link(i + 1) {
                // A mesh: every worker of stage i talks to every worker of stage i + 1.
                let (left, right) = w_out.split_at_mut(i + 1);
                let _ = right;
                for out in left[i].iter_mut() {
                    for inp in w_in[i + 1].iter_mut() {
                        let (a, b) =
                            fds::seqpacket_pair().map_err(|e| start_err("socketpair failed", e))?;
                        out.push(a);
                        inp.push(b);
                    }
                }
            } else {
                for wk in w_out[i].iter_mut() {
                    let (a, b) =
                        fds::seqpacket_pair().map_err(|e| start_err("socketpair failed", e))?;
                    wk.push(a);
                    caller_out[i].push(b);
                }
            }
        }

        let mut supervisor = None;
        if (0..n).any(is_proc) {
            if sys::thread_count() > 1 {
                tracing::debug!(
                    "forkpipe: starting a pipeline in a multi-threaded process; a stage that takes a lock \
                     another thread held at start (stdout, env) can block — give such stages a timeout"
                );
            }
            let (c_caller, c_sup) =
                fds::seqpacket_pair().map_err(|e| start_err("socketpair failed", e))?;
            let plan: Vec<ProcStage> = (0..n)
                .filter(|&i| is_proc(i))
                .map(|i| ProcStage {
                    idx: i as u32,
                    stage: Arc::clone(&stages[i]),
                    credit: stages[i].opts().queue,
                    timeout: stages[i].opts().timeout,
                    workers: (0..stages[i].opts().workers)
                        .map(|j| {
                            (
                                w_in[i][j].iter().map(|f| f.as_raw_fd()).collect(),
                                w_out[i][j].iter().map(|f| f.as_raw_fd()).collect(),
                            )
                        })
                        .collect(),
                    streams: streams[i]
                        .iter()
                        .map(|s| s.as_ref().map(|f| f.as_raw_fd()))
                        .collect(),
                    couple: match stages[i].opts().pipe {
                        Some(PipeSide::Producer) => Some(true),
                        Some(PipeSide::Consumer) => Some(false),
                        None => None,
                    },
                })
                .collect();
            crate::stage::install_panic_hook();
            // SAFETY: the child is the supervisor: it only uses its own data, raw syscalls and
            // allocation (glibc resets its malloc locks at fork), and leaves with `_exit`.
            match unsafe { fds::fork() }.map_err(|e| start_err("fork failed", e))? {
                fds::Fork::Child(inherited) => {
                    // Nothing may unwind past this point: the stack below is the caller's.
                    let ctl = c_sup.as_raw_fd();
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
                        supervisor::run(inherited, ctl, plan);
                    }));
                    sys::exit_now(1)
                }
                fds::Fork::Parent(pid) => {
                    drop(plan);
                    drop(c_sup);
                    // The forked stages' ends now live in the supervisor.
                    for i in (0..n).filter(|&i| is_proc(i)) {
                        w_in[i].clear();
                        w_out[i].clear();
                        streams[i].clear();
                    }
                    // The supervisor says it is alive at once; if it does not, it is stuck on
                    // a lock another thread held when we forked: do not hang with it.
                    let mut p = [libc::pollfd {
                        fd: c_caller.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    }];
                    if sys::poll(&mut p, Some(Duration::from_secs(10))).unwrap_or(0) == 0 {
                        sys::kill(pid, nix::sys::signal::Signal::SIGKILL);
                        let _ = sys::wait_pid(pid, false);
                        return Err(Error::Start(
                            "the supervisor process did not start within 10 s (a lock held by another \
                             thread when it was forked?)"
                                .into(),
                        ));
                    }
                    let mut first = protocol::recv_blocking(&c_caller);
                    if matches!(first, Some(SupMsg::Alive)) {
                        first = protocol::recv_blocking(&c_caller);
                    }
                    match first {
                        Some(SupMsg::Ready) => {
                            let c = Arc::new(c_caller);
                            let _ = shared.supervisor.set(Arc::downgrade(&c));
                            supervisor = Some((pid, c));
                        }
                        other => {
                            drop(c_caller);
                            let _ = sys::wait_pid(pid, false);
                            return Err(match other {
                                Some(SupMsg::StartFailed(m)) => Error::Start(m),
                                Some(SupMsg::InitFailed {
                                    stage,
                                    pid,
                                    message,
                                }) => Error::Init {
                                    stage: stages[stage as usize].name().to_string(),
                                    worker: crate::error::Worker::Process(pid),
                                    message,
                                },
                                _ => Error::Start("the supervisor process died at start".into()),
                            });
                        }
                    }
                }
            }
        }

        let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(0);
        let threads = Arc::new(Threads::default());
        let (inits_tx, inits_rx) = crossbeam_channel::unbounded();
        let rt = Rt {
            stop: stop_rx,
            inits: inits_tx,
            threads: Arc::clone(&threads),
            shared: Arc::clone(&shared),
        };
        let mut engine = Engine {
            stop: Some(stop_tx),
            stop_rx: rt.stop.clone(),
            threads,
            shared: Arc::clone(&shared),
            control: supervisor.as_ref().map(|(_, c)| Arc::clone(c)),
            done: false,
        };
        let (final_tx, final_rx) = crossbeam_channel::bounded::<Batch<Out>>(64);
        let spawned = (|| -> std::io::Result<()> {
            if let Some((pid, ctl)) = supervisor {
                let shared = Arc::clone(&shared);
                rt.threads
                    .spawn("control", move || control_loop(pid, ctl, shared))?;
            }
            let mut next: Box<dyn Any + Send> = Box::new(Output::<Out>::Chan {
                tx: final_tx,
                split: 1,
            });
            for i in (0..n).rev() {
                let s = &stages[i];
                let idx = i as u32;
                if is_link(i) && !is_proc(i) {
                    // A link stage on threads of this process (a pipe_next half).
                    for (j, ((ins, outs), stream)) in std::mem::take(&mut w_in[i])
                        .into_iter()
                        .zip(std::mem::take(&mut w_out[i]))
                        .zip(std::mem::take(&mut streams[i]))
                        .enumerate()
                    {
                        let ctx = crate::process::worker::WorkerCtx {
                            idx,
                            ins,
                            outs,
                            credit: s.opts().queue,
                            epoch: 0,
                            slot: Box::leak(Box::new(crate::os::sys::SlotState::default())),
                            give_up: None,
                            ctl: None,
                            stream,
                            position: j,
                            of: s.opts().workers,
                            resync_inputs: true,
                            in_epochs: Vec::new(),
                        };
                        Arc::clone(s).spawn_link_worker(ctx, &rt)?;
                    }
                }
                if !is_link(i) {
                    let (o, rx) = s.input_channel(16);
                    Arc::clone(s).spawn_threads(idx, rx, next, &rt)?;
                    next = o;
                    continue;
                }
                if !is_link(i + 1) {
                    s.spawn_merger(idx, std::mem::take(&mut caller_out[i]), next, &rt)?;
                }
                next = Box::new(());
                if i == 0 || !is_link(i - 1) {
                    let links = std::mem::take(&mut caller_in[i]);
                    if i == 0 {
                        next = s.link_output(idx, links, DEFAULT_QUEUE);
                    } else {
                        let (o, rx) = s.input_channel(16);
                        s.spawn_dispatcher(idx, rx, links, stages[i - 1].opts().queue, &rt)?;
                        next = o;
                    }
                }
            }
            (self.feeder)(feed, next, &rt)
        })();
        if let Err(e) = spawned {
            engine.kill();
            return Err(start_err("could not spawn a thread", e));
        }
        // Every thread worker runs its stage's `init` first; start only when all did.
        drop(rt);
        let thread_workers: usize = stages
            .iter()
            .filter(|s| !s.opts().process)
            .map(|s| s.opts().workers)
            .sum();
        for _ in 0..thread_workers {
            match inits_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    engine.kill();
                    return Err(e);
                }
                Err(_) => break,
            }
        }
        Ok((engine, final_rx))
    }
}

impl<Out: Send + 'static> Pipeline<(), Out> {
    /// Runs a pipeline that starts with a `source` stage; see [`Pipeline::run`].
    pub fn results(self) -> Result<Results<Out>, Error> {
        if self.source.is_none() {
            return Err(Error::Start(
                "`results()` needs a pipeline that starts with a `source` stage; use `run(input)`"
                    .into(),
            ));
        }
        let shape = self.shape();
        let (engine, rx) = self.launch(None)?;
        Ok(Results::new(engine, rx, shape))
    }
}

fn control_loop(pid: nix::unistd::Pid, ctl: Arc<RtFd>, shared: Arc<Shared>) {
    let mut done = false;
    while let Some(msg) = protocol::recv_blocking::<SupMsg>(&*ctl) {
        match msg {
            SupMsg::WorkerDied {
                stage,
                pid,
                cause,
                restarted,
            } => {
                let name = shared
                    .names
                    .get(stage as usize)
                    .map_or("?".to_string(), |s| s.to_string());
                tracing::warn!(stage = %name, pid, %cause, restarted, "forkpipe: worker died");
                if let Some(c) = shared.restarts.get(stage as usize) {
                    c.fetch_add(1, Ordering::Relaxed);
                }
            }
            SupMsg::Done => done = true,
            SupMsg::Stopped { stage, pid, cause } => {
                let name = shared
                    .names
                    .get(stage as usize)
                    .map_or("?".to_string(), |s| s.to_string());
                tracing::error!(stage = %name, pid, %cause, "forkpipe: pipeline stopped");
                shared.set_abort(Error::Died {
                    stage: name,
                    item: 0,
                    worker: crate::error::Worker::Process(pid),
                    cause,
                });
                shared.window.close();
                done = true;
            }
            SupMsg::Alive | SupMsg::Ready | SupMsg::StartFailed(_) | SupMsg::InitFailed { .. } => {}
        }
    }
    let status = sys::wait_pid(pid, false).ok().flatten();
    if !done && !shared.stopping.load(Ordering::Acquire) {
        // The supervisor died under us (its workers follow it: PDEATHSIG). Every unfinished
        // item fails with that cause; nothing can be submitted any more.
        let cause = status
            .as_ref()
            .map_or_else(|| "ended".to_string(), supervisor::cause);
        tracing::error!(pid = pid.as_raw(), %cause, "forkpipe: the supervisor process died");
        shared.set_abort(Error::Died {
            stage: "(supervisor)".into(),
            item: 0,
            worker: crate::error::Worker::Process(pid.as_raw() as u32),
            cause: format!("supervisor died: {cause}"),
        });
        shared.window.close();
    }
    shared.control_done.store(true, Ordering::Release);
}

trait AsFdRef {
    fn as_fd_ref(&self) -> std::os::fd::BorrowedFd<'_>;
}
impl AsFdRef for Arc<RtFd> {
    fn as_fd_ref(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&**self)
    }
}

/// The machinery of one running pipeline; dropping it stops everything.
struct Engine {
    stop: Option<Sender<()>>,
    stop_rx: Receiver<()>,
    threads: Arc<Threads>,
    shared: Arc<Shared>,
    control: Option<Arc<RtFd>>,
    done: bool,
}

impl Engine {
    /// Stops now: wakes every thread, makes the supervisor kill and reap its workers, and
    /// joins (the control thread reaps the supervisor).
    fn kill(&mut self) {
        if self.done {
            return;
        }
        self.done = true;
        self.shared.stopping.store(true, Ordering::Release);
        self.stop = None;
        self.shared.window.close();
        if let Some(c) = self.control.take() {
            sys::shutdown_both(c.as_fd_ref());
        }
        self.threads.join(Instant::now() + Duration::from_secs(2));
    }

    /// Waits for a graceful end until `deadline`; true if everything ended by then.
    fn wait(&mut self, deadline: Instant) -> bool {
        let ok = self.threads.join(deadline);
        if ok {
            self.done = true;
            self.stop = None;
            self.control = None;
        }
        ok
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.kill();
    }
}

/// How results come out of a pipeline.
#[derive(Debug, Clone, Copy)]
struct Shape {
    ordered: bool,
    stream_first: Option<u32>,
}

/// Per-seq bookkeeping at the end of the pipeline: restores input order (ordered
/// pipelines) and knows which items are still unfinished.
struct Ring<T> {
    base: u64,
    slots: VecDeque<Slot<T>>,
    /// How far beyond `base` a sequence number can be (the pipeline holds at most a window
    /// of items): a record beyond it was never issued.
    reach: u64,
}

enum Slot<T> {
    Pending,
    Ready(Body<T>),
    Taken,
}

impl<T> Ring<T> {
    /// Records the outcome of `seq` if it has none yet; false for a duplicate (an item whose
    /// worker died just after passing its result on, and which was requeued).
    fn put(&mut self, seq: u64, slot: Slot<T>) -> bool {
        let Some(i) = seq.checked_sub(self.base) else {
            return false;
        };
        if i >= self.reach {
            // A worker answered for an item that does not exist (a bug or a hostile
            // stage): refused, never delivered, and no room made for it.
            tracing::error!(seq, "forkpipe: a result for an item never issued; dropped");
            return false;
        }
        let i = i as usize;
        while self.slots.len() <= i {
            self.slots.push_back(Slot::Pending);
        }
        if !matches!(self.slots[i], Slot::Pending) {
            return false;
        }
        self.slots[i] = slot;
        true
    }
}

/// The results of [`Pipeline::run`], in input order unless a stage is `unordered`.
///
/// Dropping it stops the pipeline at once: the feeding thread stops, every worker process
/// is killed, every process is reaped and every descriptor closed before `drop` returns
/// (a thread stuck inside a stage function or a blocking input iterator is detached).
pub struct Results<Out> {
    engine: Engine,
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
    fn new(engine: Engine, rx: Receiver<Batch<Out>>, shape: Shape) -> Self {
        // (Numbers after a stream stage are the stream's own: not bounded by the window.)
        let reach = match shape.stream_first {
            Some(_) => u64::MAX,
            None => 2 * engine.shared.window.cap() as u64 + 1024,
        };
        Results {
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
                    let _ = self.engine.wait(Instant::now() + Duration::from_secs(5));
                }
            }
        }
    }
}

/// Per-stage counts. Counts are of items (input sequence numbers), not of outputs.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StageStats {
    /// The stage's name.
    pub name: String,
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
    /// One entry per stage, in order.
    pub stages: Vec<StageStats>,
}

fn stats_of(shared: &Shared) -> Stats {
    let completed = shared.completed.load(Ordering::Relaxed);
    let mut items_in = completed;
    let stages = shared
        .names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let failed = shared.failed[i].load(Ordering::Relaxed);
            let dropped = shared.dropped[i].load(Ordering::Relaxed);
            let out = items_in.saturating_sub(failed + dropped);
            let s = StageStats {
                name: name.to_string(),
                items_in,
                items_out: out,
                failed,
                dropped,
                restarts: shared.restarts[i].load(Ordering::Relaxed),
            };
            items_in = out;
            s
        })
        .collect();
    let submitted = shared.issued.load(Ordering::Relaxed);
    Stats {
        submitted,
        completed,
        in_flight: submitted.saturating_sub(completed),
        stages,
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

/// A pipeline started for work items ([`Pipeline::start`]). `Send + Sync`: submit from
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
    fn new(
        engine: Engine,
        tx: Sender<(u64, In)>,
        final_rx: Receiver<Batch<Out>>,
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
        self.submit.lock().unwrap_or_else(|p| p.into_inner()).take();
        let mut engine = self.engine.lock().unwrap_or_else(|p| p.into_inner());
        let graceful = engine.wait(Instant::now() + deadline);
        engine.kill();
        let aborted = self
            .shared
            .abort
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some();
        Ok(Report {
            graceful: graceful && !aborted,
            stats: stats_of(&self.shared),
        })
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
