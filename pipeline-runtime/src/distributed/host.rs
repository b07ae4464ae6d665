//! Host mode: a process of the user's binary, started with `FORKPIPE_HOST=nats://…`
//! (or `--forkpipe-host nats://…`), that serves the distributed stages of every run
//! announced on the broker, and never returns to `main`.
//!
//! # The approach
//! `init()` starts the fork server as usual, then hands over to [`serve_forever`]: a tokio
//! runtime on the main thread (started after the fork server was forked, so no fork ever
//! copies it). Callers announce their runs on `forkpipe.runs`; for each new run the host
//! looks each stage up in the registry ([`super::registry`]) by its recipe id, compares
//! fingerprints, and either refuses the stage (a `Refuse` the caller turns into its items'
//! errors) or serves it: a local pipeline of that one stage in worker processes
//! ([`super::served`]), fed from the stage's durable pull consumer, shared by every host
//! of the run (JetStream gives each message to one of them).
//!
//! Per message: the host *claims* its records (a control message to the caller, before
//! running anything), submits them, publishes the outputs to the next stage's subject (or
//! the results) with a `Nats-Msg-Id` made of the run, the next stage and the batch id,
//! then acks the message and says *done*. A beat every 100 ms lists the stages it serves.
//! So the caller always knows which items a host is running: if the host goes silent,
//! exactly those fail, naming it, and the messages it had not claimed are redelivered by
//! the broker to other hosts after `ack_wait`.
//!
//! # Lifetime
//! A run ends on the host when its caller stops announcing it (the caller dropped the
//! pipeline, died, or lost the broker) or its stream is deleted: the host kills that
//! run's local pipelines, which reaps their workers. A host ends only when killed; its
//! workers then exit on their own (end of stream on their sockets, as for any pipeline).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::PullConsumer};
use async_nats::{Client, HeaderMap};
use futures_util::StreamExt;
use tokio::sync::{mpsc, watch};

use super::nats::{connect, publish_acked};
use super::registry::{self, Entry};
use super::served::{HostId, Pending, Serve};
use super::wire::{
    self, Abandon, Announce, BatchWriter, Ctl, ID_HEADER, RECORD_OVERHEAD, RUNS, StageSpec, WBody,
    WRec,
};
use crate::error::Error;

/// A run no longer announced for this long is over.
const RUN_TIMEOUT: Duration = Duration::from_secs(3);

/// Serves stages from the broker at `url` until killed (see the module docs).
pub(crate) fn serve_forever(url: &str) -> ! {
    let me = HostId::of_this_process();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let result = match rt {
        Ok(rt) => rt.block_on(serve(url, me.clone())),
        Err(e) => Err(format!("cannot start a tokio runtime: {e}")),
    };
    let why = result.err().unwrap_or_default();
    eprintln!("forkpipe host '{}' (pid {}): {why}", me.name, me.pid);
    std::process::exit(1)
}

/// A run this host knows of.
struct Run {
    seen: Instant,
    refusals: Vec<Ctl>,
    stop: watch::Sender<bool>,
}

async fn serve(url: &str, me: HostId) -> Result<(), String> {
    let client = connect(url, &format!("forkpipe host {}", me.name), true).await?;
    let js = jetstream::new(client.clone());
    let mut runs = client.subscribe(RUNS).await.map_err(|e| e.to_string())?;
    client.flush().await.map_err(|e| e.to_string())?;
    println!(
        "forkpipe host '{}' (pid {}) serving on {url}",
        me.name, me.pid
    );
    let mut live: HashMap<String, Run> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            m = runs.next() => {
                let m = m.ok_or("the broker connection closed")?;
                if let Some(a) = wire::decode::<Announce>(&m.payload) {
                    on_announce(&client, &js, &me, &mut live, a).await;
                }
            }
            _ = tick.tick() => live.retain(|_, r| {
                let keep = r.seen.elapsed() < RUN_TIMEOUT;
                if !keep {
                    let _ = r.stop.send(true);
                }
                keep
            }),
        }
    }
}

