//! Every form and option of `#[stage]` and `pipeline!`, run on thread stages (and one in
//! worker processes). The expansion must be lint-clean, hence the `deny`.

#![deny(warnings, unused_qualifications, clippy::all)]

use std::io;

use forkpipe::prelude::*;

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
