use forkpipe::prelude::*;

fn main() {
    let _ = pipeline![];
}
