//! Parsing the options of `#[stage(...)]` into typed slots.
//!
//! Each option has one slot that remembers the span of its tokens, so a later error (or the
//! expansion) can point at exactly what the user wrote. A repeated option or a bad value is
//! rejected right where it is written; the parser goes on, so every such mistake is reported
//! in one build. Adding an option is a slot in [`Args`], a keyword, and a match arm in
//! [`Args::parse`].

use proc_macro2::Span;
use syn::ext::IdentExt;
use syn::parse::{Parse, ParseStream};
use syn::{Ident, LitInt, LitStr, Path, Token};

use crate::errors::Errors;

mod kw {
    syn::custom_keyword!(subprocess);
    syn::custom_keyword!(workers);
    syn::custom_keyword!(unordered);
    syn::custom_keyword!(queue);
    syn::custom_keyword!(name);
    syn::custom_keyword!(source);
    syn::custom_keyword!(stream);
    syn::custom_keyword!(init);
    syn::custom_keyword!(when);
    syn::custom_keyword!(timeout_ms);
    syn::custom_keyword!(pipe_next);
    syn::custom_keyword!(distributed);
}

/// The options, as listed in the error for an unknown one.
const VALID: &str = "`subprocess`, `workers = N`, `unordered`, `queue = N`, `name = \"...\"`, \
                     `source`, `stream`, `init = path`, `when = path`, `timeout_ms = N`, \
                     `pipe_next`, `distributed`";

/// The options of `#[stage(...)]`, each parsed once.
///
/// ```text
/// args   := ( option ( ',' option )* ','? )?
/// option := 'subprocess'
///         | 'workers' '=' INTEGER       (at least 1)
///         | 'unordered'
///         | 'queue' '=' INTEGER         (at least 1)
///         | 'name' '=' STRING
///         | 'source'
///         | 'stream'
///         | 'init' '=' PATH
///         | 'when' '=' PATH
///         | 'timeout_ms' '=' INTEGER    (at least 1)
///         | 'pipe_next'
///         | 'distributed'
/// ```
#[derive(Default)]
pub struct Args {
    /// `subprocess`: the span of the keyword.
    pub subprocess: Option<Span>,
    /// `workers = N`.
    pub workers: Option<Count>,
    /// `unordered`: the span of the keyword.
    pub unordered: Option<Span>,
    /// `queue = N`.
    pub queue: Option<Count>,
    /// `name = "..."`.
    pub name: Option<LitStr>,
    /// `source`: the span of the keyword.
    pub source: Option<Span>,
    /// `stream`: the span of the keyword.
    pub stream: Option<Span>,
    /// `init = path`.
    pub init: Option<PathOption>,
    /// `when = path`.
    pub when: Option<PathOption>,
    /// `timeout_ms = N`.
    pub timeout_ms: Option<Count>,
    /// `pipe_next`: the span of the keyword.
    pub pipe_next: Option<Span>,
    /// `distributed`: the span of the keyword.
    pub distributed: Option<Span>,
}

/// The value of a `key = path` option.
pub struct PathOption {
    /// The span of the key (`init`).
    pub key: Span,
    /// The path as written.
    pub path: Path,
}

/// The value of a `key = N` option, already checked to be at least 1.
pub struct Count {
    /// The span of the key (`workers`).
    pub key: Span,
    /// The literal as written, for its span.
    pub lit: LitInt,
    /// Its value.
    pub value: u64,
}

