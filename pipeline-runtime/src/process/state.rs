//! The supervisor's state: the plan of each process stage, the worker positions (slots)
//! and the worker each runs now, and the few operations on them that every part of the
//! supervisor uses (reading a worker's control messages, killing every worker, the epochs of
//! a slot's senders). It depends on nothing else of the supervisor: [`spawn`](super::spawn),
//! [`death`](super::death), [`budget`](super::budget), [`timeout`](super::timeout) and the
//! event loop in [`supervisor`](super::supervisor) all stand on it.

use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::erase::AnyStage;
use crate::os::fds::{Kept, RtFd};
use crate::os::sys::{self, SlotState};
use crate::process::budget::Budget;
use crate::process::budget::GiveUp;
use crate::process::protocol::{self, CorruptReport, Recv, WorkerMsg};

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
    pub(super) fn fds(&self) -> impl Iterator<Item = RawFd> + '_ {
        let links = self
            .workers
            .iter()
            .flat_map(|(ins, outs)| ins.iter().chain(outs));
        links.chain(self.streams.iter().flatten()).copied()
    }

    /// The supervisor's own stage: every descriptor of the plan taken from those it kept.
    pub(super) fn adopt(self, kept: &mut Kept) -> ProcStage<RtFd> {
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

impl Slot {
    pub(super) fn new(stage: usize, slot: usize, state: &'static SlotState) -> Slot {
        Slot {
            stage,
            slot,
            state,
            epoch: 0,
            give_up: None,
            child: None,
            overtime: None,
            blame: None,
        }
    }
}

/// The worker a slot runs now.
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

/// The supervisor's state, from its start on.
pub(super) struct Sup {
    /// The control socket to the caller.
    pub ctl: RtFd,
    pub stages: Vec<ProcStage<RtFd>>,
    /// Every worker position, stage by stage.
    pub slots: Vec<Slot>,
    /// Each stage's restart history.
    pub budgets: Vec<Budget>,
    /// When the caller was last told where the stages' time went, and what.
    pub load_at: std::time::Instant,
    pub load: Vec<(u32, u64, u64)>,
}

/// Reads every control message slot's worker `c` has sent so far.
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
