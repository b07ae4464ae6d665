//! The expansion of `#[stage]`: the user's function unchanged, and beside it a hidden
//! braced struct of the same name and visibility whose associated function is the
//! constructor that `pipeline!` calls.
//!
//! A braced struct lives only in the type namespace and a function only in the value
//! namespace, so both can be called `add_n`: `use stages::add_n;` imports both, and
//! `pipeline![add_n(7)]` finds `add_n::__forkpipe_stage(7)` wherever `add_n()` is callable —
//! also inside a function body (a doctest, a test), where a module could not see the
//! function's sibling items.
//!
//! ```text
//! fn add_n(x: u64, n: u64) -> u64 { x + n }
//!
//! #[doc(hidden)]
//! struct add_n {}
//! impl add_n {
//!     pub fn __forkpipe_stage(n: u64) -> Stage<u64, u64> {
//!         Stage::map("add_n", move |item: u64| add_n(item, Clone::clone(&n)))
//!     }
//! }
//! ```

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};

use super::valid::{Form, Plan, Role};
use crate::paths;

/// The function and its hidden constructor.
pub fn stage(item: &TokenStream, plan: &Plan) -> TokenStream {
    let private = paths::private();
    let sig = &plan.sig;
    let (vis, ident, cfgs) = (&sig.vis, &sig.ident, &sig.cfgs);
    let stage_fn = proc_macro2::Ident::new(paths::STAGE_FN, proc_macro2::Span::call_site());
    let bound = sig
        .params
        .iter()
        .zip(&plan.roles)
        .filter(|(_, role)| **role == Role::Bound)
        .map(|(param, _)| {
            let (name, ty) = (&param.name, &param.ty);
            quote!(#name: #ty)
        });
    let output = &plan.output;
    let returns = match &plan.input {
        Some(input) => quote!(#private::Stage<#input, #output>),
        None => quote!(#private::Source<#output>),
    };
    let body = constructor(plan);
    let options = options(plan);
    quote! {
        #item

        #(#cfgs)*
        /// The `#[stage]` constructor of the function of the same name.
        #[doc(hidden)]
        #[allow(non_camel_case_types, dead_code)]
        #vis struct #ident {}

        #(#cfgs)*
        #[allow(unused_qualifications, dead_code)]
        impl #ident {
            /// The stage made of the function of the same name, for `pipeline!`.
            #[doc(hidden)]
            pub fn #stage_fn(#(#bound),*) -> #returns {
                #body #options
            }
        }
    }
}

/// `Stage::map("add_n", move |item: u64| add_n(item, Clone::clone(&n)))`, or the
/// matching builder for the stage's form.
fn constructor(plan: &Plan) -> TokenStream {
    let private = paths::private();
    let (ident, name) = (&plan.sig.ident, &plan.name);
    let item = paths::local("__forkpipe_item");
    let emit = paths::local("__forkpipe_emit");
    let args = plan
        .sig
        .params
        .iter()
        .zip(&plan.roles)
        .map(|(param, role)| match role {
            Role::Item => quote!(#item),
            Role::Emit => quote!(#emit),
            Role::Bound if plan.form == Form::Source => {
                let name = &param.name;
                quote!(#name)
            }
            Role::Bound => {
                let name = &param.name;
                quote!(::core::clone::Clone::clone(&#name))
            }
        });
    let call = quote!(#ident(#(#args),*));
    let input = &plan.input;
    let output = &plan.output;
    let builder = match plan.form {
        Form::Map => quote!(map),
        Form::TryMap => quote!(try_map),
        Form::FilterMap => quote!(filter_map),
        Form::Emit => quote!(emit),
        Form::TryEmit => quote!(try_emit),
        Form::Source => return quote!(#private::Source::new(#name, move || #call)),
    };
    let closure = match plan.form {
        Form::Emit | Form::TryEmit => {
            quote!(move |#item: #input, #emit: &mut #private::Emit<#output>| #call)
        }
        _ => quote!(move |#item: #input| #call),
    };
    quote!(#private::Stage::#builder(#name, #closure))
}

/// `.subprocess().workers(4).unordered().queue(8)`, each spanned at its option so that an
/// unmet bound (an item that cannot cross a process boundary) points at it.
fn options(plan: &Plan) -> TokenStream {
    let args = &plan.args;
    let mut options = TokenStream::new();
    if let Some(span) = args.subprocess {
        options.extend(quote_spanned!(span=> .subprocess()));
    }
    if let Some(workers) = &args.workers {
        let n = proc_macro2::Literal::usize_suffixed(workers.value);
        let span = workers.lit.span();
        options.extend(quote_spanned!(span=> .workers(#n)));
    }
    if let Some(span) = args.unordered {
        options.extend(quote_spanned!(span=> .unordered()));
    }
    if let Some(queue) = &args.queue {
        let n = proc_macro2::Literal::usize_suffixed(queue.value);
        let span = queue.lit.span();
        options.extend(quote_spanned!(span=> .queue(#n)));
    }
    options
}
