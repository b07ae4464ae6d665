//! Records on the wire: how a [`Body`] becomes the payload of a link record and back.
//!
//! | tag | payload |
//! | --- | --- |
//! | `ONE` | the value's bincode bytes |
//! | `MANY` | `n u32`, then `n` times `len u32` + bincode bytes |
//! | `DROPPED` | index `u32` of the stage that dropped the item |
//! | `FAILED` | index `u32` of the failing stage, then the [`Error`]'s bincode bytes |
//! | `CONSUMED` | index `u32` of a `stream` stage, `n u64`: it consumed `n` more items |

use crate::batch::Batch;
use crate::error::{Error, Worker};
use crate::item::{Body, Rec};
use crate::transport::codec;
use crate::transport::frame::{self, TAG_CONSUMED, TAG_DROPPED, TAG_FAILED, TAG_MANY, TAG_ONE};
use crate::transport::run::{ENTRY_ALONE, Entries, RUN_BYTES, RunWriter};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// An encoder of one item type.
pub(crate) type Enc<T> = fn(&T, &mut Vec<u8>) -> Result<(), String>;
/// A decoder of one item type.
pub(crate) type Dec<T> = fn(&[u8]) -> Result<T, String>;

/// Encodes `body` of item `seq` as one record appended to `out`. On an encoding failure
/// — an error, or a panic in the item's `Serialize` — `out` is restored and the message
/// returned.
pub(crate) fn encode<T>(
    seq: u64,
    body: &Body<T>,
    enc: Enc<T>,
    out: &mut Vec<u8>,
) -> Result<(), String> {
    let mark = out.len();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        encode_inner(seq, body, enc, &mut *out)
    }))
    .unwrap_or_else(|p| {
        Err(format!(
            "panicked: {}",
            crate::error::panic_message(p.as_ref())
        ))
    });
    if r.is_err() {
        out.truncate(mark);
    }
    r
}

fn encode_inner<T>(seq: u64, body: &Body<T>, enc: Enc<T>, out: &mut Vec<u8>) -> Result<(), String> {
    let at = frame::begin_record(out, seq, tag_of(body));
    encode_payload(body, enc, out)?;
    frame::end_record(out, at)
}

/// The tag of a record (or the kind of a run entry) carrying `body`.
pub(crate) fn tag_of<T>(body: &Body<T>) -> u8 {
    match body {
        Body::One(_) => TAG_ONE,
        Body::Many(_) => TAG_MANY,
        Body::Dropped(_) => TAG_DROPPED,
        Body::Failed(..) => TAG_FAILED,
        Body::Consumed(..) => TAG_CONSUMED,
    }
}

/// Appends the payload of `body` (see the module docs), the same in a record of its own
/// and in a run's entry.
pub(crate) fn encode_payload<T>(
    body: &Body<T>,
    enc: impl Fn(&T, &mut Vec<u8>) -> Result<(), String> + Copy,
    out: &mut Vec<u8>,
) -> Result<(), String> {
    match body {
        Body::One(v) => enc(v, out),
        Body::Many(vs) => encode_many(vs.iter(), vs.len(), enc, out),
        Body::Dropped(stage) => {
            out.extend_from_slice(&stage.to_le_bytes());
            Ok(())
        }
        Body::Failed(stage, e) => {
            failed_payload(*stage, e, out);
            Ok(())
        }
        Body::Consumed(stage, n) => {
            out.extend_from_slice(&stage.to_le_bytes());
            out.extend_from_slice(&n.to_le_bytes());
            Ok(())
        }
    }
}

