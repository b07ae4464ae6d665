//! Pipelines: composition (the typed builder `pipeline!` expands to) and the ways to run
//! one. Starting is [`crate::caller::launch`]'s job; the handles are in [`crate::handles`].

use std::any::Any;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

#[cfg(feature = "nats")]
use crate::batch::Batch;
use crate::caller::fan_in;
use crate::caller::fan_out::{Branch, FanOut};
use crate::caller::feeder::{self, Feed, fill_from};
use crate::caller::launch::{FeederFn, launch};
use crate::caller::output::Output;
use crate::erase::AnyStage;
use crate::error::Error;
use crate::handles::{Results, Running, Shape};
use crate::progress;
use crate::stage::{Consumer, Producer, Source, Stage};
#[cfg(feature = "nats")]
use crossbeam_channel::Receiver;

/// A typed chain of stages taking `In` items and producing `Out` items.
///
/// Built with [`Pipeline::new`] (or [`Pipeline::pipe`], for a pipeline that starts with a
/// `pipe_next` pair) and [`Pipeline::then`] (what `pipeline![a | b]` expands to), then run
/// with [`Pipeline::run`], [`Pipeline::results`] or [`Pipeline::start`]:
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
    pub(crate) stages: Vec<Arc<dyn AnyStage>>,
    source: Option<String>,
    feeder: FeederFn,
    progress: progress::Options,
    _types: PhantomData<fn(In) -> Out>,
}

impl<In, Out> fmt::Debug for Pipeline<In, Out> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pipeline")
            .field("source", &self.source)
            .field("progress", &self.progress)
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
        Pipeline::taking(vec![Arc::new(self)])
    }
}

impl<Out: Send + 'static> FirstStage for Source<Out> {
    type In = ();
    type Out = Out;
    fn into_pipeline(self) -> Pipeline<(), Out> {
        let name = self.name.to_string();
        Pipeline::sourced(name.clone(), Feed::Lazy(name, self.make))
    }
}

impl<Out: Send + 'static> Pipeline<(), Out> {
    /// A pipeline of no stage yet whose items come from `feed` (a source, or several),
    /// named `source`.
    fn sourced(source: String, feed: Feed<Out>) -> Self {
        Pipeline {
            stages: Vec::new(),
            source: Some(source),
            feeder: Box::new(move |_, out, rt| {
                let out = *out
                    .downcast::<Output<Out>>()
                    .expect("output of the source's type");
                feeder::spawn_feeder(feed, out, rt)
            }),
            progress: progress::Options::default(),
            _types: PhantomData,
        }
    }
}

impl<In: Send + 'static> Pipeline<In, In> {
    /// A pipeline of no stage yet, taking `In`: what a branch of a fan-out in `pipeline!`
    /// starts from.
    #[doc(hidden)]
    pub fn branch() -> Self {
        Pipeline::taking(Vec::new())
    }

    /// A pipeline that starts with the `pipe_next` pair `producer`, `consumer` and takes its
    /// input: [`Pipeline::run`]'s items, or work items [`Running::submit`]ted, go to the
    /// producer, which hands each on to its consumer while it writes the item's bytes (see
    /// [`Producer`]). What `pipeline![produce | consume | ..]` expands to.
    ///
    /// ```
    /// use std::io::{Read, Write};
    /// use pipeline_runtime::{Consumer, PipeReader, PipeWriter, Pipeline, Producer};
    /// let produce = Producer::new("repeat", |n: u64, w: &mut PipeWriter| {
    ///     w.write_all(&vec![b'x'; n as usize])
    /// })
    /// .subprocess()
    /// .workers(2);
    /// let count = Consumer::new("count", |_n: u64, r: &mut PipeReader| {
    ///     let mut v = Vec::new();
    ///     r.read_to_end(&mut v).map(|_| v.len())
    /// });
    /// let running = Pipeline::pipe(produce, count).start()?;
    /// let ticket = running.submit(3)?;
    /// assert_eq!(ticket.wait()?, 3);
    /// assert!(running.shutdown()?.is_graceful());
    /// # Ok::<(), pipeline_runtime::Error>(())
    /// ```
    pub fn pipe<N>(producer: Producer<In>, consumer: Consumer<In, N>) -> Pipeline<In, N>
    where
        In: crate::transport::codec::Wire,
        N: crate::transport::codec::Wire,
    {
        Pipeline::<In, In>::taking(Vec::new()).then_pipe(producer, consumer)
    }

    /// The first half of [`Pipeline::pipe`]: the producer, waiting for its consumer
    /// ([`PipePending::then_consumer`]). What `pipeline![produce | ..]` expands to.
    #[doc(hidden)]
    pub fn producer_first(producer: Producer<In>) -> PipePending<In, In> {
        Pipeline::<In, In>::taking(Vec::new()).then_producer(producer)
    }
}

impl<In: Send + 'static, Out: Send + 'static> Pipeline<In, Out> {
    /// A pipeline of one stage (or one source).
    pub fn new(first: impl FirstStage<In = In, Out = Out>) -> Self {
        first.into_pipeline()
    }

