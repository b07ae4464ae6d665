//! Scenarios of the seeds' other shapes (issue 10): broadcast fan-out (MPipe's `link` to
//! several downstream stages) and fan-in (the blog's several producers feeding one queue),
//! built with the builder (`Pipeline::fan_out`, `Pipeline::merge`); the `pipeline!` forms
//! are in `tests/macros.rs`. Like [`super::SCENARIOS`], each returns the pids it saw and
//! runs in both `tests/fork.rs` (direct) and `tests/forkserver.rs` (fork server), so every
//! stage that runs in a process is a fn item or a closure that captures nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use forkpipe::prelude::*;
use forkpipe::{Running, Worker};

use super::scenarios::{Who, pids_of};

/// A stage of a branch: `x * k`, with who ran it.
fn times(k: u64) -> Stage<u64, (u64, Who)> {
    match k {
        2 => Stage::map("times2", |x: u64| (2 * x, Who::me())).subprocess(),
        3 => Stage::map("times3", |x: u64| (3 * x, Who::me())),
        _ => Stage::map("times4", |x: u64| (4 * x, Who::me()))
            .subprocess()
            .workers(3),
    }
}

/// MPipe's fork of one stage into three downstream stages (`stage1.link(stage2);
/// stage1.link(stage3); stage1.link(stage4)`): every result of stage 1 reaches each, and
/// the item's outputs are theirs in branch order — here over 3,000 items, two of the
/// branches in worker processes (one with 3 workers) and one on a thread.
pub fn mpipe_link_to_three() -> Vec<u32> {
    let stage1 = Stage::map("stage1", |x: u64| x + 1).subprocess().workers(2);
    let p = Pipeline::new(stage1).fan_out([2, 3, 4].map(|k| Pipeline::new(times(k))));
    let out: Vec<(u64, Who)> = p
        .run(0..3000u64)
        .expect("start")
        .collect::<Result<_, _>>()
        .expect("no item fails");
    assert_eq!(out.len(), 9000, "three outputs per item");
    for (x, outs) in out.chunks(3).enumerate() {
        let y = x as u64 + 1;
        let got: Vec<u64> = outs.iter().map(|o| o.0).collect();
        assert_eq!(got, [2 * y, 3 * y, 4 * y], "item {x}: branch order");
    }
    let me = super::procs::me();
    let by_branch = |i: usize| -> Vec<Who> { out.iter().skip(i).step_by(3).map(|o| o.1).collect() };
    assert!(
        by_branch(0).iter().all(|w| w.pid != me),
        "times2 runs in a process"
    );
    assert!(
        by_branch(1).iter().all(|w| w.pid == me),
        "times3 runs on a thread"
    );
    let fours: std::collections::BTreeSet<u32> = by_branch(2).iter().map(|w| w.pid).collect();
    assert!(
        !fours.contains(&me) && fours.len() > 1,
        "times4 runs in its 3 workers: {fours:?}"
    );
    pids_of(out.iter().map(|o| &o.1))
}

/// A fan-out inside a branch, a `pipe_next` pair as a branch, and a chain of process stages
/// as a branch (whose stages talk directly).
pub fn nested_and_pair_branches() -> Vec<u32> {
    use std::io::{Read, Write};
    let pair = Pipeline::pipe(
        forkpipe::Producer::new("write", |x: u64, w: &mut PipeWriter| {
            w.write_all(&vec![b'x'; (x % 100) as usize])
        })
        .subprocess(),
        forkpipe::Consumer::new("count", |_x: u64, r: &mut PipeReader| {
            let mut v = Vec::new();
            r.read_to_end(&mut v).map(|n| n as u64)
        }),
    );
    let chain = Pipeline::new(Stage::map("inc", |x: u64| x + 1).subprocess())
        .then(Stage::map("neg", |x: u64| 1_000_000 - x).subprocess());
    let nested = Pipeline::new(Stage::map("id", |x: u64| x)).fan_out([
        Pipeline::new(Stage::map("sq", |x: u64| x * x).subprocess()),
        Pipeline::new(Stage::map("half", |x: u64| x / 2)),
    ]);
    let p = Pipeline::new(Stage::map("start", |x: u64| x)).fan_out([pair, chain, nested]);
    let out: Vec<u64> = p
        .run(0..500u64)
        .expect("start")
        .collect::<Result<_, _>>()
        .expect("no item fails");
    let want: Vec<u64> = (0..500u64)
        .flat_map(|x| [x % 100, 1_000_000 - (x + 1), x * x, x / 2])
        .collect();
    assert_eq!(out, want);
    Vec::new()
}

