//! K1. A model-based fault schedule: random shapes (chains; a fan-out of two branches; a
//! fan-in of two sources before a chain) × random per-item faults × an optional external
//! `kill -9`, checked against a pure oracle.

use std::collections::BTreeMap;
use std::time::Duration;

use forkpipe::prelude::*;
use libtest_mimic::Trial;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde::{Deserialize, Serialize};

use super::common::{self, Baseline};
use super::support::{fault, my_pid, share, shared, signal, wait_until};

pub fn trials(t: &mut Vec<Trial>) {
    t.push(fault("k01_model_based_fault_schedule", 60, k01_full));
    t.push(fault(
        "k01b_model_based_fault_schedule_deaths_in_one_process_stage",
        60,
        k01_one_dying_stage,
    ));
    t.push(fault(
        "k01f_model_based_fault_schedule_fan_out_and_fan_in",
        90,
        k01_shapes,
    ));
    t.push(fault(
        "k01r_one_crash_in_each_of_two_chained_process_stages",
        30,
        k01r_two_stage_crash,
    ));
}

/// The minimal case K1 found: `s0 | s1` run over `0..10`, both process stages with one
/// worker, item 3 aborts in s0 and item 7 aborts in s1: the results used to never end (a
/// replacement acked with a stale epoch). Runs in a victim process so that a hang leaves
/// nothing behind in the test process.
fn k01r_two_stage_crash() {
    let mut v = super::support::Victim::spawn("k1r");
    let n = v.expect_line("COUNT", Duration::from_secs(10));
    assert_eq!(n, "10");
    assert_eq!(v.wait(Duration::from_secs(5)).code(), Some(0));
}

/// Aborts on item `AT` (a const parameter, so that a stage of it is a fn item).
fn abort_at<const AT: u64>(x: u64) -> u64 {
    if x == AT {
        std::process::abort();
    }
    x
}

/// The victim side of [`k01r_two_stage_crash`].
pub fn k01r_victim() -> usize {
    let p = Pipeline::new(Stage::map("s0", abort_at::<3>).subprocess())
        .then(Stage::map("s1", abort_at::<7>).subprocess());
    p.run(0..10u64).expect("start").count()
}

const N: usize = 24;
const NAMES: [&str; 3] = ["s0", "s1", "s2"];
/// Crash faults allowed per stage (well under the restart budget of 10).
const MAX_CRASHES: usize = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum F {
    Ok,
    Err,
    None,
    Panic,
    Abort,
    Exit3,
}

#[derive(Clone, Debug)]
struct Spec {
    process: bool,
    workers: usize,
    unordered: bool,
}

/// How the case's stages are put together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    /// `s0 | s1 | s2` (one to three stages).
    Chain,
    /// `s0 | (s1, s2)`: every item of s0 goes to both branches.
    FanOut,
    /// `(evens, odds) | s0 | ..`: two sources merged.
    FanIn,
}

#[derive(Clone, Debug)]
struct Case {
    shape: Shape,
    stages: Vec<Spec>,
    /// `plan[item][stage]`.
    plan: Vec<Vec<F>>,
    /// After this many results, `kill -9` the worker with this index (any process stage).
    kill: Option<(usize, usize)>,
}

fn fault_strategy() -> impl Strategy<Value = F> {
    prop_oneof![
        14 => Just(F::Ok),
        2 => Just(F::Err),
        2 => Just(F::None),
        1 => Just(F::Panic),
        1 => Just(F::Abort),
        1 => Just(F::Exit3),
    ]
}

/// Chains only, or (`shapes`) fan-outs and fan-ins as well.
fn shape_strategy(shapes: bool) -> impl Strategy<Value = Shape> {
    if shapes {
        prop_oneof![Just(Shape::FanOut), Just(Shape::FanIn)].boxed()
    } else {
        Just(Shape::Chain).boxed()
    }
}

