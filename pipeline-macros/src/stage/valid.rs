//! The rules that combine a stage's options with its signature, and the resulting plan.
//!
//! [`Plan::new`] decides the stage's form (`map`, `try_map`, `filter_map`, `emit`,
//! `try_emit`, a `source`, a `stream`, or a `pipe_next` producer), whether it is a half of a
//! `pipe_next` pair, its input and output types, and what each parameter of the function
//! becomes; every rule that fails is reported, together, at the token to change.

use proc_macro2::Span;
use syn::spanned::Spanned;
use syn::{LitStr, Type};

use super::args::Args;
use super::sig::{Output, Param, PipeEnd, Sig, impl_iterator_item};
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
    /// The half of a `pipe_next` pair the stage is, if any.
    pub side: Option<Side>,
    /// The input type; `None` for a source.
    pub input: Option<Type>,
    /// The output type.
    pub output: Type,
    /// `S` of the `&mut S` state parameter, for a stage with `init`.
    pub state: Option<Type>,
    /// What each parameter of the function is, in order.
    pub roles: Vec<Role>,
}

/// The builder a stage is made with (with `init`, each of the first five goes through
/// `Stage::stateful`).
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
    /// `Stage::stream`: `#[stage(stream)]`.
    Stream,
    /// `Producer::new`: `#[stage(pipe_next)]`, returns `()`.
    Produce,
    /// `Producer::new`: `#[stage(pipe_next)]`, returns `Result<(), E>`.
    TryProduce,
}

/// The halves of a `pipe_next` pair. A consumer's [`Form`] is the form of its return type
/// (`Map` to `TryEmit`), made with `Consumer::emitting`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// `#[stage(pipe_next)]`, with a `&mut PipeWriter` parameter.
    Producer,
    /// A stage with a `&mut PipeReader` parameter.
    Consumer,
}

/// What one parameter of a stage function is.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The item (the first parameter, except for a source); for a stream, the items.
    Item,
    /// The `&mut Emit<T>` output channel.
    Emit,
    /// The `&mut S` per-worker state made by `init`.
    State,
    /// The `&mut PipeWriter` of a `pipe_next` stage.
    Writer,
    /// The `&mut PipeReader` of the stage after a `pipe_next` stage.
    Reader,
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
        let side = if args.pipe_next.is_some() {
            Some(Side::Producer)
        } else if sig.params.iter().any(|p| p.pipe == Some(PipeEnd::Reader)) {
            Some(Side::Consumer)
        } else {
            None
        };
        options(&args, side, &mut errors);
        let decided = if side.is_some() {
            stage(&args, &sig, side, &mut errors)
        } else if args.source.is_some() {
            source(&sig, &mut errors)
        } else if args.stream.is_some() {
            stream(&sig, &mut errors)
        } else {
            stage(&args, &sig, None, &mut errors)
        };
        errors.finish(Plan {
            args,
            sig,
            name,
            form: decided.form,
            side,
            input: decided.input,
            output: decided.output,
            state: decided.state,
            roles: decided.roles,
        })
    }
}

/// What the signature makes of a stage.
struct Decided {
    form: Form,
    input: Option<Type>,
    output: Type,
    state: Option<Type>,
    roles: Vec<Role>,
}

/// The rules between options: what `source`, `stream` and the halves of a `pipe_next` pair
/// exclude, and what `timeout_ms` needs.
fn options(args: &Args, side: Option<Side>, errors: &mut Errors) {
    if let Some(side) = side {
        pipe_options(args, side, errors);
    } else if let Some(source) = args.source {
        return source_options(args, source, errors);
    } else if args.stream.is_some() {
        stream_options(args, errors);
    }
    if let (Some(timeout), None) = (&args.timeout_ms, args.subprocess) {
        let message = "`timeout_ms` needs `subprocess`: a thread cannot be killed; add \
                       `subprocess` or remove `timeout_ms`";
        errors.push(syn::Error::new(timeout.key, message));
    }
    distributed_options(args, side, errors);
}

