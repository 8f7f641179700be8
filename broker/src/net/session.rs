//! One client connection: its handshake ([`super::authenticate`]), then requests to replies.
//!
//! Requests that can be answered at once are answered in arrival order. Requests that must wait
//! become futures polled beside the socket, so a waiting `get` neither blocks this connection's
//! other requests nor hides a disconnect. A client silent for two heartbeat intervals while it
//! holds leases or waits is presumed dead. When the client stops sending, at its end of stream
//! or at a frame that ends the connection, every request read before is still answered (those
//! waiting end at once with what they achieved) before the connection closes. When the session
//! ends, for any reason, its waiting futures are dropped (unregistering them) and then its
//! leases are requeued.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use taskmill_protocol::codec::HANDSHAKE_MAX_FRAME;
use taskmill_protocol::handshake::{reject, MasterConnection};
use taskmill_protocol::{
    ClientHandshake, ClientMessage, CodecError, Connection, ErrorKind, MasterHandshake,
    MasterMessage, Rejection, Reply, Request, Stream, Wait,
};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::authenticate::authenticate;
use super::dispatch::{self, error_reply, Caller, Waiting};
use super::durable::Gate;
use super::keys::Grants;
use super::listener::{Admitted, Protocol};
use super::peers::Heard;
use crate::broker::{SessionId, Step};
use crate::master::{Context, Handshake, Phases, STATS_FRESH};

/// The taskmill protocol, as served on the master's main port.
pub(crate) struct Taskmill;

impl Protocol for Taskmill {
    async fn serve(
        self: Arc<Self>,
        ctx: Arc<Context>,
        stream: TcpStream,
        peer: SocketAddr,
        admitted: Admitted,
    ) {
        run(stream, peer, ctx, admitted).await;
    }

    async fn refuse(ctx: Arc<Context>, stream: TcpStream, why: Rejection) {
        // On a TLS port the refusal goes inside TLS, the only place a TLS client can read it
        // (in the clear it would fail the client's TLS handshake, which is not retried).
        let stream = match &ctx.config.tls {
            Some(tls) => match tls.accept(stream).await {
                Ok(stream) => stream,
                Err(_) => return,
            },
            None => Stream::Plain(stream),
        };
        let mut conn =
            Connection::<_, ClientHandshake, MasterHandshake>::new(stream, HANDSHAKE_MAX_FRAME);
        reject(&mut conn, why).await;
        let _ = conn.shutdown().await;
        while let Ok(Some(_)) = conn.recv().await {}
    }
}

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

async fn run(stream: TcpStream, peer: SocketAddr, ctx: Arc<Context>, admitted: Admitted) {
    let phases = ctx.phases.clone();
    let Some((conn, grants, _permit)) = authenticate(&ctx, stream, peer, admitted).await else {
        return;
    };
    ctx.counters.handshake(Handshake::Authenticated);
    ctx.counters.clients.fetch_add(1, Ordering::Relaxed);
    let id = ctx.broker.open_session();
    let key = grants.name().map(|k| k.to_string()).unwrap_or_default();
    debug!(%peer, session = id, key, "client authenticated");
    let now = Instant::now();
    let heard = ctx.peers.open(id, peer);
    let mut session = Session {
        conn,
        ctx: &ctx,
        id,
        ends: phases.child(),
        phases,
        last_heard: now,
        last_written: now,
        heard,
        waiting_bytes: Arc::default(),
        next_stats: now,
        grants,
    };
    let result = session.serve().await;
    let requeued = ctx.broker.close_session(id);
    ctx.peers.close(id);
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
    /// What this session's key may do, as it was when the session authenticated.
    grants: Arc<Grants>,
    ctx: &'a Context,
    id: SessionId,
    phases: Phases,
    /// The master's phases, which this session also ends alone when its client stops
    /// sending: its waiting requests watch these.
    ends: Phases,
    last_heard: Instant,
    last_written: Instant,
    /// `last_heard` for observers, published on each tick rather than per message: a few
    /// seconds' precision is all a dashboard needs, and the hot path stays as it was.
    heard: Heard,
    /// What this connection's waiting requests are charged, in bytes.
    waiting_bytes: Arc<AtomicU64>,
    /// When this connection may next be answered a `Stats`.
    next_stats: Instant,
}

enum Event {
    Message(Result<Option<ClientMessage>, CodecError>),
    Done((u64, Reply)),
    Durable,
    Idle,
    Tick,
    Drain,
    Stop,
}

