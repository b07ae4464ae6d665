//! Test scenarios and the items and stages they use.
//!
//! Each scenario is a plain function that runs one or more pipelines, asserts their
//! results, and returns the pids it saw (workers and their parents, the supervisors), so a
//! caller that cannot check "no children at all" (a multi-threaded harness running other
//! forking tests at the same time) can at least check that *these* processes are gone.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use forkpipe::prelude::*;
use forkpipe::{Running, Worker};
use serde::{Deserialize, Serialize};

use super::procs::{Baseline, me, socket_inodes};

// ---------------------------------------------------------------------------------------
// Items and stages used by the scenarios
// ---------------------------------------------------------------------------------------

/// Who ran something: the process and its parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Who {
    pub pid: u32,
    pub ppid: u32,
}

impl Who {
    pub fn me() -> Self {
        // SAFETY: getppid has no preconditions.
        let ppid = unsafe { libc::getppid() } as u32;
        Who {
            pid: std::process::id(),
            ppid,
        }
    }
}

/// Pids (and parent pids) of the processes in `whos` other than ours.
pub fn pids_of<'a>(whos: impl IntoIterator<Item = &'a Who>) -> Vec<u32> {
    let me = me();
    let mut v: BTreeSet<u32> = BTreeSet::new();
    for w in whos {
        if w.pid != me {
            v.insert(w.pid);
            if w.ppid != me {
                v.insert(w.ppid);
            }
        }
    }
    v.into_iter().collect()
}

fn collect_ok<T>(results: impl Iterator<Item = Result<T, Error>>) -> Vec<T> {
    results
        .collect::<Result<Vec<_>, _>>()
        .expect("no item should fail")
}

// --- 1. atbu's basic 3-stage work item -----------------------------------------------

/// atbu's `PipelineWorkItem` with its `user_obj` dict as fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkItem {
    pub parent: String,
    pub v0: i64,
    pub v1: Option<String>,
    pub v2: Option<String>,
    /// Who ran each stage, in order.
    pub ran_in: Vec<Who>,
}

#[stage(subprocess)]
fn int_stage0(mut wi: WorkItem) -> WorkItem {
    wi.v0 = 100;
    wi.ran_in.push(Who::me());
    wi
}

#[stage(subprocess)]
fn int_stage1(mut wi: WorkItem) -> WorkItem {
    wi.v0 *= 2;
    wi.v1 = Some("stage1".to_string());
    wi.ran_in.push(Who::me());
    wi
}

#[stage(subprocess)]
fn int_stage2(mut wi: WorkItem) -> WorkItem {
    wi.v0 *= 2;
    wi.v2 = Some(format!("stage2: got this from parent: {}", wi.parent));
    wi.ran_in.push(Who::me());
    wi
}

pub fn atbu_basic() -> Vec<u32> {
    let running = pipeline![int_stage0 | int_stage1 | int_stage2]
        .start()
        .expect("start");
    let wi = WorkItem {
        parent: "This is from parent".into(),
        v0: 0,
        v1: None,
        v2: None,
        ran_in: Vec::new(),
    };
    let ticket = running.submit(wi.clone()).expect("submit");
    let r = ticket.wait().expect("the work item succeeds");
    let report = running.shutdown().expect("shutdown");
    assert!(
        report.is_graceful(),
        "shutdown was not graceful: {report:?}"
    );

    assert_eq!(r.parent, wi.parent, "the parent's value must not change");
    assert_eq!(r.v0, 400);
    assert_eq!(r.v1.as_deref(), Some("stage1"));
    assert_eq!(
        r.v2.as_deref(),
        Some("stage2: got this from parent: This is from parent")
    );
    assert_eq!(r.ran_in.len(), 3, "{:?}", r.ran_in);
    let pids: BTreeSet<u32> = r.ran_in.iter().map(|w| w.pid).collect();
    assert_eq!(
        pids.len(),
        3,
        "three stages, three worker processes: {:?}",
        r.ran_in
    );
    for w in &r.ran_in {
        assert_ne!(
            w.pid,
            me(),
            "a subprocess stage ran in the caller's process"
        );
        assert_ne!(
            w.ppid,
            me(),
            "workers are forked by the supervisor, not by the caller"
        );
    }
    let st = report.stats();
    assert_eq!((st.submitted, st.completed), (1, 1), "{st:?}");
    pids_of(&r.ran_in)
}

// --- 2. atbu's mixed pipeline: 10 × (subprocess, thread) ------------------------------

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Large {
    pub is_ok: bool,
    pub num: u32,
    /// The pid that created the item (the caller).
    pub pid: u32,
    pub process_stages: Vec<Who>,
    pub thread_stage_pids: Vec<u32>,
}

pub fn atbu_mixed() -> Vec<u32> {
    let sub = |i: usize| {
        Stage::map(format!("sub{i}"), |mut w: Large| {
            w.num += 1;
            w.process_stages.push(Who::me());
            w
        })
        .subprocess()
    };
    let thr = |i: usize| {
        Stage::map(format!("thread{i}"), |mut w: Large| {
            w.num += 1;
            w.thread_stage_pids.push(std::process::id());
            w
        })
    };
    let mut p = Pipeline::new(sub(0)).then(thr(0));
    for i in 1..10 {
        p = p.then(sub(i)).then(thr(i));
    }
    assert_eq!(p.len(), 20, "the pipeline has 20 stages");
    let running = p.start().expect("start");
    let wi = Large {
        is_ok: true,
        num: 0,
        pid: me(),
        ..Large::default()
    };
    let r = running
        .submit(wi)
        .expect("submit")
        .wait()
        .expect("the work item succeeds");
    let report = running.shutdown().expect("shutdown");
    assert!(report.is_graceful(), "{report:?}");
    assert_eq!(report.stats().stages.len(), 20);

    assert!(r.is_ok);
    assert_eq!(r.num, 20);
    assert_eq!(r.pid, me());
    assert_eq!(
        r.thread_stage_pids,
        vec![me(); 10],
        "thread stages run in the caller's process"
    );
    assert_eq!(r.process_stages.len(), 10);
    let distinct: BTreeSet<u32> = r.process_stages.iter().map(|w| w.pid).collect();
    assert_eq!(
        distinct.len(),
        10,
        "one worker process per subprocess stage: {:?}",
        r.process_stages
    );
    assert!(
        !distinct.contains(&me()),
        "a subprocess stage ran in the caller's process"
    );
    pids_of(&r.process_stages)
}

