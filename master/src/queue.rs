//! Queue state: named bounded queues, FIFO waiters, and leases owned by sessions. No I/O.
//!
//! Everything lives behind one `std::sync::Mutex` that is never held across an `.await`:
//! every operation is a short synchronous step. An operation that must wait registers a waiter
//! and returns a future; whoever makes progress possible (a put, a get, a requeue) hands items
//! or room to waiters in arrival order while holding the lock, so no waiter is ever overtaken
//! and nothing is lost between a wake-up and a retry. Waiting futures clean up after
//! themselves when dropped, so a client that disconnects while waiting leaves nothing behind.
//!
//! Leases expire: [`Broker::tick`], driven by a timer task, requeues tasks whose lease ran out
//! and returns nacked tasks whose delay is over. A task handed out `max_attempts` times and
//! given back again goes to `<queue>.dead` instead of round the fleet forever.
//!
//! This module is the single owner of queue contents: a persistent store would slot in here.

use std::cmp::Reverse;
use std::collections::hash_map::Entry;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rustc_hash::FxHashMap;
use taskmill_protocol::{
    encode_payload, DeadLetter, Delivery, Outcome, QueueStats, Task, TaskId, DEAD_SUFFIX,
    MAX_REASON,
};
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

/// Longest lease or nack delay a client may ask for; longer requests are cut to this.
pub const MAX_LEASE: Duration = Duration::from_secs(24 * 3600);

/// Dead entries the expiry heap or a session's lease list may hold beyond twice the live
/// leases before it is rebuilt.
const DEAD_SLACK: usize = 4096;

/// Longest the timer task sleeps, so it notices leases that became due sooner than planned.
const TICK_MAX: Duration = Duration::from_millis(250);

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
    started: Instant,
}

#[derive(Debug)]
struct State {
    limits: QueueLimits,
    queues: Vec<Queue>,
    by_name: HashMap<String, QueueIdx>,
    sessions: FxHashMap<SessionId, SessionLeases>,
    next_task: TaskId,
    next_session: SessionId,
    next_waiter: WaiterId,
    completing_sessions_total: u64,
    /// Leases outstanding across all queues.
    leased_live: usize,
    /// Lease deadlines, soonest first. Entries are not removed when a lease is settled or
    /// touched; an entry counts only if the lease still exists with that exact deadline.
    expiries: BinaryHeap<Reverse<(Deadline, QueueIdx, TaskId)>>,
    /// Nacked items waiting out their delay, soonest first.
    delayed: BinaryHeap<Reverse<Delayed>>,
}

/// A nacked item and when it may return to its queue.
#[derive(Debug)]
struct Delayed {
    at: Deadline,
    q: QueueIdx,
    item: Item,
}

impl PartialEq for Delayed {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.item.id) == (other.at, other.item.id)
    }
}

impl Eq for Delayed {}

impl PartialOrd for Delayed {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Delayed {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.item.id).cmp(&(other.at, other.item.id))
    }
}

/// Why a lease ended without being settled.
#[derive(Debug, Clone)]
enum GiveBack {
    ConnectionClosed,
    Expired(Duration),
    Nacked(String),
}

impl GiveBack {
    fn reason(&self) -> String {
        match self {
            GiveBack::ConnectionClosed => "connection closed while holding the lease".into(),
            GiveBack::Expired(d) => format!("lease expired after {d:?}"),
            GiveBack::Nacked(reason) => format!("nacked: {reason}"),
        }
    }
}

/// The leases one session took. `held` is appended to on every leasing get and never searched:
/// an entry counts only while its queue's lease map still names this session, so settling a
/// lease costs a counter decrement, and the list is pruned once dead entries outnumber `live`.
#[derive(Debug, Default)]
struct SessionLeases {
    held: Vec<(QueueIdx, TaskId)>,
    live: usize,
    completed_any: bool,
}

