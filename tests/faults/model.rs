//! K1. A model-based fault schedule: random shapes × random per-item faults × an optional
//! external `kill -9`, checked against a pure oracle.

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

#[derive(Clone, Debug)]
struct Case {
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

fn case_strategy(one_dying_stage: bool) -> impl Strategy<Value = Case> {
    let spec = (any::<bool>(), 1usize..=3, prop::bool::weighted(0.25)).prop_map(
        |(process, workers, unordered)| Spec {
            process,
            workers,
            unordered,
        },
    );
    (
        prop::collection::vec(spec, 1..=3),
        prop::collection::vec(prop::collection::vec(fault_strategy(), 3), N),
        prop::option::weighted(0.5, (0usize..N, 0usize..9)),
    )
        .prop_map(move |(stages, mut plan, kill)| {
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
            Case { stages, plan, kill }
        })
}

fn step(i: usize, v: u64) -> u64 {
    v.wrapping_mul(3).wrapping_add(i as u64 + 1)
}

#[derive(Debug, PartialEq)]
enum Want {
    Value(u64),
    Dropped,
    Fails(usize, F),
}

fn oracle(case: &Case, id: usize) -> Want {
    let mut v = id as u64;
    for (i, f) in case.plan[id].iter().enumerate() {
        match f {
            F::Ok => v = step(i, v),
            F::None => return Want::Dropped,
            other => return Want::Fails(i, *other),
        }
    }
    Want::Value(v)
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

fn build(case: &Case) -> Pipeline<(u64, u64), (u64, u64)> {
    share(PLAN, &case.plan);
    let stage = |i: usize| {
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
    };
    let mut p = Pipeline::new(stage(0));
    for i in 1..case.stages.len() {
        p = p.then(stage(i));
    }
    p
}

fn run_case(case: &Case) {
    if std::env::var_os("FAULTS_K1_VERBOSE").is_some() {
        eprintln!("k1 case: {case:?}");
    }
    let base = Baseline::now();
    let mut results = build(case)
        .run((0..N as u64).map(|id| (id, id)))
        .expect("start");
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
    let ordered = !case.stages.iter().any(|s| s.unordered);
    if ordered {
        assert!(
            outcomes.windows(2).all(|w| w[0].0 < w[1].0),
            "order kept: {:?}",
            outcomes.iter().map(|o| o.0).collect::<Vec<_>>()
        );
    }
    let mut by_id: BTreeMap<u64, Vec<Result<u64, Error>>> = BTreeMap::new();
    for (id, r) in outcomes {
        by_id.entry(id).or_default().push(r);
    }
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
            (Want::Value(v), [Ok(g)]) => assert_eq!(g, v, "item {id}"),
            (Want::Dropped, []) => {}
            (Want::Fails(i, f), [Err(e)]) => {
                assert_eq!(e.stage(), Some(NAMES[*i]), "item {id}: {e}");
                assert_eq!(e.item(), Some(id as u64), "{e}");
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

fn k01_full() {
    k01(false);
}

fn k01_one_dying_stage() {
    k01(true);
}

fn k01(one_dying_stage: bool) {
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
    let r = runner.run(&case_strategy(one_dying_stage), |case| {
        run_case(&case);
        Ok(())
    });
    let _ = std::panic::take_hook();
    std::panic::set_hook(prev);
    if let Err(e) = r {
        panic!("{e}");
    }
}