/// What `distributed` excludes: a stage that must stay beside its neighbours or see the
/// whole stream.
fn distributed_options(args: &Args, side: Option<Side>, errors: &mut Errors) {
    let Some(span) = args.distributed else {
        return;
    };
    let why = if args.source.is_some() {
        Some("a `source` runs on the feeding thread of the caller")
    } else if args.stream.is_some() {
        Some("a `stream` stage sees the whole stream in one place")
    } else if side.is_some() {
        Some("the halves of a `pipe_next` pair share a byte stream on one machine")
    } else {
        None
    };
    if let Some(why) = why {
        let message = format!("`distributed` does not apply here: {why}; remove `distributed`");
        errors.push(syn::Error::new(span, message));
    }
}

/// The span of an option's key, if it was given.
fn key(option: &Option<super::args::PathOption>) -> Option<Span> {
    option.as_ref().map(|path| path.key)
}

/// The span of a counted option's key, if it was given.
fn count(option: &Option<super::args::Count>) -> Option<Span> {
    option.as_ref().map(|count| count.key)
}

/// What the halves of a `pipe_next` pair exclude.
fn pipe_options(args: &Args, side: Side, errors: &mut Errors) {
    let (stage, not_for_pipe) = match side {
        Side::Producer => (
            "a `pipe_next` stage",
            [
                (
                    args.source,
                    "source",
                    "a `source` takes no item, and a `pipe_next` stage writes bytes for \
                     each item it takes",
                ),
                (
                    args.stream,
                    "stream",
                    "a `stream` stage takes its whole input at once, and a `pipe_next` \
                     stage writes bytes for each item",
                ),
                (
                    key(&args.init),
                    "init",
                    "the halves of a `pipe_next` pair keep no per-worker state",
                ),
                (
                    key(&args.when),
                    "when",
                    "an item that skipped the stage would leave the stage after it \
                     nothing to read",
                ),
                (
                    args.unordered,
                    "unordered",
                    "the stage after it reads the items in the order they are written; \
                     move `unordered` to that stage",
                ),
            ],
        ),
        Side::Consumer => (
            "a stage that takes `&mut PipeReader`",
            [
                (
                    count(&args.workers),
                    "workers",
                    "a consumer runs as many workers as its `pipe_next` producer; set \
                     `workers` there",
                ),
                (
                    args.source,
                    "source",
                    "a `source` takes no item, and this stage reads the bytes written for \
                     each item",
                ),
                (
                    args.stream,
                    "stream",
                    "a `stream` stage takes its whole input at once, and this stage reads \
                     the bytes written for each item",
                ),
                (
                    key(&args.init),
                    "init",
                    "the halves of a `pipe_next` pair keep no per-worker state",
                ),
                (
                    key(&args.when),
                    "when",
                    "an item that skipped the stage would leave the bytes written for it \
                     unread",
                ),
            ],
        ),
    };
    for (span, option, why) in not_for_pipe {
        if let Some(span) = span {
            let what_to_do = if why.contains("there") || why.contains("move") {
                String::new()
            } else {
                format!("; remove `{option}`")
            };
            let message = format!("`{option}` does not apply to {stage}: {why}{what_to_do}");
            errors.push(syn::Error::new(span, message));
        }
    }
}

/// What a `source` excludes: it runs on one thread of the caller.
fn source_options(args: &Args, source: Span, errors: &mut Errors) {
    let not_for_source = [
        (args.subprocess, "subprocess"),
        (count(&args.workers), "workers"),
        (args.unordered, "unordered"),
        (count(&args.queue), "queue"),
        (key(&args.init), "init"),
        (key(&args.when), "when"),
        (count(&args.timeout_ms), "timeout_ms"),
    ];
    for (span, option) in not_for_source {
        if let Some(span) = span {
            let message = format!(
                "`{option}` does not apply to a `source` stage, which runs on one thread \
                 of the caller; remove `{option}`"
            );
            errors.push(syn::Error::new(span, message));
        }
    }
    if let Some(stream) = args.stream {
        let message = "a stage is either a `source` (no input) or a `stream` (the whole \
                       input); remove one of them";
        let mut error = syn::Error::new(stream, message);
        error.combine(syn::Error::new(source, message));
        errors.push(error);
    }
}

