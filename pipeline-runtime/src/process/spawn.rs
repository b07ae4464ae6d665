//! Starting a worker: the fork, the child's first steps, and the `init` handshake.
//!
//! # The problem
//! A worker is forked from the supervisor (single-threaded, so the child inherits no lock
//! held by another thread), first at start and later as a replacement into the same slot.
//! The child is a copy of the supervisor: it holds every descriptor of the pipeline, and a
//! copy it does not need would keep a socket's end of stream from its reader.
//!
//! # The approach
//! [`spawn`] makes the worker's control socket, forks, and in the child closes every
//! runtime descriptor but the slot's links, its stream and its control socket, then runs
//! the stage's worker loop and leaves with an exit code that says how it ended. The
//! supervisor keeps the child's pid, a pidfd to see it exit, and its control socket. At
//! start, [`wait_inits`] waits until every worker ran its stage's `init`.
//!
//! # Invariants
//! - Nothing unwinds out of the child (its stack is a copy of the supervisor's): it leaves
//!   with `exit_now`, with a code from `protocol::exit`.
//! - A child whose pidfd cannot be opened is killed and reaped at once: the supervisor
//!   watches only children it can see end.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::os::fds::{self, Inherited, RtFd};
use crate::os::sys;
use crate::process::protocol::{SupMsg, cause, exit};
use crate::process::state::{Child, ProcStage, Slot, read_ctl};
use crate::process::worker::{WorkerCtx, WorkerEnd};

/// Forks the worker of `slot` (its first, or a replacement when `slot.epoch > 0`).
pub(super) fn spawn(
    stages: &[ProcStage<RtFd>],
    slot: &mut Slot,
    in_epochs: Vec<u32>,
) -> io::Result<()> {
    let s = &stages[slot.stage];
    let (ctl_sup, ctl_worker) = fds::seqpacket_pair()?;
    let me = nix::unistd::getpid();
    // SAFETY: the supervisor is single-threaded, so the child inherits no lock held by
    // another thread. The child only reads the numbers of the supervisor's descriptor objects
    // (it owns its own through `Inherited::keep`, in `worker_ctx`), runs the worker loop
    // inside `catch_unwind`, and leaves with `exit_now`.
    match unsafe { fds::fork() }? {
        fds::Fork::Child(inherited) => {
            // Nothing may unwind past this point: the stack below is a copy of the caller's.
            let end = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                sys::child_setup(true, me, exit::ORPHANED);
                let ctx = worker_ctx(inherited, s, slot, &ctl_worker, in_epochs);
                s.stage.worker_main(ctx)
            }));
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

/// [`spawn`] for a replacement: a fork can fail for a moment (EAGAIN at the process limit),
/// so it tries a few times.
pub(super) fn respawn(
    stages: &[ProcStage<RtFd>],
    slot: &mut Slot,
    in_epochs: Vec<u32>,
) -> io::Result<()> {
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

/// In the child: keeps the slot's links, its stream and its control socket `ctl` (every other
/// runtime descriptor is closed), and makes the worker's context of them.
fn worker_ctx(
    inherited: Inherited,
    s: &ProcStage<RtFd>,
    slot: &Slot,
    ctl: &RtFd,
    in_epochs: Vec<u32>,
) -> WorkerCtx<OwnedFd> {
    let (ins, outs) = &s.workers[slot.slot];
    let stream = s.streams.get(slot.slot).and_then(Option::as_ref);
    let mut keep: Vec<RawFd> = ins.iter().chain(outs).map(AsRawFd::as_raw_fd).collect();
    keep.push(ctl.as_raw_fd());
    keep.extend(stream.map(AsRawFd::as_raw_fd));
    let mut kept = inherited.keep(&keep);
    let mut own = |v: &Vec<RtFd>| v.iter().map(|fd| kept.take_owned(fd.as_raw_fd())).collect();
    let (ins, outs) = (own(ins), own(outs));
    WorkerCtx {
        ctl: Some(kept.take_owned(ctl.as_raw_fd())),
        stream: stream.map(|fd| kept.take_owned(fd.as_raw_fd())),
        // A consumer replaced with its producer gets a fresh link: nothing to skip.
        resync_inputs: s.couple != Some(false),
        in_epochs,
        idx: s.idx,
        ins,
        outs,
        credit: s.credit,
        epoch: slot.epoch,
        slot: slot.state,
        give_up: slot.give_up.clone(),
        position: slot.slot,
        of: s.workers.len(),
        meter: None,
    }
}

/// At start: waits until every worker ran its stage's `init`. The first failure (an init
/// error, or a worker that died) is returned as the message for the caller.
/// The caller's control socket is watched too: if the caller goes away meanwhile (even
/// killed), everything stops rather than wait for an `init` that may never return.
pub(super) fn wait_inits(
    stages: &[ProcStage<RtFd>],
    slots: &mut [Slot],
    ctl: BorrowedFd<'_>,
) -> Option<SupMsg> {
    loop {
        let mut pfds = vec![sys::pollfd(ctl, libc::POLLIN)];
        let mut who = Vec::new();
        for (k, s) in slots.iter().enumerate() {
            let c = s.child.as_ref()?;
            if !c.init_ok {
                pfds.push(sys::pollfd(c.ctl.as_fd(), libc::POLLIN));
                pfds.push(sys::pollfd(c.pidfd.as_fd(), libc::POLLIN));
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
