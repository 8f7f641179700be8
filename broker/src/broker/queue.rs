//! One queue under its lock: items in put order, capacity, waiters served in arrival order,
//! and what it hands out.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::{Arc, TryLockError};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rustc_hash::FxHashMap;
use taskmill_protocol::{Delivery, QueueStats, Task, TaskId};
use tokio::time::Instant as Deadline;

use super::item::{Item, Stored};
use super::journal::{Change, Journal, LeaseTerms};
use super::lease::{instant, stamp, Delayed, Leased, SessionLeases, Stamp, DEAD_SLACK, MAX_LEASE};
use super::origin::Origins;
use super::progress::{Batch, Progress};
use super::report::{Latency, Tally};
use super::route::Routes;
use super::waiter::{GetWaiter, PutWaiter, WaiterId};
use super::{QueueLimits, SessionId};

/// Bytes a task adds to a `Tasks` reply beyond its payload (id, attempt, lengths), rounded up.
pub(super) const TASK_OVERHEAD: usize = 32;

#[derive(Debug)]
pub(super) struct Queue {
    pub(super) limits: QueueLimits,
    /// [`Shared::epoch`], the origin of this queue's stamps.
    pub(super) epoch: Deadline,
    /// Where this queue's changes are recorded.
    pub(super) journal: Journal,
    /// What recent puts to be carried out at most once achieved.
    pub(super) origins: Origins,
    /// Where the outcomes of tasks whose put named a reply queue go.
    pub(super) routes: Routes,
    /// Deleted: an operation that finds its queue so (having looked it up just before the
    /// delete) looks the name up again.
    pub(super) deleted: bool,
    pub(super) items: VecDeque<Item>,
    pub(super) capacity: Option<u64>,
    pub(super) leased: FxHashMap<TaskId, Leased>,
    pub(super) sessions: FxHashMap<SessionId, SessionLeases>,
    pub(super) getters: VecDeque<GetWaiter>,
    pub(super) putters: VecDeque<PutWaiter>,
    pub(super) next_waiter: WaiterId,
    /// Lease deadlines, soonest first. Entries are not removed when a lease is settled or
    /// touched; an entry counts only if the lease still exists with that exact deadline.
    pub(super) expiries: BinaryHeap<Reverse<(Stamp, TaskId)>>,
    /// Nacked items waiting out their delay, soonest first.
    pub(super) delayed: BinaryHeap<Reverse<Delayed>>,
    /// Sessions that completed their first task here since the lock was taken; reported to
    /// [`Shared::completers`] when it is released.
    pub(super) new_completers: Vec<SessionId>,
    pub(super) put_total: u64,
    pub(super) delivered_total: u64,
    pub(super) settled_total: u64,
    pub(super) requeued_total: u64,
    pub(super) expired_total: u64,
    pub(super) dead_total: u64,
    /// What the totals above do not split, for observers.
    pub(super) tally: Tally,
    /// What the items this queue holds (queued, leased, delayed) are charged against the
    /// memory budget ([`super::memory`]), and how much of it the budget has been told of.
    pub(super) held: u64,
    pub(super) published: u64,
    pub(super) latency: Latency,
}

/// A capacity as the protocol states it: `None` or 0 is unbounded (Python's `maxsize <= 0`).
pub(super) fn normalise_capacity(capacity: Option<u64>) -> Option<u64> {
    capacity.filter(|&c| c > 0)
}

impl Queue {
    pub(super) fn new(limits: QueueLimits, epoch: Deadline, journal: Journal) -> Self {
        Self {
            limits,
            epoch,
            journal,
            origins: Origins::default(),
            routes: Routes::default(),
            deleted: false,
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
            tally: Tally::default(),
            latency: Latency::default(),
            held: 0,
            published: 0,
        }
    }

    /// A put that was waiting has ended (all in, or given up): a resend now gets its outcome.
    pub(super) fn finished(&mut self, batch: &Batch) {
        if let Some(origin) = batch.origin() {
            self.origins.finish(origin);
        }
    }

