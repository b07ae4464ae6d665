//! The runtime of [forkpipe](https://docs.rs/forkpipe): stages, pipelines, the supervisor
//! and worker processes, and the socket transport between them.
//!
//! Users depend on the `forkpipe` facade, which re-exports what is public here; the module
//! essays (`link`, `supervisor`, `exec`, `fds`) explain how the runtime works.
#![deny(unsafe_op_in_unsafe_fn)]

mod codec;
mod compose;
mod error;
mod exec;
mod fds;
mod link;
mod pipe;
mod pipeline;
mod record;
mod stage;
mod stream;
mod supervisor;
mod sys;
mod worker;

pub use codec::{FRAME_LIMIT, Wire};
#[doc(hidden)]
pub use compose::{Append, Chain, Open, Part, Pending, input, kind, out};
pub use error::{Error, Worker};
pub use pipe::{PipeReader, PipeWriter};
pub use pipeline::{
    FirstStage, PipePending, Pipeline, Report, Results, Running, StageStats, Stats, Ticket,
};
pub use stage::{Consumer, DEFAULT_QUEUE, Emit, InitResult, Items, Producer, Source, Stage};
#[doc(hidden)]
pub use worker::inject_corrupt_frame;
