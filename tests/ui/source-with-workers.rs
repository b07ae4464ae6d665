use forkpipe::prelude::*;

#[stage(source, workers = 4)]
fn numbers(n: u64) -> impl Iterator<Item = u64> {
    0..n
}

fn main() {}
