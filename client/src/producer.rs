//! Producing tasks and getting each one's outcome back: [`Submitter`] puts tasks that name a
//! reply queue, each put carried out at most once however often the connection drops;
//! [`Replies`] reads that queue; [`Producer`] puts typed [`Job`]s and hands back a future per
//! task. Every producer has a reply queue of its own, so any number of them share task queues
//! and workers without ever seeing each other's results.
//!
//! ```no_run
//! # use serde::{Deserialize, Serialize};
//! # use taskmill::{Job, Json};
//! # #[derive(Serialize, Deserialize)] struct CountPrimes { below: u64 }
//! # impl Job for CountPrimes { const QUEUE: &'static str = "primes"; type Output = u64; type Codec = Json; }
//! # async fn demo(key: taskmill::AuthKey) -> Result<(), Box<dyn std::error::Error>> {
//! let producer = taskmill::Producer::connect("127.0.0.1:5555", &key).await?;
//! let handle = producer.submit(&CountPrimes { below: 1000 }).await?;
//! println!("{} primes", handle.await?);
//! producer.close().await?;
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use taskmill_protocol::{AuthKey, TaskId, TaskOutcome, TaskReply, Wait};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::client::ClientOptions;
use crate::error::ClientError;
use crate::job::{Codec, Job};
use crate::reconnect::Reconnecting;

/// Items per put request (and fewer if they would pass half the frame cap).
const PUT_BATCH: usize = 65_536;

/// Longest single wait, so a stop is noticed promptly.
const POLL: Duration = Duration::from_millis(250);

/// Replies read per request.
const REPLY_BATCH: u32 = 1024;

/// How long past [`POLL`] a stopping collector waits for its last get's answer.
const STOP_GRACE: Duration = Duration::from_secs(1);

/// How long deleting a reply queue waits for its reader's last wait to end.
const DELETE_PATIENCE: Duration = Duration::from_secs(5);

/// Puts tasks that name a reply queue. Each put is carried out at most once: one whose reply
/// was lost with its connection is sent again with its sequence number, and the master
/// answers with what the first achieved.
#[derive(Debug)]
pub struct Submitter {
    link: Reconnecting,
    producer: u64,
    seq: u64,
    reply_to: Option<String>,
}

impl Submitter {
    /// Puts through `link`; tasks name `reply_to` for their outcomes.
    pub fn new(link: Reconnecting, reply_to: Option<String>) -> Self {
        Self {
            link,
            producer: rand::random(),
            seq: 0,
            reply_to,
        }
    }

    /// The connection, for other calls.
    pub fn link(&mut self) -> &mut Reconnecting {
        &mut self.link
    }

    /// Puts `items` on `queue` in order, waiting for room and reconnecting as needed, until
    /// all are in or `stop` fires. Returns the ids they got as runs of `(first, count)`.
    pub async fn put(
        &mut self,
        queue: &str,
        mut items: Vec<Bytes>,
        stop: &CancellationToken,
    ) -> Result<Vec<(TaskId, u32)>, ClientError> {
        let mut runs = Vec::new();
        while !items.is_empty() {
            let take = self.chunk(&items);
            let batch = items[..take].to_vec();
            let wait = Wait::Millis(POLL.as_millis() as u64);
            let origin = (self.producer, self.seq);
            let reply_to = self.reply_to.as_deref();
            let put = tokio::select! {
                () = stop.cancelled() => return Ok(runs),
                put = async {
                    let client = self.link.client().await?;
                    client.put_once(queue, batch, wait, origin, reply_to).await
                } => put,
            };
            match put {
                Ok(put) => {
                    // What was not accepted goes again as a put of its own.
                    items.drain(..put.accepted as usize);
                    if put.accepted > 0 {
                        runs.push((put.first_id, put.accepted));
                    }
                    self.seq += 1;
                }
                Err(err) => self.link.failed(err).await?,
            }
        }
        Ok(runs)
    }

