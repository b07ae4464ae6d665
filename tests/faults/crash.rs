//! A. A worker dies while holding an item.

use std::collections::BTreeSet;
use std::thread;
use std::time::Duration;

use forkpipe::Worker;
use forkpipe::prelude::*;
use libtest_mimic::Trial;

use super::support::{
    ABORT, FINE, Marked, by_item, collect, default_action, expect_died, fault, my_pid,
    only_one_death, run_dir, signal, wait_until,
};

pub fn trials(t: &mut Vec<Trial>) {
    t.push(fault("a01_panic_fails_that_item_only", 30, a01_panic));
    t.push(fault("a03_abort_killed_by_sigabrt", 30, a03_abort));
    t.push(fault("a04a_raised_sigsegv", 30, a04a_raised_sigsegv));
    t.push(fault("a04b_real_null_write_sigsegv", 30, a04b_null_write));
    t.push(fault("a05_stack_overflow_sigabrt", 30, a05_stack_overflow));
    t.push(fault("a06_exit_3_before_answering", 30, a06_exit_3));
    t.push(fault("a07a_exit_0_is_a_failure", 30, a07a_exit_0));
    t.push(fault("a07b_libc_exit_0_is_a_failure", 30, a07b_libc_exit_0));
    t.push(fault(
        "a08_external_sigkill_mid_stream",
        30,
        a08_sigkill_mid_stream,
    ));
    t.push(fault(
        "a09a_sigterm_to_a_worker_is_a_crash",
        30,
        a09a_sigterm,
    ));
    t.push(fault("a09b_sighup_to_a_worker_is_a_crash", 30, a09b_sighup));
    t.push(fault(
        "a11_all_four_workers_killed_at_once",
        30,
        a11_kill_all_four,
    ));
    t.push(fault("a12_idle_worker_killed", 30, a12_idle_worker_killed));
    t.push(fault(
        "a13a_result_written_then_death_run",
        30,
        a13a_result_then_death_run,
    ));
    t.push(fault(
        "a13b_result_flushed_then_death_submit",
        30,
        a13b_result_then_death_submit,
    ));
    t.push(fault("a14_bystanders_are_requeued", 30, a14_bystanders));
    // Completed-but-unflushed outputs are lost with the worker and their items run again.
    t.push(fault(
        "a14b_completed_items_not_rerun",
        30,
        a14b_completed_items_not_rerun,
    ));
    t.push(fault(
        "a15_death_while_decoding_the_input",
        30,
        a15_death_decoding,
    ));
    t.push(fault(
        "a16_death_while_encoding_the_output",
        30,
        a16_death_encoding,
    ));
}

/// A process stage (2 workers) that calls `die` on item `AT` and otherwise returns
/// `(x, pid)`; asserts: item `AT` fails with `cause`, every other item is `Ok` in order,
/// one restart. (`die` is a closure that captures nothing, so the stage's closure is
/// zero-sized too: fork-server mode makes it again from its type.)
fn crash_case<const AT: u64>(
    name: &'static str,
    die: impl Fn() + Send + Sync + 'static,
    cause: &str,
) {
    let p = Pipeline::new(
        Stage::map(name, move |x: u64| {
            if x == AT {
                die();
            }
            (x, my_pid())
        })
        .subprocess()
        .workers(2),
    );
    only_one_death(&collect(p, 40), 40, name, AT, cause);
}

// --- A1 ---------------------------------------------------------------------------------

#[stage(subprocess, workers = 2)]
fn boom(x: u64) -> (u64, u32) {
    if x == 23 {
        panic!("boom {x}");
    }
    (x, my_pid())
}

