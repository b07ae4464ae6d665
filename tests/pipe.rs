//! `pipe_next` pairs (DESIGN §2.1, §3; FAULTS.md section J), through the builder API
//! (`Pipeline::pipe`, `Pipeline::then_pipe`, `then_producer`/`then_consumer`). The cases of
//! sections 1, 4 and 5 run twice: with the pair as the whole pipeline (it takes the
//! pipeline's input from the feeder) and with the pair after a thread stage.
//!
//! Like `tests/fork.rs`, this target runs under libtest-mimic with one test thread, so each
//! test can assert that the whole process is clean afterwards (no child, zombie or
//! descendant; descriptors and threads back to their baseline), and each runs under a
//! watchdog that turns a hang into a failure with the descendant tree.
//!
//! Sizes: the 256 MiB hash test and the 1 GiB count test run in the debug profile (what
//! `cargo test` builds). sha256 runs at about 55 MB/s there, so the expected digest is
//! computed on a thread of the test while the pair streams (5–6 s on 2 cores); the 1 GiB
//! count involves no hashing and is bound by the socket, not by debug code: 0.1–0.3 s
//! (5–9 GB/s) measured here, so the full 1 GiB is kept. Both print their time.
//!
//! Out-of-band reports (a worker's pid for `kill -9`, the error kind a producer saw after
//! its consumer stopped) go through files in a per-test temporary directory, since the
//! producer's return value is not an output and the outcome of an item whose consumer
//! stopped early is the consumer's.

#[path = "common/mod.rs"]
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, BufRead, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use forkpipe::{Consumer, Error, PipeReader, PipeWriter, Pipeline, Producer, Stage, Wire, Worker};
use libtest_mimic::{Arguments, Failed, Trial};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use common::{Baseline, Who, me, with_deadline};

fn main() {
    let mut args = Arguments::from_args();
    // Tests here count every child of the process: they must not overlap.
    args.test_threads = Some(1);
    common::set_no_core_dumps();

    let mut trials = Vec::new();
    for at in [At::First, At::AfterStage] {
        pair_trials(at, &mut trials);
    }
    trials.push(clean("stream_256_mib_sha256_processes", 180, || {
        hashed_stream(Mode::Processes, 256 << 20)
    }));
    trials.push(clean("stream_0_bytes_and_1_gib_processes", 180, || {
        sizes(Mode::Processes, &[0, 1 << 30, 0, 1])
    }));
    trials.push(clean("stream_0_bytes_and_256_mib_threads", 120, || {
        sizes(Mode::Threads, &[0, 256 << 20, 0, 1])
    }));
    trials.push(clean(
        "pair_between_process_stages_in_order",
        60,
        pair_between_stages,
    ));

    libtest_mimic::run(&args, trials).exit();
}

/// The cases that hold wherever the pair stands, with the pair at `at`.
fn pair_trials(at: At, trials: &mut Vec<Trial>) {
    let a = at.tag();
    for mode in [
        Mode::Processes,
        Mode::Threads,
        Mode::ProducerProcess,
        Mode::ConsumerProcess,
    ] {
        trials.push(clean(
            format!("atbu_dual_stage_producer_consumer_{}_{a}", mode.tag()),
            30,
            move || atbu_dual_stage(mode, at),
        ));
    }
    for mode in [Mode::Processes, Mode::Threads] {
        let t = mode.tag();
        trials.push(clean(
            format!("successive_items_reuse_two_couples_{t}_{a}"),
            60,
            move || couples_are_reused(mode, at),
        ));
        trials.push(clean(
            format!("j1_producer_panics_mid_stream_{t}_{a}"),
            60,
            move || j1_producer_panics(mode, at),
        ));
        trials.push(clean(
            format!("j3_consumer_stops_early_{t}_{a}"),
            60,
            move || j3_consumer_stops_early(mode, at),
        ));
        trials.push(clean(
            format!("j4_consumer_panics_at_once_{t}_{a}"),
            60,
            move || j4_consumer_panics(mode, at),
        ));
        trials.push(clean(
            format!("j5_producer_writes_nothing_{t}_{a}"),
            30,
            move || j5_producer_writes_nothing(mode, at),
        ));
    }
    let halves = [
        (
            "j2_producer_killed_is_never_ok_truncated",
            "j6_producer_hangs",
            true,
        ),
        ("j2_consumer_killed", "j6_consumer_hangs", false),
    ];
    for (killed, hangs, producer) in halves {
        trials.push(clean(format!("{killed}_processes_{a}"), 60, move || {
            j2_half_killed(producer, at)
        }));
        trials.push(clean(
            format!("{hangs}_timeout_300ms_processes_{a}"),
            60,
            move || j6_half_hangs(producer, at),
        ));
    }
}

