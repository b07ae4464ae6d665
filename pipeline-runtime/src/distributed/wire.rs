//! What travels through the broker, with one owner for its bytes: the batch format (many
//! records in one message) and the control messages between the caller and its hosts.
//!
//! A batch is `count: u32`, then per record `seq: u64 | tag: u8 | …` (little endian):
//!
//! | tag | record | then |
//! | --- | --- | --- |
//! | 0 | one value | `len: u32`, the value's bincode bytes |
//! | 1 | several values (`Emit`) | `n: u32`, then `n` × (`len: u32`, bytes) |
//! | 2 | dropped by the stage at this index | `stage: u32` |
//! | 3 | failed at the stage at this index | `stage: u32`, `len: u32`, the bincode `Error` |
//!
//! Values stay encoded until the side that knows their type decodes them, so a value that
//! cannot be decoded fails its own item only. Control messages are bincode of [`Ctl`] (host
//! to caller), [`Announce`] and [`Abandon`] (caller to hosts).

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::stage::Opts;
use crate::transport::codec;

/// One record of a batch, its value(s) still encoded.
#[derive(Debug)]
pub(crate) struct WRec {
    pub seq: u64,
    pub body: WBody,
}

/// The body of a [`WRec`].
#[derive(Debug)]
pub(crate) enum WBody {
    One(Vec<u8>),
    Many(Vec<Vec<u8>>),
    Dropped(u32),
    Failed(u32, Box<Error>),
}

/// Bytes a record adds to a batch besides its values.
pub(crate) const RECORD_OVERHEAD: usize = 8 + 1 + 4 + 4;

/// A batch being written.
#[derive(Debug, Default)]
pub(crate) struct BatchWriter {
    buf: Vec<u8>,
    count: u32,
}