fn case_strategy(one_dying_stage: bool, shapes: bool) -> impl Strategy<Value = Case> {
    let spec = (any::<bool>(), 1usize..=3, prop::bool::weighted(0.25)).prop_map(
        |(process, workers, unordered)| Spec {
            process,
            workers,
            unordered,
        },
    );
    (
        shape_strategy(shapes),
        prop::collection::vec(spec, 1..=3),
        prop::collection::vec(prop::collection::vec(fault_strategy(), 3), N),
        prop::option::weighted(0.5, (0usize..N, 0usize..9)),
    )
        .prop_map(move |(shape, mut stages, mut plan, kill)| {
            if shape == Shape::FanOut {
                while stages.len() < 3 {
                    stages.push(stages[0].clone());
                }
            }
            // Crashes only in process stages (in a thread stage they would take the test
            // process down: FAULTS A20), and a few per stage.
            for (s, spec) in stages.iter().enumerate() {
                let mut crashes = 0;
                for row in plan.iter_mut() {
                    if matches!(row[s], F::Abort | F::Exit3) {
                        crashes += 1;
                        if !spec.process {
                            row[s] = F::Panic;
                        } else if crashes > MAX_CRASHES {
                            row[s] = F::Ok;
                        }
                    }
                }
            }
            for row in plan.iter_mut() {
                row.truncate(stages.len());
            }
            let mut kill = kill;
            if one_dying_stage {
                // Deaths only in the first process stage; no kill if there are several.
                let procs: Vec<usize> = (0..stages.len()).filter(|&i| stages[i].process).collect();
                for row in plan.iter_mut() {
                    for &i in procs.iter().skip(1) {
                        if matches!(row[i], F::Abort | F::Exit3) {
                            row[i] = F::Panic;
                        }
                    }
                }
                if procs.len() > 1 {
                    kill = None;
                }
            }
            Case {
                shape,
                stages,
                plan,
                kill,
            }
        })
}

fn step(i: usize, v: u64) -> u64 {
    v.wrapping_mul(3).wrapping_add(i as u64 + 1)
}

#[derive(Debug, PartialEq)]
enum Want {
    /// The item's outputs (none: dropped).
    Values(Vec<u64>),
    Fails(usize, F),
}

fn oracle(case: &Case, id: usize) -> Want {
    let row = &case.plan[id];
    let mut v = id as u64;
    if case.shape == Shape::FanOut {
        match row[0] {
            F::Ok => v = step(0, v),
            F::None => return Want::Values(Vec::new()),
            other => return Want::Fails(0, other),
        }
        // The branches' outputs in branch order, or the first failing branch's error.
        let mut outs = Vec::new();
        for (i, f) in row.iter().enumerate().skip(1) {
            match *f {
                F::Ok => outs.push(step(i, v)),
                F::None => {}
                other => return Want::Fails(i, other),
            }
        }
        return Want::Values(outs);
    }
    for (i, f) in row.iter().enumerate() {
        match f {
            F::Ok => v = step(i, v),
            F::None => return Want::Values(Vec::new()),
            other => return Want::Fails(i, *other),
        }
    }
    Want::Values(vec![v])
}

/// Where [`build`] leaves the plan of the case for its stages.
const PLAN: &str = "k01.plan";

/// Stage `I` of a case: does what the case's plan says for this item. The plan comes from
/// the run directory ([`build`] shares it), so that the stage is a fn item, which
/// fork-server mode makes again from its type.
fn planned<const I: usize>((id, v): (u64, u64), out: &mut Emit<(u64, u64)>) -> Result<(), String> {
    let plan: Vec<Vec<F>> = shared(PLAN);
    match plan[id as usize][I] {
        F::Ok => {
            out.emit((id, step(I, v)));
            Ok(())
        }
        F::Err => Err(format!("k1 err {I} {id}")),
        F::None => Ok(()),
        F::Panic => panic!("k1 panic {I} {id}"),
        F::Abort => std::process::abort(),
        F::Exit3 => std::process::exit(3),
    }
}

/// Starts the case's pipeline over the items `(id, id)`, `id` in `0..N`.
fn start(case: &Case) -> forkpipe::Results<(u64, u64)> {
    share(PLAN, &case.plan);
    match case.shape {
        Shape::Chain => chain(case, 0).run((0..N as u64).map(|id| (id, id))),
        Shape::FanOut => chain(case, 0)
            .fan_out([branch(case, 1), branch(case, 2)])
            .run((0..N as u64).map(|id| (id, id))),
        Shape::FanIn => {
            let evens = Source::new("evens", || (0..N as u64).step_by(2).map(|id| (id, id)));
            let odds = Source::new("odds", || (1..N as u64).step_by(2).map(|id| (id, id)));
            let mut p = Pipeline::merge([evens, odds]).then(stage(case, 0));
            for i in 1..case.stages.len() {
                p = p.then(stage(case, i));
            }
            p.results()
        }
    }
    .expect("start")
}

/// Stage `i` of the case, alone: a branch of its fan-out.
fn branch(case: &Case, i: usize) -> Pipeline<(u64, u64), (u64, u64)> {
    Pipeline::new(stage(case, i))
}

/// The case's stages from `from` on as a chain (only `from` itself for a fan-out, whose
/// other stages are its branches).
fn chain(case: &Case, from: usize) -> Pipeline<(u64, u64), (u64, u64)> {
    let mut p = Pipeline::new(stage(case, from));
    if case.shape == Shape::Chain {
        for i in from + 1..case.stages.len() {
            p = p.then(stage(case, i));
        }
    }
    p
}

