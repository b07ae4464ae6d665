//! The bare mechanism forkpipe is measured against: forked processes joined by
//! socketpairs, items as bincode bytes, batched into length-prefixed frames — what a
//! careful programmer writes by hand, with no supervision, accounting or type erasure.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use forkpipe::{Pipeline, Stage};

pub const FRAME: usize = 64 * 1024;

fn cfg() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// Forks a child running `body`, which must not return (it `_exit`s).
pub fn fork_child(body: impl FnOnce()) -> libc::pid_t {
    // SAFETY: the bench runs this before starting any thread of its own; the child only
    // uses its own sockets and leaves with `_exit`.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        body();
        // SAFETY: `_exit` takes no pointers.
        unsafe { libc::_exit(0) };
    }
    pid
}

pub fn reap(pid: libc::pid_t) {
    let mut st = 0;
    // SAFETY: `pid` is our child; `st` is a valid out-pointer.
    unsafe { libc::waitpid(pid, &mut st, 0) };
}

fn read_frame(r: &mut UnixStream, buf: &mut Vec<u8>) -> bool {
    let mut len = [0u8; 4];
    if r.read_exact(&mut len).is_err() {
        return false;
    }
    let n = u32::from_le_bytes(len) as usize;
    buf.resize(n, 0);
    r.read_exact(buf).is_ok()
}

fn write_frame(w: &mut UnixStream, payload: &[u8]) {
    w.write_all(&(payload.len() as u32).to_le_bytes()).unwrap();
    w.write_all(payload).unwrap();
}

/// One stage of the bare chain: decode each u64 of each frame, add one, re-encode.
fn stage(mut input: UnixStream, mut output: UnixStream) {
    let mut inb = Vec::new();
    let mut outb = Vec::with_capacity(FRAME);
    while read_frame(&mut input, &mut inb) {
        let mut p = &inb[..];
        outb.clear();
        while !p.is_empty() {
            let (x, n): (u64, usize) = bincode::serde::decode_from_slice(p, cfg()).unwrap();
            p = &p[n..];
            bincode::serde::encode_into_std_write(x + 1, &mut outb, cfg()).unwrap();
        }
        write_frame(&mut output, &outb);
    }
}

/// Forks `hops` bare stages joined in a chain; returns the chain's first input, its last
/// output and the children's pids.
fn spawn_chain(hops: usize) -> (UnixStream, UnixStream, Vec<libc::pid_t>) {
    let pairs: Vec<(UnixStream, UnixStream)> =
        (0..=hops).map(|_| UnixStream::pair().unwrap()).collect();
    let mut pids = Vec::new();
    for h in 0..hops {
        let input = pairs[h].1.try_clone().unwrap();
        let output = pairs[h + 1].0.try_clone().unwrap();
        let all: Vec<i32> = pairs.iter().flat_map(|(a, b)| [fd(a), fd(b)]).collect();
        let keep = [fd(&input), fd(&output)];
        pids.push(fork_child(move || {
            for f in all {
                if !keep.contains(&f) {
                    // SAFETY: closing inherited descriptors this child does not use.
                    unsafe { libc::close(f) };
                }
            }
            stage(input, output);
        }));
    }
    let first = pairs[0].0.try_clone().unwrap();
    let last = pairs[hops].1.try_clone().unwrap();
    (first, last, pids)
}

/// One run of `items` through `hops` bare process stages (`x + 1`), batched, checked in
/// order. Timed end to end like forkpipe's side: from before the socketpairs and forks to
/// after the last `waitpid`.
pub fn chain_run(items: u64, hops: usize) -> Rates {
    let mut clock = Clock::start(items);
    let (mut first, mut last, pids) = spawn_chain(hops);
    let writer = std::thread::spawn(move || {
        let mut buf = Vec::with_capacity(FRAME);
        for x in 0..items {
            bincode::serde::encode_into_std_write(x, &mut buf, cfg()).unwrap();
            if buf.len() >= FRAME - 16 {
                write_frame(&mut first, &buf);
                buf.clear();
            }
        }
        if !buf.is_empty() {
            write_frame(&mut first, &buf);
        }
    });
    let mut got = 0u64;
    let mut inb = Vec::new();
    while got < items && read_frame(&mut last, &mut inb) {
        let mut p = &inb[..];
        while !p.is_empty() {
            let (x, n): (u64, usize) = bincode::serde::decode_from_slice(p, cfg()).unwrap();
            p = &p[n..];
            assert_eq!(x, got + hops as u64, "bare chain out of order");
            got += 1;
            clock.tick(got);
        }
    }
    writer.join().unwrap();
    drop(last);
    for p in pids {
        reap(p);
    }
    assert_eq!(got, items);
    clock.finish()
}

