//! The caller's side of the supervisor: forking it at start, the start handshake, and the
//! control thread that reads its reports while the pipeline runs.
//!
//! The supervisor is forked from the calling thread before the runtime starts any thread
//! of its own for this pipeline (see [`crate::process::supervisor`] for why). It answers
//! `Alive` at once and `Ready` once every worker ran its `init`, or why it could not start.
//! While the pipeline runs, the control thread turns its reports into counters, `tracing`
//! events and, when the supervisor stops the pipeline or dies, the cause every unfinished
//! item gets. The messages themselves belong to [`crate::process::protocol`].

use std::os::fd::{AsFd, AsRawFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use nix::unistd::Pid;

use crate::caller::shared::Shared;
use crate::caller::topology::{Kinds, Topology};
use crate::erase::AnyStage;
use crate::error::{Error, Worker};
use crate::os::fds::{self, RtFd};
use crate::os::sys;
use crate::process::fork_server;
use crate::process::protocol::{self, ShippedStage, SupMsg};
use crate::process::state::ProcStage;
use crate::process::supervisor;
use crate::stage::PipeSide;
use crate::transport::run;

/// How long the supervisor may take to say it is alive.
const ALIVE_WITHIN: Duration = Duration::from_secs(10);

/// A running supervisor, as the caller holds it.
#[derive(Debug)]
pub(crate) struct Supervisor {
    pub pid: Pid,
    pub ctl: Arc<RtFd>,
    /// Who reaps it: this process, or the fork server (which reports on this socket).
    pub reaper: Reaper,
    /// Its workers' pids at start, by stage index.
    pub pids: Vec<(u32, Vec<u32>)>,
}

/// Who learns how a supervisor ended.
#[derive(Debug)]
pub(crate) enum Reaper {
    /// The caller forked it (direct mode) and waits for it.
    Caller,
    /// The fork server forked it; it says how it ended on this spawn-status socket.
    Server(RtFd),
}

impl Reaper {
    /// How supervisor `pid` ended (it has ended or is about to).
    fn wait(&self, pid: Pid) -> Option<nix::sys::wait::WaitStatus> {
        match self {
            Reaper::Caller => sys::wait_pid(pid, false).ok().flatten(),
            Reaper::Server(status) => fork_server::exit_status(status, pid),
        }
    }
}

fn start_err(what: &str) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |e| Error::Start(format!("{what}: {e}"))
}

/// Forks the supervisor of a pipeline that has process stages (`None` if it has none) and
/// waits until every worker is up. The process stages' ends in `topo` move to it.
pub(crate) fn start(
    stages: &[Arc<dyn AnyStage>],
    topo: &mut Topology,
) -> Result<Option<Supervisor>, Error> {
    let kinds = Kinds(stages);
    let procs: Vec<usize> = (0..stages.len()).filter(|&i| kinds.process(i)).collect();
    if procs.is_empty() {
        return Ok(None);
    }
    if fork_server::active() {
        return start_by_server(stages, topo, &procs).map(Some);
    }
    warn_if_threaded();
    let (c_caller, c_sup) = fds::seqpacket_pair().map_err(start_err("socketpair failed"))?;
    let plan = proc_plan(stages, topo, &procs);
    crate::guard::install_panic_hook();
    // SAFETY: the child is the supervisor: it only uses its own data, raw syscalls and
    // allocation (glibc resets its malloc locks at fork), and leaves with `_exit`.
    match unsafe { fds::fork() }.map_err(start_err("fork failed"))? {
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
            for &i in &procs {
                topo.stages[i].workers.clear();
            }
            handshake(pid, c_caller, Reaper::Caller, stages).map(Some)
        }
    }
}

/// Direct mode in a multi-threaded process: says so, once, with the remedy.
fn warn_if_threaded() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    let threads = sys::thread_count();
    if threads > 1 {
        ONCE.call_once(|| {
            tracing::warn!(
                threads,
                "forkpipe: starting a pipeline from a multi-threaded process without \
                 forkpipe::init(): a worker forked while another thread held a lock (stdout, \
                 the environment, a logger) can hang on it; call forkpipe::init() first in \
                 main (or use #[forkpipe::main]) so that every pipeline is forked from a \
                 single-threaded fork server"
            );
        });
    }
}