/// Stage `i` of the case, as its spec says.
fn stage(case: &Case, i: usize) -> Stage<(u64, u64), (u64, u64)> {
    let spec = &case.stages[i];
    let mut s = match i {
        0 => Stage::try_emit(NAMES[0], planned::<0>),
        1 => Stage::try_emit(NAMES[1], planned::<1>),
        _ => Stage::try_emit(NAMES[2], planned::<2>),
    }
    .workers(spec.workers);
    if spec.unordered {
        s = s.unordered();
    }
    if spec.process {
        s = s.subprocess();
    }
    s
}

fn run_case(case: &Case) {
    if std::env::var_os("FAULTS_K1_VERBOSE").is_some() {
        eprintln!("k1 case: {case:?}");
    }
    let base = Baseline::now();
    let mut results = start(case);
    let mut outcomes: Vec<(u64, Result<u64, Error>)> = Vec::new();
    let mut killed = None;
    loop {
        if let (Some((after, which)), None) = (case.kill, killed)
            && outcomes.len() >= after
        {
            let me = my_pid();
            let workers: Vec<u32> = common::descendants_of_me()
                .into_iter()
                .filter(|&(_, ppid, s)| ppid != me && s != 'Z')
                .map(|(pid, _, _)| pid)
                .collect();
            if !workers.is_empty() {
                let pid = workers[which % workers.len()];
                signal(pid, libc::SIGKILL);
                killed = Some(pid);
            } else {
                killed = Some(0);
            }
        }
        let Some(r) = results.next() else { break };
        outcomes.push(match r {
            Ok((id, v)) => (id, Ok(v)),
            Err(e) => (e.item().expect("an item error names its item"), Err(e)),
        });
    }
    drop(results);
    check_order(case, &outcomes);
    let mut by_id = match case.shape {
        Shape::FanIn => by_source_id(case, outcomes),
        _ => {
            let mut by_id: BTreeMap<u64, Vec<Result<u64, Error>>> = BTreeMap::new();
            for (id, r) in outcomes {
                by_id.entry(id).or_default().push(r);
            }
            by_id
        }
    };
    let mut kill_failures = 0;
    for id in 0..N {
        let got = by_id.remove(&(id as u64)).unwrap_or_default();
        let want = oracle(case, id);
        // An external kill may fail the one item its worker was running, whatever it was.
        if let [Err(e @ Error::Died { cause, .. })] = got.as_slice()
            && cause.contains("killed by SIGKILL")
            && killed.is_some_and(|p| p != 0)
        {
            let i = NAMES
                .iter()
                .position(|n| Some(*n) == e.stage())
                .expect("stage");
            assert!(case.stages[i].process, "{e}");
            kill_failures += 1;
            continue;
        }
        match (&want, got.as_slice()) {
            (Want::Values(vs), oks) if oks.iter().all(Result::is_ok) => {
                let oks: Vec<u64> = oks.iter().map(|r| *r.as_ref().expect("ok")).collect();
                assert_eq!(&oks, vs, "item {id}: its outputs, in branch order");
            }
            (Want::Fails(i, f), [Err(e)]) => {
                assert_eq!(e.stage(), Some(NAMES[*i]), "item {id}: {e}");
                if case.shape != Shape::FanIn {
                    // (A fan-in numbers items as they arrive, not by their id.)
                    assert_eq!(e.item(), Some(id as u64), "{e}");
                }
                let ok = match f {
                    F::Err => {
                        matches!(e, Error::Failed { message, .. } if *message == format!("k1 err {i} {id}"))
                    }
                    F::Panic => {
                        matches!(e, Error::Panicked { message, .. } if message.starts_with(&format!("k1 panic {i} {id}")))
                    }
                    F::Abort => {
                        matches!(e, Error::Died { cause, .. } if cause == "killed by SIGABRT")
                    }
                    F::Exit3 => {
                        matches!(e, Error::Died { cause, .. } if cause == "exited with code 3 before answering")
                    }
                    _ => false,
                };
                assert!(ok, "item {id}: expected {f:?} at stage {i}, got {e:?}");
            }
            _ => panic!("item {id}: expected {want:?}, got {got:?} (exactly one outcome)"),
        }
    }
    assert!(by_id.is_empty(), "outcomes of unknown items: {by_id:?}");
    assert!(
        kill_failures <= 1,
        "one kill fails at most the item it was running"
    );
    let clean = wait_until(Duration::from_secs(2), || base.problems(true).is_empty());
    assert!(clean, "not clean: {:?}", base.problems(true));
}

