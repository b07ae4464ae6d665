// Fan-outs and fan-ins in every position the grammar allows.
use std::io::{Read, Write};

use forkpipe::prelude::*;

#[stage]
fn double(x: u64) -> u64 {
    x * 2
}

#[stage(source)]
fn numbers(n: u64) -> impl Iterator<Item = u64> {
    0..n
}

#[stage(pipe_next)]
fn repeat(n: u64, out: &mut PipeWriter) -> std::io::Result<()> {
    out.write_all(&vec![b'x'; n as usize % 8])
}

#[stage]
fn count(_n: u64, bytes: &mut PipeReader) -> std::io::Result<u64> {
    let mut all = Vec::new();
    bytes.read_to_end(&mut all)?;
    Ok(all.len() as u64)
}

fn main() {
    // A block first in a branch: its closure takes the type before the fan-out.
    let _ = pipeline![double | ({ Stage::map("inc", |x| x + 1) }, double) | double];
    // Nested fan-outs, first in a branch and after a stage of one.
    let _ = pipeline![double | ((double, double) | double, double | (double, double))];
    // A pipe_next pair inside a branch, first and after a stage.
    let _ = pipeline![double | (repeat | count, double | repeat | count) | double];
    // A fan-in of blocks, alone and followed by a fan-out.
    let _: Pipeline<(), u64> = pipeline![(
        { Source::new("a", || 0..3u64) },
        { Source::new("b", || 3..6u64) },
    )];
    let _ = pipeline![({ Source::new("a", || 0..3u64) }, numbers(3)) | (double, double)];
    // One branch, trailing commas.
    let _ = pipeline![(numbers(3),) | (double,) | double];
}
