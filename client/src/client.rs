//! `Client`: connect, authenticate, then typed calls, one request at a time, or pipelined with
//! [`Client::submit`] and [`Client::next_reply`].
//!
//! Used by the worker, the master's job runner, the tests and users' programs. Every network
//! wait is bounded: the handshake by `connect_timeout`, a request by its own wait plus
//! `request_timeout`, and any wait by the master's liveness: while waiting for a reply the
//! client sends heartbeats, and a master silent for two heartbeat intervals is presumed gone.
//! An idle client sends nothing; one that holds leases while busy should call
//! [`Client::heartbeat`] at least once per [`Client::heartbeat_interval`].

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};

use taskmill_protocol::handshake::{self, ClientConnection};
use taskmill_protocol::{
    AuthKey, ClientMessage, Delivery, MasterMessage, Outcome, Reply, Request, Stream, Task, TaskId,
    TlsClient, Wait,
};

use crate::error::ClientError;

/// Timeouts and TLS for a [`Client`].
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Bound on TCP connect plus the whole handshake (TLS included).
    pub connect_timeout: Duration,
    /// Bound on one request's round trip, on top of the time the request itself may wait.
    pub request_timeout: Duration,
    /// Speak TLS to the master (which must have been started with a certificate).
    pub tls: Option<TlsClient>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            tls: None,
        }
    }
}

/// What a `put` achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PutOutcome {
    /// Ids of the accepted items are `first_id..first_id + accepted`.
    pub first_id: TaskId,
    /// How many items, from the front of the batch, were queued. Fewer than sent means the
    /// queue stayed full until the wait ended (Python's `Full`).
    pub accepted: u32,
}

/// What an `ack` or `complete` achieved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settled {
    pub done: u32,
    /// Tasks this connection no longer held (already settled, or requeued to someone else).
    pub stale: Vec<TaskId>,
    /// Tasks at the end of the batch left untouched because the results queue stayed full.
    pub pending: u32,
}

/// What a `complete_and_get` achieved: the completion, then the tasks leased next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Worked {
    pub settled: Settled,
    /// Empty if the wait ended with the queue empty, or no get was made (see
    /// [`Request::CompleteAndGet`]).
    pub tasks: Vec<Task>,
}

impl Worked {
    /// Reads the reply to a pipelined `CompleteAndGet`, `Complete` (which leased nothing) or
    /// leasing `Get` (which settled nothing).
    pub fn from_reply(reply: Reply) -> Result<Self, ClientError> {
        match server_error(reply)? {
            Reply::Worked {
                done,
                stale,
                pending,
                tasks,
            } => Ok(Self {
                settled: Settled {
                    done,
                    stale,
                    pending,
                },
                tasks,
            }),
            Reply::Tasks(tasks) => Ok(Self {
                settled: Settled::default(),
                tasks,
            }),
            reply @ Reply::Settled { .. } => Ok(Self {
                settled: Settled::from_reply(reply)?,
                tasks: Vec::new(),
            }),
            other => Err(unexpected("Worked", &other)),
        }
    }
}

impl Settled {
    pub(crate) fn from_reply(reply: Reply) -> Result<Self, ClientError> {
        match reply {
            Reply::Settled {
                done,
                stale,
                pending,
            } => Ok(Self {
                done,
                stale,
                pending,
            }),
            other => Err(unexpected("Settled", &other)),
        }
    }
}

/// An authenticated connection to a master.
#[derive(Debug)]
pub struct Client {
    conn: ClientConnection<Stream>,
    peer: String,
    next_id: u64,
    /// Requests sent whose replies have not been read yet.
    in_flight: usize,
    /// Replies to pipelined requests read while waiting for another one.
    stashed: VecDeque<(u64, Reply)>,
    options: ClientOptions,
    /// The master's liveness interval, from its welcome.
    heartbeat: Duration,
    last_sent: Instant,
    shutting_down: bool,
}

impl Client {
    /// Connects to `addr` (`host:port`) and authenticates with `key`.
    pub async fn connect(addr: &str, key: &AuthKey) -> Result<Self, ClientError> {
        Self::connect_with(addr, key, &ClientOptions::default()).await
    }

