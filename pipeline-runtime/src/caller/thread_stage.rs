//! Thread stages: a stage's workers on threads of the caller's process, each pulling
//! batches from the stage's channel, applying the stage function over each batch under one
//! guard (a panic fails its item; a stateful stage re-runs `init` after one), and sending
//! the outputs on.
//! Also the workers of a `pipe_next` half that is not `subprocess`: they run the process
//! worker's loop on a thread, over the same sockets.

use std::io;
use std::sync::Arc;

use crossbeam_channel::Receiver;

use crate::batch::Batch;
use crate::caller::output::{Output, recv_chan};
use crate::caller::threads::Rt;
use crate::error::{Error, Worker};
use crate::kernel::{apply_batch, worker_fn};
use crate::meter::{Meter, Sink};
use crate::os::fds::RtFd;
use crate::stage::{Emit, Stage, WorkerFn};
use crate::stream::StreamPull;

pub(crate) fn spawn_workers<In: Send + 'static, Out: Send + 'static>(
    stage: Arc<Stage<In, Out>>,
    idx: u32,
    rx: Receiver<Batch<In>>,
    out: Output<Out>,
    rt: &Rt,
) -> io::Result<()> {
    if let Some(f) = &stage.stream {
        for w in 0..stage.opts.workers {
            let port = crate::caller::stream_pull::ChanPort::<In, Out>::new(
                rx.clone(),
                rt.stop.clone(),
                out.try_clone().expect("thread stages write to channels"),
            );
            let pull = StreamPull::new(port, w as u64, stage.opts.workers as u64, idx);
            let f = Arc::clone(f);
            let name = stage.name.to_string();
            let inits = rt.inits.clone();
            rt.threads.spawn(&format!("{}-{w}", stage.name), move || {
                let _ = inits.send(Ok(()));
                drop(inits);
                let io = std::rc::Rc::new(std::cell::RefCell::new(pull));
                crate::stream::run(&*f, &io, &name, Worker::Thread(w));
            })?;
        }
        return Ok(());
    }
    let last_sample = Arc::new(std::sync::Mutex::new((0u64, 0u64)));
    for w in 0..stage.opts.workers {
        let rx = rx.clone();
        let mut out = out.try_clone().expect("thread stages write to channels");
        let stop = rt.stop.clone();
        let me = Arc::clone(&stage);
        let inits = rt.inits.clone();
        let mut meter = Meter::new(Sink::Stage(rt.shared.time(idx)));
        let last_sample = Arc::clone(&last_sample);
        rt.threads.spawn(&format!("{}-{w}", stage.name), move || {
            let worker = Worker::Thread(w);
            let make = || make_fn(&me);
            let mut f = match make() {
                Ok(f) => {
                    let _ = inits.send(Ok(()));
                    f
                }
                Err(message) => {
                    let _ = inits.send(Err(Error::Init {
                        stage: me.name.to_string(),
                        worker,
                        message,
                    }));
                    return;
                }
            };
            drop(inits);
            let mut emit = Emit::new();
            while let Some(batch) = recv_chan(&rx, &stop) {
                let n = batch.len() as u64;
                meter.sample_queue(rx.len() as u64 * n, &last_sample);
                meter.begin(n, None);
                let cx = (idx, &*me.name, worker);
                let out_batch = apply_batch(&mut f, cx, batch, &mut emit, |f| {
                    if me.opts.stateful {
                        // Its state may be half-updated: start afresh.
                        *f = afresh(&me);
                    }
                });
                meter.done();
                if out.send(out_batch, &stop).is_err() {
                    return;
                }
            }
        })?;
    }
    Ok(())
}

/// Runs the stage's `init` (a panic is its error): a worker's stage function.
fn make_fn<In, Out>(stage: &Stage<In, Out>) -> Result<WorkerFn<In, Out>, String> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (stage.make)())) {
        Ok(r) => r,
        Err(p) => Err(format!(
            "panicked: {}",
            crate::error::panic_message(p.as_ref())
        )),
    }
}

/// The stage function made again after a panic of a stateful stage; if its `init` fails,
/// a function that fails every item with why.
fn afresh<In: 'static, Out: 'static>(stage: &Stage<In, Out>) -> WorkerFn<In, Out> {
    make_fn(stage).unwrap_or_else(|message| {
        let name = stage.name.to_string();
        worker_fn(move |_: In, _: &mut Emit<Out>| {
            Err(format!(
                "init of stage '{name}' failed after a panic: {message}"
            ))
        })
    })
}

pub(crate) fn spawn_link_worker<In: Send + 'static, Out: Send + 'static>(
    stage: Arc<Stage<In, Out>>,
    ctx: crate::process::worker::WorkerCtx<RtFd>,
    rt: &Rt,
) -> io::Result<()> {
    let inits = rt.inits.clone();
    let name = format!("{}-{}", stage.name, ctx.position);
    rt.threads.spawn(&name, move || {
        let _ = inits.send(Ok(()));
        drop(inits);
        if let Err(e) = crate::process::worker::run(&*stage, ctx) {
            tracing::debug!(stage = %stage.name, "forkpipe: link worker thread ended: {e}");
        }
    })
}

/// The shared slot of every link worker on a thread: nobody watches it (there is no
/// supervisor for threads), but the worker's loop writes its counters there.
pub(crate) static THREAD_SLOT: std::sync::LazyLock<crate::os::sys::SlotState> =
    std::sync::LazyLock::new(crate::os::sys::SlotState::default);
