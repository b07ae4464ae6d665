//! # forkpipe
//!
//! Typed, multi-process pipelines from ordinary functions:
//!
//! ```
//! use forkpipe::prelude::*;
//!
//! #[stage(source)]
//! fn numbers(n: u64) -> impl Iterator<Item = u64> {
//!     0..n
//! }
//!
//! #[stage(subprocess, workers = 2)]
//! fn square(x: u64) -> u64 {
//!     x * x
//! }
//!
//! #[stage]
//! fn odd_only(x: u64) -> Option<u64> {
//!     (x % 2 == 1).then_some(x)
//! }
//!
//! #[forkpipe::main] // forkpipe::init() first: workers come from a single-threaded fork server
//! fn main() -> Result<(), forkpipe::Error> {
//!     let out: Vec<u64> = pipeline![numbers(6) | square | odd_only]
//!         .results()?
//!         .collect::<Result<_, _>>()?;
//!     assert_eq!(out, [1, 9, 25]);
//!     assert_eq!(square(3), 9); // still an ordinary function
//!     Ok(())
//! }
//! ```
//!
//! `#[stage]` turns a function into a pipeline stage; `pipeline![a | b | c]` composes
//! stages, and the compiler checks that each stage's output is the next one's input.
//! Stages marked `subprocess` (here `square`, in two worker processes) run in forked worker
//! processes connected by Unix sockets; the others run on threads of your process.
//!
//! ## The rules, once each
//!
//! - **Order**: results come in input order unless a stage is `unordered`.
//! - **Exactly one outcome per item**: after `run`/`start` succeed, every input item ends as
//!   its outputs (zero or more) or one [`Error`] naming the stage, the item's number, the
//!   worker (pid for a process) and the cause. `Err` and panics fail only their item.
//! - **Backpressure**: input is pulled only as queues free up; memory stays bounded.
//! - **Drop stops everything**: dropping [`Results`] or [`Running`] kills the workers and
//!   returns only after every process is reaped and every descriptor closed.
//! - **Process boundary**: items of `subprocess` stages travel as `bincode` bytes, so they
//!   must be `Serialize + DeserializeOwned + Send + 'static`.
//!
//! The builder API ([`Stage`], [`Pipeline`]) is what the macros expand to; use it to build
//! pipelines in loops or from configuration.

pub use pipeline_macros::{main, pipeline, stage};
pub use pipeline_runtime::{
    Consumer, DEFAULT_QUEUE, Emit, Error, FRAME_LIMIT, FirstStage, Items, PipePending, PipeReader,
    PipeWriter, Pipeline, Producer, RUN_AHEAD, Report, Results, Running, Source, Stage, StageStats,
    Stats, Ticket, Wire, Worker,
};
pub use pipeline_runtime::{fork_server_pid, init};

/// The broker of a pipeline's `distributed` stages (cargo feature `nats`): see
/// [`Pipeline::on`].
#[cfg(feature = "nats")]
pub use pipeline_runtime::Broker;

/// Everything a pipeline author needs: `use forkpipe::prelude::*;`.
pub mod prelude {
    pub use crate::{
        Emit, Error, PipeReader, PipeWriter, Pipeline, Source, Stage, pipeline, stage,
    };
}

#[doc(hidden)]
pub mod __private {
    /// The bare async-nats loop W6 compares against (benches only).
    #[cfg(feature = "nats")]
    pub use pipeline_runtime::bare_nats_loop;
    /// Fault injection for forkpipe's own tests (writes a corrupt frame on the calling
    /// worker's output links). Not an API.
    pub use pipeline_runtime::inject_corrupt_frame;
    pub use pipeline_runtime::{
        Consumer, Emit, InitResult, Items, PipePending, PipeReader, PipeWriter, Pipeline, Producer,
        Source, Stage, Wire,
    };
    /// What `#[stage(distributed)]` registers its stage with (see the runtime's
    /// `distributed::registry`).
    pub mod distributed {
        pub use pipeline_runtime::inventory::submit;
        pub use pipeline_runtime::{
            DistributedEntry as Entry, TravelingParams, distributed_entry as entry,
        };
    }
    /// What `#[stage]` uses to give a stage its recipe (see the runtime's `recipe` module).
    pub mod recipe {
        pub use pipeline_runtime::{ByValue, Ctor, Made, NoValue, Probe, attach};
    }
    /// The traits `pipeline!` composes with (see the runtime's `compose` module).
    pub mod compose {
        pub use pipeline_runtime::{
            Append, Chain, Open, Part, Pending, branch, input, items, kind, out,
        };
    }
}
