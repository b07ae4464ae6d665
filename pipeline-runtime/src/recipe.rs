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
//! - `#[stage]` functions: the macro implements [`Ctor`](crate::ctor::Ctor) for the function's hidden
//!   constructor type; `make` decodes the bound parameters and calls the constructor. If a
//!   bound parameter is not `Serialize + DeserializeOwned`, the stage has no recipe and the
//!   reason says so (chosen at compile time by [`Probe`](crate::ctor::Probe), without a trait bound on the user).
//! - Builder stages from fn items or closures that capture nothing: such a function is a
//!   zero-sized value, so `make` can make it again from nothing ([`crate::os::image::remake`]).
//!   A capturing closure has no recipe: fork-server mode refuses it at start with the
//!   stage's name and the remedy, rather than run it in direct mode.
//!
//! The name (`module::function` for `#[stage]`) is what other hosts, which run the same
//! binary but not the same image, will look stages up by.
//!
//! # Where it lives
//! This file: the recipe, generic over what it makes, and making a zero-sized function
//! again. [`crate::ctor`]: the recipes `#[stage]` puts on its stages. `Stage::when`
//! (`stage.rs`): the layer a determiner adds. What crosses to the fork server is a
//! [`Shipment`](crate::process::protocol::Shipment), and [`crate::erase::rebuild`] makes
//! the stage of one: this file depends on neither.
//!
//! # Invariants
//! - A recipe's `make` builds the stage's function part only: the caller's name, options
//!   and wire functions win over what `make` sets.
//! - A stage whose function was wrapped after it was made (`.when(det)`) keeps a recipe only
//!   if the wrapper can be made again too.

use std::borrow::Cow;

use crate::os::image;

/// Makes a stage (`S` is a `Stage<In, Out>`) from its encoded bound parameters.
#[doc(hidden)]
pub type Make<S> = fn(&[u8]) -> Result<S, String>;

/// How to make a stage again (see the module docs).
#[doc(hidden)]
#[derive(Debug)]
pub struct Recipe<S> {
    pub(crate) make: Make<S>,
    pub(crate) params: Vec<u8>,
    pub(crate) id: Cow<'static, str>,
}

impl<S> Clone for Recipe<S> {
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
pub type MaybeRecipe<S> = Result<Recipe<S>, Cow<'static, str>>;

/// The recipe of a function value `F`, if `F` is zero-sized (a fn item, or a closure that
/// captures nothing); `make` builds the stage from an `F` made again.
pub(crate) fn of_fn<F, S>(make: Make<S>) -> MaybeRecipe<S> {
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
/// Only for a recipe's `make` built by [`of_fn`] (or `Stage::when`'s) for this `F`: those
/// exist only where a value of `F` was passed to the builder.
pub(crate) fn remake<F>() -> F {
    // SAFETY: a value of `F` existed in this image (see above), and the worker's copy of
    // it is what a fork of the caller would have had too.
    unsafe { image::remake::<F>() }
}
