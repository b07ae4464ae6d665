//! D. Serialization, bad input, transport.

use std::sync::mpsc::RecvTimeoutError;
use std::thread;
use std::time::{Duration, Instant};

use forkpipe::prelude::*;
use forkpipe::{FRAME_LIMIT, Running, Worker};
use libtest_mimic::Trial;

use super::support::{BAD, Bytes, ERR, FINE, Marked, PANIC, by_item, fault, my_pid};

pub fn trials(t: &mut Vec<Trial>) {
    t.push(fault("d01_input_cannot_be_encoded", 30, d01_encode_err));
    t.push(fault("d01b_100_bad_100_good_inputs", 30, d01b_many_bad));
    // D2: a panicking `Serialize` of an input kills the feeder thread: no hang, but every
    // item (good ones too) ends `ShutDown` and the panic message is lost. Kept strict.
    t.push(fault("d02_input_serialize_panics", 30, d02_encode_panics));
    t.push(fault(
        "d03_input_cannot_be_decoded_worker_stays",
        30,
        d03_decode_err,
    ));
    t.push(fault(
        "d04_output_cannot_be_encoded_worker_stays",
        30,
        d04_out_encode_err,
    ));
    t.push(fault(
        "d05a_output_cannot_be_decoded_in_the_parent",
        30,
        d05a_out_decode_err,
    ));
    t.push(fault(
        "d05b_output_deserialize_panics_in_parent",
        30,
        d05b_out_decode_panics,
    ));
    t.push(fault(
        "d08a_corrupt_frame_between_process_stages_kills_its_sender",
        60,
        d08a_corrupt_mesh,
    ));
    t.push(fault(
        "d08b_corrupt_frame_to_the_caller_kills_its_sender",
        60,
        d08b_corrupt_to_caller,
    ));
    t.push(fault(
        "d10_result_for_an_item_never_issued_is_refused",
        30,
        d10_foreign_item,
    ));
    t.push(fault(
        "d09_worker_killed_mid_write_of_a_64_mib_result",
        60,
        d09_killed_mid_write,
    ));
    t.push(fault(
        "d12_100_mib_items_through_3_process_stages",
        60,
        d12_big,
    ));
    t.push(fault("d13_item_over_the_frame_limit", 60, d13_over_limit));
    t.push(fault("d14_empty_and_sentinel_like_items", 30, d14_empty));
    t.push(fault(
        "d15_codec_faults_inside_runs_fail_exactly_their_item",
        60,
        d15_inside_runs,
    ));
}

fn d01_encode_err() {
    let p = Pipeline::new(
        Stage::map("enc_in", |m: Marked<ERR, FINE>| m.0)
            .subprocess()
            .workers(2),
    );
    let mut results = p.run((0..30u64).map(Marked)).expect("start");
    let all: Vec<_> = results.by_ref().collect();
    let stats = results.stats();
    drop(results);
    let errors = by_item(&all, 30, |v| *v);
    assert_eq!(errors.len(), 1, "{errors:?}");
    let e = &errors[&BAD];
    let Error::Codec {
        stage,
        item,
        what,
        message,
        ..
    } = e
    else {
        panic!("{e:?}");
    };
    assert_eq!((stage.as_str(), *item), ("enc_in", 13));
    assert_eq!(what, "encode the input of");
    assert!(message.contains("refusing to encode 13"), "{e}");
    // (bincode wraps a serde custom error: `OtherString("refusing to encode 13")`)
    assert!(
        e.to_string()
            .contains(&format!("could not encode the input of item 13: {message}")),
        "{e}"
    );
    assert!(e.to_string().starts_with("stage 'enc_in' "), "{e}");
    assert_eq!(stats.stages[0].restarts, 0);
    assert_eq!(stats.stages[0].failed, 1);
}

fn d01b_many_bad() {
    // 100 bad (13) and 100 good items, interleaved: every item resolved.
    let input: Vec<u64> = (0..200u64)
        .map(|i| if i % 2 == 0 { BAD } else { 1000 + i })
        .collect();
    let p = Pipeline::new(Stage::map("enc_in2", |m: Marked<ERR, FINE>| m.0).subprocess());
    let all: Vec<_> = p
        .run(input.clone().into_iter().map(Marked))
        .expect("start")
        .collect();
    assert_eq!(all.len(), 200);
    for (i, r) in all.iter().enumerate() {
        match r {
            Ok(v) => assert!(i % 2 == 1 && *v == 1000 + i as u64, "item {i}: {v}"),
            Err(e) => {
                assert!(i % 2 == 0, "item {i}: {e}");
                assert!(
                    matches!(e, Error::Codec { item, .. } if *item == i as u64),
                    "{e:?}"
                );
            }
        }
    }
}

