//! The pipeline's in-flight window.

use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// The in-flight bound: the feeder takes credit per item, the collector gives it back when
/// the item is delivered. It bounds every queue and the reorder buffer at once.
#[derive(Debug)]
pub(crate) struct Window {
    state: Mutex<(usize, bool)>,
    cv: Condvar,
    cap: usize,
}

impl Window {
    pub(crate) fn new(cap: usize) -> Self {
        Window {
            state: Mutex::new((0, false)),
            cv: Condvar::new(),
            cap: cap.max(1),
        }
    }

    /// Blocks until at least one item may enter; returns how many (≤ `want`), or 0 once closed.
    pub(crate) fn take(&self, want: usize) -> usize {
        let mut g = self.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if g.1 {
                return 0;
            }
            if g.0 < self.cap {
                let n = want.min(self.cap - g.0).max(1);
                g.0 += n;
                return n;
            }
            g = self.cv.wait(g).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Like [`Window::take`], but gives up after `wait`: `None` on timeout.
    pub(crate) fn take_timeout(&self, want: usize, wait: Duration) -> Option<usize> {
        let mut g = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let deadline = Instant::now() + wait;
        loop {
            if g.1 {
                return Some(0);
            }
            if g.0 < self.cap {
                let n = want.min(self.cap - g.0).max(1);
                g.0 += n;
                return Some(n);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            g = self
                .cv
                .wait_timeout(g, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Like [`Window::take`] but never blocks (0 if full or closed).
    pub(crate) fn try_take(&self, want: usize) -> usize {
        let mut g = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if g.1 || g.0 >= self.cap {
            return 0;
        }
        let n = want.min(self.cap - g.0).max(1);
        g.0 += n;
        n
    }

    pub(crate) fn give_back(&self, n: usize) {
        if n == 0 {
            return;
        }
        let mut g = self.state.lock().unwrap_or_else(|p| p.into_inner());
        g.0 = g.0.saturating_sub(n);
        drop(g);
        self.cv.notify_all();
    }

    /// The most items the pipeline holds at once.
    pub(crate) fn cap(&self) -> usize {
        self.cap
    }

    pub(crate) fn close(&self) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).1 = true;
        self.cv.notify_all();
    }
}
