//! What a worker has to hand in (results, by where they go, and failures to report), kept
//! across reconnects; filing a batch's answers; counting what the master made of them.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use taskmill_protocol::{Outcome, Task, TaskId, TaskOutcome, TaskReply};
use tracing::{debug, warn};

use super::{State, WorkerConfig, WorkerReport};
use crate::client::Settled;
use crate::handler::{Answer, Failure};

/// Where a result goes: the worker's results queue (`None`), or the reply queue its task's
/// put named, wrapped in a [`TaskReply`].
pub(super) type Target = Option<Bytes>;

/// Answers waiting to be handed in.
#[derive(Debug, Default)]
pub(super) struct Unsent {
    /// In the order they were answered.
    pub(super) results: Vec<(Target, Outcome)>,
    pub(super) failures: Vec<(TaskId, u32, Failure)>,
}

impl Unsent {
    pub(super) fn len(&self) -> usize {
        self.results.len() + self.failures.len()
    }

    /// The results grouped by target, each group in answer order, groups in the order their
    /// first result came.
    pub(super) fn take_groups(&mut self) -> Vec<(Target, Vec<Outcome>)> {
        let mut groups: Vec<(Target, Vec<Outcome>)> = Vec::new();
        for (target, outcome) in self.results.drain(..) {
            match groups.iter_mut().find(|(t, _)| *t == target) {
                Some((_, group)) => group.push(outcome),
                None => groups.push((target, vec![outcome])),
            }
        }
        groups
    }
}

/// Files a batch's answers: results to hand in (those of tasks with a reply queue wrapped for
/// it, in one buffer for the batch), failures to report.
pub(super) fn file(tasks: Vec<Task>, answers: Vec<Answer>, unsent: &mut Unsent) {
    if answers.len() < tasks.len() {
        warn!(
            unanswered = tasks.len() - answers.len(),
            "the handler answered only part of a batch; the rest is redelivered when its leases run out"
        );
    }
    let room = answers
        .iter()
        .map(|a| a.as_ref().map_or(0, |r| r.len() + 16))
        .sum();
    let mut wrapped = BytesMut::with_capacity(room);
    for (task, answer) in tasks.into_iter().zip(answers) {
        match answer {
            Ok(result) if task.reply_to.is_empty() => {
                let outcome = Outcome {
                    task: task.id,
                    result,
                };
                unsent.results.push((None, outcome));
            }
            Ok(result) => {
                let reply = TaskReply {
                    task: task.id,
                    outcome: TaskOutcome::Done(result),
                };
                reply.encode_into(&mut wrapped);
                let outcome = Outcome {
                    task: task.id,
                    result: wrapped.split().freeze(),
                };
                unsent.results.push((Some(task.reply_to), outcome));
            }
            Err(failure) => {
                debug!(
                    task = task.id,
                    attempt = task.attempt,
                    cause = failure.reason(),
                    "task failed"
                );
                unsent.failures.push((task.id, task.attempt, failure));
            }
        }
    }
}

/// A failure as a nack: its delay (the worker's backoff for a failed attempt) and whether
/// it buries the task at once.
pub(super) fn nack_terms(
    config: &WorkerConfig,
    attempt: u32,
    failure: &Failure,
) -> (Duration, bool) {
    match failure {
        Failure::Retry { after, .. } => (*after, false),
        Failure::Failed { .. } => {
            let doublings = attempt.saturating_sub(1).min(20);
            let delay = config.retry_delay.saturating_mul(1 << doublings);
            (delay.min(config.max_retry_delay), false)
        }
        Failure::Fatal { .. } => (Duration::ZERO, true),
    }
}

/// Counts a completion's reply; results it left pending (their queue stayed full) go back to
/// be handed in again.
pub(super) fn settled(state: &mut State, sent: Option<(Target, Vec<Outcome>)>, settled: Settled) {
    tally(&mut state.report, &settled);
    if let Some((target, mut outcomes)) = sent {
        let pending = outcomes.len().saturating_sub(settled.pending as usize);
        let back = outcomes.drain(pending..).map(|o| (target.clone(), o));
        state.unsent.results.extend(back);
    }
}

/// Counts what a completion settled and what the master had already taken back.
pub(super) fn tally(report: &mut WorkerReport, settled: &Settled) {
    report.completed += u64::from(settled.done);
    report.stale += settled.stale.len() as u64;
    if !settled.stale.is_empty() {
        debug!(
            stale = settled.stale.len(),
            "some leases were taken back before completion"
        );
    }
}

/// Counts a failure's nack.
pub(super) fn tally_failure(report: &mut WorkerReport, failure: &Failure, settled: &Settled) {
    let done = u64::from(settled.done);
    match failure {
        Failure::Fatal { .. } => report.buried += done,
        Failure::Retry { .. } | Failure::Failed { .. } => report.failed += done,
    }
    report.stale += settled.stale.len() as u64;
}