// --- 3. 100 subprocess stages ----------------------------------------------------------

pub fn hundred_stages() -> Vec<u32> {
    let inc = || {
        Stage::map("inc", |(x, mut whos): (u64, Vec<Who>)| {
            whos.push(Who::me());
            (x + 1, whos)
        })
        .subprocess()
    };
    let mut p = Pipeline::new(inc());
    for _ in 0..99 {
        p = p.then(inc());
    }
    assert_eq!(p.len(), 100);
    let input = [0u64, 1, 2, 1000];
    let out = collect_ok(p.run(input.map(|x| (x, Vec::new()))).expect("start"));
    assert_eq!(
        out.iter().map(|(x, _)| *x).collect::<Vec<_>>(),
        [100, 101, 102, 1100]
    );
    let mut all = Vec::new();
    for (_, whos) in &out {
        assert_eq!(whos.len(), 100);
        let distinct: BTreeSet<u32> = whos.iter().map(|w| w.pid).collect();
        assert_eq!(
            distinct.len(),
            100,
            "each of the 100 stages ran in its own process"
        );
        assert!(!distinct.contains(&me()));
        all.extend(whos.iter().copied());
    }
    pids_of(&all)
}

// --- 4. MPipe's ordered and unordered stages, workers = 3 ------------------------------

fn tag_slowly(x: u64) -> (u64, Who) {
    thread::sleep(Duration::from_millis(2));
    (x, Who::me())
}

#[stage(subprocess, workers = 3)]
fn ordered3(x: u64) -> (u64, Who) {
    tag_slowly(x)
}

#[stage(subprocess, workers = 3, unordered)]
fn unordered3(x: u64) -> (u64, Who) {
    tag_slowly(x)
}

pub fn mpipe_ordered_unordered() -> Vec<u32> {
    const N: u64 = 90;
    let ordered = collect_ok(pipeline![ordered3].run(0..N).expect("start"));
    let xs: Vec<u64> = ordered.iter().map(|(x, _)| *x).collect();
    assert_eq!(
        xs,
        (0..N).collect::<Vec<_>>(),
        "ordered stage: output in input order"
    );
    let pids: BTreeSet<u32> = ordered.iter().map(|(_, w)| w.pid).collect();
    assert_eq!(
        pids.len(),
        3,
        "ordered: all 3 workers should get work; pids seen: {pids:?}"
    );

    let unordered = collect_ok(pipeline![unordered3].run(0..N).expect("start"));
    let mut xs: Vec<u64> = unordered.iter().map(|(x, _)| *x).collect();
    xs.sort_unstable();
    assert_eq!(
        xs,
        (0..N).collect::<Vec<_>>(),
        "unordered stage: a permutation of the input"
    );
    let upids: BTreeSet<u32> = unordered.iter().map(|(_, w)| w.pid).collect();
    assert_eq!(
        upids.len(),
        3,
        "unordered: all 3 workers should get work; pids seen: {upids:?}"
    );
    assert!(
        pids.is_disjoint(&upids),
        "two pipelines, two sets of workers"
    );

    let mut whos: Vec<Who> = ordered.iter().map(|(_, w)| *w).collect();
    whos.extend(unordered.iter().map(|(_, w)| *w));
    pids_of(&whos)
}

// --- 5. dead-end (filter) and many-results (Emit) stages -------------------------------

fn keep_non_multiple_of_3(x: u64) -> Option<u64> {
    (!x.is_multiple_of(3)).then_some(x)
}

fn fan_out(x: u64) -> Vec<u64> {
    (0..x % 4).map(|j| x * 10 + j).collect()
}

#[stage(subprocess)]
fn filter_proc(x: u64) -> Option<u64> {
    keep_non_multiple_of_3(x)
}

#[stage]
fn filter_thread(x: u64) -> Option<u64> {
    keep_non_multiple_of_3(x)
}

#[stage(subprocess)]
fn fan_proc(x: u64, out: &mut Emit<u64>) {
    for y in fan_out(x) {
        out.emit(y);
    }
}

#[stage(workers = 2)]
fn fan_thread(x: u64, out: &mut Emit<u64>) {
    for y in fan_out(x) {
        out.emit(y);
    }
}

#[stage(subprocess, workers = 2)]
fn fan_proc2(x: u64, out: &mut Emit<u64>) {
    for y in fan_out(x) {
        out.emit(y);
    }
}

pub fn filter_and_emit() -> Vec<u32> {
    let input = 0..60u64;
    let filter_then_fan: Vec<u64> = input
        .clone()
        .filter_map(keep_non_multiple_of_3)
        .flat_map(fan_out)
        .collect();
    let fan_then_filter: Vec<u64> = input
        .clone()
        .flat_map(fan_out)
        .filter_map(keep_non_multiple_of_3)
        .collect();
    assert!(!filter_then_fan.is_empty() && !fan_then_filter.is_empty());

    let a = collect_ok(
        pipeline![filter_proc | fan_thread]
            .run(input.clone())
            .expect("start"),
    );
    assert_eq!(a, filter_then_fan, "subprocess filter, then thread emit");
    let b = collect_ok(
        pipeline![filter_thread | fan_proc]
            .run(input.clone())
            .expect("start"),
    );
    assert_eq!(b, filter_then_fan, "thread filter, then subprocess emit");
    let c = collect_ok(
        pipeline![fan_proc2 | filter_proc]
            .run(input.clone())
            .expect("start"),
    );
    assert_eq!(
        c, fan_then_filter,
        "subprocess emit (2 workers), then subprocess filter"
    );
    let d = collect_ok(
        pipeline![fan_thread | filter_thread]
            .run(input.clone())
            .expect("start"),
    );
    assert_eq!(d, fan_then_filter, "thread emit, then thread filter");
    // Every input filtered away: no output at all, and the run still ends.
    let none = collect_ok(pipeline![filter_proc].run([0u64, 3, 6, 9]).expect("start"));
    assert!(none.is_empty());
    Vec::new()
}

