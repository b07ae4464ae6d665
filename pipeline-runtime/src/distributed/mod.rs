//! Scale-out: a pipeline's `distributed` stages run on other hosts, through a NATS
//! JetStream broker (cargo feature `nats`).
//!
//! # The problem
//! One machine is not enough for a stage, and the user wants its workers on several hosts
//! without rewriting the pipeline, with the guarantees of a local run: every item exactly
//! one outcome, order restored, backpressure end to end, errors that say where and why,
//! and nothing left behind. The network adds what a socketpair never does: a host can
//! vanish without a death notice, stall and come back, or answer twice; the broker itself
//! can go away.
//!
//! # The approach
//! The broker is JetStream, whose semantics are close to ours: per run a work-queue stream
//! (`FP_<run>`, in memory, bounded, dedup by `Nats-Msg-Id`), one subject per stage
//! (`fp.<run>.in.<pos>`, results on `fp.<run>.out`) and one durable pull consumer per
//! stage (`s<pos>`), shared by every host serving it (each message goes to one), with
//! explicit acks, `ack_wait` redelivery, `max_deliver`, and `max_ack_pending` as the
//! stage's credit. A broker message carries a batch of records (`wire`).
//!
//! - Hosts run the user's binary; `init()` turns a process started with
//!   `FORKPIPE_HOST=nats://…` into a host (`host`) that serves the stages of announced
//!   runs, found by name in the registry of `#[stage(distributed)]` functions
//!   ([`registry`]) and checked by fingerprint, each as a local pipeline of worker
//!   processes: its broker side (`serving`: pull, claim, forward), its book of the
//!   messages in hand (`book`) and its typed feed and collect threads (`served`), which
//!   stream the items through the local pipeline.
//! - In the caller, `Pipeline::on` replaces each run of
//!   consecutive distributed stages by one piece (`group`): a feed thread batches the
//!   items, a broker task (`caller`) owns the run on the broker and its book (the items
//!   without an outcome: `seqset`), a collect thread hands the results on. Between the
//!   stages of a group, items go host to host.
//!
//! # When a host dies
//! A host claims the items it is about to start (a control message, flushed to the
//! broker before they start; as many ahead as its workers finish in a few milliseconds)
//! and says when it passed a message on; it beats every 100 ms. A host silent for
//! `host_timeout` is taken for dead: the items it claimed fail, naming it (a crashed item
//! is not run again, as locally), and the hosts are told to skip those items when the
//! broker gives their messages again. The rest of those messages, and the messages it had
//! pulled but not started, never ran: the broker gives them to other hosts after
//! `ack_wait`. A host that only stalled and comes back publishes results that are dropped
//! twice over: by the stream's dedup (same `Nats-Msg-Id` as the redelivered copy's) and by
//! the caller's per-item book, which lets one outcome per item out.
//!
//! # Invariants
//! - Nothing of tokio or async-nats is built without the `nats` feature; the registry is
//!   (it is tiny, and `#[stage(distributed)]` fills it either way).
//! - Each tokio runtime lives on a thread started after every fork of its pipeline.
//! - Memory is bounded: the pipeline's window bounds the items in the group; the stream is
//!   bounded; a host holds at most a few messages of a stage it has not handed over (and
//!   `max_ack_pending` with the other hosts), and its room of items in its workers.

pub(crate) mod registry;

#[cfg(feature = "nats")]
pub(crate) mod bare;
#[cfg(feature = "nats")]
pub(crate) mod book;
#[cfg(feature = "nats")]
pub(crate) mod broker;
#[cfg(feature = "nats")]
pub(crate) mod caller;
#[cfg(feature = "nats")]
pub(crate) mod ends;
#[cfg(feature = "nats")]
pub(crate) mod group;
#[cfg(feature = "nats")]
pub(crate) mod host;
#[cfg(feature = "nats")]
mod nats;
#[cfg(feature = "nats")]
mod seqset;
#[cfg(feature = "nats")]
pub(crate) mod served;
#[cfg(feature = "nats")]
pub(crate) mod serving;
#[cfg(feature = "nats")]
pub(crate) mod wire;

/// Serves this program's distributed stages from `url`, never returning (see
/// `forkpipe::init`).
#[cfg(feature = "nats")]
pub(crate) fn host_mode(url: &str) -> Result<(), crate::Error> {
    host::serve_forever(url)
}

/// Without the `nats` feature a process started as a host cannot be one.
#[cfg(not(feature = "nats"))]
pub(crate) fn host_mode(url: &str) -> Result<(), crate::Error> {
    Err(crate::Error::Start(format!(
        "this process was started as a worker host of {url} (FORKPIPE_HOST or \
         --forkpipe-host), but the program was built without forkpipe's `nats` feature"
    )))
}

/// Where this process should serve as a host: `FORKPIPE_HOST`, or the argument after
/// `--forkpipe-host` (or `--forkpipe-host=URL`).
pub(crate) fn host_url() -> Option<String> {
    let mut args = std::env::args();
    while let Some(a) = args.next() {
        if a == "--forkpipe-host" {
            return args.next();
        }
        if let Some(url) = a.strip_prefix("--forkpipe-host=") {
            return Some(url.to_string());
        }
    }
    std::env::var("FORKPIPE_HOST")
        .ok()
        .filter(|u| !u.is_empty())
}
