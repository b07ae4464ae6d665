use forkpipe::prelude::*;

#[stage(source)]
fn numbers(n: u64) -> impl Iterator<Item = u64> {
    0..n
}

#[stage(source)]
fn words(n: u64) -> impl Iterator<Item = String> {
    (0..n).map(|x| x.to_string())
}

#[stage]
fn double(x: u64) -> u64 {
    x * 2
}

fn main() {
    let _ = pipeline![(numbers(3), words(3)) | double];
}
