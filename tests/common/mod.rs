//! Helpers shared by the integration-test targets that fork: [`procs`] inspects processes,
//! descriptors and threads through `/proc` and checks that a test left nothing behind;
//! [`scenarios`] holds whole pipelines with asserted results, run by `tests/fork.rs`
//! (libtest-mimic, one test thread) and `tests/api.rs` (ordinary multi-threaded `#[test]`s).
//!
//! Every target includes the whole module and uses a part of it, hence the `allow`s.

#![allow(dead_code, unreachable_pub)]

mod procs;
mod runs;
mod scenarios;
mod shapes;

// A target that uses nothing of one part leaves its glob unused.
#[allow(unused_imports)]
pub use procs::*;
#[allow(unused_imports)]
pub use runs::*;
#[allow(unused_imports)]
pub use scenarios::*;
pub use shapes::*;
