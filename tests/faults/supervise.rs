//! C. Restarts and supervision.

use std::collections::BTreeSet;
use std::thread;
use std::time::{Duration, Instant};

use forkpipe::Worker;
use forkpipe::prelude::*;
use libtest_mimic::Trial;

use super::support::{
    by_item, expect_died, fault, my_pid, parent_pid, signal, ticket_number, wait_dead, wait_until,
};

pub fn trials(t: &mut Vec<Trial>) {
    t.push(fault("c01_poison_stage_gives_up", 30, c01_poison));
    // C2 (FAULTS: restarts = 100, no give-up): past the budget, a stage that still makes
    // progress (as many items finished as restarts in the window) keeps its workers.
    t.push(fault("c02_crash_rate_under_budget", 60, c02_rate));
    t.push(fault(
        "c04a_init_fails_at_start_process",
        30,
        c04a_init_err_process,
    ));
    t.push(fault(
        "c04b_init_fails_at_start_thread",
        30,
        c04b_init_err_thread,
    ));
    t.push(fault("c05a_init_panics_at_start", 30, c05a_init_panics));
    t.push(fault("c05b_init_aborts_at_start", 30, c05b_init_aborts));
    t.push(fault("c07_supervisor_sigkilled", 30, c07_supervisor_killed));
}

fn c01_poison() {
    const N: u64 = 1000;
    const WORKERS: usize = 2;
    let budget = (5 * WORKERS).max(10) as u64;
    let p = Pipeline::new(
        Stage::map("poison", |_x: u64| -> u64 { std::process::abort() })
            .subprocess()
            .workers(WORKERS),
    );
    let t0 = Instant::now();
    let mut results = p.run(0..N).expect("start");
    let all: Vec<_> = results.by_ref().collect();
    let took = t0.elapsed();
    let stats = results.stats();
    drop(results);
    let errors = by_item(&all, N, |v| *v);
    assert_eq!(errors.len() as u64, N, "every item fails");
    let mut died = 0;
    let mut gave_up = 0;
    let mut pids = BTreeSet::new();
    for (&i, e) in &errors {
        match e {
            Error::Died { .. } => {
                died += 1;
                pids.insert(expect_died(e, "poison", i, "killed by SIGABRT"));
            }
            Error::GaveUp {
                stage,
                item,
                restarts,
                cause,
                ..
            } => {
                gave_up += 1;
                assert_eq!((stage.as_str(), *item), ("poison", i));
                assert_eq!(*restarts as u64, budget, "{e}");
                assert_eq!(cause, "killed by SIGABRT", "{e}");
                let text = e.to_string();
                assert!(
                    text.starts_with(&format!(
                        "stage 'poison' gave up on item {i} after {budget} restarts in "
                    )) && text.ends_with(" s; last cause: killed by SIGABRT"),
                    "{text}"
                );
            }
            other => panic!("item {i}: {other:?}"),
        }
    }
    // Each death fails one item; the budget allows `budget` replacements, then each slot
    // dies once more before its stand-in takes over.
    assert_eq!(died, budget + WORKERS as u64, "deaths: {pids:?}");
    assert_eq!(pids.len() as u64, died, "each worker died once");
    assert_eq!(gave_up, N - died);
    assert!(
        took < Duration::from_secs(10),
        "no fork storm, fails fast: {took:?}"
    );
    // (stats.restarts counts every death reported by the supervisor, the last two included)
    assert_eq!(stats.stages[0].restarts, died, "{stats:?}");
    assert_eq!(stats.stages[0].failed, N, "{stats:?}");
}

fn rate_pipeline() -> Pipeline<u64, u64> {
    Pipeline::new(
        Stage::map("one_in_100", |x: u64| {
            if x % 100 == 50 {
                std::process::abort();
            }
            x
        })
        .subprocess()
        .workers(2),
    )
}

/// The strict FAULTS expectation: 100 crashes spread over 10,000 items never give up.
fn c02_rate() {
    const N: u64 = 10_000;
    let mut results = rate_pipeline().run(0..N).expect("start");
    let all: Vec<_> = results.by_ref().collect();
    let stats = results.stats();
    drop(results);
    let errors = by_item(&all, N, |v| *v);
    for (&i, e) in &errors {
        assert_eq!(i % 100, 50, "only the crashing items fail: {e}");
        expect_died(e, "one_in_100", i, "killed by SIGABRT");
    }
    assert_eq!(errors.len(), 100);
    assert_eq!(stats.stages[0].restarts, 100, "{stats:?}");
}

// --- C4 / C5 ----------------------------------------------------------------------------------

/// `init` of the third worker of case C04`CASE` to start returns `Err` (the workers count
/// themselves through marker files: they are separate processes). The case is a const
/// parameter, so that the init is a fn item (fork-server mode makes it again from its type).
fn third_fails<const CASE: char>() -> Result<u64, String> {
    let n = ticket_number(&format!("c04{CASE}"));
    if n == 2 {
        Err(format!("no connection for worker {n}"))
    } else {
        Ok(n as u64)
    }
}

