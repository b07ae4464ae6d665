//! Per-item time limits.
//!
//! # The problem
//! An item can hang its worker (an endless loop, a deadlock, a lock another thread held at
//! the fork): the worker then holds that item for ever and never answers.
//!
//! # The approach
//! A worker writes in shared memory (its slot's `SlotState`) which item it runs and since
//! when; between events the supervisor reads both ([`check_timeouts`], which also bounds
//! how long its `poll` sleeps). A worker whose item ran past the stage's limit gets
//! SIGTERM, then SIGKILL after [`TIMEOUT_GRACE`]; its death is then reported as a timeout.
//!
//! # Invariants
//! - A slot's `overtime` names the item that ran over; it is cleared only when the worker
//!   runs another item, so the kill after the grace never hits a later item.
//! - Only a live child (not reaped yet) is signalled.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::os::fds::RtFd;
use crate::os::sys;
use crate::process::state::{ProcStage, Slot};

/// Grace between SIGTERM and SIGKILL for a worker whose item timed out.
const TIMEOUT_GRACE: Duration = Duration::from_millis(200);

/// Signals workers whose item ran past the stage's limit (TERM, then KILL after a grace);
/// returns how long `poll` may sleep before the next deadline.
pub(super) fn check_timeouts(stages: &[ProcStage<RtFd>], slots: &mut [Slot]) -> Option<Duration> {
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
