//! Where a stage's time goes: **busy**, the time its workers spend working on items, and
//! **queued**, the time items wait in front of it. [`crate::Stats`] shows both per stage
//! and names the stage whose workers are busiest, the bottleneck.
//!
//! # The problem
//! Items are small and many (W1 moves millions per second), so a clock call per item would
//! cost more than the work; and the numbers of a process stage are made in its worker
//! processes, far from the caller that shows them.
//!
//! # The approach
//! Time is read per batch, never per item. A worker's busy time is made of *segments*: one
//! opens when it starts on a record while none is open, and closes when it is about to
//! wait (for input, or for room downstream); so waiting never counts, and a worker in a
//! bulk stream reads the clock once per batch of input. Queued time is counted per message
//! a process worker receives: its records waited from the message's arrival (one clock
//! read per `fill`) until the worker started on the message; a thread stage estimates it
//! from the length of its input channel sampled at each batch (Little's law: the time
//! items wait is the integral of how many wait). Within a batch, each item also waits for
//! those before it: counted as half the batch's time per item.
//!
//! A [`Meter`] adds what it measured to its [`Sink`]: a process worker's slot in shared
//! memory (the supervisor sums the slots of each stage and reports them to the caller every
//! [`REPORT_EVERY`], and once more at the end), or, on the caller's threads, the pipeline's
//! own counters.
//!
//! # Invariants
//! - Busy time never includes waiting: every blocking point closes the open segment first.
//! - Counters only grow; a replacement worker adds to its slot's totals.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::os::sys::{self, SlotState};

/// How often the supervisor tells the caller the process stages' totals.
pub(crate) const REPORT_EVERY: Duration = Duration::from_millis(100);

/// One stage's totals in the caller (ns).
#[derive(Debug, Default)]
pub(crate) struct StageTime {
    pub busy: AtomicU64,
    pub queued: AtomicU64,
}

impl StageTime {
    /// The totals of a process stage, as its supervisor reports them.
    pub(crate) fn set(&self, busy: u64, queued: u64) {
        self.busy.fetch_max(busy, Ordering::Relaxed);
        self.queued.fetch_max(queued, Ordering::Relaxed);
    }
}

/// Where a meter's figures go.
pub(crate) enum Sink {
    /// A process worker's slot (the supervisor reads it).
    Slot(&'static SlotState),
    /// A stage on the caller's threads: its totals.
    Stage(Arc<StageTime>),
}

/// The time accounting of one worker (see the module docs).
pub(crate) struct Meter {
    sink: Sink,
    /// When the open segment started (ns), if one is open.
    open: Option<u64>,
    /// The batch being worked on: its items and when the worker started on it (ns).
    batch: Option<(u64, u64)>,
}

impl Meter {
    pub(crate) fn new(sink: Sink) -> Self {
        Meter {
            sink,
            open: None,
            batch: None,
        }
    }

    /// Work starts (or goes on): opens a segment unless one is open.
    #[inline]
    pub(crate) fn busy(&mut self) {
        if self.open.is_none() {
            self.open = Some(sys::precise_ns());
        }
    }

    /// The worker starts on a batch of `items` that arrived at `arrived` (ns; `None`: as
    /// good as now): they waited since, and each waits for those before it in the batch.
    pub(crate) fn begin(&mut self, items: u64, arrived: Option<u64>) {
        let now = sys::precise_ns();
        self.finish_batch(now);
        if self.open.is_none() {
            self.open = Some(now);
        }
        if let Some(t) = arrived {
            self.add(0, items.saturating_mul(now.saturating_sub(t)));
        }
        self.batch = Some((items, now));
    }

    /// A thread stage took a batch of `items` from its channel: by Little's law, the items
    /// left waiting at the stage's previous take (`last`: when, and how many; shared by its
    /// workers) waited through the time since. `waiting` are left now.
    pub(crate) fn sample_queue(&mut self, waiting: u64, last: &Mutex<(u64, u64)>) {
        let now = sys::precise_ns();
        let mut l = last.lock().unwrap_or_else(|p| p.into_inner());
        let (since, before) = std::mem::replace(&mut *l, (now, waiting));
        drop(l);
        if since != 0 {
            self.add(0, before.saturating_mul(now.saturating_sub(since)));
        }
    }

    /// The worker is about to wait (for room downstream): closes the open segment.
    #[inline]
    pub(crate) fn idle(&mut self) {
        if let Some(t) = self.open.take() {
            self.add(sys::precise_ns().saturating_sub(t), 0);
        }
    }

    /// Everything received was handled: the batch is done, and the worker waits for input.
    pub(crate) fn done(&mut self) {
        if self.open.is_none() && self.batch.is_none() {
            return;
        }
        let now = sys::precise_ns();
        self.finish_batch(now);
        if let Some(t) = self.open.take() {
            self.add(now.saturating_sub(t), 0);
        }
    }

    /// The batch ended at `now`: its `n` items started evenly over its time, so they waited
    /// `(n - 1) / 2` of it each, on average, for the ones before them.
    fn finish_batch(&mut self, now: u64) {
        if let Some((n, start)) = self.batch.take() {
            let span = now.saturating_sub(start);
            self.add(0, n.saturating_sub(1).saturating_mul(span) / 2);
        }
    }

    fn add(&self, busy: u64, queued: u64) {
        match &self.sink {
            Sink::Slot(s) => {
                s.busy_ns.fetch_add(busy, Ordering::Relaxed);
                s.queued_ns.fetch_add(queued, Ordering::Relaxed);
            }
            Sink::Stage(t) => {
                t.busy.fetch_add(busy, Ordering::Relaxed);
                t.queued.fetch_add(queued, Ordering::Relaxed);
            }
        }
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        self.done();
    }
}
