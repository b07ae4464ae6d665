//! W5: start, one item, and shutdown of a pipeline of 100 process stages (one worker each), in direct
//! mode, in fork-server mode (`forkpipe::init()` first) and for the bare mechanism (100
//! socketpairs and forks, each child exits at end of stream, 100 `waitpid`s) — each mode in a
//! fresh child process, the modes alternating, in the same run.
//!
//! `cargo bench --bench w5_start` (add `-- --test` for a quick smoke run).

mod bare;

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::time::Instant;

use forkpipe::{Pipeline, Stage};

const STAGES: usize = 100;

/// One start → one item through every stage → shutdown of 100 process stages.
fn forkpipe_cycle() {
    let inc = || Stage::map("inc", |x: u64| x + 1).subprocess();
    let mut p = Pipeline::new(inc());
    for _ in 1..STAGES {
        p = p.then(inc());
    }
    let running = p.start().expect("start");
    let ticket = running.submit(0).expect("submit");
    assert_eq!(ticket.wait().expect("the item"), STAGES as u64);
    let report = running.shutdown().expect("shutdown");
    assert!(report.is_graceful());
}

/// The bare mechanism: 100 children, each on its own socketpair, told to end by EOF.
fn bare_cycle() {
    let mut ends = Vec::with_capacity(STAGES);
    let mut pids = Vec::with_capacity(STAGES);
    for _ in 0..STAGES {
        let (mine, theirs) = UnixStream::pair().expect("socketpair");
        let mut mine = Some(mine);
        let pid = bare::fork_child(|| {
            // (The child keeps only its own end, so that each sees its EOF at once.)
            ends.clear();
            mine.take();
            let mut b = [0u8; 1];
            let _ = (&theirs).read(&mut b);
        });
        drop(theirs);
        ends.extend(mine);
        pids.push(pid);
    }
    drop(ends);
    for p in pids {
        bare::reap(p);
    }
}

/// In a child: the median milliseconds of `cycles` cycles in `mode`.
fn measure(mode: &str, cycles: usize) -> f64 {
    let cycle: fn() = if mode == "bare" {
        bare_cycle
    } else {
        forkpipe_cycle
    };
    cycle(); // (warm-up: page faults, the first fork of a large image)
    let mut ms: Vec<f64> = (0..cycles)
        .map(|_| {
            let t = Instant::now();
            cycle();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    bare::median(&mut ms)
}

fn main() {
    let test = bare::test_mode();
    let (rounds, cycles) = if test { (1, 1) } else { (7, 10) };
    if let Some(mode) = bare::child_mode() {
        println!("{}", measure(&mode, cycles));
        return;
    }
    let modes = ["bare", "direct", "server"];
    let mut got: Vec<Vec<f64>> = vec![Vec::new(); modes.len()];
    for _ in 0..rounds {
        for (m, mode) in modes.iter().enumerate() {
            let out = bare::in_child(mode);
            got[m].push(out.trim().parse().expect("a number of ms"));
        }
    }
    let med: Vec<f64> = got.iter_mut().map(|v| bare::median(v)).collect();
    println!(
        "W5 start: {STAGES} process stages, start -> one item through all -> shutdown (median of {rounds} children x {cycles} cycles)"
    );
    println!("  bare fork+waitpid {:>8.1} ms", med[0]);
    println!("  direct mode       {:>8.1} ms", med[1]);
    println!("  fork-server mode  {:>8.1} ms", med[2]);
    println!(
        "  server / direct   {:>8.2} x   (target <= 1.2 x)",
        med[2] / med[1]
    );
    println!(
        "  direct / bare     {:>8.2} x   (target <= 2 x)",
        med[1] / med[0]
    );
    println!(
        "  server / bare     {:>8.2} x   (target <= 2 x)",
        med[2] / med[0]
    );
}
