//! Requests to replies: one function per request; [`handle`] only routes.
//!
//! A request is answered now, or becomes a future that yields its reply once its wait ends
//! (see [`Step`]); the session polls those beside its socket. New work (puts, leasing gets)
//! ends at the drain; what settles work already handed out runs until the stop. Both end
//! early, with what they achieved, when their session ends.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use taskmill_protocol::{
    max_payload, Delivery, ErrorKind, Outcome, Reply, Request, Stats, TaskId, Wait,
};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::keys::Grants;
use crate::broker::{Broker, Origin, Progress, PutWaiting, QueueError, SessionId, Step};
use crate::config::MAX_ITEMS;
use crate::master::{Context, Phases};

/// A reply still to come, with its request's id.
pub(crate) type Waiting = Pin<Box<dyn Future<Output = (u64, Reply)> + Send>>;

/// What a request may be answered with: now, or later.
type Answer = Result<Step<Reply, Waiting>, Reply>;

/// The session a request arrived on.
pub(crate) struct Caller<'a> {
    pub ctx: &'a Context,
    pub session: SessionId,
    /// This session's frame cap, which bounds items and replies.
    pub max_frame: usize,
    /// What ends waiting requests: the master's drain and stop, or the session's own end,
    /// whichever is first.
    pub phases: &'a Phases,
    /// What the session's key may do.
    pub grants: &'a Grants,
}

/// Carries out one request: the reply now, or a future that yields it once its wait ends.
pub(crate) fn handle(caller: &Caller<'_>, id: u64, request: Request) -> Step<Reply, Waiting> {
    // The one permission check: nothing below runs for a request the key may not make.
    if let Err(refused) = caller.grants.check(&request) {
        let ctx = caller.ctx;
        ctx.counters.forbidden.fetch_add(1, Ordering::Relaxed);
        if let Reply::Error { message, .. } = &refused {
            let key = caller
                .grants
                .name()
                .map(|k| k.to_string())
                .unwrap_or_default();
            let session = caller.session;
            // A client can make these at will: rate-limited like handshake failures.
            if ctx.forbidden_log.allow() {
                tracing::warn!(session, key, "request refused: {message}");
            } else {
                tracing::debug!(session, key, "request refused: {message}");
            }
        }
        return Step::Ready(refused);
    }
    if let Err(reply) = check_items(&request) {
        return Step::Ready(reply);
    }
    let draining = caller.phases.drain.is_cancelled();
    let answer = match request {
        Request::Put { .. }
        | Request::PutOnce { .. }
        | Request::Kick { .. }
        | Request::Get {
            delivery: Delivery::Lease { .. },
            ..
        } if draining => Err(shutting_down()),
        Request::Put {
            queue,
            items,
            wait,
            reply_to,
        } => put(caller, id, &queue, items, wait, None, reply_to),
        Request::PutOnce {
            queue,
            items,
            wait,
            producer,
            seq,
            reply_to,
        } => {
            let origin = Some(Origin { producer, seq });
            put(caller, id, &queue, items, wait, origin, reply_to)
        }
        Request::Get {
            queue,
            max,
            wait,
            delivery,
        } => get(caller, id, &queue, max, wait, delivery),
        Request::Complete {
            queue,
            results,
            outcomes,
            wait,
            reply,
        } => complete(caller, id, &queue, (&results, reply), outcomes, wait),
        Request::CompleteAndGet {
            queue,
            results,
            outcomes,
            max,
            wait,
            lease_ms,
            reply,
        } => {
            let results = (results.as_str(), reply);
            complete_and_get(caller, id, queue, results, outcomes, max, wait, lease_ms)
        }
        Request::Ack { queue, tasks } => ack(caller, &queue, &tasks),
        Request::Touch {
            queue,
            tasks,
            millis,
        } => touch(caller, &queue, &tasks, millis),
        Request::Nack {
            queue,
            tasks,
            delay_ms,
            reason,
            fatal,
        } => nack(caller, &queue, &tasks, delay_ms, &reason, fatal),
        Request::Peek { queue, max } => peek(caller, &queue, max),
        Request::Purge { queue } => count(broker(caller).purge(&queue)),
        Request::Kick { queue, max } => kick(caller, &queue, max),
        Request::Delete { queue, if_empty } => count(broker(caller).delete(&queue, if_empty)),
        Request::Declare { queue, capacity } => declare(caller, &queue, capacity),
        Request::Inspect { queue } => inspect(caller, &queue),
        Request::Stats => {
            let stats = caller.ctx.cached_stats();
            Ok(Step::Ready(Reply::Stats(Box::new(Stats::clone(&stats)))))
        }
        Request::Ping => Ok(Step::Ready(Reply::Pong)),
    };
    answer.unwrap_or_else(Step::Ready)
}

