//! Fork-server mode (`forkpipe::init()`): the cases that belong to it alone — a threaded
//! caller whose stages print never hangs, what the fork server refuses and why, its
//! lifetime — and the shared scenario set of `tests/fork.rs`, run again with every
//! pipeline forked by the fork server.
//!
//! `main` calls `forkpipe::init()` first, while the process is single-threaded. Cases
//! that need a process of their own (a caller with threads before `init`, a caller killed
//! with SIGKILL, a fork server that dies) run in a victim: this binary re-executed with
//! `FORKPIPE_FS_VICTIM=<case>`.

mod common;

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use forkpipe::prelude::*;
use libtest_mimic::{Arguments, Failed, Trial};

const VICTIM: &str = "FORKPIPE_FS_VICTIM";
const PIDS_FILE: &str = "FORKPIPE_FS_PIDS";

/// A case of this target's own: runs in the test process, `Err` fails it.
type Case = fn() -> Result<(), Failed>;

fn main() {
    if let Ok(case) = std::env::var(VICTIM) {
        victim(&case);
    }
    forkpipe::init().expect("init() in a single-threaded main");
    let mut args = Arguments::from_args();
    args.test_threads = Some(1);
    common::set_no_core_dumps();
    let mut trials: Vec<Trial> = common::scenario_trials("fork_server/");
    let own: [(&str, Case); 11] = [
        (
            "supervisors_are_children_of_the_fork_server",
            forked_by_the_server,
        ),
        (
            "pipe_next_pair_first_is_forked_by_the_server",
            pair_first_forked_by_the_server,
        ),
        ("init_twice_is_a_no_op", init_twice),
        ("capturing_closure_is_refused", capturing_closure_refused),
        (
            "bound_parameters_that_cannot_travel_are_refused",
            not_serde_refused,
        ),
        (
            "builder_fn_items_and_plain_closures_run",
            builder_stages_run,
        ),
        (
            "workers_hold_no_fork_server_descriptor",
            no_server_fds_in_workers,
        ),
        ("threaded_caller_100_pipelines_never_hang", threaded_caller),
        ("init_with_threads_is_refused", init_with_threads),
        ("caller_killed_leaves_no_process", caller_killed),
        (
            "fork_server_death_keeps_pipelines_and_fails_next_start",
            server_dies,
        ),
    ];
    trials.extend(own.into_iter().map(|(name, f)| {
        Trial::test(name, move || {
            let base = common::Baseline::now();
            let r = common::with_deadline(120, f);
            base.assert_clean(name, true);
            r
        })
    }));
    libtest_mimic::run(&args, trials).exit();
}

// ---------------------------------------------------------------------------------------
// Stages
// ---------------------------------------------------------------------------------------

/// `(x, the worker's pid, the worker's parent's pid)`.
#[stage(subprocess, workers = 2)]
fn whose(x: u64) -> (u64, u32, u32) {
    (x, std::process::id(), std::os::unix::process::parent_id())
}

#[stage(subprocess, workers = 2)]
fn chatty(x: u64) -> u64 {
    println!("worker {} got {x}", std::process::id());
    let _ = std::env::var("HOME");
    x + 1
}

#[derive(Clone)]
struct Opaque(u64);

#[stage(subprocess)]
fn add_opaque(x: u64, o: Opaque) -> u64 {
    x + o.0
}

/// Socket inodes this worker holds.
#[stage(subprocess)]
fn my_sockets(_x: u64) -> Vec<u64> {
    common::socket_inodes("self")
}

/// Writes its worker's pid and parent's pid: the producer of a first pair, two couples.
#[stage(subprocess, pipe_next, workers = 2)]
fn tag_stream(x: u64, out: &mut PipeWriter) -> std::io::Result<()> {
    out.write_all(&std::process::id().to_le_bytes())?;
    out.write_all(&std::os::unix::process::parent_id().to_le_bytes())?;
    out.write_all(&vec![b't'; x as usize])
}

