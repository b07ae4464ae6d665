//! Parsing `pipeline![...]`.
//!
//! The input is never parsed as one `syn::Expr`: `a | b` would be a bitwise or, and `|x|`
//! would open a closure. It is a list of elements separated by `|`, each one a stage (a path,
//! a call, or a block) or a parenthesised group: a fan-out (`a | (b | c, d)`), or, first, a
//! fan-in of sources (`(s, t) | a`). A group holds `,`-separated branches, each a list of
//! elements like the pipeline itself. An element that does not parse is reported and skipped
//! up to the next `|` (or `,` in a group), so several bad stages give several errors in one
//! build.

use proc_macro2::{Span, TokenStream, TokenTree};
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::{Block, Expr, Path, Token, token};

use crate::errors::Errors;

/// The input of `pipeline![...]`.
///
/// ```text
/// pipeline := start ( '|' element )*
/// start    := stage
///           | '(' stage ( ',' stage )* ','? ')'    a fan-in: the items of all these sources
/// element  := stage
///           | '(' branch ( ',' branch )* ','? ')'  a fan-out: every item goes to each branch
/// branch   := element ( '|' element )*
/// stage    := path                     a #[stage] fn without bound parameters
///           | path '(' args ')'        a #[stage] fn and its bound parameters
///           | '{' statements '}'       a block whose value is a `Stage` or a `Source`
/// path     := '::'? IDENT ( '::' IDENT )*
/// args     := ( expr ( ',' expr )* ','? )?
/// ```
pub struct Pipeline {
    /// The first element: a stage, or the sources of a fan-in.
    pub start: Start,
    /// The elements after it, in order.
    pub rest: Vec<Element>,
}

/// The first element of a pipeline.
pub enum Start {
    /// A stage (or a source).
    Stage(StageRef),
    /// `(evens, odds)`: a fan-in of sources.
    FanIn(FanIn),
}

/// `(evens(500), odds(500))` at the start of a pipeline: its items are those of all the
/// sources.
pub struct FanIn {
    /// The parentheses.
    pub paren: token::Paren,
    /// The sources, in order; at least one.
    pub sources: Vec<StageRef>,
}

/// An element of a pipeline after its start, or of a branch.
pub enum Element {
    /// A stage.
    Stage(StageRef),
    /// `(index | store, thumbnail)`: a fan-out.
    FanOut(FanOut),
}

/// `(index | store, thumbnail)`: every item goes to each branch, and the item's outputs are
/// the branches' outputs together.
pub struct FanOut {
    /// The parentheses.
    pub paren: token::Paren,
    /// The branches, in order; at least one.
    pub branches: Vec<Branch>,
}

/// One branch of a fan-out: `index | store`.
pub struct Branch {
    /// Its elements, in order; at least one.
    pub elements: Vec<Element>,
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

impl Start {
    /// The first element's name in messages: the stage's, or `(evens, odds)`.
    pub fn name(&self) -> String {
        match self {
            Start::Stage(stage) => stage.name(),
            Start::FanIn(fan_in) => {
                let names: Vec<String> = fan_in.sources.iter().map(StageRef::name).collect();
                format!("({})", names.join(", "))
            }
        }
    }

    /// The span of its first token.
    pub fn first_span(&self) -> Span {
        match self {
            Start::Stage(stage) => stage.spans().0,
            Start::FanIn(fan_in) => fan_in.paren.span.open(),
        }
    }
}

impl Element {
    /// The element's name in messages: the stage's, or the fan-out as written with the
    /// stages' names, `(index | store, thumbnail)`.
    pub fn name(&self) -> String {
        match self {
            Element::Stage(stage) => stage.name(),
            Element::FanOut(fan_out) => fan_out.name(),
        }
    }

