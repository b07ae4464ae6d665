//! Type erasure of stages: the one place where a `Stage<In, Out>` becomes a
//! `dyn AnyStage`.
//!
//! # Why
//! A pipeline is a list of stages of different types (`Stage<String, Rec>`,
//! `Stage<Rec, Id>`, …); the runtime must keep them in one `Vec`, hand them to the
//! supervisor, and start them in a loop. So each stage is kept as `Arc<dyn AnyStage>`: the
//! erased stage still knows its own `In`/`Out` and makes the typed pieces that touch them
//! (channels, bridges, workers), handing them to its neighbours as `Box<dyn Any>`.
//! Composition (`Pipeline::then`, `pipeline!`) already checked that neighbouring types
//! agree, so every downcast succeeds; a failed one is a forkpipe bug and panics.

use std::any::Any;
use std::borrow::Cow;
use std::io;
use std::sync::Arc;

use crossbeam_channel::Receiver;

use crate::batch::Batch;
use crate::caller::output::{LinkPlan, Output};
use crate::caller::shared::Shared;
use crate::caller::threads::Rt;
use crate::caller::{bridge, thread_stage};
use crate::error::Error;
use crate::os::fds::RtFd;
use crate::os::image;
use crate::process::protocol::Shipment;
use crate::process::worker::{self, WorkerCtx, WorkerEnd};
use crate::recipe::Make;
use crate::stage::{Opts, Stage, WireOps};

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
    fn link_output(&self, idx: u32, links: Vec<RtFd>, plan: LinkPlan) -> Box<dyn Any + Send> {
        let _ = (idx, links, plan);
        not_a_process_stage(self.name())
    }
    /// A thread moving batches from `rx` (`Receiver<Batch<In>>`) into this stage's workers.
    fn spawn_dispatcher(
        &self,
        idx: u32,
        rx: Box<dyn Any + Send>,
        links: Vec<RtFd>,
        plan: LinkPlan,
        rt: &Rt,
    ) -> io::Result<()> {
        let _ = (idx, rx, links, plan, rt);
        not_a_process_stage(self.name())
    }
    /// A thread moving this (process) stage's outputs from `links` into `out` (`Output<Out>`).
    fn spawn_merger(
        &self,
        idx: u32,
        links: Vec<RtFd>,
        out: Box<dyn Any + Send>,
        rt: &Rt,
    ) -> io::Result<()> {
        let _ = (idx, links, out, rt);
        not_a_process_stage(self.name())
    }
    /// The body of a worker process of this stage (in the child). Returns when its input
    /// ended and everything it sent was acknowledged.
    fn worker_main(&self, ctx: WorkerCtx<std::os::fd::OwnedFd>) -> io::Result<WorkerEnd> {
        let _ = ctx;
        not_a_process_stage(self.name())
    }
    /// What this (process) stage is, as data, for the fork server; `Err` says why it
    /// cannot be shipped.
    fn ship(&self) -> Result<Shipment, String>;
    /// Runs a worker of this link stage on a thread of the caller (the halves of a
    /// `pipe_next` pair that are not `subprocess`).
    fn spawn_link_worker(self: Arc<Self>, ctx: WorkerCtx<RtFd>, rt: &Rt) -> io::Result<()> {
        let _ = (ctx, rt);
        not_a_process_stage(self.name())
    }
    /// Starts what must run before the pipeline's own supervisor and threads: a fan-out's
    /// branches. Returns what each branch shares (none for any other stage).
    fn prepare(&self) -> Result<Vec<Arc<Shared>>, Error>;
    /// What hosts make this stage from: its recipe id and encoded bound parameters; `Err`
    /// says why it cannot run on another host.
    #[cfg(feature = "nats")]
    fn remote_part(&self) -> Result<(String, Vec<u8>), String> {
        Err("it is not a stage of its own".into())
    }
    /// The feed thread's typed half, for a group of distributed stages this one starts.
    #[cfg(feature = "nats")]
    fn remote_feed(&self) -> Option<Box<dyn crate::distributed::ends::FeedEnd>> {
        None
    }
    /// The collect thread's typed half, for a group of distributed stages this one ends
    /// (the group is the piece `idx`).
    #[cfg(feature = "nats")]
    fn remote_collect(&self, _idx: u32) -> Option<Box<dyn crate::distributed::ends::CollectEnd>> {
        None
    }
}

impl<In: Send + 'static, Out: Send + 'static> AnyStage for Stage<In, Out> {
    fn name(&self) -> &str {
        &self.name
    }

    fn prepare(&self) -> Result<Vec<Arc<Shared>>, Error> {
        Ok(Vec::new())
    }

    fn opts(&self) -> &Opts {
        &self.opts
    }

    fn input_channel(&self, cap: usize) -> (Box<dyn Any + Send>, Box<dyn Any + Send>) {
        bridge::input_channel(self, cap)
    }

    fn spawn_threads(
        self: Arc<Self>,
        idx: u32,
        rx: Box<dyn Any + Send>,
        out: Box<dyn Any + Send>,
        rt: &Rt,
    ) -> io::Result<()> {
        let (rx, out) = unbox::<In, Out>(rx, out, "stage");
        thread_stage::spawn_workers(self, idx, rx, out, rt)
    }

    fn link_output(&self, idx: u32, links: Vec<RtFd>, plan: LinkPlan) -> Box<dyn Any + Send> {
        Box::new(bridge::link_output(self, idx, links, plan))
    }

