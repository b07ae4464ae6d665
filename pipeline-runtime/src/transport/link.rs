//! Links: the sockets between a sender (the feeder, a bridge thread, or a worker of stage
//! *k*) and the workers of the next process stage.
//!
//! # The problem
//! Items must move between processes at close to the kernel's speed, a slow stage must
//! slow its senders (bounded memory), and — for crash accounting — a sender must always
//! know which of its items the receiver has not finished yet.
//!
//! # The approach
//! Every link is one `SOCK_SEQPACKET` socketpair. The sender packs many small records into
//! one message of up to [`MAX_MSG`] bytes (one syscall for hundreds of items); a record
//! larger than that travels as a chain of chunk messages. The receiver answers with
//! cumulative **acks** ("n more records done") once it has *flushed* the outputs of those
//! records downstream. The sender keeps the sequence numbers it sent and has not seen acked
//! (`unacked`); that list is both its credit (at most `credit_items` per link) and the
//! record of what the receiver holds.
//!
//! # When a worker dies
//! The supervisor keeps a copy of every worker-side socket, so a replacement worker takes
//! over the dead one's links as they are; `SOCK_SEQPACKET` keeps whole messages, so nothing
//! is desynchronised. Each worker incarnation of a slot has an **epoch** (0, 1, 2, …):
//! - upstream, the supervisor writes `DEAD(epoch, failure record)` on the dead worker's end
//!   of each input link. The sender reads it after every ack the dead worker sent, fails the
//!   item that was running (the failure record names it) and requeues every other record
//!   it still held (they never produced visible output, or if they did the collector keeps
//!   one outcome per item), then writes `RESYNC(epoch + 1)`. The replacement discards what
//!   it reads on a link until that link's `RESYNC`: everything before it was requeued.
//! - downstream, the replacement first writes `HELLO(epoch)`: the receiver drops a partial
//!   chunk chain of the dead sender and from then on acks with the new epoch; the sender
//!   ignores acks of other epochs.
//!
//! # Invariants
//! - Data sends may block (the receiver always drains eventually: data flows one way, to the
//!   collector); acks never block — they are coalesced and retried, so no cycle of blocked
//!   writers can form.
//! - End of stream is the socket's own (`shutdown(SHUT_WR)`), never a value.
//! - A record is `seq u64 | tag u8 | len u32 | payload`: the sequence number sits outside the
//!   payload, so a payload that cannot be decoded is still attributed to its item.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::{AsFd, AsRawFd};

use crate::os::sys;
use crate::transport::codec::FRAME_LIMIT;
pub(crate) use crate::transport::frame::{
    MAX_MSG, NO_SEQ, REC_HEADER, TAG_CONSUMED, TAG_DROPPED, TAG_FAILED, TAG_MANY, TAG_ONE, TAG_RUN,
};
use crate::transport::run;

const MSG_BATCH: u8 = 1;
const MSG_BIG_FIRST: u8 = 2;
const MSG_BIG_MORE: u8 = 3;
const MSG_ACK: u8 = 4;

/// A message with fewer records than this is "small": its sender is not streaming in bulk
/// (work items, slow stages), so the receiver passes each output on at once — an item
/// finished before a later one hangs or crashes is delivered, not held back in a batch.
const SMALL_MSG: u32 = 64;
const MSG_HELLO: u8 = 5;
const MSG_RESYNC: u8 = 6;
const MSG_DEAD: u8 = 7;
/// `PARTIAL(epoch, m)`: the first `m` items of the receiver's first unacked record (a run)
/// are done; the rest will not be (its worker is being replaced).
const MSG_PARTIAL: u8 = 8;

/// A run holds at most this fraction of a link's credit (see [`LinkSender::room`]).
const RUNS_IN_FLIGHT: usize = 4;

/// With several links, acks are read every this many records to keep load figures fresh.
const ACK_POLL_EVERY: u64 = 64;

const BATCH_HEADER: usize = 5; // kind u8 + count u32
const BIG_HEADER: usize = 9; // kind u8 + total u64

/// One record as read from a link.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RecRef {
    pub link: usize,
    epoch: u32,
    /// Its position among the records of its link in this epoch.
    index: u64,
    /// It came in a small message (its sender is not streaming in bulk): its outputs should
    /// be passed on at once, not batched.
    pub small: bool,
    /// The first record of its message (see [`LinkReceiver::arrival`]).
    pub first: bool,
    pub seq: u64,
    pub tag: u8,
    start: usize,
    end: usize,
}

/// The sending side of the links to every worker of one stage.
///
/// Records are encoded straight into the chosen link's batch buffer. A sent message is kept
/// until every record in it is acked: that is the sender's exact record of what the
/// receiver holds (to fail or requeue it if the receiver dies), at no per-item cost.
#[derive(Debug)]
pub(crate) struct LinkSender<F> {
    links: Vec<OutLink<F>>,
    credit_items: usize,
    credit_bytes: usize,
    rr: usize,
    chosen: Option<usize>,
    commits: u64,
    pool: Vec<Vec<u8>>,
    ackbuf: Vec<u8>,
    /// This sender's epoch (its worker's incarnation); acks of other epochs are stale.
    epoch: u32,
    /// Records to send again (their receiver died before finishing them), with their tags.
    requeue: VecDeque<(Vec<u8>, Tag)>,
    /// Tags of the records acked since the owner last looked ([`LinkSender::take_acked`]).
    acked_tags: VecDeque<Tag>,
    /// Records requeued in several pieces (a run a death split): the pieces not acked yet
    /// beyond one, by tag.
    split: HashMap<Tag, u32>,
}

/// What a sender attaches to a record to learn, from the receiver's acks, that it is done:
/// for a worker, the link, epoch and index of the input record it came from.
pub(crate) type Tag = u128;

/// The tag of a record whose sender does not track what its acks complete.
pub(crate) const NO_TAG: Tag = u128::MAX;

#[derive(Debug)]
struct OutLink<F> {
    fd: F,
    batch: Vec<u8>,
    /// Tags of the records in `batch`.
    tags: Vec<Tag>,
    /// Items of the records in `batch` when some is a run (else each is one).
    weights: Vec<u32>,
    count: u32,
    /// Messages sent and not fully acked (`records`, `acked` so far, bytes).
    sent: VecDeque<Sent>,
    unacked: usize,
    unacked_bytes: usize,
    broken: bool,
}

#[derive(Debug)]
struct Sent {
    /// A batch message, or (when `big`) one bare record sent as chunks.
    data: Vec<u8>,
    /// The tag of each record, in order.
    tags: Vec<Tag>,
    /// The items of each record, when some is a run (else each is one).
    weights: Vec<u32>,
    big: bool,
    records: u32,
    acked: u32,
    /// Items of the first record not acked that its receiver finished (a partial ack, see
    /// [`LinkReceiver::send_partial`]): if it dies, only the rest is sent again.
    partial: u32,
}

