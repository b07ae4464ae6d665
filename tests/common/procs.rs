//! Process, descriptor and thread inspection through `/proc`, and the cleanliness checks
//! built on it: what a test compares against when it ends ([`Baseline`]), that the processes
//! it saw are gone ([`assert_gone`]), a watchdog that turns a hang into a failure
//! ([`with_deadline`]), and the fork locks of multi-threaded harnesses.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread;
use std::time::Duration;

/// Our own pid.
pub fn me() -> u32 {
    std::process::id()
}

/// `(pid, ppid, state)` of every process in `/proc`.
fn all_processes() -> Vec<(u32, u32, char)> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if let Some((ppid, state)) = stat_of(pid) {
            out.push((pid, ppid, state));
        }
    }
    out
}

/// `(ppid, state)` of `pid`, parsed after the last `)` of `/proc/<pid>/stat` (the command
/// name may contain spaces and parentheses).
pub fn stat_of(pid: u32) -> Option<(u32, char)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((ppid, state))
}

/// Processes whose parent is this process, zombies included: `(pid, state)`.
/// The fork server (`forkpipe::init()`) lives as long as the test process: it is not left
/// behind by a test, so it is not counted (what it forks is).
pub fn children_of_me() -> Vec<(u32, char)> {
    let me = me();
    all_processes()
        .into_iter()
        .filter(|&(pid, ppid, _)| ppid == me && Some(pid) != forkpipe::fork_server_pid())
        .map(|(pid, _, state)| (pid, state))
        .collect()
}

/// Every process below this one (children, grandchildren, ...): `(pid, ppid, state)`; the
/// fork server itself is not counted, what it forks is.
pub fn descendants_of_me() -> Vec<(u32, u32, char)> {
    let server = forkpipe::fork_server_pid();
    let all: Vec<_> = all_processes()
        .into_iter()
        .filter(|&(pid, _, _)| Some(pid) != server)
        .map(|(pid, ppid, st)| (pid, if Some(ppid) == server { me() } else { ppid }, st))
        .collect();
    let mut found = Vec::new();
    let mut parents: BTreeSet<u32> = BTreeSet::from([me()]);
    loop {
        let next: Vec<_> = all
            .iter()
            .filter(|(pid, ppid, _)| {
                parents.contains(ppid) && !found.iter().any(|(p, _, _)| p == pid)
            })
            .copied()
            .collect();
        if next.is_empty() {
            return found;
        }
        parents = next.iter().map(|&(pid, _, _)| pid).collect();
        found.extend(next);
    }
}

/// The descendant tree as text, with each process's state, wchan and command line.
pub fn describe_descendants() -> String {
    let mut s = String::new();
    for (pid, ppid, state) in descendants_of_me() {
        let wchan = std::fs::read_to_string(format!("/proc/{pid}/wchan")).unwrap_or_default();
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        s.push_str(&format!(
            "  pid {pid} (ppid {ppid}) state {state} wchan {wchan} comm {}\n",
            comm.trim()
        ));
    }
    if s.is_empty() {
        s.push_str("  (none)\n");
    }
    s
}

/// Resident set size of this process, KiB.
pub fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// Number of open descriptors of this process.
pub fn open_fds() -> usize {
    // `read_dir` itself holds one descriptor while listing: constant, so it cancels out.
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Number of threads of this process.
pub fn thread_count() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Socket inodes held by a process (`"self"` or a pid), from the `socket:[N]` links in its
/// `/proc/<p>/fd`.
pub fn socket_inodes(pid: &str) -> Vec<u64> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return out;
    };
    for entry in dir.flatten() {
        if let Ok(target) = std::fs::read_link(entry.path()) {
            let t = target.to_string_lossy();
            if let Some(n) = t.strip_prefix("socket:[").and_then(|r| r.strip_suffix(']'))
                && let Ok(n) = n.parse()
            {
                out.push(n);
            }
        }
    }
    out.sort_unstable();
    out
}

/// `setrlimit(RLIMIT_CORE, 0)`: crashed workers write no core (inherited by children).
pub fn set_no_core_dumps() {
    let lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscall with a valid pointer to a local struct.
    let r = unsafe { libc::setrlimit(libc::RLIMIT_CORE, &lim) };
    assert_eq!(r, 0, "setrlimit(RLIMIT_CORE, 0) failed");
}