    fn spawn_dispatcher(
        &self,
        idx: u32,
        rx: Box<dyn Any + Send>,
        links: Vec<RtFd>,
        plan: LinkPlan,
        rt: &Rt,
    ) -> io::Result<()> {
        bridge::spawn_dispatcher(self, idx, rx, links, plan, rt)
    }

    fn spawn_merger(
        &self,
        idx: u32,
        links: Vec<RtFd>,
        out: Box<dyn Any + Send>,
        rt: &Rt,
    ) -> io::Result<()> {
        bridge::spawn_merger(self, idx, links, out, rt)
    }

    fn worker_main(&self, ctx: WorkerCtx<std::os::fd::OwnedFd>) -> io::Result<WorkerEnd> {
        worker::run(self, ctx)
    }

    fn ship(&self) -> Result<Shipment, String> {
        let Some(wire) = &self.wire else {
            return Err("its items cannot cross a process boundary".into());
        };
        let recipe = self.recipe.as_ref().map_err(|why| why.to_string())?;
        Ok(Shipment {
            rebuild: image::addr_of(remake::<In, Out> as Remake),
            make: image::addr_of(recipe.make),
            wire: image::addr_of(wire.ops),
            params: recipe.params.clone(),
            id: recipe.id.to_string(),
            name: self.name.to_string(),
            opts: self.opts.clone(),
        })
    }

    fn spawn_link_worker(self: Arc<Self>, ctx: WorkerCtx<RtFd>, rt: &Rt) -> io::Result<()> {
        thread_stage::spawn_link_worker(self, ctx, rt)
    }

    #[cfg(feature = "nats")]
    fn remote_part(&self) -> Result<(String, Vec<u8>), String> {
        if self.opts.stream {
            return Err("it is a `stream` stage, which sees the whole stream in one place".into());
        }
        if self.pipe.is_some() {
            return Err(
                "it is a half of a `pipe_next` pair, which needs its other half beside it".into(),
            );
        }
        let recipe = self.recipe.as_ref().map_err(|why| why.to_string())?;
        Ok((recipe.id.to_string(), recipe.params.clone()))
    }

    #[cfg(feature = "nats")]
    fn remote_feed(&self) -> Option<Box<dyn crate::distributed::ends::FeedEnd>> {
        let wire = self.wire?;
        Some(Box::new(crate::distributed::ends::Feed::<In> {
            encode: wire.encode_in,
        }))
    }

    #[cfg(feature = "nats")]
    fn remote_collect(&self, idx: u32) -> Option<Box<dyn crate::distributed::ends::CollectEnd>> {
        let wire = self.wire?;
        Some(Box::new(crate::distributed::ends::Collect::<Out> {
            decode: wire.decode_out,
            stage: self.name.to_string(),
            idx,
        }))
    }
}

/// The typed ends a piece in the caller runs between: its input channel (from
/// [`AnyStage::input_channel`]) and its output, as the boxes its neighbours made them
/// (`what` names the piece, for the downcast that cannot fail, see the module docs).
pub(crate) fn unbox<In: 'static, Out: 'static>(
    rx: Box<dyn Any + Send>,
    out: Box<dyn Any + Send>,
    what: &str,
) -> (Receiver<Batch<In>>, Output<Out>) {
    let rx = rx.downcast::<Receiver<Batch<In>>>();
    let out = out.downcast::<Output<Out>>();
    match (rx, out) {
        (Ok(rx), Ok(out)) => (*rx, *out),
        _ => unreachable!("the ends of this {what} are of its types"),
    }
}

/// The process-only methods of a piece that runs in the caller (a fan-out, a group of
/// distributed stages): never called, since the topology gives it no sockets.
fn not_a_process_stage(name: &str) -> ! {
    unreachable!("'{name}' runs in the caller: it is no process stage")
}

/// Makes the stage of a shipment (the typed half, chosen by [`AnyStage::ship`]).
type Remake = fn(&Shipment) -> Result<Arc<dyn AnyStage>, String>;

fn remake<In: Send + 'static, Out: Send + 'static>(
    s: &Shipment,
) -> Result<Arc<dyn AnyStage>, String> {
    // SAFETY: `ship` on a `Stage<In, Out>` wrote `make` with `addr_of` of that stage's
    // `Make<Stage<In, Out>>`, `wire` with that of its `fn() -> WireOps<In, Out>`, and chose
    // this `remake::<In, Out>` by the same types.
    let make: Make<Stage<In, Out>> = unsafe { image::fn_at(s.make) };
    // SAFETY: as above.
    let wire: fn() -> WireOps<In, Out> = unsafe { image::fn_at(s.wire) };
    let mut stage = make(&s.params)?;
    stage.name = Cow::Owned(s.name.clone());
    stage.opts = s.opts.clone();
    stage.wire = Some(wire());
    Ok(Arc::new(stage))
}

/// Makes a shipped stage again (in a fork of this image).
pub(crate) fn rebuild(s: &Shipment) -> Result<Arc<dyn AnyStage>, String> {
    // SAFETY: a shipment is made only by `ship` in a caller of this image and comes over
    // the fork server's private socketpair, whose only peer is that caller.
    let remake: Remake = unsafe { image::fn_at(s.rebuild) };
    remake(s).map_err(|e| format!("could not make stage '{}' ({}): {e}", s.name, s.id))
}