    /// The span of its first token.
    pub fn first_span(&self) -> Span {
        match self {
            Element::Stage(stage) => stage.spans().0,
            Element::FanOut(fan_out) => fan_out.paren.span.open(),
        }
    }
}

impl FanOut {
    /// The fan-out as written with the stages' names: `(index | store, thumbnail)`.
    pub fn name(&self) -> String {
        let names: Vec<String> = self.branches.iter().map(Branch::name).collect();
        format!("({})", names.join(", "))
    }
}

impl Branch {
    /// The branch as written with the stages' names: `index | store`.
    pub fn name(&self) -> String {
        let names: Vec<String> = self.elements.iter().map(Element::name).collect();
        names.join(" | ")
    }

    /// The span of its first token.
    pub fn first_span(&self) -> Span {
        self.elements
            .first()
            .map_or_else(Span::call_site, Element::first_span)
    }
}

/// Where a list of `|`-separated elements is parsed: the whole input, or a branch in a
/// group, which a `,` ends.
#[derive(Clone, Copy, PartialEq)]
enum Within {
    Pipeline,
    Group,
}

/// What a group means in the place where it is parsed.
#[derive(Clone, Copy, PartialEq)]
enum GroupKind {
    /// First in the pipeline: the sources it merges.
    FanIn,
    /// Anywhere else: the branches an item goes to.
    FanOut,
}

impl Parse for Pipeline {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        if input.is_empty() {
            let message = "a pipeline needs at least one stage, e.g. `pipeline![parse | enrich]`";
            return Err(syn::Error::new(Span::call_site(), message));
        }
        let mut errors = Errors::default();
        let mut elements = parse_chain(input, Within::Pipeline, &mut errors)?.into_iter();
        let start = match elements.next() {
            Some(Element::Stage(stage)) => Some(Start::Stage(stage)),
            Some(Element::FanOut(group)) => errors.take(fan_in(group)).map(Start::FanIn),
            None => None,
        };
        let rest = elements.collect();
        match start {
            Some(start) => errors.finish(Pipeline { start, rest }),
            None => Err(errors.into_error()),
        }
    }
}

/// The group first in a pipeline as a fan-in: one source per branch.
fn fan_in(group: FanOut) -> syn::Result<FanIn> {
    let mut errors = Errors::default();
    let mut sources = Vec::new();
    for branch in group.branches {
        let mut elements = branch.elements.into_iter();
        match (elements.next(), elements.next()) {
            (Some(Element::Stage(stage)), None) => sources.push(stage),
            (Some(Element::Stage(_)), Some(second)) => {
                let message = "a fan-in at the start of a pipeline merges sources, one per \
                               element: put the stages that follow the sources after the \
                               parentheses, e.g. `pipeline![(evens, odds) | double]`";
                errors.push(syn::Error::new(second.first_span(), message));
            }
            (Some(Element::FanOut(inner)), _) => {
                let message = "a fan-in at the start of a pipeline merges sources, one per \
                               element: list the sources themselves, without parentheses, \
                               e.g. `pipeline![(evens, odds, primes) | double]`";
                errors.push(syn::Error::new(inner.paren.span.open(), message));
            }
            (None, _) => {}
        }
    }
    errors.finish(FanIn {
        paren: group.paren,
        sources,
    })
}

/// Parses `element ( '|' element )*` up to the end of `input` (or, in a group, a `,`). The
/// first element of the whole pipeline is parsed as a fan-in if it is a group.
fn parse_chain(
    input: ParseStream<'_>,
    within: Within,
    errors: &mut Errors,
) -> syn::Result<Vec<Element>> {
    let mut elements = Vec::new();
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
        let kind = if within == Within::Pipeline && elements.is_empty() {
            GroupKind::FanIn
        } else {
            GroupKind::FanOut
        };
        match parse_element(input, within, kind, errors) {
            Ok(element) => elements.push(element),
            Err(error) => {
                errors.push(error);
                skip_to_separator(input, within)?;
            }
        }
        if at_end(input, within) {
            break;
        }
        if !input.peek(Token![|]) {
            errors.push(input.error("expected `|` between two stages"));
            skip_to_separator(input, within)?;
            if at_end(input, within) {
                break;
            }
        }
        input.parse::<Token![|]>()?;
        if at_end(input, within) {
            errors.push(input.error("expected a stage after the last `|`; remove it"));
            break;
        }
    }
    Ok(elements)
}

