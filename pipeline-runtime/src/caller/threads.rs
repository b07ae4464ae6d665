//! The threads of one pipeline and what they are started with.

use std::io;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::caller::shared::Shared;
use crate::error::Error;

/// The threads of one pipeline, joined with a deadline on stop: a thread stuck in user
/// code (an endless stage function, a blocking input iterator) cannot be interrupted, so it
/// is detached rather than waited for forever.
#[derive(Debug, Default)]
pub(crate) struct Threads {
    list: Mutex<Vec<Spawned>>,
}

#[derive(Debug)]
struct Spawned {
    handle: JoinHandle<()>,
    done: Receiver<()>,
    /// Set while the thread runs user code that may block forever (the input iterator).
    in_user: Option<Arc<std::sync::atomic::AtomicBool>>,
}

impl Threads {
    pub(crate) fn spawn(&self, name: &str, f: impl FnOnce() + Send + 'static) -> io::Result<()> {
        self.spawn_inner(name, None, f)
    }

    /// [`Threads::spawn`] for a thread that flags (in `in_user`) the times it spends in user
    /// code: a stop does not wait for it then (it could wait forever), it detaches it.
    pub(crate) fn spawn_flagged(
        &self,
        name: &str,
        in_user: Arc<std::sync::atomic::AtomicBool>,
        f: impl FnOnce() + Send + 'static,
    ) -> io::Result<()> {
        self.spawn_inner(name, Some(in_user), f)
    }

    fn spawn_inner(
        &self,
        name: &str,
        in_user: Option<Arc<std::sync::atomic::AtomicBool>>,
        f: impl FnOnce() + Send + 'static,
    ) -> io::Result<()> {
        let (done_tx, done_rx) = crossbeam_channel::bounded::<()>(0);
        // (The thread runs in the span it was started in: its pipeline's, or its stage's.)
        let span = tracing::Span::current();
        let handle = std::thread::Builder::new()
            .name(format!("forkpipe-{name}"))
            .spawn(move || {
                let _done = done_tx; // dropped when the thread ends, however it ends
                let _in = span.entered();
                f();
            })?;
        self.list
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Spawned {
                handle,
                done: done_rx,
                in_user,
            });
        Ok(())
    }

    /// Joins every thread that ends before `deadline`; detaches the others (at once, one
    /// that is in user code). Returns true if all ended.
    pub(crate) fn join(&self, deadline: Instant) -> bool {
        let list = std::mem::take(&mut *self.list.lock().unwrap_or_else(|p| p.into_inner()));
        let mut all = true;
        for Spawned {
            handle: h,
            done,
            in_user,
        } in list
        {
            let mut left = deadline.saturating_duration_since(Instant::now());
            if in_user.is_some_and(|u| u.load(Ordering::Acquire)) {
                // Give it a moment to come back from a quick call; then let it go.
                left = left.min(Duration::from_millis(50));
            }
            match done.recv_timeout(left) {
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                    all = false;
                    tracing::warn!(thread = ?h.thread().name(), "forkpipe: thread still busy in user code; detached");
                }
                _ => {
                    let _ = h.join();
                }
            }
        }
        all
    }
}

/// Context for spawning a pipeline's pieces.
pub(crate) struct Rt {
    pub stop: Receiver<()>,
    /// Each thread worker reports its `init` here once.
    pub inits: Sender<Result<(), Error>>,
    pub threads: Arc<Threads>,
    pub shared: Arc<Shared>,
}

/// Marks the times a thread spends in user code (see [`Threads::spawn_flagged`]).
#[derive(Clone, Copy)]
pub(crate) struct User<'a>(pub(crate) &'a std::sync::atomic::AtomicBool);

impl User<'_> {
    pub(crate) fn run<T>(self, f: impl FnOnce() -> T) -> std::thread::Result<T> {
        self.0.store(true, Ordering::Release);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        self.0.store(false, Ordering::Release);
        r
    }
}
