//! Reading a stage's signature: what each parameter is and what the function returns.
//!
//! Everything here is decided from syntax alone, as the macro cannot see types: a parameter
//! whose type is `&mut Emit<T>` (last path segment `Emit`) is the output channel, one whose
//! type is `&mut PipeWriter` or `&mut PipeReader` is a half of a `pipe_next` pair, a return
//! type whose last path segment is `Result` or `Option` picks the fallible or filtering form.
//! Signatures a stage cannot have (`async`, generics, `self`) are rejected here; the rules
//! that combine the signature with the options live in `valid`.

use proc_macro2::{Span, TokenStream};
use quote::format_ident;
use syn::parse::{Parse, ParseStream};
use syn::{
    Attribute, FnArg, GenericArgument, Ident, Pat, PathArguments, ReturnType, Signature, Type,
    TypeParamBound, Visibility, braced,
};

use crate::errors::Errors;

/// A stage function's signature, as far as the expansion needs it.
///
/// Accepts a free `fn` without `async`, `unsafe`, generic parameters, a `where` clause,
/// a `self` receiver or variadics (`impl Trait` parameters are for `valid` to judge: the
/// item of a `stream` stage is one).
pub struct Sig {
    /// The function's name.
    pub ident: Ident,
    /// Its visibility, given to the hidden constructor too.
    pub vis: Visibility,
    /// Its `#[cfg(...)]` attributes, given to the hidden constructor too.
    pub cfgs: Vec<Attribute>,
    /// The span of the parameter list's parentheses.
    pub parens: Span,
    /// The parameters, in order.
    pub params: Vec<Param>,
    /// The return type.
    pub output: Output,
}

/// One parameter of a stage function.
pub struct Param {
    /// A name for it in the generated code: the user's own when the pattern is a plain
    /// identifier (so signature help shows `n: u64`), a hygienic one otherwise.
    pub name: Ident,
    /// Its type as written.
    pub ty: Type,
    /// `Some(T)` when the type is `&mut Emit<T>`.
    pub emit: Option<Emit>,
    /// `Some(..)` when the type is `&mut PipeWriter` or `&mut PipeReader`.
    pub pipe: Option<PipeEnd>,
    /// `Some(S)` when the type is `&mut S` and none of the above: per-worker state.
    pub state: Option<Type>,
    /// The first `impl Trait` in the type, if any: only the item of a `stream` stage may
    /// have one.
    pub impl_trait: Option<Type>,
}

/// A `&mut Emit<T>` parameter.
pub struct Emit {
    /// `T`.
    pub item: Type,
}

/// A `&mut PipeWriter` or `&mut PipeReader` parameter: which end of a `pipe_next` stream.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum PipeEnd {
    /// `&mut PipeWriter`: the stage is the producer of a `pipe_next` pair.
    Writer,
    /// `&mut PipeReader`: the stage is the consumer, after a `pipe_next` stage.
    Reader,
}

/// What a stage function returns.
pub enum Output {
    /// Nothing, or `()`.
    Unit,
    /// `Result<T, E>` (any path ending in `Result`, so `io::Result<T>` too).
    Result { ty: Type, ok: Option<Type> },
    /// `Option<T>`.
    Option { ty: Type, some: Type },
    /// `impl Trait`; `item` is `T` from an `Iterator<Item = T>` or `IntoIterator<Item = T>`
    /// bound.
    Opaque { ty: Type, item: Option<Type> },
    /// Any other type.
    Plain(Type),
}

/// A function as `#[stage]` receives it; its body stays unparsed (a syntax error in it is
/// rustc's to report, on the function emitted unchanged).
///
/// ```text
/// item := outer-attribute* visibility signature '{' ANY '}'
/// ```
pub struct StageFn {
    attrs: Vec<Attribute>,
    vis: Visibility,
    sig: Signature,
}

impl Parse for StageFn {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let attrs = input.call(Attribute::parse_outer)?;
        let vis = input.parse()?;
        let sig = input.parse()?;
        let body;
        braced!(body in input);
        body.parse::<TokenStream>()?;
        Ok(StageFn { attrs, vis, sig })
    }
}

