//! Stage identity: how a stage is made again in a process that did not inherit it.
//!
//! # The problem
//! In fork-server mode ([`crate::init`]) every supervisor is forked from a fork server that
//! was itself forked when `main` began, before any pipeline existed. It cannot inherit the
//! pipeline's closures and bound parameters the way a supervisor forked from the caller
//! does; it must be told what each process stage is, as data.
//!
//! # The approach
//! Every stage that may run in worker processes carries a [`Recipe`]: a `make` function
//! that builds the stage again from bytes (the bound parameters, `bincode`), those bytes,
//! and a stable name. `make` is a plain function pointer, monomorphic and made by this
//! crate or by `#[stage]`, so it is valid in any fork of this process image; it crosses to
//! the fork server as an address ([`crate::os::image`]). The stage's name and options
//! travel beside it and are set on the made stage, so builder calls after construction
//! (`.workers(4)`, `.named(..)`) are kept.
//!
//! - `#[stage]` functions: the macro implements [`Ctor`] for the function's hidden
//!   constructor type; `make` decodes the bound parameters and calls the constructor. If a
//!   bound parameter is not `Serialize + DeserializeOwned`, the stage has no recipe and the
//!   reason says so (chosen at compile time by [`Probe`], without a trait bound on the user).
//! - Builder stages from fn items or closures that capture nothing: such a function is a
//!   zero-sized value, so `make` can make it again from nothing ([`crate::os::image::remake`]).
//!   A capturing closure has no recipe: fork-server mode refuses it at start with the
//!   stage's name and the remedy, rather than run it in direct mode.
//!
//! The name (`module::function` for `#[stage]`) is what other hosts, which run the same
//! binary but not the same image, will look stages up by.
//!
//! # Invariants
//! - A recipe's `make` builds the stage's function part only: the caller's name, options
//!   and wire functions win over what `make` sets.
//! - A stage whose function was wrapped after it was made (`.when(det)`) keeps a recipe only
//!   if the wrapper can be made again too.

use std::borrow::Cow;
use std::marker::PhantomData;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::erase::AnyStage;
use crate::os::image;
use crate::stage::{Consumer, Opts, Producer, Stage};
use crate::transport::codec::{self, Wire};

/// Makes a stage's function part from its encoded bound parameters.
#[doc(hidden)]
pub type Make<In, Out> = fn(&[u8]) -> Result<Stage<In, Out>, String>;

/// How to make a stage again (see the module docs).
#[doc(hidden)]
#[derive(Debug)]
pub struct Recipe<In, Out> {
    pub(crate) make: Make<In, Out>,
    pub(crate) params: Vec<u8>,
    pub(crate) id: Cow<'static, str>,
}

impl<In, Out> Clone for Recipe<In, Out> {
    fn clone(&self) -> Self {
        Recipe {
            make: self.make,
            params: self.params.clone(),
            id: self.id.clone(),
        }
    }
}

/// A stage's recipe, or why it has none.
#[doc(hidden)]
pub type MaybeRecipe<In, Out> = Result<Recipe<In, Out>, Cow<'static, str>>;

/// The recipe of a function value `F`, if `F` is zero-sized (a fn item, or a closure that
/// captures nothing); `make` builds the stage from an `F` made again.
pub(crate) fn of_fn<F, In, Out>(make: Make<In, Out>) -> MaybeRecipe<In, Out> {
    if std::mem::size_of::<F>() == 0 {
        Ok(Recipe {
            make,
            params: Vec::new(),
            id: Cow::Borrowed(std::any::type_name::<F>()),
        })
    } else {
        Err(Cow::Borrowed(
            "it is a closure that captures its environment, which a process forked before the \
             pipeline existed cannot have; make it a `#[stage]` function (data it needs can be \
             a bound parameter) or a closure that captures nothing",
        ))
    }
}

/// Makes the zero-sized function value `F` again, in a process of this image.
///
/// Only for a recipe's `make` built by [`of_fn`] (or [`with_when`]) for this `F`: those
/// exist only where a value of `F` was passed to the builder.
pub(crate) fn remake<F>() -> F {
    // SAFETY: a value of `F` existed in this image (see above), and the worker's copy of
    // it is what a fork of the caller would have had too.
    unsafe { image::remake::<F>() }
}

/// The layer `.when(det)` puts over a recipe: `params` are the inner `make`'s address and
/// the inner parameters, `make` remakes the inner stage and the determiner `D`.
pub(crate) fn with_when<T: Send + 'static, D>(inner: MaybeRecipe<T, T>) -> MaybeRecipe<T, T>
where
    D: Fn(&T) -> bool + Send + Sync + 'static,
{
    let inner = inner?;
    if std::mem::size_of::<D>() != 0 {
        return Err(Cow::Borrowed(
            "its determiner (`when`) is a closure that captures its environment; use a fn or \
             `#[stage(when = f)]`",
        ));
    }
    let mut params = image::addr_of(inner.make).to_le_bytes().to_vec();
    params.extend_from_slice(&inner.params);
    Ok(Recipe {
        make: make_when::<T, D>,
        params,
        id: inner.id,
    })
}

