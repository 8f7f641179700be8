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
//! given back again goes to `<queue>.dead` instead of round the fleet forever.
//!
//! This module is the single owner of queue contents: a persistent store would slot in here.

use std::cmp::Reverse;
use std::collections::hash_map::Entry;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, TryLockError};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rustc_hash::{FxHashMap, FxHashSet};
use taskmill_protocol::{
    encode_payload, DeadLetter, Delivery, Outcome, QueueStats, Task, TaskId, DEAD_SUFFIX,
    MAX_REASON,
};
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant as Deadline;
use tokio_util::sync::CancellationToken;

use crate::store::{Store, StoreError};

/// Longest queue name accepted.
pub const MAX_QUEUE_NAME: usize = 128;

/// Identity of one authenticated connection, for lease ownership.
pub type SessionId = u64;

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

/// A queue's `due` when it has no lease to expire and no delayed item to return.
const NEVER: u64 = u64::MAX;

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
    limits: QueueLimits,
    registry: RwLock<Registry>,
    /// Ids are reserved under the lock of the queue they go into, so that within one queue
    /// they grow with put order: giving items back in order relies on it.
    next_task: AtomicU64,
    next_session: AtomicU64,
    /// Sessions that have completed a task. Each queue remembers which of its sessions it has
    /// reported, so this lock is taken about once per session and queue, not per completion.
    completers: Mutex<Completers>,
    /// The origin of the queues' `due` times.
    epoch: Deadline,
}

#[derive(Debug, Default)]
struct Completers {
    open: FxHashSet<SessionId>,
    total: u64,
}

#[derive(Debug, Default)]
struct Registry {
    by_name: HashMap<String, Arc<Cell>>,
    /// In creation order: a queue's index here is its `rank`.
    all: Vec<Arc<Cell>>,
}

/// One queue and what may be read of it without its lock.
#[derive(Debug)]
struct Cell {
    name: String,
    /// Creation order; two queue locks are always taken lowest rank first.
    rank: usize,
    /// Holds another queue's dead letters: exempt from the queue limit, never dead-letters.
    /// A client may create `x.dead` itself; it becomes a dead-letter queue with x's first one.
    dead_letters: AtomicBool,
    /// When the queue next has a lease to expire or a delayed item to return ([`NEVER`] for
    /// nothing). Written on every unlock, so the timer can skip idle queues without locking
    /// them.
    due: AtomicU64,
    queue: Mutex<Queue>,
}

/// A nacked item and when it may return to its queue.
#[derive(Debug)]
struct Delayed {
    at: Stamp,
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

/// The leases one session took from one queue. `held` is appended to on every leasing get and
/// never searched: an entry counts only while the queue's lease map still names this session,
/// so settling a lease costs a counter decrement, and the list is pruned once dead entries
/// outnumber `live`.
#[derive(Debug, Default)]
struct SessionLeases {
    held: Vec<TaskId>,
    live: usize,
    /// This queue has reported the session to [`Shared::completers`].
    completed: bool,
}

#[derive(Debug)]
struct Queue {
    limits: QueueLimits,
    /// [`Shared::epoch`], the origin of this queue's stamps.
    epoch: Deadline,
    items: VecDeque<Item>,
    capacity: Option<u64>,
    leased: FxHashMap<TaskId, Leased>,
    sessions: FxHashMap<SessionId, SessionLeases>,
    getters: VecDeque<GetWaiter>,
    putters: VecDeque<PutWaiter>,
    next_waiter: WaiterId,
    /// Lease deadlines, soonest first. Entries are not removed when a lease is settled or
    /// touched; an entry counts only if the lease still exists with that exact deadline.
    expiries: BinaryHeap<Reverse<(Stamp, TaskId)>>,
    /// Nacked items waiting out their delay, soonest first.
    delayed: BinaryHeap<Reverse<Delayed>>,
    /// Sessions that completed their first task here since the lock was taken; reported to
    /// [`Shared::completers`] when it is released.
    new_completers: Vec<SessionId>,
    put_total: u64,
    delivered_total: u64,
    settled_total: u64,
    requeued_total: u64,
    expired_total: u64,
    dead_total: u64,
}

/// A queued task: its id, how often it was handed out, and its payload.
#[derive(Debug)]
struct Item {
    id: TaskId,
    stored: Stored,
}

// The memory target (64 bytes per queued small task, with a deque's growth slack) needs this.
const _: () = assert!(std::mem::size_of::<Item>() <= 32);

/// Payloads up to this long are kept inside the [`Item`].
const INLINE: usize = 18;

/// An item's delivery count and payload as the queue keeps them. Most payloads are a few bytes
/// (an encoded `SquareTask` is at most 8 for the usual inputs, its result about 15), so they
/// are stored inline: a queued small task costs a 32-byte slot and no allocation of its own.
/// The count sits inside each variant so that it shares the alignment padding of the boxed
/// one, which leaves 18 bytes inline. Larger payloads are a copy of their own (never a view
/// into a frame), boxed so the inline case sets the size.
#[derive(Debug)]
enum Stored {
    Inline {
        deliveries: u32,
        len: u8,
        data: [u8; INLINE],
    },
    Boxed {
        deliveries: u32,
        bytes: Box<Bytes>,
    },
}

impl Item {
    fn new(id: TaskId, deliveries: u32, payload: &[u8]) -> Self {
        let stored = if payload.len() > INLINE {
            // A decoded payload is a view into its whole frame (up to the frame cap); a queue
            // that kept views would hold every frame one item of it still sits in.
            Stored::Boxed {
                deliveries,
                bytes: Box::new(Bytes::copy_from_slice(payload)),
            }
        } else {
            let mut data = [0; INLINE];
            data[..payload.len()].copy_from_slice(payload);
            Stored::Inline {
                deliveries,
                len: payload.len() as u8,
                data,
            }
        };
        Self { id, stored }
    }