// --- 6. parallelpipe's range(100) | add_n(7) -------------------------------------------

#[stage(source)]
fn range(n: u64) -> impl Iterator<Item = u64> {
    0..n
}

#[stage(subprocess, workers = 4)]
fn add_n(x: u64, n: u64) -> u64 {
    x + n
}

#[stage(subprocess, workers = 4)]
fn add_n_who(x: u64, n: u64) -> (u64, Who) {
    (x + n, Who::me())
}

pub fn parallelpipe_add_n() -> Vec<u32> {
    let out: Vec<u64> = collect_ok(pipeline![range(100) | add_n(7)].results().expect("start"));
    assert_eq!(out, (7..107).collect::<Vec<_>>());
    let out: Vec<u64> = collect_ok(pipeline![add_n(7)].run(0..100u64).expect("start"));
    assert_eq!(out, (7..107).collect::<Vec<_>>());
    assert_eq!(add_n(1, 2), 3, "a stage stays an ordinary function");
    let out = collect_ok(
        pipeline![range(100) | add_n_who(7)]
            .results()
            .expect("start"),
    );
    assert_eq!(
        out.iter().map(|(x, _)| *x).collect::<Vec<_>>(),
        (7..107).collect::<Vec<_>>()
    );
    let whos: Vec<Who> = out.iter().map(|(_, w)| *w).collect();
    assert!(whos.iter().all(|w| w.pid != me()));
    pids_of(&whos)
}

// --- 7. an item error fails that item only ---------------------------------------------

fn picky(x: u64) -> Result<(u64, Who), String> {
    if x == 23 {
        return Err(format!("no {x} please"));
    }
    if x == 41 {
        panic!("boom {x}");
    }
    Ok((x, Who::me()))
}

#[stage(subprocess, workers = 2)]
fn picky_proc(x: u64) -> Result<(u64, Who), String> {
    picky(x)
}

#[stage(workers = 2)]
fn picky_thread(x: u64) -> Result<(u64, Who), String> {
    picky(x)
}

/// Checks one run of `picky` over 0..60 with the stage named `stage`; returns the workers seen.
fn check_picky(stage: &str, results: Vec<Result<(u64, Who), Error>>, process: bool) -> Vec<Who> {
    assert_eq!(results.len(), 60, "60 items, 60 outcomes");
    let errors: Vec<(usize, &Error)> = results
        .iter()
        .enumerate()
        .filter_map(|(i, r)| r.as_ref().err().map(|e| (i, e)))
        .collect();
    assert_eq!(
        errors.len(),
        2,
        "exactly one Err for item 23 and one for item 41: {errors:?}"
    );
    let ok: Vec<u64> = results
        .iter()
        .filter_map(|r| r.as_ref().ok().map(|(x, _)| *x))
        .collect();
    let expected: Vec<u64> = (0..60).filter(|&x| x != 23 && x != 41).collect();
    assert_eq!(ok, expected, "the 58 other items are Ok and in order");
    let whos: Vec<Who> = results
        .iter()
        .filter_map(|r| r.as_ref().ok().map(|(_, w)| *w))
        .collect();
    let worker_pids: BTreeSet<u32> = whos.iter().map(|w| w.pid).collect();

    for (pos, item, message, is_panic) in [
        (23usize, 23u64, "no 23 please", false),
        (41, 41, "boom 41", true),
    ] {
        let e = results[pos].as_ref().expect_err("this item fails");
        let text = e.to_string();
        assert_eq!(e.stage(), Some(stage), "{text}");
        assert_eq!(e.item(), Some(item), "{text}");
        assert!(
            text.contains(&format!("stage '{stage}'")),
            "names the stage: {text}"
        );
        assert!(
            text.contains(&format!("item {item}")),
            "names the item: {text}"
        );
        assert!(text.contains(message), "carries the message: {text}");
        if is_panic {
            assert!(
                matches!(e, Error::Panicked { .. }),
                "a panic is Error::Panicked: {e:?}"
            );
        } else {
            assert!(
                matches!(e, Error::Failed { .. }),
                "an Err is Error::Failed: {e:?}"
            );
        }
        match e.worker() {
            Some(Worker::Process(pid)) => {
                assert!(process, "a thread stage reported a process worker: {text}");
                assert_ne!(pid, me(), "the worker pid is not the caller's: {text}");
                assert!(text.contains(&format!("worker pid {pid}")), "{text}");
                assert!(
                    worker_pids.contains(&pid),
                    "pid {pid} is one of the stage's workers {worker_pids:?}"
                );
                assert_eq!(e.worker().and_then(|w| w.pid()), Some(pid));
            }
            Some(Worker::Thread(k)) => {
                assert!(!process, "a process stage reported a thread worker: {text}");
                assert!(k < 2, "thread index within the stage's 2 workers: {text}");
                assert!(text.contains(&format!("thread worker {k}")), "{text}");
                assert_eq!(e.worker().and_then(|w| w.pid()), None);
            }
            other => panic!("unexpected worker {other:?}: {text}"),
        }
    }
    if process {
        assert!(worker_pids.iter().all(|&p| p != me()));
    } else {
        assert_eq!(worker_pids, BTreeSet::from([me()]));
    }
    whos
}