impl Sent {
    fn weight(&self, i: u32) -> u32 {
        self.weights.get(i as usize).copied().unwrap_or(1)
    }
}

/// Whether [`LinkSender::reserve`] found room.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Commit {
    /// A link was chosen: call [`LinkSender::push`].
    Ready,
    /// Every link is at its credit: flush, wait ([`LinkSender::wait_credit`]), retry.
    NeedCredit,
}

impl<F: AsFd> LinkSender<F> {
    pub(crate) fn new(fds: Vec<F>, credit_items: usize) -> Self {
        let links = fds
            .into_iter()
            .map(|fd| OutLink {
                fd,
                batch: Vec::with_capacity(MAX_MSG),
                tags: Vec::new(),
                weights: Vec::new(),
                count: 0,
                sent: VecDeque::new(),
                unacked: 0,
                unacked_bytes: 0,
                broken: false,
            })
            .collect();
        LinkSender {
            links,
            credit_items: credit_items.max(1),
            credit_bytes: 1 << 20,
            rr: 0,
            chosen: None,
            commits: 0,
            pool: Vec::new(),
            ackbuf: Vec::with_capacity(MAX_MSG),
            epoch: 0,
            requeue: VecDeque::new(),
            acked_tags: VecDeque::new(),
            split: HashMap::new(),
        }
    }

    /// A sender that replaces a dead worker of epoch `epoch - 1`: says `HELLO` downstream.
    pub(crate) fn replacement(fds: Vec<F>, credit_items: usize, epoch: u32) -> io::Result<Self> {
        let mut s = Self::new(fds, credit_items);
        s.epoch = epoch;
        let mut msg = [0u8; 5];
        msg[0] = MSG_HELLO;
        msg[1..5].copy_from_slice(&epoch.to_le_bytes());
        for l in &mut s.links {
            // A link its predecessor had already closed (it was killed after finishing) is
            // marked broken; the others carry on.
            let _ = Self::send_all(l, &msg);
        }
        Ok(s)
    }

    /// Records waiting to be sent again.
    pub(crate) fn has_requeued(&self) -> bool {
        !self.requeue.is_empty()
    }

    fn has_credit(&self, l: &OutLink<F>) -> bool {
        !l.broken
            && (l.unacked == 0
                || (l.unacked < self.credit_items
                    && l.unacked_bytes + l.batch.len() < self.credit_bytes))
    }

    fn pick(&self) -> Option<usize> {
        let n = self.links.len();
        if n == 1 {
            return self.has_credit(&self.links[0]).then_some(0);
        }
        let mut best: Option<usize> = None;
        for k in 0..n {
            let i = (self.rr + k) % n;
            let l = &self.links[i];
            if self.has_credit(l) && best.is_none_or(|b| l.unacked < self.links[b].unacked) {
                best = Some(i);
            }
        }
        best
    }

