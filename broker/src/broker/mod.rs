//! Queue state: named bounded queues, FIFO waiters, and leases owned by sessions. No I/O.
//!
//! Each queue has its own `std::sync::Mutex`, never held across an `.await`: every operation is
//! a short synchronous step, and connections working on different queues never wait for each
//! other. An operation that spans two queues (a completion settles a lease in one and appends
//! its result to the other) takes both locks in the queues' creation order, so no two
//! operations can deadlock. The registry of names is read-mostly and is never locked while a
//! queue lock is held.
//!
//! An operation that must wait registers a waiter and returns a future; whoever makes progress
//! possible (a put, a get, a requeue) hands items or room to waiters in arrival order while
//! holding the queue's lock, so no waiter is ever overtaken and nothing is lost between a
//! wake-up and a retry. The one exception is a completion waiting for room in another queue
//! than the one holding its leases: whoever frees room cannot take the second lock out of
//! order, so it wakes the waiter, which stays first in line and fills itself under both locks.
//! Waiting futures clean up after themselves when dropped, so a client that disconnects while
//! waiting leaves nothing behind.
//!
//! Leases expire: [`Broker::tick`], driven by a timer task, requeues tasks whose lease ran out
//! and returns nacked tasks whose delay is over. A task handed out `max_attempts` times and
//! given back again goes to `<queue>.dead` instead of round the fleet forever. That move takes
//! the two locks one after the other (the dead-letter queue may be created by it, or rank
//! lower); a shared gate that snapshots take exclusively keeps any image from seeing it half
//! done.
//!
//! This module is the single owner of queue contents.
//!
//! # Layout
//! - this file: [`Broker`] and its public operations.
//! - `registry`: queue names, the lock per queue and the order two are taken in, and the
//!   `Locked` guard that publishes on unlock what others read without the lock.
//! - `queue`: one queue under its lock: items, capacity, take, fill, and the pump that serves
//!   waiters.
//! - `item`: how a queued task is stored.
//! - `lease`: leases, their expiry, touch and nack, and each session's list.
//! - `waiter`: waiting gets, puts and completions, and the futures that hold their place.
//! - `progress`: how far a put or completion got.
//! - [`memory`]: the memory budget every item held and every waiting request is charged to.
//! - `dead`: dead-lettering tasks that used up their attempts, telling their reply queues,
//!   and kicking dead letters back.
//! - `route`: which reply queue each task's outcome goes to.
//! - `admin`: operations for people and scripts: peek, purge, delete.
//! - `timer`: the timer task that expires leases and returns delayed tasks.
//! - [`report`]: what observers read beyond the wire's stats: counters by kind, sampled
//!   latency, sessions' leases.

mod admin;
mod dead;
mod image;
mod item;
pub mod journal;
mod lease;
pub mod memory;
mod origin;
mod progress;
mod queue;
mod registry;
mod replay;
pub mod report;
mod route;
mod timer;
mod waiter;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use bytes::Bytes;
use rustc_hash::FxHashSet;
use taskmill_protocol::{Delivery, Outcome, QueueStats, Task, TaskId};
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant as Deadline;

pub use image::{ImageItem, ImageLease, QueueImage};
pub use lease::MAX_LEASE;
pub use memory::{item_cost, Memory, MemoryUse, WaitCharge};
pub use origin::{Origin, Outcome as PutOutcome};
pub use progress::{Progress, Step};
#[cfg(test)]
pub(crate) use replay::QueueDump;
pub use replay::ReplayError;
pub use route::Route;
pub use waiter::{GetWaiting, PutWaiting};

use crate::store::{Store, StoreError};
use journal::Change;
use lease::GiveBack;
use progress::{settled, Batch};
use queue::normalise_capacity;
use registry::{lock_unpoisoned, valid_name, Registry, Slot, NEVER};
use waiter::{CrossQueue, GetWaiter, PutWaiter};

/// Longest queue name accepted.
pub const MAX_QUEUE_NAME: usize = 128;

/// Identity of one authenticated connection, for lease ownership.
pub type SessionId = u64;

