//! The paths generated code uses to reach the runtime (STYLE 10).
//!
//! Everything the expansion needs from forkpipe goes through one hidden module of the facade,
//! so users depend on `forkpipe` alone. [`krate`] is the one function that spells the facade's
//! name; nothing else in this crate does.

use proc_macro_crate::{FoundCrate, crate_name};
use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote};

/// The facade crate, as the crate being compiled names it: `::forkpipe`, or `::renamed` when
/// its `Cargo.toml` says `renamed = { package = "forkpipe", .. }`.
///
/// `proc-macro-crate` reads the `Cargo.toml` of the crate being compiled. Inside forkpipe's
/// own package it answers `Itself`; the facade's library does not use the macros, and its
/// doctests and examples see it as an ordinary dependency named `forkpipe`, so `Itself`
/// is `::forkpipe` too. When the manifest cannot be read (a build without cargo), the name
/// is `forkpipe`.
pub fn krate() -> TokenStream {
    match crate_name("forkpipe") {
        Ok(FoundCrate::Name(name)) => {
            let name = format_ident!("{}", name, span = Span::call_site());
            quote!(::#name)
        }
        Ok(FoundCrate::Itself) | Err(_) => quote!(::forkpipe),
    }
}

/// The facade's re-exports for generated code (`Stage`, `Source`, `Pipeline`, `Emit`,
/// `Items`, `InitResult`): `::forkpipe::__private`.
pub fn private() -> TokenStream {
    let krate = krate();
    quote!(#krate::__private)
}

/// The trait of items that can cross a process boundary: `::forkpipe::__private::Wire`.
pub fn wire() -> TokenStream {
    let private = private();
    quote!(#private::Wire)
}

/// The associated function each `#[stage]` puts on its hidden struct, and `pipeline!` calls.
pub const STAGE_FN: &str = "__forkpipe_stage";

/// A name for a local of generated code. `Span::mixed_site()` keeps user code from seeing it,
/// but a pattern still resolves items at the call site (a user's `struct item;` would turn
/// `|item: u64|` into a unit-struct pattern), hence the `__forkpipe_` prefix of every name.
pub fn local(name: &str) -> proc_macro2::Ident {
    proc_macro2::Ident::new(name, proc_macro2::Span::mixed_site())
}

/// `text` made safe inside a `format!`-style string of `#[diagnostic::on_unimplemented]`
/// (braces doubled).
pub fn escape(text: &str) -> String {
    text.replace('{', "{{").replace('}', "}}")
}
