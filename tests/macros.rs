//! Every form and option of `#[stage]` and `pipeline!`, run on thread stages and in worker
//! processes. The expansion must be lint-clean, hence the `deny`.

#![deny(warnings, unused_qualifications, clippy::all)]

use std::collections::HashMap;
use std::io::{self, BufRead, Read, Write};

use forkpipe::prelude::*;
use forkpipe::{Consumer, Producer, Worker};
use serde::{Deserialize, Serialize};

#[stage]
fn add_n(x: u64, n: u64) -> u64 {
    x + n
}

#[stage]
fn double(x: u64) -> u64 {
    x * 2
}

#[stage(source)]
fn numbers(n: u64) -> impl Iterator<Item = u64> {
    0..n
}

#[stage(source, name = "letters")]
fn letters(word: String) -> Vec<char> {
    word.chars().collect()
}

#[stage]
fn parse(line: String) -> Result<u64, std::num::ParseIntError> {
    line.trim().parse()
}

#[stage]
fn read_even(x: u64) -> io::Result<u64> {
    if x.is_multiple_of(2) {
        Ok(x)
    } else {
        Err(io::Error::other(format!("{x} is odd")))
    }
}

#[stage]
fn keep_odd(x: u64) -> Option<u64> {
    (x % 2 == 1).then_some(x)
}

#[stage]
fn repeat(x: u64, out: &mut Emit<u64>, times: usize) {
    for _ in 0..times {
        out.emit(x);
    }
}

#[stage]
fn split_nonempty(line: String, out: &mut Emit<String>) -> Result<(), String> {
    if line.is_empty() {
        return Err(String::from("empty line"));
    }
    for word in line.split_whitespace() {
        out.emit(word.to_owned());
    }
    Ok(())
}

#[stage]
fn sink(_x: u64) {}

#[stage(workers = 4, unordered, queue = 8, name = "tripled")]
fn triple(x: u64) -> u64 {
    x * 3
}

#[stage]
fn prefix(x: u64, label: String, (sep, width): (char, usize)) -> String {
    format!("{label}{sep}{x:0width$}")
}

#[stage(subprocess, workers = 2)]
fn square_in_worker(x: u64) -> u64 {
    x * x
}

fn collect<T>(results: impl Iterator<Item = Result<T, Error>>) -> Vec<T> {
    results.collect::<Result<_, _>>().unwrap()
}

#[test]
fn stage_functions_stay_callable() {
    assert_eq!(add_n(1, 2), 3);
    assert_eq!(numbers(3).collect::<Vec<_>>(), [0, 1, 2]);
    assert_eq!(keep_odd(2), None);
    assert_eq!(prefix(7, String::from("n"), ('=', 3)), "n=007");
}

#[test]
fn map_with_bound_parameter() {
    let v: Vec<u64> = collect(pipeline![add_n(7)].run(0..100u64).unwrap());
    assert_eq!(v, (7..107).collect::<Vec<_>>());
}

#[test]
fn chain_of_three() {
    let v = collect(
        pipeline![add_n(1) | double | add_n(10)]
            .run(0..3u64)
            .unwrap(),
    );
    assert_eq!(v, [12, 14, 16]);
}

#[test]
fn source_first() {
    let v = collect(pipeline![numbers(10) | add_n(1)].results().unwrap());
    assert_eq!(v, (1..11).collect::<Vec<_>>());
}

#[test]
fn source_returning_a_concrete_type() {
    let v = collect(pipeline![letters(String::from("abc"))].results().unwrap());
    assert_eq!(v, ['a', 'b', 'c']);
}

#[test]
fn try_map_fails_the_item_only() {
    let lines = ["1", "x", "3"].map(String::from);
    let v: Vec<Result<u64, Error>> = pipeline![parse].run(lines).unwrap().collect();
    assert_eq!(v.len(), 3);
    assert_eq!(*v[0].as_ref().unwrap(), 1);
    assert!(v[1].is_err());
    assert_eq!(*v[2].as_ref().unwrap(), 3);
}

#[test]
fn io_result_return() {
    let v: Vec<Result<u64, Error>> = pipeline![read_even].run(0..4u64).unwrap().collect();
    let ok: Vec<u64> = v.iter().filter_map(|r| r.as_ref().ok().copied()).collect();
    assert_eq!(ok, [0, 2]);
    assert_eq!(v.iter().filter(|r| r.is_err()).count(), 2);
}

#[test]
fn filter_map_drops_none() {
    let v = collect(pipeline![keep_odd].run(0..10u64).unwrap());
    assert_eq!(v, [1, 3, 5, 7, 9]);
}

#[test]
fn emit_with_bound_parameter_after_it() {
    let v = collect(pipeline![repeat(3) | add_n(1)].run(0..2u64).unwrap());
    assert_eq!(v, [1, 1, 1, 2, 2, 2]);
}

