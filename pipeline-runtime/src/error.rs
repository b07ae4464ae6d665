//! The one error type.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Which worker ran (or held) an item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Worker {
    /// A forked worker process.
    Process(u32),
    /// A thread of the caller's process (index within its stage).
    Thread(usize),
}

impl Worker {
    /// The worker's process id, if it is a process.
    pub fn pid(&self) -> Option<u32> {
        match self {
            Worker::Process(p) => Some(*p),
            Worker::Thread(_) => None,
        }
    }
}

impl fmt::Display for Worker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Worker::Process(pid) => write!(f, "worker pid {pid}"),
            Worker::Thread(i) => write!(f, "thread worker {i}"),
        }
    }
}

/// Everything that can go wrong, for an item or for a whole pipeline.
///
/// Every variant about an item names the stage, the item's sequence number (its position
/// in the input, from 0) and the worker, and reads as a sentence:
/// `stage 'enrich' (worker pid 4242) died on item 17: killed by SIGSEGV`.
#[derive(Debug, Clone, PartialEq, thiserror::Error, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Error {
    /// The stage function returned `Err`; `message` is that error's `Display` text.
    #[error("stage '{stage}' ({worker}) failed on item {item}: {message}")]
    Failed {
        /// The stage's name.
        stage: String,
        /// The item's sequence number.
        item: u64,
        /// The worker that ran it.
        worker: Worker,
        /// The error's text.
        message: String,
    },
    /// The stage function panicked.
    #[error("stage '{stage}' ({worker}) panicked on item {item}: {message}")]
    Panicked {
        /// The stage's name.
        stage: String,
        /// The item's sequence number.
        item: u64,
        /// The worker that ran it.
        worker: Worker,
        /// The panic message.
        message: String,
    },
    /// The worker process died while it held the item.
    #[error("stage '{stage}' ({worker}) died on item {item}: {cause}")]
    Died {
        /// The stage's name.
        stage: String,
        /// The item's sequence number.
        item: u64,
        /// The worker that died.
        worker: Worker,
        /// How it died: `killed by SIGSEGV`, `exited with code 3 before answering`, …
        cause: String,
    },
    /// The stage's workers kept dying: past the restart budget, its remaining items fail
    /// fast instead of forking workers in a loop.
    #[error(
        "stage '{stage}' gave up on item {item} after {restarts} restarts in {secs:.1} s; last cause: {cause}"
    )]
    GaveUp {
        /// The stage's name.
        stage: String,
        /// The item's sequence number.
        item: u64,
        /// Restarts counted in the budget window.
        restarts: u32,
        /// Length of that window, in seconds.
        secs: f64,
        /// How the last worker died.
        cause: String,
    },
    /// The item or its output could not be encoded or decoded.
    #[error("stage '{stage}' ({worker}) could not {what} item {item}: {message}")]
    Codec {
        /// The stage's name.
        stage: String,
        /// The item's sequence number.
        item: u64,
        /// The worker involved.
        worker: Worker,
        /// `encode the input of`, `decode`, `encode the output of`, `decode the output of`.
        what: String,
        /// The codec's message.
        message: String,
    },
    /// The pipeline was stopped before the item finished (it may not have run at all).
    #[error("item {item}: shut down before completion")]
    ShutDown {
        /// The item's sequence number, when known.
        item: u64,
    },
    /// `Ticket::wait` on an item that a stage dropped (returned `None` or emitted nothing).
    #[error("item {item} has no output: stage '{stage}' dropped it")]
    NoOutput {
        /// The stage that dropped it.
        stage: String,
        /// The item's sequence number.
        item: u64,
    },
    /// `Ticket::wait` on an item with several outputs (use `Ticket::wait_all`).
    #[error("item {item} has {count} outputs; use `Ticket::wait_all` to get them all")]
    ManyOutputs {
        /// The item's sequence number.
        item: u64,
        /// How many outputs it had.
        count: usize,
    },
    /// The input iterator (or the `source` stage) panicked; the items before it were
    /// delivered.
    #[error("{} panicked after item {item}: {message}", match stage { Some(s) => format!("source '{s}'"), None => "input iterator".to_string() })]
    Input {
        /// The `source` stage, if the pipeline starts with one.
        stage: Option<String>,
        /// Items pulled before the panic.
        item: u64,
        /// The panic message.
        message: String,
    },
    /// A stage's `init` failed when the pipeline started (nothing was left behind).
    #[error("could not start the pipeline: init of stage '{stage}' ({worker}) failed: {message}")]
    Init {
        /// The stage's name.
        stage: String,
        /// The worker whose init failed.
        worker: Worker,
        /// The init's error text, or its panic message.
        message: String,
    },
    /// The pipeline could not start (nothing was left behind).
    #[error("could not start the pipeline: {0}")]
    Start(String),
    /// The pipeline is not running any more (submit after shutdown, wait after drop).
    #[error("the pipeline has shut down")]
    Closed,
    /// An item of a `distributed` stage failed on another host: `error` is what that host's
    /// own pipeline said (naming the stage, the item and the worker pid there).
    #[error("{error} (on host '{host}', pid {pid})")]
    Remote {
        /// The host's name (`FORKPIPE_HOST_NAME`, else its hostname).
        host: String,
        /// The host process's pid.
        pid: u32,
        /// The error, as that host saw it (its item number is the caller's).
        error: Box<Error>,
    },
    /// An item of a `distributed` stage could not be run through the broker: no host serves
    /// the stage, the broker is unreachable, the item is larger than the broker takes, …
    #[error("stage '{stage}' could not run item {item} through the broker: {message}")]
    Broker {
        /// The stage's name.
        stage: String,
        /// The item's sequence number.
        item: u64,
        /// What went wrong, naming the broker or the host.
        message: String,
    },
}

