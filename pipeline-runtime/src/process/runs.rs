//! A worker's stage function over a run (see [`crate::transport::run`]).
//!
//! # The problem
//! Called item by item through the worker's loop, the stage function costs several calls
//! that cannot be inlined per item (the codec's function pointers, a `catch_unwind` for
//! each of decode, apply and encode) and the loop's own bookkeeping: for `x + 1` that is
//! all of the work.
//!
//! # The approach
//! [`apply`] is generic over the item types and the stage function's own closure type:
//! it is instantiated for each stage function (through `kernel::StageFn::run`), so the
//! codec and the function inline into it, and a run costs one indirect call. It walks the
//! run's entries in one loop under **one** `catch_unwind`. A panic
//! unwinds out of the loop: the item it hit fails (with what it was doing: decoding,
//! running the stage function, encoding), its partial output is cut off, and the loop
//! resumes at the next item — no item runs twice. A stage that keeps `init` state stops
//! there instead: its worker is replaced, and the items after the panic are sent again.
//!
//! A map function (`Stage::map`: one output per item) goes through [`apply_map`]: while
//! the entries are of one input each, [`each_map`] decodes, calls and encodes with no
//! `Emit` between them; from the first other entry on, the general loop answers.
//!
//! The slot still says, item by item, which item runs (a store per item), so a crash, a
//! kill or a timeout blames exactly the item that was running.
//!
//! # Invariants
//! - Every entry read yields exactly one entry written, in order: the answer to a run is
//!   a run of the same items.
//! - An answer stops after [`RUN_BYTES`] of entries, or at the item count its caller set
//!   ([`RunPos::piece`]); the caller pushes it and calls again with the same [`RunPos`]. So
//!   a run whose outputs are large is answered in pieces, and a worker in front of a stage
//!   of several workers answers in as many pieces, one per link (they go to the least
//!   loaded ones), rather than giving all of a run to one.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::Ordering;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Worker};
use crate::guard;
use crate::item::{Body, Emit};
use crate::os::sys::{self, SlotState};
use crate::process::budget::GiveUp;
use crate::transport::codec;
use crate::transport::link::{TAG_DROPPED, TAG_FAILED, TAG_MANY, TAG_ONE};
use crate::transport::record;
use crate::transport::run::{Entries, RUN_BYTES, RUN_HEADER, RunWriter};

/// What a worker lends [`apply`] for one run.
pub(crate) struct RunCx<'a, Out> {
    pub emit: &'a mut Emit<Out>,
    pub stage: &'a str,
    pub idx: u32,
    pub me: Worker,
    pub slot: &'static SlotState,
    /// The supervisor checks item times (the stage has a timeout).
    pub timed: bool,
    /// Set for the stand-in of a stage that gave up: every item fails with it.
    pub give_up: Option<&'a GiveUp>,
    /// A panic means the worker must be replaced.
    pub stateful: bool,
}

/// Where [`apply`] is in a run: items answered so far and the offset of the next entry.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RunPos {
    pub first: u64,
    pub count: u32,
    pub done: u32,
    /// This piece of the answer ends before this item (see [`RunPos::piece`]).
    stop: u32,
    off: usize,
    /// Items the stage function finished successfully (for the restart budget).
    pub ran_ok: u64,
    /// A stateful stage panicked: stop, the worker is replaced.
    pub restart: bool,
}

impl RunPos {
    /// The start of a run of `count` items numbered from `first`.
    pub(crate) fn new(first: u64, count: u32) -> RunPos {
        RunPos {
            first,
            count,
            done: 0,
            stop: count,
            off: 0,
            ran_ok: 0,
            restart: false,
        }
    }

    /// The next answer holds at most `items` items.
    pub(crate) fn piece(&mut self, items: u32) {
        self.stop = self.count.min(self.done.saturating_add(items.max(1)));
    }

