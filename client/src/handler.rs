//! The seam where a task's work plugs into the worker runtime: a [`Handler`] turns a leased
//! batch into one answer per task. The runtime does everything else (leasing, keeping leases
//! alive while the handler works, completing, retrying, reconnecting, draining).

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use taskmill_protocol::Task;

/// Why a task produced no result, and what becomes of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Try again after `after`. Counts as an attempt: once the task has had the queue's
    /// `--max-attempts` deliveries it goes to the dead-letter queue with `reason`.
    Retry { after: Duration, reason: String },
    /// This attempt failed (an error, a panic, a timeout): tried again after the worker's
    /// backoff, until its attempts run out.
    Failed { reason: String },
    /// The task can never succeed as it is (its payload does not decode, say): to the
    /// dead-letter queue at once, with `reason`.
    Fatal { reason: String },
}

impl Failure {
    /// The reason kept with the task (and its dead letter).
    pub fn reason(&self) -> &str {
        match self {
            Failure::Retry { reason, .. }
            | Failure::Failed { reason }
            | Failure::Fatal { reason } => reason,
        }
    }
}

/// One task's answer: its result, or why there is none.
pub type Answer = Result<Bytes, Failure>;

/// The work a worker does.
pub trait Handler: Send + Sync + 'static {
    /// Answers a leased batch: exactly one answer per task, in the tasks' order. Tasks the
    /// handler gives no answer for stay leased until their lease runs out, and are then
    /// redelivered.
    fn handle(&self, tasks: &[Task]) -> impl Future<Output = Vec<Answer>> + Send;
}

/// A handler that takes `time` longer per batch than the one it wraps (the batch's tasks run
/// side by side, like a pool): for load tests and demonstrations of slow jobs.
#[derive(Debug, Clone)]
pub struct Sleep<H> {
    inner: H,
    time: Duration,
}

impl<H> Sleep<H> {
    /// `inner`, taking `time` longer per batch (nothing added for zero).
    pub fn new(inner: H, time: Duration) -> Self {
        Self { inner, time }
    }
}

impl<H: Handler> Handler for Sleep<H> {
    async fn handle(&self, tasks: &[Task]) -> Vec<Answer> {
        let answers = self.inner.handle(tasks).await;
        if !self.time.is_zero() {
            tokio::time::sleep(self.time).await;
        }
        answers
    }
}
