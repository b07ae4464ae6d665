//! `#[forkpipe::main]` on a test binary's `main`: the fork server is started before `main`'s
//! body runs, and a pipeline started from a thread that `main` spawned is forked by it.

use forkpipe::prelude::*;

/// `(x, the worker's pid, the pid of the worker's supervisor)`.
#[stage(subprocess, workers = 2)]
fn whose(x: u64) -> (u64, u32, u32) {
    (x, std::process::id(), std::os::unix::process::parent_id())
}

/// The parent of `pid`, from `/proc/<pid>/stat`.
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..]
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

#[forkpipe::main]
fn main() {
    let server = forkpipe::fork_server_pid().expect("#[forkpipe::main] started a fork server");
    assert_eq!(parent_of(server), Some(std::process::id()));
    // From another thread (the process is multi-threaded now): still the fork server's.
    let sup_parent = std::thread::spawn(|| {
        let running = pipeline![whose].start().expect("start");
        let (x, worker, sup) = running.submit(7).expect("submit").wait().expect("item");
        assert_eq!(x, 7);
        assert_ne!(worker, std::process::id());
        let parent = parent_of(sup);
        running.shutdown().expect("shutdown");
        parent
    })
    .join()
    .expect("the pipeline thread");
    assert_eq!(
        sup_parent,
        Some(server),
        "the supervisor is the fork server's child"
    );
    println!("main_attr: ok (fork server {server})");
}
