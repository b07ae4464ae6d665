use forkpipe::prelude::*;

#[stage(stream)]
fn longest(title: String) -> impl Iterator<Item = String> {
    std::iter::once(title)
}

fn main() {}
