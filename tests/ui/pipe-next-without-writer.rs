use forkpipe::prelude::*;

#[stage(pipe_next)]
fn repeat(n: u64) {
    let _ = n;
}

fn main() {}
