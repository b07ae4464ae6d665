//! Flow control, shutdown and API use: E4 (paused consumer), E9 (100 process stages),
//! F1 (drop mid-stream, mid-item), F4 (graceful shutdown with work in flight), F7 (input
//! iterator blocks forever), F9 (1M dropped tickets), H2 (fire-and-forget submits keeping
//! every ticket), H3 (wait after drop), D6 (serde features bincode cannot carry), C8
//! (replacement forks while the parent's threads hammer stdio, env and malloc).

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use forkpipe::DEFAULT_QUEUE;
use forkpipe::prelude::*;
use libtest_mimic::Trial;
use serde::{Deserialize, Serialize};

use super::common::{self, Baseline};
use super::support::{expect_died, fault, my_pid, run_dir, signal, wait_dead, wait_until};

pub fn trials(t: &mut Vec<Trial>) {
    t.push(fault("e04_paused_consumer_no_timeouts", 30, e04));
    t.push(fault("e09_hundred_process_stages_graceful", 60, e09));
    t.push(fault("f01_drop_mid_stream_mid_item_x20", 60, f01));
    t.push(fault("f04_graceful_shutdown_100_in_flight", 30, f04));
    t.push(fault("f07a_blocked_input_drop_reaps_workers", 30, f07a));
    t.push(fault("f07b_blocked_input_drop_is_prompt", 30, f07b));
    t.push(fault(
        "f09_two_million_dropped_tickets_memory_flat",
        90,
        f09,
    ));
    t.push(fault("h02_fire_and_forget_keeping_tickets", 60, h02));
    t.push(fault("h03_wait_after_drop_is_shut_down", 30, h03));
    t.push(fault("d06a_flatten_and_untagged_fail_per_item", 30, d06a));
    t.push(fault(
        "d06b_serde_limit_errors_explain_themselves",
        30,
        d06b,
    ));
    t.push(fault("c08_200_replacements_under_lock_contention", 60, c08));
}

/// Victim scenarios of this file: none (every case here runs in the test process).
pub fn victim(_scenario: &str) {}

/// Publishes this process's pid under `name` in the run directory (atomically).
fn publish_pid(name: &str) {
    let tmp = run_dir().join(format!("{name}.tmp"));
    std::fs::write(&tmp, my_pid().to_string()).expect("write the mark");
    std::fs::rename(&tmp, run_dir().join(name)).expect("publish the mark");
}

/// Waits for a pid published with [`publish_pid`].
fn read_pid(name: &str) -> u32 {
    let mark = run_dir().join(name);
    assert!(
        wait_until(Duration::from_secs(10), || mark.exists()),
        "no mark {name} within 10 s"
    );
    std::fs::read_to_string(&mark)
        .expect("read the mark")
        .parse()
        .expect("a pid")
}

// --- E4 -----------------------------------------------------------------------------------

