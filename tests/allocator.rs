//! FAULTS I6: forkpipe under another global allocator. mimalloc keeps per-thread heaps and
//! registers no `pthread_atfork` handlers, so a fork from a multi-threaded program is the
//! case to check: pipelines start (supervisor and workers are forked copies of a process
//! whose other threads allocate all the time), replacement workers are forked after a
//! crash, and everything ends clean. Runs under the ordinary multi-threaded test harness.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use forkpipe::prelude::*;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod common;

#[test]
fn pipelines_start_and_recover_under_mimalloc_with_busy_threads() {
    let _fork = common::exclusive_fork_lock();
    let base = common::Baseline::now();
    let stop = Arc::new(AtomicBool::new(false));
    let busy: Vec<_> = (0..8)
        .map(|k| {
            let stop = Arc::clone(&stop);
            thread::spawn(move || {
                let mut n = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    // Allocations of many sizes, freed on other threads too.
                    let v: Vec<Vec<u8>> = (0..64).map(|i| vec![k as u8; 1 + i * 97]).collect();
                    n = n.wrapping_add(v.iter().map(Vec::len).sum::<usize>());
                    let s = thread::spawn(move || v.len());
                    n = n.wrapping_add(s.join().unwrap_or(0));
                    n = n.wrapping_add(std::env::var("PATH").map_or(0, |p| p.len()));
                }
                n
            })
        })
        .collect();
    let mut worst = Duration::ZERO;
    for k in 0..60u64 {
        let t0 = Instant::now();
        let p = Pipeline::new(
            Stage::map("alloc", move |x: u64| {
                if x == 7 && k % 10 == 0 {
                    std::process::abort(); // a replacement is forked by the supervisor
                }
                let v: Vec<u64> = vec![x; 1000];
                v.iter().sum::<u64>() / 1000 + k
            })
            .subprocess()
            .workers(2),
        )
        .then(Stage::map("t", |x: u64| x));
        let r = p.run(0..20u64).expect("start");
        let got: Vec<Result<u64, Error>> = r.collect();
        worst = worst.max(t0.elapsed());
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "run {k} took {:?}",
            t0.elapsed()
        );
        for (x, g) in got.iter().enumerate() {
            match g {
                Ok(v) => assert_eq!(*v, x as u64 + k),
                Err(e) => {
                    assert!(x == 7 && k % 10 == 0, "item {x} of run {k}: {e}");
                    assert!(e.to_string().contains("killed by SIGABRT"), "{e}");
                }
            }
        }
        assert_eq!(got.len(), 20);
    }
    stop.store(true, Ordering::Relaxed);
    for h in busy {
        h.join().expect("busy thread");
    }
    eprintln!("mimalloc: slowest run {worst:?}");
    base.assert_clean("mimalloc", true);
}
