use forkpipe::prelude::*;

#[stage(workers = 2, timeout_ms = 500)]
fn slow(x: u64) -> u64 {
    std::thread::sleep(std::time::Duration::from_millis(x));
    x
}

fn main() {}