/// A trial run the way `tests/fork.rs` runs its scenarios: baseline, watchdog, then clean.
fn clean(name: impl Into<String>, secs: u64, body: impl FnOnce() + Send + 'static) -> Trial {
    let name = name.into();
    Trial::test(name.clone(), move || -> Result<(), Failed> {
        let base = Baseline::now();
        with_deadline(secs, body);
        base.assert_clean(&name, true);
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------
// Where the halves run, and small helpers
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Neither half `subprocess`: both on threads of this process.
    Threads,
    /// Both halves `subprocess`.
    Processes,
    /// Only the producer `subprocess`: both run in processes anyway.
    ProducerProcess,
    /// Only the consumer `subprocess`: both run in processes anyway.
    ConsumerProcess,
}

impl Mode {
    fn tag(self) -> &'static str {
        match self {
            Mode::Threads => "threads",
            Mode::Processes => "processes",
            Mode::ProducerProcess => "mixed_producer_subprocess",
            Mode::ConsumerProcess => "mixed_consumer_subprocess",
        }
    }

    /// Whether the pair's halves run in worker processes (either half `subprocess`).
    fn in_processes(self) -> bool {
        self != Mode::Threads
    }

    fn pair<In: Wire, Out: Wire>(
        self,
        p: Producer<In>,
        c: Consumer<In, Out>,
    ) -> (Producer<In>, Consumer<In, Out>) {
        match self {
            Mode::Threads => (p, c),
            Mode::Processes => (p.subprocess(), c.subprocess()),
            Mode::ProducerProcess => (p.subprocess(), c),
            Mode::ConsumerProcess => (p, c.subprocess()),
        }
    }
}

/// Where the pair stands in its pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum At {
    /// `producer ⇒ consumer`: the pair is the whole pipeline, fed by the feeder.
    First,
    /// `feed | producer ⇒ consumer`, the feed being an identity thread stage.
    AfterStage,
}

impl At {
    fn tag(self) -> &'static str {
        match self {
            At::First => "pair_first",
            At::AfterStage => "after_a_stage",
        }
    }
}

/// The pair `p ⇒ c`, its halves placed as `mode` says, standing `at`.
fn pair_pipeline<In: Wire, Out: Wire>(
    mode: Mode,
    at: At,
    p: Producer<In>,
    c: Consumer<In, Out>,
) -> Pipeline<In, Out> {
    let (p, c) = mode.pair(p, c);
    match at {
        At::First => Pipeline::pipe(p, c),
        At::AfterStage => Pipeline::new(Stage::map("feed", |x: In| x)).then_pipe(p, c),
    }
}

/// Asserts that `who` ran where `mode` says the pair runs.
fn check_place(mode: Mode, who: &Who, what: &str) {
    if mode.in_processes() {
        assert_ne!(
            who.pid,
            me(),
            "{what} ran in the caller's process ({mode:?})"
        );
        assert_ne!(
            who.ppid,
            me(),
            "{what}: workers are forked by the supervisor, not by the caller"
        );
    } else {
        assert_eq!(
            who.pid,
            me(),
            "{what} of a thread pair ran in another process"
        );
    }
}

/// Asserts that an error names a worker of the right kind.
fn check_worker(mode: Mode, e: &Error) {
    match (mode.in_processes(), e.worker()) {
        (true, Some(Worker::Process(pid))) => assert_ne!(pid, me(), "{e}"),
        (false, Some(Worker::Thread(_))) => {}
        (_, w) => panic!("{mode:?}: unexpected worker {w:?} in {e}"),
    }
}

/// The per-stage counters, by stage name: `(failed, restarts)`.
fn failures_and_restarts(stats: &forkpipe::Stats) -> BTreeMap<String, (u64, u64)> {
    stats
        .stages
        .iter()
        .map(|s| (s.name.clone(), (s.failed, s.restarts)))
        .collect()
}

/// Runs `p` over `input`: every outcome (one per item: these pipelines have one output per
/// item) and the final stats, after checking that every item has exactly one outcome.
fn run_all<In: Send + 'static, Out: Send + 'static>(
    p: Pipeline<In, Out>,
    input: Vec<In>,
) -> (Vec<Result<Out, Error>>, forkpipe::Stats) {
    let n = input.len() as u64;
    let mut results = p.run(input).expect("run");
    let out: Vec<_> = results.by_ref().collect();
    let stats = results.stats();
    drop(results);
    assert_eq!(out.len() as u64, n, "one outcome per item");
    assert_eq!((stats.submitted, stats.completed), (n, n), "{stats:?}");
    (out, stats)
}

/// Asserts that no worker of any stage was replaced (no process died).
fn assert_no_restarts(stats: &forkpipe::Stats) {
    for s in &stats.stages {
        assert_eq!(s.restarts, 0, "stage '{}' had restarts: {stats:?}", s.name);
    }
}

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Who runs this code: process and thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
struct Id {
    pid: u32,
    tid: i32,
}

impl Id {
    fn me() -> Self {
        Id {
            pid: std::process::id(),
            // SAFETY: gettid has no preconditions.
            tid: unsafe { libc::gettid() },
        }
    }
}

/// Writes the producer's [`Id`] in-band (8 bytes).
fn send_id(w: &mut PipeWriter) -> io::Result<()> {
    let id = Id::me();
    let mut b = [0u8; 8];
    b[..4].copy_from_slice(&id.pid.to_le_bytes());
    b[4..].copy_from_slice(&id.tid.to_le_bytes());
    w.write_all(&b)
}

/// Reads what [`send_id`] wrote.
fn recv_id(r: &mut PipeReader) -> io::Result<Id> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)?;
    Ok(Id {
        pid: u32::from_le_bytes(b[..4].try_into().expect("4 bytes")),
        tid: i32::from_le_bytes(b[4..].try_into().expect("4 bytes")),
    })
}

