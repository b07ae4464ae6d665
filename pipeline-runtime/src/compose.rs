//! What `pipeline![a | b | c]` expands to: one generic step per link, whatever each stage is.
//!
//! # The problem
//! The macro sees names, not types: in `pipeline![parse | compress | upload]` it cannot tell
//! that `compress` is a `pipe_next` stage (a [`Producer`]) and `upload` its consumer (a
//! [`Consumer`]), so it cannot choose between [`Pipeline::then`],
//! [`Pipeline::then_producer`] and [`PipePending::then_consumer`]. And the mistakes of a
//! pipe pair (`pipe_next` last, a reader that follows no `pipe_next` stage) must be compile
//! errors that name the stages, not "method not found on `PipePending`".
//!
//! # The approach
//! The choice is made by trait resolution on the values' types. A pipeline under
//! construction is a [`Chain`] of kind [`Open`] (a [`Pipeline`]) or [`Pending`] (a
//! [`PipePending`], waiting for its consumer); a stage after the first is a [`Part`].
//! [`Append`] joins a chain and a part, with one impl per valid pair: a [`Stage`] or a
//! [`Producer`] after an [`Open`] chain, a [`Consumer`] after a [`Pending`] one.
//!
//! Before it appends, the expansion checks each rule with a trait of its own whose
//! `#[diagnostic::on_unimplemented]` names the stages: the part's input against the chain's
//! output ([`out`], [`input`], [`Part::With`]), "after a `pipe_next` stage comes a stage that
//! takes `&mut PipeReader`" and "such a stage comes only after a `pipe_next` stage" (by the
//! chain's [`kind`]), and at the end "the last stage is not `pipe_next`". A check that fails
//! leaves an error type behind, so rustc reports one error per mistake instead of a cascade
//! through the checks after it and [`Append`].
//!
//! A fan-out, `a | (b | c, d)`, is no part: each branch is a chain of its own, started empty
//! from the chain before it ([`branch`]) and built by the same steps, then the expansion calls
//! [`Pipeline::fan_out`]. A fan-in, `(s, t) | a`, is [`Pipeline::merge`] of its sources,
//! whose item types the expansion compares by [`items`].
//!
//! # Invariants
//! - The expansion's checks accept exactly the pairs that [`Append`] has an impl for.
//! - A [`Producer`] may start a pipeline: the expansion makes it a [`PipePending`] that takes
//!   the pipeline's input ([`Pipeline::producer_first`]), and the same checks follow.

use std::marker::PhantomData;

use crate::pipeline::{PipePending, Pipeline};
use crate::stage::{Consumer, Producer, Source, Stage};
use crate::transport::codec::Wire;

/// The kind of a [`Pipeline`]: complete so far, any stage may follow.
#[derive(Debug)]
pub struct Open;

/// The kind of a [`PipePending`]: its last stage is `pipe_next`, its consumer must follow.
#[derive(Debug)]
pub struct Pending;

/// A pipeline under construction.
pub trait Chain {
    /// The items its last stage hands to the next one.
    type Out;
    /// [`Open`] or [`Pending`].
    type Kind;
    /// `stage` itself, typed as the next stage of this chain: its closures see their input
    /// type before they are checked.
    fn stage_for<N>(&self, stage: Stage<Self::Out, N>) -> Stage<Self::Out, N> {
        stage
    }
}

impl<In, Out> Chain for Pipeline<In, Out> {
    type Out = Out;
    type Kind = Open;
}

impl<In, Mid> Chain for PipePending<In, Mid> {
    type Out = Mid;
    type Kind = Pending;
}

/// The output type of `chain`, as a value the expansion can pass to a check.
pub fn out<C: Chain>(_chain: &C) -> PhantomData<C::Out> {
    PhantomData
}

/// The input type of `part`, as a value the expansion can pass to a check.
pub fn input<S: Part>(_part: &S) -> PhantomData<S::In> {
    PhantomData
}

/// The kind of `chain`, as a value the expansion can pass to a check.
pub fn kind<C: Chain>(_chain: &C) -> PhantomData<C::Kind> {
    PhantomData
}

/// An empty pipeline taking the output of `chain`: what a branch of a fan-out after `chain`
/// starts from.
pub fn branch<C: Chain>(_chain: &C) -> Pipeline<C::Out, C::Out>
where
    C::Out: Send + 'static,
{
    Pipeline::branch()
}

/// The item type of `source`, as a value the expansion can pass to a check.
pub fn items<T>(_source: &Source<T>) -> PhantomData<T> {
    PhantomData
}

/// A stage that takes items: a [`Stage`], a [`Producer`] or a [`Consumer`] (not a
/// `Source`, which can only come first).
pub trait Part {
    /// The items it takes.
    type In;
    /// The same kind of stage taking `I` instead.
    type With<I>;
    /// Itself, as `With<In>`.
    fn same(self) -> Self::With<Self::In>;
}

impl<In, Out> Part for Stage<In, Out> {
    type In = In;
    type With<I> = Stage<I, Out>;
    fn same(self) -> Stage<In, Out> {
        self
    }
}

impl<In> Part for Producer<In> {
    type In = In;
    type With<I> = Producer<I>;
    fn same(self) -> Producer<In> {
        self
    }
}

impl<In, Out> Part for Consumer<In, Out> {
    type In = In;
    type With<I> = Consumer<I, Out>;
    fn same(self) -> Consumer<In, Out> {
        self
    }
}

/// Appends the part `S` to a chain.
pub trait Append<S> {
    /// The longer chain.
    type Output;
    /// [`Pipeline::then`], [`Pipeline::then_producer`] or [`PipePending::then_consumer`].
    fn append(self, part: S) -> Self::Output;
}

impl<In: Send + 'static, Out: Send + 'static, N: Send + 'static> Append<Stage<Out, N>>
    for Pipeline<In, Out>
{
    type Output = Pipeline<In, N>;
    fn append(self, part: Stage<Out, N>) -> Pipeline<In, N> {
        self.then(part)
    }
}

impl<In: Send + 'static, Out: Send + 'static> Append<Producer<Out>> for Pipeline<In, Out> {
    type Output = PipePending<In, Out>;
    fn append(self, part: Producer<Out>) -> PipePending<In, Out> {
        self.then_producer(part)
    }
}

impl<In: Send + 'static, Mid: Wire, N: Wire> Append<Consumer<Mid, N>> for PipePending<In, Mid> {
    type Output = Pipeline<In, N>;
    fn append(self, part: Consumer<Mid, N>) -> Pipeline<In, N> {
        self.then_consumer(part)
    }
}
