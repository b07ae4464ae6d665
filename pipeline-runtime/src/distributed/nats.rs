//! The few things the caller and the hosts both ask of `async-nats`: connecting, and
//! publishing to the stream until the broker has it.

use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream;

/// Connects to `url`, naming the connection `who`.
pub(crate) async fn connect(
    url: &str,
    who: &str,
    retry: bool,
) -> Result<async_nats::Client, String> {
    let mut opts = async_nats::ConnectOptions::new()
        .name(who)
        .connection_timeout(Duration::from_secs(2))
        .ping_interval(Duration::from_secs(1));
    if retry {
        opts = opts.retry_on_initial_connect();
    }
    let connect = opts.connect(url);
    match tokio::time::timeout(Duration::from_secs(5), connect).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(format!("cannot connect to the broker at {url}: {e}")),
        Err(_) => Err(format!(
            "cannot connect to the broker at {url}: no answer within 5 s"
        )),
    }
}

/// Why a publish to the stream failed for good.
#[derive(Debug)]
pub(crate) struct NotPublished(pub String);

/// Publishes `payload` to `subject` with `headers` (which carry `Nats-Msg-Id`, so a retry
/// after a lost acknowledgement is dropped by the stream's dedup), retrying while the
/// stream is full (backpressure) or the broker is briefly away, until `deadline`.
pub(crate) async fn publish_acked(
    js: &jetstream::Context,
    subject: String,
    headers: HeaderMap,
    payload: bytes::Bytes,
    deadline: Instant,
) -> Result<(), NotPublished> {
    let mut pause = Duration::from_millis(1);
    loop {
        let why = match js
            .publish_with_headers(subject.clone(), headers.clone(), payload.clone())
            .await
        {
            Ok(ack) => match ack.await {
                Ok(_) => return Ok(()),
                Err(e) => e.to_string(),
            },
            Err(e) => e.to_string(),
        };
        if why.contains("no responders") && why.contains("stream") || why.contains("not found") {
            return Err(NotPublished(why));
        }
        if Instant::now() + pause > deadline {
            return Err(NotPublished(why));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}