/// Limits that apply to every queue.
#[derive(Debug, Clone, Copy)]
pub struct QueueLimits {
    /// Capacity of a queue created on first use; `None` is unbounded.
    pub default_capacity: Option<u64>,
    /// Most queues that may exist at once (dead-letter queues not counted).
    pub max_queues: usize,
    /// Lease length when a `get` does not choose one.
    pub lease_timeout: Duration,
    /// Deliveries a task gets; given back after the last one, it is dead-lettered.
    pub max_attempts: u32,
    /// The memory budget in bytes ([`memory`]): past it, new tasks and results are refused
    /// with [`QueueError::MemoryFull`]. `u64::MAX` for none.
    pub max_memory: u64,
}

/// Why a queue operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    #[error(
        "bad queue name {0:?}: 1 to {MAX_QUEUE_NAME} bytes of A-Z a-z 0-9 . _ : -, then \
         perhaps `.dead`"
    )]
    BadName(String),
    #[error("cannot create queue {name:?}: the master already has {max} queues")]
    TooManyQueues { name: String, max: usize },
    #[error("no queue named {0:?}")]
    NoSuchQueue(String),
    #[error("a put from this producer with this sequence number is still waiting for room")]
    InProgress,
    #[error("queue {0:?} holds items")]
    NotEmpty(String),
    #[error("queue {0:?} is in use: tasks of it are leased, or requests wait on it")]
    InUse(String),
    #[error(
        "the master's memory budget (--max-memory, {budget} bytes) is spent: no new tasks or \
         results until tasks are settled or taken; retry later"
    )]
    MemoryFull { budget: u64 },
}

/// What [`Broker::insert`] did: its step, or nothing, because the queue was deleted after it
/// was looked up (the batch comes back to be tried on the queue by that name now).
enum Inserted {
    Done(Step<Progress, PutWaiting>),
    Deleted(Batch),
}

/// A cloneable handle to all queues.
#[derive(Debug, Clone)]
pub struct Broker {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    limits: QueueLimits,
    registry: RwLock<Registry>,
    /// Held shared by an operation that may move tasks to a dead-letter queue, from before it
    /// locks their queue until the letters are in the dead-letter queue; a capture holds it
    /// exclusively. So no image sees a task that has left its queue and not yet reached the
    /// dead-letter queue (the two locks are not held together: the dead-letter queue may rank
    /// lower, or not exist yet).
    burials: RwLock<()>,
    /// Ids are reserved under the lock of the queue they go into, so that within one queue
    /// they grow with put order: giving items back in order relies on it.
    next_task: AtomicU64,
    next_session: AtomicU64,
    /// Sessions that have completed a task. Each queue remembers which of its sessions it has
    /// reported, so this lock is taken about once per session and queue, not per completion.
    completers: Mutex<Completers>,
    /// The origin of the queues' `due` times.
    epoch: Deadline,
    /// What every queue's items and every waiting request are charged against.
    memory: Arc<Memory>,
    /// Where changes are recorded, once the store has restored the queues; never set for a
    /// store that keeps no records.
    store: OnceLock<Arc<dyn Store>>,
}

#[derive(Debug, Default)]
struct Completers {
    open: FxHashSet<SessionId>,
    total: u64,
}

impl Broker {
    /// The queues kept in `store`, every change to them recorded there.
    ///
    /// The store first restores what it keeps; then every change is recorded there, and the
    /// leases the restored queues held end (no connection survives a restart).
    pub fn open(limits: QueueLimits, store: Arc<dyn Store>) -> Result<Self, StoreError> {
        let broker = Self::new(limits);
        if !store.records() {
            return Ok(broker);
        }
        store.restore(&broker)?;
        broker.attach(Arc::clone(&store));
        let released = broker.release_leases();
        if released > 0 {
            tracing::info!(
                released,
                "tasks leased when the master stopped are queued again"
            );
        }
        store.start(&broker);
        Ok(broker)
    }

    /// Records every change from now on in `store`.
    fn attach(&self, store: Arc<dyn Store>) {
        if self.shared.store.set(Arc::clone(&store)).is_err() {
            return;
        }
        for slot in self.slots() {
            self.lock(&slot).journal.attach(Arc::clone(&store));
        }
    }

    /// Empty queues kept in memory only.
    pub fn new(limits: QueueLimits) -> Self {
        Self {
            shared: Arc::new(Shared {
                limits,
                registry: RwLock::default(),
                burials: RwLock::default(),
                next_task: AtomicU64::new(0),
                next_session: AtomicU64::new(0),
                completers: Mutex::default(),
                epoch: Deadline::now(),
                memory: Arc::new(Memory::new(limits.max_memory)),
                store: OnceLock::new(),
            }),
        }
    }