    /// Appends a new item.
    pub(super) fn push(&mut self, id: TaskId, payload: &[u8]) {
        let item = Item::new(id, 0, payload);
        self.held += item.cost();
        self.items.push_back(item);
        self.put_total += 1;
    }

    pub(super) fn has_room(&self) -> bool {
        self.capacity
            .is_none_or(|cap| (self.items.len() as u64) < cap)
    }

    pub(super) fn stats(&self, name: &str) -> QueueStats {
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

    /// What this queue's items are charged, counted from what it holds (after a restore).
    pub(super) fn recount(&mut self) {
        let queued = self.items.iter().map(Item::cost).sum::<u64>();
        let leased = self.leased.values().map(|l| l.item.cost()).sum::<u64>();
        let delayed = self.delayed.iter().map(|d| d.0.item.cost()).sum::<u64>();
        self.held = queued + leased + delayed;
    }

    pub(super) fn stamp(&self, at: Deadline) -> Stamp {
        stamp(self.epoch, at)
    }

    /// When the timer next has work here.
    pub(super) fn next_due(&self) -> Option<Stamp> {
        let lease = self.expiries.peek().map(|e| e.0 .0);
        let delayed = self.delayed.peek().map(|d| d.0.at);
        lease.into_iter().chain(delayed).min()
    }

    pub(super) fn next_waiter(&mut self) -> WaiterId {
        self.next_waiter += 1;
        self.next_waiter
    }
    /// Takes up to `max` items whose reply fits `max_bytes` (at least one if any are queued,
    /// unless `strict`), leasing them to `session` when asked to.
    pub(super) fn take(
        &mut self,
        session: SessionId,
        max: u32,
        max_bytes: usize,
        delivery: Delivery,
        strict: bool,
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
            let reply = self.routes.reply(item.id).map_or(0, Bytes::len);
            let size = item.payload_len() + reply + TASK_OVERHEAD;
            if (count > 0 || strict) && bytes + size > max_bytes {
                break;
            }
            bytes += size;
            count += 1;
            small += item.inline().map_or(0, <[u8]>::len);
        }
        self.take_front(count, small, session, lease)
    }