/// Writes `n` bytes in 64 KiB writes.
fn write_bytes(w: &mut impl Write, mut n: u64, fill: u8) -> io::Result<()> {
    let chunk = vec![fill; 64 * 1024];
    while n > 0 {
        let k = n.min(chunk.len() as u64) as usize;
        w.write_all(&chunk[..k])?;
        n -= k as u64;
    }
    Ok(())
}

/// The naive consumer of J2: counts bytes until the stream ends, *however* it ends (end of
/// file or an error), and calls that a success.
fn count_until_end(r: &mut PipeReader) -> u64 {
    let mut buf = vec![0u8; 256 * 1024];
    let mut n = 0u64;
    loop {
        match r.read(&mut buf) {
            Ok(0) | Err(_) => return n,
            Ok(k) => n += k as u64,
        }
    }
}

/// A per-test directory for what workers report out of band; removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("forkpipe-pipe-test-{}-{tag}", me()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create the test's temp dir");
        TempDir(p)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes `text` to `path` atomically (write then rename), from a worker.
fn publish(path: &Path, text: &str) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

/// Waits until a worker published `path`.
fn wait_for_file(path: &Path, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(s) = std::fs::read_to_string(path) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "nothing published at {} after {limit:?}",
            path.display()
        );
        thread::sleep(Duration::from_millis(5));
    }
}

// ---------------------------------------------------------------------------------------
// 1. atbu's "Dual-stage Producer/Consumer Example"
// ---------------------------------------------------------------------------------------

/// atbu's `ProducerConsumerWorkItem`: the flag chooses how the producer writes (atbu: its
/// `PipeConnectionIO` wrapper or the raw connection; here: a `BufWriter` around the
/// `PipeWriter`, or `write_all` on it directly).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct PcWorkItem {
    id: u64,
    demo_pipe_io_wrapper: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct PcResult {
    id: u64,
    /// What the consumer received.
    consumer_data: Vec<u8>,
    /// The reader's own count.
    bytes_read: u64,
    consumer: Who,
}

/// The producer's 10 "random" bytes for a work item (atbu uses `os.urandom(10)`; a seeded
/// generator lets the test know them).
fn producer_data(id: u64) -> [u8; 10] {
    let mut s = 0xA7B0_D0A1_5EED ^ id;
    let a = splitmix(&mut s).to_le_bytes();
    let b = splitmix(&mut s).to_le_bytes();
    let mut out = [0u8; 10];
    out[..8].copy_from_slice(&a);
    out[8..].copy_from_slice(&b[..2]);
    out
}

fn atbu_dual_stage(mode: Mode, at: At) {
    let producer = Producer::new(
        "producer",
        |wi: PcWorkItem, w: &mut PipeWriter| -> Result<(), String> {
            let data = producer_data(wi.id);
            if wi.demo_pipe_io_wrapper {
                let mut bw = BufWriter::new(&mut *w);
                bw.write_all(&data).map_err(|e| e.to_string())?;
                bw.into_inner().map_err(|e| e.to_string())?;
            } else {
                w.write_all(&data).map_err(|e| e.to_string())?;
            }
            // atbu asserts `producer_bytes_written == 10`; here a producer that wrote
            // anything else fails the item (its failure wins over the consumer's output).
            match w.written() {
                10 => Ok(()),
                n => Err(format!("producer wrote {n} bytes, expected 10")),
            }
        },
    );
    let consumer = Consumer::new(
        "consumer",
        |wi: PcWorkItem, r: &mut PipeReader| -> io::Result<PcResult> {
            let mut consumer_data = Vec::new();
            r.read_to_end(&mut consumer_data)?;
            Ok(PcResult {
                id: wi.id,
                consumer_data,
                bytes_read: r.bytes_read(),
                consumer: Who::me(),
            })
        },
    );
    let running = pair_pipeline(mode, at, producer, consumer)
        .start()
        .expect("start");
    let wil = [
        PcWorkItem {
            id: 0,
            demo_pipe_io_wrapper: true,
        },
        PcWorkItem {
            id: 1,
            demo_pipe_io_wrapper: false,
        },
    ];
    let tickets: Vec<_> = wil
        .iter()
        .map(|wi| running.submit(wi.clone()).expect("submit"))
        .collect();
    let results: Vec<PcResult> = tickets
        .into_iter()
        .map(|t| t.wait().expect("the work item succeeds"))
        .collect();
    let report = running.shutdown().expect("shutdown");
    assert!(report.is_graceful(), "{report:?}");

    assert_eq!(results.len(), 2);
    for (wi, r) in wil.iter().zip(&results) {
        assert_eq!(r.id, wi.id);
        assert_eq!(r.bytes_read, 10, "num_bytes of #{}", wi.id);
        assert_eq!(
            r.consumer_data,
            producer_data(wi.id),
            "#{}: c_bytes must equal p_bytes",
            wi.id
        );
        check_place(mode, &r.consumer, "the consumer");
    }
    assert_ne!(results[0].consumer_data, results[1].consumer_data);
    let st = report.stats();
    assert_eq!((st.submitted, st.completed), (2, 2), "{st:?}");
    for s in &st.stages {
        assert_eq!((s.failed, s.dropped, s.restarts), (0, 0, 0), "{st:?}");
    }
}

// ---------------------------------------------------------------------------------------
// 2. A 256 MiB stream checked by sha256
// ---------------------------------------------------------------------------------------

