//! The worker runtime: connect (retrying with [`crate::Backoff`]), lease a batch, have the
//! [`Handler`] answer it (heartbeating meanwhile), complete it, repeat; drain on shutdown.
//!
//! Tasks are leased, so a worker that dies loses nothing: the master requeues whatever its
//! connection held. Results computed when the connection drops are kept and handed in after
//! reconnecting; the master accepts them only if the lease is still this connection's, which
//! after a reconnect it is not, so they are counted stale and the tasks are redone elsewhere
//! (never counted twice).

mod config;

use std::collections::HashMap;
use std::task::Poll;
use std::time::{Duration, Instant};

use taskmill_protocol::{Delivery, ErrorKind, Outcome, Request, Task, Wait};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

pub use config::WorkerConfig;

use crate::client::{Client, Settled, Worked};
use crate::error::ClientError;
use crate::handler::{Answer, Failure, Handler};
use crate::reconnect::Reconnecting;
use crate::REJECTED_SUFFIX;

/// What one worker did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerReport {
    /// Tasks answered and settled.
    pub completed: u64,
    /// Completions the master had already taken back (the lease was lost).
    pub stale: u64,
    /// Tasks the handler rejected, moved to `<tasks queue>.rejected` untouched.
    pub rejected: u64,
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

/// Answers waiting to be handed in, kept across reconnects.
#[derive(Debug, Default)]
struct Unsent {
    results: Vec<Outcome>,
    /// Rejected tasks, handed in untouched to `<tasks>.rejected`.
    rejected: Vec<Outcome>,
}

