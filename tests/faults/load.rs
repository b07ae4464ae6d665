//! E. Load and resource bounds; F. shutdown, drop, cancellation.

use std::collections::BTreeSet;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use forkpipe::prelude::*;
use forkpipe::{DEFAULT_QUEUE, Source};
use libtest_mimic::Trial;

use super::common::{self, Baseline};
use super::support::{expect_died, fault, my_pid, wait_dead};

pub fn trials(t: &mut Vec<Trial>) {
    t.push(fault("e02_infinite_input_take_50_drop", 30, e02_infinite));
    t.push(fault(
        "e05_1000_pipelines_built_and_dropped",
        90,
        e05_thousand,
    ));
    t.push(fault("e07_drop_a_while_b_lives", 30, e07_drop_a_keep_b));
    t.push(fault(
        "f03_submit_racing_shutdown",
        30,
        f03_submit_vs_shutdown,
    ));
    t.push(fault(
        "f05_crash_during_shutdown",
        30,
        f05_crash_in_shutdown,
    ));
    t.push(fault("f06_input_iterator_panics", 30, f06_input_panics));
    t.push(fault(
        "f08_consumer_panics_inside_catch_unwind",
        30,
        f08_consumer_panics,
    ));
    t.push(fault(
        "f11a_source_panics_at_item_7",
        30,
        f11a_source_panics,
    ));
    // The error of a panicking source is `Error::Input`, which names no stage.
    t.push(fault(
        "f11b_source_panic_error_names_the_source",
        30,
        f11b_source_named,
    ));
    t.push(fault(
        "f11c_stream_stage_panics_after_3_outputs",
        30,
        f11c_stream_panics,
    ));
}

fn e02_infinite() {
    let pulled = Arc::new(AtomicU64::new(0));
    let c = Arc::clone(&pulled);
    let p = Pipeline::new(Stage::map("inf", |x: u64| x * 2).subprocess());
    let mut results = p
        .run((0u64..).inspect(move |_| {
            c.fetch_add(1, Ordering::Relaxed);
        }))
        .expect("start");
    let got: Vec<u64> = results.by_ref().take(50).map(|r| r.unwrap()).collect();
    assert_eq!(got, (0..50).map(|x| x * 2).collect::<Vec<_>>());
    thread::sleep(Duration::from_millis(200)); // let the feeder run into its bound
    let t = Instant::now();
    drop(results);
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "drop {:?}",
        t.elapsed()
    );
    let n = pulled.load(Ordering::Relaxed);
    // The window: the process stage's queue (and RUN_AHEAD times it for runs) plus the
    // feeder's.
    let bound = 50 + (DEFAULT_QUEUE * (1 + forkpipe::RUN_AHEAD) + DEFAULT_QUEUE) as u64 + 512;
    assert!(n <= bound, "pulled {n} of an endless input (bound {bound})");
}

fn e05_thousand() {
    const N: usize = 1000;
    let base = Baseline::now();
    let t0 = Instant::now();
    for k in 0..N {
        let p = Pipeline::new(Stage::map("e5", |x: u64| x + 1).subprocess())
            .then(Stage::map("t", |x: u64| x));
        if k % 2 == 0 {
            let v: Vec<u64> = p
                .run(0..(k % 50) as u64)
                .expect("start")
                .collect::<Result<_, _>>()
                .unwrap();
            assert_eq!(v.len(), k % 50);
        } else {
            let mut r = p.run(0u64..).expect("start");
            for x in 0..(k % 50) as u64 {
                assert_eq!(r.next().unwrap().unwrap(), x + 1);
            }
            drop(r);
        }
        if k % 100 == 99 {
            let kids = common::children_of_me();
            assert!(
                kids.is_empty(),
                "after {} pipelines: children {kids:?}",
                k + 1
            );
        }
    }
    eprintln!("e05: {N} pipelines in {:?}", t0.elapsed());
    base.assert_clean("after 1000 pipelines", true);
}