    /// Reserves `n` consecutive task ids. Call with the lock of the queue they go into held.
    fn reserve(&self, n: usize) -> TaskId {
        self.shared.next_task.fetch_add(n as u64, Relaxed)
    }

    /// Registers a connection that may hold leases.
    pub fn open_session(&self) -> SessionId {
        self.shared.next_session.fetch_add(1, Relaxed) + 1
    }

    /// Ends a connection: every task it still leases goes back to the front of its queue.
    /// Call after dropping the session's waiting futures. Returns how many were requeued.
    pub fn close_session(&self, session: SessionId) -> usize {
        let mut requeued = 0;
        for slot in self.slots() {
            let _burying = self.burying();
            let mut queue = self.lock(&slot);
            let Some(leases) = queue.sessions.remove(&session) else {
                continue;
            };
            // Entries for leases since settled, or since leased again by another session, are
            // skipped by the ownership check.
            let back: Vec<_> = leases
                .held
                .into_iter()
                .filter_map(|task| queue.unlease(task, Some(session)))
                .map(|leased| (leased.item, GiveBack::ConnectionClosed))
                .collect();
            requeued += back.len();
            let buried = queue.give_back_all(back, slot.buries());
            drop(queue);
            self.bury(&slot, buried);
        }
        lock_unpoisoned(&self.shared.completers)
            .open
            .remove(&session);
        requeued
    }

    /// True while `session` holds at least one lease. Sessions ask this of themselves (a silent
    /// one is dropped only if it holds leases), so it skips, without locking them, the queues
    /// that have no lease at all: a lease always has an expiry entry, so such a queue is never
    /// due.
    pub fn holds_leases(&self, session: SessionId) -> bool {
        self.slots().iter().any(|slot| {
            slot.due.load(Relaxed) != NEVER
                && self
                    .lock(slot)
                    .sessions
                    .get(&session)
                    .is_some_and(|s| s.live > 0)
        })
    }

    /// Leases outstanding across all queues (what a draining master waits for). Every queue
    /// is locked at once, in rank order, so a completion moving a result into a queue where it
    /// is leased at once cannot be missed between two queues' counts.
    pub fn leased_total(&self) -> u64 {
        let slots = self.slots();
        let queues: Vec<_> = slots.iter().map(|slot| self.lock(slot)).collect();
        queues.iter().map(|q| q.leased.len() as u64).sum()
    }
    /// Creates `queue` if needed and sets its capacity.
    pub fn declare(&self, name: &str, capacity: Option<u64>) -> Result<QueueStats, QueueError> {
        let slot = self.queue(name)?;
        let mut queue = self.lock(&slot);
        if queue.deleted {
            drop(queue);
            return self.declare(name, capacity);
        }
        let capacity = normalise_capacity(capacity);
        queue.capacity = capacity;
        queue
            .journal
            .record(|queue| Change::Declared { queue, capacity });
        queue.pump();
        Ok(queue.stats(&slot.name))
    }

    pub fn inspect(&self, queue: &str) -> Result<QueueStats, QueueError> {
        let slot = self
            .existing(queue)
            .ok_or_else(|| QueueError::NoSuchQueue(queue.to_owned()))?;
        let stats = self.lock(&slot).stats(&slot.name);
        Ok(stats)
    }

    /// Every queue's state, plus how many sessions ever completed a task.
    pub fn snapshot(&self) -> (Vec<QueueStats>, u64) {
        let slots = self.slots();
        let queues = slots
            .iter()
            .map(|slot| self.lock(slot).stats(&slot.name))
            .collect();
        (queues, lock_unpoisoned(&self.shared.completers).total)
    }

    /// Appends `items` as far as there is room. If some are left and `wait` is true, returns a
    /// waiter that keeps adding them as room appears.
    pub fn put(
        &self,
        session: SessionId,
        queue: &str,
        items: Vec<Bytes>,
        wait: bool,
    ) -> Result<Step<Progress, PutWaiting>, QueueError> {
        self.put_once(session, queue, items, wait, None, None)
    }

