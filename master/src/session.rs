//! One client connection: the handshake under its deadline, then requests to replies.
//!
//! Requests that can be answered at once are answered in arrival order. Requests that must wait
//! become futures polled beside the socket, so a waiting `get` neither blocks this connection's
//! other requests nor hides a disconnect. A client silent for two heartbeat intervals while it
//! holds leases or waits is presumed dead. When the session ends, for any reason, its waiting
//! futures are dropped (unregistering them) and then its leases are requeued.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use taskmill_protocol::handshake::{self, HandshakeError, MasterConnection};
use taskmill_protocol::{
    max_payload, ClientMessage, CodecError, Delivery, ErrorKind, MasterMessage, Reply, Request,
    Stats, Stream, Wait,
};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::guard::Ticket;
use crate::queue::{PutProgress, PutWaiting, QueueError, SessionId, Step};
use crate::server::{Context, Phases};

type Waiting = Pin<Box<dyn Future<Output = (u64, Reply)> + Send>>;

/// Why a session ended early.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("client did not read its replies for {0:?}")]
    WriteTimeout(Duration),
    #[error("client silent for {0:?} while holding tasks; presumed dead")]
    Silent(Duration),
}

pub(crate) async fn run(
    stream: TcpStream,
    peer: SocketAddr,
    ctx: Arc<Context>,
    phases: Phases,
    (_permit, ticket): (OwnedSemaphorePermit, Ticket),
) {
    taskmill_protocol::tune_socket(&stream);
    let config = &ctx.config;
    // One deadline covers the TLS handshake and ours.
    let handshake = tokio::time::timeout(config.handshake_timeout, async {
        let stream = match &config.tls {
            Some(tls) => tls
                .accept(stream)
                .await
                .map_err(|e| HandshakeError::Codec(CodecError::Io(e)))?,
            None => Stream::Plain(stream),
        };
        handshake::accept(
            stream,
            &config.key,
            config.max_frame,
            config.heartbeat_interval,
        )
        .await
    });
    let outcome = tokio::select! {
        outcome = handshake => outcome,
        () = phases.drain.cancelled() => return,
    };
    // The handshake slot is for unauthenticated connections only: free it either way.
    drop(ticket);
    let cause = match outcome {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(HandshakeError::Closed)) => {
            // Port probes and TCP health checks connect and leave; not worth a warning.
            ctx.counters
                .handshake_failures
                .fetch_add(1, Ordering::Relaxed);
            debug!(%peer, "connection closed before authenticating");
            return;
        }
        Ok(Err(err)) => Err(err.to_string()),
        Err(_) => Err(format!(
            "handshake timed out after {:?}",
            config.handshake_timeout
        )),
    };
    let conn = match cause {
        Ok(conn) => conn,
        Err(cause) => {
            ctx.counters
                .handshake_failures
                .fetch_add(1, Ordering::Relaxed);
            if ctx.guard.failed(peer.ip()) {
                warn!(
                    ip = %peer.ip(),
                    retry_after = ?ctx.guard.cooldown(),
                    "too many failed handshakes from this address; refusing it for a while"
                );
            }
            if ctx.log_limit.allow() {
                warn!(%peer, %cause, "handshake failed");
            } else {
                debug!(%peer, %cause, "handshake failed");
            }
            return;
        }
    };
    ctx.counters.clients.fetch_add(1, Ordering::Relaxed);
    let id = ctx.broker.open_session();
    debug!(%peer, session = id, "client authenticated");
    let now = Instant::now();
    let mut session = Session {
        conn,
        ctx: &ctx,
        id,
        phases,
        last_heard: now,
        last_written: now,
    };
    let result = session.serve().await;
    let requeued = ctx.broker.close_session(id);
    ctx.counters.clients.fetch_sub(1, Ordering::Relaxed);
    match result {
        Ok(()) => debug!(%peer, session = id, requeued, "client disconnected"),
        Err(err) => warn!(%peer, session = id, requeued, cause = %err, "connection closed"),
    }
    if requeued > 0 {
        info!(%peer, requeued, "gave back the tasks the closed connection held");
    }
}

struct Session<'a> {
    conn: MasterConnection<Stream>,
    ctx: &'a Context,
    id: SessionId,
    phases: Phases,
    last_heard: Instant,
    last_written: Instant,
}

enum Event {
    Message(Result<Option<ClientMessage>, CodecError>),
    Done((u64, Reply)),
    Idle,
    Tick,
    Drain,
    Stop,
}