fn pids_below(sup_of: u32) -> Vec<u32> {
    common::descendants_of_me()
        .into_iter()
        .filter(|&(_, ppid, _)| ppid == sup_of)
        .map(|(pid, _, _)| pid)
        .collect()
}

fn e07_drop_a_keep_b() {
    let stage = |n| {
        Stage::map(n, |x: u64| (x, super::support::parent_pid()))
            .subprocess()
            .workers(2)
    };
    let mut a = Pipeline::new(stage("a")).run(0u64..).expect("start A");
    let sup_a = a.next().unwrap().unwrap().1;
    let mut b = Pipeline::new(stage("b")).run(0u64..).expect("start B");
    let sup_b = b.next().unwrap().unwrap().1;
    assert_ne!(sup_a, sup_b);
    let mut a_procs = pids_below(sup_a);
    a_procs.push(sup_a);
    assert_eq!(a_procs.len(), 3, "A: supervisor and 2 workers");
    for _ in 0..100 {
        a.next().unwrap().unwrap();
        b.next().unwrap().unwrap();
    }
    let t = Instant::now();
    drop(a);
    assert!(t.elapsed() < Duration::from_secs(3));
    // Gone (and reaped) before drop returned.
    let desc: BTreeSet<u32> = common::descendants_of_me().iter().map(|d| d.0).collect();
    for p in &a_procs {
        assert!(!desc.contains(p), "A's process {p} outlived the drop");
    }
    for x in 101..1000u64 {
        assert_eq!(b.next().unwrap().unwrap().0, x, "B keeps working");
    }
    drop(b);
}

// --- F ------------------------------------------------------------------------------------

/// `shutdown` takes the `Running` by value, so it cannot overlap a `submit` (which borrows
/// it): the tightest race the API allows is submitters stopping right before the shutdown.
/// Every ticket handed out gets exactly one outcome, and it is its own.
fn f03_submit_vs_shutdown() {
    for round in 0..5 {
        let running = Arc::new(
            Pipeline::new(Stage::map("race", |x: u64| x * 3).subprocess().workers(2))
                .start()
                .expect("start"),
        );
        let stop = Arc::new(AtomicBool::new(false));
        let submitters: Vec<_> = (0..4u64)
            .map(|t| {
                let (running, stop) = (Arc::clone(&running), Arc::clone(&stop));
                thread::spawn(move || {
                    let mut tickets = Vec::new();
                    let mut i = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let x = t * 1_000_000 + i;
                        tickets.push((x, running.submit(x).expect("submit before shutdown")));
                        i += 1;
                    }
                    tickets
                })
            })
            .collect();
        thread::sleep(Duration::from_millis(20 + round * 10));
        stop.store(true, Ordering::Relaxed);
        let tickets: Vec<_> = submitters
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        let running = Arc::try_unwrap(running).expect("sole owner");
        let report = running.shutdown().expect("shutdown");
        assert!(report.is_graceful());
        let mut seqs = BTreeSet::new();
        for (x, t) in &tickets {
            let _ = x;
            assert!(
                seqs.insert(t.item()),
                "a sequence number was handed out twice"
            );
        }
        for (x, t) in tickets {
            assert_eq!(t.wait().expect("every accepted item finishes"), x * 3);
        }
        assert_eq!(report.stats().completed, seqs.len() as u64);
    }
}

fn f05_crash_in_shutdown() {
    let running = Pipeline::new(
        Stage::map("dies_late", |x: u64| {
            if x == 0 {
                thread::sleep(Duration::from_millis(300));
                std::process::abort();
            }
            x
        })
        .subprocess()
        .workers(2),
    )
    .start()
    .expect("start");
    let ts: Vec<_> = (0..20u64).map(|x| running.submit(x).unwrap()).collect();
    let t0 = Instant::now();
    let report = running.shutdown().expect("shutdown");
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    assert_eq!(report.stats().stages[0].restarts, 1, "{report:?}");
    for (x, t) in (0..20u64).zip(ts) {
        match t.wait() {
            Ok(y) => assert!(x != 0 && y == x),
            Err(e) => {
                assert_eq!(x, 0, "{e}");
                expect_died(&e, "dies_late", 0, "killed by SIGABRT");
            }
        }
    }
}

