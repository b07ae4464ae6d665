//! A host's book of one stage it serves: the broker messages it took, which of their items
//! it has handed to its local pipeline, and the outputs it has for them so far.
//!
//! # The problem
//! Items must stream through the host's local pipeline (handing them over one message at a
//! time, or one ticket per item, costs more than the work), yet the caller must know, at
//! any moment, which items a host has *started*: if the host dies, exactly those fail
//! (they may have had side effects; a crashed item is not run again), and the others of
//! the same messages must run elsewhere.
//!
//! # The approach
//! The feed thread ([`super::served`]) takes *units*: the next records of the messages in
//! hand, as many as there is **room** for, claims them (one control message for all the
//! units of a round, flushed to the broker before any item of them starts) and hands their
//! values to the local pipeline under local sequence numbers of its own. The room is the
//! host's in-flight bound: what its workers can start within [`BUDGET`] at the rate they
//! have been finishing items (at least one item per worker), so an item claimed is one
//! that was running, or about to. The collect thread ([`super::served`]) writes each
//! outcome into its message's outgoing batches ([`Parts`]); a message whose records all
//! have one is finished, and goes to be published, acked and reported *done*.
//!
//! # Invariants
//! - A record is claimed before it starts, and its claim reached the broker first.
//! - Every value handed to the local pipeline has one owner until its outcome (a repeat,
//!   after a local worker's death, finds none and is dropped).
//! - The values in the local pipeline never exceed the room; what the book holds is
//!   bounded by the messages in hand (the consumer's `max_ack_pending` and the pull's
//!   batch) and the room.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::Range;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use crossbeam_channel::{Receiver, Sender};

use super::wire::{
    self, BatchWriter, RECORD_OVERHEAD, RecAt, Spans, TAG_MANY, TAG_ONE, WBody, WRec,
};
use crate::error::Error;

/// How far ahead of its workers a host claims items: what they finish in this time, at the
/// rate they have been finishing them.
pub(crate) const BUDGET: Duration = Duration::from_millis(3);

/// The most values a host's local pipeline holds at once, whatever the rate.
const MAX_ROOM: usize = 8192;

/// A broker message on its way through a host.
pub(crate) struct Job {
    pub msg: jetstream::Message,
    pub key: String,
    pub id: String,
    /// Records to skip: they have an outcome already (a host that died had claimed them).
    pub skip: Spans,
}

/// A message the book is done with: its outputs, as batches that fit the broker.
pub(crate) struct Finished {
    pub job: Job,
    /// The id its outputs are published under (`<id>`, or `<id>~<seq>` when it ran only
    /// the records a dead host had not claimed).
    pub id: String,
    pub parts: Vec<Vec<u8>>,
}

/// Values handed to the local pipeline in one go: the message's `payload`, where each
/// value is in it, and the local number of the first (the others follow).
pub(crate) struct Unit {
    pub key: String,
    pub claim: Spans,
    pub payload: bytes::Bytes,
    pub vals: Vec<Range<usize>>,
    pub base: u64,
}

/// Who a local value belongs to (see [`Outcomes::owner`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Owner {
    msg: u64,
    /// Its unit's first local number.
    unit: u64,
    rec: u32,
    val: u32,
    /// The caller's number of the item.
    pub seq: u64,
    /// The record has several values (their outcomes are gathered first).
    pub many: bool,
}

/// One value's outcome, for a record of several values: its encoded outputs, or its error.
pub(crate) type ValueOutcome = Result<Vec<Vec<u8>>, Box<Error>>;

/// See the module docs.
pub(crate) struct Book {
    inner: Mutex<Inner>,
    wake: (Sender<()>, Receiver<()>),
    finished: tokio::sync::mpsc::UnboundedSender<Finished>,
    /// Room in the pull loop for more messages (given back when one is all handed over).
    hoard: std::sync::Arc<tokio::sync::Semaphore>,
    pub idx: u32,
    pub stage: String,
    limit: usize,
}

