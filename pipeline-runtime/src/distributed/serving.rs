//! One stage of one run, served on a host: its broker side, on the host's tokio runtime.
//!
//! The stage's durable pull consumer is shared by every host serving it: JetStream gives
//! each message to one of them. The pull loop here takes messages while the host has
//! fewer than [`HOARD`] in hand that it has not yet handed over whole, and passes them to
//! the feed thread through the book ([`super::book`]; the typed threads are in
//! [`super::served`]). The feed thread claims items through [`claimer`]: a control
//! message, flushed, so the claim is on the broker before any of its items starts. A
//! finished message is forwarded: its outputs are published to the next stage's subject
//! (or the results) with a `Nats-Msg-Id` of the run, the next stage and the batch id, the
//! broker's acks awaited (up to [`PUBLISHING`] messages at a time), then the message is
//! acked and the host says *done*. A message whose outputs the broker would not take stays
//! unacked: the broker gives it again after `ack_wait`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::PullConsumer};
use async_nats::{Client, HeaderMap};
use futures_util::StreamExt;
use tokio::sync::{Semaphore, mpsc, watch};

use super::book::{Book, Finished, Job};
use super::nats::publish_acked;
use super::registry::Entry;
use super::served::{Claim, Feeding, HostId, Serve};
use super::wire::{self, Ctl, ID_HEADER, Spans, StageSpec};

/// Messages a host holds that it has not handed over whole yet, at most (besides those the
/// pull has fetched ahead, [`PULL_BATCH`]).
const HOARD: usize = 8;

/// Messages one pull fetches at a time.
const PULL_BATCH: usize = 8;

/// Messages whose outputs are being published at once, at most.
const PUBLISHING: usize = 32;

/// What serving one stage of one run needs.
pub(crate) struct StageCtx {
    pub client: Client,
    pub js: jetstream::Context,
    pub me: HostId,
    pub run: String,
    pub stages: usize,
    pub spec: StageSpec,
    pub entry: &'static Entry,
    pub serving: Arc<Mutex<Vec<u32>>>,
    /// Message key → the records a dead host had claimed (see [`wire::Abandon`]).
    pub abandoned: Arc<Mutex<HashMap<String, Spans>>>,
    pub stop: watch::Receiver<bool>,
}

