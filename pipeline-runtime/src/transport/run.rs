//! Runs: many items in one link record.
//!
//! # The problem
//! A record per item costs, per item and per hop, a 13-byte header, a credit check, an
//! ack tag, and a trip through the worker's loop. For small items (a `u64` is one to nine
//! bytes) that is most of the work, and the data path ran at a few percent of what the
//! bare socketpair chain moves.
//!
//! # The approach
//! A **run** is one link record (`seq` = its first item's, tag `RUN`) holding `count` items
//! with consecutive sequence numbers, each an *entry*: its kind (the tag a record of its
//! own would have: `ONE`, `MANY`, `DROPPED`, `FAILED`), its length as a LEB128 varint, and
//! the payload a record of its own would carry ([`crate::transport::record`]). Item `i`
//! of the run is `seq + i`. Entries are dense — one per item, in order — so what became of
//! every item is where it was, and a payload that cannot be decoded is still attributed to
//! its item (its length lets the reader go on to the next one).
//!
//! For the link a run is a record like any other: it is acked, credited, requeued and
//! blamed as one, except that it weighs its `count` in the sender's credit, and that a
//! death inside it splits it ([`slice()`]): the item that was running fails, the others are
//! sent again. A worker answers each run with exactly one run of the same items (the
//! outcome of each), so the ack of the answer completes the run upstream.
//!
//! Runs start where the caller sends at least [`RUN_MIN`] consecutive items per worker to a
//! chain of ordinary process stages (see `Output::send_runs`); a `pipe_next` half or a
//! `stream` stage gets records of one item, and so do submitted work items. A link's
//! credit is larger than its stage's queue ([`link_credit`]), so that several runs are in
//! flight along the chain.
//!
//! # Invariants
//! - A run is checked whole before any entry is used ([`check`]): a count larger than the
//!   bytes could hold, an entry running past the end, an unknown kind or trailing bytes
//!   make the message corrupt, and nothing is allocated from a claimed count.
//! - `count >= 1`; an entry is at least two bytes (kind, length).

use crate::transport::frame::{
    self, REC_HEADER, TAG_DROPPED, TAG_FAILED, TAG_MANY, TAG_ONE, TAG_RUN,
};

/// Bytes of a run's own header inside the record payload: `count u32`.
pub(crate) const RUN_HEADER: usize = 4;

/// The most bytes of entries a sender puts in one run: a run then fits one link message.
pub(crate) const RUN_BYTES: usize = frame::MAX_MSG - 64;

/// How many items a link of a stage whose queue is `queue` may hold: runs travel well only
/// when several are in flight along a chain of stages (a link's sender waits for an ack
/// that comes once every stage after it acked), so a link's credit is larger than the
/// queue. What the pipeline holds is still bounded by its window (Σ queue × workers, a run
/// stage's times `1 + RUN_AHEAD`, plus `DEFAULT_QUEUE`), which the feeder takes room in for each item it pulls, and every link
/// by its bytes (1 MiB).
pub(crate) fn link_credit(queue: usize) -> usize {
    queue.saturating_mul(LINK_CREDIT_FACTOR)
}

/// See [`link_credit`].
const LINK_CREDIT_FACTOR: usize = 16;

/// The fewest items a sender puts in a run: fewer go as records of one item each, whose
/// outputs a worker passes on at once (an item finished before a later one crashes or
/// hangs is delivered, and not run again).
pub(crate) const RUN_MIN: usize = 64;

/// An entry larger than this travels as a record of its own (between two runs).
pub(crate) const ENTRY_ALONE: usize = RUN_BYTES / 4;

/// A run being written at the end of a buffer.
#[derive(Debug)]
pub(crate) struct RunWriter {
    at: usize,
    count: u32,
}

impl RunWriter {
    /// Starts a run of items numbered from `first` at the end of `out`.
    pub(crate) fn begin(out: &mut Vec<u8>, first: u64) -> RunWriter {
        let at = frame::begin_record(out, first, TAG_RUN);
        out.extend_from_slice(&0u32.to_le_bytes());
        RunWriter { at, count: 0 }
    }

