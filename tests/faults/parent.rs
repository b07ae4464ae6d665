//! G. Parent death and signals (victim processes), F10, E8; G2 and G9 in-process.

use std::collections::BTreeSet;
use std::io::Write;
use std::process::Command;
use std::thread;
use std::time::Duration;

use forkpipe::Running;
use forkpipe::prelude::*;
use libtest_mimic::Trial;

use super::common;
use super::support::{
    Bytes, Victim, default_action, expect_died, fault, my_pid, parent_pid, signal, wait_dead, who,
};

pub fn trials(t: &mut Vec<Trial>) {
    t.push(fault("g01a_parent_sigkilled_idle_workers", 30, g01a));
    t.push(fault("g01b_parent_sigkilled_worker_in_busy_loop", 30, g01b));
    t.push(fault(
        "g01c_parent_sigkilled_worker_blocked_writing_a_big_result",
        30,
        g01c,
    ));
    t.push(fault("g01d_parent_sigkilled_while_an_init_hangs", 30, g01d));
    t.push(fault(
        "g02_started_on_a_thread_that_exits_then_crash",
        30,
        g02,
    ));
    t.push(fault("g05_sigterm_to_the_parent_only", 30, g05));
    t.push(fault("f10_parent_exit_0_mid_run", 30, f10));
    t.push(fault("g09_user_children_are_not_reaped", 30, g09));
    t.push(fault(
        "g10a_sigpipe_default_worker_dies_during_large_write",
        60,
        g10a,
    ));
    t.push(fault(
        "g10b_sigpipe_default_supervisor_dies_during_large_write",
        60,
        g10b,
    ));
    t.push(fault("e08_fd_limit_at_start", 30, e08));
}

// ---------------------------------------------------------------------------------------
// Victim side (runs in the re-executed test binary)
// ---------------------------------------------------------------------------------------

fn say(line: String) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn sleep_forever() -> ! {
    loop {
        thread::sleep(Duration::from_secs(60));
    }
}

/// A 2-worker process stage answering `(x, pid, ppid)`; `x == 999` spins forever.
fn who_stage() -> Running<u64, (u64, u32, u32)> {
    Pipeline::new(
        Stage::map("who", |x: u64| {
            if x == 999 {
                loop {
                    std::hint::spin_loop();
                }
            }
            let (p, pp) = who();
            (x, p, pp)
        })
        .subprocess()
        .workers(2),
    )
    .start()
    .expect("start")
}

/// Supervisor and worker pids of a `who_stage`.
fn learn_pids(r: &Running<u64, (u64, u32, u32)>) -> Vec<u32> {
    let mut workers = BTreeSet::new();
    let mut sup = 0;
    for round in 0..100u64 {
        let ts: Vec<_> = (0..4).map(|i| r.submit(round * 4 + i).unwrap()).collect();
        for t in ts {
            let (_, w, s) = t.wait().unwrap();
            workers.insert(w);
            sup = s;
        }
        if workers.len() == 2 {
            break;
        }
    }
    let mut v = vec![sup];
    v.extend(workers);
    v
}

fn print_pids(p: &[u32]) {
    say(format!(
        "PIDS {}",
        p.iter()
            .map(|x| x.to_string())
            .collect::<Vec<_>>()
            .join(" ")
    ));
}

/// What the victim of `scenario` sets up before `forkpipe::init()` (its workers inherit it).
pub fn victim_prepare(scenario: &str) {
    super::signals::prepare(scenario);
}

