//! The worker's steady state: keep requests for tasks in flight, answer each batch as it
//! comes, and hand its answers in with the request for the next (one round trip per batch).

use std::collections::HashMap;

use taskmill_protocol::{Delivery, ErrorKind, Outcome, Request, TaskId, Wait};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::unsent::{file, nack_terms, settled, tally_failure, Target};
use super::{answer, drain_over, idle_for, State, Stop, Worker, WorkerConfig};
use crate::client::{Client, Worked};
use crate::error::ClientError;
use crate::handler::{Failure, Handler};

/// A request sent and not yet answered, kept until its reply says what became of it.
pub(super) enum Sent {
    /// A completion (or completion and get) of results bound for one queue.
    Results(Target, Vec<Outcome>),
    /// A nack reporting one failure.
    Failure(Failure),
    /// A plain get: nothing to keep.
    Get,
}

/// The queue a result goes to.
pub(super) fn target_queue<'a>(config: &'a WorkerConfig, target: &'a Target) -> &'a str {
    match target {
        // A route comes from a valid queue name, so it is ASCII.
        Some(reply) => std::str::from_utf8(reply).unwrap_or(&config.results_queue),
        None => &config.results_queue,
    }
}

impl<H: Handler> Worker<H> {
    /// Keeps `config.prefetch` requests for tasks in flight, so a batch is already on its way
    /// while the previous one is computed, and hands each batch's results in with the request for
    /// the next one. Stops asking for tasks on shutdown, idleness or the master's drain, then
    /// settles what is still in flight. `sent` holds what each request carried until its
    /// reply says what became of it.
    pub(super) async fn pipeline(
        &self,
        client: &mut Client,
        shutdown: &CancellationToken,
        state: &mut State,
        sent: &mut HashMap<u64, Sent>,
    ) -> Result<Stop, ClientError> {
        let config = &self.config;
        let window = config.prefetch.max(1) as usize;
        let lease_ms = Some(config.lease.as_millis() as u64);
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
                    let id = client
                        .submit(Request::Get {
                            queue: config.tasks_queue.clone(),
                            max: config.concurrency,
                            wait,
                            delivery: Delivery::Lease { millis: lease_ms },
                        })
                        .await?;
                    sent.insert(id, Sent::Get);
                }
            }
            if let Some(ending) = stop {
                // Once stopped, only completions are worth waiting for: tasks that a get still
                // in flight may bring are left to go back when this connection closes.
                let nothing_to_hand_in =
                    sent.values().all(|s| matches!(s, Sent::Get)) && state.unsent.len() == 0;
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
                    // (Only gets are refused by a draining master; anything else it carried
                    // goes back to be handed in.)
                    stop.get_or_insert(Stop::MasterDraining);
                    if let Some(Sent::Results(target, outcomes)) = sent.remove(&id) {
                        let back = outcomes.into_iter().map(|o| (target.clone(), o));
                        state.unsent.results.extend(back);
                    }
                    continue;
                }
                worked => worked?,
            };
            match sent.remove(&id) {
                Some(Sent::Failure(failure)) => {
                    tally_failure(&mut state.report, &failure, &worked.settled)
                }
                Some(Sent::Results(target, outcomes)) => {
                    settled(state, Some((target, outcomes)), worked.settled)
                }
                Some(Sent::Get) | None => settled(state, None, worked.settled),
            }
            if !worked.tasks.is_empty() && matches!(stop, Some(Stop::Shutdown)) {
                debug!(
                    tasks = worked.tasks.len(),
                    "not starting tasks leased after the stop signal; they go back when this \
                     connection closes"
                );
            } else if !worked.tasks.is_empty() {
                state.last_task = std::time::Instant::now();
                // Aborted mid-batch: its tasks go back when the connection closes.
                let answers = tokio::select! {
                    answers = answer(&self.handler, client, config, &worked.tasks) => answers?,
                    () = self.abort.cancelled() => return Ok(Stop::Shutdown),
                };
                file(worked.tasks, answers, &mut state.unsent);
            }
            self.report_failures(client, state, sent).await?;
            if state.unsent.results.is_empty() || drain_over(config, shutdown, state) {
                continue;
            }
            // A stop signal that came while the batch was worked on: no more tasks after it.
            if stop.is_none() && shutdown.is_cancelled() {
                stop = Some(Stop::Shutdown);
            }
            let mut groups = state.unsent.take_groups();
            let last = groups.pop().expect("results to send");
            for (target, outcomes) in groups {
                let id = client
                    .submit(complete(config, &target, outcomes.clone(), None))
                    .await?;
                sent.insert(id, Sent::Results(target, outcomes));
            }
            // The last group carries the request for the next batch, unless stopping.
            let next = stop.is_none().then_some(lease_ms);
            let (target, outcomes) = last;
            let id = client
                .submit(complete(config, &target, outcomes.clone(), next))
                .await?;
            sent.insert(id, Sent::Results(target, outcomes));
        }
    }

    /// Sends a nack for each failure filed (pipelined: their replies are counted as they
    /// come).
    async fn report_failures(
        &self,
        client: &mut Client,
        state: &mut State,
        sent: &mut HashMap<u64, Sent>,
    ) -> Result<(), ClientError> {
        let config = &self.config;
        for (task, attempt, failure) in std::mem::take(&mut state.unsent.failures) {
            let (delay, fatal) = nack_terms(config, attempt, &failure);
            let id = client
                .submit(nack(config, task, delay, fatal, &failure))
                .await?;
            sent.insert(id, Sent::Failure(failure));
        }
        Ok(())
    }
}

/// A completion of `outcomes` into `target`'s queue, with a get of the next batch (leased
/// for `lease_ms`) when `next` says so.
fn complete(
    config: &WorkerConfig,
    target: &Target,
    outcomes: Vec<Outcome>,
    next: Option<Option<u64>>,
) -> Request {
    let (queue, results) = (
        config.tasks_queue.clone(),
        target_queue(config, target).to_owned(),
    );
    let wait = Wait::Millis(config.poll.as_millis() as u64);
    match next {
        Some(lease_ms) => Request::CompleteAndGet {
            queue,
            results,
            outcomes,
            max: config.concurrency,
            wait,
            lease_ms,
            reply: target.is_some(),
        },
        None => Request::Complete {
            queue,
            results,
            outcomes,
            wait,
            reply: target.is_some(),
        },
    }
}

fn nack(
    config: &WorkerConfig,
    task: TaskId,
    delay: std::time::Duration,
    fatal: bool,
    failure: &Failure,
) -> Request {
    Request::Nack {
        queue: config.tasks_queue.clone(),
        tasks: vec![task],
        delay_ms: delay.as_millis().try_into().unwrap_or(u64::MAX),
        reason: failure.reason().to_owned(),
        fatal,
    }
}