/// What a `stream` stage excludes.
fn stream_options(args: &Args, errors: &mut Errors) {
    let not_for_stream = [
        (
            key(&args.init),
            "init",
            "a `stream` stage runs once per worker, so it keeps its state in locals of the \
             function",
        ),
        (
            key(&args.when),
            "when",
            "`when` chooses single items, and a `stream` stage takes the whole input; \
             filter inside the function",
        ),
        (
            count(&args.timeout_ms),
            "timeout_ms",
            "`timeout_ms` limits the time of one item, and a `stream` stage takes the whole \
             input",
        ),
    ];
    for (span, option, why) in not_for_stream {
        if let Some(span) = span {
            let message =
                format!("`{option}` does not apply to a `stream` stage: {why}; remove `{option}`");
            errors.push(syn::Error::new(span, message));
        }
    }
}

/// The rules of `#[stage(source)]`: every parameter is bound, no `Emit`, no state, an
/// iterator returned.
fn source(sig: &Sig, errors: &mut Errors) -> Decided {
    for param in &sig.params {
        if param.emit.is_some() {
            let message = "a `source` stage has no `Emit` parameter; return the items as \
                           `impl Iterator<Item = T>`";
            errors.push(syn::Error::new_spanned(&param.ty, message));
        } else if param.pipe.is_some() {
            writer_without_pipe_next(param, errors);
        } else if param.state.is_some() {
            let message = "a `source` stage has no per-worker state; keep the state in the \
                           iterator it returns, and take bound parameters by value";
            errors.push(syn::Error::new_spanned(&param.ty, message));
        } else if impl_iterator_item(&param.ty).is_some() {
            let message = "a `source` stage has no input, only parameters bound when \
                           composing; for a stage that takes the whole input, write \
                           `#[stage(stream)]`";
            errors.push(syn::Error::new_spanned(&param.ty, message));
        } else {
            impl_trait_parameter(param, errors);
        }
    }
    let output = match &sig.output {
        Output::Unit => {
            let message = "a `source` stage returns its items; write \
                           `-> impl Iterator<Item = T>` (or any `IntoIterator`)";
            errors.push(syn::Error::new(sig.ident.span(), message));
            unit()
        }
        output => iterator_output(output, "source", errors),
    };
    Decided {
        form: Form::Source,
        input: None,
        output,
        state: None,
        roles: sig.params.iter().map(|_| Role::Bound).collect(),
    }
}

/// The rules of `#[stage(stream)]`: the items as `impl Iterator<Item = T>` first, then bound
/// parameters; the outputs returned as an iterator.
fn stream(sig: &Sig, errors: &mut Errors) -> Decided {
    let mut roles = Vec::with_capacity(sig.params.len());
    let mut input = None;
    for (index, param) in sig.params.iter().enumerate() {
        if param.emit.is_some() {
            let message = "a `stream` stage returns its outputs; remove `&mut Emit<T>` and \
                           return `impl Iterator<Item = T>`";
            errors.push(syn::Error::new_spanned(&param.ty, message));
            roles.push(Role::Emit);
            continue;
        }
        if param.pipe.is_some() {
            writer_without_pipe_next(param, errors);
            roles.push(Role::Writer);
            continue;
        }
        if param.state.is_some() && index > 0 {
            let message = "a `stream` stage has no per-worker state; keep the state in locals \
                           of the function, and take bound parameters by value";
            errors.push(syn::Error::new_spanned(&param.ty, message));
            roles.push(Role::Bound);
            continue;
        }
        if index > 0 {
            impl_trait_parameter(param, errors);
            roles.push(Role::Bound);
            continue;
        }
        match impl_iterator_item(&param.ty) {
            Some(item) => input = Some(item),
            None => {
                let message = "a `stream` stage takes `impl Iterator<Item = T>`: its whole \
                               input, e.g. `titles: impl Iterator<Item = String>`";
                errors.push(syn::Error::new_spanned(&param.ty, message));
            }
        }
        roles.push(Role::Item);
    }
    if sig.params.is_empty() {
        let message = "a `stream` stage takes its input as its first parameter, e.g. \
                       `titles: impl Iterator<Item = String>`";
        errors.push(syn::Error::new(sig.parens, message));
    }
    let output = match &sig.output {
        Output::Unit => {
            let message = "a `stream` stage returns its outputs; write \
                           `-> impl Iterator<Item = T>` (or any `IntoIterator`)";
            errors.push(syn::Error::new(sig.ident.span(), message));
            unit()
        }
        output => iterator_output(output, "stream", errors),
    };
    Decided {
        form: Form::Stream,
        input: Some(input.unwrap_or_else(unit)),
        output,
        state: None,
        roles,
    }
}

