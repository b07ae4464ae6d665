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
//!
//! # Where it lives
//! This file: the supervisor's start and its event loop (the caller's messages, a worker's
//! messages, a worker's exit). [`state`](super::state) holds the plan, the slots and their
//! workers; [`spawn`](super::spawn) forks a worker and waits for the first ones' `init`;
//! [`death`](super::death) handles a worker that ended without finishing;
//! [`budget`](super::budget) decides whether it is replaced; [`timeout`](super::timeout)
//! stops an item that runs too long. None of those imports this file.

use std::os::fd::{AsFd, RawFd};
use std::sync::atomic::Ordering;

use nix::sys::signal::Signal;
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;

use crate::meter;
use crate::os::fds::{Inherited, RtFd};
use crate::os::sys;
use crate::process::budget::Budget;
use crate::process::death::why_died;
use crate::process::protocol::{self, CallerMsg, CorruptReport, Recv, SupMsg, exit};
use crate::process::spawn::{spawn, wait_inits};
use crate::process::state::{ProcStage, Slot, Sup, kill_all, read_ctl};
use crate::process::timeout::check_timeouts;

/// The supervisor's whole life, in the forked child. Never returns.
pub(crate) fn run(inherited: Inherited, ctl: RawFd, plan: Vec<ProcStage>) -> ! {
    let (ctl, stages) = adopt(inherited, ctl, plan);
    protocol::send(&ctl, &SupMsg::Alive);
    let sup = start(ctl, stages);
    protocol::send(&sup.ctl, &SupMsg::Ready(sup.pids()));
    sup.serve()
}

/// The supervisor's first step: keeps this pipeline's descriptors (every other runtime
/// descriptor inherited from the caller is closed) and owns them from now on.
fn adopt(inherited: Inherited, ctl: RawFd, plan: Vec<ProcStage>) -> (RtFd, Vec<ProcStage<RtFd>>) {
    let keep: Vec<RawFd> = std::iter::once(ctl)
        .chain(plan.iter().flat_map(ProcStage::fds))
        .collect();
    sys::child_setup(false, Pid::from_raw(0), exit::ORPHANED);
    let mut kept = inherited.keep(&keep);
    crate::guard::IN_FORKED.store(true, Ordering::Relaxed);
    let ctl = kept.take(ctl);
    let stages = plan.into_iter().map(|s| s.adopt(&mut kept)).collect();
    (ctl, stages)
}

/// Makes the slots (their state in shared memory), forks the first workers and waits until
/// each ran its stage's `init`. If any of it fails, the caller is told why, every worker is
/// killed, and the supervisor exits.
fn start(ctl: RtFd, stages: Vec<ProcStage<RtFd>>) -> Sup {
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
            slots.push(Slot::new(si, j, &states[slots.len()]));
        }
    }
    let budgets = (0..stages.len())
        .map(|si| Budget::new(slots.iter().filter(|s| s.stage == si).map(|s| s.state)))
        .collect();
    let mut sup = Sup {
        ctl,
        stages,
        slots,
        budgets,
        load_at: std::time::Instant::now(),
        load: Vec::new(),
    };
    for k in 0..sup.slots.len() {
        if let Err(e) = spawn(&sup.stages, &mut sup.slots[k], Vec::new()) {
            let name = sup.stages[sup.slots[k].stage].stage.name();
            let msg = format!("fork failed for stage '{name}': {e}");
            sup.fail_start(&SupMsg::StartFailed(msg));
        }
    }
    if let Some(msg) = wait_inits(&sup.stages, &mut sup.slots, sup.ctl.as_fd()) {
        sup.fail_start(&msg);
    }
    sup
}

impl Sup {
    /// The pipeline did not start: every worker is killed, the caller told why.
    fn fail_start(&mut self, msg: &SupMsg) -> ! {
        kill_all(&mut self.slots);
        protocol::send(&self.ctl, msg);
        sys::exit_now(0);
    }

    /// The event loop: one `poll` a turn over the caller's control socket and each live
    /// worker's pidfd and control socket, until every worker finished (or the caller left).
    fn serve(mut self) -> ! {
        let mut pfds: Vec<libc::pollfd> = Vec::new();
        let mut who: Vec<usize> = Vec::new();
        loop {
            if self.slots.iter().all(|s| s.child.is_none()) {
                self.report_load(true);
                protocol::send(&self.ctl, &SupMsg::Done);
                sys::exit_now(0);
            }
            self.poll_set(&mut pfds, &mut who);
            let wait = check_timeouts(&self.stages, &mut self.slots);
            let wait = Some(wait.map_or(meter::REPORT_EVERY, |w| w.min(meter::REPORT_EVERY)));
            let polled = sys::poll(&mut pfds, wait);
            self.report_load(false);
            if polled.is_err() {
                continue;
            }
            if pfds[0].revents != 0 {
                self.on_caller();
            }
            let mut replaced: Vec<usize> = Vec::new();
            for (n, &k) in who.iter().enumerate() {
                let (pid_ev, ctl_ev) = (pfds[1 + 2 * n].revents, pfds[2 + 2 * n].revents);
                if replaced.contains(&k) || self.slots[k].child.is_none() {
                    continue; // (its events were those of the worker it replaced)
                }
                if ctl_ev != 0 {
                    self.on_worker_msgs(k);
                }
                if pid_ev != 0 {
                    replaced.extend(self.on_exit(k));
                }
            }
        }
    }