/// Runs `body` on its own thread; if it has not finished after `secs` seconds, prints the
/// descendant tree (state and wchan of each process) and panics, so a hang becomes a
/// failure. A panic in `body` is propagated.
pub fn with_deadline<T: Send + 'static>(secs: u64, body: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = thread::Builder::new()
        .name("deadline-body".into())
        .spawn(move || {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body));
            let _ = tx.send(());
            r
        })
        .expect("spawn the test body");
    match rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(()) | Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => match handle.join() {
            Ok(Ok(v)) => v,
            Ok(Err(payload)) | Err(payload) => std::panic::resume_unwind(payload),
        },
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            let tree = describe_descendants();
            eprintln!("test body still running after {secs} s; descendants:\n{tree}");
            panic!("test body still running after {secs} s (hang); descendants:\n{tree}");
        }
    }
}

/// What a fork test compares against when it ends.
#[derive(Debug, Clone, Copy)]
pub struct Baseline {
    pub fds: usize,
    pub threads: usize,
}

impl Baseline {
    pub fn now() -> Self {
        Baseline {
            fds: open_fds(),
            threads: thread_count(),
        }
    }

    /// What is not clean compared to the baseline: children (zombies included),
    /// descendants, fd count beyond ±2 and, if `check_threads`, a different thread count.
    pub fn problems(&self, check_threads: bool) -> Vec<String> {
        let mut p = Vec::new();
        let children = children_of_me();
        if !children.is_empty() {
            p.push(format!("children left behind (pid, state): {children:?}"));
        }
        if !descendants_of_me().is_empty() {
            p.push(format!(
                "descendants left behind:\n{}",
                describe_descendants()
            ));
        }
        let fds = open_fds();
        if fds.abs_diff(self.fds) > 2 {
            p.push(format!(
                "open descriptors {fds}, baseline {}: {:?}",
                self.fds,
                fd_listing()
            ));
        }
        let threads = thread_count();
        if check_threads && threads != self.threads {
            p.push(format!("thread count {threads}, baseline {}", self.threads));
        }
        p
    }

    /// Panics unless [`Baseline::problems`] is empty.
    pub fn assert_clean(&self, what: &str, check_threads: bool) {
        let p = self.problems(check_threads);
        assert!(p.is_empty(), "{what}: not clean:\n{}", p.join("\n"));
    }
}

/// `fd -> target` of this process, for failure messages.
pub fn fd_listing() -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        for e in dir.flatten() {
            let target = std::fs::read_link(e.path())
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            m.insert(e.file_name().to_string_lossy().into_owned(), target);
        }
    }
    m
}

/// Asserts that none of `pids` (processes a scenario saw: workers, supervisors) is still a
/// descendant of this process, zombie or not. Used where other tests fork concurrently.
pub fn assert_gone(pids: &[u32]) {
    let desc = descendants_of_me();
    let left: Vec<_> = desc
        .iter()
        .filter(|(pid, _, _)| pids.contains(pid))
        .collect();
    assert!(
        left.is_empty(),
        "processes of this test left behind (pid, ppid, state): {left:?}"
    );
}

/// Every scenario of [`SCENARIOS`](super::SCENARIOS) and [`SHAPES`](super::SHAPES) as a
/// libtest-mimic trial named
/// `{prefix}{name}`, each run by [`run_clean`].
pub fn scenario_trials(prefix: &str) -> Vec<libtest_mimic::Trial> {
    super::SCENARIOS
        .iter()
        .chain(super::SHAPES)
        .chain(super::RUNS)
        .map(|&(name, secs, scenario)| {
            libtest_mimic::Trial::test(format!("{prefix}{name}"), move || {
                run_clean(name, secs, scenario);
                Ok(())
            })
        })
        .collect()
}

/// Runs a whole scenario the way `tests/fork.rs` does: baseline, deadline, then *clean*
/// (no children, no descendants, fds and threads back to the baseline).
pub fn run_clean(name: &str, secs: u64, scenario: fn() -> Vec<u32>) {
    let base = Baseline::now();
    let pids = with_deadline(secs, scenario);
    base.assert_clean(name, true);
    assert_gone(&pids);
}

/// Forking tests in a multi-threaded harness take this lock shared; tests that count every
/// child of the process take it exclusively.
static FORK_LOCK: RwLock<()> = RwLock::new(());

pub fn shared_fork_lock() -> RwLockReadGuard<'static, ()> {
    set_no_core_dumps();
    FORK_LOCK.read().unwrap_or_else(|p| p.into_inner())
}

pub fn exclusive_fork_lock() -> RwLockWriteGuard<'static, ()> {
    set_no_core_dumps();
    FORK_LOCK.write().unwrap_or_else(|p| p.into_inner())
}
