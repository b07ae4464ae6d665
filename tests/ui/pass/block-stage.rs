use forkpipe::prelude::*;

#[stage]
fn double(x: u64) -> u64 {
    x * 2
}

fn main() {
    let stages: Vec<u64> = vec![1, 2];
    let _ = pipeline![
        { Stage::map("first", |x: u64| x) }
            | double
            | {
                let n = stages.len() as u64;
                Stage::map("add", move |x: u64| x + n)
            }
            | { Stage::map("last", |x| x) }
    ];
}
