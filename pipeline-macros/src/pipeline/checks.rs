//! The checks of `pipeline!`'s expansion: a hidden trait per rule and place, whose
//! `#[diagnostic::on_unimplemented]` names the user's stages (see `expand` for how they are
//! called, and why a failed one reports nothing more).

use proc_macro2::{Ident, Span, TokenStream};
use quote::quote;

use crate::paths;

/// The trait that checks the link from the element `from` (a stage, a fan-in or a fan-out,
/// by name) to the stage `to`, with the message for that link.
pub fn link_trait(link: &Ident, from: &str, to: &str) -> TokenStream {
    let private = paths::private();
    let (from, to) = (paths::escape(from), paths::escape(to));
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
pub fn check_trait(
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
pub fn pipe_trait(pipe: &Ident, from: &str, to: &str) -> TokenStream {
    let private = paths::private();
    let (from, to) = (paths::escape(from), paths::escape(to));
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
pub fn reader_trait(reader: &Ident, stage: &str, first: bool) -> TokenStream {
    let private = paths::private();
    let name = paths::escape(stage);
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
/// after the first stage, with the message for the stage `stage` in `place`. It is checked
/// on `#[stage]` functions, whose constructor's type is known before the link's; a
/// `{ block }` must be a `Stage` by its link already.
pub fn later_trait(later: &Ident, stage: &str, place: Place) -> TokenStream {
    let private = paths::private();
    let name = paths::escape(stage);
    let (message, note) = match place {
        Place::Main => (
            format!("`{name}` is a `source` stage; a source can only come first"),
            format!(
                "move `{name}` to the front of `pipeline![...]`, or make it a stage that takes \
                 items, without `source`"
            ),
        ),
        Place::Branch => (
            format!(
                "`{name}` is a `source` stage in a branch of a fan-out; a source can only come \
                 first in a pipeline"
            ),
            format!(
                "move `{name}` to the front of `pipeline![...]`, or make it one of the sources \
                 of a fan-in there, `pipeline![({name}, ..) | ..]`, or make it a stage that \
                 takes items, without `source`"
            ),
        ),
    };
    let label = "a `source` makes the items of a pipeline, it takes none";
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
pub fn start_trait(start: &Ident) -> TokenStream {
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

/// The trait that accepts a finished chain (the pipeline, or the branch `branch` of a
/// fan-out) unless its last stage, `last`, is `pipe_next`.
pub fn last_trait(complete: &Ident, last: &str, branch: Option<&str>) -> TokenStream {
    let name = paths::escape(last);
    let message = match branch {
        None => format!(
            "the last stage `{name}` is `pipe_next`: add a stage that takes `&mut PipeReader` \
             after it"
        ),
        Some(branch) => format!(
            "the last stage `{name}` of the branch `{}` is `pipe_next`: add a stage that takes \
             `&mut PipeReader` after it",
            paths::escape(branch)
        ),
    };
    let label = format!("`{name}` writes bytes that no stage reads");
    let note = format!(
        "a `pipe_next` stage streams bytes for each item to the stage after it; add one that \
         takes `bytes: &mut PipeReader`, or remove `pipe_next` from `{name}`"
    );
    let private = paths::private();
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

/// The check that the chain before the fan-out `fan_out` is complete: a `Pipeline`, not a
/// `PipePending` whose `pipe_next` stage `before` waits for its reader.
pub fn open_trait(open: &Ident, before: &str, fan_out: &str) -> TokenStream {
    let private = paths::private();
    let (before, fan_out) = (paths::escape(before), paths::escape(fan_out));
    let message = format!(
        "`{before}` is a `pipe_next` stage: the stage after it must take `&mut PipeReader`, \
         not a fan-out"
    );
    let label = format!("a fan-out takes items, not the bytes that `{before}` writes");
    let note = format!(
        "`{before}` writes bytes for each item to a `&mut PipeWriter`, which the one stage \
         after it reads: put a stage with a parameter `bytes: &mut PipeReader` between \
         `{before}` and the fan-out `{fan_out}`, or remove `pipe_next` from `{before}`"
    );
    quote! {
        #[diagnostic::on_unimplemented(message = #message, label = #label, note = #note)]
        trait #open: ::core::marker::Sized {
            type Chain;
            fn __forkpipe_check(self) -> Self::Chain;
        }
        #[diagnostic::do_not_recommend]
        impl<In, Out> #open for #private::Pipeline<In, Out> {
            type Chain = Self;
            fn __forkpipe_check(self) -> Self {
                self
            }
        }
    }
}

/// The fan-out itself, `Pipeline::fan_out`, behind the check that the items `before`
/// produces for the fan-out `fan_out` are `Clone` (each branch gets a copy). `T` is the item
/// type, passed in as the chain's output so that the message can name it; the call is the
/// only place that needs `T: Clone`, so a type that is not reports this message alone.
pub fn clone_trait(clone: &Ident, before: &str, fan_out: &str) -> TokenStream {
    let private = paths::private();
    let (before, fan_out) = (paths::escape(before), paths::escape(fan_out));
    let message = format!(
        "the fan-out `{fan_out}` gives each branch a copy of every item, but `{before}` \
         produces `{{T}}`, which is not `Clone`"
    );
    let label = "`{T}` is not `Clone`";
    let note = format!(
        "derive or implement `Clone` for `{{T}}`, or put a stage between `{before}` and the \
         fan-out that turns `{{T}}` into a type that is `Clone`"
    );
    quote! {
        #[diagnostic::on_unimplemented(message = #message, label = #label, note = #note)]
        trait #clone<T>: ::core::marker::Sized {
            type Output<N>;
            fn __forkpipe_fan_out<N, B>(
                item: ::core::marker::PhantomData<T>,
                chain: Self,
                branches: B,
            ) -> Self::Output<N>
            where
                N: ::core::marker::Send + 'static,
                B: ::core::iter::IntoIterator<Item = #private::Pipeline<T, N>>;
        }
        #[diagnostic::do_not_recommend]
        impl<In, T> #clone<T> for #private::Pipeline<In, T>
        where
            In: ::core::marker::Send + 'static,
            T: ::core::clone::Clone + ::core::marker::Send + 'static,
        {
            type Output<N> = #private::Pipeline<In, N>;
            fn __forkpipe_fan_out<N, B>(
                _: ::core::marker::PhantomData<T>,
                chain: Self,
                branches: B,
            ) -> #private::Pipeline<In, N>
            where
                N: ::core::marker::Send + 'static,
                B: ::core::iter::IntoIterator<Item = #private::Pipeline<T, N>>,
            {
                #private::Pipeline::fan_out(chain, branches)
            }
        }
    }
}

/// The check that the branch `branch` of a fan-out makes the type that its first branch,
/// `first`, makes (`fan_in`: that the source `branch` makes the items of the first source).
/// `Self` is the type it makes, `T` the first one's; `__forkpipe_cast` passes a branch on
/// as making `T`, `__forkpipe_cast_source` a source, so nothing after it reports more.
pub fn same_trait(same: &Ident, first: &str, branch: &str, fan_in: bool) -> TokenStream {
    let private = paths::private();
    let (first, branch) = (paths::escape(first), paths::escape(branch));
    let (message, note) = if fan_in {
        (
            format!(
                "the sources of a fan-in make different item types: `{branch}` makes \
                 `{{Self}}` but `{first}` makes `{{T}}`"
            ),
            "every source of a fan-in must make the same type: the pipeline's items are all \
             the sources' items, interleaved",
        )
    } else {
        (
            format!(
                "the branches of a fan-out make different types: `{branch}` makes `{{Self}}` \
                 but `{first}` makes `{{T}}`"
            ),
            "every branch of a fan-out must make the same type: the item's outputs are the \
             branches' outputs together",
        )
    };
    let label = format!("`{branch}` makes `{{Self}}`, not `{{T}}`");
    quote! {
        #[diagnostic::on_unimplemented(message = #message, label = #label, note = #note)]
        trait #same<T> {
            fn __forkpipe_cast<In>(
                first: ::core::marker::PhantomData<T>,
                branch: #private::Pipeline<In, Self>,
            ) -> #private::Pipeline<In, T>
            where
                Self: ::core::marker::Sized;
            fn __forkpipe_cast_source(
                first: ::core::marker::PhantomData<T>,
                source: #private::Source<Self>,
            ) -> #private::Source<T>
            where
                Self: ::core::marker::Sized;
        }
        impl<T> #same<T> for T {
            fn __forkpipe_cast<In>(
                _: ::core::marker::PhantomData<T>,
                branch: #private::Pipeline<In, T>,
            ) -> #private::Pipeline<In, T> {
                branch
            }
            fn __forkpipe_cast_source(
                _: ::core::marker::PhantomData<T>,
                source: #private::Source<T>,
            ) -> #private::Source<T> {
                source
            }
        }
    }
}