    /// [`Broker::put`] carried out at most once per `origin`: a put with an origin already
    /// seen gets what that one achieved (its ids, and how many of its items were queued)
    /// without queueing anything, or [`QueueError::InProgress`] while that one still waits.
    /// With `reply`, the tasks name that queue for their outcomes when handed out.
    pub fn put_once(
        &self,
        session: SessionId,
        queue: &str,
        items: Vec<Bytes>,
        wait: bool,
        origin: Option<Origin>,
        reply: Option<&str>,
    ) -> Result<Step<Progress, PutWaiting>, QueueError> {
        let reply = match reply {
            Some(name) if !valid_name(name) => return Err(QueueError::BadName(name.to_owned())),
            Some(name) => Some(Bytes::copy_from_slice(name.as_bytes())),
            None => None,
        };
        self.admit(items.iter().map(|i| item_cost(i.len())).sum())?;
        let mut batch = Batch::Items {
            items: items.into(),
            origin,
            reply,
        };
        loop {
            let slot = self.queue(queue)?;
            match self.insert(slot, None, session, batch, wait)? {
                Inserted::Done(step) => return Ok(step),
                Inserted::Deleted(back) => batch = back,
            }
        }
    }

    /// Settles each outcome's lease on `queue` and appends its result to `results`, atomically
    /// per task, as far as there is room in `results`. With `reply`, `results` is the tasks'
    /// reply queue: if it does not exist (its producer deleted it and left), the tasks are
    /// settled and their results dropped.
    pub fn complete(
        &self,
        session: SessionId,
        queue: &str,
        results: &str,
        outcomes: Vec<Outcome>,
        wait: bool,
        reply: bool,
    ) -> Result<Step<Progress, PutWaiting>, QueueError> {
        // A result that settles its task frees the task's charge: only what the results add
        // beyond that is new.
        let adds: u64 = outcomes.iter().map(|o| item_cost(o.result.len())).sum();
        let frees = outcomes.len() as u64 * memory::ITEM_OVERHEAD;
        if adds > frees {
            self.admit(adds - frees)?;
        }
        let mut batch = Batch::Outcomes(outcomes.into());
        loop {
            let tasks = self.queue(queue)?;
            let target = match self.existing(results) {
                Some(target) => target,
                None if reply => {
                    let ids = batch.settles();
                    return Ok(Step::Ready(self.ack(session, queue, &ids)?));
                }
                None => self.queue(results)?,
            };
            // Settling in the results queue itself needs no second lock.
            let source = (tasks.rank != target.rank).then_some(tasks);
            match self.insert(target, source, session, batch, wait)? {
                Inserted::Done(step) => return Ok(step),
                Inserted::Deleted(back) => batch = back,
            }
        }
    }

    fn insert(
        &self,
        target: Arc<Slot>,
        source: Option<Arc<Slot>>,
        session: SessionId,
        mut pending: Batch,
        wait: bool,
    ) -> Result<Inserted, QueueError> {
        let (mut queue, mut leases) = self.lock_pair(&target, source.as_deref());
        if queue.deleted || leases.as_ref().is_some_and(|l| l.deleted) {
            return Ok(Inserted::Deleted(pending));
        }
        let total = pending.len() as u32;
        let origin = pending.origin();
        if let Some(seen) = origin.and_then(|o| queue.origins.get(o)) {
            if !seen.done {
                return Err(QueueError::InProgress);
            }
            return Ok(Inserted::Done(Step::Ready(Progress {
                first_id: seen.first_id,
                total,
                processed: seen.accepted,
                stale: Vec::new(),
            })));
        }
        let first_id = self.reserve(pending.len());
        let epoch = self.shared.epoch;
        queue.latency.put(epoch, first_id, pending.len());
        if let Some(origin) = origin {
            queue.origins.begin(origin, first_id);
        }
        let mut progress = Progress {
            first_id,
            total,
            processed: 0,
            stale: Vec::new(),
        };
        // Earlier waiting putters go first: a new put may not overtake them.
        if queue.putters.is_empty() {
            // Items handed to waiting getters free room, which goes to what is left of the
            // batch: until the batch is in or there is no room.
            loop {
                let before = progress.processed;
                queue.fill(leases.as_deref_mut(), session, &mut pending, &mut progress);
                if progress.processed == before {
                    break;
                }
                queue.pump();
                if pending.is_empty() {
                    break;
                }
            }
        }
        let step = if pending.is_empty() || !wait {
            queue.finished(&pending);
            Step::Ready(progress)
        } else {
            let id = queue.next_waiter();
            let (tx, rx) = oneshot::channel();
            pending.pack();
            let cross = source.as_ref().map(|source| CrossQueue {
                source: Arc::clone(source),
                turn: Arc::new(Notify::new()),
            });
            let turn = cross.as_ref().map(|a| Arc::clone(&a.turn));
            queue.putters.push_back(PutWaiter {
                id,
                session,
                pending,
                progress,
                tx,
                cross,
            });
            Step::Wait((id, rx, turn))
        };
        // With the other queue's lock free again, waiters that settle leases there and find
        // room here are served now rather than woken.
        drop(leases);
        queue.pump();
        drop(queue);
        Ok(Inserted::Done(match step {
            Step::Ready(progress) => Step::Ready(progress),
            Step::Wait((id, rx, turn)) => Step::Wait(PutWaiting {
                broker: self.clone(),
                target,
                source,
                id,
                rx: Some(rx),
                turn,
            }),
        }))
    }

