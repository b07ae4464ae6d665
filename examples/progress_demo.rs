//! `progress_demo`: the progress display of a run, on stderr while it is a terminal.
//!
//! ```text
//! cargo run --example progress_demo                       # 400 items, about 2 s
//! cargo run --example progress_demo -- --items 5000       # longer
//! cargo run --example progress_demo -- --no-progress      # no display
//! cargo run --example progress_demo 2> log.txt            # no display: stderr is a file
//! ```
//!
//! The pipeline is `parse | score | store`: `parse` is quick, `score` runs in 2 worker
//! processes and takes 4 ms an item, `store` takes 1 ms on a thread of this process; so
//! `score` is the bottleneck, and its line says so. While it runs, stderr shows one line
//! per stage (items done, the rate, the share of its workers' time spent busy) and a bar
//! with an ETA (the input is a range: its length is known); the last frame stays. The
//! result goes to stdout, which the display never touches.
//!
//! The queues are small (`queue = 16`) so that few items are in flight and they finish
//! steadily: with the default queues the whole input would be sent on at once and finish
//! in a few large batches, and "done" would jump at the end.

use std::time::Duration;

use clap::Parser;
use forkpipe::prelude::*;

#[derive(Parser)]
struct Args {
    /// Items to run.
    #[arg(long, default_value_t = 400)]
    items: u64,
    /// Turn the progress display off.
    #[arg(long)]
    no_progress: bool,
}

#[stage(queue = 16)]
fn parse(x: u64) -> u64 {
    x.wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

#[stage(subprocess, workers = 2, queue = 16)]
fn score(x: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(4));
    x.count_ones() as u64
}

#[stage]
fn store(x: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(1));
    x
}

#[forkpipe::main]
fn main() -> Result<(), forkpipe::Error> {
    let args = Args::parse();
    let p = pipeline![parse | score | store].progress(!args.no_progress);
    let mut total = 0;
    for r in p.run(0..args.items)? {
        total += r?;
    }
    println!("{} items, {total} bits set", args.items);
    Ok(())
}
