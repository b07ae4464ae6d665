use forkpipe::prelude::*;

struct Doubler;

impl Doubler {
    #[stage]
    fn double(&self, x: u64) -> u64 {
        x * 2
    }
}

fn main() {}
