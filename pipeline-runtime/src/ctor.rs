//! What `#[stage]` expands to, beside the stage itself: the function's constructor as a
//! type ([`Ctor`]), and the recipe it puts on what the constructor makes — chosen at compile
//! time by whether the bound parameters can travel ([`Probe`]: `Serialize +
//! DeserializeOwned` or not, without a trait bound on the user). See [`crate::recipe`] for
//! what a recipe is for.

use std::borrow::Cow;
use std::marker::PhantomData;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::recipe::{MaybeRecipe, Recipe};
use crate::stage::{Consumer, Producer, Stage};
use crate::transport::codec;

/// The constructor of a `#[stage]` function, as a type: `#[stage]` implements it for the
/// hidden struct named like the function.
#[doc(hidden)]
pub trait Ctor: 'static {
    /// The bound parameters, as a tuple.
    type Params;
    /// What the constructor makes: a `Stage`, a `Producer` or a `Consumer`.
    type Made: Made;
    /// Calls the constructor.
    fn make(params: Self::Params) -> Self::Made;
}

/// A stage value the constructor of a `#[stage]` function makes.
#[doc(hidden)]
pub trait Made {
    #[doc(hidden)]
    type In;
    #[doc(hidden)]
    type Out;
    #[doc(hidden)]
    fn stage_mut(&mut self) -> &mut Stage<Self::In, Self::Out>;
    #[doc(hidden)]
    fn into_stage(self) -> Stage<Self::In, Self::Out>;
}

impl<In, Out> Made for Stage<In, Out> {
    type In = In;
    type Out = Out;
    fn stage_mut(&mut self) -> &mut Stage<In, Out> {
        self
    }
    fn into_stage(self) -> Stage<In, Out> {
        self
    }
}

impl<In> Made for Producer<In> {
    type In = In;
    type Out = In;
    fn stage_mut(&mut self) -> &mut Stage<In, In> {
        &mut self.0
    }
    fn into_stage(self) -> Stage<In, In> {
        self.0
    }
}

impl<In, Out> Made for Consumer<In, Out> {
    type In = In;
    type Out = Out;
    fn stage_mut(&mut self) -> &mut Stage<In, Out> {
        &mut self.0
    }
    fn into_stage(self) -> Stage<In, Out> {
        self.0
    }
}

type CtorIn<C> = <<C as Ctor>::Made as Made>::In;
type CtorOut<C> = <<C as Ctor>::Made as Made>::Out;
type CtorStage<C> = Stage<CtorIn<C>, CtorOut<C>>;

/// Chooses, at compile time, whether a `#[stage]` function's bound parameters can travel:
/// `(&&Probe::<C>::new()).recipe(&params)` picks [`ByValue`] when they are `Serialize +
/// DeserializeOwned`, else [`NoValue`] (autoref specialisation: no bound on the user).
#[doc(hidden)]
#[derive(Debug)]
pub struct Probe<C>(PhantomData<C>);

impl<C> Probe<C> {
    #[doc(hidden)]
    pub fn new() -> Self {
        Probe(PhantomData)
    }
}

impl<C> Default for Probe<C> {
    fn default() -> Self {
        Self::new()
    }
}

/// The recipe of a `#[stage]` stage whose bound parameters can travel.
#[doc(hidden)]
pub trait ByValue<C: Ctor> {
    #[doc(hidden)]
    fn recipe(&self, params: &C::Params) -> MaybeRecipe<CtorStage<C>>;
}

/// The missing recipe of a `#[stage]` stage whose bound parameters cannot travel.
#[doc(hidden)]
pub trait NoValue<C: Ctor> {
    #[doc(hidden)]
    fn recipe(&self, params: &C::Params) -> MaybeRecipe<CtorStage<C>>;
}

impl<C: Ctor> ByValue<C> for &Probe<C>
where
    C::Params: Serialize + DeserializeOwned,
{
    fn recipe(&self, params: &C::Params) -> MaybeRecipe<CtorStage<C>> {
        let mut bytes = Vec::new();
        codec::encode_into(params, &mut bytes)
            .map_err(|e| Cow::Owned(format!("its bound parameters could not be encoded: {e}")))?;
        Ok(Recipe {
            make: make_ctor::<C>,
            params: bytes,
            id: Cow::Borrowed(""),
        })
    }
}

impl<C: Ctor> NoValue<C> for Probe<C> {
    fn recipe(&self, _: &C::Params) -> MaybeRecipe<CtorStage<C>> {
        Err(Cow::Borrowed(
            "its bound parameters are not `Serialize + DeserializeOwned`, so they cannot \
             cross to a process forked before the pipeline existed; derive them, or run \
             without `forkpipe::init()`",
        ))
    }
}

fn make_ctor<C: Ctor>(p: &[u8]) -> Result<CtorStage<C>, String>
where
    C::Params: DeserializeOwned,
{
    let params: C::Params =
        codec::decode(p).map_err(|e| format!("could not decode its bound parameters: {e}"))?;
    Ok(C::make(params).into_stage())
}

/// Puts the recipe `#[stage]` computed (see [`Probe`]) on the stage its constructor made,
/// named `id` (`module::function`).
#[doc(hidden)]
pub fn attach<C: Ctor>(
    mut made: C::Made,
    recipe: MaybeRecipe<CtorStage<C>>,
    id: &'static str,
) -> C::Made {
    made.stage_mut().recipe = recipe.map(|r| Recipe {
        id: Cow::Borrowed(id),
        ..r
    });
    made
}