/// Serves one stage of one run until the run ends (see the module docs).
pub(crate) async fn serve_stage(mut ctx: StageCtx) {
    let (fin_tx, fin_rx) = mpsc::unbounded_channel();
    let hoard = Arc::new(Semaphore::new(HOARD));
    let limit = ctx.client.server_info().max_payload;
    let book = Arc::new(Book::new(fin_tx, Arc::clone(&hoard), &ctx.spec, limit));
    let (jobs_tx, jobs_rx) = crossbeam_channel::unbounded();
    let feeding = Feeding {
        jobs: jobs_rx,
        book,
        claim: claimer(&ctx),
    };
    let serve = match start_stage(&ctx, feeding).await {
        Ok(s) => s,
        Err(why) => return refuse(&ctx, why).await,
    };
    let consumer: Result<PullConsumer, _> = ctx
        .js
        .get_consumer_from_stream(format!("s{}", ctx.spec.pos), wire::stream_name(&ctx.run))
        .await;
    let messages = match consumer {
        Ok(c) => {
            c.stream()
                .max_messages_per_batch(PULL_BATCH)
                .messages()
                .await
        }
        Err(_) => return serve.kill(),
    };
    let Ok(mut messages) = messages else {
        return serve.kill();
    };
    tokio::spawn(forward_all(Forward::new(&ctx), fin_rx));
    let pos = ctx.spec.pos;
    lock(&ctx.serving).push(pos);
    loop {
        let permit = tokio::select! {
            p = hoard.acquire() => p,
            _ = ctx.stop.changed() => break,
        };
        let Ok(permit) = permit else { break };
        permit.forget(); // (given back by the book once the message is handed over)
        let m = tokio::select! {
            m = messages.next() => m,
            _ = ctx.stop.changed() => break,
        };
        match m {
            Some(Ok(msg)) => {
                if jobs_tx.send(job(&ctx, msg)).is_err() {
                    break;
                }
            }
            Some(Err(_)) if stream_exists(&ctx).await => hoard.add_permits(1),
            _ => break,
        }
    }
    lock(&ctx.serving).retain(|&p| p != pos);
    serve.kill();
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

async fn refuse(ctx: &StageCtx, why: String) {
    let r = Ctl::Refuse {
        host: ctx.me.name.clone(),
        pid: ctx.me.pid,
        pos: ctx.spec.pos,
        why,
    };
    let ctl = format!("{}.ctl", ctx.run);
    let _ = ctx.client.publish(ctl, wire::encode(&r).into()).await;
}

async fn stream_exists(ctx: &StageCtx) -> bool {
    tokio::time::sleep(Duration::from_millis(100)).await;
    ctx.js.get_stream(wire::stream_name(&ctx.run)).await.is_ok()
}

/// Makes the stage and starts its local pipeline (blocking work, off the runtime).
async fn start_stage(ctx: &StageCtx, feeding: Feeding) -> Result<Arc<dyn Serve>, String> {
    let (entry, spec, me) = (ctx.entry, ctx.spec.clone(), ctx.me.clone());
    let made = tokio::task::spawn_blocking(move || {
        let made = (entry.make)(&spec.params)?;
        (entry.serve)(made, &spec, &me, feeding)
    })
    .await
    .map_err(|e| e.to_string())?;
    made.map(Arc::from)
}

/// A message taken from the broker, with the records of it a dead host had claimed.
fn job(ctx: &StageCtx, msg: jetstream::Message) -> Job {
    let id = msg
        .headers
        .as_ref()
        .and_then(|h| h.get(ID_HEADER))
        .map(|v| v.as_str().to_string())
        .unwrap_or_default();
    let key = format!("{}:{id}", ctx.spec.pos);
    let skip = lock(&ctx.abandoned).get(&key).cloned().unwrap_or_default();
    Job { msg, key, id, skip }
}

/// How the feed thread claims items: one control message for a round's units, flushed
/// (the feed thread waits for the broker's answer to the flush before it starts them).
fn claimer(ctx: &StageCtx) -> Claim {
    let (client, me) = (ctx.client.clone(), ctx.me.clone());
    let ctl = format!("{}.ctl", ctx.run);
    let handle = tokio::runtime::Handle::current();
    Box::new(move |units| {
        let claim = Ctl::Claim {
            host: me.name.clone(),
            pid: me.pid,
            units,
        };
        let sent = async {
            let publish = client.publish(ctl.clone(), wire::encode(&claim).into());
            publish.await.ok()?;
            let flush = tokio::time::timeout(Duration::from_secs(2), client.flush());
            flush.await.ok()?.ok()
        };
        if handle.block_on(sent).is_none() {
            // (The broker is away: the caller fails the run's items if it stays away.)
            tracing::warn!("forkpipe host: a claim did not reach the broker");
        }
    })
}

/// Forwards every finished message, [`PUBLISHING`] at a time.
async fn forward_all(fwd: Forward, mut finished: mpsc::UnboundedReceiver<Finished>) {
    let fwd = Arc::new(fwd);
    let permits = Arc::new(Semaphore::new(PUBLISHING));
    while let Some(fin) = finished.recv().await {
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
            return;
        };
        let fwd = Arc::clone(&fwd);
        tokio::spawn(async move {
            fwd.forward(fin).await;
            drop(permit);
        });
    }
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
    fn new(ctx: &StageCtx) -> Forward {
        Forward {
            js: ctx.js.clone(),
            client: ctx.client.clone(),
            me: ctx.me.clone(),
            run: ctx.run.clone(),
            next: wire::stage_subject(&ctx.run, ctx.spec.pos + 1, ctx.stages),
            next_pos: ctx.spec.pos + 1,
        }
    }

    /// Publishes one message's outputs, then acks it and says it is done. If the broker
    /// does not take them, the message is left unacked: the broker redelivers it.
    async fn forward(&self, fin: Finished) {
        let n = fin.parts.len();
        for (k, part) in fin.parts.into_iter().enumerate() {
            let id = if n == 1 {
                fin.id.clone()
            } else {
                format!("{}.{k}", fin.id)
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
        let _ = fin.job.msg.ack().await;
        let done = Ctl::Done {
            host: self.me.name.clone(),
            pid: self.me.pid,
            key: fin.job.key,
        };
        let _ = self
            .client
            .publish(format!("{}.ctl", self.run), wire::encode(&done).into())
            .await;
    }
}
