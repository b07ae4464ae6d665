//! B. Hangs and timeouts.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use forkpipe::prelude::*;
use libtest_mimic::Trial;

use super::support::{by_item, expect_died, fault, my_pid, signal};

pub fn trials(t: &mut Vec<Trial>) {
    t.push(fault("b01_timeout_fails_the_item", 30, b01_timeout));
    t.push(fault(
        "b02_hang_ignoring_sigterm_is_killed",
        30,
        b02_ignores_sigterm,
    ));
    t.push(fault(
        "b03_hang_without_timeout_drop_is_prompt",
        30,
        b03_hang_no_timeout,
    ));
    t.push(fault(
        "b04a_sigstop_sigcont_is_no_error",
        30,
        b04a_stop_cont,
    ));
    t.push(fault(
        "b04b_stopped_worker_times_out_and_is_killed",
        30,
        b04b_stopped_times_out,
    ));
    t.push(fault(
        "b06_graceful_shutdown_with_a_hung_item",
        30,
        b06_shutdown_hung,
    ));
    // A worker's outputs wait in its batch until its input queue runs dry: items it
    // completed before hanging are never delivered.
    t.push(fault(
        "b06b_items_done_before_a_hang_are_delivered",
        30,
        b06b_done_before_hang_delivered,
    ));
    t.push(fault(
        "b07_head_of_line_blocking_is_bounded",
        60,
        b07_head_of_line,
    ));
}

fn b01_timeout() {
    let p = Pipeline::new(
        Stage::map("slowpoke", |x: u64| {
            if x == 5 {
                loop {
                    thread::sleep(Duration::from_millis(10));
                }
            }
            (x, my_pid())
        })
        .subprocess()
        .timeout(Duration::from_millis(300)),
    );
    let mut results = p.run(0..20u64).expect("start");
    let all: Vec<_> = results.by_ref().collect();
    let stats = results.stats();
    drop(results);
    let errors = by_item(&all, 20, |v| v.0);
    assert_eq!(errors.len(), 1, "{errors:?}");
    let pid = expect_died(
        &errors[&5],
        "slowpoke",
        5,
        "timed out after 300 ms; worker killed",
    );
    assert!(
        all[6..].iter().all(|r| r.as_ref().unwrap().1 != pid),
        "the worker was replaced"
    );
    assert_eq!(stats.stages[0].restarts, 1, "{stats:?}");
}

fn b02_ignores_sigterm() {
    let p = Pipeline::new(
        Stage::map("stubborn", |x: u64| {
            if x == 2 {
                // SAFETY: ignoring SIGTERM in the worker is the point of the test.
                unsafe { libc::signal(libc::SIGTERM, libc::SIG_IGN) };
                loop {
                    std::hint::spin_loop();
                }
            }
            x
        })
        .subprocess()
        .timeout(Duration::from_millis(300)),
    );
    let t = Instant::now();
    let mut results = p.run(0..6u64).expect("start");
    let all: Vec<_> = results.by_ref().collect();
    let took = t.elapsed();
    drop(results);
    let errors = by_item(&all, 6, |v| *v);
    assert_eq!(errors.len(), 1, "{errors:?}");
    expect_died(
        &errors[&2],
        "stubborn",
        2,
        "timed out after 300 ms; worker killed",
    );
    // 300 ms limit + 200 ms grace + polling: far below the hang bound.
    assert!(took < Duration::from_secs(3), "took {took:?}");
}

fn b03_hang_no_timeout() {
    let running = Pipeline::new(
        Stage::map("forever", |x: u64| {
            loop {
                thread::sleep(Duration::from_millis(50));
                if x == u64::MAX {
                    break x;
                }
            }
        })
        .subprocess(),
    )
    .start()
    .expect("start");
    let t = running.submit(1).expect("submit");
    thread::sleep(Duration::from_millis(300));
    let st = running.stats();
    assert_eq!((st.submitted, st.completed), (1, 0), "in flight: {st:?}");
    let t0 = Instant::now();
    drop(running);
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "drop is prompt: {:?}",
        t0.elapsed()
    );
    let e = t.wait().expect_err("dropped");
    assert!(matches!(e, Error::ShutDown { item: 0 }), "{e:?}");
}