/// An item failed by a branch ends as one error, the first failing branch's in branch
/// order, numbered as the user's item; the other branches' outputs for it are discarded,
/// and the other items are untouched. Items dropped before the fan-out shift the numbers a
/// branch sees, so a wrong number would show.
pub fn branch_failures() -> Vec<u32> {
    let keep = Stage::filter_map("keep", |x: u64| (x % 5 != 4).then_some(x));
    let bad11 = Stage::map("bad11", |x: u64| {
        assert!(!x.is_multiple_of(11), "eleven divides {x}");
        x
    })
    .subprocess();
    let bad7 = Stage::try_map("bad7", |x: u64| {
        if x.is_multiple_of(7) {
            Err(format!("seven divides {x}"))
        } else {
            Ok(x + 1)
        }
    });
    let p = Pipeline::new(keep).fan_out([Pipeline::new(bad11), Pipeline::new(bad7)]);
    let mut results = p.run(0..400u64).expect("start");
    for x in (0..400u64).filter(|x| x % 5 != 4) {
        let mut next = || results.next().expect("an outcome for every item");
        match (x % 11 == 0, x % 7 == 0) {
            (true, _) => {
                let e = next().expect_err("eleven fails it");
                assert!(matches!(e, Error::Panicked { .. }), "item {x}: {e}");
                assert_eq!(
                    e.stage(),
                    Some("bad11"),
                    "item {x}: the first failing branch"
                );
                assert_eq!(e.item(), Some(x), "numbered as the user's item: {e}");
                assert!(matches!(e.worker(), Some(Worker::Process(_))), "{e}");
                assert!(
                    e.to_string().contains(&format!("eleven divides {x}")),
                    "{e}"
                );
            }
            (false, true) => {
                let e = next().expect_err("seven fails it");
                assert!(matches!(e, Error::Failed { .. }), "item {x}: {e}");
                assert_eq!(e.stage(), Some("bad7"));
                assert_eq!(e.item(), Some(x), "numbered as the user's item: {e}");
                assert!(e.to_string().contains(&format!("seven divides {x}")), "{e}");
            }
            (false, false) => {
                let got = [next().expect("ok"), next().expect("ok")];
                assert_eq!(got, [x, x + 1], "item {x}: both branches, in order");
            }
        }
    }
    assert!(results.next().is_none(), "nothing more");
    Vec::new()
}