impl Session<'_> {
    async fn serve(&mut self) -> Result<(), SessionError> {
        let mut waiting: FuturesUnordered<Waiting> = FuturesUnordered::new();
        // Replies are fed without flushing while more input is ready, then flushed in one write.
        let mut unflushed = false;
        let mut told_drain = false;
        let beat = self.ctx.config.heartbeat_interval;
        // Checking twice per interval keeps every gap between our frames within one interval.
        let mut ticks = tokio::time::interval_at(Instant::now() + beat / 2, beat / 2);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let event = tokio::select! {
                biased;
                () = self.phases.stop.cancelled() => Event::Stop,
                () = self.phases.drain.cancelled(), if !told_drain => Event::Drain,
                Some(done) = waiting.next(), if !waiting.is_empty() => Event::Done(done),
                msg = self.conn.recv() => Event::Message(msg),
                _ = ticks.tick() => Event::Tick,
                () = std::future::ready(()), if unflushed => Event::Idle,
            };
            match event {
                Event::Idle => {
                    self.flush().await?;
                    unflushed = false;
                }
                Event::Done((id, reply)) => {
                    self.feed(&MasterMessage::Reply { id, reply }).await?;
                    unflushed = true;
                }
                Event::Message(Ok(Some(msg))) => {
                    // Requests already buffered are decoded without touching the socket, which
                    // spends no scheduling budget: charge one per request so a flooding client
                    // yields its thread to the others.
                    tokio::task::consume_budget().await;
                    self.last_heard = Instant::now();
                    let (id, request) = match msg {
                        ClientMessage::Request { id, request } => (id, request),
                        ClientMessage::Heartbeat => continue,
                    };
                    let reply = if request.wait() != Wait::No
                        && waiting.len() >= self.ctx.config.max_waiting
                    {
                        Some(error_reply(
                            ErrorKind::TooManyWaiting,
                            format!(
                                "this connection already has {} waiting requests",
                                waiting.len()
                            ),
                        ))
                    } else {
                        match self.handle(id, request) {
                            Step::Ready(reply) => Some(reply),
                            Step::Wait(fut) => {
                                waiting.push(fut);
                                None
                            }
                        }
                    };
                    if let Some(reply) = reply {
                        self.feed(&MasterMessage::Reply { id, reply }).await?;
                        unflushed = true;
                    }
                }
                Event::Message(Ok(None)) => return Ok(()),
                Event::Message(Err(err)) => return Err(err.into()),
                Event::Tick => {
                    let silent = self.last_heard.elapsed();
                    if silent >= beat * 2
                        && (!waiting.is_empty() || self.ctx.broker.holds_leases(self.id))
                    {
                        return Err(SessionError::Silent(silent));
                    }
                    // Only a client waiting for a reply is listening; heartbeats to an idle one
                    // would pile up unread in its socket buffer.
                    if !waiting.is_empty() && self.last_written.elapsed() >= beat / 2 {
                        self.feed(&MasterMessage::Heartbeat).await?;
                        unflushed = true;
                    }
                }
                Event::Drain => {
                    told_drain = true;
                    self.feed(&MasterMessage::ShuttingDown).await?;
                    unflushed = true;
                }
                Event::Stop => return self.finish(waiting, told_drain).await,
            }
        }
    }

    /// Answers the requests still waiting (they end at once, watching the same token, with
    /// whatever they achieved) and flushes, within the grace period.
    async fn finish(
        &mut self,
        mut waiting: FuturesUnordered<Waiting>,
        told_drain: bool,
    ) -> Result<(), SessionError> {
        let grace = self.ctx.config.shutdown_grace;
        let finish = async {
            if !told_drain {
                self.conn.feed(&MasterMessage::ShuttingDown).await?;
            }
            while let Some((id, reply)) = waiting.next().await {
                self.conn.feed(&MasterMessage::Reply { id, reply }).await?;
            }
            self.conn.flush().await
        };
        match tokio::time::timeout(grace, finish).await {
            Ok(result) => result.map_err(Into::into),
            Err(_) => Err(SessionError::WriteTimeout(grace)),
        }
    }

    async fn feed(&mut self, msg: &MasterMessage) -> Result<(), SessionError> {
        let limit = self.ctx.config.write_timeout;
        let fed = match tokio::time::timeout(limit, self.conn.feed(msg)).await {
            Ok(result) => result,
            Err(_) => return Err(SessionError::WriteTimeout(limit)),
        };
        self.last_written = Instant::now();
        match (fed, msg) {
            // The encoder refused the frame before writing anything: answer with an error instead.
            (Err(CodecError::FrameTooLarge { len, max }), &MasterMessage::Reply { id, .. }) => {
                let reply = error_reply(
                    ErrorKind::ReplyTooLarge,
                    format!("the reply is {len} bytes, over the frame cap of {max}"),
                );
                Box::pin(self.feed(&MasterMessage::Reply { id, reply })).await
            }
            (result, _) => result.map_err(Into::into),
        }
    }

    async fn flush(&mut self) -> Result<(), SessionError> {
        let limit = self.ctx.config.write_timeout;
        match tokio::time::timeout(limit, self.conn.flush()).await {
            Ok(result) => result.map_err(Into::into),
            Err(_) => Err(SessionError::WriteTimeout(limit)),
        }
    }

    /// Carries out one request: the reply now, or a future that yields it once its wait ends.
    fn handle(&self, id: u64, request: Request) -> Step<Reply, Waiting> {
        let broker = &self.ctx.broker;
        let draining = self.phases.drain.is_cancelled();
        // New work stops at the drain; what settles work already handed out runs to the stop.
        let (drain, stop) = (self.phases.drain.clone(), self.phases.stop.clone());
        let result = match request {
            Request::Put { .. } if draining => Err(shutting_down()),
            Request::Get {
                delivery: Delivery::Lease { .. },
                ..
            } if draining => Err(shutting_down()),
            Request::Put { queue, items, wait } => self
                .check_payloads(items.iter())
                .and_then(|()| {
                    broker
                        .put(self.id, &queue, items, wait != Wait::No)
                        .map_err(Into::into)
                })
                .map(|step| later(id, step, wait, drain, put_reply)),
            Request::Complete {
                queue,
                results,
                outcomes,
                wait,
            } => self
                .check_payloads(outcomes.iter().map(|o| &o.result))
                .and_then(|()| {
                    broker
                        .complete(self.id, &queue, &results, outcomes, wait != Wait::No)
                        .map_err(Into::into)
                })
                .map(|step| later(id, step, wait, stop, settled_reply)),
            Request::Get {
                queue,
                max,
                wait,
                delivery,
            } => {
                if max == 0 {
                    return Step::Ready(error_reply(
                        ErrorKind::BadRequest,
                        "max must be at least 1".into(),
                    ));
                }
                let ends = match delivery {
                    Delivery::Lease { .. } => drain,
                    Delivery::Remove => stop,
                };
                let budget = max_payload(self.conn.max_frame());
                broker
                    .get(self.id, &queue, max, budget, delivery, wait != Wait::No)
                    .map_err(Into::into)
                    .map(|step| match step {
                        Step::Ready(tasks) => Step::Ready(Reply::Tasks(tasks)),
                        Step::Wait(w) => Step::Wait(Box::pin(
                            w.wait(deadline(wait), ends)
                                .map(move |t| (id, Reply::Tasks(t))),
                        ) as Waiting),
                    })
            }
            Request::CompleteAndGet {
                queue,
                results,
                outcomes,
                max,
                wait,
                lease_ms,
            } => {
                if max == 0 {
                    return Step::Ready(error_reply(
                        ErrorKind::BadRequest,
                        "max must be at least 1".into(),
                    ));
                }
                let next = NextGet {
                    broker: broker.clone(),
                    session: self.id,
                    queue,
                    max,
                    lease_ms,
                    wait,
                    deadline: deadline(wait),
                    max_frame: self.conn.max_frame(),
                    drain,
                };
                self.check_payloads(outcomes.iter().map(|o| &o.result))
                    .and_then(|()| {
                        broker
                            .complete(self.id, &next.queue, &results, outcomes, wait != Wait::No)
                            .map_err(Into::into)
                    })
                    .map(|step| match step {
                        Step::Ready(p) => next.after(id, p),
                        Step::Wait(w) => Step::Wait(Box::pin(async move {
                            let p = w.wait(next.deadline, stop).await;
                            match next.after(id, p) {
                                Step::Ready(reply) => (id, reply),
                                Step::Wait(get) => get.await,
                            }
                        }) as Waiting),
                    })
            }
            Request::Ack { queue, tasks } => broker
                .ack(self.id, &queue, &tasks)
                .map_err(Into::into)
                .map(|p| Step::Ready(settled_reply(p))),
            Request::Touch {
                queue,
                tasks,
                millis,
            } => broker
                .touch(self.id, &queue, &tasks, millis)
                .map_err(Into::into)
                .map(|p| Step::Ready(settled_reply(p))),
            Request::Nack {
                queue,
                tasks,
                delay_ms,
                reason,
            } => broker
                .nack(
                    self.id,
                    &queue,
                    &tasks,
                    Duration::from_millis(delay_ms),
                    &reason,
                )
                .map_err(Into::into)
                .map(|p| Step::Ready(settled_reply(p))),
            Request::Declare { queue, capacity } => broker
                .declare(&queue, capacity)
                .map_err(Into::into)
                .map(|s| Step::Ready(Reply::Queue(Box::new(s)))),
            Request::Inspect { queue } => broker
                .inspect(&queue)
                .map_err(Into::into)
                .map(|s| Step::Ready(Reply::Queue(Box::new(s)))),
            Request::Stats => Ok(Step::Ready(Reply::Stats(Box::new(self.stats())))),
            Request::Ping => Ok(Step::Ready(Reply::Pong)),
        };
        result.unwrap_or_else(Step::Ready)
    }

    /// Refuses items too large to ever be handed out again in a `Tasks` reply.
    fn check_payloads<'b>(
        &self,
        mut payloads: impl Iterator<Item = &'b Bytes>,
    ) -> Result<(), Reply> {
        let limit = max_payload(self.conn.max_frame());
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

    fn stats(&self) -> Stats {
        let counters = &self.ctx.counters;
        let (queues, completing) = self.ctx.broker.snapshot();
        Stats {
            uptime_ms: self.ctx.broker.uptime().as_millis() as u64,
            clients: counters.clients.load(Ordering::Relaxed),
            connections_total: counters.connections_total.load(Ordering::Relaxed),
            handshake_failures: counters.handshake_failures.load(Ordering::Relaxed),
            completing_clients_total: completing,
            queues,
        }
    }
}

