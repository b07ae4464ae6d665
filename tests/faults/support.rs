//! Helpers of the fault tests: trials under a watchdog with a clean check, error
//! assertions, signals, process liveness, victim processes and item types with
//! misbehaving `serde` impls.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::BufRead;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use forkpipe::{Error, Worker};
use libtest_mimic::Trial;
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::Mode;
use super::common::{self, Baseline};

/// Environment variable that turns the test binary into a victim process.
pub const VICTIM_VAR: &str = "FORKPIPE_VICTIM";

/// Environment variable that hands the test's run directory to its victims.
const RUN_DIR_VAR: &str = "FORKPIPE_FAULTS_RUN_DIR";

/// A fault test: baseline, the body under a watchdog of `secs` seconds, then *clean* (no
/// children or zombies, descriptors ±2, threads back to the baseline).
pub fn fault(name: &'static str, secs: u64, body: fn()) -> Trial {
    Trial::test(name, move || {
        common::set_no_core_dumps();
        let base = Baseline::now();
        common::with_deadline(secs, body);
        settle(&base);
        base.assert_clean(name, true);
        Ok(())
    })
}

/// A fault test kept but ignored because the runtime does not meet the contract yet; the
/// reason is in the report and next to the registration.
pub fn known_bug(name: &'static str, secs: u64, body: fn()) -> Trial {
    fault(name, secs, body).with_ignored_flag(true)
}

/// Gives exiting threads a moment to disappear from `/proc/self/task` (a joined thread is
/// gone, but a thread that was only told to stop may still be on its way out).
fn settle(base: &Baseline) {
    let deadline = Instant::now() + Duration::from_secs(2);
    while !base.problems(true).is_empty() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
}

/// Waits (bounded) until `pid` has been asleep for five polls in a row, 20 ms apart: a
/// process blocked in a write whose reader is stopped. False if it never settles.
pub fn wait_blocked(pid: u32, within: Duration) -> bool {
    let mut sleeping = 0;
    wait_until(within, || {
        let st = common::stat_of(pid).map(|s| s.1);
        sleeping = if st == Some('S') { sleeping + 1 } else { 0 };
        thread::sleep(Duration::from_millis(20));
        sleeping >= 5
    })
}

/// Polls `f` every 5 ms until it returns true or `within` has passed.
pub fn wait_until(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// This process's id.
pub fn my_pid() -> u32 {
    std::process::id()
}

/// The parent of this process.
pub fn parent_pid() -> u32 {
    // SAFETY: getppid has no preconditions.
    unsafe { libc::getppid() as u32 }
}

/// Sends `sig` to `pid` (a process of this test: a worker, a supervisor or a victim).
pub fn signal(pid: u32, sig: i32) {
    assert!(pid > 1, "refusing to signal pid {pid}");
    // SAFETY: plain syscall.
    unsafe { libc::kill(pid as i32, sig) };
}

/// Puts each of `signals` back at its default action in this process, and so in every
/// process it forks or executes afterwards, and unblocks them in the calling thread (see
/// [`unblock`]). A case that relies on a default action calls it first, in the process the
/// signal is meant for: the shell may hand the tests ignored signals (`nohup` ignores
/// SIGHUP, a background job of a non-interactive shell starts with SIGINT and SIGQUIT
/// ignored, `trap "" TERM` ignores SIGTERM), and an ignored disposition survives `fork` and
/// `exec`.
pub fn default_action(signals: &[i32]) {
    for &sig in signals {
        // SAFETY: setting a signal disposition to its default runs no handler code.
        let r = unsafe { libc::signal(sig, libc::SIG_DFL) };
        assert_ne!(r, libc::SIG_ERR, "signal({sig}, SIG_DFL)");
    }
    unblock(signals);
}

/// Unblocks `signals` in the calling thread (threads it creates later inherit its mask). A
/// case that relies on a signal being delivered calls it (through [`default_action`], or
/// when it installs a handler) in the victim's main thread before it starts anything: a
/// blocked mask is inherited through `fork` and `exec` too (std's `Command` keeps it), so a
/// victim of a test binary started with signals blocked would never see them.
pub fn unblock(signals: &[i32]) {
    let mut set = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigemptyset initialises the set it is given a valid pointer to.
    let r = unsafe { libc::sigemptyset(set.as_mut_ptr()) };
    assert_eq!(r, 0, "sigemptyset");
    // SAFETY: initialised just above.
    let mut set = unsafe { set.assume_init() };
    for &sig in signals {
        // SAFETY: a valid pointer to an initialised set.
        let r = unsafe { libc::sigaddset(&mut set, sig) };
        assert_eq!(r, 0, "sigaddset({sig})");
    }
    // SAFETY: valid pointer to an initialised set; no old mask wanted.
    let r = unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut()) };
    assert_eq!(r, 0, "pthread_sigmask(SIG_UNBLOCK)");
}

