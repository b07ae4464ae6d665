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

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use nix::sys::signal::Signal;
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::exec::AnyStage;
use crate::fds::{self, RtFd};
use crate::{codec, sys};

/// Messages from the supervisor to the caller.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum SupMsg {
    /// Every worker was forked.
    Ready,
    /// The pipeline could not start; the supervisor cleaned up and exits.
    StartFailed(String),
    /// A worker ended without finishing.
    WorkerDied { stage: u32, pid: u32, cause: String },
    /// Every worker finished after end of input.
    Done,
}

/// What a worker writes to its control socket just before `_exit(0)` at the end of input.
const FINISHED: u8 = 1;

/// A process stage as the supervisor sees it.
pub(crate) struct ProcStage {
    pub idx: u32,
    pub stage: Arc<dyn AnyStage>,
    /// Credit on this stage's output links.
    pub credit: usize,
    /// For each worker: its input and output link descriptors.
    pub workers: Vec<(Vec<RawFd>, Vec<RawFd>)>,
}

struct Child {
    stage: usize,
    slot: usize,
    pid: Pid,
    pidfd: RtFd,
    ctl: RtFd,
    finished: bool,
}

pub(crate) fn send_msg(fd: impl AsFd, msg: &SupMsg) {
    let mut buf = Vec::new();
    if codec::encode_into(msg, &mut buf).is_ok() {
        let _ = sys::send(fd.as_fd(), &buf, false);
    }
}

pub(crate) fn recv_msg(fd: impl AsFd) -> Option<SupMsg> {
    let mut buf = Vec::with_capacity(64 * 1024);
    match sys::recv(fd.as_fd(), &mut buf, false) {
        Ok(Some(n)) if n > 0 => codec::decode(&buf).ok(),
        _ => None,
    }
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
pub(crate) fn run(inherited: Vec<RawFd>, ctl: RawFd, stages: Vec<ProcStage>) -> ! {
    let mut keep: Vec<RawFd> = vec![ctl];
    for s in &stages {
        for (ins, outs) in &s.workers {
            keep.extend(ins);
            keep.extend(outs);
        }
    }
    sys::child_setup(false, Pid::from_raw(0), &keep, &inherited);
    fds::child_reset(&keep);
    // SAFETY: `ctl` is this pipeline's control socket, kept open above and owned by nobody
    // else in this process (the caller-side objects that mention it are never dropped here).
    let ctl = unsafe { OwnedFd::from_raw_fd(ctl) };

    let mut children: Vec<Child> = Vec::new();
    for (si, s) in stages.iter().enumerate() {
        for slot in 0..s.workers.len() {
            match spawn(&stages, si, slot) {
                Ok(c) => children.push(c),
                Err(e) => {
                    let msg = format!("fork failed for stage '{}': {e}", s.stage.name());
                    kill_all(&mut children);
                    send_msg(&ctl, &SupMsg::StartFailed(msg));
                    sys::exit_now(0);
                }
            }
        }
    }
    send_msg(&ctl, &SupMsg::Ready);

    let mut pfds: Vec<libc::pollfd> = Vec::new();
    loop {
        if children.is_empty() {
            send_msg(&ctl, &SupMsg::Done);
            sys::exit_now(0);
        }
        pfds.clear();
        pfds.push(libc::pollfd { fd: ctl.as_raw_fd(), events: libc::POLLIN, revents: 0 });
        for c in &children {
            pfds.push(libc::pollfd { fd: c.pidfd.as_raw_fd(), events: libc::POLLIN, revents: 0 });
            pfds.push(libc::pollfd { fd: c.ctl.as_raw_fd(), events: libc::POLLIN, revents: 0 });
        }
        if sys::poll(&mut pfds, None).is_err() {
            continue;
        }
        if pfds[0].revents != 0 {
            // The caller closed the pipeline (or died): stop everything now.
            kill_all(&mut children);
            sys::exit_now(0);
        }
        let mut ended = Vec::new();
        for (i, c) in children.iter_mut().enumerate() {
            if pfds[2 + 2 * i].revents != 0 {
                read_ctl(c);
            }
            if pfds[1 + 2 * i].revents != 0 {
                ended.push(i);
            }
        }
        for &i in ended.iter().rev() {
            let mut c = children.remove(i);
            read_ctl(&mut c);
            let status = sys::wait_pid(c.pid, false).ok().flatten();
            let clean = c.finished && matches!(status, Some(WaitStatus::Exited(_, 0)));
            if !clean {
                let why = status.as_ref().map_or_else(|| "ended; status unavailable".to_string(), cause);
                send_msg(
                    &ctl,
                    &SupMsg::WorkerDied { stage: stages[c.stage].idx, pid: c.pid.as_raw() as u32, cause: why },
                );
            }
            let _ = c.slot;
        }
    }
}

fn read_ctl(c: &mut Child) {
    let mut buf = Vec::with_capacity(16);
    while let Ok(Some(n)) = sys::recv(c.ctl.as_fd(), &mut buf, true) {
        if n == 0 {
            break;
        }
        if buf.first() == Some(&FINISHED) {
            c.finished = true;
        }
    }
}

fn kill_all(children: &mut Vec<Child>) {
    for c in children.iter() {
        sys::kill(c.pid, Signal::SIGKILL);
    }
    for c in children.drain(..) {
        let _ = sys::wait_pid(c.pid, false);
    }
}

/// Forks worker `slot` of process stage `si`.
fn spawn(stages: &[ProcStage], si: usize, slot: usize) -> std::io::Result<Child> {
    let s = &stages[si];
    let (ctl_sup, ctl_worker) = fds::seqpacket_pair()?;
    let me = nix::unistd::getpid();
    // SAFETY: the supervisor is single-threaded, so the child inherits no lock held by
    // another thread; the child runs the worker loop and leaves with `exit_now`.
    match unsafe { fds::fork() }? {
        fds::Fork::Child(inherited) => {
            let (ins, outs) = &s.workers[slot];
            let mut keep: Vec<RawFd> = ins.iter().chain(outs).copied().collect();
            keep.push(ctl_worker.as_raw_fd());
            sys::child_setup(true, me, &keep, &inherited);
            fds::child_reset(&keep);
            // SAFETY: each descriptor below is one of this worker's own link ends, kept
            // open by `child_setup`; nothing else in this process will close them (the
            // supervisor's records of them are never dropped in this child).
            let own = |v: &Vec<RawFd>| v.iter().map(|&fd| unsafe { OwnedFd::from_raw_fd(fd) }).collect::<Vec<_>>();
            let r = s.stage.worker_main(s.idx, own(ins), own(outs), s.credit);
            if r.is_ok() {
                let _ = sys::send(ctl_worker.as_fd(), &[FINISHED], false);
                sys::exit_now(0);
            }
            sys::exit_now(EXIT_LINK_ERROR);
        }
        fds::Fork::Parent(pid) => {
            drop(ctl_worker);
            let pidfd = fds::adopt(sys::pidfd_open(pid)?);
            Ok(Child { stage: si, slot, pid, pidfd, ctl: ctl_sup, finished: false })
        }
    }
}

/// Exit code of a worker whose links failed (its neighbours went away).
const EXIT_LINK_ERROR: i32 = 122;