pub fn item_errors() -> Vec<u32> {
    let r: Vec<_> = pipeline![picky_proc]
        .run(0..60u64)
        .expect("start")
        .collect();
    let whos = check_picky("picky_proc", r, true);
    let r: Vec<_> = pipeline![picky_thread]
        .run(0..60u64)
        .expect("start")
        .collect();
    check_picky("picky_thread", r, false);
    pids_of(&whos)
}

// --- 8. many threads submit to one Running ----------------------------------------------

#[stage(subprocess, workers = 2)]
fn scramble(x: u64) -> u64 {
    x.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (x >> 7)
}

#[stage]
fn plus_one(x: u64) -> u64 {
    x.wrapping_add(1)
}

pub fn many_submitters() -> Vec<u32> {
    const THREADS: u64 = 8;
    const PER: u64 = 1000;
    let running = pipeline![scramble | plus_one].start().expect("start");
    fn assert_send_sync<T: Send + Sync>(_: &T) {}
    assert_send_sync(&running);
    thread::scope(|s| {
        for t in 0..THREADS {
            let running = &running;
            s.spawn(move || {
                let xs: Vec<u64> = (0..PER).map(|i| t * 1_000_000 + i).collect();
                // Half submitted in a burst and awaited later, half awaited one by one.
                let tickets: Vec<_> = xs[..500]
                    .iter()
                    .map(|&x| (x, running.submit(x).expect("submit")))
                    .collect();
                for &x in &xs[500..] {
                    let got = running.submit(x).expect("submit").wait().expect("item ok");
                    assert_eq!(got, plus_one(scramble(x)), "thread {t}: item {x}");
                }
                for (x, ticket) in tickets {
                    let got = ticket.wait().expect("item ok");
                    assert_eq!(got, plus_one(scramble(x)), "thread {t}: item {x}");
                }
            });
        }
    });
    let report = running.shutdown().expect("shutdown");
    assert!(report.is_graceful());
    let st = report.stats();
    assert_eq!(st.submitted, THREADS * PER, "{st:?}");
    assert_eq!(st.completed, THREADS * PER, "{st:?}");
    Vec::new()
}

// --- 9. source pipelines with results() --------------------------------------------------

#[stage(source)]
fn words(text: String) -> Vec<String> {
    text.split_whitespace().map(str::to_owned).collect()
}

#[stage(subprocess)]
fn word_len(w: String) -> (String, usize) {
    let n = w.len();
    (w, n)
}

#[stage(subprocess, workers = 2)]
fn square(x: u64) -> u64 {
    x * x
}

#[stage]
fn odd_only(x: u64) -> Option<u64> {
    (x % 2 == 1).then_some(x)
}

pub fn sources() -> Vec<u32> {
    let v = collect_ok(
        pipeline![range(10) | square | odd_only]
            .results()
            .expect("start"),
    );
    assert_eq!(v, [1, 9, 25, 49, 81]);
    let v = collect_ok(
        pipeline![words("a bb ccc".to_string()) | word_len]
            .results()
            .expect("start"),
    );
    assert_eq!(
        v,
        [
            ("a".to_string(), 1),
            ("bb".to_string(), 2),
            ("ccc".to_string(), 3)
        ]
    );
    let v = collect_ok(pipeline![range(5)].results().expect("start"));
    assert_eq!(v, [0, 1, 2, 3, 4], "a source alone");
    let v = collect_ok(pipeline![range(0) | square].results().expect("start"));
    assert!(v.is_empty(), "an empty source");
    let p = Pipeline::new(Source::new("evens", || (0..10u64).map(|x| x * 2)))
        .then(Stage::map("half", |x: u64| x / 2).subprocess().workers(3));
    assert_eq!(
        collect_ok(p.results().expect("start")),
        (0..10).collect::<Vec<u64>>()
    );
    // A 1,000-item source through a process stage and a thread stage.
    let v = collect_ok(
        pipeline![range(1000) | square | plus_one]
            .results()
            .expect("start"),
    );
    assert_eq!(v, (0..1000u64).map(|x| x * x + 1).collect::<Vec<_>>());
    // `results()` needs a source.
    let e = Pipeline::new(Stage::map("unit", |(): ()| 1u64))
        .results()
        .expect_err("no source");
    assert!(matches!(e, Error::Start(_)), "{e:?}");
    Vec::new()
}

// --- 10. drop: 100 pipelines dropped mid-stream; a Running dropped with waiters --------------

fn shape(k: usize) -> Pipeline<u64, u64> {
    let w = 1 + k % 3;
    let w2 = 1 + (k / 3) % 3;
    let proc = |name: &'static str, w: usize, add: u64| {
        Stage::map(name, move |x: u64| x + add)
            .subprocess()
            .workers(w)
    };
    let thr = |name: &'static str, w: usize| Stage::map(name, |x: u64| x * 2).workers(w);
    match k % 4 {
        0 => Pipeline::new(proc("p", w, 1)),
        1 => Pipeline::new(proc("p", w, 1)).then(thr("t", w2)),
        2 => Pipeline::new(thr("t", w)).then(proc("p", w2, 1)),
        _ => Pipeline::new(proc("p", w, 1))
            .then(proc("q", w2, 2))
            .then(thr("t", 2)),
    }
}

fn shape_oracle(k: usize, x: u64) -> u64 {
    match k % 4 {
        0 => x + 1,
        1 => (x + 1) * 2,
        2 => x * 2 + 1,
        _ => (x + 3) * 2,
    }
}

/// Workers of all stages of `shape(k)` (each may hold `DEFAULT_QUEUE` items in its queue).
fn shape_workers(k: usize) -> u64 {
    let (w, w2) = ((1 + k % 3) as u64, (1 + (k / 3) % 3) as u64);
    match k % 4 {
        0 => w,
        3 => w + w2 + 2,
        _ => w + w2,
    }
}