    /// Chooses the least-loaded link with credit for the next record.
    pub(crate) fn reserve(&mut self) -> io::Result<Commit> {
        if !self.requeue.is_empty() {
            self.pump()?;
        }
        self.commits += 1;
        if self.links.len() > 1 && self.commits.is_multiple_of(ACK_POLL_EVERY) {
            // Fresh load figures for choosing between workers (one syscall per link).
            self.read_acks()?;
        }
        let mut best = self.pick();
        if best.is_none() {
            self.read_acks()?;
            best = self.pick();
        }
        match best {
            Some(i) => {
                self.rr = (i + 1) % self.links.len();
                self.chosen = Some(i);
                Ok(Commit::Ready)
            }
            None if self.links.iter().all(|l| l.broken) => Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "every link to the stage is closed",
            )),
            None => Ok(Commit::NeedCredit),
        }
    }

    /// The number of links (the receiving stage's workers).
    pub(crate) fn width(&self) -> usize {
        self.links.len()
    }

    /// Items the next run may hold: what the link chosen by the last
    /// [`LinkSender::reserve`] has credit for, and at most an eighth of a link's credit, so
    /// that several runs are in flight along a chain of stages (at least 1).
    pub(crate) fn room(&self) -> usize {
        let i = self.chosen.expect("reserve() before room()");
        let left = self.credit_items.saturating_sub(self.links[i].unacked);
        left.min(self.credit_items / RUNS_IN_FLIGHT).max(1)
    }

    /// Sends requeued records while some link has credit; true when none is left.
    pub(crate) fn pump(&mut self) -> io::Result<bool> {
        while let Some((rec, tag)) = self.requeue.pop_front() {
            let Some(i) = self.pick().or_else(|| {
                let _ = self.read_acks();
                self.pick()
            }) else {
                self.requeue.push_front((rec, tag));
                return Ok(false);
            };
            self.chosen = Some(i);
            self.push(tag, |out| out.extend_from_slice(&rec))?;
        }
        Ok(true)
    }

    /// Appends one record, written by `write` (header and payload, see [`crate::transport::frame::begin_record`]),
    /// to the link chosen by the last [`LinkSender::reserve`]. `tag` comes back from
    /// [`LinkSender::take_acked`] once the receiver acked the record ([`NO_TAG`]: don't).
    pub(crate) fn push(&mut self, tag: Tag, write: impl FnOnce(&mut Vec<u8>)) -> io::Result<()> {
        let i = self.chosen.take().expect("reserve() before push()");
        let pool = &mut self.pool;
        let link = &mut self.links[i];
        if link.batch.is_empty() {
            link.batch.push(MSG_BATCH);
            link.batch.extend_from_slice(&0u32.to_le_bytes());
        }
        let mark = link.batch.len();
        write(&mut link.batch);
        let size = link.batch.len() - mark;
        let w = run::weight(&link.batch[mark..]);
        link.unacked += w as usize;
        if link.batch.len() <= MAX_MSG {
            Self::add_weight(link, w);
            link.count += 1;
            link.tags.push(tag);
            return Ok(());
        }
        // The record does not fit: send what came before it, then the record on its own.
        let rec = link.batch.split_off(mark);
        Self::flush_link(link, pool)?;
        if BATCH_HEADER + size <= MAX_MSG {
            link.batch.push(MSG_BATCH);
            link.batch.extend_from_slice(&0u32.to_le_bytes());
            link.batch.extend_from_slice(&rec);
            Self::add_weight(link, w);
            link.count = 1;
            link.tags.push(tag);
            Ok(())
        } else {
            Self::send_big(link, rec, tag)
        }
    }

    /// Notes the weight of the record being added to `link`'s batch (kept only once some
    /// record is a run).
    #[inline]
    fn add_weight(link: &mut OutLink<F>, w: u32) {
        if w != 1 || !link.weights.is_empty() {
            link.weights.resize(link.count as usize, 1);
            link.weights.push(w);
        }
    }

    fn send_big(link: &mut OutLink<F>, rec: Vec<u8>, tag: Tag) -> io::Result<()> {
        let mut msg = Vec::with_capacity(MAX_MSG);
        let mut off = 0;
        while off < rec.len() {
            msg.clear();
            if off == 0 {
                msg.push(MSG_BIG_FIRST);
                msg.extend_from_slice(&(rec.len() as u64).to_le_bytes());
            } else {
                msg.push(MSG_BIG_MORE);
            }
            let take = (MAX_MSG - msg.len()).min(rec.len() - off);
            msg.extend_from_slice(&rec[off..off + take]);
            off += take;
            Self::send_all(link, &msg)?;
        }
        link.unacked_bytes += rec.len();
        link.sent.push_back(Sent {
            weights: vec![run::weight(&rec)],
            data: rec,
            tags: vec![tag],
            big: true,
            records: 1,
            acked: 0,
            partial: 0,
        });
        Ok(())
    }

    fn send_all(link: &mut OutLink<F>, msg: &[u8]) -> io::Result<()> {
        match sys::send(link.fd.as_fd(), msg, false) {
            Ok(_) => Ok(()),
            Err(e) => {
                link.broken = true;
                Err(e)
            }
        }
    }

    fn flush_link(link: &mut OutLink<F>, pool: &mut Vec<Vec<u8>>) -> io::Result<()> {
        if link.count == 0 {
            link.batch.clear();
            link.tags.clear();
            link.weights.clear();
            return Ok(());
        }
        let c = link.count.to_le_bytes();
        link.batch[1..5].copy_from_slice(&c);
        let batch = if link.batch.len() <= MAX_MSG / 8 {
            // A small message is kept (until acked) in a buffer of its own size, and the big
            // one is reused: many small messages in flight (one per `submit`) would
            // otherwise hold 64 KiB each.
            let small = link.batch.clone();
            link.batch.clear();
            small
        } else {
            let mut next = pool.pop().unwrap_or_else(|| Vec::with_capacity(MAX_MSG));
            next.clear();
            std::mem::replace(&mut link.batch, next)
        };
        let r = Self::send_all(link, &batch);
        link.unacked_bytes += batch.len();
        let tags = std::mem::take(&mut link.tags);
        let weights = std::mem::take(&mut link.weights);
        link.sent.push_back(Sent {
            data: batch,
            tags,
            weights,
            big: false,
            records: link.count,
            acked: 0,
            partial: 0,
        });
        link.count = 0;
        r
    }

    /// Sends every partly filled batch.
    pub(crate) fn flush(&mut self) -> io::Result<()> {
        let mut res = Ok(());
        for l in &mut self.links {
            if let Err(e) = Self::flush_link(l, &mut self.pool) {
                res = Err(e);
            }
        }
        res
    }

    /// Reads every ack that has arrived, without blocking.
    pub(crate) fn read_acks(&mut self) -> io::Result<()> {
        for l in &mut self.links {
            if l.broken {
                continue;
            }
            loop {
                self.ackbuf.clear();
                self.ackbuf.reserve(MAX_MSG);
                match sys::recv(l.fd.as_fd(), &mut self.ackbuf, true) {
                    Ok(None) => break,
                    Ok(Some(0)) | Err(_) => {
                        l.broken = true;
                        break;
                    }
                    Ok(Some(_)) => match self.ackbuf.first() {
                        Some(&MSG_ACK) if self.ackbuf.len() == 13 => {
                            let n =
                                u64::from_le_bytes(self.ackbuf[1..9].try_into().expect("8 bytes"));
                            let ep =
                                u32::from_le_bytes(self.ackbuf[9..13].try_into().expect("4 bytes"));
                            if ep == self.epoch {
                                let done = (&mut self.acked_tags, &mut self.split);
                                Self::apply_ack(l, n, &mut self.pool, done);
                            }
                        }
                        Some(&MSG_PARTIAL) if self.ackbuf.len() == 9 => {
                            let ep =
                                u32::from_le_bytes(self.ackbuf[1..5].try_into().expect("4 bytes"));
                            let m =
                                u32::from_le_bytes(self.ackbuf[5..9].try_into().expect("4 bytes"));
                            if ep == self.epoch
                                && let Some(front) = l.sent.front_mut()
                            {
                                front.partial = m;
                            }
                        }
                        Some(&MSG_DEAD) if self.ackbuf.len() >= 5 => {
                            let ep =
                                u32::from_le_bytes(self.ackbuf[1..5].try_into().expect("4 bytes"));
                            let failure = self.ackbuf[5..].to_vec();
                            Self::on_dead(l, ep, &failure, &mut self.requeue, &mut self.split)?;
                        }
                        _ => {}
                    },
                }
            }
        }
        Ok(())
    }

    /// The receiver of `l` died: fail its running record, requeue the others it held, and
    /// tell its replacement where the fresh records start.
    fn on_dead(
        l: &mut OutLink<F>,
        dead_epoch: u32,
        failure: &[u8],
        requeue: &mut VecDeque<(Vec<u8>, Tag)>,
        split: &mut HashMap<Tag, u32>,
    ) -> io::Result<()> {
        let failed_seq = (failure.len() >= REC_HEADER)
            .then(|| u64::from_le_bytes(failure[..8].try_into().expect("8 bytes")));
        for sent in l.sent.drain(..) {
            let mut recs: Vec<&[u8]> = Vec::new();
            if sent.big {
                recs.push(&sent.data);
            } else {
                let mut p = &sent.data[BATCH_HEADER.min(sent.data.len())..];
                while p.len() >= REC_HEADER {
                    let len = u32::from_le_bytes(p[9..13].try_into().expect("4 bytes")) as usize;
                    let end = (REC_HEADER + len).min(p.len());
                    recs.push(&p[..end]);
                    p = &p[end..];
                }
            }
            for (i, rec) in recs.into_iter().enumerate().skip(sent.acked as usize) {
                let tag = sent.tags.get(i).copied().unwrap_or(NO_TAG);
                let done = if i == sent.acked as usize {
                    sent.partial
                } else {
                    0
                };
                let pieces = requeue_record(rec, done, failed_seq, failure, |r| {
                    requeue.push_back((r, tag));
                });
                if pieces > 1 && tag != NO_TAG {
                    *split.entry(tag).or_insert(0) += pieces - 1;
                }
            }
        }
        // What is left unacked: the batch not sent yet.
        l.unacked = match l.weights.is_empty() {
            true => l.count as usize,
            false => l.weights.iter().map(|&w| w as usize).sum(),
        };
        l.unacked_bytes = 0;
        let mut msg = [0u8; 5];
        msg[0] = MSG_RESYNC;
        msg[1..5].copy_from_slice(&dead_epoch.wrapping_add(1).to_le_bytes());
        // The unflushed batch goes after the RESYNC: send it first, then the batch.
        match sys::send(l.fd.as_fd(), &msg, false) {
            Ok(_) => Ok(()),
            Err(e) => {
                l.broken = true;
                Err(e)
            }
        }
    }

    /// The tags of records acked since the last call.
    pub(crate) fn take_acked(&mut self) -> std::collections::vec_deque::Drain<'_, Tag> {
        self.acked_tags.drain(..)
    }

    fn apply_ack(
        l: &mut OutLink<F>,
        mut n: u64,
        pool: &mut Vec<Vec<u8>>,
        (acked, split): (&mut VecDeque<Tag>, &mut HashMap<Tag, u32>),
    ) -> u64 {
        let mut applied = 0;
        while n > 0 {
            let Some(front) = l.sent.front_mut() else {
                break;
            };
            let take = (front.records - front.acked).min(n.min(u32::MAX as u64) as u32);
            for i in front.acked..front.acked + take {
                match front.tags.get(i as usize) {
                    Some(&t) if t != NO_TAG && !Self::one_of_pieces(split, t) => acked.push_back(t),
                    _ => {}
                }
                l.unacked = l.unacked.saturating_sub(front.weight(i) as usize);
            }
            front.acked += take;
            front.partial = 0;
            n -= take as u64;
            applied += take as u64;
            if front.acked == front.records {
                let done = l.sent.pop_front().expect("front");
                l.unacked_bytes -= done.data.len();
                if done.data.capacity() == MAX_MSG && pool.len() < 8 {
                    pool.push(done.data);
                }
            }
        }
        applied
    }

    /// Holds tag `t` back: its record is done only after a matching [`LinkSender::unhold`]
    /// as well as the ack of every record pushed with it (a run answered in pieces).
    pub(crate) fn hold(&mut self, t: Tag) {
        *self.split.entry(t).or_insert(0) += 1;
    }

    /// Ends one [`LinkSender::hold`] of `t`.
    pub(crate) fn unhold(&mut self, t: Tag) {
        if !Self::one_of_pieces(&mut self.split, t) {
            self.acked_tags.push_back(t);
        }
    }

    /// True if `t` is the tag of a record that was split into pieces (see `on_dead`) and
    /// other pieces are not acked yet: the record is done only with its last piece.
    fn one_of_pieces(split: &mut HashMap<Tag, u32>, t: Tag) -> bool {
        if split.is_empty() {
            return false;
        }
        match split.get_mut(&t) {
            Some(n) => {
                *n -= 1;
                if *n == 0 {
                    split.remove(&t);
                }
                true
            }
            None => false,
        }
    }

    /// Blocks until some link has credit again (or every link is broken).
    pub(crate) fn wait_credit(&mut self, extra: &mut Vec<libc::pollfd>) -> io::Result<()> {
        loop {
            self.read_acks()?;
            if (self.links.iter().any(|l| self.has_credit(l)) && self.pump()?)
                || self.links.iter().all(|l| l.broken)
            {
                return Ok(());
            }
            // Requeued records `pump` put in batches count against the credit: they must be
            // on their way before waiting for acks, or no ack would ever come (a death that
            // requeued more records than the links' credit deadlocked here). A link that
            // fails is marked broken and the others go on.
            let _ = self.flush();
            let base = extra.len();
            for l in &self.links {
                extra.push(libc::pollfd {
                    fd: l.fd.as_fd().as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                });
            }
            let r = sys::poll(extra, None);
            extra.truncate(base);
            r?;
        }
    }

    /// End of input: sends everything, waits until every record was acked (requeueing
    /// those of a receiver that died meanwhile), then half-closes every link so the
    /// receivers read end of stream. Waiting first matters: a half-closed link could not
    /// carry a requeued record any more.
    pub(crate) fn finish(&mut self) -> io::Result<()> {
        loop {
            self.flush()?;
            self.read_acks()?;
            if self.requeue.is_empty() && self.links.iter().all(|l| l.broken || l.unacked == 0) {
                break;
            }
            if !self.requeue.is_empty() && self.pump()? {
                continue;
            }
            // What `pump` put in batches must be on its way before waiting for acks (as in
            // `wait_credit`): a run requeued in pieces can leave every link at its credit.
            self.flush()?;
            let mut waiting: Vec<libc::pollfd> = self
                .links
                .iter()
                .filter(|l| !l.broken)
                .map(|l| libc::pollfd {
                    fd: l.fd.as_fd().as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                })
                .collect();
            if waiting.is_empty() {
                break;
            }
            sys::poll(&mut waiting, None)?;
        }
        for l in &self.links {
            sys::shutdown_write(l.fd.as_fd());
        }
        Ok(())
    }

    /// Records sent and not acked yet, over all links.
    pub(crate) fn unacked(&self) -> usize {
        self.links
            .iter()
            .filter(|l| !l.broken)
            .map(|l| l.unacked)
            .sum()
    }

    /// Blocks until an ack or notice arrives (or a link breaks), then handles it.
    pub(crate) fn wait_progress(&mut self, extra: &mut Vec<libc::pollfd>) -> io::Result<()> {
        if self.has_requeued() {
            return self.wait_credit(extra);
        }
        extra.clear();
        self.watch(extra);
        if extra.is_empty() {
            return Ok(());
        }
        sys::poll(extra, None)?;
        extra.clear();
        self.read_acks()
    }

    /// Descriptors to watch (readable) for acks and death notices while idle.
    pub(crate) fn watch(&self, out: &mut Vec<libc::pollfd>) {
        for l in self.links.iter().filter(|l| !l.broken) {
            out.push(libc::pollfd {
                fd: l.fd.as_fd().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
        }
    }
}

/// Requeues (by `put`) what is left to do of record `rec` (header and payload) whose
/// receiver died: the record, or — for the record that was running (`failed_seq`) — its
/// failure. A run loses its first `done` items (its receiver finished them) and, if the
/// item that was running is in it, is split around that item's failure. Returns the
/// number of records put.
fn requeue_record(
    rec: &[u8],
    done: u32,
    failed_seq: Option<u64>,
    failure: &[u8],
    mut put: impl FnMut(Vec<u8>),
) -> u32 {
    let seq = u64::from_le_bytes(rec[..8].try_into().expect("8 bytes"));
    if rec[8] != TAG_RUN {
        put(if Some(seq) == failed_seq {
            failure.to_vec()
        } else {
            rec.to_vec()
        });
        return 1;
    }
    let count = run::weight(rec);
    let at = failed_seq
        .and_then(|f| f.checked_sub(seq))
        .filter(|&i| i < u64::from(count) && i >= u64::from(done))
        .map(|i| i as u32);
    let mut pieces = 0;
    let mut piece = |r: Option<Vec<u8>>| {
        if let Some(r) = r {
            put(r);
            pieces += 1;
        }
    };
    match at {
        None => piece(run::slice(rec, done, count)),
        Some(i) => {
            piece(run::slice(rec, done, i));
            piece(Some(failure.to_vec()));
            piece(run::slice(rec, i + 1, count));
        }
    }
    pieces
}

/// The receiving side: the links from every sender of the previous stage.
#[derive(Debug)]
pub(crate) struct LinkReceiver<F> {
    links: Vec<InLink<F>>,
    queue: VecDeque<Msg>,
    pool: Vec<Vec<u8>>,
    /// When the current `fill` read (ns): the arrival time of what it reads.
    now: u64,
}

#[derive(Debug)]
struct InLink<F> {
    fd: F,
    eof: bool,
    pending_acks: u64,
    big: Option<(usize, Vec<u8>)>,
    /// The epoch of the sender currently writing this link (from its `HELLO`).
    epoch: u32,
    /// A replacement discards what it reads here until `RESYNC` of at least this epoch.
    skip_until: Option<u32>,
    /// Records received on this link in this epoch (the next record's index).
    received: u64,
    /// Records counted done, in order: acks only ever cover a prefix of the link's records,
    /// whatever order they finish in (they finish when the next stage acks them).
    acked_upto: u64,
    /// Records done beyond `acked_upto`.
    done_ahead: std::collections::BTreeSet<u64>,
    /// The sender wrote a corrupt frame: everything it sends is discarded until the `HELLO`
    /// of its replacement.
    void: bool,
}

#[derive(Debug)]
struct Msg {
    link: usize,
    /// Index (within its link and epoch) of the message's first record.
    first: u64,
    /// Records the message held when it arrived.
    total: u32,
    /// The link's sender epoch when the message arrived (acks go only to that sender).
    epoch: u32,
    data: Vec<u8>,
    pos: usize,
    left: u32,
    /// When it was read (`CLOCK_MONOTONIC` ns).
    arrived: u64,
}

/// Why a link's stream could not be read: the link (its index in the receiver, which is
/// the sending worker's slot in mesh order) and what was wrong. The receiver reports it to
/// the supervisor as it is (see `process::protocol`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct Corrupt {
    pub link: usize,
    /// The epoch of the link's sender that wrote it (from its `HELLO`; 0 for the first).
    pub epoch: u32,
    pub what: String,
}