    /// True when nothing more is to be answered.
    pub(crate) fn over(&self) -> bool {
        self.restart || self.done == self.count
    }
}

/// What the loop was doing when a panic unwound it.
#[derive(Clone, Copy)]
enum Phase {
    Decode,
    Run,
    Encode,
}

/// Answers the entries of run `payload` from `pos` on, appending one run record to `out`
/// (see the module docs).
pub(crate) fn apply<In: DeserializeOwned, Out: Serialize>(
    f: &mut impl FnMut(In, &mut Emit<Out>) -> Result<(), String>,
    cx: &mut RunCx<'_, Out>,
    payload: &[u8],
    pos: &mut RunPos,
    out: &mut Vec<u8>,
) {
    answer(cx, payload, pos, out, |cx, at| each(f, cx, payload, at));
}

/// [`apply`] for a map function (one output per item, `Stage::map`): entries of one input
/// go through [`each_map`], which encodes the function's output straight, with no `Emit`
/// between them; from the first other entry on, the general loop answers.
pub(crate) fn apply_map<In: DeserializeOwned, Out: Serialize>(
    f: &mut impl FnMut(In) -> Out,
    cx: &mut RunCx<'_, Out>,
    payload: &[u8],
    pos: &mut RunPos,
    out: &mut Vec<u8>,
) {
    answer(cx, payload, pos, out, |cx, at| {
        each_map(f, cx, payload, at);
        each(&mut crate::item::emitting(f), cx, payload, at);
    });
}

/// Where a loop over a run's entries is, as [`answer`] lends it.
struct At<'a> {
    pos: &'a mut RunPos,
    w: &'a mut RunWriter,
    out: &'a mut Vec<u8>,
    /// What the loop is doing (for the error of a panic).
    phase: Phase,
    /// Where the answer of the item being applied starts.
    mark: usize,
    /// Where the run's entries start.
    base: usize,
}

impl At<'_> {
    /// True while the loop may answer another item in this piece.
    #[inline(always)]
    fn more(&self) -> bool {
        self.pos.done < self.pos.stop && self.out.len() - self.base < RUN_BYTES
    }
}

/// [`apply`]'s frame: the run's answer, and the loop `each` called under one
/// `catch_unwind` — again after a panic, from the next item on.
fn answer<Out>(
    cx: &mut RunCx<'_, Out>,
    payload: &[u8],
    pos: &mut RunPos,
    out: &mut Vec<u8>,
    mut each: impl FnMut(&mut RunCx<'_, Out>, &mut At<'_>),
) {
    let mut w = RunWriter::begin(out, pos.first + u64::from(pos.done));
    let base = out.len();
    let mut at = At {
        pos,
        w: &mut w,
        out,
        phase: Phase::Run,
        mark: base,
        base,
    };
    while !at.pos.over() && at.more() {
        let caught = catch_unwind(AssertUnwindSafe(|| each(&mut *cx, &mut at)));
        let Err(p) = caught else {
            break;
        };
        at.out.truncate(at.mark);
        cx.emit.clear();
        let seq = at.pos.first + u64::from(at.pos.done);
        let e = match at.phase {
            Phase::Decode => codec_error(cx, seq, "decode", panicked(p.as_ref())),
            Phase::Encode => codec_error(cx, seq, "encode the output of", panicked(p.as_ref())),
            Phase::Run => guard::panic_error(cx.stage, cx.me, seq, p.as_ref()),
        };
        failed(at.w, at.out, cx.idx, &e);
        skip_entry(payload, at.pos);
        cx.slot.panic_len.store(0, Ordering::Relaxed);
        at.pos.restart = cx.stateful && matches!(at.phase, Phase::Run);
        at.phase = Phase::Run;
    }
    cx.slot.running.store(0, Ordering::Release);
    w.end(out);
}

fn panicked(p: &(dyn std::any::Any + Send)) -> String {
    format!("panicked: {}", crate::error::panic_message(p))
}

