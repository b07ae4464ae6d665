//! The collector's ring: per-item bookkeeping at the end of the pipeline. It restores input
//! order (ordered pipelines), refuses duplicates (an item requeued after its worker died
//! just after passing its result on) and results for items never issued, and knows which
//! items are still unfinished when the pipeline stops.

use std::collections::VecDeque;

use crate::stage::Body;

/// Per-seq bookkeeping at the end of the pipeline: restores input order (ordered
/// pipelines) and knows which items are still unfinished.
pub(crate) struct Ring<T> {
    pub base: u64,
    pub slots: VecDeque<Slot<T>>,
    /// How far beyond `base` a sequence number can be (the pipeline holds at most a window
    /// of items): a record beyond it was never issued.
    pub reach: u64,
}

pub(crate) enum Slot<T> {
    Pending,
    Ready(Body<T>),
    Taken,
}

impl<T> Ring<T> {
    /// Records the outcome of `seq` if it has none yet; false for a duplicate (an item whose
    /// worker died just after passing its result on, and which was requeued).
    pub(crate) fn put(&mut self, seq: u64, slot: Slot<T>) -> bool {
        let Some(i) = seq.checked_sub(self.base) else {
            return false;
        };
        if i >= self.reach {
            // A worker answered for an item that does not exist (a bug or a hostile
            // stage): refused, never delivered, and no room made for it.
            tracing::error!(seq, "forkpipe: a result for an item never issued; dropped");
            return false;
        }
        let i = i as usize;
        while self.slots.len() <= i {
            self.slots.push_back(Slot::Pending);
        }
        if !matches!(self.slots[i], Slot::Pending) {
            return false;
        }
        self.slots[i] = slot;
        true
    }
}