/// Order is kept unless a stage is unordered: by id for a chain and a fan-out (whose item's
/// outputs come together), within each source for a fan-in.
fn check_order(case: &Case, outcomes: &[(u64, Result<u64, Error>)]) {
    if case.stages.iter().any(|s| s.unordered) {
        return;
    }
    let ids = |parity: Option<u64>| -> Vec<u64> {
        outcomes
            .iter()
            .filter(|(_, r)| case.shape != Shape::FanIn || r.is_ok())
            .map(|o| o.0)
            .filter(|id| parity.is_none_or(|p| id % 2 == p))
            .collect()
    };
    let sorted = |v: &[u64]| match case.shape {
        Shape::Chain => v.windows(2).all(|w| w[0] < w[1]),
        _ => v.windows(2).all(|w| w[0] <= w[1]),
    };
    match case.shape {
        Shape::FanIn => {
            for p in [0, 1] {
                assert!(
                    sorted(&ids(Some(p))),
                    "order within a source: {:?}",
                    ids(Some(p))
                );
            }
        }
        _ => assert!(sorted(&ids(None)), "order kept: {:?}", ids(None)),
    }
}

/// A fan-in's outcomes by item id. Its numbers are arrival numbers, so an error is the id's
/// by its message (`k1 err I ID`, `k1 panic I ID`), and a death is given to an item the
/// oracle expects to die there; a death left over (an external kill's) to an item with no
/// outcome. Every outcome has its own number.
fn by_source_id(
    case: &Case,
    outcomes: Vec<(u64, Result<u64, Error>)>,
) -> BTreeMap<u64, Vec<Result<u64, Error>>> {
    let seqs: std::collections::BTreeSet<u64> = outcomes
        .iter()
        .filter_map(|(_, r)| r.as_ref().err().and_then(Error::item))
        .collect();
    let errors = outcomes.iter().filter(|(_, r)| r.is_err()).count();
    assert_eq!(seqs.len(), errors, "every failed item has its own number");
    let mut by_id: BTreeMap<u64, Vec<Result<u64, Error>>> = BTreeMap::new();
    let mut deaths = Vec::new();
    for (seq, r) in outcomes {
        let id = match &r {
            Ok(_) => Some(seq),
            Err(Error::Failed { message, .. } | Error::Panicked { message, .. }) => message
                .split_whitespace()
                .nth(3)
                .and_then(|t| t.parse().ok()),
            Err(_) => None,
        };
        match id {
            Some(id) => by_id.entry(id).or_default().push(r),
            None => deaths.push(r),
        }
    }
    for id in 0..N as u64 {
        if by_id.contains_key(&id) {
            continue;
        }
        if let Want::Fails(i, f @ (F::Abort | F::Exit3)) = oracle(case, id as usize) {
            let cause = if f == F::Abort {
                "killed by SIGABRT"
            } else {
                "exited with code 3"
            };
            if let Some(k) = deaths.iter().position(|d| {
                matches!(d, Err(e @ Error::Died { cause: c, .. }) if e.stage() == Some(NAMES[i]) && c.starts_with(cause))
            }) {
                by_id.insert(id, vec![deaths.remove(k)]);
            }
        }
    }
    for d in deaths {
        // (An item with no outcome that should have one; else one the kill took before a
        // stage would have dropped it.)
        let missing = |dropped: bool| {
            (0..N as u64).find(|id| {
                !by_id.contains_key(id)
                    && (dropped || oracle(case, *id as usize) != Want::Values(Vec::new()))
            })
        };
        let id = missing(false)
            .or_else(|| missing(true))
            .unwrap_or_else(|| panic!("a death for no item: {d:?}"));
        by_id.insert(id, vec![d]);
    }
    by_id
}

fn k01_full() {
    k01(false, false);
}

fn k01_one_dying_stage() {
    k01(true, false);
}

fn k01_shapes() {
    k01(false, true);
}

fn k01(one_dying_stage: bool, shapes: bool) {
    // Panics of thread stages would print through the default hook: keep the log readable.
    let prev = std::panic::take_hook();
    std::panic::set_hook(Box::new(|info| {
        let quiet = info
            .payload()
            .downcast_ref::<String>()
            .is_some_and(|s| s.starts_with("k1 panic"));
        if !quiet {
            eprintln!("{info}");
        }
    }));
    let mut runner = TestRunner::new(Config {
        cases: 24,
        max_shrink_iters: 16,
        failure_persistence: None,
        ..Config::default()
    });
    let r = runner.run(&case_strategy(one_dying_stage, shapes), |case| {
        run_case(&case);
        Ok(())
    });
    let _ = std::panic::take_hook();
    std::panic::set_hook(prev);
    if let Err(e) = r {
        panic!("{e}");
    }
}
