//! Queue state: named bounded queues, FIFO waiters, and leases owned by sessions. No I/O.
//!
//! Everything lives behind one `std::sync::Mutex` that is never held across an `.await`:
//! every operation is a short synchronous step. An operation that must wait registers a waiter
//! and returns a future; whoever makes progress possible (a put, a get, a requeue) hands items
//! or room to waiters in arrival order while holding the lock, so no waiter is ever overtaken
//! and nothing is lost between a wake-up and a retry. Waiting futures clean up after
//! themselves when dropped, so a client that disconnects while waiting leaves nothing behind.
//!
//! This module is the single owner of queue contents: a persistent store would slot in here.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use bytes::Bytes;
use taskmill_protocol::{Delivery, Outcome, QueueStats, Task, TaskId};
use tokio::sync::oneshot;
use tokio::time::Instant as Deadline;
use tokio_util::sync::CancellationToken;

/// Longest queue name accepted.
pub const MAX_QUEUE_NAME: usize = 128;

/// Identity of one authenticated connection, for lease ownership.
pub type SessionId = u64;

type QueueIdx = usize;
type WaiterId = u64;

/// Bytes a task adds to a `Tasks` reply beyond its payload (id, attempt, lengths), rounded up.
const TASK_OVERHEAD: usize = 32;

/// Limits that apply to every queue.
#[derive(Debug, Clone, Copy)]
pub struct QueueLimits {
    /// Capacity of a queue created on first use; `None` is unbounded.
    pub default_capacity: Option<u64>,
    /// Most queues that may exist at once.
    pub max_queues: usize,
}

/// Why a queue operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    #[error("bad queue name {0:?}: 1 to {MAX_QUEUE_NAME} bytes of A-Z a-z 0-9 . _ : -")]
    BadName(String),
    #[error("cannot create queue {name:?}: the master already has {max} queues")]
    TooManyQueues { name: String, max: usize },
    #[error("no queue named {0:?}")]
    NoSuchQueue(String),
}

/// A cloneable handle to all queues.
#[derive(Debug, Clone)]
pub struct Broker {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    /// A `std` mutex, not tokio's: critical sections are short and never await, which is both
    /// faster and rules out holding the lock across a suspension point.
    state: Mutex<State>,
    limits: QueueLimits,
    started: Instant,
}

#[derive(Debug, Default)]
struct State {
    queues: Vec<Queue>,
    by_name: HashMap<String, QueueIdx>,
    sessions: HashMap<SessionId, SessionLeases>,
    next_task: TaskId,
    next_session: SessionId,
    next_waiter: WaiterId,
    completing_sessions_total: u64,
}

#[derive(Debug, Default)]
struct SessionLeases {
    held: HashSet<(QueueIdx, TaskId)>,
    completed_any: bool,
}

#[derive(Debug)]
struct Queue {
    name: String,
    items: VecDeque<Item>,
    capacity: Option<u64>,
    leased: HashMap<TaskId, Leased>,
    getters: VecDeque<GetWaiter>,
    putters: VecDeque<PutWaiter>,
    put_total: u64,
    delivered_total: u64,
    settled_total: u64,
}

#[derive(Debug)]
struct Item {
    id: TaskId,
    /// Times handed out so far.
    deliveries: u32,
    payload: Bytes,
}

#[derive(Debug)]
struct Leased {
    session: SessionId,
    item: Item,
}

#[derive(Debug)]
struct GetWaiter {
    id: WaiterId,
    session: SessionId,
    max: u32,
    max_bytes: usize,
    delivery: Delivery,
    tx: oneshot::Sender<Vec<Task>>,
}

/// A put or complete that is waiting for room, with what it has done so far.
#[derive(Debug)]
struct PutWaiter {
    id: WaiterId,
    session: SessionId,
    pending: VecDeque<Pending>,
    progress: PutProgress,
    tx: oneshot::Sender<PutProgress>,
}

/// One item on its way into a queue; `settles` is the lease a completion settles with it.
#[derive(Debug)]
struct Pending {
    id: TaskId,
    payload: Bytes,
    settles: Option<(QueueIdx, TaskId)>,
}

/// How far a put or complete got.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PutProgress {
    /// Ids of the items of a put are `first_id..first_id + total`, accepted or not.
    pub first_id: TaskId,
    pub total: u32,
    /// Items consumed from the front of the batch: queued, or (completions only) stale.
    pub processed: u32,
    /// Completions whose lease this session no longer held; their results were dropped.
    pub stale: Vec<TaskId>,
}