/// The consumer stops reading for 2 s, far longer than the stage's 300 ms timeout: items
/// wait in the queues, not in the stage, so none times out; the pipeline fills up to its
/// window and stops pulling input.
fn e04() {
    const N: u64 = 20_000;
    const QUEUE: usize = 256;
    // The runtime's window (launch.rs `window`): Σ queue × workers over the stages (a
    // process stage fed by `run`: times 1 + RUN_AHEAD), plus one DEFAULT_QUEUE for the
    // results; the feeder takes room in it before it pulls an item, and room comes back
    // only for results handed to the reader.
    const BOUND: u64 = (QUEUE * (1 + forkpipe::RUN_AHEAD) + DEFAULT_QUEUE) as u64; // 5376
    let pulled = Arc::new(AtomicU64::new(0));
    let c = Arc::clone(&pulled);
    let p = Pipeline::new(
        Stage::map("e4", |x: u64| (x, my_pid()))
            .subprocess()
            .queue(QUEUE)
            .timeout(Duration::from_millis(300)),
    );
    let mut results = p
        .run((0..N).inspect(move |_| {
            c.fetch_add(1, Ordering::Relaxed);
        }))
        .expect("start");
    let mut pids = BTreeSet::new();
    for x in 0..10u64 {
        let (y, pid) = results.next().expect("an outcome").expect("ok");
        assert_eq!(y, x);
        pids.insert(pid);
    }
    let delivered = 10u64;
    // The pause: sample pulled - delivered until the pipeline is full and 2 s have passed.
    let t0 = Instant::now();
    let rss_before = common::rss_kib();
    let mut worst = 0u64;
    loop {
        let in_flight = pulled.load(Ordering::Relaxed) - delivered;
        worst = worst.max(in_flight);
        assert!(
            in_flight <= BOUND,
            "pulled - delivered = {in_flight} > bound {BOUND} while the consumer sleeps"
        );
        if t0.elapsed() >= Duration::from_secs(2) && worst + delivered >= BOUND {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "the pipeline never filled its window: worst {worst}"
        );
        thread::sleep(Duration::from_millis(20));
    }
    let rss_after = common::rss_kib();
    let paused = t0.elapsed();
    // Resume: everything comes out, in order, and nothing timed out.
    let mut n = delivered;
    for r in results.by_ref() {
        let (y, pid) = r.unwrap_or_else(|e| panic!("item {n} failed after the pause: {e}"));
        assert_eq!(y, n, "in order");
        pids.insert(pid);
        n += 1;
    }
    assert_eq!(n, N);
    let stats = results.stats();
    drop(results);
    eprintln!(
        "e04: paused {paused:?}; worst pulled - delivered {worst} (bound {BOUND}); RSS {rss_before} -> {rss_after} KiB"
    );
    assert_eq!(stats.stages[0].failed, 0, "{stats:?}");
    assert_eq!(
        stats.stages[0].restarts, 0,
        "no worker was timed out: {stats:?}"
    );
    assert_eq!(pids.len(), 1, "one worker served everything: {pids:?}");
    assert!(
        rss_after <= rss_before + 8 * 1024,
        "RSS grew from {rss_before} to {rss_after} KiB during the pause"
    );
}

// --- E9 -----------------------------------------------------------------------------------

fn e09() {
    const STAGES: usize = 100;
    let stage = |i: usize| Stage::map(format!("e9_{i}"), |x: u64| x + 1).subprocess();
    let mut p = Pipeline::new(stage(0));
    for i in 1..STAGES {
        p = p.then(stage(i));
    }
    let t0 = Instant::now();
    let running = p.start().expect("start");
    let started = t0.elapsed();
    // The supervisor (our child) and its 100 workers.
    let desc = common::descendants_of_me();
    assert_eq!(
        desc.len(),
        STAGES + 1,
        "a supervisor and 100 workers: {}",
        common::describe_descendants()
    );
    let y = running.submit(7).expect("submit").wait().expect("the item");
    assert_eq!(y, 7 + STAGES as u64);
    let report = running.shutdown().expect("shutdown");
    eprintln!("e09: start {started:?}, total {:?}", t0.elapsed());
    assert!(report.is_graceful(), "{report:?}");
    let st = report.stats();
    assert_eq!(
        (st.submitted, st.completed, st.in_flight),
        (1, 1, 0),
        "{st:?}"
    );
    assert_eq!(st.stages.len(), STAGES);
    for (i, s) in st.stages.iter().enumerate() {
        assert_eq!(s.name, format!("e9_{i}"));
        assert_eq!(
            (s.items_in, s.items_out, s.failed, s.dropped, s.restarts),
            (1, 1, 0, 0, 0),
            "{s:?}"
        );
    }
    // All reaped by the time shutdown returned (the clean check repeats this at the end).
    let left = common::descendants_of_me();
    assert!(left.is_empty(), "left after shutdown: {left:?}");
}

// --- F1 -----------------------------------------------------------------------------------

/// F1's stage: in round `round`, item 60 publishes its worker's pid and stays 60 s.
#[stage(subprocess, workers = 2)]
fn f1(x: u64, round: u64) -> (u64, u32) {
    if x == 60 {
        publish_pid(&format!("f01.{round}"));
        thread::sleep(Duration::from_secs(60));
    }
    thread::sleep(Duration::from_millis(1));
    (x, my_pid())
}