    /// Times handed out so far.
    fn deliveries(&self) -> u32 {
        match self.stored {
            Stored::Inline { deliveries, .. } | Stored::Boxed { deliveries, .. } => deliveries,
        }
    }

    fn deliveries_mut(&mut self) -> &mut u32 {
        match &mut self.stored {
            Stored::Inline { deliveries, .. } | Stored::Boxed { deliveries, .. } => deliveries,
        }
    }

    fn payload_len(&self) -> usize {
        match &self.stored {
            Stored::Inline { len, .. } => usize::from(*len),
            Stored::Boxed { bytes, .. } => bytes.len(),
        }
    }

    /// The payload when it is stored inline.
    fn inline(&self) -> Option<&[u8]> {
        match &self.stored {
            Stored::Inline { len, data, .. } => Some(&data[..usize::from(*len)]),
            Stored::Boxed { .. } => None,
        }
    }

    fn into_payload(self) -> Bytes {
        match self.stored {
            Stored::Inline { len, data, .. } => Bytes::copy_from_slice(&data[..usize::from(len)]),
            Stored::Boxed { bytes, .. } => *bytes,
        }
    }
}

/// A moment as nanoseconds from [`Shared::epoch`]: 8 bytes where a `Deadline` takes 16.
type Stamp = u64;

fn stamp(epoch: Deadline, at: Deadline) -> Stamp {
    at.saturating_duration_since(epoch).as_nanos() as Stamp
}

#[derive(Debug)]
struct Leased {
    item: Item,
    session: SessionId,
    deadline: Stamp,
    /// The lease's length in milliseconds, reused when a touch does not name one.
    length_ms: u32,
}

// The lease map is the master's hottest table, touched at random by every completion and
// mostly out of cache: 64-byte entries (80 before stamps) keep more of it in cache.
const _: () = assert!(std::mem::size_of::<(TaskId, Leased)>() <= 64);

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
    pending: Batch,
    progress: PutProgress,
    /// Whoever fills the waiter's last item sends its final progress here.
    tx: oneshot::Sender<PutProgress>,
    across: Option<Across>,
}

/// A completion waiting for room in another queue than the one holding its leases. Whoever
/// frees room may not wait for that queue's lock (it holds this one's, and the two are taken
/// in rank order), so it tries the lock, and if it is taken, wakes the waiter to fill itself.
#[derive(Debug)]
struct Across {
    source: Arc<Cell>,
    turn: Arc<Notify>,
}

/// What a put or complete has still to queue, as the request brought it: its items, or its
/// outcomes, each of which also settles the lease on its task in the queue that `fill` is
/// given as the source (or this queue, without one). The item `processed` from the start of
/// the batch gets the id `first_id + processed` (see [`PutProgress`]).
#[derive(Debug)]
enum Batch {
    Items(VecDeque<Bytes>),
    Outcomes(VecDeque<Outcome>),
}

impl Batch {
    /// The next payload, and the lease it settles.
    fn front(&self) -> Option<(&Bytes, Option<TaskId>)> {
        match self {
            Batch::Items(items) => items.front().map(|item| (item, None)),
            Batch::Outcomes(outcomes) => outcomes.front().map(|o| (&o.result, Some(o.task))),
        }
    }

    fn pop_front(&mut self) {
        match self {
            Batch::Items(items) => drop(items.pop_front()),
            Batch::Outcomes(outcomes) => drop(outcomes.pop_front()),
        }
    }