/// Workers of the process stages of `shape(k)` (each may hold `RUN_AHEAD` times its queue
/// more while items stream through in runs).
fn shape_run_workers(k: usize) -> u64 {
    let (w, w2) = ((1 + k % 3) as u64, (1 + (k / 3) % 3) as u64);
    match k % 4 {
        0 | 1 => w,
        2 => w2,
        _ => w + w2,
    }
}

/// Drops 100 pipelines mid-stream over an endless input, then checks that everything is
/// clean: no child (zombies included), no descendant, fds within ±2 and (if `check_threads`)
/// threads back to the baseline. Asserts on the *whole* process: callers must make sure no
/// other test forks meanwhile.
///
/// Also checks that the endless input is pulled only as far as the pipeline's bounded queues
/// allow (E2): at most 50 + `DEFAULT_QUEUE` × (workers + 1 + `RUN_AHEAD` × process
/// workers) items, plus some slack.
pub fn drop_midstream_x100(check_threads: bool) {
    let base = Baseline::now();
    for k in 0..100 {
        let pulled = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&pulled);
        let input = (0u64..).inspect(move |_| {
            counter.fetch_add(1, Ordering::Relaxed);
        });
        let mut results = shape(k).run(input).expect("start");
        for x in 0..50u64 {
            let got = results
                .next()
                .expect("an endless input never ends")
                .expect("item ok");
            assert_eq!(got, shape_oracle(k, x), "pipeline {k}, item {x}");
        }
        if k % 25 == 0 {
            // Give the feeder time to run into the bound.
            thread::sleep(Duration::from_millis(100));
        }
        let queues = shape_workers(k) + 1 + forkpipe::RUN_AHEAD as u64 * shape_run_workers(k);
        let bound = 50 + forkpipe::DEFAULT_QUEUE as u64 * queues + 1024;
        let n = pulled.load(Ordering::Relaxed);
        assert!(
            n <= bound,
            "pipeline {k}: the endless input was pulled {n} times (bound {bound})"
        );
        let t = Instant::now();
        drop(results);
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "drop took {:?}",
            t.elapsed()
        );
    }
    base.assert_clean("after dropping 100 pipelines mid-stream", check_threads);
}

#[stage(subprocess, workers = 2)]
fn nap_unless_zero(x: u64) -> u64 {
    if x > 0 {
        thread::sleep(Duration::from_secs(30));
    }
    x
}

/// Drops a `Running` while other threads wait on its tickets: each wait returns `Err`
/// promptly; a wait begun after the drop returns `Err` at once.
pub fn drop_running_with_waiters() -> Vec<u32> {
    let running: Running<u64, u64> = pipeline![nap_unless_zero].start().expect("start");
    assert_eq!(
        running
            .submit(0)
            .expect("submit")
            .wait()
            .expect("item 0 is quick"),
        0
    );
    let dropped_at: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
    let mut waiters = Vec::new();
    for x in 1..=4u64 {
        let ticket = running.submit(x).expect("submit");
        assert_eq!(ticket.item(), x);
        let dropped_at = Arc::clone(&dropped_at);
        waiters.push(thread::spawn(move || {
            let r = ticket.wait();
            let since_drop = dropped_at.lock().unwrap().map(|t| t.elapsed());
            (x, r, since_drop)
        }));
    }
    let late = running.submit(5).expect("submit");
    thread::sleep(Duration::from_millis(300)); // let the waiters block
    let t = Instant::now();
    *dropped_at.lock().unwrap() = Some(t);
    drop(running);
    let drop_took = t.elapsed();
    assert!(
        drop_took < Duration::from_secs(5),
        "drop is prompt even with busy workers: {drop_took:?}"
    );
    for w in waiters {
        let (x, r, since_drop) = w.join().expect("waiter thread");
        let e = r.expect_err("an unfinished ticket resolves to Err when the pipeline is dropped");
        assert_eq!(e.item(), Some(x), "{e}");
        assert!(
            matches!(e, Error::ShutDown { .. }),
            "dropped pipeline: ShutDown, got {e:?}"
        );
        let since_drop = since_drop.expect("returned after the drop");
        assert!(
            since_drop < Duration::from_secs(5),
            "wait returned {since_drop:?} after the drop"
        );
    }
    let t = Instant::now();
    let e = late.wait().expect_err("wait after drop");
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "wait after drop returns at once: {:?}",
        t.elapsed()
    );
    assert_eq!(e.item(), Some(5));
    assert!(matches!(e, Error::ShutDown { .. }), "{e:?}");
    Vec::new()
}

// --- 11/12. exactly one outcome per item; stats add up ---------------------------------------

#[stage(subprocess)]
fn drop_sevens(x: u64) -> Option<u64> {
    (!x.is_multiple_of(7)).then_some(x)
}

#[stage]
fn copies(x: u64, out: &mut Emit<(u64, u64)>) {
    for j in 0..x % 3 {
        out.emit((x, j));
    }
}

#[stage(subprocess, workers = 2)]
fn fail_elevens(p: (u64, u64)) -> Result<(u64, u64), String> {
    if p.0.is_multiple_of(11) {
        Err(format!("{} is a multiple of 11", p.0))
    } else {
        Ok(p)
    }
}

/// The outcome of item `x` in `drop_sevens | copies | fail_elevens`.
#[derive(Debug, PartialEq)]
enum Outcome {
    DroppedAt(usize),
    Failed,
    Outputs(Vec<(u64, u64)>),
}

fn outcome_oracle(x: u64) -> Outcome {
    if x.is_multiple_of(7) {
        Outcome::DroppedAt(0)
    } else if x.is_multiple_of(3) {
        Outcome::DroppedAt(1)
    } else if x.is_multiple_of(11) {
        Outcome::Failed
    } else {
        Outcome::Outputs((0..x % 3).map(|j| (x, j)).collect())
    }
}