    /// How many of `items` go in the next put: at most [`PUT_BATCH`], within half a frame.
    fn chunk(&mut self, items: &[Bytes]) -> usize {
        let budget = self
            .link
            .connected()
            .map_or(taskmill_protocol::DEFAULT_MAX_FRAME, |c| c.max_frame())
            / 2;
        let mut bytes = 0;
        let fit = items.iter().take(PUT_BATCH).take_while(|item| {
            bytes += item.len() + 16;
            bytes <= budget
        });
        fit.count().max(1)
    }
}

/// Reads a reply queue: each task's [`TaskReply`], leased until [`Replies::ack`]ed. After a
/// lost connection a reply may come again: callers keep the first.
#[derive(Debug)]
pub struct Replies {
    link: Reconnecting,
    queue: String,
}

impl Replies {
    pub fn new(link: Reconnecting, queue: impl Into<String>) -> Self {
        Self {
            link,
            queue: queue.into(),
        }
    }

    /// The connection, for other calls.
    pub fn link(&mut self) -> &mut Reconnecting {
        &mut self.link
    }

    /// The replies that arrive within `wait`, up to `max`, each with its own id in the reply
    /// queue (none if none come, or the connection was lost and is being made again). Ack
    /// them once handled. An item that is not a reply is acknowledged and dropped with a
    /// warning.
    pub async fn next(
        &mut self,
        max: u32,
        wait: Duration,
    ) -> Result<Vec<(TaskId, TaskReply)>, ClientError> {
        let wait = Wait::Millis(wait.as_millis() as u64);
        let queue = &self.queue;
        let taken = async { self.link.client().await?.get(queue, max, wait).await };
        let items = match taken.await {
            Ok(items) => items,
            Err(err) => {
                self.link.failed(err).await?;
                return Ok(Vec::new());
            }
        };
        let mut replies = Vec::with_capacity(items.len());
        let mut junk = Vec::new();
        for item in items {
            match TaskReply::decode(&item.payload) {
                Ok(reply) => replies.push((item.id, reply)),
                Err(err) => {
                    warn!(queue = %self.queue, cause = %err, "dropping an item of a reply queue");
                    junk.push(item.id);
                }
            }
        }
        if !junk.is_empty() {
            self.ack(junk).await?;
        }
        Ok(replies)
    }

    /// Settles replies read with [`Replies::next`]. `false` if the connection was lost first
    /// (they will be read again).
    pub async fn ack(&mut self, items: Vec<TaskId>) -> Result<bool, ClientError> {
        let queue = &self.queue;
        let acked = async { self.link.client().await?.ack(queue, items).await };
        match acked.await {
            Ok(_) => Ok(true),
            Err(err) => {
                self.link.failed(err).await?;
                Ok(false)
            }
        }
    }
}

/// Why a task gave no result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TaskError {
    /// It went to the dead-letter queue: out of attempts, or failed for good.
    #[error("task {task} failed after {attempts} attempt(s): {reason}")]
    Dead {
        task: TaskId,
        attempts: u32,
        reason: String,
    },
    #[error("the result of task {task} does not decode: {cause}")]
    Decode { task: TaskId, cause: String },
    /// The producer was closed (or dropped) first.
    #[error("the producer closed before task {0} had a result")]
    Closed(TaskId),
}

/// Where a producer connects, and how.
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    pub master: String,
    pub key: AuthKey,
    pub client: ClientOptions,
    /// This producer's reply queue; default `reply.<16 random hex digits>`.
    pub reply_queue: String,
    /// Cap on the delay between reconnect attempts.
    pub max_backoff: Duration,
}

impl ProducerConfig {
    pub fn new(master: impl Into<String>, key: AuthKey) -> Self {
        Self {
            master: master.into(),
            key,
            client: ClientOptions::default(),
            reply_queue: format!("reply.{:016x}", rand::random::<u64>()),
            max_backoff: Duration::from_secs(5),
        }
    }
}

/// Outcomes waited for, and those that came before their task's put was answered.
#[derive(Debug, Default)]
struct Pending {
    waiting: HashMap<TaskId, oneshot::Sender<Result<Bytes, TaskError>>>,
    /// Ids above `highest` (all, before the first put is answered) may be of a put still in
    /// flight; others are duplicates.
    early: HashMap<TaskId, Result<Bytes, TaskError>>,
    highest: Option<TaskId>,
}

