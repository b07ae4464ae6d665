//! The fork server: a small single-threaded process, forked by [`init`](crate::init) while the program
//! still has one thread, that forks every pipeline's supervisor from then on.
//!
//! # The problem
//! `fork` copies only the calling thread, and any lock another thread held at that instant
//! stays locked forever in the child. Most programs have threads before they start a
//! pipeline (a runtime, a logger, a pool); a supervisor forked from such a program, and so
//! every worker forked by it, can hang on the first `println!` or `env::var` of a stage.
//! Measured here: 4 threads printing while the main thread starts pipelines whose stage
//! prints — in 5 runs of 5, the very first pipeline hung.
//!
//! # The approach
//! [`init`](crate::init) checks that the process is single-threaded (race-free: `unshare(CLONE_VM)`
//! fails in a process with threads) and forks this server. It owns nothing but its request
//! socket, and never runs a second thread, so what it forks inherits no lock. To start a
//! pipeline, the caller makes every socket as in direct mode, then sends a
//! [`SpawnRequest`]: each process stage as data (its [`crate::recipe`], name and options)
//! and, by `SCM_RIGHTS`, the supervisor's control socket, a spawn-status socket and the
//! workers' ends. The server forks a supervisor, which makes the stages again from their
//! recipes and runs exactly as in direct mode; the server answers `Spawned { pid }`, and
//! later, once it reaped the supervisor, `Exited(status)` on the status socket (the caller
//! cannot `waitpid` a process it did not fork).
//!
//! # Lifetime
//! The server dies with the caller: end of stream on its request socket (the caller
//! exited, even by `kill -9`), or `PR_SET_PDEATHSIG`. Supervisors do not depend on it: each
//! lives as long as its control socket to the caller, so if the server dies, running
//! pipelines go on, and the next start fails with an error naming the server's end (it is
//! not restarted: a new one would be forked from the threaded caller, which is what it
//! exists to avoid). Its descriptors are runtime descriptors, closed in every child.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;

use crate::error::Error;
use crate::os::fds::{self, Inherited, RtFd};
use crate::os::{rights, sys};
use crate::process::protocol::{
    self, ExitStatus, Recv, ServerMsg, ShippedStage, SpawnRequest, SupMsg, exit,
};
use crate::process::state::ProcStage;
use crate::process::supervisor;

/// The caller's handle on its fork server.
#[derive(Debug)]
struct Client {
    pid: Pid,
    sock: RtFd,
    /// Why the server is gone, once a start found it gone.
    gone: Option<String>,
}

static SERVER: Mutex<Option<Client>> = Mutex::new(None);

fn server() -> MutexGuard<'static, Option<Client>> {
    SERVER.lock().unwrap_or_else(|p| p.into_inner())
}

/// Starts the fork server (see `forkpipe::init`); calling it again is a no-op. True if
/// this call started it.
pub(crate) fn start_once() -> Result<bool, Error> {
    let first = server().is_none();
    start()?;
    Ok(first)
}

fn start() -> Result<(), Error> {
    let mut g = server();
    if g.is_some() {
        return Ok(());
    }
    if let Err(threads) = sys::single_threaded() {
        return Err(Error::Start(format!(
            "forkpipe::init() must run while the process has one thread, and it has {threads}: \
             call it first in `main` (or put #[forkpipe::main] on `main`), before anything \
             starts a thread (an async runtime, a logger, a thread pool)"
        )));
    }
    crate::guard::install_panic_hook();
    let caller = nix::unistd::getpid();
    let (mine, theirs) =
        fds::seqpacket_pair().map_err(|e| Error::Start(format!("socketpair failed: {e}")))?;
    // SAFETY: the process is single-threaded (checked above), so the child inherits no lock
    // held by another thread; it runs the server loop and leaves with `exit_now`.
    match unsafe { fds::fork() }.map_err(|e| Error::Start(format!("fork failed: {e}")))? {
        fds::Fork::Child(inherited) => {
            // (Unlocked in the child too: descendants see no server and fork directly.)
            drop(g);
            // The server owns its socket from `Inherited::keep` on; the copies of the
            // caller's objects are never dropped here.
            let sock = theirs.as_raw_fd();
            std::mem::forget((theirs, mine));
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
                serve(caller, sock, inherited)
            }));
            sys::exit_now(exit::PANIC)
        }
        fds::Fork::Parent(pid) => {
            drop(theirs);
            *g = Some(Client {
                pid,
                sock: mine,
                gone: None,
            });
            Ok(())
        }
    }
}