#[test]
fn try_emit() {
    let lines = ["a b", "", "c"].map(String::from);
    let v: Vec<Result<String, Error>> = pipeline![split_nonempty].run(lines).unwrap().collect();
    let words: Vec<&str> = v
        .iter()
        .filter_map(|r| r.as_ref().ok().map(String::as_str))
        .collect();
    assert_eq!(words, ["a", "b", "c"]);
    assert_eq!(v.iter().filter(|r| r.is_err()).count(), 1);
}

#[test]
fn unit_return_is_a_sink() {
    let v: Vec<()> = collect(pipeline![sink].run(0..3u64).unwrap());
    assert_eq!(v.len(), 3);
}

#[test]
fn options() {
    let mut v = collect(pipeline![triple].run(0..5u64).unwrap());
    v.sort_unstable();
    assert_eq!(v, [0, 3, 6, 9, 12]);
}

#[test]
fn subprocess_stage() {
    let v = collect(
        pipeline![add_n(1) | square_in_worker]
            .run(0..20u64)
            .unwrap(),
    );
    assert_eq!(v, (1..21).map(|x| x * x).collect::<Vec<u64>>());
}

#[test]
fn bound_parameters_with_patterns() {
    let p = pipeline![prefix(String::from("item"), ('#', 2))];
    assert_eq!(collect(p.run([1u64, 22]).unwrap()), ["item#01", "item#22"]);
}

#[test]
fn block_stages() {
    let inc = Stage::map("inc", |x: u64| x + 1);
    let p = pipeline![{ inc } | double | { Stage::map("show", |x: u64| x.to_string()) }];
    assert_eq!(collect(p.run(0..3u64).unwrap()), ["2", "4", "6"]);
}

#[test]
fn block_stage_input_type_is_inferred_from_the_previous_stage() {
    let p = pipeline![double | { Stage::map("inc", |x| x + 1) }];
    assert_eq!(collect(p.run(0..3u64).unwrap()), [1, 3, 5]);
}

#[test]
fn block_source() {
    let p = pipeline![{ Source::new("three", || 0..3u64) } | double];
    assert_eq!(collect(p.results().unwrap()), [0, 2, 4]);
}

#[test]
fn builder_and_macro_mix() {
    let p: Pipeline<u64, u64> = pipeline![add_n(1)].then(Stage::map("neg", |x: u64| 100 - x));
    assert_eq!(collect(p.run([1u64]).unwrap()), [98]);
}

mod stages {
    use forkpipe::prelude::*;

    /// Private to this module: the stage's hidden module must still see it.
    #[derive(Clone, Debug, PartialEq)]
    struct Offset(u64);

    // A private `use`, also seen by the hidden module through `use super::*`.
    use std::collections::BTreeSet as Seen;

    #[stage]
    fn shift(x: u64, by: Offset) -> u64 {
        x + by.0
    }

    #[stage]
    pub fn dedup(x: Vec<u64>) -> Vec<u64> {
        x.into_iter().collect::<Seen<_>>().into_iter().collect()
    }

    #[stage]
    pub(crate) fn square(x: u64) -> u64 {
        x * x
    }

    pub fn shift_by(n: u64) -> Pipeline<u64, u64> {
        pipeline![shift(Offset(n))]
    }
}

#[test]
fn stage_imported_with_use() {
    use stages::square;
    let p = pipeline![square | square];
    assert_eq!(collect(p.run([2u64]).unwrap()), [16]);
    let p = pipeline![stages::dedup];
    assert_eq!(collect(p.run([vec![3, 1, 3]]).unwrap()), [vec![1, 3]]);
    assert_eq!(square(3), 9);
}

#[test]
fn private_types_and_imports_of_the_parent() {
    assert_eq!(collect(stages::shift_by(5).run([1u64]).unwrap()), [6]);
}

// ---------------------------------------------------------------------------------------
// `stream`: parallelpipe's `most_common`
// ---------------------------------------------------------------------------------------

/// The pages parallelpipe's example downloads: some with a title, one without.
fn pages() -> Vec<String> {
    let titles = ["Rust", "Pipes", "Rust", "Forks", "Rust", "Pipes"];
    let mut pages: Vec<String> = titles
        .iter()
        .map(|t| format!("<html><title>{t}</title><body>..</body></html>"))
        .collect();
    pages.insert(2, String::from("<html>no title</html>"));
    pages
}

#[stage(workers = 2)]
fn get_title(content: String) -> Option<String> {
    let start = content.find("<title>")? + "<title>".len();
    let end = start + content[start..].find("</title>")?;
    Some(content[start..end].to_owned())
}

