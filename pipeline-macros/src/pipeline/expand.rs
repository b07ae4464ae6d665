//! The expansion of `pipeline!`: the builder calls, with a check aimed at each link.
//!
//! The macro cannot see whether a `#[stage]` function makes a `Stage`, a `pipe_next`
//! `Producer` or the `Consumer` after it, so each link goes through the runtime's hidden
//! `compose` traits, which pick `then`, `then_producer` or `then_consumer` by type.
//! ```text
//! pipeline![numbers(10) | add_n(1)]
//! ```
//! becomes
//! ```text
//! {
//!     #[diagnostic::on_unimplemented(message = "stage `add_n` takes `{In}` but `numbers` produces `{Self}`", ..)]
//!     trait Link1<In> { fn cast<S: Part<In = In>>(out: PhantomData<Self>, part: S) -> S::With<Self>; .. }
//!     impl<T> Link1<T> for T { .. }
//!     // `Later1` (not a source), `Pipe1` and `Reader1` (the pipe rules), `Start` (a
//!     // `Pipeline`, or a `PipePending` for a `pipe_next` stage first), `Last`
//!     let chain = <_ as Start>::start(<_ as Reader0<_>>::check(numbers::__forkpipe_stage(10), Open));
//!     let part = <_ as Later1>::later(add_n::__forkpipe_stage(1));
//!     let part = <_ as Link1<_>>::cast(compose::out(&chain), part);
//!     let part = <_ as Pipe1<_>>::check(part, compose::kind(&chain));
//!     let part = <_ as Reader1<_>>::check(part, compose::kind(&chain));
//!     let chain = <_ as Append<_>>::append(chain, part);
//!     <_ as Last>::complete(chain)
//! }
//! ```
//! `out(&chain)` makes `Self` of `Link1` the previous stage's output; the part makes `In` the
//! next stage's input. When they differ, the only unmet bound is `Out: Link1<In>`, and rustc
//! reports it once, with the message written for that link, at the tokens of the second
//! stage. Each check that fails leaves an error type behind (its output is an associated
//! type), so the checks after it, and the `Append`, report nothing more: one error per
//! mistake. A `{ block }` is a `Stage`, whose input type `cast_stage` gives it before it is
//! type-checked, so that its closures need no annotations.

use proc_macro2::{Delimiter, Group, Ident, Span, TokenStream, TokenTree};
use quote::{ToTokens, format_ident, quote, quote_spanned};

use super::parse::{Pipeline, StageRef};
use crate::paths;

