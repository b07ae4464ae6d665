use forkpipe::prelude::*;

fn connect() -> Vec<u64> {
    Vec::new()
}

#[stage(init = connect)]
fn store(x: u64, db: &mut Vec<String>) -> u64 {
    db.push(x.to_string());
    x
}

fn main() {}
