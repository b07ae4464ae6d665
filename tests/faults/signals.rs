//! G. Signals (G4, G6, G7, G8, G11), I. process environment (I2, I5, I7, I8) and C6 (fork
//! fails). Cases that signal or re-configure the caller run in victims (this binary
//! re-executed with `FORKPIPE_VICTIM=sig_…`, in its own process group); I7 and I8 run here.
//!
//! Not tested here, by design: G3 (the parent dying between `fork` and `prctl`) needs a
//! fault-injection hook in the runtime; `sys::child_setup` re-checks `getppid()` against the
//! pid the supervisor read before forking, right after `PR_SET_PDEATHSIG`.

use std::collections::BTreeSet;
use std::ffi::CString;
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use forkpipe::prelude::*;
use forkpipe::{Error, Running};
use libtest_mimic::Trial;

use super::common::{self, Baseline};
use super::support::{
    Victim, alive, default_action, expect_died, fault, my_pid, parent_pid, run_dir, signal,
    unblock, wait_dead, wait_until,
};

pub fn trials(t: &mut Vec<Trial>) {
    t.push(fault("g04a_ctrl_c_kills_the_group_quietly", 30, g04a));
    t.push(fault("g04b_ctrl_c_handled_drop_then_exit_130", 30, g04b));
    t.push(fault("g06_shutdown_from_a_sigwait_thread", 30, g06));
    t.push(fault("g07_sigtstp_then_sigcont_resumes", 30, g07));
    t.push(fault("g08_sigchld_ignored_crash_fails_its_item", 30, g08));
    t.push(fault("g11_eintr_storm_counts_exact", 60, g11));
    t.push(fault("i02_workers_never_run_exit_paths", 30, i02));
    t.push(fault("i05_inherited_mask_and_ignored_sigint", 30, i05));
    t.push(fault("i07_nested_pipeline_dies_with_its_worker", 30, i07));
    t.push(fault(
        "i08_reused_pid_of_a_dead_worker_is_never_signalled",
        30,
        i08,
    ));
    t.push(fault("c06a_fork_fails_at_start", 30, c06a));
    t.push(fault("c06b_replacement_fork_fails_mid_run", 30, c06b));
}

/// Sends `sig` to every process of the group `pgid`.
fn signal_group(pgid: u32, sig: i32) {
    assert!(pgid > 1, "refusing to signal group {pgid}");
    // SAFETY: plain syscall on a victim's own process group.
    let r = unsafe { libc::kill(-(pgid as i32), sig) };
    assert_eq!(r, 0, "kill(-{pgid}, {sig})");
}

/// Live (not zombie) processes of the process group `pgid`: `(pid, state)`.
fn group_members(pgid: u32) -> Vec<(u32, char)> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        let f: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let state = f.first().and_then(|s| s.chars().next()).unwrap_or('?');
        if f.get(2) == Some(&pgid.to_string().as_str()) && state != 'Z' && state != 'X' {
            out.push((pid, state));
        }
    }
    out
}

/// Asserts that the process group `pgid` has no live process within `within`.
#[track_caller]
fn group_empty(pgid: u32, within: Duration) {
    if !wait_until(within, || group_members(pgid).is_empty()) {
        panic!(
            "process group {pgid} not empty after {within:?}: {:?}",
            group_members(pgid)
        );
    }
}

/// State letter of `pid` (`R`, `S`, `T`, …), if it exists.
fn state(pid: u32) -> Option<char> {
    common::stat_of(pid).map(|(_, s)| s)
}

/// Parses `key=value` words of a victim line.
fn field<T: std::str::FromStr>(line: &str, key: &str) -> T
where
    T::Err: std::fmt::Debug,
{
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
        .parse()
        .unwrap_or_else(|e| panic!("{key}= in {line:?}: {e:?}"))
}

// ---------------------------------------------------------------------------------------
// Victim side
// ---------------------------------------------------------------------------------------

/// Environment variable carrying a path from the test to its victim.
const PATH_VAR: &str = "FORKPIPE_SIG_PATH";

fn say(line: String) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// A field of `/proc/<pid>/status` (`pid` may be `"self"`), e.g. `SigBlk`.
fn status_field(pid: &str, key: &str) -> String {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(':')))
        .map(|v| v.trim().to_string())
        .unwrap_or_default()
}

/// Whether signal `sig` is in a `/proc/<pid>/status` signal mask (hex).
fn in_mask(mask_hex: &str, sig: i32) -> bool {
    let m = u64::from_str_radix(mask_hex, 16).unwrap_or_else(|e| panic!("{mask_hex:?}: {e}"));
    m & (1u64 << (sig - 1)) != 0
}

/// A process stage answering `(x, pid, ppid)` after `MS` milliseconds (a const parameter:
/// the stage's closure captures nothing).
fn who_stage<const MS: u64>(name: &'static str, workers: usize) -> Stage<u64, (u64, u32, u32)> {
    Stage::map(name, |x: u64| {
        thread::sleep(Duration::from_millis(MS));
        (x, my_pid(), parent_pid())
    })
    .subprocess()
    .workers(workers)
}

/// Tracks the supervisor and worker pids seen in `(x, pid, ppid)` outputs.
#[derive(Default)]
struct Pids {
    sup: u32,
    workers: BTreeSet<u32>,
}

impl Pids {
    fn see(&mut self, &(_, w, s): &(u64, u32, u32)) {
        self.workers.insert(w);
        self.sup = s;
    }

    fn say(&self) {
        let mut line = format!("PIDS {}", self.sup);
        for w in &self.workers {
            line.push_str(&format!(" {w}"));
        }
        say(line);
    }
}

/// The empty signal set plus `sigs`.
fn sigset(sigs: &[i32]) -> libc::sigset_t {
    let mut set = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigemptyset initialises the set it is given.
    unsafe { libc::sigemptyset(set.as_mut_ptr()) };
    // SAFETY: initialised just above.
    let mut set = unsafe { set.assume_init() };
    for &s in sigs {
        // SAFETY: a valid pointer to an initialised set.
        unsafe { libc::sigaddset(&mut set, s) };
    }
    set
}

