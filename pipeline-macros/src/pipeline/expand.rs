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
//! type), or passes its value on with the type the next step expects (a cast), so the checks
//! after it, and the `Append`, report nothing more: one error per mistake. A `{ block }` is a
//! `Stage`, whose input type `cast_stage` gives it before it is type-checked, so that its
//! closures need no annotations.
//!
//! # Fan-out and fan-in
//! A fan-out, `parse | (index | store, thumbnail) | report`, builds each branch in a block of
//! its own, which shadows `chain` with an empty pipeline taking the chain's output
//! (`compose::branch`) and goes through the same steps as the pipeline, the stage before the
//! fan-out named as the first stage's previous one; the block's value is the branch, checked
//! by a `Last` of its own. Then:
//! ```text
//! let branch0 = { let chain = compose::branch(&chain); /* index, store */ <_ as Last3>::complete(chain) };
//! let made = compose::out(&branch0);
//! let branch1 = { let chain = compose::branch(&chain); /* thumbnail */ <_ as Last5>::complete(chain) };
//! let branch1 = <_ as Same6<_>>::cast(made, branch1);   // "the branches of a fan-out make different types"
//! let chain = <_ as FanOut1>::check(chain);             // not after a `pipe_next` stage
//! let item = compose::out(&chain);
//! let chain = <_ as Clone1<_>>::fan_out(item, chain, [branch0, branch1]);
//! ```
//! `Clone1` calls `Pipeline::fan_out` itself, under its own `T: Clone` bound: the one place
//! that needs it, so an item type that is not `Clone` gets that message and no other.
//! and the stage after it is linked to the fan-out, named as written. The branches are built
//! from the chain before its checks, so that a mistake in a branch is reported even when the
//! fan-out has one of its own. A fan-in first, `(evens, odds) | double`, checks that each
//! element is a `Source` (`SourceN`), compares each source's items with the first's (`Same`),
//! and starts the chain with `Pipeline::merge([source0, source1])`.
//!
//! Trait names are numbered in the order of the checks (a stage's link traits share the
//! stage's number, which in a plain chain is its place), with `Span::mixed_site()`; locals are
//! `paths::local`s, shadowed step after step.

use proc_macro2::{Delimiter, Group, Ident, Span, TokenStream, TokenTree};
use quote::{ToTokens, format_ident, quote, quote_spanned};

use super::checks::{
    Place, clone_trait, last_trait, later_trait, link_trait, open_trait, pipe_trait, reader_trait,
    same_trait, source_trait, start_trait,
};
use super::parse::{Branch, Element, FanIn, FanOut, Pipeline, StageRef, Start};
use crate::paths;

/// The builder code of a pipeline.
pub fn expand(pipeline: &Pipeline) -> TokenStream {
    Expander::default().pipeline(pipeline)
}

/// The expansion being written: the checks' traits so far, and the number of the last one.
#[derive(Default)]
struct Expander {
    traits: TokenStream,
    numbered: usize,
}

