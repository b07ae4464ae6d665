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
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;

use crate::erase::AnyStage;
use crate::error::{Error, Worker};
use crate::os::fds::{self, RtFd};
use crate::os::sys;
use crate::os::sys::SlotState;
use crate::process::protocol::{self, CallerMsg, CorruptReport, Recv, SupMsg, WorkerMsg, exit};
use crate::process::worker::{GiveUp, WorkerCtx, WorkerEnd};
use crate::transport::{link, record};

/// Restart budget: at most `max(10, 5 × workers)` replacements per stage within this window.
const BUDGET_WINDOW: Duration = Duration::from_secs(10);

/// A process stage as the supervisor sees it.
pub(crate) struct ProcStage {
    pub idx: u32,
    pub stage: Arc<dyn AnyStage>,
    /// Credit on this stage's output links.
    pub credit: usize,
    /// Per-item time limit.
    pub timeout: Option<Duration>,
    /// For each worker: its input and output link descriptors.
    pub workers: Vec<(Vec<RawFd>, Vec<RawFd>)>,
    /// For each worker of a `pipe_next` half: its couple's stream socket.
    pub streams: Vec<Option<RawFd>>,
    /// `Some(true)`: a `pipe_next` producer (its consumer is the next stage here);
    /// `Some(false)`: a consumer (its producer is the previous one).
    pub couple: Option<bool>,
}

/// One worker position of a stage; its worker is replaced in place.
struct Slot {
    stage: usize,
    slot: usize,
    state: &'static SlotState,
    epoch: u32,
    give_up: Option<GiveUp>,
    child: Option<Child>,
    /// An item over its time limit: (`running` value, when to escalate to SIGKILL).
    overtime: Option<(u64, Instant)>,
    /// It was killed for writing a corrupt frame (what its receiver found wrong).
    blame: Option<String>,
}

struct Child {
    pid: Pid,
    pidfd: RtFd,
    ctl: RtFd,
    finished: bool,
    init_ok: bool,
    init_error: Option<String>,
    /// Its receiver found a corrupt frame on these input links.
    corrupt: Vec<CorruptReport>,
}

/// Cause text for a worker that ended without finishing.
pub(crate) fn cause(status: &WaitStatus) -> String {
    match status {
        WaitStatus::Exited(_, code) => format!("exited with code {code} before answering"),
        WaitStatus::Signaled(_, sig, core) => {
            let mut s = format!("killed by {}", sig.as_str());
            if *sig == Signal::SIGKILL {
                s.push_str(" (possibly out of memory)");
            }
            if *core {
                s.push_str(" (core dumped)");
            }
            s
        }
        other => format!("ended unexpectedly ({other:?})"),
    }
}

