use forkpipe::prelude::*;

#[stage]
fn add_n(x: u64, n: u64) -> u64 {
    x + n
}

fn main() {
    let _ = pipeline![add_n(1) | { Stage::map("len", |s: String| s.len()) }];
}