const BLOCK: usize = 64 * 1024;

/// A deterministic stream: 64 KiB blocks, each a seeded random block with its index mixed
/// into two places (so a lost, duplicated or reordered block changes the digest).
struct Pattern {
    base: Vec<u8>,
}

impl Pattern {
    fn new(seed: u64) -> Self {
        let mut s = seed;
        let base = (0..BLOCK / 8)
            .flat_map(|_| splitmix(&mut s).to_le_bytes())
            .collect();
        Pattern { base }
    }

    fn block(&self, b: u64, out: &mut [u8]) {
        out.copy_from_slice(&self.base);
        for (o, k) in out[..8].iter_mut().zip(b.to_le_bytes()) {
            *o ^= k;
        }
        let mid = BLOCK / 2 + 3;
        for (o, k) in out[mid..mid + 8]
            .iter_mut()
            .zip(b.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_le_bytes())
        {
            *o ^= k;
        }
    }

    /// The whole stream of `len` bytes, in blocks, to `f`.
    fn for_each_block(
        &self,
        len: u64,
        mut f: impl FnMut(&[u8]) -> io::Result<()>,
    ) -> io::Result<()> {
        let mut buf = vec![0u8; BLOCK];
        let mut left = len;
        let mut b = 0u64;
        while left > 0 {
            self.block(b, &mut buf);
            let k = left.min(BLOCK as u64) as usize;
            f(&buf[..k])?;
            left -= k as u64;
            b += 1;
        }
        Ok(())
    }
}

/// Write sizes the producer cycles through (frames of every size, split across blocks).
const PIECES: [usize; 7] = [BLOCK, 1, 4095, 30_000, 7, 12_345, BLOCK];
/// Read sizes the consumer cycles through; 0 means "through `BufRead::fill_buf`".
const READS: [usize; 6] = [BLOCK, 13, 100_000, 0, 4096, 1 << 20];

fn hashed_stream(mode: Mode, len: u64) {
    let seed = 0x0DD_BA11_u64;
    // The expected digest, computed here while the pair streams.
    let expected = thread::spawn(move || {
        let mut h = Sha256::new();
        Pattern::new(seed)
            .for_each_block(len, |b| {
                h.update(b);
                Ok(())
            })
            .expect("hash");
        <[u8; 32]>::from(h.finalize())
    });
    let producer = Producer::new("hash-producer", move |seed: u64, w: &mut PipeWriter| {
        let mut i = 0;
        Pattern::new(seed).for_each_block(len, |mut block| {
            while !block.is_empty() {
                let k = PIECES[i % PIECES.len()].min(block.len());
                i += 1;
                w.write_all(&block[..k])?;
                block = &block[k..];
            }
            Ok(())
        })
    });
    let consumer = Consumer::new(
        "hash-consumer",
        |_seed: u64, r: &mut PipeReader| -> io::Result<(u64, [u8; 32], u64)> {
            let mut h = Sha256::new();
            let mut buf = vec![0u8; 1 << 20];
            let mut n = 0u64;
            for i in 0.. {
                let k = match READS[i % READS.len()] {
                    0 => {
                        let got = r.fill_buf()?;
                        h.update(got);
                        let k = got.len();
                        r.consume(k);
                        k
                    }
                    want => {
                        let k = r.read(&mut buf[..want])?;
                        h.update(&buf[..k]);
                        k
                    }
                };
                if k == 0 {
                    break;
                }
                n += k as u64;
            }
            Ok((n, h.finalize().into(), r.bytes_read()))
        },
    );
    let t0 = Instant::now();
    let (out, stats) = run_all(
        pair_pipeline(mode, At::AfterStage, producer, consumer),
        vec![seed],
    );
    assert_no_restarts(&stats);
    let took = t0.elapsed();
    let expected = expected.join().expect("hash thread");
    eprintln!("    {len} bytes hashed through a {mode:?} pair in {took:.2?}");
    assert_eq!(out.len(), 1, "one outcome");
    let (n, digest, read) = out.into_iter().next().unwrap().expect("the item succeeds");
    assert_eq!(n, len, "bytes received");
    assert_eq!(read, len, "the reader's own count");
    assert_eq!(digest, expected, "sha256 of the stream");
}

// ---------------------------------------------------------------------------------------
// 3. Items of 0 bytes and of 1 GiB
// ---------------------------------------------------------------------------------------

fn sizes(mode: Mode, sizes: &[u64]) {
    let producer = Producer::new("sized-producer", |n: u64, w: &mut PipeWriter| {
        write_bytes(w, n, 0x5A)?;
        if w.written() == n {
            Ok(())
        } else {
            Err(io::Error::other(format!("wrote {} of {n}", w.written())))
        }
    });
    let consumer = Consumer::new(
        "counter",
        |n: u64, r: &mut PipeReader| -> io::Result<(u64, u64)> {
            let mut buf = vec![0u8; 256 * 1024];
            let mut count = 0u64;
            let mut bad = 0u64;
            loop {
                let k = r.read(&mut buf)?;
                if k == 0 {
                    break;
                }
                count += k as u64;
                // Check a sample of the bytes (all of them costs too much in debug).
                bad += u64::from(buf[0] != 0x5A) + u64::from(buf[k - 1] != 0x5A);
            }
            if bad > 0 {
                return Err(io::Error::other(format!("{bad} wrong bytes seen")));
            }
            Ok((n, count))
        },
    );
    let t0 = Instant::now();
    let (out, stats) = run_all(
        pair_pipeline(mode, At::AfterStage, producer, consumer),
        sizes.to_vec(),
    );
    assert_no_restarts(&stats);
    let out: Vec<(u64, u64)> = out
        .into_iter()
        .collect::<Result<_, _>>()
        .expect("every item succeeds");
    let took = t0.elapsed();
    let total: u64 = sizes.iter().sum();
    eprintln!(
        "    {total} bytes through a {mode:?} pair in {took:.2?} ({:.0} MB/s, debug build)",
        total as f64 / took.as_secs_f64() / 1e6
    );
    let want: Vec<(u64, u64)> = sizes.iter().map(|&n| (n, n)).collect();
    assert_eq!(out, want);
}

