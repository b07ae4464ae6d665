//! H. Concurrency and API use; I. fork safety in a busy multi-threaded parent.

use std::thread;
use std::time::{Duration, Instant};

use forkpipe::prelude::*;
use libtest_mimic::Trial;

use super::support::{expect_died, fault};

pub fn trials(t: &mut Vec<Trial>) {
    t.push(fault(
        "h01_16_threads_submit_and_wait_with_crashes",
        60,
        h01,
    ));
    t.push(fault(
        "i01_noisy_threads_while_100_pipelines_start",
        60,
        i01,
    ));
}

fn scramble(x: u64) -> u64 {
    x.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (x >> 7)
}

fn h01() {
    const THREADS: u64 = 16;
    const PER: u64 = 1000;
    let running = Pipeline::new(
        Stage::map("maybe_abort", |x: u64| {
            if x.is_multiple_of(97) {
                std::process::abort();
            }
            scramble(x)
        })
        .subprocess()
        .workers(2),
    )
    .then(
        Stage::map("plus1", |x: u64| x.wrapping_add(1))
            .subprocess()
            .workers(2),
    )
    .start()
    .expect("start");
    let counts = thread::scope(|s| {
        let hs: Vec<_> = (0..THREADS)
            .map(|t| {
                let running = &running;
                s.spawn(move || {
                    let (mut ok, mut died, mut gave_up) = (0u64, 0u64, 0u64);
                    for i in 0..PER {
                        let x = t * 1_000_000 + i;
                        let ticket = running.submit(x).expect("submit");
                        let seq = ticket.item();
                        match ticket.wait() {
                            Ok(y) => {
                                assert_ne!(x % 97, 0, "a crashing item succeeded");
                                assert_eq!(y, scramble(x).wrapping_add(1), "thread {t} item {x}");
                                ok += 1;
                            }
                            Err(e) => {
                                assert_eq!(e.item(), Some(seq), "its own error: {e}");
                                match &e {
                                    Error::Died { .. } => {
                                        assert_eq!(x % 97, 0, "{e}");
                                        expect_died(&e, "maybe_abort", seq, "killed by SIGABRT");
                                        died += 1;
                                    }
                                    Error::GaveUp { stage, .. } => {
                                        assert_eq!(stage, "maybe_abort");
                                        gave_up += 1;
                                    }
                                    other => panic!("item {x}: {other:?}"),
                                }
                            }
                        }
                    }
                    (ok, died, gave_up)
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().unwrap())
            .fold((0, 0, 0), |a, b| (a.0 + b.0, a.1 + b.1, a.2 + b.2))
    });
    let report = running.shutdown().expect("shutdown");
    let crashing = (0..THREADS)
        .flat_map(|t| (0..PER).map(move |i| t * 1_000_000 + i))
        .filter(|x| x % 97 == 0)
        .count() as u64;
    eprintln!(
        "h01: ok {}, died {}, gave up {} (crashing items {crashing})",
        counts.0, counts.1, counts.2
    );
    assert_eq!(
        counts.0 + counts.1 + counts.2,
        THREADS * PER,
        "totals exact"
    );
    assert_eq!(report.stats().submitted, THREADS * PER);
    assert_eq!(report.stats().completed, THREADS * PER);
    assert!(counts.0 >= THREADS * PER - crashing - counts.2);
}

/// I01's process stage: `x` summed 16 times, plus the round `k` (a bound parameter).
#[stage(subprocess, workers = 2)]
fn busy_parent(x: u64, k: u64) -> u64 {
    let v: Vec<u64> = vec![x; 16];
    v.iter().sum::<u64>() + k
}

fn i01() {
    let noisy = super::support::Noisy::start();
    let mut worst = Duration::ZERO;
    for k in 0..100u64 {
        let t0 = Instant::now();
        let p = pipeline![busy_parent(k) | { Stage::map("t", |x: u64| x) }];
        let r = p.run(0..20u64).expect("start");
        let started = t0.elapsed();
        worst = worst.max(started);
        assert!(
            started < Duration::from_secs(5),
            "start {k} took {started:?}"
        );
        let v: Vec<u64> = r.collect::<Result<_, _>>().expect("ok");
        assert_eq!(v, (0..20u64).map(|x| x * 16 + k).collect::<Vec<_>>());
    }
    drop(noisy);
    eprintln!("i01: slowest start {worst:?}");
}