/// Blocks `sigs` in the calling thread (threads it creates later inherit the mask).
fn block(sigs: &[i32]) {
    let set = sigset(sigs);
    // SAFETY: valid pointer to an initialised set; no old mask wanted.
    let r = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    assert_eq!(r, 0, "pthread_sigmask");
}

/// Installs `handler` for `sig` with `flags` (`SA_RESTART` or 0), and unblocks `sig` in the
/// calling thread (the test binary may have been started with it blocked).
fn on_signal(sig: i32, handler: extern "C" fn(libc::c_int), flags: i32) {
    unblock(&[sig]);
    // SAFETY: an all-zero sigaction is a valid value (no handler, empty flags).
    let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
    sa.sa_sigaction = handler as *const () as libc::sighandler_t;
    sa.sa_flags = flags;
    sa.sa_mask = sigset(&[]);
    // SAFETY: valid pointer to a filled sigaction; the handler only touches atomics.
    let r = unsafe { libc::sigaction(sig, &sa, std::ptr::null_mut()) };
    assert_eq!(r, 0, "sigaction({sig})");
}

/// A pipe whose descriptors workers inherit (the user's own descriptors are left alone),
/// made by [`prepare`] for the victims that gate an item on it.
static PIPE: std::sync::OnceLock<(i32, i32)> = std::sync::OnceLock::new();

fn make_pipe() {
    let mut fds = [0i32; 2];
    // SAFETY: valid pointer to two ints.
    let r = unsafe { libc::pipe(fds.as_mut_ptr()) };
    assert_eq!(r, 0, "pipe");
    PIPE.set((fds[0], fds[1])).expect("one pipe");
}

/// The pipe made by [`prepare`]: `(read end, write end)`.
fn pipe() -> (i32, i32) {
    *PIPE.get().expect("the victim made its pipe in `prepare`")
}

fn write_byte(fd: i32) {
    // SAFETY: writes one byte from a valid static buffer to a descriptor we own.
    let _ = unsafe { libc::write(fd, b"x".as_ptr().cast(), 1) };
}

fn read_byte(fd: i32) {
    let mut b = [0u8; 1];
    loop {
        // SAFETY: reads at most one byte into a valid local buffer.
        let n = unsafe { libc::read(fd, b.as_mut_ptr().cast(), 1) };
        if n >= 0 || std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return;
        }
    }
}

fn sleep_forever() -> ! {
    loop {
        thread::sleep(Duration::from_secs(60));
    }
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

static HITS: AtomicU64 = AtomicU64::new(0);

extern "C" fn count_hit(_: libc::c_int) {
    HITS.fetch_add(1, Ordering::Relaxed);
}

static ATEXIT_FILE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

extern "C" fn at_exit() {
    if let Some(p) = ATEXIT_FILE.get() {
        let f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(p);
        if let Ok(mut f) = f {
            let _ = writeln!(f, "atexit {}", std::process::id());
        }
    }
}

/// `nobody` (its real uid counts its processes against `RLIMIT_NPROC`).
const NOBODY: u32 = 65534;

/// Becomes `nobody`, or says `NOSETUID` (the case fails on it) and exits.
fn become_nobody_or_exit() {
    if !become_nobody() {
        say(format!("NOSETUID {}", std::io::Error::last_os_error()));
        std::process::exit(0);
    }
}

/// Becomes `nobody`; false if that is not permitted.
fn become_nobody() -> bool {
    // SAFETY: plain syscall; an empty list needs no pointer.
    let a = unsafe { libc::setgroups(0, std::ptr::null()) };
    // SAFETY: plain syscall.
    let b = unsafe { libc::setgid(NOBODY) };
    // SAFETY: plain syscall.
    let c = unsafe { libc::setuid(NOBODY) };
    a == 0 && b == 0 && c == 0
}

/// Tasks (threads) of processes whose real uid is `uid`: what `RLIMIT_NPROC` counts.
fn tasks_of_uid(uid: u32) -> u64 {
    let mut n = 0;
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let name = e.file_name();
        let Some(pid) = name.to_str().filter(|s| s.parse::<u32>().is_ok()) else {
            continue;
        };
        let real: Option<u32> = status_field(pid, "Uid")
            .split_whitespace()
            .next()
            .and_then(|s| s.parse().ok());
        if real == Some(uid) {
            n += status_field(pid, "Threads").parse::<u64>().unwrap_or(1);
        }
    }
    n
}

/// Sets `RLIMIT_NPROC` of `pid` (0: this process) to `cur`, keeping the hard limit.
fn set_nproc(pid: u32, cur: u64) {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid pointer; reads the current limits of `pid`.
    let r = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_NPROC,
            std::ptr::null(),
            &mut old,
        )
    };
    assert_eq!(r, 0, "prlimit get: {}", std::io::Error::last_os_error());
    let new = libc::rlimit {
        rlim_cur: cur as libc::rlim_t,
        rlim_max: old.rlim_max,
    };
    // SAFETY: valid pointer to the new limits.
    let r = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_NPROC,
            &new,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(r, 0, "prlimit set: {}", std::io::Error::last_os_error());
}

/// CPU time (utime + stime, clock ticks) of `pid`.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let f: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// The path the test handed to its victim.
fn victim_path() -> PathBuf {
    std::env::var_os(PATH_VAR)
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("{PATH_VAR} is not set"))
}