/// The most common title and how often it came: parallelpipe's `Counter(titles).most_common(1)`.
#[stage(stream)]
fn most_common(titles: impl Iterator<Item = String>) -> impl Iterator<Item = (String, usize)> {
    let mut counts: HashMap<String, usize> = HashMap::new();
    for title in titles {
        *counts.entry(title).or_default() += 1;
    }
    counts
        .into_iter()
        .max_by(|a, b| a.1.cmp(&b.1).then_with(|| b.0.cmp(&a.0)))
        .into_iter()
}

#[stage(stream, subprocess)]
fn most_common_in_worker(
    titles: impl Iterator<Item = String>,
) -> impl Iterator<Item = (String, usize)> {
    most_common(titles)
}

/// A stream stage with a bound parameter and a concrete return type.
#[stage(stream, name = "top")]
fn top_n(titles: impl IntoIterator<Item = String>, n: usize) -> Vec<(String, usize)> {
    let mut counts: HashMap<String, usize> = HashMap::new();
    for title in titles {
        *counts.entry(title).or_default() += 1;
    }
    let mut counts: Vec<(String, usize)> = counts.into_iter().collect();
    counts.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    counts.truncate(n);
    counts
}

/// Running sums: a stream stage that yields as it reads, in a worker process.
#[stage(stream, subprocess)]
fn running_sum(numbers: impl Iterator<Item = u64>, start: u64) -> impl Iterator<Item = u64> {
    numbers.scan(start, |sum, x| {
        *sum += x;
        Some(*sum)
    })
}

#[test]
fn stream_most_common_on_a_thread() {
    let p = pipeline![get_title | most_common];
    assert_eq!(
        collect(p.run(pages()).unwrap()),
        [(String::from("Rust"), 3)]
    );
}

#[test]
fn stream_most_common_in_a_worker_process() {
    let p = pipeline![get_title | most_common_in_worker];
    assert_eq!(
        collect(p.run(pages()).unwrap()),
        [(String::from("Rust"), 3)]
    );
}

#[test]
fn stream_with_bound_parameter_and_concrete_return_type() {
    let p = pipeline![get_title | top_n(2)];
    let top = collect(p.run(pages()).unwrap());
    assert_eq!(top, [(String::from("Rust"), 3), (String::from("Pipes"), 2)]);
}

#[test]
fn stream_in_a_worker_process_yields_as_it_reads() {
    let p = pipeline![numbers(5) | running_sum(100) | double];
    assert_eq!(collect(p.results().unwrap()), [200, 202, 206, 212, 220]);
}

#[test]
fn stream_stage_functions_stay_callable() {
    let titles = ["a", "b", "a"].map(String::from);
    assert_eq!(top_n(titles, 1), [(String::from("a"), 2)]);
    assert_eq!(running_sum(1..4, 0).collect::<Vec<_>>(), [1, 3, 6]);
}

// ---------------------------------------------------------------------------------------
// `init`: per-worker state
// ---------------------------------------------------------------------------------------

/// Per-worker state: how many items this worker has seen.
#[derive(Debug, Default)]
struct Counter {
    seen: u64,
}

fn new_counter() -> Counter {
    Counter::default()
}

fn open_counter() -> Result<Counter, io::Error> {
    Ok(Counter { seen: 100 })
}

fn refuse_counter() -> Result<Counter, String> {
    Err(String::from("no database at db.invalid"))
}

/// `(item, how many items this worker has seen, the worker's pid)`.
#[stage(init = new_counter)]
fn count(x: u64, counter: &mut Counter) -> (u64, u64, u32) {
    counter.seen += 1;
    (x, counter.seen, std::process::id())
}

#[stage(subprocess, workers = 2, init = new_counter)]
fn count_in_worker(x: u64, counter: &mut Counter) -> (u64, u64, u32) {
    count(x, counter)
}

/// An init returning `Result<S, E>`; the state parameter before a bound one.
#[stage(init = open_counter)]
fn offset_count(x: u64, counter: &mut Counter, step: u64) -> Result<u64, String> {
    counter.seen += step;
    if x == 3 {
        return Err(format!("{x} is unlucky"));
    }
    Ok(counter.seen)
}

/// The filter form with state: keeps every second item this worker sees.
#[stage(init = Counter::default)]
fn every_second(x: u64, counter: &mut Counter) -> Option<u64> {
    counter.seen += 1;
    counter.seen.is_multiple_of(2).then_some(x)
}

/// The emit form with state, the state after the `Emit`.
#[stage(init = new_counter)]
fn numbered(line: String, out: &mut Emit<String>, counter: &mut Counter) {
    for word in line.split_whitespace() {
        counter.seen += 1;
        out.emit(format!("{}:{word}", counter.seen));
    }
}