impl Sig {
    /// Reads the signature of `item`, reporting every part a stage cannot have.
    pub fn read(item: &StageFn) -> syn::Result<Sig> {
        let sig = &item.sig;
        let mut errors = Errors::default();
        if let Some(asyncness) = &sig.asyncness {
            let message = "a stage cannot be an `async fn`; remove `async` (a stage runs on \
                           its own thread or process, so it may block)";
            errors.push(syn::Error::new(asyncness.span, message));
        }
        if let syn::Safety::Unsafe(unsafety) = &sig.safety {
            let message = "a stage cannot be an `unsafe fn`; make it a safe `fn` with an \
                           `unsafe` block inside";
            errors.push(syn::Error::new(unsafety.span, message));
        }
        if !sig.generics.params.is_empty() {
            let message = "a stage cannot be generic; remove the generic parameters and write \
                           the concrete types";
            errors.push(syn::Error::new_spanned(&sig.generics, message));
        } else if let Some(where_clause) = &sig.generics.where_clause {
            let message = "a stage cannot have a `where` clause; write the concrete types";
            errors.push(syn::Error::new_spanned(where_clause, message));
        }
        if let Some(variadic) = &sig.variadic {
            let message = "a stage cannot be variadic; remove `...`";
            errors.push(syn::Error::new_spanned(variadic, message));
        }
        let mut params = Vec::new();
        for (index, arg) in sig.inputs.iter().enumerate() {
            match arg {
                FnArg::Receiver(receiver) => {
                    let message = "`#[stage]` goes on a free `fn`, not a method; remove `self` \
                                   or call the method from a free `fn`";
                    errors.push(syn::Error::new(receiver.self_token.span, message));
                }
                FnArg::Typed(typed) => {
                    let emit = emit_param(&typed.ty);
                    let pipe = pipe_param(&typed.ty);
                    let state = match (&emit, pipe) {
                        (None, None) => mut_param(&typed.ty),
                        _ => None,
                    };
                    params.push(Param {
                        name: param_name(&typed.pat, index),
                        ty: (*typed.ty).clone(),
                        emit,
                        pipe,
                        state,
                        impl_trait: find_impl_trait(&typed.ty).cloned(),
                    });
                }
            }
        }
        let sig_out = Sig {
            ident: sig.ident.clone(),
            vis: item.vis.clone(),
            cfgs: item
                .attrs
                .iter()
                .filter(|attr| attr.path().is_ident("cfg"))
                .cloned()
                .collect(),
            parens: sig.paren_token.span.join(),
            params,
            output: output(&sig.output),
        };
        errors.finish(sig_out)
    }
}

/// The name for a parameter in generated code.
fn param_name(pat: &Pat, index: usize) -> Ident {
    match pat {
        Pat::Ident(pat) if pat.subpat.is_none() => pat.ident.clone(),
        _ => format_ident!("__forkpipe_arg{}", index, span = Span::mixed_site()),
    }
}

/// `T` when `ty` is `&mut Emit<T>`.
fn emit_param(ty: &Type) -> Option<Emit> {
    let Type::Reference(reference) = strip(ty) else {
        return None;
    };
    reference.mutability?;
    let item = single_type_arg(strip(&reference.elem), "Emit")?;
    Some(Emit { item })
}

/// Which end of a pipe `ty` is, when it is `&mut PipeWriter` or `&mut PipeReader`.
fn pipe_param(ty: &Type) -> Option<PipeEnd> {
    let Type::Reference(reference) = strip(ty) else {
        return None;
    };
    reference.mutability?;
    let Type::Path(path) = strip(&reference.elem) else {
        return None;
    };
    if last_ident_is(path, "PipeWriter") {
        Some(PipeEnd::Writer)
    } else if last_ident_is(path, "PipeReader") {
        Some(PipeEnd::Reader)
    } else {
        None
    }
}

/// `S` when `ty` is `&mut S`.
fn mut_param(ty: &Type) -> Option<Type> {
    let Type::Reference(reference) = strip(ty) else {
        return None;
    };
    reference.mutability?;
    Some((*reference.elem).clone())
}

