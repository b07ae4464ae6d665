//! B5 (slow `init`) and C3 (`init` failing in a replacement worker).

use std::time::{Duration, Instant};

use forkpipe::{Emit, Error, Pipeline, Stage};
use libtest_mimic::Trial;

use super::support::{by_item, fault, ticket_number};

pub fn trials(t: &mut Vec<Trial>) {
    t.push(fault("b05_slow_init_is_not_item_time", 30, b05_slow_init));
    t.push(fault(
        "c03_init_fails_in_replacement_workers",
        30,
        c03_init_fails_in_replacements,
    ));
}

/// `init` takes 1 s; items have a 300 ms limit: `start` waits for init, and no item times out
/// because of it.
fn b05_slow_init() {
    let t0 = Instant::now();
    let stage = Stage::stateful(
        "slow_init",
        || {
            std::thread::sleep(Duration::from_secs(1));
            Ok::<u64, String>(0)
        },
        |x: u64, n: &mut u64, out: &mut Emit<u64>| {
            *n += 1;
            out.emit(x + 1);
            Ok::<(), String>(())
        },
    )
    .subprocess()
    .workers(2)
    .timeout(Duration::from_millis(300));
    let running = Pipeline::new(stage).start().expect("start");
    assert!(
        t0.elapsed() >= Duration::from_secs(1),
        "start() returns once every worker ran its init"
    );
    let tickets: Vec<_> = (0..20u64)
        .map(|x| running.submit(x).expect("submit"))
        .collect();
    for (x, t) in tickets.into_iter().enumerate() {
        assert_eq!(t.wait().expect("no item times out"), x as u64 + 1);
    }
    let report = running.shutdown().expect("shutdown");
    assert!(report.is_graceful());
    assert_eq!(report.stats().stages[0].restarts, 0);
}

/// The first worker's `init` succeeds; every later one (the replacements) fails. A crash on
/// item 5 therefore leaves no healthy worker: the remaining items must fail — with the
/// init's cause, after the restart budget — rather than wait.
fn c03_init_fails_in_replacements() {
    let stage = Stage::stateful(
        "reinit",
        || {
            if ticket_number("c03") == 0 {
                Ok(())
            } else {
                Err("the database is gone".to_string())
            }
        },
        |x: u64, _: &mut (), out: &mut Emit<u64>| {
            if x == 5 {
                std::process::abort();
            }
            out.emit(x);
            Ok::<(), String>(())
        },
    )
    .subprocess();
    let t0 = Instant::now();
    let all: Vec<_> = Pipeline::new(stage).run(0..40u64).expect("start").collect();
    assert!(
        t0.elapsed() < Duration::from_secs(20),
        "fails fast, no hang"
    );
    let errors = by_item(&all, 40, |v| *v);
    for x in 0..5 {
        assert!(!errors.contains_key(&x), "item {x} ran before the crash");
    }
    assert!(
        matches!(&errors[&5], Error::Died { cause, .. } if cause == "killed by SIGABRT"),
        "{:?}",
        errors[&5]
    );
    for x in 6..40 {
        let e = &errors[&x];
        assert!(
            matches!(e, Error::GaveUp { cause, .. } if cause.contains("init failed: the database is gone")),
            "item {x}: {e}"
        );
    }
}
