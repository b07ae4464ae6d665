use forkpipe::prelude::*;

#[stage(subprocess, timeout_ms = 0)]
fn slow(x: u64) -> u64 {
    std::thread::sleep(std::time::Duration::from_millis(x));
    x
}

fn main() {}