struct Inner {
    /// Messages in hand by number, from `first_msg` on (`None` once finished).
    msgs: VecDeque<Option<Msg>>,
    first_msg: u64,
    /// Messages with records not yet handed over, in arrival order.
    queue: VecDeque<u64>,
    next_msg: u64,
    /// Units in the local pipeline, by their first local number.
    units: BTreeMap<u64, Owned>,
    next_local: u64,
    inflight: usize,
    room: usize,
    workers: usize,
    meter: Meter,
}

struct Msg {
    job: Job,
    recs: Vec<RecAt>,
    next: usize,
    /// Records without an outcome (handed over, or not yet).
    left: usize,
    parts: Parts,
    /// Records of several values, gathering their values' outcomes.
    many: HashMap<u32, Vec<Option<ValueOutcome>>>,
    first_run: Option<u64>,
}

/// A unit in the local pipeline: the owner of each of its values (`None` once it has its
/// outcome), and how many are still out.
struct Owned {
    msg: u64,
    owners: Vec<Option<(u32, u32, u64)>>,
    many: Vec<bool>,
    left: usize,
}

/// The rate at which the local pipeline finishes values, measured while it holds some.
#[derive(Default)]
struct Meter {
    count: usize,
    busy: Duration,
    last: Option<Instant>,
}

impl Book {
    pub(crate) fn new(
        finished: tokio::sync::mpsc::UnboundedSender<Finished>,
        hoard: std::sync::Arc<tokio::sync::Semaphore>,
        spec: &wire::StageSpec,
        limit: usize,
    ) -> Book {
        let workers = spec.opts.workers.max(1);
        Book {
            inner: Mutex::new(Inner {
                msgs: VecDeque::new(),
                first_msg: 0,
                queue: VecDeque::new(),
                next_msg: 0,
                units: BTreeMap::new(),
                next_local: 0,
                inflight: 0,
                room: workers,
                workers,
                meter: Meter::default(),
            }),
            wake: crossbeam_channel::bounded(1),
            finished,
            hoard,
            idx: spec.idx,
            stage: spec.name.clone(),
            limit,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ready when room was freed (the feed thread waits on it).
    pub(crate) fn woken(&self) -> &Receiver<()> {
        &self.wake.1
    }

    /// Takes a message in; one that cannot be read is finished at once (acked, with no
    /// output: it is not ours to read).
    pub(crate) fn add(&self, job: Job) {
        let recs = wire::index(&job.msg.payload).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "forkpipe host: a corrupt message was dropped");
            Vec::new()
        });
        let mut g = self.lock();
        let no = g.next_msg;
        g.next_msg += 1;
        let msg = Msg {
            left: recs.len(),
            recs,
            next: 0,
            parts: Parts::new(self.limit, &self.stage, self.idx),
            many: HashMap::new(),
            first_run: None,
            job,
        };
        g.msgs.push_back(Some(msg));
        g.queue.push_back(no);
    }

    /// The next units, as many values as there is room for (a record of several values
    /// goes whole). Records that need no running (upstream failures and drops) go
    /// straight to the outputs, skipped ones nowhere.
    pub(crate) fn plan(&self) -> Vec<Unit> {
        let mut g = self.lock();
        let mut units = Vec::new();
        while let Some(&no) = g.queue.front() {
            let room = g.room.saturating_sub(g.inflight);
            if room == 0 {
                break;
            }
            let base = g.next_local;
            let (unit, owned, all) = g.take(no, room, base, self.idx);
            if !owned.owners.is_empty() {
                g.next_local += owned.owners.len() as u64;
                g.inflight += owned.owners.len();
                if g.inflight == owned.owners.len() {
                    g.meter.last = Some(Instant::now());
                }
                g.units.insert(base, owned);
                units.extend(unit);
            }
            if all {
                g.queue.pop_front();
                self.hoard.add_permits(1);
                self.finish_if_done(&mut g, no);
            }
        }
        units
    }

    /// Locks the book for the outcomes of one batch of the local pipeline.
    pub(crate) fn outcomes(&self) -> Outcomes<'_> {
        Outcomes {
            inner: self.lock(),
            book: self,
            done: 0,
        }
    }

    fn finish_if_done(&self, g: &mut Inner, no: u64) {
        let slot = g.msgs.get_mut((no - g.first_msg) as usize);
        let Some(slot) = slot.filter(|m| {
            m.as_ref()
                .is_some_and(|m| m.left == 0 && m.next == m.recs.len())
        }) else {
            return;
        };
        let Some(m) = slot.take() else { return };
        while g.msgs.front().is_some_and(Option::is_none) {
            g.msgs.pop_front();
            g.first_msg += 1;
        }
        let id = match m.first_run {
            Some(first) if !m.job.skip.is_empty() => format!("{}~{first}", m.job.id),
            _ => m.job.id.clone(),
        };
        let parts = m.parts.finish();
        let _ = self.finished.send(Finished {
            job: m.job,
            id,
            parts,
        });
    }
}

