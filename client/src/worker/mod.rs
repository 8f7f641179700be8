//! The worker runtime: connect (retrying with [`crate::Backoff`]), lease a batch, have the
//! [`Handler`] answer it (keeping its leases alive meanwhile), complete it (each result to its
//! task's reply queue, or the results queue), report failures, repeat; drain on shutdown.
//!
//! Tasks are leased, so a worker that dies loses nothing: the master requeues whatever its
//! connection held. Results computed when the connection drops are kept and handed in after
//! reconnecting; the master accepts them only if the lease is still this connection's, which
//! after a reconnect it is not, so they are counted stale and the tasks are redone elsewhere
//! (never counted twice).

mod builder;
mod config;
mod pipeline;
mod unsent;

use std::collections::HashMap;
use std::task::Poll;
use std::time::{Duration, Instant};

use taskmill_protocol::{Task, Wait};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

pub use builder::WorkerBuilder;
pub use config::WorkerConfig;

use crate::client::Client;
use crate::error::ClientError;
use crate::handler::{Answer, Handler};
use crate::reconnect::Reconnecting;
use unsent::{nack_terms, tally_failure, Unsent};

/// What one worker did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerReport {
    /// Tasks answered and settled.
    pub completed: u64,
    /// Completions the master had already taken back (the lease was lost).
    pub stale: u64,
    /// Failed attempts given back to be tried again (or dead-lettered once out of attempts).
    pub failed: u64,
    /// Tasks the handler found could never succeed, dead-lettered at once.
    pub buried: u64,
    /// Successful connections (1 + reconnects).
    pub connections: u64,
    /// Results still undelivered when the worker stopped (their tasks are redone elsewhere).
    pub abandoned: u64,
}

/// A failure that retrying cannot fix.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// Transparent: the client error says all there is, once (a source would repeat it).
    #[error(transparent)]
    Fatal(#[from] ClientError),
}

#[derive(Debug, Clone, Copy)]
enum Stop {
    Idle,
    Shutdown,
    /// The master announced it is stopping: reconnect (with backoff) once it is back.
    MasterDraining,
}

/// A worker: the runtime around one [`Handler`].
#[derive(Debug)]
pub struct Worker<H> {
    config: WorkerConfig,
    handler: H,
    /// Stops the worker at once: no batch finished, nothing more handed in.
    abort: CancellationToken,
}

impl<H: Handler> Worker<H> {
    pub fn new(config: WorkerConfig, handler: H) -> Self {
        Self {
            config,
            handler,
            abort: CancellationToken::new(),
        }
    }

    /// Stops at once when `abort` fires, even while draining after `shutdown`: results of
    /// finished batches are sent (not waited on), the batch in hand is not finished, and its
    /// tasks go back to the master when the connection closes. For a second stop signal.
    pub fn abort_on(mut self, abort: CancellationToken) -> Self {
        self.abort = abort;
        self
    }

    /// Works until `shutdown` fires (finishing the batch in hand), the idle limit passes, or a
    /// non-transient error occurs.
    pub async fn run(self, shutdown: CancellationToken) -> Result<WorkerReport, WorkerError> {
        let mut state = State {
            report: WorkerReport::default(),
            unsent: Unsent::default(),
            last_task: Instant::now(),
            shutdown_at: None,
        };
        let result = self.run_loop(&shutdown, &mut state).await;
        state.report.abandoned = state.unsent.len() as u64;
        if state.report.abandoned > 0 {
            warn!(
                results = state.report.abandoned,
                "stopping with results not handed in; the master will give those tasks to other workers"
            );
        }
        result.map(|()| state.report)
    }

