//! Stages: what a step of a pipeline does and where it runs.

use std::borrow::Cow;
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use crate::error::DeterminerPanic;
use crate::error::panic_message;
use crate::kernel::{MapStage, RunFn, worker_fn};
use crate::os::image;
use crate::recipe::{self, Make, MaybeRecipe, Recipe};
use crate::transport::codec::{self, Wire};
use crate::transport::pipe::{PipeReader, PipeWriter};
use crate::transport::record::RunDec;

pub use crate::item::Emit;
pub(crate) use crate::item::{Body, Rec};
pub(crate) use crate::kernel::WorkerFn;

/// Makes a worker's stage function, in the worker (the child process, or the thread):
/// runs the stage's `init` if it has one. `Err` is the init's message.
pub(crate) type MakeWorker<In, Out> = dyn Fn() -> Result<WorkerFn<In, Out>, String> + Send + Sync;

/// The function of a `stream` stage.
pub(crate) type StreamFn<In, Out> =
    dyn Fn(Items<In>) -> Box<dyn Iterator<Item = Out>> + Send + Sync;

/// The function of a `pipe_next` producer: writes the item's bytes.
pub(crate) type ProduceFn<In> = dyn Fn(In, &mut PipeWriter) -> Result<(), String> + Send + Sync;
/// The function of the consumer after a `pipe_next` stage: reads them.
pub(crate) type ConsumeFn<In, Out> =
    dyn Fn(In, &mut PipeReader, &mut Emit<Out>) -> Result<(), String> + Send + Sync;

/// Which half of a `pipe_next` pair a stage is.
pub(crate) enum PipeRole<In, Out> {
    /// Forwards each item to its consumer, then writes the item's bytes.
    Producer(Arc<ProduceFn<In>>),
    Consumer(Arc<ConsumeFn<In, Out>>),
}

impl<In, Out> Clone for PipeRole<In, Out> {
    fn clone(&self) -> Self {
        match self {
            PipeRole::Producer(f) => PipeRole::Producer(Arc::clone(f)),
            PipeRole::Consumer(f) => PipeRole::Consumer(Arc::clone(f)),
        }
    }
}

/// The producer half of a `pipe_next` pair (`#[stage(pipe_next)]`): for each item it
/// writes bytes to a [`PipeWriter`] while the next stage, a [`Consumer`], reads them.
///
/// ```
/// use std::io::{Read, Write};
/// use pipeline_runtime::{Consumer, Pipeline, Producer, Stage};
/// let produce = Producer::new("repeat", |n: u64, w: &mut pipeline_runtime::PipeWriter| {
///     w.write_all(&vec![b'x'; n as usize])
/// });
/// let count = Consumer::new("count", |_n: u64, r: &mut pipeline_runtime::PipeReader| {
///     let mut v = Vec::new();
///     r.read_to_end(&mut v).map(|_| v.len())
/// });
/// let p = Pipeline::new(Stage::map("id", |x: u64| x)).then_pipe(produce, count);
/// let out: Vec<usize> = p.run([0u64, 3, 100_000])?.collect::<Result<_, _>>()?;
/// assert_eq!(out, [0, 3, 100_000]);
/// # Ok::<(), pipeline_runtime::Error>(())
/// ```
///
/// A pair is one unit of `workers` couples: producer worker *j* streams to consumer worker
/// *j* only, over a socket the couple keeps for all its items. Both halves run in worker
/// processes if either half is `subprocess` (if one dies, the other is replaced with it),
/// otherwise both on threads of this process. Items of a pair cross a socket between the
/// halves, so they must be `Serialize + DeserializeOwned` even on threads.
#[derive(Debug)]
pub struct Producer<In>(pub(crate) Stage<In, In>);

/// The consumer half of a `pipe_next` pair: the stage after a [`Producer`]. See there.
#[derive(Debug)]
pub struct Consumer<In, Out>(pub(crate) Stage<In, Out>);