impl Parse for Args {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let mut args = Args::default();
        let mut errors = Errors::default();
        while !input.is_empty() {
            let lookahead = input.lookahead1();
            if lookahead.peek(kw::subprocess) {
                let key = input.parse::<kw::subprocess>()?;
                set(
                    &mut args.subprocess,
                    key.span,
                    key.span,
                    "subprocess",
                    &mut errors,
                );
            } else if lookahead.peek(kw::workers) {
                let key = input.parse::<kw::workers>()?;
                let count = parse_count(input, key.span, "workers", &mut errors)?;
                if let Some(count) = count {
                    set(&mut args.workers, count, key.span, "workers", &mut errors);
                }
            } else if lookahead.peek(kw::unordered) {
                let key = input.parse::<kw::unordered>()?;
                set(
                    &mut args.unordered,
                    key.span,
                    key.span,
                    "unordered",
                    &mut errors,
                );
            } else if lookahead.peek(kw::queue) {
                let key = input.parse::<kw::queue>()?;
                let count = parse_count(input, key.span, "queue", &mut errors)?;
                if let Some(count) = count {
                    set(&mut args.queue, count, key.span, "queue", &mut errors);
                }
            } else if lookahead.peek(kw::name) {
                let key = input.parse::<kw::name>()?;
                input.parse::<Token![=]>()?;
                let name: LitStr = input.parse()?;
                if name.value().is_empty() {
                    let message = "a stage name cannot be empty; write `name = \"parse\"` or leave \
                                   `name` out to use the function's name";
                    errors.push(syn::Error::new(name.span(), message));
                }
                set(&mut args.name, name, key.span, "name", &mut errors);
            } else if lookahead.peek(kw::source) {
                let key = input.parse::<kw::source>()?;
                set(&mut args.source, key.span, key.span, "source", &mut errors);
            } else if lookahead.peek(kw::stream) {
                let key = input.parse::<kw::stream>()?;
                set(&mut args.stream, key.span, key.span, "stream", &mut errors);
            } else if lookahead.peek(kw::init) {
                let key = input.parse::<kw::init>()?;
                let value = parse_path(input, key.span)?;
                set(&mut args.init, value, key.span, "init", &mut errors);
            } else if lookahead.peek(kw::when) {
                let key = input.parse::<kw::when>()?;
                let value = parse_path(input, key.span)?;
                set(&mut args.when, value, key.span, "when", &mut errors);
            } else if lookahead.peek(kw::timeout_ms) {
                let key = input.parse::<kw::timeout_ms>()?;
                let count = parse_count(input, key.span, "timeout_ms", &mut errors)?;
                if let Some(count) = count {
                    set(
                        &mut args.timeout_ms,
                        count,
                        key.span,
                        "timeout_ms",
                        &mut errors,
                    );
                }
            } else if lookahead.peek(kw::pipe_next) {
                let key = input.parse::<kw::pipe_next>()?;
                set(
                    &mut args.pipe_next,
                    key.span,
                    key.span,
                    "pipe_next",
                    &mut errors,
                );
            } else if lookahead.peek(kw::distributed) {
                let key = input.parse::<kw::distributed>()?;
                set(
                    &mut args.distributed,
                    key.span,
                    key.span,
                    "distributed",
                    &mut errors,
                );
            } else if input.peek(Ident::peek_any) {
                let unknown = input.call(Ident::parse_any)?;
                errors.push(unknown_option(&unknown));
                skip_option_value(input)?;
            } else {
                return Err(lookahead.error());
            }
            if input.is_empty() {
                break;
            }
            if !input.peek(Token![,]) {
                return Err(input.error("expected `,` between the options of `#[stage]`"));
            }
            input.parse::<Token![,]>()?;
        }
        errors.finish(args)
    }
}

/// Fills `slot`, or records that the option `key` is given twice (at the repeated key).
fn set<T>(slot: &mut Option<T>, value: T, key: Span, name: &str, errors: &mut Errors) {
    if slot.is_some() {
        let message = format!("`{name}` is given twice; keep one of them");
        errors.push(syn::Error::new(key, message));
    } else {
        *slot = Some(value);
    }
}

/// Parses `= path` after `init` or `when`.
fn parse_path(input: ParseStream<'_>, key: Span) -> syn::Result<PathOption> {
    input.parse::<Token![=]>()?;
    if !(input.peek(Ident::peek_any) || input.peek(Token![::])) {
        let message = "expected the path of a function, e.g. `init = connect`; write a closure \
                       as a named `fn`";
        return Err(input.error(message));
    }
    let path = input.call(Path::parse_mod_style)?;
    Ok(PathOption { key, path })
}

/// Parses `= N` after `workers`, `queue` or `timeout_ms`; a value of 0 is recorded as an
/// error at the literal and gives `None`.
fn parse_count(
    input: ParseStream<'_>,
    key: Span,
    name: &str,
    errors: &mut Errors,
) -> syn::Result<Option<Count>> {
    input.parse::<Token![=]>()?;
    let lit: LitInt = input.parse()?;
    let value: u64 = lit.base10_parse()?;
    if value == 0 {
        let message = format!("`{name}` must be at least 1; write `{name} = 1` or more");
        errors.push(syn::Error::new(lit.span(), message));
        return Ok(None);
    }
    Ok(Some(Count { key, lit, value }))
}

/// The error for an option that `#[stage]` does not know.
fn unknown_option(option: &Ident) -> syn::Error {
    let name = option.unraw().to_string();
    let message = format!("unknown option `{name}`; the options of `#[stage]` are {VALID}");
    syn::Error::new(option.span(), message)
}

/// Skips the rest of an unknown option (`= value`), up to the next `,`.
fn skip_option_value(input: ParseStream<'_>) -> syn::Result<()> {
    input.step(|cursor| {
        let mut rest = *cursor;
        while let Some((tree, next)) = rest.token_tree() {
            if matches!(&tree, proc_macro2::TokenTree::Punct(p) if p.as_char() == ',') {
                break;
            }
            rest = next;
        }
        Ok(((), rest))
    })
}
