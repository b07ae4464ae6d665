//! The runtime of [forkpipe](https://docs.rs/forkpipe): stages, pipelines, the supervisor
//! and worker processes, and the socket transport between them.
//!
//! Users depend on the `forkpipe` facade, which re-exports what is public here; the module
//! essays (`link`, `supervisor`, `exec`, `fds`) explain how the runtime works.
#![deny(unsafe_op_in_unsafe_fn)]

mod caller;
mod compose;
mod erase;
mod error;
mod handles;
mod os;
mod pipeline;
mod process;
mod stage;
mod stream;
mod transport;

#[doc(hidden)]
pub use compose::{Append, Chain, Open, Part, Pending, input, kind, out};
pub use error::{Error, Worker};
pub use handles::{Report, Results, Running, StageStats, Stats, Ticket};
pub use pipeline::{FirstStage, PipePending, Pipeline};
#[doc(hidden)]
pub use process::worker::inject_corrupt_frame;
pub use stage::{Consumer, DEFAULT_QUEUE, Emit, InitResult, Items, Producer, Source, Stage};
pub use transport::codec::{FRAME_LIMIT, Wire};
pub use transport::pipe::{PipeReader, PipeWriter};
