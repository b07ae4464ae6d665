// The expansion names nothing bare: it compiles in a crate that shadows the prelude and the
// standard crates' names.
#![deny(warnings, unused_qualifications)]
#![allow(dead_code, non_camel_case_types)]

mod core {}
mod std {}
struct Result;
struct Ok;
struct Option;
struct Vec;
struct Some;
struct Clone;
struct Iterator;
struct Stage;
struct Pipeline;
struct Source;
struct Emit;
struct PipeWriter;
struct PipeReader;
struct Producer;
struct Consumer;
struct PipePending;
struct Infallible;
struct writer;
struct reader;
struct item;
struct emit;

use forkpipe::{pipeline, stage};

#[stage]
fn add_n(x: u64, n: u64) -> u64 {
    x + n
}

#[stage]
fn halve(x: u64) -> ::core::option::Option<u64> {
    ::core::option::Option::Some(x / 2)
}

#[stage]
fn checked(x: u64) -> ::core::result::Result<u64, ::std::string::String> {
    ::core::result::Result::Ok(x)
}

#[stage]
fn spread(x: u64, out: &mut forkpipe::prelude::Emit<u64>, times: u64) {
    for i in 0..times {
        out.emit(x + i);
    }
}

#[stage(source)]
fn numbers(n: u64) -> impl ::core::iter::Iterator<Item = u64> {
    0..n
}

#[stage(pipe_next, subprocess, workers = 2)]
fn produce(x: u64, out: &mut forkpipe::prelude::PipeWriter, byte: u8) {
    let _ = ::std::io::Write::write_all(out, &[byte; 3][..x as usize % 4]);
}

#[stage]
fn consume(
    x: u64,
    bytes: &mut forkpipe::prelude::PipeReader,
    out: &mut forkpipe::prelude::Emit<u64>,
) -> ::core::result::Result<(), ::std::io::Error> {
    let mut all = ::std::vec::Vec::new();
    ::std::io::Read::read_to_end(bytes, &mut all)?;
    out.emit(x + all.len() as u64);
    ::core::result::Result::Ok(())
}

#[stage(unordered)]
fn consume_some(x: u64, _bytes: &mut forkpipe::prelude::PipeReader) -> ::core::option::Option<u64> {
    ::core::option::Option::Some(x)
}

fn main() {
    let _ = pipeline![numbers(3) | produce(b'x') | consume | produce(b'y') | consume_some];
    let _ = pipeline![produce(b'x') | consume | produce(b'y') | consume_some];
    let _ = pipeline![numbers(3) | add_n(1) | halve | checked | spread(2)];
    let _ = pipeline![add_n(1) | { forkpipe::prelude::Stage::map("id", |x: u64| x) }];
    let _ = pipeline![add_n(1) | (halve, add_n(2) | (checked, spread(2)), produce(b'x') | consume)];
    let _ = pipeline![(numbers(3), numbers(4)) | (add_n(1), { forkpipe::prelude::Stage::map("id", |x| x) })];
}