/// Moves `pos` past the entry that panicked.
fn skip_entry(payload: &[u8], pos: &mut RunPos) {
    let mut e = Entries::at(payload, pos.off, pos.count - pos.done);
    let _ = e.next();
    pos.off = e.offset();
    pos.done += 1;
}

/// The loop over the entries (under [`answer`]'s `catch_unwind`): `pos` moves past an
/// entry only once its answer is written; `mark` is where that answer starts.
#[inline(always)]
fn each<In: DeserializeOwned, Out: Serialize>(
    f: &mut impl FnMut(In, &mut Emit<Out>) -> Result<(), String>,
    cx: &mut RunCx<'_, Out>,
    payload: &[u8],
    at: &mut At<'_>,
) {
    let mut entries = Entries::at(payload, at.pos.off, at.pos.count - at.pos.done);
    while at.more() {
        let Some((kind, bytes)) = entries.next() else {
            return;
        };
        let seq = begin_item(cx, at);
        match kind {
            TAG_ONE | TAG_MANY => item(f, cx, (kind, bytes), seq, at),
            _ => at.w.copy_entry(at.out, kind, bytes),
        }
        at.pos.off = entries.offset();
        at.pos.done += 1;
        if at.pos.restart {
            return;
        }
    }
}

/// The next item's number; marks where its answer starts, and the slot says it runs (a
/// crash, a kill or a timeout blames it).
#[inline(always)]
fn begin_item<Out>(cx: &RunCx<'_, Out>, at: &mut At<'_>) -> u64 {
    let seq = at.pos.first + u64::from(at.pos.done);
    at.mark = at.out.len();
    cx.slot.running.store(seq + 1, Ordering::Release);
    if cx.timed {
        cx.slot.since.store(sys::now_ns(), Ordering::Relaxed);
    }
    seq
}

/// [`each`] for a map function, while the entries are of one input with a one-byte length
/// that decodes (at the first other one it returns, and the general loop answers it):
/// decode, call, encode, with nothing between.
#[inline(always)]
fn each_map<In: DeserializeOwned, Out: Serialize>(
    f: &mut impl FnMut(In) -> Out,
    cx: &mut RunCx<'_, Out>,
    payload: &[u8],
    at: &mut At<'_>,
) {
    let area = payload.get(RUN_HEADER..).unwrap_or(&[]);
    while at.more() && cx.give_up.is_none() {
        let off = at.pos.off;
        let Some(&[TAG_ONE, len]) = area.get(off..off + 2) else {
            return;
        };
        let end = off + 2 + usize::from(len);
        let Some(bytes) = area.get(off + 2..end).filter(|_| len < 0x80) else {
            return;
        };
        let seq = begin_item(cx, at);
        at.phase = Phase::Decode;
        let Ok(x) = codec::decode::<In>(bytes) else {
            at.phase = Phase::Run;
            return;
        };
        at.phase = Phase::Run;
        let y = f(x);
        at.phase = Phase::Encode;
        let m = RunWriter::begin_entry(at.out, TAG_ONE);
        match codec::encode_into(&y, at.out) {
            Ok(()) => {
                at.w.end_entry(at.out, m);
                at.pos.ran_ok += 1;
            }
            Err(message) => {
                at.out.truncate(m);
                let e = codec_error(cx, seq, "encode the output of", message);
                failed(at.w, at.out, cx.idx, &e);
            }
        }
        at.phase = Phase::Run;
        at.pos.off = end;
        at.pos.done += 1;
    }
}