impl<In: Wire> Producer<In> {
    /// A producer: `f` writes the item's bytes.
    pub fn new<E, F>(name: impl Into<Cow<'static, str>>, f: F) -> Self
    where
        E: fmt::Display,
        F: Fn(In, &mut PipeWriter) -> Result<(), E> + Send + Sync + 'static,
    {
        let mut stage = Stage::map(name, |x: In| x);
        stage.pipe = Some(PipeRole::Producer(Arc::new(
            move |x, w: &mut PipeWriter| f(x, w).map_err(|e| e.to_string()),
        )));
        stage.opts.pipe = Some(PipeSide::Producer);
        stage.set_wire();
        stage.recipe = recipe::of_fn::<F, Stage<In, In>>(remake_producer::<In, E, F>);
        Producer(stage)
    }

    /// Runs the pair in worker processes.
    pub fn subprocess(mut self) -> Self {
        self.0.opts.process = true;
        self
    }

    /// Runs `n` couples (see [`Producer`]).
    pub fn workers(self, n: usize) -> Self {
        Producer(self.0.workers(n))
    }

    /// Items that may wait between the producer and its consumer.
    pub fn queue(self, n: usize) -> Self {
        Producer(self.0.queue(n))
    }

    /// Per-item time limit of the producer (process pairs); see [`Stage::timeout`].
    pub fn timeout(self, limit: std::time::Duration) -> Self {
        Producer(self.0.timeout(limit))
    }

    /// Renames the stage.
    pub fn named(self, name: impl Into<Cow<'static, str>>) -> Self {
        Producer(self.0.named(name))
    }
}

impl<In: Wire, Out: Wire> Consumer<In, Out> {
    /// A consumer with one output per item.
    pub fn new<E, F>(name: impl Into<Cow<'static, str>>, f: F) -> Self
    where
        E: fmt::Display,
        F: Fn(In, &mut PipeReader) -> Result<Out, E> + Send + Sync + 'static,
    {
        Self::emitting(name, move |x, r: &mut PipeReader, e: &mut Emit<Out>| {
            e.emit(f(x, r)?);
            Ok::<(), E>(())
        })
    }

    /// A consumer with zero or more outputs per item (the general form `#[stage]` uses).
    pub fn emitting<E, F>(name: impl Into<Cow<'static, str>>, f: F) -> Self
    where
        E: fmt::Display,
        F: Fn(In, &mut PipeReader, &mut Emit<Out>) -> Result<(), E> + Send + Sync + 'static,
    {
        let mut stage = Stage::from_fn(name, |_: In, _: &mut Emit<Out>| Ok(()));
        stage.pipe = Some(PipeRole::Consumer(Arc::new(
            move |x, r: &mut PipeReader, e: &mut Emit<Out>| {
                f(x, r, e).map_err(|err| err.to_string())
            },
        )));
        stage.opts.pipe = Some(PipeSide::Consumer);
        stage.set_wire();
        stage.recipe = recipe::of_fn::<F, Stage<In, Out>>(remake_consumer::<In, Out, E, F>);
        Consumer(stage)
    }

    /// Runs the pair in worker processes.
    pub fn subprocess(mut self) -> Self {
        self.0.opts.process = true;
        self
    }

    /// Items that may wait after the consumer.
    pub fn queue(self, n: usize) -> Self {
        Consumer(self.0.queue(n))
    }

    /// Per-item time limit of the consumer (process pairs); see [`Stage::timeout`].
    pub fn timeout(self, limit: std::time::Duration) -> Self {
        Consumer(self.0.timeout(limit))
    }

    /// Lets outputs overtake each other (see [`Stage::unordered`]).
    pub fn unordered(self) -> Self {
        Consumer(self.0.unordered())
    }

    /// Renames the stage.
    pub fn named(self, name: impl Into<Cow<'static, str>>) -> Self {
        Consumer(self.0.named(name))
    }
}

/// Where an [`Items`] pulls from (a worker's input).
pub(crate) trait Pull<T> {
    fn pull(&mut self) -> Option<T>;
}

/// The input of a `stream` stage: the items that reach this worker of the stage, in order
/// of arrival, until the input ends.
///
/// Items consumed by a stream stage have no outcome of their own: the stage's outputs are
/// new items. Pulling may block while the previous stages work.
pub struct Items<T> {
    pub(crate) src: std::rc::Rc<std::cell::RefCell<dyn Pull<T>>>,
}

impl<T> fmt::Debug for Items<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Items")
    }
}

impl<T> Iterator for Items<T> {
    type Item = T;
    fn next(&mut self) -> Option<T> {
        self.src.borrow_mut().pull()
    }
}

/// Options of a stage (what `#[stage(...)]` sets).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct Opts {
    pub workers: usize,
    pub unordered: bool,
    pub queue: usize,
    pub process: bool,
    /// Process stages: an item running longer fails and its worker is replaced.
    pub timeout: Option<std::time::Duration>,
    /// The stage keeps per-worker state (`init`): after a panic the worker is replaced.
    pub stateful: bool,
    /// A whole-stream stage.
    pub stream: bool,
    /// A half of a `pipe_next` pair.
    pub pipe: Option<PipeSide>,
    /// May run on other hosts, when the pipeline runs `on` a broker.
    pub distributed: bool,
}