/// Appends a `MANY` payload of `n` values.
#[inline]
pub(crate) fn encode_many<'v, T: 'v>(
    vs: impl Iterator<Item = &'v T>,
    n: usize,
    mut enc: impl FnMut(&T, &mut Vec<u8>) -> Result<(), String>,
    out: &mut Vec<u8>,
) -> Result<(), String> {
    out.extend_from_slice(&(n as u32).to_le_bytes());
    for v in vs {
        let lat = out.len();
        out.extend_from_slice(&0u32.to_le_bytes());
        enc(v, out)?;
        let len = (out.len() - lat - 4) as u32;
        out[lat..lat + 4].copy_from_slice(&len.to_le_bytes());
    }
    Ok(())
}

/// Encodes `body` as a record, or — if it cannot be encoded — a failure record for the
/// item made by `error` from the codec's message (stage index `stage`).
pub(crate) fn encode_or_fail<T>(
    seq: u64,
    body: &Body<T>,
    enc: Enc<T>,
    out: &mut Vec<u8>,
    stage: u32,
    error: impl FnOnce(String) -> Error,
) {
    if let Err(message) = encode(seq, body, enc, out) {
        encode_failed(seq, stage, &error(message), out);
    }
}

/// Appends the entry of one item to run `w` (see [`crate::transport::run`]): its `kind`
/// and what `payload` writes; or — if that fails, or is too large for a frame — a failure
/// entry for the item made by `error` from the codec's message (stage index `stage`).
///
/// `GUARDED`: a panic of the item's `Serialize` is caught and fails the item; without, it
/// unwinds to the caller (who catches it around a whole run, see `Output::send_runs`).
#[inline]
pub(crate) fn encode_entry<const GUARDED: bool>(
    w: &mut RunWriter,
    out: &mut Vec<u8>,
    kind: u8,
    payload: impl FnOnce(&mut Vec<u8>) -> Result<(), String>,
    (stage, error): (u32, impl FnOnce(String) -> Error),
) {
    let mark = RunWriter::begin_entry(out, kind);
    let r = if GUARDED {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| payload(&mut *out)))
            .unwrap_or_else(|p| {
                Err(format!(
                    "panicked: {}",
                    crate::error::panic_message(p.as_ref())
                ))
            })
    } else {
        payload(&mut *out)
    };
    let r = r.and_then(|()| {
        let len = out.len() - mark - 2;
        if len > ENTRY_LIMIT {
            return Err(format!(
                "the item is {len} bytes, over the frame limit of {} bytes",
                codec::FRAME_LIMIT
            ));
        }
        Ok(())
    });
    match r {
        Ok(()) => w.end_entry(out, mark),
        Err(message) => {
            out.truncate(mark);
            let m = RunWriter::begin_entry(out, TAG_FAILED);
            failed_payload(stage, &error(message), out);
            w.end_entry(out, m);
        }
    }
}

/// The largest entry payload: its run (one entry, its header) stays within a frame.
const ENTRY_LIMIT: usize = codec::FRAME_LIMIT - 64;

/// Encodes a failure record. Errors are plain strings and numbers; a message too long for
/// a frame is cut.
pub(crate) fn encode_failed(seq: u64, stage: u32, e: &Error, out: &mut Vec<u8>) {
    let at = frame::begin_record(out, seq, TAG_FAILED);
    failed_payload(stage, e, out);
    let _ = frame::end_record(out, at);
}

/// Appends a `FAILED` payload: the stage's index and the error. An error too long for a
/// frame is replaced by a short one.
pub(crate) fn failed_payload(stage: u32, e: &Error, out: &mut Vec<u8>) {
    let at = out.len();
    out.extend_from_slice(&stage.to_le_bytes());
    if codec::encode_into(e, out).is_err() || out.len() - at > codec::FRAME_LIMIT {
        out.truncate(at + 4);
        let short = Error::Failed {
            stage: String::new(),
            item: e.item().unwrap_or(0),
            worker: crate::error::Worker::Thread(0),
            message: "error too large to send".into(),
        };
        let _ = codec::encode_into(&short, out);
    }
}