impl Pending {
    fn deliver(&mut self, reply: TaskReply) {
        let task = reply.task;
        let outcome = match reply.outcome {
            TaskOutcome::Done(result) => Ok(result),
            TaskOutcome::Dead { attempts, reason } => Err(TaskError::Dead {
                task,
                attempts,
                reason,
            }),
        };
        match self.waiting.remove(&task) {
            Some(tx) => {
                let _ = tx.send(outcome);
            }
            None if self.highest.is_none_or(|h| task > h) => {
                self.early.insert(task, outcome);
            }
            None => {} // a reply seen again after a reconnect
        }
    }
}

/// Puts typed tasks and hands back a future per task for its outcome. Cheap to share: calls
/// take `&self`.
pub struct Producer {
    submitter: tokio::sync::Mutex<Submitter>,
    pending: Arc<Mutex<Pending>>,
    reply_queue: String,
    config: ProducerConfig,
    stop: CancellationToken,
    collector: Option<tokio::task::JoinHandle<()>>,
}

impl Producer {
    /// A producer with default settings for the master at `master`.
    pub async fn connect(master: &str, key: &AuthKey) -> Result<Self, ClientError> {
        Self::with_config(ProducerConfig::new(master, key.clone())).await
    }

    /// Connects (one attempt: an unreachable master is an error now), creates the reply
    /// queue and starts reading it.
    pub async fn with_config(config: ProducerConfig) -> Result<Self, ClientError> {
        let link = |role| {
            let (addr, key) = (&config.master, &config.key);
            Reconnecting::new(role, addr, key, &config.client, config.max_backoff)
        };
        let mut puts = Submitter::new(link("producer"), Some(config.reply_queue.clone()));
        puts.link()
            .client()
            .await?
            .declare(&config.reply_queue, None)
            .await?;
        let mut replies = Replies::new(link("replies"), config.reply_queue.clone());
        replies.link().client().await?;
        let pending = Arc::new(Mutex::new(Pending::default()));
        let stop = CancellationToken::new();
        let collector = tokio::spawn(collect(replies, Arc::clone(&pending), stop.clone()));
        Ok(Self {
            submitter: tokio::sync::Mutex::new(puts),
            pending,
            reply_queue: config.reply_queue.clone(),
            config,
            stop,
            collector: Some(collector),
        })
    }

    /// The queue this producer's outcomes come back on.
    pub fn reply_queue(&self) -> &str {
        &self.reply_queue
    }

    /// Puts one task on `J::QUEUE`, waiting for room; the handle resolves to its outcome.
    pub async fn submit<J: Job>(&self, job: &J) -> Result<TaskHandle<J>, ClientError> {
        let mut handles = self.submit_all(std::slice::from_ref(job)).await?;
        Ok(handles.pop().expect("one task, one handle"))
    }

    /// Puts many tasks on `J::QUEUE` in order (batched, waiting for room); one handle each.
    pub async fn submit_all<J: Job>(&self, jobs: &[J]) -> Result<Vec<TaskHandle<J>>, ClientError> {
        let items = jobs
            .iter()
            .map(<J::Codec as Codec<J>>::encode)
            .collect::<Result<Vec<_>, _>>()?;
        let runs = {
            let mut submitter = self.submitter.lock().await;
            submitter.put(J::QUEUE, items, &self.stop).await?
        };
        let mut handles = Vec::with_capacity(jobs.len());
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        for (first, count) in runs {
            for id in first..first + u64::from(count) {
                let (tx, rx) = oneshot::channel();
                match pending.early.remove(&id) {
                    Some(outcome) => drop(tx.send(outcome)),
                    None => drop(pending.waiting.insert(id, tx)),
                }
                handles.push(TaskHandle {
                    id,
                    rx,
                    _job: PhantomData,
                });
            }
            let last = first + u64::from(count) - 1;
            pending.highest = Some(pending.highest.map_or(last, |h| h.max(last)));
        }
        if handles.len() < jobs.len() {
            return Err(ClientError::ShuttingDown);
        }
        Ok(handles)
    }

