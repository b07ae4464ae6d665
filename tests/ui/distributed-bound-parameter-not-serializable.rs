use forkpipe::prelude::*;

#[derive(Clone)]
struct Threshold(u64);

#[stage(subprocess, distributed)]
fn above(x: u64, t: Threshold) -> Option<u64> {
    (x > t.0).then_some(x)
}

fn main() {
    let _ = pipeline![above(Threshold(3))];
}