/// The get half of a `CompleteAndGet`, made once its completion has been processed.
struct NextGet {
    broker: crate::queue::Broker,
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
    fn after(self, id: u64, p: PutProgress) -> Step<Reply, Waiting> {
        let worked = move |p: PutProgress, tasks| Reply::Worked {
            done: p.done(),
            pending: p.pending(),
            stale: p.stale,
            tasks,
        };
        if p.pending() > 0 || self.drain.is_cancelled() {
            return Step::Ready(worked(p, Vec::new()));
        }
        // The stale ids share the reply's frame with the tasks.
        let budget = max_payload(self.max_frame).saturating_sub(p.stale.len() * 10);
        let delivery = Delivery::Lease {
            millis: self.lease_ms,
        };
        let wait = self.wait != Wait::No && self.deadline.is_none_or(|d| d > Instant::now());
        let step = self
            .broker
            .get(self.session, &self.queue, self.max, budget, delivery, wait);
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
    step: Step<PutProgress, PutWaiting>,
    wait: Wait,
    stop: CancellationToken,
    reply: fn(PutProgress) -> Reply,
) -> Step<Reply, Waiting> {
    match step {
        Step::Ready(p) => Step::Ready(reply(p)),
        Step::Wait(w) => Step::Wait(Box::pin(
            w.wait(deadline(wait), stop).map(move |p| (id, reply(p))),
        )),
    }
}

fn put_reply(p: PutProgress) -> Reply {
    Reply::Put {
        first_id: p.first_id,
        accepted: p.done(),
    }
}

fn settled_reply(p: PutProgress) -> Reply {
    Reply::Settled {
        done: p.done(),
        pending: p.pending(),
        stale: p.stale,
    }
}

fn deadline(wait: Wait) -> Option<tokio::time::Instant> {
    match wait {
        Wait::Millis(ms) => tokio::time::Instant::now().checked_add(Duration::from_millis(ms)),
        Wait::No | Wait::Forever => None,
    }
}

fn shutting_down() -> Reply {
    error_reply(
        ErrorKind::ShuttingDown,
        "the master is draining before it stops: no new tasks are taken or handed out".into(),
    )
}

fn error_reply(kind: ErrorKind, message: String) -> Reply {
    Reply::Error { kind, message }
}

impl From<QueueError> for Reply {
    fn from(err: QueueError) -> Self {
        let kind = match err {
            QueueError::BadName(_) => ErrorKind::BadQueueName,
            QueueError::TooManyQueues { .. } => ErrorKind::TooManyQueues,
            QueueError::NoSuchQueue(_) => ErrorKind::NoSuchQueue,
        };
        error_reply(kind, err.to_string())
    }
}
