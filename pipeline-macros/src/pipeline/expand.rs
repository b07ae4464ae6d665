//! The expansion of `pipeline!`: the builder calls, with a type check aimed at each link.
//!
//! ```text
//! pipeline![numbers(10) | add_n(1)]
//! ```
//! becomes
//! ```text
//! {
//!     #[diagnostic::on_unimplemented(message = "stage `add_n` takes `{In}` but `numbers` produces `{Self}`", ..)]
//!     trait Link1<In> { fn cast<X>(stage: Stage<In, X>) -> Stage<Self, X>; }
//!     impl<T> Link1<T> for T { fn cast<X>(stage: Stage<T, X>) -> Stage<T, X> { stage } }
//!     Pipeline::new(numbers::__forkpipe_stage(10))
//!         .then(<_ as Link1<_>>::cast(add_n::__forkpipe_stage(1)))
//! }
//! ```
//! `then` wants a `Stage<Out, N>`, which makes `Self` the previous stage's output; the
//! argument makes `In` the next stage's input. When they differ, the only unmet bound is
//! `Out: Link1<In>`, and rustc reports it once, with the message written for that link,
//! at the tokens of the second stage.

use proc_macro2::{Delimiter, Group, Span, TokenStream, TokenTree};
use quote::{ToTokens, format_ident, quote, quote_spanned};

use super::parse::{Pipeline, StageRef};
use crate::paths;

/// The builder code of a pipeline.
pub fn expand(pipeline: &Pipeline) -> TokenStream {
    let private = paths::private();
    let mut stages = pipeline.stages.iter();
    let Some(first) = stages.next() else {
        return TokenStream::new();
    };
    let (first_span, _) = first.spans();
    let first_value = value(first);
    let mut chain = quote_spanned!(first_span=> #private::Pipeline::new(#first_value));
    let mut links = TokenStream::new();
    let mut previous = first;
    for (index, stage) in stages.enumerate() {
        let link = format_ident!("__ForkpipeLink{}", index + 1, span = Span::mixed_site());
        links.extend(link_trait(&link, previous, stage));
        let (first, last) = stage.spans();
        let mut value = value(stage);
        if let StageRef::Fn { .. } = stage {
            let later = format_ident!("__ForkpipeLater{}", index + 1, span = Span::mixed_site());
            links.extend(later_trait(&later, stage));
            let call = format_ident!(
                "__forkpipe_later",
                span = Span::mixed_site().located_at(first)
            );
            value = quote_spanned!(first=> <_ as #later<_, _>>::#call(#value));
        }
        // rustc underlines the callee for an unmet bound: it starts at the stage's first token.
        let mut args = Group::new(Delimiter::Parenthesis, value);
        args.set_span(last);
        let args = TokenTree::Group(args);
        let cast = quote_spanned!(first=> <_ as #link<_>>::__forkpipe_cast #args);
        chain = quote!(#chain.then(#cast));
        previous = stage;
    }
    quote!({ #links #chain })
}

/// The expression that makes a stage: `add_n::__forkpipe_stage(7)`, or the user's block.
fn value(stage: &StageRef) -> TokenStream {
    match stage {
        StageRef::Fn { path, args } => {
            let (_, last) = stage.spans();
            let stage_fn = proc_macro2::Ident::new(paths::STAGE_FN, last);
            let args = match args {
                Some((_, args)) => quote!(#args),
                None => TokenStream::new(),
            };
            quote_spanned!(last=> #path::#stage_fn(#args))
        }
        // The braces keep their place but resolve at the macro, which tells rustc the block
        // is required by the expansion, not `unused_braces` in the user's code.
        StageRef::Block(block) => {
            let mut stmts = TokenStream::new();
            for stmt in &block.stmts {
                stmt.to_tokens(&mut stmts);
            }
            let mut braces = Group::new(Delimiter::Brace, stmts);
            braces.set_span(
                block
                    .brace_token
                    .span
                    .join()
                    .resolved_at(Span::mixed_site()),
            );
            TokenStream::from(TokenTree::Group(braces))
        }
    }
}

/// The trait that checks the link from `from` to `to`, with the message for that link.
fn link_trait(link: &proc_macro2::Ident, from: &StageRef, to: &StageRef) -> TokenStream {
    let private = paths::private();
    let (from, to) = (escape(&from.name()), escape(&to.name()));
    let message = format!("stage `{to}` takes `{{In}}` but `{from}` produces `{{Self}}`");
    let label = format!("`{to}` takes `{{In}}`, not `{{Self}}`");
    let note = format!(
        "each stage takes the type that the stage before it produces; change `{from}` or \
         `{to}`, or put a stage between them that turns `{{Self}}` into `{{In}}`"
    );
    quote! {
        #[diagnostic::on_unimplemented(message = #message, label = #label, note = #note)]
        trait #link<In> {
            fn __forkpipe_cast<X>(stage: #private::Stage<In, X>) -> #private::Stage<Self, X>
            where
                Self: ::core::marker::Sized;
        }
        impl<T> #link<T> for T {
            fn __forkpipe_cast<X>(stage: #private::Stage<T, X>) -> #private::Stage<T, X> {
                stage
            }
        }
    }
}

/// The trait that lets only a `Stage` (not a `Source`) come after the first stage, with the
/// message for the stage `stage`. It is checked on `#[stage]` functions, whose constructor's
/// type is known before the link's; a `{ block }` must be a `Stage` by its link already.
fn later_trait(later: &proc_macro2::Ident, stage: &StageRef) -> TokenStream {
    let private = paths::private();
    let name = escape(&stage.name());
    let message = format!("`{name}` is a `source` stage; a source can only come first");
    let label = "a `source` makes the items of a pipeline, it takes none";
    let note = format!(
        "move `{name}` to the front of `pipeline![...]`, or make it a stage that takes items, \
         without `source`"
    );
    quote! {
        #[diagnostic::on_unimplemented(message = #message, label = #label, note = #note)]
        trait #later<In, Out> {
            fn __forkpipe_later(self) -> #private::Stage<In, Out>;
        }
        #[diagnostic::do_not_recommend]
        impl<In, Out> #later<In, Out> for #private::Stage<In, Out> {
            fn __forkpipe_later(self) -> #private::Stage<In, Out> {
                self
            }
        }
    }
}

/// `name` with its braces doubled, as `on_unimplemented` formats its strings.
fn escape(name: &str) -> String {
    name.replace('{', "{{").replace('}', "}}")
}
