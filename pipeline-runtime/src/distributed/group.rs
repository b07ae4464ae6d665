//! A group of consecutive distributed stages, as one piece of the caller's pipeline: what
//! [`Pipeline::on`](crate::Pipeline::on) puts in their place.
//!
//! To its neighbours the group is a thread stage (like a fan-out): it takes the first
//! stage's input on a channel and gives the last stage's output to the next piece. Inside,
//! three threads: the *feed* (typed: encodes batches), the *broker task* (untyped: the run
//! on the broker, [`super::caller`]) and the *collect* thread (typed: decodes the results).
//! Items go from one stage of the group to the next host to host, through the broker,
//! never through the caller. The collector at the end of the pipeline restores order.

use std::any::Any;
use std::io;
use std::sync::{Arc, Mutex};

use super::book::HEADROOM;
use super::broker::Broker;
use super::caller::{self, CallerCtx};
use super::ends::{Back, FeedCtx};
use super::registry;
use super::wire::StageSpec;
use crate::caller::shared::Shared;
use crate::caller::threads::Rt;
use crate::erase::AnyStage;
use crate::error::Error;
use crate::pipeline::Pipeline;
use crate::process::protocol::Shipment;
use crate::stage::{DEFAULT_QUEUE, Opts};

/// Replaces each run of consecutive distributed stages of `stages` by one group.
pub(crate) fn place(stages: Vec<Arc<dyn AnyStage>>, broker: &Broker) -> Vec<Arc<dyn AnyStage>> {
    let mut out: Vec<Arc<dyn AnyStage>> = Vec::new();
    let mut group = Vec::new();
    for s in stages {
        if s.opts().distributed {
            group.push(s);
            continue;
        }
        if !group.is_empty() {
            out.push(Arc::new(Group::new(std::mem::take(&mut group), broker)));
        }
        out.push(s);
    }
    if !group.is_empty() {
        out.push(Arc::new(Group::new(group, broker)));
    }
    out
}

pub(crate) struct Group {
    name: String,
    opts: Opts,
    stages: Vec<Arc<dyn AnyStage>>,
    broker: Broker,
    specs: Mutex<Vec<StageSpec>>,
}

impl Group {
    fn new(stages: Vec<Arc<dyn AnyStage>>, broker: &Broker) -> Self {
        let name = (stages.iter().map(|s| s.name()))
            .collect::<Vec<_>>()
            .join(" | ");
        let opts = Opts {
            // (Its room in the pipeline's window: the items on the broker and on hosts.)
            queue: 2 * DEFAULT_QUEUE,
            ..Opts::default()
        };
        Group {
            name,
            opts,
            stages,
            broker: broker.clone(),
            specs: Mutex::new(Vec::new()),
        }
    }

    /// What the hosts are told of each stage; `Err` says which cannot be distributed.
    fn describe(&self) -> Result<Vec<StageSpec>, Error> {
        let mut specs = Vec::new();
        for (pos, s) in self.stages.iter().enumerate() {
            let refuse = |why: String| {
                Error::Start(format!(
                    "stage '{}' cannot run on other hosts: {why}",
                    s.name()
                ))
            };
            let (id, params) = s.remote_part().map_err(refuse)?;
            let entry = registry::lookup(&id).ok_or_else(|| {
                refuse("hosts find a stage by its name, and only `#[stage(distributed)]` functions have one".into())
            })?;
            specs.push(StageSpec {
                pos: pos as u32,
                idx: 0,
                name: s.name().to_string(),
                id,
                fingerprint: entry.fingerprint(),
                params,
                opts: s.opts().clone(),
            });
        }
        Ok(specs)
    }