    /// Items written so far.
    pub(crate) fn count(&self) -> u32 {
        self.count
    }

    /// Bytes of entries written so far.
    pub(crate) fn bytes(&self, out: &[u8]) -> usize {
        out.len() - self.at - REC_HEADER - RUN_HEADER
    }

    /// Starts the next item's entry of `kind`; finish it with [`RunWriter::end_entry`], or
    /// drop it with `out.truncate(mark)`.
    #[inline]
    pub(crate) fn begin_entry(out: &mut Vec<u8>, kind: u8) -> usize {
        let mark = out.len();
        out.extend_from_slice(&[kind, 0]);
        mark
    }

    /// Ends the entry begun at `mark` (its payload is what follows the mark's two bytes).
    #[inline(always)]
    pub(crate) fn end_entry(&mut self, out: &mut Vec<u8>, mark: usize) {
        let len = out.len() - mark - 2;
        match out.get_mut(mark + 1) {
            Some(b) if len < 0x80 => *b = len as u8,
            _ => long_length(out, mark, len),
        }
        self.count += 1;
    }

    /// Takes back the last entry, which started at `mark`.
    pub(crate) fn undo(&mut self, out: &mut Vec<u8>, mark: usize) {
        out.truncate(mark);
        self.count -= 1;
    }

    /// Copies an entry as it is (one read from another run by [`Entries`]).
    pub(crate) fn copy_entry(&mut self, out: &mut Vec<u8>, kind: u8, payload: &[u8]) {
        let mark = Self::begin_entry(out, kind);
        out.extend_from_slice(payload);
        self.end_entry(out, mark);
    }

    /// Ends the run: patches its count and length. A run of no items is removed.
    pub(crate) fn end(self, out: &mut Vec<u8>) {
        if self.count == 0 {
            out.truncate(self.at);
            return;
        }
        let c = self.at + REC_HEADER;
        out[c..c + 4].copy_from_slice(&self.count.to_le_bytes());
        // Runs are bounded by their writers far below the frame limit.
        frame::end_record(out, self.at).expect("a run is far below the frame limit");
    }
}

fn put_varint(out: &mut [u8; 5], mut v: u32) -> usize {
    let mut n = 0;
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out[n] = b;
            return n + 1;
        }
        out[n] = b | 0x80;
        n += 1;
    }
}

/// Writes the length of an entry of 128 bytes or more (in place of its one-byte length).
#[cold]
fn long_length(out: &mut Vec<u8>, mark: usize, len: usize) {
    let mut v = [0u8; 5];
    let n = put_varint(&mut v, len as u32);
    out.splice(mark + 1..mark + 2, v[..n].iter().copied());
}

/// Reads a LEB128 length of at most five bytes.
#[inline]
fn take_varint(p: &mut &[u8]) -> Option<u32> {
    let mut v: u64 = 0;
    for i in 0..5 {
        let b = *p.get(i)?;
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            *p = &p[i + 1..];
            return u32::try_from(v).ok();
        }
    }
    None
}

/// The entries of a run's payload, in order: `(kind, payload)`. Only for a payload that
/// passed [`check`] (elsewhere a malformed entry ends the iteration).
#[derive(Debug, Clone)]
pub(crate) struct Entries<'a> {
    p: &'a [u8],
    left: u32,
    /// The length of the whole entries area.
    total: usize,
}

