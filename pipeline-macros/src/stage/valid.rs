//! The rules that combine a stage's options with its signature, and the resulting plan.
//!
//! [`Plan::new`] decides the stage's form (`map`, `try_map`, `filter_map`, `emit`,
//! `try_emit`, or a source), its input and output types, and what each parameter of the
//! function becomes; every rule that fails is reported, together, at the token to change.

use syn::spanned::Spanned;
use syn::{LitStr, Type};

use super::args::Args;
use super::sig::{Output, Sig};
use crate::errors::Errors;

/// Everything the expansion needs, checked.
pub struct Plan {
    /// The options.
    pub args: Args,
    /// The signature.
    pub sig: Sig,
    /// The stage's name in errors, stats and progress.
    pub name: LitStr,
    /// Which builder makes the stage.
    pub form: Form,
    /// The input type; `None` for a source.
    pub input: Option<Type>,
    /// The output type.
    pub output: Type,
    /// What each parameter of the function is, in order.
    pub roles: Vec<Role>,
}

/// The builder a stage is made with.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// `Stage::map`: returns `T` or `()`.
    Map,
    /// `Stage::try_map`: returns `Result<T, E>`.
    TryMap,
    /// `Stage::filter_map`: returns `Option<T>`.
    FilterMap,
    /// `Stage::emit`: takes `&mut Emit<T>`, returns `()`.
    Emit,
    /// `Stage::try_emit`: takes `&mut Emit<T>`, returns `Result<(), E>`.
    TryEmit,
    /// `Source::new`: `#[stage(source)]`.
    Source,
}

/// What one parameter of a stage function is.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The item (the first parameter, except for a source).
    Item,
    /// The `&mut Emit<T>` output channel.
    Emit,
    /// A parameter bound when composing: `add_n(7)`.
    Bound,
}

impl Plan {
    /// Checks `args` against `sig` and decides the stage's form.
    pub fn new(args: Args, sig: Sig) -> syn::Result<Plan> {
        let mut errors = Errors::default();
        let name = match &args.name {
            Some(name) => name.clone(),
            None => {
                let ident = syn::ext::IdentExt::unraw(&sig.ident);
                LitStr::new(&ident.to_string(), ident.span())
            }
        };
        let (form, input, output, roles) = if args.source.is_some() {
            source(&args, &sig, &mut errors)
        } else {
            stage(&sig, &mut errors)
        };
        errors.finish(Plan {
            args,
            sig,
            name,
            form,
            input,
            output,
            roles,
        })
    }
}

type Decided = (Form, Option<Type>, Type, Vec<Role>);

