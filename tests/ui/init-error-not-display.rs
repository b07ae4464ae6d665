use forkpipe::prelude::*;

struct NoDb;

fn connect() -> Result<Vec<u64>, NoDb> {
    Err(NoDb)
}

#[stage(init = connect)]
fn store(x: u64, db: &mut Vec<u64>) -> u64 {
    db.push(x);
    x
}

fn main() {}
