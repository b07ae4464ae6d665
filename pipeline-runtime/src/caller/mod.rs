//! What runs in the caller's process: the feeder, thread stages, the bridges to and from
//! process stages, and the bookkeeping they share.

pub(crate) mod bridge;
pub(crate) mod collector;
pub(crate) mod control;
pub(crate) mod engine;
pub(crate) mod fan_in;
pub(crate) mod fan_out;
pub(crate) mod feeder;
pub(crate) mod launch;
pub(crate) mod output;
pub(crate) mod shared;
pub(crate) mod stream_pull;
pub(crate) mod thread_stage;
pub(crate) mod threads;
pub(crate) mod topology;
pub(crate) mod window;
