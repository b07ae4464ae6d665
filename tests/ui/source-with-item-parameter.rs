use forkpipe::prelude::*;

#[stage(source)]
fn doubled(numbers: impl Iterator<Item = u64>) -> impl Iterator<Item = u64> {
    numbers.map(|x| x * 2)
}

fn main() {}