/// `T` when `ty` is `impl Iterator<Item = T>` or `impl IntoIterator<Item = T>`.
pub fn impl_iterator_item(ty: &Type) -> Option<Type> {
    let Type::ImplTrait(impl_trait) = strip(ty) else {
        return None;
    };
    impl_trait.bounds.iter().find_map(iterator_item)
}

/// Classifies a return type.
fn output(output: &ReturnType) -> Output {
    let ReturnType::Type(_, ty) = output else {
        return Output::Unit;
    };
    let ty = (**ty).clone();
    match strip(&ty) {
        Type::Tuple(tuple) if tuple.elems.is_empty() => Output::Unit,
        Type::Path(path) if last_ident_is(path, "Result") => {
            let ok = first_type_arg(path);
            Output::Result { ty, ok }
        }
        Type::Path(path) if last_ident_is(path, "Option") => match first_type_arg(path) {
            Some(some) => Output::Option { ty, some },
            None => Output::Plain(ty),
        },
        Type::ImplTrait(impl_trait) => {
            let item = impl_trait.bounds.iter().find_map(iterator_item);
            Output::Opaque { ty, item }
        }
        _ => Output::Plain(ty),
    }
}

/// `T` from a bound `Iterator<Item = T>` or `IntoIterator<Item = T>`.
fn iterator_item(bound: &TypeParamBound) -> Option<Type> {
    let TypeParamBound::Trait(bound) = bound else {
        return None;
    };
    let last = bound.path.segments.last()?;
    if last.ident != "Iterator" && last.ident != "IntoIterator" {
        return None;
    }
    let PathArguments::AngleBracketed(args) = &last.arguments else {
        return None;
    };
    args.args.iter().find_map(|arg| match arg {
        GenericArgument::AssocType(assoc) if assoc.ident == "Item" => Some(assoc.ty.clone()),
        _ => None,
    })
}

/// Whether the last segment of `path` is `name`.
fn last_ident_is(path: &syn::TypePath, name: &str) -> bool {
    path.qself.is_none()
        && path
            .path
            .segments
            .last()
            .is_some_and(|last| last.ident == name)
}

/// The first type argument of the last segment of `path`: `T` in `io::Result<T>`.
fn first_type_arg(path: &syn::TypePath) -> Option<Type> {
    let PathArguments::AngleBracketed(args) = &path.path.segments.last()?.arguments else {
        return None;
    };
    args.args.iter().find_map(|arg| match arg {
        GenericArgument::Type(ty) => Some(ty.clone()),
        _ => None,
    })
}

/// `T` when `ty` is a path ending in `name<T>`.
fn single_type_arg(ty: &Type, name: &str) -> Option<Type> {
    match ty {
        Type::Path(path) if last_ident_is(path, name) => first_type_arg(path),
        _ => None,
    }
}

/// `ty` without parentheses and invisible groups (types that come from `macro_rules!`).
fn strip(ty: &Type) -> &Type {
    match ty {
        Type::Paren(paren) => strip(&paren.elem),
        Type::Group(group) => strip(&group.elem),
        _ => ty,
    }
}

/// The first `impl Trait` inside `ty`, if any.
fn find_impl_trait(ty: &Type) -> Option<&Type> {
    match ty {
        Type::ImplTrait(_) => Some(ty),
        Type::Paren(inner) => find_impl_trait(&inner.elem),
        Type::Group(inner) => find_impl_trait(&inner.elem),
        Type::Reference(inner) => find_impl_trait(&inner.elem),
        Type::Ptr(inner) => find_impl_trait(&inner.elem),
        Type::Slice(inner) => find_impl_trait(&inner.elem),
        Type::Array(inner) => find_impl_trait(&inner.elem),
        Type::Tuple(tuple) => tuple.elems.iter().find_map(find_impl_trait),
        Type::Path(path) => path.path.segments.iter().find_map(|segment| {
            let PathArguments::AngleBracketed(args) = &segment.arguments else {
                return None;
            };
            args.args.iter().find_map(|arg| match arg {
                GenericArgument::Type(ty) => find_impl_trait(ty),
                _ => None,
            })
        }),
        _ => None,
    }
}