/// `(x, bytes after the tags, [producer, its parent, consumer, its parent])`.
#[stage(subprocess)]
fn read_tags(x: u64, bytes: &mut PipeReader) -> std::io::Result<(u64, u64, [u32; 4])> {
    let mut tags = [0u8; 8];
    bytes.read_exact(&mut tags)?;
    let len = std::io::copy(bytes, &mut std::io::sink())?;
    let tag = |i: usize| u32::from_le_bytes(tags[i..i + 4].try_into().expect("4 bytes"));
    let whose = [
        tag(0),
        tag(4),
        std::process::id(),
        std::os::unix::process::parent_id(),
    ];
    Ok((x, len, whose))
}

fn triple(x: u64) -> u64 {
    3 * x
}

fn is_even(x: &u64) -> bool {
    x.is_multiple_of(2)
}

// ---------------------------------------------------------------------------------------
// Cases in this process
// ---------------------------------------------------------------------------------------

fn forked_by_the_server() -> Result<(), Failed> {
    let server = forkpipe::fork_server_pid().ok_or("no fork server")?;
    let out: Vec<(u64, u32, u32)> = pipeline![whose].run(0..20u64)?.collect::<Result<_, _>>()?;
    assert_eq!(
        out.iter().map(|o| o.0).collect::<Vec<_>>(),
        (0..20).collect::<Vec<_>>()
    );
    for &(_, worker, supervisor) in &out {
        assert_ne!(worker, common::me());
        // The worker's parent is the supervisor, whose parent is the fork server (it is
        // gone by now; the pid was the fork server's child).
        assert_ne!(
            supervisor,
            common::me(),
            "a supervisor forked by the caller"
        );
        assert_ne!(supervisor, server);
    }
    // While a pipeline runs, its supervisor is a child of the fork server.
    let running = pipeline![whose].start()?;
    let (_, _, sup) = running.submit(1)?.wait()?;
    assert_eq!(common::stat_of(sup).map(|s| s.0), Some(server));
    running.shutdown()?;
    Ok(())
}

/// A `pipe_next` pair as the whole pipeline: both halves are workers of a supervisor that
/// the fork server forked, with `run` and with submitted items.
fn pair_first_forked_by_the_server() -> Result<(), Failed> {
    let server = forkpipe::fork_server_pid().ok_or("no fork server")?;
    let input: Vec<u64> = (0..20).map(|x| x * 100).collect();
    let out: Vec<(u64, u64, [u32; 4])> = pipeline![tag_stream | read_tags]
        .run(input.clone())?
        .collect::<Result<_, _>>()?;
    assert_eq!(
        out.iter().map(|o| (o.0, o.1)).collect::<Vec<_>>(),
        input.iter().map(|&x| (x, x)).collect::<Vec<_>>()
    );
    for (_, _, [producer, p_parent, consumer, c_parent]) in &out {
        assert!(producer != consumer && ![*producer, *consumer].contains(&common::me()));
        assert_eq!(
            p_parent, c_parent,
            "both halves are the one supervisor's workers"
        );
        assert!(![common::me(), server].contains(p_parent), "{out:?}");
    }
    let running = pipeline![tag_stream | read_tags].start()?;
    let (x, len, [_, supervisor, _, _]) = running.submit(3)?.wait()?;
    assert_eq!((x, len), (3, 3));
    assert_eq!(common::stat_of(supervisor).map(|s| s.0), Some(server));
    assert!(running.shutdown()?.is_graceful());
    Ok(())
}

fn init_twice() -> Result<(), Failed> {
    let before = forkpipe::fork_server_pid();
    forkpipe::init()?;
    assert_eq!(forkpipe::fork_server_pid(), before);
    Ok(())
}

fn capturing_closure_refused() -> Result<(), Failed> {
    let offset = [5u64];
    let p = Pipeline::new(Stage::map("shift", move |x: u64| x + offset[0]).subprocess());
    let e = p
        .run(0..3u64)
        .expect_err("a capturing closure must be refused");
    let text = e.to_string();
    assert!(
        text.contains("stage 'shift' cannot run in fork-server mode")
            && text.contains("captures its environment")
            && text.contains("#[stage]"),
        "{text}"
    );
    Ok(())
}

fn not_serde_refused() -> Result<(), Failed> {
    let e = pipeline![add_opaque(Opaque(1))]
        .run(0..3u64)
        .expect_err("bound parameters that are not serde must be refused");
    let text = e.to_string();
    assert!(
        text.contains("stage 'add_opaque' cannot run in fork-server mode")
            && text.contains("Serialize + DeserializeOwned"),
        "{text}"
    );
    Ok(())
}

