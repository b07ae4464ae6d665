//! `#[stage(...)]`: parse the options (`args`) and the signature (`sig`), check the rules that
//! combine them (`valid`), expand (`expand`).

mod args;
mod expand;
mod sig;
mod valid;

use proc_macro2::TokenStream;
use quote::quote;

use self::sig::{Sig, StageFn};
use self::valid::Plan;
use crate::errors::Errors;

/// Parses and checks `#[stage(<args>)] <item>`, reporting every mistake at once.
pub fn parse(args: TokenStream, item: &TokenStream) -> syn::Result<Plan> {
    let mut errors = Errors::default();
    let args = errors.take(syn::parse2::<args::Args>(args));
    let item = errors.take(syn::parse2::<StageFn>(item.clone()).map_err(|error| {
        let message = "`#[stage]` goes on a free `fn`, e.g. `fn double(x: u64) -> u64`";
        syn::Error::new(error.span(), message)
    }));
    let sig = item.and_then(|item| errors.take(Sig::read(&item)));
    let (Some(args), Some(sig)) = (args, sig) else {
        return Err(errors.into_error());
    };
    match Plan::new(args, sig) {
        Ok(plan) => Ok(plan),
        Err(error) => {
            errors.push(error);
            Err(errors.into_error())
        }
    }
}

/// The function, unchanged, and its hidden constructor.
pub fn expand(item: &TokenStream, plan: &Plan) -> TokenStream {
    expand::stage(item, plan)
}

/// What `#[stage]` emits when it finds a mistake: the user's function unchanged, so that its
/// callers still compile, and the errors.
pub fn fallback(item: &TokenStream, error: syn::Error) -> TokenStream {
    let error = error.into_compile_error();
    quote!(#item #error)
}
