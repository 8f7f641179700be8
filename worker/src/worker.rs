//! The worker loop: connect (retrying with capped exponential backoff), lease a batch, answer
//! it, complete it, repeat; drain on shutdown.
//!
//! Tasks are leased, so a worker that dies loses nothing: the master requeues whatever its
//! connection held. A batch that was answered is always completed before the worker exits.

use std::time::{Duration, Instant};

use taskmill_protocol::{Client, ClientError, Outcome, Task, Wait};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::compute;
use crate::config::WorkerConfig;

/// What one worker did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerReport {
    /// Tasks answered and settled.
    pub completed: u64,
    /// Completions the master had already taken back (the lease was lost).
    pub stale: u64,
    /// Tasks whose payload did not decode, moved to `<tasks queue>.rejected` untouched.
    pub rejected: u64,
    /// Successful connections (1 + reconnects).
    pub connections: u64,
}

/// A failure that retrying cannot fix.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("{0}")]
    Fatal(#[from] ClientError),
}

enum Stop {
    Idle,
    Shutdown,
}

/// Works until `shutdown` fires (finishing the batch in hand), the idle limit passes, or a
/// non-transient error occurs.
pub async fn run(
    config: WorkerConfig,
    shutdown: CancellationToken,
) -> Result<WorkerReport, WorkerError> {
    let mut report = WorkerReport::default();
    let mut last_task = Instant::now();
    let mut backoff = Duration::from_millis(100);
    loop {
        if shutdown.is_cancelled() {
            return Ok(report);
        }
        if idle_for(&config, last_task).is_none() {
            info!(
                "no tasks for {:?}; exiting",
                config.idle_exit.unwrap_or_default()
            );
            return Ok(report);
        }
        let connected = tokio::select! {
            () = shutdown.cancelled() => return Ok(report),
            c = Client::connect_with(&config.master, &config.key, config.client) => c,
        };
        let mut client = match connected {
            Ok(client) => client,
            Err(err) if err.is_transient() => {
                warn!(master = %config.master, cause = %err, retry_in = ?backoff, "master not reachable");
                tokio::select! {
                    () = shutdown.cancelled() => return Ok(report),
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(config.max_backoff);
                continue;
            }
            Err(err) => {
                error!(master = %config.master, cause = %err, "cannot work with this master");
                return Err(err.into());
            }
        };
        backoff = Duration::from_millis(100);
        report.connections += 1;
        info!(master = %config.master, "connected");
        match work(&config, &mut client, &shutdown, &mut report, &mut last_task).await {
            Ok(Stop::Shutdown) => {
                info!(completed = report.completed, "shutting down");
                return Ok(report);
            }
            Ok(Stop::Idle) => {
                info!(
                    completed = report.completed,
                    "no tasks for {:?}; exiting",
                    config.idle_exit.unwrap_or_default()
                );
                return Ok(report);
            }
            Err(err) if err.is_transient() => {
                warn!(master = %config.master, cause = %err, "lost the master; reconnecting");
            }
            Err(err) => {
                error!(master = %config.master, cause = %err, "giving up");
                return Err(err.into());
            }
        }
    }
}

/// Time left before the idle limit, or `None` once it has passed.
fn idle_for(config: &WorkerConfig, last_task: Instant) -> Option<Duration> {
    match config.idle_exit {
        Some(limit) => limit
            .checked_sub(last_task.elapsed())
            .filter(|d| !d.is_zero()),
        None => Some(Duration::MAX),
    }
}

async fn work(
    config: &WorkerConfig,
    client: &mut Client,
    shutdown: &CancellationToken,
    report: &mut WorkerReport,
    last_task: &mut Instant,
) -> Result<Stop, ClientError> {
    loop {
        let Some(idle_left) = idle_for(config, *last_task) else {
            return Ok(Stop::Idle);
        };
        let wait = Wait::Millis(config.poll.min(idle_left).as_millis() as u64);
        // Abandoning a get mid-flight is safe: anything it leased returns to the queue when this
        // connection closes.
        let tasks = tokio::select! {
            () = shutdown.cancelled() => return Ok(Stop::Shutdown),
            tasks = client.get(&config.tasks_queue, config.concurrency, wait) => tasks?,
        };
        if tasks.is_empty() {
            continue;
        }
        *last_task = Instant::now();
        complete_batch(config, client, tasks, report).await?;
        if shutdown.is_cancelled() {
            return Ok(Stop::Shutdown);
        }
    }
}

/// Answers a leased batch and completes it, waiting for room in the results queue as needed.
async fn complete_batch(
    config: &WorkerConfig,
    client: &mut Client,
    tasks: Vec<Task>,
    report: &mut WorkerReport,
) -> Result<(), ClientError> {
    let mut outcomes = Vec::with_capacity(tasks.len());
    let mut rejected = Vec::new();
    for task in tasks {
        match compute::process(&task.payload) {
            Ok(result) => outcomes.push(Outcome {
                task: task.id,
                result,
            }),
            Err(err) => {
                warn!(task = task.id, cause = %err, "undecodable task; moving it to the rejected queue");
                rejected.push(Outcome {
                    task: task.id,
                    result: task.payload,
                });
            }
        }
    }
    let wait = Wait::Millis(config.poll.as_millis() as u64);
    let rejected_queue = format!("{}.rejected", config.tasks_queue);
    for (target, mut batch, counts_as_done) in [
        (&config.results_queue, outcomes, true),
        (&rejected_queue, rejected, false),
    ] {
        while !batch.is_empty() {
            let settled = client
                .complete(&config.tasks_queue, target, batch.clone(), wait)
                .await?;
            let processed = batch.len() - settled.pending as usize;
            batch.drain(..processed);
            if counts_as_done {
                report.completed += u64::from(settled.done);
            } else {
                report.rejected += u64::from(settled.done);
            }
            report.stale += settled.stale.len() as u64;
            if !settled.stale.is_empty() {
                debug!(
                    stale = settled.stale.len(),
                    "some leases were taken back before completion"
                );
            }
            if settled.pending > 0 {
                debug!(pending = settled.pending, queue = %target, "results queue full; waiting for room");
            }
        }
    }
    Ok(())
}