/// The item type of a returned iterator: `T` of `impl Iterator<Item = T>`, or
/// `<R as IntoIterator>::Item` of a concrete `R`.
fn iterator_output(output: &Output, form: &str, errors: &mut Errors) -> Type {
    match output {
        Output::Unit => unit(),
        Output::Opaque {
            item: Some(item), ..
        } => item.clone(),
        Output::Opaque { ty, item: None } => {
            let message = format!(
                "write `impl Iterator<Item = T>` or `impl IntoIterator<Item = T>` so that the \
                 item type of this `{form}` is known"
            );
            errors.push(syn::Error::new_spanned(ty, message));
            unit()
        }
        Output::Result { ty, .. } | Output::Option { ty, .. } | Output::Plain(ty) => {
            syn::parse_quote!(<#ty as ::core::iter::IntoIterator>::Item)
        }
    }
}

/// The rules of a stage that takes items one by one: the item first, at most one `Emit`, a
/// `&mut S` state exactly when there is an `init`, and a return type that fits the form. A
/// `pipe_next` producer (`side`) has exactly one `&mut PipeWriter` and returns `()` or
/// `Result<(), E>`; a consumer has exactly one `&mut PipeReader`; neither has state.
fn stage(args: &Args, sig: &Sig, side: Option<Side>, errors: &mut Errors) -> Decided {
    let Params {
        roles,
        emit,
        state,
        pipe_end,
    } = params(args, sig, side, errors);
    needed_parameters(args, sig, side, &state, pipe_end, errors);
    let input = match sig.params.first() {
        Some(param) => param.ty.clone(),
        None => {
            let message = "a stage takes its item as its first parameter, e.g. `fn double(x: \
                           u64) -> u64`; a stage without input is `#[stage(source)]`";
            errors.push(syn::Error::new(sig.parens, message));
            unit()
        }
    };
    if side == Some(Side::Producer) {
        return Decided {
            form: producer_form(sig, errors),
            output: input.clone(),
            input: Some(input),
            state: None,
            roles,
        };
    }
    let (form, output) = output_form(emit, sig, errors);
    Decided {
        form,
        input: Some(input),
        output,
        state,
        roles,
    }
}

/// What a stage's parameters are, and what they tell: the item of its `Emit`, its state
/// type, whether it has its end of a `pipe_next` pair.
struct Params {
    roles: Vec<Role>,
    emit: Option<Type>,
    state: Option<Type>,
    pipe_end: bool,
}

/// Each parameter's role, reporting every parameter that breaks a rule (see [`stage`]).
fn params(args: &Args, sig: &Sig, side: Option<Side>, errors: &mut Errors) -> Params {
    let mut roles = Vec::with_capacity(sig.params.len());
    let mut emit: Option<Type> = None;
    let mut state: Option<Type> = None;
    let mut pipe_end = false;
    for (index, param) in sig.params.iter().enumerate() {
        if index == 0 {
            first_parameter(param, errors);
        } else {
            impl_trait_parameter(param, errors);
        }
        if let Some(end) = param.pipe {
            if index > 0 {
                pipe_parameter(param, end, side, &mut pipe_end, errors);
            } else {
                // Reported by `first_parameter`; it counts as the stage's end of the pipe.
                pipe_end = true;
            }
            roles.push(match end {
                PipeEnd::Writer => Role::Writer,
                PipeEnd::Reader => Role::Reader,
            });
            continue;
        }
        let role = match (&param.emit, &param.state) {
            (Some(_), _) if index == 0 => Role::Emit,
            (Some(_), _) if side == Some(Side::Producer) => {
                let message = "a `pipe_next` stage hands its item to the next stage and writes \
                               bytes to its `&mut PipeWriter`; remove `&mut Emit<T>`";
                errors.push(syn::Error::new_spanned(&param.ty, message));
                Role::Emit
            }
            (Some(param_emit), _) if emit.is_none() => {
                emit = Some(param_emit.item.clone());
                Role::Emit
            }
            (Some(_), _) => {
                let message = "a stage has at most one `&mut Emit<T>` parameter; remove this one, and \
                               emit an `enum` if the stage makes outputs of two kinds";
                errors.push(syn::Error::new_spanned(&param.ty, message));
                Role::Emit
            }
            (None, _) if index == 0 => Role::Item,
            (None, Some(_)) if side.is_some() => {
                let message = "the halves of a `pipe_next` pair have no per-worker state; keep \
                               state in locals of the function, and take bound parameters by \
                               value";
                errors.push(syn::Error::new_spanned(&param.ty, message));
                Role::State
            }
            (None, Some(param_state)) => {
                match (&args.init, &state) {
                    (None, _) => {
                        let message = format!(
                            "a `&mut` parameter is per-worker state, made once in each worker by \
                             an `init` function: add `init = make_state` to `#[stage(...)]`, with \
                             `fn make_state() -> {}`",
                            type_text(param_state)
                        );
                        errors.push(syn::Error::new_spanned(&param.ty, message));
                    }
                    (Some(_), None) => state = Some(param_state.clone()),
                    (Some(_), Some(_)) => {
                        let message = "a stage has at most one `&mut` state parameter; put \
                                       everything `init` makes into one type and remove this \
                                       parameter";
                        errors.push(syn::Error::new_spanned(&param.ty, message));
                    }
                }
                Role::State
            }
            (None, None) => Role::Bound,
        };
        roles.push(role);
    }
    Params {
        roles,
        emit,
        state,
        pipe_end,
    }
}

/// The parameters an option needs: `init` a `&mut S` state, `pipe_next` a `&mut PipeWriter`.
fn needed_parameters(
    args: &Args,
    sig: &Sig,
    side: Option<Side>,
    state: &Option<Type>,
    pipe_end: bool,
    errors: &mut Errors,
) {
    if let (Some(init), None, None) = (&args.init, &state, side) {
        let message = format!(
            "`init` makes per-worker state for a `&mut S` parameter, and `{}` has none; add one \
             after the item, e.g. `state: &mut S`, or remove `init`",
            syn::ext::IdentExt::unraw(&sig.ident)
        );
        errors.push(syn::Error::new(init.key, message));
    }
    if let (Some(pipe_next), false) = (args.pipe_next, pipe_end) {
        let message = format!(
            "`pipe_next` streams bytes to the next stage through a `&mut PipeWriter`, and `{}` \
             has none; add one after the item, e.g. `out: &mut PipeWriter`",
            syn::ext::IdentExt::unraw(&sig.ident)
        );
        errors.push(syn::Error::new(pipe_next, message));
    }
}

/// The form of a `pipe_next` producer, by its return type: `()` or `Result<(), E>`.
fn producer_form(sig: &Sig, errors: &mut Errors) -> Form {
    match &sig.output {
        Output::Unit => Form::Produce,
        Output::Result { ok: Some(ok), .. } if is_unit(ok) => Form::TryProduce,
        output => {
            let message = "a `pipe_next` stage writes its output to its `&mut PipeWriter` \
                           and hands its item on unchanged; return `()` or `Result<(), E>`";
            errors.push(syn::Error::new(output_span(output, sig), message));
            Form::Produce
        }
    }
}

/// The form and output type of a stage, by its `Emit` item (if any) and its return type.
fn output_form(emit: Option<Type>, sig: &Sig, errors: &mut Errors) -> (Form, Type) {
    match (emit, &sig.output) {
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
                           `#[stage(source)]`; for one that takes the whole input, \
                           `#[stage(stream)]`)";
            errors.push(syn::Error::new_spanned(ty, message));
            (Form::Map, unit())
        }
        (None, Output::Plain(ty)) => (Form::Map, ty.clone()),
    }
}

