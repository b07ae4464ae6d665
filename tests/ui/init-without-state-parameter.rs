use forkpipe::prelude::*;

fn connect() -> Vec<u64> {
    Vec::new()
}

#[stage(init = connect)]
fn store(x: u64) -> u64 {
    x
}

fn main() {}