/// 20 rounds: read 50 results of an endless stream, wait until a worker is inside a 60 s
/// item, drop. Drop must kill that worker and reap everything before it returns.
fn f01() {
    const ROUNDS: u64 = 20;
    let mut slowest = Duration::ZERO;
    for round in 0..ROUNDS {
        let p = pipeline![f1(round)];
        let mut results = p.run(0u64..).expect("start");
        let mut procs = BTreeSet::new();
        for x in 0..50u64 {
            let (y, pid) = results.next().expect("an outcome").expect("ok");
            assert_eq!(y, x);
            procs.insert(pid);
        }
        let busy = read_pid(&format!("f01.{round}"));
        procs.insert(busy);
        procs.extend(common::descendants_of_me().iter().map(|d| d.0));
        let t = Instant::now();
        drop(results);
        let took = t.elapsed();
        // Right after drop: no child (the supervisor), no grandchild (the workers), no zombie.
        let kids = common::children_of_me();
        let desc = common::descendants_of_me();
        assert!(
            kids.is_empty(),
            "round {round}: children after drop: {kids:?}"
        );
        assert!(
            desc.is_empty(),
            "round {round}: descendants after drop: {desc:?}"
        );
        let procs: Vec<u32> = procs.into_iter().collect();
        wait_dead(&procs, Duration::from_millis(1)).expect("every process gone when drop returned");
        assert!(
            took < Duration::from_secs(2),
            "round {round}: drop took {took:?} with a worker mid-item"
        );
        slowest = slowest.max(took);
    }
    eprintln!("f01: {ROUNDS} drops, slowest {slowest:?}");
}

// --- F4 -----------------------------------------------------------------------------------

/// `shutdown()` with all 100 items in flight (item 0 holds the only worker until a gate
/// opens, after `shutdown` was called): every ticket resolves Ok, the report is graceful and
/// the per-stage counts add up.
fn f04() {
    const N: u64 = 100;
    const GATE: &str = "f04.gate";
    let running = Pipeline::new(
        Stage::map("f4_slow", |x: u64| {
            if x == 0 {
                // Item 0 waits for the gate (bounded: the test fails, not hangs).
                let gate = run_dir().join(GATE);
                wait_until(Duration::from_secs(20), || gate.exists());
            }
            thread::sleep(Duration::from_millis(2));
            x
        })
        .subprocess(),
    )
    .then(Stage::filter_map("f4_tens_out", |x: u64| {
        (!x.is_multiple_of(10)).then_some(x * 2)
    }))
    .start()
    .expect("start");
    let tickets: Vec<_> = (0..N).map(|x| running.submit(x).expect("submit")).collect();
    let before = running.stats();
    assert_eq!(
        (before.submitted, before.in_flight),
        (N, N),
        "all {N} items in flight when shutdown is called: {before:?}"
    );
    let opener = thread::spawn(|| {
        thread::sleep(Duration::from_millis(200));
        std::fs::write(run_dir().join(GATE), b"").expect("open the gate");
    });
    let t0 = Instant::now();
    let report = running.shutdown().expect("shutdown");
    let took = t0.elapsed();
    opener.join().unwrap();
    assert!(report.is_graceful(), "{report:?}");
    for (x, t) in (0..N).zip(tickets) {
        let v = t.wait_all().unwrap_or_else(|e| panic!("item {x}: {e}"));
        if x.is_multiple_of(10) {
            assert!(v.is_empty(), "item {x} was dropped: {v:?}");
        } else {
            assert_eq!(v, [x * 2], "item {x}");
        }
    }
    let st = report.stats();
    eprintln!("f04: shutdown took {took:?}; {st:?}");
    assert_eq!(
        (st.submitted, st.completed, st.in_flight),
        (N, N, 0),
        "{st:?}"
    );
    for s in &st.stages {
        assert_eq!(
            s.items_in,
            s.items_out + s.failed + s.dropped,
            "in = out + failed + dropped: {s:?}"
        );
    }
    let counts: Vec<_> = st
        .stages
        .iter()
        .map(|s| (s.items_in, s.items_out, s.failed, s.dropped))
        .collect();
    assert_eq!(counts, [(N, N, 0, 0), (N, N - 10, 0, 10)], "{st:?}");
}

// --- F7 -----------------------------------------------------------------------------------

/// What one drop with a blocked input iterator leaves behind.
struct BlockedDrop {
    base: Baseline,
    took: Duration,
    /// Threads and descriptors right after drop returned.
    threads: usize,
    fds: usize,
    /// The write end of the input's pipe: dropping it ends the input.
    writer: std::io::PipeWriter,
}