/// A `&mut PipeWriter` or `&mut PipeReader` after the item: one of them, matching the
/// stage's half of a `pipe_next` pair; `found` says whether the stage's end was seen already.
fn pipe_parameter(
    param: &Param,
    end: PipeEnd,
    side: Option<Side>,
    found: &mut bool,
    errors: &mut Errors,
) {
    let message = match (end, side) {
        (PipeEnd::Writer, Some(Side::Producer)) | (PipeEnd::Reader, Some(Side::Consumer))
            if !*found =>
        {
            *found = true;
            return;
        }
        (PipeEnd::Writer, Some(Side::Producer)) => {
            "a `pipe_next` stage has one `&mut PipeWriter`; remove this one"
        }
        (PipeEnd::Reader, Some(Side::Consumer)) => {
            "a stage has at most one `&mut PipeReader`; remove this one"
        }
        (PipeEnd::Writer, Some(Side::Consumer)) => {
            "a stage cannot take both `&mut PipeReader` and `&mut PipeWriter`: it reads the bytes \
             of the `pipe_next` stage before it, and cannot also write bytes for the stage \
             after it; split it into two stages"
        }
        (PipeEnd::Reader, Some(Side::Producer)) => {
            "a `pipe_next` stage cannot also take `&mut PipeReader`: a stage reads the bytes of \
             the stage before it or writes bytes for the stage after it, not both; split it \
             into two stages"
        }
        (_, None) => return writer_without_pipe_next(param, errors),
    };
    errors.push(syn::Error::new_spanned(&param.ty, message));
}

