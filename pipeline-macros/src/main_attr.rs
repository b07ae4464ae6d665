//! `#[forkpipe::main]`: calls `forkpipe::init()` before anything else in `main`.
//!
//! ```text
//! #[forkpipe::main]
//! #[tokio::main]
//! async fn main() -> Result<(), Error> { .. }
//! ```
//! becomes
//! ```text
//! fn main() -> Result<(), Error> {
//!     if let Err(e) = forkpipe::init() { eprintln!("error: {e}"); std::process::exit(1) }
//!     #[tokio::main]
//!     async fn __forkpipe_main() -> Result<(), Error> { .. }
//!     __forkpipe_main()
//! }
//! ```
//! so that the fork server is forked before any other attribute's code (an async runtime)
//! starts a thread.

use proc_macro2::TokenStream;
use quote::quote;
use syn::ItemFn;

use crate::paths;

/// The grammar: no arguments, on a `fn` (normally `main`).
pub fn parse(args: TokenStream, item: TokenStream) -> syn::Result<ItemFn> {
    if !args.is_empty() {
        return Err(syn::Error::new_spanned(
            args,
            "`#[forkpipe::main]` takes no arguments; write `#[forkpipe::main]`",
        ));
    }
    let f: ItemFn = syn::parse2(item)?;
    if !f.sig.inputs.is_empty() {
        return Err(syn::Error::new_spanned(
            &f.sig.inputs,
            "`#[forkpipe::main]` goes on `fn main()`, which takes no parameters",
        ));
    }
    Ok(f)
}

/// The expansion (see the module docs).
pub fn expand(f: ItemFn) -> TokenStream {
    let krate = paths::krate();
    let ItemFn {
        attrs,
        vis,
        mut sig,
        block,
        ..
    } = f;
    let inner = paths::local("__forkpipe_main");
    let outer = sig.ident.clone();
    let output = sig.output.clone();
    // The user's attributes (`#[tokio::main]`, docs, lints) stay on the user's function.
    sig.ident = inner.clone();
    quote! {
        #vis fn #outer() #output {
            if let ::core::result::Result::Err(e) = #krate::init() {
                ::std::eprintln!("error: {e}");
                ::std::process::exit(1);
            }
            #(#attrs)*
            #sig #block
            #inner()
        }
    }
}
