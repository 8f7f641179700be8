//! [`WorkerBuilder`]: a worker for a typed [`Job`] (an async fn per task) or any [`Handler`],
//! with the settings most programs change.
//!
//! ```no_run
//! # use serde::{Deserialize, Serialize};
//! # use taskmill::{Failure, Job, Json, WorkerBuilder};
//! # #[derive(Serialize, Deserialize)] struct CountPrimes { below: u64 }
//! # impl Job for CountPrimes { const QUEUE: &'static str = "primes"; type Output = u64; type Codec = Json; }
//! # async fn demo(key: taskmill::AuthKey) -> Result<(), taskmill::WorkerError> {
//! let worker = WorkerBuilder::new("127.0.0.1:5555", key)
//!     .concurrency(8)
//!     .job(|task: CountPrimes| async move { Ok::<_, Failure>(task.below / 2) });
//! worker.run(tokio_util::sync::CancellationToken::new()).await?;
//! # Ok(()) }
//! ```

use std::future::Future;
use std::time::Duration;

use taskmill_protocol::AuthKey;

use super::{Worker, WorkerConfig};
use crate::client::ClientOptions;
use crate::handler::{Failure, Handler};
use crate::job::{Job, JobHandler};

/// Builds a [`Worker`]; see the module docs.
#[derive(Debug, Clone)]
pub struct WorkerBuilder {
    config: WorkerConfig,
    queue: Option<String>,
    task_timeout: Option<Duration>,
}

impl WorkerBuilder {
    /// A worker for the master at `master` (`host:port`), with [`WorkerConfig::new`]'s
    /// defaults.
    pub fn new(master: impl Into<String>, key: AuthKey) -> Self {
        Self::from_config(WorkerConfig::new(master, key))
    }

    /// A worker with every setting of `config`.
    pub fn from_config(config: WorkerConfig) -> Self {
        Self {
            config,
            queue: None,
            task_timeout: None,
        }
    }

    /// Tasks worked on at once.
    pub fn concurrency(mut self, tasks: u32) -> Self {
        self.config.concurrency = tasks.max(1);
        self
    }

    /// Requests for tasks kept in flight.
    pub fn prefetch(mut self, requests: u32) -> Self {
        self.config.prefetch = requests.max(1);
        self
    }

    /// Exit once no task has come for this long.
    pub fn idle_exit(mut self, after: Duration) -> Self {
        self.config.idle_exit = Some(after);
        self
    }

    /// How long one task may run before its attempt counts as failed (typed jobs).
    pub fn task_timeout(mut self, limit: Duration) -> Self {
        self.task_timeout = Some(limit);
        self
    }

    /// The lease asked for each task; the runtime extends it every third of this while the
    /// task runs, so only a worker that died or hung loses its tasks.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.config.lease = lease.max(Duration::from_millis(30));
        self
    }

    /// The first delay before a failed attempt is tried again (doubled per attempt).
    pub fn retry_delay(mut self, delay: Duration) -> Self {
        self.config.retry_delay = delay;
        self
    }

    /// The queue to serve: for a typed job, instead of `J::QUEUE`; for a handler, instead of
    /// `tasks`.
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = Some(queue.into());
        self
    }

    /// Timeouts and TLS for the worker's connection.
    pub fn client(mut self, options: ClientOptions) -> Self {
        self.config.client = options;
        self
    }

    /// A worker running `f` on each task of job `J`. `Ok` completes the task; see
    /// [`Failure`] for the rest. A task that does not decode is dead-lettered; a panic or a
    /// timeout fails the attempt.
    pub fn job<J, F, Fut>(mut self, f: F) -> Worker<JobHandler<J, F>>
    where
        J: Job,
        F: Fn(J) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<J::Output, Failure>> + Send,
    {
        self.config.tasks_queue = self.queue.take().unwrap_or_else(|| J::QUEUE.to_owned());
        Worker::new(self.config, JobHandler::new(f, self.task_timeout))
    }

    /// A worker running `handler` on batches of raw tasks.
    pub fn handler<H: Handler>(mut self, handler: H) -> Worker<H> {
        if let Some(queue) = self.queue.take() {
            self.config.tasks_queue = queue;
        }
        Worker::new(self.config, handler)
    }
}