impl BatchWriter {
    pub(crate) fn new() -> Self {
        BatchWriter {
            buf: vec![0; 4],
            count: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.buf.len()
    }

    pub(crate) fn count(&self) -> u32 {
        self.count
    }

    /// Appends one record.
    pub(crate) fn push(&mut self, rec: &WRec) {
        self.count += 1;
        self.buf.extend_from_slice(&rec.seq.to_le_bytes());
        match &rec.body {
            WBody::One(v) => {
                self.buf.push(0);
                self.bytes(v);
            }
            WBody::Many(vs) => {
                self.buf.push(1);
                self.buf.extend_from_slice(&(vs.len() as u32).to_le_bytes());
                for v in vs {
                    self.bytes(v);
                }
            }
            WBody::Dropped(i) => {
                self.buf.push(2);
                self.buf.extend_from_slice(&i.to_le_bytes());
            }
            WBody::Failed(i, e) => {
                self.buf.push(3);
                self.buf.extend_from_slice(&i.to_le_bytes());
                let mut b = Vec::new();
                if codec::encode_into(&**e, &mut b).is_err() {
                    b.clear();
                    let _ = codec::encode_into(&Error::Closed, &mut b);
                }
                self.bytes(&b);
            }
        }
    }

    /// Appends one record whose single value `encode` writes (straight into the batch).
    pub(crate) fn push_one(
        &mut self,
        seq: u64,
        encode: impl FnOnce(&mut Vec<u8>) -> Result<(), String>,
    ) -> Result<(), String> {
        let start = self.buf.len();
        self.buf.extend_from_slice(&seq.to_le_bytes());
        self.buf.push(0);
        let at = self.buf.len();
        self.buf.extend_from_slice(&[0; 4]);
        if let Err(e) = encode(&mut self.buf) {
            self.buf.truncate(start);
            return Err(e);
        }
        let len = (self.buf.len() - at - 4) as u32;
        self.buf[at..at + 4].copy_from_slice(&len.to_le_bytes());
        self.count += 1;
        Ok(())
    }

    /// Takes back the last record pushed, which starts at byte `mark`: its raw bytes.
    pub(crate) fn take_last(&mut self, mark: usize) -> Vec<u8> {
        self.count -= 1;
        self.buf.split_off(mark)
    }

    /// Appends a record taken from another batch by [`BatchWriter::take_last`].
    pub(crate) fn push_raw(&mut self, raw: &[u8]) {
        self.count += 1;
        self.buf.extend_from_slice(raw);
    }

    fn bytes(&mut self, v: &[u8]) {
        self.buf.extend_from_slice(&(v.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(v);
    }

    /// The finished message.
    pub(crate) fn finish(mut self) -> Vec<u8> {
        self.buf[..4].copy_from_slice(&self.count.to_le_bytes());
        self.buf
    }
}

/// Reads a batch; `Err` says how it is corrupt.
#[cfg(test)]
pub(crate) fn read_batch(b: &[u8]) -> Result<Vec<WRec>, String> {
    let mut r = Reader { b, at: 0 };
    let count = r.u32()?;
    read_records(&mut r, count)
}

/// Reads `count` records from the start of `b` (no count before them).
fn read_batch_n(b: &[u8], count: u32) -> Result<Vec<WRec>, String> {
    read_records(&mut Reader { b, at: 0 }, count)
}

fn read_records(r: &mut Reader<'_>, count: u32) -> Result<Vec<WRec>, String> {
    let b = r.b;
    let mut out = Vec::with_capacity((count as usize).min(b.len() / 9));
    for _ in 0..count {
        let seq = r.u64()?;
        let body = match r.u8()? {
            0 => WBody::One(r.bytes()?.to_vec()),
            1 => {
                let n = r.u32()? as usize;
                let mut vs = Vec::with_capacity(n.min(r.left() / 4));
                for _ in 0..n {
                    vs.push(r.bytes()?.to_vec());
                }
                WBody::Many(vs)
            }
            2 => WBody::Dropped(r.u32()?),
            3 => {
                let i = r.u32()?;
                let e: Error = codec::decode(r.bytes()?)?;
                WBody::Failed(i, Box::new(e))
            }
            t => return Err(format!("unknown record tag {t}")),
        };
        out.push(WRec { seq, body });
    }
    Ok(out)
}

/// The sequence numbers of a batch's records, without its values.
#[cfg(test)]
pub(crate) fn seqs_of(recs: &[WRec]) -> Vec<u64> {
    recs.iter().map(|r| r.seq).collect()
}

/// Where one record of a batch is, for reading it in place (no copy of its values).
#[derive(Debug, Clone, Copy)]
pub(crate) struct RecAt {
    pub seq: u64,
    pub tag: u8,
    /// The record's first byte (its `seq`), its body's first byte (after the tag), its end.
    start: u32,
    body: u32,
    end: u32,
}

/// Tag of a record with one value, and of one with several (see the module docs).
pub(crate) const TAG_ONE: u8 = 0;
pub(crate) const TAG_MANY: u8 = 1;

impl RecAt {
    /// The record's bytes as they are in the batch `b` (for [`BatchWriter::push_raw`]).
    pub(crate) fn raw<'a>(&self, b: &'a [u8]) -> &'a [u8] {
        &b[self.start as usize..self.end as usize]
    }

    /// The values of a one- or several-value record of `b` (none for another tag).
    pub(crate) fn values<'a>(&self, b: &'a [u8]) -> Vec<&'a [u8]> {
        let mut r = Reader {
            b: &b[..self.end as usize],
            at: self.body as usize,
        };
        let n = match self.tag {
            TAG_ONE => 1,
            TAG_MANY => r.u32().unwrap_or(0),
            _ => 0,
        };
        (0..n).map_while(|_| r.bytes().ok()).collect()
    }

    /// The record of `b`, its values copied out.
    pub(crate) fn read(&self, b: &[u8]) -> Result<WRec, String> {
        let mut recs = read_batch_n(&b[self.start as usize..self.end as usize], 1)?;
        recs.pop().ok_or_else(|| "no record".to_string())
    }

    /// The only value of a one-value record of `b`.
    pub(crate) fn one<'a>(&self, b: &'a [u8]) -> &'a [u8] {
        &b[self.body as usize + 4..self.end as usize]
    }
}

