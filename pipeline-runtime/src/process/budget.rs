//! The restart budget: how long a stage's dead workers are replaced.
//!
//! # The problem
//! A stage that kills its worker on every item would have the supervisor fork for ever: a
//! fork storm that runs nothing. A stage that crashes now and then (one bad input, a worker
//! the OOM killer picked) must keep its workers all the same.
//!
//! # The approach
//! Each stage has a [`Budget`]: when its recent restarts happened, and how many items the
//! stage had finished by then. A dead worker is replaced while the stage had fewer than
//! `max(10, 5 × workers)` restarts within [`BUDGET_WINDOW`], or past that while it makes
//! progress (at least as many items finished as restarts in the window). Otherwise the
//! slot's next worker is a stand-in that fails every item fast with the stage's `GiveUp`.
//!
//! # Invariants
//! - A worker that died between items counts as progress only the items whose outputs it
//!   had sent: the others run again.
//! - A slot that gave up stays given up: the death of its stand-in is no restart.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::os::sys::SlotState;

/// Restart budget: at most `max(10, 5 × workers)` replacements per stage within this window.
pub(super) const BUDGET_WINDOW: Duration = Duration::from_secs(10);

/// Counts a restart against the stage's budget; past it, the slot's next worker is a
/// stand-in that fails every item fast (`give_up` is the slot's). `workers`: the stage's
/// count; `slot`: the dying worker's shared counters. Returns whether this was a real restart.
///
/// `mid_item`: the worker died running an item (that item failed). A worker that died
/// between items made progress only with the items whose outputs it had sent: the others
/// run again. (So a stage that kills its worker after every item's function returned —
/// it closed its own sockets — gives up too, instead of being replaced forever.)
pub(super) fn count_restart(
    hist: &mut Budget,
    workers: usize,
    slot: &SlotState,
    give_up: &mut Option<GiveUp>,
    why: &str,
    mid_item: bool,
) -> bool {
    let now = Instant::now();
    // Items this stage finished so far (each worker keeps its counts in shared memory).
    let done = slot.done.swap(0, Ordering::Relaxed);
    let sent = slot.sent.swap(0, Ordering::Relaxed);
    hist.done_base += if mid_item { done } else { sent.min(done) };
    let done = hist.done_base + hist.live_done();
    while hist
        .restarts
        .front()
        .is_some_and(|(t, _)| now.duration_since(*t) > BUDGET_WINDOW)
    {
        hist.restarts.pop_front();
    }
    let budget = (5 * workers).max(10);
    // Past the budget, a stage still gets its workers back while it makes progress: at
    // least as many items finished as restarts in the window (a steady 1% crash rate goes
    // on; a stage that crashes on every item gives up, with no fork storm).
    let progress = hist.restarts.front().is_some_and(|&(_, done_then)| {
        done.saturating_sub(done_then) >= hist.restarts.len() as u64
    });
    let restarted = give_up.is_none() && (hist.restarts.len() < budget || progress);
    if restarted {
        hist.restarts.push_back((now, done));
        while hist.restarts.len() > budget {
            hist.restarts.pop_front();
        }
    } else if give_up.is_none() {
        let secs = hist
            .restarts
            .front()
            .map_or(0.0, |(t, _)| now.duration_since(*t).as_secs_f64());
        *give_up = Some(GiveUp {
            restarts: hist.restarts.len() as u32,
            secs,
            cause: why.to_string(),
        });
    }
    restarted
}

/// A stage's restart history: when each restart happened, and how many items the stage
/// had finished by then.
pub(super) struct Budget {
    restarts: VecDeque<(Instant, u64)>,
    /// Items finished by workers that are gone.
    done_base: u64,
    /// The stage's slots (their live `done` counters).
    states: Vec<&'static SlotState>,
}

impl Budget {
    /// A stage's budget, with no restart yet; `states` are the stage's slots.
    pub(super) fn new(states: impl Iterator<Item = &'static SlotState>) -> Budget {
        Budget {
            restarts: VecDeque::new(),
            done_base: 0,
            states: states.collect(),
        }
    }

    fn live_done(&self) -> u64 {
        self.states
            .iter()
            .map(|s| s.done.load(Ordering::Relaxed))
            .sum()
    }
}

/// Why a stage gave up (see [`crate::Error::GaveUp`]).
#[derive(Debug, Clone)]
pub(crate) struct GiveUp {
    pub restarts: u32,
    pub secs: f64,
    pub cause: String,
}
