//! [`Broker`]: which broker a pipeline's distributed stages run through, and how.

use std::time::Duration;

use crate::error::Error;

/// A NATS JetStream broker for a pipeline's `distributed` stages: see
/// [`Pipeline::on`](crate::Pipeline::on).
///
/// ```no_run
/// use pipeline_runtime::{Broker, Pipeline, Stage};
/// # fn double() -> Stage<u64, u64> { Stage::map("double", |x: u64| 2 * x) }
/// let broker = Broker::nats("nats://10.0.0.5:4222")?.ack_wait(std::time::Duration::from_secs(10));
/// let out: Vec<u64> = Pipeline::new(double()).on(broker).run(0..10u64)?.collect::<Result<_, _>>()?;
/// # Ok::<(), pipeline_runtime::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Broker {
    pub(crate) url: String,
    pub(crate) ack_wait: Duration,
    pub(crate) host_timeout: Duration,
    pub(crate) no_host_wait: Duration,
    pub(crate) max_ack_pending: i64,
    pub(crate) batch: usize,
    pub(crate) max_deliver: i64,
    pub(crate) stream_messages: i64,
}

impl Broker {
    /// The NATS server at `url` (`nats://host:port`; several, comma-separated, for a
    /// cluster). Nothing is connected yet: starting the pipeline connects, and fails with
    /// [`Error::Start`] if the server cannot be reached.
    pub fn nats(url: impl AsRef<str>) -> Result<Broker, Error> {
        let url = url.as_ref().trim().to_string();
        let bad = url.is_empty()
            || url.split(',').any(|u| {
                let rest = u.trim().strip_prefix("nats://").unwrap_or(u.trim());
                rest.is_empty() || rest.contains('/') || rest.contains(' ')
            });
        if bad {
            return Err(Error::Start(format!(
                "`{url}` is not a NATS server address; write `nats://host:4222`"
            )));
        }
        Ok(Broker {
            url,
            ack_wait: Duration::from_secs(30),
            host_timeout: Duration::from_secs(5),
            no_host_wait: Duration::from_secs(10),
            max_ack_pending: 64,
            batch: 512,
            max_deliver: 5,
            stream_messages: 4096,
        })
    }

    /// How long a host may hold a message before the broker gives it to another host
    /// (JetStream's `ack_wait`; default 30 s). Keep it longer than
    /// [`host_timeout`](Broker::host_timeout), so that the items of a host that died are
    /// failed (and their message abandoned) before the broker would redeliver it.
    pub fn ack_wait(mut self, d: Duration) -> Self {
        self.ack_wait = d;
        self
    }

    /// How long a host may stay silent (no heartbeat) before it is taken for dead and the
    /// items it was running fail, naming it (default 5 s).
    pub fn host_timeout(mut self, d: Duration) -> Self {
        self.host_timeout = d;
        self
    }

    /// How long a stage may have no host before its items fail with `no host serves stage
    /// 'x'` (default 10 s).
    pub fn no_host_wait(mut self, d: Duration) -> Self {
        self.no_host_wait = d;
        self
    }

    /// Messages a stage's hosts may hold unacknowledged, all together (JetStream's
    /// `max_ack_pending`: the credit of the stage; default 64).
    pub fn max_ack_pending(mut self, n: u32) -> Self {
        self.max_ack_pending = i64::from(n.max(1));
        self
    }

    /// The most items in one broker message (default 512; a message also stays under the
    /// server's `max_payload`).
    pub fn batch(mut self, n: usize) -> Self {
        self.batch = n.max(1);
        self
    }
}