/// Indexes a batch: where each record is (checked whole, so reading them later cannot
/// fail); `Err` says how it is corrupt.
pub(crate) fn index(b: &[u8]) -> Result<Vec<RecAt>, String> {
    if b.len() > u32::MAX as usize {
        return Err("batch larger than 4 GiB".into());
    }
    let mut r = Reader { b, at: 0 };
    let count = r.u32()?;
    let mut out = Vec::with_capacity((count as usize).min(b.len() / 9));
    for _ in 0..count {
        let start = r.at as u32;
        let seq = r.u64()?;
        let tag = r.u8()?;
        let body = r.at as u32;
        match tag {
            TAG_ONE => {
                r.bytes()?;
            }
            TAG_MANY => {
                for _ in 0..r.u32()? {
                    r.bytes()?;
                }
            }
            2 => {
                r.u32()?;
            }
            3 => {
                r.u32()?;
                r.bytes()?;
            }
            t => return Err(format!("unknown record tag {t}")),
        }
        let end = r.at as u32;
        out.push(RecAt {
            seq,
            tag,
            start,
            body,
            end,
        });
    }
    Ok(out)
}

/// Sequence numbers as runs of consecutive ones: `(first, count)`.
pub(crate) type Spans = Vec<(u64, u32)>;

/// `seqs` as [`Spans`].
pub(crate) fn spans(seqs: impl IntoIterator<Item = u64>) -> Spans {
    let mut out: Spans = Vec::new();
    for s in seqs {
        match out.last_mut() {
            Some((first, n)) if *first + u64::from(*n) == s && *n < u32::MAX => *n += 1,
            _ => out.push((s, 1)),
        }
    }
    out
}

/// Every sequence number of `spans`.
pub(crate) fn seqs(spans: &[(u64, u32)]) -> impl Iterator<Item = u64> + '_ {
    spans
        .iter()
        .flat_map(|&(first, n)| first..first + u64::from(n))
}

/// Whether `seq` is in `spans`.
pub(crate) fn contains(spans: &[(u64, u32)], seq: u64) -> bool {
    spans
        .iter()
        .any(|&(first, n)| seq >= first && seq < first + u64::from(n))
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn left(&self) -> usize {
        self.b.len() - self.at
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.left() < n {
            return Err(format!("batch cut short at byte {}", self.at));
        }
        let s = &self.b[self.at..self.at + n];
        self.at += n;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn bytes(&mut self) -> Result<&'a [u8], String> {
        let n = self.u32()? as usize;
        self.take(n)
    }
}

/// A stage of a run, as the caller describes it to hosts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StageSpec {
    /// Its place in the run's group of consecutive distributed stages (0, 1, …).
    pub pos: u32,
    /// Its index among the caller's pipeline pieces (what `Dropped`/`Failed` carry).
    pub idx: u32,
    pub name: String,
    /// The recipe id: what a host looks it up by.
    pub id: String,
    pub fingerprint: String,
    pub params: Vec<u8>,
    pub opts: Opts,
}

/// A run, announced by its caller on [`RUNS`] every [`ANNOUNCE_EVERY`] while it lasts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Announce {
    /// `fp.<run>`: the prefix of the run's subjects; the stream is `FP_<run>`.
    pub run: String,
    pub stages: Vec<StageSpec>,
    /// The caller's host name and pid (for hosts' logs).
    pub caller: String,
}

/// A host's message to the caller of a run, on `fp.<run>.ctl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Ctl {
    /// Alive, serving these stage positions: sent every [`HEARTBEAT`].
    Beat {
        host: String,
        pid: u32,
        stages: Vec<u32>,
    },
    /// About to start these items: per message `key` (`<pos>:<id>`), its records `seqs`
    /// (sent, and flushed to the broker, before any of them starts).
    Claim {
        host: String,
        pid: u32,
        units: Vec<(String, Spans)>,
    },
    /// The message `key` is passed on (its outputs published, its input acked).
    Done { host: String, pid: u32, key: String },
    /// Will not serve the stage at `pos`, and why.
    Refuse {
        host: String,
        pid: u32,
        pos: u32,
        why: String,
    },
}