/// A worker that answers `(x, pid)` after 5 ms per item.
fn steady(name: &'static str) -> Stage<u64, (u64, u32)> {
    Stage::map(name, |x: u64| {
        thread::sleep(Duration::from_millis(5));
        (x, my_pid())
    })
    .subprocess()
}

fn b04a_stop_cont() {
    let running = Pipeline::new(steady("stoppable")).start().expect("start");
    let (_, pid) = running.submit(0).unwrap().wait().unwrap();
    let ts: Vec<_> = (1..101u64).map(|x| running.submit(x).unwrap()).collect();
    thread::sleep(Duration::from_millis(50));
    signal(pid, libc::SIGSTOP);
    thread::sleep(Duration::from_secs(1));
    let st = running.stats();
    signal(pid, libc::SIGCONT);
    assert_eq!(
        st.stages[0].restarts, 0,
        "a stopped worker is not dead: {st:?}"
    );
    for (x, t) in (1..101u64).zip(ts) {
        assert_eq!(t.wait().expect("no error"), (x, pid));
    }
    let report = running.shutdown().expect("shutdown");
    assert!(report.is_graceful());
    assert_eq!(report.stats().stages[0].restarts, 0);
    assert_eq!(report.stats().stages[0].failed, 0);
}

fn b04b_stopped_times_out() {
    let running = Pipeline::new(
        Stage::map("stopped", |x: u64| {
            if x == 1 {
                // Say "item 1 runs", then stay in it: the stop below lands mid-item (a
                // worker stopped between items holds no running item, so nothing times out).
                let _ = std::fs::File::create(super::support::run_dir().join("b04b.running"));
                thread::sleep(Duration::from_secs(2));
            }
            (x, my_pid())
        })
        .subprocess()
        .timeout(Duration::from_millis(300)),
    )
    .start()
    .expect("start");
    let (_, pid) = running.submit(0).unwrap().wait().unwrap();
    // Stop the worker while it runs item 1: the item outlives its limit while stopped.
    let t1 = running.submit(1).unwrap();
    let mark = super::support::run_dir().join("b04b.running");
    assert!(super::support::wait_until(Duration::from_secs(10), || mark.exists()));
    signal(pid, libc::SIGSTOP);
    let t0 = Instant::now();
    let e = t1.wait().expect_err("item 1 times out");
    let took = t0.elapsed();
    expect_died(&e, "stopped", 1, "timed out after 300 ms; worker killed");
    assert!(
        took < Duration::from_secs(3),
        "SIGKILL ends a stopped worker: {took:?}"
    );
    // The stage goes on with a replacement.
    let r2 = running.submit(2).unwrap().wait();
    signal(pid, libc::SIGCONT); // (if it somehow survived)
    match r2 {
        Ok((2, p)) => assert_ne!(p, pid, "item 2 ran on a replacement"),
        other => panic!("item 2: {other:?}"),
    }
    let report = running.shutdown().expect("shutdown");
    assert!(report.is_graceful());
    assert_eq!(report.stats().stages[0].restarts, 1);
}

fn hangs_on_3() -> Stage<u64, u64> {
    Stage::map("hangs_on_3", |x: u64| {
        if x == 3 {
            loop {
                thread::sleep(Duration::from_millis(20));
            }
        }
        x
    })
    .subprocess()
}

/// Shuts down with deadline 1 s; checks time and the report; returns the outcomes.
fn shutdown_1s(running: forkpipe::Running<u64, u64>) {
    let t0 = Instant::now();
    let report = running
        .shutdown_within(Duration::from_secs(1))
        .expect("shutdown");
    let took = t0.elapsed();
    assert!(
        took < Duration::from_secs(4),
        "shutdown has a deadline: {took:?}"
    );
    assert!(
        took >= Duration::from_millis(900),
        "it waited for the deadline: {took:?}"
    );
    assert!(!report.is_graceful(), "{report:?}");
}