impl Corrupt {
    fn on(link: usize, what: impl Into<String>) -> Corrupt {
        Corrupt {
            link,
            epoch: 0,
            what: what.into(),
        }
    }
}

impl<F: AsFd> LinkReceiver<F> {
    pub(crate) fn new(fds: Vec<F>) -> Self {
        LinkReceiver {
            links: fds
                .into_iter()
                .map(|fd| InLink {
                    fd,
                    eof: false,
                    pending_acks: 0,
                    big: None,
                    epoch: 0,
                    skip_until: None,
                    received: 0,
                    acked_upto: 0,
                    done_ahead: std::collections::BTreeSet::new(),
                    void: false,
                })
                .collect(),
            queue: VecDeque::new(),
            pool: Vec::new(),
            now: 0,
        }
    }

    /// The receiver of a replacement worker of epoch `epoch`: it skips each link's old
    /// records until that link's `RESYNC`.
    /// `sender_epochs` are the current epochs of the senders of its links (one of them may
    /// have been replaced too, and the `HELLO` it sent was read by the worker this one
    /// replaces): acks must carry them, or those senders would ignore them.
    pub(crate) fn replacement(fds: Vec<F>, epoch: u32, sender_epochs: &[u32]) -> Self {
        let mut r = Self::new(fds);
        for (i, l) in r.links.iter_mut().enumerate() {
            l.skip_until = Some(epoch);
            l.epoch = sender_epochs.get(i).copied().unwrap_or(0);
        }
        r
    }

