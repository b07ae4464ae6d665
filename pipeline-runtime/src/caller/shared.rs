//! What the pieces of one running pipeline share: names, counters, the abort cause, the
//! window, and the way to the supervisor.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::caller::window::Window;
use crate::error::Error;
use crate::meter::StageTime;
use crate::os::fds::RtFd;
use crate::process::protocol::{self, CallerMsg};
use crate::stage::Body;
use crate::transport::link::LinkReceiver;

/// What the pieces of one running pipeline share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub names: Vec<Arc<str>>,
    pub failed: Vec<AtomicU64>,
    pub dropped: Vec<AtomicU64>,
    pub restarts: Vec<AtomicU64>,
    pub completed: AtomicU64,
    pub issued: AtomicU64,
    /// Set when the pipeline was stopped abnormally: the cause every unfinished item gets.
    pub abort: Mutex<Option<Error>>,
    /// Set when the user's side stops the pipeline (drop, shutdown deadline).
    pub stopping: std::sync::atomic::AtomicBool,
    /// The control socket to the supervisor, once it is ready (weak: closing it is the
    /// engine's business).
    pub supervisor: std::sync::OnceLock<std::sync::Weak<RtFd>>,
    /// The control thread has seen the supervisor end (and set `abort` if it had a cause).
    pub control_done: std::sync::atomic::AtomicBool,
    pub window: Window,
    /// By stage: what the branches of a fan-out share (empty for any other stage).
    pub branches: Vec<Vec<Arc<Shared>>>,
    /// By stage: its workers, and where their time went (ns; see [`crate::meter`]).
    pub workers: Vec<usize>,
    pub times: Vec<Arc<StageTime>>,
    /// When the pipeline started, and when its last item finished (or it was stopped).
    pub started: Instant,
    pub ended: std::sync::OnceLock<Instant>,
    /// The pipeline's `tracing` span, and one per stage inside it: the pipeline's threads
    /// run in them, and its events are reported there.
    pub span: tracing::Span,
    pub stage_spans: Vec<tracing::Span>,
}

impl Shared {
    pub(crate) fn new(
        names: Vec<Arc<str>>,
        workers: Vec<usize>,
        window: usize,
        branches: Vec<Vec<Arc<Shared>>>,
    ) -> Self {
        let n = names.len();
        static PIPELINES: AtomicU64 = AtomicU64::new(0);
        let id = PIPELINES.fetch_add(1, Ordering::Relaxed);
        let span = tracing::info_span!("pipeline", id);
        let stage_spans = (names.iter().enumerate())
            .map(|(i, name)| tracing::info_span!(parent: &span, "stage", index = i, name = %name))
            .collect();
        let zeros = || (0..n).map(|_| AtomicU64::new(0)).collect::<Vec<_>>();
        Shared {
            names,
            failed: zeros(),
            dropped: zeros(),
            restarts: zeros(),
            completed: AtomicU64::new(0),
            issued: AtomicU64::new(0),
            abort: Mutex::new(None),
            stopping: std::sync::atomic::AtomicBool::new(false),
            supervisor: std::sync::OnceLock::new(),
            control_done: std::sync::atomic::AtomicBool::new(false),
            window: Window::new(window),
            branches,
            workers,
            times: (0..n).map(|_| Arc::default()).collect(),
            started: Instant::now(),
            ended: std::sync::OnceLock::new(),
            span,
            stage_spans,
        }
    }

    /// The span of stage `stage` (the pipeline's, for a number that is no stage's).
    pub(crate) fn stage_span(&self, stage: u32) -> tracing::Span {
        self.stage_spans
            .get(stage as usize)
            .unwrap_or(&self.span)
            .clone()
    }

    /// Where stage `stage`'s time goes (see [`crate::meter`]).
    pub(crate) fn time(&self, stage: u32) -> Arc<StageTime> {
        Arc::clone(&self.times[stage as usize])
    }

    /// The pipeline's last item finished (or it was stopped): its elapsed time stops.
    pub(crate) fn end(&self) {
        let _ = self.ended.set(Instant::now());
    }

    /// Counts one item's terminal outcome.
    pub(crate) fn count<T>(&self, body: &Body<T>) {
        self.count_outcome(body);
        self.completed.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a failure or a drop (the caller counts completions itself, in bulk).
    pub(crate) fn count_outcome<T>(&self, body: &Body<T>) {
        match body {
            Body::Dropped(i) => {
                if let Some(c) = self.dropped.get(*i as usize) {
                    c.fetch_add(1, Ordering::Relaxed);
                }
            }
            Body::Failed(i, _) => {
                if let Some(c) = self.failed.get(*i as usize) {
                    c.fetch_add(1, Ordering::Relaxed);
                }
            }
            _ => {}
        }
    }

    /// The error an unfinished item gets when the pipeline stops under it.
    pub(crate) fn unfinished(&self, seq: u64) -> Error {
        if self.supervisor.get().is_some()
            && !self.stopping.load(Ordering::Acquire)
            && !self.control_done.load(Ordering::Acquire)
        {
            // The links may close before the control thread has read why the supervisor
            // stopped (`Stopped`, or its death): wait for it (once, bounded) so the items
            // get that cause rather than "shut down".
            let deadline = Instant::now() + Duration::from_secs(2);
            while !self.control_done.load(Ordering::Acquire) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
            self.control_done.store(true, Ordering::Release);
        }
        match &*self.abort.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(Error::Died {
                stage,
                worker,
                cause,
                ..
            }) => Error::Died {
                stage: stage.clone(),
                item: seq,
                worker: *worker,
                cause: format!("{cause}; the pipeline was stopped"),
            },
            _ => Error::ShutDown { item: seq },
        }
    }

    pub(crate) fn set_abort(&self, e: Error) {
        let mut g = self.abort.lock().unwrap_or_else(|p| p.into_inner());
        if g.is_none() {
            *g = Some(e);
        }
    }

    /// A corrupt frame from a worker of process stage `stage` (on the caller's link `c.link`,
    /// which is that worker's slot): the supervisor kills and replaces the worker, and `rx`
    /// discards that link until the replacement says `HELLO`. Without a supervisor (it
    /// never happens) the pipeline is stopped instead. Returns whether to carry on.
    pub(crate) fn report_corrupt<F: std::os::fd::AsFd>(
        &self,
        stage: u32,
        rx: &mut LinkReceiver<F>,
        c: crate::transport::link::Corrupt,
        name: &str,
    ) -> bool {
        tracing::warn!(stage = %name, link = c.link, "forkpipe: corrupt frame from a worker: {}", c.what);
        let Some(sup) = self.supervisor.get().and_then(std::sync::Weak::upgrade) else {
            self.set_abort(Error::Start(format!(
                "corrupt frame from stage '{name}': {}",
                c.what
            )));
            return false;
        };
        rx.void(c.link);
        protocol::send(&*sup, &CallerMsg::Corrupt { stage, report: c });
        true
    }
}