impl<'a> Entries<'a> {
    /// The entries of a run record's payload (after the record header).
    pub(crate) fn of(payload: &'a [u8]) -> Entries<'a> {
        let (count, p) = split_count(payload).unwrap_or((0, &[]));
        Entries {
            p,
            left: count,
            total: p.len(),
        }
    }

    /// The `left` entries from byte `off` of the entries area (an [`Entries::offset`]).
    #[inline]
    pub(crate) fn at(payload: &'a [u8], off: usize, left: u32) -> Entries<'a> {
        let area = payload.get(RUN_HEADER..).unwrap_or(&[]);
        Entries {
            p: area.get(off..).unwrap_or(&[]),
            left,
            total: area.len(),
        }
    }

    /// Entries not read yet.
    pub(crate) fn left(&self) -> u32 {
        self.left
    }

    /// Where the next entry starts in the entries area.
    pub(crate) fn offset(&self) -> usize {
        self.total - self.p.len()
    }
}

impl<'a> Iterator for Entries<'a> {
    type Item = (u8, &'a [u8]);

    #[inline]
    fn next(&mut self) -> Option<(u8, &'a [u8])> {
        if self.left == 0 {
            return None;
        }
        let (&kind, mut p) = self.p.split_first()?;
        let len = take_varint(&mut p)? as usize;
        if len > p.len() {
            return None;
        }
        let (payload, rest) = p.split_at(len);
        self.p = rest;
        self.left -= 1;
        Some((kind, payload))
    }
}

fn split_count(payload: &[u8]) -> Option<(u32, &[u8])> {
    let (c, p) = payload.split_first_chunk::<RUN_HEADER>()?;
    Some((u32::from_le_bytes(*c), p))
}

/// Checks a run record's payload whole (see the module docs): `Ok(count)`, or what is
/// wrong with it.
pub(crate) fn check(payload: &[u8]) -> Result<u32, String> {
    match split_count(payload) {
        Some((count, p)) if count > 0 && count as usize <= p.len() / 2 && well_formed(p, count) => {
            Ok(count)
        }
        _ => Err(what_is_wrong(payload)),
    }
}

/// True if `p` is exactly `count` entries of known kinds: [`check`]'s loop, kept tight
/// (one-byte lengths inline); [`what_is_wrong`] says why when it is false.
#[inline]
fn well_formed(p: &[u8], count: u32) -> bool {
    let n = p.len();
    let mut at = 0usize; // (never beyond `n` + 129 while lengths are one byte)
    // The last entry's length byte, and its step (kind, length, payload). An entry as long
    // as the one before moves `at` by `step`, a value the loop already has: the next entry's
    // address does not wait for this entry's length byte to be loaded (that load only
    // confirms the guess), so a run of entries of one length is checked at the speed of
    // independent loads, not of a chain of them. (`black_box` keeps the compiler from
    // rewriting `step` as the loaded byte, which would make the chain again.)
    let (mut last, mut step) = (u8::MAX, 0usize);
    for _ in 0..count {
        if at + 1 >= n {
            return false;
        }
        let (kind, b) = (p[at], p[at + 1]);
        if kind > TAG_FAILED {
            return false;
        }
        if b == last {
            at += step;
            continue;
        }
        if b < 0x80 {
            (last, step) = (b, std::hint::black_box(2 + b as usize));
            at += step;
            continue;
        }
        let mut rest = &p[at + 1..];
        let Some(len) = take_varint(&mut rest) else {
            return false;
        };
        match (n - rest.len()).checked_add(len as usize) {
            Some(end) if end <= n => at = end,
            _ => return false,
        }
    }
    at == n
}

/// Why [`check`] refused a run (slow, only for a corrupt one).
#[cold]
fn what_is_wrong(payload: &[u8]) -> String {
    let Some((count, mut p)) = split_count(payload) else {
        return "run without its count".into();
    };
    if count == 0 || count as usize > p.len() / 2 {
        return format!("run claims {count} items in {} bytes of entries", p.len());
    }
    for i in 0..count {
        let Some((&kind, rest)) = p.split_first() else {
            return format!("run entry {i} of {count} is missing");
        };
        if !matches!(kind, TAG_ONE | TAG_MANY | TAG_DROPPED | TAG_FAILED) {
            return format!("run entry {i} has an unknown kind {kind}");
        }
        p = rest;
        let Some(len) = take_varint(&mut p) else {
            return format!("run entry {i}: bad length");
        };
        if len as usize > p.len() {
            return format!("run entry {i}: length {len} runs past the end of the run");
        }
        p = &p[len as usize..];
    }
    format!("{} bytes after the run's last entry", p.len())
}

/// The number of items of a record (header and payload): its run's count, or 1.
pub(crate) fn weight(rec: &[u8]) -> u32 {
    if rec.len() >= REC_HEADER + RUN_HEADER && rec[8] == TAG_RUN {
        let c = REC_HEADER;
        u32::from_le_bytes(rec[c..c + 4].try_into().expect("4 bytes")).max(1)
    } else {
        1
    }
}

/// The items `from..to` of run record `rec` (header and payload) as a run record of their
/// own, numbered from the first's sequence number; `None` if that range is empty.
pub(crate) fn slice(rec: &[u8], from: u32, to: u32) -> Option<Vec<u8>> {
    let first = u64::from_le_bytes(rec[..8].try_into().expect("8 bytes"));
    let mut out = Vec::new();
    let mut w = RunWriter::begin(&mut out, first + u64::from(from));
    for (i, (kind, payload)) in Entries::of(&rec[REC_HEADER..]).enumerate() {
        let i = i as u32;
        if i >= from && i < to {
            w.copy_entry(&mut out, kind, payload);
        }
    }
    let some = w.count() > 0;
    w.end(&mut out);
    some.then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_of(first: u64, items: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut w = RunWriter::begin(&mut out, first);
        for it in items {
            w.copy_entry(&mut out, TAG_ONE, it);
        }
        w.end(&mut out);
        out
    }

    #[test]
    fn entries_round_trip_with_long_lengths() {
        let big = vec![7u8; 300];
        let rec = run_of(10, &[b"a", &big, b""]);
        assert_eq!(check(&rec[REC_HEADER..]), Ok(3));
        assert_eq!(weight(&rec), 3);
        let got: Vec<_> = Entries::of(&rec[REC_HEADER..]).collect();
        assert_eq!(
            got,
            vec![
                (TAG_ONE, &b"a"[..]),
                (TAG_ONE, &big[..]),
                (TAG_ONE, &b""[..])
            ]
        );
    }

    #[test]
    fn a_slice_is_numbered_from_its_first_item() {
        let rec = run_of(100, &[b"a", b"b", b"c", b"d"]);
        let s = slice(&rec, 1, 3).unwrap();
        assert_eq!(u64::from_le_bytes(s[..8].try_into().unwrap()), 101);
        let got: Vec<_> = Entries::of(&s[REC_HEADER..]).map(|e| e.1).collect();
        assert_eq!(got, vec![&b"b"[..], &b"c"[..]]);
        assert!(slice(&rec, 4, 4).is_none());
    }

    #[test]
    fn hostile_runs_are_refused() {
        let rec = run_of(0, &[b"ab", b"c"]);
        let payload = &rec[REC_HEADER..];
        // A count larger than the bytes could hold: refused before anything is read.
        let mut huge = payload.to_vec();
        huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(check(&huge).unwrap_err().contains("claims"));
        // A count of zero, and one more than there are entries.
        let mut zero = payload.to_vec();
        zero[..4].copy_from_slice(&0u32.to_le_bytes());
        assert!(check(&zero).is_err());
        let mut more = payload.to_vec();
        more[..4].copy_from_slice(&3u32.to_le_bytes());
        assert!(check(&more).is_err());
        // An entry longer than the run, an unknown kind, trailing bytes.
        let mut long = payload.to_vec();
        long[5] = 0x7f;
        assert!(check(&long).unwrap_err().contains("past the end"));
        let mut kind = payload.to_vec();
        kind[4] = 99;
        assert!(check(&kind).unwrap_err().contains("unknown kind"));
        let mut trailing = payload.to_vec();
        trailing.push(0);
        assert!(check(&trailing).unwrap_err().contains("after the run"));
        // A length varint that never ends.
        let mut endless = payload.to_vec();
        endless.truncate(5);
        endless.extend_from_slice(&[0xff; 6]);
        assert!(check(&endless).is_err());
    }
}
