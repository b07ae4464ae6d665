//! Starting a pipeline, in four named steps: plan the topology (every socket), start the
//! supervisor (which forks the process stages' workers), wire the caller's threads (thread
//! stages, bridges, the feeder), and await every thread worker's `init`.
//!
//! Order matters: the sockets exist before the supervisor is forked, so it inherits its
//! workers' ends; and the supervisor is forked before any thread of this pipeline exists.
//! If a step fails, the ones before it are undone (the engine's drop stops what started).

use std::any::Any;
use std::sync::Arc;

use crossbeam_channel::Receiver;

use crate::batch::Batch;
use crate::caller::control::{self, Supervisor};
use crate::caller::engine::Engine;
use crate::caller::output::{LinkPlan, Output};
use crate::caller::shared::Shared;
use crate::caller::thread_stage::THREAD_SLOT;
use crate::caller::threads::{Rt, Threads};
use crate::caller::topology::{Kinds, Topology};
use crate::erase::AnyStage;
use crate::error::Error;
use crate::meter::Sink;
use crate::process::worker::WorkerCtx;
use crate::stage::{DEFAULT_QUEUE, RUN_AHEAD};
use crate::transport::run;

/// Starts the feeder: (the input feed, if the pipeline takes one; the first piece's
/// `Output<In>`; the context).
pub(crate) type FeederFn = Box<
    dyn FnOnce(Option<Box<dyn Any + Send>>, Box<dyn Any + Send>, &Rt) -> std::io::Result<()> + Send,
>;

/// Starts the pipeline `stages`; the receiver gets the last stage's batches.
pub(crate) fn launch<Out: Send + 'static>(
    stages: Vec<Arc<dyn AnyStage>>,
    feeder: FeederFn,
    feed: Option<Box<dyn Any + Send>>,
    streamed: bool,
) -> Result<(Engine, Receiver<Batch<Out>>), Error> {
    let names = stages.iter().map(|s| Arc::from(s.name())).collect();
    // (Before the supervisor and any thread of this pipeline: see `fan_out`.)
    let branches = stages
        .iter()
        .map(|s| s.prepare())
        .collect::<Result<Vec<_>, _>>()?;
    let workers = stages.iter().map(|s| s.opts().workers).collect();
    let shared = Arc::new(Shared::new(
        names,
        workers,
        window(&stages, streamed),
        branches,
    ));
    let _in = shared.span.clone().entered();
    let mut topo =
        Topology::plan(&stages).map_err(|e| Error::Start(format!("socketpair failed: {e}")))?;
    let supervisor = control::start(&stages, &mut topo)?;
    let pids = supervisor
        .as_ref()
        .map_or_else(Vec::new, |s| s.pids.clone());
    if let Some(s) = &supervisor {
        let _ = shared.supervisor.set(Arc::downgrade(&s.ctl));
    }
    let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(0);
    let (inits_tx, inits_rx) = crossbeam_channel::unbounded();
    let rt = Rt {
        stop: stop_rx,
        inits: inits_tx,
        threads: Arc::new(Threads::default()),
        shared: Arc::clone(&shared),
    };
    let mut engine = Engine {
        stop: Some(stop_tx),
        stop_rx: rt.stop.clone(),
        threads: Arc::clone(&rt.threads),
        shared,
        control: supervisor.as_ref().map(|s| Arc::clone(&s.ctl)),
        done: false,
    };
    let (final_tx, final_rx) = crossbeam_channel::bounded::<Batch<Out>>(64);
    let last: Box<dyn Any + Send> = Box::new(Output::<Out>::Chan {
        tx: final_tx,
        split: 1,
    });
    if let Err(e) =
        wire(&stages, &mut topo, supervisor, last, &rt).and_then(|first| feeder(feed, first, &rt))
    {
        engine.kill();
        return Err(Error::Start(format!("could not spawn a thread: {e}")));
    }
    drop(rt);
    await_inits(&stages, &inits_rx, &mut engine)?;
    tracing::info!(
        shape = %stages.iter().map(|s| s.name()).collect::<Vec<_>>().join(" | "),
        workers = %describe_workers(&stages, &pids),
        "forkpipe: pipeline started"
    );
    Ok((engine, final_rx))
}

