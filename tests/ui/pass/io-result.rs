use std::io;

use forkpipe::prelude::*;

#[stage]
fn read(path: String) -> io::Result<Vec<u8>> {
    std::fs::read(path)
}

#[stage]
fn checked(x: Vec<u8>) -> std::result::Result<usize, String> {
    Ok(x.len())
}

fn main() {
    let _: Pipeline<String, usize> = pipeline![read | checked];
}