/// What the victims of this file set up before `forkpipe::init()`, because their
/// supervisors and workers must inherit it (in fork-server mode those are forked from the
/// image taken at `init()`): signal dispositions and handlers, credentials and limits, the
/// gating pipe. Does nothing for a scenario that is not this file's.
pub fn prepare(scenario: &str) {
    match scenario {
        "sig_g6" => make_pipe(),
        // The whole group must stop on SIGTSTP: its default action, whatever the victim
        // inherited.
        "sig_g7" => default_action(&[libc::SIGTSTP]),
        "sig_g11" => on_signal(libc::SIGUSR1, count_hit, 0),
        // The host's SIGTERM is at its default (the check is that workers do not ignore
        // it), whatever the victim inherited (`trap "" TERM` in the shell that ran the tests).
        "sig_i5" => default_action(&[libc::SIGTERM]),
        "sig_c6a" => {
            become_nobody_or_exit();
            // `RLIMIT_NPROC` a few tasks above what nobody runs now.
            set_nproc(0, tasks_of_uid(NOBODY) + 8);
        }
        "sig_c6b" => {
            become_nobody_or_exit();
            make_pipe();
        }
        _ => {}
    }
}

/// Victim scenarios of this file (see `support::Victim`); returns without exiting only
/// for a scenario that is not this file's.
pub fn victim(scenario: &str) {
    match scenario {
        "sig_g4a" => v_g4a(),
        "sig_g4b" => v_g4b(),
        "sig_g6" => v_g6(),
        "sig_g7" => v_g7(),
        "sig_g8" => v_g8(),
        "sig_g11" => v_g11(),
        "sig_i2" => v_i2(victim_path()),
        "sig_i5" => v_i5(),
        "sig_c6a" => v_c6a(),
        "sig_c6b" => v_c6b(),
        _ => return,
    }
    std::process::exit(0);
}

/// G4 default: a pipeline running until Ctrl-C ends the victim.
fn v_g4a() {
    // A terminal's program starts with SIGINT at its default; a victim spawned from a
    // background job of a non-interactive shell (as CI runs the tests) inherits it ignored.
    default_action(&[libc::SIGINT]);
    let mut results = Pipeline::new(who_stage::<1>("ctrl_c", 2))
        .run(0u64..)
        .expect("start");
    let mut pids = Pids::default();
    for (i, r) in results.by_ref().enumerate() {
        let v = r.expect("no error before Ctrl-C");
        assert_eq!(v.0, i as u64);
        pids.see(&v);
        if pids.workers.len() == 2 || i == 2000 {
            break;
        }
    }
    pids.say();
    for r in results {
        r.expect("no error before Ctrl-C");
    }
    unreachable!("an endless input");
}

/// G4 handled: SIGINT sets a flag; the submitting loop then drops the pipeline.
fn v_g4b() {
    on_signal(libc::SIGINT, on_sigint, libc::SA_RESTART);
    let running = Pipeline::new(who_stage::<1>("ctrl_c_handled", 2))
        .start()
        .expect("start");
    let (tx, rx) = std::sync::mpsc::channel::<forkpipe::Ticket<(u64, u32, u32)>>();
    let waiter = thread::spawn(move || {
        let (mut ok, mut shut, mut other, mut right) = (0u64, 0u64, 0u64, true);
        let mut pids = Pids::default();
        for (i, t) in rx.into_iter().enumerate() {
            match t.wait() {
                // (Tickets resolve as outputs arrive: a worker's outputs may wait in its
                // batch, so an earlier item can be cut by the drop after later ones ended.)
                Ok(v) => {
                    if right && v.0 != i as u64 {
                        say(format!("WRONG ticket {i} got {v:?}"));
                        right = false;
                    }
                    ok += 1;
                    pids.see(&v);
                    if ok == 200 {
                        pids.say();
                    }
                }
                Err(Error::ShutDown { .. }) => shut += 1,
                Err(e) => {
                    other += 1;
                    say(format!("OTHER {e}"));
                }
            }
        }
        (ok, shut, other, right)
    });
    let mut x = 0u64;
    while !INTERRUPTED.load(Ordering::SeqCst) {
        let t = running.submit(x).expect("submit before the drop");
        tx.send(t).expect("waiter");
        x += 1;
    }
    drop(running);
    drop(tx);
    let (ok, shut, other, right) = waiter.join().expect("waiter");
    say(format!(
        "DELIVERED submitted={x} ok={ok} shut={shut} other={other} right={right}"
    ));
    std::process::exit(130);
}

/// G6: a thread waits for SIGUSR1 with sigwait and shuts the pipeline down while items are
/// in flight (item 100 waits on a pipe until the signal came).
fn v_g6() {
    block(&[libc::SIGUSR1]); // before any thread: every thread of the victim inherits it
    const N: u64 = 600;
    const GATED: u64 = 100;
    let running = Pipeline::new(
        Stage::map("sigwait_shutdown", |x: u64| {
            thread::sleep(Duration::from_millis(2));
            if x == GATED {
                read_byte(pipe().0);
            }
            x
        })
        .subprocess()
        .workers(2),
    )
    .start()
    .expect("start");
    let (mut ok, mut err) = (0u64, 0u64);
    let mut check = |i: u64, r: Result<u64, Error>| match r {
        Ok(x) if x == i => ok += 1,
        other => {
            err += 1;
            say(format!("BAD item {i}: {other:?}"));
        }
    };
    // The first items end before the gated one starts: a worker holds no finished output
    // while it waits on the pipe.
    let first: Vec<_> = (0..GATED).map(|x| running.submit(x).unwrap()).collect();
    for (i, t) in first.into_iter().enumerate() {
        check(i as u64, t.wait());
    }
    let tickets: Vec<_> = (GATED..N).map(|x| running.submit(x).unwrap()).collect();
    let handler = thread::spawn(move || {
        let set = sigset(&[libc::SIGUSR1]);
        let mut sig = 0;
        // SAFETY: valid pointers to an initialised set and an int.
        let r = unsafe { libc::sigwait(&set, &mut sig) };
        assert_eq!((r, sig), (0, libc::SIGUSR1));
        let in_flight = running.stats().in_flight;
        say(format!("GOT in_flight={in_flight}"));
        write_byte(pipe().1);
        let report = running.shutdown().expect("shutdown");
        say(format!(
            "SHUTDOWN graceful={} completed={}",
            report.is_graceful(),
            report.stats().completed
        ));
    });
    say("INFLIGHT".into());
    for (i, t) in (GATED..N).zip(tickets) {
        check(i, t.wait());
    }
    handler.join().expect("signal thread");
    say(format!("DONE ok={ok} err={err}"));
}