/// The error for a `&mut PipeWriter` on a stage without `pipe_next`.
fn writer_without_pipe_next(param: &Param, errors: &mut Errors) {
    let message = match param.pipe {
        Some(PipeEnd::Reader) => {
            "a `&mut PipeReader` reads the bytes of a `pipe_next` stage, one item at a time; \
             a `source` or `stream` stage cannot take one"
        }
        _ => {
            "a `&mut PipeWriter` writes bytes for the next stage to read: add `pipe_next` to \
             `#[stage(...)]`"
        }
    };
    errors.push(syn::Error::new_spanned(&param.ty, message));
}

/// The item of a stage that takes items one by one: by value, not `Emit`, not `impl Trait`,
/// not an end of a pipe.
fn first_parameter(param: &Param, errors: &mut Errors) {
    if let Some(end) = param.pipe {
        let (ty, example) = match end {
            PipeEnd::Writer => (
                "PipeWriter",
                "fn compress(path: String, out: &mut PipeWriter)",
            ),
            PipeEnd::Reader => (
                "PipeReader",
                "fn upload(path: String, bytes: &mut PipeReader)",
            ),
        };
        let message = format!(
            "the first parameter of a stage is its item; put the item before `&mut {ty}`, e.g. \
             `{example}`"
        );
        errors.push(syn::Error::new_spanned(&param.ty, message));
    } else if param.emit.is_some() {
        let message = "the first parameter of a stage is its item; put the item before `&mut \
                       Emit<T>`, e.g. `fn words(line: String, out: &mut Emit<String>)`";
        errors.push(syn::Error::new_spanned(&param.ty, message));
    } else if param.state.is_some() {
        let message = "a stage takes its item by value, e.g. `fn bump(x: u64) -> u64`; \
                       per-worker state (`&mut S`, made by `init`) comes after the item";
        errors.push(syn::Error::new_spanned(&param.ty, message));
    } else if impl_iterator_item(&param.ty).is_some() {
        let message = "a stage that takes `impl Iterator<Item = T>` sees the whole input: write \
                       `#[stage(stream)]`, or take one item, e.g. `x: u64`";
        errors.push(syn::Error::new_spanned(&param.ty, message));
    } else {
        impl_trait_parameter(param, errors);
    }
}

/// The error for an `impl Trait` in a parameter's type.
fn impl_trait_parameter(param: &Param, errors: &mut Errors) {
    if let Some(impl_trait) = &param.impl_trait {
        let message = "an `impl Trait` parameter makes a stage generic; write the concrete type";
        errors.push(syn::Error::new_spanned(impl_trait, message));
    }
}

/// A type as the user would write it, for a message.
fn type_text(ty: &Type) -> String {
    let text = quote::ToTokens::to_token_stream(ty).to_string();
    // `TokenStream`'s text puts spaces around every token; undo the common ones.
    text.replace(" < ", "<")
        .replace(" <", "<")
        .replace("< ", "<")
        .replace(" >", ">")
        .replace(" ,", ",")
        .replace(" :: ", "::")
        .replace(":: ", "::")
        .replace("& ", "&")
}

/// Where to point at a return type.
fn output_span(output: &Output, sig: &Sig) -> Span {
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