    /// Stops reading outcomes (handles still waiting resolve to [`TaskError::Closed`]) and
    /// deletes the reply queue with whatever it still holds.
    pub async fn close(mut self) -> Result<(), ClientError> {
        self.stop.cancel();
        if let Some(collector) = self.collector.take() {
            let _ = collector.await;
        }
        let mut submitter = self.submitter.lock().await;
        delete_reply_queue(submitter.link(), &self.reply_queue).await
    }

    /// The settings this producer was made with.
    pub fn config(&self) -> &ProducerConfig {
        &self.config
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(collector) = self.collector.take() {
            collector.abort();
            warn!(
                queue = %self.reply_queue,
                "a producer dropped without close(): its reply queue stays on the master \
                 (delete it with `taskmill delete`)"
            );
        }
    }
}

/// Deletes a reply queue whose reader has stopped. The reader's last wait may still be
/// registered for a moment after its connection closed (the master refuses the delete as
/// `InUse` meanwhile), so this tries again for up to [`DELETE_PATIENCE`].
pub async fn delete_reply_queue(link: &mut Reconnecting, queue: &str) -> Result<(), ClientError> {
    let deadline = tokio::time::Instant::now() + DELETE_PATIENCE;
    loop {
        let deleted = async { link.client().await?.delete(queue, false).await };
        match deleted.await {
            Ok(_) => return Ok(()),
            Err(ClientError::Server {
                kind: taskmill_protocol::ErrorKind::NoSuchQueue,
                ..
            }) => return Ok(()),
            Err(ClientError::Server {
                kind: taskmill_protocol::ErrorKind::InUse,
                ..
            }) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(err) => return Err(err),
        }
    }
}

/// Reads the reply queue until `stop`, resolving each outcome's handle.
async fn collect(mut replies: Replies, pending: Arc<Mutex<Pending>>, stop: CancellationToken) {
    while !stop.is_cancelled() {
        let read = {
            let read = replies.next(REPLY_BATCH, POLL);
            tokio::pin!(read);
            tokio::select! {
                read = &mut read => Some(read),
                // A get already sent is let finish (it ends within POLL): answered after
                // close() deleted the queue (the delete goes on another connection), it would
                // make the queue again.
                () = stop.cancelled() => tokio::time::timeout(POLL + STOP_GRACE, read).await.ok(),
            }
        };
        let Some(read) = read else { break };
        match read {
            Ok(batch) if batch.is_empty() => {}
            Ok(batch) => {
                let ids = batch.iter().map(|(id, _)| *id).collect();
                {
                    let mut pending = pending.lock().unwrap_or_else(|p| p.into_inner());
                    for (_, reply) in batch {
                        pending.deliver(reply);
                    }
                }
                if let Err(err) = replies.ack(ids).await {
                    warn!(cause = %err, "cannot acknowledge replies; outcomes no longer arrive");
                    break;
                }
            }
            Err(err) => {
                warn!(cause = %err, "cannot read the reply queue; outcomes no longer arrive");
                break;
            }
        }
    }
    // Whoever still waits hears that no outcome is coming.
    let mut pending = pending.lock().unwrap_or_else(|p| p.into_inner());
    for (task, tx) in pending.waiting.drain() {
        let _ = tx.send(Err(TaskError::Closed(task)));
    }
}

/// One task's outcome, to come: `await` it for `J::Output`.
#[derive(Debug)]
pub struct TaskHandle<J: Job> {
    id: TaskId,
    rx: oneshot::Receiver<Result<Bytes, TaskError>>,
    _job: PhantomData<fn() -> J>,
}

impl<J: Job> TaskHandle<J> {
    /// The task's id, as the master gave it.
    pub fn id(&self) -> TaskId {
        self.id
    }
}

impl<J: Job> Future for TaskHandle<J> {
    type Output = Result<J::Output, TaskError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let id = self.id;
        Pin::new(&mut self.rx).poll(cx).map(|got| {
            let result = got.unwrap_or(Err(TaskError::Closed(id)))?;
            <J::Codec as Codec<J::Output>>::decode(&result).map_err(|e| TaskError::Decode {
                task: id,
                cause: e.to_string(),
            })
        })
    }
}