    /// Takes up to `max` items (their reply within `max_bytes`). If there are none and `wait`
    /// is true, returns a waiter that is served in arrival order.
    pub fn get(
        &self,
        session: SessionId,
        name: &str,
        max: u32,
        max_bytes: usize,
        delivery: Delivery,
        wait: bool,
    ) -> Result<Step<Vec<Task>, GetWaiting>, QueueError> {
        self.get_within(session, name, (max, max_bytes, false), delivery, wait)
    }

    /// [`Broker::get`], except that not even the first task is taken if its reply would pass
    /// `max_bytes`: for a reply that carries something else as well, which must fit the frame
    /// before anything is leased.
    pub fn get_fitting(
        &self,
        session: SessionId,
        name: &str,
        max: u32,
        max_bytes: usize,
        delivery: Delivery,
        wait: bool,
    ) -> Result<Step<Vec<Task>, GetWaiting>, QueueError> {
        self.get_within(session, name, (max, max_bytes, true), delivery, wait)
    }

    fn get_within(
        &self,
        session: SessionId,
        name: &str,
        (max, max_bytes, strict): (u32, usize, bool),
        delivery: Delivery,
        wait: bool,
    ) -> Result<Step<Vec<Task>, GetWaiting>, QueueError> {
        let slot = self.queue(name)?;
        let mut queue = self.lock(&slot);
        if queue.deleted {
            drop(queue);
            return self.get_within(session, name, (max, max_bytes, strict), delivery, wait);
        }
        let tasks = queue.take(session, max, max_bytes, delivery, strict);
        if !tasks.is_empty() {
            queue.pump();
            return Ok(Step::Ready(tasks));
        }
        // A front task too large to fit will not get smaller by waiting.
        if !wait || !queue.items.is_empty() {
            return Ok(Step::Ready(tasks));
        }
        let id = queue.next_waiter();
        let (tx, rx) = oneshot::channel();
        queue.getters.push_back(GetWaiter {
            id,
            session,
            max,
            max_bytes,
            strict,
            delivery,
            tx,
        });
        drop(queue);
        Ok(Step::Wait(GetWaiting {
            broker: self.clone(),
            slot,
            id,
            session,
            delivery,
            rx: Some(rx),
        }))
    }

    /// Settles the named leases this session holds on `queue`.
    pub fn ack(
        &self,
        session: SessionId,
        queue: &str,
        tasks: &[TaskId],
    ) -> Result<Progress, QueueError> {
        // A queue that does not exist holds no lease: all are stale, and none is created.
        let Some(slot) = self.existing(queue) else {
            return Ok(settled(tasks.len(), tasks.to_vec()));
        };
        let mut queue = self.lock(&slot);
        let mut stale = Vec::new();
        for &task in tasks {
            if queue.settle(task, session) {
                queue.journal.record(|queue| Change::Acked { queue, task });
            } else {
                stale.push(task);
            }
        }
        let acked = (tasks.len() - stale.len()) as u64;
        queue.tally.acked += acked;
        if let Some(s) = queue.sessions.get_mut(&session) {
            s.settled += acked;
        }
        Ok(settled(tasks.len(), stale))
    }
}

#[cfg(test)]
mod tests;
