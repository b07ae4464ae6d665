//! The broker task of a group of distributed stages in the caller: one tokio runtime on
//! a thread of its own (started after the supervisor was forked, like every thread of a
//! pipeline), which owns the run on the broker and its book-keeping.
//!
//! # What it does
//! At start it connects, creates the run's stream (`FP_<run>`: a work queue in memory,
//! bounded, with dedup by `Nats-Msg-Id`), one durable pull consumer per stage (`s0`, `s1`,
//! …: `ack_wait`, `max_deliver`, `max_ack_pending`, the stage's credit over all its hosts)
//! and one for the results (`out`); then the pipeline may start. While it runs, it:
//! - publishes the feed thread's batches to the first stage's subject (each with its
//!   `Nats-Msg-Id`, retried while the stream is full or the broker briefly away);
//! - reads the results, keeps the records whose items have no outcome yet (the
//!   collector's per-item dedup: a late or repeated result is dropped), and acks them;
//! - reads the hosts' control messages: beats (who is alive, serving what), claims (who
//!   runs which items now), dones, refusals;
//! - every 100 ms: fails the items a host claimed if it went silent for `host_timeout`
//!   (and tells the hosts to drop the broker's redelivery of them: a crashed item is not
//!   run again), fails the items of a stage no host served for `no_host_wait`, fails every
//!   item if the broker has been unreachable for `host_timeout`, and announces the run
//!   every 250 ms (how hosts find it).
//!
//! # Invariants
//! - Every item that enters has exactly one outcome: `unfinished` holds the items without
//!   one, and only removing an item from it lets a record out.
//! - It ends when the input ended and every item has its outcome, or when the pipeline
//!   stops; either way it deletes the stream, which ends the run on every host.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::seqset::SeqSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull, stream};
use async_nats::{Client, HeaderMap};
use crossbeam_channel::{Receiver, Sender, TryRecvError};
use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::broker::Broker;
use super::ends::{Back, ToBroker};
use super::nats::{connect, publish_acked};
use super::wire::{self, Abandon, Announce, Ctl, ID_HEADER, Spans, StageSpec, WBody, WRec};
use crate::error::{Error, Worker};

/// What the broker task is started with.
pub(crate) struct CallerCtx {
    pub broker: Broker,
    pub specs: Vec<StageSpec>,
    pub idx: u32,
    pub stop: Receiver<()>,
    pub inits: Sender<Result<(), Error>>,
    /// The broker's `max_payload`, for the feed thread, once connected.
    pub ready: Sender<usize>,
    pub from_feed: mpsc::Receiver<ToBroker>,
    pub back: Sender<Back>,
}

/// The body of the broker thread.
pub(crate) fn run(ctx: CallerCtx) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ctx
                .inits
                .send(Err(Error::Start(format!("cannot start tokio: {e}"))));
            return;
        }
    };
    rt.block_on(async move {
        match setup(&ctx).await {
            Ok(conn) => {
                let _ = ctx.ready.send(conn.client.server_info().max_payload);
                let _ = ctx.inits.send(Ok(()));
                let mut book = Book::new(ctx, conn);
                book.run().await;
                book.end().await;
            }
            Err(e) => {
                let _ = ctx.inits.send(Err(Error::Start(e)));
            }
        }
    });
}

/// The run on the broker.
struct Conn {
    client: Client,
    js: jetstream::Context,
    run: String,
    stream: String,
    out: pull::Stream,
    ctl: async_nats::Subscriber,
}

fn new_run_id() -> String {
    let mut b = [0u8; 8];
    let random = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b));
    if random.is_err() {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
        b = (t.map_or(0, |d| d.as_nanos() as u64) ^ u64::from(std::process::id())).to_le_bytes();
    }
    format!(
        "fp.{}",
        b.iter().map(|x| format!("{x:02x}")).collect::<String>()
    )
}

