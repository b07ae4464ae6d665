use forkpipe::prelude::*;

// Independent mistakes are all reported by one build.
#[stage(workers = 0, queue = 0, subprocess, subprocess)]
async fn double<T>(x: T) -> T {
    x
}

fn main() {
    let _ = pipeline![double 1 | { 2 } | 3];
}