    fn len(&self) -> usize {
        match self {
            Batch::Items(items) => items.len(),
            Batch::Outcomes(outcomes) => outcomes.len(),
        }
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }
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

impl Queue {
    fn new(limits: QueueLimits, epoch: Deadline) -> Self {
        Self {
            limits,
            epoch,
            items: VecDeque::new(),
            capacity: normalise_capacity(limits.default_capacity),
            leased: FxHashMap::default(),
            sessions: FxHashMap::default(),
            getters: VecDeque::new(),
            putters: VecDeque::new(),
            next_waiter: 0,
            expiries: BinaryHeap::new(),
            delayed: BinaryHeap::new(),
            new_completers: Vec::new(),
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

    fn stats(&self, name: &str) -> QueueStats {
        QueueStats {
            name: name.to_owned(),
            len: self.items.len() as u64,
            capacity: self.capacity,
            leased: self.leased.len() as u64,
            delayed: self.delayed.len() as u64,
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

    fn stamp(&self, at: Deadline) -> Stamp {
        stamp(self.epoch, at)
    }

    /// When the timer next has work here.
    fn next_due(&self) -> Option<Stamp> {
        let lease = self.expiries.peek().map(|e| e.0 .0);
        let delayed = self.delayed.peek().map(|d| d.0.at);
        lease.into_iter().chain(delayed).min()
    }

    fn next_waiter(&mut self) -> WaiterId {
        self.next_waiter += 1;
        self.next_waiter
    }

    /// True while `session` holds the lease on `task`.
    fn holds(&self, task: TaskId, session: SessionId) -> bool {
        self.leased.get(&task).is_some_and(|l| l.session == session)
    }

    /// The lease `session` holds on `task`, if it does.
    fn held_by(&mut self, task: TaskId, session: SessionId) -> Option<&mut Leased> {
        self.leased.get_mut(&task).filter(|l| l.session == session)
    }

    /// Ends the lease on `task` if `owner` (or, with `None`, anyone) holds it, returning the
    /// item. The only place a lease ends.
    fn unlease(&mut self, task: TaskId, owner: Option<SessionId>) -> Option<Leased> {
        let Entry::Occupied(lease) = self.leased.entry(task) else {
            return None;
        };
        if owner.is_some_and(|s| lease.get().session != s) {
            return None;
        }
        let leased = lease.remove();
        if let Some(s) = self.sessions.get_mut(&leased.session) {
            s.live -= 1;
        }
        Some(leased)
    }

    /// Settles `task` if `session` holds its lease.
    fn settle(&mut self, task: TaskId, session: SessionId) -> bool {
        if self.unlease(task, Some(session)).is_none() {
            return false;
        }
        self.settled_total += 1;
        true
    }

    /// Counts `session` as a worker in the stats, once it has completed a task from here.
    fn completed_by(&mut self, session: SessionId) {
        if let Some(s) = self.sessions.get_mut(&session) {
            if !s.completed {
                s.completed = true;
                self.new_completers.push(session);
            }
        }
    }

    /// True when `item`, given back now, has had all its deliveries and goes to the
    /// dead-letter queue, if this queue `buries` (dead-letter queues don't, so no chain of
    /// queues can grow).
    fn exhausted(&self, item: &Item, buries: bool) -> bool {
        buries && item.deliveries() >= self.limits.max_attempts
    }

    /// Gives back several items so that they keep their put order at the front. Returns those
    /// that must go to the dead-letter queue instead (see [`Queue::give_back`]).
    fn give_back_all(&mut self, mut items: Vec<(Item, GiveBack)>, buries: bool) -> Vec<Buried> {
        // Ids grow with put order: giving back the newest first leaves the oldest in front.
        items.sort_unstable_by_key(|(item, _)| Reverse(item.id));
        items
            .into_iter()
            .filter_map(|(item, why)| self.give_back(item, &why, buries))
            .collect()
    }

    /// Puts an item whose lease ended unsettled back at the front or, once it is
    /// [`exhausted`](Queue::exhausted), returns it for the dead-letter queue, which the caller
    /// fills after unlocking.
    fn give_back(&mut self, item: Item, why: &GiveBack, buries: bool) -> Option<Buried> {
        if matches!(why, GiveBack::Expired(_)) {
            self.expired_total += 1;
        }
        if !self.exhausted(&item, buries) {
            self.requeued_total += 1;
            self.items.push_front(item);
            self.pump();
            return None;
        }
        self.dead_total += 1;
        let mut reason = why.reason();
        if reason.len() > MAX_REASON {
            let mut cut = MAX_REASON;
            while !reason.is_char_boundary(cut) {
                cut -= 1;
            }
            reason.truncate(cut);
        }
        Some(Buried { item, reason })
    }

    /// Takes up to `max` items (at least one if any are queued) whose reply fits `max_bytes`,
    /// leasing them to `session` when asked to.
    fn take(
        &mut self,
        session: SessionId,
        max: u32,
        max_bytes: usize,
        delivery: Delivery,
    ) -> Vec<Task> {
        let lease = match delivery {
            Delivery::Lease { millis } => {
                let length = millis.map_or(self.limits.lease_timeout, Duration::from_millis);
                let length = length.clamp(Duration::from_millis(1), MAX_LEASE);
                Some((
                    length.as_millis() as u32,
                    self.stamp(Deadline::now() + length),
                ))
            }
            Delivery::Remove => None,
        };
        // First how many fit, then hand them out: the small payloads among them go out as
        // slices of one buffer per reply, not an allocation each.
        let (mut count, mut bytes, mut small) = (0, 0, 0);
        for item in self.items.iter().take(max as usize) {
            let size = item.payload_len() + TASK_OVERHEAD;
            if count > 0 && bytes + size > max_bytes {
                break;
            }
            bytes += size;
            count += 1;
            small += item.inline().map_or(0, <[u8]>::len);
        }
        let mut buffer = BytesMut::with_capacity(small);
        for item in self.items.iter().take(count) {
            buffer.extend_from_slice(item.inline().unwrap_or_default());
        }
        let mut buffer = buffer.freeze();
        let mut tasks = Vec::with_capacity(count);
        for mut item in self.items.drain(..count) {
            *item.deliveries_mut() += 1;
            let payload = match &item.stored {
                Stored::Inline { len, .. } => buffer.split_to(usize::from(*len)),
                Stored::Boxed { bytes, .. } => Bytes::clone(bytes),
            };
            tasks.push(Task {
                id: item.id,
                attempt: item.deliveries(),
                payload,
            });
            if let Some((length_ms, deadline)) = lease {
                let leased = Leased {
                    item,
                    session,
                    deadline,
                    length_ms,
                };
                self.leased.insert(leased.item.id, leased);
            }
        }
        self.delivered_total += tasks.len() as u64;
        if let Some((_, deadline)) = lease {
            if !tasks.is_empty() {
                let leased = &self.leased;
                let leases = self.sessions.entry(session).or_default();
                leases.held.extend(tasks.iter().map(|t| t.id));
                leases.live += tasks.len();
                if leases.held.len() > 2 * leases.live + DEAD_SLACK {
                    leases
                        .held
                        .retain(|task| leased.get(task).is_some_and(|l| l.session == session));
                    // A task leased again by the same session appears twice.
                    leases.held.sort_unstable();
                    leases.held.dedup();
                }
                self.expiries
                    .extend(tasks.iter().map(|t| Reverse((deadline, t.id))));
                self.compact_expiries();
            }
        }
        tasks
    }

    /// Settled and touched leases leave their old entries in the expiry heap until those come
    /// due, which under load would be millions of dead entries. Rebuilding from the live leases
    /// once the dead outnumber them keeps the heap within twice the leases, at amortised O(1).
    fn compact_expiries(&mut self) {
        if self.expiries.len() <= 2 * self.leased.len() + DEAD_SLACK {
            return;
        }
        self.expiries = self
            .leased
            .iter()
            .map(|(&task, l)| Reverse((l.deadline, task)))
            .collect();
    }

    /// Puts items handed out to `session` back at the front, in their original order, as if
    /// never taken.
    fn untake(&mut self, tasks: Vec<Task>, delivery: Delivery, session: SessionId) {
        for task in tasks.into_iter().rev() {
            let mut item = match delivery {
                Delivery::Lease { .. } => match self.unlease(task.id, Some(session)) {
                    Some(leased) => leased.item,
                    // Already settled or requeued (its lease expired, its session ended, and
                    // perhaps it went to someone else since): nothing to give back.
                    None => continue,
                },
                Delivery::Remove => Item::new(task.id, task.attempt, &task.payload),
            };
            self.delivered_total -= 1;
            *item.deliveries_mut() -= 1;
            self.items.push_front(item);
        }
    }

    /// Moves pending items in while there is room, settling their leases in `source` (or in
    /// this queue, without one). Stale completions need no room and are consumed wherever
    /// they stand.
    fn fill(
        &mut self,
        mut source: Option<&mut Queue>,
        session: SessionId,
        pending: &mut Batch,
        progress: &mut PutProgress,
    ) {
        let mut settled_any = false;
        while let Some((payload, settles)) = pending.front() {
            let room = self.has_room();
            if let Some(task) = settles {
                let leases = match source.as_deref_mut() {
                    Some(other) => other,
                    None => &mut *self,
                };
                // With room, settling is the ownership check; without, only a stale completion
                // may still be consumed.
                let held = if room {
                    leases.settle(task, session)
                } else {
                    leases.holds(task, session)
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
            let id = progress.first_id + u64::from(progress.processed);
            self.items.push_back(Item::new(id, 0, payload));
            pending.pop_front();
            self.put_total += 1;
            progress.processed += 1;
        }
        if settled_any {
            source.unwrap_or(self).completed_by(session);
        }
    }

    /// Hands queued items to waiting getters and room to waiting putters, in arrival order,
    /// until neither can make progress.
    fn pump(&mut self) {
        loop {
            let mut progressed = false;
            while !self.items.is_empty() {
                let Some(w) = self.getters.pop_front() else {
                    break;
                };
                let tasks = self.take(w.session, w.max, w.max_bytes, w.delivery);
                if let Err(tasks) = w.tx.send(tasks) {
                    // The waiter was dropped between giving up and unregistering.
                    self.untake(tasks, w.delivery, w.session);
                } else {
                    progressed = true;
                }
            }
            while self.has_room() {
                let Some(front) = self.putters.front() else {
                    break;
                };
                let source = front.across.as_ref().map(|a| Arc::clone(&a.source));
                // Never waiting for the lock cannot deadlock, whatever the ranks. (What the
                // fill reports about the other queue is published when it is next unlocked.)
                let mut leases = match &source {
                    None => None,
                    Some(source) => match source.queue.try_lock() {
                        Ok(guard) => Some(guard),
                        Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
                        Err(TryLockError::WouldBlock) => {
                            if let Some(across) = &front.across {
                                across.turn.notify_one();
                            }
                            break;
                        }
                    },
                };
                let mut w = self.putters.pop_front().expect("front exists");
                let before = w.progress.processed;
                self.fill(
                    leases.as_deref_mut(),
                    w.session,
                    &mut w.pending,
                    &mut w.progress,
                );
                drop(leases);
                progressed |= w.progress.processed != before;
                if !w.pending.is_empty() {
                    self.putters.push_front(w);
                    break;
                }
                // A dropped receiver means the putter is gone; its items stay queued, as they
                // were accepted while it still waited.
                let _ = w.tx.send(w.progress);
            }
            if !progressed {
                break;
            }
        }
    }

    /// Requeues (or returns for burial) tasks whose lease has run out by `now`, and returns
    /// nacked tasks whose delay is over to the front.
    fn expire(&mut self, now: Deadline, buries: bool) -> Vec<Buried> {
        let mut expired = Vec::new();
        let now_stamp = self.stamp(now);
        while let Some(&Reverse((deadline, task))) = self.expiries.peek() {
            if deadline > now_stamp {
                break;
            }
            self.expiries.pop();
            if self.leased.get(&task).map(|l| l.deadline) != Some(deadline) {
                continue; // settled, requeued or touched since: a stale entry
            }
            let leased = self.unlease(task, None).expect("just found");
            let length = Duration::from_millis(leased.length_ms.into());
            expired.push((leased.item, GiveBack::Expired(length)));
        }
        let buried = self.give_back_all(expired, buries);
        let mut due = Vec::new();
        while self.delayed.peek().is_some_and(|d| d.0.at <= now_stamp) {
            due.push(self.delayed.pop().expect("just peeked").0.item);
        }
        if !due.is_empty() {
            due.sort_unstable_by_key(|item| Reverse(item.id));
            for item in due {
                self.items.push_front(item);
            }
            self.pump();
        }
        buried
    }
}

/// An item on its way to its queue's dead-letter queue.
#[derive(Debug)]
struct Buried {
    item: Item,
    reason: String,
}

/// A locked queue. Unlocking publishes what others read without the lock: when the timer is
/// next due here, and sessions that completed their first task here.
struct Locked<'a> {
    shared: &'a Shared,
    cell: &'a Cell,
    queue: MutexGuard<'a, Queue>,
}

impl Deref for Locked<'_> {
    type Target = Queue;

    fn deref(&self) -> &Queue {
        &self.queue
    }
}

impl DerefMut for Locked<'_> {
    fn deref_mut(&mut self) -> &mut Queue {
        &mut self.queue
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        let due = self.queue.next_due().unwrap_or(NEVER);
        self.cell.due.store(due, Relaxed);
        if !self.queue.new_completers.is_empty() {
            // A leaf lock: nothing else is ever taken while holding it.
            let mut completers = lock_unpoisoned(&self.shared.completers);
            for session in self.queue.new_completers.drain(..) {
                if completers.open.insert(session) {
                    completers.total += 1;
                }
            }
        }
    }
}

/// A poisoned lock means a panic while holding it, which would already be a bug report; keep
/// serving with the state as it is rather than failing every connection after it.
fn lock_unpoisoned<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl Registry {
    fn create(&mut self, name: &str, limits: QueueLimits, epoch: Deadline) -> Arc<Cell> {
        let cell = Arc::new(Cell {
            name: name.to_owned(),
            rank: self.all.len(),
            dead_letters: AtomicBool::new(false),
            due: AtomicU64::new(NEVER),
            queue: Mutex::new(Queue::new(limits, epoch)),
        });
        self.all.push(Arc::clone(&cell));
        self.by_name.insert(name.to_owned(), Arc::clone(&cell));
        cell
    }
}

impl Cell {
    /// Whether tasks that used up their attempts here go to a dead-letter queue.
    fn buries(&self) -> bool {
        !self.dead_letters.load(Relaxed)
    }
}

impl Broker {
    /// The queues kept in `store`, every change to them recorded there.
    pub fn open(limits: QueueLimits, _store: Arc<dyn Store>) -> Result<Self, StoreError> {
        Ok(Self::new(limits))
    }

    pub fn new(limits: QueueLimits) -> Self {
        Self {
            shared: Arc::new(Shared {
                limits,
                registry: RwLock::default(),
                next_task: AtomicU64::new(0),
                next_session: AtomicU64::new(0),
                completers: Mutex::default(),
                epoch: Deadline::now(),
            }),
        }
    }

    fn lock<'a>(&'a self, cell: &'a Cell) -> Locked<'a> {
        Locked {
            shared: &self.shared,
            cell,
            queue: lock_unpoisoned(&cell.queue),
        }
    }

    /// Locks `target` and, if it is another queue, `source`, lowest rank first.
    fn lock_pair<'a>(
        &'a self,
        target: &'a Cell,
        source: Option<&'a Cell>,
    ) -> (Locked<'a>, Option<Locked<'a>>) {
        match source {
            Some(source) if source.rank < target.rank => {
                let source = self.lock(source);
                (self.lock(target), Some(source))
            }
            Some(source) if source.rank > target.rank => {
                let target = self.lock(target);
                (target, Some(self.lock(source)))
            }
            _ => (self.lock(target), None),
        }
    }

    fn registry(&self) -> std::sync::RwLockReadGuard<'_, Registry> {
        self.shared
            .registry
            .read()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn registry_mut(&self) -> std::sync::RwLockWriteGuard<'_, Registry> {
        self.shared
            .registry
            .write()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn existing(&self, name: &str) -> Option<Arc<Cell>> {
        self.registry().by_name.get(name).cloned()
    }

    /// Every queue, in rank order.
    fn cells(&self) -> Vec<Arc<Cell>> {
        self.registry().all.clone()
    }

    /// The queue named `name`, created on first use.
    fn queue(&self, name: &str) -> Result<Arc<Cell>, QueueError> {
        if let Some(cell) = self.existing(name) {
            return Ok(cell);
        }
        if !valid_name(name) {
            return Err(QueueError::BadName(name.to_owned()));
        }
        let mut registry = self.registry_mut();
        if let Some(cell) = registry.by_name.get(name) {
            return Ok(Arc::clone(cell)); // created since we looked
        }
        let limits = self.shared.limits;
        let user_queues = registry.all.iter().filter(|c| c.buries()).count();
        if user_queues >= limits.max_queues {
            return Err(QueueError::TooManyQueues {
                name: name.to_owned(),
                max: limits.max_queues,
            });
        }
        Ok(registry.create(name, limits, self.shared.epoch))
    }

    /// Reserves `n` consecutive task ids. Call with the lock of the queue they go into held.
    fn reserve(&self, n: usize) -> TaskId {
        self.shared.next_task.fetch_add(n as u64, Relaxed)
    }

    /// Appends items that used up their attempts in `from` to its dead-letter queue.
    fn bury(&self, from: &Cell, buried: Vec<Buried>) {
        if buried.is_empty() {
            return;
        }
        let dead = {
            let name = format!("{}{DEAD_SUFFIX}", from.name);
            let mut registry = self.registry_mut();
            let cell = match registry.by_name.get(&name) {
                Some(cell) => Arc::clone(cell),
                None => registry.create(&name, self.shared.limits, self.shared.epoch),
            };
            cell.dead_letters.store(true, Relaxed);
            cell
        };
        let mut queue = self.lock(&dead);
        let first = self.reserve(buried.len());
        for (Buried { item, reason }, id) in buried.into_iter().zip(first..) {
            let letter = DeadLetter {
                task: item.id,
                queue: from.name.clone(),
                attempts: item.deliveries(),
                reason,
                payload: item.into_payload(),
            };
            let payload = encode_payload(&letter).expect("a DeadLetter always encodes");
            queue.items.push_back(Item::new(id, 0, &payload));
            queue.put_total += 1;
        }
        queue.pump();
    }

    /// Registers a connection that may hold leases.
    pub fn open_session(&self) -> SessionId {
        self.shared.next_session.fetch_add(1, Relaxed) + 1
    }

    /// Ends a connection: every task it still leases goes back to the front of its queue.
    /// Call after dropping the session's waiting futures. Returns how many were requeued.
    pub fn close_session(&self, session: SessionId) -> usize {
        let mut requeued = 0;
        for cell in self.cells() {
            let mut queue = self.lock(&cell);
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
            let buried = queue.give_back_all(back, cell.buries());
            drop(queue);
            self.bury(&cell, buried);
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
        self.cells().iter().any(|cell| {
            cell.due.load(Relaxed) != NEVER
                && self
                    .lock(cell)
                    .sessions
                    .get(&session)
                    .is_some_and(|s| s.live > 0)
        })
    }

    /// Leases outstanding across all queues (what a draining master waits for). Every queue
    /// is locked at once, in rank order, so a completion moving a result into a queue where it
    /// is leased at once cannot be missed between two queues' counts.
    pub fn leased_total(&self) -> u64 {
        let cells = self.cells();
        let queues: Vec<_> = cells.iter().map(|cell| self.lock(cell)).collect();
        queues.iter().map(|q| q.leased.len() as u64).sum()
    }

    /// Requeues (or dead-letters) tasks whose lease has run out by `now` and returns nacked
    /// tasks whose delay is over. Returns when it next has work to do.
    pub fn tick(&self, now: Deadline) -> Option<Deadline> {
        let due_now = stamp(self.shared.epoch, now);
        let mut next = NEVER;
        for cell in self.cells() {
            if cell.due.load(Relaxed) <= due_now {
                let mut queue = self.lock(&cell);
                let buried = queue.expire(now, cell.buries());
                drop(queue);
                self.bury(&cell, buried);
            }
            next = next.min(cell.due.load(Relaxed));
        }
        (next != NEVER).then(|| self.shared.epoch + Duration::from_nanos(next))
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
        let cell = self.queue(queue)?;
        let mut queue = self.lock(&cell);
        let now = queue.stamp(Deadline::now());
        let mut stale = Vec::new();
        for &task in tasks {
            let Some(lease) = queue.held_by(task, session) else {
                stale.push(task);
                continue;
            };
            if let Some(ms) = millis {
                lease.length_ms = ms.clamp(1, MAX_LEASE.as_millis() as u64) as u32;
            }
            lease.deadline = now + u64::from(lease.length_ms) * 1_000_000;
            let deadline = lease.deadline;
            queue.expiries.push(Reverse((deadline, task)));
        }
        queue.compact_expiries();
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
        let cell = self.queue(queue)?;
        let mut queue = self.lock(&cell);
        let buries = cell.buries();
        let mut stale = Vec::new();
        let mut now_back = Vec::new();
        for &task in tasks {
            let Some(Leased { item, .. }) = queue.unlease(task, Some(session)) else {
                stale.push(task);
                continue;
            };
            if delay.is_zero() || queue.exhausted(&item, buries) {
                now_back.push((item, GiveBack::Nacked(reason.to_owned())));
            } else {
                queue.requeued_total += 1;
                let at = queue.stamp(Deadline::now() + delay.min(MAX_LEASE));
                queue.delayed.push(Reverse(Delayed { at, item }));
            }
        }
        let buried = queue.give_back_all(now_back, buries);
        drop(queue);
        self.bury(&cell, buried);
        Ok(settled(tasks.len(), stale))
    }

    /// Creates `queue` if needed and sets its capacity.
    pub fn declare(&self, queue: &str, capacity: Option<u64>) -> Result<QueueStats, QueueError> {
        let cell = self.queue(queue)?;
        let mut queue = self.lock(&cell);
        queue.capacity = normalise_capacity(capacity);
        queue.pump();
        Ok(queue.stats(&cell.name))
    }

    pub fn inspect(&self, queue: &str) -> Result<QueueStats, QueueError> {
        let cell = self
            .existing(queue)
            .ok_or_else(|| QueueError::NoSuchQueue(queue.to_owned()))?;
        let stats = self.lock(&cell).stats(&cell.name);
        Ok(stats)
    }

    /// Every queue's state, plus how many sessions ever completed a task.
    pub fn snapshot(&self) -> (Vec<QueueStats>, u64) {
        let cells = self.cells();
        let queues = cells
            .iter()
            .map(|cell| self.lock(cell).stats(&cell.name))
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
    ) -> Result<Step<PutProgress, PutWaiting>, QueueError> {
        let cell = self.queue(queue)?;
        let batch = Batch::Items(items.into());
        Ok(self.insert(cell, None, session, batch, wait))
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
        let tasks = self.queue(queue)?;
        let target = self.queue(results)?;
        // Settling in the results queue itself needs no second lock.
        let source = (tasks.rank != target.rank).then_some(tasks);
        let batch = Batch::Outcomes(outcomes.into());
        Ok(self.insert(target, source, session, batch, wait))
    }

    fn insert(
        &self,
        target: Arc<Cell>,
        source: Option<Arc<Cell>>,
        session: SessionId,
        mut pending: Batch,
        wait: bool,
    ) -> Step<PutProgress, PutWaiting> {
        let (mut queue, mut leases) = self.lock_pair(&target, source.as_deref());
        let first_id = self.reserve(pending.len());
        let mut progress = PutProgress {
            first_id,
            total: pending.len() as u32,
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
            Step::Ready(progress)
        } else {
            let id = queue.next_waiter();
            let (tx, rx) = oneshot::channel();
            let across = source.as_ref().map(|source| Across {
                source: Arc::clone(source),
                turn: Arc::new(Notify::new()),
            });
            let turn = across.as_ref().map(|a| Arc::clone(&a.turn));
            queue.putters.push_back(PutWaiter {
                id,
                session,
                pending,
                progress,
                tx,
                across,
            });
            Step::Wait((id, rx, turn))
        };
        // With the other queue's lock free again, waiters that settle leases there and find
        // room here are served now rather than woken.
        drop(leases);
        queue.pump();
        drop(queue);
        match step {
            Step::Ready(progress) => Step::Ready(progress),
            Step::Wait((id, rx, turn)) => Step::Wait(PutWaiting {
                broker: self.clone(),
                target,
                source,
                id,
                rx: Some(rx),
                turn,
            }),
        }
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
        let cell = self.queue(queue)?;
        let mut queue = self.lock(&cell);
        let tasks = queue.take(session, max, max_bytes, delivery);
        if !tasks.is_empty() {
            queue.pump();
            return Ok(Step::Ready(tasks));
        }
        if !wait {
            return Ok(Step::Ready(tasks));
        }
        let id = queue.next_waiter();
        let (tx, rx) = oneshot::channel();
        queue.getters.push_back(GetWaiter {
            id,
            session,
            max,
            max_bytes,
            delivery,
            tx,
        });
        drop(queue);
        Ok(Step::Wait(GetWaiting {
            broker: self.clone(),
            cell,
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
    ) -> Result<PutProgress, QueueError> {
        let cell = self.queue(queue)?;
        let mut queue = self.lock(&cell);
        let stale = tasks
            .iter()
            .copied()
            .filter(|&task| !queue.settle(task, session))
            .collect();
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
    cell: Arc<Cell>,
    id: WaiterId,
    session: SessionId,
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
        let mut queue = self.broker.lock(&self.cell);
        if let Some(pos) = queue.getters.iter().position(|w| w.id == self.id) {
            queue.getters.remove(pos);
            return None;
        }
        // Not registered any more, so the sender already ran, under the same lock.
        rx.try_recv().ok()
    }
}

impl Drop for GetWaiting {
    fn drop(&mut self) {
        if let Some(tasks) = self.give_up() {
            let mut queue = self.broker.lock(&self.cell);
            queue.untake(tasks, self.delivery, self.session);
            queue.pump();
        }
    }
}

/// A `put` or `complete` waiting for room. Dropping it unregisters it; what it already queued
/// stays queued.
#[derive(Debug)]
pub struct PutWaiting {
    broker: Broker,
    target: Arc<Cell>,
    /// The queue holding the leases a completion settles, when it is not `target`.
    source: Option<Arc<Cell>>,
    id: WaiterId,
    rx: Option<oneshot::Receiver<PutProgress>>,
    /// With a `source`: rung when room appeared but the source's lock was taken.
    turn: Option<Arc<Notify>>,
}

/// Resolves when `turn` is rung, or never without one.
async fn rung(turn: Option<&Notify>) {
    match turn {
        Some(turn) => turn.notified().await,
        None => std::future::pending().await,
    }
}

impl PutWaiting {
    /// Waits until everything is queued, `deadline` passes or `stop` fires, and says how far it
    /// got.
    pub async fn wait(
        mut self,
        deadline: Option<Deadline>,
        stop: CancellationToken,
    ) -> PutProgress {
        let turn = self.turn.clone();
        loop {
            let rx = self.rx.as_mut().expect("waited once");
            tokio::select! {
                res = rx => {
                    if let Ok(progress) = res {
                        self.rx = None;
                        return progress;
                    }
                    break;
                }
                () = rung(turn.as_deref()) => {
                    if let Some(progress) = self.fill_self() {
                        self.rx = None;
                        return progress;
                    }
                }
                () = until(deadline) => break,
                () = stop.cancelled() => break,
            }
        }
        // Registered, or its progress was sent; only a bug leaves neither.
        self.give_up().unwrap_or_default()
    }

    /// A woken completion's turn: if it is first in line, it fills itself under both locks
    /// and, once it has nothing left, unregisters and returns its progress.
    fn fill_self(&self) -> Option<PutProgress> {
        let (mut queue, mut leases) = self.broker.lock_pair(&self.target, self.source.as_deref());
        if queue.putters.front().is_none_or(|w| w.id != self.id) {
            // Not its turn yet (whoever is first will wake it in time), or already filled by
            // whoever freed the room, its progress sent.
            return None;
        }
        let mut w = queue.putters.pop_front().expect("front exists");
        queue.fill(
            leases.as_deref_mut(),
            w.session,
            &mut w.pending,
            &mut w.progress,
        );
        drop(leases);
        let finished = w.pending.is_empty();
        let progress = if finished {
            Some(w.progress)
        } else {
            queue.putters.push_front(w);
            None
        };
        // Getters may be waiting for what was just queued, and if they make room, whoever is
        // first in line (possibly this completion again) is served.
        queue.pump();
        progress
    }

    fn give_up(&mut self) -> Option<PutProgress> {
        let mut rx = self.rx.take()?;
        let mut queue = self.broker.lock(&self.target);
        if let Some(pos) = queue.putters.iter().position(|w| w.id == self.id) {
            let w = queue.putters.remove(pos).expect("position is in range");
            // Putters behind this one may fit now.
            queue.pump();
            return Some(w.progress);
        }
        // Not registered any more: whoever filled it sent its progress, under the same lock.
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
