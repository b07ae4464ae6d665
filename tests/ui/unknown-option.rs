use forkpipe::prelude::*;

#[stage(workers = 2, threads = 4)]
fn double(x: u64) -> u64 {
    x * 2
}

fn main() {
    // The function is still emitted, so its callers compile.
    assert_eq!(double(2), 4);
}