/// Decodes a record's payload. `Err` carries the codec's message, or the panic message of
/// the item's `Deserialize` (the item is then failed by the caller, with its sequence
/// number, which sits outside the payload).
pub(crate) fn decode<T>(tag: u8, payload: &[u8], dec: Dec<T>) -> Result<Body<T>, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        decode_inner(tag, payload, dec)
    }))
    .unwrap_or_else(|p| {
        Err(format!(
            "panicked: {}",
            crate::error::panic_message(p.as_ref())
        ))
    })
}

/// An item's body that can be a run's entry (all but a `stream` stage's count).
pub(crate) fn runnable<T>(body: &Body<T>) -> bool {
    !matches!(body, Body::Consumed(..))
}

/// What a run is written from: a batch's records, or the values of a dense batch (the
/// items numbered from the first).
#[derive(Debug)]
pub(crate) enum Items<'a, T> {
    Recs(&'a [Rec<T>]),
    Values(u64, &'a [T]),
}

impl<T> Clone for Items<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Items<'_, T> {}

impl<'a, T> Items<'a, T> {
    pub(crate) fn len(&self) -> usize {
        match self {
            Items::Recs(r) => r.len(),
            Items::Values(_, v) => v.len(),
        }
    }

    /// The items from index `i` on.
    pub(crate) fn from(self, i: usize) -> Items<'a, T> {
        match self {
            Items::Recs(r) => Items::Recs(&r[i..]),
            Items::Values(first, v) => Items::Values(first + i as u64, &v[i..]),
        }
    }

    /// The first item's number.
    pub(crate) fn first_seq(&self) -> u64 {
        match self {
            Items::Recs(r) => r[0].seq,
            Items::Values(first, _) => *first,
        }
    }
}

/// [`write_run`] of one item type with its codec inlined, for the caller's output to a
/// process stage (kept in the stage's `WireOps`): `(out, items, room, (stage_idx, stage))`.
pub(crate) type RunEnc<T> = fn(&mut Vec<u8>, Items<'_, T>, usize, (u32, &str)) -> usize;

/// See [`RunEnc`].
pub(crate) fn encode_run<T: Serialize>(
    out: &mut Vec<u8>,
    items: Items<'_, T>,
    room: usize,
    (stage_idx, stage): (u32, &str),
) -> usize {
    write_run(
        out,
        items,
        room,
        (codec::encode_into::<T>, stage_idx, stage),
    )
}

/// Writes a run of the first items of `items` (as many as are consecutive, up to `room`
/// and [`RUN_BYTES`]; a large item only alone) at the end of `out`; returns how many. The
/// items are encoded under one `catch_unwind`; if a `Serialize` panics, the run is written
/// again with a guard per item, so that the panic fails its item only.
pub(crate) fn write_run<T, E>(
    out: &mut Vec<u8>,
    items: Items<'_, T>,
    room: usize,
    cx: (E, u32, &str),
) -> usize
where
    E: Fn(&T, &mut Vec<u8>) -> Result<(), String> + Copy,
{
    let start = out.len();
    let fast = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        fill_run::<T, E, false>(&mut *out, items, room, cx)
    }));
    fast.unwrap_or_else(|_| {
        out.truncate(start);
        fill_run::<T, E, true>(out, items, room, cx)
    })
}

