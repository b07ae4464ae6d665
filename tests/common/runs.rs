//! Items travelling in runs (many items in one link record): what a user relies on stays
//! true inside a run — exactly the item that fails fails, no item runs twice after a
//! panic, a worker killed half way through a run loses nothing, a large item among small
//! ones arrives intact and in order.
//!
//! The feeder's chunks grow 1, 2, 4, … 4096 items, so items 4095..=8190 are its 13th chunk,
//! sent to a one-worker stage as one run: the cases put their fault at its first, a middle
//! and its last item. (What they assert holds wherever the runs begin.)
//!
//! Every execution of the stage function appends the item's number to a file named by the
//! case (items carry that name: a stage made again in a fork server sees nothing of the
//! test's memory), so the test counts how often each item ran.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use forkpipe::{Emit, Error, Pipeline, Stage};

const N: u64 = 10_000;

/// A case's name for its log: this process and a number.
fn case_tag(case: u64) -> u64 {
    u64::from(std::process::id()) * 100 + case
}

fn log_path(tag: u64) -> PathBuf {
    std::env::temp_dir().join(format!("forkpipe-runs-{tag}.log"))
}

/// Notes one execution of item `x` (one `write` with `O_APPEND`: whole lines from every
/// worker process).
fn note(tag: u64, x: u64) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path(tag))
        .expect("open the log");
    f.write_all(format!("{x}\n").as_bytes()).expect("log");
}

/// How often each item ran; removes the log.
fn executions(tag: u64) -> BTreeMap<u64, usize> {
    let text = std::fs::read_to_string(log_path(tag)).unwrap_or_default();
    let _ = std::fs::remove_file(log_path(tag));
    let mut m = BTreeMap::new();
    for l in text.lines() {
        *m.entry(l.parse().expect("an item number")).or_insert(0) += 1;
    }
    m
}

/// Items `(tag, x, fault_at)` for `x` in `0..N`.
fn items(tag: u64, at: u64) -> impl Iterator<Item = (u64, u64, u64)> {
    (0..N).map(move |x| (tag, x, at))
}

/// Runs `p` over the items; the outputs (`x + 1` expected) and errors by item, and the
/// worker pids seen.
fn run_all(
    p: Pipeline<(u64, u64, u64), (u64, u32)>,
    tag: u64,
    at: u64,
) -> (BTreeMap<u64, Error>, Vec<u32>, forkpipe::Stats) {
    let mut results = p.run(items(tag, at)).expect("start");
    let mut errors = BTreeMap::new();
    let mut pids = Vec::new();
    for (i, r) in results.by_ref().enumerate() {
        match r {
            Ok((x, pid)) => {
                assert_eq!(x, i as u64 + 1, "item {i} came out as {x}, in its place");
                if !pids.contains(&pid) {
                    pids.push(pid);
                }
            }
            Err(e) => {
                errors.insert(i as u64, e);
            }
        }
    }
    let stats = results.stats();
    drop(results);
    (errors, pids, stats)
}

fn counted(x: (u64, u64, u64)) -> (u64, u32) {
    let (tag, x, at) = x;
    note(tag, x);
    if x == at {
        panic!("boom at {x}");
    }
    (x + 1, std::process::id())
}

/// A panic at the first, a middle and the last item of a run fails exactly that item; every
/// item ran exactly once (the worker resumes after the panic, nothing runs again).
pub fn panic_inside_a_run() -> Vec<u32> {
    let mut all_pids = Vec::new();
    for (case, at) in [(1, 4095), (2, 6000), (3, 8190)] {
        let tag = case_tag(case);
        let p = Pipeline::new(Stage::map("counted", counted).subprocess());
        let (errors, pids, stats) = run_all(p, tag, at);
        assert_eq!(
            errors.keys().copied().collect::<Vec<_>>(),
            [at],
            "{errors:?}"
        );
        let Error::Panicked { item, message, .. } = &errors[&at] else {
            panic!("item {at} panicked: {:?}", errors[&at]);
        };
        assert_eq!(*item, at);
        assert!(message.contains(&format!("boom at {at}")), "{message}");
        let runs = executions(tag);
        assert_eq!(runs.len() as u64, N, "every item ran");
        let twice: Vec<_> = runs.iter().filter(|&(_, &n)| n != 1).collect();
        assert!(twice.is_empty(), "items that ran more than once: {twice:?}");
        assert_eq!(
            stats.stages[0].restarts, 0,
            "a stateless stage keeps its worker"
        );
        all_pids.extend(pids);
    }
    all_pids
}

