use forkpipe::prelude::*;

#[stage(stream, distributed)]
fn total(xs: impl Iterator<Item = u64>) -> impl Iterator<Item = u64> {
    std::iter::once(xs.sum())
}

fn main() {}
