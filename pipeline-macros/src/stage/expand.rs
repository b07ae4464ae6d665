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
//!
//! A `pipe_next` stage's constructor returns a `Producer<In>` instead, and a stage with a
//! `&mut PipeReader` a `Consumer<In, Out>`; `pipeline!` joins them (see the runtime's
//! `compose`).
//!
//! The options that can be misused with a type rustc must judge (`subprocess` on items that
//! cannot cross a process boundary, `when` on a stage that changes the type, an `init` that
//! returns something else than the state, the items of a `pipe_next` pair) go through a trait
//! declared inside the constructor, with `#[diagnostic::on_unimplemented]` and spanned at
//! the option, so that the error names the stage and its types at the token to change.

use proc_macro2::{Span, TokenStream};
use quote::{ToTokens, format_ident, quote, quote_spanned};
use syn::Type;
use syn::spanned::Spanned;

use super::valid::{Form, Plan, Role, Side};
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
    let returns = match (&plan.input, plan.side) {
        (Some(input), None) => quote!(#private::Stage<#input, #output>),
        (Some(input), Some(Side::Producer)) => quote!(#private::Producer<#input>),
        (Some(input), Some(Side::Consumer)) => quote!(#private::Consumer<#input, #output>),
        (None, _) => quote!(#private::Source<#output>),
    };
    let mut body = options(plan, constructor(plan));
    let mut ctor = TokenStream::new();
    if plan.input.is_some() {
        body = with_recipe(plan, &body);
        ctor = ctor_impl(plan, &returns);
        ctor.extend(registration(plan));
    }
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
                #body
            }
        }

        #ctor
    }
}

/// The bound parameters of the stage: (name, type).
fn bound_params(plan: &Plan) -> Vec<(&proc_macro2::Ident, &Type)> {
    plan.sig
        .params
        .iter()
        .zip(&plan.roles)
        .filter(|(_, role)| **role == Role::Bound)
        .map(|(param, _)| (&param.name, &param.ty))
        .collect()
}

