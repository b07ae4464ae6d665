//! A distributed stage served on a host: its typed half.
//!
//! A host runs each stage it serves as a local pipeline of that one stage, in worker
//! processes forked through the host's fork server (`init()` started it), so everything a
//! process stage does locally holds on a host too: a worker that segfaults fails the items
//! it held with the usual cause, and is replaced; a timeout kills its worker; and so on.
//! The local pipeline streams: its feeder is the host's *feed* thread, which hands it the
//! units the book plans (decoded, under local numbers; see [`super::book`]) as one batch
//! each, so they travel to the workers as runs; the host's *collect* thread takes its
//! outcomes as they come and writes them into the book, renumbered to the caller's
//! sequence numbers and naming the host.

use std::any::Any;
use std::sync::{Arc, Mutex};

use crossbeam_channel::{Receiver, select};

use super::book::{Book, Job, Outcomes, Owner, ValueOutcome};
use super::wire::{Spans, StageSpec};
use crate::batch::Batch;
use crate::caller::engine::Engine;
use crate::caller::launch::FeederFn;
use crate::caller::output::{IDLE_SERVICE, Output};
use crate::caller::shared::Shared;
use crate::error::{Error, Worker};
use crate::pipeline::Pipeline;
use crate::stage::{Body, Rec, Stage};

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

/// A stage being served (its local pipeline).
pub(crate) trait Serve: Send + Sync {
    /// Stops the stage now (its workers are killed and reaped).
    fn kill(&self);
}

/// What the untyped half gives a stage it serves: the messages it takes, the book, and how
/// to claim items (publish and flush; see [`super::book`]).
pub(crate) struct Feeding {
    pub jobs: Receiver<Job>,
    pub book: Arc<Book>,
    pub claim: Claim,
}

/// Claims the units of a round: per message key, its records' numbers.
pub(crate) type Claim = Box<dyn Fn(Vec<(String, Spans)>) + Send>;

/// Starts serving a stage made by its registry entry (a boxed `Stage<In, Out>`).
pub(crate) type StartFn =
    fn(Box<dyn Any + Send>, &StageSpec, &HostId, Feeding) -> Result<Box<dyn Serve>, String>;

pub(crate) fn start<In: Send + 'static, Out: Send + 'static>(
    made: Box<dyn Any + Send>,
    spec: &StageSpec,
    host: &HostId,
    feeding: Feeding,
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
    let book = Arc::clone(&feeding.book);
    let feed = Feed {
        f: feeding,
        decode_in: wire.decode_in,
        stage: spec.name.clone(),
        pid: host.pid,
    };
    let feeder: FeederFn = Box::new(move |_, out, rt| {
        let out = *out
            .downcast::<Output<In>>()
            .expect("output of the input type");
        let stop = rt.stop.clone();
        rt.threads.spawn("host-feed", move || feed.run(out, &stop))
    });
    let (engine, rx) = Pipeline::new(stage)
        .progress(false)
        .launch_fed(feeder)
        .map_err(|e| e.to_string())?;
    let collect = Collect {
        book,
        encode_out: wire.encode_out,
        host: host.clone(),
        stage: spec.name.clone(),
    };
    let shared = Arc::clone(&engine.shared);
    std::thread::Builder::new()
        .name("forkpipe-host-collect".into())
        .spawn(move || collect.run(&rx, &shared))
        .map_err(|e| format!("could not spawn a thread: {e}"))?;
    Ok(Box::new(Served {
        engine: Mutex::new(engine),
    }))
}

struct Served {
    engine: Mutex<Engine>,
}

impl Serve for Served {
    fn kill(&self) {
        self.engine.lock().unwrap_or_else(|p| p.into_inner()).kill();
    }
}

/// The feed thread: the local pipeline's feeder.
struct Feed<In> {
    f: Feeding,
    decode_in: fn(&[u8]) -> Result<In, String>,
    stage: String,
    pid: u32,
}