/// The victim's `main`.
pub fn victim_main(scenario: &str) -> ! {
    match scenario {
        "g1a" | "g5" => {
            if scenario == "g5" {
                // G5 kills this victim with SIGTERM: its default action, whatever the
                // victim inherited (`trap "" TERM` in the shell that ran the tests).
                default_action(&[libc::SIGTERM]);
            }
            let r = who_stage();
            print_pids(&learn_pids(&r));
            sleep_forever();
        }
        "g1b" => {
            let r = who_stage();
            let pids = learn_pids(&r);
            let _spinning = r.submit(999).unwrap();
            thread::sleep(Duration::from_millis(200));
            print_pids(&pids);
            sleep_forever();
        }
        "g1c" => {
            let r = Pipeline::new(
                Stage::map("big_out", |x: u64| {
                    let (p, pp) = who();
                    if x == 999 {
                        say(format!("WRITER {p}"));
                        return (x, p, pp, Bytes(vec![7u8; 256 << 20]));
                    }
                    (x, p, pp, Bytes(Vec::new()))
                })
                .subprocess()
                .workers(2),
            )
            .start()
            .expect("start");
            let mut workers = BTreeSet::new();
            let mut sup = 0;
            for x in 0..400u64 {
                let (_, w, s, _) = r.submit(x).unwrap().wait().unwrap();
                workers.insert(w);
                sup = s;
                if workers.len() == 2 {
                    break;
                }
            }
            let mut pids = vec![sup];
            pids.extend(workers);
            print_pids(&pids);
            let _big = r.submit(999).unwrap();
            sleep_forever();
        }
        "g1d" => {
            let p = Pipeline::new(
                Stage::stateful(
                    "stuck_init",
                    || -> Result<u64, String> {
                        let (p, pp) = who();
                        say(format!("INIT {p} {pp}"));
                        sleep_forever();
                    },
                    |x: u64, _: &mut u64, out: &mut Emit<u64>| -> Result<(), String> {
                        out.emit(x);
                        Ok(())
                    },
                )
                .subprocess(),
            );
            let _ = p.start();
            unreachable!("init never returns");
        }
        "f10" => {
            let p = Pipeline::new(
                Stage::map("f10", |x: u64| {
                    thread::sleep(Duration::from_millis(1));
                    let (p, pp) = who();
                    (x, p, pp)
                })
                .subprocess()
                .workers(2),
            );
            let mut results = p.run(0u64..).expect("start");
            let mut pids = BTreeSet::new();
            for _ in 0..300 {
                let (_, w, s) = results.next().unwrap().unwrap();
                pids.insert(w);
                pids.insert(s);
            }
            print_pids(&pids.into_iter().collect::<Vec<_>>());
            std::process::exit(0); // items in flight, no destructor runs
        }
        "g10a" | "g10b" => {
            // A host that leaves SIGPIPE at its default action (as a C program would).
            // SAFETY: setting a signal disposition to its default.
            unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
            let r = Pipeline::new(
                Stage::map("big_in", |b: Bytes| {
                    if b.0 == [1] {
                        // Armed: die ~30 ms from now, while the parent writes the big item.
                        thread::spawn(|| {
                            thread::sleep(Duration::from_millis(30));
                            std::process::abort();
                        });
                    }
                    (b.0.len() as u64, my_pid(), parent_pid())
                })
                .subprocess(),
            )
            .start()
            .expect("start");
            let (_, _, sup) = r.submit(Bytes(vec![0])).unwrap().wait().unwrap();
            let big = Bytes(vec![9u8; 256 << 20]);
            if scenario == "g10a" {
                r.submit(Bytes(vec![1])).unwrap().wait().unwrap();
            } else {
                thread::spawn(move || {
                    thread::sleep(Duration::from_millis(30));
                    // SAFETY: plain syscall on this victim's own supervisor.
                    unsafe { libc::kill(sup as i32, libc::SIGKILL) };
                });
            }
            let t = r.submit(big).unwrap();
            match t.wait() {
                Ok(v) => say(format!("OUTCOME ok {}", v.0)),
                Err(e) => say(format!("OUTCOME err {e}")),
            }
            drop(r);
            say("DONE".to_string());
            std::process::exit(0);
        }
        "e8" => {
            let base = common::Baseline::now();
            let lim = libc::rlimit {
                rlim_cur: (common::open_fds() + 6) as libc::rlim_t,
                rlim_max: 4096,
            };
            // SAFETY: plain syscall with a valid pointer.
            unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
            let stage = |n| Stage::map(n, |x: u64| x).subprocess();
            let p = Pipeline::new(stage("s1"))
                .then(stage("s2"))
                .then(stage("s3"))
                .then(stage("s4"));
            match p.run(0..10u64) {
                Ok(r) => {
                    let n = r.count();
                    say(format!("OK {n}"));
                }
                Err(e) => say(format!("ERR {e}")),
            }
            let problems = base.problems(false);
            say(format!("CLEAN {}", problems.join(" | ")));
            std::process::exit(0);
        }
        "k1r" => {
            let n = super::model::k01r_victim();
            say(format!("COUNT {n}"));
            std::process::exit(0);
        }
        other => {
            // Scenarios of other files exit inside these calls.
            super::death::victim(other);
            super::signals::victim(other);
            super::flow::victim(other);
            eprintln!("unknown victim scenario {other}");
            std::process::exit(2);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Test side
// ---------------------------------------------------------------------------------------

const GONE_WITHIN: Duration = Duration::from_secs(3);

fn kill_victim_and_check(scenario: &str, sig: i32) {
    let mut v = Victim::spawn(scenario);
    let pids = v.expect_pids(Duration::from_secs(10));
    assert_eq!(pids.len(), 3, "supervisor and 2 workers: {pids:?}");
    assert!(pids.iter().all(|&p| super::support::alive(p)));
    signal(v.pid(), sig);
    let st = v.wait(Duration::from_secs(5));
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(st.signal(), Some(sig), "{st:?}");
    wait_dead(&pids, GONE_WITHIN).expect("every worker of the dead parent is gone");
}

fn g01a() {
    kill_victim_and_check("g1a", libc::SIGKILL);
}

fn g01b() {
    kill_victim_and_check("g1b", libc::SIGKILL);
}

/// G1 (c): the parent is stopped while a worker writes a 256 MiB result to it, so the
/// worker blocks in its write; then the parent is SIGKILLed. The worker's write fails (its
/// reader is gone) and it exits; the supervisor sees its control socket close.
fn g01c() {
    let mut v = Victim::spawn("g1c");
    let pids = v.expect_pids(Duration::from_secs(10));
    assert_eq!(pids.len(), 3, "supervisor and 2 workers: {pids:?}");
    let writer: u32 = v
        .expect_line("WRITER", Duration::from_secs(20))
        .parse()
        .expect("a pid");
    signal(v.pid(), libc::SIGSTOP);
    // Blocked in its write: sleeping for a while with its reader stopped.
    assert!(super::support::wait_blocked(
        writer,
        Duration::from_secs(20)
    ));
    signal(v.pid(), libc::SIGKILL);
    let st = v.wait(Duration::from_secs(5));
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(st.signal(), Some(libc::SIGKILL), "{st:?}");
    wait_dead(&pids, GONE_WITHIN).expect("every worker of the dead parent is gone");
}

/// G1 (d): the parent is SIGKILLed while `start()` waits for a worker's `init` that never
/// returns: the supervisor sees its control socket close and kills the workers.
fn g01d() {
    let mut v = Victim::spawn("g1d");
    let pids: Vec<u32> = v
        .expect_line("INIT", Duration::from_secs(10))
        .split_whitespace()
        .map(|s| s.parse().expect("a pid"))
        .collect();
    assert_eq!(pids.len(), 2, "worker and supervisor: {pids:?}");
    signal(v.pid(), libc::SIGKILL);
    let st = v.wait(Duration::from_secs(5));
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(st.signal(), Some(libc::SIGKILL), "{st:?}");
    wait_dead(&pids, GONE_WITHIN).expect("the supervisor and the stuck worker are gone");
}

fn g05() {
    kill_victim_and_check("g5", libc::SIGTERM);
}

fn f10() {
    let mut v = Victim::spawn("f10");
    let pids = v.expect_pids(Duration::from_secs(10));
    assert_eq!(pids.len(), 3, "{pids:?}");
    let st = v.wait(Duration::from_secs(5));
    assert_eq!(st.code(), Some(0), "{st:?}");
    wait_dead(&pids, GONE_WITHIN).expect("workers gone after the parent's exit(0)");
}

fn g02() {
    let running = thread::spawn(|| {
        Pipeline::new(
            Stage::map("g2", |x: u64| {
                if x == 5 {
                    std::process::abort();
                }
                (x, my_pid())
            })
            .subprocess(),
        )
        .start()
        .expect("start")
    })
    .join()
    .unwrap();
    thread::sleep(Duration::from_millis(100));
    let (_, first) = running
        .submit(0)
        .unwrap()
        .wait()
        .expect("alive after the thread exit");
    let e = running.submit(5).unwrap().wait().unwrap_err();
    expect_died(&e, "g2", 1, "killed by SIGABRT");
    for x in 6..20u64 {
        let (y, p) = running
            .submit(x)
            .unwrap()
            .wait()
            .expect("the replacement serves");
        assert_eq!(y, x);
        assert_ne!(p, first);
    }
    assert!(running.shutdown().unwrap().is_graceful());
}

fn g09() {
    let mut sleeper = Command::new("sleep").arg("0.3").spawn().expect("sleep");
    let mut failing = Command::new("sh")
        .args(["-c", "sleep 0.2; exit 7"])
        .spawn()
        .expect("sh");
    let p = Pipeline::new(
        Stage::map("crashy", |x: u64| {
            if x % 10 == 3 {
                std::process::abort();
            }
            x
        })
        .subprocess()
        .workers(2),
    );
    let all: Vec<_> = p.run(0..40u64).expect("start").collect();
    assert_eq!(all.iter().filter(|r| r.is_err()).count(), 4);
    let st = sleeper.wait().expect("our child is still ours to wait for");
    assert!(st.success(), "{st:?}");
    let st = failing.wait().expect("our child is still ours to wait for");
    assert_eq!(st.code(), Some(7), "{st:?}");
}

fn g10(scenario: &str) -> String {
    let mut v = Victim::spawn(scenario);
    let outcome = v.expect_line("OUTCOME", Duration::from_secs(30));
    v.expect_line("DONE", Duration::from_secs(10));
    let st = v.wait(Duration::from_secs(10));
    assert_eq!(st.code(), Some(0), "the parent survives: {st:?}");
    eprintln!("{scenario}: {outcome}");
    outcome
}

fn g10a() {
    let outcome = g10("g10a");
    // The big item either never started (requeued to the replacement: ok) or was running
    // when the worker died (fails with the death).
    assert!(
        outcome == format!("ok {}", 256 << 20)
            || (outcome.starts_with("err ") && outcome.contains("killed by SIGABRT")),
        "{outcome}"
    );
}

fn g10b() {
    let outcome = g10("g10b");
    assert!(outcome.starts_with("err "), "{outcome}");
}

fn e08() {
    let mut v = Victim::spawn("e8");
    let r = v.expect_line("ERR", Duration::from_secs(10));
    assert!(r.contains("socketpair failed"), "{r}");
    assert!(r.contains("Too many open files"), "{r}");
    let clean = v.expect_line("CLEAN", Duration::from_secs(10));
    assert_eq!(clean, "", "nothing left behind in the victim");
    assert_eq!(v.wait(Duration::from_secs(5)).code(), Some(0));
}