    pub async fn connect_with(
        addr: &str,
        key: &AuthKey,
        options: &ClientOptions,
    ) -> Result<Self, ClientError> {
        let attempt = async {
            let stream = TcpStream::connect(addr)
                .await
                .map_err(|cause| ClientError::Connect {
                    addr: addr.to_owned(),
                    cause,
                })?;
            taskmill_protocol::tune_socket(&stream);
            let stream = match &options.tls {
                Some(tls) => tls
                    .connect(stream)
                    .await
                    .map_err(|cause| ClientError::Tls {
                        addr: addr.to_owned(),
                        cause,
                    })?,
                None => Stream::Plain(stream),
            };
            Ok::<_, ClientError>(handshake::connect(stream, key, addr).await?)
        };
        let (conn, heartbeat) = timeout(options.connect_timeout, attempt)
            .await
            .map_err(|_| ClientError::Timeout(options.connect_timeout, "connecting"))??;
        Ok(Self {
            conn,
            peer: addr.to_owned(),
            next_id: 1,
            in_flight: 0,
            stashed: VecDeque::new(),
            options: options.clone(),
            heartbeat,
            last_sent: Instant::now(),
            shutting_down: false,
        })
    }

    /// The address this client connected to.
    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// The frame cap the master set for this session; batches must encode below it.
    pub fn max_frame(&self) -> usize {
        self.conn.max_frame()
    }

    /// True once the master has announced that it is draining before it stops: it refuses new
    /// work from now on, so a worker should finish what it holds and reconnect later.
    pub fn master_shutting_down(&self) -> bool {
        self.shutting_down
    }

    /// The master's liveness interval: a client holding leases must send something (a request
    /// or [`Client::heartbeat`]) at least this often, or the master presumes it dead after two
    /// intervals and requeues its tasks.
    pub fn heartbeat_interval(&self) -> Duration {
        self.heartbeat
    }

    /// Tells the master this client is alive, e.g. during a long computation.
    pub async fn heartbeat(&mut self) -> Result<(), ClientError> {
        let limit = self.options.request_timeout;
        timeout(limit, self.conn.send(&ClientMessage::Heartbeat))
            .await
            .map_err(|_| ClientError::Timeout(limit, "sending a heartbeat"))??;
        self.last_sent = Instant::now();
        Ok(())
    }

    /// Sends one request and waits for its reply. `Reply::Error` becomes `ClientError::Server`.
    /// Replies to requests pipelined earlier that arrive meanwhile are kept for
    /// [`Client::next_reply`].
    pub async fn request(&mut self, request: Request) -> Result<Reply, ClientError> {
        let bound = match request.wait() {
            Wait::No => Some(self.options.request_timeout),
            Wait::Millis(ms) => Some(self.options.request_timeout + Duration::from_millis(ms)),
            Wait::Forever => None,
        };
        let exchange = async {
            let id = self.submit(request).await?;
            loop {
                let (got, reply) = self.receive().await?;
                if got == id {
                    return server_error(reply);
                }
                self.stashed.push_back((got, reply));
            }
        };
        match bound {
            Some(bound) => timeout(bound, exchange)
                .await
                .map_err(|_| ClientError::Timeout(bound, "waiting for a reply"))?,
            None => exchange.await,
        }
    }