/// Items of messages that a host which died had claimed (they have an outcome now): a
/// host that gets such a message again skips them, and runs only its other records.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Abandon {
    pub keys: Vec<(String, Spans)>,
}

/// The subject runs are announced on.
pub(crate) const RUNS: &str = "forkpipe.runs";
/// How often a caller announces its run.
pub(crate) const ANNOUNCE_EVERY: std::time::Duration = std::time::Duration::from_millis(250);
/// How often a host beats.
pub(crate) const HEARTBEAT: std::time::Duration = std::time::Duration::from_millis(100);

/// The subject of the input of the stage at `pos` of `run` (`pos == stages`: the results).
pub(crate) fn stage_subject(run: &str, pos: u32, stages: usize) -> String {
    if pos as usize >= stages {
        format!("{run}.out")
    } else {
        format!("{run}.in.{pos}")
    }
}

/// The stream of a run.
pub(crate) fn stream_name(run: &str) -> String {
    format!("FP_{}", run.trim_start_matches("fp.").replace('.', "_"))
}

/// Header: a message's batch id (`b17`, or `b17.0`… when a host split its outputs).
pub(crate) const ID_HEADER: &str = "Fp-Id";

pub(crate) fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    let mut b = Vec::new();
    codec::encode_into(v, &mut b).expect("control messages encode");
    b
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(b: &[u8]) -> Option<T> {
    codec::decode(b).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_round_trip() {
        let mut w = BatchWriter::new();
        w.push_one(7, |b| codec::encode_into(&5u64, b)).unwrap();
        w.push(&WRec {
            seq: 8,
            body: WBody::Many(vec![vec![1], vec![2, 3]]),
        });
        w.push(&WRec {
            seq: 9,
            body: WBody::Dropped(2),
        });
        w.push(&WRec {
            seq: 10,
            body: WBody::Failed(1, Box::new(Error::ShutDown { item: 10 })),
        });
        let recs = read_batch(&w.finish()).unwrap();
        assert_eq!(seqs_of(&recs), [7, 8, 9, 10]);
        assert!(matches!(&recs[1].body, WBody::Many(v) if v.len() == 2));
        assert!(
            matches!(&recs[3].body, WBody::Failed(1, e) if **e == Error::ShutDown { item: 10 })
        );
        assert!(read_batch(&[5, 0, 0, 0, 1]).is_err());
    }

    #[test]
    fn index_reads_in_place() {
        let mut w = BatchWriter::new();
        w.push_one(7, |b| codec::encode_into(&5u64, b)).unwrap();
        w.push(&WRec {
            seq: 8,
            body: WBody::Many(vec![vec![1], vec![2, 3]]),
        });
        w.push(&WRec {
            seq: 9,
            body: WBody::Dropped(2),
        });
        let b = w.finish();
        let at = index(&b).unwrap();
        assert_eq!(at.iter().map(|r| r.seq).collect::<Vec<_>>(), [7, 8, 9]);
        let five: u64 = codec::decode(at[0].one(&b)).unwrap();
        assert_eq!(five, 5);
        assert_eq!(at[1].values(&b), [&[1u8][..], &[2, 3][..]]);
        let mut again = BatchWriter::new();
        again.push_raw(at[2].raw(&b));
        assert!(matches!(
            read_batch(&again.finish()).unwrap()[0].body,
            WBody::Dropped(2)
        ));
        assert!(index(&b[..b.len() - 1]).is_err());
    }

    #[test]
    fn spans_of_seqs() {
        let s = spans([3, 4, 5, 9, 10, 2]);
        assert_eq!(s, [(3, 3), (9, 2), (2, 1)]);
        assert_eq!(seqs(&s).collect::<Vec<_>>(), [3, 4, 5, 9, 10, 2]);
        assert!(contains(&s, 10) && !contains(&s, 6));
    }
}