/// The fork server's pid, if [`init`](crate::init) started one.
pub fn pid() -> Option<u32> {
    server().as_ref().map(|c| c.pid.as_raw() as u32)
}

/// True if pipelines start through a fork server.
pub(crate) fn active() -> bool {
    server().is_some()
}

/// Asks the fork server for a supervisor of `stages`, handing it `fds` (the status socket,
/// the control socket, then the workers' ends). Returns the supervisor's pid.
pub(crate) fn spawn(stages: Vec<ShippedStage>, fds: &[RawFd], status: &RtFd) -> Result<Pid, Error> {
    let mut g = server();
    let client = g
        .as_mut()
        .ok_or_else(|| Error::Start("no fork server".into()))?;
    if let Some(why) = &client.gone {
        return Err(Error::Start(why.clone()));
    }
    let req = SpawnRequest {
        stages,
        fds: fds.len() as u32,
    };
    protocol::send(&client.sock, &req);
    let sent = rights::send_fds(&client.sock, fds);
    drop(g);
    let answer = match sent {
        Ok(()) => wait_answer(status),
        Err(_) => None,
    };
    match answer {
        Some(ServerMsg::Spawned { pid }) => Ok(Pid::from_raw(pid as i32)),
        Some(ServerMsg::Failed(m)) => Err(Error::Start(m)),
        _ => Err(Error::Start(gone())),
    }
}

/// The server's answer to a request, within a bound (it answers at once unless it is gone).
fn wait_answer(status: &RtFd) -> Option<ServerMsg> {
    let mut p = [libc::pollfd {
        fd: status.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    }];
    if sys::poll(&mut p, Some(Duration::from_secs(30))).unwrap_or(0) == 0 {
        return None;
    }
    protocol::recv_blocking(status)
}

/// The fork server did not answer: reaps it and says why, for this start and the next.
fn gone() -> String {
    let mut g = server();
    let Some(client) = g.as_mut() else {
        return "no fork server".into();
    };
    if client.gone.is_none() {
        let cause = match sys::wait_pid(client.pid, true) {
            Ok(Some(st)) => protocol::cause(&st),
            _ => "it stopped answering".to_string(),
        };
        client.gone = Some(format!(
            "the fork server (pid {}) is gone ({cause}); pipelines already running go on, \
             but new ones cannot start: restart the program",
            client.pid
        ));
    }
    client.gone.clone().unwrap_or_default()
}

