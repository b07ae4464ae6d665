//! The supervisor: one single-threaded process per pipeline that forks and watches the
//! worker processes.
//!
//! # The problem
//! `fork` in a multi-threaded process copies only the calling thread; a lock another thread
//! held stays locked forever in the child (with two threads printing, a forked child that
//! prints hangs). A `cargo test` process always has several threads, and so do most users'
//! programs. Replacement workers must be forked long after start, when the caller's threads
//! are busy. And `PR_SET_PDEATHSIG` fires when the *thread* that forked dies, so workers
//! forked from a short-lived caller thread would be killed with it.
//!
//! # The approach
//! At start the caller creates every socket of the pipeline, then forks this supervisor
//! from the calling thread before the runtime starts any thread of its own. The supervisor
//! keeps only this pipeline's worker-side descriptors, closes every other runtime
//! descriptor, and forks every worker from its one thread — the first ones and, later, the
//! replacements. It holds a copy of every worker-side socket, so a replacement can take over
//! a dead worker's links without its neighbours reconnecting.
//!
//! It learns of a worker's end by its pidfd (process exit, not socket EOF: a grandchild may
//! hold the socket), reaps only its own pids, and tells the caller on the control socket.
//! It lives exactly as long as the control socket: end of stream there (the caller dropped
//! the pipeline, or died, even by `kill -9`) makes it SIGKILL and reap every worker, then
//! exit. Workers set `PR_SET_PDEATHSIG` (SIGKILL), so they cannot outlive it either.
//!
//! # Invariants
//! - A worker is *finished* only if it said so on its control socket and then exited with
//!   code 0; any other end (a signal, any exit code, 0 included) is a death.
//! - The supervisor never signals a pid after reaping it.

use std::collections::VecDeque;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;

use crate::caller::bridge::AnyStage;
use crate::os::fds::{Inherited, Kept, RtFd};
use crate::os::sys;
use crate::os::sys::SlotState;
use crate::process::budget::Budget;
pub(crate) use crate::process::death::cause;
use crate::process::death::{on_couple_death, on_death};
use crate::process::protocol::{self, CallerMsg, CorruptReport, Recv, SupMsg, WorkerMsg, exit};
use crate::process::spawn::{spawn, wait_inits};
use crate::process::timeout::check_timeouts;
use crate::process::worker::GiveUp;

/// A process stage as the supervisor sees it. The caller builds the plan, `ProcStage<RawFd>`:
/// the numbers of descriptors the supervisor inherits through its fork; the supervisor owns
/// them from its start on, as `ProcStage<RtFd>` ([`ProcStage::adopt`]).
pub(crate) struct ProcStage<F = RawFd> {
    pub idx: u32,
    pub stage: Arc<dyn AnyStage>,
    /// Credit on this stage's output links.
    pub credit: usize,
    /// Per-item time limit.
    pub timeout: Option<Duration>,
    /// For each worker: its input and output link descriptors.
    pub workers: Vec<(Vec<F>, Vec<F>)>,
    /// For each worker of a `pipe_next` half: its couple's stream socket.
    pub streams: Vec<Option<F>>,
    /// `Some(true)`: a `pipe_next` producer (its consumer is the next stage here);
    /// `Some(false)`: a consumer (its producer is the previous one).
    pub couple: Option<bool>,
}

impl ProcStage {
    /// Every descriptor of the plan.
    fn fds(&self) -> impl Iterator<Item = RawFd> + '_ {
        let links = self
            .workers
            .iter()
            .flat_map(|(ins, outs)| ins.iter().chain(outs));
        links.chain(self.streams.iter().flatten()).copied()
    }

    /// The supervisor's own stage: every descriptor of the plan taken from those it kept.
    fn adopt(self, kept: &mut Kept) -> ProcStage<RtFd> {
        let mut take = |v: Vec<RawFd>| v.into_iter().map(|fd| kept.take(fd)).collect();
        let workers = (self.workers.into_iter())
            .map(|(ins, outs)| (take(ins), take(outs)))
            .collect();
        let streams = (self.streams.into_iter())
            .map(|s| s.map(|fd| kept.take(fd)))
            .collect();
        ProcStage {
            idx: self.idx,
            stage: self.stage,
            credit: self.credit,
            timeout: self.timeout,
            workers,
            streams,
            couple: self.couple,
        }
    }
}

