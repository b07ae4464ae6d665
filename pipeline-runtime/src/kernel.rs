//! A worker's stage function, and its loops over many items built where its type is known.
//!
//! # The problem
//! A stage function reaches the runtime boxed (its closure type is erased where stages are
//! composed). Called item by item through the box, every item pays an indirect call, and
//! the loops around it (the process workers' run loop, the thread stages' batch loop)
//! cannot inline it: for `x + 1` the call and its `Emit` bookkeeping are most of the work.
//!
//! # The approach
//! The box holds a [`StageFn`], whose loops over a run or a batch are methods: each is
//! instantiated for the concrete function ([`FnStage`]; [`MapStage`] for `Stage::map`,
//! whose loops need no `Emit`) when the stage is made, so the function inlines into them
//! and a whole run or batch costs one indirect call. The loops themselves live with their
//! mechanisms (`process::runs::apply`, `guard::batch_loop`, `guard::dense_loop`), generic
//! over any `FnMut`; this module only ties them to the box, and [`apply_batch`] guards a
//! thread stage's batch (dense or records, see [`crate::batch`]).
//!
//! A process worker's run loop needs the item types' codec, which the stage function
//! does not have where it is made (`Stage::map` has no serde bounds): [`StageFn::run`]
//! is bounded on it, and [`run_via`], instantiated in the stage's `WireOps` (where the
//! bounds hold), calls it.
//!
//! # Invariants
//! - `call`, `batch`, `dense` and `run` apply the same function; the loops are the only
//!   place a batch or run of items meets it.

use std::panic::{AssertUnwindSafe, catch_unwind};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::batch::Batch;
use crate::guard::{self, Who};
use crate::item::{self, Body, Emit, Rec};
use crate::process::runs::{self, RunCx, RunPos};

/// A stage function as a worker holds it (it may own per-worker state made by `init`).
pub(crate) type WorkerFn<In, Out> = Box<dyn StageFn<In, Out>>;

