//! The control protocol: every message between the caller, the supervisor and the workers,
//! and every exit code a forked process leaves with. Nothing else reads these bytes.
//!
//! # Channels
//! Each channel is a `SOCK_SEQPACKET` socket, one message per packet, every message a
//! `bincode` value of one of the enums below (so no byte offset is ever read by hand):
//!
//! | channel | direction | messages | end of stream means |
//! | --- | --- | --- | --- |
//! | control | supervisor → caller | [`SupMsg`] | the supervisor is gone (`Done` or `Stopped` came first if it ended on purpose) |
//! | control | caller → supervisor | [`CallerMsg`] | stop now: kill and reap every worker, exit |
//! | worker control | worker → supervisor | [`WorkerMsg`] | nothing by itself: a worker's end is its exit, seen by its pidfd |
//! | fork server | caller → fork server | [`SpawnRequest`], then its descriptors (`SCM_RIGHTS`) | the caller is gone: the fork server exits |
//! | spawn status | fork server → caller | [`ServerMsg`], one socket per supervisor | the fork server is gone |
//!
//! # Exit codes
//! A worker that ends on purpose says why on its control socket *and* exits with a code from
//! [`exit`]; the supervisor trusts the pair (a zero exit without `Finished` is a death).

use std::os::fd::AsFd;

use nix::sys::signal::Signal;
use nix::sys::wait::WaitStatus;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::os::sys;
use crate::stage::Opts;
use crate::transport::codec;

/// Messages from the supervisor to the caller.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum SupMsg {
    /// The supervisor is set up (sent before it forks the workers).
    Alive,
    /// Every worker was forked and ran its `init`: their pids, by stage index.
    Ready(Vec<(u32, Vec<u32>)>),
    /// Where the process stages' time went so far: `(stage, busy ns, queued ns)`, summed
    /// over each stage's workers (sent every [`crate::meter::REPORT_EVERY`] while it
    /// changes, and once more before `Done`).
    Load(Vec<(u32, u64, u64)>),
    /// The pipeline could not start; the supervisor cleaned up and exits.
    StartFailed(String),
    /// A worker's `init` failed at start; the supervisor cleaned up and exits.
    InitFailed {
        stage: u32,
        pid: u32,
        message: String,
    },
    /// A worker ended without finishing; it was replaced (`restarted`) or the stage gave up.
    WorkerDied {
        stage: u32,
        pid: u32,
        cause: String,
        restarted: bool,
    },
    /// Every worker finished after end of input.
    Done,
    /// A stage lost its last worker and no replacement could be forked: the supervisor
    /// stopped everything; unfinished items fail with this cause.
    Stopped { stage: u32, pid: u32, cause: String },
}

/// A corrupt frame arrived on an input link: which link (the sender's position), the epoch
/// of the sender that wrote it, and what was wrong.
pub(crate) use crate::transport::link::Corrupt as CorruptReport;

/// Messages from the caller to the supervisor.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum CallerMsg {
    /// The caller's collector found a corrupt frame from a worker of process stage `stage`.
    Corrupt { stage: u32, report: CorruptReport },
}

/// Messages from a worker to the supervisor.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum WorkerMsg {
    /// Its `init` ran (or it has none): it serves items now.
    InitOk,
    /// Its `init` failed with this message; it exits with [`exit::INIT_FAILED`].
    InitFailed(String),
    /// Its input ended and everything it sent was acknowledged; it exits with 0.
    Finished,
    /// A corrupt frame arrived on one of its input links.
    Corrupt(CorruptReport),
}

/// Caller → fork server: fork a supervisor for a pipeline whose process stages are
/// `stages`. `fds` descriptors follow in `SCM_RIGHTS` messages: first the spawn-status
/// socket, then the supervisor's control socket, then the workers' ends that `stages`
/// refer to by index.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct SpawnRequest {
    pub stages: Vec<ShippedStage>,
    pub fds: u32,
}

/// A process stage as the fork server gets it: the stage as data, and its workers'
/// descriptors as indices into the request's descriptors.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ShippedStage {
    pub idx: u32,
    pub shipment: Shipment,
    pub credit: usize,
    pub timeout: Option<std::time::Duration>,
    /// For each worker: its input and output links.
    pub workers: Vec<(Vec<u32>, Vec<u32>)>,
    pub streams: Vec<Option<u32>>,
    pub couple: Option<bool>,
}