/// One worker position of a stage; its worker is replaced in place.
pub(super) struct Slot {
    pub stage: usize,
    pub slot: usize,
    pub state: &'static SlotState,
    pub epoch: u32,
    pub give_up: Option<GiveUp>,
    pub child: Option<Child>,
    /// An item over its time limit: (`running` value, when to escalate to SIGKILL).
    pub overtime: Option<(u64, Instant)>,
    /// It was killed for writing a corrupt frame (what its receiver found wrong).
    pub blame: Option<String>,
}

pub(super) struct Child {
    pub pid: Pid,
    pub pidfd: RtFd,
    pub ctl: RtFd,
    pub finished: bool,
    pub init_ok: bool,
    pub init_error: Option<String>,
    /// Its receiver found a corrupt frame on these input links.
    pub corrupt: Vec<CorruptReport>,
}

/// The supervisor's whole life, in the forked child. Never returns.
pub(crate) fn run(inherited: Inherited, ctl: RawFd, plan: Vec<ProcStage>) -> ! {
    let keep: Vec<RawFd> = std::iter::once(ctl)
        .chain(plan.iter().flat_map(ProcStage::fds))
        .collect();
    sys::child_setup(false, Pid::from_raw(0), exit::ORPHANED);
    let mut kept = inherited.keep(&keep);
    crate::stage::IN_FORKED.store(true, Ordering::Relaxed);
    let ctl = kept.take(ctl);
    let mut stages: Vec<ProcStage<RtFd>> = plan.into_iter().map(|s| s.adopt(&mut kept)).collect();
    protocol::send(&ctl, &SupMsg::Alive);

    let total: usize = stages.iter().map(|s| s.workers.len()).sum();
    let states = match sys::shared_slots(total) {
        Ok(s) => s,
        Err(e) => {
            protocol::send(&ctl, &SupMsg::StartFailed(format!("mmap failed: {e}")));
            sys::exit_now(0);
        }
    };
    let mut slots: Vec<Slot> = Vec::with_capacity(total);
    for (si, s) in stages.iter().enumerate() {
        for j in 0..s.workers.len() {
            slots.push(Slot {
                stage: si,
                slot: j,
                state: &states[slots.len()],
                epoch: 0,
                give_up: None,
                child: None,
                overtime: None,
                blame: None,
            });
        }
    }
    for k in 0..slots.len() {
        if let Err(e) = spawn(&stages, &mut slots[k], Vec::new()) {
            let msg = format!(
                "fork failed for stage '{}': {e}",
                stages[slots[k].stage].stage.name()
            );
            kill_all(&mut slots);
            protocol::send(&ctl, &SupMsg::StartFailed(msg));
            sys::exit_now(0);
        }
    }
    if let Some(msg) = wait_inits(&stages, &mut slots, ctl.as_fd()) {
        kill_all(&mut slots);
        protocol::send(&ctl, &msg);
        sys::exit_now(0);
    }
    protocol::send(&ctl, &SupMsg::Ready);

    let mut restarts: Vec<Budget> = stages
        .iter()
        .enumerate()
        .map(|(si, _)| Budget {
            restarts: VecDeque::new(),
            done_base: 0,
            states: slots
                .iter()
                .filter(|s| s.stage == si)
                .map(|s| s.state)
                .collect(),
        })
        .collect();
    let mut pfds: Vec<libc::pollfd> = Vec::new();
    let mut who: Vec<usize> = Vec::new();
    loop {
        if slots.iter().all(|s| s.child.is_none()) {
            protocol::send(&ctl, &SupMsg::Done);
            sys::exit_now(0);
        }
        pfds.clear();
        who.clear();
        pfds.push(libc::pollfd {
            fd: ctl.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        });
        for (k, s) in slots.iter().enumerate() {
            if let Some(c) = &s.child {
                pfds.push(libc::pollfd {
                    fd: c.pidfd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                });
                pfds.push(libc::pollfd {
                    fd: c.ctl.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                });
                who.push(k);
            }
        }
        let wait = check_timeouts(&stages, &mut slots);
        if sys::poll(&mut pfds, wait).is_err() {
            continue;
        }
        if pfds[0].revents != 0 {
            // A report from the caller's side, or the caller closed the pipeline (or died):
            // then stop everything now.
            loop {
                match protocol::recv::<CallerMsg>(&ctl, true) {
                    Recv::Empty => break,
                    Recv::Msg(CallerMsg::Corrupt { stage, report: r }) => {
                        if let Some(k) = slots
                            .iter()
                            .position(|s| stages[s.stage].idx == stage && s.slot == r.link)
                        {
                            blame(
                                &mut slots[k],
                                r.epoch,
                                format!("sent a corrupt frame ({}); worker killed", r.what),
                            );
                        }
                    }
                    Recv::Closed => {
                        kill_all(&mut slots);
                        sys::exit_now(0);
                    }
                }
            }
        }
        let mut replaced: Vec<usize> = Vec::new();
        for (n, &k) in who.iter().enumerate() {
            let (pid_ev, ctl_ev) = (pfds[1 + 2 * n].revents, pfds[2 + 2 * n].revents);
            if replaced.contains(&k) {
                continue; // (its events were those of the worker it replaced)
            }
            let Some(c) = slots[k].child.as_mut() else {
                continue;
            };
            if ctl_ev != 0 {
                read_ctl(c);
                for r in std::mem::take(&mut c.corrupt) {
                    match corrupt_sender(&stages, &slots, k, r.link) {
                        Some(sender) => blame(
                            &mut slots[sender],
                            r.epoch,
                            format!("sent a corrupt frame ({}); worker killed", r.what),
                        ),
                        // The caller wrote it (a forkpipe bug): this worker starts afresh.
                        None => {
                            let epoch = slots[k].epoch;
                            blame(
                                &mut slots[k],
                                epoch,
                                format!(
                                    "read a corrupt frame from the caller ({}); worker killed",
                                    r.what
                                ),
                            );
                        }
                    }
                }
            }
            if pid_ev == 0 {
                continue;
            }
            let mut c = slots[k].child.take().expect("child");
            read_ctl(&mut c);
            let status = sys::wait_pid(c.pid, false).ok().flatten();
            if c.finished && matches!(status, Some(WaitStatus::Exited(_, 0))) {
                slots[k].state.running.store(0, Ordering::Relaxed);
                continue; // finished its input: the slot is done
            }
            let mut why = match (&c.init_error, &status) {
                (Some(m), _) => format!("init failed: {m}"),
                (None, Some(WaitStatus::Exited(_, exit::RESTART))) => {
                    "replaced after a panic (the stage keeps init state)".to_string()
                }
                (None, Some(st)) => cause(st),
                (None, None) => "ended; status unavailable".to_string(),
            };
            if let (Some(_), Some(limit)) =
                (slots[k].overtime.take(), stages[slots[k].stage].timeout)
            {
                why = format!("timed out after {} ms; worker killed", limit.as_millis());
            }
            if let Some(blamed) = slots[k].blame.take()
                && matches!(status, Some(WaitStatus::Signaled(_, Signal::SIGKILL, _)))
            {
                why = blamed;
            }
            if let Some(msg) = slots[k].state.take_panic() {
                // A panic that aborted (a `panic = "abort"` build, or a panic while panicking).
                why = format!("panicked: {msg}; {why}");
            }
            if stages[slots[k].stage].couple.is_some() {
                replaced.extend(on_couple_death(
                    &mut stages,
                    &mut slots,
                    k,
                    c.pid,
                    &why,
                    &mut restarts,
                    &ctl,
                ));
            } else {
                let in_epochs = sender_epochs(&stages, &slots, &slots[k]);
                let replaced = on_death(
                    &stages,
                    &mut slots[k],
                    c.pid,
                    &why,
                    &mut restarts,
                    &ctl,
                    in_epochs,
                );
                let stage = slots[k].stage;
                if let Err(e) = replaced
                    && !slots.iter().any(|s| s.stage == stage && s.child.is_some())
                {
                    // The stage has no worker left and cannot get one: nothing could ever
                    // run its items. Stop the pipeline with the cause (the caller fails
                    // every unfinished item with it) instead of pretending to be done.
                    protocol::send(
                        &ctl,
                        &SupMsg::Stopped {
                            stage: stages[stage].idx,
                            pid: c.pid.as_raw() as u32,
                            cause: format!("{why}; no replacement: fork failed: {e}"),
                        },
                    );
                    kill_all(&mut slots);
                    sys::exit_now(0);
                }
            }
        }
    }
}