fn expected_counts(n: u64) -> [(u64, u64, u64, u64); 3] {
    // (in, out, failed, dropped) per stage
    let mut c = [(0, 0, 0, 0); 3];
    for x in 0..n {
        match outcome_oracle(x) {
            Outcome::DroppedAt(0) => {
                c[0].0 += 1;
                c[0].3 += 1;
            }
            Outcome::DroppedAt(_) => {
                c[0].0 += 1;
                c[0].1 += 1;
                c[1].0 += 1;
                c[1].3 += 1;
            }
            Outcome::Failed => {
                c[0] = (c[0].0 + 1, c[0].1 + 1, c[0].2, c[0].3);
                c[1] = (c[1].0 + 1, c[1].1 + 1, c[1].2, c[1].3);
                c[2].0 += 1;
                c[2].2 += 1;
            }
            Outcome::Outputs(_) => {
                for s in &mut c {
                    s.0 += 1;
                    s.1 += 1;
                }
            }
        }
    }
    c
}

fn check_stats(stats: &forkpipe::Stats, n: u64) {
    assert_eq!(stats.submitted, n, "{stats:?}");
    assert_eq!(stats.completed, n, "{stats:?}");
    assert_eq!(stats.stages.len(), 3);
    let expected = expected_counts(n);
    let names = ["drop_sevens", "copies", "fail_elevens"];
    for (i, s) in stats.stages.iter().enumerate() {
        assert_eq!(s.name, names[i]);
        assert_eq!(
            s.items_in,
            s.items_out + s.failed + s.dropped,
            "stage {i}: in = out + failed + dropped: {s:?}"
        );
        assert_eq!(
            (s.items_in, s.items_out, s.failed, s.dropped),
            expected[i],
            "stage {i} counts: {s:?}"
        );
        assert_eq!(s.restarts, 0, "{s:?}");
        if i > 0 {
            assert_eq!(
                s.items_in,
                stats.stages[i - 1].items_out,
                "stage {i} gets what stage {} let out",
                i - 1
            );
        }
    }
}

pub fn exactly_one_outcome() -> Vec<u32> {
    const N: u64 = 10_000;
    let mut results = pipeline![drop_sevens | copies | fail_elevens]
        .run(0..N)
        .expect("start");
    let mut outputs: BTreeMap<u64, Vec<(u64, u64)>> = BTreeMap::new();
    let mut errors: BTreeMap<u64, usize> = BTreeMap::new();
    let mut sequence = Vec::new(); // the item of each outcome, in delivery order
    for r in results.by_ref() {
        match r {
            Ok(p) => {
                outputs.entry(p.0).or_default().push(p);
                sequence.push(p.0);
            }
            Err(e) => {
                let item = e
                    .item()
                    .unwrap_or_else(|| panic!("an item error names its item: {e}"));
                assert_eq!(e.stage(), Some("fail_elevens"), "{e}");
                assert!(
                    e.to_string()
                        .contains(&format!("{item} is a multiple of 11")),
                    "{e}"
                );
                *errors.entry(item).or_default() += 1;
                sequence.push(item);
            }
        }
    }
    check_stats(&results.stats(), N);
    drop(results);
    for x in 0..N {
        let outs = outputs.remove(&x).unwrap_or_default();
        let errs = errors.remove(&x).unwrap_or(0);
        match outcome_oracle(x) {
            Outcome::DroppedAt(_) => assert!(
                outs.is_empty() && errs == 0,
                "item {x}: dropped, got {outs:?} / {errs} errors"
            ),
            Outcome::Failed => assert!(
                outs.is_empty() && errs == 1,
                "item {x}: one error, got {outs:?} / {errs} errors"
            ),
            Outcome::Outputs(v) => assert!(
                outs == v && errs == 0,
                "item {x}: {v:?}, got {outs:?} / {errs} errors"
            ),
        }
    }
    assert!(
        outputs.is_empty() && errors.is_empty(),
        "outcomes for unknown items: {outputs:?} {errors:?}"
    );
    assert!(
        sequence.windows(2).all(|w| w[0] <= w[1]),
        "outcomes are in input order"
    );
    Vec::new()
}

pub fn stats_add_up() -> Vec<u32> {
    const N: u64 = 2_000;
    let running = pipeline![drop_sevens | copies | fail_elevens]
        .start()
        .expect("start");
    let tickets: Vec<_> = (0..N).map(|x| running.submit(x).expect("submit")).collect();
    for (x, t) in (0..N).zip(tickets) {
        assert_eq!(t.item(), x);
        match (outcome_oracle(x), t.wait_all()) {
            (Outcome::DroppedAt(_), Ok(v)) => assert!(v.is_empty(), "item {x}: {v:?}"),
            (Outcome::Failed, Err(e)) => assert_eq!(e.item(), Some(x), "{e}"),
            (Outcome::Outputs(want), Ok(v)) => assert_eq!(v, want, "item {x}"),
            (want, got) => panic!("item {x}: expected {want:?}, got {got:?}"),
        }
    }
    let live = running.stats();
    check_stats(&live, N);
    let report = running.shutdown().expect("shutdown");
    assert!(report.is_graceful());
    check_stats(report.stats(), N);
    Vec::new()
}

// --- 13. I3: no forkpipe socket leaks into exec'd programs ------------------------------------

