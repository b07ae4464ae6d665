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
//! Per stage, the broker side is [`super::serving`] (pulling, claiming, forwarding), the
//! book of what the host holds is [`super::book`], and the local pipeline's typed feed and
//! collect threads are [`super::served`]. A host claims the items it is about to start
//! (a control message to the caller, flushed to the broker first), and says *done* once a
//! message's outputs are published and the message acked; a beat every 100 ms lists the
//! stages it serves. So the caller always knows which items a host has started: if the
//! host goes silent, exactly those fail, naming it, and the hosts are told to skip them
//! when the broker gives their messages again (after `ack_wait`, to another host, which
//! runs the rest).
//!
//! # Lifetime
//! A run ends on the host when its caller stops announcing it (the caller dropped the
//! pipeline, died, or lost the broker) or its stream is deleted: the host kills that
//! run's local pipelines, which reaps their workers. A host ends only when killed; its
//! workers then exit on their own (end of stream on their sockets, as for any pipeline).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::Client;
use async_nats::jetstream;
use futures_util::StreamExt;
use tokio::sync::watch;

use super::nats::connect;
use super::registry::{self, Entry};
use super::served::HostId;
use super::serving::{StageCtx, serve_stage};
use super::wire::{self, Abandon, Announce, Ctl, RUNS, Spans, StageSpec};

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
    let abandoned = Arc::new(Mutex::new(HashMap::new()));
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
    abandoned: Arc<Mutex<HashMap<String, Spans>>>,
    mut stop: watch::Receiver<bool>,
) {
    let Ok(mut sub) = client.subscribe(format!("{run}.abandon")).await else {
        return;
    };
    loop {
        tokio::select! {
            m = sub.next() => match m.and_then(|m| wire::decode::<Abandon>(&m.payload)) {
                Some(a) => {
                    let mut g = abandoned.lock().unwrap_or_else(|p| p.into_inner());
                    for (key, seqs) in a.keys {
                        g.entry(key).or_default().extend(seqs);
                    }
                }
                None => continue,
            },
            _ = stop.changed() => return,
        }
    }
}