fn fd(s: &UnixStream) -> i32 {
    use std::os::fd::AsRawFd;
    s.as_raw_fd()
}

/// Round-trip latencies (ns) of one u64 through `hops` bare process stages, one item at a time.
pub fn chain_latencies(rounds: usize, hops: usize) -> Vec<u64> {
    let (mut first, mut last, pids) = spawn_chain(hops);
    let mut lat = Vec::with_capacity(rounds);
    let mut buf = Vec::new();
    let mut inb = Vec::new();
    for x in 0..rounds as u64 {
        let t = Instant::now();
        buf.clear();
        bincode::serde::encode_into_std_write(x, &mut buf, cfg()).unwrap();
        write_frame(&mut first, &buf);
        assert!(read_frame(&mut last, &mut inb));
        lat.push(t.elapsed().as_nanos() as u64);
    }
    drop(first);
    drop(last);
    for p in pids {
        reap(p);
    }
    lat
}

/// True when run as `cargo bench -- --test` (smoke mode: tiny sizes, figures meaningless).
pub fn test_mode() -> bool {
    std::env::args().any(|a| a == "--test")
}

pub fn percentile(v: &mut [u64], p: f64) -> u64 {
    v.sort_unstable();
    v[((v.len() - 1) as f64 * p) as usize]
}

/// The environment variable that makes a bench binary one measuring child (see [`in_child`]).
pub const MODE_VAR: &str = "FORKPIPE_BENCH_MODE";

/// This process's measuring mode, if it is a child started by [`in_child`]. In mode
/// `"server"` it calls `forkpipe::init()` first, as a program's `main` would.
pub fn child_mode() -> Option<String> {
    let mode = std::env::var(MODE_VAR).ok()?;
    if mode == "server" {
        forkpipe::init().expect("init() in a single-threaded bench child");
    }
    Some(mode)
}