/// The slot of the worker that writes input link `link` of slot `k`'s worker: a worker of
/// the process stage right before (mesh order), or a `pipe_next` consumer's producer.
/// `None` when the caller writes that link.
fn corrupt_sender(
    stages: &[ProcStage<RtFd>],
    slots: &[Slot],
    k: usize,
    link: usize,
) -> Option<usize> {
    let (si, j) = (slots[k].stage, slots[k].slot);
    if si == 0 || stages[si - 1].idx + 1 != stages[si].idx {
        return None;
    }
    let want = if stages[si].couple == Some(false) {
        j
    } else {
        link
    };
    slots
        .iter()
        .position(|s| s.stage == si - 1 && s.slot == want)
}

/// A worker wrote a corrupt frame (or, when the sender is the caller, read one): it cannot
/// be trusted with its stream any more. It is killed; its death fails the item it was
/// running with `cause` and replaces it like any other death (the receiver discards that
/// link until the replacement's `HELLO`).
/// `epoch` is that of the worker that wrote the frame: a report about a worker already
/// replaced (several receivers saw its frames) leaves the replacement alone.
fn blame(slot: &mut Slot, epoch: u32, cause: String) {
    if let Some(c) = &slot.child
        && slot.blame.is_none()
        && slot.epoch == epoch
    {
        // (Not reaped yet: the pid is still this worker's.)
        sys::kill(c.pid, Signal::SIGKILL);
        slot.blame = Some(cause);
    }
}