/// The builder code of a pipeline.
pub fn expand(pipeline: &Pipeline) -> TokenStream {
    let private = paths::private();
    let compose = quote!(#private::compose);
    let (Some(first), Some(last)) = (pipeline.stages.first(), pipeline.stages.last()) else {
        return TokenStream::new();
    };
    let chain = paths::local("__forkpipe_chain");
    let part = paths::local("__forkpipe_part");
    let mut traits = TokenStream::new();
    let mut steps = TokenStream::new();

    let first_value = value(first);
    let start = match first {
        StageRef::Fn { .. } => {
            let reader = format_ident!("__ForkpipeReader0", span = Span::mixed_site());
            let start = format_ident!("__ForkpipeStart", span = Span::mixed_site());
            traits.extend(reader_trait(&reader, first, true));
            traits.extend(start_trait(&start));
            let open = paths::local("__forkpipe_kind");
            steps.extend(quote! {
                let #open = ::core::marker::PhantomData::<#compose::Open>;
                let #part = #first_value;
            });
            let checked = aimed(
                first,
                quote!(<_ as #reader<_>>::__forkpipe_check),
                quote!((#open, #part)),
            );
            steps.extend(quote!(let #part = #checked;));
            aimed(
                first,
                quote!(<_ as #start>::__forkpipe_start),
                part.to_token_stream(),
            )
        }
        StageRef::Block(_) => {
            let (first_span, _) = first.spans();
            quote_spanned!(first_span=> #private::Pipeline::new(#first_value))
        }
    };
    steps.extend(quote!(let #chain = #start;));

    let mut previous = first;
    for (index, stage) in pipeline.stages.iter().enumerate().skip(1) {
        let ident = |name: &str| format_ident!("{}{}", name, index, span = Span::mixed_site());
        let (link, pipe, reader) = (
            ident("__ForkpipeLink"),
            ident("__ForkpipePipe"),
            ident("__ForkpipeReader"),
        );
        traits.extend(link_trait(&link, previous, stage));
        traits.extend(pipe_trait(&pipe, previous, stage));
        traits.extend(reader_trait(&reader, stage, false));
        let value = value(stage);
        // Locals, so that each check's arguments have their types before rustc looks at the
        // check's impls (it would guess from the one impl that fits the part otherwise).
        let (out, kind, input) = (
            paths::local("__forkpipe_out"),
            paths::local("__forkpipe_kind"),
            paths::local("__forkpipe_input"),
        );
        steps.extend(quote! {
            let #out = #compose::out(&#chain);
            let #kind = #compose::kind(&#chain);
        });
        match stage {
            StageRef::Fn { .. } => {
                let later = ident("__ForkpipeLater");
                traits.extend(later_trait(&later, stage));
                let later = aimed(stage, quote!(<_ as #later>::__forkpipe_later), value);
                let cast = aimed(
                    stage,
                    quote!(<_ as #link<_>>::__forkpipe_cast),
                    quote!(#input, #out, #part),
                );
                steps.extend(quote! {
                    let #part = #later;
                    let #input = #compose::input(&#part);
                    let #part = #cast;
                });
            }
            StageRef::Block(_) => {
                let cast = aimed(stage, quote!(<_ as #link<_>>::__forkpipe_cast_stage), value);
                steps.extend(quote! {
                    let #part = <_ as #compose::Chain>::stage_for(&#chain, #cast);
                });
            }
        }
        let pipe = aimed(
            stage,
            quote!(<_ as #pipe<_>>::__forkpipe_check),
            quote!((#kind, #part)),
        );
        let reader = aimed(
            stage,
            quote!(<_ as #reader<_>>::__forkpipe_check),
            quote!((#kind, #part)),
        );
        steps.extend(quote! {
            let #part = #pipe;
            let #part = #reader;
            let #chain = <_ as #compose::Append<_>>::append(#chain, #part);
        });
        previous = stage;
    }

    let complete = format_ident!("__ForkpipeLast", span = Span::mixed_site());
    traits.extend(last_trait(&complete, last));
    let complete = aimed(
        last,
        quote!(<_ as #complete>::__forkpipe_complete),
        chain.to_token_stream(),
    );
    quote!({ #traits #steps #complete })
}

/// `callee(args)`, spanned at the stage's first token, where rustc underlines the stage for
/// an unmet bound of the call (the callee, and the call, whose output projection repeats the
/// error unless its span is the same).
fn aimed(stage: &StageRef, callee: TokenStream, args: TokenStream) -> TokenStream {
    let (first, _) = stage.spans();
    let callee = located_at(callee, first);
    let mut args = Group::new(Delimiter::Parenthesis, args);
    args.set_span(first);
    let args = TokenTree::Group(args);
    quote_spanned!(first=> #callee #args)
}

/// `tokens` with the span `at`, so that rustc reports an error there as the user's code, not
/// as the macro's (and reports it once: a projection of the same call, spanned elsewhere,
/// would repeat it). The generated traits are items, which `mixed_site` resolves at the call
/// site too, so their names still resolve.
fn located_at(tokens: TokenStream, at: Span) -> TokenStream {
    tokens
        .into_iter()
        .map(|mut tree| {
            match &tree {
                TokenTree::Group(group) => {
                    let mut inner = Group::new(group.delimiter(), located_at(group.stream(), at));
                    inner.set_span(at);
                    tree = TokenTree::Group(inner);
                }
                _ => tree.set_span(at),
            }
            tree
        })
        .collect()
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
fn link_trait(link: &Ident, from: &StageRef, to: &StageRef) -> TokenStream {
    let private = paths::private();
    let (from, to) = (paths::escape(&from.name()), paths::escape(&to.name()));
    let message = format!("stage `{to}` takes `{{In}}` but `{from}` produces `{{Self}}`");
    let label = format!("`{to}` takes `{{In}}`, not `{{Self}}`");
    let note = format!(
        "each stage takes the type that the stage before it produces; change `{from}` or \
         `{to}`, or put a stage between them that turns `{{Self}}` into `{{In}}`"
    );
    quote! {
        #[diagnostic::on_unimplemented(message = #message, label = #label, note = #note)]
        trait #link<In> {
            fn __forkpipe_cast<S: #private::compose::Part<In = In>>(
                input: ::core::marker::PhantomData<In>,
                out: ::core::marker::PhantomData<Self>,
                part: S,
            ) -> S::With<Self>
            where
                Self: ::core::marker::Sized;
            fn __forkpipe_cast_stage<X>(
                stage: #private::Stage<In, X>,
            ) -> #private::Stage<Self, X>
            where
                Self: ::core::marker::Sized;
        }
        impl<T> #link<T> for T {
            fn __forkpipe_cast<S: #private::compose::Part<In = T>>(
                _: ::core::marker::PhantomData<T>,
                _: ::core::marker::PhantomData<T>,
                part: S,
            ) -> S::With<T> {
                #private::compose::Part::same(part)
            }
            fn __forkpipe_cast_stage<X>(
                stage: #private::Stage<T, X>,
            ) -> #private::Stage<T, X> {
                stage
            }
        }
    }
}

/// A check of the part that follows a chain of kind `K` (`compose::Open` or
/// `compose::Pending`), with the message of `attr`, for which `impls` lists the parts and
/// kinds that pass: `(generics, part, kind)`. Its output is the part; for a part and a kind
/// that no impl fits, rustc reports the message, and the output is an error type, so that
/// nothing after it reports more. The kind and the part come as one tuple, whose type rustc
/// knows whole before it looks at the impls (with two arguments, it would guess the second
/// from the one impl that fits the first).
fn check_trait(
    trait_name: &Ident,
    attr: &TokenStream,
    impls: &[(TokenStream, TokenStream, &str)],
) -> TokenStream {
    let private = paths::private();
    let impls = impls.iter().map(|(generics, part, kind)| {
        let kind = Ident::new(kind, Span::call_site());
        let kind = quote!(#private::compose::#kind);
        quote! {
            #[diagnostic::do_not_recommend]
            impl<#generics> #trait_name<#kind> for #part {
                type Part = Self;
                fn __forkpipe_check(
                    (_, part): (::core::marker::PhantomData<#kind>, Self),
                ) -> Self {
                    part
                }
            }
        }
    });
    quote! {
        #attr
        trait #trait_name<K>: ::core::marker::Sized {
            type Part;
            fn __forkpipe_check(
                kind_and_part: (::core::marker::PhantomData<K>, Self),
            ) -> Self::Part;
        }
        #(#impls)*
    }
}

/// The check that the stage after the `pipe_next` stage `from` takes a `&mut PipeReader`:
/// any part after a `Pipeline`, only a `Consumer` after a `PipePending`.
fn pipe_trait(pipe: &Ident, from: &StageRef, to: &StageRef) -> TokenStream {
    let private = paths::private();
    let (from, to) = (paths::escape(&from.name()), paths::escape(&to.name()));
    let message =
        format!("`{from}` is a `pipe_next` stage: the stage after it must take `&mut PipeReader`");
    let label = format!("`{to}` takes no `&mut PipeReader`");
    let note = format!(
        "`{from}` writes bytes for each item to a `&mut PipeWriter`, which the stage after it \
         reads: give `{to}` a parameter `bytes: &mut PipeReader`, put a stage that takes one \
         between them, or remove `pipe_next` from `{from}`"
    );
    let attr =
        quote!(#[diagnostic::on_unimplemented(message = #message, label = #label, note = #note)]);
    let impls = [
        (quote!(S), quote!(S), "Open"),
        (
            quote!(In, Out),
            quote!(#private::Consumer<In, Out>),
            "Pending",
        ),
    ];
    check_trait(pipe, &attr, &impls)
}

/// The check that the stage `stage`, if it takes a `&mut PipeReader`, comes right after a
/// `pipe_next` stage: any part after a `PipePending`, all but a `Consumer` after a
/// `Pipeline` (or `first`, checked as after a `Pipeline`).
fn reader_trait(reader: &Ident, stage: &StageRef, first: bool) -> TokenStream {
    let private = paths::private();
    let name = paths::escape(&stage.name());
    let message =
        format!("`{name}` takes a `&mut PipeReader`: it must come right after a `pipe_next` stage");
    let label = if first {
        "no stage before it writes bytes to read"
    } else {
        "the stage before it writes no bytes to read"
    };
    let note = format!(
        "put a `#[stage(pipe_next)]` stage with a `&mut PipeWriter` parameter right before \
         `{name}`, or remove its `&mut PipeReader`"
    );
    let attr =
        quote!(#[diagnostic::on_unimplemented(message = #message, label = #label, note = #note)]);
    let impls = [
        (quote!(S), quote!(S), "Pending"),
        (quote!(In, Out), quote!(#private::Stage<In, Out>), "Open"),
        (quote!(In), quote!(#private::Producer<In>), "Open"),
        (quote!(Out), quote!(#private::Source<Out>), "Open"),
    ];
    check_trait(reader, &attr, &impls)
}

/// The trait that lets only a `Stage`, a `Producer` or a `Consumer` (not a `Source`) come
/// after the first stage, with the message for the stage `stage`. It is checked on
/// `#[stage]` functions, whose constructor's type is known before the link's; a `{ block }`
/// must be a `Stage` by its link already.
fn later_trait(later: &Ident, stage: &StageRef) -> TokenStream {
    let private = paths::private();
    let name = paths::escape(&stage.name());
    let message = format!("`{name}` is a `source` stage; a source can only come first");
    let label = "a `source` makes the items of a pipeline, it takes none";
    let note = format!(
        "move `{name}` to the front of `pipeline![...]`, or make it a stage that takes items, \
         without `source`"
    );
    let parts = [
        (quote!(In, Out), quote!(#private::Stage<In, Out>)),
        (quote!(In), quote!(#private::Producer<In>)),
        (quote!(In, Out), quote!(#private::Consumer<In, Out>)),
    ];
    let impls = parts.iter().map(|(generics, part)| {
        quote! {
            #[diagnostic::do_not_recommend]
            impl<#generics> #later for #part {
                type Part = Self;
                fn __forkpipe_later(self) -> Self {
                    self
                }
            }
        }
    });
    quote! {
        #[diagnostic::on_unimplemented(message = #message, label = #label, note = #note)]
        trait #later {
            type Part;
            fn __forkpipe_later(self) -> Self::Part;
        }
        #(#impls)*
    }
}

/// The trait that makes the first chain of the pipeline from the `#[stage]` function
/// `first`: a `Stage` or a `Source` makes a `Pipeline`, a `pipe_next` `Producer` a
/// `PipePending` that takes the pipeline's input (its consumer must follow, which the next
/// link's pipe check and the last check say). A `Consumer` is refused before, by the reader
/// check, so no impl is missing: the trait needs no message of its own.
fn start_trait(start: &Ident) -> TokenStream {
    let private = paths::private();
    quote! {
        trait #start {
            type Chain;
            fn __forkpipe_start(self) -> Self::Chain;
        }
        #[diagnostic::do_not_recommend]
        impl<In, Out> #start for #private::Stage<In, Out>
        where
            In: ::core::marker::Send + 'static,
            Out: ::core::marker::Send + 'static,
        {
            type Chain = #private::Pipeline<In, Out>;
            fn __forkpipe_start(self) -> Self::Chain {
                #private::Pipeline::new(self)
            }
        }
        #[diagnostic::do_not_recommend]
        impl<Out: ::core::marker::Send + 'static> #start for #private::Source<Out> {
            type Chain = #private::Pipeline<(), Out>;
            fn __forkpipe_start(self) -> Self::Chain {
                #private::Pipeline::new(self)
            }
        }
        #[diagnostic::do_not_recommend]
        impl<In: ::core::marker::Send + 'static> #start for #private::Producer<In> {
            type Chain = #private::PipePending<In, In>;
            fn __forkpipe_start(self) -> Self::Chain {
                #private::Pipeline::producer_first(self)
            }
        }
    }
}

/// The trait that accepts the finished chain unless its last stage, `last`, is `pipe_next`.
fn last_trait(complete: &Ident, last: &StageRef) -> TokenStream {
    let private = paths::private();
    let name = paths::escape(&last.name());
    let message = format!(
        "the last stage `{name}` is `pipe_next`: add a stage that takes `&mut PipeReader` after it"
    );
    let label = format!("`{name}` writes bytes that no stage reads");
    let note = format!(
        "a `pipe_next` stage streams bytes for each item to the stage after it; add one that \
         takes `bytes: &mut PipeReader`, or remove `pipe_next` from `{name}`"
    );
    quote! {
        #[diagnostic::on_unimplemented(message = #message, label = #label, note = #note)]
        trait #complete {
            type Pipeline;
            fn __forkpipe_complete(self) -> Self::Pipeline;
        }
        #[diagnostic::do_not_recommend]
        impl<In, Out> #complete for #private::Pipeline<In, Out> {
            type Pipeline = Self;
            fn __forkpipe_complete(self) -> Self {
                self
            }
        }
    }
}