fn broker<'a>(caller: &Caller<'a>) -> &'a Broker {
    &caller.ctx.broker
}

fn put(
    caller: &Caller<'_>,
    id: u64,
    queue: &str,
    items: Vec<Bytes>,
    wait: Wait,
    origin: Option<Origin>,
    reply_to: Option<String>,
) -> Answer {
    check_payloads(caller, items.iter())?;
    check_room(caller)?;
    let waits = wait != Wait::No;
    let reply = reply_to.as_deref();
    let step = broker(caller).put_once(caller.session, queue, items, waits, origin, reply)?;
    let drain = caller.phases.drain.clone();
    Ok(later(id, step, wait, drain, put_reply))
}

fn get(
    caller: &Caller<'_>,
    id: u64,
    queue: &str,
    max: u32,
    wait: Wait,
    delivery: Delivery,
) -> Answer {
    check_max(max)?;
    let phases = caller.phases;
    let ends = match delivery {
        Delivery::Lease { .. } => phases.drain.clone(),
        Delivery::Remove => phases.stop.clone(),
    };
    let budget = max_payload(caller.max_frame);
    let step = broker(caller).get(
        caller.session,
        queue,
        max,
        budget,
        delivery,
        wait != Wait::No,
    )?;
    Ok(match step {
        Step::Ready(tasks) => Step::Ready(Reply::Tasks(tasks)),
        Step::Wait(w) => Step::Wait(Box::pin(
            w.wait(deadline(wait), ends)
                .map(move |t| (id, Reply::Tasks(t))),
        )),
    })
}

/// Where a completion's results go: a queue, and whether it is the tasks' reply queue.
type Results<'a> = (&'a str, bool);

fn complete(
    caller: &Caller<'_>,
    id: u64,
    queue: &str,
    (results, reply): Results<'_>,
    outcomes: Vec<Outcome>,
    wait: Wait,
) -> Answer {
    check_payloads(caller, outcomes.iter().map(|o| &o.result))?;
    let waits = wait != Wait::No;
    let step = broker(caller).complete(caller.session, queue, results, outcomes, waits, reply)?;
    let stop = caller.phases.stop.clone();
    Ok(later(id, step, wait, stop, settled_reply))
}

#[allow(clippy::too_many_arguments)] // the request's own fields
fn complete_and_get(
    caller: &Caller<'_>,
    id: u64,
    queue: String,
    (results, reply): Results<'_>,
    outcomes: Vec<Outcome>,
    max: u32,
    wait: Wait,
    lease_ms: Option<u64>,
) -> Answer {
    check_max(max)?;
    check_payloads(caller, outcomes.iter().map(|o| &o.result))?;
    let phases = caller.phases;
    let next = NextGet {
        broker: broker(caller).clone(),
        session: caller.session,
        queue,
        max,
        lease_ms,
        wait,
        deadline: deadline(wait),
        max_frame: caller.max_frame,
        drain: phases.drain.clone(),
    };
    let step = broker(caller).complete(
        caller.session,
        &next.queue,
        results,
        outcomes,
        wait != Wait::No,
        reply,
    )?;
    let stop = phases.stop.clone();
    Ok(match step {
        Step::Ready(p) => next.after(id, p),
        Step::Wait(w) => Step::Wait(Box::pin(async move {
            let p = w.wait(next.deadline, stop).await;
            match next.after(id, p) {
                Step::Ready(reply) => (id, reply),
                Step::Wait(get) => get.await,
            }
        })),
    })
}

fn ack(caller: &Caller<'_>, queue: &str, tasks: &[TaskId]) -> Answer {
    let p = broker(caller).ack(caller.session, queue, tasks)?;
    Ok(Step::Ready(settled_reply(p)))
}