impl Expander {
    /// The whole expansion: a block of the traits, the steps, and the last check.
    fn pipeline(mut self, pipeline: &Pipeline) -> TokenStream {
        let start = self.start(&pipeline.start);
        let links = self.links(&pipeline.rest, pipeline.start.name(), Place::Main);
        let (last, span) = match pipeline.rest.last() {
            Some(element) => (element.name(), element.first_span()),
            None => (pipeline.start.name(), pipeline.start.first_span()),
        };
        let complete = format_ident!("__ForkpipeLast", span = Span::mixed_site());
        let complete = self.complete(complete, &last, span, None);
        let traits = self.traits;
        quote!({ #traits #start #links #complete })
    }

    /// The next number for a check's traits.
    fn number(&mut self) -> usize {
        self.numbered += 1;
        self.numbered
    }

    /// The steps that make the first chain, `let chain = ..;`.
    fn start(&mut self, start: &Start) -> TokenStream {
        let chain = paths::local("__forkpipe_chain");
        match start {
            Start::Stage(stage @ StageRef::Fn { .. }) => self.first_fn(stage),
            Start::Stage(stage @ StageRef::Block(_)) => {
                let (first, _) = stage.spans();
                let private = paths::private();
                let value = value(stage);
                quote_spanned!(first=> let #chain = #private::Pipeline::new(#value);)
            }
            Start::FanIn(fan_in) => self.fan_in(fan_in),
        }
    }

    /// The first chain from a `#[stage]` function: a `Pipeline`, or a `PipePending`.
    fn first_fn(&mut self, first: &StageRef) -> TokenStream {
        let compose = compose();
        let reader = format_ident!("__ForkpipeReader0", span = Span::mixed_site());
        let start = format_ident!("__ForkpipeStart", span = Span::mixed_site());
        self.traits
            .extend(reader_trait(&reader, &first.name(), true));
        self.traits.extend(start_trait(&start));
        let (open, part, chain) = (
            paths::local("__forkpipe_kind"),
            paths::local("__forkpipe_part"),
            paths::local("__forkpipe_chain"),
        );
        let span = first.spans().0;
        let value = value(first);
        let checked = aimed(
            span,
            quote!(<_ as #reader<_>>::__forkpipe_check),
            quote!((#open, #part)),
        );
        let start = aimed(
            span,
            quote!(<_ as #start>::__forkpipe_start),
            part.to_token_stream(),
        );
        quote! {
            let #open = ::core::marker::PhantomData::<#compose::Open>;
            let #part = #value;
            let #part = #checked;
            let #chain = #start;
        }
    }

    /// The steps that append `elements` to the chain, the first one after `previous`.
    fn links(&mut self, elements: &[Element], mut previous: String, place: Place) -> TokenStream {
        let mut steps = TokenStream::new();
        for element in elements {
            steps.extend(match element {
                Element::Stage(stage) => self.link(stage, &previous, place),
                Element::FanOut(fan_out) => self.fan_out(fan_out, &previous),
            });
            previous = element.name();
        }
        steps
    }

    /// The steps that check the stage `stage` after `previous` and append it to the chain.
    fn link(&mut self, stage: &StageRef, previous: &str, place: Place) -> TokenStream {
        let number = self.number();
        let ident = |name: &str| format_ident!("{}{}", name, number, span = Span::mixed_site());
        let (pipe, reader) = (ident("__ForkpipePipe"), ident("__ForkpipeReader"));
        let name = stage.name();
        let link = ident("__ForkpipeLink");
        self.traits.extend(link_trait(&link, previous, &name));
        self.traits.extend(pipe_trait(&pipe, previous, &name));
        self.traits.extend(reader_trait(&reader, &name, false));
        let cast = match stage {
            StageRef::Fn { .. } => {
                let later = ident("__ForkpipeLater");
                self.traits.extend(later_trait(&later, &name, place));
                cast_fn(stage, &link, &later)
            }
            StageRef::Block(_) => cast_block(stage, &link),
        };
        let (compose, span) = (compose(), stage.spans().0);
        let (chain, part, kind, out) = (
            paths::local("__forkpipe_chain"),
            paths::local("__forkpipe_part"),
            paths::local("__forkpipe_kind"),
            paths::local("__forkpipe_out"),
        );
        let pipe = aimed(
            span,
            quote!(<_ as #pipe<_>>::__forkpipe_check),
            quote!((#kind, #part)),
        );
        let reader = aimed(
            span,
            quote!(<_ as #reader<_>>::__forkpipe_check),
            quote!((#kind, #part)),
        );
        // Locals, so that each check's arguments have their types before rustc looks at the
        // check's impls (it would guess from the one impl that fits the part otherwise).
        quote! {
            let #out = #compose::out(&#chain);
            let #kind = #compose::kind(&#chain);
            #cast
            let #part = #pipe;
            let #part = #reader;
            let #chain = <_ as #compose::Append<_>>::append(#chain, #part);
        }
    }

    /// The steps of the fan-out `fan_out` after `previous`: its branches, checked to make one
    /// type, then the checks of the chain before it, and `Pipeline::fan_out`.
    fn fan_out(&mut self, fan_out: &FanOut, previous: &str) -> TokenStream {
        let number = self.number();
        let ident = |name: &str| format_ident!("{}{}", name, number, span = Span::mixed_site());
        let (open, clone) = (ident("__ForkpipeFanOut"), ident("__ForkpipeClone"));
        let name = fan_out.name();
        self.traits.extend(open_trait(&open, previous, &name));
        self.traits.extend(clone_trait(&clone, previous, &name));
        let compose = compose();
        let (chain, made) = (
            paths::local("__forkpipe_chain"),
            paths::local("__forkpipe_made"),
        );
        let mut steps = TokenStream::new();
        let mut branches = Vec::new();
        for (index, branch) in fan_out.branches.iter().enumerate() {
            let local = paths::local(&format!("__forkpipe_branch{index}"));
            let value = self.branch(branch, previous);
            steps.extend(quote!(let #local = #value;));
            match fan_out.branches.first() {
                Some(first) if index > 0 => {
                    let same = self.same(&first.name(), &branch.name(), false);
                    let cast = aimed(
                        branch.first_span(),
                        quote!(<_ as #same<_>>::__forkpipe_cast),
                        quote!(#made, #local),
                    );
                    steps.extend(quote!(let #local = #cast;));
                }
                _ => steps.extend(quote!(let #made = #compose::out(&#local);)),
            }
            branches.push(local);
        }
        let span = fan_out.paren.span.open();
        let item = paths::local("__forkpipe_item");
        let open = aimed(span, quote!(<_ as #open>::__forkpipe_check), quote!(#chain));
        let call = aimed(
            span,
            quote!(<_ as #clone<_>>::__forkpipe_fan_out),
            quote!(#item, #chain, [#(#branches),*]),
        );
        steps.extend(quote! {
            let #chain = #open;
            let #item = #compose::out(&#chain);
            let #chain = #call;
        });
        steps
    }

    /// A block whose value is the branch `branch` after `previous`: a pipeline taking the
    /// chain's output, of the branch's stages, checked complete.
    fn branch(&mut self, branch: &Branch, previous: &str) -> TokenStream {
        let compose = compose();
        let chain = paths::local("__forkpipe_chain");
        let links = self.links(&branch.elements, previous.to_string(), Place::Branch);
        let complete = match branch.elements.last() {
            Some(last) => {
                let number = self.number();
                let complete = format_ident!("__ForkpipeLast{}", number, span = Span::mixed_site());
                let name = branch.name();
                self.complete(complete, &last.name(), last.first_span(), Some(&name))
            }
            None => chain.to_token_stream(),
        };
        quote!({
            let #chain = #compose::branch(&#chain);
            #links
            #complete
        })
    }

    /// The steps of a fan-in first: each element checked to be a source making the first
    /// one's items, then `Pipeline::merge`.
    fn fan_in(&mut self, fan_in: &FanIn) -> TokenStream {
        let (private, compose) = (paths::private(), compose());
        let (chain, made) = (
            paths::local("__forkpipe_chain"),
            paths::local("__forkpipe_made"),
        );
        let mut steps = TokenStream::new();
        let mut sources = Vec::new();
        for (index, source) in fan_in.sources.iter().enumerate() {
            let number = self.number();
            let check = format_ident!("__ForkpipeSource{}", number, span = Span::mixed_site());
            let moved = moved_after(fan_in, index);
            self.traits
                .extend(source_trait(&check, &source.name(), moved.as_deref()));
            let local = paths::local(&format!("__forkpipe_source{index}"));
            let span = source.spans().0;
            let checked = aimed(
                span,
                quote!(<_ as #check>::__forkpipe_source),
                value(source),
            );
            steps.extend(quote!(let #local = #checked;));
            match fan_in.sources.first() {
                Some(first) if index > 0 => {
                    let same = self.same(&first.name(), &source.name(), true);
                    let cast = aimed(
                        span,
                        quote!(<_ as #same<_>>::__forkpipe_cast_source),
                        quote!(#made, #local),
                    );
                    steps.extend(quote!(let #local = #cast;));
                }
                _ => steps.extend(quote!(let #made = #compose::items(&#local);)),
            }
            sources.push(local);
        }
        let merge = aimed(
            fan_in.paren.span.open(),
            quote!(#private::Pipeline::merge),
            quote!([#(#sources),*]),
        );
        steps.extend(quote!(let #chain = #merge;));
        steps
    }

    /// A new check that `branch` (of a fan-out, or a source of a fan-in) makes what `first`
    /// makes; its name.
    fn same(&mut self, first: &str, branch: &str, fan_in: bool) -> Ident {
        let number = self.number();
        let same = format_ident!("__ForkpipeSame{}", number, span = Span::mixed_site());
        self.traits.extend(same_trait(&same, first, branch, fan_in));
        same
    }

    /// The finished chain, checked by the new trait `complete` not to end with the
    /// `pipe_next` stage `last` (at `span`), in the pipeline or in the branch `branch`.
    fn complete(
        &mut self,
        complete: Ident,
        last: &str,
        span: Span,
        branch: Option<&str>,
    ) -> TokenStream {
        self.traits.extend(last_trait(&complete, last, branch));
        let chain = paths::local("__forkpipe_chain");
        aimed(
            span,
            quote!(<_ as #complete>::__forkpipe_complete),
            chain.to_token_stream(),
        )
    }
}

/// The steps that make the `#[stage]` function `stage` the part after the chain, typed by its
/// link `link` (and checked to be no source by `later`).
fn cast_fn(stage: &StageRef, link: &Ident, later: &Ident) -> TokenStream {
    let compose = compose();
    let (part, input, out) = (
        paths::local("__forkpipe_part"),
        paths::local("__forkpipe_input"),
        paths::local("__forkpipe_out"),
    );
    let span = stage.spans().0;
    let later = aimed(span, quote!(<_ as #later>::__forkpipe_later), value(stage));
    let cast = aimed(
        span,
        quote!(<_ as #link<_>>::__forkpipe_cast),
        quote!(#input, #out, #part),
    );
    quote! {
        let #part = #later;
        let #input = #compose::input(&#part);
        let #part = #cast;
    }
}

/// The step that makes the `{ block }` `stage` the part after the chain, given the chain's
/// output as its input type by its link `link` before it is checked.
fn cast_block(stage: &StageRef, link: &Ident) -> TokenStream {
    let compose = compose();
    let (part, chain) = (
        paths::local("__forkpipe_part"),
        paths::local("__forkpipe_chain"),
    );
    let cast = aimed(
        stage.spans().0,
        quote!(<_ as #link<_>>::__forkpipe_cast_stage),
        value(stage),
    );
    quote!(let #part = <_ as #compose::Chain>::stage_for(&#chain, #cast);)
}

/// The start of the pipeline with the `index`th source of `fan_in` moved after the others,
/// `(evens, odds) | double`, if there are others.
fn moved_after(fan_in: &FanIn, index: usize) -> Option<String> {
    let others: Vec<String> = (fan_in.sources.iter().enumerate())
        .filter(|&(i, _)| i != index)
        .map(|(_, source)| source.name())
        .collect();
    let moved = fan_in.sources.get(index)?.name();
    match others.as_slice() {
        [] => None,
        [one] => Some(format!("{one} | {moved}")),
        _ => Some(format!("({}) | {moved}", others.join(", "))),
    }
}

/// The runtime's `compose` module, as generated code names it.
fn compose() -> TokenStream {
    let private = paths::private();
    quote!(#private::compose)
}

/// `callee(args)`, spanned at `first`, the first token of the stage (or the group) that the
/// call checks, where rustc underlines the stage for
/// an unmet bound of the call (the callee, and the call, whose output projection repeats the
/// error unless its span is the same).
fn aimed(first: Span, callee: TokenStream, args: TokenStream) -> TokenStream {
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