/// G7: a run whose item 750 waits for a gate file (the victim's path) the test creates
/// after SIGCONT. SIGTSTP is at its default action ([`prepare`]).
fn v_g7() {
    const N: u64 = 1500;
    let p = Pipeline::new(
        Stage::map("tstp", |x: u64| {
            thread::sleep(Duration::from_millis(1));
            if x == N / 2 {
                let gate = victim_path();
                while !gate.exists() {
                    thread::sleep(Duration::from_millis(5));
                }
            }
            (x, my_pid(), parent_pid())
        })
        .subprocess()
        .workers(2),
    );
    let mut results = p.run(0..N).expect("start");
    let mut pids = Pids::default();
    let (mut ok, mut err) = (0u64, 0u64);
    for (i, r) in results.by_ref().enumerate() {
        match r {
            Ok(v) if v.0 == i as u64 => {
                ok += 1;
                pids.see(&v);
            }
            other => {
                err += 1;
                say(format!("BAD item {i}: {other:?}"));
            }
        }
        if i == 100 {
            pids.say();
        }
    }
    let stats = results.stats();
    drop(results);
    say(format!(
        "DONE ok={ok} err={err} restarts={} failed={}",
        stats.stages[0].restarts, stats.stages[0].failed
    ));
}

/// G8: SIGCHLD ignored by the host, a worker aborts on item 7.
fn v_g8() {
    // SAFETY: setting a disposition to SIG_IGN runs no handler code.
    unsafe { libc::signal(libc::SIGCHLD, libc::SIG_IGN) };
    let base = Baseline::now();
    let p = Pipeline::new(
        Stage::map("abort_on_7", |x: u64| {
            if x == 7 {
                std::process::abort();
            }
            // The supervisor's ignored signals, as the kernel shows them.
            (x, status_field(&parent_pid().to_string(), "SigIgn"))
        })
        .subprocess()
        .workers(2),
    );
    let all: Vec<_> = p.run(0..40u64).expect("start").collect();
    let mut errors = Vec::new();
    let mut sup_ign = String::new();
    for (i, r) in all.iter().enumerate() {
        match r {
            Ok((x, ign)) => {
                assert_eq!(*x, i as u64);
                sup_ign = ign.clone();
            }
            Err(e) => errors.push((i, e.clone())),
        }
    }
    say(format!(
        "ERRORS n={} items={:?}",
        all.len(),
        errors.iter().map(|(i, _)| *i).collect::<Vec<_>>()
    ));
    for (_, e) in &errors {
        say(format!("CAUSE {e}"));
        if let Error::Died { cause, .. } = e {
            say(format!("DIED {cause}"));
        }
    }
    say(format!("SUPIGN {sup_ign}"));
    drop(all);
    say(format!("CLEAN {}", base.problems(false).join(" | ")));
}

/// G11: SIGUSR1 with a no-op handler installed without SA_RESTART ([`prepare`]), sent
/// ~1000×/s to this process (and to the supervisor and workers, which inherit the handler)
/// during a run.
fn v_g11() {
    const N: u64 = 200_000;
    let stop = Arc::new(AtomicBool::new(false));
    let targets: Arc<Mutex<Vec<u32>>> = Arc::default();
    let storm = {
        let (stop, targets) = (Arc::clone(&stop), Arc::clone(&targets));
        thread::spawn(move || {
            let mut sent = 0u64;
            let mut next = Instant::now();
            let me = my_pid() as libc::pid_t;
            while !stop.load(Ordering::Relaxed) {
                // SAFETY: plain syscall on this process.
                unsafe { libc::kill(me, libc::SIGUSR1) };
                for &p in targets.lock().unwrap().iter() {
                    // SAFETY: plain syscall on a live process of this pipeline.
                    unsafe { libc::kill(p as i32, libc::SIGUSR1) };
                }
                sent += 1;
                // 1,000 per second on average: sleep only while ahead of the schedule.
                next += Duration::from_millis(1);
                let now = Instant::now();
                if next > now {
                    thread::sleep(next - now);
                }
            }
            sent
        })
    };
    let p = Pipeline::new(
        Stage::map("p1", |x: u64| (x, my_pid()))
            .subprocess()
            .workers(2),
    )
    .then(Stage::map("t", |(x, a): (u64, u32)| (x, a, 7u32)))
    .then(
        Stage::map("p2", |(x, a, t): (u64, u32, u32)| {
            (x * 2 + u64::from(t), a, my_pid(), parent_pid())
        })
        .subprocess()
        .workers(2),
    );
    let mut results = p.run(0..N).expect("start");
    let mut seen = BTreeSet::new();
    let (mut n, mut ok, mut err, mut ordered) = (0u64, 0u64, 0u64, true);
    for r in results.by_ref() {
        match r {
            Ok((y, a, b, sup)) => {
                ordered &= y == n * 2 + 7;
                ok += 1;
                for pid in [a, b, sup] {
                    if seen.insert(pid) {
                        targets.lock().unwrap().push(pid);
                    }
                }
            }
            Err(e) => {
                err += 1;
                if err < 5 {
                    say(format!("BAD {e}"));
                }
            }
        }
        n += 1;
    }
    let stats = results.stats();
    targets.lock().unwrap().clear();
    drop(results);
    stop.store(true, Ordering::Relaxed);
    let sent = storm.join().expect("storm");
    let restarts: u64 = stats.stages.iter().map(|s| s.restarts).sum();
    say(format!(
        "DONE n={n} ok={ok} err={err} ordered={ordered} restarts={restarts} sent={sent} hits={} pids={}",
        HITS.load(Ordering::Relaxed),
        seen.len()
    ));
}