/// The try-emit form with state.
#[stage(subprocess, init = open_counter)]
fn numbered_or_fail(
    line: String,
    counter: &mut Counter,
    out: &mut Emit<String>,
) -> Result<(), String> {
    if line.is_empty() {
        return Err(String::from("empty line"));
    }
    for word in line.split_whitespace() {
        counter.seen += 1;
        out.emit(format!("{}:{word}", counter.seen));
    }
    Ok(())
}

#[stage(init = refuse_counter)]
fn refused(x: u64, counter: &mut Counter) -> u64 {
    x + counter.seen
}

#[stage(subprocess, workers = 2, init = refuse_counter)]
fn refused_in_worker(x: u64, counter: &mut Counter) -> u64 {
    x + counter.seen
}

/// A sink with state.
#[stage(init = new_counter)]
fn tally(_x: u64, counter: &mut Counter) {
    counter.seen += 1;
}

#[test]
fn init_state_survives_across_items_on_a_thread() {
    let v = collect(pipeline![count].run(10..15u64).unwrap());
    let seen: Vec<(u64, u64)> = v.iter().map(|&(x, seen, _)| (x, seen)).collect();
    assert_eq!(seen, [(10, 1), (11, 2), (12, 3), (13, 4), (14, 5)]);
}

#[test]
fn init_state_is_per_worker_process() {
    let v = collect(pipeline![count_in_worker].run(0..40u64).unwrap());
    assert_eq!(
        v.iter().map(|r| r.0).collect::<Vec<_>>(),
        (0..40).collect::<Vec<_>>()
    );
    let mut by_worker: HashMap<u32, Vec<u64>> = HashMap::new();
    for (_, seen, pid) in v {
        assert_ne!(pid, std::process::id(), "ran in a worker process");
        by_worker.entry(pid).or_default().push(seen);
    }
    // Each worker counted its own items, from 1, without gaps.
    for seen in by_worker.values_mut() {
        seen.sort_unstable();
        assert_eq!(*seen, (1..=seen.len() as u64).collect::<Vec<_>>());
    }
    assert_eq!(by_worker.values().map(Vec::len).sum::<usize>(), 40);
}

#[test]
fn init_returning_result_and_try_map_form() {
    let v: Vec<Result<u64, Error>> = pipeline![offset_count(10)].run(0..5u64).unwrap().collect();
    let ok: Vec<Option<u64>> = v.iter().map(|r| r.as_ref().ok().copied()).collect();
    assert_eq!(ok, [Some(110), Some(120), Some(130), None, Some(150)]);
    let failed = v[3].as_ref().unwrap_err();
    assert_eq!(failed.stage(), Some("offset_count"));
    assert!(failed.to_string().ends_with("3 is unlucky"), "{failed}");
}

#[test]
fn init_with_filter_emit_and_sink_forms() {
    let v = collect(pipeline![every_second].run(0..6u64).unwrap());
    assert_eq!(v, [1, 3, 5]);
    let lines = ["a b", "c"].map(String::from);
    let v = collect(pipeline![numbered].run(lines).unwrap());
    assert_eq!(v, ["1:a", "2:b", "3:c"]);
    assert_eq!(collect(pipeline![tally].run(0..3u64).unwrap()).len(), 3);
}

#[test]
fn init_with_try_emit_form_in_a_worker_process() {
    let lines = ["a b", "", "c"].map(String::from);
    let v: Vec<Result<String, Error>> = pipeline![numbered_or_fail].run(lines).unwrap().collect();
    let words: Vec<&str> = v
        .iter()
        .filter_map(|r| r.as_ref().ok().map(String::as_str))
        .collect();
    assert_eq!(words, ["101:a", "102:b", "103:c"]);
    assert_eq!(v.iter().filter(|r| r.is_err()).count(), 1);
}

#[test]
fn init_failing_at_start_on_a_thread() {
    let Err(error) = pipeline![double | refused].run(0..3u64) else {
        panic!("a pipeline whose init fails must not start");
    };
    match &error {
        Error::Init {
            stage,
            worker,
            message,
            ..
        } => {
            assert_eq!(stage, "refused");
            assert_eq!(*worker, Worker::Thread(0));
            assert_eq!(message, "no database at db.invalid");
        }
        other => panic!("expected Error::Init, got {other:?}"),
    }
    let text = error.to_string();
    assert!(
        text.contains("refused") && text.contains("no database"),
        "{text}"
    );
}

#[test]
fn init_failing_at_start_in_a_worker_process() {
    let Err(error) = pipeline![refused_in_worker].start() else {
        panic!("a pipeline whose init fails must not start");
    };
    match &error {
        Error::Init {
            stage,
            worker,
            message,
            ..
        } => {
            assert_eq!(stage, "refused_in_worker");
            assert!(worker.pid().is_some(), "{worker:?}");
            assert_eq!(message, "no database at db.invalid");
        }
        other => panic!("expected Error::Init, got {other:?}"),
    }
}