impl Unsent {
    fn len(&self) -> usize {
        self.results.len() + self.rejected.len()
    }
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
        // Results whose completion got no answer are kept, like any other unsent result.
        for (_, outcomes) in sent {
            state.unsent.results.extend(outcomes);
        }
        result
    }

    /// Keeps `config.prefetch` requests for tasks in flight, so a batch is already on its way
    /// while the previous one is computed, and hands each batch's results in with the request for
    /// the next one (one round trip per batch). Stops asking for tasks on shutdown, idleness or
    /// the master's drain, then settles what is still in flight. `sent` holds the results of
    /// each completion until its reply says what became of them.
    async fn pipeline(
        &self,
        client: &mut Client,
        shutdown: &CancellationToken,
        state: &mut State,
        sent: &mut HashMap<u64, Vec<Outcome>>,
    ) -> Result<Stop, ClientError> {
        let config = &self.config;
        let window = config.prefetch.max(1) as usize;
        let mut stop = None;
        loop {
            let idle_left = idle_for(config, state.last_task);
            if stop.is_none() {
                stop = if shutdown.is_cancelled() {
                    Some(Stop::Shutdown)
                } else if client.master_shutting_down() {
                    Some(Stop::MasterDraining)
                } else {
                    idle_left.is_none().then_some(Stop::Idle)
                };
            }
            if let (None, Some(idle_left)) = (stop, idle_left) {
                let wait = Wait::Millis(config.poll.min(idle_left).as_millis() as u64);
                while client.in_flight() < window {
                    client
                        .submit(Request::Get {
                            queue: config.tasks_queue.clone(),
                            max: config.concurrency,
                            wait,
                            delivery: Delivery::Lease { millis: None },
                        })
                        .await?;
                }
            }
            if let Some(ending) = stop {
                // Once stopped, only completions are worth waiting for: tasks that a get still
                // in flight may bring are left to go back when this connection closes.
                let nothing_to_hand_in = sent.is_empty() && state.unsent.len() == 0;
                let shutting_down = matches!(ending, Stop::Shutdown);
                if client.in_flight() == 0 || (shutting_down && nothing_to_hand_in) {
                    return Ok(ending);
                }
            }
            let (id, reply) = tokio::select! {
                () = shutdown.cancelled(), if stop.is_none() => continue,
                () = self.abort.cancelled() => return Ok(Stop::Shutdown),
                reply = client.next_reply() => reply?,
            };
            let worked = match Worked::from_reply(reply) {
                Err(ClientError::Server {
                    kind: ErrorKind::ShuttingDown,
                    ..
                }) => {
                    stop.get_or_insert(Stop::MasterDraining);
                    continue;
                }
                worked => worked?,
            };
            settled(state, sent.remove(&id), worked.settled);
            if !worked.tasks.is_empty() && matches!(stop, Some(Stop::Shutdown)) {
                debug!(
                    tasks = worked.tasks.len(),
                    "not starting tasks leased after the stop signal; they go back when this \
                     connection closes"
                );
            } else if !worked.tasks.is_empty() {
                state.last_task = Instant::now();
                // Aborted mid-batch: its tasks go back when the connection closes.
                let answers = tokio::select! {
                    answers = answer(&self.handler, client, &worked.tasks) => answers?,
                    () = self.abort.cancelled() => return Ok(Stop::Shutdown),
                };
                file(worked.tasks, answers, &mut state.unsent);
            }
            if !state.unsent.rejected.is_empty() {
                hand_in(config, client, shutdown, &self.abort, state).await?;
            }
            if state.unsent.results.is_empty() || drain_over(config, shutdown, state) {
                continue;
            }
            // A stop signal that came while the batch was worked on: no more tasks after it.
            if stop.is_none() && shutdown.is_cancelled() {
                stop = Some(Stop::Shutdown);
            }
            let outcomes = std::mem::take(&mut state.unsent.results);
            let (queue, results) = (config.tasks_queue.clone(), config.results_queue.clone());
            let wait = Wait::Millis(config.poll.as_millis() as u64);
            // Kept in `sent` until answered: the results share one buffer, so the copy is cheap.
            let sending = outcomes.clone();
            let request = match stop {
                None => Request::CompleteAndGet {
                    queue,
                    results,
                    outcomes: sending,
                    max: config.concurrency,
                    wait,
                    lease_ms: None,
                },
                Some(_) => Request::Complete {
                    queue,
                    results,
                    outcomes: sending,
                    wait,
                },
            };
            let id = client.submit(request).await?;
            sent.insert(id, outcomes);
        }
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

/// Counts a completion's reply; results it left pending (the results queue stayed full) go
/// back to be handed in again.
fn settled(state: &mut State, outcomes: Option<Vec<Outcome>>, settled: Settled) {
    tally(&mut state.report, &settled, false);
    if let Some(mut outcomes) = outcomes {
        let pending = outcomes.len().saturating_sub(settled.pending as usize);
        state.unsent.results.extend(outcomes.drain(pending..));
    }
}

/// Counts what a completion settled (as rejected tasks, for the rejected queue) and what the
/// master had already taken back.
fn tally(report: &mut WorkerReport, settled: &Settled, rejected: bool) {
    let done = u64::from(settled.done);
    if rejected {
        report.rejected += done;
    } else {
        report.completed += done;
    }
    report.stale += settled.stale.len() as u64;
    if !settled.stale.is_empty() {
        debug!(
            stale = settled.stale.len(),
            "some leases were taken back before completion"
        );
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

/// Has `handler` answer a leased batch, heartbeating while it works so the master does not
/// presume us dead.
async fn answer<H: Handler>(
    handler: &H,
    client: &mut Client,
    tasks: &[Task],
) -> Result<Vec<Answer>, ClientError> {
    let work = handler.handle(tasks);
    tokio::pin!(work);
    // Most handlers answer at once; no timer for those.
    if let Poll::Ready(answers) = futures::poll!(&mut work) {
        return Ok(answers);
    }
    let beat = client.heartbeat_interval() / 2;
    loop {
        tokio::select! {
            answers = &mut work => return Ok(answers),
            () = tokio::time::sleep(beat) => client.heartbeat().await?,
        }
    }
}

/// Files a batch's answers to be handed in: results for the results queue, rejected tasks
/// (with their payload) for the rejected queue.
fn file(tasks: Vec<Task>, answers: Vec<Answer>, unsent: &mut Unsent) {
    if answers.len() < tasks.len() {
        warn!(
            unanswered = tasks.len() - answers.len(),
            "the handler answered only part of a batch; the rest is redelivered when its leases run out"
        );
    }
    for (task, answer) in tasks.into_iter().zip(answers) {
        match answer {
            Ok(result) => unsent.results.push(Outcome {
                task: task.id,
                result,
            }),
            Err(Failure::Reject { reason }) => {
                warn!(task = task.id, cause = %reason, "task rejected; moving it to the rejected queue");
                unsent.rejected.push(Outcome {
                    task: task.id,
                    result: task.payload,
                });
            }
        }
    }
}

/// Completes every unsent answer, waiting for room in the results queue as needed. After a
/// shutdown signal it gives up once the drain timeout has passed.
async fn hand_in(
    config: &WorkerConfig,
    client: &mut Client,
    shutdown: &CancellationToken,
    abort: &CancellationToken,
    state: &mut State,
) -> Result<(), ClientError> {
    let wait = Wait::Millis(config.poll.as_millis() as u64);
    let rejected_queue = format!("{}{REJECTED_SUFFIX}", config.tasks_queue);
    for rejected in [false, true] {
        loop {
            let unsent = if rejected {
                state.unsent.rejected.len()
            } else {
                state.unsent.results.len()
            };
            if unsent == 0 {
                break;
            }
            if abort.is_cancelled() || drain_over(config, shutdown, state) {
                return Ok(());
            }
            let (target, batch) = if rejected {
                (&rejected_queue, &mut state.unsent.rejected)
            } else {
                (&config.results_queue, &mut state.unsent.results)
            };
            let settled = client
                .complete(&config.tasks_queue, target, batch.clone(), wait)
                .await?;
            let processed = batch.len() - settled.pending as usize;
            batch.drain(..processed);
            tally(&mut state.report, &settled, rejected);
            if settled.pending > 0 {
                debug!(pending = settled.pending, queue = %target, "results queue full; waiting for room");
            }
        }
    }
    Ok(())
}
