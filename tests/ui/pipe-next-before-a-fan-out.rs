use std::io::Write;

use forkpipe::prelude::*;

#[stage]
fn double(x: u64) -> u64 {
    x * 2
}

#[stage(pipe_next)]
fn repeat(n: u64, out: &mut PipeWriter) -> std::io::Result<()> {
    out.write_all(&vec![b'x'; n as usize])
}

fn main() {
    let _ = pipeline![double | repeat | (double, double)];
}