fn c04a_init_err_process() {
    let stage = Stage::stateful(
        "db",
        third_fails::<'a'>,
        |x: u64, st: &mut u64, out: &mut Emit<u64>| -> Result<(), String> {
            out.emit(x + *st);
            Ok(())
        },
    )
    .subprocess()
    .workers(4);
    let e = Pipeline::new(stage)
        .run(0..10u64)
        .expect_err("init failed at start");
    let Error::Init {
        stage,
        worker: Worker::Process(pid),
        message,
    } = &e
    else {
        panic!("{e:?}");
    };
    assert_eq!(stage, "db");
    assert_eq!(message, "no connection for worker 2");
    assert_eq!(
        e.to_string(),
        format!(
            "could not start the pipeline: init of stage 'db' (worker pid {pid}) failed: no connection for worker 2"
        )
    );
    assert!(!super::support::alive(*pid));
}

fn c04b_init_err_thread() {
    let stage = Stage::stateful(
        "tdb",
        third_fails::<'b'>,
        |x: u64, st: &mut u64, out: &mut Emit<u64>| -> Result<(), String> {
            out.emit(x + *st);
            Ok(())
        },
    )
    .workers(4);
    let p = Pipeline::new(Stage::map("pre", |x: u64| x).subprocess()).then(stage);
    let e = p.run(0..10u64).expect_err("init failed at start");
    assert!(
        matches!(&e, Error::Init { stage, worker: Worker::Thread(_), message }
            if stage == "tdb" && message == "no connection for worker 2"),
        "{e:?}"
    );
}

fn c05a_init_panics() {
    let stage = Stage::stateful(
        "panicky_init",
        || -> Result<u64, String> { panic!("cannot connect") },
        |x: u64, _: &mut u64, out: &mut Emit<u64>| -> Result<(), String> {
            out.emit(x);
            Ok(())
        },
    )
    .subprocess()
    .workers(2);
    let e = Pipeline::new(stage)
        .run(0..10u64)
        .expect_err("init panicked");
    assert!(
        matches!(&e, Error::Init { stage, worker: Worker::Process(_), message }
            if stage == "panicky_init" && message.contains("panicked: cannot connect")),
        "{e:?}"
    );
}

fn c05b_init_aborts() {
    let stage = Stage::stateful(
        "aborting_init",
        || -> Result<u64, String> { std::process::abort() },
        |x: u64, _: &mut u64, out: &mut Emit<u64>| -> Result<(), String> {
            out.emit(x);
            Ok(())
        },
    )
    .subprocess()
    .workers(3);
    let e = Pipeline::new(stage)
        .run(0..10u64)
        .expect_err("init aborted");
    assert!(
        matches!(&e, Error::Init { stage, worker: Worker::Process(_), message }
            if stage == "aborting_init" && message.contains("killed by SIGABRT")),
        "{e:?}"
    );
}

// --- C7 ---------------------------------------------------------------------------------------

fn c07_supervisor_killed() {
    let running = Pipeline::new(
        Stage::map("orphaned", |x: u64| {
            if x >= 100 {
                thread::sleep(Duration::from_secs(30));
            }
            (x, my_pid(), parent_pid())
        })
        .subprocess()
        .workers(2),
    )
    .start()
    .expect("start");
    let mut workers = BTreeSet::new();
    let mut sup = 0;
    for x in 0..20u64 {
        let (_, w, s) = running.submit(x).unwrap().wait().unwrap();
        workers.insert(w);
        sup = s;
    }
    assert_ne!(sup, my_pid());
    let outstanding: Vec<_> = (100..106u64).map(|x| running.submit(x).unwrap()).collect();
    thread::sleep(Duration::from_millis(200));
    signal(sup, libc::SIGKILL);
    // The workers follow their supervisor (PR_SET_PDEATHSIG).
    let mut all: Vec<u32> = workers.iter().copied().collect();
    all.push(sup);
    wait_dead(&all, Duration::from_secs(3)).expect("workers gone");
    // Every outstanding item fails, promptly.
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        for t in outstanding {
            let seq = t.item();
            let _ = tx.send((seq, t.wait()));
        }
    });
    for _ in 0..6 {
        let (seq, r) = rx
            .recv_timeout(Duration::from_secs(5))
            .expect("outstanding items resolve without a hang");
        let e = r.expect_err("an outstanding item fails");
        assert_eq!(e.item(), Some(seq), "{e}");
        eprintln!("c07: item {seq}: {e}");
    }
    // Later submits fail: `submit` returns `Err`, or (at worst) a ticket that fails at once.
    let mut accepted = 0;
    let refused = wait_until(Duration::from_secs(3), || match running.submit(7) {
        Err(e) => {
            eprintln!("c07: a submit after the supervisor's death: {e}");
            true
        }
        Ok(t) => {
            accepted += 1;
            let (tx, rx) = std::sync::mpsc::channel();
            thread::spawn(move || {
                let _ = tx.send(t.wait());
            });
            let r = rx
                .recv_timeout(Duration::from_secs(3))
                .expect("a ticket taken after the supervisor's death hangs");
            assert!(r.is_err(), "an item succeeded without a supervisor: {r:?}");
            false
        }
    });
    assert!(
        refused,
        "submits keep being accepted after the supervisor died ({accepted} accepted)"
    );
    drop(running);
}