/// The rules of `#[stage(source)]`: no item, no `Emit`, an iterator returned, and none of the
/// options that configure workers.
fn source(args: &Args, sig: &Sig, errors: &mut Errors) -> Decided {
    let not_for_source = [
        (args.subprocess, "subprocess"),
        (args.workers.as_ref().map(|count| count.key), "workers"),
        (args.unordered, "unordered"),
        (args.queue.as_ref().map(|count| count.key), "queue"),
    ];
    for (span, option) in not_for_source {
        if let Some(span) = span {
            let message = format!(
                "`{option}` does not apply to a `source` stage, which runs on one thread of the \
                 caller; remove `{option}`"
            );
            errors.push(syn::Error::new(span, message));
        }
    }
    for param in &sig.params {
        if param.emit.is_some() {
            let message = "a `source` stage has no `Emit` parameter; return the items as \
                           `impl Iterator<Item = T>`";
            errors.push(syn::Error::new_spanned(&param.ty, message));
        }
    }
    let output = match &sig.output {
        Output::Unit => {
            let message = "a `source` stage returns its items; write \
                           `-> impl Iterator<Item = T>` (or any `IntoIterator`)";
            errors.push(syn::Error::new(sig.ident.span(), message));
            unit()
        }
        Output::Opaque {
            item: Some(item), ..
        } => item.clone(),
        Output::Opaque { ty, item: None } => {
            let message = "write `impl Iterator<Item = T>` or `impl IntoIterator<Item = T>` so \
                           that the item type of this `source` is known";
            errors.push(syn::Error::new_spanned(ty, message));
            unit()
        }
        Output::Result { ty, .. } | Output::Option { ty, .. } | Output::Plain(ty) => {
            syn::parse_quote!(<#ty as ::core::iter::IntoIterator>::Item)
        }
    };
    let roles = sig.params.iter().map(|_| Role::Bound).collect();
    (Form::Source, None, output, roles)
}

/// The rules of a stage that takes items: the item first, at most one `Emit`, and a return
/// type that fits the form.
fn stage(sig: &Sig, errors: &mut Errors) -> Decided {
    let mut roles = Vec::with_capacity(sig.params.len());
    let mut emit: Option<Type> = None;
    for (index, param) in sig.params.iter().enumerate() {
        let role = match &param.emit {
            Some(_) if index == 0 => {
                let message = "the first parameter of a stage is its item; put the item \
                               before `&mut Emit<T>`, e.g. `fn words(line: String, out: &mut \
                               Emit<String>)`";
                errors.push(syn::Error::new_spanned(&param.ty, message));
                Role::Emit
            }
            Some(param_emit) if emit.is_none() => {
                emit = Some(param_emit.item.clone());
                Role::Emit
            }
            Some(_) => {
                let message = "a stage has at most one `&mut Emit<T>` parameter; remove this one";
                errors.push(syn::Error::new_spanned(&param.ty, message));
                Role::Emit
            }
            None if index == 0 => Role::Item,
            None => Role::Bound,
        };
        roles.push(role);
    }
    let input = match sig.params.first() {
        Some(param) => param.ty.clone(),
        None => {
            let message = "a stage takes its item as its first parameter, e.g. `fn double(x: \
                           u64) -> u64`; a stage without input is `#[stage(source)]`";
            errors.push(syn::Error::new(sig.parens, message));
            unit()
        }
    };
    let (form, output) = match (emit, &sig.output) {
        (Some(item), Output::Unit) => (Form::Emit, item),
        (Some(item), Output::Result { ok: Some(ok), .. }) if is_unit(ok) => (Form::TryEmit, item),
        (Some(item), output) => {
            let message = "a stage with `&mut Emit<T>` sends its outputs through it; return \
                           `()` or `Result<(), E>`";
            errors.push(syn::Error::new(output_span(output, sig), message));
            (Form::Emit, item)
        }
        (None, Output::Unit) => (Form::Map, unit()),
        (None, Output::Result { ok: Some(ok), .. }) => (Form::TryMap, ok.clone()),
        (None, Output::Result { ty, ok: None }) => {
            let message = "cannot tell the output type from this `Result`; write \
                           `Result<T, E>` with the output type `T`";
            errors.push(syn::Error::new_spanned(ty, message));
            (Form::TryMap, unit())
        }
        (None, Output::Option { some, .. }) => (Form::FilterMap, some.clone()),
        (None, Output::Opaque { ty, .. }) => {
            let message = "a stage's output type must have a name; return a concrete type \
                           instead of `impl Trait` (or, for a stage without input, write \
                           `#[stage(source)]`)";
            errors.push(syn::Error::new_spanned(ty, message));
            (Form::Map, unit())
        }
        (None, Output::Plain(ty)) => (Form::Map, ty.clone()),
    };
    (form, Some(input), output, roles)
}

/// Where to point at a return type.
fn output_span(output: &Output, sig: &Sig) -> proc_macro2::Span {
    match output {
        Output::Unit => sig.ident.span(),
        Output::Result { ty, .. }
        | Output::Option { ty, .. }
        | Output::Opaque { ty, .. }
        | Output::Plain(ty) => ty.span(),
    }
}

fn unit() -> Type {
    syn::parse_quote!(())
}

fn is_unit(ty: &Type) -> bool {
    match ty {
        Type::Tuple(tuple) => tuple.elems.is_empty(),
        Type::Paren(paren) => is_unit(&paren.elem),
        Type::Group(group) => is_unit(&group.elem),
        _ => false,
    }
}
