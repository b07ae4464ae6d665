//! `pipeline![a | b(7) | { expr }]`: parse the stages (`parse`), expand to the builder API with
//! a type check per link (`expand`).

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