fn a01_panic() {
    let (all, stats) = collect(pipeline![boom], 60);
    let errors = by_item(&all, 60, |v| v.0);
    assert_eq!(errors.len(), 1, "{errors:?}");
    let e = &errors[&23];
    let Error::Panicked {
        stage,
        item,
        worker: Worker::Process(pid),
        message,
    } = e
    else {
        panic!("item 23 panicked: {e:?}");
    };
    assert_eq!((stage.as_str(), *item), ("boom", 23));
    assert!(message.starts_with("boom 23 (at "), "{message}");
    assert!(message.contains("crash.rs:"), "panic location: {message}");
    assert!(
        e.to_string().starts_with(&format!(
            "stage 'boom' (worker pid {pid}) panicked on item 23: boom 23"
        )),
        "{e}"
    );
    // The worker keeps serving (no init state): no restart, and it answers later items.
    assert_eq!(stats.stages[0].restarts, 0, "{stats:?}");
    assert_eq!(stats.stages[0].failed, 1, "{stats:?}");
    assert!(
        all[24..]
            .iter()
            .any(|r| r.as_ref().is_ok_and(|v| v.1 == *pid)),
        "the worker that panicked keeps serving"
    );
}

// --- A3–A7 -------------------------------------------------------------------------------

fn a03_abort() {
    crash_case::<13>("aborter", || std::process::abort(), "killed by SIGABRT");
}

fn a04a_raised_sigsegv() {
    crash_case::<7>(
        "raiser",
        || {
            // Rust's runtime handles SIGSEGV (stack-overflow detection): for a fault outside
            // a guard page its handler restores the default action and returns, so the
            // first raised SIGSEGV is survived; the second one kills, as in a C program.
            for _ in 0..2 {
                // SAFETY: raising a signal in the worker process is the point of the test.
                unsafe { libc::raise(libc::SIGSEGV) };
            }
        },
        "killed by SIGSEGV",
    );
}

fn a04b_null_write() {
    crash_case::<7>(
        "scribbler",
        || {
            // SAFETY: not safe at all — a real invalid write in the worker, on purpose.
            unsafe { std::ptr::null_mut::<u8>().write_volatile(1) };
        },
        "killed by SIGSEGV",
    );
}

#[allow(unconditional_recursion)]
fn recurse(n: u64) -> u64 {
    let buf = std::hint::black_box([n; 64]);
    recurse(n + 1).wrapping_add(buf[3])
}

fn a05_stack_overflow() {
    crash_case::<5>(
        "recursor",
        || {
            std::hint::black_box(recurse(0));
        },
        "killed by SIGABRT",
    );
}

fn a06_exit_3() {
    crash_case::<19>(
        "exiter",
        || std::process::exit(3),
        "exited with code 3 before answering",
    );
}

fn a07a_exit_0() {
    crash_case::<19>(
        "quitter",
        || std::process::exit(0),
        "exited with code 0 before answering",
    );
}

fn a07b_libc_exit_0() {
    crash_case::<19>(
        "underscore_exit",
        || {
            // SAFETY: ends the worker process at once, on purpose.
            unsafe { libc::_exit(0) }
        },
        "exited with code 0 before answering",
    );
}

// --- A8 ------------------------------------------------------------------------------------

fn a08_sigkill_mid_stream() {
    const N: u64 = 600;
    const MARK: &str = "a08.pid";
    let p = Pipeline::new(
        Stage::map("steady", |x: u64| {
            if x == 100 {
                // Say who runs item 100, then stay in it: the kill below lands mid-item
                // (a kill between two items would, rightly, fail nothing).
                let tmp = run_dir().join("a08.pid.tmp");
                std::fs::write(&tmp, my_pid().to_string()).expect("write the mark");
                std::fs::rename(&tmp, run_dir().join(MARK)).expect("publish the mark");
                thread::sleep(Duration::from_secs(5));
            }
            thread::sleep(Duration::from_millis(2));
            (x, my_pid())
        })
        .subprocess()
        .workers(2),
    );
    let mut results = p.run(0..N).expect("start");
    let mark = run_dir().join(MARK);
    assert!(wait_until(Duration::from_secs(10), || mark.exists()));
    let killed: u32 = std::fs::read_to_string(&mark)
        .expect("read the mark")
        .parse()
        .expect("a pid");
    signal(killed, libc::SIGKILL);
    let all: Vec<_> = results.by_ref().collect();
    let stats = results.stats();
    drop(results);
    let errors = by_item(&all, N, |v| v.0);
    // Only the item the worker was running fails (the others it held are requeued).
    assert_eq!(
        errors.len(),
        1,
        "exactly the running item fails: {errors:?}"
    );
    for (&i, e) in &errors {
        assert_eq!(expect_died(e, "steady", i, "killed by SIGKILL"), killed);
    }
    let pids: BTreeSet<u32> = all
        .iter()
        .filter_map(|r| r.as_ref().ok().map(|v| v.1))
        .collect();
    assert!(pids.len() >= 2, "the replacement served items: {pids:?}");
    assert_eq!(stats.stages[0].restarts, 1, "{stats:?}");
    assert_eq!(stats.stages[0].failed, 1, "{stats:?}");
}

