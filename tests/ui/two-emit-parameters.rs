use forkpipe::prelude::*;

#[stage]
fn split(line: String, words: &mut Emit<String>, numbers: &mut Emit<u64>) {
    for word in line.split(' ') {
        match word.parse() {
            Ok(n) => numbers.emit(n),
            Err(_) => words.emit(word.to_owned()),
        }
    }
}

fn main() {}