/// The supervisor's whole life, in the forked child. Never returns.
pub(crate) fn run(inherited: Vec<RawFd>, ctl: RawFd, mut stages: Vec<ProcStage>) -> ! {
    let mut keep: Vec<RawFd> = vec![ctl];
    for s in &stages {
        for (ins, outs) in &s.workers {
            keep.extend(ins);
            keep.extend(outs);
        }
        keep.extend(s.streams.iter().flatten());
    }
    sys::child_setup(false, Pid::from_raw(0), exit::ORPHANED, &keep, &inherited);
    fds::child_reset(&keep);
    crate::stage::IN_FORKED.store(true, Ordering::Relaxed);
    // SAFETY: `ctl` is this pipeline's control socket, kept open above and owned by nobody
    // else in this process (the caller-side objects that mention it are never dropped here).
    let ctl = unsafe { OwnedFd::from_raw_fd(ctl) };
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
fn corrupt_sender(stages: &[ProcStage], slots: &[Slot], k: usize, link: usize) -> Option<usize> {
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

/// A half of a `pipe_next` couple died. The couple is one unit: the other half is killed
/// too, the producer's senders are told (fail the item the dead half ran, requeue the rest:
/// the producer holds every item of the couple until its consumer finished it), and both
/// are replaced with a fresh link and stream between them. Returns the replaced slots.
fn on_couple_death(
    stages: &mut [ProcStage],
    slots: &mut [Slot],
    k: usize,
    pid: Pid,
    why: &str,
    restarts: &mut [Budget],
    ctl: &OwnedFd,
) -> Vec<usize> {
    let (si, j) = (slots[k].stage, slots[k].slot);
    let (p_si, c_si) = if stages[si].couple == Some(true) {
        (si, si + 1)
    } else {
        (si - 1, si)
    };
    let find = |stage: usize| {
        slots
            .iter()
            .position(|s| s.stage == stage && s.slot == j)
            .expect("couple slot")
    };
    let (pk, ck) = (find(p_si), find(c_si));
    let partner = if k == pk { ck } else { pk };
    if let Some(c) = slots[partner].child.take() {
        sys::kill(c.pid, Signal::SIGKILL);
        let _ = sys::wait_pid(c.pid, false);
        slots[partner].state.running.store(0, Ordering::Relaxed);
        slots[partner].overtime = None;
        let partner_stage = &stages[slots[partner].stage];
        protocol::send(
            ctl,
            &SupMsg::WorkerDied {
                stage: partner_stage.idx,
                pid: c.pid.as_raw() as u32,
                cause: "killed with its pipe_next partner".into(),
                restarted: true,
            },
        );
    }
    let running = slots[k].state.running.swap(0, Ordering::AcqRel);
    let mut failure = Vec::new();
    if running != 0 {
        let seq = running - 1;
        let e = Error::Died {
            stage: stages[si].stage.name().to_string(),
            item: seq,
            worker: Worker::Process(pid.as_raw() as u32),
            cause: why.to_string(),
        };
        record::encode_failed(seq, stages[si].idx, &e, &mut failure);
    }
    let notice = link::dead_notice(slots[pk].epoch, &failure);
    for &fd in &stages[p_si].workers[j].0 {
        // SAFETY: `fd` is one of this supervisor's own link descriptors (kept open for the
        // pipeline's life); the borrow does not outlive this statement.
        let b = unsafe { BorrowedFd::borrow_raw(fd) };
        send_notice(b, &notice);
    }
    let restarted = count_restart(
        &stages[si],
        &mut slots[k],
        why,
        running != 0,
        &mut restarts[si],
    );
    protocol::send(
        ctl,
        &SupMsg::WorkerDied {
            stage: stages[si].idx,
            pid: pid.as_raw() as u32,
            cause: why.to_string(),
            restarted,
        },
    );
    if !restarted {
        slots[partner].give_up = slots[k].give_up.clone();
    }
    // A fresh link and stream between the new couple.
    let old = [stages[p_si].workers[j].1[0], stages[c_si].workers[j].0[0]];
    let old_streams = [stages[p_si].streams[j], stages[c_si].streams[j]];
    for fd in old.into_iter().chain(old_streams.into_iter().flatten()) {
        fds::unregister(fd);
        sys::close(fd);
    }
    match (fds::seqpacket_pair(), fds::stream_pair()) {
        (Ok((a, b)), Ok((sa, sb))) => {
            crate::transport::pipe::tune(&sa);
            crate::transport::pipe::tune(&sb);
            stages[p_si].workers[j].1[0] = fds::into_raw(a);
            stages[c_si].workers[j].0[0] = fds::into_raw(b);
            stages[p_si].streams[j] = Some(fds::into_raw(sa));
            stages[c_si].streams[j] = Some(fds::into_raw(sb));
        }
        _ => {
            // (No logging here: a forked process must not take the caller's locks.)
            return vec![pk, ck];
        }
    }
    for s in [pk, ck] {
        slots[s].epoch += 1;
        let in_epochs = sender_epochs(stages, slots, &slots[s]);
        if let Err(e) = spawn(stages, &mut slots[s], in_epochs) {
            let _ = e; // the senders requeue into the other workers, if any
        }
    }
    vec![pk, ck]
}

/// Counts a restart against the stage's budget; past it, the slot's next worker is a
/// stand-in that fails every item fast. Returns whether this was a real restart.
///
/// `mid_item`: the worker died running an item (that item failed). A worker that died
/// between items made progress only with the items whose outputs it had sent: the others
/// run again. (So a stage that kills its worker after every item's function returned —
/// it closed its own sockets — gives up too, instead of being replaced forever.)
fn count_restart(
    st: &ProcStage,
    slot: &mut Slot,
    why: &str,
    mid_item: bool,
    hist: &mut Budget,
) -> bool {
    let now = Instant::now();
    // Items this stage finished so far (each worker keeps its counts in shared memory).
    let done = slot.state.done.swap(0, Ordering::Relaxed);
    let sent = slot.state.sent.swap(0, Ordering::Relaxed);
    hist.done_base += if mid_item { done } else { sent.min(done) };
    let done = hist.done_base + hist.live_done();
    while hist
        .restarts
        .front()
        .is_some_and(|(t, _)| now.duration_since(*t) > BUDGET_WINDOW)
    {
        hist.restarts.pop_front();
    }
    let budget = (5 * st.workers.len()).max(10);
    // Past the budget, a stage still gets its workers back while it makes progress: at
    // least as many items finished as restarts in the window (a steady 1% crash rate goes
    // on; a stage that crashes on every item gives up, with no fork storm).
    let progress = hist.restarts.front().is_some_and(|&(_, done_then)| {
        done.saturating_sub(done_then) >= hist.restarts.len() as u64
    });
    let restarted = slot.give_up.is_none() && (hist.restarts.len() < budget || progress);
    if restarted {
        hist.restarts.push_back((now, done));
        while hist.restarts.len() > budget {
            hist.restarts.pop_front();
        }
    } else if slot.give_up.is_none() {
        let secs = hist
            .restarts
            .front()
            .map_or(0.0, |(t, _)| now.duration_since(*t).as_secs_f64());
        slot.give_up = Some(GiveUp {
            restarts: hist.restarts.len() as u32,
            secs,
            cause: why.to_string(),
        });
    }
    restarted
}

/// A stage's restart history: when each restart happened, and how many items the stage
/// had finished by then.
struct Budget {
    restarts: VecDeque<(Instant, u64)>,
    /// Items finished by workers that are gone.
    done_base: u64,
    /// The stage's slots (their live `done` counters).
    states: Vec<&'static SlotState>,
}

impl Budget {
    fn live_done(&self) -> u64 {
        self.states
            .iter()
            .map(|s| s.done.load(Ordering::Relaxed))
            .sum()
    }
}

/// Grace between SIGTERM and SIGKILL for a worker whose item timed out.
const TIMEOUT_GRACE: Duration = Duration::from_millis(200);

/// Signals workers whose item ran past the stage's limit (TERM, then KILL after a grace);
/// returns how long `poll` may sleep before the next deadline.
fn check_timeouts(stages: &[ProcStage], slots: &mut [Slot]) -> Option<Duration> {
    let now_ns = sys::now_ns();
    let now = Instant::now();
    let mut next: Option<Duration> = None;
    let mut soonest = |d: Duration| next = Some(next.map_or(d, |n: Duration| n.min(d)));
    for s in slots.iter_mut() {
        let (Some(limit), Some(c)) = (stages[s.stage].timeout, &s.child) else {
            continue;
        };
        let running = s.state.running.load(Ordering::Acquire);
        if let Some((item, kill_at)) = s.overtime {
            if item == running || running == 0 {
                if now >= kill_at {
                    sys::kill(c.pid, Signal::SIGKILL);
                } else {
                    soonest(kill_at - now);
                }
                continue;
            }
            s.overtime = None; // it finished that item after all
        }
        if running == 0 {
            continue;
        }
        let since = s.state.since.load(Ordering::Relaxed);
        let limit_ns = limit.as_nanos() as u64;
        let ran = now_ns.saturating_sub(since);
        if ran >= limit_ns {
            sys::kill(c.pid, Signal::SIGTERM);
            s.overtime = Some((running, now + TIMEOUT_GRACE));
            soonest(TIMEOUT_GRACE);
        } else {
            soonest(Duration::from_nanos(limit_ns - ran));
        }
    }
    // Items that start later are noticed at the next event or within this period.
    if stages.iter().any(|s| s.timeout.is_some()) {
        soonest(Duration::from_millis(50));
    }
    next
}

/// A worker died: tell its senders (fail the item it ran, requeue the rest), then put a
/// replacement in its place — or, past the restart budget, a stand-in that fails every
/// item fast.
#[allow(clippy::too_many_arguments)]
/// A worker died: its running item fails, its senders requeue the rest, and it is
/// replaced. `Err` if no replacement could be forked.
fn on_death(
    stages: &[ProcStage],
    slot: &mut Slot,
    pid: Pid,
    why: &str,
    restarts: &mut [Budget],
    ctl: &OwnedFd,
    in_epochs: Vec<u32>,
) -> std::io::Result<()> {
    let st = &stages[slot.stage];
    let running = slot.state.running.swap(0, Ordering::AcqRel);
    let mut failure = Vec::new();
    if running != 0 {
        let seq = running - 1;
        let e = Error::Died {
            stage: st.stage.name().to_string(),
            item: seq,
            worker: Worker::Process(pid.as_raw() as u32),
            cause: why.to_string(),
        };
        record::encode_failed(seq, st.idx, &e, &mut failure);
    }
    let notice = link::dead_notice(slot.epoch, &failure);
    for &fd in &st.workers[slot.slot].0 {
        // SAFETY: `fd` is one of this supervisor's own link descriptors (kept open for the
        // pipeline's life); the borrow does not outlive this statement.
        let b = unsafe { BorrowedFd::borrow_raw(fd) };
        send_notice(b, &notice);
    }
    let restarted = count_restart(st, slot, why, running != 0, &mut restarts[slot.stage]);
    protocol::send(
        ctl,
        &SupMsg::WorkerDied {
            stage: st.idx,
            pid: pid.as_raw() as u32,
            cause: why.to_string(),
            restarted,
        },
    );
    slot.epoch += 1;
    // A fork can fail for a moment (EAGAIN at the process limit): try a few times.
    let mut tries = 0;
    loop {
        match spawn(stages, slot, in_epochs.clone()) {
            Ok(()) => return Ok(()),
            Err(e) if tries >= 4 => return Err(e),
            Err(_) => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(25 << tries));
            }
        }
    }
}