async fn setup(ctx: &CallerCtx) -> Result<Conn, String> {
    let url = &ctx.broker.url;
    let client = connect(url, "forkpipe caller", false).await?;
    let js = jetstream::new(client.clone());
    let run = new_run_id();
    let stream = wire::stream_name(&run);
    let config = stream::Config {
        name: stream.clone(),
        subjects: vec![format!("{run}.in.*"), format!("{run}.out")],
        retention: stream::RetentionPolicy::WorkQueue,
        storage: stream::StorageType::Memory,
        max_messages: ctx.broker.stream_messages,
        max_bytes: 1 << 30,
        discard: stream::DiscardPolicy::New,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    };
    js.create_stream(config).await.map_err(|e| {
        format!("cannot create the run's stream on the broker at {url} (is JetStream on? start nats-server with -js): {e}")
    })?;
    for s in &ctx.specs {
        let c = pull::Config {
            durable_name: Some(format!("s{}", s.pos)),
            filter_subject: wire::stage_subject(&run, s.pos, ctx.specs.len()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: ctx.broker.ack_wait,
            max_deliver: ctx.broker.max_deliver,
            max_ack_pending: ctx.broker.max_ack_pending,
            ..Default::default()
        };
        js.create_consumer_on_stream(c, stream.as_str())
            .await
            .map_err(|e| {
                format!(
                    "cannot create the consumer of stage '{}' on {url}: {e}",
                    s.name
                )
            })?;
    }
    let c = pull::Config {
        durable_name: Some("out".into()),
        filter_subject: wire::stage_subject(&run, ctx.specs.len() as u32, ctx.specs.len()),
        ack_policy: jetstream::consumer::AckPolicy::Explicit,
        max_ack_pending: 100_000,
        ..Default::default()
    };
    let out = js
        .create_consumer_on_stream(c, stream.as_str())
        .await
        .map_err(|e| format!("cannot create the results consumer on {url}: {e}"))?;
    let out: jetstream::consumer::PullConsumer = out;
    let out = out
        .stream()
        .max_messages_per_batch(64)
        .messages()
        .await
        .map_err(|e| format!("cannot read results from {url}: {e}"))?;
    let ctl = client
        .subscribe(format!("{run}.ctl"))
        .await
        .map_err(|e| e.to_string())?;
    client.flush().await.map_err(|e| e.to_string())?;
    Ok(Conn {
        client,
        js,
        run,
        stream,
        out,
        ctl,
    })
}

/// A host, as the caller knows it.
struct HostState {
    last: Instant,
    stages: Vec<u32>,
    /// Message key (`<pos>:<id>`) → the items of it the host started.
    claims: HashMap<String, Spans>,
}

/// The host `(h, pid)`, heard from `now`.
fn heard(
    hosts: &mut HashMap<(String, u32), HostState>,
    h: String,
    pid: u32,
    now: Instant,
) -> &mut HostState {
    let s = hosts.entry((h, pid)).or_insert_with(|| HostState {
        last: now,
        stages: Vec::new(),
        claims: HashMap::new(),
    });
    s.last = now;
    s
}

/// The broker task's state (see the module docs).
struct Book {
    ctx: CallerCtx,
    conn: Conn,
    unfinished: SeqSet,
    hosts: HashMap<(String, u32), HostState>,
    refusals: HashMap<u32, BTreeMap<String, String>>,
    last_served: Vec<Instant>,
    /// A stage no host serves: new items fail at once.
    unserved: Option<u32>,
    down_since: Option<Instant>,
    /// Why the broker is given up on.
    dead: Option<String>,
    ended: bool,
    next_batch: u64,
    last_announce: Option<Instant>,
    /// Batches the broker did not take, and why (from the publishing tasks).
    fails: (
        mpsc::UnboundedSender<Failed>,
        mpsc::UnboundedReceiver<Failed>,
    ),
    permits: Arc<tokio::sync::Semaphore>,
}

/// A batch the broker did not take: its items, and why.
type Failed = (Vec<u64>, String);

/// Messages published and not yet acknowledged by the broker, at most.
const PUBLISHING: usize = 32;

impl Book {
    fn new(ctx: CallerCtx, conn: Conn) -> Self {
        let n = ctx.specs.len();
        Book {
            ctx,
            conn,
            unfinished: SeqSet::default(),
            hosts: HashMap::new(),
            refusals: HashMap::new(),
            last_served: vec![Instant::now(); n],
            unserved: None,
            down_since: None,
            dead: None,
            ended: false,
            next_batch: 0,
            last_announce: None,
            fails: mpsc::unbounded_channel(),
            permits: Arc::new(tokio::sync::Semaphore::new(PUBLISHING)),
        }
    }

    async fn run(&mut self) {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            if self.ended && self.unfinished.is_empty() {
                return;
            }
            let can_take = !self.ended && self.permits.available_permits() > 0;
            tokio::select! {
                m = self.ctx.from_feed.recv(), if can_take => match m {
                    Some(ToBroker::Batch { seqs, payload }) => self.publish(seqs, payload),
                    None => self.ended = true,
                },
                m = self.conn.out.next() => match m {
                    Some(Ok(m)) => self.on_result(m).await,
                    _ => tokio::time::sleep(Duration::from_millis(10)).await,
                },
                m = self.conn.ctl.next() => {
                    if let Some(c) = m.and_then(|m| wire::decode::<Ctl>(&m.payload)) {
                        self.on_ctl(c);
                    }
                }
                f = self.fails.1.recv() => if let Some((seqs, why)) = f {
                    let stage = self.ctx.specs[0].name.clone();
                    self.fail(seqs, |item| Error::Broker { stage: stage.clone(), item, message: why.clone() });
                },
                _ = tick.tick() => {
                    if self.ctx.stop.try_recv() == Err(TryRecvError::Disconnected) {
                        return;
                    }
                    self.check().await;
                }
            }
        }
    }

    /// Deletes the run's stream (which ends it on every host); then the collect thread
    /// sees the end of its channel.
    async fn end(self) {
        let del = self.conn.js.delete_stream(&self.conn.stream);
        let _ = tokio::time::timeout(Duration::from_secs(2), del).await;
        let _ = tokio::time::timeout(Duration::from_secs(1), self.conn.client.flush()).await;
    }

    /// Records outcomes for the items of `seqs` that have none yet.
    fn fail(&mut self, seqs: impl IntoIterator<Item = u64>, err: impl Fn(u64) -> Error) {
        let idx = self.ctx.idx;
        let recs: Vec<WRec> = seqs
            .into_iter()
            .filter(|&s| self.unfinished.remove(s))
            .map(|seq| WRec {
                seq,
                body: WBody::Failed(idx, Box::new(err(seq))),
            })
            .collect();
        if !recs.is_empty() {
            let _ = self.ctx.back.send(Back::Recs(recs));
        }
    }

    /// Publishes one batch of the feed to the first stage (or fails it at once when no
    /// host serves a stage, or the broker is gone).
    fn publish(&mut self, seqs: Vec<u64>, payload: Vec<u8>) {
        if let Some(why) = self.refusal_now() {
            let (stage, seqs2) = (self.ctx.specs[0].name.clone(), seqs.clone());
            seqs.iter().for_each(|&s| {
                self.unfinished.insert(s);
            });
            let stage = self
                .unserved
                .map_or(stage, |p| self.ctx.specs[p as usize].name.clone());
            return self.fail(seqs2, |item| Error::Broker {
                stage: stage.clone(),
                item,
                message: why.clone(),
            });
        }
        for &s in &seqs {
            self.unfinished.insert(s);
        }
        let id = format!("b{}", self.next_batch);
        self.next_batch += 1;
        let mut headers = HeaderMap::new();
        let msg_id = format!("{}:0:{id}", self.conn.run);
        headers.insert(async_nats::header::NATS_MESSAGE_ID, msg_id.as_str());
        headers.insert(ID_HEADER, id.as_str());
        let subject = wire::stage_subject(&self.conn.run, 0, self.ctx.specs.len());
        let js = self.conn.js.clone();
        let fails = self.fails.0.clone();
        let deadline = Instant::now() + self.ctx.broker.host_timeout.max(Duration::from_secs(5));
        let Ok(permit) = Arc::clone(&self.permits).try_acquire_owned() else {
            unreachable!("a batch is taken only with a permit free")
        };
        tokio::spawn(async move {
            if let Err(e) = publish_acked(&js, subject, headers, payload.into(), deadline).await {
                let _ = fails.send((seqs, format!("the broker did not take it: {}", e.0)));
            }
            drop(permit);
        });
    }

    /// Why a new item must fail at once, if it must.
    fn refusal_now(&self) -> Option<String> {
        if let Some(d) = &self.dead {
            return Some(d.clone());
        }
        self.unserved.map(|p| self.no_host(p))
    }

    /// `no host serves stage 'x'`, with what hosts that refused it said.
    fn no_host(&self, pos: u32) -> String {
        let name = &self.ctx.specs[pos as usize].name;
        let mut m = format!("no host serves stage '{name}'");
        if let Some(r) = self.refusals.get(&pos) {
            let whys: Vec<&str> = r.values().map(String::as_str).collect();
            m.push_str(&format!(" ({})", whys.join("; ")));
        }
        m
    }

    /// Passes on the records of a result message whose items have no outcome yet (the
    /// collector's dedup), in place: the collect thread decodes them from the message.
    async fn on_result(&mut self, m: jetstream::Message) {
        match wire::index(&m.payload) {
            Ok(mut recs) => {
                recs.retain(|r| self.unfinished.remove(r.seq));
                if !recs.is_empty() {
                    let payload = m.payload.clone();
                    let _ = self.ctx.back.send(Back::Batch(payload, recs));
                }
            }
            Err(e) => tracing::warn!(error = %e, "forkpipe: a corrupt result message was dropped"),
        }
        let _ = m.ack().await;
    }

    fn on_ctl(&mut self, c: Ctl) {
        let now = Instant::now();
        match c {
            Ctl::Beat {
                host: h,
                pid,
                stages,
            } => {
                heard(&mut self.hosts, h, pid, now).stages = stages.clone();
                for p in stages {
                    if let Some(t) = self.last_served.get_mut(p as usize) {
                        *t = now;
                    }
                    if self.unserved == Some(p) {
                        self.unserved = None;
                    }
                }
            }
            Ctl::Claim {
                host: h,
                pid,
                units,
            } => {
                let claims = &mut heard(&mut self.hosts, h, pid, now).claims;
                for (key, seqs) in units {
                    claims.entry(key).or_default().extend(seqs);
                }
            }
            Ctl::Done { host: h, pid, key } => {
                heard(&mut self.hosts, h, pid, now).claims.remove(&key);
            }
            Ctl::Refuse {
                host: h, pos, why, ..
            } => {
                self.refusals.entry(pos).or_default().insert(h, why);
            }
        }
    }

    /// The periodic checks (see the module docs).
    async fn check(&mut self) {
        if !self.broker_ok() {
            return;
        }
        self.check_hosts().await;
        self.check_served();
        let due = self
            .last_announce
            .is_none_or(|t| t.elapsed() >= wire::ANNOUNCE_EVERY);
        if due {
            self.last_announce = Some(Instant::now());
            let a = Announce {
                run: self.conn.run.clone(),
                stages: self.ctx.specs.clone(),
                caller: format!("pid {}", std::process::id()),
            };
            let _ = self
                .conn
                .client
                .publish(wire::RUNS, wire::encode(&a).into())
                .await;
        }
    }

    /// False while the broker is unreachable; past `host_timeout`, fails every item.
    fn broker_ok(&mut self) -> bool {
        if self.dead.is_some() {
            return false;
        }
        let state = self.conn.client.connection_state();
        if state == async_nats::connection::State::Connected {
            if self.down_since.take().is_some() {
                // (Hosts could not beat meanwhile: give them a fresh start.)
                let now = Instant::now();
                self.hosts.values_mut().for_each(|h| h.last = now);
            }
            return true;
        }
        let since = *self.down_since.get_or_insert_with(Instant::now);
        if since.elapsed() >= self.ctx.broker.host_timeout {
            let why = format!(
                "the broker at {} is unreachable (lost for {:.1} s)",
                self.ctx.broker.url,
                since.elapsed().as_secs_f64()
            );
            let stage = self.ctx.specs[0].name.clone();
            let all: Vec<u64> = self.unfinished.iter().collect();
            self.fail(all, |item| Error::Broker {
                stage: stage.clone(),
                item,
                message: why.clone(),
            });
            self.dead = Some(why);
        }
        false
    }

    /// Fails what silent hosts held, and tells the hosts to drop those messages.
    async fn check_hosts(&mut self) {
        let timeout = self.ctx.broker.host_timeout;
        let silent: Vec<(String, u32)> = (self.hosts.iter())
            .filter(|(_, h)| h.last.elapsed() >= timeout)
            .map(|(k, _)| k.clone())
            .collect();
        let mut keys = Vec::new();
        for (name, pid) in silent {
            let Some(h) = self.hosts.remove(&(name.clone(), pid)) else {
                continue;
            };
            let cause = format!(
                "host '{name}' stopped answering (no heartbeat for {:.1} s) while it ran the item, which is not run again",
                h.last.elapsed().as_secs_f64()
            );
            tracing::warn!(host = %name, pid, "forkpipe: a host stopped answering");
            for (key, seqs) in h.claims {
                let stage = self.stage_of(&key);
                self.fail(wire::seqs(&seqs), |item| Error::Remote {
                    host: name.clone(),
                    pid,
                    error: Box::new(Error::Died {
                        stage: stage.clone(),
                        item,
                        worker: Worker::Process(pid),
                        cause: cause.clone(),
                    }),
                });
                keys.push((key, seqs));
            }
        }
        if !keys.is_empty() {
            let subject = format!("{}.abandon", self.conn.run);
            let _ = self
                .conn
                .client
                .publish(subject, wire::encode(&Abandon { keys }).into())
                .await;
        }
    }

    /// The name of the stage a message key (`<pos>:<id>`) is at.
    fn stage_of(&self, key: &str) -> String {
        let pos: usize = key
            .split(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        let spec = self.ctx.specs.get(pos).unwrap_or(&self.ctx.specs[0]);
        spec.name.clone()
    }

    /// Fails the items waiting for a stage that no host served for `no_host_wait`.
    fn check_served(&mut self) {
        let now = Instant::now();
        for pos in 0..self.ctx.specs.len() as u32 {
            let served = self.hosts.values().any(|h| h.stages.contains(&pos));
            if served {
                self.last_served[pos as usize] = now;
                continue;
            }
            if self.last_served[pos as usize].elapsed() < self.ctx.broker.no_host_wait {
                continue;
            }
            self.unserved = Some(pos);
            let held: HashSet<u64> = (self.hosts.values())
                .flat_map(|h| h.claims.values().flat_map(|s| wire::seqs(s)))
                .collect();
            let waiting: Vec<u64> = (self.unfinished.iter())
                .filter(|s| !held.contains(s))
                .collect();
            let (why, stage) = (self.no_host(pos), self.ctx.specs[pos as usize].name.clone());
            self.fail(waiting, |item| Error::Broker {
                stage: stage.clone(),
                item,
                message: why.clone(),
            });
        }
    }
}