    /// Takes the first `count` items (`small` bytes of them stored inline), each delivered
    /// once more, leasing them to `session` (for `length_ms`, until `deadline`) when `lease`
    /// says so.
    pub(super) fn take_front(
        &mut self,
        count: usize,
        small: usize,
        session: SessionId,
        lease: Option<(u32, Stamp)>,
    ) -> Vec<Task> {
        let mut buffer = BytesMut::with_capacity(small);
        for item in self.items.iter().take(count) {
            buffer.extend_from_slice(item.inline().unwrap_or_default());
        }
        let mut buffer = buffer.freeze();
        let mut tasks = Vec::with_capacity(count);
        let mut released = 0;
        for mut item in self.items.drain(..count) {
            *item.deliveries_mut() += 1;
            if lease.is_none() {
                released += item.cost();
            }
            let payload = match &item.stored {
                Stored::Inline { len, .. } => buffer.split_to(usize::from(*len)),
                Stored::Boxed { bytes, .. } => Bytes::clone(bytes),
            };
            let reply_to = if lease.is_some() {
                self.routes.reply(item.id).cloned()
            } else {
                self.routes.left(item.id)
            };
            tasks.push(Task {
                id: item.id,
                attempt: item.deliveries(),
                payload,
                reply_to: reply_to.unwrap_or_default(),
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
        self.held -= released;
        self.delivered_total += tasks.len() as u64;
        if !tasks.is_empty() {
            let epoch = self.epoch;
            self.journal.record(|queue| Change::Taken {
                queue,
                tasks: &tasks,
                lease: lease.map(|(length_ms, deadline)| LeaseTerms {
                    session,
                    deadline: instant(epoch, deadline),
                    length_ms,
                }),
            });
        }
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
    /// Puts items handed out to `session` back at the front, in their original order, as if
    /// never taken.
    pub(super) fn untake(&mut self, tasks: Vec<Task>, delivery: Delivery, session: SessionId) {
        for task in tasks.into_iter().rev() {
            let mut item = match delivery {
                Delivery::Lease { .. } => match self.unlease(task.id, Some(session)) {
                    Some(leased) => leased.item,
                    // Already settled or requeued (its lease expired, its session ended, and
                    // perhaps it went to someone else since): nothing to give back.
                    None => continue,
                },
                Delivery::Remove => {
                    self.routes.returned(task.id, &task.reply_to);
                    let item = Item::new(task.id, task.attempt, &task.payload);
                    self.held += item.cost();
                    item
                }
            };
            self.delivered_total -= 1;
            *item.deliveries_mut() -= 1;
            self.items.push_front(item);
            let leased = matches!(delivery, Delivery::Lease { .. });
            self.journal.record(|queue| Change::Untaken {
                queue,
                task: &task,
                leased,
            });
        }
    }

    /// Moves pending items in while there is room, settling their leases in `source` (or in
    /// this queue, without one). Stale completions need no room and are consumed wherever
    /// they stand.
    pub(super) fn fill(
        &mut self,
        mut source: Option<&mut Queue>,
        session: SessionId,
        pending: &mut Batch,
        progress: &mut Progress,
    ) {
        let mut settled = 0;
        let origin = pending.origin();
        let before = progress.processed;
        let source_rank = source
            .as_ref()
            .map_or(self.journal.rank, |q| q.journal.rank);
        // A put's items all go in while there is room (none is ever stale), so their route is
        // known before the first: recorded ahead of their puts, no recovered item ever lacks it
        // (a crash between the two would leave tasks whose results go astray).
        if let Some(reply) = pending.reply() {
            let room = self.capacity.map_or(usize::MAX, |cap| {
                cap.saturating_sub(self.items.len() as u64) as usize
            });
            let count = pending.len().min(room) as u32;
            if count > 0 {
                let first = progress.first_id + u64::from(before);
                self.routes.add(first, count, reply);
                self.journal.record(|queue| Change::Routed {
                    queue,
                    first,
                    count,
                    reply,
                });
            }
        }
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
                settled += u64::from(room);
            }
            if !room {
                break;
            }
            let id = progress.first_id + u64::from(progress.processed);
            self.push(id, payload);
            self.journal.record(|queue| match settles {
                Some(task) => Change::Completed {
                    queue: source_rank,
                    task,
                    target: queue,
                    id,
                    payload,
                },
                None => Change::Put {
                    queue,
                    id,
                    payload,
                    origin,
                },
            });
            pending.pop_front();
            progress.processed += 1;
        }
        // A put's items (never stale) went in one after another: count them once.
        let accepted = progress.processed - before;
        let first = progress.first_id + u64::from(before);
        if let Some(origin) = origin.filter(|_| accepted > 0) {
            self.origins.accepted(origin, first, accepted);
        }
        if settled > 0 {
            source.unwrap_or(self).completed_by(session, settled);
        }
    }

    /// Hands queued items to waiting getters and room to waiting putters, in arrival order,
    /// until neither can make progress.
    pub(super) fn pump(&mut self) {
        loop {
            let mut progressed = false;
            while !self.items.is_empty() {
                let Some(w) = self.getters.pop_front() else {
                    break;
                };
                let tasks = self.take(w.session, w.max, w.max_bytes, w.delivery, w.strict);
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
                let source = front.cross.as_ref().map(|a| Arc::clone(&a.source));
                // Never waiting for the lock cannot deadlock, whatever the ranks. (What the
                // fill reports about the other queue is published when it is next unlocked.)
                let mut leases = match &source {
                    None => None,
                    Some(source) => match source.queue.try_lock() {
                        Ok(guard) => Some(guard),
                        Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
                        Err(TryLockError::WouldBlock) => {
                            if let Some(cross) = &front.cross {
                                cross.turn.notify_one();
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
                self.finished(&w.pending);
                let _ = w.tx.send(w.progress);
            }
            if !progressed {
                break;
            }
        }
    }
}