// ---------------------------------------------------------------------------------------
// 4. Successive items reuse the pair's couples
// ---------------------------------------------------------------------------------------

fn couples_are_reused(mode: Mode, at: At) {
    const N: u64 = 200;
    let producer = Producer::new("who-producer", |x: u64, w: &mut PipeWriter| {
        send_id(w)?;
        w.write_all(&x.to_le_bytes())
    })
    .workers(2);
    let consumer = Consumer::new(
        "who-consumer",
        |x: u64, r: &mut PipeReader| -> Result<(u64, Id, Id), String> {
            let p = recv_id(r).map_err(|e| e.to_string())?;
            let mut b = [0u8; 8];
            r.read_exact(&mut b).map_err(|e| e.to_string())?;
            if u64::from_le_bytes(b) != x {
                return Err(format!("item {x}: read {}", u64::from_le_bytes(b)));
            }
            let mut rest = Vec::new();
            r.read_to_end(&mut rest).map_err(|e| e.to_string())?;
            if !rest.is_empty() {
                return Err(format!("item {x}: {} bytes after the end", rest.len()));
            }
            // A little work, so both couples get items.
            thread::sleep(Duration::from_millis(1));
            Ok((x, p, Id::me()))
        },
    );
    let (out, stats) = run_all(
        pair_pipeline(mode, at, producer, consumer),
        (0..N).collect(),
    );
    assert_no_restarts(&stats);
    let out: Vec<(u64, Id, Id)> = out
        .into_iter()
        .collect::<Result<_, _>>()
        .expect("every item succeeds");
    assert_eq!(
        out.iter().map(|o| o.0).collect::<Vec<_>>(),
        (0..N).collect::<Vec<_>>(),
        "in input order"
    );
    let couples: BTreeSet<(Id, Id)> = out.iter().map(|&(_, p, c)| (p, c)).collect();
    assert_eq!(
        couples.len(),
        2,
        "two couples, reused item after item: {couples:?}"
    );
    let producers: BTreeSet<Id> = couples.iter().map(|c| c.0).collect();
    let consumers: BTreeSet<Id> = couples.iter().map(|c| c.1).collect();
    assert_eq!(
        (producers.len(), consumers.len()),
        (2, 2),
        "producer j streams to consumer j only: {couples:?}"
    );
    for (p, c) in &couples {
        assert_ne!(p, c, "the halves are different workers");
        if mode.in_processes() {
            assert!(
                p.pid != me() && c.pid != me() && p.pid != c.pid,
                "{couples:?}"
            );
        } else {
            assert!(p.pid == me() && c.pid == me(), "{couples:?}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// 5. FAULTS.md section J
// ---------------------------------------------------------------------------------------

/// J1: the producer writes 10 MiB then panics. Item 0's consumer propagates its read
/// error, item 1's swallows it and returns `Ok(count)`: both fail with the producer's
/// panic. Item 2 is an ordinary item.
fn j1_producer_panics(mode: Mode, at: At) {
    const TEN_MIB: u64 = 10 << 20;
    let producer = Producer::new("j1-producer", |x: u64, w: &mut PipeWriter| {
        write_bytes(w, TEN_MIB, 1)?;
        if x < 2 {
            panic!("producer boom on item {x}");
        }
        Ok::<(), io::Error>(())
    });
    let consumer = Consumer::new(
        "j1-consumer",
        |x: u64, r: &mut PipeReader| -> Result<u64, String> {
            if x == 0 {
                let mut v = Vec::new();
                r.read_to_end(&mut v)
                    .map_err(|e| format!("consumer read failed: {e}"))?;
                Ok(v.len() as u64)
            } else {
                Ok(count_until_end(r))
            }
        },
    );
    let (out, stats) = run_all(pair_pipeline(mode, at, producer, consumer), vec![0, 1, 2]);
    // A panic fails its item; the workers go on.
    assert_no_restarts(&stats);
    for x in 0..2u64 {
        let e = out[x as usize]
            .as_ref()
            .expect_err("a producer that panicked fails the item");
        assert!(
            matches!(e, Error::Panicked { .. }),
            "item {x}: the producer's panic, got {e:?}"
        );
        assert_eq!(e.stage(), Some("j1-producer"), "{e}");
        assert_eq!(e.item(), Some(x), "{e}");
        assert!(
            e.to_string()
                .contains(&format!("producer boom on item {x}")),
            "{e}"
        );
        check_worker(mode, e);
    }
    assert_eq!(out[2], Ok(TEN_MIB));
    let fr = failures_and_restarts(&stats);
    assert_eq!(fr["j1-producer"], (2, 0), "{stats:?}");
    assert_eq!(fr["j1-consumer"], (0, 0), "{stats:?}");
}

/// J2: one half of a process couple is killed by `kill -9` mid-stream — the producer (J2
/// proper), whose consumer counts bytes until EOF and would call that a success, or the
/// consumer. The item fails with the dead half's death, never `Ok(truncated)`; the other
/// half is killed with it, the couple is replaced, and the next items succeed.
fn j2_half_killed(kill_producer: bool, at: At) {
    let half = if kill_producer { "j2p" } else { "j2c" };
    let dir = TempDir::new(&format!("{half}-{}", at.tag()));
    let pid_file = dir.path().join("pids");
    let pf = pid_file.clone();
    let producer = Producer::new("j2-producer", |x: u64, w: &mut PipeWriter| {
        send_id(w)?;
        if x == 0 {
            // Up to 1 GiB, 1 MiB at a time (about 20 s): the test kills it long before.
            let chunk = vec![0xA5u8; 1 << 20];
            for _ in 0..1024 {
                thread::sleep(Duration::from_millis(20));
                w.write_all(&chunk)?;
            }
        }
        Ok::<(), io::Error>(())
    })
    .subprocess();
    let consumer = Consumer::new(
        "j2-consumer",
        move |x: u64, r: &mut PipeReader| -> Result<(u64, Id, Id), String> {
            let id = recv_id(r).map_err(|e| e.to_string())?;
            if x == 0 {
                publish(&pf, &format!("{} {}", id.pid, std::process::id()))
                    .map_err(|e| e.to_string())?;
            }
            Ok((count_until_end(r), id, Id::me()))
        },
    )
    .subprocess();
    let running = pair_pipeline(Mode::Processes, at, producer, consumer)
        .start()
        .expect("start");
    let victim = running.submit(0).expect("submit");
    let pids: Vec<u32> = wait_for_file(&pid_file, Duration::from_secs(10))
        .split(' ')
        .map(|p| p.parse().expect("a pid"))
        .collect();
    let (producer_pid, consumer_pid) = (pids[0], pids[1]);
    assert!(producer_pid != me() && consumer_pid != me() && producer_pid != consumer_pid);
    let (pid, stage) = if kill_producer {
        (producer_pid, "j2-producer")
    } else {
        (consumer_pid, "j2-consumer")
    };
    // Let a few MiB through first.
    thread::sleep(Duration::from_millis(150));
    // SAFETY: signalling a worker of this test's own pipeline, which is alive (it is
    // streaming, and only its supervisor reaps it).
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
    let e = victim
        .wait()
        .expect_err("a killed half must fail the item, never Ok(truncated)");
    assert!(matches!(e, Error::Died { .. }), "{e:?}");
    assert_eq!(e.stage(), Some(stage), "{e}");
    assert_eq!(e.item(), Some(0), "{e}");
    assert_eq!(e.worker(), Some(Worker::Process(pid)), "{e}");
    assert!(e.to_string().contains("killed by SIGKILL"), "{e}");

    let mut couples = BTreeSet::new();
    for x in 1..=5u64 {
        let (count, p, c) = running
            .submit(x)
            .expect("submit")
            .wait()
            .expect("the replaced couple serves the next items");
        assert_eq!(count, 0, "item {x}: nothing after the id");
        assert!(
            p.pid != producer_pid && c.pid != consumer_pid,
            "both halves were replaced: {p:?} {c:?}"
        );
        couples.insert((p.pid, c.pid));
    }
    assert_eq!(couples.len(), 1, "one new couple: {couples:?}");
    let report = running.shutdown().expect("shutdown");
    assert!(report.is_graceful(), "{report:?}");
    let st = report.stats();
    assert_eq!((st.submitted, st.completed), (6, 6), "{st:?}");
    let fr = failures_and_restarts(st);
    let failed = |s: &str| u64::from(s == stage);
    assert_eq!(fr["j2-producer"], (failed("j2-producer"), 1), "{st:?}");
    assert_eq!(fr["j2-consumer"], (failed("j2-consumer"), 1), "{st:?}");
}

/// Sets SIGPIPE to its default action (kill) while alive, as in a host that did not ignore
/// it (FAULTS G10): a write to a closed stream must be an error, never a signal.
struct DefaultSigpipe(libc::sighandler_t);

impl DefaultSigpipe {
    fn set() -> Self {
        // SAFETY: changes the disposition of one signal; restored on drop.
        DefaultSigpipe(unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) })
    }
}

impl Drop for DefaultSigpipe {
    fn drop(&mut self) {
        // SAFETY: restores the disposition saved in `set`.
        unsafe { libc::signal(libc::SIGPIPE, self.0) };
    }
}

/// J3: the consumer reads 1 byte and returns `Ok`; the producer, writing up to 4 GiB, must
/// get `BrokenPipe` (recorded out of band), never SIGPIPE; the item is the consumer's `Ok`.
fn j3_consumer_stops_early(mode: Mode, at: At) {
    const MAX: u64 = 4 << 30;
    let dir = TempDir::new(&format!("j3-{}-{}", mode.tag(), at.tag()));
    let d = dir.path().to_path_buf();
    let producer = Producer::new(
        "j3-producer",
        move |x: u64, w: &mut PipeWriter| -> Result<(), String> {
            let outcome = match write_bytes(w, MAX, x as u8) {
                Ok(()) => "no error".to_string(),
                Err(e) => format!("{:?}", e.kind()),
            };
            publish(
                &d.join(format!("item-{x}")),
                &format!("{outcome} after {}", w.written()),
            )
            .map_err(|e| e.to_string())?;
            // Only an unexpected outcome is an error (it would not show in the item's
            // outcome: the consumer stopped first, so the item is the consumer's).
            if outcome == "BrokenPipe" {
                Ok(())
            } else {
                Err(format!("expected BrokenPipe, got {outcome}"))
            }
        },
    );
    let consumer = Consumer::new(
        "j3-consumer",
        |x: u64, r: &mut PipeReader| -> io::Result<(u64, u8)> {
            let mut b = [0u8];
            r.read_exact(&mut b)?;
            Ok((x, b[0]))
        },
    );
    let _sigpipe = DefaultSigpipe::set();
    let (out, stats) = run_all(
        pair_pipeline(mode, at, producer, consumer),
        vec![1, 2, 3, 4],
    );
    // No process died (no SIGPIPE), and nothing failed.
    assert_no_restarts(&stats);
    let out: Vec<(u64, u8)> = out
        .into_iter()
        .collect::<Result<_, _>>()
        .expect("a consumer that stops early succeeds");
    assert_eq!(out, (1..=4u64).map(|x| (x, x as u8)).collect::<Vec<_>>());
    for x in 1..=4u64 {
        let seen = std::fs::read_to_string(dir.path().join(format!("item-{x}")))
            .expect("the producer recorded its outcome");
        let written: u64 = seen
            .strip_prefix("BrokenPipe after ")
            .unwrap_or_else(|| panic!("item {x}: the producer saw {seen:?}"))
            .parse()
            .expect("a count");
        assert!((1..MAX).contains(&written), "item {x}: {seen}");
    }
}

/// J4: the consumer panics before reading anything: the item fails with the consumer's
/// panic, the producer (writing up to 1 GiB) is unblocked with `BrokenPipe`, the next
/// items succeed.
fn j4_consumer_panics(mode: Mode, at: At) {
    let dir = TempDir::new(&format!("j4-{}-{}", mode.tag(), at.tag()));
    let d = dir.path().to_path_buf();
    let producer = Producer::new(
        "j4-producer",
        move |x: u64, w: &mut PipeWriter| -> io::Result<()> {
            let n = if x == 0 { 1 << 30 } else { 1 << 20 };
            let r = write_bytes(w, n, 7);
            let outcome = match &r {
                Ok(()) => "no error".to_string(),
                Err(e) => format!("{:?}", e.kind()),
            };
            publish(&d.join(format!("item-{x}")), &outcome)?;
            r
        },
    );
    let consumer = Consumer::new(
        "j4-consumer",
        |x: u64, r: &mut PipeReader| -> io::Result<u64> {
            if x == 0 {
                panic!("consumer boom on item {x}");
            }
            let mut v = Vec::new();
            r.read_to_end(&mut v)?;
            Ok(v.len() as u64)
        },
    );
    let (out, stats) = run_all(pair_pipeline(mode, at, producer, consumer), vec![0, 1, 2]);
    // A panic fails its item; the workers go on.
    assert_no_restarts(&stats);
    let e = out[0].as_ref().expect_err("the consumer panicked");
    assert!(matches!(e, Error::Panicked { .. }), "{e:?}");
    assert_eq!(e.stage(), Some("j4-consumer"), "{e}");
    assert_eq!(e.item(), Some(0), "{e}");
    assert!(e.to_string().contains("consumer boom on item 0"), "{e}");
    check_worker(mode, e);
    assert_eq!(&out[1..], &[Ok(1 << 20), Ok(1 << 20)]);
    let fr = failures_and_restarts(&stats);
    assert_eq!(fr["j4-producer"], (0, 0), "{stats:?}");
    assert_eq!(fr["j4-consumer"], (1, 0), "{stats:?}");
    let seen = std::fs::read_to_string(dir.path().join("item-0")).expect("recorded");
    assert_eq!(
        seen, "BrokenPipe",
        "the producer of item 0 was unblocked by"
    );
    for x in 1..3 {
        let seen = std::fs::read_to_string(dir.path().join(format!("item-{x}"))).expect("recorded");
        assert_eq!(seen, "no error", "item {x}");
    }
}

/// J5: the producer writes nothing: the consumer sees end of file at once (and again), and
/// the item is the consumer's output.
fn j5_producer_writes_nothing(mode: Mode, at: At) {
    let producer = Producer::new("j5-producer", |_x: u64, _w: &mut PipeWriter| {
        Ok::<(), String>(())
    });
    let consumer = Consumer::new(
        "j5-consumer",
        |x: u64, r: &mut PipeReader| -> io::Result<String> {
            let mut buf = [0u8; 16];
            let a = r.read(&mut buf)?;
            let b = r.fill_buf()?.len();
            let c = r.read(&mut buf)?;
            Ok(format!(
                "item {x}: eof {a} {b} {c}, {} read",
                r.bytes_read()
            ))
        },
    );
    let (out, stats) = run_all(
        pair_pipeline(mode, at, producer, consumer),
        vec![0, 1, 2, 3],
    );
    assert_no_restarts(&stats);
    let out: Vec<String> = out
        .into_iter()
        .collect::<Result<_, _>>()
        .expect("every item succeeds");
    let want: Vec<String> = (0..4)
        .map(|x| format!("item {x}: eof 0 0 0, 0 read"))
        .collect();
    assert_eq!(out, want);
}

/// J6: one half of item 0 sleeps forever, with a 300 ms timeout on that half (the producer
/// — J6 proper — or the consumer, after reading the whole stream): the item fails "timed
/// out after 300 ms" naming that half, both halves are replaced (the other one is
/// unblocked), and the next items (queued behind it) succeed.
fn j6_half_hangs(hang_producer: bool, at: At) {
    let limit = Duration::from_millis(300);
    let producer = Producer::new("j6-producer", move |x: u64, w: &mut PipeWriter| {
        if x == 0 && hang_producer {
            w.write_all(b"about to hang")?;
            loop {
                thread::sleep(Duration::from_secs(1));
            }
        }
        w.write_all(&x.to_le_bytes())
    })
    .subprocess();
    let consumer = Consumer::new(
        "j6-consumer",
        move |x: u64, r: &mut PipeReader| -> io::Result<Vec<u8>> {
            let mut v = Vec::new();
            r.read_to_end(&mut v)?;
            if x == 0 && !hang_producer {
                loop {
                    thread::sleep(Duration::from_secs(1));
                }
            }
            Ok(v)
        },
    )
    .subprocess();
    let (producer, consumer, stage) = if hang_producer {
        (producer.timeout(limit), consumer, "j6-producer")
    } else {
        (producer, consumer.timeout(limit), "j6-consumer")
    };
    let running = pair_pipeline(Mode::Processes, at, producer, consumer)
        .start()
        .expect("start");
    let t0 = Instant::now();
    let tickets: Vec<_> = (0..5u64)
        .map(|x| running.submit(x).expect("submit"))
        .collect();
    let mut outs = tickets.into_iter().map(|t| t.wait());
    let e = outs.next().unwrap().expect_err("item 0 times out");
    let took = t0.elapsed();
    assert_eq!(e.stage(), Some(stage), "{e}");
    assert_eq!(e.item(), Some(0), "{e}");
    assert!(e.to_string().contains("timed out after 300 ms"), "{e}");
    assert!(took >= limit, "failed before the limit: {took:?}");
    for (x, r) in (1..5u64).zip(outs) {
        assert_eq!(r.expect("the next items succeed"), x.to_le_bytes().to_vec());
    }
    let report = running.shutdown().expect("shutdown");
    assert!(report.is_graceful(), "{report:?}");
    let st = report.stats();
    let fr = failures_and_restarts(st);
    let failed = |s: &str| u64::from(s == stage);
    assert_eq!(fr["j6-producer"], (failed("j6-producer"), 1), "{st:?}");
    assert_eq!(fr["j6-consumer"], (failed("j6-consumer"), 1), "{st:?}");
}

// ---------------------------------------------------------------------------------------
// 6. map | pair | map
// ---------------------------------------------------------------------------------------

fn pair_between_stages() {
    const N: u64 = 120;
    let producer = Producer::new("lines", |t: u64, w: &mut PipeWriter| -> io::Result<()> {
        for i in 0..t % 5 + 1 {
            writeln!(w, "{}", t + i)?;
        }
        if t.is_multiple_of(7) {
            // Uneven work, so the three couples finish out of order.
            thread::sleep(Duration::from_millis(3));
        }
        Ok(())
    })
    .subprocess()
    .workers(3);
    let consumer = Consumer::new(
        "sum",
        |t: u64, r: &mut PipeReader| -> Result<(u64, u64, Who), String> {
            let mut sum = 0;
            for line in r.lines() {
                sum += line
                    .map_err(|e| e.to_string())?
                    .parse::<u64>()
                    .map_err(|e| e.to_string())?;
            }
            Ok((t, sum, Who::me()))
        },
    )
    .subprocess();
    let p = Pipeline::new(Stage::map("triple", |x: u64| x * 3).subprocess())
        .then_producer(producer)
        .then_consumer(consumer)
        .then(
            Stage::map("format", |(t, sum, who): (u64, u64, Who)| {
                (format!("{}:{sum}", t / 3), who)
            })
            .subprocess(),
        );
    assert_eq!(p.len(), 4);
    let (out, stats) = run_all(p, (0..N).collect());
    assert_no_restarts(&stats);
    let out: Vec<(String, Who)> = out
        .into_iter()
        .collect::<Result<_, _>>()
        .expect("every item succeeds");
    let want: Vec<String> = (0..N)
        .map(|x| {
            let t = x * 3;
            let sum: u64 = (0..t % 5 + 1).map(|i| t + i).sum();
            format!("{x}:{sum}")
        })
        .collect();
    assert_eq!(out.iter().map(|o| o.0.clone()).collect::<Vec<_>>(), want);
    let consumers: BTreeSet<Who> = out.iter().map(|o| o.1).collect();
    assert!(
        (1..=3).contains(&consumers.len()),
        "three couples at most: {consumers:?}"
    );
    for w in &consumers {
        check_place(Mode::Processes, w, "the consumer");
    }
}
