//! `threaded_caller`: a multi-threaded program that starts pipelines — the case fork-server
//! mode exists for.
//!
//! Four threads print continuously while the main thread starts 100 pipelines, each with a
//! process stage (2 workers) that prints and reads the environment. Forked straight from
//! this threaded process (`--direct`), a worker can inherit a lock another thread held at
//! that instant (stdout's, the environment's) and hang forever; with `forkpipe::init()` as
//! the first line of `main` (the default here) every worker comes from a single-threaded
//! fork server and nothing can hang.
//!
//! ```text
//! cargo run --example threaded_caller > /dev/null            # with init(): always finishes
//! cargo run --example threaded_caller -- --direct > /dev/null # without: may hang
//! ```
//!
//! A watchdog ends the program after `--deadline` seconds (exit code 2) and says how many
//! pipelines finished; the summary goes to stderr.

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use forkpipe::prelude::*;

#[derive(Parser)]
struct Args {
    /// Do not call `forkpipe::init()`: fork from this threaded process.
    #[arg(long)]
    direct: bool,
    /// Pipelines to start, one after the other.
    #[arg(long, default_value_t = 100)]
    pipelines: u32,
    /// Seconds before the watchdog ends the run.
    #[arg(long, default_value_t = 30)]
    deadline: u64,
}

#[stage(subprocess, workers = 2)]
fn chatty(x: u64) -> u64 {
    println!("worker {} got {x}", std::process::id());
    // (Reading the environment takes its lock, as printing takes stdout's.)
    let _home = std::env::var("HOME");
    x
}

fn main() -> ExitCode {
    let args = Args::parse();
    if !args.direct {
        // First, while the process has one thread: every pipeline's processes come from
        // the fork server from now on.
        if let Err(e) = forkpipe::init() {
            eprintln!("threaded_caller: {e}");
            return ExitCode::FAILURE;
        }
    }
    for t in 0..4 {
        std::thread::spawn(move || {
            loop {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "printer {t} says hello");
            }
        });
    }
    let t0 = Instant::now();
    let finished = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let seen = std::sync::Arc::clone(&finished);
    let deadline = args.deadline;
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(deadline));
        let n = seen.load(std::sync::atomic::Ordering::Relaxed);
        eprintln!("threaded_caller: HANG: {n} pipelines finished in {deadline} s");
        std::process::exit(2);
    });
    for i in 0..args.pipelines {
        let out: Vec<u64> = pipeline![chatty]
            .run(0..10u64)
            .and_then(|r| r.collect())
            .unwrap_or_else(|e| panic!("pipeline {i}: {e}"));
        assert_eq!(out, (0..10).collect::<Vec<_>>());
        finished.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    eprintln!(
        "threaded_caller: {} pipelines finished in {:.1} s ({})",
        args.pipelines,
        t0.elapsed().as_secs_f64(),
        if args.direct { "direct" } else { "fork server" }
    );
    ExitCode::SUCCESS
}
