use forkpipe::prelude::*;

#[stage]
fn to_text(x: u64) -> String {
    x.to_string()
}

#[stage]
fn add_n(x: u64, n: u64) -> u64 {
    x + n
}

fn main() {
    let _ = pipeline![add_n(1) | to_text | add_n(7)];
}