/// One item's entry: decoded, run through the stage function, its outputs encoded.
#[inline(always)]
fn item<In: DeserializeOwned, Out: Serialize>(
    f: &mut impl FnMut(In, &mut Emit<Out>) -> Result<(), String>,
    cx: &mut RunCx<'_, Out>,
    (kind, bytes): (u8, &[u8]),
    seq: u64,
    at: &mut At<'_>,
) {
    at.phase = Phase::Decode;
    let body = if kind == TAG_ONE {
        codec::decode::<In>(bytes).map(Body::One)
    } else {
        decode_many(kind, bytes)
    };
    at.phase = Phase::Run;
    let (w, out) = (&mut *at.w, &mut *at.out);
    let inputs = match body {
        Err(message) => return failed(w, out, cx.idx, &codec_error(cx, seq, "decode", message)),
        Ok(body) => body,
    };
    if let Some(g) = cx.give_up {
        return failed(w, out, cx.idx, &gave_up(cx.stage, seq, g));
    }
    let ran = match inputs {
        Body::One(x) => f(x, cx.emit),
        Body::Many(xs) => xs.into_iter().try_for_each(|x| f(x, cx.emit)),
        _ => unreachable!("decode of ONE or MANY"),
    };
    if let Err(message) = ran {
        cx.emit.clear();
        let e = Error::Failed {
            stage: cx.stage.to_string(),
            item: seq,
            worker: cx.me,
            message,
        };
        return failed(w, out, cx.idx, &e);
    }
    at.phase = Phase::Encode;
    match outputs(cx, w, out) {
        Ok(()) => at.pos.ran_ok += 1,
        Err(message) => {
            let e = codec_error(cx, seq, "encode the output of", message);
            failed(w, out, cx.idx, &e);
        }
    }
    at.phase = Phase::Run;
}

/// The inputs of a `MANY` entry (out of line: the loop keeps to one input per item).
#[inline(never)]
fn decode_many<In: DeserializeOwned>(kind: u8, bytes: &[u8]) -> Result<Body<In>, String> {
    record::decode_inner(kind, bytes, codec::decode::<In>)
}

/// Writes the entry of what the stage function emitted for one item; on an encoding
/// error nothing is written.
#[inline(always)]
fn outputs<Out: Serialize>(
    cx: &mut RunCx<'_, Out>,
    w: &mut RunWriter,
    out: &mut Vec<u8>,
) -> Result<(), String> {
    let vs = cx.emit.as_slice();
    let kind = match vs.len() {
        0 => TAG_DROPPED,
        1 => TAG_ONE,
        _ => TAG_MANY,
    };
    let m = RunWriter::begin_entry(out, kind);
    let r = match vs.len() {
        0 => {
            out.extend_from_slice(&cx.idx.to_le_bytes());
            Ok(())
        }
        1 => codec::encode_into(&vs[0], out),
        n => record::encode_many(vs.iter(), n, codec::encode_into::<Out>, out),
    };
    match r {
        Ok(()) => w.end_entry(out, m),
        Err(_) => out.truncate(m),
    }
    cx.emit.clear();
    r
}

/// Writes a `FAILED` entry for error `e` of stage `idx`.
fn failed(w: &mut RunWriter, out: &mut Vec<u8>, idx: u32, e: &Error) {
    let m = RunWriter::begin_entry(out, TAG_FAILED);
    record::failed_payload(idx, e, out);
    w.end_entry(out, m);
}

fn gave_up(stage: &str, seq: u64, g: &GiveUp) -> Error {
    Error::GaveUp {
        stage: stage.to_string(),
        item: seq,
        restarts: g.restarts,
        secs: g.secs,
        cause: g.cause.clone(),
    }
}

