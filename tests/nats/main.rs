//! Distributed stages against a real `nats-server -js` on loopback, with worker hosts that
//! are this test binary started again in host mode (`FORKPIPE_HOST`). Each test starts its
//! own server and hosts and checks that nothing is left behind.
//!
//! Needs `nats-server` on `PATH` (Debian: `apt-get install nats-server`); without it, the
//! target prints one line saying so and passes; so does a build without the `nats`
//! feature (`cargo test --features nats --test nats` runs them).

#[cfg(feature = "nats")]
mod cases;
#[cfg(feature = "nats")]
mod support;

#[cfg(feature = "nats")]
fn main() {
    cases::main();
}

#[cfg(not(feature = "nats"))]
fn main() {
    println!(
        "nats tests skipped: built without forkpipe's `nats` feature; run `cargo test --features nats --test nats` (needs `nats-server` on PATH: `apt-get install nats-server`)"
    );
}