/// Writes a death notice without ever blocking the supervisor for long.
fn send_notice(fd: BorrowedFd<'_>, notice: &[u8]) {
    for _ in 0..200 {
        match sys::send(fd, notice, true) {
            Ok(Some(_)) | Err(_) => return,
            Ok(None) => {
                let mut p = [libc::pollfd {
                    fd: fd.as_raw_fd(),
                    events: libc::POLLOUT,
                    revents: 0,
                }];
                let _ = sys::poll(&mut p, Some(Duration::from_millis(10)));
            }
        }
    }
}

fn read_ctl(c: &mut Child) {
    while let Recv::Msg(m) = protocol::recv::<WorkerMsg>(&c.ctl, true) {
        match m {
            WorkerMsg::Finished => c.finished = true,
            WorkerMsg::InitOk => c.init_ok = true,
            WorkerMsg::InitFailed(message) => c.init_error = Some(message),
            WorkerMsg::Corrupt(report) => c.corrupt.push(report),
        }
    }
}

/// At start: waits until every worker ran its stage's `init`. The first failure (an init
/// error, or a worker that died) is returned as the message for the caller.
/// The caller's control socket is watched too: if the caller goes away meanwhile (even
/// killed), everything stops rather than wait for an `init` that may never return.
fn wait_inits(stages: &[ProcStage], slots: &mut [Slot], ctl: BorrowedFd<'_>) -> Option<SupMsg> {
    loop {
        let mut pfds = vec![libc::pollfd {
            fd: ctl.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        let mut who = Vec::new();
        for (k, s) in slots.iter().enumerate() {
            let c = s.child.as_ref()?;
            if !c.init_ok {
                pfds.push(libc::pollfd {
                    fd: c.ctl.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                });
                pfds.push(libc::pollfd {
                    fd: c.pidfd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                });
                who.push(k);
            }
        }
        if who.is_empty() {
            return None;
        }
        if sys::poll(&mut pfds, None).is_err() {
            continue;
        }
        if pfds[0].revents != 0 {
            return Some(SupMsg::StartFailed(
                "the caller closed the pipeline during init".into(),
            ));
        }
        let pfds = &pfds[1..];
        for (n, &k) in who.iter().enumerate() {
            let c = slots[k].child.as_mut().expect("child");
            if pfds[2 * n].revents != 0 || pfds[2 * n + 1].revents != 0 {
                read_ctl(c);
            }
            let st = &stages[slots[k].stage];
            let pid = c.pid.as_raw() as u32;
            if let Some(message) = c.init_error.clone() {
                return Some(SupMsg::InitFailed {
                    stage: st.idx,
                    pid,
                    message,
                });
            }
            if !c.init_ok && pfds[2 * n + 1].revents != 0 {
                let status = sys::wait_pid(c.pid, false).ok().flatten();
                slots[k].child = None;
                let why = status.as_ref().map_or_else(|| "ended".to_string(), cause);
                return Some(SupMsg::InitFailed {
                    stage: st.idx,
                    pid,
                    message: format!("the worker died during init: {why}"),
                });
            }
        }
    }
}

fn kill_all(slots: &mut [Slot]) {
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
fn sender_epochs(stages: &[ProcStage], slots: &[Slot], slot: &Slot) -> Vec<u32> {
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

/// Forks the worker of `slot` (its first, or a replacement when `slot.epoch > 0`).
fn spawn(stages: &[ProcStage], slot: &mut Slot, in_epochs: Vec<u32>) -> std::io::Result<()> {
    let s = &stages[slot.stage];
    let (ctl_sup, ctl_worker) = fds::seqpacket_pair()?;
    let me = nix::unistd::getpid();
    // SAFETY: the supervisor is single-threaded, so the child inherits no lock held by
    // another thread; the child runs the worker loop and leaves with `exit_now`.
    match unsafe { fds::fork() }? {
        fds::Fork::Child(inherited) => {
            let (ins, outs) = &s.workers[slot.slot];
            let stream = s.streams.get(slot.slot).copied().flatten();
            let mut keep: Vec<RawFd> = ins.iter().chain(outs).copied().collect();
            keep.push(ctl_worker.as_raw_fd());
            keep.extend(stream);
            sys::child_setup(true, me, exit::ORPHANED, &keep, &inherited);
            fds::child_reset(&keep);
            let own = |v: &Vec<RawFd>| {
                v.iter()
                    // SAFETY: each descriptor is one of this worker's own link ends, kept
                    // open by `child_setup`; nothing else in this process closes it (the
                    // supervisor's records of them are never dropped in this child).
                    .map(|&fd| unsafe { OwnedFd::from_raw_fd(fd) })
                    .collect::<Vec<_>>()
            };
            // SAFETY: `ctl_worker` is this worker's own control socket, kept open above; the
            // `RtFd` that owned it is forgotten so only this `OwnedFd` closes it.
            let ctl = unsafe { OwnedFd::from_raw_fd(ctl_worker.as_raw_fd()) };
            std::mem::forget(ctl_worker);
            let ctx = WorkerCtx {
                ctl: Some(ctl),
                // SAFETY: the couple's stream socket of this worker, kept open above.
                stream: stream.map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                // A consumer replaced with its producer gets a fresh link: nothing to skip.
                resync_inputs: s.couple != Some(false),
                in_epochs,
                idx: s.idx,
                ins: own(ins),
                outs: own(outs),
                credit: s.credit,
                epoch: slot.epoch,
                slot: slot.state,
                give_up: slot.give_up.clone(),
                position: slot.slot,
                of: s.workers.len(),
            };
            // Nothing may unwind past this point: the stack below is a copy of the caller's.
            let end =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| s.stage.worker_main(ctx)));
            let Ok(end) = end else {
                sys::exit_now(exit::PANIC)
            };
            match end {
                Ok(WorkerEnd::Finished) => sys::exit_now(0),
                Ok(WorkerEnd::Restart) => sys::exit_now(exit::RESTART),
                Ok(WorkerEnd::InitFailed) => sys::exit_now(exit::INIT_FAILED),
                Err(_) => sys::exit_now(exit::LINK_ERROR),
            }
        }
        fds::Fork::Parent(pid) => {
            drop(ctl_worker);
            let pidfd = match sys::pidfd_open(pid) {
                Ok(fd) => fds::adopt(fd),
                Err(e) => {
                    sys::kill(pid, Signal::SIGKILL);
                    let _ = sys::wait_pid(pid, false);
                    return Err(e);
                }
            };
            slot.child = Some(Child {
                pid,
                pidfd,
                ctl: ctl_sup,
                finished: false,
                init_ok: false,
                init_error: None,
                corrupt: Vec::new(),
            });
            Ok(())
        }
    }
}
