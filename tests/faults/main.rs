//! Fault tests: the fault, load and bad-input catalogue, each case provoked for real and its
//! exact outcome asserted — the error's stage, item, worker pid and cause, exactly one
//! outcome per item, the order of the rest, and nothing left behind.
//!
//! A case's name starts with its section and number (`a09b_…`). The sections: A, a worker
//! dies while holding an item; B, hangs and timeouts; C, restarts and supervision;
//! D, serialization, bad input and transport; E, load and resource bounds; F, shutdown, drop
//! and cancellation; G, parent death and signals; H, concurrency and API use; I, fork safety
//! and the process environment; K, whole-system properties (a model-based fault schedule).
//! Section J, `pipe_next` pairs, is tested in `tests/pipe.rs`. Each module's doc names the
//! sections and cases it holds.
//!
//! Runs with libtest-mimic on one test thread (each test checks that the whole process is
//! clean afterwards: no child or zombie, descriptors and threads back to the baseline),
//! every body under a watchdog. Cases that kill or signal the *caller* run in a victim: this
//! binary re-executed with `FORKPIPE_VICTIM=<scenario>`, in its own process group.
//!
//! The same catalogue runs twice: here in direct mode (the caller forks each supervisor), and
//! as `tests/faults_server.rs` in fork-server mode (`forkpipe::init()` first, in the victims
//! too), which compiles this file as its module and calls [`run`] with [`Mode::Server`].

mod codec;
#[path = "../common/mod.rs"]
mod common;
mod concurrency;
mod crash;
mod death;
mod flow;
mod hang;
mod init;
mod load;
mod model;
mod parent;
mod signals;
mod supervise;
mod support;

use libtest_mimic::{Arguments, Trial};

/// How the catalogue's pipelines are started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// No `forkpipe::init()`: the caller forks every supervisor.
    Direct,
    /// `forkpipe::init()` first: the fork server forks every supervisor.
    Server,
}

// (Unused when this file is `tests/faults_server.rs`'s module, which has its own `main`.)
#[allow(dead_code)]
fn main() {
    run(Mode::Direct)
}

/// Runs the whole catalogue (or, in a victim, its one scenario) in `mode`.
///
/// What the workers must inherit is set up before `forkpipe::init()`: in fork-server mode
/// every worker is forked from the image taken there (the run directory, and what a victim
/// prepares: signal handlers, credentials, limits, descriptors).
pub fn run(mode: Mode) {
    // The harness waits for its own children (victims, and the children of G9 and I8):
    // a SIGCHLD that the shell handed down ignored would have the kernel reap them before
    // it can. Victims go through here too; the case about a host that ignores SIGCHLD (G8)
    // ignores it in its victim, after this.
    support::default_action(&[libc::SIGCHLD]);
    support::set_mode(mode);
    let victim = std::env::var(support::VICTIM_VAR).ok();
    common::set_no_core_dumps();
    let dir = support::run_dir().to_path_buf();
    if let Some(scenario) = &victim {
        parent::victim_prepare(scenario);
    }
    if mode == Mode::Server {
        forkpipe::init().expect("init() first in a single-threaded main");
    }
    if let Some(scenario) = victim {
        parent::victim_main(&scenario);
    }
    let mut args = Arguments::from_args();
    args.test_threads = Some(1);

    let mut trials: Vec<Trial> = Vec::new();
    crash::trials(&mut trials);
    hang::trials(&mut trials);
    supervise::trials(&mut trials);
    codec::trials(&mut trials);
    load::trials(&mut trials);
    init::trials(&mut trials);
    parent::trials(&mut trials);
    concurrency::trials(&mut trials);
    model::trials(&mut trials);
    death::trials(&mut trials);
    signals::trials(&mut trials);
    flow::trials(&mut trials);

    let conclusion = libtest_mimic::run(&args, trials);
    let _ = std::fs::remove_dir_all(dir);
    conclusion.exit();
}