fn builder_stages_run() -> Result<(), Failed> {
    let p = Pipeline::new(Stage::map("triple", triple).subprocess().workers(2))
        .then(Stage::filter_map("evens", |x: u64| (x.is_multiple_of(2)).then_some(x)).subprocess())
        .then(
            Stage::map("half", |x: u64| x / 2)
                .subprocess()
                .when(is_even),
        )
        .then(
            Stage::stateful(
                "count",
                || Ok::<u64, String>(0),
                |x: u64, n: &mut u64, out: &mut Emit<(u64, u64)>| {
                    *n += 1;
                    out.emit((x, *n));
                    Ok::<(), String>(())
                },
            )
            .subprocess(),
        );
    let out: Vec<(u64, u64)> = p.run(0..10u64)?.collect::<Result<_, _>>()?;
    // 0..10 tripled: 0 3 6 9 .. 27; evens: 0 6 12 18 24; halved when even: 0 3 6 9 12.
    assert_eq!(out, [(0, 1), (3, 2), (6, 3), (9, 4), (12, 5)]);
    Ok(())
}

fn no_server_fds_in_workers() -> Result<(), Failed> {
    let server = forkpipe::fork_server_pid().ok_or("no fork server")?;
    let theirs = common::socket_inodes(&server.to_string());
    assert!(
        !theirs.is_empty(),
        "the fork server holds its request socket"
    );
    let held: Vec<Vec<u64>> = pipeline![my_sockets]
        .run(0..4u64)?
        .collect::<Result<_, _>>()?;
    for inodes in held {
        for i in &theirs {
            assert!(
                !inodes.contains(i),
                "a worker holds the fork server's socket {i}"
            );
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Cases in a victim process
// ---------------------------------------------------------------------------------------

/// Runs this binary as the victim `case`, stdout to /dev/null; returns its output.
fn run_victim(case: &str, env: &[(&str, &str)], secs: u64) -> Result<(i32, String), Failed> {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.env(VICTIM, case)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn()?;
    let pid = child.id();
    let out = common::with_deadline(secs, move || child.wait_with_output());
    let out = out.map_err(|e| format!("victim {case} (pid {pid}): {e}"))?;
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    Ok((out.status.code().unwrap_or(-1), err))
}

fn threaded_caller() -> Result<(), Failed> {
    let (code, err) = run_victim("threaded", &[], 90)?;
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("100 pipelines finished"), "{err}");
    Ok(())
}

fn init_with_threads() -> Result<(), Failed> {
    let (code, err) = run_victim("init_with_threads", &[], 30)?;
    assert_eq!(code, 0, "{err}");
    Ok(())
}

fn caller_killed() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("pids");
    let path = file.to_str().ok_or("path")?.to_string();
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.env(VICTIM, "killed")
        .env(PIDS_FILE, &path)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = cmd.spawn()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let pids: Vec<u32> = loop {
        if let Ok(text) = std::fs::read_to_string(&file)
            && text.ends_with('\n')
        {
            break text
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err("the victim never published its pids".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // The fork server, a supervisor and two workers, besides the victim itself.
    assert!(pids.len() >= 4, "{pids:?}");
    child.kill()?;
    child.wait()?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while pids.iter().any(|&p| alive(p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let left: Vec<u32> = pids.iter().copied().filter(|&p| alive(p)).collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    Ok(())
}

/// Alive and not a zombie (a zombie of an exited parent waits for init to reap it).
fn alive(pid: u32) -> bool {
    common::stat_of(pid).is_some_and(|(_, state)| state != 'Z')
}

fn server_dies() -> Result<(), Failed> {
    let (code, err) = run_victim("server_dies", &[], 60)?;
    assert_eq!(code, 0, "{err}");
    Ok(())
}

/// The victims' bodies. Each ends the process.
fn victim(case: &str) -> ! {
    let r = match case {
        "threaded" => victim_threaded(),
        "init_with_threads" => victim_init_with_threads(),
        "killed" => victim_killed(),
        "server_dies" => victim_server_dies(),
        other => Err(format!("no victim {other}").into()),
    };
    match r {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            eprintln!("victim {case}: {}", e.message().unwrap_or("failed"));
            std::process::exit(1)
        }
    }
}

/// 4 threads print continuously (stdout is /dev/null) while 100 pipelines run a process
/// stage (2 workers) that prints and reads the environment.
fn victim_threaded() -> Result<(), Failed> {
    forkpipe::init()?;
    let stop = Arc::new(AtomicBool::new(false));
    let printers: Vec<_> = (0..4)
        .map(|t| {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let _ = writeln!(std::io::stdout().lock(), "printer {t}");
                }
            })
        })
        .collect();
    for i in 0..100 {
        let out: Vec<u64> = pipeline![chatty].run(0..10u64)?.collect::<Result<_, _>>()?;
        assert_eq!(out, (1..11).collect::<Vec<_>>(), "pipeline {i}");
    }
    stop.store(true, Ordering::Relaxed);
    for p in printers {
        let _ = p.join();
    }
    eprintln!("100 pipelines finished");
    Ok(())
}

fn victim_init_with_threads() -> Result<(), Failed> {
    let gate = Arc::new(Mutex::new(()));
    let held = gate.lock().map_err(|_| "lock")?;
    let g = Arc::clone(&gate);
    let t = std::thread::spawn(move || drop(g.lock()));
    let e = forkpipe::init().expect_err("init() with a second thread must fail");
    let text = e.to_string();
    assert!(
        text.contains("must run while the process has one thread, and it has 2")
            && text.contains("first in `main`"),
        "{text}"
    );
    assert_eq!(forkpipe::fork_server_pid(), None);
    drop(held);
    let _ = t.join();
    // Direct mode still works.
    let out: Vec<u64> = pipeline![chatty].run(0..3u64)?.collect::<Result<_, _>>()?;
    assert_eq!(out, [1, 2, 3]);
    Ok(())
}

/// Publishes its own pid, the fork server's, the supervisor's and the workers', then waits
/// forever in a pipeline (the test kills it).
fn victim_killed() -> Result<(), Failed> {
    forkpipe::init()?;
    let running = pipeline![whose].start()?;
    let mut pids = vec![common::me(), forkpipe::fork_server_pid().ok_or("server")?];
    for x in 0..8 {
        let (_, worker, sup) = running.submit(x)?.wait()?;
        pids.extend([worker, sup]);
    }
    pids.sort_unstable();
    pids.dedup();
    let list: Vec<String> = pids.iter().map(u32::to_string).collect();
    let path = std::env::var(PIDS_FILE)?;
    std::fs::write(&path, format!("{}\n", list.join(" ")))?;
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

/// Kills the fork server while a pipeline runs: that pipeline finishes; the next start
/// fails naming the fork server's end, and so does every start after it.
fn victim_server_dies() -> Result<(), Failed> {
    forkpipe::init()?;
    let server = forkpipe::fork_server_pid().ok_or("server")?;
    let running = pipeline![chatty].start()?;
    let first = running.submit(1)?.wait()?;
    // SAFETY: kill(2) with a pid this process forked and has not reaped.
    unsafe { libc::kill(server as i32, libc::SIGKILL) };
    while common::stat_of(server).is_some_and(|(_, s)| s != 'Z') {
        std::thread::sleep(Duration::from_millis(5));
    }
    let rest: Vec<u64> = (2..50)
        .map(|x| running.submit(x).and_then(|t| t.wait()))
        .collect::<Result<_, _>>()?;
    assert_eq!(first, 2);
    assert_eq!(rest, (3..51).collect::<Vec<_>>());
    assert!(running.shutdown()?.is_graceful());
    for _ in 0..2 {
        let e = pipeline![chatty].run(0..3u64).expect_err("no fork server");
        let text = e.to_string();
        assert!(
            text.contains(&format!("the fork server (pid {server}) is gone"))
                && text.contains("killed by SIGKILL"),
            "{text}"
        );
    }
    // It was reaped: no zombie left.
    assert!(
        common::stat_of(server).is_none(),
        "the dead fork server was not reaped"
    );
    Ok(())
}