    /// Sends `request` without waiting for its reply and returns its id; read the reply with
    /// [`Client::next_reply`]. Pipelining lets a worker keep tasks coming while it computes.
    pub async fn submit(&mut self, request: Request) -> Result<u64, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        let limit = self.options.request_timeout;
        timeout(
            limit,
            self.conn.send(&ClientMessage::Request { id, request }),
        )
        .await
        .map_err(|_| ClientError::Timeout(limit, "sending a request"))??;
        self.last_sent = Instant::now();
        self.in_flight += 1;
        Ok(id)
    }

    /// The next reply to a submitted request, in the order the master answers (a request that
    /// waits can be overtaken). The reply is returned as sent, `Reply::Error` included. Waits
    /// as long as the master is alive: bound it by the longest wait in flight.
    pub async fn next_reply(&mut self) -> Result<(u64, Reply), ClientError> {
        match self.stashed.pop_front() {
            Some(reply) => Ok(reply),
            None => self.receive().await,
        }
    }

    /// Requests sent whose replies have not been returned yet.
    pub fn in_flight(&self) -> usize {
        self.in_flight + self.stashed.len()
    }

    /// Reads until the next reply, heartbeating while the master works on it and giving up
    /// on a master silent for two heartbeat intervals.
    async fn receive(&mut self) -> Result<(u64, Reply), ClientError> {
        if self.in_flight == 0 {
            return Err(ClientError::Protocol(
                "no request is waiting for a reply".into(),
            ));
        }
        let heartbeat = self.heartbeat;
        let mut last_heard = Instant::now();
        loop {
            let received = tokio::select! {
                biased;
                received = self.conn.recv() => received,
                () = tokio::time::sleep_until(self.last_sent + heartbeat) => {
                    self.conn.send(&ClientMessage::Heartbeat).await?;
                    self.last_sent = Instant::now();
                    continue;
                }
                () = tokio::time::sleep_until(last_heard + heartbeat * 2) => {
                    return Err(ClientError::Timeout(heartbeat * 2, "with no word from the master"));
                }
            };
            last_heard = Instant::now();
            match received {
                Ok(Some(MasterMessage::Reply { id, reply })) if id < self.next_id => {
                    self.in_flight -= 1;
                    return Ok((id, reply));
                }
                Ok(Some(MasterMessage::Reply { id, .. })) => {
                    return Err(ClientError::Protocol(format!(
                        "reply for request {id}, which was never sent"
                    )))
                }
                Ok(Some(MasterMessage::Heartbeat)) => {}
                Ok(Some(MasterMessage::ShuttingDown)) => self.shutting_down = true,
                Ok(None) if self.shutting_down => return Err(ClientError::ShuttingDown),
                Ok(None) => return Err(ClientError::Closed("")),
                Err(err) if self.shutting_down => {
                    tracing::debug!(cause = %err, "connection ended after shutdown notice");
                    return Err(ClientError::ShuttingDown);
                }
                Err(err) => return Err(err.into()),
            }
        }
    }

    /// Appends `items` to `queue` in order. See [`PutOutcome`] for a partial put.
    pub async fn put(
        &mut self,
        queue: &str,
        items: Vec<Bytes>,
        wait: Wait,
    ) -> Result<PutOutcome, ClientError> {
        let request = Request::Put {
            queue: queue.to_owned(),
            items,
            wait,
            reply_to: None,
        };
        match self.request(request).await? {
            Reply::Put { first_id, accepted } => Ok(PutOutcome { first_id, accepted }),
            other => Err(unexpected("Put", &other)),
        }
    }

    /// [`Client::put`] carried out at most once: sending it again with the same `producer`
    /// and `seq`, after a connection died before the reply, gets the first one's outcome
    /// instead of queueing the items twice (see [`Request::PutOnce`]). While the first is
    /// still waiting for room the master answers `InProgress`, a transient error: retry.
    /// With `reply_to`, each task names that queue for its outcome ([`Task::reply_to`]).
    pub async fn put_once(
        &mut self,
        queue: &str,
        items: Vec<Bytes>,
        wait: Wait,
        (producer, seq): (u64, u64),
        reply_to: Option<&str>,
    ) -> Result<PutOutcome, ClientError> {
        let request = Request::PutOnce {
            queue: queue.to_owned(),
            items,
            wait,
            producer,
            seq,
            reply_to: reply_to.map(str::to_owned),
        };
        match self.request(request).await? {
            Reply::Put { first_id, accepted } => Ok(PutOutcome { first_id, accepted }),
            other => Err(unexpected("Put", &other)),
        }
    }

    /// Takes up to `max` tasks under a lease of the master's default length: settle each with
    /// [`Client::complete`] or [`Client::ack`]; if the lease expires or this connection ends
    /// first they go back to the queue. An empty vector means the queue stayed empty for the
    /// whole wait (Python's `Empty`).
    pub async fn get(
        &mut self,
        queue: &str,
        max: u32,
        wait: Wait,
    ) -> Result<Vec<Task>, ClientError> {
        self.get_with(queue, max, wait, Delivery::Lease { millis: None })
            .await
    }

    /// Takes up to `max` items and removes them at once, like Python's `Queue.get`.
    pub async fn take(
        &mut self,
        queue: &str,
        max: u32,
        wait: Wait,
    ) -> Result<Vec<Task>, ClientError> {
        self.get_with(queue, max, wait, Delivery::Remove).await
    }

    /// `get` or `take` with an explicit delivery, e.g. a lease of a chosen length.
    pub async fn get_with(
        &mut self,
        queue: &str,
        max: u32,
        wait: Wait,
        delivery: Delivery,
    ) -> Result<Vec<Task>, ClientError> {
        let request = Request::Get {
            queue: queue.to_owned(),
            max,
            wait,
            delivery,
        };
        match self.request(request).await? {
            Reply::Tasks(tasks) => Ok(tasks),
            other => Err(unexpected("Tasks", &other)),
        }
    }

    /// Settles leased tasks without results.
    pub async fn ack(&mut self, queue: &str, tasks: Vec<TaskId>) -> Result<Settled, ClientError> {
        let request = Request::Ack {
            queue: queue.to_owned(),
            tasks,
        };
        self.settle(request).await
    }

    /// Extends leases this connection holds to `millis` from now (`None`: each lease's own
    /// length). `done` counts the leases extended; `stale` lists those no longer held.
    pub async fn touch(
        &mut self,
        queue: &str,
        tasks: Vec<TaskId>,
        millis: Option<u64>,
    ) -> Result<Settled, ClientError> {
        let request = Request::Touch {
            queue: queue.to_owned(),
            tasks,
            millis,
        };
        self.settle(request).await
    }

    /// Gives leased tasks back, to be redelivered after `delay` (or dead-lettered with
    /// `reason` once they have used up their attempts).
    pub async fn nack(
        &mut self,
        queue: &str,
        tasks: Vec<TaskId>,
        delay: Duration,
        reason: &str,
    ) -> Result<Settled, ClientError> {
        let request = Request::Nack {
            queue: queue.to_owned(),
            tasks,
            delay_ms: delay.as_millis().try_into().unwrap_or(u64::MAX),
            reason: reason.to_owned(),
            fatal: false,
        };
        self.settle(request).await
    }

    /// Gives leased tasks up for good: they go to the dead-letter queue at once, with
    /// `reason`, whatever attempts they have left (and their reply queues are told).
    pub async fn bury(
        &mut self,
        queue: &str,
        tasks: Vec<TaskId>,
        reason: &str,
    ) -> Result<Settled, ClientError> {
        let request = Request::Nack {
            queue: queue.to_owned(),
            tasks,
            delay_ms: 0,
            reason: reason.to_owned(),
            fatal: true,
        };
        self.settle(request).await
    }

    /// Settles leased tasks of `queue` and appends their results to `results`, atomically per
    /// task.
    pub async fn complete(
        &mut self,
        queue: &str,
        results: &str,
        outcomes: Vec<Outcome>,
        wait: Wait,
    ) -> Result<Settled, ClientError> {
        let request = Request::Complete {
            queue: queue.to_owned(),
            results: results.to_owned(),
            outcomes,
            wait,
            reply: false,
        };
        self.settle(request).await
    }

    /// [`Client::complete`] into the tasks' reply queue (`results` wrapped in
    /// [`taskmill_protocol::TaskReply`]s): if that queue no longer exists, its producer has
    /// gone, and the tasks are settled with their results dropped.
    pub async fn complete_replies(
        &mut self,
        queue: &str,
        reply_queue: &str,
        outcomes: Vec<Outcome>,
        wait: Wait,
    ) -> Result<Settled, ClientError> {
        let request = Request::Complete {
            queue: queue.to_owned(),
            results: reply_queue.to_owned(),
            outcomes,
            wait,
            reply: true,
        };
        self.settle(request).await
    }

    /// [`Client::complete`], then lease up to `max` more tasks of `queue`, in one round trip:
    /// the loop of a worker that handles one task (or one batch) at a time. `wait` bounds both
    /// parts together.
    pub async fn complete_and_get(
        &mut self,
        queue: &str,
        results: &str,
        outcomes: Vec<Outcome>,
        max: u32,
        wait: Wait,
    ) -> Result<Worked, ClientError> {
        let request = Request::CompleteAndGet {
            queue: queue.to_owned(),
            results: results.to_owned(),
            outcomes,
            max,
            wait,
            lease_ms: None,
            reply: false,
        };
        Worked::from_reply(self.request(request).await?)
    }

    pub(crate) async fn settle(&mut self, request: Request) -> Result<Settled, ClientError> {
        Settled::from_reply(self.request(request).await?)
    }
}

/// `Reply::Error` as `ClientError::Server`, any other reply as it is.
pub(crate) fn server_error(reply: Reply) -> Result<Reply, ClientError> {
    match reply {
        Reply::Error { kind, message } => Err(ClientError::Server { kind, message }),
        reply => Ok(reply),
    }
}

pub(crate) fn unexpected(wanted: &str, got: &Reply) -> ClientError {
    ClientError::Protocol(format!("expected a {wanted} reply, got {got:?}"))
}