/// A run announced: refresh it, or start serving what this host can of it.
async fn on_announce(
    client: &Client,
    js: &jetstream::Context,
    me: &HostId,
    live: &mut HashMap<String, Run>,
    a: Announce,
) {
    let ctl = format!("{}.ctl", a.run);
    if let Some(r) = live.get_mut(&a.run) {
        r.seen = Instant::now();
        for c in &r.refusals {
            let _ = client.publish(ctl.clone(), wire::encode(c).into()).await;
        }
        return;
    }
    let (stop, stopped) = watch::channel(false);
    let serving = Arc::new(Mutex::new(Vec::new()));
    let abandoned = Arc::new(Mutex::new(HashSet::new()));
    let mut refusals = Vec::new();
    for spec in &a.stages {
        match check(spec, me) {
            Ok(entry) => {
                let ctx = StageCtx {
                    client: client.clone(),
                    js: js.clone(),
                    me: me.clone(),
                    run: a.run.clone(),
                    stages: a.stages.len(),
                    spec: spec.clone(),
                    entry,
                    serving: Arc::clone(&serving),
                    abandoned: Arc::clone(&abandoned),
                    stop: stopped.clone(),
                };
                tokio::spawn(serve_stage(ctx));
            }
            Err(why) => refusals.push(Ctl::Refuse {
                host: me.name.clone(),
                pid: me.pid,
                pos: spec.pos,
                why,
            }),
        }
    }
    for c in &refusals {
        let _ = client.publish(ctl.clone(), wire::encode(c).into()).await;
    }
    tokio::spawn(beat(
        client.clone(),
        ctl,
        me.clone(),
        serving,
        stopped.clone(),
    ));
    tokio::spawn(listen_abandon(
        client.clone(),
        a.run.clone(),
        abandoned,
        stopped,
    ));
    let run = Run {
        seen: Instant::now(),
        refusals,
        stop,
    };
    live.insert(a.run, run);
}

/// This binary's entry for `spec`, if its fingerprint matches the caller's.
fn check(spec: &StageSpec, me: &HostId) -> Result<&'static Entry, String> {
    let Some(entry) = registry::lookup(&spec.id) else {
        return Err(format!(
            "host '{}' has no distributed stage `{}`: is it running the same program?",
            me.name, spec.id
        ));
    };
    let mut mine = entry.fingerprint();
    // (A test hook: a host that pretends to run another build.)
    if let Ok(salt) = std::env::var("__FORKPIPE_TEST_FINGERPRINT_SALT") {
        mine.push_str(&salt);
    }
    if mine != spec.fingerprint {
        return Err(format!(
            "host '{}' refused it: its stage is `{mine}` but the caller's is `{}`",
            me.name, spec.fingerprint
        ));
    }
    Ok(entry)
}

async fn beat(
    client: Client,
    ctl: String,
    me: HostId,
    serving: Arc<Mutex<Vec<u32>>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(wire::HEARTBEAT);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let stages = serving.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let b = Ctl::Beat {
            host: me.name.clone(),
            pid: me.pid,
            stages,
        };
        let _ = client.publish(ctl.clone(), wire::encode(&b).into()).await;
    }
}

async fn listen_abandon(
    client: Client,
    run: String,
    abandoned: Arc<Mutex<HashSet<String>>>,
    mut stop: watch::Receiver<bool>,
) {
    let Ok(mut sub) = client.subscribe(format!("{run}.abandon")).await else {
        return;
    };
    loop {
        tokio::select! {
            m = sub.next() => match m.and_then(|m| wire::decode::<Abandon>(&m.payload)) {
                Some(a) => abandoned.lock().unwrap_or_else(|p| p.into_inner()).extend(a.keys),
                None => continue,
            },
            _ = stop.changed() => return,
        }
    }
}

/// What serving one stage of one run needs.
struct StageCtx {
    client: Client,
    js: jetstream::Context,
    me: HostId,
    run: String,
    stages: usize,
    spec: StageSpec,
    entry: &'static Entry,
    serving: Arc<Mutex<Vec<u32>>>,
    abandoned: Arc<Mutex<HashSet<String>>>,
    stop: watch::Receiver<bool>,
}

/// A message on its way through this host.
struct Job {
    msg: jetstream::Message,
    key: String,
    id: String,
}

