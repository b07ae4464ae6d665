//! What a pipeline reports of itself: per-stage counts and where the time went
//! ([`StageStats`], [`Stats`], its table), made at any moment from what the pipeline's
//! pieces share ([`stats_of`]). The time figures are measured by [`crate::meter`].

use std::fmt;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::caller::shared::Shared;

/// Per-stage counts. Counts are of items (input sequence numbers), not of outputs.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StageStats {
    /// The stage's name (a fan-out's is its branches', as written: `(index | store, thumb)`).
    pub name: String,
    /// Where the stage is: empty for a stage of the pipeline's own chain, `[b]` for one of
    /// branch `b` of the fan-out listed before it (`[b, c]` in a fan-out nested there).
    pub branch: Vec<usize>,
    /// Finished items that reached this stage.
    pub items_in: u64,
    /// Finished items that left this stage with outputs.
    pub items_out: u64,
    /// Items that failed at this stage.
    pub failed: u64,
    /// Items this stage dropped (no output).
    pub dropped: u64,
    /// Worker processes of this stage replaced after a death.
    pub restarts: u64,
    /// Its workers (threads or processes).
    pub workers: usize,
    /// Time its workers spent working on items (the stage function and its per-item
    /// overhead, not waiting for input or for room downstream), summed over the workers.
    pub busy: Duration,
    /// Time items waited in front of it (from arriving at its input to its worker starting
    /// on them), summed over the items. Measured per batch (see the README).
    pub queued: Duration,
}

impl StageStats {
    /// The share of its workers' time spent busy over `elapsed`: 1.0 is every worker busy
    /// all the time.
    pub fn utilization(&self, elapsed: Duration) -> f64 {
        let capacity = elapsed.as_secs_f64() * self.workers.max(1) as f64;
        if capacity > 0.0 {
            (self.busy.as_secs_f64() / capacity).min(1.0)
        } else {
            0.0
        }
    }
}

/// Statistics of a pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Items that entered the pipeline.
    pub submitted: u64,
    /// Items with a final outcome.
    pub completed: u64,
    /// Items in the pipeline now (entered, not finished): `submitted - completed`.
    pub in_flight: u64,
    /// One entry per stage, in order; a fan-out's entry is followed by its branches' stages
    /// (see [`StageStats::branch`]).
    pub stages: Vec<StageStats>,
    /// Time since the pipeline started (until its last item finished, once it has).
    pub elapsed: Duration,
}

impl Stats {
    /// The stage whose workers are busiest (busy time per worker over the elapsed time):
    /// the one to give more workers, or to make faster. `None` before any stage worked.
    pub fn bottleneck(&self) -> Option<&StageStats> {
        self.stages
            .iter()
            .filter(|s| !s.busy.is_zero())
            .max_by(|a, b| {
                let (ua, ub) = (a.utilization(self.elapsed), b.utilization(self.elapsed));
                ua.total_cmp(&ub)
            })
    }
}

/// A compact table: one line per stage (a branch's stages indented under their fan-out),
/// the bottleneck marked.
///
/// ```text
/// stage        workers      in     out  failed  busy  queued     items/s  restarts
/// parse              4   10000   10000       0   38%   0.41s      48,123         0
/// store              1   10000   10000       0   97%   12.3s      48,120         0  <- bottleneck
/// ```
impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bottleneck = self.bottleneck().map(|b| b as *const StageStats);
        let secs = self.elapsed.as_secs_f64();
        let width = (self.stages.iter())
            .map(|s| s.name.chars().count() + 2 * s.branch.len())
            .max()
            .unwrap_or(0)
            .max(5);
        writeln!(
            f,
            "{:<width$}  {:>7} {:>9} {:>9} {:>7} {:>5} {:>8} {:>11} {:>8}",
            "stage", "workers", "in", "out", "failed", "busy", "queued", "items/s", "restarts"
        )?;
        for s in &self.stages {
            let name = format!("{}{}", "  ".repeat(s.branch.len()), s.name);
            let rate = if secs > 0.0 {
                s.items_in as f64 / secs
            } else {
                0.0
            };
            write!(
                f,
                "{name:<width$}  {:>7} {:>9} {:>9} {:>7} {:>4.0}% {:>7.2}s {:>11.0} {:>8}",
                s.workers,
                s.items_in,
                s.items_out,
                s.failed,
                100.0 * s.utilization(self.elapsed),
                s.queued.as_secs_f64(),
                rate,
                s.restarts
            )?;
            if bottleneck == Some(s as *const StageStats) {
                write!(f, "  <- bottleneck")?;
            }
            writeln!(f)?;
        }
        write!(
            f,
            "{} items in {:.2}s ({} in flight)",
            self.completed, secs, self.in_flight
        )
    }
}

pub(crate) fn stats_of(shared: &Shared) -> Stats {
    let completed = shared.completed.load(Ordering::Relaxed);
    let mut stages = Vec::new();
    stage_stats(shared, &[], &mut stages);
    let submitted = shared.issued.load(Ordering::Relaxed);
    let end = shared.ended.get().copied().unwrap_or_else(Instant::now);
    Stats {
        submitted,
        completed,
        in_flight: submitted.saturating_sub(completed),
        stages,
        elapsed: end.saturating_duration_since(shared.started),
    }
}

/// The stats of the stages `shared` is about, each followed by those of its branches (a
/// fan-out's), whose place is `path` and the branch's index.
fn stage_stats(shared: &Shared, path: &[usize], into: &mut Vec<StageStats>) {
    let mut items_in = shared.completed.load(Ordering::Relaxed);
    for (i, name) in shared.names.iter().enumerate() {
        let failed = shared.failed[i].load(Ordering::Relaxed);
        let dropped = shared.dropped[i].load(Ordering::Relaxed);
        let out = items_in.saturating_sub(failed + dropped);
        into.push(StageStats {
            name: name.to_string(),
            branch: path.to_vec(),
            items_in,
            items_out: out,
            failed,
            dropped,
            restarts: shared.restarts[i].load(Ordering::Relaxed),
            workers: shared.workers[i],
            busy: Duration::from_nanos(shared.times[i].busy.load(Ordering::Relaxed)),
            queued: Duration::from_nanos(shared.times[i].queued.load(Ordering::Relaxed)),
        });
        items_in = out;
        for (b, branch) in shared.branches[i].iter().enumerate() {
            let mut at = path.to_vec();
            at.push(b);
            stage_stats(branch, &at, into);
        }
    }
}