/// The input iterator blocks forever reading a pipe nobody writes to (one item was written
/// first, and read back through the pipeline). Drops the results; checks that every
/// process was reaped before drop returned.
fn blocked_input_drop() -> BlockedDrop {
    let base = Baseline::now();
    let (mut reader, mut writer) = std::io::pipe().expect("pipe");
    writer.write_all(&5u64.to_le_bytes()).expect("one item");
    let input = std::iter::from_fn(move || {
        let mut b = [0u8; 8];
        reader.read_exact(&mut b).ok()?;
        Some(u64::from_le_bytes(b))
    });
    let p = Pipeline::new(
        Stage::map("f7", |x: u64| (x * 2, my_pid()))
            .subprocess()
            .workers(2),
    );
    let mut results = p.run(input).expect("start");
    // The first item travels alone (the feeder's first chunk is one item); later ones may
    // wait in a partly pulled chunk, so only one is read.
    let (y, _) = results.next().expect("an outcome").expect("ok");
    assert_eq!(y, 10);
    let procs: Vec<u32> = common::descendants_of_me().iter().map(|d| d.0).collect();
    assert_eq!(procs.len(), 3, "a supervisor and 2 workers: {procs:?}");
    let t = Instant::now();
    drop(results);
    let took = t.elapsed();
    let desc = common::descendants_of_me();
    assert!(desc.is_empty(), "descendants after drop: {desc:?}");
    wait_dead(&procs, Duration::from_millis(1)).expect("all gone when drop returned");
    let (threads, fds) = (common::thread_count(), common::open_fds());
    eprintln!(
        "f07: drop took {took:?}; threads {} -> {threads}, fds {} -> {fds} (2 are the test's pipe) right after drop",
        base.threads, base.fds
    );
    BlockedDrop {
        base,
        took,
        threads,
        fds,
        writer,
    }
}

/// Ends the blocked input and waits for the detached feeder thread to exit.
fn release_feeder(d: BlockedDrop) {
    let base = d.base;
    drop(d.writer);
    assert!(
        wait_until(Duration::from_secs(5), || common::thread_count()
            == base.threads),
        "the detached feeder did not end after its input closed"
    );
}

/// Workers reaped before drop returns; the feeder thread, stuck in the user's iterator,
/// cannot be interrupted and is detached (documented on `Results` and on exec.rs
/// `Threads`). The detached feeder keeps the pipeline's sockets to the (dead) workers open
/// until it ends. At the end the test closes the pipe's write end so the detached thread
/// sees end of input and exits before the clean check.
fn f07a() {
    let d = blocked_input_drop();
    assert!(
        d.took < Duration::from_secs(3),
        "drop took {:?} with the input blocked",
        d.took
    );
    assert_eq!(
        d.threads,
        d.base.threads + 1,
        "the feeder thread is detached"
    );
    release_feeder(d);
}

/// FAULTS F7: drop returns promptly even though the feeder thread is stuck in the user's
/// iterator (it is detached at once, not waited for: the runtime knows it is in user code).
/// The detached feeder still owns the first stage's link sockets until the iterator returns
/// (README "Known limits"): those two are allowed, nothing else.
fn f07b() {
    let d = blocked_input_drop();
    let mut problems = Vec::new();
    if d.took >= Duration::from_millis(500) {
        problems.push(format!("drop took {:?} with the input blocked", d.took));
    }
    // The test's own pipe (both ends) and the detached feeder's two sockets.
    if d.fds > d.base.fds + 4 {
        problems.push(format!(
            "{} descriptors open after drop, {} before the pipeline (+2 for the test's pipe, +2 \
             held by the detached feeder): {:?}",
            d.fds,
            d.base.fds,
            common::fd_listing()
        ));
    }
    release_feeder(d);
    assert!(problems.is_empty(), "{}", problems.join("; "));
}

// --- F9 -----------------------------------------------------------------------------------

/// 2,000,000 submits with tickets dropped at once: the results are discarded, every item is
/// counted, memory stays flat. (It used to creep, +14 MiB from 100k to 1M: every small
/// message, one per `submit`, held a 64 KiB buffer while queued or unacked, on both sides
/// of the link.)
fn f09() {
    const N: u64 = 2_000_000;
    // RSS is sampled after warm-up (the process already holds what earlier tests left) and
    // at the end; the old per-message creep was ~15 MiB per million items.
    let running = Pipeline::new(Stage::map("f9", |x: u64| x.wrapping_add(1)).subprocess())
        .start()
        .expect("start");
    let t0 = Instant::now();
    let mut rss_warm = 0;
    for x in 0..N {
        drop(running.submit(x).expect("submit"));
        if x + 1 == 500_000 {
            rss_warm = common::rss_kib();
        }
    }
    let submitted_in = t0.elapsed();
    let rss_end = common::rss_kib();
    assert!(
        wait_until(Duration::from_secs(20), || running.stats().completed == N),
        "not all items finished: {:?}",
        running.stats()
    );
    let report = running.shutdown().expect("shutdown");
    eprintln!(
        "f09: {N} submits in {submitted_in:?}; RSS {rss_warm} KiB at 500k, {rss_end} KiB at 2M"
    );
    assert!(report.is_graceful(), "{report:?}");
    let st = report.stats();
    assert_eq!(
        (st.submitted, st.completed, st.in_flight),
        (N, N, 0),
        "{st:?}"
    );
    let s = &st.stages[0];
    assert_eq!(
        (s.items_in, s.items_out, s.failed, s.dropped),
        (N, N, 0, 0),
        "{s:?}"
    );
    assert!(
        rss_end <= rss_warm + 8 * 1024,
        "RSS grew from {rss_warm} KiB at 500k to {rss_end} KiB at 2M dropped tickets"
    );
}

