//! What runs in the caller's process: the feeder, thread stages, the bridges to and from
//! process stages, and the bookkeeping they share.

pub(crate) mod bridge;
pub(crate) mod stream_pull;
