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
mod main_attr;
mod paths;
mod pipeline;
mod stage;

use proc_macro::TokenStream;

/// Makes a free `fn` a pipeline stage, usable in [`pipeline!`] by its name.
///
/// The function stays an ordinary function that can be called and unit-tested without any
/// process; beside it, `#[stage]` adds what `pipeline![name]` calls to make the stage. Its
/// signature says what kind of stage it is:
///
/// | part of the signature | meaning |
/// | --- | --- |
/// | first parameter | the item (none for `source`; `impl Iterator<Item = T>` for `stream`) |
/// | return `T` / `Result<T, E>` / `Option<T>` / `()` | one output / output or item error (`E: Display`) / output or dropped / a sink |
/// | a `&mut Emit<T>` parameter | zero or more outputs per item, in order; return `()` or `Result<(), E>` |
/// | a `&mut PipeWriter` parameter | with `pipe_next`: writes a byte stream for each item to the next stage |
/// | a `&mut PipeReader` parameter | reads the byte stream of the `pipe_next` stage before it |
/// | a `&mut S` parameter | per-worker state, made by `init` |
/// | any other parameter | bound when composing, `add_n(7)`: `Clone + Send + Sync + 'static` |
///
/// Generic, `async` and `unsafe` functions and methods cannot be stages.
///
/// ```
/// use forkpipe::prelude::*;
///
/// #[stage(workers = 2)]
/// fn add_n(x: u64, n: u64) -> u64 {
///     x + n
/// }
///
/// let out: Vec<u64> = pipeline![add_n(7)].run(0..3u64)?.collect::<Result<_, _>>()?;
/// assert_eq!(out, [7, 8, 9]);
///
/// // The same pipeline in builder code: what `#[stage]` and `pipeline!` expand to.
/// let n = 7;
/// let stage = Stage::map("add_n", move |x: u64| add_n(x, Clone::clone(&n))).workers(2);
/// let out: Vec<u64> = Pipeline::new(stage).run(0..3u64)?.collect::<Result<_, _>>()?;
/// assert_eq!(out, [7, 8, 9]);
/// assert_eq!(add_n(1, 2), 3); // still an ordinary function
/// # Ok::<(), forkpipe::Error>(())
/// ```
///
/// Each form is one builder: `T` is `Stage::map`, `Result<T, E>` is `Stage::try_map`,
/// `Option<T>` is `Stage::filter_map`, `&mut Emit<T>` is `Stage::emit` (or `Stage::try_emit`
/// when it returns `Result<(), E>`), and `()` is a `Stage::map` whose outputs are `()`.
///
/// # Options
///
/// | option | meaning | builder |
/// | --- | --- | --- |
/// | `subprocess` | run in forked worker processes; items must be `Serialize + Deserialize` | `.subprocess()` |
/// | `workers = N` | `N` parallel workers, `N` ≥ 1 (default 1) | `.workers(N)` |
/// | `unordered` | outputs may overtake each other | `.unordered()` |
/// | `queue = N` | items that may wait between this stage and the next, `N` ≥ 1 | `.queue(N)` |
/// | `name = "..."` | the name in errors and stats (default: the function's name) | the builder's first argument |
/// | `source` | a first stage without input: returns the items | `Source::new` |
/// | `stream` | sees its whole input as an iterator (reductions, windows) | `Stage::stream` |
/// | `init = path` | per-worker state: `path() -> S` or `Result<S, E>`, passed as `&mut S` | `Stage::stateful` |
/// | `when = path` | `path(&In) -> bool`: rejected items skip the stage unchanged (needs In = Out) | `.when(path)` |
/// | `timeout_ms = N` | an item running longer than `N` ms fails and its worker is replaced (needs `subprocess`) | `.timeout(Duration::from_millis(N))` |
/// | `pipe_next` | this stage and the next run at the same time on each item, joined by a byte stream | `Producer::new`, `Pipeline::then_pipe` |
///
/// ## `subprocess`, `workers`, `unordered`, `queue`, `name`
///
/// ```
/// use forkpipe::prelude::*;
///
/// #[stage(subprocess, workers = 2, unordered, queue = 16, name = "squared")]
/// fn square(x: u64) -> u64 {
///     x * x
/// }
///
/// let mut out: Vec<u64> = pipeline![square].run(0..4u64)?.collect::<Result<_, _>>()?;
/// out.sort_unstable(); // `unordered`: in completion order
/// assert_eq!(out, [0, 1, 4, 9]);
///
/// // The same stage in builder code:
/// let stage = Stage::map("squared", |x: u64| square(x))
///     .subprocess()
///     .workers(2)
///     .unordered()
///     .queue(16);
/// assert_eq!(stage.name(), "squared");
/// # Ok::<(), forkpipe::Error>(())
/// ```
///
/// ## `source`
///
/// A source has no input: every parameter is bound when composing, and it returns its items
/// as `impl Iterator<Item = T>` (or any `IntoIterator`). It runs on one thread of the caller,
/// so it takes none of the worker options, and comes first in a pipeline.
///
/// ```
/// use forkpipe::prelude::*;
///
/// #[stage(source)]
/// fn numbers(n: u64) -> impl Iterator<Item = u64> {
///     0..n
/// }
///
/// let out: Vec<u64> = pipeline![numbers(3)].results()?.collect::<Result<_, _>>()?;
/// assert_eq!(out, [0, 1, 2]);
///
/// // The same in builder code:
/// let out: Vec<u64> = Pipeline::new(Source::new("numbers", move || numbers(3)))
///     .results()?
///     .collect::<Result<_, _>>()?;
/// assert_eq!(out, [0, 1, 2]);
/// # Ok::<(), forkpipe::Error>(())
/// ```
///
/// ## `stream`
///
/// A stream stage takes its whole input as `impl Iterator<Item = T>` and returns its outputs
/// as `impl Iterator<Item = U>` (or a concrete `IntoIterator`, such as `Vec<U>`), for
/// reductions and windows. Its outputs are new items; with `workers = N`, each worker sees
/// its share of the input.
///
/// ```
/// use std::collections::HashMap;
/// use forkpipe::prelude::*;
///
/// #[stage(stream)]
/// fn most_common(titles: impl Iterator<Item = String>) -> impl Iterator<Item = (String, usize)> {
///     let mut counts: HashMap<String, usize> = HashMap::new();
///     for title in titles {
///         *counts.entry(title).or_default() += 1;
///     }
///     counts.into_iter().max_by_key(|(_, n)| *n).into_iter()
/// }
///
/// let titles = ["a", "b", "a"].map(String::from);
/// let out: Vec<(String, usize)> = pipeline![most_common].run(titles.clone())?.collect::<Result<_, _>>()?;
/// assert_eq!(out, [(String::from("a"), 2)]);
///
/// // The same in builder code:
/// let stage = Stage::stream("most_common", |titles: forkpipe::Items<String>| most_common(titles));
/// let out: Vec<(String, usize)> = Pipeline::new(stage).run(titles)?.collect::<Result<_, _>>()?;
/// assert_eq!(out, [(String::from("a"), 2)]);
/// # Ok::<(), forkpipe::Error>(())
/// ```
///
/// ## `init = path`
///
/// `path` is called once in each worker (in the worker process, for a `subprocess` stage)
/// and returns the worker's state, `S` or `Result<S, E>` with `E: Display`; the stage takes
/// it as a `&mut S` parameter after the item. If `init` fails when the pipeline starts,
/// `run` and `start` return `Error::Init`, naming the stage and the worker.
///
/// ```
/// use forkpipe::prelude::*;
///
/// #[derive(Default)]
/// struct Seen {
///     count: u64,
/// }
///
/// fn open() -> Result<Seen, std::io::Error> {
///     Ok(Seen::default())
/// }
///
/// #[stage(init = open)]
/// fn number(line: String, seen: &mut Seen) -> String {
///     seen.count += 1;
///     format!("{}: {line}", seen.count)
/// }
///
/// let lines = ["a", "b"].map(String::from);
/// let out: Vec<String> = pipeline![number].run(lines.clone())?.collect::<Result<_, _>>()?;
/// assert_eq!(out, ["1: a", "2: b"]);
///
/// // The same in builder code: the stage sends its output through `Emit`.
/// let stage = Stage::stateful(
///     "number",
///     open,
///     |line: String, seen: &mut Seen, out: &mut Emit<String>| {
///         out.emit(number(line, seen));
///         Ok::<(), std::convert::Infallible>(())
///     },
/// );
/// let out: Vec<String> = Pipeline::new(stage).run(lines)?.collect::<Result<_, _>>()?;
/// assert_eq!(out, ["1: a", "2: b"]);
/// # Ok::<(), forkpipe::Error>(())
/// ```
///
/// ## `when = path`
///
/// `path(&item) -> bool` decides per item: an item it rejects skips the stage unchanged, so
/// the stage's output type must be its input type. The parameter may be a deref target of
/// the item (`fn(&str) -> bool` for `String` items).
///
/// ```
/// use forkpipe::prelude::*;
///
/// fn is_even(x: &u64) -> bool {
///     x % 2 == 0
/// }
///
/// #[stage(when = is_even)]
/// fn halve(x: u64) -> u64 {
///     x / 2
/// }
///
/// let out: Vec<u64> = pipeline![halve].run(0..5u64)?.collect::<Result<_, _>>()?;
/// assert_eq!(out, [0, 1, 1, 3, 2]);
///
/// // The same in builder code:
/// let stage = Stage::map("halve", |x: u64| halve(x)).when(|x: &u64| is_even(x));
/// let out: Vec<u64> = Pipeline::new(stage).run(0..5u64)?.collect::<Result<_, _>>()?;
/// assert_eq!(out, [0, 1, 1, 3, 2]);
/// # Ok::<(), forkpipe::Error>(())
/// ```
///
/// ## `timeout_ms = N`
///
/// An item that runs longer than `N` milliseconds fails with an error naming the stage, and
/// its worker process is killed and replaced. Only a process can be killed, so `timeout_ms`
/// needs `subprocess`.
///
/// ```
/// use std::time::Duration;
/// use forkpipe::prelude::*;
///
/// #[stage(subprocess, timeout_ms = 200)]
/// fn nap(ms: u64) -> u64 {
///     std::thread::sleep(Duration::from_millis(ms));
///     ms
/// }
///
/// let out: Vec<Result<u64, Error>> = pipeline![nap].run([1u64, 10_000])?.collect();
/// assert_eq!(*out[0].as_ref().unwrap(), 1);
/// assert!(out[1].as_ref().unwrap_err().to_string().contains("timed out"));
///
/// // The same stage in builder code:
/// let stage = Stage::map("nap", |ms: u64| nap(ms))
///     .subprocess()
///     .timeout(Duration::from_millis(200));
/// # let _ = stage;
/// # Ok::<(), forkpipe::Error>(())
/// ```
///
/// ## `pipe_next`
///
/// A `pipe_next` stage takes a `&mut PipeWriter` after its item and writes bytes for each
/// item; the next stage takes a `&mut PipeReader` and reads them while they are written (a
/// shell pipe, per item). The producer hands each item on unchanged and returns `()` or
/// `Result<(), E>`; the pair's output is the consumer's, in any of the forms above (`T`,
/// `Result<T, E>`, `Option<T>`, `()`, `&mut Emit<T>`). If one side fails, the other sees an
/// I/O error, and the item fails with the first cause.
///
/// The pair is one unit: it runs the producer's `workers` couples, in worker processes if
/// either half is `subprocess`, and its items cross a socket between the halves, so they
/// must be `Serialize + Deserialize` even on threads. The producer takes `subprocess`,
/// `workers`, `queue`, `timeout_ms` and `name`; the consumer `subprocess`, `queue`,
/// `timeout_ms`, `unordered` and `name`. A pair may also start a pipeline, or be all of it:
/// it then takes the pipeline's input (`run(items)`, or submitted work items).
///
/// ```
/// use std::io::{self, Write};
/// use forkpipe::prelude::*;
/// use forkpipe::{Consumer, Producer};
///
/// #[stage(source)]
/// fn sizes(n: u64) -> impl Iterator<Item = u64> {
///     0..n
/// }
///
/// #[stage(pipe_next, workers = 2)]
/// fn repeat(n: u64, out: &mut PipeWriter, byte: u8) -> io::Result<()> {
///     out.write_all(&vec![byte; n as usize * 1000])
/// }
///
/// #[stage]
/// fn count(n: u64, bytes: &mut PipeReader) -> io::Result<(u64, u64)> {
///     Ok((n, io::copy(bytes, &mut io::sink())?))
/// }
///
/// let out: Vec<(u64, u64)> = pipeline![sizes(3) | repeat(b'x') | count]
///     .results()?
///     .collect::<Result<_, _>>()?;
/// assert_eq!(out, [(0, 0), (1, 1000), (2, 2000)]);
///
/// // The pair as the whole pipeline, fed by `run` (builder: `Pipeline::pipe`).
/// let out: Vec<(u64, u64)> = pipeline![repeat(b'y') | count]
///     .run([2u64, 0])?
///     .collect::<Result<_, _>>()?;
/// assert_eq!(out, [(2, 2000), (0, 0)]);
///
/// // The first pipeline in builder code: the pair is appended at once.
/// let byte = b'x';
/// let producer = Producer::new("repeat", move |n: u64, w: &mut PipeWriter| repeat(n, w, byte))
///     .workers(2);
/// let consumer = Consumer::new("count", |n: u64, r: &mut PipeReader| count(n, r));
/// let out: Vec<(u64, u64)> = Pipeline::new(Source::new("sizes", || sizes(3)))
///     .then_pipe(producer, consumer)
///     .results()?
///     .collect::<Result<_, _>>()?;
/// assert_eq!(out, [(0, 0), (1, 1000), (2, 2000)]);
/// # Ok::<(), forkpipe::Error>(())
/// ```
///
/// # Mistakes
///
/// Mistakes are compile errors at the token to change, all reported by one build: an
/// unknown or repeated option, `workers = 0`, an option that does not fit the form
/// (`workers` on a `source`, `init` on a `stream`, `workers` on a stage that takes
/// `&mut PipeReader`), `timeout_ms` without `subprocess`, an `init` without a `&mut S`
/// parameter or the reverse, `pipe_next` without a `&mut PipeWriter` parameter or the
/// reverse, `when` on a stage that changes the type, an item type that cannot cross a
/// process boundary. After a mistake, the function is still emitted unchanged, so its
/// callers keep compiling.
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
/// Stages are separated by `|`; each is the name (or path) of a [`macro@stage`] function,
/// with its bound parameters in parentheses if it has any, or a `{ block }` whose value is a
/// `Stage` (or, in first place, a `Source`). A `source` stage can only come first.
///
/// ```
/// use forkpipe::prelude::*;
///
/// #[stage(source)]
/// fn numbers(n: u64) -> impl Iterator<Item = u64> {
///     0..n
/// }
///
/// #[stage]
/// fn add_n(x: u64, n: u64) -> u64 {
///     x + n
/// }
///
/// let p = pipeline![numbers(3) | add_n(1) | { Stage::map("show", |x: u64| x.to_string()) }];
/// let out: Vec<String> = p.results()?.collect::<Result<_, _>>()?;
/// assert_eq!(out, ["1", "2", "3"]);
///
/// // The same pipeline in builder code:
/// let p = Pipeline::new(Source::new("numbers", move || numbers(3)))
///     .then(Stage::map("add_n", move |x: u64| add_n(x, 1)))
///     .then(Stage::map("show", |x: u64| x.to_string()));
/// let out: Vec<String> = p.results()?.collect::<Result<_, _>>()?;
/// assert_eq!(out, ["1", "2", "3"]);
/// # Ok::<(), forkpipe::Error>(())
/// ```
///
/// A `#[stage(pipe_next)]` function and the stage after it, which takes a `&mut PipeReader`,
/// are written as two stages, `pipeline![parse | compress | upload]`; the macro appends them
/// as one pair (see [`macro@stage`]).
///
/// A parenthesised list after the first place is a fan-out: each item goes to every branch
/// (a `|`-chain of stages, fan-outs included, each taking the type before the list; the item
/// type must be `Clone`), and the item's outputs are the branches' outputs, in branch order.
/// The branches make the same type, which the stage after the list takes. A list in first
/// place is a fan-in: one `source` per element, all making the same type, whose items the
/// pipeline takes as they are produced (each source's in its order).
///
/// ```
/// use forkpipe::prelude::*;
///
/// #[stage(source)]
/// fn evens(n: u64) -> impl Iterator<Item = u64> {
///     (0..n).map(|x| 2 * x)
/// }
///
/// #[stage(source)]
/// fn odds(n: u64) -> impl Iterator<Item = u64> {
///     (0..n).map(|x| 2 * x + 1)
/// }
///
/// #[stage]
/// fn add_n(x: u64, n: u64) -> u64 {
///     x + n
/// }
///
/// let p = pipeline![add_n(1) | (add_n(10), add_n(20) | { Stage::map("neg", |x| 100 - x) })];
/// let out: Vec<u64> = p.run([0u64, 1])?.collect::<Result<_, _>>()?;
/// assert_eq!(out, [11, 79, 12, 78]);
///
/// // The same fan-out in builder code:
/// let p = Pipeline::new(Stage::map("add_n", |x: u64| add_n(x, 1))).fan_out([
///     Pipeline::new(Stage::map("add_n", |x: u64| add_n(x, 10))),
///     Pipeline::new(Stage::map("add_n", |x: u64| add_n(x, 20)))
///         .then(Stage::map("neg", |x: u64| 100 - x)),
/// ]);
/// let out: Vec<u64> = p.run([0u64, 1])?.collect::<Result<_, _>>()?;
/// assert_eq!(out, [11, 79, 12, 78]);
///
/// // A fan-in, and its builder code:
/// let mut out: Vec<u64> = pipeline![(evens(3), odds(3)) | add_n(0)]
///     .results()?
///     .collect::<Result<_, _>>()?;
/// out.sort_unstable();
/// assert_eq!(out, [0, 1, 2, 3, 4, 5]);
/// let p = Pipeline::merge([
///     Source::new("evens", || evens(3)),
///     Source::new("odds", || odds(3)),
/// ]);
/// assert_eq!(p.results()?.count(), 6);
/// # Ok::<(), forkpipe::Error>(())
/// ```
///
/// A stage whose input type differs from the previous stage's output is an error naming
/// both stages and both types: ``stage `add_n` takes `u64` but `to_text` produces `String` ``;
/// a `source` after the first place is `` `numbers` is a `source` stage; a source can only
/// come first ``. So are the mistakes of a pipe pair: `` the last stage `compress` is
/// `pipe_next`: add a stage that takes `&mut PipeReader` after it ``, `` `compress` is a
/// `pipe_next` stage: the stage after it must take `&mut PipeReader` ``, `` `upload` takes a
/// `&mut PipeReader`: it must come right after a `pipe_next` stage `` — wherever the pair
/// stands, first included. So are the mistakes of a fan-out or a fan-in: branches (or
/// sources) that make different types, ``the branches of a fan-out make different types:
/// `thumbnail` makes `Thumb` but `index | store` makes `Id` ``; an item type that is not
/// `Clone`; a `pipe_next` stage right before a fan-out, or last in a branch; a `source` in a
/// branch; an element of a fan-in that is not a source; an empty list or branch.
#[proc_macro]
pub fn pipeline(input: TokenStream) -> TokenStream {
    let input = syn::parse::<pipeline::Pipeline>(input);
    let expanded = input.map(|input| pipeline::expand(&input));
    expanded.unwrap_or_else(pipeline::errors).into()
}

/// Calls `forkpipe::init()` first in `main`, so that every pipeline is forked from a
/// single-threaded fork server (see `forkpipe::init`). Put it above any other attribute of
/// `main` (`#[tokio::main]`): those then run inside, after the fork server exists. If
/// `init()` fails, the program prints the error and exits with code 1.
///
/// ```
/// #[forkpipe::main]
/// fn main() {
///     assert!(forkpipe::fork_server_pid().is_some());
/// }
/// ```
#[proc_macro_attribute]
pub fn main(args: TokenStream, item: TokenStream) -> TokenStream {
    let expanded = main_attr::parse(args.into(), item.into()).map(main_attr::expand);
    expanded
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}