/// A worker of a process branch killed by a real fault: that item fails as `Died`, naming
/// the branch's stage; the worker is replaced (the branch's stats count it) and every other
/// item has its outputs. Stats, while running and in the shutdown report, name each
/// branch's stages after their fan-out.
pub fn branch_crash_and_stats() -> Vec<u32> {
    let crash = Stage::map("crash", |x: u64| {
        if x == 30 {
            std::process::abort();
        }
        (x, Who::me())
    })
    .subprocess();
    let mark = Stage::map("mark", |(x, w): (u64, Who)| (x + 1000, w)).subprocess();
    let other = Stage::map("other", |x: u64| (x, Who::me()));
    let p = Pipeline::new(Stage::map("first", |x: u64| x))
        .fan_out([Pipeline::new(crash).then(mark), Pipeline::new(other)])
        .then(Stage::map("last", |o: (u64, Who)| o));
    let running: Running<u64, (u64, Who)> = p.start().expect("start");
    let tickets: Vec<_> = (0..60u64)
        .map(|x| running.submit(x).expect("submit"))
        .collect();
    let mut whos = Vec::new();
    for (x, t) in tickets.into_iter().enumerate() {
        let r = t.wait_all();
        if x == 30 {
            let e = r.expect_err("item 30 crashed its worker");
            assert!(matches!(e, Error::Died { .. }), "{e}");
            assert_eq!(e.stage(), Some("crash"));
            assert_eq!(e.item(), Some(30));
            assert!(e.to_string().contains("SIGABRT"), "{e}");
        } else {
            let v = r.expect("the other items succeed");
            assert_eq!(
                v.iter().map(|o| o.0).collect::<Vec<_>>(),
                [x as u64 + 1000, x as u64]
            );
            whos.extend(v.iter().map(|o| o.1));
        }
    }
    let stats = running.stats();
    let names: Vec<(&str, &[usize])> = stats
        .stages
        .iter()
        .map(|s| (s.name.as_str(), s.branch.as_slice()))
        .collect();
    assert_eq!(
        names,
        [
            ("first", &[][..]),
            ("(crash | mark, other)", &[]),
            ("crash", &[0]),
            ("mark", &[0]),
            ("other", &[1]),
            ("last", &[]),
        ]
    );
    let report = running.shutdown().expect("shutdown");
    assert!(report.is_graceful(), "{report:?}");
    let s = &report.stats().stages;
    assert_eq!((s[1].items_in, s[1].failed, s[1].items_out), (60, 1, 59));
    assert_eq!(
        (s[2].items_in, s[2].failed, s[2].restarts),
        (60, 1, 1),
        "{:?}",
        s[2]
    );
    assert_eq!(s[5].items_in, 59);
    pids_of(whos.iter())
}

/// A slow branch slows the fan-out's input: over an endless input, the items pulled stay
/// within the pipeline's bounds while the results are read slowly.
pub fn slow_branch_backpressure() -> Vec<u32> {
    let pulled = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&pulled);
    let input = (0u64..).inspect(move |_| {
        counter.fetch_add(1, Ordering::Relaxed);
    });
    let slow = Stage::map("slow", |x: u64| {
        std::thread::sleep(Duration::from_micros(200));
        x
    })
    .subprocess();
    let p = Pipeline::new(Stage::map("first", |x: u64| x)).fan_out([
        Pipeline::new(Stage::map("fast", |x: u64| x)),
        Pipeline::new(slow),
    ]);
    let mut results = p.run(input).expect("start");
    for x in 0..3000u64 {
        assert_eq!(results.next().expect("endless").expect("ok"), x);
        assert_eq!(results.next().expect("endless").expect("ok"), x);
    }
    let ahead = pulled.load(Ordering::Relaxed) - 3000;
    // The outer window (its stages' queues and the feeder's) plus the fan-out's queue and
    // each branch's window: a few tens of thousands at most, never the endless input.
    assert!(ahead < 40_000, "{ahead} items pulled ahead of the results");
    drop(results);
    Vec::new()
}

/// Dropping a pipeline whose branch hangs in a worker process returns promptly and leaves
/// nothing behind (the caller of this scenario checks).
pub fn drop_with_a_hung_branch() -> Vec<u32> {
    let hang = Stage::map("hang", |x: u64| {
        if x == 5 {
            std::thread::sleep(Duration::from_secs(3600));
        }
        x
    })
    .subprocess();
    let p = Pipeline::new(Stage::map("first", |x: u64| x)).fan_out([
        Pipeline::new(hang),
        Pipeline::new(Stage::map("ok", |x: u64| x)),
    ]);
    let results = p.run(0u64..).expect("start");
    // (Not read: the outputs of items 0..5 may wait in the worker's buffer behind item 5.)
    std::thread::sleep(Duration::from_millis(300));
    let t0 = Instant::now();
    drop(results);
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "drop took {:?}",
        t0.elapsed()
    );
    Vec::new()
}

/// The blog's two producers feeding one consumer (a `stream` stage in a worker process that
/// reads the merged queue to its end): every item arrives once.
pub fn blog_two_producers_one_consumer() -> Vec<u32> {
    let a = Source::new("producer_a", || (0..500u64).map(|x| 2 * x));
    let b = Source::new("producer_b", || (0..500u64).map(|x| 2 * x + 1));
    let consume = Stage::stream("consume", |items: forkpipe::Items<u64>| {
        let (mut n, mut sum) = (0u64, 0u64);
        for x in items {
            n += 1;
            sum += x;
        }
        [(n, sum, Who::me())]
    })
    .subprocess();
    let out: Vec<(u64, u64, Who)> = Pipeline::merge([a, b])
        .then(consume)
        .results()
        .expect("start")
        .collect::<Result<_, _>>()
        .expect("ok");
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].0, out[0].1), (1000, 999 * 1000 / 2));
    assert_ne!(
        out[0].2.pid,
        super::procs::me(),
        "the consumer runs in a process"
    );
    pids_of([&out[0].2])
}