/// [`write_run`]'s loop; `GUARDED`: each item's encoding under its own `catch_unwind`.
fn fill_run<T, E, const GUARDED: bool>(
    out: &mut Vec<u8>,
    items: Items<'_, T>,
    room: usize,
    (enc, stage_idx, stage): (E, u32, &str),
) -> usize
where
    E: Fn(&T, &mut Vec<u8>) -> Result<(), String> + Copy,
{
    let mut w = RunWriter::begin(out, items.first_seq());
    // Whether the entry just written (from `mark`) ends the run.
    let full = |w: &mut RunWriter, out: &mut Vec<u8>, mark: usize| {
        if out.len() - mark > ENTRY_ALONE && w.count() > 1 {
            w.undo(out, mark);
            return true;
        }
        w.count() as usize >= room || w.bytes(out) >= RUN_BYTES
    };
    match items {
        Items::Values(first, values) => {
            for (k, v) in values.iter().enumerate() {
                let (mark, e) = (out.len(), input_error(stage, first + k as u64));
                encode_entry::<GUARDED>(&mut w, out, TAG_ONE, |o| enc(v, o), (stage_idx, e));
                if full(&mut w, out, mark) {
                    break;
                }
            }
        }
        Items::Recs(recs) => {
            for (k, rec) in recs.iter().enumerate() {
                if k > 0 && (rec.seq != recs[k - 1].seq + 1 || !runnable(&rec.body)) {
                    break;
                }
                let (mark, e) = (out.len(), input_error(stage, rec.seq));
                let payload = |o: &mut Vec<u8>| match &rec.body {
                    Body::One(v) => enc(v, o), // (the common case, inline)
                    body => encode_payload(body, enc, o),
                };
                encode_entry::<GUARDED>(&mut w, out, tag_of(&rec.body), payload, (stage_idx, e));
                if full(&mut w, out, mark) {
                    break;
                }
            }
        }
    }
    let n = w.count() as usize;
    w.end(out);
    n
}

/// The error of an item the caller could not encode for stage `stage`.
pub(crate) fn input_error(stage: &str, item: u64) -> impl FnOnce(String) -> Error + '_ {
    move |message| Error::Codec {
        stage: stage.to_string(),
        item,
        worker: Worker::Process(std::process::id()),
        what: "encode the input of".into(),
        message,
    }
}

/// A run decoder of one item type (see [`decode_run`]).
pub(crate) type RunDec<T> = fn(&[u8], u64, &mut Batch<T>, &dyn Fn(u64, String) -> Body<T>);

/// Decodes every entry of run payload `payload` (items numbered from `first`) into `out`,
/// with the codec inlined and one `catch_unwind` for the run. Values go into `out` as a
/// dense batch while they can (see [`crate::batch`]); from the first entry that is not one
/// value, records. `failed(seq, message)` makes the outcome of an item that cannot be
/// decoded (or whose `Deserialize` panicked); the items after it are decoded still.
pub(crate) fn decode_run<T: DeserializeOwned>(
    payload: &[u8],
    first: u64,
    out: &mut Batch<T>,
    failed: &dyn Fn(u64, String) -> Body<T>,
) {
    let mut entries = Entries::of(payload);
    let mut seq = first;
    if let Some(values) = out.values_from(first) {
        values.reserve(entries.left() as usize);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            decode_values(&mut entries, values, &mut seq);
        }));
        if let Err(p) = r {
            let message = format!("panicked: {}", crate::error::panic_message(p.as_ref()));
            let body = failed(seq, message);
            out.recs().push(Rec { seq, body });
            seq += 1;
        }
    }
    if entries.left() > 0 {
        decode_recs(entries, seq, out.recs(), failed);
    }
}

/// The entries of one value each, from `entries` into `values` (numbered from `seq`, which
/// follows them); stops before the first other entry, or one that does not decode.
#[inline(always)]
fn decode_values<T: DeserializeOwned>(
    entries: &mut Entries<'_>,
    values: &mut Vec<T>,
    seq: &mut u64,
) {
    loop {
        let this = entries.clone();
        match entries.next() {
            Some((TAG_ONE, p)) => {
                if let Ok(v) = codec::decode::<T>(p) {
                    values.push(v);
                    *seq += 1;
                    continue;
                }
            }
            None => return,
            Some(_) => {}
        }
        *entries = this; // (for the records' loop)
        return;
    }
}