/// Each stage's workers, for the start event: `parse: pids 12, 13; store: 1 thread`.
fn describe_workers(stages: &[Arc<dyn AnyStage>], pids: &[(u32, Vec<u32>)]) -> String {
    (stages.iter().enumerate())
        .map(|(i, s)| match pids.iter().find(|(k, _)| *k as usize == i) {
            Some((_, p)) => {
                let p: Vec<String> = p.iter().map(u32::to_string).collect();
                format!("{}: pids {}", s.name(), p.join(", "))
            }
            None => format!("{}: {} thread(s)", s.name(), s.opts().workers),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// The most items the pipeline holds at once: every stage's queues, plus the feeder's. In
/// a `streamed` pipeline (`run`, `results`: not submitted work items) a stage that takes
/// runs holds [`RUN_AHEAD`] times its queues more.
fn window(stages: &[Arc<dyn AnyStage>], streamed: bool) -> usize {
    let kinds = Kinds(stages);
    let share = |i: usize| {
        let o = stages[i].opts();
        let runs = streamed && kinds.link(i) && kinds.runs(i);
        o.queue * o.workers * if runs { 1 + RUN_AHEAD } else { 1 }
    };
    (0..stages.len()).map(share).sum::<usize>() + DEFAULT_QUEUE
}

/// Starts the caller's threads from the last stage to the first, each piece given the
/// output of the one after it; returns the first piece's input (an `Output<In>`), for the
/// feeder.
fn wire(
    stages: &[Arc<dyn AnyStage>],
    topo: &mut Topology,
    supervisor: Option<Supervisor>,
    last: Box<dyn Any + Send>,
    rt: &Rt,
) -> std::io::Result<Box<dyn Any + Send>> {
    if let Some(sup) = supervisor {
        let shared = Arc::clone(&rt.shared);
        rt.threads
            .spawn("control", move || control::control_loop(sup, shared))?;
    }
    let kinds = Kinds(stages);
    let mut next = last;
    for i in (0..stages.len()).rev() {
        let (s, idx) = (&stages[i], i as u32);
        let _in = rt.shared.stage_span(idx).entered();
        if !kinds.link(i) {
            let (o, rx) = s.input_channel(16);
            Arc::clone(s).spawn_threads(idx, rx, next, rt)?;
            next = o;
            continue;
        }
        if !kinds.process(i) {
            spawn_link_workers(s, idx, topo, rt)?;
        }
        let ends = &mut topo.stages[i];
        if !kinds.link(i + 1) {
            s.spawn_merger(idx, std::mem::take(&mut ends.caller_out), next, rt)?;
        }
        next = Box::new(());
        if i == 0 || !kinds.link(i - 1) {
            let links = std::mem::take(&mut ends.caller_in);
            if i == 0 {
                let plan = LinkPlan {
                    credit: run::link_credit(DEFAULT_QUEUE),
                    runs: kinds.runs(i),
                };
                next = s.link_output(idx, links, plan);
            } else {
                let (o, rx) = s.input_channel(16);
                let plan = LinkPlan {
                    credit: run::link_credit(stages[i - 1].opts().queue),
                    runs: kinds.runs(i),
                };
                s.spawn_dispatcher(idx, rx, links, plan, rt)?;
                next = o;
            }
        }
    }
    Ok(next)
}

/// The workers of a link stage on threads of this process (a `pipe_next` half that is not
/// `subprocess`): they run the process worker's loop over the same sockets.
fn spawn_link_workers(
    s: &Arc<dyn AnyStage>,
    idx: u32,
    topo: &mut Topology,
    rt: &Rt,
) -> std::io::Result<()> {
    let workers = std::mem::take(&mut topo.stages[idx as usize].workers);
    for (j, w) in workers.into_iter().enumerate() {
        let ctx = WorkerCtx {
            idx,
            ins: w.ins,
            outs: w.outs,
            credit: s.opts().queue,
            epoch: 0,
            slot: &THREAD_SLOT,
            give_up: None,
            ctl: None,
            stream: w.stream,
            position: j,
            of: s.opts().workers,
            resync_inputs: true,
            in_epochs: Vec::new(),
            meter: Some(Sink::Stage(rt.shared.time(idx))),
        };
        Arc::clone(s).spawn_link_worker(ctx, rt)?;
    }
    Ok(())
}

/// Every thread worker runs its stage's `init` first; the pipeline starts only when all
/// did. The first failure stops everything and is the start's error.
fn await_inits(
    stages: &[Arc<dyn AnyStage>],
    inits: &Receiver<Result<(), Error>>,
    engine: &mut Engine,
) -> Result<(), Error> {
    let thread_workers: usize = stages
        .iter()
        .filter(|s| !s.opts().process)
        .map(|s| s.opts().workers)
        .sum();
    for _ in 0..thread_workers {
        match inits.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                engine.kill();
                return Err(e);
            }
            Err(_) => break,
        }
    }
    Ok(())
}