#[derive(Debug)]
struct Queue {
    name: String,
    items: VecDeque<Item>,
    capacity: Option<u64>,
    leased: FxHashMap<TaskId, Leased>,
    getters: VecDeque<GetWaiter>,
    putters: VecDeque<PutWaiter>,
    /// Nacked items of this queue in `State::delayed`.
    delayed: u64,
    /// Holds another queue's dead letters: exempt from the queue limit, never dead-letters.
    dead_letters: bool,
    put_total: u64,
    delivered_total: u64,
    settled_total: u64,
    requeued_total: u64,
    expired_total: u64,
    dead_total: u64,
}

#[derive(Debug)]
struct Item {
    id: TaskId,
    /// Times handed out so far.
    deliveries: u32,
    payload: Payload,
}

// The memory target (64 bytes per queued small task, with a deque's growth slack) needs this.
const _: () = assert!(std::mem::size_of::<Item>() <= 32);

/// Payloads up to this long are kept inside the [`Item`].
const INLINE: usize = 14;

/// An item's payload as the queue keeps it. Most tasks are a few bytes (an encoded
/// `SquareTask` is at most 8 for the usual inputs), so they are stored inline: a queued small
/// task costs a 32-byte slot and no allocation of its own. Larger payloads stay shared, boxed
/// so the inline case sets the size.
#[derive(Debug)]
enum Payload {
    Inline { len: u8, data: [u8; INLINE] },
    Shared(Box<Bytes>),
}

impl Payload {
    fn new(bytes: Bytes) -> Self {
        if bytes.len() > INLINE {
            return Payload::Shared(Box::new(bytes));
        }
        let mut data = [0; INLINE];
        data[..bytes.len()].copy_from_slice(&bytes);
        Payload::Inline {
            len: bytes.len() as u8,
            data,
        }
    }

    fn len(&self) -> usize {
        match self {
            Payload::Inline { len, .. } => usize::from(*len),
            Payload::Shared(bytes) => bytes.len(),
        }
    }

    /// A copy to hand out; the queue keeps its own until the lease is settled.
    fn to_bytes(&self) -> Bytes {
        match self {
            Payload::Inline { len, data } => Bytes::copy_from_slice(&data[..usize::from(*len)]),
            Payload::Shared(bytes) => Bytes::clone(bytes),
        }
    }

    fn into_bytes(self) -> Bytes {
        match self {
            Payload::Shared(bytes) => *bytes,
            inline => inline.to_bytes(),
        }
    }
}

#[derive(Debug)]
struct Leased {
    session: SessionId,
    item: Item,
    deadline: Deadline,
    /// The lease's length, reused when a touch does not name one.
    length: Duration,
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

/// The progress of a request that handles every named task at once.
fn settled(total: usize, stale: Vec<TaskId>) -> PutProgress {
    PutProgress {
        first_id: 0,
        total: total as u32,
        processed: total as u32,
        stale,
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
            leased: FxHashMap::default(),
            getters: VecDeque::new(),
            putters: VecDeque::new(),
            delayed: 0,
            dead_letters: false,
            put_total: 0,
            delivered_total: 0,
            settled_total: 0,
            requeued_total: 0,
            expired_total: 0,
            dead_total: 0,
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
            delayed: self.delayed,
            waiting_getters: self.getters.len() as u64,
            waiting_putters: self.putters.len() as u64,
            put_total: self.put_total,
            delivered_total: self.delivered_total,
            settled_total: self.settled_total,
            requeued_total: self.requeued_total,
            expired_total: self.expired_total,
            dead_total: self.dead_total,
        }
    }
}

/// True while `session` holds the lease on `task` in queue `q`. A free function so that it can
/// read the queues while a session's lease list is borrowed.
fn holds(queues: &[Queue], q: QueueIdx, task: TaskId, session: SessionId) -> bool {
    queues[q]
        .leased
        .get(&task)
        .is_some_and(|l| l.session == session)
}

