use forkpipe::prelude::*;

#[stage(source)]
fn numbers(n: u64) -> impl Iterator<Item = u64> {
    0..n
}

#[stage]
fn double(x: u64) -> u64 {
    x * 2
}

fn main() {
    let _ = pipeline![(numbers(3), double) | double];
}