// --- H2 -----------------------------------------------------------------------------------

/// One thread submits 200,000 items and keeps every ticket without waiting.
///
/// What the runtime does (pipeline.rs `Running::submit`, `resolve`): `submit` blocks only
/// while the pipeline holds its window of items (Σ queue × workers + DEFAULT_QUEUE = 8192
/// here); the resolver thread hands each finished item to its ticket's own one-slot
/// channel and gives the room back at once, whether or not anyone waits. So submits never
/// block for long, the pipeline never holds more than the window, and the results pile
/// up in the tickets the user keeps: memory grows with those tickets only.
fn h02() {
    const N: u64 = 200_000;
    const WINDOW: u64 = (DEFAULT_QUEUE + DEFAULT_QUEUE) as u64;
    let running = Pipeline::new(Stage::map("h2", |x: u64| x.wrapping_add(1)).subprocess())
        .start()
        .expect("start");
    let mut tickets = Vec::new();
    tickets.reserve_exact(N as usize);
    let rss0 = common::rss_kib();
    let t0 = Instant::now();
    let mut worst = 0;
    for x in 0..N {
        tickets.push(running.submit(x).expect("submit"));
        if x % 1000 == 999 {
            let in_flight = running.stats().in_flight;
            worst = worst.max(in_flight);
            assert!(
                in_flight <= WINDOW,
                "the pipeline holds {in_flight} items > window {WINDOW}"
            );
        }
    }
    let submitted_in = t0.elapsed();
    assert!(
        wait_until(Duration::from_secs(20), || running.stats().completed == N),
        "items still in the pipeline with nobody waiting: {:?}",
        running.stats()
    );
    // Every result now sits in a ticket the user holds; the pipeline holds nothing.
    assert_eq!(running.stats().in_flight, 0);
    let rss_held = common::rss_kib();
    let per_ticket = (rss_held.saturating_sub(rss0)) * 1024 / N;
    for (x, t) in (0..N).zip(tickets.drain(..)) {
        assert_eq!(t.item(), x);
        assert_eq!(t.wait().expect("ok"), x + 1);
    }
    drop(tickets);
    // The same again with the tickets dropped at once.
    for x in 0..N {
        drop(running.submit(x).expect("submit"));
    }
    assert!(wait_until(Duration::from_secs(20), || running
        .stats()
        .completed
        == 2 * N));
    let rss_dropped = common::rss_kib();
    let report = running.shutdown().expect("shutdown");
    eprintln!(
        "h02: {N} submits in {submitted_in:?}, worst in flight {worst} (window {WINDOW}); RSS {rss0} KiB -> {rss_held} KiB holding {N} resolved tickets (~{per_ticket} B each) -> {rss_dropped} KiB after {N} more with tickets dropped"
    );
    assert!(report.is_graceful(), "{report:?}");
    assert_eq!(report.stats().completed, 2 * N);
    assert!(
        per_ticket <= 2048,
        "a held, resolved ticket of a u64 costs ~{per_ticket} B"
    );
    // What the held tickets took is reused; the run with dropped tickets adds at most a
    // small fraction of it (the rest is the feeder's buffer creep of F9, a known bug).
    let held_growth = rss_held.saturating_sub(rss0);
    let dropped_growth = rss_dropped.saturating_sub(rss_held);
    assert!(
        dropped_growth * 8 <= held_growth,
        "RSS grew {dropped_growth} KiB with {N} tickets dropped, {held_growth} KiB with them held"
    );
}