/// A fan-in keeps each source's order (the rest of the pipeline is ordered), gives every
/// item one outcome, and a source that panics fails one item naming it while the others go
/// on to their end.
pub fn fan_in_order_and_panic() -> Vec<u32> {
    let a = Source::new("letters", || (0..300u64).map(|x| (0u64, x)));
    let b = Source::new("digits", || {
        (0..300u64).map(|x| {
            assert!(x != 120, "digits ran dry at {x}");
            (1u64, x)
        })
    });
    let c = Source::new("marks", || (0..300u64).map(|x| (2u64, x)));
    let p = Pipeline::merge([a, b, c])
        .then(Stage::map("tag", |(s, x): (u64, u64)| (s, x * 10)).subprocess());
    let mut seen: [Vec<u64>; 3] = Default::default();
    let mut errors = Vec::new();
    for r in p.results().expect("start") {
        match r {
            Ok((s, x)) => seen[s as usize].push(x / 10),
            Err(e) => errors.push(e),
        }
    }
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        matches!(&errors[0], Error::Input { stage: Some(s), .. } if s == "digits"),
        "{}",
        errors[0]
    );
    assert!(
        errors[0].to_string().contains("digits ran dry at 120"),
        "{}",
        errors[0]
    );
    assert_eq!(
        seen[0],
        (0..300).collect::<Vec<_>>(),
        "letters: all, in order"
    );
    assert_eq!(
        seen[1],
        (0..120).collect::<Vec<_>>(),
        "digits: up to the panic, in order"
    );
    assert_eq!(
        seen[2],
        (0..300).collect::<Vec<_>>(),
        "marks: all, in order"
    );
    Vec::new()
}

/// What a fan-out refuses at start, naming what to change, leaving nothing behind (the
/// branch started before the refused one is stopped).
pub fn fan_out_refusals() -> Vec<u32> {
    let stream = Stage::stream(
        "total",
        |items: forkpipe::Items<u64>| [items.count() as u64],
    );
    let p = Pipeline::new(Stage::map("first", |x: u64| x)).fan_out([
        Pipeline::new(Stage::map("fine", |x: u64| x).subprocess()),
        Pipeline::new(stream),
    ]);
    let e = p
        .run(0..10u64)
        .map(|_| ())
        .expect_err("a stream stage in a branch");
    let text = e.to_string();
    assert!(matches!(e, Error::Start(_)), "{text}");
    assert!(
        text.contains("branch 1 of the fan-out '(fine, total)'")
            && text.contains("`stream` stage 'total'"),
        "{text}"
    );
    let none: Vec<Pipeline<u64, u64>> = Vec::new();
    let p = Pipeline::new(Stage::map("first", |x: u64| x)).fan_out(none);
    let e = p.run(0..10u64).map(|_| ()).expect_err("no branch");
    assert!(e.to_string().contains("has no branch"), "{e}");
    Vec::new()
}

/// `quick | slow | after`: a thread stage, a process stage of 2 workers taking 2 ms an
/// item, and a quick process stage.
fn quick_slow_after() -> Pipeline<u64, u64> {
    let quick = Stage::map("quick", |x: u64| x + 1);
    let slow = Stage::map("slow", |x: u64| {
        std::thread::sleep(Duration::from_millis(2));
        x
    })
    .subprocess()
    .workers(2);
    let after = Stage::map("after", |x: u64| x).subprocess();
    Pipeline::new(quick).then(slow).then(after)
}

