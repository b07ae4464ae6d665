//! Instruction counts of the data path's loops, for callgrind (process stages cannot run
//! under valgrind: it lacks `pidfd_open`, so their loops are driven here without forks).
//!
//! Each step of one item's way through `numbers | inc | inc | inc` with process stages is
//! a function of its own, so that callgrind's inclusive counts split the cost by actor:
//! the feeder encoding runs (`feed`), a worker answering a run (`work`, three times), the
//! collector decoding the answer (`collect`). Run it as
//!
//! ```text
//! cargo test -p pipeline-runtime --release --lib cost -- --ignored --nocapture  # builds it
//! valgrind --tool=callgrind target/release/deps/pipeline_runtime-<hash> cost -- --ignored
//! callgrind_annotate --inclusive=yes callgrind.out.<pid> | grep cost::
//! ```
//!
//! and divide by [`ITEMS`] (`work` by 3 × [`ITEMS`]). `bare_feed`, `bare_work` and
//! `bare_collect` are the same steps of W1's bare chain (bincode values back to back in a
//! frame, as `benches/bare` sends them), for the same tool's count of the bare mechanism.

use crate::batch::Batch;
use crate::error::Worker;
use crate::item::{Body, Emit};
use crate::kernel::{MapStage, WorkerFn, run_via};
use crate::os::sys::SlotState;
use crate::process::runs::{RunCx, RunPos};
use crate::transport::codec;
use crate::transport::frame::REC_HEADER;
use crate::transport::record;
use crate::transport::run::weight;

/// Items through the loops.
pub(crate) const ITEMS: u64 = 1 << 20;

/// Items per run (the feeder's chunk).
const RUN: u64 = 4096;

#[inline(never)]
fn feed(first: u64, out: &mut Vec<u8>) {
    // (As the feeder pulls them: a dense batch.)
    let values: Vec<u64> = (first..first + RUN).collect();
    let items = record::Items::Values(first, &values);
    let n = record::encode_run::<u64>(out, items, RUN as usize, (0, "inc"));
    assert_eq!(n as u64, RUN);
}

#[inline(never)]
fn work(f: &mut WorkerFn<u64, u64>, slot: &'static SlotState, rec: &[u8], out: &mut Vec<u8>) {
    crate::transport::run::check(&rec[REC_HEADER..]).expect("a run");
    let mut emit = Emit::new();
    let mut cx = RunCx {
        emit: &mut emit,
        stage: "inc",
        idx: 0,
        me: Worker::Thread(0),
        slot,
        timed: false,
        give_up: None,
        stateful: false,
    };
    let mut pos = RunPos::new(seq_of(rec), weight(rec));
    run_via(f, &mut cx, &rec[REC_HEADER..], &mut pos, out);
    assert!(pos.over());
}

#[inline(never)]
fn collect(rec: &[u8], out: &mut Batch<u64>) {
    crate::transport::run::check(&rec[REC_HEADER..]).expect("a run");
    let first = seq_of(rec);
    record::decode_run::<u64>(&rec[REC_HEADER..], first, out, &|_, m| panic!("{m}"));
}

#[inline(never)]
fn bare_feed(first: u64, out: &mut Vec<u8>) {
    for x in first..first + RUN {
        codec::encode_into(&x, out).expect("a u64");
    }
}

/// Decodes the values of a bare frame one after the other.
fn bare_values(mut p: &[u8]) -> impl Iterator<Item = u64> + '_ {
    let cfg = bincode::config::standard();
    std::iter::from_fn(move || {
        let (x, n): (u64, usize) = bincode::serde::decode_from_slice(p, cfg).ok()?;
        p = &p[n..];
        Some(x)
    })
}

#[inline(never)]
fn bare_work(frame: &[u8], out: &mut Vec<u8>) {
    for x in bare_values(frame) {
        codec::encode_into(&(x + 1), out).expect("a u64");
    }
}

#[inline(never)]
fn bare_collect(frame: &[u8]) -> u64 {
    bare_values(frame).sum()
}

fn seq_of(rec: &[u8]) -> u64 {
    u64::from_le_bytes(rec[..8].try_into().expect("8 bytes"))
}

#[test]
#[ignore = "a harness for callgrind (see the module docs)"]
fn cost() {
    // (As `Stage::map` makes it.)
    let mut f: WorkerFn<u64, u64> = Box::new(MapStage(|x: u64| x + 1));
    let slot: &'static SlotState = Box::leak(Box::default());
    let (mut a, mut b) = (Vec::new(), Vec::new());
    let mut sum = 0u64;
    for first in (0..ITEMS).step_by(RUN as usize) {
        a.clear();
        feed(first, &mut a);
        for _ in 0..3 {
            b.clear();
            work(&mut f, slot, &a, &mut b);
            std::mem::swap(&mut a, &mut b);
        }
        let mut got = Batch::default();
        collect(&a, &mut got);
        sum += got
            .into_iter()
            .map(|r| match r.body {
                Body::One(v) => v,
                _ => unreachable!(),
            })
            .sum::<u64>();
    }
    assert_eq!(sum, (0..ITEMS).map(|x| x + 3).sum::<u64>());
    assert_eq!(bare(), sum);
}

/// W1's bare chain through the same steps.
fn bare() -> u64 {
    let (mut a, mut b) = (Vec::new(), Vec::new());
    let mut sum = 0u64;
    for first in (0..ITEMS).step_by(RUN as usize) {
        a.clear();
        bare_feed(first, &mut a);
        for _ in 0..3 {
            b.clear();
            bare_work(&a, &mut b);
            std::mem::swap(&mut a, &mut b);
        }
        sum += bare_collect(&a);
    }
    sum
}