#[test]
fn init_stage_functions_stay_callable() {
    let mut counter = Counter::default();
    assert_eq!(count(7, &mut counter).1, 1);
    assert_eq!(offset_count(1, &mut counter, 2), Ok(3));
}

// ---------------------------------------------------------------------------------------
// `when`: items the determiner rejects skip the stage
// ---------------------------------------------------------------------------------------

fn is_even(x: &u64) -> bool {
    x.is_multiple_of(2)
}

mod rules {
    pub fn is_short(line: &str) -> bool {
        line.len() < 4
    }
}

#[stage(when = is_even)]
fn halve(x: u64) -> u64 {
    x / 2
}

#[stage(subprocess, workers = 2, when = rules::is_short)]
fn shout(line: String) -> String {
    line.to_uppercase()
}

/// `when` with the filter form: rejected items pass, accepted ones may be dropped.
#[stage(when = is_even)]
fn drop_fours(x: u64) -> Option<u64> {
    (!x.is_multiple_of(4)).then_some(x)
}

/// `when` with `init`: only accepted items reach the state.
#[stage(init = new_counter, when = is_even)]
fn number_even(x: u64, counter: &mut Counter) -> u64 {
    counter.seen += 1;
    x * 100 + counter.seen
}

#[test]
fn when_skips_rejected_items_unchanged() {
    let v = collect(pipeline![halve].run(0..6u64).unwrap());
    assert_eq!(v, [0, 1, 1, 3, 2, 5]);
    let v = collect(pipeline![drop_fours].run(0..6u64).unwrap());
    assert_eq!(v, [1, 2, 3, 5]);
    let v = collect(pipeline![number_even].run(0..5u64).unwrap());
    assert_eq!(v, [1, 1, 202, 3, 403]);
}

#[test]
fn when_in_worker_processes() {
    let lines = ["abc", "abcdef", "x"].map(String::from);
    let v = collect(pipeline![shout].run(lines).unwrap());
    assert_eq!(v, ["ABC", "abcdef", "X"]);
}

/// atbu's work item: the number of stages that accepted it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct LargePipelineWorkItem {
    is_ok: bool,
    num: u32,
}

/// atbu's "Large Pipeline Example" with the builder: 100 stages, every other one declines
/// its chance to run the item (atbu's determiner toggles a flag in the item; as a pure
/// function of the item and the stage, stage `k` declines when `k` is odd).
#[test]
fn when_atbu_hundred_stages_every_other_declines() {
    let stage = |k: u32| {
        Stage::map("large", |mut item: LargePipelineWorkItem| {
            item.num += 1;
            item
        })
        .when(move |_: &LargePipelineWorkItem| k.is_multiple_of(2))
    };
    let mut p = Pipeline::new(stage(0));
    for k in 1..100 {
        p = p.then(stage(k));
    }
    assert_eq!(p.len(), 100);
    let item = LargePipelineWorkItem {
        is_ok: true,
        num: 0,
    };
    let v = collect(p.run([item]).unwrap());
    assert_eq!(
        v,
        [LargePipelineWorkItem {
            is_ok: true,
            num: 50
        }]
    );
}

// ---------------------------------------------------------------------------------------
// `timeout_ms`
// ---------------------------------------------------------------------------------------

/// Sleeps `x` milliseconds.
#[stage(subprocess, timeout_ms = 300)]
fn nap(x: u64) -> u64 {
    std::thread::sleep(std::time::Duration::from_millis(x));
    x
}

#[test]
fn timeout_fails_the_slow_item_only() {
    let v: Vec<Result<u64, Error>> = pipeline![nap].run([0u64, 5_000, 1]).unwrap().collect();
    assert_eq!(*v[0].as_ref().unwrap(), 0);
    let slow = v[1].as_ref().unwrap_err();
    assert_eq!(slow.stage(), Some("nap"));
    assert!(slow.to_string().contains("timed out"), "{slow}");
    assert_eq!(*v[2].as_ref().unwrap(), 1);
}

// ---------------------------------------------------------------------------------------
// `pipe_next`: a stage streams bytes to the next one, which reads them as they come
// ---------------------------------------------------------------------------------------

/// Writes `n` copies of `byte`: the producer of a thread pair, with two couples.
#[stage(pipe_next, workers = 2)]
fn repeat_byte(n: u64, out: &mut PipeWriter, byte: u8) -> io::Result<()> {
    out.write_all(&vec![byte; n as usize])
}