/// Stats explain time: a stage that takes 2 ms per item (in 2 worker processes) between
/// two quick ones is named the bottleneck, its busy time covers its work, items queue in
/// front of it more than in front of the stage after it, and the table marks it — while
/// running, after the results are drained, and in the shutdown report.
pub fn stats_name_the_bottleneck() -> Vec<u32> {
    const N: u64 = 300;
    let quick = Stage::map("quick", |x: u64| x + 1);
    let slow = Stage::map("slow", |x: u64| {
        std::thread::sleep(Duration::from_millis(2));
        x
    })
    .subprocess()
    .workers(2);
    let after = Stage::map("after", |x: u64| x).subprocess();
    let running = Pipeline::new(quick)
        .then(slow)
        .then(after)
        .start()
        .expect("start");
    let tickets: Vec<_> = (0..N).map(|x| running.submit(x).expect("submit")).collect();
    std::thread::sleep(Duration::from_millis(250));
    let live = running.stats();
    assert!(live.completed < N, "still running: {live:?}");
    for t in tickets {
        t.wait().expect("ok");
    }
    let check = |stats: &forkpipe::Stats, what: &str| {
        let s = &stats.stages;
        assert_eq!(
            s.iter().map(|s| s.workers).collect::<Vec<_>>(),
            [1, 2, 1],
            "{what}"
        );
        let b = stats.bottleneck().expect("a bottleneck");
        assert_eq!(b.name, "slow", "{what}: {stats}");
        assert!(
            s[1].busy >= Duration::from_millis(2 * N),
            "{what}: slow busy {:?}",
            s[1].busy
        );
        assert!(
            s[1].busy > 4 * s[2].busy && s[1].busy > 4 * s[0].busy,
            "{what}: {stats}"
        );
        assert!(
            s[1].queued > s[2].queued,
            "{what}: items queue before the slow stage: {stats}"
        );
        let u = s[1].utilization(stats.elapsed);
        assert!(
            u > 0.5,
            "{what}: slow's 2 workers were busy most of the time: {u}"
        );
        let table = stats.to_string();
        let line = table
            .lines()
            .find(|l| l.starts_with("slow"))
            .expect("a line for slow");
        assert!(line.ends_with("<- bottleneck"), "{what}:\n{table}");
        assert_eq!(
            table.matches("<- bottleneck").count(),
            1,
            "{what}:\n{table}"
        );
    };
    // (The supervisor reports process stages' time every 100 ms.)
    std::thread::sleep(Duration::from_millis(250));
    check(&running.stats(), "after the items");
    let report = running.shutdown().expect("shutdown");
    check(report.stats(), "in the report");
    // A streaming run: the figures are final once the results are drained.
    let quick = Stage::map("quick", |x: u64| x + 1);
    let slow = Stage::map("slow", |x: u64| {
        std::thread::sleep(Duration::from_millis(2));
        x
    })
    .subprocess()
    .workers(2);
    let after = Stage::map("after", |x: u64| x).subprocess();
    let mut results = Pipeline::new(quick)
        .then(slow)
        .then(after)
        .run(0..N)
        .expect("start");
    for r in results.by_ref() {
        r.expect("ok");
    }
    check(&results.stats(), "after the results were drained");
    Vec::new()
}

/// Every shape scenario with its name and hang bound (seconds).
pub const SHAPES: &[super::scenarios::Scenario] = &[
    (
        "fan_out_mpipe_link_to_three_downstream",
        60,
        mpipe_link_to_three,
    ),
    (
        "fan_out_nested_pair_and_chain_branches",
        60,
        nested_and_pair_branches,
    ),
    ("fan_out_first_failing_branch_wins", 60, branch_failures),
    ("fan_out_branch_crash_and_stats", 60, branch_crash_and_stats),
    (
        "fan_out_slow_branch_backpressure",
        60,
        slow_branch_backpressure,
    ),
    (
        "fan_out_drop_with_a_hung_branch",
        60,
        drop_with_a_hung_branch,
    ),
    (
        "fan_in_blog_two_producers_one_consumer",
        60,
        blog_two_producers_one_consumer,
    ),
    (
        "fan_in_order_and_a_panicking_source",
        60,
        fan_in_order_and_panic,
    ),
    ("fan_out_refusals_at_start", 30, fan_out_refusals),
    ("stats_name_the_bottleneck", 60, stats_name_the_bottleneck),
];