// --- A9 ------------------------------------------------------------------------------------

/// Signal `SIG` (a const parameter: the stage's closure captures nothing) to a worker
/// busy with item 1; the item fails with `cause`.
fn signal_busy_worker<const SIG: i32>(cause: &str) {
    let running = Pipeline::new(
        Stage::map("sleeper", |x: u64| {
            // The worker inherits the caller's dispositions (under `nohup`, SIGHUP ignored):
            // item 0, awaited before `SIG` is sent, puts it back at its default (death).
            default_action(&[SIG]);
            if x == 1 {
                thread::sleep(Duration::from_secs(30));
            }
            (x, my_pid())
        })
        .subprocess(),
    )
    .start()
    .expect("start");
    let (_, pid) = running.submit(0).expect("submit").wait().expect("item 0");
    let t = running.submit(1).expect("submit");
    thread::sleep(Duration::from_millis(300));
    signal(pid, SIG);
    let e = t
        .wait()
        .expect_err("item 1 fails: its worker was signalled");
    assert_eq!(expect_died(&e, "sleeper", 1, cause), pid);
    let (x, pid2) = running.submit(2).expect("submit").wait().expect("item 2");
    assert_eq!(x, 2);
    assert_ne!(pid2, pid, "a replacement serves item 2");
    assert!(wait_until(Duration::from_secs(2), || running
        .stats()
        .stages[0]
        .restarts
        == 1));
    let report = running.shutdown().expect("shutdown");
    assert!(report.is_graceful(), "{report:?}");
    assert_eq!(report.stats().stages[0].failed, 1);
}

fn a09a_sigterm() {
    signal_busy_worker::<{ libc::SIGTERM }>("killed by SIGTERM");
}

fn a09b_sighup() {
    signal_busy_worker::<{ libc::SIGHUP }>("killed by SIGHUP");
}

// --- A11 -----------------------------------------------------------------------------------

fn a11_kill_all_four() {
    let running = Pipeline::new(
        Stage::map("four", |x: u64| {
            if (1000..2000).contains(&x) {
                // Say "this worker is in a slow item" (see the wait below).
                let _ = std::fs::File::create(run_dir().join(format!("a11.{}", my_pid())));
                thread::sleep(Duration::from_millis(1000));
            }
            (x, my_pid())
        })
        .subprocess()
        .workers(4),
    )
    .start()
    .expect("start");
    let mut old = BTreeSet::new();
    for round in 0..50 {
        let ts: Vec<_> = (0..8)
            .map(|i| running.submit(round * 8 + i).expect("submit"))
            .collect();
        for t in ts {
            old.insert(t.wait().expect("quick item").1);
        }
        if old.len() == 4 {
            break;
        }
    }
    assert_eq!(old.len(), 4, "four workers answered: {old:?}");
    let slow: Vec<_> = (1000..1012u64)
        .map(|x| (x, running.submit(x).expect("submit")))
        .collect();
    // Kill only once every worker is inside a slow item (each takes 1 s).
    assert!(
        wait_until(Duration::from_secs(5), || old
            .iter()
            .all(|pid| run_dir().join(format!("a11.{pid}")).exists())),
        "all four workers took a slow item"
    );
    for &pid in &old {
        signal(pid, libc::SIGKILL);
    }
    let mut failed_workers = BTreeSet::new();
    for (x, t) in slow {
        let seq = t.item();
        match t.wait() {
            Ok((y, pid)) => {
                assert_eq!(y, x);
                assert!(!old.contains(&pid), "item {x} answered by a dead worker");
            }
            Err(e) => {
                let pid = expect_died(&e, "four", seq, "killed by SIGKILL");
                assert!(old.contains(&pid), "{e}");
                assert!(failed_workers.insert(pid), "two failures on worker {pid}");
            }
        }
    }
    assert_eq!(
        failed_workers, old,
        "each of the 4 workers was running one item when killed"
    );
    assert!(wait_until(Duration::from_secs(3), || running
        .stats()
        .stages[0]
        .restarts
        == 4));
    let ts: Vec<_> = (0..100u64)
        .map(|x| (x, running.submit(x).expect("submit")))
        .collect();
    for (x, t) in ts {
        let (y, pid) = t.wait().expect("after the replacements every item is ok");
        assert_eq!(y, x);
        assert!(!old.contains(&pid));
    }
    let report = running.shutdown().expect("shutdown");
    assert!(report.is_graceful());
    assert_eq!(report.stats().stages[0].restarts, 4);
    assert_eq!(report.stats().stages[0].failed, 4);
}