    /// The live workers' pids, by stage index.
    fn pids(&self) -> Vec<(u32, Vec<u32>)> {
        (self.stages.iter().enumerate())
            .map(|(si, st)| {
                let of = self.slots.iter().filter(|s| s.stage == si);
                let pids = of.filter_map(|s| s.child.as_ref().map(|c| c.pid.as_raw() as u32));
                (st.idx, pids.collect())
            })
            .collect()
    }

    /// Tells the caller where each stage's time went (see [`crate::meter`]): every
    /// [`meter::REPORT_EVERY`] while it changes, and at the end (`last`).
    fn report_load(&mut self, last: bool) {
        if !last && self.load_at.elapsed() < meter::REPORT_EVERY {
            return;
        }
        self.load_at = std::time::Instant::now();
        let load: Vec<(u32, u64, u64)> = (self.stages.iter().enumerate())
            .map(|(si, st)| {
                let of = self.slots.iter().filter(|s| s.stage == si);
                let (busy, queued) = of.fold((0, 0), |(b, q), s| {
                    (
                        b + s.state.busy_ns.load(Ordering::Relaxed),
                        q + s.state.queued_ns.load(Ordering::Relaxed),
                    )
                });
                (st.idx, busy, queued)
            })
            .collect();
        if load != self.load {
            protocol::send(&self.ctl, &SupMsg::Load(load.clone()));
            self.load = load;
        }
    }

    /// This turn's poll set: the caller's control socket first, then each live worker's
    /// pidfd and control socket; `who[n]` is the slot of the `n`th pair.
    fn poll_set(&self, pfds: &mut Vec<libc::pollfd>, who: &mut Vec<usize>) {
        pfds.clear();
        who.clear();
        pfds.push(sys::pollfd(self.ctl.as_fd(), libc::POLLIN));
        for (k, s) in self.slots.iter().enumerate() {
            if let Some(c) = &s.child {
                pfds.push(sys::pollfd(c.pidfd.as_fd(), libc::POLLIN));
                pfds.push(sys::pollfd(c.ctl.as_fd(), libc::POLLIN));
                who.push(k);
            }
        }
    }

    /// The caller's control socket is readable: reports of corrupt frames its collector
    /// found, or its end (the caller closed the pipeline, or died): then everything stops.
    fn on_caller(&mut self) {
        loop {
            match protocol::recv::<CallerMsg>(&self.ctl, true) {
                Recv::Empty => return,
                Recv::Msg(CallerMsg::Corrupt { stage, report: r }) => {
                    let stages = &self.stages;
                    let found = (self.slots.iter())
                        .position(|s| stages[s.stage].idx == stage && s.slot == r.link);
                    if let Some(k) = found {
                        blame(&mut self.slots[k], r.epoch, corrupt_sent(&r));
                    }
                }
                Recv::Closed => {
                    kill_all(&mut self.slots);
                    sys::exit_now(0);
                }
            }
        }
    }

    /// Worker `k`'s control socket is readable: reads its messages. For each corrupt frame
    /// its receiver found, the worker that wrote it is killed.
    fn on_worker_msgs(&mut self, k: usize) {
        let Some(c) = self.slots[k].child.as_mut() else {
            return;
        };
        read_ctl(c);
        for r in std::mem::take(&mut c.corrupt) {
            match corrupt_sender(&self.stages, &self.slots, k, r.link) {
                Some(sender) => blame(&mut self.slots[sender], r.epoch, corrupt_sent(&r)),
                // The caller wrote it (a forkpipe bug): this worker starts afresh.
                None => {
                    let epoch = self.slots[k].epoch;
                    let what = &r.what;
                    let cause =
                        format!("read a corrupt frame from the caller ({what}); worker killed");
                    blame(&mut self.slots[k], epoch, cause);
                }
            }
        }
    }

    /// Worker `k`'s pidfd is readable: it is reaped. One that said it finished and exited
    /// with 0 leaves its slot done; any other end is a death. Returns the slots replaced
    /// with it (see [`Sup::on_death`]).
    fn on_exit(&mut self, k: usize) -> Vec<usize> {
        let mut c = self.slots[k].child.take().expect("child");
        read_ctl(&mut c);
        let status = sys::wait_pid(c.pid, false).ok().flatten();
        if c.finished && matches!(status, Some(WaitStatus::Exited(_, 0))) {
            self.slots[k].state.running.store(0, Ordering::Relaxed);
            return Vec::new(); // finished its input: the slot is done
        }
        let timeout = self.stages[self.slots[k].stage].timeout;
        let why = why_died(&mut self.slots[k], &c, status.as_ref(), timeout);
        self.on_death(k, c.pid, &why)
    }
}

/// The cause for a worker that sent a corrupt frame.
fn corrupt_sent(r: &CorruptReport) -> String {
    format!("sent a corrupt frame ({}); worker killed", r.what)
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