fn codec_error<Out>(cx: &RunCx<'_, Out>, item: u64, what: &str, message: String) -> Error {
    Error::Codec {
        stage: cx.stage.to_string(),
        item,
        worker: cx.me,
        what: what.into(),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::link::REC_HEADER;

    /// A run record of `x` for `x` in `0..n`, numbered from 0.
    fn run_of(n: u64) -> Vec<u8> {
        let mut out = Vec::new();
        let mut w = RunWriter::begin(&mut out, 0);
        for x in 0..n {
            let m = RunWriter::begin_entry(&mut out, TAG_ONE);
            codec::encode_into(&x, &mut out).unwrap();
            w.end_entry(&mut out, m);
        }
        w.end(&mut out);
        out
    }

    /// Answers the whole of `rec` with `f`; the answer's entries and the final position.
    type TestFn = Box<dyn FnMut(u64, &mut Emit<u64>) -> Result<(), String>>;

    fn answer(rec: &[u8], mut f: TestFn, stateful: bool) -> (Vec<(u8, Vec<u8>)>, RunPos) {
        let slot: &'static SlotState = Box::leak(Box::default());
        let mut emit = Emit::new();
        let mut cx = RunCx {
            emit: &mut emit,
            stage: "s",
            idx: 0,
            me: Worker::Thread(0),
            slot,
            timed: false,
            give_up: None,
            stateful,
        };
        let count = crate::transport::run::weight(rec);
        let mut pos = RunPos::new(0, count);
        let mut entries = Vec::new();
        while !pos.over() {
            let mut out = Vec::new();
            apply(&mut f, &mut cx, &rec[REC_HEADER..], &mut pos, &mut out);
            let got = Entries::of(&out[REC_HEADER..]).map(|(k, p)| (k, p.to_vec()));
            entries.extend(got);
        }
        (entries, pos)
    }

    fn counting(at: u64, calls: std::rc::Rc<std::cell::Cell<u64>>) -> TestFn {
        Box::new(move |x: u64, e: &mut Emit<u64>| {
            calls.set(calls.get() + 1);
            if x == at {
                panic!("boom {x}");
            }
            e.emit(x + 1);
            Ok(())
        })
    }

    #[test]
    fn a_panic_fails_exactly_its_item_in_a_10000_item_run() {
        let rec = run_of(10_000);
        for at in [0, 5_000, 9_999] {
            let calls = std::rc::Rc::new(std::cell::Cell::new(0));
            let (entries, pos) = answer(&rec, counting(at, calls.clone()), false);
            assert_eq!(calls.get(), 10_000, "every item ran once (panic at {at})");
            assert_eq!(entries.len(), 10_000);
            assert_eq!((pos.done, pos.ran_ok, pos.restart), (10_000, 9_999, false));
            for (x, (kind, p)) in entries.iter().enumerate() {
                if x as u64 == at {
                    assert_eq!(*kind, TAG_FAILED);
                    let e: Error = codec::decode(&p[4..]).unwrap();
                    assert!(
                        matches!(&e, Error::Panicked { item, message, .. }
                            if *item == at && message.contains(&format!("boom {at}"))),
                        "{e:?}"
                    );
                } else {
                    assert_eq!(
                        (*kind, codec::decode::<u64>(p).unwrap()),
                        (TAG_ONE, x as u64 + 1)
                    );
                }
            }
        }
    }

    #[test]
    fn a_stateful_panic_stops_the_run_after_its_item() {
        let rec = run_of(10_000);
        let calls = std::rc::Rc::new(std::cell::Cell::new(0));
        let (entries, pos) = answer(&rec, counting(5_000, calls.clone()), true);
        assert_eq!(calls.get(), 5_001, "nothing after the panic ran");
        assert_eq!(entries.len(), 5_001);
        assert_eq!((pos.done, pos.restart), (5_001, true));
        assert_eq!(entries[5_000].0, TAG_FAILED);
    }

    #[test]
    fn large_outputs_are_answered_in_pieces_of_every_item() {
        let rec = run_of(100);
        let big: TestFn = Box::new(|x: u64, e: &mut Emit<u64>| {
            for _ in 0..1_000 {
                e.emit(x);
            }
            Ok(())
        });
        let (entries, pos) = answer(&rec, big, false);
        assert_eq!((entries.len(), pos.done), (100, 100));
        assert!(entries.iter().all(|(k, _)| *k == TAG_MANY));
    }
}