/// 1 to [`MAX_QUEUE_NAME`] bytes of `[A-Za-z0-9._:-]`, plus room for [`DEAD_SUFFIX`] so that
/// every queue's dead-letter queue can be named too.
fn valid_name(name: &str) -> bool {
    let base = name.strip_suffix(DEAD_SUFFIX).unwrap_or(name);
    (1..=MAX_QUEUE_NAME).contains(&base.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// A capacity as the protocol states it: `None` or 0 is unbounded (Python's `maxsize <= 0`).
fn normalise_capacity(capacity: Option<u64>) -> Option<u64> {
    capacity.filter(|&c| c > 0)
}

impl State {
    fn new(limits: QueueLimits) -> Self {
        Self {
            limits,
            queues: Vec::new(),
            by_name: HashMap::new(),
            sessions: FxHashMap::default(),
            next_task: 0,
            next_session: 0,
            next_waiter: 0,
            completing_sessions_total: 0,
            leased_live: 0,
            expiries: BinaryHeap::new(),
            delayed: BinaryHeap::new(),
        }
    }

    fn queue_idx(&mut self, name: &str) -> Result<QueueIdx, QueueError> {
        if let Some(&idx) = self.by_name.get(name) {
            return Ok(idx);
        }
        if !valid_name(name) {
            return Err(QueueError::BadName(name.to_owned()));
        }
        let user_queues = self.queues.iter().filter(|q| !q.dead_letters).count();
        if user_queues >= self.limits.max_queues {
            return Err(QueueError::TooManyQueues {
                name: name.to_owned(),
                max: self.limits.max_queues,
            });
        }
        Ok(self.create_queue(name))
    }

    fn create_queue(&mut self, name: &str) -> QueueIdx {
        let idx = self.queues.len();
        let capacity = normalise_capacity(self.limits.default_capacity);
        self.queues.push(Queue::new(name.to_owned(), capacity));
        self.by_name.insert(name.to_owned(), idx);
        idx
    }

    /// True when `item`, given back now, has had all its deliveries and must be dead-lettered.
    /// Dead-letter queues themselves never dead-letter, so no chain of queues can grow.
    fn exhausted(&self, q: QueueIdx, item: &Item) -> bool {
        item.deliveries >= self.limits.max_attempts && !self.queues[q].dead_letters
    }

    /// Gives back several items of queue `q` so that they keep their put order at the front.
    fn give_back_all(&mut self, q: QueueIdx, mut items: Vec<(Item, GiveBack)>) {
        // Ids grow with put order: giving back the newest first leaves the oldest in front.
        items.sort_unstable_by_key(|(item, _)| Reverse(item.id));
        for (item, why) in items {
            self.give_back(q, item, &why);
        }
    }

    /// Puts an item whose lease ended unsettled back at the front of queue `q`, or, once it
    /// has had all its deliveries, at the back of the queue's dead-letter queue.
    fn give_back(&mut self, q: QueueIdx, item: Item, why: &GiveBack) {
        if matches!(why, GiveBack::Expired(_)) {
            self.queues[q].expired_total += 1;
        }
        if !self.exhausted(q, &item) {
            let queue = &mut self.queues[q];
            queue.requeued_total += 1;
            queue.items.push_front(item);
            self.pump(q);
            return;
        }
        let mut reason = why.reason();
        if reason.len() > MAX_REASON {
            let mut cut = MAX_REASON;
            while !reason.is_char_boundary(cut) {
                cut -= 1;
            }
            reason.truncate(cut);
        }
        let name = &self.queues[q].name;
        let letter = DeadLetter {
            task: item.id,
            queue: name.clone(),
            attempts: item.deliveries,
            reason,
            payload: item.payload.into_bytes(),
        };
        let dead_name = format!("{name}{DEAD_SUFFIX}");
        let dq = match self.by_name.get(&dead_name) {
            Some(&dq) => dq,
            None => self.create_queue(&dead_name),
        };
        self.queues[dq].dead_letters = true;
        self.queues[q].dead_total += 1;
        let id = self.reserve_ids(1);
        let payload = Payload::new(encode_payload(&letter).expect("a DeadLetter always encodes"));
        let dead = &mut self.queues[dq];
        dead.items.push_back(Item {
            id,
            deliveries: 0,
            payload,
        });
        dead.put_total += 1;
        self.pump(dq);
    }

    /// Ends the lease on `task` in queue `q` if `owner` (or, with `None`, anyone) holds it,
    /// returning the item. The only place a lease ends.
    fn unlease(&mut self, q: QueueIdx, task: TaskId, owner: Option<SessionId>) -> Option<Leased> {
        let Entry::Occupied(lease) = self.queues[q].leased.entry(task) else {
            return None;
        };
        if owner.is_some_and(|s| lease.get().session != s) {
            return None;
        }
        let leased = lease.remove();
        self.leased_live -= 1;
        if let Some(s) = self.sessions.get_mut(&leased.session) {
            s.live -= 1;
        }
        Some(leased)
    }

    /// The lease `session` holds on `task` in queue `q`, if it does.
    fn held_by(&mut self, q: QueueIdx, task: TaskId, session: SessionId) -> Option<&mut Leased> {
        self.queues[q]
            .leased
            .get_mut(&task)
            .filter(|l| l.session == session)
    }

    fn next_waiter(&mut self) -> WaiterId {
        self.next_waiter += 1;
        self.next_waiter
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
        let lease = match delivery {
            Delivery::Lease { millis } => {
                let length = millis.map_or(self.limits.lease_timeout, Duration::from_millis);
                let length = length.clamp(Duration::from_millis(1), MAX_LEASE);
                Some((length, Deadline::now() + length))
            }
            Delivery::Remove => None,
        };
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
                payload: item.payload.to_bytes(),
            });
            if let Some((length, deadline)) = lease {
                let leased = Leased {
                    session,
                    item,
                    deadline,
                    length,
                };
                queue.leased.insert(leased.item.id, leased);
                self.leased_live += 1;
            }
        }
        queue.delivered_total += tasks.len() as u64;
        if let Some((_, deadline)) = lease {
            if !tasks.is_empty() {
                let leases = self.sessions.entry(session).or_default();
                leases.held.extend(tasks.iter().map(|t| (q, t.id)));
                leases.live += tasks.len();
                if leases.held.len() > 2 * leases.live + DEAD_SLACK {
                    let queues = &self.queues;
                    leases
                        .held
                        .retain(|&(q, task)| holds(queues, q, task, session));
                    // A task leased again by the same session appears twice.
                    leases.held.sort_unstable();
                    leases.held.dedup();
                }
                self.expiries
                    .extend(tasks.iter().map(|t| Reverse((deadline, q, t.id))));
                self.compact_expiries();
            }
        }
        tasks
    }

    /// Settled and touched leases leave their old entries in the expiry heap until those come
    /// due, which under load would be millions of dead entries. Rebuilding from the live leases
    /// once the dead outnumber them keeps the heap within twice the leases, at amortised O(1).
    fn compact_expiries(&mut self) {
        if self.expiries.len() <= 2 * self.leased_live + DEAD_SLACK {
            return;
        }
        let entries: Vec<_> = self
            .queues
            .iter()
            .enumerate()
            .flat_map(|(q, queue)| {
                queue
                    .leased
                    .iter()
                    .map(move |(&task, l)| Reverse((l.deadline, q, task)))
            })
            .collect();
        self.expiries = BinaryHeap::from(entries);
    }

    /// Puts handed-out items back at the front, in their original order, as if never taken.
    fn untake(&mut self, q: QueueIdx, tasks: Vec<Task>, delivery: Delivery) {
        for task in tasks.into_iter().rev() {
            let item = match delivery {
                Delivery::Lease { .. } => match self.unlease(q, task.id, None) {
                    Some(leased) => leased.item,
                    // Already settled or requeued by its session's end: nothing to give back.
                    None => continue,
                },
                Delivery::Remove => Item {
                    id: task.id,
                    deliveries: task.attempt,
                    payload: Payload::new(task.payload),
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
        if self.unlease(q, task, Some(session)).is_none() {
            return false;
        }
        self.queues[q].settled_total += 1;
        true
    }

    /// Counts `session` as a worker in the stats, once it has completed a task.
    fn completed_by(&mut self, session: SessionId) {
        if let Some(s) = self.sessions.get_mut(&session) {
            if !s.completed_any {
                s.completed_any = true;
                self.completing_sessions_total += 1;
            }
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
        let mut settled_any = false;
        while let Some(front) = pending.front() {
            let room = self.queues[q].has_room();
            if let Some((tq, task)) = front.settles {
                // With room, settling is the ownership check; without, only a stale completion
                // may still be consumed.
                let held = if room {
                    self.settle(tq, task, session)
                } else {
                    holds(&self.queues, tq, task, session)
                };
                if !held {
                    pending.pop_front();
                    progress.processed += 1;
                    progress.stale.push(task);
                    continue;
                }
                settled_any |= room;
            }
            if !room {
                break;
            }
            let p = pending.pop_front().expect("front exists");
            let queue = &mut self.queues[q];
            queue.items.push_back(Item {
                id: p.id,
                deliveries: 0,
                payload: Payload::new(p.payload),
            });
            queue.put_total += 1;
            progress.processed += 1;
        }
        if settled_any {
            self.completed_by(session);
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
                state: Mutex::new(State::new(limits)),
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
        let mut by_queue: HashMap<QueueIdx, Vec<(Item, GiveBack)>> = HashMap::new();
        for (q, task) in leases.held {
            // Entries for leases since settled, or since leased again by another session, are
            // skipped by the ownership check.
            if let Some(leased) = state.unlease(q, task, Some(session)) {
                by_queue
                    .entry(q)
                    .or_default()
                    .push((leased.item, GiveBack::ConnectionClosed));
            }
        }
        let requeued = by_queue.values().map(Vec::len).sum();
        for (q, items) in by_queue {
            state.give_back_all(q, items);
        }
        requeued
    }

    /// True while `session` holds at least one lease.
    pub fn holds_leases(&self, session: SessionId) -> bool {
        self.lock()
            .sessions
            .get(&session)
            .is_some_and(|s| s.live > 0)
    }

    /// Leases outstanding across all queues (what a draining master waits for).
    pub fn leased_total(&self) -> u64 {
        self.lock().leased_live as u64
    }

    /// Requeues (or dead-letters) tasks whose lease has run out by `now` and returns nacked
    /// tasks whose delay is over. Returns when it next has work to do.
    pub fn tick(&self, now: Deadline) -> Option<Deadline> {
        let mut state = self.lock();
        let mut expired: HashMap<QueueIdx, Vec<(Item, GiveBack)>> = HashMap::new();
        while let Some(&Reverse((deadline, q, task))) = state.expiries.peek() {
            if deadline > now {
                break;
            }
            state.expiries.pop();
            let current = state.queues[q].leased.get(&task).map(|l| l.deadline);
            if current != Some(deadline) {
                continue; // settled, requeued or touched since: a stale entry
            }
            let leased = state.unlease(q, task, None).expect("just found");
            let why = GiveBack::Expired(leased.length);
            expired.entry(q).or_default().push((leased.item, why));
        }
        for (q, items) in expired {
            state.give_back_all(q, items);
        }
        let mut due: HashMap<QueueIdx, Vec<Item>> = HashMap::new();
        while state.delayed.peek().is_some_and(|d| d.0.at <= now) {
            let Reverse(Delayed { q, item, .. }) = state.delayed.pop().expect("just peeked");
            due.entry(q).or_default().push(item);
        }
        for (q, mut items) in due {
            items.sort_unstable_by_key(|item| Reverse(item.id));
            let queue = &mut state.queues[q];
            queue.delayed -= items.len() as u64;
            for item in items {
                queue.items.push_front(item);
            }
            state.pump(q);
        }
        let next_lease = state.expiries.peek().map(|e| e.0 .0);
        let next_delayed = state.delayed.peek().map(|d| d.0.at);
        next_lease.into_iter().chain(next_delayed).min()
    }

    /// Runs [`Broker::tick`] until `stop` fires.
    pub async fn run_timers(self, stop: CancellationToken) {
        loop {
            let now = Deadline::now();
            let next = self
                .tick(now)
                .map_or(now + TICK_MAX, |at| at.min(now + TICK_MAX));
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep_until(next) => {}
            }
        }
    }

    /// Extends the leases `session` holds on `tasks` to `millis` from now, or by each lease's
    /// own length.
    pub fn touch(
        &self,
        session: SessionId,
        queue: &str,
        tasks: &[TaskId],
        millis: Option<u64>,
    ) -> Result<PutProgress, QueueError> {
        let mut state = self.lock();
        let q = state.queue_idx(queue)?;
        let now = Deadline::now();
        let mut stale = Vec::new();
        for &task in tasks {
            let Some(lease) = state.held_by(q, task, session) else {
                stale.push(task);
                continue;
            };
            if let Some(ms) = millis {
                lease.length = Duration::from_millis(ms).clamp(Duration::from_millis(1), MAX_LEASE);
            }
            lease.deadline = now + lease.length;
            let deadline = lease.deadline;
            state.expiries.push(Reverse((deadline, q, task)));
        }
        state.compact_expiries();
        Ok(settled(tasks.len(), stale))
    }

    /// Gives back leases `session` holds on `tasks`: to the front of the queue after `delay`,
    /// or to the dead-letter queue if they have had all their deliveries.
    pub fn nack(
        &self,
        session: SessionId,
        queue: &str,
        tasks: &[TaskId],
        delay: Duration,
        reason: &str,
    ) -> Result<PutProgress, QueueError> {
        let mut state = self.lock();
        let q = state.queue_idx(queue)?;
        let mut stale = Vec::new();
        let mut now_back = Vec::new();
        for &task in tasks {
            let Some(Leased { item, .. }) = state.unlease(q, task, Some(session)) else {
                stale.push(task);
                continue;
            };
            if delay.is_zero() || state.exhausted(q, &item) {
                now_back.push((item, GiveBack::Nacked(reason.to_owned())));
            } else {
                state.queues[q].requeued_total += 1;
                state.queues[q].delayed += 1;
                state.delayed.push(Reverse(Delayed {
                    at: Deadline::now() + delay.min(MAX_LEASE),
                    q,
                    item,
                }));
            }
        }
        state.give_back_all(q, now_back);
        Ok(settled(tasks.len(), stale))
    }

    /// Creates `queue` if needed and sets its capacity.
    pub fn declare(&self, queue: &str, capacity: Option<u64>) -> Result<QueueStats, QueueError> {
        let mut state = self.lock();
        let q = state.queue_idx(queue)?;
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
        let q = state.queue_idx(queue)?;
        let items = items.into_iter().map(|payload| (payload, None));
        Ok(self.insert(state, q, session, items, wait))
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
        let tq = state.queue_idx(queue)?;
        let rq = state.queue_idx(results)?;
        let items = outcomes.into_iter().map(|o| (o.result, Some((tq, o.task))));
        Ok(self.insert(state, rq, session, items, wait))
    }

    fn insert(
        &self,
        mut state: MutexGuard<'_, State>,
        q: QueueIdx,
        session: SessionId,
        items: impl ExactSizeIterator<Item = (Bytes, Option<(QueueIdx, TaskId)>)>,
        wait: bool,
    ) -> Step<PutProgress, PutWaiting> {
        let first_id = state.reserve_ids(items.len());
        let mut pending: VecDeque<Pending> = items
            .zip(first_id..)
            .map(|((payload, settles), id)| Pending {
                id,
                payload,
                settles,
            })
            .collect();
        let mut progress = PutProgress {
            first_id,
            total: pending.len() as u32,
            processed: 0,
            stale: Vec::new(),
        };
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
        let id = state.next_waiter();
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
        let q = state.queue_idx(queue)?;
        let tasks = state.take(q, session, max, max_bytes, delivery);
        if !tasks.is_empty() {
            state.pump(q);
            return Ok(Step::Ready(tasks));
        }
        if !wait {
            return Ok(Step::Ready(tasks));
        }
        let id = state.next_waiter();
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
        let q = state.queue_idx(queue)?;
        let mut stale = Vec::new();
        for &task in tasks {
            if !state.settle(q, task, session) {
                stale.push(task);
            }
        }
        Ok(settled(tasks.len(), stale))
    }
}

/// Resolves at `deadline`, or never without one.
async fn until(deadline: Option<Deadline>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
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
        tokio::select! {
            res = rx => {
                self.rx = None;
                // Only a bug could drop the sender unsent; treat it as an empty wait.
                return res.unwrap_or_default();
            }
            () = until(deadline) => {}
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
        tokio::select! {
            res = rx => if let Ok(progress) = res {
                self.rx = None;
                return progress;
            },
            () = until(deadline) => {}
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