    /// The pipeline `stages`, which takes its input (the feeder sends it to the first
    /// stage); `stages` may be empty only while a `pipe_next` pair is appended to it.
    fn taking(stages: Vec<Arc<dyn AnyStage>>) -> Self {
        Pipeline {
            stages,
            source: None,
            feeder: Box::new(|feed, out, rt| {
                let feed = *feed
                    .expect("an input feed")
                    .downcast::<Feed<In>>()
                    .expect("feed of the input type");
                let out = *out
                    .downcast::<Output<In>>()
                    .expect("output of the input type");
                feeder::spawn_feeder(feed, out, rt)
            }),
            progress: progress::Options::default(),
            _types: PhantomData,
        }
    }

    /// Appends a stage; its input type must be this pipeline's output type.
    pub fn then<N: Send + 'static>(self, next: Stage<Out, N>) -> Pipeline<In, N> {
        self.push(Arc::new(next))
    }

    /// Appends a piece that takes `Out` and makes `N` (a stage, or a fan-out).
    fn push<N>(self, next: Arc<dyn AnyStage>) -> Pipeline<In, N> {
        let mut stages = self.stages;
        stages.push(next);
        Pipeline {
            stages,
            source: self.source,
            feeder: self.feeder,
            progress: self.progress,
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

    /// Appends a broadcast fan-out: every item goes to every branch (each a pipeline taking
    /// this one's output), and its outputs are the branches' outputs in branch order (each
    /// branch's in its own order), delivered together; if a branch fails the item, the item
    /// ends as that error (the first failing branch's, in branch order) and the other
    /// branches' outputs for it are discarded. Order across items is kept. What
    /// `pipeline![a | (b | c, d) | e]` expands to; here, fan-outs can be built in a loop:
    ///
    /// ```
    /// use pipeline_runtime::{Pipeline, Stage};
    /// let branches = (1..=3u64).map(|k| Pipeline::new(Stage::map("times", move |x: u64| x * k).subprocess()));
    /// let p = Pipeline::new(Stage::map("inc", |x: u64| x + 1)).fan_out(branches);
    /// let out: Vec<u64> = p.run([0u64, 10])?.collect::<Result<_, _>>()?;
    /// assert_eq!(out, [1, 2, 3, 11, 22, 33]);
    /// # Ok::<(), pipeline_runtime::Error>(())
    /// ```
    ///
    /// Each branch runs as a pipeline of its own (its process stages in their own workers,
    /// talking to each other directly), started with this one. A branch may not start with a
    /// source nor hold a `stream` stage (its outputs belong to no item): starting says so.
    pub fn fan_out<N: Send + 'static>(
        self,
        branches: impl IntoIterator<Item = Pipeline<Out, N>>,
    ) -> Pipeline<In, N>
    where
        Out: Clone,
    {
        let branches: Vec<Pipeline<Out, N>> = branches.into_iter().collect();
        let name = format!(
            "({})",
            branches
                .iter()
                .map(Pipeline::written)
                .collect::<Vec<_>>()
                .join(", ")
        );
        let branches = branches
            .into_iter()
            .map(|b| Box::new(b) as Box<dyn Branch<Out, N>>)
            .collect();
        self.push(Arc::new(FanOut::new(name, branches, Out::clone)))
    }

    /// The pipeline as `pipeline!` writes it: `a | b | c`.
    fn written(&self) -> String {
        let names = self.source.iter().map(String::as_str);
        names
            .chain(self.stages.iter().map(|s| s.name()))
            .collect::<Vec<_>>()
            .join(" | ")
    }

    /// Turns the progress display on or off; it is on by default, and drawn only while
    /// stderr is a terminal, never on stdout: one line per stage (items done, rate, the
    /// share of its workers' time spent busy, the bottleneck marked) and an overall line
    /// (a bar with an ETA when the number of items is known, see [`Pipeline::expected`]),
    /// redrawn about ten times a second from [`Stats`](crate::Stats), and left on the
    /// screen when the run ends. Runs shorter than 200 ms draw nothing. Without the
    /// `progress` cargo feature there is no display and this does nothing.
    ///
    /// ```
    /// use pipeline_runtime::{Pipeline, Stage};
    /// let p = Pipeline::new(Stage::map("inc", |x: u64| x + 1)).progress(false);
    /// let out: Vec<u64> = p.run(0..3u64)?.collect::<Result<_, _>>()?;
    /// assert_eq!(out, [1, 2, 3]);
    /// # Ok::<(), pipeline_runtime::Error>(())
    /// ```
    pub fn progress(mut self, on: bool) -> Self {
        self.progress.on = on;
        self
    }

    /// How many items the run will have, for the progress display's bar and ETA (see
    /// [`Pipeline::progress`]). [`Pipeline::run`] knows it without this when its input's
    /// `size_hint` is exact (a `Vec`, a range, any `ExactSizeIterator`); a source's
    /// pipeline or one started for work items knows it only from this. A hint only: the
    /// run takes what it is given. Without the `progress` cargo feature this does nothing.
    ///
    /// ```
    /// use pipeline_runtime::{Pipeline, Source, Stage};
    /// let lines = Source::new("lines", || (0..1000u64).filter(|x| x % 3 == 0));
    /// let p = Pipeline::new(lines).then(Stage::map("inc", |x: u64| x + 1)).expected(334);
    /// assert_eq!(p.results()?.count(), 334);
    /// # Ok::<(), pipeline_runtime::Error>(())
    /// ```
    pub fn expected(mut self, items: u64) -> Self {
        self.progress.expected = Some(items);
        self
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
        let input = input.into_iter();
        let mut progress = self.progress;
        if let (lower, Some(upper)) = input.size_hint()
            && lower == upper
        {
            progress.expected = progress.expected.or(Some(lower as u64));
        }
        let feed: Box<dyn Any + Send> = Box::new(Feed::Iter(fill_from(input)));
        let shape = self.shape();
        let (engine, rx) = launch(self.stages, self.feeder, Some(feed), true)?;
        Ok(Results::new(engine, rx, shape, progress))
    }

    /// Starts the pipeline for work items: [`Running::submit`] from any thread, then
    /// [`Ticket::wait`](crate::Ticket::wait).
    pub fn start(self) -> Result<Running<In, Out>, Error> {
        if let Some(i) = self.shape().stream_first {
            return Err(Error::Start(format!(
                "stage '{}' is a `stream` stage: its outputs belong to no submitted item; use `run(input)`",
                self.stages[i as usize].name()
            )));
        }
        let (tx, rx) = crossbeam_channel::unbounded::<(u64, In)>();
        let feed: Box<dyn Any + Send> = Box::new(Feed::Chan(rx));
        let progress = self.progress;
        let (engine, final_rx) = launch(self.stages, self.feeder, Some(feed), false)?;
        Running::new(engine, tx, final_rx, progress)
    }

    /// Starts the pipeline with `feeder` in place of its own (a host feeds a distributed
    /// stage's local pipeline from the broker): the engine, and the last stage's batches
    /// as they come (in completion order; after a worker's death an outcome may come twice).
    #[cfg(feature = "nats")]
    pub(crate) fn launch_fed(
        self,
        feeder: FeederFn,
    ) -> Result<(crate::caller::engine::Engine, Receiver<Batch<Out>>), Error> {
        launch(self.stages, feeder, None, false)
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
}

impl<In: Send + 'static, Out: Send + 'static> Branch<In, Out> for Pipeline<In, Out> {
    fn source(&self) -> Option<&str> {
        self.source.as_deref()
    }

    /// (With no progress display of its own: its stages are in the parent's.)
    fn start(self: Box<Self>, b: usize, fan_out: &str) -> Result<Running<In, Out>, Error> {
        let mut branch = *self;
        branch.progress.on = false;
        if let Some(i) = branch.shape().stream_first {
            return Err(Error::Start(format!(
                "branch {b} of the fan-out '{fan_out}' has the `stream` stage '{}': its outputs \
                 belong to no item, so they cannot be combined per item; put it after the fan-out",
                branch.stages[i as usize].name()
            )));
        }
        branch.start()
    }
}

impl<Out: Send + 'static> Pipeline<(), Out> {
    /// A fan-in: a pipeline whose items are those of all of `sources`, interleaved as they
    /// are produced (one source's items keep their order). Each source runs on a thread of
    /// its own; one that panics fails one item, naming it, and the others go on. What
    /// `pipeline![(evens, odds) | double]` expands to.
    ///
    /// ```
    /// use pipeline_runtime::{Pipeline, Source, Stage};
    /// let evens = Source::new("evens", || (0..5u64).map(|x| 2 * x));
    /// let odds = Source::new("odds", || (0..5u64).map(|x| 2 * x + 1));
    /// let p = Pipeline::merge([evens, odds]).then(Stage::map("double", |x: u64| 2 * x));
    /// let mut out: Vec<u64> = p.results()?.collect::<Result<_, _>>()?;
    /// out.sort();
    /// assert_eq!(out, (0..10u64).map(|x| 2 * x).collect::<Vec<_>>());
    /// # Ok::<(), pipeline_runtime::Error>(())
    /// ```
    pub fn merge(sources: impl IntoIterator<Item = Source<Out>>) -> Self {
        let sources: Vec<fan_in::Made<Out>> = sources
            .into_iter()
            .map(|s| (s.name.to_string(), s.make))
            .collect();
        let name = format!(
            "({})",
            sources
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        Pipeline::sourced(name, Feed::Merge(sources))
    }

    /// Runs a pipeline that starts with a `source` stage; see [`Pipeline::run`].
    pub fn results(self) -> Result<Results<Out>, Error> {
        if self.source.is_none() {
            return Err(Error::Start(
                "`results()` needs a pipeline that starts with a `source` stage; use `run(input)`"
                    .into(),
            ));
        }
        let (shape, progress) = (self.shape(), self.progress);
        let (engine, rx) = launch(self.stages, self.feeder, None, true)?;
        Ok(Results::new(engine, rx, shape, progress))
    }
}
