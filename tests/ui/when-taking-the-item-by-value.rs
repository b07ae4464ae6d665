use forkpipe::prelude::*;

fn is_even(x: u64) -> bool {
    x % 2 == 0
}

#[stage(when = is_even)]
fn halve(x: u64) -> u64 {
    x / 2
}

fn main() {}
