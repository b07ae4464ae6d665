//! The socket plan of a pipeline: every socket it needs, made at start before the supervisor
//! is forked (so the supervisor inherits the workers' ends and the caller keeps its own).
//!
//! *Link stages* talk over sockets: process stages, and both halves of a `pipe_next` pair
//! (on threads unless `subprocess`). Along each run of consecutive link stages:
//! - every worker of the run's first stage has an input link from the caller (the feeder,
//!   or a dispatcher thread when a thread stage comes before);
//! - between two link stages there is a mesh: every worker of stage *i* has a link to every
//!   worker of stage *i + 1* — except inside a `pipe_next` couple, where producer *j* talks
//!   to consumer *j* only, over a link for the items and a byte stream for the bytes;
//! - every worker of the run's last stage has an output link to the caller (a merger).
//!
//! Links are `SOCK_SEQPACKET` pairs, streams `SOCK_STREAM` pairs; all are runtime
//! descriptors ([`crate::os::fds`]), so no forked child keeps one it does not own.

use std::io;
use std::sync::Arc;

use crate::erase::AnyStage;
use crate::os::fds::{self, RtFd};
use crate::stage::PipeSide;

/// One worker's ends of its sockets.
#[derive(Debug, Default)]
pub(crate) struct WorkerEnds {
    pub ins: Vec<RtFd>,
    pub outs: Vec<RtFd>,
    /// A `pipe_next` half: its couple's byte stream.
    pub stream: Option<RtFd>,
}

/// One stage's sockets: the caller's ends, and each worker's.
#[derive(Debug, Default)]
pub(crate) struct StageEnds {
    /// The caller writes the stage's input on these (one per worker).
    pub caller_in: Vec<RtFd>,
    /// The caller reads the stage's output on these (one per worker).
    pub caller_out: Vec<RtFd>,
    pub workers: Vec<WorkerEnds>,
}

/// Every socket of a pipeline, by stage.
#[derive(Debug)]
pub(crate) struct Topology {
    pub stages: Vec<StageEnds>,
}

/// What kind of piece each stage is.
#[derive(Clone, Copy)]
pub(crate) struct Kinds<'a>(pub &'a [Arc<dyn AnyStage>]);

impl Kinds<'_> {
    /// Runs in worker processes.
    pub(crate) fn process(self, i: usize) -> bool {
        i < self.0.len() && self.0[i].opts().process
    }

    /// Talks over sockets: a process stage or a `pipe_next` half.
    pub(crate) fn link(self, i: usize) -> bool {
        i < self.0.len() && (self.0[i].opts().process || self.0[i].opts().pipe.is_some())
    }

    /// Items sent to stage `i` may travel as runs: it and every link stage after it, up to
    /// the next piece in the caller, answer runs (ordinary process stages; not a `pipe_next`
    /// half nor a `stream` stage).
    pub(crate) fn runs(self, i: usize) -> bool {
        (i..self.0.len()).take_while(|&j| self.link(j)).all(|j| {
            let o = self.0[j].opts();
            o.process && !o.stream && o.pipe.is_none()
        })
    }

    fn producer(self, i: usize) -> bool {
        i < self.0.len() && self.0[i].opts().pipe == Some(PipeSide::Producer)
    }
}

impl Topology {
    /// Makes every socket of the pipeline `stages`.
    pub(crate) fn plan(stages: &[Arc<dyn AnyStage>]) -> io::Result<Topology> {
        let kinds = Kinds(stages);
        let mut topo = Topology {
            stages: stages
                .iter()
                .map(|s| StageEnds {
                    workers: (0..s.opts().workers)
                        .map(|_| WorkerEnds::default())
                        .collect(),
                    ..StageEnds::default()
                })
                .collect(),
        };
        for i in (0..stages.len()).filter(|&i| kinds.link(i)) {
            if i == 0 || !kinds.link(i - 1) {
                topo.inputs_from_caller(i)?;
            }
            if kinds.producer(i) {
                topo.couples(i)?;
            } else if kinds.link(i + 1) {
                topo.mesh(i)?;
            } else {
                topo.outputs_to_caller(i)?;
            }
        }
        Ok(topo)
    }

    fn inputs_from_caller(&mut self, i: usize) -> io::Result<()> {
        let st = &mut self.stages[i];
        for w in st.workers.iter_mut() {
            let (a, b) = fds::seqpacket_pair()?;
            st.caller_in.push(a);
            w.ins.push(b);
        }
        Ok(())
    }

    fn outputs_to_caller(&mut self, i: usize) -> io::Result<()> {
        let st = &mut self.stages[i];
        for w in st.workers.iter_mut() {
            let (a, b) = fds::seqpacket_pair()?;
            w.outs.push(a);
            st.caller_out.push(b);
        }
        Ok(())
    }

    /// Every worker of stage `i` to every worker of stage `i + 1` (mesh order: the sender's
    /// position is the link's index at the receiver).
    fn mesh(&mut self, i: usize) -> io::Result<()> {
        let (left, right) = self.stages.split_at_mut(i + 1);
        for out in left[i].workers.iter_mut() {
            for inp in right[0].workers.iter_mut() {
                let (a, b) = fds::seqpacket_pair()?;
                out.outs.push(a);
                inp.ins.push(b);
            }
        }
        Ok(())
    }

    /// A `pipe_next` pair at `i`, `i + 1`: producer *j* to consumer *j*, a link and a stream.
    fn couples(&mut self, i: usize) -> io::Result<()> {
        let (left, right) = self.stages.split_at_mut(i + 1);
        for (p, c) in left[i].workers.iter_mut().zip(right[0].workers.iter_mut()) {
            let (a, b) = fds::seqpacket_pair()?;
            p.outs.push(a);
            c.ins.push(b);
            let (sa, sb) = fds::stream_pair()?;
            crate::transport::pipe::tune(&sa);
            crate::transport::pipe::tune(&sb);
            p.stream = Some(sa);
            c.stream = Some(sb);
        }
        Ok(())
    }
}
