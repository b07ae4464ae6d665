use forkpipe::prelude::*;

#[stage]
fn double(x: u64) -> u64 {
    x * 2
}

fn main() {
    let _ = pipeline![double | (double, , double)];
}