fn make_when<T: Send + 'static, D>(p: &[u8]) -> Result<Stage<T, T>, String>
where
    D: Fn(&T) -> bool + Send + Sync + 'static,
{
    const ADDR: usize = std::mem::size_of::<usize>();
    let addr = p
        .get(..ADDR)
        .and_then(|b| b.try_into().ok())
        .map(usize::from_le_bytes)
        .ok_or("a `when` recipe without its stage")?;
    // SAFETY: `with_when` wrote this address with `addr_of` of a `Make<T, T>`, in the
    // caller whose image this process shares.
    let inner: Make<T, T> = unsafe { image::fn_at(addr) };
    Ok(inner(&p[ADDR..])?.when(remake::<D>()))
}

/// What a process stage is, as data: what crosses to the fork server.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Shipment {
    /// `rebuild::<In, Out>`, the typed half that makes the `Arc<dyn AnyStage>`.
    rebuild: usize,
    /// The recipe's `make`.
    make: usize,
    params: Vec<u8>,
    id: String,
    name: String,
    opts: Opts,
}

/// Makes the stage of a shipment (see [`Shipment::rebuild`]).
pub(crate) type Rebuild = fn(&Shipment) -> Result<Arc<dyn AnyStage>, String>;

/// The shipment of a process stage, or why it cannot be shipped (for the start error).
pub(crate) fn ship<In: Wire, Out: Wire>(stage: &Stage<In, Out>) -> Result<Shipment, String> {
    let recipe = stage.recipe.as_ref().map_err(|why| why.to_string())?;
    Ok(Shipment {
        rebuild: image::addr_of(rebuild::<In, Out> as Rebuild),
        make: image::addr_of(recipe.make),
        params: recipe.params.clone(),
        id: recipe.id.to_string(),
        name: stage.name.to_string(),
        opts: stage.opts.clone(),
    })
}

fn rebuild<In: Wire, Out: Wire>(s: &Shipment) -> Result<Arc<dyn AnyStage>, String> {
    // SAFETY: `ship::<In, Out>` wrote `make` with `addr_of` of a `Make<In, Out>`, and chose
    // this `rebuild::<In, Out>` by the same types.
    let make: Make<In, Out> = unsafe { image::fn_at(s.make) };
    let mut stage = make(&s.params)?;
    stage.name = Cow::Owned(s.name.clone());
    stage.opts = s.opts.clone();
    stage.set_wire();
    Ok(Arc::new(stage))
}

impl Shipment {
    /// Makes the stage again (in a fork of this image).
    pub(crate) fn rebuild(&self) -> Result<Arc<dyn AnyStage>, String> {
        // SAFETY: a shipment is made only by `ship` in a caller of this image and comes over
        // the fork server's private socketpair, whose only peer is that caller.
        let rebuild: Rebuild = unsafe { image::fn_at(self.rebuild) };
        rebuild(self)
            .map_err(|e| format!("could not make stage '{}' ({}): {e}", self.name, self.id))
    }
}

// ---------------------------------------------------------------------------------------
// What `#[stage]` expands to
// ---------------------------------------------------------------------------------------

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
    fn recipe(&self, params: &C::Params) -> MaybeRecipe<CtorIn<C>, CtorOut<C>>;
}

/// The missing recipe of a `#[stage]` stage whose bound parameters cannot travel.
#[doc(hidden)]
pub trait NoValue<C: Ctor> {
    #[doc(hidden)]
    fn recipe(&self, params: &C::Params) -> MaybeRecipe<CtorIn<C>, CtorOut<C>>;
}

impl<C: Ctor> ByValue<C> for &Probe<C>
where
    C::Params: Serialize + DeserializeOwned,
{
    fn recipe(&self, params: &C::Params) -> MaybeRecipe<CtorIn<C>, CtorOut<C>> {
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
    fn recipe(&self, _: &C::Params) -> MaybeRecipe<CtorIn<C>, CtorOut<C>> {
        Err(Cow::Borrowed(
            "its bound parameters are not `Serialize + DeserializeOwned`, so they cannot \
             cross to a process forked before the pipeline existed; derive them, or run \
             without `forkpipe::init()`",
        ))
    }
}

fn make_ctor<C: Ctor>(p: &[u8]) -> Result<Stage<CtorIn<C>, CtorOut<C>>, String>
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
    recipe: MaybeRecipe<CtorIn<C>, CtorOut<C>>,
    id: &'static str,
) -> C::Made {
    made.stage_mut().recipe = recipe.map(|r| Recipe {
        id: Cow::Borrowed(id),
        ..r
    });
    made
}
