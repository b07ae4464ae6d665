//! The procedural macros of forkpipe: `#[stage]` and `pipeline!`.
//!
//! Users depend on `forkpipe` and import these through `forkpipe::prelude`; the user guide,
//! with examples of every form, lives in the facade's docs. The generated code names runtime
//! items only through `::forkpipe::__private` (see `paths`).
//!
//! Each macro goes through the same phases, one per file: parse the input into typed
//! structures that keep the user's tokens for spans, check the rules that span several parts
//! (`valid`), then expand with `quote!` only.

mod errors;
mod paths;
mod pipeline;
mod stage;

use proc_macro::TokenStream;

/// Makes a free `fn` a pipeline stage, usable in [`pipeline!`] by its name.
///
/// The function stays an ordinary function. Its signature says what kind of stage it is: the
/// first parameter is the item; it returns `T` (one output), `Result<T, E>` (output or item
/// error, `E: Display`), `Option<T>` (`None` drops the item) or `()`; a `&mut Emit<T>`
/// parameter sends zero or more outputs per item; any other parameter is bound when
/// composing (`add_n(7)`) and must be `Clone + Send + Sync + 'static`.
///
/// Options: `subprocess`, `workers = N`, `unordered`, `queue = N`, `name = "..."`, and
/// `source` (a first stage without input, returning `impl Iterator<Item = T>`).
///
/// ```ignore
/// #[stage(workers = 4)]
/// fn add_n(x: u64, n: u64) -> u64 {
///     x + n
/// }
/// ```
/// keeps `add_n` and adds what `pipeline![add_n(7)]` calls, the same as writing
/// ```ignore
/// Stage::map("add_n", move |x: u64| add_n(x, n.clone())).workers(4)
/// ```
/// Generic, `async`, `unsafe` functions and methods cannot be stages.
#[proc_macro_attribute]
pub fn stage(args: TokenStream, item: TokenStream) -> TokenStream {
    let item = proc_macro2::TokenStream::from(item);
    let plan = stage::parse(args.into(), &item);
    let expanded = plan.map(|plan| stage::expand(&item, &plan));
    expanded
        .unwrap_or_else(|error| stage::fallback(&item, error))
        .into()
}

/// Composes stages into a `Pipeline`, checking at compile time that each stage takes what the
/// one before it produces.
///
/// Stages are separated by `|`; each is the name of a [`macro@stage`] function, with its bound
/// parameters in parentheses if it has any, or a `{ block }` whose value is a `Stage` (or, in
/// first place, a `Source`).
///
/// ```ignore
/// let p = pipeline![numbers(10) | add_n(1) | { Stage::map("show", |x: u64| x.to_string()) }];
/// ```
/// is the same as the builder code
/// ```ignore
/// let p = Pipeline::new(Source::new("numbers", move || numbers(10)))
///     .then(Stage::map("add_n", move |x: u64| add_n(x, 1)))
///     .then(Stage::map("show", |x: u64| x.to_string()));
/// ```
/// A stage whose input type differs from the previous stage's output is an error naming both
/// stages and both types: ``stage `add_n` takes `u64` but `to_text` produces `String` ``.
#[proc_macro]
pub fn pipeline(input: TokenStream) -> TokenStream {
    let input = syn::parse::<pipeline::Pipeline>(input);
    let expanded = input.map(|input| pipeline::expand(&input));
    expanded.unwrap_or_else(pipeline::errors).into()
}
