use std::io::Read;

use forkpipe::prelude::*;

#[stage]
fn double(x: u64) -> u64 {
    x * 2
}

#[stage]
fn count(_n: u64, bytes: &mut PipeReader) -> std::io::Result<usize> {
    let mut all = Vec::new();
    bytes.read_to_end(&mut all)?;
    Ok(all.len())
}

fn main() {
    let _ = pipeline![double | count];
}