/// The check that `stage`, one element of the fan-in at the start of the pipeline, is a
/// `Source`; `moved` is the pipeline's start with `stage` moved after the fan-in, if other
/// sources remain (`evens | double`).
pub fn source_trait(source: &Ident, stage: &str, moved: Option<&str>) -> TokenStream {
    let private = paths::private();
    let name = paths::escape(stage);
    let message = format!(
        "`{name}` is not a `source` stage: a parenthesised list at the start of a pipeline \
         merges sources"
    );
    let label = format!("`{name}` takes items instead of making them");
    let note = match moved {
        Some(moved) => format!(
            "make `{name}` a `#[stage(source)]` fn that returns the items, or move it after \
             the parentheses: `pipeline![{} | ..]`",
            paths::escape(moved)
        ),
        None => format!("make `{name}` a `#[stage(source)]` fn that returns the items"),
    };
    quote! {
        #[diagnostic::on_unimplemented(message = #message, label = #label, note = #note)]
        trait #source {
            type Source;
            fn __forkpipe_source(self) -> Self::Source;
        }
        #[diagnostic::do_not_recommend]
        impl<T: ::core::marker::Send + 'static> #source for #private::Source<T> {
            type Source = Self;
            fn __forkpipe_source(self) -> Self {
                self
            }
        }
    }
}

/// Where a chain of stages stands: the pipeline's own, or a branch of a fan-out.
#[derive(Clone, Copy, PartialEq)]
pub enum Place {
    /// The pipeline's own chain.
    Main,
    /// A branch of a fan-out (at any depth).
    Branch,
}