/// I2: an atexit handler and a half-printed line before forking; one worker crashes.
fn v_i2(file: PathBuf) {
    ATEXIT_FILE.set(file).expect("once");
    // SAFETY: registers a plain function with no captured state.
    let r = unsafe { libc::atexit(at_exit) };
    assert_eq!(r, 0);
    print!("partial"); // no newline: stays in stdout's buffer while we fork
    let p = Pipeline::new(
        Stage::map("exit_paths", |x: u64| {
            if x == 5 {
                std::process::abort();
            }
            x
        })
        .subprocess()
        .workers(2),
    );
    let all: Vec<_> = p.run(0..20u64).expect("start").collect();
    let errors = all.iter().filter(|r| r.is_err()).count();
    println!();
    say(format!("AFTER pid={} errors={errors}", my_pid()));
    // `std::process::exit(0)` in `victim` runs the atexit handler (once, here).
}

/// I5: the pipeline is started from a thread that blocked SIGINT and SIGTERM and made
/// SIGINT ignored; its stage reports the worker's signal state and hangs on item 1.
fn v_i5() {
    let h = thread::spawn(|| {
        block(&[libc::SIGINT, libc::SIGTERM]);
        // SAFETY: setting a disposition to SIG_IGN runs no handler code.
        unsafe { libc::signal(libc::SIGINT, libc::SIG_IGN) };
        let running = Pipeline::new(
            Stage::map("masked", |x: u64| {
                if x == 1 {
                    loop {
                        thread::sleep(Duration::from_millis(10));
                    }
                }
                let sup = parent_pid().to_string();
                format!(
                    "pid={} blk={} ign={} sup_blk={}",
                    my_pid(),
                    status_field("self", "SigBlk"),
                    status_field("self", "SigIgn"),
                    status_field(&sup, "SigBlk")
                )
            })
            .subprocess()
            .timeout(Duration::from_millis(300)),
        )
        .start()
        .expect("start");
        say(format!(
            "FIRST {}",
            running.submit(0).unwrap().wait().expect("item 0")
        ));
        let t0 = Instant::now();
        let e = running.submit(1).unwrap().wait().expect_err("item 1 hangs");
        say(format!("TIMEOUT ms={} {e}", t0.elapsed().as_millis()));
        say(format!(
            "SECOND {}",
            running.submit(2).unwrap().wait().expect("item 2")
        ));
        let t0 = Instant::now();
        let report = running.shutdown().expect("shutdown");
        say(format!(
            "SHUTDOWN graceful={} ms={}",
            report.is_graceful(),
            t0.elapsed().as_millis()
        ));
    });
    h.join().expect("starter thread");
}

/// C6 at start: as `nobody` with `RLIMIT_NPROC` a few tasks above what nobody ran
/// ([`prepare`]), a 64-worker stage cannot be forked.
fn v_c6a() {
    let base = Baseline::now();
    let p = Pipeline::new(Stage::map("wide", |x: u64| x).subprocess().workers(64));
    match p.start() {
        Ok(r) => {
            say("OK started".into());
            drop(r);
        }
        Err(e) => say(format!("ERR {e}")),
    }
    say(format!("CLEAN {}", base.problems(true).join(" | ")));
}

/// C6 mid-run, as `nobody` ([`prepare`]): the supervisor's `RLIMIT_NPROC` drops to 1, then
/// the only worker is killed while it runs item 1 and holds items 2..=20.
fn v_c6b() {
    let base = Baseline::now();
    let running = Pipeline::new(
        Stage::map("thin", |x: u64| {
            if x == 1 {
                write_byte(pipe().1);
                sleep_forever();
            }
            (x, my_pid(), parent_pid())
        })
        .subprocess(),
    )
    .start()
    .expect("start");
    let (_, worker, sup) = running.submit(0).unwrap().wait().expect("item 0");
    let tickets: Vec<_> = (1..=20u64).map(|x| running.submit(x).unwrap()).collect();
    read_byte(pipe().0); // item 1 runs; items 2..=20 are held
    set_nproc(sup, 1);
    // SAFETY: plain syscall on this victim's own worker.
    unsafe { libc::kill(worker as i32, libc::SIGKILL) };
    say("KILLED".into());
    let mut outcomes = Vec::new();
    for t in tickets {
        outcomes.push(t.wait());
    }
    say(format!(
        "T1 {:?}",
        outcomes[0].as_ref().map_err(|e| e.to_string())
    ));
    let ok = outcomes.iter().filter(|r| r.is_ok()).count();
    let rest: Vec<String> = outcomes[1..]
        .iter()
        .filter_map(|r| r.as_ref().err().map(|e| e.to_string()))
        .collect();
    say(format!("REST ok={ok} err={}", rest.len()));
    for e in rest.iter().take(3) {
        say(format!("RESTERR {e}"));
    }
    // A submit after the stage lost its only worker: an outcome or `Err`, never a hang.
    let after = match running.submit(99) {
        Err(e) => format!("refused {e}"),
        Ok(t) => {
            let (tx, rx) = std::sync::mpsc::channel();
            thread::spawn(move || {
                let _ = tx.send(t.wait());
            });
            match rx.recv_timeout(Duration::from_secs(3)) {
                Ok(Ok(v)) => format!("ok {v:?}"),
                Ok(Err(e)) => format!("failed {e}"),
                Err(_) => "hang".to_string(),
            }
        }
    };
    say(format!("AFTERSUBMIT {after}"));
    if let Some(a) = cpu_ticks(sup) {
        thread::sleep(Duration::from_millis(500));
        let b = cpu_ticks(sup).unwrap_or(a);
        say(format!("SUPCPU ticks={}", b - a));
    } else {
        say("SUPCPU gone".into());
    }
    drop(running);
    say(format!("CLEAN {}", base.problems(false).join(" | ")));
}

// ---------------------------------------------------------------------------------------
// Test side
// ---------------------------------------------------------------------------------------

const SOON: Duration = Duration::from_secs(10);