    fn spawn(
        &self,
        idx: u32,
        rx: Box<dyn Any + Send>,
        out: Box<dyn Any + Send>,
        rt: &Rt,
    ) -> io::Result<()> {
        let first = &self.stages[0];
        let last = self.stages.last().expect("a group has a stage");
        let (Some(feed), Some(collect)) = (first.remote_feed(), last.remote_collect(idx)) else {
            let _ = rt.inits.send(Err(Error::Start(format!(
                "the items of '{}' cannot cross a process boundary",
                self.name
            ))));
            return Ok(());
        };
        let mut specs = std::mem::take(&mut *self.specs.lock().unwrap_or_else(|p| p.into_inner()));
        specs.iter_mut().for_each(|s| s.idx = idx);
        let (to_broker, from_feed) = tokio::sync::mpsc::channel(8);
        let (back_tx, back_rx) = crossbeam_channel::unbounded::<Back>();
        let (ready_tx, ready_rx) = crossbeam_channel::bounded::<usize>(1);
        let feed_ctx = FeedCtx {
            stop: rt.stop.clone(),
            to_broker,
            back: back_tx.clone(),
            room: 0,
            limit: 0,
            batch: self.broker.batch,
            stage: first.name().to_string(),
            idx,
        };
        let ctx = CallerCtx {
            broker: self.broker.clone(),
            specs,
            idx,
            stop: rt.stop.clone(),
            inits: rt.inits.clone(),
            ready: ready_tx,
            from_feed,
            back: back_tx,
        };
        rt.threads
            .spawn(&format!("{}-broker", self.name), move || caller::run(ctx))?;
        rt.threads.spawn(&format!("{}-feed", self.name), move || {
            // (Once connected: the broker's max_payload sizes the batches.)
            let Ok(limit) = ready_rx.recv() else { return };
            let ctx = FeedCtx {
                room: limit.saturating_sub(HEADROOM),
                limit,
                ..feed_ctx
            };
            feed.run(rx, ctx);
        })?;
        let stop = rt.stop.clone();
        rt.threads
            .spawn(&format!("{}-collect", self.name), move || {
                collect.run(back_rx, out, stop)
            })
    }
}

/// A group is a thread stage to its neighbours: what only process stages and `pipe_next`
/// halves do is never asked of it.
impl AnyStage for Group {
    fn name(&self) -> &str {
        &self.name
    }

    fn opts(&self) -> &Opts {
        &self.opts
    }

    fn input_channel(&self, cap: usize) -> (Box<dyn Any + Send>, Box<dyn Any + Send>) {
        self.stages[0].input_channel(cap)
    }

    fn spawn_threads(
        self: Arc<Self>,
        idx: u32,
        rx: Box<dyn Any + Send>,
        out: Box<dyn Any + Send>,
        rt: &Rt,
    ) -> io::Result<()> {
        self.spawn(idx, rx, out, rt)
    }

    fn prepare(&self) -> Result<Vec<Arc<Shared>>, Error> {
        *self.specs.lock().unwrap_or_else(|p| p.into_inner()) = self.describe()?;
        Ok(Vec::new())
    }

    fn ship(&self) -> Result<Shipment, String> {
        Err("a group of distributed stages runs in the caller".into())
    }
}

impl<In, Out> Pipeline<In, Out> {
    /// Runs this pipeline's `distributed` stages on the hosts that serve them through
    /// `broker` (cargo feature `nats`); the other stages run here as usual. Consecutive
    /// distributed stages pass their items host to host through the broker. Without
    /// `on`, the same pipeline runs everything locally.
    ///
    /// Hosts are processes of this same program whose `main` begins with
    /// `forkpipe::init()`, started with `FORKPIPE_HOST=nats://…` in their environment (or
    /// `--forkpipe-host nats://…` as an argument): `init()` then serves stages and never
    /// returns. Every guarantee of a local run holds (one outcome per item, order,
    /// backpressure), and an item that fails on a host names it ([`Error::Remote`]).
    /// Starting fails if the broker cannot be reached, or if a distributed stage is not a
    /// `#[stage(distributed)]` function (hosts find stages by name).
    pub fn on(mut self, broker: Broker) -> Self {
        self.stages = place(self.stages, &broker);
        self
    }
}
