use forkpipe::prelude::*;

struct Thumb;

#[stage]
fn parse(line: String) -> u64 {
    line.len() as u64
}

#[stage]
fn index(x: u64) -> String {
    x.to_string()
}

#[stage]
fn store(key: String) -> u64 {
    key.len() as u64
}

#[stage]
fn thumbnail(_x: u64) -> Thumb {
    Thumb
}

#[stage]
fn report(x: u64) -> u64 {
    x
}

fn main() {
    let _ = pipeline![parse | (index | store, thumbnail) | report];
}