fn touch(caller: &Caller<'_>, queue: &str, tasks: &[TaskId], millis: Option<u64>) -> Answer {
    let p = broker(caller).touch(caller.session, queue, tasks, millis)?;
    Ok(Step::Ready(settled_reply(p)))
}

fn nack(
    caller: &Caller<'_>,
    queue: &str,
    tasks: &[TaskId],
    delay_ms: u64,
    reason: &str,
    fatal: bool,
) -> Answer {
    let delay = Duration::from_millis(delay_ms);
    let p = broker(caller).nack(caller.session, queue, tasks, delay, reason, fatal)?;
    Ok(Step::Ready(settled_reply(p)))
}

fn peek(caller: &Caller<'_>, queue: &str, max: u32) -> Answer {
    check_max(max)?;
    let tasks = broker(caller).peek(queue, max, max_payload(caller.max_frame))?;
    Ok(Step::Ready(Reply::Tasks(tasks)))
}

fn kick(caller: &Caller<'_>, queue: &str, max: u32) -> Answer {
    check_max(max)?;
    check_room(caller)?;
    count(broker(caller).kick(queue, max))
}

fn count(done: Result<u64, QueueError>) -> Answer {
    Ok(Step::Ready(Reply::Count(done?)))
}

fn declare(caller: &Caller<'_>, queue: &str, capacity: Option<u64>) -> Answer {
    let stats = broker(caller).declare(queue, capacity)?;
    Ok(Step::Ready(Reply::Queue(Box::new(stats))))
}

fn inspect(caller: &Caller<'_>, queue: &str) -> Answer {
    let stats = broker(caller).inspect(queue)?;
    Ok(Step::Ready(Reply::Queue(Box::new(stats))))
}

/// Refuses new tasks once the disk budget is spent; what settles tasks still goes through.
fn check_room(caller: &Caller<'_>) -> Result<(), Reply> {
    if caller.ctx.store.has_room() {
        return Ok(());
    }
    Err(error_reply(
        ErrorKind::StorageFull,
        "the master's disk budget (--max-disk) is spent: no new tasks until completions and \
         acks free room; retry later"
            .into(),
    ))
}

/// How many items, outcomes or task ids `request` carries.
fn items(request: &Request) -> usize {
    match request {
        Request::Put { items, .. } | Request::PutOnce { items, .. } => items.len(),
        Request::Complete { outcomes, .. } | Request::CompleteAndGet { outcomes, .. } => {
            outcomes.len()
        }
        Request::Ack { tasks, .. } | Request::Touch { tasks, .. } | Request::Nack { tasks, .. } => {
            tasks.len()
        }
        _ => 0,
    }
}

/// Refuses a request carrying more than [`MAX_ITEMS`] items, outcomes or task ids, before
/// any of it is carried out.
fn check_items(request: &Request) -> Result<(), Reply> {
    let n = items(request);
    if n <= MAX_ITEMS {
        return Ok(());
    }
    Err(error_reply(
        ErrorKind::BadRequest,
        format!("{n} items in one request; the limit is {MAX_ITEMS}: split it"),
    ))
}

/// What `request` is charged while it waits: its payloads as a waiting batch keeps them (see
/// the broker's `Batch::Packed`), and a little per item; 0 for requests that keep nothing.
pub(crate) fn waiting_cost(request: &Request) -> u64 {
    const PER_ITEM: u64 = 16;
    let payloads: u64 = match request {
        Request::Put { items, .. } | Request::PutOnce { items, .. } => {
            items.iter().map(|i| i.len() as u64).sum()
        }
        Request::Complete { outcomes, .. } | Request::CompleteAndGet { outcomes, .. } => {
            outcomes.iter().map(|o| o.result.len() as u64).sum()
        }
        _ => 0,
    };
    payloads + items(request) as u64 * PER_ITEM
}

fn check_max(max: u32) -> Result<(), Reply> {
    if max == 0 {
        return Err(error_reply(
            ErrorKind::BadRequest,
            "max must be at least 1".into(),
        ));
    }
    Ok(())
}

/// Refuses items too large to ever be handed out again in a `Tasks` reply.
fn check_payloads<'b>(
    caller: &Caller<'_>,
    mut payloads: impl Iterator<Item = &'b Bytes>,
) -> Result<(), Reply> {
    let limit = max_payload(caller.max_frame);
    match payloads.find(|p| p.len() > limit) {
        Some(p) => Err(error_reply(
            ErrorKind::PayloadTooLarge,
            format!(
                "an item of {} bytes exceeds this session's limit of {limit} bytes",
                p.len()
            ),
        )),
        None => Ok(()),
    }
}