/// Serves one stage of one run until the run ends (see the module docs).
async fn serve_stage(mut ctx: StageCtx) {
    let ctl = format!("{}.ctl", ctx.run);
    let serve = match start_stage(&ctx).await {
        Ok(s) => s,
        Err(why) => {
            let r = Ctl::Refuse {
                host: ctx.me.name.clone(),
                pid: ctx.me.pid,
                pos: ctx.spec.pos,
                why,
            };
            let _ = ctx.client.publish(ctl, wire::encode(&r).into()).await;
            return;
        }
    };
    let consumer: Result<PullConsumer, _> = ctx
        .js
        .get_consumer_from_stream(format!("s{}", ctx.spec.pos), wire::stream_name(&ctx.run))
        .await;
    let messages = match consumer {
        Ok(c) => c.stream().max_messages_per_batch(2).messages().await,
        Err(_) => return serve.kill(),
    };
    let Ok(mut messages) = messages else {
        return serve.kill();
    };
    let (jobs, done) = spawn_workers(&ctx, Arc::clone(&serve));
    let pos = ctx.spec.pos;
    ctx.serving
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(pos);
    loop {
        let m = tokio::select! {
            m = messages.next() => m,
            _ = ctx.stop.changed() => break,
        };
        match m {
            Some(Ok(msg)) => {
                if !take(&ctx, msg, &jobs).await {
                    break;
                }
            }
            Some(Err(_)) if stream_exists(&ctx).await => continue,
            _ => break,
        }
    }
    ctx.serving
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .retain(|&p| p != pos);
    serve.kill();
    drop(jobs);
    let _ = done.await;
}

async fn stream_exists(ctx: &StageCtx) -> bool {
    tokio::time::sleep(Duration::from_millis(100)).await;
    ctx.js.get_stream(wire::stream_name(&ctx.run)).await.is_ok()
}

/// Makes the stage and starts its local pipeline (blocking work, off the runtime).
async fn start_stage(ctx: &StageCtx) -> Result<Arc<dyn Serve>, String> {
    let (entry, spec, me) = (ctx.entry, ctx.spec.clone(), ctx.me.clone());
    let made = tokio::task::spawn_blocking(move || {
        let made = (entry.make)(&spec.params)?;
        (entry.serve)(made, &spec, &me)
    })
    .await
    .map_err(|e| e.to_string())?;
    made.map(Arc::from)
}

/// Takes one message: drops an abandoned one, else queues it.
/// False once the stage's workers are gone.
async fn take(
    ctx: &StageCtx,
    msg: jetstream::Message,
    jobs: &mpsc::Sender<(Job, Vec<WRec>)>,
) -> bool {
    let id = msg
        .headers
        .as_ref()
        .and_then(|h| h.get(ID_HEADER))
        .map(|v| v.as_str().to_string())
        .unwrap_or_default();
    let key = format!("{}:{id}", ctx.spec.pos);
    let gone = ctx
        .abandoned
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .contains(&key);
    let recs = match wire::read_batch(&msg.payload) {
        Ok(recs) if !gone => recs,
        _ => {
            // (Its items have an outcome already, or it is not ours to read.)
            let _ = msg.ack().await;
            return true;
        }
    };
    jobs.send((Job { msg, key, id }, recs)).await.is_ok()
}