impl Inner {
    fn msg(&mut self, no: u64) -> &mut Msg {
        let m = self.msgs.get_mut((no - self.first_msg) as usize);
        m.and_then(Option::as_mut).expect("a message in hand")
    }

    /// Takes up to `room` values of message `no` from its next record on: the unit to hand
    /// over (if any value), its owners, and whether the message is all handed over.
    fn take(&mut self, no: u64, room: usize, base: u64, idx: u32) -> (Option<Unit>, Owned, bool) {
        let m = self.msg(no);
        let payload = m.job.msg.payload.clone();
        let mut owned = Owned {
            msg: no,
            owners: Vec::new(),
            many: Vec::new(),
            left: 0,
        };
        let (mut vals, mut claim) = (Vec::new(), Vec::new());
        while m.next < m.recs.len() && owned.owners.len() < room {
            let (ri, r) = (m.next as u32, m.recs[m.next]);
            m.next += 1;
            if wire::contains(&m.job.skip, r.seq) {
                m.left -= 1;
                continue;
            }
            m.first_run.get_or_insert(r.seq);
            let values = match r.tag {
                TAG_ONE => {
                    claim.push(r.seq);
                    let v = r.one(&payload);
                    let at = v.as_ptr() as usize - payload.as_ptr() as usize;
                    vals.push(at..at + v.len());
                    owned.owners.push(Some((ri, 0, r.seq)));
                    owned.many.push(false);
                    continue;
                }
                TAG_MANY => r.values(&payload),
                _ => {
                    // (Failed or dropped upstream: passed on as it is.)
                    m.parts.push_raw(r.raw(&payload));
                    m.left -= 1;
                    continue;
                }
            };
            if values.is_empty() {
                m.parts.push(WRec {
                    seq: r.seq,
                    body: WBody::Dropped(idx),
                });
                m.left -= 1;
                continue;
            }
            let many = r.tag == TAG_MANY;
            if many {
                m.many.insert(ri, vec![None; values.len()]);
            }
            claim.push(r.seq);
            for (k, v) in values.into_iter().enumerate() {
                let at = v.as_ptr() as usize - payload.as_ptr() as usize;
                vals.push(at..at + v.len());
                owned.owners.push(Some((ri, k as u32, r.seq)));
                owned.many.push(many);
            }
        }
        owned.left = owned.owners.len();
        let all = m.next == m.recs.len();
        let unit = (!vals.is_empty()).then(|| Unit {
            key: m.job.key.clone(),
            claim: wire::spans(claim),
            payload,
            vals,
            base,
        });
        (unit, owned, all)
    }

