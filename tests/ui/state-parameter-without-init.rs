use forkpipe::prelude::*;

#[stage]
fn count(x: u64, seen: &mut u64) -> u64 {
    *seen += 1;
    x + *seen
}

fn main() {}