impl Session<'_> {
    /// What this connection's waiting requests hold, if another one costing `cost` would take
    /// it over its limit. A connection with nothing waiting may always wait once, so any
    /// request the frame cap lets through can wait.
    fn over_waiting_bytes(&self, cost: u64) -> Option<u64> {
        let held = self.waiting_bytes.load(Ordering::Relaxed);
        let over = held > 0 && held.saturating_add(cost) > self.ctx.config.max_waiting_bytes;
        over.then_some(held)
    }

    /// Holds this connection's next `Stats` until [`STATS_FRESH`] after its last, and until the
    /// master's next reading of the queues may begin: a reply can be thousands of times its
    /// 6-byte request, so one connection gets at most ten a second, and all of them together
    /// about ten readings (the wait holds up only the connections that asked).
    async fn pace_stats(&mut self) {
        let reading = Instant::from_std(self.ctx.next_stats_reading());
        tokio::time::sleep_until(self.next_stats.max(reading)).await;
        self.next_stats = Instant::now() + STATS_FRESH;
    }

    async fn serve(&mut self) -> Result<(), SessionError> {
        let mut waiting: FuturesUnordered<Waiting> = FuturesUnordered::new();
        let mut gate = Gate::new(&*self.ctx.store);
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
                () = gate.moved() => Event::Durable,
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
                    unflushed |= self.answer(&mut gate, id, reply).await?;
                }
                Event::Durable => {
                    for (id, reply) in gate.release() {
                        self.feed(&MasterMessage::Reply { id, reply }).await?;
                        unflushed = true;
                    }
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
                    if matches!(request, Request::Stats) {
                        self.pace_stats().await;
                    }
                    let waits = request.wait() != Wait::No;
                    let cost = if waits {
                        dispatch::waiting_cost(&request)
                    } else {
                        0
                    };
                    let reply = if waits && waiting.len() >= self.ctx.config.max_waiting {
                        Some(error_reply(
                            ErrorKind::TooManyWaiting,
                            format!(
                                "this connection already has {} waiting requests",
                                waiting.len()
                            ),
                        ))
                    } else if let Some(held) = self.over_waiting_bytes(cost) {
                        Some(error_reply(
                            ErrorKind::TooManyWaiting,
                            format!(
                                "this connection's waiting requests hold {held} bytes; this one \
                                 would add {cost}, over the limit of {} (--max-waiting-bytes)",
                                self.ctx.config.max_waiting_bytes
                            ),
                        ))
                    } else {
                        let caller = Caller {
                            ctx: self.ctx,
                            session: self.id,
                            max_frame: self.conn.max_frame(),
                            phases: &self.ends,
                            grants: &self.grants,
                        };
                        match dispatch::handle(&caller, id, request) {
                            Step::Ready(reply) => Some(reply),
                            Step::Wait(fut) => {
                                // Charged until it ends, however it ends.
                                let memory = self.ctx.broker.memory();
                                let charge = memory.wait(&self.waiting_bytes, cost);
                                waiting.push(Box::pin(fut.map(move |done| {
                                    drop(charge);
                                    done
                                })));
                                None
                            }
                        }
                    };
                    if let Some(reply) = reply {
                        unflushed |= self.answer(&mut gate, id, reply).await?;
                    }
                }
                Event::Message(Ok(None)) => {
                    // A client that shut down its sending side may still read: answer it.
                    if let Err(err) = self.answer_read(waiting, gate).await {
                        debug!(session = self.id, cause = %err, "replies after the end of stream not delivered");
                    }
                    return Ok(());
                }
                Event::Message(Err(err)) => {
                    // What was read before the bad frame was carried out: say so before closing.
                    if let Err(cause) = self.answer_read(waiting, gate).await {
                        debug!(session = self.id, %cause, "replies before a fatal frame not delivered");
                    }
                    return Err(err.into());
                }
                Event::Tick => {
                    self.heard.set(self.last_heard.into_std());
                    let silent = self.last_heard.elapsed();
                    let expecting = !waiting.is_empty() || !gate.is_empty();
                    if silent >= beat * 2 && (expecting || self.ctx.broker.holds_leases(self.id)) {
                        return Err(SessionError::Silent(silent));
                    }
                    // Only a client waiting for a reply is listening; heartbeats to an idle one
                    // would pile up unread in its socket buffer.
                    if expecting && self.last_written.elapsed() >= beat / 2 {
                        self.feed(&MasterMessage::Heartbeat).await?;
                        unflushed = true;
                    }
                }
                Event::Drain => {
                    told_drain = true;
                    self.feed(&MasterMessage::ShuttingDown).await?;
                    unflushed = true;
                }
                Event::Stop => return self.finish(waiting, gate, told_drain).await,
            }
        }
    }

    /// Sends `reply` now, or holds it until what it acknowledges is durable. True if
    /// something was fed.
    async fn answer(
        &mut self,
        gate: &mut Gate,
        id: u64,
        reply: Reply,
    ) -> Result<bool, SessionError> {
        let position = self.ctx.store.position();
        match gate.admit(position, id, reply) {
            Some((id, reply)) => {
                self.feed(&MasterMessage::Reply { id, reply }).await?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Answers the requests still waiting (they end at once, watching the same token, with
    /// whatever they achieved) once what they acknowledge is durable, and flushes, within the
    /// grace period.
    async fn finish(
        &mut self,
        waiting: FuturesUnordered<Waiting>,
        gate: Gate,
        told_drain: bool,
    ) -> Result<(), SessionError> {
        let grace = self.ctx.config.shutdown_grace;
        let finish = async {
            if !told_drain {
                self.feed(&MasterMessage::ShuttingDown).await?;
            }
            self.answer_rest(waiting, gate).await
        };
        match tokio::time::timeout(grace, finish).await {
            Ok(result) => result,
            Err(_) => Err(SessionError::WriteTimeout(grace)),
        }
    }

    /// For a client that has stopped sending: ends this session's waiting requests at once,
    /// with what they achieved, and answers every request read, within the write timeout.
    async fn answer_read(
        &mut self,
        waiting: FuturesUnordered<Waiting>,
        gate: Gate,
    ) -> Result<(), SessionError> {
        self.ends.end();
        let limit = self.ctx.config.write_timeout;
        match tokio::time::timeout(limit, self.answer_rest(waiting, gate)).await {
            Ok(result) => result,
            Err(_) => Err(SessionError::WriteTimeout(limit)),
        }
    }

    /// Sends the replies of the requests still waiting, which must be about to end, and of
    /// those held until durable, once they are; then flushes.
    async fn answer_rest(
        &mut self,
        mut waiting: FuturesUnordered<Waiting>,
        mut gate: Gate,
    ) -> Result<(), SessionError> {
        while let Some((id, reply)) = waiting.next().await {
            self.answer(&mut gate, id, reply).await?;
        }
        while !gate.is_empty() {
            gate.moved().await;
            for (id, reply) in gate.release() {
                self.feed(&MasterMessage::Reply { id, reply }).await?;
            }
        }
        self.flush().await
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
}
