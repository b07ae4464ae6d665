//! The fault catalogue (`tests/faults/`) in fork-server mode: `forkpipe::init()` runs first,
//! so every supervisor is forked by the fork server; each case asserts what it asserts in
//! direct mode.

#[path = "faults/main.rs"]
mod faults;

fn main() {
    faults::run(faults::Mode::Server)
}