pub(super) fn read_ctl(c: &mut Child) {
    while let Recv::Msg(m) = protocol::recv::<WorkerMsg>(&c.ctl, true) {
        match m {
            WorkerMsg::Finished => c.finished = true,
            WorkerMsg::InitOk => c.init_ok = true,
            WorkerMsg::InitFailed(message) => c.init_error = Some(message),
            WorkerMsg::Corrupt(report) => c.corrupt.push(report),
        }
    }
}

pub(super) fn kill_all(slots: &mut [Slot]) {
    for s in slots.iter() {
        if let Some(c) = &s.child {
            sys::kill(c.pid, Signal::SIGKILL);
        }
    }
    for s in slots.iter_mut() {
        if let Some(c) = s.child.take() {
            let _ = sys::wait_pid(c.pid, false);
        }
    }
}

/// The current epochs of the senders of a slot's input links: the workers of the previous
/// stage when it is a process stage right before this one (mesh order), else 0 (the caller).
pub(super) fn sender_epochs(stages: &[ProcStage<RtFd>], slots: &[Slot], slot: &Slot) -> Vec<u32> {
    let si = slot.stage;
    let prev_adjacent = si > 0 && stages[si - 1].idx + 1 == stages[si].idx;
    if !prev_adjacent || stages[si].couple == Some(false) {
        return Vec::new();
    }
    let mut v: Vec<(usize, u32)> = slots
        .iter()
        .filter(|s| s.stage == si - 1)
        .map(|s| (s.slot, s.epoch))
        .collect();
    v.sort_unstable();
    v.into_iter().map(|(_, e)| e).collect()
}