/// Counts the bytes equal to `byte` while they are written: the `Result<T, E>` form.
#[stage]
fn count_byte(n: u64, bytes: &mut PipeReader, byte: u8) -> io::Result<(u64, usize)> {
    let mut all = Vec::new();
    bytes.read_to_end(&mut all)?;
    Ok((n, all.iter().filter(|&&b| b == byte).count()))
}

/// Writes `n` lines, in a worker process: returns `()`, with every other option of a
/// producer.
#[stage(
    pipe_next,
    subprocess,
    queue = 4,
    timeout_ms = 10_000,
    name = "write_lines"
)]
fn lines_for(n: u64, out: &mut PipeWriter) {
    for i in 0..n {
        writeln!(out, "line {i} of {n}").unwrap();
    }
}

/// Emits each line it reads, in a worker process: the `&mut Emit<T>` form, the reader
/// after the `Emit`, a bound parameter after both.
#[stage(subprocess, queue = 8)]
fn each_line(
    _n: u64,
    out: &mut Emit<String>,
    bytes: &mut PipeReader,
    prefix: String,
) -> io::Result<()> {
    for line in bytes.lines() {
        out.emit(format!("{prefix}{}", line?));
    }
    Ok(())
}

/// Fails the item when the stream is longer than `limit`: `Result<T, String>`.
#[stage(name = "at_most")]
fn at_most(n: u64, bytes: &mut PipeReader, limit: usize) -> Result<u64, String> {
    let mut all = Vec::new();
    bytes.read_to_end(&mut all).map_err(|e| e.to_string())?;
    if all.len() > limit {
        return Err(format!("{} bytes for item {n}", all.len()));
    }
    Ok(n)
}

/// Keeps the items whose stream is not empty: the `Option<T>` form, `unordered`.
#[stage(unordered)]
fn nonempty(n: u64, bytes: &mut PipeReader) -> Option<u64> {
    let mut first = [0u8; 1];
    (bytes.read(&mut first).unwrap() == 1).then_some(n)
}

/// The stream's length: the plain `T` form.
#[stage]
fn stream_len(_n: u64, bytes: &mut PipeReader) -> u64 {
    io::copy(bytes, &mut io::sink()).unwrap()
}

#[test]
fn pipe_next_thread_pair_with_bound_parameters_and_two_couples() {
    let p = pipeline![double | repeat_byte(b'x') | count_byte(b'x')];
    let v = collect(p.run([0u64, 1, 2, 50_000]).unwrap());
    assert_eq!(v, [(0, 0), (2, 2), (4, 4), (100_000, 100_000)]);
}

#[test]
fn pipe_next_pair_in_worker_processes_emitting() {
    let p = pipeline![numbers(4) | lines_for | each_line(String::from("> "))];
    let v = collect(p.results().unwrap());
    assert_eq!(
        v,
        [
            "> line 0 of 1",
            "> line 0 of 2",
            "> line 1 of 2",
            "> line 0 of 3",
            "> line 1 of 3",
            "> line 2 of 3",
        ]
    );
}

#[test]
fn pipe_next_consumer_error_fails_the_item_only() {
    let p = pipeline![double | repeat_byte(b'y') | at_most(3)];
    let v: Vec<Result<u64, Error>> = p.run([0u64, 1, 2, 1]).unwrap().collect();
    let ok: Vec<Option<u64>> = v.iter().map(|r| r.as_ref().ok().copied()).collect();
    assert_eq!(ok, [Some(0), Some(2), None, Some(2)]);
    let failed = v[2].as_ref().unwrap_err();
    assert_eq!(failed.stage(), Some("at_most"));
    assert!(
        failed.to_string().ends_with("4 bytes for item 4"),
        "{failed}"
    );
}

#[test]
fn pipe_next_consumer_filter_and_plain_forms() {
    let p = pipeline![add_n(0) | repeat_byte(b'z') | nonempty];
    let mut v = collect(p.run(0..5u64).unwrap());
    v.sort_unstable();
    assert_eq!(v, [1, 2, 3, 4]);
    let p = pipeline![add_n(0) | lines_for | stream_len];
    let v = collect(p.run([0u64, 2]).unwrap());
    assert_eq!(v, [0, 2 * "line 0 of 2\n".len() as u64]);
}

#[test]
fn pipe_next_in_the_middle_of_a_pipeline() {
    let p = pipeline![numbers(3) | add_n(1) | repeat_byte(b'x') | stream_len | double];
    assert_eq!(collect(p.results().unwrap()), [2, 4, 6]);
}