    /// Room for what the workers finish within [`BUDGET`] at the rate measured so far.
    fn meter(&mut self, n: usize) {
        let now = Instant::now();
        if let Some(last) = self.meter.last {
            self.meter.busy += now - last;
        }
        self.meter.count += n;
        self.meter.last = (self.inflight > 0).then_some(now);
        if self.meter.busy >= Duration::from_millis(5) {
            let rate = self.meter.count as f64 / self.meter.busy.as_secs_f64();
            let ahead = (rate * BUDGET.as_secs_f64()) as usize;
            self.room = (self.workers + ahead).clamp(self.workers, MAX_ROOM);
            self.meter.count = 0;
            self.meter.busy = Duration::ZERO;
        }
    }
}

/// The book, locked for the outcomes of one batch of the local pipeline.
pub(crate) struct Outcomes<'a> {
    inner: std::sync::MutexGuard<'a, Inner>,
    book: &'a Book,
    done: usize,
}

impl Outcomes<'_> {
    /// The owner of local value `seq`, if it has no outcome yet.
    pub(crate) fn owner(&self, seq: u64) -> Option<Owner> {
        let (&base, unit) = self.inner.units.range(..=seq).next_back()?;
        let k = (seq - base) as usize;
        let (rec, val, cseq) = unit.owners.get(k).copied().flatten()?;
        Some(Owner {
            msg: unit.msg,
            unit: base,
            rec,
            val,
            seq: cseq,
            many: unit.many[k],
        })
    }

    /// The outcome of a one-value record: its one output, written by `encode`.
    pub(crate) fn one(
        &mut self,
        o: Owner,
        encode: impl FnOnce(&mut Vec<u8>) -> Result<(), String>,
    ) -> Result<(), String> {
        let m = self.inner.msg(o.msg);
        m.parts.push_one(o.seq, encode)
    }

    /// The outcome of value `o`: for a one-value record, its record's body; for one of
    /// several values, gathered until they all have one.
    pub(crate) fn put(&mut self, o: Owner, outcome: ValueOutcome) {
        let idx = self.book.idx;
        let m = self.inner.msg(o.msg);
        if !o.many {
            let body = body_of(outcome.map(|v| vec![v]), idx);
            return m.parts.push(WRec { seq: o.seq, body });
        }
        let Some(vals) = m.many.get_mut(&o.rec) else {
            return;
        };
        vals[o.val as usize] = Some(outcome);
        if vals.iter().all(Option::is_some) {
            let vals = m.many.remove(&o.rec).unwrap_or_default();
            let gathered: Result<Vec<Vec<Vec<u8>>>, _> = vals.into_iter().flatten().collect();
            m.parts.push(WRec {
                seq: o.seq,
                body: body_of(gathered, idx),
            });
        }
    }

    /// Value `seq` (owned by `o`) has its outcome: its record too, unless it is one of
    /// several values still waiting for others.
    pub(crate) fn done(&mut self, seq: u64, o: Owner) {
        let g = &mut *self.inner;
        if let Some(unit) = g.units.get_mut(&o.unit) {
            unit.owners[(seq - o.unit) as usize] = None;
            unit.left -= 1;
            if unit.left == 0 {
                g.units.remove(&o.unit);
            }
        }
        g.inflight -= 1;
        self.done += 1;
        let m = g.msg(o.msg);
        if !(o.many && m.many.contains_key(&o.rec)) {
            m.left -= 1;
            self.book.finish_if_done(g, o.msg);
        }
    }

    /// Every value still in the local pipeline, with its owner (when it ended under them).
    pub(crate) fn all_out(&mut self) -> Vec<(u64, Owner)> {
        let mut out = Vec::new();
        for (&base, unit) in &self.inner.units {
            for (k, o) in unit.owners.iter().enumerate() {
                if let Some((rec, val, seq)) = *o {
                    let owner = Owner {
                        msg: unit.msg,
                        unit: base,
                        rec,
                        val,
                        seq,
                        many: unit.many[k],
                    };
                    out.push((base + k as u64, owner));
                }
            }
        }
        out
    }
}