fn fresh_state() -> Result<u64, String> {
    Ok(0)
}

/// A stage with `init` state panics in the middle of a run: that item fails, the worker is
/// replaced (its state may be half-updated), and the rest of the run goes to the new worker
/// — the items before the panic are not run again, nor any item twice.
pub fn stateful_panic_inside_a_run() -> Vec<u32> {
    let tag = case_tag(4);
    let stage = Stage::stateful(
        "stateful_counted",
        fresh_state,
        |x: (u64, u64, u64), seen: &mut u64, out: &mut Emit<(u64, u32)>| -> Result<(), String> {
            *seen += 1;
            out.emit(counted(x));
            Ok(())
        },
    )
    .subprocess();
    let (errors, pids, stats) = run_all(Pipeline::new(stage), tag, 6000);
    assert_eq!(
        errors.keys().copied().collect::<Vec<_>>(),
        [6000],
        "{errors:?}"
    );
    assert!(matches!(errors[&6000], Error::Panicked { item: 6000, .. }));
    assert_eq!(stats.stages[0].restarts, 1, "{stats:?}");
    assert_eq!(pids.len(), 2, "the worker was replaced: {pids:?}");
    let runs = executions(tag);
    assert_eq!(runs.len() as u64, N, "every item ran");
    let twice: Vec<_> = runs.iter().filter(|&(_, &n)| n != 1).collect();
    assert!(twice.is_empty(), "items that ran more than once: {twice:?}");
    pids
}

/// A worker killed (SIGKILL) half way through a run: the item it ran fails with its death;
/// every other item is delivered once, in order. The run's items it had not reached ran
/// once (sent again, to its replacement); only items it had finished but not yet answered
/// may have run twice (their answers never left the dead worker).
pub fn worker_killed_inside_a_run() -> Vec<u32> {
    let tag = case_tag(5);
    let p = Pipeline::new(
        Stage::map("killed", |x: (u64, u64, u64)| {
            if x.1 == x.2 {
                note(x.0, x.1);
                let me = std::process::id() as libc::pid_t;
                // SAFETY: kills this worker process, on purpose.
                unsafe { libc::kill(me, libc::SIGKILL) };
            }
            counted((x.0, x.1, u64::MAX))
        })
        .subprocess(),
    );
    let (errors, pids, stats) = run_all(p, tag, 6000);
    assert_eq!(
        errors.keys().copied().collect::<Vec<_>>(),
        [6000],
        "{errors:?}"
    );
    let Error::Died { item, cause, .. } = &errors[&6000] else {
        panic!("item 6000 died: {:?}", errors[&6000]);
    };
    assert_eq!(*item, 6000);
    assert!(cause.contains("SIGKILL"), "{cause}");
    assert_eq!(stats.stages[0].restarts, 1, "{stats:?}");
    let runs = executions(tag);
    assert_eq!(runs.len() as u64, N, "every item ran");
    let again: Vec<_> = runs
        .iter()
        .filter(|&(&x, &n)| n != 1 && x >= 6000)
        .collect();
    assert!(
        again.is_empty(),
        "items from the killed one on ran again: {again:?}"
    );
    pids
}

/// A 100 KiB item among 10-byte ones (a run ends before it, it travels alone, the next run
/// starts after it) through two process stages: every item arrives intact, in order.
pub fn large_item_between_runs() -> Vec<u32> {
    let input = |i: u64| -> Vec<u8> {
        if i == 300 {
            (0..100 * 1024).map(|k| (k % 251) as u8).collect()
        } else {
            vec![i as u8; 10]
        }
    };
    let same = || Stage::map("same", |v: Vec<u8>| v).subprocess();
    let p = Pipeline::new(same()).then(same());
    let mut n = 0u64;
    for (i, r) in p.run((0..600).map(input)).expect("start").enumerate() {
        assert_eq!(r.expect("item"), input(i as u64), "item {i}");
        n += 1;
    }
    assert_eq!(n, 600);
    Vec::new()
}

pub const RUNS: &[super::scenarios::Scenario] = &[
    (
        "runs_panic_at_first_middle_last_item",
        120,
        panic_inside_a_run,
    ),
    (
        "runs_stateful_panic_mid_run",
        60,
        stateful_panic_inside_a_run,
    ),
    ("runs_worker_killed_mid_run", 60, worker_killed_inside_a_run),
    ("runs_large_item_between_runs", 60, large_item_between_runs),
];
