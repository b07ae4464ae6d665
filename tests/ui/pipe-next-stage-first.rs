use std::io::{Read, Write};

use forkpipe::prelude::*;

#[stage(pipe_next)]
fn repeat(n: u64, out: &mut PipeWriter) -> std::io::Result<()> {
    out.write_all(&vec![b'x'; n as usize])
}

#[stage]
fn count(_n: u64, bytes: &mut PipeReader) -> std::io::Result<usize> {
    let mut all = Vec::new();
    bytes.read_to_end(&mut all)?;
    Ok(all.len())
}

fn main() {
    let _ = pipeline![repeat | count];
}
