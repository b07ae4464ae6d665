use std::io::Write;

use forkpipe::prelude::*;

struct Rec {
    len: usize,
}

#[stage(pipe_next)]
fn repeat(r: Rec, out: &mut PipeWriter) -> std::io::Result<()> {
    out.write_all(&vec![b'x'; r.len])
}

fn main() {}