/// The submitting and finishing threads of a stage, and the task that forwards its
/// outputs; returns where jobs go, and what ends when they are all forwarded.
fn spawn_workers(
    ctx: &StageCtx,
    serve: Arc<dyn Serve>,
) -> (mpsc::Sender<(Job, Vec<WRec>)>, tokio::task::JoinHandle<()>) {
    let (jobs_tx, mut jobs_rx) = mpsc::channel::<(Job, Vec<WRec>)>(1);
    let (fin_tx, fin_rx) = crossbeam_channel::bounded::<(Job, Box<dyn Pending>)>(1);
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<(Job, Vec<Vec<u8>>)>();
    let (client, ctl, me) = (
        ctx.client.clone(),
        format!("{}.ctl", ctx.run),
        ctx.me.clone(),
    );
    let handle = tokio::runtime::Handle::current();
    let _ = std::thread::Builder::new()
        .name("forkpipe-host-submit".into())
        .spawn(move || {
            while let Some((job, recs)) = jobs_rx.blocking_recv() {
                // Claimed just before they are submitted: what the host runs from now on.
                let claim = Ctl::Claim {
                    host: me.name.clone(),
                    pid: me.pid,
                    key: job.key.clone(),
                    seqs: wire::seqs_of(&recs),
                };
                let published = client.publish(ctl.clone(), wire::encode(&claim).into());
                let _ = handle.block_on(published);
                if fin_tx.send((job, serve.submit(recs))).is_err() {
                    return;
                }
            }
        });
    let (limit, name, idx) = (
        ctx.client.server_info().max_payload,
        ctx.spec.name.clone(),
        ctx.spec.idx,
    );
    let _ = std::thread::Builder::new()
        .name("forkpipe-host-finish".into())
        .spawn(move || {
            for (job, pending) in fin_rx {
                let parts = split(pending.finish(), limit, &name, idx);
                if out_tx.send((job, parts)).is_err() {
                    return;
                }
            }
        });
    let fwd = Forward {
        js: ctx.js.clone(),
        client: ctx.client.clone(),
        me: ctx.me.clone(),
        run: ctx.run.clone(),
        next: wire::stage_subject(&ctx.run, ctx.spec.pos + 1, ctx.stages),
        next_pos: ctx.spec.pos + 1,
    };
    let done = tokio::spawn(async move {
        let fwd = Arc::new(fwd);
        let permits = Arc::new(tokio::sync::Semaphore::new(8));
        while let Some((job, parts)) = out_rx.recv().await {
            let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
                return;
            };
            let fwd = Arc::clone(&fwd);
            tokio::spawn(async move {
                fwd.forward(job, parts).await;
                drop(permit);
            });
        }
        let _ = permits.acquire_many(8).await;
    });
    (jobs_tx, done)
}

/// Where a stage's outputs go.
struct Forward {
    js: jetstream::Context,
    client: Client,
    me: HostId,
    run: String,
    next: String,
    next_pos: u32,
}

impl Forward {
    /// Publishes one message's outputs, then acks it and says it is done. If the broker
    /// does not take them, the message is left unacked: the broker redelivers it.
    async fn forward(&self, job: Job, parts: Vec<Vec<u8>>) {
        let n = parts.len();
        for (k, part) in parts.into_iter().enumerate() {
            let id = if n == 1 {
                job.id.clone()
            } else {
                format!("{}.{k}", job.id)
            };
            let mut headers = HeaderMap::new();
            headers.insert(
                async_nats::header::NATS_MESSAGE_ID,
                format!("{}:{}:{id}", self.run, self.next_pos).as_str(),
            );
            headers.insert(ID_HEADER, id.as_str());
            let deadline = Instant::now() + Duration::from_secs(10);
            if publish_acked(&self.js, self.next.clone(), headers, part.into(), deadline)
                .await
                .is_err()
            {
                return;
            }
        }
        let _ = job.msg.ack().await;
        let done = Ctl::Done {
            host: self.me.name.clone(),
            pid: self.me.pid,
            key: job.key,
        };
        let _ = self
            .client
            .publish(format!("{}.ctl", self.run), wire::encode(&done).into())
            .await;
    }
}

/// Bytes a message may hold besides its batch (headers and their framing).
pub(crate) const HEADROOM: usize = 1024;

/// One message's outputs as batches that fit the broker's `max_payload` (`limit`); an
/// output that cannot fit alone fails its item, with both sizes.
fn split(recs: Vec<WRec>, limit: usize, stage: &str, idx: u32) -> Vec<Vec<u8>> {
    let room = limit.saturating_sub(HEADROOM);
    let mut parts = Vec::new();
    let mut w = BatchWriter::new();
    for mut rec in recs {
        let size = record_size(&rec);
        if size + 4 > room {
            let message = format!(
                "its output is {size} bytes encoded, more than the broker's max_payload of {limit} bytes"
            );
            let e = Error::Broker {
                stage: stage.to_string(),
                item: rec.seq,
                message,
            };
            rec.body = WBody::Failed(idx, Box::new(e));
        }
        if w.count() > 0 && w.len() + record_size(&rec) > room {
            parts.push(std::mem::replace(&mut w, BatchWriter::new()).finish());
        }
        w.push(&rec);
    }
    if w.count() > 0 || parts.is_empty() {
        parts.push(w.finish());
    }
    parts
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
