use forkpipe::prelude::*;

struct Rec {
    len: usize,
}

fn is_long(line: &str) -> bool {
    line.len() > 10
}

#[stage(when = is_long)]
fn parse(line: String) -> Rec {
    Rec { len: line.len() }
}

fn main() {}