/// Runs this bench binary again (same arguments) as a child measuring in `mode` — a fresh
/// process, so that fork-server mode (`forkpipe::init()` first) and direct mode can be
/// measured alternately in one run — and returns what it printed.
pub fn in_child(mode: &str) -> String {
    let out = std::process::Command::new(std::env::current_exe().expect("current_exe"))
        .args(std::env::args_os().skip(1))
        .env(MODE_VAR, mode)
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("run the bench child");
    assert!(
        out.status.success(),
        "bench child in mode {mode}: {}",
        out.status
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// The median of `v`.
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Throughput of one run, in items per second.
#[derive(Debug, Clone, Copy)]
pub struct Rates {
    /// All items over the whole run: start (forks, spawns) to shutdown (reaps, joins).
    pub e2e: f64,
    /// Steady state: the items after the [`Clock`] mark (the 10th percent of the outputs,
    /// i.e. the 1,000,000th of 10,000,000) over the time from that output to the last.
    /// Start-up, filling the pipeline and shutdown are left out.
    pub steady: f64,
}

/// Times a run from the consumer's side: [`Clock::tick`] after each output.
#[derive(Debug)]
pub struct Clock {
    items: u64,
    mark_at: u64,
    start: Instant,
    mark: Option<Instant>,
    last: Option<Instant>,
}

impl Clock {
    /// Starts timing a run of `items` items.
    pub fn start(items: u64) -> Self {
        Clock {
            items,
            mark_at: (items / 10).max(1),
            start: Instant::now(),
            mark: None,
            last: None,
        }
    }

    /// The `got`th output (counting from 1) has just arrived.
    #[inline]
    pub fn tick(&mut self, got: u64) {
        if got == self.mark_at {
            self.mark = Some(Instant::now());
        }
        if got == self.items {
            self.last = Some(Instant::now());
        }
    }

    /// Ends the run (call it after shutdown) and gives its rates.
    pub fn finish(self) -> Rates {
        let e2e = self.start.elapsed();
        let (mark, last) = (
            self.mark.expect("the mark output"),
            self.last.expect("the last output"),
        );
        let steady = (last - mark).max(Duration::from_nanos(1));
        Rates {
            e2e: self.items as f64 / e2e.as_secs_f64(),
            steady: (self.items - self.mark_at) as f64 / steady.as_secs_f64(),
        }
    }
}

/// Prints the medians of alternating runs of forkpipe and a bare mechanism (`bare_name`),
/// end to end and steady state, their ratios, and every run's figures.
/// W1's runs: 10,000,000 items (10,000 in `--test` mode), the bare side and forkpipe's
/// alternating, 5 rounds (1). Returns the item count and both sides' rates, by run.
pub fn alternate(
    mut bare: impl FnMut(u64) -> Rates,
    mut forkpipe: impl FnMut(u64) -> Rates,
) -> (u64, Vec<Rates>, Vec<Rates>) {
    let (items, runs) = if test_mode() {
        (10_000, 1)
    } else {
        (10_000_000, 5)
    };
    let (mut fp, mut b) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        b.push(bare(items));
        fp.push(forkpipe(items));
    }
    (items, fp, b)
}

pub fn print_rates(fp: &[Rates], bare: &[Rates], bare_name: &str) {
    let med = |v: &[Rates], f: fn(&Rates) -> f64| median(&mut v.iter().map(f).collect::<Vec<_>>());
    let (fe, fs) = (med(fp, |r| r.e2e), med(fp, |r| r.steady));
    let (be, bs) = (med(bare, |r| r.e2e), med(bare, |r| r.steady));
    println!("                     end to end    steady state (after the mark output)");
    println!(
        "  forkpipe        {:>9.2} M/s {:>11.2} M/s",
        fe / 1e6,
        fs / 1e6
    );
    println!(
        "  {bare_name:<15} {:>9.2} M/s {:>11.2} M/s",
        be / 1e6,
        bs / 1e6
    );
    println!(
        "  ratio           {:>9.1} %   {:>11.1} %     (target >= 50 % end to end)",
        100.0 * fe / be,
        100.0 * fs / bs
    );
    let list = |v: &[Rates], f: fn(&Rates) -> f64| {
        v.iter()
            .map(|r| format!("{:.2}", f(r) / 1e6))
            .collect::<Vec<_>>()
            .join(" ")
    };
    println!(
        "  runs, M/s e2e:    forkpipe {}  |  bare {}",
        list(fp, |r| r.e2e),
        list(bare, |r| r.e2e)
    );
    println!(
        "  runs, M/s steady: forkpipe {}  |  bare {}",
        list(fp, |r| r.steady),
        list(bare, |r| r.steady)
    );
}

/// Deterministic CPU work: `iters` steps of a 64-bit LCG from `x` (each step through
/// `black_box`, so the loop is neither folded nor vectorised away).
#[inline(never)]
pub fn spin(x: u64, iters: u64) -> u64 {
    let mut h = x;
    for _ in 0..iters {
        h = std::hint::black_box(h)
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
    }
    h
}

/// The `iters` for which [`spin`] takes about `target` here (the fastest of a few tries,
/// so that a busy neighbour does not inflate it).
pub fn calibrate(target: Duration) -> u64 {
    const PROBE: u64 = 2_000_000;
    let best = (0..5)
        .map(|i| {
            let t = Instant::now();
            std::hint::black_box(spin(i, PROBE));
            t.elapsed()
        })
        .min()
        .expect("tries");
    ((PROBE as f64) * target.as_secs_f64() / best.as_secs_f64()).max(1.0) as u64
}

/// W1's forkpipe side: `items` `u64` through 3 stages of `x + 1` (each made by `how` from a
/// thread stage), every output checked in order, timed as [`Rates`].
pub fn w1_forkpipe(items: u64, how: fn(Stage<u64, u64>) -> Stage<u64, u64>) -> Rates {
    let mut clock = Clock::start(items);
    let inc = || how(Stage::map("inc", |x: u64| x + 1));
    let p = Pipeline::new(inc()).then(inc()).then(inc());
    let mut got = 0u64;
    for r in p.run(0..items).expect("start") {
        assert_eq!(r.expect("item"), got + 3, "forkpipe out of order");
        got += 1;
        clock.tick(got);
    }
    assert_eq!(got, items);
    clock.finish()
}