impl PutProgress {
    /// Items that were queued (or, for a completion, settled with their result queued).
    pub fn done(&self) -> u32 {
        self.processed - self.stale.len() as u32
    }

    /// Items at the end of the batch that were never processed.
    pub fn pending(&self) -> u32 {
        self.total - self.processed
    }
}

/// Either the answer now, or a future that yields it.
#[derive(Debug)]
pub enum Step<T, W> {
    Ready(T),
    Wait(W),
}

impl Queue {
    fn new(name: String, capacity: Option<u64>) -> Self {
        Self {
            name,
            items: VecDeque::new(),
            capacity,
            leased: HashMap::new(),
            getters: VecDeque::new(),
            putters: VecDeque::new(),
            put_total: 0,
            delivered_total: 0,
            settled_total: 0,
        }
    }

    fn has_room(&self) -> bool {
        self.capacity
            .is_none_or(|cap| (self.items.len() as u64) < cap)
    }

    fn stats(&self) -> QueueStats {
        QueueStats {
            name: self.name.clone(),
            len: self.items.len() as u64,
            capacity: self.capacity,
            leased: self.leased.len() as u64,
            waiting_getters: self.getters.len() as u64,
            waiting_putters: self.putters.len() as u64,
            put_total: self.put_total,
            delivered_total: self.delivered_total,
            settled_total: self.settled_total,
        }
    }
}