/// Fork server → caller, on a supervisor's spawn-status socket.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ServerMsg {
    /// The supervisor was forked.
    Spawned { pid: u32 },
    /// It could not be (the fork failed, the descriptors did not arrive).
    Failed(String),
    /// The supervisor ended, and the fork server reaped it.
    Exited(ExitStatus),
}

/// How a process ended, as `waitpid` told its parent.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(crate) enum ExitStatus {
    Code(i32),
    Signal { signal: i32, core: bool },
}

impl ExitStatus {
    /// From what `waitpid` returned (`None` for a status that is not an end).
    pub(crate) fn of(status: &nix::sys::wait::WaitStatus) -> Option<ExitStatus> {
        use nix::sys::wait::WaitStatus;
        match *status {
            WaitStatus::Exited(_, code) => Some(ExitStatus::Code(code)),
            WaitStatus::Signaled(_, sig, core) => Some(ExitStatus::Signal {
                signal: sig as i32,
                core,
            }),
            _ => None,
        }
    }

    /// Back to a `WaitStatus` of `pid` (for the cause text).
    pub(crate) fn wait_status(self, pid: nix::unistd::Pid) -> nix::sys::wait::WaitStatus {
        use nix::sys::wait::WaitStatus;
        match self {
            ExitStatus::Code(code) => WaitStatus::Exited(pid, code),
            ExitStatus::Signal { signal, core } => {
                match nix::sys::signal::Signal::try_from(signal) {
                    Ok(sig) => WaitStatus::Signaled(pid, sig, core),
                    Err(_) => WaitStatus::Exited(pid, 128 + signal),
                }
            }
        }
    }
}

/// Exit codes of forkpipe's own processes (a user's stage never picks them: it cannot
/// reach `exit` without the supervisor seeing its item unfinished).
pub(crate) mod exit {
    /// A child that found its parent already gone (`PR_SET_PDEATHSIG` came too late).
    pub(crate) const ORPHANED: i32 = 121;
    /// A worker whose links failed (its neighbours went away).
    pub(crate) const LINK_ERROR: i32 = 122;
    /// A worker that asks to be replaced (a panic in a stage with `init` state).
    pub(crate) const RESTART: i32 = 123;
    /// A worker whose `init` failed (it said why first).
    pub(crate) const INIT_FAILED: i32 = 124;
    /// A worker whose runtime code panicked (a forkpipe bug: user code is caught per item).
    pub(crate) const PANIC: i32 = 125;
}

/// What [`recv`] found.
#[derive(Debug)]
pub(crate) enum Recv<M> {
    Msg(M),
    /// Nothing to read now (non-blocking only).
    Empty,
    /// End of stream, an error, or a message that does not decode.
    Closed,
}

/// Sends one message (blocking; a dead peer is ignored: its end is seen elsewhere).
pub(crate) fn send<M: Serialize>(fd: impl AsFd, msg: &M) {
    let mut buf = Vec::new();
    if codec::encode_into(msg, &mut buf).is_ok() {
        let _ = sys::send(fd.as_fd(), &buf, false);
    }
}

/// Receives one message.
pub(crate) fn recv<M: DeserializeOwned>(fd: impl AsFd, nonblocking: bool) -> Recv<M> {
    let mut buf = Vec::with_capacity(64 * 1024);
    match sys::recv(fd.as_fd(), &mut buf, nonblocking) {
        Ok(None) => Recv::Empty,
        Ok(Some(n)) if n > 0 => codec::decode(&buf).map_or(Recv::Closed, Recv::Msg),
        _ => Recv::Closed,
    }
}

/// Receives one message, blocking: `None` at end of stream.
pub(crate) fn recv_blocking<M: DeserializeOwned>(fd: impl AsFd) -> Option<M> {
    match recv(fd, false) {
        Recv::Msg(m) => Some(m),
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

/// What a process stage is, as data: what crosses to the fork server, which makes the stage
/// again from it ([`crate::erase::rebuild`]; [`crate::recipe`] says why this works).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Shipment {
    /// `erase::remake::<In, Out>`: the typed half that makes the `Arc<dyn AnyStage>`.
    pub rebuild: usize,
    /// The recipe's `make`.
    pub make: usize,
    /// `stage::wire_ops::<In, Out>`: the stage's wire functions.
    pub wire: usize,
    pub params: Vec<u8>,
    pub id: String,
    pub name: String,
    pub opts: Opts,
}