// --- A12 -----------------------------------------------------------------------------------

fn a12_idle_worker_killed() {
    let running = Pipeline::new(
        Stage::map("idle", |x: u64| (x, my_pid()))
            .subprocess()
            .workers(2),
    )
    .start()
    .expect("start");
    let mut pids = BTreeSet::new();
    for round in 0..50u64 {
        let ts: Vec<_> = (0..4)
            .map(|i| running.submit(round * 4 + i).unwrap())
            .collect();
        for t in ts {
            pids.insert(t.wait().expect("ok").1);
        }
        if pids.len() == 2 {
            break;
        }
    }
    assert_eq!(pids.len(), 2);
    let victim = *pids.first().unwrap();
    signal(victim, libc::SIGKILL);
    assert!(
        wait_until(Duration::from_secs(3), || running.stats().stages[0]
            .restarts
            == 1),
        "the idle worker's death is noticed: {:?}",
        running.stats()
    );
    let ts: Vec<_> = (0..100u64)
        .map(|x| (x, running.submit(x).unwrap()))
        .collect();
    for (x, t) in ts {
        let (y, pid) = t.wait().expect("no item fails: the dead worker held none");
        assert_eq!(y, x);
        assert_ne!(pid, victim);
    }
    let report = running.shutdown().expect("shutdown");
    assert!(report.is_graceful());
    assert_eq!(report.stats().stages[0].failed, 0);
    assert_eq!(report.stats().stages[0].restarts, 1);
}

// --- A13 -----------------------------------------------------------------------------------

/// A marker that exists once per test run: the first caller gets `true`.
fn first_time(tag: &str) -> bool {
    super::support::first_time(tag)
}

/// Arms an abort of this worker process ~1 ms from now (a helper thread).
fn abort_soon() {
    thread::spawn(|| {
        thread::sleep(Duration::from_millis(1));
        std::process::abort();
    });
}

fn a13a_result_then_death_run() {
    let p = Pipeline::new(
        Stage::map("late_abort", |x: u64| {
            if x == 5 && first_time("a13a") {
                abort_soon();
            } else if x > 5 {
                thread::sleep(Duration::from_micros(500));
            }
            (x, my_pid())
        })
        .subprocess(),
    );
    let mut results = p.run(0..30u64).expect("start");
    thread::sleep(Duration::from_millis(200)); // a slow reader
    let all: Vec<_> = results.by_ref().collect();
    let stats = results.stats();
    drop(results);
    let errors = by_item(&all, 30, |v| v.0);
    assert!(
        all[5].is_ok(),
        "item 5 returned before the death: {:?}",
        all[5]
    );
    assert!(
        errors.len() <= 1,
        "only the running item may fail: {errors:?}"
    );
    for (&i, e) in &errors {
        assert!(i > 5);
        expect_died(e, "late_abort", i, "killed by SIGABRT");
    }
    assert_eq!(stats.stages[0].restarts, 1, "{stats:?}");
}

