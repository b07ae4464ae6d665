//! The shared slot of the worker this process runs: a pointer into the supervisor's shared
//! mapping ([`crate::os::sys::shared_slots`]), set once in each worker process, read by
//! the panic hook (which cannot be handed the slot by its caller).

use std::sync::atomic::{AtomicPtr, Ordering};

use crate::os::sys::SlotState;

/// The slot this process serves (null outside workers).
pub(crate) static CURRENT_SLOT: AtomicPtr<SlotState> = AtomicPtr::new(std::ptr::null_mut());

/// This process serves `slot` from now on.
pub(crate) fn set_slot(slot: &'static SlotState) {
    CURRENT_SLOT.store(std::ptr::from_ref(slot).cast_mut(), Ordering::Relaxed);
}

/// Runs `f` on the slot this process serves, if it serves one.
pub(crate) fn with_slot(f: impl FnOnce(&SlotState)) {
    let slot = CURRENT_SLOT.load(Ordering::Relaxed);
    if !slot.is_null() {
        // SAFETY: the only non-null value ever stored is a `&'static SlotState` (see
        // `set_slot`): the supervisor's shared mapping is never unmapped, and only atomics
        // are touched through the reference.
        f(unsafe { &*slot });
    }
}
