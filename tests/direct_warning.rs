//! Direct mode (no `forkpipe::init()`) from a multi-threaded process: the first pipeline
//! logs one `tracing` warning naming the hazard and the remedy; a single-threaded start
//! logs none, and later starts do not repeat it.

#[path = "common/log.rs"]
mod log;

use forkpipe::prelude::*;
use log::Log;

#[stage(subprocess)]
fn inc(x: u64) -> u64 {
    x + 1
}

fn warnings(log: &Log) -> usize {
    let text = log.text();
    text.matches("without forkpipe::init()").count()
}

fn run_one() {
    let out: Vec<u64> = pipeline![inc]
        .run(0..10u64)
        .expect("start")
        .collect::<Result<_, _>>()
        .expect("items");
    assert_eq!(out, (1..11).collect::<Vec<_>>());
}

fn main() {
    let log = Log::default();
    let writer = log.clone();
    tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();
    run_one();
    assert_eq!(
        warnings(&log),
        0,
        "a single-threaded start warns of nothing"
    );

    let (stop, parked) = std::sync::mpsc::channel::<()>();
    let other = std::thread::spawn(move || parked.recv());
    run_one();
    run_one();
    let text = log.text();
    assert_eq!(
        warnings(&log),
        1,
        "one warning, at the first threaded start: {text}"
    );
    assert!(text.contains("WARN"), "{text}");
    assert!(
        text.contains("#[forkpipe::main]"),
        "names the remedy: {text}"
    );
    drop(stop);
    let _ = other.join();
    println!("direct_warning: ok");
}