/// True if `pid` exists and has not exited (a zombie is dead).
pub fn alive(pid: u32) -> bool {
    matches!(common::stat_of(pid), Some((_, s)) if s != 'Z' && s != 'X')
}

/// Waits until none of `pids` is alive; `Err` lists the survivors.
pub fn wait_dead(pids: &[u32], within: Duration) -> Result<(), String> {
    if wait_until(within, || pids.iter().all(|&p| !alive(p))) {
        return Ok(());
    }
    let left: Vec<_> = pids
        .iter()
        .filter(|&&p| alive(p))
        .map(|&p| (p, common::stat_of(p)))
        .collect();
    Err(format!("still alive after {within:?}: {left:?}"))
}

/// Asserts that `e` is a worker death of `stage` on `item` whose cause contains `cause`,
/// with the whole sentence of DESIGN §2.4; returns the worker's pid.
#[track_caller]
pub fn expect_died(e: &Error, stage: &str, item: u64, cause: &str) -> u32 {
    let Error::Died {
        stage: s,
        item: i,
        worker,
        cause: c,
    } = e
    else {
        panic!("item {item}: expected a death of stage '{stage}' ({cause}), got {e:?}");
    };
    let Worker::Process(pid) = *worker else {
        panic!("a dead worker is a process: {e:?}");
    };
    assert_eq!(s, stage, "{e}");
    assert_eq!(*i, item, "{e}");
    assert!(c.contains(cause), "cause {c:?} should contain {cause:?}");
    let text = e.to_string();
    let want = format!("stage '{stage}' (worker pid {pid}) died on item {item}: {cause}");
    assert!(
        text.contains(&want),
        "message {text:?} should contain {want:?}"
    );
    assert_ne!(pid, my_pid(), "{e}");
    pid
}

/// Asserts the results of an ordered run over `0..n` whose `Ok` values start with their
/// item number: one outcome per item, in input order. Returns the errors by item.
#[track_caller]
pub fn by_item<T: std::fmt::Debug>(
    results: &[Result<T, Error>],
    n: u64,
    id: impl Fn(&T) -> u64,
) -> BTreeMap<u64, Error> {
    assert_eq!(
        results.len() as u64,
        n,
        "one outcome per item (exactly once)"
    );
    let mut errors = BTreeMap::new();
    for (i, r) in results.iter().enumerate() {
        let i = i as u64;
        match r {
            Ok(v) => assert_eq!(id(v), i, "outcome {i} is item {i} (order kept): {v:?}"),
            Err(e) => {
                assert_eq!(e.item(), Some(i), "outcome {i} is item {i}: {e}");
                errors.insert(i, e.clone());
            }
        }
    }
    errors
}

/// The pid a stage reports in its output, and that of its parent (the supervisor).
pub fn who() -> (u32, u32) {
    (my_pid(), parent_pid())
}

// ---------------------------------------------------------------------------------------
// Victims: this test binary re-executed with `FORKPIPE_VICTIM=<scenario>`
// ---------------------------------------------------------------------------------------

/// A victim process in its own process group, its stdout read line by line.
pub struct Victim {
    pub child: Child,
    lines: Receiver<String>,
    reader: Option<JoinHandle<()>>,
    reaped: bool,
}

impl Victim {
    pub fn spawn(scenario: &str) -> Victim {
        Victim::spawn_with(scenario, &[], None)
    }

    /// A victim with extra environment and, optionally, its stderr (and that of every
    /// process it forks) written to a file.
    pub fn spawn_with(
        scenario: &str,
        env: &[(&str, &std::path::Path)],
        stderr: Option<&std::path::Path>,
    ) -> Victim {
        let exe = std::env::current_exe().expect("current_exe");
        let mut cmd = Command::new(exe);
        cmd.env(VICTIM_VAR, scenario)
            .env(RUN_DIR_VAR, run_dir())
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        match stderr {
            Some(p) => cmd.stderr(std::fs::File::create(p).expect("stderr file")),
            None => cmd.stderr(Stdio::inherit()),
        };
        let mut child = cmd.spawn().expect("spawn the victim");
        let out = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Victim {
            child,
            lines: rx,
            reader: Some(reader),
            reaped: false,
        }
    }