impl<In> Feed<In> {
    /// Takes messages in, and hands the units the book plans to the local pipeline, each
    /// claimed first; until the pipeline stops.
    fn run(self, mut out: Output<In>, stop: &Receiver<()>) {
        loop {
            while let Ok(job) = self.f.jobs.try_recv() {
                self.f.book.add(job);
            }
            let units = self.f.book.plan();
            if units.is_empty() {
                // Nothing to hand over: wait for a message or for room (reading the local
                // pipeline's acks and death notices meanwhile).
                select! {
                    recv(self.f.jobs) -> j => match j {
                        Ok(job) => self.f.book.add(job),
                        Err(_) => return,
                    },
                    recv(self.f.book.woken()) -> _ => {}
                    recv(stop) -> _ => return,
                    default(IDLE_SERVICE) => if out.service().is_err() {
                        return;
                    },
                }
                continue;
            }
            (self.f.claim)(
                units
                    .iter()
                    .map(|u| (u.key.clone(), u.claim.clone()))
                    .collect(),
            );
            for u in units {
                let batch: Batch<In> = (u.vals.iter().enumerate())
                    .map(|(k, r)| self.rec(u.base + k as u64, &u.payload[r.clone()]))
                    .collect();
                if out.send(batch, stop).is_err() {
                    return;
                }
            }
            if out.flush().is_err() {
                return;
            }
        }
    }

    /// The local record of one value (a value that cannot be decoded fails its item).
    fn rec(&self, seq: u64, v: &[u8]) -> Rec<In> {
        let body = match (self.decode_in)(v) {
            Ok(x) => Body::One(x),
            Err(message) => Body::Failed(
                0,
                Box::new(Error::Codec {
                    stage: self.stage.clone(),
                    item: seq,
                    worker: Worker::Process(self.pid),
                    what: "decode the input of".into(),
                    message,
                }),
            ),
        };
        Rec { seq, body }
    }
}

/// The collect thread: the local pipeline's outcomes into the book.
struct Collect<Out> {
    book: Arc<Book>,
    encode_out: fn(&Out, &mut Vec<u8>) -> Result<(), String>,
    host: HostId,
    stage: String,
}

impl<Out> Collect<Out> {
    fn run(self, rx: &Receiver<Batch<Out>>, shared: &Shared) {
        for batch in rx {
            let mut g = self.book.outcomes();
            for rec in batch {
                // (No owner: a repeat after a local worker's death.)
                if let Some(o) = g.owner(rec.seq) {
                    self.put(&mut g, o, rec.body);
                    g.done(rec.seq, o);
                }
            }
        }
        // The local pipeline ended (the run is over, or it failed): what it still held
        // gets the cause.
        let out = self.book.outcomes().all_out();
        let causes: Vec<Error> = out.iter().map(|&(seq, _)| shared.unfinished(seq)).collect();
        let mut g = self.book.outcomes();
        for ((seq, o), e) in out.into_iter().zip(causes) {
            g.put(o, Err(self.host.wrap(e.renumbered(o.seq))));
            g.done(seq, o);
        }
    }

    fn put(&self, g: &mut Outcomes<'_>, o: Owner, body: Body<Out>) {
        match body {
            Body::One(v) if !o.many => {
                if let Err(message) = g.one(o, |b| (self.encode_out)(&v, b)) {
                    g.put(o, Err(self.codec(o.seq, message)));
                }
            }
            Body::One(v) => g.put(o, self.encode(o.seq, std::slice::from_ref(&v))),
            Body::Many(vs) => g.put(o, self.encode(o.seq, &vs)),
            Body::Dropped(_) | Body::Consumed(..) => g.put(o, Ok(Vec::new())),
            Body::Failed(_, e) => g.put(o, Err(self.host.wrap(e.renumbered(o.seq)))),
        }
    }

    fn encode(&self, seq: u64, outs: &[Out]) -> ValueOutcome {
        let mut bytes = Vec::with_capacity(outs.len());
        for o in outs {
            let mut b = Vec::new();
            (self.encode_out)(o, &mut b).map_err(|m| self.codec(seq, m))?;
            bytes.push(b);
        }
        Ok(bytes)
    }

    fn codec(&self, seq: u64, message: String) -> Box<Error> {
        let e = Error::Codec {
            stage: self.stage.clone(),
            item: seq,
            worker: Worker::Process(self.host.pid),
            what: "encode the output of".into(),
            message,
        };
        self.host.wrap(e)
    }
}
