use forkpipe::prelude::*;

struct Rec {
    len: usize,
}

#[stage(subprocess, workers = 2)]
fn measure(line: String) -> Rec {
    Rec { len: line.len() }
}

fn main() {}
