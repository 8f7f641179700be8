//! The worker's configuration.

use std::time::Duration;

use taskmill_protocol::AuthKey;

use crate::client::ClientOptions;
use crate::{RESULTS_QUEUE, TASKS_QUEUE};

/// Everything one worker needs but its handler.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// `host:port` of the master.
    pub master: String,
    pub key: AuthKey,
    /// Tasks leased and worked on at once (the original's `Pool(K)`).
    pub concurrency: u32,
    /// Requests for tasks kept in flight: with 2 or more, the next batch is already on its way
    /// while one is computed. Each may lease `concurrency` tasks.
    pub prefetch: u32,
    /// Exit once no task has arrived for this long (the original stops on its first `Empty`).
    pub idle_exit: Option<Duration>,
    /// Longest single wait for tasks, so idleness and shutdown are noticed promptly.
    pub poll: Duration,
    /// Lease asked for each task. While the handler works on a batch the runtime extends
    /// its leases every third of this, so a long task is never taken back from a live worker.
    pub lease: Duration,
    /// Delay before a failed attempt (an error, a panic, a timeout) is tried again, doubled
    /// for each attempt the task has had, up to `max_retry_delay`.
    pub retry_delay: Duration,
    pub max_retry_delay: Duration,
    /// Cap on the delay between reconnect attempts.
    pub max_backoff: Duration,
    /// How long to keep retrying when every connect attempt fails before the master has
    /// proved it holds the key (an impostor on the master's address, a wrong key, a bad
    /// version); `None` gives up at the first such failure. See
    /// [`crate::Reconnecting::persist_before_welcome`].
    pub handshake_patience: Option<Duration>,
    /// After a shutdown signal, how long the worker may still spend handing in the results
    /// it holds; what is left then is redone by other workers.
    pub drain_timeout: Duration,
    pub client: ClientOptions,
    pub tasks_queue: String,
    /// Where results go for tasks whose put named no reply queue.
    pub results_queue: String,
}

impl WorkerConfig {
    /// The default [`WorkerConfig::handshake_patience`]: long enough to outlast whoever
    /// holds the master's port during a restart, short enough that a wrong key ends the
    /// worker within the hour.
    pub const HANDSHAKE_PATIENCE: Duration = Duration::from_secs(3600);

    /// Defaults for everything but the address and key: the `tasks` and `results` queues (a
    /// task whose put named a reply queue has its outcome go there instead).
    pub fn new(master: impl Into<String>, key: AuthKey) -> Self {
        Self {
            master: master.into(),
            key,
            concurrency: 64,
            prefetch: 2,
            idle_exit: None,
            poll: Duration::from_secs(1),
            lease: Duration::from_secs(30),
            retry_delay: Duration::from_secs(1),
            max_retry_delay: Duration::from_secs(60),
            max_backoff: Duration::from_secs(5),
            handshake_patience: Some(Self::HANDSHAKE_PATIENCE),
            drain_timeout: Duration::from_secs(10),
            client: ClientOptions::default(),
            tasks_queue: TASKS_QUEUE.to_owned(),
            results_queue: RESULTS_QUEUE.to_owned(),
        }
    }
}