/// The stage function over a run, through a worker's box: `run_via::<In, Out>`.
pub(crate) type RunFn<In, Out> =
    fn(&mut WorkerFn<In, Out>, &mut RunCx<'_, Out>, &[u8], &mut RunPos, &mut Vec<u8>);

/// A stage function and its loops (see the module docs).
pub(crate) trait StageFn<In, Out> {
    /// One item.
    fn call(&mut self, x: In, emit: &mut Emit<Out>) -> Result<(), String>;

    /// The records left in `recs` into `out` (`guard::batch_loop`); `seq` is the one being
    /// applied (for a panic that unwinds out of it).
    fn batch(
        &mut self,
        recs: &mut std::vec::IntoIter<Rec<In>>,
        out: &mut Vec<Rec<Out>>,
        emit: &mut Emit<Out>,
        who: Who<'_>,
        seq: &mut u64,
    );

    /// The values left in `items` into `out` while each gives one output
    /// (`guard::dense_loop`): the body of the first that does not, if any.
    fn dense(
        &mut self,
        items: &mut std::vec::IntoIter<In>,
        out: &mut Vec<Out>,
        emit: &mut Emit<Out>,
        who: Who<'_>,
        first: u64,
    ) -> Option<Body<Out>>;

    /// The entries of a run (`process::runs::apply`).
    fn run(&mut self, cx: &mut RunCx<'_, Out>, payload: &[u8], pos: &mut RunPos, out: &mut Vec<u8>)
    where
        In: DeserializeOwned,
        Out: Serialize;
}

/// A stage function of closure type `G`.
pub(crate) struct FnStage<G>(pub G);

impl<In, Out, G> StageFn<In, Out> for FnStage<G>
where
    G: FnMut(In, &mut Emit<Out>) -> Result<(), String>,
{
    #[inline]
    fn call(&mut self, x: In, emit: &mut Emit<Out>) -> Result<(), String> {
        (self.0)(x, emit)
    }

    fn batch(
        &mut self,
        recs: &mut std::vec::IntoIter<Rec<In>>,
        out: &mut Vec<Rec<Out>>,
        emit: &mut Emit<Out>,
        who: Who<'_>,
        seq: &mut u64,
    ) {
        guard::batch_loop(&mut self.0, recs, out, emit, who, seq);
    }

    fn dense(
        &mut self,
        items: &mut std::vec::IntoIter<In>,
        out: &mut Vec<Out>,
        emit: &mut Emit<Out>,
        who: Who<'_>,
        first: u64,
    ) -> Option<Body<Out>> {
        guard::dense_loop(&mut self.0, items, out, emit, who, first)
    }

    fn run(&mut self, cx: &mut RunCx<'_, Out>, payload: &[u8], pos: &mut RunPos, out: &mut Vec<u8>)
    where
        In: DeserializeOwned,
        Out: Serialize,
    {
        runs::apply(&mut self.0, cx, payload, pos, out);
    }
}

/// A stage function that maps each item to one output (`Stage::map`): its dense loop is
/// a plain `extend` over the batch, with no `Emit` between the function and the output.
pub(crate) struct MapStage<F>(pub F);

impl<In, Out, F: FnMut(In) -> Out> StageFn<In, Out> for MapStage<F> {
    #[inline]
    fn call(&mut self, x: In, emit: &mut Emit<Out>) -> Result<(), String> {
        emit.emit((self.0)(x));
        Ok(())
    }

    fn batch(
        &mut self,
        recs: &mut std::vec::IntoIter<Rec<In>>,
        out: &mut Vec<Rec<Out>>,
        emit: &mut Emit<Out>,
        who: Who<'_>,
        seq: &mut u64,
    ) {
        guard::batch_loop(&mut item::emitting(&mut self.0), recs, out, emit, who, seq);
    }

    fn dense(
        &mut self,
        items: &mut std::vec::IntoIter<In>,
        out: &mut Vec<Out>,
        _: &mut Emit<Out>,
        _: Who<'_>,
        _: u64,
    ) -> Option<Body<Out>> {
        // (If `f` panics, `out` keeps the outputs before it: `guard::dense_loop`'s rule.)
        out.extend(items.by_ref().map(&mut self.0));
        None
    }

    fn run(&mut self, cx: &mut RunCx<'_, Out>, payload: &[u8], pos: &mut RunPos, out: &mut Vec<u8>)
    where
        In: DeserializeOwned,
        Out: Serialize,
    {
        runs::apply_map(&mut self.0, cx, payload, pos, out);
    }
}

/// Boxes closure `g` as a worker's stage function.
pub(crate) fn worker_fn<In, Out>(
    g: impl FnMut(In, &mut Emit<Out>) -> Result<(), String> + 'static,
) -> WorkerFn<In, Out> {
    Box::new(FnStage(g))
}

/// [`StageFn::run`] where the codec's bounds hold (kept in the stage's `WireOps`).
pub(crate) fn run_via<In: DeserializeOwned, Out: Serialize>(
    f: &mut WorkerFn<In, Out>,
    cx: &mut RunCx<'_, Out>,
    payload: &[u8],
    pos: &mut RunPos,
    out: &mut Vec<u8>,
) {
    f.run(cx, payload, pos, out);
}

/// Applies `f` to every item of `batch` under one `catch_unwind` (two if the batch
/// changes form): a panic fails its item, `on_panic` is called (a stateful stage makes its
/// function afresh), and the loop resumes at the next item — no item runs twice. A dense
/// batch stays dense while every item gives one output; from the first that does not,
/// the rest is applied as records. The thread stages' counterpart of `process::runs`.
pub(crate) fn apply_batch<In, Out>(
    f: &mut WorkerFn<In, Out>,
    who: Who<'_>,
    batch: Batch<In>,
    emit: &mut Emit<Out>,
    mut on_panic: impl FnMut(&mut WorkerFn<In, Out>),
) -> Batch<Out> {
    let (first, items) = match batch {
        Batch::Recs(recs) => {
            let out = Vec::with_capacity(recs.len());
            return Batch::Recs(apply_recs(f, who, recs, emit, out, on_panic));
        }
        Batch::Dense { first, items } => (first, items),
    };
    let mut out = Vec::with_capacity(items.len());
    let mut items = items.into_iter();
    let ran = catch_unwind(AssertUnwindSafe(|| {
        f.dense(&mut items, &mut out, emit, who, first)
    }));
    // (The item that did not give one output is numbered after those that did.)
    let at = first + out.len() as u64;
    let odd = match ran {
        Ok(None) => return Batch::Dense { first, items: out },
        Ok(Some(body)) => body,
        Err(p) => {
            emit.clear();
            let e = guard::panic_error(who.1, who.2, at, p.as_ref());
            on_panic(f);
            Body::Failed(who.0, Box::new(e))
        }
    };
    let mut recs = Vec::with_capacity(out.len() + 1 + items.len());
    recs.extend(Batch::Dense { first, items: out });
    recs.push(Rec { seq: at, body: odd });
    let rest = Batch::Dense {
        first: at + 1,
        items: items.collect(),
    };
    Batch::Recs(apply_recs(f, who, rest.into_recs(), emit, recs, on_panic))
}

/// [`apply_batch`] over records, appending one record per input record to `out`.
fn apply_recs<In, Out>(
    f: &mut WorkerFn<In, Out>,
    (stage_idx, stage, worker): Who<'_>,
    batch: Vec<Rec<In>>,
    emit: &mut Emit<Out>,
    mut out: Vec<Rec<Out>>,
    mut on_panic: impl FnMut(&mut WorkerFn<In, Out>),
) -> Vec<Rec<Out>> {
    let mut recs = batch.into_iter();
    let mut seq = 0u64;
    loop {
        let who = (stage_idx, stage, worker);
        let r = catch_unwind(AssertUnwindSafe(|| {
            f.batch(&mut recs, &mut out, emit, who, &mut seq);
        }));
        let Err(p) = r else {
            return out;
        };
        emit.clear();
        let e = guard::panic_error(stage, worker, seq, p.as_ref());
        out.push(Rec {
            seq,
            body: Body::Failed(stage_idx, Box::new(e)),
        });
        on_panic(f);
    }
}
