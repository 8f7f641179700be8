//! The seam where a task's work plugs into the worker runtime: a [`Handler`] turns a leased
//! batch into one answer per task. The runtime does everything else (leasing, heartbeats while
//! the handler works, completing, reconnecting, draining).

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use taskmill_protocol::Task;

/// Why a task produced no result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The task can never succeed as it is (its payload does not decode, say): it is moved,
    /// untouched, to `<tasks queue>.rejected` (see [`crate::REJECTED_SUFFIX`]).
    Reject { reason: String },
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
