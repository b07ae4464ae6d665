//! A distributed stage served on a host: its typed half.
//!
//! A host runs each stage it serves as a local pipeline of that one stage, in worker
//! processes forked through the host's fork server (`init()` started it), so everything a
//! process stage does locally holds on a host too: a worker that segfaults fails the items
//! it held with the usual cause, and is replaced; a timeout kills its worker; and so on.
//! This file turns a broker message's records into submitted items and the items' outcomes
//! back into records, renumbered to the caller's sequence numbers and naming the host.

use std::any::Any;

use crate::error::{Error, Worker};
use crate::handles::{Running, Ticket};
use crate::pipeline::Pipeline;
use crate::stage::{Stage, WireOps};

use super::wire::{StageSpec, WBody, WRec};

/// Who this host is, as errors name it.
#[derive(Debug, Clone)]
pub(crate) struct HostId {
    pub name: String,
    pub pid: u32,
}

impl HostId {
    /// `FORKPIPE_HOST_NAME`, else the machine's hostname; and this process's pid.
    pub(crate) fn of_this_process() -> Self {
        let name = std::env::var("FORKPIPE_HOST_NAME")
            .ok()
            .filter(|n| !n.is_empty());
        let name = name.unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "localhost".into())
        });
        HostId {
            name,
            pid: std::process::id(),
        }
    }

    /// `error`, as seen on this host.
    pub(crate) fn wrap(&self, error: Error) -> Box<Error> {
        Box::new(Error::Remote {
            host: self.name.clone(),
            pid: self.pid,
            error: Box::new(error),
        })
    }
}

/// A stage being served: takes one message's records at a time.
pub(crate) trait Serve: Send + Sync {
    /// Submits the records' items (blocking while the stage is full).
    fn submit(&self, recs: Vec<WRec>) -> Box<dyn Pending>;
    /// Stops the stage now (its workers are killed and reaped).
    fn kill(&self);
}

/// One message's records, submitted.
pub(crate) trait Pending: Send {
    /// Waits for every item's outcome.
    fn finish(self: Box<Self>) -> Vec<WRec>;
}

/// Starts serving a stage made by its registry entry (a boxed `Stage<In, Out>`).
pub(crate) type StartFn =
    fn(Box<dyn Any + Send>, &StageSpec, &HostId) -> Result<Box<dyn Serve>, String>;

pub(crate) fn start<In: Send + 'static, Out: Send + 'static>(
    made: Box<dyn Any + Send>,
    spec: &StageSpec,
    host: &HostId,
) -> Result<Box<dyn Serve>, String> {
    let mut stage = *made
        .downcast::<Stage<In, Out>>()
        .map_err(|_| "the registry made a stage of other types".to_string())?;
    let wire = stage
        .wire
        .ok_or("its items cannot cross a process boundary")?;
    stage.name = spec.name.clone().into();
    stage.opts = spec.opts.clone();
    // On a host a stage always runs in worker processes: a crash fails its items, not
    // the host.
    stage.opts.process = true;
    stage.opts.distributed = false;
    let running = Pipeline::new(stage)
        .progress(false)
        .start()
        .map_err(|e| e.to_string())?;
    Ok(Box::new(Served {
        running,
        wire,
        idx: spec.idx,
        name: spec.name.clone(),
        host: host.clone(),
    }))
}

struct Served<In, Out> {
    running: Running<In, Out>,
    wire: WireOps<In, Out>,
    idx: u32,
    name: String,
    host: HostId,
}

/// An item's place in a [`Waiting`] message: its tickets (one per value it had), or its
/// record already made.
enum Slot<Out> {
    Tickets(u64, Vec<Ticket<Out>>),
    Ready(WRec),
}

struct Waiting<In, Out> {
    slots: Vec<Slot<Out>>,
    wire: WireOps<In, Out>,
    idx: u32,
    name: String,
    host: HostId,
}

impl<In: Send + 'static, Out: Send + 'static> Serve for Served<In, Out> {
    fn submit(&self, recs: Vec<WRec>) -> Box<dyn Pending> {
        let slots = recs.into_iter().map(|r| self.slot(r)).collect();
        Box::new(Waiting {
            slots,
            wire: self.wire,
            idx: self.idx,
            name: self.name.clone(),
            host: self.host.clone(),
        })
    }

    fn kill(&self) {
        self.running.kill();
    }
}

impl<In: Send + 'static, Out: Send + 'static> Served<In, Out> {
    fn slot(&self, rec: WRec) -> Slot<Out> {
        let seq = rec.seq;
        let values = match rec.body {
            WBody::One(v) => vec![v],
            WBody::Many(vs) => vs,
            body => return Slot::Ready(WRec { seq, body }),
        };
        let mut tickets = Vec::with_capacity(values.len());
        for v in values {
            let item = match (self.wire.decode_in)(&v) {
                Ok(x) => x,
                Err(message) => return self.failed(seq, "decode the input of", message),
            };
            match self.running.submit(item) {
                Ok(t) => tickets.push(t),
                Err(_) => return self.shut(seq),
            }
        }
        Slot::Tickets(seq, tickets)
    }

    fn failed(&self, seq: u64, what: &str, message: String) -> Slot<Out> {
        let e = Error::Codec {
            stage: self.name.clone(),
            item: seq,
            worker: Worker::Process(self.host.pid),
            what: what.into(),
            message,
        };
        Slot::Ready(WRec {
            seq,
            body: WBody::Failed(self.idx, self.host.wrap(e)),
        })
    }

    fn shut(&self, seq: u64) -> Slot<Out> {
        Slot::Ready(WRec {
            seq,
            body: WBody::Failed(self.idx, self.host.wrap(Error::ShutDown { item: seq })),
        })
    }
}

impl<In: Send + 'static, Out: Send + 'static> Pending for Waiting<In, Out> {
    fn finish(self: Box<Self>) -> Vec<WRec> {
        let Waiting {
            slots,
            wire,
            idx,
            name,
            host,
        } = *self;
        let outcome = |seq: u64, tickets: Vec<Ticket<Out>>| -> WBody {
            let mut outs = Vec::new();
            for t in tickets {
                match t.wait_all() {
                    Ok(mut v) => outs.append(&mut v),
                    Err(e) => return WBody::Failed(idx, host.wrap(e.renumbered(seq))),
                }
            }
            let mut bytes = Vec::with_capacity(outs.len());
            for o in &outs {
                let mut b = Vec::new();
                if let Err(message) = (wire.encode_out)(o, &mut b) {
                    let e = Error::Codec {
                        stage: name.clone(),
                        item: seq,
                        worker: Worker::Process(host.pid),
                        what: "encode the output of".into(),
                        message,
                    };
                    return WBody::Failed(idx, host.wrap(e));
                }
                bytes.push(b);
            }
            match bytes.len() {
                0 => WBody::Dropped(idx),
                1 => WBody::One(bytes.pop().expect("one output")),
                _ => WBody::Many(bytes),
            }
        };
        slots
            .into_iter()
            .map(|s| match s {
                Slot::Ready(r) => r,
                Slot::Tickets(seq, tickets) => WRec {
                    seq,
                    body: outcome(seq, tickets),
                },
            })
            .collect()
    }
}
