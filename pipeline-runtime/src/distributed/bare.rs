//! The bare mechanism W6 compares against (benches only, not an API): a plain async-nats
//! loop with the same batching as a distributed stage — publish batches of records to a
//! work-queue stream (with `Nats-Msg-Id`, acks awaited, as many in flight as the caller
//! keeps), pull them from a durable consumer and ack them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull, stream};
use futures_util::StreamExt;

use super::nats::{connect, publish_acked};
use super::wire::{self, BatchWriter};
use crate::transport::codec;

/// Moves `items` `u64`s in batches of `batch` through the broker at `url`; the time taken.
#[doc(hidden)]
pub fn bare_nats_loop(url: &str, items: u64, batch: usize) -> Result<Duration, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(run(url, items, batch))
}

async fn run(url: &str, items: u64, batch: usize) -> Result<Duration, String> {
    let client = connect(url, "forkpipe bare loop", false).await?;
    let js = jetstream::new(client.clone());
    let name = format!("BARE_{}", std::process::id());
    let config = stream::Config {
        name: name.clone(),
        subjects: vec![format!("bare.{}", std::process::id())],
        retention: stream::RetentionPolicy::WorkQueue,
        storage: stream::StorageType::Memory,
        ..Default::default()
    };
    let s = js.create_stream(config).await.map_err(|e| e.to_string())?;
    let c: jetstream::consumer::PullConsumer = s
        .create_consumer(pull::Config {
            durable_name: Some("bare".into()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            max_ack_pending: 64,
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    let mut msgs = c
        .stream()
        .max_messages_per_batch(64)
        .messages()
        .await
        .map_err(|e| e.to_string())?;
    let t = Instant::now();
    let subject = format!("bare.{}", std::process::id());
    let publisher = tokio::spawn(publish_all(js.clone(), subject, items, batch));
    let mut got = 0u64;
    while got < items {
        let m = msgs
            .next()
            .await
            .ok_or("no more messages")?
            .map_err(|e| e.to_string())?;
        for r in wire::index(&m.payload)? {
            if r.tag == wire::TAG_ONE {
                let _: u64 = codec::decode(r.one(&m.payload))?;
            }
            got += 1;
        }
        let _ = m.ack().await;
    }
    let took = t.elapsed();
    publisher.await.map_err(|e| e.to_string())??;
    let _ = js.delete_stream(&name).await;
    Ok(took)
}

async fn publish_all(
    js: jetstream::Context,
    subject: String,
    items: u64,
    batch: usize,
) -> Result<(), String> {
    let permits = Arc::new(tokio::sync::Semaphore::new(32));
    let mut seq = 0u64;
    let mut n = 0u64;
    while seq < items {
        let mut w = BatchWriter::new();
        while seq < items && (w.count() as usize) < batch {
            w.push_one(seq, |b| codec::encode_into(&seq, b))?;
            seq += 1;
        }
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            async_nats::header::NATS_MESSAGE_ID,
            format!("bare:{n}").as_str(),
        );
        n += 1;
        let permit = Arc::clone(&permits)
            .acquire_owned()
            .await
            .map_err(|e| e.to_string())?;
        let (js, subject, payload) = (js.clone(), subject.clone(), w.finish());
        tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            let _ = publish_acked(&js, subject, headers, payload.into(), deadline).await;
            drop(permit);
        });
    }
    let _ = permits.acquire_many(32).await;
    Ok(())
}
