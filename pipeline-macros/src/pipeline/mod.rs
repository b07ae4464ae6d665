//! `pipeline![a | b(7) | { expr }]`, `pipeline![a | (b | c, d)]`, `pipeline![(s, t) | a]`:
//! parse the stages and groups (`parse`), expand to the builder API (`expand`) with a type
//! check per link and per rule (`checks`).

mod checks;
mod expand;
mod parse;

pub use self::expand::expand;
pub use self::parse::Pipeline;

/// The errors as one expression: a block of `compile_error!`s, the last one its value (which
/// has the type wherever the pipeline is used, so nothing else is reported).
pub fn errors(error: syn::Error) -> proc_macro2::TokenStream {
    let error = error.into_compile_error();
    quote::quote!({ #error })
}