impl Default for Opts {
    /// A stage of one worker thread, ordered, with the default queue.
    fn default() -> Self {
        Opts {
            workers: 1,
            unordered: false,
            queue: DEFAULT_QUEUE,
            process: false,
            timeout: None,
            stateful: false,
            stream: false,
            pipe: None,
            distributed: false,
        }
    }
}

/// Which half of a `pipe_next` pair a stage is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) enum PipeSide {
    Producer,
    Consumer,
}

/// Default number of items that may wait between a stage and the next.
pub const DEFAULT_QUEUE: usize = 4096;

/// How many times its queue a process stage may hold besides it when items stream through
/// it in runs (a pipeline fed by `run` or `results`, the stage in a chain of ordinary
/// process stages; not submitted work items): runs travel well only when every hop of the
/// chain has a run to work on while the next one travels. So such a pipeline holds at most
/// Σ queue × workers × (1 + `RUN_AHEAD`) over those stages, plus the other stages' queues
/// and [`DEFAULT_QUEUE`]. Proportional to the queue: a stage of large items given a small
/// `queue` stays small.
pub const RUN_AHEAD: usize = 4;

/// A step of a pipeline taking `In` items and producing `Out` items.
///
/// Made with [`Stage::map`], [`Stage::try_map`], [`Stage::filter_map`], [`Stage::emit`] or
/// [`Stage::try_emit`] (what `#[stage]` expands to), then configured:
///
/// ```
/// use pipeline_runtime::{Pipeline, Stage};
/// let inc = Stage::map("inc", |x: u64| x + 1).subprocess().workers(2).queue(64);
/// let out: Vec<u64> = Pipeline::new(inc).run(0..5u64)?.collect::<Result<_, _>>()?;
/// assert_eq!(out, [1, 2, 3, 4, 5]);
/// # Ok::<(), pipeline_runtime::Error>(())
/// ```
pub struct Stage<In, Out> {
    pub(crate) name: Cow<'static, str>,
    pub(crate) make: Arc<MakeWorker<In, Out>>,
    /// Set for `stream` stages (then `make` is unused).
    pub(crate) stream: Option<Arc<StreamFn<In, Out>>>,
    /// Set for the halves of a `pipe_next` pair (then `make` is unused).
    pub(crate) pipe: Option<PipeRole<In, Out>>,
    pub(crate) opts: Opts,
    pub(crate) wire: Option<WireOps<In, Out>>,
    /// How to make this stage again in the fork server (see [`crate::recipe`]).
    pub(crate) recipe: MaybeRecipe<Stage<In, Out>>,
}

