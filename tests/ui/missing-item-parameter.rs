use forkpipe::prelude::*;

#[stage]
fn answer() -> u64 {
    42
}

fn main() {}
