//! W2 (DESIGN §5): 20,000 items of ~100 µs CPU work each (`bare::spin`, a deterministic LCG
//! loop calibrated once at start to ~100 µs; no sleeping) through one process stage with
//! `workers = 1` and `workers = 2` — next to the same work done by a plain serial loop in
//! the calling thread, and to 2 bare forked children splitting the items (what 2 cores give
//! right now on a shared machine), in the same run, alternating (serial, 1 worker,
//! 2 workers, bare 2 forks, …), median of 5 rounds.
//!
//! Prints each figure, the speedup over the serial loop and the "% of ideal per core",
//! where ideal = workers capped by the cores this process may use. forkpipe is timed end
//! to end (start to shutdown); the outputs are checked, in order, against the serial loop's.
//!
//! `cargo bench --bench w2_scaling` (add `-- --test` for a quick smoke run).

mod bare;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use forkpipe::{Pipeline, Stage};

/// Steps of `bare::spin` per item: set once, before any pipeline starts (workers are
/// forked from the caller, so they see it too).
static ITERS: AtomicU64 = AtomicU64::new(0);

fn work(x: u64) -> u64 {
    bare::spin(x, ITERS.load(Ordering::Relaxed))
}

/// An order-sensitive fold of the outputs.
fn fold(h: u64, v: u64) -> u64 {
    h.rotate_left(7) ^ v
}

/// Seconds and the fold of the outputs of the serial loop.
fn serial(items: u64) -> (f64, u64) {
    let t = Instant::now();
    let h = (0..items).map(work).fold(0, fold);
    (t.elapsed().as_secs_f64(), h)
}

/// Seconds for the bare mechanism with `n` processes: `n` forked children, child `i`
/// doing items `i, i + n, …` (nothing sent back), forks and reaps timed: what `n` cores
/// give right now on this shared machine.
fn bare_run(items: u64, n: u64) -> f64 {
    let t = Instant::now();
    let pids: Vec<_> = (0..n)
        .map(|i| {
            bare::fork_child(move || {
                let h = (i..items).step_by(n as usize).map(work).fold(0, fold);
                std::hint::black_box(h);
            })
        })
        .collect();
    for p in pids {
        bare::reap(p);
    }
    t.elapsed().as_secs_f64()
}

/// Seconds (start to shutdown) and the fold of the outputs with `workers` processes.
fn forkpipe_run(items: u64, workers: usize) -> (f64, u64) {
    let t = Instant::now();
    let p = Pipeline::new(Stage::map("work", work).subprocess().workers(workers));
    let h = p
        .run(0..items)
        .expect("start")
        .map(|r| r.expect("item"))
        .fold(0, fold);
    (t.elapsed().as_secs_f64(), h)
}

fn main() {
    let (items, rounds) = if bare::test_mode() {
        (200, 1)
    } else {
        (20_000, 5)
    };
    let iters = bare::calibrate(Duration::from_micros(100));
    ITERS.store(iters, Ordering::Relaxed);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers = [1usize, 2];
    let mut ser = Vec::new();
    let mut bare2 = Vec::new();
    let mut fp: Vec<Vec<f64>> = vec![Vec::new(); workers.len()];
    for _ in 0..rounds {
        let (s, want) = serial(items);
        ser.push(s);
        for (i, &w) in workers.iter().enumerate() {
            let (secs, got) = forkpipe_run(items, w);
            assert_eq!(
                got, want,
                "workers = {w}: outputs differ from the serial loop's"
            );
            fp[i].push(secs);
        }
        bare2.push(bare_run(items, 2));
    }
    let list = |v: &[f64]| {
        v.iter()
            .map(|s| format!("{s:.3}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let ser_runs = list(&ser);
    let s = bare::median(&mut ser);
    println!(
        "W2 scaling: {items} items of ~100 µs CPU ({iters} spin steps, {:.1} µs each in the serial loop), \
         one process stage, {cores} cores (median of {rounds} alternating rounds)",
        s / items as f64 * 1e6
    );
    println!("  serial loop      {s:>7.3} s   (runs, s: {ser_runs})");
    for (i, &w) in workers.iter().enumerate() {
        let runs = list(&fp[i]);
        let f = bare::median(&mut fp[i]);
        let speedup = s / f;
        let ideal = w.min(cores) as f64;
        println!(
            "  workers = {w}      {f:>7.3} s   speedup {speedup:>5.2} x   ideal {ideal:.0} x   \
             {:>5.1} % of ideal per core   (runs, s: {runs})",
            100.0 * speedup / ideal
        );
    }
    let b_runs = list(&bare2);
    let b = bare::median(&mut bare2);
    println!(
        "  bare 2 forks     {b:>7.3} s   speedup {:>5.2} x   ideal {:.0} x   {:>5.1} % of ideal per core   (runs, s: {b_runs})",
        s / b,
        2.min(cores),
        100.0 * s / b / 2.min(cores) as f64
    );
    println!("  (target: speedup within 10 % of ideal up to the core count)");
}