fn g04a() {
    let errf = run_dir().join("g04a.stderr");
    let mut v = Victim::spawn_with("sig_g4a", &[], Some(&errf));
    let pids = v.expect_pids(SOON);
    assert_eq!(pids.len(), 3, "supervisor and 2 workers: {pids:?}");
    let pgid = v.pid();
    let members: Vec<u32> = group_members(pgid).iter().map(|m| m.0).collect();
    assert!(
        pids.iter().all(|p| members.contains(p)),
        "workers stay in the caller's group: {pids:?} vs {members:?}"
    );
    signal_group(pgid, libc::SIGINT);
    let st = v.wait(Duration::from_secs(5));
    assert_eq!(st.signal(), Some(libc::SIGINT), "{st:?}");
    group_empty(pgid, Duration::from_secs(2));
    let err = std::fs::read_to_string(&errf).expect("stderr file");
    assert!(
        err.trim().is_empty(),
        "no noise on stderr after Ctrl-C: {err:?}"
    );
}

fn g04b() {
    let mut v = Victim::spawn_with("sig_g4b", &[], None);
    let pids = v.expect_pids(SOON);
    assert_eq!(pids.len(), 3, "supervisor and 2 workers: {pids:?}");
    let pgid = v.pid();
    signal_group(pgid, libc::SIGINT);
    let d = v.expect_line("DELIVERED", SOON);
    let st = v.wait(Duration::from_secs(5));
    assert_eq!(st.code(), Some(130), "{st:?}");
    group_empty(pgid, Duration::from_secs(2));
    eprintln!("g04b: {d}");
    let (submitted, ok, shut): (u64, u64, u64) =
        (field(&d, "submitted"), field(&d, "ok"), field(&d, "shut"));
    assert!(ok >= 200, "results so far were delivered: {d}");
    assert_eq!(field::<u64>(&d, "other"), 0, "{d}");
    assert_eq!(ok + shut, submitted, "one outcome per submitted item: {d}");
    assert_eq!(
        field::<String>(&d, "right"),
        "true",
        "each ticket its own output: {d}"
    );
}

fn g06() {
    let mut v = Victim::spawn_with("sig_g6", &[], None);
    v.expect_line("INFLIGHT", SOON);
    signal(v.pid(), libc::SIGUSR1);
    let got = v.expect_line("GOT", SOON);
    assert!(field::<u64>(&got, "in_flight") > 0, "{got}");
    let s = v.expect_line("SHUTDOWN", SOON);
    assert_eq!(field::<String>(&s, "graceful"), "true", "{s}");
    assert_eq!(field::<u64>(&s, "completed"), 600, "{s}");
    let d = v.expect_line("DONE", SOON);
    assert_eq!((field::<u64>(&d, "ok"), field::<u64>(&d, "err")), (600, 0));
    let st = v.wait(Duration::from_secs(5));
    assert_eq!(st.code(), Some(0), "{st:?}");
    group_empty(v.pid(), Duration::from_secs(2));
}

fn g07() {
    let gate = run_dir().join("g07.gate");
    let mut v = Victim::spawn_with("sig_g7", &[(PATH_VAR, &gate)], None);
    let pids = v.expect_pids(SOON);
    assert_eq!(pids.len(), 3, "supervisor and 2 workers: {pids:?}");
    let pgid = v.pid();
    signal_group(pgid, libc::SIGTSTP);
    let mut all = pids.clone();
    all.push(pgid);
    assert!(
        wait_until(Duration::from_secs(5), || all
            .iter()
            .all(|&p| state(p) == Some('T'))),
        "the whole group stops: {:?}",
        all.iter().map(|&p| (p, state(p))).collect::<Vec<_>>()
    );
    thread::sleep(Duration::from_secs(1));
    signal_group(pgid, libc::SIGCONT);
    assert!(
        wait_until(Duration::from_secs(5), || all
            .iter()
            .all(|&p| state(p) != Some('T'))),
        "the whole group continues"
    );
    assert!(pids.iter().all(|&p| alive(p)), "no worker died: {pids:?}");
    std::fs::write(&gate, b"open").expect("gate");
    let d = v.expect_line("DONE", Duration::from_secs(20));
    assert_eq!(field::<u64>(&d, "ok"), 1500, "{d}");
    assert_eq!(field::<u64>(&d, "err"), 0, "{d}");
    assert_eq!(field::<u64>(&d, "restarts"), 0, "stopped is not dead: {d}");
    assert_eq!(field::<u64>(&d, "failed"), 0, "{d}");
    let st = v.wait(Duration::from_secs(5));
    assert_eq!(st.code(), Some(0), "{st:?}");
    group_empty(pgid, Duration::from_secs(2));
}

fn g08() {
    let mut v = Victim::spawn_with("sig_g8", &[], None);
    let e = v.expect_line("ERRORS", SOON);
    assert_eq!(e, "n=40 items=[7]", "exactly item 7 fails");
    let cause = v.expect_line("CAUSE", SOON);
    assert!(
        cause.starts_with("stage 'abort_on_7' (worker pid ")
            && cause.contains(") died on item 7: "),
        "{cause}"
    );
    let died = v.expect_line("DIED", SOON);
    assert_eq!(
        died, "killed by SIGABRT",
        "the supervisor sees the real status though the host ignores SIGCHLD"
    );
    let ign = v.expect_line("SUPIGN", SOON);
    assert!(
        !in_mask(&ign, libc::SIGCHLD),
        "the supervisor reset SIGCHLD to its default: SigIgn {ign}"
    );
    let clean = v.expect_line("CLEAN", SOON);
    assert_eq!(clean, "", "nothing left behind in the victim");
    assert_eq!(v.wait(Duration::from_secs(5)).code(), Some(0));
    group_empty(v.pid(), Duration::from_secs(2));
}