/// Fork-server mode: the fork server forks the supervisor; the process stages travel as
/// data and their sockets by `SCM_RIGHTS`.
fn start_by_server(
    stages: &[Arc<dyn AnyStage>],
    topo: &mut Topology,
    procs: &[usize],
) -> Result<Supervisor, Error> {
    let (c_caller, c_sup) = fds::seqpacket_pair().map_err(start_err("socketpair failed"))?;
    let (status, status_server) = fds::seqpacket_pair().map_err(start_err("socketpair failed"))?;
    let mut fds = vec![status_server.as_raw_fd(), c_sup.as_raw_fd()];
    let mut shipped = Vec::with_capacity(procs.len());
    for &i in procs {
        let shipment = stages[i].ship().map_err(|why| {
            Error::Start(format!(
                "stage '{}' cannot run in fork-server mode: {why}",
                stages[i].name()
            ))
        })?;
        shipped.push(ship_stage(i, shipment, stages, topo, &mut fds));
    }
    let pid = fork_server::spawn(shipped, &fds, &status)?;
    drop((c_sup, status_server));
    for &i in procs {
        topo.stages[i].workers.clear();
    }
    handshake(pid, c_caller, Reaper::Server(status), stages)
}

/// Stage `i` for a spawn request: its descriptors are appended to `fds`, and named by
/// their index there.
fn ship_stage(
    i: usize,
    shipment: protocol::Shipment,
    stages: &[Arc<dyn AnyStage>],
    topo: &Topology,
    fds: &mut Vec<std::os::fd::RawFd>,
) -> ShippedStage {
    let mut index = |f: &RtFd| {
        fds.push(f.as_raw_fd());
        (fds.len() - 1) as u32
    };
    let workers = &topo.stages[i].workers;
    ShippedStage {
        idx: i as u32,
        shipment,
        credit: run::link_credit(stages[i].opts().queue),
        timeout: stages[i].opts().timeout,
        workers: workers
            .iter()
            .map(|w| {
                let ins = w.ins.iter().map(&mut index).collect();
                let outs = w.outs.iter().map(&mut index).collect();
                (ins, outs)
            })
            .collect(),
        streams: workers
            .iter()
            .map(|w| w.stream.as_ref().map(&mut index))
            .collect(),
        couple: couple(stages[i].opts().pipe),
    }
}

fn couple(side: Option<PipeSide>) -> Option<bool> {
    match side {
        Some(PipeSide::Producer) => Some(true),
        Some(PipeSide::Consumer) => Some(false),
        None => None,
    }
}

/// What the supervisor needs to know of each process stage.
fn proc_plan(stages: &[Arc<dyn AnyStage>], topo: &Topology, procs: &[usize]) -> Vec<ProcStage> {
    let raw = |v: &Vec<RtFd>| v.iter().map(|f| f.as_raw_fd()).collect::<Vec<_>>();
    procs
        .iter()
        .map(|&i| ProcStage {
            idx: i as u32,
            stage: Arc::clone(&stages[i]),
            credit: run::link_credit(stages[i].opts().queue),
            timeout: stages[i].opts().timeout,
            workers: topo.stages[i]
                .workers
                .iter()
                .map(|w| (raw(&w.ins), raw(&w.outs)))
                .collect(),
            streams: topo.stages[i]
                .workers
                .iter()
                .map(|w| w.stream.as_ref().map(|f| f.as_raw_fd()))
                .collect(),
            couple: couple(stages[i].opts().pipe),
        })
        .collect()
}