impl Error {
    /// The stage this error is about, if any.
    pub fn stage(&self) -> Option<&str> {
        match self {
            Error::Failed { stage, .. }
            | Error::Panicked { stage, .. }
            | Error::Died { stage, .. }
            | Error::Codec { stage, .. }
            | Error::GaveUp { stage, .. }
            | Error::Init { stage, .. }
            | Error::NoOutput { stage, .. } => Some(stage),
            Error::Input { stage: Some(s), .. } => Some(s),
            Error::Broker { stage, .. } => Some(stage),
            Error::Remote { error, .. } => error.stage(),
            _ => None,
        }
    }

    /// The item's sequence number, if this error is about one item.
    pub fn item(&self) -> Option<u64> {
        match self {
            Error::Failed { item, .. }
            | Error::Panicked { item, .. }
            | Error::Died { item, .. }
            | Error::Codec { item, .. }
            | Error::GaveUp { item, .. }
            | Error::ShutDown { item }
            | Error::NoOutput { item, .. }
            | Error::ManyOutputs { item, .. }
            | Error::Broker { item, .. } => Some(*item),
            Error::Remote { error, .. } => error.item(),
            _ => None,
        }
    }

    /// The same error about item `seq` instead (a branch of a fan-out numbers the items
    /// it is given itself; the outer pipeline's number is the user's).
    pub(crate) fn renumbered(mut self, seq: u64) -> Error {
        match &mut self {
            Error::Failed { item, .. }
            | Error::Panicked { item, .. }
            | Error::Died { item, .. }
            | Error::Codec { item, .. }
            | Error::GaveUp { item, .. }
            | Error::ShutDown { item }
            | Error::NoOutput { item, .. }
            | Error::ManyOutputs { item, .. }
            | Error::Broker { item, .. } => *item = seq,
            Error::Remote { error, .. } => {
                let inner = std::mem::replace(&mut **error, Error::Closed);
                **error = inner.renumbered(seq);
            }
            _ => {}
        }
        self
    }

    /// The worker involved, if any.
    pub fn worker(&self) -> Option<Worker> {
        match self {
            Error::Failed { worker, .. }
            | Error::Panicked { worker, .. }
            | Error::Died { worker, .. }
            | Error::Init { worker, .. }
            | Error::Codec { worker, .. } => Some(*worker),
            Error::Remote { error, .. } => error.worker(),
            _ => None,
        }
    }

    /// The host an item of a `distributed` stage failed on, if it did on one: (its name,
    /// its pid).
    pub fn host(&self) -> Option<(&str, u32)> {
        match self {
            Error::Remote { host, pid, .. } => Some((host, *pid)),
            _ => None,
        }
    }
}

/// The payload a `.when` determiner's panic is re-raised with: its message, to be told
/// apart from a panic of the stage function (the guard names the stage).
pub(crate) struct DeterminerPanic(pub(crate) String);

/// The text of a panic payload.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_string()
    }
}