fn g11() {
    let mut v = Victim::spawn_with("sig_g11", &[], None);
    let d = v.expect_line("DONE", Duration::from_secs(50));
    eprintln!("g11: {d}");
    assert_eq!(field::<u64>(&d, "n"), 200_000, "{d}");
    assert_eq!(field::<u64>(&d, "ok"), 200_000, "{d}");
    assert_eq!(field::<u64>(&d, "err"), 0, "{d}");
    assert_eq!(field::<String>(&d, "ordered"), "true", "{d}");
    assert_eq!(field::<u64>(&d, "restarts"), 0, "{d}");
    assert!(field::<u64>(&d, "hits") >= 20, "the storm reached us: {d}");
    assert_eq!(v.wait(Duration::from_secs(5)).code(), Some(0));
    group_empty(v.pid(), Duration::from_secs(2));
}

fn i02() {
    let file = run_dir().join("i02.atexit");
    let mut v = Victim::spawn_with("sig_i2", &[(PATH_VAR, &file)], None);
    let st = v.wait(SOON);
    assert_eq!(st.code(), Some(0), "{st:?}");
    let out = v.rest().join("\n");
    assert_eq!(out.matches("partial").count(), 1, "stdout: {out:?}");
    let after: Vec<&str> = out.lines().filter(|l| l.starts_with("AFTER ")).collect();
    assert_eq!(after.len(), 1, "code after run() ran once: {out:?}");
    assert_eq!(field::<u64>(after[0], "errors"), 1, "{out:?}");
    assert_eq!(field::<u32>(after[0], "pid"), v.pid(), "{out:?}");
    let lines = std::fs::read_to_string(&file).expect("atexit file");
    assert_eq!(
        lines,
        format!("atexit {}\n", v.pid()),
        "the atexit handler ran once, in the parent"
    );
    group_empty(v.pid(), Duration::from_secs(2));
}

fn i05() {
    let mut v = Victim::spawn_with("sig_i5", &[], None);
    let first = v.expect_line("FIRST", SOON);
    let t = v.expect_line("TIMEOUT", SOON);
    let second = v.expect_line("SECOND", SOON);
    let s = v.expect_line("SHUTDOWN", SOON);
    eprintln!("i05: {first} / {t} / {second} / {s}");
    for w in [&first, &second] {
        assert_eq!(
            field::<String>(w, "blk"),
            "0000000000000000",
            "the worker's mask is empty: {w}"
        );
        assert_eq!(
            field::<String>(w, "sup_blk"),
            "0000000000000000",
            "the supervisor's mask is empty: {w}"
        );
        let ign = field::<String>(w, "ign");
        assert!(
            in_mask(&ign, libc::SIGINT),
            "SIGINT ignored (documented): {w}"
        );
        assert!(!in_mask(&ign, libc::SIGTERM), "SIGTERM not ignored: {w}");
    }
    assert_ne!(
        field::<u32>(&first, "pid"),
        field::<u32>(&second, "pid"),
        "the timed-out worker was replaced"
    );
    assert!(
        t.contains("stage 'masked' (worker pid ")
            && t.contains("died on item 1: timed out after 300 ms; worker killed"),
        "{t}"
    );
    assert!(field::<u64>(&t, "ms") < 3000, "{t}");
    assert_eq!(field::<String>(&s, "graceful"), "true", "{s}");
    assert_eq!(v.wait(Duration::from_secs(5)).code(), Some(0));
    group_empty(v.pid(), Duration::from_secs(2));
}

fn i07() {
    const MARKER: &str = "i07.pids";
    let running = Pipeline::new(
        Stage::map("outer", |x: u64| -> u64 {
            let inner: Running<u64, (u64, u32, u32)> = Pipeline::new(who_stage::<0>("inner", 2))
                .start()
                .expect("inner start");
            let mut pids = Pids::default();
            for round in 0..100u64 {
                let ts: Vec<_> = (0..4)
                    .map(|i| inner.submit(round * 4 + i).unwrap())
                    .collect();
                for t in ts {
                    pids.see(&t.wait().expect("inner item"));
                }
                if pids.workers.len() == 2 {
                    break;
                }
            }
            let mut text = format!("{} {}", my_pid(), pids.sup);
            for w in &pids.workers {
                text.push_str(&format!(" {w}"));
            }
            let m = run_dir().join(MARKER);
            let tmp = m.with_extension("tmp");
            std::fs::write(&tmp, text).expect("marker");
            std::fs::rename(&tmp, &m).expect("marker");
            loop {
                thread::sleep(Duration::from_millis(50));
                if x == u64::MAX {
                    drop(inner);
                    return x;
                }
            }
        })
        .subprocess(),
    )
    .start()
    .expect("start");
    let t = running.submit(0).unwrap();
    let marker = run_dir().join(MARKER);
    assert!(
        wait_until(SOON, || marker.exists()),
        "the outer worker started its inner pipeline"
    );
    let pids: Vec<u32> = std::fs::read_to_string(&marker)
        .unwrap()
        .split_whitespace()
        .map(|s| s.parse().unwrap())
        .collect();
    assert_eq!(
        pids.len(),
        4,
        "outer worker, inner supervisor, 2 inner workers"
    );
    let (outer, inner) = (pids[0], &pids[1..]);
    assert_eq!(common::stat_of(inner[0]).map(|s| s.0), Some(outer));
    assert!(inner.iter().all(|&p| alive(p)), "{pids:?}");
    signal(outer, libc::SIGKILL);
    wait_dead(inner, Duration::from_secs(3))
        .expect("the inner supervisor and workers die with the outer worker");
    let e = t.wait().expect_err("the outer worker was killed");
    assert_eq!(expect_died(&e, "outer", 0, "killed by SIGKILL"), outer);
    assert!(running.shutdown().unwrap().is_graceful());
}

