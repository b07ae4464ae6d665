//! Every form and option of `#[stage]` and `pipeline!` in a crate that names forkpipe
//! `renamed` and shadows the prelude and the standard crates: the expansion must name
//! nothing bare and reach the runtime through the name this crate gave it.

#![deny(warnings, unused_qualifications)]
#![allow(dead_code, non_camel_case_types)]

mod core {}
mod std {}
mod forkpipe {}
struct Result;
struct Ok;
struct Err;
struct Option;
struct Some;
struct None;
struct Vec;
struct String;
struct Clone;
struct Iterator;
struct IntoIterator;
struct Fn;
struct Send;
struct Sync;
struct Sized;
struct Duration;
struct Stage;
struct Pipeline;
struct Source;
struct Emit;
struct Items;
struct InitResult;
struct Wire;
struct item;
struct emit;
struct state;

use ::renamed::{pipeline, stage};

type Text = ::std::string::String;

#[derive(::serde::Serialize, ::serde::Deserialize)]
struct Rec {
    n: u64,
}

#[derive(Default)]
struct Counter {
    seen: u64,
}

fn new_counter() -> Counter {
    Counter::default()
}

fn open_counter() -> ::core::result::Result<Counter, Text> {
    ::core::result::Result::Ok(Counter::default())
}

fn is_even(x: &u64) -> bool {
    x % 2 == 0
}

#[stage]
fn add_n(x: u64, n: u64) -> u64 {
    x + n
}

#[stage(
    subprocess,
    workers = 2,
    unordered,
    queue = 4,
    name = "to_rec",
    timeout_ms = 1000
)]
fn to_rec(x: u64) -> Rec {
    Rec { n: x }
}

#[stage(subprocess)]
fn from_rec(r: Rec) -> u64 {
    r.n
}

#[stage]
fn halve(x: u64) -> ::core::option::Option<u64> {
    ::core::option::Option::Some(x / 2)
}

#[stage]
fn checked(x: u64) -> ::core::result::Result<u64, Text> {
    ::core::result::Result::Ok(x)
}

#[stage]
fn spread(x: u64, out: &mut ::renamed::Emit<u64>, times: u64) {
    for i in 0..times {
        out.emit(x + i);
    }
}

#[stage]
fn spread_checked(x: u64, out: &mut ::renamed::Emit<u64>) -> ::core::result::Result<(), Text> {
    out.emit(x);
    ::core::result::Result::Ok(())
}

#[stage(source)]
fn numbers(n: u64) -> impl ::core::iter::Iterator<Item = u64> {
    0..n
}

#[stage(stream)]
fn total(xs: impl ::core::iter::Iterator<Item = u64>) -> impl ::core::iter::Iterator<Item = u64> {
    ::core::iter::once(xs.sum())
}

#[stage(stream, subprocess)]
fn running(xs: impl ::core::iter::Iterator<Item = u64>, start: u64) -> ::std::vec::Vec<u64> {
    xs.map(|x| x + start).collect()
}

#[stage(init = new_counter, when = is_even)]
fn count(x: u64, counter: &mut Counter) -> u64 {
    counter.seen += 1;
    x + counter.seen
}

#[stage(subprocess, init = open_counter)]
fn count_checked(x: u64, counter: &mut Counter) -> ::core::result::Result<u64, Text> {
    counter.seen += 1;
    ::core::result::Result::Ok(x + counter.seen)
}

#[stage(init = new_counter)]
fn count_some(x: u64, counter: &mut Counter) -> ::core::option::Option<u64> {
    counter.seen += 1;
    ::core::option::Option::Some(x)
}

#[stage(init = new_counter)]
fn count_out(x: u64, out: &mut ::renamed::Emit<u64>, counter: &mut Counter) {
    counter.seen += 1;
    out.emit(x);
}

#[stage(init = new_counter)]
fn count_out_checked(
    x: u64,
    counter: &mut Counter,
    out: &mut ::renamed::Emit<u64>,
) -> ::core::result::Result<(), Text> {
    counter.seen += 1;
    out.emit(x);
    ::core::result::Result::Ok(())
}

#[stage(init = new_counter)]
fn count_sink(_x: u64, counter: &mut Counter) {
    counter.seen += 1;
}

fn main() {
    let p = pipeline![
        numbers(3)
            | add_n(1)
            | to_rec
            | from_rec
            | halve
            | checked
            | spread(2)
            | spread_checked
            | count
            | count_checked
            | count_some
            | count_out
            | count_out_checked
            | running(1)
            | total
            | count_sink
    ];
    let _ = p;
    let _ = pipeline![add_n(1) | { ::renamed::Stage::map("id", |x: u64| x) }];
}
