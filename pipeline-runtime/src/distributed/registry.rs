//! The registry of `#[stage(distributed)]` functions: what a host can make.
//!
//! A host runs the caller's own binary but not its process image, so function addresses
//! mean nothing there (unlike in the fork server, see [`crate::recipe`]); a host finds a
//! stage by its recipe id (`module::function`) in this registry instead, which
//! `#[stage(distributed)]` fills at link time (`inventory`). So a message on the broker
//! can only choose among the binary's distributed stages, never name code.
//!
//! Each entry knows its stage's **fingerprint**: the id, the item types and the version of
//! the crate that defined it (and of forkpipe). The caller sends its own; a host whose
//! fingerprint differs refuses the stage, and the caller's items for it fail saying why.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::ctor::{Ctor, Made};
use crate::stage::Stage;
use crate::transport::codec::Wire;

/// A stage of a run, made on a host from its bound parameters.
pub(crate) type Built = Result<Box<dyn std::any::Any + Send>, String>;

/// One `#[stage(distributed)]` function (see the module docs).
#[doc(hidden)]
#[derive(Debug)]
#[cfg_attr(not(feature = "nats"), allow(dead_code))]
pub struct Entry {
    pub(crate) id: &'static str,
    pub(crate) krate: &'static str,
    pub(crate) types: fn() -> (&'static str, &'static str),
    /// Makes the stage from encoded bound parameters, as a boxed `Stage<In, Out>` ready
    /// for a host ([`Entry::serve`] knows its types).
    pub(crate) make: fn(&[u8]) -> Built,
    /// Serves a made stage on a host (`crate::distributed::served`), when built with the
    /// `nats` feature.
    pub(crate) serve: Serve,
}

/// How a host serves a stage made by an entry (see `served.rs`); a unit without `nats`.
#[cfg(feature = "nats")]
pub(crate) type Serve = crate::distributed::served::StartFn;
#[cfg(not(feature = "nats"))]
pub(crate) type Serve = ();

inventory::collect!(Entry);

/// The item types of a stage constructor, by name.
fn types<C: Ctor>() -> (&'static str, &'static str) {
    (
        std::any::type_name::<<C::Made as Made>::In>(),
        std::any::type_name::<<C::Made as Made>::Out>(),
    )
}

fn make<C: Ctor>(params: &[u8]) -> Built
where
    C::Params: DeserializeOwned,
    <C::Made as Made>::In: Wire,
    <C::Made as Made>::Out: Wire,
{
    let params: C::Params = crate::transport::codec::decode(params)
        .map_err(|e| format!("could not decode its bound parameters: {e}"))?;
    let mut stage: Stage<_, _> = C::make(params).into_stage();
    stage.set_wire();
    Ok(Box::new(stage))
}

impl Entry {
    /// The entry of the `#[stage(distributed)]` function whose constructor is `C`, named
    /// `id` (`module::function`), defined in the crate `krate` (`name version`).
    pub const fn new<C: Ctor>(id: &'static str, krate: &'static str) -> Self
    where
        C::Params: Serialize + DeserializeOwned,
        <C::Made as Made>::In: Wire,
        <C::Made as Made>::Out: Wire,
    {
        Entry {
            id,
            krate,
            types: types::<C>,
            make: make::<C>,
            #[cfg(feature = "nats")]
            serve: crate::distributed::served::start::<<C::Made as Made>::In, <C::Made as Made>::Out>,
            #[cfg(not(feature = "nats"))]
            serve: (),
        }
    }

    /// `module::function: In -> Out (crate version, forkpipe version)`.
    #[cfg_attr(not(feature = "nats"), allow(dead_code))]
    pub(crate) fn fingerprint(&self) -> String {
        let (i, o) = (self.types)();
        format!(
            "{}: {i} -> {o} ({}, forkpipe {})",
            self.id,
            self.krate,
            env!("CARGO_PKG_VERSION")
        )
    }
}

/// The entry with recipe id `id`, if this binary has one.
#[cfg_attr(not(feature = "nats"), allow(dead_code))]
pub(crate) fn lookup(id: &str) -> Option<&'static Entry> {
    inventory::iter::<Entry>().find(|e| e.id == id)
}

/// The bound-parameter check of `#[stage(distributed)]`: implemented for every
/// `Serialize + DeserializeOwned` tuple, with the message a user reads otherwise.
#[doc(hidden)]
#[diagnostic::on_unimplemented(
    message = "the bound parameters of a `distributed` stage must be `Serialize + Deserialize`: `{Self}` is not",
    label = "bound parameters travel to the hosts that run this stage",
    note = "derive `serde::Serialize` and `serde::Deserialize` for them, or remove `distributed`"
)]
pub trait TravelingParams: Serialize + DeserializeOwned {}
#[diagnostic::do_not_recommend]
impl<T: Serialize + DeserializeOwned> TravelingParams for T {}

/// Registers the `#[stage(distributed)]` function whose constructor is `C` (the macro's
/// expansion calls this inside `inventory::submit!`, through the check above).
#[doc(hidden)]
pub const fn entry<C: Ctor>(id: &'static str, krate: &'static str) -> Entry
where
    C::Params: TravelingParams,
    <C::Made as Made>::In: Wire,
    <C::Made as Made>::Out: Wire,
{
    Entry::new::<C>(id, krate)
}