fn a13b_result_then_death_submit() {
    let running = Pipeline::new(
        Stage::map("late_abort2", |x: u64| {
            if x == 5 && first_time("a13b") {
                abort_soon();
            }
            (x, my_pid())
        })
        .subprocess(),
    )
    .start()
    .expect("start");
    let (_, pid) = running.submit(0).unwrap().wait().expect("item 0");
    let t5 = running.submit(5).unwrap();
    thread::sleep(Duration::from_millis(100)); // dead by now, result in the socket
    assert_eq!(t5.wait().expect("item 5 is Ok exactly once"), (5, pid));
    assert!(wait_until(Duration::from_secs(2), || running
        .stats()
        .stages[0]
        .restarts
        == 1));
    for x in 6..20u64 {
        let (y, p2) = running.submit(x).unwrap().wait().expect("later items ok");
        assert_eq!(y, x);
        assert_ne!(p2, pid);
    }
    let report = running.shutdown().expect("shutdown");
    assert!(report.is_graceful());
    assert_eq!(report.stats().completed, 16, "no duplicate outcome");
    assert_eq!(report.stats().stages[0].failed, 0);
}

// --- A14 -----------------------------------------------------------------------------------

fn a14_bystanders() {
    let p = Pipeline::new(
        Stage::map("first_crashes", |x: u64| {
            if x == 0 {
                thread::sleep(Duration::from_millis(100));
                std::process::abort();
            }
            (x, my_pid())
        })
        .subprocess(),
    );
    let (all, stats) = collect(p, 10);
    let errors = by_item(&all, 10, |v| v.0);
    assert_eq!(
        errors.len(),
        1,
        "bystanders are requeued, not failed: {errors:?}"
    );
    let dead = expect_died(&errors[&0], "first_crashes", 0, "killed by SIGABRT");
    for r in &all[1..] {
        assert_ne!(r.as_ref().unwrap().1, dead, "ran on the replacement");
    }
    assert_eq!(stats.stages[0].restarts, 1);
}

/// A worker that completed items and then crashed on a later one: the completed items
/// must not run again (DESIGN §3: only items that never started are requeued). Each
/// execution leaves a marker file; every item that succeeded must have run exactly once.
fn a14b_completed_items_not_rerun() {
    let p = Pipeline::new(
        Stage::map("counted", |x: u64| {
            let n = super::support::ticket_number(&format!("a14b-{x}"));
            if x == 5 {
                thread::sleep(Duration::from_millis(50));
                std::process::abort();
            }
            (x, n as u32)
        })
        .subprocess(),
    );
    let (all, _) = collect(p, 10);
    let errors = by_item(&all, 10, |v| v.0);
    assert_eq!(errors.len(), 1, "{errors:?}");
    expect_died(&errors[&5], "counted", 5, "killed by SIGABRT");
    let reruns: Vec<_> = all
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .filter(|v| v.1 != 0)
        .collect();
    assert!(
        reruns.is_empty(),
        "items that had completed before the crash ran again, (item, execution#): {reruns:?}"
    );
}

// --- A15 / A16 -----------------------------------------------------------------------------

fn a15_death_decoding() {
    // `Marked<FINE, ABORT>` aborts in `Deserialize` (only the worker decodes it).
    let p = Pipeline::new(
        Stage::map("decoder", |m: Marked<FINE, ABORT>| (m.0, my_pid()))
            .subprocess()
            .workers(2),
    );
    let mut results = p.run((0..30u64).map(Marked)).expect("start");
    let all: Vec<_> = results.by_ref().collect();
    let stats = results.stats();
    drop(results);
    let errors = by_item(&all, 30, |v| v.0);
    assert_eq!(errors.len(), 1, "{errors:?}");
    expect_died(&errors[&13], "decoder", 13, "killed by SIGABRT");
    assert_eq!(stats.stages[0].restarts, 1);
}

fn a16_death_encoding() {
    // `Marked<ABORT, FINE>` aborts in `Serialize` (only the worker encodes the output).
    let p = Pipeline::new(
        Stage::map("encoder", |x: u64| Marked::<ABORT, FINE>(x))
            .subprocess()
            .workers(2),
    )
    .then(Stage::map("unwrap", |m: Marked<ABORT, FINE>| m.0));
    let mut results = p.run(0..30u64).expect("start");
    let all: Vec<_> = results.by_ref().collect();
    let stats = results.stats();
    drop(results);
    let errors = by_item(&all, 30, |v| *v);
    assert_eq!(
        errors.len(),
        1,
        "no partial output, one failure: {errors:?}"
    );
    expect_died(&errors[&13], "encoder", 13, "killed by SIGABRT");
    assert_eq!(stats.stages[0].restarts, 1);
}
