use forkpipe::prelude::*;

#[stage(unordered, workers = 2, unordered)]
fn double(x: u64) -> u64 {
    x * 2
}

fn main() {}