/// `clone_args` of `clone3(2)`.
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// Starts `sleep 30` as a child of this process with exactly the pid `pid` (clone3 with
/// `set_tid`; needs CAP_SYS_ADMIN). `Err(errno)` if that pid is taken or not permitted.
fn sleeper_with_pid(pid: u32) -> Result<u32, std::io::Error> {
    let prog = CString::new("/bin/sleep").unwrap();
    let arg = CString::new("30").unwrap();
    let argv = [prog.as_ptr(), arg.as_ptr(), std::ptr::null()];
    let tid = [pid as libc::pid_t];
    let args = CloneArgs {
        exit_signal: libc::SIGCHLD as u64,
        set_tid: tid.as_ptr() as u64,
        set_tid_size: 1,
        ..CloneArgs::default()
    };
    // SAFETY: clone3 without CLONE_VM is a fork: the child gets a copy of this address
    // space and only calls execv (async-signal-safe) with pointers prepared before, then
    // _exit; it takes no lock another thread could hold.
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if r == 0 {
        // SAFETY: NUL-terminated strings and a null-terminated argv, all alive here.
        unsafe { libc::execv(prog.as_ptr(), argv.as_ptr()) };
        // SAFETY: leaving the forked child without running any of the parent's code.
        unsafe { libc::_exit(127) };
    }
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(r as u32)
}

/// Reaps our child `pid`; its raw wait status.
fn reap(pid: u32) -> i32 {
    let mut status = 0;
    // SAFETY: valid pointer; `pid` is our own child.
    let r = unsafe { libc::waitpid(pid as i32, &mut status, 0) };
    assert_eq!(r, pid as i32, "waitpid({pid})");
    status
}

/// True while our child `pid` has not exited (not reaped).
fn child_running(pid: u32) -> bool {
    let mut status = 0;
    // SAFETY: valid pointer; `pid` is our own child.
    let r = unsafe { libc::waitpid(pid as i32, &mut status, libc::WNOHANG) };
    assert!(
        r >= 0,
        "waitpid({pid}): {}",
        std::io::Error::last_os_error()
    );
    r == 0
}

fn i08() {
    // A worker that answers its pid, hangs on items 1 and 3 (3 also ignores SIGTERM, so the
    // timeout escalates to SIGKILL).
    let running = Pipeline::new(
        Stage::map("reuse", |x: u64| {
            if x == 3 {
                // SAFETY: ignoring SIGTERM in the worker is the point of this item.
                unsafe { libc::signal(libc::SIGTERM, libc::SIG_IGN) };
            }
            if x == 1 || x == 3 {
                sleep_forever();
            }
            my_pid()
        })
        .subprocess()
        .timeout(Duration::from_millis(300)),
    )
    .start()
    .expect("start");
    let first = running.submit(0).unwrap().wait().expect("item 0");
    let e = running
        .submit(1)
        .unwrap()
        .wait()
        .expect_err("item 1 times out");
    assert_eq!(
        expect_died(&e, "reuse", 1, "timed out after 300 ms; worker killed"),
        first
    );
    // The item's failure is sent after the supervisor reaped the worker: its pid is free.
    assert!(wait_until(SOON, || common::stat_of(first).is_none()));
    let bystander = sleeper_with_pid(first).unwrap_or_else(|e| {
        panic!("clone3(set_tid = {first}) for a bystander with the dead worker's pid: {e}")
    });
    assert_eq!(bystander, first);
    let second = running.submit(2).unwrap().wait().expect("item 2");
    assert_ne!(second, first);
    let e = running
        .submit(3)
        .unwrap()
        .wait()
        .expect_err("item 3 times out");
    assert_eq!(
        expect_died(&e, "reuse", 3, "timed out after 300 ms; worker killed"),
        second
    );
    let third = running.submit(4).unwrap().wait().expect("item 4");
    signal(third, libc::SIGKILL);
    // SIGKILL is final once `kill` returns: item 5 runs on the replacement.
    let fourth = running.submit(5).unwrap().wait().expect("item 5");
    assert!(![first, second, third].contains(&fourth));
    assert!(
        wait_until(SOON, || running.stats().stages[0].restarts == 3),
        "{:?}",
        running.stats()
    );
    drop(running);
    let survived = child_running(bystander);
    signal(bystander, libc::SIGKILL);
    let status = reap(bystander);
    assert!(
        survived,
        "a process that reused a dead worker's pid was signalled (status {status:#x})"
    );
    assert_eq!(status & 0x7f, libc::SIGKILL, "killed by us only");
}

fn c06a() {
    let mut v = Victim::spawn_with("sig_c6a", &[], None);
    let r = v.expect_line("ERR", SOON);
    assert!(
        r.contains("could not start the pipeline: fork failed for stage 'wide': "),
        "{r}"
    );
    assert!(
        r.contains("Resource temporarily unavailable") || r.contains("EAGAIN"),
        "{r}"
    );
    let clean = v.expect_line("CLEAN", SOON);
    assert_eq!(clean, "", "nothing left behind in the victim");
    assert_eq!(v.wait(Duration::from_secs(5)).code(), Some(0));
    group_empty(v.pid(), Duration::from_secs(2));
}

fn c06b() {
    let mut v = Victim::spawn_with("sig_c6b", &[], None);
    v.expect_line("KILLED", SOON);
    let t1 = v.expect_line("T1", SOON);
    assert!(
        t1.contains("stage 'thin' (worker pid ")
            && t1.contains("died on item 1: killed by SIGKILL"),
        "{t1}"
    );
    let rest = v.expect_line("REST", SOON);
    assert_eq!(rest, "ok=0 err=19", "the held items fail");
    let e = v.expect_line("RESTERR", SOON);
    assert!(
        e.contains("fork failed"),
        "held items fail with the fork failure: {e}"
    );
    let after = v.expect_line("AFTERSUBMIT", SOON);
    assert!(after != "hang", "a later submit gets an outcome: {after}");
    let cpu = v.expect_line("SUPCPU", SOON);
    if let Some(t) = cpu.strip_prefix("ticks=") {
        assert!(t.parse::<u64>().unwrap() < 20, "no busy loop: {cpu}");
    }
    assert_eq!(v.expect_line("CLEAN", SOON), "");
    assert_eq!(v.wait(Duration::from_secs(5)).code(), Some(0));
    group_empty(v.pid(), Duration::from_secs(2));
}