// --- H3 -----------------------------------------------------------------------------------

/// Keep tickets (one running a 60 s item, one queued behind it), drop the `Running`: both
/// `wait()`s return `ShutDown` at once.
fn h03() {
    let running = Pipeline::new(
        Stage::map("h3", |x: u64| {
            if x == 1 {
                publish_pid("h03.pid");
                thread::sleep(Duration::from_secs(60));
            }
            x
        })
        .subprocess(),
    )
    .start()
    .expect("start");
    assert_eq!(running.submit(0).unwrap().wait().unwrap(), 0);
    let busy = running.submit(1).expect("submit");
    let queued = running.submit(2).expect("submit");
    let worker = read_pid("h03.pid");
    let t = Instant::now();
    drop(running);
    let dropped_in = t.elapsed();
    assert!(
        dropped_in < Duration::from_secs(2),
        "drop took {dropped_in:?}"
    );
    wait_dead(&[worker], Duration::from_millis(1)).expect("the busy worker is gone");
    for (seq, ticket) in [(1, busy), (2, queued)] {
        let t = Instant::now();
        let e = ticket.wait().expect_err("no outcome after the drop");
        let took = t.elapsed();
        assert!(took < Duration::from_secs(1), "wait took {took:?}");
        assert!(
            matches!(e, Error::ShutDown { item } if item == seq),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            format!("item {seq}: shut down before completion")
        );
    }
}

// --- D6 -----------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Extra {
    a: u64,
    b: String,
}

/// `#[serde(flatten)]` serializes as a map of unknown length (and deserializes with
/// `deserialize_any`): bincode cannot carry it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Flat {
    id: u64,
    #[serde(flatten)]
    extra: Extra,
}

/// An untagged enum serializes fine but needs `deserialize_any` to decode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
enum Loose {
    Num(u64),
    Text(String),
}

/// Runs `items` (every third `None`) through a process stage named `stage`; returns the
/// outcomes after checking that the `None`s pass and every `Some` fails on its own.
fn d06_run<T: forkpipe::Wire + Clone>(stage: &'static str, items: Vec<Option<T>>) -> Vec<Error> {
    let n = items.len() as u64;
    let p = Pipeline::new(Stage::map(stage, |x: Option<T>| x.is_some()).subprocess());
    let t = Instant::now();
    let all: Vec<_> = p.run(items.clone()).expect("start").collect();
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    assert_eq!(all.len() as u64, n, "one outcome per item");
    let mut errors = Vec::new();
    for (i, (r, item)) in all.into_iter().zip(&items).enumerate() {
        match (r, item) {
            (Ok(false), None) => {}
            (Err(e), Some(_)) => {
                assert_eq!(e.item(), Some(i as u64), "{e}");
                assert_eq!(e.stage(), Some(stage), "{e}");
                let text = e.to_string();
                assert!(text.contains(&format!("stage '{stage}'")), "{text}");
                assert!(text.contains(&format!("item {i}")), "{text}");
                errors.push(e);
            }
            (r, item) => panic!("item {i} ({}): {r:?}", item.is_some()),
        }
    }
    errors
}

fn d06_items<T>(n: u64, make: impl Fn(u64) -> T) -> Vec<Option<T>> {
    (0..n)
        .map(|i| (!i.is_multiple_of(3)).then(|| make(i)))
        .collect()
}

fn flat(i: u64) -> Flat {
    Flat {
        id: i,
        extra: Extra {
            a: i * 2,
            b: format!("b{i}"),
        },
    }
}

fn loose(i: u64) -> Loose {
    if i.is_multiple_of(2) {
        Loose::Num(i)
    } else {
        Loose::Text(format!("t{i}"))
    }
}

