use forkpipe::prelude::*;

#[stage]
fn double(x: u64) -> u64 {
    x * 2
}

#[stage]
fn shout(text: String) -> String {
    text.to_uppercase()
}

fn main() {
    let _ = pipeline![double | (double, shout)];
}