    async fn run_loop(
        &self,
        shutdown: &CancellationToken,
        state: &mut State,
    ) -> Result<(), WorkerError> {
        let config = &self.config;
        let mut link = Reconnecting::new(
            "worker",
            &config.master,
            &config.key,
            &config.client,
            config.max_backoff,
        );
        if let Some(window) = config.handshake_patience {
            link = link.persist_before_welcome(window);
        }
        loop {
            if shutdown.is_cancelled() {
                return Ok(());
            }
            if idle_for(config, state.last_task).is_none() {
                info!(
                    "no tasks for {:?}; exiting",
                    config.idle_exit.unwrap_or_default()
                );
                return Ok(());
            }
            let connected = tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                c = link.client() => c.map(|_| ()),
            };
            let outcome = match connected {
                Ok(()) => {
                    state.report.connections += 1;
                    info!(master = %config.master, "connected");
                    let client = link.connected().expect("just connected");
                    self.work(client, shutdown, state).await
                }
                Err(err) => Err(err),
            };
            match outcome {
                Ok(Stop::Shutdown) => {
                    info!(completed = state.report.completed, "shutting down");
                    return Ok(());
                }
                Ok(Stop::Idle) => {
                    info!(
                        completed = state.report.completed,
                        "no tasks for {:?}; exiting",
                        config.idle_exit.unwrap_or_default()
                    );
                    return Ok(());
                }
                Ok(Stop::MasterDraining) => {
                    info!(master = %config.master, "master is shutting down; reconnecting when it is back");
                    link.disconnect();
                    tokio::select! {
                        () = shutdown.cancelled() => return Ok(()),
                        () = link.pause() => {}
                    }
                }
                Err(err) => {
                    let retried = tokio::select! {
                        () = shutdown.cancelled() => return Ok(()),
                        retried = link.failed(err) => retried,
                    };
                    if let Err(err) = retried {
                        error!(master = %config.master, cause = %err, "cannot work with this master");
                        return Err(err.into());
                    }
                }
            }
        }
    }

    async fn work(
        &self,
        client: &mut Client,
        shutdown: &CancellationToken,
        state: &mut State,
    ) -> Result<Stop, ClientError> {
        // Answers kept from a lost connection go first.
        hand_in(&self.config, client, shutdown, &self.abort, state).await?;
        let mut sent = HashMap::new();
        let result = self.pipeline(client, shutdown, state, &mut sent).await;
        // Results whose completion got no answer are kept, like any other unsent result; an
        // unanswered failure needs nothing: the task comes back to someone anyway.
        for (_, sent) in sent {
            if let pipeline::Sent::Results(target, outcomes) = sent {
                let back = outcomes.into_iter().map(|o| (target.clone(), o));
                state.unsent.results.extend(back);
            }
        }
        result
    }
}

/// What a worker keeps across connections.
struct State {
    report: WorkerReport,
    unsent: Unsent,
    last_task: Instant,
    /// When the shutdown signal was first seen, to bound the drain.
    shutdown_at: Option<Instant>,
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

/// True once a shutdown's drain timeout has passed: results still held are given up.
fn drain_over(config: &WorkerConfig, shutdown: &CancellationToken, state: &mut State) -> bool {
    if !shutdown.is_cancelled() {
        return false;
    }
    let since = *state.shutdown_at.get_or_insert_with(Instant::now);
    since.elapsed() >= config.drain_timeout
}

/// Has `handler` answer a leased batch, extending the batch's leases every third of their
/// length while it works (which also tells the master we are alive).
async fn answer<H: Handler>(
    handler: &H,
    client: &mut Client,
    config: &WorkerConfig,
    tasks: &[Task],
) -> Result<Vec<Answer>, ClientError> {
    let work = handler.handle(tasks);
    tokio::pin!(work);
    // Most handlers answer at once; no timer for those.
    if let Poll::Ready(answers) = futures::poll!(&mut work) {
        return Ok(answers);
    }
    let every = (config.lease / 3).max(Duration::from_millis(10));
    let ids: Vec<_> = tasks.iter().map(|t| t.id).collect();
    loop {
        tokio::select! {
            answers = &mut work => return Ok(answers),
            () = tokio::time::sleep(every) => {
                client.touch(&config.tasks_queue, ids.clone(), None).await?;
            }
        }
    }
}

/// Hands in every unsent answer: results to their queues, waiting for room as needed, and
/// failures as nacks. After a shutdown signal it gives up once the drain timeout has passed.
async fn hand_in(
    config: &WorkerConfig,
    client: &mut Client,
    shutdown: &CancellationToken,
    abort: &CancellationToken,
    state: &mut State,
) -> Result<(), ClientError> {
    let wait = Wait::Millis(config.poll.as_millis() as u64);
    for (task, attempt, failure) in std::mem::take(&mut state.unsent.failures) {
        let (delay, fatal) = nack_terms(config, attempt, &failure);
        let queue = &config.tasks_queue;
        let settled = if fatal {
            client.bury(queue, vec![task], failure.reason()).await?
        } else {
            client
                .nack(queue, vec![task], delay, failure.reason())
                .await?
        };
        tally_failure(&mut state.report, &failure, &settled);
    }
    loop {
        if state.unsent.results.is_empty() {
            return Ok(());
        }
        if abort.is_cancelled() || drain_over(config, shutdown, state) {
            return Ok(());
        }
        for (target, batch) in state.unsent.take_groups() {
            let to = pipeline::target_queue(config, &target).to_owned();
            let (queue, outcomes) = (&config.tasks_queue, batch.clone());
            let settled = match target {
                Some(_) => client.complete_replies(queue, &to, outcomes, wait).await?,
                None => client.complete(queue, &to, outcomes, wait).await?,
            };
            unsent::settled(state, Some((target, batch)), settled.clone());
            if settled.pending > 0 {
                tracing::debug!(pending = settled.pending, queue = %to, "results queue full; waiting for room");
            }
        }
    }
}