/// The constructor's body with the stage's recipe put on what it makes: how the fork
/// server makes the stage again (see the runtime's `recipe`). Whether the bound parameters
/// can travel is chosen at compile time by autoref on `Probe`, with no bound on the user.
fn with_recipe(plan: &Plan, body: &TokenStream) -> TokenStream {
    let private = paths::private();
    let ident = &plan.sig.ident;
    let names = bound_params(plan).into_iter().map(|(name, _)| name);
    let recipe = paths::local("__forkpipe_recipe");
    let id = ident.to_string();
    quote! {
        let #recipe = {
            #[allow(unused_imports)]
            use #private::recipe::{ByValue as _, NoValue as _};
            (&&#private::recipe::Probe::<#ident>::new())
                .recipe(&(#(::core::clone::Clone::clone(&#names),)*))
        };
        #private::recipe::attach::<#ident>(
            { #body },
            #recipe,
            ::core::concat!(::core::module_path!(), "::", #id),
        )
    }
}

/// For a `distributed` stage, its entry in the registry hosts find stages in (see the
/// runtime's `distributed::registry`), under a check, spanned at `distributed`, that its
/// bound parameters can travel.
fn registration(plan: &Plan) -> TokenStream {
    let Some(span) = plan.args.distributed else {
        return TokenStream::new();
    };
    if plan.side.is_some() || plan.args.stream.is_some() {
        return TokenStream::new();
    }
    let private = paths::private();
    let (ident, cfgs) = (&plan.sig.ident, &plan.sig.cfgs);
    let id = ident.to_string();
    let entry = quote_spanned! {span=>
        #private::distributed::entry::<#ident>(
            ::core::concat!(::core::module_path!(), "::", #id),
            ::core::concat!(::core::env!("CARGO_PKG_NAME"), " ", ::core::env!("CARGO_PKG_VERSION")),
        )
    };
    quote! {
        #(#cfgs)*
        #private::distributed::submit! { #entry }
    }
}

/// `impl Ctor for add_n`: the constructor as a type, for the stage's recipe.
fn ctor_impl(plan: &Plan, returns: &TokenStream) -> TokenStream {
    let private = paths::private();
    let (ident, cfgs) = (&plan.sig.ident, &plan.sig.cfgs);
    let stage_fn = proc_macro2::Ident::new(paths::STAGE_FN, Span::call_site());
    let params = bound_params(plan);
    let types = params.iter().map(|(_, ty)| ty);
    let p = paths::local("__forkpipe_params");
    let fields = (0..params.len()).map(syn::Index::from);
    quote! {
        #(#cfgs)*
        #[allow(unused_qualifications)]
        impl #private::recipe::Ctor for #ident {
            type Params = (#(#types,)*);
            type Made = #returns;
            fn make(#p: Self::Params) -> Self::Made {
                let _ = &#p;
                Self::#stage_fn(#(#p.#fields),*)
            }
        }
    }
}

/// `Stage::map("add_n", move |item: u64| add_n(item, Clone::clone(&n)))`, or the
/// matching builder for the stage's form.
fn constructor(plan: &Plan) -> TokenStream {
    let private = paths::private();
    let name = &plan.name;
    let (item, emit) = (local_item(), local_emit());
    let call = call(plan);
    let input = &plan.input;
    let output = &plan.output;
    if let Some(state) = &plan.state {
        return stateful(plan, state, &call);
    }
    if let Some(side) = plan.side {
        return pipe(plan, side, &call);
    }
    let builder = match plan.form {
        Form::Map => quote!(map),
        Form::TryMap => quote!(try_map),
        Form::FilterMap => quote!(filter_map),
        Form::Emit => quote!(emit),
        Form::TryEmit => quote!(try_emit),
        Form::Source => return quote!(#private::Source::new(#name, move || #call)),
        Form::Produce | Form::TryProduce => return TokenStream::new(),
        Form::Stream => {
            return quote! {
                #private::Stage::stream(#name, move |#item: #private::Items<#input>| #call)
            };
        }
    };
    let closure = match plan.form {
        Form::Emit | Form::TryEmit => {
            quote!(move |#item: #input, #emit: &mut #private::Emit<#output>| #call)
        }
        _ => quote!(move |#item: #input| #call),
    };
    quote!(#private::Stage::#builder(#name, #closure))
}

/// The call of the user's function in the stage's closure: `add_n(item, Clone::clone(&n))`.
fn call(plan: &Plan) -> TokenStream {
    let ident = &plan.sig.ident;
    let args = plan
        .sig
        .params
        .iter()
        .zip(&plan.roles)
        .map(|(param, role)| match role {
            Role::Item => local_item(),
            Role::Emit => local_emit(),
            Role::State => local_state(),
            Role::Writer => local_writer(),
            Role::Reader => local_reader(),
            // A source is called once: its parameters move into it.
            Role::Bound if plan.form == Form::Source => param.name.to_token_stream(),
            Role::Bound => {
                let name = &param.name;
                quote!(::core::clone::Clone::clone(&#name))
            }
        });
    quote!(#ident(#(#args),*))
}

/// The closure parameter that holds the item (for a stream, the items).
fn local_item() -> TokenStream {
    paths::local("__forkpipe_item").into_token_stream()
}

/// The closure parameter that holds the `&mut Emit<T>`.
fn local_emit() -> TokenStream {
    paths::local("__forkpipe_emit").into_token_stream()
}

/// The closure parameter that holds the `&mut PipeWriter`.
fn local_writer() -> TokenStream {
    paths::local("__forkpipe_writer").into_token_stream()
}

/// The closure parameter that holds the `&mut PipeReader`.
fn local_reader() -> TokenStream {
    paths::local("__forkpipe_reader").into_token_stream()
}

/// The closure parameter that holds the `&mut S` state.
fn local_state() -> TokenStream {
    paths::local("__forkpipe_state").into_token_stream()
}

/// A stage with `init`: `Stage::stateful`, whose function takes the item, the state and an
/// `Emit`; each form of the user's function is adapted to that shape.
///
/// ```text
/// Stage::stateful("count", || InitResult::<Counter>::into_init(new_counter()),
///     move |item: u64, state: &mut Counter, emit: &mut Emit<u64>| {
///         emit.emit(count(item, state));
///         Ok::<(), Infallible>(())
///     })
/// ```
fn stateful(plan: &Plan, state: &Type, call: &TokenStream) -> TokenStream {
    let private = paths::private();
    let (name, input, output) = (&plan.name, &plan.input, &plan.output);
    let (item, emit, state_local) = (local_item(), local_emit(), local_state());
    let init = match &plan.args.init {
        Some(init) => &init.path,
        None => return TokenStream::new(),
    };
    let body = emitting(plan.form, call);
    let (check, call_init) = init_check(plan, init, state);
    quote! {{
        #check
        #private::Stage::stateful(
            #name,
            || #call_init,
            move |#item: #input, #state_local: &mut #state, #emit: &mut #private::Emit<#output>| #body,
        )
    }}
}

/// The body of a function that sends its outputs through the `Emit` local and returns
/// `Result<(), E>`, around `call` of the user's function in the form `form`.
fn emitting(form: Form, call: &TokenStream) -> TokenStream {
    let private = paths::private();
    let emit = local_emit();
    let value = paths::local("__forkpipe_value");
    let ok = ok_unit();
    match form {
        Form::Map => quote!({
            #private::Emit::emit(#emit, #call);
            #ok
        }),
        Form::TryMap => quote!({
            ::core::result::Result::map(#call, |#value| #private::Emit::emit(#emit, #value))
        }),
        Form::FilterMap => quote!({
            if let ::core::option::Option::Some(#value) = #call {
                #private::Emit::emit(#emit, #value);
            }
            #ok
        }),
        Form::Emit | Form::Produce => quote!({
            #call;
            #ok
        }),
        Form::TryEmit | Form::TryProduce => quote!(#call),
        Form::Source | Form::Stream => TokenStream::new(),
    }
}

/// `Ok::<(), Infallible>(())`: the result of a form that cannot fail.
fn ok_unit() -> TokenStream {
    quote!(::core::result::Result::Ok::<(), ::core::convert::Infallible>(()))
}

/// A half of a `pipe_next` pair: `Producer::new` for a `pipe_next` stage, whose function
/// writes to the `&mut PipeWriter`, or `Consumer::emitting` for the stage after it, whose
/// function reads the `&mut PipeReader` and sends its outputs through an `Emit` (each form of
/// the user's function adapted to that shape, as for `init`).
///
/// ```text
/// Producer::new("repeat",
///     move |item: u64, writer: &mut PipeWriter| repeat(item, writer, Clone::clone(&times)))
/// Consumer::emitting("count",
///     move |item: u64, reader: &mut PipeReader, emit: &mut Emit<usize>| {
///         Result::map(count(item, reader), |value| Emit::emit(emit, value))
///     })
/// ```
///
/// The builder is called through a function bounded by a trait that holds only for items
/// that can cross a socket, and says so at `pipe_next` (or at the `&mut PipeReader`).
fn pipe(plan: &Plan, side: Side, call: &TokenStream) -> TokenStream {
    let private = paths::private();
    let (name, output) = (&plan.name, &plan.output);
    let Some(input) = &plan.input else {
        return TokenStream::new();
    };
    let (item, emit) = (local_item(), local_emit());
    let span = match side {
        Side::Producer => plan.args.pipe_next,
        Side::Consumer => plan
            .sig
            .params
            .iter()
            .zip(&plan.roles)
            .find(|(_, role)| **role == Role::Reader)
            .map(|(param, _)| param.ty.span()),
    }
    .unwrap_or_else(Span::call_site);
    let body = emitting(plan.form, call);
    let (check, make) = pipe_check(span, side);
    match side {
        Side::Producer => {
            let writer = local_writer();
            quote! {{
                #check
                #make(#name, move |#item: #input, #writer: &mut #private::PipeWriter| #body)
            }}
        }
        Side::Consumer => {
            let reader = local_reader();
            quote! {{
                #check
                #make(
                    #name,
                    move |#item: #input,
                          #reader: &mut #private::PipeReader,
                          #emit: &mut #private::Emit<#output>| #body,
                )
            }}
        }
    }
}

/// The trait that lets only items that can cross a socket into a `pipe_next` pair, and says
/// so in words at `span` when they cannot; and the function, under its bound, that makes the
/// half `side` (`Producer::new` or `Consumer::emitting`).
fn pipe_check(span: Span, side: Side) -> (TokenStream, TokenStream) {
    let private = paths::private();
    let wire = paths::wire();
    let check = format_ident!("__ForkpipePipeItem", span = Span::mixed_site());
    let make = format_ident!("__forkpipe_pipe", span = at(span));
    let message = "`{Self}` cannot cross a socket: the two stages of a `pipe_next` pair need \
                   `Serialize + Deserialize` items, even on threads (derive them with serde)";
    let label = "the stages of a `pipe_next` pair pass each item between them as bytes";
    let note = "add `#[derive(serde::Serialize, serde::Deserialize)]` to `{Self}`";
    let (generics, bound, returns, builder) = match side {
        Side::Producer => (
            quote!(In: #check),
            quote!(F: ::core::ops::Fn(In, &mut #private::PipeWriter) -> ::core::result::Result<(), E>),
            quote!(#private::Producer<In>),
            quote!(#private::Producer::new),
        ),
        Side::Consumer => (
            quote!(In: #check, Out: #check),
            quote!(F: ::core::ops::Fn(In, &mut #private::PipeReader, &mut #private::Emit<Out>)
                -> ::core::result::Result<(), E>),
            quote!(#private::Consumer<In, Out>),
            quote!(#private::Consumer::emitting),
        ),
    };
    let tokens = quote! {
        #[diagnostic::on_unimplemented(message = #message, label = #label, note = #note)]
        trait #check: #wire {}
        #[diagnostic::do_not_recommend]
        impl<T: #wire> #check for T {}
        fn #make<#generics, E: ::core::fmt::Display, F>(name: &'static str, f: F) -> #returns
        where
            #bound + ::core::marker::Send + ::core::marker::Sync + 'static,
        {
            #builder(name, f)
        }
    };
    (tokens, make.into_token_stream())
}

/// The call of the `init` function, through a trait that accepts `S` and `Result<S, E>`
/// (as the runtime's `InitResult` does) and says in words what `init` must return when it
/// returns something else.
fn init_check(plan: &Plan, init: &syn::Path, state: &Type) -> (TokenStream, TokenStream) {
    let private = paths::private();
    let check = format_ident!("__ForkpipeInit", span = Span::mixed_site());
    let name = paths::escape(&plan.name.value());
    let path = paths::escape(&type_text(init));
    let message = format!(
        "`init = {path}` must return the state `{{S}}` or `Result<{{S}}, E>` with `E: Display`, \
         but returns `{{Self}}`"
    );
    let label = format!("`{name}` takes `&mut {{S}}`, made by `{path}`");
    let note = format!(
        "make `{path}` return `{{S}}` or `Result<{{S}}, E>`, or change the `&mut` parameter of \
         `{name}` to the type it returns"
    );
    let tokens = quote! {
        #[diagnostic::on_unimplemented(message = #message, label = #label, note = #note)]
        trait #check<S> {
            fn __forkpipe_init(self) -> ::core::result::Result<S, ::std::string::String>;
        }
        #[diagnostic::do_not_recommend]
        impl<S, T: #private::InitResult<S>> #check<S> for T {
            fn __forkpipe_init(self) -> ::core::result::Result<S, ::std::string::String> {
                #private::InitResult::into_init(self)
            }
        }
    };
    let span = init.span();
    let check = format_ident!("__ForkpipeInit", span = at(span));
    let call = quote_spanned!(span=> <_ as #check<#state>>::__forkpipe_init(#init()));
    (tokens, call)
}

/// A path as written, for a message.
fn type_text(path: &syn::Path) -> String {
    path.to_token_stream().to_string().replace(' ', "")
}

/// The options applied to the stage `made`: `.subprocess().workers(4).unordered().queue(8)`,
/// `.when(det)`, `.timeout(..)`.
///
/// `subprocess` and `when` go through a trait made for this stage, spanned at the option, so
/// that a type that cannot cross a process boundary, or a `when` on a stage that changes the
/// type, is reported at the option and in words about the stage.
fn options(plan: &Plan, made: TokenStream) -> TokenStream {
    let args = &plan.args;
    let mut stage = made;
    let mut checks = TokenStream::new();
    if let (Some(span), Some(_)) = (args.subprocess, plan.side) {
        // A pair's items already went through its check of their own.
        stage.extend(quote_spanned!(span=> .subprocess()));
    } else if let (Some(span), Some(_)) = (args.subprocess, &plan.input) {
        let (check, call) = crosses_check(span);
        checks.extend(check);
        // The argument is a local spanned at `subprocess`: rustc points at it.
        let made = format_ident!("__forkpipe_made", span = at(span));
        stage = quote_spanned!(span=> {
            let #made = #stage;
            #call(#made)
        });
    }
    if let (Some(when), Some(_)) = (&args.when, &plan.input) {
        let (check, call) = when_check(plan, when.key);
        checks.extend(check);
        // A closure, so that the determiner's parameter may be a deref target of the item
        // (`fn(&str) -> bool` for `String` items, as clippy's `ptr_arg` asks).
        let (det, input) = (&when.path, &plan.input);
        let item = paths::local("__forkpipe_item");
        let at_det = format_ident!("__forkpipe_item", span = at(det.span()));
        let det = quote_spanned!(det.span()=> #det(#at_det));
        stage = quote_spanned!(when.key=> #call(#stage, move |#item: &#input| #det));
    }
    if let (Some(span), Some(_), None) = (args.distributed, &plan.input, plan.side) {
        stage.extend(quote_spanned!(span=> .distributed()));
    }
    if let Some(workers) = &args.workers {
        let n = proc_macro2::Literal::u64_unsuffixed(workers.value);
        let span = workers.lit.span();
        stage.extend(quote_spanned!(span=> .workers(#n)));
    }
    if let Some(span) = args.unordered {
        stage.extend(quote_spanned!(span=> .unordered()));
    }
    if let Some(queue) = &args.queue {
        let n = proc_macro2::Literal::u64_unsuffixed(queue.value);
        let span = queue.lit.span();
        stage.extend(quote_spanned!(span=> .queue(#n)));
    }
    if let Some(timeout) = &args.timeout_ms {
        let n = proc_macro2::Literal::u64_unsuffixed(timeout.value);
        let span = timeout.lit.span();
        stage.extend(quote_spanned!(span=> .timeout(::core::time::Duration::from_millis(#n))));
    }
    quote!(#checks #stage)
}

/// The trait that lets `subprocess` through only for items that can cross a process
/// boundary, and says so in words when they cannot; and the function that applies
/// `.subprocess()` under its bound.
fn crosses_check(span: Span) -> (TokenStream, TokenStream) {
    let private = paths::private();
    let wire = paths::wire();
    let check = format_ident!("__ForkpipeCrosses", span = Span::mixed_site());
    let call = format_ident!("__forkpipe_subprocess", span = at(span));
    let message = "`{Self}` cannot cross a process boundary: a `subprocess` stage needs \
                   `Serialize + Deserialize` items (derive them with serde)";
    let label = "the items of this stage travel between processes as bytes";
    let note = "add `#[derive(serde::Serialize, serde::Deserialize)]` to `{Self}`, or remove \
                `subprocess` to run the stage on a thread";
    let tokens = quote! {
        #[diagnostic::on_unimplemented(message = #message, label = #label, note = #note)]
        trait #check: #wire {}
        #[diagnostic::do_not_recommend]
        impl<T: #wire> #check for T {}
        fn #call<In: #check, Out: #check>(
            stage: #private::Stage<In, Out>,
        ) -> #private::Stage<In, Out> {
            stage.subprocess()
        }
    };
    (tokens, call.into_token_stream())
}

/// The trait that lets `when` through only for a stage whose output type is its input
/// type, and names both types when they differ; and the function that applies `.when(det)`.
fn when_check(plan: &Plan, span: Span) -> (TokenStream, TokenStream) {
    let private = paths::private();
    let check = format_ident!("__ForkpipeWhen", span = Span::mixed_site());
    let name = paths::escape(&plan.name.value());
    let message = format!(
        "`when` needs a stage whose output type is its input type: `{name}` takes `{{Self}}` \
         but produces `{{Out}}`"
    );
    let label = "items that `when` rejects skip the stage unchanged, so they must already be \
                 of its output type";
    let note = format!(
        "remove `when`, or filter with a stage of its own before `{name}` that returns \
         `Option<{{Self}}>`"
    );
    let tokens = quote! {
        #[diagnostic::on_unimplemented(message = #message, label = #label, note = #note)]
        trait #check<Out>: ::core::marker::Sized {
            fn __forkpipe_when<D>(stage: #private::Stage<Self, Out>, det: D) -> #private::Stage<Self, Out>
            where
                D: ::core::ops::Fn(&Self) -> bool
                    + ::core::marker::Send
                    + ::core::marker::Sync
                    + 'static;
        }
        impl<T: ::core::marker::Send + 'static> #check<T> for T {
            fn __forkpipe_when<D>(stage: #private::Stage<T, T>, det: D) -> #private::Stage<T, T>
            where
                D: ::core::ops::Fn(&T) -> bool
                    + ::core::marker::Send
                    + ::core::marker::Sync
                    + 'static,
            {
                stage.when(det)
            }
        }
    };
    let check = format_ident!("__ForkpipeWhen", span = at(span));
    let call = quote_spanned!(span=> <_ as #check<_>>::__forkpipe_when);
    (tokens, call)
}

/// A span of generated code that rustc shows at the user's token `span`.
fn at(span: Span) -> Span {
    Span::mixed_site().located_at(span)
}