fn f06_input_panics() {
    let input = (0..20u64).inspect(|&x| {
        if x == 7 {
            panic!("input broke at {x}");
        }
    });
    let all: Vec<_> = Pipeline::new(Stage::map("f6", |x: u64| x + 100).subprocess())
        .run(input)
        .expect("start")
        .collect();
    assert_eq!(
        all.len(),
        8,
        "items 0..6, then one error, then the end: {all:?}"
    );
    for (x, r) in all[..7].iter().enumerate() {
        assert_eq!(r.as_ref().ok(), Some(&(x as u64 + 100)));
    }
    let e = all[7].as_ref().expect_err("the input's panic");
    assert!(
        matches!(e, Error::Input { item: 7, message, .. } if message == "input broke at 7"),
        "{e:?}"
    );
    assert_eq!(
        e.to_string(),
        "input iterator panicked after item 7: input broke at 7"
    );
}

fn f08_consumer_panics() {
    let mut workers = Vec::new();
    let r = catch_unwind(AssertUnwindSafe(|| {
        let p = Pipeline::new(
            Stage::map("f8", |x: u64| (x, my_pid()))
                .subprocess()
                .workers(2),
        );
        for r in p.run(0u64..).expect("start") {
            let (x, pid) = r.unwrap();
            workers.push(pid);
            if x == 10 {
                panic!("consumer gave up at {x}");
            }
        }
    }));
    assert!(r.is_err());
    wait_dead(&workers, Duration::from_millis(1)).expect("workers gone when the unwind ended");
}

fn source_7() -> Source<u64> {
    Source::new("src7", || {
        (0..20u64).inspect(|&x| {
            if x == 7 {
                panic!("source broke at {x}");
            }
        })
    })
}

fn f11a_source_panics() {
    let all: Vec<_> = Pipeline::new(source_7())
        .then(Stage::map("after", |x: u64| x * 10).subprocess())
        .results()
        .expect("start")
        .collect();
    assert_eq!(all.len(), 8, "{all:?}");
    for (x, r) in all[..7].iter().enumerate() {
        assert_eq!(r.as_ref().ok(), Some(&(x as u64 * 10)));
    }
    let e = all[7].as_ref().unwrap_err();
    assert!(e.to_string().contains("source broke at 7"), "{e}");
    assert_eq!(e.item(), None, "{e:?}");
}

fn f11b_source_named() {
    let all: Vec<_> = Pipeline::new(source_7())
        .then(Stage::map("after", |x: u64| x * 10).subprocess())
        .results()
        .expect("start")
        .collect();
    let e = all.last().unwrap().as_ref().unwrap_err();
    assert_eq!(e.stage(), Some("src7"), "{e:?}");
    assert!(e.to_string().contains("'src7'"), "{e}");
}

fn f11c_stream_panics() {
    let p = Pipeline::new(Stage::map("pre", |x: u64| x).subprocess()).then(
        Stage::stream("agg", |items: forkpipe::Items<u64>| {
            items.enumerate().map(|(i, x)| {
                if i == 3 {
                    panic!("stream broke after 3");
                }
                x * 2
            })
        })
        .subprocess(),
    );
    let all: Vec<_> = p.run(0..20u64).expect("start").collect();
    assert_eq!(all.len(), 4, "3 outputs, one error, the end: {all:?}");
    assert_eq!(
        all[..3]
            .iter()
            .map(|r| *r.as_ref().unwrap())
            .collect::<Vec<_>>(),
        [0, 2, 4]
    );
    let e = all[3].as_ref().unwrap_err();
    assert!(
        matches!(e, Error::Panicked { stage, message, .. } if stage == "agg" && message.contains("stream broke after 3")),
        "{e:?}"
    );
}
