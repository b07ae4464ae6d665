//! The runtime of [forkpipe](https://docs.rs/forkpipe): stages, pipelines, the supervisor
//! and worker processes, and the socket transport between them.
//!
//! Users depend on the `forkpipe` facade, which re-exports what is public here.
//!
//! # Module map
//! The public API:
//! - `stage` — [`Stage`], [`Source`], [`Producer`]/[`Consumer`], [`Emit`], [`Items`]: what a
//!   step does and where it runs.
//! - `pipeline` — [`Pipeline`]: the typed builder `pipeline!` expands to, and `run`/`start`.
//! - `handles` — [`Results`], [`Running`], [`Ticket`], [`Stats`], [`Report`].
//! - `error` — [`Error`], the one error type.
//! - `compose` — the traits `pipeline!` composes with (compile-time checks).
//!
//! The machinery, one mechanism per module:
//! - `erase` — type erasure of stages (`dyn AnyStage`), and why; making a shipped stage
//!   again.
//! - `distributed` — scale-out (feature `nats`): `distributed` stages on other hosts
//!   through NATS JetStream; the registry of `#[stage(distributed)]` functions; host mode.
//! - `recipe` — stage identity: how a process stage is made again in a process that did
//!   not inherit it (the fork server's supervisors; later, other hosts). `ctor` — the
//!   recipes `#[stage]` gives its stages.
//! - `guard` — calling user code: `catch_unwind`, the panic hook.
//! - `stream` — running `stream` stages (whole-stream functions).
//! - `progress` — the progress display on stderr (feature `progress`): what it draws,
//!   when, and how it ends.
//! - `caller/` — what runs in the caller's process: `launch` (start in four steps),
//!   `topology` (every socket), `control` (the caller's side of the supervisor), `engine`
//!   (stop and join), `feeder`, `thread_stage`, `bridge` (into and out of process stages),
//!   `output`, `window` (the in-flight bound), `shared`, `threads`, `collector` (order and
//!   accounting at the end), `stream_pull`.
//! - `process/` — what runs in forked processes: `fork_server` (`init()`: the
//!   single-threaded process that forks every supervisor), `supervisor` (its state and event
//!   loop), `spawn` (forking a worker), `death`, `budget` (restarts), `timeout`, `worker` (a
//!   worker's loop), `protocol` (every control message and exit code).
//! - `transport/` — how items move: `link` (framed records, credit, acks, death notices),
//!   `record` (the record format), `codec` (bincode), `pipe` (`pipe_next` byte streams).
//! - `os/` — the operating-system boundary: `sys` (syscalls), `fds` (the registry of the
//!   runtime's descriptors, and what a forked child keeps), `rights` (`SCM_RIGHTS`), `image`
//!   (function addresses valid in every fork of this executable), `current` (this worker's
//!   shared slot). Every `unsafe` operation is here; elsewhere an `unsafe` block only calls
//!   an `unsafe fn` of `os/` whose contract just that caller can keep (see `sys`).
//!
//! # An item's path
//! The **feeder** thread pulls the user's iterator (or submitted work items) within the
//! **window** and numbers each item. Items cross to a process stage over **links**
//! (socketpairs carrying batched records, with credit and acks), from the feeder or from a
//! **bridge** thread; consecutive process stages talk **worker to worker** over a mesh of
//! links, never through the caller. Each **worker** process (forked by the pipeline's
//! **supervisor**, itself forked by the caller or, after `init()`, by the **fork server**)
//! decodes a record, runs the stage function under `catch_unwind`, and sends
//! the outputs on, acking upstream only once they are flushed downstream — so every item is
//! held by exactly one side at every moment, and a dead worker's items are known. Thread
//! stages move batches on bounded channels. At the end a **merger** reads the last process
//! stage's links and the **collector** (in [`Results`] or the ticket resolver) restores
//! input order, refuses duplicates, gives the window's room back, and turns what never came
//! back into errors with a cause.
#![deny(unsafe_op_in_unsafe_fn)]

mod batch;
mod caller;
mod compose;
#[cfg(test)]
mod cost;
mod ctor;
mod distributed;
mod erase;
mod error;
mod guard;
mod handles;
mod item;
mod kernel;
mod meter;
mod os;
mod pipeline;
mod process;
mod progress;
mod recipe;
mod stage;
mod stats;
mod stream;
mod transport;

#[doc(hidden)]
pub use compose::{Append, Chain, Open, Part, Pending, branch, input, items, kind, out};
#[doc(hidden)]
pub use ctor::{ByValue, Ctor, Made, NoValue, Probe, attach};
#[cfg(feature = "nats")]
#[doc(hidden)]
pub use distributed::bare::bare_nats_loop;
#[cfg(feature = "nats")]
pub use distributed::broker::Broker;
#[doc(hidden)]
pub use distributed::registry::{
    Entry as DistributedEntry, TravelingParams, entry as distributed_entry,
};
pub use error::{Error, Worker};
pub use handles::{Report, Results, Running, Ticket};
#[doc(hidden)]
pub use inventory;
pub use pipeline::{FirstStage, PipePending, Pipeline};
pub use process::fork_server::pid as fork_server_pid;
#[doc(hidden)]
pub use process::worker::inject_corrupt_frame;
pub use stage::{
    Consumer, DEFAULT_QUEUE, Emit, InitResult, Items, Producer, RUN_AHEAD, Source, Stage,
};
pub use stats::{StageStats, Stats};
pub use transport::codec::{FRAME_LIMIT, Wire};
pub use transport::pipe::{PipeReader, PipeWriter};

/// Starts the fork server; see the crate docs of `forkpipe::init`. Calling it again is a
/// no-op.
///
/// In a process started as a worker host (`FORKPIPE_HOST=nats://…`, or the argument
/// `--forkpipe-host nats://…`), it then serves the program's distributed stages from that
/// broker and never returns (cargo feature `nats`; without it, that is an error).
pub fn init() -> Result<(), Error> {
    let first = process::fork_server::start_once()?;
    match distributed::host_url() {
        Some(url) if first => distributed::host_mode(&url),
        _ => Ok(()),
    }
}