impl<In, Out> fmt::Debug for Stage<In, Out> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stage")
            .field("name", &self.name)
            .field("opts", &self.opts)
            .finish()
    }
}

/// What an `init` function may return: the state itself, or `Result<state, error>`.
/// (`#[stage(init = f)]` accepts both; the builder's [`Stage::stateful`] takes the
/// `Result` form.)
pub trait InitResult<S> {
    /// The state, or the init's error text.
    fn into_init(self) -> Result<S, String>;
}

impl<S> InitResult<S> for S {
    fn into_init(self) -> Result<S, String> {
        Ok(self)
    }
}

impl<S, E: fmt::Display> InitResult<S> for Result<S, E> {
    fn into_init(self) -> Result<S, String> {
        self.map_err(|e| e.to_string())
    }
}

/// Functions that exist only when the stage's items can cross a process boundary.
pub(crate) struct WireOps<In, Out> {
    pub encode_in: fn(&In, &mut Vec<u8>) -> Result<(), String>,
    pub decode_in: fn(&[u8]) -> Result<In, String>,
    pub encode_out: fn(&Out, &mut Vec<u8>) -> Result<(), String>,
    pub decode_out: fn(&[u8]) -> Result<Out, String>,
    /// The caller's runs of inputs, encoded with the codec inlined (`record::encode_run`).
    pub encode_run_in: crate::transport::record::RunEnc<In>,
    /// The outputs of a run, decoded with the codec inlined (see `record::decode_run`).
    pub decode_run_out: RunDec<Out>,
    /// The stage function over a run, with the codec inlined (see [`crate::process::runs`]).
    pub run: RunFn<In, Out>,
    /// These functions again (`wire_ops::<In, Out>`): what a stage made again in the fork
    /// server's supervisor gets (see `erase::rebuild`).
    pub ops: fn() -> WireOps<In, Out>,
}

impl<In, Out> Clone for WireOps<In, Out> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<In, Out> Copy for WireOps<In, Out> {}