/// [`decode_run`]'s loop over any entries, into records.
fn decode_recs<T: DeserializeOwned>(
    mut entries: Entries<'_>,
    mut seq: u64,
    out: &mut Vec<Rec<T>>,
    failed: &dyn Fn(u64, String) -> Body<T>,
) {
    out.reserve(entries.left() as usize);
    loop {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            for (kind, p) in entries.by_ref() {
                let body = if kind == TAG_ONE {
                    codec::decode::<T>(p).map(Body::One) // (the common case, inline)
                } else {
                    decode_inner(kind, p, codec::decode::<T>)
                };
                let body = body.unwrap_or_else(|m| failed(seq, m));
                out.push(Rec { seq, body });
                seq += 1;
            }
        }));
        let Err(p) = r else {
            return;
        };
        let message = format!("panicked: {}", crate::error::panic_message(p.as_ref()));
        out.push(Rec {
            seq,
            body: failed(seq, message),
        });
        seq += 1;
    }
}

/// [`decode`] without catching a panic (for a caller that catches it around many).
#[inline]
pub(crate) fn decode_inner<T>(
    tag: u8,
    payload: &[u8],
    dec: impl Fn(&[u8]) -> Result<T, String>,
) -> Result<Body<T>, String> {
    match tag {
        TAG_ONE => dec(payload).map(Body::One),
        TAG_MANY => {
            let mut p = payload;
            let n = take_u32(&mut p)? as usize;
            let mut vs = Vec::with_capacity(n.min(p.len() / 4 + 1));
            for _ in 0..n {
                let len = take_u32(&mut p)? as usize;
                if len > p.len() {
                    return Err("truncated multi-output record".into());
                }
                vs.push(dec(&p[..len])?);
                p = &p[len..];
            }
            Ok(Body::Many(vs))
        }
        TAG_DROPPED => {
            let mut p = payload;
            Ok(Body::Dropped(take_u32(&mut p)?))
        }
        TAG_CONSUMED => {
            let mut p = payload;
            let stage = take_u32(&mut p)?;
            if p.len() != 8 {
                return Err("truncated record".into());
            }
            Ok(Body::Consumed(
                stage,
                u64::from_le_bytes(p.try_into().expect("8 bytes")),
            ))
        }
        TAG_FAILED => {
            let mut p = payload;
            let stage = take_u32(&mut p)?;
            let e: Error = codec::decode(p)?;
            Ok(Body::Failed(stage, Box::new(e)))
        }
        t => Err(format!("unknown record tag {t}")),
    }
}

fn take_u32(p: &mut &[u8]) -> Result<u32, String> {
    if p.len() < 4 {
        return Err("truncated record".into());
    }
    let v = u32::from_le_bytes(p[..4].try_into().expect("4 bytes"));
    *p = &p[4..];
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Worker;

    fn round<T: serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug>(
        b: Body<T>,
    ) -> Body<T> {
        let mut out = Vec::new();
        encode(9, &b, codec::encode_into::<T>, &mut out).unwrap();
        assert_eq!(u64::from_le_bytes(out[..8].try_into().unwrap()), 9);
        decode(out[8], &out[frame::REC_HEADER..], codec::decode::<T>).unwrap()
    }

    #[test]
    fn bodies_round_trip() {
        assert!(matches!(round(Body::One(5u64)), Body::One(5)));
        assert!(matches!(round(Body::Many(vec![1u8, 2, 3])), Body::Many(v) if v == [1, 2, 3]));
        assert!(matches!(round::<u8>(Body::Dropped(4)), Body::Dropped(4)));
        let e = Error::Failed {
            stage: "s".into(),
            item: 9,
            worker: Worker::Process(3),
            message: "m".into(),
        };
        assert!(
            matches!(round::<u8>(Body::Failed(2, Box::new(e.clone()))), Body::Failed(2, x) if *x == e)
        );
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(decode::<u64>(TAG_MANY, &[255, 255, 255, 255], codec::decode::<u64>).is_err());
        assert!(decode::<u64>(77, &[], codec::decode::<u64>).is_err());
    }
}
