use forkpipe::prelude::*;

#[stage(workers = 0)]
fn double(x: u64) -> u64 {
    x * 2
}

fn main() {}
