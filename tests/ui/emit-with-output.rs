use forkpipe::prelude::*;

#[stage]
fn words(line: String, out: &mut Emit<String>) -> usize {
    line.split(' ').map(|w| out.emit(w.to_owned())).count()
}

fn main() {}
