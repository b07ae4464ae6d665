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
//! - Writing a notice never blocks the supervisor for long (a sender that does not read
//!   is a sender that died: its own death is seen by its pidfd).

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::sync::atomic::Ordering;
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;

use crate::error::{Error, Worker};
use crate::os::fds::{self, RtFd};
use crate::os::sys;
use crate::process::budget::{Budget, count_restart};
use crate::process::protocol::{self, SupMsg};
use crate::process::spawn::spawn;
use crate::process::supervisor::{ProcStage, Slot, sender_epochs};
use crate::transport::{link, record};

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

/// A half of a `pipe_next` couple died. The couple is one unit: the other half is killed
/// too, the producer's senders are told (fail the item the dead half ran, requeue the rest:
/// the producer holds every item of the couple until its consumer finished it), and both
/// are replaced with a fresh link and stream between them. Returns the replaced slots.
pub(super) fn on_couple_death(
    stages: &mut [ProcStage<RtFd>],
    slots: &mut [Slot],
    k: usize,
    pid: Pid,
    why: &str,
    restarts: &mut [Budget],
    ctl: &RtFd,
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
    for fd in &stages[p_si].workers[j].0 {
        send_notice(fd.as_fd(), &notice);
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
    if relink(stages, p_si, c_si, j).is_err() {
        // (No logging here: a forked process must not take the caller's locks.)
        return vec![pk, ck];
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

/// A worker died: tell its senders (fail the item it ran, requeue the rest), then put a
/// replacement in its place — or, past the restart budget, a stand-in that fails every
/// item fast.
#[allow(clippy::too_many_arguments)]
/// A worker died: its running item fails, its senders requeue the rest, and it is
/// replaced. `Err` if no replacement could be forked.
pub(super) fn on_death(
    stages: &[ProcStage<RtFd>],
    slot: &mut Slot,
    pid: Pid,
    why: &str,
    restarts: &mut [Budget],
    ctl: &RtFd,
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
    for fd in &st.workers[slot.slot].0 {
        send_notice(fd.as_fd(), &notice);
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