    /// Every line still to come, until the victim's stdout closes (bounded).
    pub fn rest(&mut self) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut v = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => v.push(l),
                Err(RecvTimeoutError::Disconnected) => return v,
                Err(RecvTimeoutError::Timeout) => panic!("victim stdout still open: {v:?}"),
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The next line starting with `tag ` (other lines are skipped), without the tag.
    pub fn expect_line(&mut self, tag: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    if l == tag {
                        return String::new();
                    }
                    if let Some(rest) = l.strip_prefix(tag).and_then(|r| r.strip_prefix(' ')) {
                        return rest.to_string();
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!("victim: no '{tag}' line within {within:?}")
                }
                Err(RecvTimeoutError::Disconnected) => {
                    thread::sleep(Duration::from_millis(100));
                    let st = self.child.try_wait();
                    panic!("victim: output ended before a '{tag}' line; victim status {st:?}")
                }
            }
        }
    }

    /// Numbers of a `PIDS` line.
    pub fn expect_pids(&mut self, within: Duration) -> Vec<u32> {
        self.expect_line("PIDS", within)
            .split_whitespace()
            .map(|s| s.parse().expect("a pid"))
            .collect()
    }

    /// Waits for the victim's exit (bounded); its status.
    pub fn wait(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                self.reaped = true;
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "victim did not exit in {within:?}"
            );
            thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Victim {
    fn drop(&mut self) {
        if !self.reaped {
            // Safety net: the whole group (the victim, its supervisor and workers).
            // SAFETY: plain syscall on the victim's own process group.
            unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
            let _ = self.child.wait();
        }
        if let Some(r) = self.reader.take() {
            // Ends when every holder of the pipe (workers included) is gone.
            let (tx, rx) = std::sync::mpsc::channel();
            thread::spawn(move || {
                let _ = r.join();
                let _ = tx.send(());
            });
            let _ = rx.recv_timeout(Duration::from_secs(5));
        }
    }
}

// ---------------------------------------------------------------------------------------
// Item types
// ---------------------------------------------------------------------------------------

/// Bytes serialized as one bincode byte string (fast even in debug builds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bytes(pub Vec<u8>);

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Bytes;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Bytes, E> {
                Ok(Bytes(v.to_vec()))
            }
            fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
                Ok(Bytes(v))
            }
        }
        d.deserialize_byte_buf(V)
    }
}

/// What a [`Marked`] value does when it is encoded or decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    Fine,
    Err,
    Panic,
    Abort,
}

/// A `u64` whose `Serialize` misbehaves for `ENC_BAD` per `ENC` and whose `Deserialize`
/// misbehaves for `DEC_BAD` per `DEC`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Marked<const ENC: u8, const DEC: u8>(pub u64);

/// The value that misbehaves.
pub const BAD: u64 = 13;

fn act(code: u8) -> Act {
    match code {
        1 => Act::Err,
        2 => Act::Panic,
        3 => Act::Abort,
        _ => Act::Fine,
    }
}

/// `Act` codes for the const parameters of [`Marked`].
pub const FINE: u8 = 0;
pub const ERR: u8 = 1;
pub const PANIC: u8 = 2;
pub const ABORT: u8 = 3;

impl<const ENC: u8, const DEC: u8> Serialize for Marked<ENC, DEC> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0 == BAD {
            match act(ENC) {
                Act::Fine => {}
                Act::Err => return Err(serde::ser::Error::custom("refusing to encode 13")),
                Act::Panic => panic!("Serialize panicked on 13"),
                Act::Abort => std::process::abort(),
            }
        }
        s.serialize_u64(self.0)
    }
}

impl<'de, const ENC: u8, const DEC: u8> Deserialize<'de> for Marked<ENC, DEC> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = u64::deserialize(d)?;
        if v == BAD {
            match act(DEC) {
                Act::Fine => {}
                Act::Err => return Err(de::Error::custom("refusing to decode 13")),
                Act::Panic => panic!("Deserialize panicked on 13"),
                Act::Abort => std::process::abort(),
            }
        }
        Ok(Marked(v))
    }
}

// ---------------------------------------------------------------------------------------
// One-shot markers shared by the test process and its workers
// ---------------------------------------------------------------------------------------

static RUN_DIR: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();

/// A scratch directory of this test run, shared with its victims. `run` makes it before
/// `forkpipe::init()`, so that every worker has the path: in fork-server mode a worker is
/// forked from the image taken at `init()` and sees nothing set later.
pub fn run_dir() -> &'static std::path::Path {
    RUN_DIR.get_or_init(|| {
        if let Some(d) = std::env::var_os(RUN_DIR_VAR) {
            return d.into();
        }
        let d = std::env::temp_dir().join(format!("forkpipe-faults-{}", my_pid()));
        std::fs::create_dir_all(&d).expect("scratch dir");
        d
    })
}

