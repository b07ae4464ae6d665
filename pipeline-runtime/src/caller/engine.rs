//! The machinery of one running pipeline, as its handles hold it: the stop signal, the
//! threads, the shared state and the control socket. Dropping it stops everything.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::caller::shared::Shared;
use crate::caller::threads::Threads;
use crate::os::fds::RtFd;
use crate::os::sys;

/// See the module docs.
#[derive(Debug)]
pub(crate) struct Engine {
    /// Never sent to: dropping it wakes every thread watching `stop_rx`.
    pub stop: Option<Sender<()>>,
    pub stop_rx: Receiver<()>,
    pub threads: Arc<Threads>,
    pub shared: Arc<Shared>,
    pub control: Option<Arc<RtFd>>,
    pub done: bool,
}

impl Engine {
    /// Stops now: wakes every thread, makes the supervisor kill and reap its workers, and
    /// joins (the control thread reaps the supervisor).
    pub(crate) fn kill(&mut self) {
        if self.done {
            return;
        }
        self.done = true;
        self.shared.stopping.store(true, Ordering::Release);
        self.stop = None;
        self.shared.window.close();
        if let Some(c) = self.control.take() {
            sys::shutdown_both(std::os::fd::AsFd::as_fd(&*c));
        }
        self.threads.join(Instant::now() + Duration::from_secs(2));
    }

    /// Waits for a graceful end until `deadline`; true if everything ended by then.
    pub(crate) fn wait(&mut self, deadline: Instant) -> bool {
        let ok = self.threads.join(deadline);
        if ok {
            self.done = true;
            self.stop = None;
            self.control = None;
        }
        ok
    }
}

impl Drop for Engine {
    /// Stops the pipeline (see [`Engine::kill`]): returns once every thread ended or was
    /// detached and the supervisor was told to go.
    fn drop(&mut self) {
        self.kill();
    }
}