/// Per item, not per run: a codec error naming the stage and the item, no panic, no hang;
/// the `None` items of the same run pass. A flattened struct fails when the caller encodes
/// it; an untagged enum when the worker decodes it (the worker stays up). The wording of
/// the reason is d06b's business (at c1c06b9 it was bincode's `Debug` text:
/// `Serde(SequenceMustHaveLength)`, `Serde(AnyNotSupported)`).
fn d06a() {
    let errors = d06_run("d6_flatten", d06_items(30, flat));
    assert_eq!(errors.len(), 20);
    for e in &errors {
        let Error::Codec {
            what,
            message,
            worker,
            ..
        } = e
        else {
            panic!("a codec error: {e:?}");
        };
        // Encoding happens in the caller's feeder thread, before anything is sent.
        assert_eq!(what, "encode the input of", "{e}");
        assert_eq!(worker.pid(), Some(my_pid()), "{e}");
        assert!(!message.is_empty(), "{e}");
    }
    eprintln!("d06 flatten: {}", errors[0]);

    let errors = d06_run("d6_untagged", d06_items(30, loose));
    assert_eq!(errors.len(), 20);
    for e in &errors {
        let Error::Codec {
            what,
            message,
            worker,
            ..
        } = e
        else {
            panic!("a codec error: {e:?}");
        };
        // Decoding happens in the worker, which stays up (one pid for all of them).
        assert_eq!(what, "decode", "{e}");
        assert_ne!(worker.pid(), Some(my_pid()), "{e}");
        assert_eq!(worker.pid(), errors[0].worker().unwrap().pid(), "{e}");
        assert!(!message.is_empty(), "{e}");
    }
    eprintln!("d06 untagged: {}", errors[0]);
}

/// The contract (FAULTS D6): the error names the type and says why bincode cannot carry
/// it, e.g. "bincode cannot decode types that need deserialize_any (#[serde(flatten)],
/// untagged enums)". Today the reason is bincode's `Debug` text.
fn d06b() {
    let flat_err = d06_run("d6_flatten", d06_items(3, flat))
        .remove(0)
        .to_string();
    let loose_err = d06_run("d6_untagged", d06_items(3, loose))
        .remove(0)
        .to_string();
    let mut problems = Vec::new();
    for (text, ty, hint) in [
        (&flat_err, "Flat", "flatten"),
        (&loose_err, "Loose", "deserialize_any"),
    ] {
        if !text.contains(ty) || !text.contains(hint) {
            problems.push(format!("{text:?} should name `{ty}` and mention {hint:?}"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("; "));
}

// --- C8 -----------------------------------------------------------------------------------

/// 8 threads of the parent keep taking the stdout and stderr locks, allocating and reading
/// the environment while a worker is killed 200 times: each replacement serves within 2 s
/// of the kill (replacements are forked by the single-threaded supervisor, so no lock a
/// parent thread held can be inherited by a worker).
fn c08() {
    const KILLS: u64 = 200;
    let noisy = super::support::Noisy::start();
    // Started while the noisy threads run: the supervisor is forked from a busy process.
    let running = Pipeline::new(
        Stage::map("c8", |x: u64| {
            if x % 3 == 2 {
                publish_pid(&format!("c08.{x}"));
                thread::sleep(Duration::from_secs(60));
            }
            (x, my_pid())
        })
        .subprocess(),
    )
    .start()
    .expect("start");
    let t0 = Instant::now();
    let mut worst = Duration::ZERO;
    let mut seen = BTreeSet::new();
    for k in 0..KILLS {
        let marked = 3 * k + 2;
        let ticket = running.submit(marked).expect("submit");
        let pid = read_pid(&format!("c08.{marked}"));
        assert!(seen.insert(pid), "round {k}: worker {pid} killed before");
        let killed_at = Instant::now();
        signal(pid, libc::SIGKILL);
        let seq = ticket.item();
        let e = ticket.wait().expect_err("the killed item fails");
        assert_eq!(expect_died(&e, "c8", seq, "killed by SIGKILL"), pid);
        // Two items on the replacement (progress keeps the restart budget from giving up).
        for x in [3 * k, 3 * k + 1] {
            let (y, p) = running
                .submit(x)
                .expect("submit")
                .wait()
                .unwrap_or_else(|e| panic!("round {k}: the replacement failed: {e}"));
            assert_eq!(y, x);
            assert_ne!(p, pid, "round {k}: the killed worker answered");
        }
        let served = killed_at.elapsed();
        worst = worst.max(served);
        assert!(
            served < Duration::from_secs(2),
            "round {k}: the replacement served {served:?} after the kill"
        );
    }
    let elapsed = t0.elapsed();
    drop(noisy);
    let report = running.shutdown().expect("shutdown");
    eprintln!("c08: {KILLS} kills in {elapsed:?}; slowest replacement {worst:?}");
    assert!(report.is_graceful(), "{report:?}");
    let s = &report.stats().stages[0];
    assert_eq!(s.restarts, KILLS, "{s:?}");
    assert_eq!(s.failed, KILLS, "{s:?}");
    assert_eq!(s.items_out, 2 * KILLS, "{s:?}");
}