/// `fd -> target` of a `sh` started with `Command` (as seen by the shell itself).
fn shell_fds() -> BTreeMap<u32, String> {
    let out = Command::new("sh")
        .arg("-c")
        .arg("ls -l /proc/$$/fd")
        .output()
        .expect("run sh");
    assert!(out.status.success(), "sh failed: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut m = BTreeMap::new();
    for line in text.lines() {
        if let Some((left, target)) = line.split_once(" -> ")
            && let Some(fd) = left.split_whitespace().last().and_then(|s| s.parse().ok())
        {
            m.insert(fd, target.to_string());
        }
    }
    assert!(m.contains_key(&1), "parsed the listing: {text}");
    m
}

#[stage(subprocess, workers = 2)]
fn ls_in_worker(x: u64) -> (u64, Who, Vec<(u32, String)>) {
    (x, Who::me(), shell_fds().into_iter().collect())
}

pub fn exec_sees_no_sockets() -> Vec<u32> {
    let before = shell_fds();
    let running = pipeline![ls_in_worker | { Stage::map("noop", |x| x) }]
        .start()
        .expect("start");
    let mut whos = Vec::new();
    for x in 0..4u64 {
        let (_, who, listing) = running.submit(x).expect("submit").wait().expect("item ok");
        whos.push(who);
        let sockets: Vec<_> = listing
            .iter()
            .filter(|(_, t)| t.starts_with("socket:"))
            .collect();
        assert!(
            sockets.is_empty(),
            "a program exec'd by a worker inherited sockets: {listing:?}"
        );
    }
    // The caller itself holds the pipeline's sockets now; a program it runs must not.
    let ours = socket_inodes("self");
    assert!(
        !ours.is_empty(),
        "the running pipeline's sockets are open in the caller"
    );
    let during = shell_fds();
    let sockets: Vec<_> = during
        .iter()
        .filter(|(_, t)| t.starts_with("socket:"))
        .collect();
    assert!(
        sockets.is_empty(),
        "a program exec'd by the caller inherited sockets: {during:?}"
    );
    let extra: Vec<_> = during
        .keys()
        .filter(|fd| !before.contains_key(fd))
        .collect();
    assert!(
        extra.is_empty(),
        "descriptors leaked into exec'd program: {extra:?}\nbefore {before:?}\nduring {during:?}"
    );
    assert!(during.contains_key(&0) && during.contains_key(&1) && during.contains_key(&2));
    let report = running.shutdown().expect("shutdown");
    assert!(report.is_graceful());
    pids_of(&whos)
}

// --- 14. I4: each worker holds only its own sockets ------------------------------------------

/// What a worker saw in its own `/proc/self/fd`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FdReport {
    pub stage: String,
    pub who: Who,
    pub sockets: Vec<u64>,
}

fn report(stage: &str) -> FdReport {
    thread::sleep(Duration::from_millis(2));
    FdReport {
        stage: stage.to_string(),
        who: Who::me(),
        sockets: socket_inodes("self"),
    }
}

#[stage(subprocess, workers = 2)]
fn fds_a(_x: u64) -> Vec<FdReport> {
    vec![report("fds_a")]
}

#[stage(subprocess, workers = 3)]
fn fds_b(mut v: Vec<FdReport>) -> Vec<FdReport> {
    v.push(report("fds_b"));
    v
}

#[stage(subprocess)]
fn fds_c(_x: u64) -> Vec<FdReport> {
    vec![report("fds_c")]
}

pub fn worker_socket_hygiene() -> Vec<u32> {
    // A: fds_a (2 workers) -> fds_b (3 workers): a mesh of 2 × 3 links.
    // A's fds_a worker: 1 input (from the caller) + 3 outputs + 1 control = 5 sockets.
    // A's fds_b worker: 2 inputs + 1 output (to the caller) + 1 control = 4 sockets.
    // B: fds_c (1 worker): 1 input + 1 output + 1 control = 3 sockets.
    let a = pipeline![fds_a | fds_b].start().expect("start A");
    let mut reports: Vec<FdReport> = Vec::new();
    let a_tickets: Vec<_> = (0..30u64).map(|x| a.submit(x).expect("submit")).collect();
    for t in a_tickets {
        reports.extend(t.wait().expect("item ok"));
    }
    // B starts while A runs: its supervisor and worker are forked after A's sockets exist.
    let b = pipeline![fds_c].start().expect("start B");
    for x in 0..3u64 {
        reports.extend(b.submit(x).expect("submit").wait().expect("item ok"));
    }
    // More items through A after B exists.
    for x in 0..6u64 {
        reports.extend(a.submit(x).expect("submit").wait().expect("item ok"));
    }
    let caller_sockets: BTreeSet<u64> = socket_inodes("self").into_iter().collect();

    let expected = |stage: &str| match stage {
        "fds_a" => 1 + 3 + 1,
        "fds_b" => 2 + 1 + 1,
        _ => 1 + 1 + 1,
    };
    let mut per_worker: BTreeMap<u32, (String, BTreeSet<u64>)> = BTreeMap::new();
    for r in &reports {
        assert_ne!(r.who.pid, me());
        assert_eq!(
            r.sockets.len(),
            expected(&r.stage),
            "worker {} of stage {} holds {} sockets, expected {} (in links + out links + control): {:?}",
            r.who.pid,
            r.stage,
            r.sockets.len(),
            expected(&r.stage),
            r.sockets
        );
        let mine: BTreeSet<u64> = r.sockets.iter().copied().collect();
        let shared: Vec<_> = mine.intersection(&caller_sockets).collect();
        assert!(
            shared.is_empty(),
            "worker {} holds caller-side sockets {shared:?}",
            r.who.pid
        );
        per_worker
            .entry(r.who.pid)
            .or_insert_with(|| (r.stage.clone(), mine));
    }
    let count = |stage: &str| per_worker.values().filter(|(s, _)| s == stage).count();
    assert_eq!(count("fds_c"), 1);
    assert!(count("fds_a") >= 1 && count("fds_b") >= 1, "{per_worker:?}");
    // No socket is held by two workers (each link end belongs to exactly one worker).
    let workers: Vec<_> = per_worker.iter().collect();
    for (i, (p1, (s1, set1))) in workers.iter().enumerate() {
        for (p2, (s2, set2)) in &workers[i + 1..] {
            let both: Vec<_> = set1.intersection(set2).collect();
            assert!(
                both.is_empty(),
                "worker {p1} ({s1}) and worker {p2} ({s2}) share sockets {both:?}"
            );
        }
    }
    // Supervisors: B's must hold nothing of the caller's sockets (A's caller-side ends
    // existed when it was forked), and A's and B's supervisors share nothing.
    let sup_of = |stage: &str| {
        reports
            .iter()
            .filter(|r| r.stage == stage)
            .map(|r| r.who.ppid)
            .collect::<BTreeSet<u32>>()
    };
    let (sup_a, sup_b) = (sup_of("fds_a"), sup_of("fds_c"));
    assert_eq!(sup_a.len(), 1, "one supervisor per pipeline: {sup_a:?}");
    assert_eq!(
        sup_a,
        sup_of("fds_b"),
        "both stages of A have the same supervisor"
    );
    assert_eq!(sup_b.len(), 1);
    assert_ne!(sup_a, sup_b, "one supervisor per pipeline");
    let sup_sockets = |pid: u32| {
        socket_inodes(&pid.to_string())
            .into_iter()
            .collect::<BTreeSet<u64>>()
    };
    let (sa, sb) = (
        sup_sockets(*sup_a.first().unwrap()),
        sup_sockets(*sup_b.first().unwrap()),
    );
    assert!(
        !sa.is_empty() && !sb.is_empty(),
        "could read the supervisors' /proc/<pid>/fd"
    );
    assert!(
        sb.is_disjoint(&caller_sockets),
        "B's supervisor holds caller-side sockets"
    );
    assert!(
        sa.is_disjoint(&caller_sockets),
        "A's supervisor holds caller-side sockets"
    );
    assert!(sa.is_disjoint(&sb), "the supervisors share sockets");

    let whos: Vec<Who> = reports.iter().map(|r| r.who).collect();
    drop(b);
    assert!(a.shutdown().expect("shutdown").is_graceful());
    pids_of(&whos)
}