/// True for the first caller with this tag in this test run, in any process.
pub fn first_time(tag: &str) -> bool {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(run_dir().join(tag))
        .is_ok()
}

/// The index of this call among all calls with this tag in this test run, in any
/// process (0, 1, 2, …).
pub fn ticket_number(tag: &str) -> usize {
    (0..)
        .find(|n| first_time(&format!("{tag}.{n}")))
        .expect("a free number")
}

/// Hands `value` to the stages of the pipelines started next, under `name` in the run
/// directory: data that a closure would capture, for a process stage that must be a fn
/// item (fork-server mode makes it again from its type) and whose data is made at run time.
pub fn share<T: Serialize>(name: &str, value: &T) {
    let bytes = bincode::serde::encode_to_vec(value, bincode::config::standard()).expect("encode");
    let tmp = run_dir().join(format!("{name}.tmp"));
    std::fs::write(&tmp, bytes).expect("write the shared value");
    std::fs::rename(&tmp, run_dir().join(name)).expect("publish the shared value");
}

/// The value last [`share`]d under `name`.
pub fn shared<T: serde::de::DeserializeOwned>(name: &str) -> T {
    let bytes = std::fs::read(run_dir().join(name)).expect("read the shared value");
    bincode::serde::decode_from_slice(&bytes, bincode::config::standard())
        .expect("decode the shared value")
        .0
}

// ---------------------------------------------------------------------------------------
// Runs of `(x, pid)` stages
// ---------------------------------------------------------------------------------------

/// The results of a run and its stats.
pub type Collected = (Vec<Result<(u64, u32), Error>>, forkpipe::Stats);

/// Runs `p` over `0..n` to the end.
pub fn collect(p: forkpipe::Pipeline<u64, (u64, u32)>, n: u64) -> Collected {
    let mut results = p.run(0..n).expect("start");
    let all: Vec<_> = results.by_ref().collect();
    let stats = results.stats();
    (all, stats)
}

/// Asserts an ordered run over `0..n` in which only item `at` failed, with a death whose
/// cause contains `cause`; the dead worker was replaced once and answered no later item.
/// Returns the dead worker's pid.
#[track_caller]
pub fn only_one_death((all, stats): &Collected, n: u64, stage: &str, at: u64, cause: &str) -> u32 {
    let errors = by_item(all, n, |v| v.0);
    assert_eq!(errors.len(), 1, "only item {at} fails: {errors:?}");
    let e = errors
        .get(&at)
        .unwrap_or_else(|| panic!("item {at} fails: {errors:?}"));
    let pid = expect_died(e, stage, at, cause);
    assert_eq!(stats.stages[0].failed, 1, "{stats:?}");
    assert_eq!(
        stats.stages[0].restarts, 1,
        "the dead worker was replaced once: {stats:?}"
    );
    let later: std::collections::BTreeSet<u32> = all[at as usize + 1..]
        .iter()
        .map(|r| r.as_ref().expect("ok").1)
        .collect();
    assert!(
        !later.contains(&pid),
        "the dead worker {pid} answered later items"
    );
    pid
}

// ---------------------------------------------------------------------------------------
// A busy parent
// ---------------------------------------------------------------------------------------

/// 8 threads of this process that keep taking the stdout and stderr locks (writing
/// nothing), allocating and reading the environment — the locks a fork must not inherit
/// held — until dropped.
pub struct Noisy {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<JoinHandle<u64>>,
}

impl Noisy {
    pub fn start() -> Noisy {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let threads = (0..8)
            .map(|k| {
                let stop = std::sync::Arc::clone(&stop);
                thread::spawn(move || {
                    let mut n = 0u64;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        match k % 4 {
                            0 => print!(""),
                            1 => eprint!(""),
                            2 => {
                                let v: Vec<u64> = (0..256).collect();
                                n = n.wrapping_add(v.iter().sum::<u64>());
                            }
                            _ => {
                                n = n.wrapping_add(
                                    std::env::var("PATH").map_or(0, |s| s.len() as u64),
                                );
                            }
                        }
                    }
                    n
                })
            })
            .collect();
        Noisy { stop, threads }
    }
}

impl Drop for Noisy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for h in self.threads.drain(..) {
            let _ = h.join();
        }
    }
}

/// The mode this run of the catalogue starts pipelines in (set once, first thing in `run`).
static MODE: std::sync::OnceLock<Mode> = std::sync::OnceLock::new();

/// Sets the catalogue's mode; once, before any case runs.
pub fn set_mode(mode: Mode) {
    MODE.set(mode).expect("the mode is set once");
}

/// True when the catalogue runs in fork-server mode (`forkpipe::init()` was called first).
pub fn server_mode() -> bool {
    MODE.get() == Some(&Mode::Server)
}