#[test]
fn pipe_next_builder_equivalent() {
    // What `pipeline![double | repeat_byte(b'x') | count_byte(b'x')]` expands to.
    let byte = b'x';
    let producer = Producer::new("repeat_byte", move |n: u64, w: &mut PipeWriter| {
        repeat_byte(n, w, byte)
    })
    .workers(2);
    let consumer = Consumer::new("count_byte", move |n: u64, r: &mut PipeReader| {
        count_byte(n, r, byte)
    });
    let p = Pipeline::new(Stage::map("double", double)).then_pipe(producer, consumer);
    assert_eq!(collect(p.run([3u64]).unwrap()), [(6, 6)]);
}

// A pair as the first stage (or the whole pipeline): it takes the pipeline's input.

/// Writes its worker's pid, then `n` bytes: the producer of a process pair of two couples.
#[stage(subprocess, pipe_next, workers = 2)]
fn pid_then_bytes(n: u64, out: &mut PipeWriter) -> io::Result<()> {
    out.write_all(&std::process::id().to_le_bytes())?;
    out.write_all(&vec![b'p'; n as usize])
}

/// `(n, bytes after the pid, the producer's pid, the consumer's pid)`.
#[stage(subprocess)]
fn pids_and_len(n: u64, bytes: &mut PipeReader) -> io::Result<(u64, u64, u32, u32)> {
    let mut pid = [0u8; 4];
    bytes.read_exact(&mut pid)?;
    let len = io::copy(bytes, &mut io::sink())?;
    Ok((n, len, u32::from_le_bytes(pid), std::process::id()))
}

#[stage(subprocess)]
fn len_of((_, len, _, _): (u64, u64, u32, u32)) -> u64 {
    len
}

/// The outputs of the pipelines `make` makes, over `input`: with `run`, then with `start`,
/// `submit`, `Ticket::wait` and a graceful `shutdown`.
fn run_and_submit<O: Send + 'static>(
    make: impl Fn() -> Pipeline<u64, O>,
    input: &[u64],
) -> [Vec<O>; 2] {
    let ran = collect(make().run(input.to_vec()).unwrap());
    let running = make().start().unwrap();
    let tickets: Vec<_> = input.iter().map(|&x| running.submit(x).unwrap()).collect();
    let waited = tickets.into_iter().map(|t| t.wait().unwrap()).collect();
    assert!(running.shutdown().unwrap().is_graceful());
    [ran, waited]
}

#[test]
fn pipe_next_thread_pair_first_with_two_couples() {
    for out in run_and_submit(
        || pipeline![repeat_byte(b'x') | count_byte(b'x')],
        &[0, 1, 50_000],
    ) {
        assert_eq!(out, [(0, 0), (1, 1), (50_000, 50_000)]);
    }
    for out in run_and_submit(
        || pipeline![repeat_byte(b'x') | stream_len | double],
        &[0, 1, 7],
    ) {
        assert_eq!(out, [0, 2, 14]);
    }
}

#[test]
fn pipe_next_process_pair_first_with_two_couples() {
    let input: Vec<u64> = (0..40).map(|x| x * 1000).collect();
    for out in run_and_submit(|| pipeline![pid_then_bytes | pids_and_len], &input) {
        let me = std::process::id();
        for (&x, &(n, len, producer, consumer)) in input.iter().zip(&out) {
            assert_eq!((n, len), (x, x));
            assert!(
                producer != me && consumer != me && producer != consumer,
                "{out:?}"
            );
        }
        let couples: std::collections::BTreeSet<(u32, u32)> =
            out.iter().map(|o| (o.2, o.3)).collect();
        assert!(
            (1..=2).contains(&couples.len()),
            "two couples at most: {couples:?}"
        );
    }
    for out in run_and_submit(|| pipeline![pid_then_bytes | pids_and_len | len_of], &input) {
        assert_eq!(out, input);
    }
}

// ---------------------------------------------------------------------------------------
// Hygiene with a renamed dependency
// ---------------------------------------------------------------------------------------