fn b06_shutdown_hung() {
    let running = Pipeline::new(hangs_on_3()).start().expect("start");
    for x in 0..3u64 {
        assert_eq!(running.submit(x).unwrap().wait().unwrap(), x);
    }
    let ts: Vec<_> = (3..7u64).map(|x| running.submit(x).unwrap()).collect();
    thread::sleep(Duration::from_millis(200));
    shutdown_1s(running);
    for (x, t) in (3..7u64).zip(ts) {
        // Item 3 hangs; 4..6 wait behind it on the only worker: neither can finish.
        let e = t.wait().expect_err("unfinished at the deadline");
        assert!(matches!(e, Error::ShutDown { item } if item == x), "{e:?}");
    }
}

/// Items 0..2 complete on the worker before item 3 hangs there; they must be delivered.
fn b06b_done_before_hang_delivered() {
    let running = Pipeline::new(hangs_on_3()).start().expect("start");
    let ts: Vec<_> = (0..7u64).map(|x| running.submit(x).unwrap()).collect();
    thread::sleep(Duration::from_millis(300));
    shutdown_1s(running);
    for (x, t) in (0..7u64).zip(ts) {
        let r = t.wait();
        if x < 3 {
            assert_eq!(r.ok(), Some(x), "item {x} completed before the hang");
        } else {
            assert!(
                matches!(r, Err(Error::ShutDown { item }) if item == x),
                "{r:?}"
            );
        }
    }
}

fn b07_head_of_line() {
    const N: u64 = 40_000;
    const QUEUE: usize = 64;
    const WORKERS: usize = 4;
    // (A process stage fed by `run` holds `RUN_AHEAD` times its queues more: see the docs.)
    let window = (QUEUE * WORKERS * (1 + forkpipe::RUN_AHEAD) + forkpipe::DEFAULT_QUEUE) as u64;
    let bound = window + 512; // + one feeder chunk
    let pulled = Arc::new(AtomicU64::new(0));
    let delivered = Arc::new(AtomicU64::new(0));
    let p = Pipeline::new(
        Stage::map("hol", |x: u64| {
            if x == 0 {
                thread::sleep(Duration::from_secs(2));
            }
            x
        })
        .subprocess()
        .workers(WORKERS)
        .queue(QUEUE),
    );
    let c = Arc::clone(&pulled);
    let input = (0..N).inspect(move |_| {
        c.fetch_add(1, Ordering::Relaxed);
    });
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (pulled, delivered, done) = (pulled.clone(), delivered.clone(), done.clone());
        thread::spawn(move || {
            let mut worst = 0;
            while !done.load(Ordering::Relaxed) {
                let d = delivered.load(Ordering::Relaxed);
                let p = pulled.load(Ordering::Relaxed);
                worst = worst.max(p.saturating_sub(d));
                thread::sleep(Duration::from_millis(1));
            }
            worst
        })
    };
    let mut next = 0;
    let mut stalled_pull = 0;
    for r in p.run(input).expect("start") {
        if next == 0 {
            stalled_pull = pulled.load(Ordering::Relaxed);
        }
        assert_eq!(r.expect("ok"), next, "order kept");
        next += 1;
        delivered.store(next, Ordering::Relaxed);
    }
    done.store(true, Ordering::Relaxed);
    let worst = sampler.join().unwrap();
    assert_eq!(next, N);
    assert!(
        stalled_pull <= bound,
        "while item 0 blocked the head, {stalled_pull} items were pulled (bound {bound})"
    );
    assert!(
        stalled_pull >= window / 2,
        "the pipeline kept pulling behind the blocked head: {stalled_pull}"
    );
    assert!(
        worst <= bound,
        "pulled - delivered reached {worst} (bound {bound})"
    );
}
