//! The paths generated code uses to reach the runtime (STYLE 10).
//!
//! Everything the expansion needs from forkpipe goes through one hidden module of the facade,
//! so users depend on `forkpipe` alone. Nothing else in this crate spells the prefix.

use proc_macro2::TokenStream;
use quote::quote;

/// `::forkpipe::__private`, the facade's re-exports for generated code (`Stage`, `Source`,
/// `Pipeline`, `Emit`).
pub fn private() -> TokenStream {
    quote!(::forkpipe::__private)
}

/// The associated function each `#[stage]` puts on its hidden struct, and `pipeline!` calls.
pub const STAGE_FN: &str = "__forkpipe_stage";

/// A name for a local of generated code. `Span::mixed_site()` keeps user code from seeing it,
/// but a pattern still resolves items at the call site (a user's `struct item;` would turn
/// `|item: u64|` into a unit-struct pattern), hence the `__forkpipe_` prefix of every name.
pub fn local(name: &str) -> proc_macro2::Ident {
    proc_macro2::Ident::new(name, proc_macro2::Span::mixed_site())
}