/// The caller's side of `Exited`: waits (bounded) for the server to report how the
/// supervisor of `pid` ended.
pub(crate) fn exit_status(status: &RtFd, pid: Pid) -> Option<WaitStatus> {
    let mut p = [libc::pollfd {
        fd: status.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    }];
    if sys::poll(&mut p, Some(Duration::from_secs(5))).unwrap_or(0) == 0 {
        return None;
    }
    match protocol::recv_blocking(status)? {
        ServerMsg::Exited(st) => Some(st.wait_status(pid)),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------
// In the fork server
// ---------------------------------------------------------------------------------------

/// A supervisor the server forked and has not reaped yet.
struct Forked {
    pid: Pid,
    pidfd: RtFd,
    status: RtFd,
}

/// The server's loop. Never returns.
fn serve(caller: Pid, sock: RawFd, inherited: Inherited) -> ! {
    sys::child_setup(true, caller, exit::ORPHANED);
    let sock = inherited.keep(&[sock]).take(sock);
    crate::guard::IN_FORKED.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut live: Vec<Forked> = Vec::new();
    loop {
        let mut pfds: Vec<libc::pollfd> = std::iter::once(&sock)
            .chain(live.iter().map(|f| &f.pidfd))
            .map(|fd| libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        if sys::poll(&mut pfds, None).is_err() {
            continue;
        }
        for k in (0..live.len()).rev() {
            if pfds[1 + k].revents != 0 {
                reap(live.swap_remove(k));
            }
        }
        if pfds[0].revents != 0 {
            match protocol::recv::<SpawnRequest>(&sock, true) {
                Recv::Msg(req) => live.extend(handle(&sock, req)),
                Recv::Empty => {}
                // The caller is gone: so is every reason to exist. Its supervisors follow
                // their own control sockets; reap them first, so none is left a zombie.
                Recv::Closed => {
                    reap_all(live);
                    sys::exit_now(0)
                }
            }
        }
    }
}

/// Waits (bounded) for the supervisors still running, which end with their caller, and
/// reaps them.
fn reap_all(live: Vec<Forked>) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    for f in live {
        let mut p = [libc::pollfd {
            fd: f.pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if sys::poll(&mut p, Some(left)).unwrap_or(0) > 0 {
            let _ = sys::wait_pid(f.pid, false);
        }
    }
}

/// Reaps a supervisor and tells its caller how it ended.
fn reap(f: Forked) {
    let st = sys::wait_pid(f.pid, false).ok().flatten();
    if let Some(st) = st.as_ref().and_then(ExitStatus::of) {
        protocol::send(&f.status, &ServerMsg::Exited(st));
    }
}

/// One request: receive its descriptors, fork the supervisor, answer.
fn handle(sock: &RtFd, req: SpawnRequest) -> Option<Forked> {
    let fds = match rights::recv_fds(sock, req.fds as usize) {
        Ok(fds) if fds.len() >= 2 => fds,
        _ => return None, // (no status socket to answer on: the caller sees it close)
    };
    let mut fds: Vec<RtFd> = fds.into_iter().map(fds::adopt).collect();
    // (Indices in the request count the status and control sockets too.)
    let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let rest = fds.split_off(2);
    let ctl = fds.pop().expect("control socket");
    let status = fds.pop().expect("status socket");
    // SAFETY: this process is single-threaded; the child runs the supervisor and leaves
    // with `exit_now`.
    match unsafe { fds::fork() } {
        Err(e) => {
            protocol::send(&status, &ServerMsg::Failed(format!("fork failed: {e}")));
            None
        }
        Ok(fds::Fork::Child(inherited)) => {
            let plan = req.stages.into_iter().map(|s| plan_of(s, &raw)).collect();
            start_supervisor(inherited, &ctl, plan)
        }
        Ok(fds::Fork::Parent(pid)) => {
            let pidfd = match sys::pidfd_open(pid) {
                Ok(fd) => fds::adopt(fd),
                Err(e) => {
                    sys::kill(pid, nix::sys::signal::Signal::SIGKILL);
                    let _ = sys::wait_pid(pid, false);
                    let msg = format!("pidfd_open failed: {e}");
                    protocol::send(&status, &ServerMsg::Failed(msg));
                    return None;
                }
            };
            let pid_u32 = pid.as_raw() as u32;
            protocol::send(&status, &ServerMsg::Spawned { pid: pid_u32 });
            drop(rest);
            Some(Forked { pid, pidfd, status })
        }
    }
}

/// A process stage of the request, made again from its recipe.
fn plan_of(s: ShippedStage, raw: &[RawFd]) -> Result<ProcStage, String> {
    let fd = |i: &u32| {
        raw.get(*i as usize)
            .copied()
            .ok_or("a descriptor is missing")
    };
    let stage = std::panic::catch_unwind(|| crate::erase::rebuild(&s.shipment))
        .unwrap_or_else(|p| Err(crate::error::panic_message(p.as_ref())))?;
    Ok(ProcStage {
        idx: s.idx,
        stage,
        credit: s.credit,
        timeout: s.timeout,
        workers: s
            .workers
            .iter()
            .map(|(i, o)| {
                Ok((
                    i.iter().map(fd).collect::<Result<_, _>>()?,
                    o.iter().map(fd).collect::<Result<_, _>>()?,
                ))
            })
            .collect::<Result<_, &str>>()?,
        streams: s
            .streams
            .iter()
            .map(|o| o.as_ref().map(fd).transpose())
            .collect::<Result<_, _>>()?,
        couple: s.couple,
    })
}

/// In the supervisor's child of the server: runs the supervisor, or says why it cannot.
fn start_supervisor(inherited: Inherited, ctl: &RtFd, plan: Vec<Result<ProcStage, String>>) -> ! {
    match plan.into_iter().collect::<Result<Vec<_>, _>>() {
        Ok(plan) => {
            let ctl = ctl.as_raw_fd();
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
                supervisor::run(inherited, ctl, plan);
            }));
            sys::exit_now(exit::PANIC)
        }
        Err(e) => {
            protocol::send(ctl, &SupMsg::StartFailed(e));
            sys::exit_now(0)
        }
    }
}