impl Drop for Outcomes<'_> {
    /// Measures the rate, and wakes the feed thread if room was freed.
    fn drop(&mut self) {
        if self.done > 0 {
            self.inner.meter(self.done);
            let _ = self.book.wake.0.try_send(());
        }
    }
}

/// The record body of an item's gathered outputs (none: dropped by stage `idx`).
fn body_of(outcome: Result<Vec<Vec<Vec<u8>>>, Box<Error>>, idx: u32) -> WBody {
    match outcome {
        Err(e) => WBody::Failed(idx, e),
        Ok(vs) => {
            let mut all: Vec<Vec<u8>> = vs.into_iter().flatten().collect();
            match all.len() {
                0 => WBody::Dropped(idx),
                1 => WBody::One(all.pop().expect("one output")),
                _ => WBody::Many(all),
            }
        }
    }
}

/// Bytes a message may hold besides its batch (headers and their framing).
pub(crate) const HEADROOM: usize = 1024;

/// A message's outputs as batches that fit the broker's `max_payload` (`limit`); an
/// output that cannot fit alone fails its item, with both sizes.
struct Parts {
    room: usize,
    limit: usize,
    stage: String,
    idx: u32,
    done: Vec<Vec<u8>>,
    w: BatchWriter,
}

impl Parts {
    fn new(limit: usize, stage: &str, idx: u32) -> Parts {
        Parts {
            room: limit.saturating_sub(HEADROOM),
            limit,
            stage: stage.to_string(),
            idx,
            done: Vec::new(),
            w: BatchWriter::new(),
        }
    }

    /// Room for `size` more bytes (the batch so far is sent on first, if it must).
    fn make_room(&mut self, size: usize) {
        if self.w.count() > 0 && self.w.len() + size > self.room {
            let full = std::mem::replace(&mut self.w, BatchWriter::new());
            self.done.push(full.finish());
        }
    }

    fn too_large(&self, seq: u64, size: usize) -> WRec {
        let message = format!(
            "its output is {size} bytes encoded, more than the broker's max_payload of {} bytes",
            self.limit
        );
        let e = Error::Broker {
            stage: self.stage.clone(),
            item: seq,
            message,
        };
        WRec {
            seq,
            body: WBody::Failed(self.idx, Box::new(e)),
        }
    }

    fn push_one(
        &mut self,
        seq: u64,
        encode: impl FnOnce(&mut Vec<u8>) -> Result<(), String>,
    ) -> Result<(), String> {
        let mark = self.w.len();
        self.w.push_one(seq, encode)?;
        let size = self.w.len() - mark;
        if size + 4 > self.room {
            self.w.take_last(mark);
            // (The value's own bytes: the record less its seq, tag and length.)
            let rec = self.too_large(seq, size.saturating_sub(13));
            self.push(rec);
        } else if self.w.len() + 4 > self.room {
            let raw = self.w.take_last(mark);
            self.push_raw(&raw);
        }
        Ok(())
    }

    fn push(&mut self, rec: WRec) {
        let size = record_size(&rec);
        let rec = if size + 4 > self.room {
            self.too_large(rec.seq, size)
        } else {
            rec
        };
        self.make_room(record_size(&rec));
        self.w.push(&rec);
    }

    fn push_raw(&mut self, raw: &[u8]) {
        self.make_room(raw.len());
        self.w.push_raw(raw);
    }

    fn finish(mut self) -> Vec<Vec<u8>> {
        if self.w.count() > 0 {
            self.done.push(self.w.finish());
        }
        self.done
    }
}

fn record_size(rec: &WRec) -> usize {
    RECORD_OVERHEAD
        + match &rec.body {
            WBody::One(v) => v.len(),
            WBody::Many(vs) => vs.iter().map(|v| v.len() + 4).sum(),
            WBody::Dropped(_) => 0,
            WBody::Failed(..) => 512,
        }
}