/// The get half of a `CompleteAndGet`, made once its completion has been processed.
struct NextGet {
    broker: Broker,
    session: SessionId,
    queue: String,
    max: u32,
    lease_ms: Option<u64>,
    wait: Wait,
    /// The request's one deadline, shared by both halves.
    deadline: Option<Instant>,
    max_frame: usize,
    drain: CancellationToken,
}

impl NextGet {
    /// Leases the next tasks unless outcomes are still pending or the master is draining.
    fn after(self, id: u64, p: Progress) -> Step<Reply, Waiting> {
        let worked = move |p: Progress, tasks| Reply::Worked {
            done: p.done(),
            pending: p.pending(),
            stale: p.stale,
            tasks,
        };
        if p.pending() > 0 || self.drain.is_cancelled() {
            return Step::Ready(worked(p, Vec::new()));
        }
        // The stale ids share the reply's frame with the tasks: with any, even the first task
        // must fit what they leave, or the completion, done, would be answered ReplyTooLarge.
        let budget = max_payload(self.max_frame).saturating_sub(p.stale.len() * 10);
        let delivery = Delivery::Lease {
            millis: self.lease_ms,
        };
        let wait = self.wait != Wait::No && self.deadline.is_none_or(|d| d > Instant::now());
        let (broker, session, queue, max) = (&self.broker, self.session, &self.queue, self.max);
        let step = if p.stale.is_empty() {
            broker.get(session, queue, max, budget, delivery, wait)
        } else {
            broker.get_fitting(session, queue, max, budget, delivery, wait)
        };
        match step {
            Ok(Step::Ready(tasks)) => Step::Ready(worked(p, tasks)),
            Ok(Step::Wait(w)) => Step::Wait(Box::pin(
                w.wait(self.deadline, self.drain)
                    .map(move |tasks| (id, worked(p, tasks))),
            )),
            // The queue was found for the completion just now, so this cannot happen.
            Err(err) => Step::Ready(err.into()),
        }
    }
}

/// The reply now, or a future for it once the put or complete has finished waiting.
fn later(
    id: u64,
    step: Step<Progress, PutWaiting>,
    wait: Wait,
    stop: CancellationToken,
    reply: fn(Progress) -> Reply,
) -> Step<Reply, Waiting> {
    match step {
        Step::Ready(p) => Step::Ready(reply(p)),
        Step::Wait(w) => Step::Wait(Box::pin(
            w.wait(deadline(wait), stop).map(move |p| (id, reply(p))),
        )),
    }
}

fn put_reply(p: Progress) -> Reply {
    Reply::Put {
        first_id: p.first_id,
        accepted: p.done(),
    }
}

fn settled_reply(p: Progress) -> Reply {
    Reply::Settled {
        done: p.done(),
        pending: p.pending(),
        stale: p.stale,
    }
}

fn deadline(wait: Wait) -> Option<Instant> {
    match wait {
        Wait::Millis(ms) => Instant::now().checked_add(Duration::from_millis(ms)),
        Wait::No | Wait::Forever => None,
    }
}

fn shutting_down() -> Reply {
    error_reply(
        ErrorKind::ShuttingDown,
        "the master is draining before it stops: no new tasks are taken or handed out".into(),
    )
}

pub(crate) fn error_reply(kind: ErrorKind, message: String) -> Reply {
    Reply::Error { kind, message }
}

impl From<QueueError> for Reply {
    fn from(err: QueueError) -> Self {
        let kind = match err {
            QueueError::BadName(_) => ErrorKind::BadQueueName,
            QueueError::TooManyQueues { .. } => ErrorKind::TooManyQueues,
            QueueError::NoSuchQueue(_) => ErrorKind::NoSuchQueue,
            QueueError::InProgress => ErrorKind::InProgress,
            QueueError::NotEmpty(_) => ErrorKind::NotEmpty,
            QueueError::InUse(_) => ErrorKind::InUse,
            QueueError::MemoryFull { .. } => ErrorKind::MemoryFull,
        };
        error_reply(kind, err.to_string())
    }
}
