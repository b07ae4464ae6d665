use forkpipe::prelude::*;

struct Record(u64);

#[stage]
fn parse(x: u64) -> Record {
    Record(x)
}

#[stage]
fn id(record: Record) -> u64 {
    record.0
}

#[stage]
fn size(_record: Record) -> u64 {
    8
}

fn main() {
    let _ = pipeline![parse | (id, size)];
}
