//! A worker's death: what the supervisor does when a worker ends without finishing.
//!
//! # The problem
//! A dead worker held items: the one it was running, and those its senders had sent it
//! that it had not acked. Nothing may be lost or wait for ever, and its slot must get a
//! worker again without its neighbours reconnecting.
//!
//! # The approach
//! The item it ran fails with the cause of the death; the sender of each of its input
//! links gets a *dead notice* with that failure (`link::dead_notice`) and requeues the rest
//! of what it held; the caller is told (`WorkerDied`). Then a replacement with the next
//! epoch is forked into the slot on the same sockets — or, past the restart budget, a
//! stand-in that fails every item fast. A `pipe_next` couple dies as one: the other half is
//! killed too, the notice goes to the producer's senders, and both halves are replaced,
//! with a fresh link and stream between them.
//!
//! # Invariants
//! - The caller hears of every death once, with whether it was restarted.
//! - Writing a notice never blocks the supervisor for long: on a full socket it gives up
//!   after about two seconds.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::Ordering;
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;

use crate::error::{Error, Worker};
use crate::os::fds::{self, RtFd};
use crate::os::sys;
use crate::process::budget::count_restart;
use crate::process::protocol::{self, SupMsg, cause, exit};
use crate::process::spawn::{respawn, spawn};
use crate::process::state::{Child, ProcStage, Slot, Sup, kill_all, sender_epochs};
use crate::transport::{link, record};

/// Why slot `slot`'s worker `c` ended without finishing (`status`: how it exited, if known;
/// `timeout`: its stage's item limit). Takes what the slot recorded about it: an item over
/// its limit, the blame for a corrupt frame, a panic message written before an abort.
pub(super) fn why_died(
    slot: &mut Slot,
    c: &Child,
    status: Option<&WaitStatus>,
    timeout: Option<Duration>,
) -> String {
    let mut why = match (&c.init_error, status) {
        (Some(m), _) => format!("init failed: {m}"),
        (None, Some(WaitStatus::Exited(_, exit::RESTART))) => {
            "replaced after a panic (the stage keeps init state)".to_string()
        }
        (None, Some(st)) => cause(st),
        (None, None) => "ended; status unavailable".to_string(),
    };
    if let (Some(_), Some(limit)) = (slot.overtime.take(), timeout) {
        why = format!("timed out after {} ms; worker killed", limit.as_millis());
    }
    if let Some(blamed) = slot.blame.take()
        && matches!(status, Some(WaitStatus::Signaled(_, Signal::SIGKILL, _)))
    {
        why = blamed;
    }
    if let Some(msg) = slot.state.take_panic() {
        // A panic that aborted (a `panic = "abort"` build, or a panic while panicking).
        why = format!("panicked: {msg}; {why}");
    }
    why
}

impl Sup {
    /// Slot `k`'s worker `pid` ended without finishing (it is reaped; `why` says how). Its
    /// item fails, its senders requeue the rest, and it is replaced (or a stand-in takes its
    /// place past the restart budget). Returns the other slots replaced with it (a
    /// `pipe_next` couple's), whose events of this turn were those of their old workers.
    ///
    /// A stage that lost its last worker and cannot fork another stops the pipeline: nothing
    /// could ever run its items, so the caller fails every unfinished one with the cause.
    pub(super) fn on_death(&mut self, k: usize, pid: Pid, why: &str) -> Vec<usize> {
        let si = self.slots[k].stage;
        if self.stages[si].couple.is_some() {
            return self.on_couple_death(k, pid, why);
        }
        let in_epochs = sender_epochs(&self.stages, &self.slots, &self.slots[k]);
        self.bury(k, k, pid, why);
        self.slots[k].epoch += 1;
        let replaced = respawn(&self.stages, &mut self.slots[k], in_epochs);
        if let Err(e) = replaced
            && !self
                .slots
                .iter()
                .any(|s| s.stage == si && s.child.is_some())
        {
            protocol::send(
                &self.ctl,
                &SupMsg::Stopped {
                    stage: self.stages[si].idx,
                    pid: pid.as_raw() as u32,
                    cause: format!("{why}; no replacement: fork failed: {e}"),
                },
            );
            kill_all(&mut self.slots);
            sys::exit_now(0);
        }
        Vec::new()
    }