impl<In: Send + 'static, Out: Send + 'static> Stage<In, Out> {
    /// A stage of function `f`. Generic, so that `f` inlines into each worker's boxed
    /// function: one indirect call per item.
    fn from_fn<G>(name: impl Into<Cow<'static, str>>, f: G) -> Self
    where
        G: Fn(In, &mut Emit<Out>) -> Result<(), String> + Send + Sync + 'static,
    {
        let f = Arc::new(f);
        Self::from_make(name, move || {
            let f = Arc::clone(&f);
            Ok(worker_fn(move |x: In, e: &mut Emit<Out>| f(x, e)))
        })
    }

    /// A stage whose workers' functions `make` makes.
    fn from_make<M>(name: impl Into<Cow<'static, str>>, make: M) -> Self
    where
        M: Fn() -> Result<WorkerFn<In, Out>, String> + Send + Sync + 'static,
    {
        Stage {
            name: name.into(),
            make: Arc::new(make),
            stream: None,
            pipe: None,
            opts: Opts::default(),
            wire: None,
            recipe: Err(Cow::Borrowed("it was not made by a stage constructor")),
        }
    }

    /// One output per item.
    pub fn map<F>(name: impl Into<Cow<'static, str>>, f: F) -> Self
    where
        F: Fn(In) -> Out + Send + Sync + 'static,
    {
        fn make<In: Send + 'static, Out: Send + 'static, F>(_: &[u8]) -> Made<In, Out>
        where
            F: Fn(In) -> Out + Send + Sync + 'static,
        {
            Ok(Stage::map("", recipe::remake::<F>()))
        }
        let f = Arc::new(f);
        let stage = Self::from_make(name, move || {
            let f = Arc::clone(&f);
            Ok(Box::new(MapStage(move |x: In| f(x))) as WorkerFn<In, Out>)
        });
        stage.with_recipe(recipe::of_fn::<F, Stage<In, Out>>(make::<In, Out, F>))
    }

    /// One output per item, or an error that fails this item only.
    pub fn try_map<E, F>(name: impl Into<Cow<'static, str>>, f: F) -> Self
    where
        E: fmt::Display,
        F: Fn(In) -> Result<Out, E> + Send + Sync + 'static,
    {
        fn make<In: Send + 'static, Out: Send + 'static, E: fmt::Display, F>(
            _: &[u8],
        ) -> Made<In, Out>
        where
            F: Fn(In) -> Result<Out, E> + Send + Sync + 'static,
        {
            Ok(Stage::try_map("", recipe::remake::<F>()))
        }
        let recipe = recipe::of_fn::<F, Stage<In, Out>>(make::<In, Out, E, F>);
        Self::from_fn(name, move |x, e: &mut Emit<Out>| match f(x) {
            Ok(v) => {
                e.emit(v);
                Ok(())
            }
            Err(err) => Err(err.to_string()),
        })
        .with_recipe(recipe)
    }

    /// Zero or one output per item: `None` drops the item (a filter).
    pub fn filter_map<F>(name: impl Into<Cow<'static, str>>, f: F) -> Self
    where
        F: Fn(In) -> Option<Out> + Send + Sync + 'static,
    {
        fn make<In: Send + 'static, Out: Send + 'static, F>(_: &[u8]) -> Made<In, Out>
        where
            F: Fn(In) -> Option<Out> + Send + Sync + 'static,
        {
            Ok(Stage::filter_map("", recipe::remake::<F>()))
        }
        let recipe = recipe::of_fn::<F, Stage<In, Out>>(make::<In, Out, F>);
        Self::from_fn(name, move |x, e: &mut Emit<Out>| {
            if let Some(v) = f(x) {
                e.emit(v);
            }
            Ok(())
        })
        .with_recipe(recipe)
    }

    /// Zero or more outputs per item, sent through [`Emit`].
    pub fn emit<F>(name: impl Into<Cow<'static, str>>, f: F) -> Self
    where
        F: Fn(In, &mut Emit<Out>) + Send + Sync + 'static,
    {
        fn make<In: Send + 'static, Out: Send + 'static, F>(_: &[u8]) -> Made<In, Out>
        where
            F: Fn(In, &mut Emit<Out>) + Send + Sync + 'static,
        {
            Ok(Stage::emit("", recipe::remake::<F>()))
        }
        let recipe = recipe::of_fn::<F, Stage<In, Out>>(make::<In, Out, F>);
        Self::from_fn(name, move |x, e: &mut Emit<Out>| {
            f(x, e);
            Ok(())
        })
        .with_recipe(recipe)
    }

    /// Zero or more outputs per item, or an error that fails this item.
    pub fn try_emit<E, F>(name: impl Into<Cow<'static, str>>, f: F) -> Self
    where
        E: fmt::Display,
        F: Fn(In, &mut Emit<Out>) -> Result<(), E> + Send + Sync + 'static,
    {
        fn make<In: Send + 'static, Out: Send + 'static, E: fmt::Display, F>(
            _: &[u8],
        ) -> Made<In, Out>
        where
            F: Fn(In, &mut Emit<Out>) -> Result<(), E> + Send + Sync + 'static,
        {
            Ok(Stage::try_emit("", recipe::remake::<F>()))
        }
        let recipe = recipe::of_fn::<F, Stage<In, Out>>(make::<In, Out, E, F>);
        Self::from_fn(name, move |x, e: &mut Emit<Out>| {
            f(x, e).map_err(|err| err.to_string())
        })
        .with_recipe(recipe)
    }

    /// Sets how the stage is made again in fork-server mode.
    pub(crate) fn with_recipe(mut self, recipe: MaybeRecipe<Self>) -> Self {
        self.recipe = recipe;
        self
    }

    /// A stage with per-worker state: `init` runs once in each worker (in the child, for a
    /// process stage) and its value is passed as `&mut S` to every call of `f` in that
    /// worker. `f` sends its outputs through [`Emit`] (the general form that `#[stage(init
    /// = ...)]` expands to). If `init` fails when the pipeline starts, `run`/`start` return
    /// [`crate::Error::Init`]. After a panic the worker's state may be half-updated, so the worker
    /// is replaced (a thread re-runs `init`).
    pub fn stateful<S, E1, E2, I, F>(name: impl Into<Cow<'static, str>>, init: I, f: F) -> Self
    where
        S: 'static,
        E1: fmt::Display,
        E2: fmt::Display,
        I: Fn() -> Result<S, E1> + Send + Sync + 'static,
        F: Fn(In, &mut S, &mut Emit<Out>) -> Result<(), E2> + Send + Sync + 'static,
    {
        let f = Arc::new(f);
        let make = move || {
            let mut state = init().map_err(|e| e.to_string())?;
            let f = Arc::clone(&f);
            Ok(worker_fn(move |x: In, e: &mut Emit<Out>| {
                f(x, &mut state, e).map_err(|err| err.to_string())
            }))
        };
        let mut stage = Self::from_fn(name, |_: In, _: &mut Emit<Out>| Ok(()));
        stage.make = Arc::new(make);
        stage.opts.stateful = true;
        stage.recipe =
            recipe::of_fn::<(I, F), Stage<In, Out>>(remake_stateful::<In, Out, S, E1, E2, I, F>);
        stage
    }

    /// A whole-stream stage (`#[stage(stream)]`): `f` gets the stage's input as an iterator
    /// and returns the outputs, for reductions and windows (parallelpipe's `most_common`).
    ///
    /// Items consumed by a stream stage have no outcome of their own; its outputs are new
    /// items, numbered from 0. An item that failed before the stage passes through as an
    /// error. If `f` panics, one error naming the stage follows the outputs made so far and
    /// the rest of the input is consumed without output. With `workers(n)`, each of the `n`
    /// workers runs `f` on its share of the items (taken as they become free, like
    /// parallelpipe's workers) and the outputs come in completion order.
    pub fn stream<I, F>(name: impl Into<Cow<'static, str>>, f: F) -> Self
    where
        F: Fn(Items<In>) -> I + Send + Sync + 'static,
        I: IntoIterator<Item = Out>,
        I::IntoIter: 'static,
    {
        let mut stage = Self::from_fn(name, |_: In, _: &mut Emit<Out>| Ok(()));
        stage.stream = Some(Arc::new(move |items| {
            Box::new(f(items).into_iter()) as Box<dyn Iterator<Item = Out>>
        }));
        stage.opts.stream = true;
        stage.recipe = recipe::of_fn::<F, Stage<In, Out>>(remake_stream::<In, Out, I, F>);
        stage
    }

    /// Runs this stage on `n` parallel workers (threads, or processes with
    /// [`Stage::subprocess`]).
    ///
    /// # Panics
    /// If `n` is 0.
    pub fn workers(mut self, n: usize) -> Self {
        assert!(n >= 1, "stage '{}': workers must be at least 1", self.name);
        self.opts.workers = n;
        self
    }

    /// Lets this stage's outputs overtake each other: from this stage on, results come in
    /// completion order instead of input order.
    pub fn unordered(mut self) -> Self {
        self.opts.unordered = true;
        self
    }

    /// At most `n` items wait between this stage and the next (per worker link).
    ///
    /// # Panics
    /// If `n` is 0.
    pub fn queue(mut self, n: usize) -> Self {
        assert!(n >= 1, "stage '{}': queue must be at least 1", self.name);
        self.opts.queue = n;
        self
    }

    /// An item that runs longer than `limit` in this stage fails with `timed out after …;
    /// worker killed`, and its worker is replaced (SIGTERM, a short grace, then SIGKILL).
    /// Only process stages can be timed out (a thread cannot be killed); on a thread stage
    /// this has no effect.
    pub fn timeout(mut self, limit: std::time::Duration) -> Self {
        self.opts.timeout = Some(limit);
        self
    }

    /// Renames the stage (the name shows in errors and stats).
    pub fn named(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.name = name.into();
        self
    }

    /// The stage's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl<T: Send + 'static> Stage<T, T> {
    /// A per-item determiner: items for which `det` returns false skip this stage
    /// unchanged (atbu's `is_for_stage`). Only for stages whose output type is their input
    /// type.
    pub fn when<D>(mut self, det: D) -> Self
    where
        D: Fn(&T) -> bool + Send + Sync + 'static,
    {
        let inner_recipe = std::mem::replace(&mut self.recipe, Err(Cow::Borrowed("")));
        self.recipe = with_when::<T, D>(inner_recipe);
        let inner = Arc::clone(&self.make);
        let det = Arc::new(det);
        self.make = Arc::new(move || {
            let mut f = inner()?;
            let det = Arc::clone(&det);
            Ok(worker_fn(move |x: T, e: &mut Emit<T>| {
                let pass = match catch_unwind(AssertUnwindSafe(|| det(&x))) {
                    Ok(pass) => pass,
                    // Still a panic of this item (a stage with `init` state is replaced),
                    // but one that says it was the determiner's: the guard names the stage
                    // by its name when the item runs (a later `.named` counts).
                    Err(p) => std::panic::resume_unwind(Box::new(DeterminerPanic(panic_message(
                        p.as_ref(),
                    )))),
                };
                if pass {
                    f.call(x, e)
                } else {
                    e.emit(x);
                    Ok(())
                }
            }))
        });
        self
    }
}

impl<In: Wire, Out: Wire> Stage<In, Out> {
    /// Runs this stage in forked worker processes. Items cross the process boundary as
    /// `bincode` bytes, so both types must be `Serialize + DeserializeOwned`.
    pub fn subprocess(mut self) -> Self {
        self.opts.process = true;
        self.set_wire();
        self
    }

    /// Marks the stage as one that may run on other hosts: when the pipeline runs
    /// `on` a broker (`Pipeline::on`, cargo feature `nats`), its items go to the
    /// hosts that serve it; without, it runs here as its other options say. Only stages of
    /// `#[stage(distributed)]` functions can be served by hosts (they find them by name).
    pub fn distributed(mut self) -> Self {
        self.opts.distributed = true;
        self.set_wire();
        self
    }

    /// Gives the stage its wire functions (both item types cross a process boundary).
    pub(crate) fn set_wire(&mut self) {
        self.wire = Some(wire_ops::<In, Out>());
    }
}

/// The wire functions of a stage whose items are `In` and `Out`.
fn wire_ops<In: Wire, Out: Wire>() -> WireOps<In, Out> {
    WireOps {
        encode_in: codec::encode_into::<In>,
        decode_in: codec::decode::<In>,
        encode_out: codec::encode_into::<Out>,
        decode_out: codec::decode::<Out>,
        encode_run_in: crate::transport::record::encode_run::<In>,
        decode_run_out: crate::transport::record::decode_run::<Out>,
        run: crate::kernel::run_via::<In, Out>,
        ops: wire_ops::<In, Out>,
    }
}

/// A first stage that makes the items itself: `#[stage(source)]`.
///
/// The source's iterator runs on the pipeline's feeding thread in the caller's process;
/// the pipeline pulls from it only as its queues free up.
pub struct Source<Out> {
    pub(crate) name: Cow<'static, str>,
    pub(crate) make: Box<dyn FnOnce() -> Box<dyn Iterator<Item = Out> + Send> + Send>,
}

impl<Out> fmt::Debug for Source<Out> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Source").field("name", &self.name).finish()
    }
}

impl<Out: Send + 'static> Source<Out> {
    /// A source whose items are those of the iterator `f` returns.
    pub fn new<I, F>(name: impl Into<Cow<'static, str>>, f: F) -> Self
    where
        F: FnOnce() -> I + Send + 'static,
        I: IntoIterator<Item = Out>,
        I::IntoIter: Send + 'static,
    {
        Source {
            name: name.into(),
            make: Box::new(move || {
                Box::new(f().into_iter()) as Box<dyn Iterator<Item = Out> + Send>
            }),
        }
    }
}

/// What a recipe's `make` returns (see [`crate::recipe`]).
type Made<In, Out> = Result<Stage<In, Out>, String>;

fn remake_stateful<In, Out, S, E1, E2, I, F>(_: &[u8]) -> Made<In, Out>
where
    In: Send + 'static,
    Out: Send + 'static,
    S: 'static,
    E1: fmt::Display,
    E2: fmt::Display,
    I: Fn() -> Result<S, E1> + Send + Sync + 'static,
    F: Fn(In, &mut S, &mut Emit<Out>) -> Result<(), E2> + Send + Sync + 'static,
{
    let (init, f) = recipe::remake::<(I, F)>();
    Ok(Stage::stateful("", init, f))
}

fn remake_stream<In, Out, I, F>(_: &[u8]) -> Made<In, Out>
where
    In: Send + 'static,
    Out: Send + 'static,
    F: Fn(Items<In>) -> I + Send + Sync + 'static,
    I: IntoIterator<Item = Out>,
    I::IntoIter: 'static,
{
    Ok(Stage::stream("", recipe::remake::<F>()))
}

fn remake_producer<In: Wire, E, F>(_: &[u8]) -> Made<In, In>
where
    E: fmt::Display,
    F: Fn(In, &mut PipeWriter) -> Result<(), E> + Send + Sync + 'static,
{
    Ok(Producer::new("", recipe::remake::<F>()).0)
}

fn remake_consumer<In: Wire, Out: Wire, E, F>(_: &[u8]) -> Made<In, Out>
where
    E: fmt::Display,
    F: Fn(In, &mut PipeReader, &mut Emit<Out>) -> Result<(), E> + Send + Sync + 'static,
{
    Ok(Consumer::emitting("", recipe::remake::<F>()).0)
}

/// The layer `.when(det)` puts over a recipe: `params` are the inner `make`'s address and
/// the inner parameters, `make` remakes the inner stage and the determiner `D`.
pub(crate) fn with_when<T: Send + 'static, D>(
    inner: MaybeRecipe<Stage<T, T>>,
) -> MaybeRecipe<Stage<T, T>>
where
    D: Fn(&T) -> bool + Send + Sync + 'static,
{
    let inner = inner?;
    if std::mem::size_of::<D>() != 0 {
        return Err(Cow::Borrowed(
            "its determiner (`when`) is a closure that captures its environment; use a fn or \
             `#[stage(when = f)]`",
        ));
    }
    let mut params = image::addr_of(inner.make).to_le_bytes().to_vec();
    params.extend_from_slice(&inner.params);
    Ok(Recipe {
        make: make_when::<T, D>,
        params,
        id: inner.id,
    })
}

fn make_when<T: Send + 'static, D>(p: &[u8]) -> Result<Stage<T, T>, String>
where
    D: Fn(&T) -> bool + Send + Sync + 'static,
{
    const ADDR: usize = std::mem::size_of::<usize>();
    let addr = p
        .get(..ADDR)
        .and_then(|b| b.try_into().ok())
        .map(usize::from_le_bytes)
        .ok_or("a `when` recipe without its stage")?;
    // SAFETY: `with_when` wrote this address with `addr_of` of a `Make<T, T>`, in the
    // caller whose image this process shares.
    let inner: Make<Stage<T, T>> = unsafe { image::fn_at(addr) };
    Ok(inner(&p[ADDR..])?.when(recipe::remake::<D>()))
}
