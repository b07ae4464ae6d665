use forkpipe::prelude::*;

#[stage(subprocess, pipe_next)]
fn produce(x: u64) -> u64 {
    x
}

fn main() {}