    /// A half of a `pipe_next` couple died. The couple is one unit: the other half is
    /// killed too, the producer's senders are told (the producer holds every item of the
    /// couple until its consumer finished it), and both are replaced with a fresh link and
    /// stream between them. Returns both slots.
    fn on_couple_death(&mut self, k: usize, pid: Pid, why: &str) -> Vec<usize> {
        let (si, j) = (self.slots[k].stage, self.slots[k].slot);
        let (p_si, c_si) = if self.stages[si].couple == Some(true) {
            (si, si + 1)
        } else {
            (si - 1, si)
        };
        let find = |stage: usize| {
            (self.slots.iter())
                .position(|s| s.stage == stage && s.slot == j)
                .expect("couple slot")
        };
        let (pk, ck) = (find(p_si), find(c_si));
        let partner = if k == pk { ck } else { pk };
        self.kill_partner(partner);
        if !self.bury(k, pk, pid, why) {
            self.slots[partner].give_up = self.slots[k].give_up.clone();
        }
        if relink(&mut self.stages, p_si, c_si, j).is_err() {
            // (No logging here: a forked process must not take the caller's locks.)
            return vec![pk, ck];
        }
        for s in [pk, ck] {
            self.slots[s].epoch += 1;
            let in_epochs = sender_epochs(&self.stages, &self.slots, &self.slots[s]);
            if let Err(e) = spawn(&self.stages, &mut self.slots[s], in_epochs) {
                let _ = e; // the senders requeue into the other workers, if any
            }
        }
        vec![pk, ck]
    }

    /// Kills and reaps the live half of a couple whose other half died (its item is the
    /// dead half's too: it is not failed twice).
    fn kill_partner(&mut self, partner: usize) {
        let slot = &mut self.slots[partner];
        let Some(c) = slot.child.take() else {
            return;
        };
        sys::kill(c.pid, Signal::SIGKILL);
        let _ = sys::wait_pid(c.pid, false);
        slot.state.running.store(0, Ordering::Relaxed);
        slot.overtime = None;
        protocol::send(
            &self.ctl,
            &SupMsg::WorkerDied {
                stage: self.stages[slot.stage].idx,
                pid: c.pid.as_raw() as u32,
                cause: "killed with its pipe_next partner".into(),
                restarted: true,
            },
        );
    }

    /// What every death does: the item slot `k`'s worker `pid` was running fails with
    /// `why`; each sender of slot `front` (that worker, or the producer of its couple) gets
    /// the dead notice and requeues the rest of what it sent; the restart is counted; the
    /// caller is told. Returns whether this was a restart (else the slot's next worker is a
    /// stand-in that fails every item fast).
    fn bury(&mut self, k: usize, front: usize, pid: Pid, why: &str) -> bool {
        let si = self.slots[k].stage;
        let st = &self.stages[si];
        let running = self.slots[k].state.running.swap(0, Ordering::AcqRel);
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
        let f = &self.slots[front];
        let notice = link::dead_notice(f.epoch, &failure);
        for fd in &self.stages[f.stage].workers[f.slot].0 {
            send_notice(fd.as_fd(), &notice);
        }
        let (slot, hist) = (&mut self.slots[k], &mut self.budgets[si]);
        let (workers, mid_item) = (st.workers.len(), running != 0);
        let restarted = count_restart(hist, workers, slot.state, &mut slot.give_up, why, mid_item);
        protocol::send(
            &self.ctl,
            &SupMsg::WorkerDied {
                stage: st.idx,
                pid: pid.as_raw() as u32,
                cause: why.to_string(),
                restarted,
            },
        );
        restarted
    }
}

/// A fresh link and stream between the halves of couple `j` (its producer in stage `p_si`,
/// its consumer in stage `c_si`). The old ones close first: at the descriptor limit, the new
/// ones need their numbers. (The producer's one output link is its consumer's one input.)
fn relink(stages: &mut [ProcStage<RtFd>], p_si: usize, c_si: usize, j: usize) -> io::Result<()> {
    let [p, c] = stages
        .get_disjoint_mut([p_si, c_si])
        .expect("a couple's two stages");
    p.workers[j].1.clear();
    c.workers[j].0.clear();
    p.streams[j] = None;
    c.streams[j] = None;
    let (link, stream) = (fds::seqpacket_pair(), fds::stream_pair());
    let ((a, b), (sa, sb)) = (link?, stream?);
    crate::transport::pipe::tune(&sa);
    crate::transport::pipe::tune(&sb);
    p.workers[j].1 = vec![a];
    c.workers[j].0 = vec![b];
    p.streams[j] = Some(sa);
    c.streams[j] = Some(sb);
    Ok(())
}

/// Writes a death notice without ever blocking the supervisor for long.
fn send_notice(fd: BorrowedFd<'_>, notice: &[u8]) {
    for _ in 0..200 {
        match sys::send(fd, notice, true) {
            Ok(Some(_)) | Err(_) => return,
            Ok(None) => {
                let mut p = [sys::pollfd(fd, libc::POLLOUT)];
                let _ = sys::poll(&mut p, Some(Duration::from_millis(10)));
            }
        }
    }
}