fn valid_name(name: &str) -> bool {
    (1..=MAX_QUEUE_NAME).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// A capacity as the protocol states it: `None` or 0 is unbounded (Python's `maxsize <= 0`).
fn normalise_capacity(capacity: Option<u64>) -> Option<u64> {
    capacity.filter(|&c| c > 0)
}

impl State {
    fn queue_idx(&mut self, name: &str, limits: &QueueLimits) -> Result<QueueIdx, QueueError> {
        if let Some(&idx) = self.by_name.get(name) {
            return Ok(idx);
        }
        if !valid_name(name) {
            return Err(QueueError::BadName(name.to_owned()));
        }
        if self.queues.len() >= limits.max_queues {
            return Err(QueueError::TooManyQueues {
                name: name.to_owned(),
                max: limits.max_queues,
            });
        }
        let idx = self.queues.len();
        self.queues.push(Queue::new(
            name.to_owned(),
            normalise_capacity(limits.default_capacity),
        ));
        self.by_name.insert(name.to_owned(), idx);
        Ok(idx)
    }

    fn reserve_ids(&mut self, n: usize) -> TaskId {
        let first = self.next_task;
        self.next_task += n as u64;
        first
    }

    /// Takes up to `max` items (at least one if any are queued) whose reply fits `max_bytes`,
    /// leasing them to `session` when asked to.
    fn take(
        &mut self,
        q: QueueIdx,
        session: SessionId,
        max: u32,
        max_bytes: usize,
        delivery: Delivery,
    ) -> Vec<Task> {
        let queue = &mut self.queues[q];
        let mut tasks = Vec::new();
        let mut bytes = 0usize;
        while (tasks.len() as u32) < max {
            let Some(front) = queue.items.front() else {
                break;
            };
            let size = front.payload.len() + TASK_OVERHEAD;
            if !tasks.is_empty() && bytes + size > max_bytes {
                break;
            }
            bytes += size;
            let mut item = queue.items.pop_front().expect("front exists");
            item.deliveries += 1;
            tasks.push(Task {
                id: item.id,
                attempt: item.deliveries,
                payload: item.payload.clone(),
            });
            if delivery == Delivery::Lease {
                queue.leased.insert(item.id, Leased { session, item });
            }
        }
        queue.delivered_total += tasks.len() as u64;
        if delivery == Delivery::Lease && !tasks.is_empty() {
            let held = &mut self.sessions.entry(session).or_default().held;
            held.extend(tasks.iter().map(|t| (q, t.id)));
        }
        tasks
    }

    /// Puts handed-out items back at the front, in their original order, as if never taken.
    fn untake(&mut self, q: QueueIdx, tasks: Vec<Task>, delivery: Delivery) {
        for task in tasks.into_iter().rev() {
            let item = match delivery {
                Delivery::Lease => match self.queues[q].leased.remove(&task.id) {
                    Some(leased) => {
                        if let Some(s) = self.sessions.get_mut(&leased.session) {
                            s.held.remove(&(q, task.id));
                        }
                        leased.item
                    }
                    // Already settled or requeued by its session's end: nothing to give back.
                    None => continue,
                },
                Delivery::Remove => Item {
                    id: task.id,
                    deliveries: task.attempt,
                    payload: task.payload,
                },
            };
            let queue = &mut self.queues[q];
            queue.delivered_total -= 1;
            queue.items.push_front(Item {
                deliveries: item.deliveries - 1,
                ..item
            });
        }
    }

    /// Settles `task` if `session` holds its lease on queue `q`.
    fn settle(&mut self, q: QueueIdx, task: TaskId, session: SessionId) -> bool {
        let queue = &mut self.queues[q];
        match queue.leased.get(&task) {
            Some(l) if l.session == session => {
                queue.leased.remove(&task);
                queue.settled_total += 1;
                let s = self.sessions.entry(session).or_default();
                s.held.remove(&(q, task));
                if !s.completed_any {
                    s.completed_any = true;
                    self.completing_sessions_total += 1;
                }
                true
            }
            _ => false,
        }
    }

    /// Moves pending items into queue `q` while there is room, settling their leases. Stale
    /// completions need no room and are consumed wherever they stand.
    fn fill(
        &mut self,
        q: QueueIdx,
        session: SessionId,
        pending: &mut VecDeque<Pending>,
        progress: &mut PutProgress,
    ) {
        while let Some(front) = pending.front() {
            if let Some((tq, task)) = front.settles {
                let held = self.queues[tq]
                    .leased
                    .get(&task)
                    .is_some_and(|l| l.session == session);
                if !held {
                    pending.pop_front();
                    progress.processed += 1;
                    progress.stale.push(task);
                    continue;
                }
            }
            if !self.queues[q].has_room() {
                break;
            }
            let p = pending.pop_front().expect("front exists");
            if let Some((tq, task)) = p.settles {
                self.settle(tq, task, session);
            }
            let queue = &mut self.queues[q];
            queue.items.push_back(Item {
                id: p.id,
                deliveries: 0,
                payload: p.payload,
            });
            queue.put_total += 1;
            progress.processed += 1;
        }
    }

    /// Hands queued items to waiting getters and room to waiting putters, in arrival order,
    /// until neither can make progress.
    fn pump(&mut self, q: QueueIdx) {
        loop {
            let mut progressed = false;
            while !self.queues[q].items.is_empty() {
                let Some(w) = self.queues[q].getters.pop_front() else {
                    break;
                };
                let tasks = self.take(q, w.session, w.max, w.max_bytes, w.delivery);
                if let Err(tasks) = w.tx.send(tasks) {
                    // The waiter was dropped between giving up and unregistering.
                    self.untake(q, tasks, w.delivery);
                } else {
                    progressed = true;
                }
            }
            while self.queues[q].has_room() {
                let Some(mut w) = self.queues[q].putters.pop_front() else {
                    break;
                };
                let before = w.progress.processed;
                self.fill(q, w.session, &mut w.pending, &mut w.progress);
                progressed |= w.progress.processed != before;
                if w.pending.is_empty() {
                    // A dropped receiver means the putter is gone; its items stay queued, as
                    // they were accepted while it still waited.
                    let _ = w.tx.send(w.progress);
                } else {
                    self.queues[q].putters.push_front(w);
                    break;
                }
            }
            if !progressed {
                break;
            }
        }
    }
}

impl Broker {
    pub fn new(limits: QueueLimits) -> Self {
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                limits,
                started: Instant::now(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock would already have been a bug report; keep serving
        // with the state as it is rather than poisoning every connection after it.
        self.shared.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn uptime(&self) -> std::time::Duration {
        self.shared.started.elapsed()
    }

    /// Registers a connection that may hold leases.
    pub fn open_session(&self) -> SessionId {
        let mut state = self.lock();
        state.next_session += 1;
        let id = state.next_session;
        state.sessions.insert(id, SessionLeases::default());
        id
    }

    /// Ends a connection: every task it still leases goes back to the front of its queue.
    /// Call after dropping the session's waiting futures. Returns how many were requeued.
    pub fn close_session(&self, session: SessionId) -> usize {
        let mut state = self.lock();
        let Some(leases) = state.sessions.remove(&session) else {
            return 0;
        };
        let mut by_queue: HashMap<QueueIdx, Vec<TaskId>> = HashMap::new();
        for (q, task) in leases.held {
            by_queue.entry(q).or_default().push(task);
        }
        let mut requeued = 0;
        for (q, mut tasks) in by_queue {
            // Ids grow with put order, so the requeued tasks keep their relative order.
            tasks.sort_unstable_by(|a, b| b.cmp(a));
            let queue = &mut state.queues[q];
            for task in tasks {
                if let Some(leased) = queue.leased.remove(&task) {
                    queue.items.push_front(leased.item);
                    requeued += 1;
                }
            }
            state.pump(q);
        }
        requeued
    }

    /// Creates `queue` if needed and sets its capacity.
    pub fn declare(&self, queue: &str, capacity: Option<u64>) -> Result<QueueStats, QueueError> {
        let mut state = self.lock();
        let q = state.queue_idx(queue, &self.shared.limits)?;
        state.queues[q].capacity = normalise_capacity(capacity);
        state.pump(q);
        Ok(state.queues[q].stats())
    }

    pub fn inspect(&self, queue: &str) -> Result<QueueStats, QueueError> {
        let state = self.lock();
        let q = *state
            .by_name
            .get(queue)
            .ok_or_else(|| QueueError::NoSuchQueue(queue.to_owned()))?;
        Ok(state.queues[q].stats())
    }

    /// Every queue's state, plus how many sessions ever completed a task.
    pub fn snapshot(&self) -> (Vec<QueueStats>, u64) {
        let state = self.lock();
        let queues = state.queues.iter().map(Queue::stats).collect();
        (queues, state.completing_sessions_total)
    }

    /// Appends `items` as far as there is room. If some are left and `wait` is true, returns a
    /// waiter that keeps adding them as room appears.
    pub fn put(
        &self,
        session: SessionId,
        queue: &str,
        items: Vec<Bytes>,
        wait: bool,
    ) -> Result<Step<PutProgress, PutWaiting>, QueueError> {
        let mut state = self.lock();
        let q = state.queue_idx(queue, &self.shared.limits)?;
        let first_id = state.reserve_ids(items.len());
        let pending = items
            .into_iter()
            .zip(first_id..)
            .map(|(payload, id)| Pending {
                id,
                payload,
                settles: None,
            })
            .collect();
        let progress = PutProgress {
            first_id,
            total: 0,
            processed: 0,
            stale: Vec::new(),
        };
        Ok(self.insert(state, q, session, pending, progress, wait))
    }

    /// Settles each outcome's lease on `queue` and appends its result to `results`, atomically
    /// per task, as far as there is room in `results`.
    pub fn complete(
        &self,
        session: SessionId,
        queue: &str,
        results: &str,
        outcomes: Vec<Outcome>,
        wait: bool,
    ) -> Result<Step<PutProgress, PutWaiting>, QueueError> {
        let mut state = self.lock();
        let tq = state.queue_idx(queue, &self.shared.limits)?;
        let rq = state.queue_idx(results, &self.shared.limits)?;
        let first_id = state.reserve_ids(outcomes.len());
        let pending = outcomes
            .into_iter()
            .zip(first_id..)
            .map(|(o, id)| Pending {
                id,
                payload: o.result,
                settles: Some((tq, o.task)),
            })
            .collect();
        let progress = PutProgress {
            first_id,
            total: 0,
            processed: 0,
            stale: Vec::new(),
        };
        Ok(self.insert(state, rq, session, pending, progress, wait))
    }

    fn insert(
        &self,
        mut state: MutexGuard<'_, State>,
        q: QueueIdx,
        session: SessionId,
        mut pending: VecDeque<Pending>,
        mut progress: PutProgress,
        wait: bool,
    ) -> Step<PutProgress, PutWaiting> {
        progress.total = pending.len() as u32;
        // Earlier waiting putters go first: a new put may not overtake them.
        if state.queues[q].putters.is_empty() {
            state.fill(q, session, &mut pending, &mut progress);
            state.pump(q);
            // Room freed by getters served just now goes to what is left of this batch.
            state.fill(q, session, &mut pending, &mut progress);
            state.pump(q);
        }
        if pending.is_empty() || !wait {
            return Step::Ready(progress);
        }
        state.next_waiter += 1;
        let id = state.next_waiter;
        let (tx, rx) = oneshot::channel();
        state.queues[q].putters.push_back(PutWaiter {
            id,
            session,
            pending,
            progress,
            tx,
        });
        Step::Wait(PutWaiting {
            broker: self.clone(),
            q,
            id,
            rx: Some(rx),
        })
    }

    /// Takes up to `max` items (their reply within `max_bytes`). If there are none and `wait`
    /// is true, returns a waiter that is served in arrival order.
    pub fn get(
        &self,
        session: SessionId,
        queue: &str,
        max: u32,
        max_bytes: usize,
        delivery: Delivery,
        wait: bool,
    ) -> Result<Step<Vec<Task>, GetWaiting>, QueueError> {
        let mut state = self.lock();
        let q = state.queue_idx(queue, &self.shared.limits)?;
        let tasks = state.take(q, session, max, max_bytes, delivery);
        if !tasks.is_empty() {
            state.pump(q);
            return Ok(Step::Ready(tasks));
        }
        if !wait {
            return Ok(Step::Ready(tasks));
        }
        state.next_waiter += 1;
        let id = state.next_waiter;
        let (tx, rx) = oneshot::channel();
        state.queues[q].getters.push_back(GetWaiter {
            id,
            session,
            max,
            max_bytes,
            delivery,
            tx,
        });
        Ok(Step::Wait(GetWaiting {
            broker: self.clone(),
            q,
            id,
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
    ) -> Result<PutProgress, QueueError> {
        let mut state = self.lock();
        let q = state.queue_idx(queue, &self.shared.limits)?;
        let mut stale = Vec::new();
        for &task in tasks {
            if !state.settle(q, task, session) {
                stale.push(task);
            }
        }
        Ok(PutProgress {
            first_id: 0,
            total: tasks.len() as u32,
            processed: tasks.len() as u32,
            stale,
        })
    }
}

/// A `get` waiting for items. Dropping it unregisters it; items handed to it in the meantime
/// go back to the front of the queue.
#[derive(Debug)]
pub struct GetWaiting {
    broker: Broker,
    q: QueueIdx,
    id: WaiterId,
    delivery: Delivery,
    rx: Option<oneshot::Receiver<Vec<Task>>>,
}

impl GetWaiting {
    /// Waits until items arrive, `deadline` passes or `stop` fires; the latter two give an
    /// empty result (Python's `Empty`) unless items arrived at the same moment.
    pub async fn wait(mut self, deadline: Option<Deadline>, stop: CancellationToken) -> Vec<Task> {
        let rx = self.rx.as_mut().expect("waited once");
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            res = rx => {
                self.rx = None;
                // Only a bug could drop the sender unsent; treat it as an empty wait.
                return res.unwrap_or_default();
            }
            () = sleep => {}
            () = stop.cancelled() => {}
        }
        self.give_up().unwrap_or_default()
    }

    /// Unregisters; returns items that were handed over before we got the lock.
    fn give_up(&mut self) -> Option<Vec<Task>> {
        let mut rx = self.rx.take()?;
        let mut state = self.broker.lock();
        let getters = &mut state.queues[self.q].getters;
        if let Some(pos) = getters.iter().position(|w| w.id == self.id) {
            getters.remove(pos);
            return None;
        }
        // Not registered any more, so the sender already ran, under the same lock.
        rx.try_recv().ok()
    }
}

impl Drop for GetWaiting {
    fn drop(&mut self) {
        if let Some(tasks) = self.give_up() {
            let mut state = self.broker.lock();
            state.untake(self.q, tasks, self.delivery);
            state.pump(self.q);
        }
    }
}

/// A `put` or `complete` waiting for room. Dropping it unregisters it; what it already queued
/// stays queued.
#[derive(Debug)]
pub struct PutWaiting {
    broker: Broker,
    q: QueueIdx,
    id: WaiterId,
    rx: Option<oneshot::Receiver<PutProgress>>,
}

impl PutWaiting {
    /// Waits until everything is queued, `deadline` passes or `stop` fires, and says how far it
    /// got.
    pub async fn wait(
        mut self,
        deadline: Option<Deadline>,
        stop: CancellationToken,
    ) -> PutProgress {
        let rx = self.rx.as_mut().expect("waited once");
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            res = rx => if let Ok(progress) = res {
                self.rx = None;
                return progress;
            },
            () = sleep => {}
            () = stop.cancelled() => {}
        }
        // Registered, or its progress was sent; only a bug leaves neither.
        self.give_up().unwrap_or_default()
    }

    fn give_up(&mut self) -> Option<PutProgress> {
        let mut rx = self.rx.take()?;
        let mut state = self.broker.lock();
        let putters = &mut state.queues[self.q].putters;
        if let Some(pos) = putters.iter().position(|w| w.id == self.id) {
            let w = putters.remove(pos).expect("position is in range");
            // Putters behind this one may fit now.
            state.pump(self.q);
            return Some(w.progress);
        }
        rx.try_recv().ok()
    }
}

impl Drop for PutWaiting {
    fn drop(&mut self) {
        self.give_up();
    }
}

#[cfg(test)]
mod tests;