/// `tests/hygiene` depends on forkpipe as `renamed` and shadows `Result`, `Ok`, `Option`,
/// `Vec`, `mod core`, `mod std` and more; every form of the macros must still compile there.
/// (trybuild cannot rename a dependency, so this builds the crate with cargo, in its own
/// target directory.)
#[test]
fn hygiene_with_forkpipe_under_another_name() {
    let root = env!("CARGO_MANIFEST_DIR");
    let manifest = format!("{root}/tests/hygiene/Cargo.toml");
    let output = std::process::Command::new(env!("CARGO"))
        .args(["build", "--quiet", "--manifest-path", &manifest])
        .env("CARGO_TARGET_DIR", format!("{root}/target/hygiene"))
        .env_remove("RUSTFLAGS")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "tests/hygiene does not build:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

// `stream` with several workers: each worker runs the function on its share of the items.

/// How many items this worker saw.
#[stage(stream, workers = 3)]
fn count_share(items: impl Iterator<Item = u64>) -> impl Iterator<Item = usize> {
    std::iter::once(items.count())
}

/// How many items this worker process saw.
#[stage(stream, subprocess, workers = 2)]
fn count_share_in_processes(items: impl Iterator<Item = u64>) -> impl Iterator<Item = usize> {
    std::iter::once(items.count())
}

#[test]
fn stream_with_several_workers_splits_the_stream() {
    let counts: Vec<usize> = pipeline![count_share]
        .run(0..3000u64)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(counts.len(), 3, "one output per worker: {counts:?}");
    assert_eq!(
        counts.iter().sum::<usize>(),
        3000,
        "every item seen once: {counts:?}"
    );

    let counts: Vec<usize> = pipeline![count_share_in_processes]
        .run(0..3000u64)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(counts.len(), 2, "one output per worker: {counts:?}");
    assert_eq!(
        counts.iter().sum::<usize>(),
        3000,
        "every item seen once: {counts:?}"
    );
}

// ---------------------------------------------------------------------------------------
// Fan-out `a | (b | c, d) | e` and fan-in `(s, t) | a`
// ---------------------------------------------------------------------------------------

#[test]
fn fan_out_gives_each_item_every_branch_output_in_branch_order() {
    // `triple` is `unordered` with 4 workers: the fan-out still keeps the items' order.
    let p = pipeline![add_n(1) | (double, triple | add_n(1)) | add_n(0)];
    let v = collect(p.run(0..100u64).unwrap());
    let expected: Vec<u64> = (0..100u64)
        .flat_map(|x| [2 * (x + 1), 3 * (x + 1) + 1])
        .collect();
    assert_eq!(v, expected);
}

#[test]
fn fan_out_after_a_source_with_blocks_and_a_nested_fan_out() {
    let p = pipeline![
        numbers(50)
            | (
                { Stage::map("neg", |x| 1000 - x) },
                (double, add_n(7)) | add_n(1)
            )
    ];
    let v = collect(p.results().unwrap());
    let expected: Vec<u64> = (0..50u64)
        .flat_map(|x| [1000 - x, 2 * x + 1, x + 8])
        .collect();
    assert_eq!(v, expected);
}

#[test]
fn fan_out_with_a_subprocess_stage_and_a_pipe_next_pair_in_branches() {
    let p = pipeline![
        add_n(0)
            | (
                square_in_worker,
                repeat_byte(b'x') | count_byte(b'x') | {
                    Stage::map("bytes", |(_, count)| count as u64)
                }
            )
            | add_n(1)
    ];
    let v = collect(p.run(0..200u64).unwrap());
    let expected: Vec<u64> = (0..200u64).flat_map(|x| [x * x + 1, x + 1]).collect();
    assert_eq!(v, expected);
}

#[test]
fn fan_out_of_one_branch_is_that_branch() {
    let p = pipeline![double | (add_n(1),)];
    assert_eq!(collect(p.run(0..3u64).unwrap()), [1, 3, 5]);
}

#[stage(source)]
fn evens(n: u64) -> impl Iterator<Item = u64> {
    (0..n).map(|x| 2 * x)
}

#[stage(source)]
fn odds(n: u64) -> impl Iterator<Item = u64> {
    (0..n).map(|x| 2 * x + 1)
}

#[test]
fn fan_in_merges_every_item_once_each_source_in_order() {
    let p = pipeline![(evens(300), odds(300)) | add_n(0)];
    let v = collect(p.results().unwrap());
    let mut all = v.clone();
    all.sort_unstable();
    assert_eq!(all, (0..600u64).collect::<Vec<_>>());
    let (even, odd): (Vec<u64>, Vec<u64>) = v.iter().partition(|&&x| x % 2 == 0);
    assert_eq!(even, (0..300u64).map(|x| 2 * x).collect::<Vec<_>>());
    assert_eq!(odd, (0..300u64).map(|x| 2 * x + 1).collect::<Vec<_>>());
}

#[test]
fn fan_in_alone_of_blocks_and_functions() {
    let p = pipeline![({ Source::new("hundreds", || 100..103u64) }, evens(2))];
    let mut v = collect(p.results().unwrap());
    v.sort_unstable();
    assert_eq!(v, [0, 2, 100, 101, 102]);
}

#[test]
fn fan_in_then_fan_out() {
    let p = pipeline![(evens(20), odds(20)) | (double, square_in_worker)];
    let v = collect(p.results().unwrap());
    assert_eq!(v.len(), 80);
    let mut pairs: Vec<(u64, u64)> = v.chunks(2).map(|c| (c[0], c[1])).collect();
    pairs.sort_unstable();
    let expected: Vec<(u64, u64)> = (0..40u64).map(|x| (2 * x, x * x)).collect();
    assert_eq!(pairs, expected);
}
