//! Parsing `pipeline![...]`.
//!
//! The input is never parsed as one `syn::Expr`: `a | b` would be a bitwise or, and `|x|`
//! would open a closure. It is a list of stage references separated by `|`, each one a path,
//! a call, or a block. A stage that does not parse is reported and skipped up to the next
//! `|`, so several bad stages give several errors in one build.

use proc_macro2::{Span, TokenStream, TokenTree};
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::{Block, Expr, Path, Token, token};

use crate::errors::Errors;

/// The input of `pipeline![...]`.
///
/// ```text
/// pipeline := stage ( '|' stage )*
/// stage    := path                     a #[stage] fn without bound parameters
///           | path '(' args ')'        a #[stage] fn and its bound parameters
///           | '{' statements '}'       a block whose value is a `Stage` or a `Source`
/// path     := '::'? IDENT ( '::' IDENT )*
/// args     := ( expr ( ',' expr )* ','? )?
/// ```
pub struct Pipeline {
    /// The stages, in order; at least one.
    pub stages: Vec<StageRef>,
}

/// One stage of a pipeline, as written.
pub enum StageRef {
    /// `add_n` or `add_n(7)`: a `#[stage]` function.
    Fn {
        /// The function's path.
        path: Path,
        /// The bound parameters, if the stage is written as a call.
        args: Option<(token::Paren, Punctuated<Expr, Token![,]>)>,
    },
    /// `{ expr }`: any block whose value is a stage.
    Block(Block),
}

impl StageRef {
    /// The stage's name in messages: the function's name, or `{ ... }` for a block.
    pub fn name(&self) -> String {
        match self {
            StageRef::Fn { path, .. } => match path.segments.last() {
                Some(last) => syn::ext::IdentExt::unraw(&last.ident).to_string(),
                None => String::from("?"),
            },
            StageRef::Block(_) => String::from("{ ... }"),
        }
    }

    /// The span of the stage's first token and of its last one.
    pub fn spans(&self) -> (Span, Span) {
        match self {
            StageRef::Fn { path, args } => {
                let first = match &path.leading_colon {
                    Some(colon) => colon.spans[0],
                    None => path
                        .segments
                        .first()
                        .map_or_else(Span::call_site, |s| s.ident.span()),
                };
                let last = match args {
                    Some((paren, _)) => paren.span.close(),
                    None => path
                        .segments
                        .last()
                        .map_or(first, |segment| segment.ident.span()),
                };
                (first, last)
            }
            StageRef::Block(block) => (
                block.brace_token.span.open(),
                block.brace_token.span.close(),
            ),
        }
    }
}

impl Parse for Pipeline {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        if input.is_empty() {
            let message = "a pipeline needs at least one stage, e.g. `pipeline![parse | enrich]`";
            return Err(syn::Error::new(Span::call_site(), message));
        }
        let mut stages = Vec::new();
        let mut errors = Errors::default();
        loop {
            if input.peek(Token![|]) || input.peek(Token![move]) {
                // A closure: its own `|`s are not stage separators, so nothing after it can
                // be read reliably.
                let message = "a closure is not a stage; write `{ Stage::map(\"name\", |x: \
                               u64| x + 1) }` or make it a `#[stage]` fn";
                errors.push(input.error(message));
                input.parse::<TokenStream>()?;
                break;
            }
            match input.call(parse_stage) {
                Ok(stage) => stages.push(stage),
                Err(error) => {
                    errors.push(error);
                    skip_to_bar(input)?;
                }
            }
            if input.is_empty() {
                break;
            }
            if input.peek(Token![|]) {
                input.parse::<Token![|]>()?;
                if input.is_empty() {
                    errors.push(input.error("expected a stage after the last `|`; remove it"));
                    break;
                }
            } else {
                errors.push(input.error("expected `|` between two stages"));
                skip_to_bar(input)?;
                if input.peek(Token![|]) {
                    input.parse::<Token![|]>()?;
                }
            }
        }
        errors.finish(Pipeline { stages })
    }
}

/// Parses one stage: `path`, `path(args)` or `{ block }`.
fn parse_stage(input: ParseStream<'_>) -> syn::Result<StageRef> {
    if input.peek(token::Brace) {
        return input.parse().map(StageRef::Block);
    }
    if !(input.peek(syn::Ident)
        || input.peek(Token![::])
        || input.peek(Token![crate])
        || input.peek(Token![super])
        || input.peek(Token![self]))
    {
        let message = "expected a stage: the name of a `#[stage]` fn, `name(args)`, or \
                       `{ expression }` for any other `Stage` value";
        return Err(input.error(message));
    }
    let path = input.call(Path::parse_mod_style)?;
    let args = if input.peek(token::Paren) {
        let content;
        let paren = syn::parenthesized!(content in input);
        Some((paren, content.call(Punctuated::parse_terminated)?))
    } else {
        None
    };
    if !input.is_empty() && !input.peek(Token![|]) {
        let message = format!(
            "expected `|` or `(arguments)` after `{}`",
            path.segments
                .last()
                .map(|s| s.ident.to_string())
                .unwrap_or_default()
        );
        return Err(syn::Error::new(input.span(), message));
    }
    Ok(StageRef::Fn { path, args })
}

/// Skips tokens up to the next `|` (not consumed) or the end.
fn skip_to_bar(input: ParseStream<'_>) -> syn::Result<()> {
    input.step(|cursor| {
        let mut rest = *cursor;
        while let Some((tree, next)) = rest.token_tree() {
            if matches!(&tree, TokenTree::Punct(punct) if punct.as_char() == '|') {
                break;
            }
            rest = next;
        }
        Ok(((), rest))
    })
}
