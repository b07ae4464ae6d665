//! How items move between processes: links (framed records with credit and acks), the
//! record format, runs (many items in one record), the codec, and the byte streams of
//! `pipe_next` pairs.

pub(crate) mod codec;
pub(crate) mod frame;
pub(crate) mod link;
pub(crate) mod pipe;
pub(crate) mod record;
pub(crate) mod run;