/// Submits `n` items and collects their outcomes on a helper thread, for at most `within`;
/// then drops the pipeline (drop is prompt). Returns the outcomes that arrived in time.
pub fn outcomes_within<In: Send + 'static, Out: Send + std::fmt::Debug + 'static>(
    running: Running<In, Out>,
    items: Vec<In>,
    within: Duration,
) -> Vec<(u64, Result<Out, Error>)> {
    let tickets: Vec<_> = items
        .into_iter()
        .map(|x| running.submit(x).expect("submit"))
        .collect();
    let n = tickets.len();
    let (tx, rx) = std::sync::mpsc::channel();
    let waiter = thread::spawn(move || {
        for t in tickets {
            let seq = t.item();
            if tx.send((seq, t.wait())).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    while got.len() < n {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(o) => got.push(o),
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
        }
    }
    drop(rx);
    drop(running);
    waiter.join().expect("waiter");
    got
}

fn d02_encode_panics() {
    let running =
        Pipeline::new(Stage::map("enc_panics", |m: Marked<PANIC, FINE>| m.0).subprocess())
            .start()
            .expect("start");
    let got = outcomes_within(
        running,
        (0..20u64).map(Marked).collect(),
        Duration::from_secs(5),
    );
    assert_eq!(
        got.len(),
        20,
        "the pipeline hung after the panic: {} of 20 outcomes within 5 s: {got:?}",
        got.len()
    );
    for (seq, r) in got {
        if seq == BAD {
            let e = r.expect_err("item 13 fails");
            assert_eq!(e.item(), Some(13));
            assert!(e.to_string().contains("Serialize panicked on 13"), "{e}");
        } else {
            assert_eq!(r.expect("others ok"), seq);
        }
    }
}

fn d03_decode_err() {
    let p =
        Pipeline::new(Stage::map("dec_in", |m: Marked<FINE, ERR>| (m.0, my_pid())).subprocess());
    let mut results = p.run((0..30u64).map(Marked)).expect("start");
    let all: Vec<_> = results.by_ref().collect();
    let stats = results.stats();
    drop(results);
    let errors = by_item(&all, 30, |v| v.0);
    assert_eq!(errors.len(), 1, "{errors:?}");
    let e = &errors[&BAD];
    let Error::Codec {
        stage,
        item: 13,
        worker: Worker::Process(pid),
        what,
        message,
    } = e
    else {
        panic!("{e:?}");
    };
    assert_eq!(stage, "dec_in");
    assert_eq!(what, "decode");
    assert!(message.contains("refusing to decode 13"), "{e}");
    assert_eq!(
        e.to_string(),
        format!("stage 'dec_in' (worker pid {pid}) could not decode item 13: {message}")
    );
    // The worker stays up: every item ran in it, no restart.
    assert!(
        all.iter()
            .filter_map(|r| r.as_ref().ok())
            .all(|v| v.1 == *pid)
    );
    assert_eq!(stats.stages[0].restarts, 0);
}

fn d04_out_encode_err() {
    let p = Pipeline::new(
        Stage::map("enc_out", |x: u64| (Marked::<ERR, FINE>(x), my_pid())).subprocess(),
    );
    let mut results = p.run(0..30u64).expect("start");
    let all: Vec<_> = results.by_ref().collect();
    let stats = results.stats();
    drop(results);
    let errors = by_item(&all, 30, |v| v.0.0);
    assert_eq!(errors.len(), 1, "{errors:?}");
    let e = &errors[&BAD];
    let Error::Codec {
        stage,
        worker: Worker::Process(pid),
        what,
        message,
        ..
    } = e
    else {
        panic!("{e:?}");
    };
    assert_eq!(stage, "enc_out");
    assert_eq!(what, "encode the output of");
    assert!(message.contains("refusing to encode 13"), "{e}");
    assert!(
        e.to_string().contains(&format!(
            "(worker pid {pid}) could not encode the output of item 13"
        )),
        "{e}"
    );
    assert!(
        all.iter()
            .filter_map(|r| r.as_ref().ok())
            .all(|v| v.1 == *pid)
    );
    assert_eq!(stats.stages[0].restarts, 0);
}

fn d05a_out_decode_err() {
    let p = Pipeline::new(
        Stage::map("dec_out", |x: u64| Marked::<FINE, ERR>(x))
            .subprocess()
            .workers(2),
    );
    let all: Vec<_> = p.run(0..30u64).expect("start").collect();
    let errors = by_item(&all, 30, |v| v.0);
    assert_eq!(errors.len(), 1, "{errors:?}");
    let e = &errors[&BAD];
    assert!(
        matches!(e, Error::Codec { stage, item: 13, what, message, .. }
            if stage == "dec_out" && what == "decode the output of" && message.contains("refusing to decode 13")),
        "{e:?}"
    );
}

fn d05b_out_decode_panics() {
    let running =
        Pipeline::new(Stage::map("dec_out_panics", |x: u64| Marked::<FINE, PANIC>(x)).subprocess())
            .start()
            .expect("start");
    let got = outcomes_within(running, (0..20u64).collect(), Duration::from_secs(5));
    assert_eq!(
        got.len(),
        20,
        "the pipeline hung after the panic: {} of 20 outcomes within 5 s: {got:?}",
        got.len()
    );
    for (seq, r) in got {
        if seq == BAD {
            let e = r.expect_err("item 13 fails");
            assert!(e.to_string().contains("Deserialize panicked on 13"), "{e}");
        } else {
            assert_eq!(r.expect("others ok").0, seq);
        }
    }
}

fn d12_big() {
    const MIB: usize = 1 << 20;
    let stage = |name: &'static str| Stage::map(name, |v: Vec<u8>| v).subprocess();
    // A plain `Vec<u8>` goes through serde element by element: 100 MiB of it takes ~40 s
    // in a debug build, so it is 8 MiB here; the 100 MiB item is a byte string.
    let item: Vec<u8> = (0..8 * MIB).map(|i| (i * 31 % 251) as u8).collect();
    let p = Pipeline::new(stage("big1"))
        .then(stage("big2"))
        .then(stage("big3"));
    let t0 = Instant::now();
    let out: Vec<Vec<u8>> = p
        .run([item.clone(), Vec::new()])
        .expect("start")
        .collect::<Result<_, _>>()
        .expect("ok");
    eprintln!(
        "d12: 8 MiB Vec<u8> through 3 process stages in {:?}",
        t0.elapsed()
    );
    assert_eq!(out.len(), 2);
    assert!(out[0] == item, "bytes identical");
    assert!(out[1].is_empty());
    drop(out);
    let bstage = |name: &'static str| Stage::map(name, |v: Bytes| v).subprocess();
    let p = Pipeline::new(bstage("b1"))
        .then(bstage("b2"))
        .then(bstage("b3"));
    let item = Bytes((0..100 * MIB).map(|i| (i * 31 % 251) as u8).collect());
    let t0 = Instant::now();
    let out: Vec<Bytes> = p
        .run([item.clone()])
        .expect("start")
        .collect::<Result<_, _>>()
        .expect("ok");
    eprintln!(
        "d12: 100 MiB byte string through 3 process stages in {:?}",
        t0.elapsed()
    );
    assert!(out[0] == item, "bytes identical");
}

fn d13_over_limit() {
    let p = Pipeline::new(Stage::map("frame", |v: Bytes| v.0.len() as u64).subprocess());
    let big = Bytes(vec![7u8; FRAME_LIMIT + 1]);
    let input = vec![Bytes(vec![1]), big, Bytes(vec![2, 2])];
    let all: Vec<_> = p.run(input).expect("start").collect();
    assert_eq!(all.len(), 3, "{all:?}");
    assert_eq!(all[0].as_ref().ok(), Some(&1));
    assert_eq!(all[2].as_ref().ok(), Some(&2));
    let e = all[1].as_ref().expect_err("over the limit");
    assert!(
        matches!(e, Error::Codec { stage, item: 1, what, message, .. }
            if stage == "frame" && what == "encode the input of"
                && message.contains("over the frame limit")
                && message.contains(&FRAME_LIMIT.to_string())),
        "{e:?}"
    );
}

fn d14_empty() {
    let unit: Vec<()> = Pipeline::new(Stage::map("unit", |(): ()| ()).subprocess().workers(2))
        .run(vec![(); 500])
        .expect("start")
        .collect::<Result<_, _>>()
        .expect("ok");
    assert_eq!(unit.len(), 500);
    let vecs = vec![vec![], vec![0u64], vec![], vec![u64::MAX], vec![]];
    let out: Vec<Vec<u64>> = Pipeline::new(Stage::map("vec", |v: Vec<u64>| v).subprocess())
        .then(Stage::map("vec2", |v: Vec<u64>| v).subprocess())
        .run(vecs.clone())
        .expect("start")
        .collect::<Result<_, _>>()
        .expect("ok");
    assert_eq!(out, vecs);
    let strings = vec![String::new(), "x".into(), String::new(), "\0".into()];
    let out: Vec<String> = Pipeline::new(Stage::map("str", |s: String| s).subprocess())
        .run(strings.clone())
        .expect("start")
        .collect::<Result<_, _>>()
        .expect("ok");
    assert_eq!(out, strings);
    // Items whose bytes look like the transport's own message kinds and record tags.
    let tricky: Vec<Vec<u8>> = (0u8..8)
        .map(|k| vec![k, 0, 0, 0, 0])
        .chain([vec![], vec![0; 13], vec![255; 64]])
        .collect();
    let out: Vec<Vec<u8>> =
        Pipeline::new(Stage::map("raw", |v: Vec<u8>| v).subprocess().workers(2))
            .run(tricky.clone())
            .expect("start")
            .collect::<Result<_, _>>()
            .expect("ok");
    assert_eq!(out, tricky);
}

// --- D8 ------------------------------------------------------------------------------------

/// What the receiver says about each injected corrupt message (see
/// `forkpipe::__private::inject_corrupt_frame`).
const CORRUPT: [&str; 10] = [
    "length 18446744073709551615 exceeds the limit 1073741824",
    "length 1099511627776 exceeds the limit 1073741824",
    "length 1073741838 exceeds the limit 1073741824",
    "record length 1073741824 exceeds its message",
    "unknown message kind Some(119)",
    "chunk without a start",
    "",
    "run claims 4294967295 items in 2 bytes of entries",
    "run entry 0: length 127 runs past the end of the run",
    "run entry 0 has an unknown kind 102",
];

/// The corrupt frames of D8: every kind but 6 (a well-formed record, D10), hostile runs
/// (7–9) included.
const CORRUPT_KINDS: [u8; 9] = [0, 1, 2, 3, 4, 5, 7, 8, 9];

/// The first stage of D8: writes a corrupt frame of `kind` while running item 10, once per
/// case (then waits to be killed).
#[stage(subprocess, workers = 2, name = "writer")]
fn corrupt_writer(x: u64, kind: u8, then_stage: bool) -> (u64, u64) {
    if x == 10 && super::support::first_time(&format!("d08.{kind}.{then_stage}")) {
        forkpipe::__private::inject_corrupt_frame(kind);
        thread::sleep(Duration::from_secs(20)); // killed long before
    }
    (x, x * 3)
}

/// A worker of the first stage writes a corrupt frame of `kind` while running item 10:
/// exactly item 10 fails, naming that worker and the corruption; the worker is replaced;
/// every other item is delivered once with its right value, in order. The second stage
/// runs in processes if `then_stage`, else on a thread of the caller.
fn corrupt_case(kind: u8, then_stage: bool) {
    const N: u64 = 40;
    let reader = Stage::map("reader", |(x, y): (u64, u64)| (x, y + 1));
    let reader = if then_stage {
        reader.subprocess().workers(2)
    } else {
        reader
    };
    let mut results = pipeline![corrupt_writer(kind, then_stage) | { reader }]
        .run(0..N)
        .expect("start");
    let all: Vec<_> = results.by_ref().collect();
    let stats = results.stats();
    drop(results);
    let errors = by_item(&all, N, |v| v.0);
    for r in all.iter().flatten() {
        assert_eq!(r.1, r.0 * 3 + 1, "kind {kind}: a value came through intact");
    }
    assert_eq!(errors.len(), 1, "kind {kind}: {errors:?}");
    super::support::expect_died(
        &errors[&10],
        "writer",
        10,
        &format!(
            "sent a corrupt frame ({}); worker killed",
            CORRUPT[kind as usize]
        ),
    );
    assert_eq!(stats.stages[0].restarts, 1, "kind {kind}: {stats:?}");
    assert_eq!(stats.stages[1].restarts, 0, "kind {kind}: {stats:?}");
}

fn d08a_corrupt_mesh() {
    for kind in CORRUPT_KINDS {
        corrupt_case(kind, true);
    }
}

fn d08b_corrupt_to_caller() {
    for kind in CORRUPT_KINDS {
        corrupt_case(kind, false);
    }
}

// --- D9 ------------------------------------------------------------------------------------

/// A worker is killed while it writes a 64 MiB result (its reader is stopped, so the write
/// is blocked half way): the reader gets a truncated record, then its replacement's frames.
/// The item fails with the worker's death (a big result is written before the item stops
/// counting as running) — never a partial value, never a "corrupt frame".
fn d09_killed_mid_write() {
    const MIB: usize = 1 << 20;
    let fill = |x: u64| -> Vec<u8> { (0..64 * MIB).map(|i| (i as u64 * 7 + x) as u8).collect() };
    let running = Pipeline::new(
        Stage::map("writer", move |x: u64| {
            if x == 3 && super::support::first_time("d09.big") {
                std::fs::write(
                    super::support::run_dir().join("d09.pid"),
                    my_pid().to_string(),
                )
                .expect("mark");
            }
            let big = if x == 3 { fill(x) } else { Vec::new() };
            (x, my_pid(), Bytes(big))
        })
        .subprocess(),
    )
    .then(Stage::map("reader", |(x, w, b): (u64, u32, Bytes)| (x, w, my_pid(), b)).subprocess())
    .start()
    .expect("start");
    let (_, _, reader, _) = running.submit(0).unwrap().wait().expect("item 0");
    super::support::signal(reader, libc::SIGSTOP);
    let t = running.submit(3).unwrap();
    let mark = super::support::run_dir().join("d09.pid");
    assert!(super::support::wait_until(Duration::from_secs(20), || mark.exists()));
    let writer: u32 = std::fs::read_to_string(&mark).unwrap().parse().unwrap();
    // Blocked in its write: sleeping (not running) for a while, with the reader stopped.
    assert!(super::support::wait_blocked(
        writer,
        Duration::from_secs(20)
    ));
    super::support::signal(writer, libc::SIGKILL);
    super::support::signal(reader, libc::SIGCONT);
    let seq = t.item();
    let e = t
        .wait()
        .expect_err("the item fails with its worker's death");
    assert_eq!(
        super::support::expect_died(&e, "writer", seq, "killed by SIGKILL"),
        writer
    );
    // The stage goes on: the replacement answers, the reader is unharmed.
    let (x, w, r, b) = running.submit(4).unwrap().wait().expect("item 4");
    assert_eq!((x, r), (4, reader));
    assert_ne!(w, writer);
    assert!(b.0.is_empty());
    let report = running.shutdown().expect("shutdown");
    assert!(report.is_graceful());
    assert_eq!(report.stats().stages[0].restarts, 1);
    assert_eq!(report.stats().stages[1].restarts, 0);
    assert_eq!(report.stats().stages[0].failed, 1);
}

// --- D10 -----------------------------------------------------------------------------------

/// The first stage of D10: sends a result for an item never issued while running item 10,
/// once per case (`ORDERED`, a const parameter: the stage is a fn item).
fn forger<const ORDERED: bool>(x: u64) -> (u64, u64) {
    if x == 10 && super::support::first_time(&format!("d10.{ORDERED}")) {
        forkpipe::__private::inject_corrupt_frame(6);
    }
    (x, x * 3)
}

/// A worker sends a well-formed result for item 2^40, which was never issued (a bug or a
/// hostile stage): the collector refuses it — no foreign item is delivered, no room is
/// made for it (the ordered ring would otherwise grow to 2^40 slots) — and every real item
/// has its one outcome.
fn d10_foreign_item() {
    const N: u64 = 40;
    for ordered in [true, false] {
        let first = if ordered {
            Stage::map("forger", forger::<true>)
        } else {
            Stage::map("forger", forger::<false>).unordered()
        }
        .subprocess()
        .workers(2);
        let mut results = Pipeline::new(first)
            .then(Stage::map("reader", |(x, y): (u64, u64)| (x, y + 1)))
            .run(0..N)
            .expect("start");
        let mut all: Vec<_> = results.by_ref().collect();
        let stats = results.stats();
        drop(results);
        all.sort_by_key(|r| r.as_ref().map_or(u64::MAX, |v| v.0));
        let errors = by_item(&all, N, |v| v.0);
        assert!(errors.is_empty(), "{errors:?}");
        for r in all.iter().flatten() {
            assert_eq!(r.1, r.0 * 3 + 1);
        }
        assert_eq!(stats.stages[0].restarts, 0, "{stats:?}");
    }
}

/// D15: the codec faults of D1–D5 inside runs (the dense paths: the feeder encoding a
/// batch's values, a map stage's worker loop, the collector decoding into a dense batch).
/// Of 10,000 items, item [`AT`] carries the value that misbehaves (13, which item 13
/// carries in its place), so every fault lands inside the feeder's 13th chunk (items
/// 4095..=8190, one run): exactly that item fails, saying what and why, and every other
/// item comes out in its place.
fn d15_inside_runs() {
    let enc_in = "encode the input of item 6000";
    let dec_in = "could not decode item 6000";
    let enc_out = "encode the output of item 6000";
    let dec_out = "decode the output of item 6000";
    let refuse_enc = "refusing to encode 13";
    let refuse_dec = "refusing to decode 13";
    let panic_enc = "Serialize panicked on 13";
    let panic_dec = "Deserialize panicked on 13";
    fn from_marked<const E: u8, const D: u8>(m: Marked<E, D>) -> u64 {
        m.0
    }
    let p = |n| Pipeline::new(Stage::map(n, from_marked::<ERR, FINE>).subprocess());
    only_at_fails(p("d15_in_enc"), Marked, |v| *v, enc_in, refuse_enc);
    let p = |n| Pipeline::new(Stage::map(n, from_marked::<PANIC, FINE>).subprocess());
    only_at_fails(p("d15_in_enc_panic"), Marked, |v| *v, enc_in, panic_enc);
    let p = |n| Pipeline::new(Stage::map(n, from_marked::<FINE, ERR>).subprocess());
    only_at_fails(p("d15_in_dec"), Marked, |v| *v, dec_in, refuse_dec);
    let p = |n| Pipeline::new(Stage::map(n, from_marked::<FINE, PANIC>).subprocess());
    only_at_fails(p("d15_in_dec_panic"), Marked, |v| *v, dec_in, panic_dec);
    let p = |n| Pipeline::new(Stage::map(n, Marked::<ERR, FINE>).subprocess());
    only_at_fails(p("d15_out_enc"), |x| x, |m| m.0, enc_out, refuse_enc);
    let p = |n| Pipeline::new(Stage::map(n, Marked::<PANIC, FINE>).subprocess());
    only_at_fails(p("d15_out_enc_panic"), |x| x, |m| m.0, enc_out, panic_enc);
    let p = |n| Pipeline::new(Stage::map(n, Marked::<FINE, ERR>).subprocess());
    only_at_fails(p("d15_out_dec"), |x| x, |m| m.0, dec_out, refuse_dec);
    let p = |n| Pipeline::new(Stage::map(n, Marked::<FINE, PANIC>).subprocess());
    only_at_fails(p("d15_out_dec_panic"), |x| x, |m| m.0, dec_out, panic_dec);
}

/// The item of D15 whose value misbehaves.
const AT: u64 = 6000;

/// Item `i`'s value in D15: its own number, but items [`AT`] and [`BAD`] swapped.
fn value_of(i: u64) -> u64 {
    match i {
        AT => BAD,
        BAD => AT,
        i => i,
    }
}

/// Runs `p` over the D15 values (made into inputs by `input`): only item [`AT`] fails, with
/// an error whose text holds `what` and `why`; every other output's `value` is its item's.
fn only_at_fails<In: Send + 'static, Out: Send + 'static>(
    p: Pipeline<In, Out>,
    input: fn(u64) -> In,
    value: fn(&Out) -> u64,
    what: &str,
    why: &str,
) {
    let n = 10_000u64;
    let mut failed = false;
    let mut count = 0u64;
    for (i, r) in p
        .run((0..n).map(move |i| input(value_of(i))))
        .expect("start")
        .enumerate()
    {
        let i = i as u64;
        count += 1;
        match r {
            Ok(v) => assert_eq!(value(&v), value_of(i), "item {i} came out in its place"),
            Err(e) => {
                assert_eq!(i, AT, "only item {AT} fails, not {i}: {e}");
                assert_eq!(e.item(), Some(AT), "{e}");
                let text = e.to_string();
                assert!(text.contains(what) && text.contains(why), "{e}");
                failed = true;
            }
        }
    }
    assert_eq!(count, n, "one outcome per item");
    assert!(failed, "item {AT} failed ({what})");
}