/// Waits for `Alive` (bounded: a supervisor stuck on a lock another thread held when it was
/// forked must not hang the caller) and then `Ready`, or the reason it could not start.
fn handshake(
    pid: Pid,
    ctl: RtFd,
    reaper: Reaper,
    stages: &[Arc<dyn AnyStage>],
) -> Result<Supervisor, Error> {
    let mut p = [libc::pollfd {
        fd: ctl.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    }];
    if sys::poll(&mut p, Some(ALIVE_WITHIN)).unwrap_or(0) == 0 {
        if let Reaper::Caller = reaper {
            sys::kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
        drop(ctl);
        let _ = reaper.wait(pid);
        return Err(Error::Start(
            "the supervisor process did not start within 10 s (a lock held by another \
             thread when it was forked?)"
                .into(),
        ));
    }
    let mut first = protocol::recv_blocking(&ctl);
    if matches!(first, Some(SupMsg::Alive)) {
        first = protocol::recv_blocking(&ctl);
    }
    if let Some(SupMsg::Ready(pids)) = first {
        return Ok(Supervisor {
            pid,
            ctl: Arc::new(ctl),
            reaper,
            pids,
        });
    }
    drop(ctl);
    let _ = reaper.wait(pid);
    Err(match first {
        Some(SupMsg::StartFailed(m)) => Error::Start(m),
        Some(SupMsg::InitFailed {
            stage,
            pid,
            message,
        }) => Error::Init {
            stage: stages[stage as usize].name().to_string(),
            worker: Worker::Process(pid),
            message,
        },
        _ => Error::Start("the supervisor process died at start".into()),
    })
}

/// The control thread: reads the supervisor's reports until it ends, then reaps it.
pub(crate) fn control_loop(sup: Supervisor, shared: Arc<Shared>) {
    let mut done = false;
    while let Some(msg) = protocol::recv_blocking::<SupMsg>(sup.ctl.as_fd()) {
        done |= on_report(msg, &shared);
    }
    let status = sup.reaper.wait(sup.pid);
    if !done && !shared.stopping.load(Ordering::Acquire) {
        // The supervisor died under us (its workers follow it: PDEATHSIG). Every unfinished
        // item fails with that cause; nothing can be submitted any more.
        let cause = status
            .as_ref()
            .map_or_else(|| "ended".to_string(), protocol::cause);
        tracing::error!(pid = sup.pid.as_raw(), %cause, "forkpipe: the supervisor process died");
        shared.set_abort(Error::Died {
            stage: "(supervisor)".into(),
            item: 0,
            worker: Worker::Process(sup.pid.as_raw() as u32),
            cause: format!("supervisor died: {cause}"),
        });
        shared.window.close();
    }
    shared.control_done.store(true, Ordering::Release);
}

/// One report of the supervisor; true once it ended on purpose (`Done` or `Stopped`).
fn on_report(msg: SupMsg, shared: &Shared) -> bool {
    let name = |stage: u32| {
        shared
            .names
            .get(stage as usize)
            .map_or("?".to_string(), |s| s.to_string())
    };
    match msg {
        SupMsg::WorkerDied {
            stage,
            pid,
            cause,
            restarted,
        } => {
            let _in = shared.stage_span(stage).entered();
            if restarted {
                tracing::warn!(stage = %name(stage), pid, %cause, "forkpipe: worker died; replaced");
            } else {
                tracing::error!(
                    stage = %name(stage),
                    pid,
                    %cause,
                    "forkpipe: worker died; past its restart budget, the stage gives up"
                );
            }
            if let Some(c) = shared.restarts.get(stage as usize) {
                c.fetch_add(1, Ordering::Relaxed);
            }
            false
        }
        SupMsg::Load(load) => {
            for (stage, busy, queued) in load {
                if let Some(t) = shared.times.get(stage as usize) {
                    t.set(busy, queued);
                }
            }
            false
        }
        SupMsg::Done => true,
        SupMsg::Stopped { stage, pid, cause } => {
            let _in = shared.stage_span(stage).entered();
            tracing::error!(stage = %name(stage), pid, %cause, "forkpipe: pipeline stopped");
            shared.set_abort(Error::Died {
                stage: name(stage),
                item: 0,
                worker: Worker::Process(pid),
                cause,
            });
            shared.window.close();
            true
        }
        SupMsg::Alive | SupMsg::Ready(_) | SupMsg::StartFailed(_) | SupMsg::InitFailed { .. } => {
            false
        }
    }
}