// --- G2: a pipeline started on a thread that then exits keeps working --------------------

pub fn started_on_a_thread_that_exits() -> Vec<u32> {
    let running = thread::spawn(|| pipeline![add_n_who(1)].start().expect("start"))
        .join()
        .expect("starter thread");
    thread::sleep(Duration::from_millis(100));
    let mut whos = Vec::new();
    for x in 0..20u64 {
        let (y, who) = running.submit(x).expect("submit").wait().expect("item ok");
        assert_eq!(y, x + 1);
        whos.push(who);
    }
    assert!(running.shutdown().expect("shutdown").is_graceful());
    pids_of(&whos)
}

/// A named scenario: (name, watchdog seconds, body returning the pids it saw).
pub type Scenario = (&'static str, u64, fn() -> Vec<u32>);

// --- 16. a determiner's panic names the stage by its final name ---------------------------

fn double(x: u64) -> u64 {
    x * 2
}

fn panics_on_5(x: &u64) -> bool {
    if *x == 5 {
        panic!("determiner boom {x}");
    }
    true
}

/// A stage renamed after `.when(det)` (in a process and in a thread): the determiner's
/// panic fails its item only, under the stage's last name (FAULTS A21).
pub fn determiner_panic_names_the_stage() -> Vec<u32> {
    for process in [true, false] {
        let stage = Stage::map("first_name", double).when(panics_on_5);
        let stage = if process { stage.subprocess() } else { stage };
        let r: Vec<_> = Pipeline::new(stage.named("gated"))
            .run(0..10u64)
            .expect("start")
            .collect();
        for (x, r) in (0..10u64).zip(&r) {
            match r {
                Ok(y) => assert_eq!(*y, x * 2, "item {x} (process: {process})"),
                Err(e) => {
                    assert_eq!(x, 5, "only item 5 fails (process: {process}): {e}");
                    let text = e.to_string();
                    assert!(
                        text.contains("determiner of stage 'gated' panicked: determiner boom 5"),
                        "{text}"
                    );
                }
            }
        }
        assert!(r[5].is_err(), "item 5 fails (process: {process})");
    }
    Vec::new()
}

/// Every scenario with its name and hang bound (seconds), for `tests/fork.rs` and `tests/forkserver.rs`.
pub const SCENARIOS: &[Scenario] = &[
    ("atbu_basic_three_stage_work_item", 30, atbu_basic),
    ("atbu_mixed_twenty_stages", 30, atbu_mixed),
    ("hundred_subprocess_stages", 60, hundred_stages),
    (
        "mpipe_ordered_and_unordered_three_workers",
        30,
        mpipe_ordered_unordered,
    ),
    (
        "filter_and_emit_in_process_and_thread_stages",
        30,
        filter_and_emit,
    ),
    ("parallelpipe_range_add_n", 30, parallelpipe_add_n),
    ("item_error_fails_that_item_only", 30, item_errors),
    ("eight_threads_submit_to_one_running", 60, many_submitters),
    ("source_pipelines_with_results", 30, sources),
    (
        "drop_running_with_waiting_tickets",
        30,
        drop_running_with_waiters,
    ),
    (
        "every_item_has_exactly_one_outcome",
        60,
        exactly_one_outcome,
    ),
    ("stats_add_up", 30, stats_add_up),
    ("exec_children_inherit_no_sockets", 30, exec_sees_no_sockets),
    (
        "workers_hold_only_their_own_sockets",
        30,
        worker_socket_hygiene,
    ),
    (
        "started_on_a_thread_that_exits",
        30,
        started_on_a_thread_that_exits,
    ),
    (
        "determiner_panic_names_the_stage_by_its_last_name",
        30,
        determiner_panic_names_the_stage,
    ),
];