/// True at the end of the elements: the end of the input, or a `,` in a group.
fn at_end(input: ParseStream<'_>, within: Within) -> bool {
    input.is_empty() || (within == Within::Group && input.peek(Token![,]))
}

/// Parses one element: a stage, or a parenthesised group (a fan-out, or a fan-in as
/// `kind` says; a fan-in is checked by [`fan_in`] once parsed).
fn parse_element(
    input: ParseStream<'_>,
    within: Within,
    kind: GroupKind,
    errors: &mut Errors,
) -> syn::Result<Element> {
    if !input.peek(token::Paren) {
        return parse_stage(input, within).map(Element::Stage);
    }
    let content;
    let paren = syn::parenthesized!(content in input);
    if content.is_empty() {
        let message = match kind {
            GroupKind::FanIn => {
                "a fan-in needs at least one source: write the sources in the parentheses, \
                 separated by `,`, e.g. `pipeline![(evens(500), odds(500)) | double]`"
            }
            GroupKind::FanOut => {
                "a fan-out needs at least one branch: write the branches in the parentheses, \
                 separated by `,`, e.g. `parse | (index | store, thumbnail)`"
            }
        };
        return Err(syn::Error::new(paren.span.join(), message));
    }
    let branches = parse_branches(&content, kind, errors)?;
    Ok(Element::FanOut(FanOut { paren, branches }))
}

/// Parses `branch ( ',' branch )* ','?`, the inside of a group; a missing branch (`(a, , b)`)
/// is reported and skipped.
fn parse_branches(
    input: ParseStream<'_>,
    kind: GroupKind,
    errors: &mut Errors,
) -> syn::Result<Vec<Branch>> {
    let mut branches = Vec::new();
    while !input.is_empty() {
        if input.peek(Token![,]) {
            let message = match kind {
                GroupKind::FanIn => {
                    "expected a source before this `,`: a fan-in merges one source per \
                     element, e.g. `(evens(500), odds(500))`"
                }
                GroupKind::FanOut => {
                    "expected a branch before this `,`: each branch of a fan-out has at least \
                     one stage, e.g. `(index | store, thumbnail)`"
                }
            };
            errors.push(input.error(message));
        } else {
            let elements = parse_chain(input, Within::Group, errors)?;
            if !elements.is_empty() {
                branches.push(Branch { elements });
            }
        }
        if !input.is_empty() {
            input.parse::<Token![,]>()?;
        }
    }
    Ok(branches)
}

/// Parses one stage: `path`, `path(args)` or `{ block }`.
fn parse_stage(input: ParseStream<'_>, within: Within) -> syn::Result<StageRef> {
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
    if !input.peek(Token![|]) && !at_end(input, within) {
        let name = path
            .segments
            .last()
            .map(|s| s.ident.to_string())
            .unwrap_or_default();
        let message = match within {
            Within::Pipeline => format!("expected `|` or `(arguments)` after `{name}`"),
            Within::Group => format!("expected `|`, `,` or `(arguments)` after `{name}`"),
        };
        return Err(syn::Error::new(input.span(), message));
    }
    Ok(StageRef::Fn { path, args })
}

/// Skips tokens up to the next `|` (not consumed), the next `,` in a group, or the end.
fn skip_to_separator(input: ParseStream<'_>, within: Within) -> syn::Result<()> {
    input.step(|cursor| {
        let mut rest = *cursor;
        while let Some((tree, next)) = rest.token_tree() {
            if let TokenTree::Punct(punct) = &tree {
                let c = punct.as_char();
                if c == '|' || (c == ',' && within == Within::Group) {
                    break;
                }
            }
            rest = next;
        }
        Ok(((), rest))
    })
}