    /// Keeps a few message buffers for reuse (never the large ones of chunked records).
    fn recycle(&mut self, buf: Vec<u8>) {
        if self.pool.len() < 16 && buf.capacity() <= 2 * MAX_MSG {
            self.pool.push(buf);
        }
    }

    /// Discards `link`'s stream until its sender's replacement says `HELLO`: its sender
    /// wrote a corrupt frame, so nothing more it sent (queued here or still coming) can be
    /// trusted. Call only when no record taken from [`LinkReceiver::next`] is outstanding.
    /// The discarded records are never acked: the stage before the sender still holds their
    /// items and runs them again once the sender is replaced.
    pub(crate) fn void(&mut self, link: usize) {
        let l = &mut self.links[link];
        l.void = true;
        l.big = None;
        let mut kept = VecDeque::with_capacity(self.queue.len());
        for m in self.queue.drain(..) {
            if m.link == link {
                if self.pool.len() < 16 && m.data.capacity() <= 2 * MAX_MSG {
                    self.pool.push(m.data);
                }
            } else {
                kept.push_back(m);
            }
        }
        self.queue = kept;
    }

    /// True when every link reached end of stream and every record was taken.
    pub(crate) fn finished(&self) -> bool {
        self.queue.is_empty() && self.links.iter().all(|l| l.eof)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Reads every message available now; with `block`, first waits until at least one
    /// arrives or every link ended. `extra` descriptors are polled too (their revents are
    /// left for the caller); returns whether any `extra` became ready.
    pub(crate) fn fill(
        &mut self,
        block: bool,
        extra: &mut Vec<libc::pollfd>,
    ) -> Result<bool, Corrupt> {
        loop {
            let got = self.read_available().map_err(|mut c| {
                c.epoch = self.links[c.link].epoch;
                c
            })?;
            if got || !block || self.links.iter().all(|l| l.eof) {
                return Ok(false);
            }
            let base = extra.len();
            for l in self.links.iter().filter(|l| !l.eof) {
                let mut events = libc::POLLIN;
                if l.pending_acks > 0 {
                    events |= libc::POLLOUT;
                }
                extra.push(libc::pollfd {
                    fd: l.fd.as_fd().as_raw_fd(),
                    events,
                    revents: 0,
                });
            }
            let r = sys::poll(extra, None);
            let extra_ready = extra[..base].iter().any(|p| p.revents != 0);
            extra.truncate(base);
            if r.is_err() {
                return Ok(false);
            }
            self.send_acks();
            if extra_ready {
                return Ok(true);
            }
        }
    }

    fn read_available(&mut self) -> Result<bool, Corrupt> {
        self.now = sys::precise_ns();
        let mut got = false;
        for i in 0..self.links.len() {
            while !self.links[i].eof {
                let mut buf = self.pool.pop().unwrap_or_default();
                buf.reserve(MAX_MSG);
                match sys::recv(self.links[i].fd.as_fd(), &mut buf, true) {
                    Ok(None) => {
                        self.recycle(buf);
                        break;
                    }
                    Ok(Some(0)) | Err(_) => {
                        self.links[i].eof = true;
                        self.recycle(buf);
                    }
                    Ok(Some(n)) => {
                        if n > MAX_MSG {
                            return Err(Corrupt::on(
                                i,
                                format!("message of {n} bytes exceeds the limit of {MAX_MSG}"),
                            ));
                        }
                        // A small message is queued in a buffer of its own size and the
                        // big one reused: many small messages waiting (one per `submit`)
                        // would otherwise hold 64 KiB each.
                        let buf = if n <= MAX_MSG / 8 {
                            let small = buf[..n].to_vec();
                            self.recycle(buf);
                            small
                        } else {
                            buf
                        };
                        if self.accept(i, buf)? {
                            got = true;
                        }
                    }
                }
            }
        }
        Ok(got)
    }

    fn accept(&mut self, link: usize, buf: Vec<u8>) -> Result<bool, Corrupt> {
        let kind = buf.first().copied();
        match kind {
            Some(MSG_HELLO) if buf.len() == 5 => {
                // A replacement took over this link's sending side: what the dead sender
                // left half-sent is void, and acks from now on are for the new sender.
                let l = &mut self.links[link];
                l.epoch = u32::from_le_bytes(buf[1..5].try_into().expect("4 bytes"));
                l.big = None;
                l.pending_acks = 0;
                l.received = 0;
                l.acked_upto = 0;
                l.done_ahead.clear();
                l.void = false;
                self.recycle(buf);
                return Ok(false);
            }
            Some(MSG_RESYNC) if buf.len() == 5 => {
                let ep = u32::from_le_bytes(buf[1..5].try_into().expect("4 bytes"));
                let l = &mut self.links[link];
                if l.skip_until.is_some_and(|e| ep >= e) {
                    l.skip_until = None;
                }
                self.recycle(buf);
                return Ok(false);
            }
            _ => {}
        }
        if self.links[link].skip_until.is_some() || self.links[link].void {
            // Sent to the worker this one replaces (the sender requeues it), or by a sender
            // that wrote a corrupt frame (it is being replaced; its items are run again).
            self.recycle(buf);
            return Ok(false);
        }
        let epoch = self.links[link].epoch;
        match kind {
            Some(MSG_BATCH) if buf.len() >= BATCH_HEADER => {
                self.links[link].big = None;
                let left = u32::from_le_bytes(buf[1..5].try_into().expect("4 bytes"));
                let first = self.links[link].received;
                self.links[link].received += u64::from(left);
                self.queue.push_back(Msg {
                    link,
                    first,
                    total: left,
                    epoch,
                    data: buf,
                    pos: BATCH_HEADER,
                    left,
                    arrived: self.now,
                });
                Ok(true)
            }
            Some(MSG_BIG_FIRST) if buf.len() >= BIG_HEADER => {
                let total = u64::from_le_bytes(buf[1..9].try_into().expect("8 bytes")) as usize;
                if total > FRAME_LIMIT + REC_HEADER {
                    return Err(Corrupt::on(
                        link,
                        format!("length {total} exceeds the limit {FRAME_LIMIT}"),
                    ));
                }
                let mut data = Vec::with_capacity(BATCH_HEADER + total);
                data.push(MSG_BATCH);
                data.extend_from_slice(&1u32.to_le_bytes());
                data.extend_from_slice(&buf[BIG_HEADER..]);
                self.recycle(buf);
                self.links[link].big = Some((total, data));
                self.complete_big(link)
            }
            Some(MSG_BIG_MORE) => {
                let Some((_, data)) = self.links[link].big.as_mut() else {
                    return Err(Corrupt::on(link, "chunk without a start"));
                };
                data.extend_from_slice(&buf[1..]);
                self.recycle(buf);
                self.complete_big(link)
            }
            _ => Err(Corrupt::on(link, format!("unknown message kind {kind:?}"))),
        }
    }

    fn complete_big(&mut self, link: usize) -> Result<bool, Corrupt> {
        let (total, data) = self.links[link].big.as_ref().expect("big in progress");
        let have = data.len() - BATCH_HEADER;
        if have > *total {
            return Err(Corrupt::on(link, "chunks longer than announced"));
        }
        if have == *total {
            let (_, data) = self.links[link].big.take().expect("big in progress");
            let epoch = self.links[link].epoch;
            let first = self.links[link].received;
            self.links[link].received += 1;
            self.queue.push_back(Msg {
                link,
                first,
                total: 1,
                epoch,
                data,
                pos: BATCH_HEADER,
                left: 1,
                arrived: self.now,
            });
            return Ok(true);
        }
        Ok(false)
    }

    /// The next record, if one was received. Call [`LinkReceiver::done`] when finished with it.
    pub(crate) fn next(&mut self) -> Result<Option<RecRef>, Corrupt> {
        loop {
            let Some(m) = self.queue.front_mut() else {
                return Ok(None);
            };
            if m.left == 0 {
                let m = self.queue.pop_front().expect("front");
                self.recycle(m.data);
                continue;
            }
            let d = &m.data;
            if d.len() < m.pos + REC_HEADER {
                let mut c = Corrupt::on(m.link, "truncated record header");
                c.epoch = m.epoch;
                return Err(c);
            }
            let seq = u64::from_le_bytes(d[m.pos..m.pos + 8].try_into().expect("8 bytes"));
            let tag = d[m.pos + 8];
            let len =
                u32::from_le_bytes(d[m.pos + 9..m.pos + 13].try_into().expect("4 bytes")) as usize;
            let start = m.pos + REC_HEADER;
            let end = start + len;
            if end > d.len() {
                let mut c = Corrupt::on(m.link, format!("record length {len} exceeds its message"));
                c.epoch = m.epoch;
                return Err(c);
            }
            if tag == TAG_RUN
                && let Err(what) = run::check(&d[start..end])
            {
                let mut c = Corrupt::on(m.link, what);
                c.epoch = m.epoch;
                return Err(c);
            }
            m.pos = end;
            let index = m.first + u64::from(m.total - m.left);
            let first = m.left == m.total;
            m.left -= 1;
            return Ok(Some(RecRef {
                link: m.link,
                epoch: m.epoch,
                index,
                small: m.total < SMALL_MSG,
                first,
                seq,
                tag,
                start,
                end,
            }));
        }
    }

    /// The records of the message the last record came from, and when it arrived (ns): for
    /// the time they waited (see [`crate::meter`]).
    pub(crate) fn arrival(&self) -> (u64, u64) {
        self.queue
            .front()
            .map_or((0, 0), |m| (u64::from(m.total), m.arrived))
    }

    /// The payload of a record returned by [`LinkReceiver::next`] (valid until `done`).
    pub(crate) fn payload(&self, r: &RecRef) -> &[u8] {
        &self.queue.front().expect("record's message").data[r.start..r.end]
    }

    /// The whole record (header and payload), to pass it on unchanged.
    pub(crate) fn raw(&self, r: &RecRef) -> &[u8] {
        &self.queue.front().expect("record's message").data[r.start - REC_HEADER..r.end]
    }

    /// Marks a record finished: it is acked at the next [`LinkReceiver::send_acks`]. Only
    /// call `send_acks` once the record's outputs were flushed downstream.
    pub(crate) fn done(&mut self, r: RecRef) {
        self.credit(r.link, r.epoch, r.index);
        self.release(r);
    }

    /// Counts record `index` of `link` (received in `epoch`) as finished. Acks cover only
    /// the finished prefix of the link's records: the sender drops records from the front
    /// of what it holds, so a record that finished early waits for those before it.
    pub(crate) fn credit(&mut self, link: usize, epoch: u32, index: u64) {
        let l = &mut self.links[link];
        if l.epoch != epoch || index < l.acked_upto {
            return;
        }
        if index > l.acked_upto {
            l.done_ahead.insert(index);
            return;
        }
        l.acked_upto += 1;
        l.pending_acks += 1;
        while l.done_ahead.remove(&l.acked_upto) {
            l.acked_upto += 1;
            l.pending_acks += 1;
        }
    }

    /// A record's tag (link, epoch, index), to [`LinkReceiver::credit_tag`] it later.
    pub(crate) fn origin(r: &RecRef) -> Tag {
        ((r.link as u128) << 96) | (u128::from(r.epoch) << 64) | u128::from(r.index)
    }

    /// [`LinkReceiver::credit`] by a tag made by [`LinkReceiver::origin`].
    pub(crate) fn credit_tag(&mut self, tag: Tag) {
        self.credit((tag >> 96) as usize, (tag >> 64) as u32, tag as u64);
    }

    /// Lets go of a record's bytes without counting it finished (see `credit`).
    pub(crate) fn release(&mut self, r: RecRef) {
        let _ = r;
        if self.queue.front().is_some_and(|m| m.left == 0) {
            let m = self.queue.pop_front().expect("front");
            self.recycle(m.data);
        }
    }

    /// Tells the sender of run `r` (its link's first record not acked: call after
    /// [`LinkReceiver::send_acks`]) that its first `m` items are done and the rest will not
    /// be: this worker is being replaced, and only the rest is to be sent again.
    pub(crate) fn send_partial(&mut self, r: &RecRef, m: u32) {
        let l = &self.links[r.link];
        if l.epoch != r.epoch || l.acked_upto != r.index {
            return;
        }
        let mut msg = [0u8; 9];
        msg[0] = MSG_PARTIAL;
        msg[1..5].copy_from_slice(&l.epoch.to_le_bytes());
        msg[5..9].copy_from_slice(&m.to_le_bytes());
        let _ = sys::send(l.fd.as_fd(), &msg, false);
    }

    /// Sends the pending acks that can go without blocking; the rest stay pending.
    pub(crate) fn send_acks(&mut self) {
        for l in &mut self.links {
            if l.pending_acks == 0 {
                continue;
            }
            let mut msg = [0u8; 13];
            msg[0] = MSG_ACK;
            msg[1..9].copy_from_slice(&l.pending_acks.to_le_bytes());
            msg[9..13].copy_from_slice(&l.epoch.to_le_bytes());
            match sys::send(l.fd.as_fd(), &msg, true) {
                Ok(Some(_)) | Err(_) => l.pending_acks = 0,
                Ok(None) => {}
            }
        }
    }

    /// True if acks could not be sent yet.
    pub(crate) fn acks_pending(&self) -> bool {
        self.links.iter().any(|l| l.pending_acks > 0)
    }

    /// Waits (bounded) until every pending ack has been sent or its link has gone.
    pub(crate) fn drain_acks(&mut self) {
        for _ in 0..1000 {
            self.send_acks();
            if !self.acks_pending() {
                return;
            }
            let mut p: Vec<libc::pollfd> = self
                .links
                .iter()
                .filter(|l| l.pending_acks > 0)
                .map(|l| libc::pollfd {
                    fd: l.fd.as_fd().as_raw_fd(),
                    events: libc::POLLOUT,
                    revents: 0,
                })
                .collect();
            let _ = sys::poll(&mut p, Some(std::time::Duration::from_millis(100)));
        }
    }
}

/// A deliberately corrupt message, for fault-injection tests ([`crate::process::worker::inject_corrupt_frame`]):
/// 0: a chunked record claiming `u64::MAX` bytes; 1: claiming 2^40 bytes; 2: one byte over
/// the frame limit; 3: a record longer than its message; 4: an unknown message kind;
/// 5: a chunk without its start; 6: a well-formed record for an item never issued; 7–9: a
/// hostile run (see `hostile_run`).
pub(crate) fn corrupt_message(kind: u8) -> Vec<u8> {
    let big = |total: u64| {
        let mut m = vec![MSG_BIG_FIRST];
        m.extend_from_slice(&total.to_le_bytes());
        m.extend_from_slice(&[0u8; 64]);
        m
    };
    match kind {
        0 => big(u64::MAX),
        1 => big(1 << 40),
        2 => big((FRAME_LIMIT + REC_HEADER + 1) as u64),
        3 => {
            let mut m = vec![MSG_BATCH];
            m.extend_from_slice(&1u32.to_le_bytes());
            m.extend_from_slice(&0u64.to_le_bytes());
            m.push(TAG_ONE);
            m.extend_from_slice(&(1u32 << 30).to_le_bytes());
            m.extend_from_slice(&[0u8; 16]);
            m
        }
        4 => vec![0x77, 1, 2, 3],
        6 => {
            // Well formed, for an item that was never issued.
            let mut m = vec![MSG_BATCH];
            m.extend_from_slice(&1u32.to_le_bytes());
            m.extend_from_slice(&(1u64 << 40).to_le_bytes());
            m.push(TAG_ONE);
            m.extend_from_slice(&2u32.to_le_bytes());
            m.extend_from_slice(&[5, 5]);
            m
        }
        7..=9 => hostile_run(kind),
        _ => vec![MSG_BIG_MORE, 1, 2, 3],
    }
}

/// A message of one hostile run (see `corrupt_message`): 7: it claims `u32::MAX` items in
/// six bytes; 8: its entry's length runs past its end; 9: its entry is of an unknown kind.
fn hostile_run(kind: u8) -> Vec<u8> {
    let payload: Vec<u8> = match kind {
        7 => [&u32::MAX.to_le_bytes()[..], &[TAG_ONE, 0]].concat(),
        8 => [&1u32.to_le_bytes()[..], &[TAG_ONE, 0x7f, 1, 2]].concat(),
        _ => [&1u32.to_le_bytes()[..], &[0x66, 1, 5]].concat(),
    };
    let mut m = vec![MSG_BATCH];
    m.extend_from_slice(&1u32.to_le_bytes());
    m.extend_from_slice(&10u64.to_le_bytes());
    m.push(TAG_RUN);
    m.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    m.extend_from_slice(&payload);
    m
}

/// The death notice the supervisor writes on a dead worker's end of an input link.
pub(crate) fn dead_notice(epoch: u32, failure: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(5 + failure.len());
    m.push(MSG_DEAD);
    m.extend_from_slice(&epoch.to_le_bytes());
    m.extend_from_slice(failure);
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::frame::{begin_record, end_record};
    use std::os::fd::OwnedFd;

    fn pair() -> (OwnedFd, OwnedFd) {
        sys::seqpacket_pair().expect("socketpair")
    }

    /// Sends raw messages to a receiver and reads them all.
    fn receive(msgs: &[Vec<u8>]) -> Result<Vec<(u64, u8, Vec<u8>)>, Corrupt> {
        let (a, b) = pair();
        for m in msgs {
            sys::send(a.as_fd(), m, false).expect("send");
        }
        drop(a);
        let mut rx = LinkReceiver::new(vec![b]);
        let mut out = Vec::new();
        let mut extra = Vec::new();
        while !rx.finished() {
            rx.fill(true, &mut extra)?;
            while let Some(r) = rx.next()? {
                out.push((r.seq, r.tag, rx.payload(&r).to_vec()));
                rx.done(r);
            }
        }
        Ok(out)
    }

    fn batch(records: &[(u64, u8, &[u8])]) -> Vec<u8> {
        let mut m = vec![MSG_BATCH];
        m.extend_from_slice(&(records.len() as u32).to_le_bytes());
        for (seq, tag, payload) in records {
            let at = begin_record(&mut m, *seq, *tag);
            m.extend_from_slice(payload);
            end_record(&mut m, at).expect("small");
        }
        m
    }

    fn record(seq: u64) -> Vec<u8> {
        let mut out = Vec::new();
        let at = begin_record(&mut out, seq, TAG_ONE);
        out.extend_from_slice(&seq.to_le_bytes());
        end_record(&mut out, at).expect("small");
        out
    }

    /// Records `pump` moved from the requeue into batches count against the credit: a
    /// sender whose links are full of them must send them before it waits for acks (it
    /// used to wait forever, a deadlock seen after many worker deaths).
    #[test]
    fn waiting_for_credit_sends_what_fills_the_links() {
        let (a0, b0) = pair();
        let (a1, b1) = pair();
        let mut tx = LinkSender::new(vec![a0, a1], 2);
        for seq in 0..4 {
            assert!(matches!(tx.reserve().expect("reserve"), Commit::Ready));
            let rec = record(seq);
            tx.push(NO_TAG, |out| out.extend_from_slice(&rec))
                .expect("push");
        }
        // Both links hold two unsent records (their whole credit); one more waits.
        tx.requeue.push_back((record(4), NO_TAG));
        let waiter = std::thread::spawn(move || {
            tx.wait_credit(&mut Vec::new()).expect("wait");
            tx
        });
        let mut rx = LinkReceiver::new(vec![b0, b1]);
        let mut got = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while got.len() < 4 && std::time::Instant::now() < deadline {
            rx.fill(false, &mut Vec::new()).expect("valid");
            while let Some(r) = rx.next().expect("valid") {
                got.push(r.seq);
                rx.done(r);
            }
            rx.send_acks();
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        got.sort_unstable();
        assert_eq!(got, [0, 1, 2, 3], "the records in the batches were sent");
        let tx = waiter.join().expect("wait_credit returned once acked");
        assert!(tx.requeue.is_empty(), "the requeued record went out too");
    }

    #[test]
    fn records_round_trip_in_order() {
        let got = receive(&[
            batch(&[(3, TAG_ONE, b"ab"), (4, TAG_ONE, b"")]),
            batch(&[(5, TAG_DROPPED, b"xyzw")]),
        ])
        .expect("valid stream");
        assert_eq!(
            got,
            [
                (3, TAG_ONE, b"ab".to_vec()),
                (4, TAG_ONE, vec![]),
                (5, TAG_DROPPED, b"xyzw".to_vec())
            ]
        );
    }

    #[test]
    fn hostile_chunked_length_is_refused_before_allocating() {
        let mut m = vec![MSG_BIG_FIRST];
        m.extend_from_slice(&(1u64 << 40).to_le_bytes());
        m.extend_from_slice(&[0; 16]);
        let e = receive(&[m]).expect_err("2^40 bytes announced");
        assert!(e.what.contains("exceeds the limit"), "{}", e.what);
        let mut m = vec![MSG_BIG_FIRST];
        m.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(receive(&[m]).is_err());
    }

    #[test]
    fn record_longer_than_its_message_is_refused() {
        let mut m = batch(&[(1, TAG_ONE, b"abc")]);
        let len_at = BATCH_HEADER + 9;
        m[len_at..len_at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        let e = receive(&[m]).expect_err("length beyond the message");
        assert!(e.what.contains("exceeds its message"), "{}", e.what);
    }

    #[test]
    fn record_count_beyond_the_message_is_refused() {
        let mut m = batch(&[(1, TAG_ONE, b"abc")]);
        m[1..5].copy_from_slice(&1000u32.to_le_bytes());
        assert!(receive(&[m]).is_err());
    }

    #[test]
    fn unknown_message_kind_is_refused() {
        assert!(receive(&[vec![0xEE, 1, 2, 3]]).is_err());
    }

    #[test]
    fn chunked_record_is_reassembled() {
        let payload: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let mut rec = Vec::new();
        let at = begin_record(&mut rec, 9, TAG_ONE);
        rec.extend_from_slice(&payload);
        end_record(&mut rec, at).expect("fits the frame limit");
        let (a, b) = pair();
        let mut tx = LinkSender::new(vec![a], 16);
        assert_eq!(tx.reserve().expect("credit"), Commit::Ready);
        tx.push(NO_TAG, |out| out.extend_from_slice(&rec))
            .expect("send");
        drop(tx);
        let mut rx = LinkReceiver::new(vec![b]);
        let mut extra = Vec::new();
        rx.fill(true, &mut extra).expect("valid");
        let r = rx.next().expect("valid").expect("one record");
        assert_eq!((r.seq, r.tag), (9, TAG_ONE));
        assert_eq!(rx.payload(&r), &payload[..]);
    }

    /// D11: arbitrary bytes never panic the decoder and never allocate past the limits.
    #[test]
    fn arbitrary_messages_never_panic() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..2000 {
            let n = (next() % 64) as usize;
            let mut m: Vec<u8> = (0..n).map(|_| next() as u8).collect();
            if let Some(k) = m.first_mut() {
                *k = [MSG_BATCH, MSG_BIG_FIRST, MSG_BIG_MORE, MSG_ACK, 0x77][(next() % 5) as usize];
            }
            let _ = receive(&[m]);
        }
    }
}
