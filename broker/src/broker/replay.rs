//! Replay: rebuilding queues from their journal. [`Broker::apply`] makes one recorded
//! [`Change`] again, through the same primitives the live operation used, so replaying a
//! journal in order gives the queues it recorded: items in order with their delivery counts,
//! leases with their holders and deadlines, delayed tasks, dead letters, capacities and
//! counters. A change that does not fit the state (a task that is not where it says) is an
//! error, never a guess, and leaves the state as it was.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use taskmill_protocol::TaskId;

use super::item::Item;
use super::journal::{Change, QueueRank};
use super::lease::stamp;
use super::registry::Slot;
use super::Broker;

/// A recorded change that does not fit the queues it is replayed into.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    #[error("a change names queue {0}, which was never created")]
    NoSuchQueue(QueueRank),
    #[error("queue {name:?} is created as queue {rank}, but {existing} queues exist")]
    CreatedOutOfOrder {
        name: String,
        rank: QueueRank,
        existing: usize,
    },
    #[error("task {task} of queue {queue} is not {expected}")]
    Misplaced {
        queue: QueueRank,
        task: TaskId,
        expected: &'static str,
    },
}

impl Broker {
    /// Makes `change` again, as recorded. Replay a journal's changes in their order into a
    /// broker that has none of its own yet.
    pub fn apply(&self, change: &Change<'_>) -> Result<(), ReplayError> {
        self.apply_where(change, |_| true)
    }

    /// [`Broker::apply`] to the queues `applies` names only: a change recorded before a
    /// queue's image was taken is already in it.
    pub fn apply_where(
        &self,
        change: &Change<'_>,
        applies: impl Fn(QueueRank) -> bool,
    ) -> Result<(), ReplayError> {
        let queue = change.queue();
        let second = change.second_queue();
        if !applies(queue) && second.is_none_or(|q| !applies(q)) {
            return Ok(());
        }
        match *change {
            Change::Created {
                queue,
                name,
                capacity,
            } => {
                let mut registry = self.registry_mut();
                let existing = registry.all.len();
                if existing != queue as usize || registry.by_name.contains_key(name) {
                    return Err(ReplayError::CreatedOutOfOrder {
                        name: name.to_owned(),
                        rank: queue,
                        existing,
                    });
                }
                let slot = registry.create(name, &self.shared);
                drop(registry);
                self.lock(&slot).capacity = capacity;
            }
            Change::Declared { queue, capacity } => {
                let slot = self.slot(queue)?;
                self.lock(&slot).capacity = capacity;
            }
            Change::Put {
                queue,
                id,
                payload,
                origin,
            } => {
                let slot = self.slot(queue)?;
                let mut q = self.lock(&slot);
                q.push(id, payload);
                if let Some(origin) = origin {
                    // Whatever became of it, a put read back from the log has ended.
                    q.origins.accepted(origin, id, 1);
                    q.origins.finish(origin);
                }
                drop(q);
                self.seen_id(id);
            }
            Change::Completed {
                queue,
                task,
                target,
                id,
                payload,
            } => {
                // Both queues found before either changes: a change fails whole or not at all.
                let (source, target_slot) = (self.slot(queue)?, self.slot(target)?);
                if applies(queue) {
                    let mut source = self.lock(&source);
                    let session = source
                        .leased
                        .get(&task)
                        .map(|lease| lease.session)
                        .ok_or_else(|| misplaced(queue, task, "leased"))?;
                    source.settle(task, session);
                    // The tally counts what this process did, not what it replays.
                    source.completed_by(session, 0);
                }
                if applies(target) {
                    self.lock(&target_slot).push(id, payload);
                }
                self.seen_id(id);
            }
            Change::Taken {
                queue,
                tasks,
                lease,
            } => {
                let slot = self.slot(queue)?;
                let mut q = self.lock(&slot);
                // Each task is at the front with the delivery count the record says it had.
                let mut front = q.items.iter().map(|i| (i.id, i.deliveries() + 1));
                if let Some(t) = tasks
                    .iter()
                    .find(|t| front.next() != Some((t.id, t.attempt)))
                {
                    return Err(misplaced(
                        queue,
                        t.id,
                        "at the front with that delivery count",
                    ));
                }
                let epoch = q.epoch;
                let terms = lease.map(|l| (l.length_ms, stamp(epoch, l.deadline)));
                let session = lease.map_or(0, |l| l.session);
                let small = q
                    .items
                    .iter()
                    .take(tasks.len())
                    .map(|i| i.inline().map_or(0, <[u8]>::len))
                    .sum();
                q.take_front(tasks.len(), small, session, terms);
                if let Some(l) = lease {
                    self.seen_session(l.session);
                }
            }
            Change::Untaken {
                queue,
                task,
                leased,
            } => {
                let slot = self.slot(queue)?;
                let mut q = self.lock(&slot);
                let mut item = if leased {
                    q.unlease(task.id, None)
                        .ok_or_else(|| misplaced(queue, task.id, "leased"))?
                        .item
                } else {
                    q.routes.returned(task.id, &task.reply_to);
                    let item = Item::new(task.id, task.attempt, &task.payload);
                    q.held += item.cost();
                    item
                };
                q.delivered_total -= 1;
                *item.deliveries_mut() -= 1;
                q.items.push_front(item);
            }
            Change::Acked { queue, task } => {
                let slot = self.slot(queue)?;
                let mut q = self.lock(&slot);
                let session = q.leased.get(&task).map(|lease| lease.session);
                if !session.is_some_and(|s| q.settle(task, s)) {
                    return Err(misplaced(queue, task, "leased"));
                }
            }
            Change::Touched {
                queue,
                task,
                deadline,
                length_ms,
            } => {
                let slot = self.slot(queue)?;
                let mut q = self.lock(&slot);
                let deadline = q.stamp(deadline);
                if !q.relet(task, deadline, length_ms) {
                    return Err(misplaced(queue, task, "leased"));
                }
            }
            Change::Requeued { queue, task, why } => {
                let slot = self.slot(queue)?;
                let mut q = self.lock(&slot);
                let leased = q
                    .unlease(task, None)
                    .ok_or_else(|| misplaced(queue, task, "leased"))?;
                q.requeue(leased.item, why);
            }
            Change::Delayed { queue, task, until } => {
                let slot = self.slot(queue)?;
                let mut q = self.lock(&slot);
                let leased = q
                    .unlease(task, None)
                    .ok_or_else(|| misplaced(queue, task, "leased"))?;
                q.delay(leased.item, until);
            }
            Change::Undelayed { queue, task } => {
                let slot = self.slot(queue)?;
                let mut q = self.lock(&slot);
                let mut delayed = std::mem::take(&mut q.delayed).into_vec();
                let found = delayed.iter().position(|d| d.0.item.id == task);
                let item = found.map(|at| delayed.swap_remove(at).0.item);
                q.delayed = delayed.into();
                q.items
                    .push_front(item.ok_or_else(|| misplaced(queue, task, "delayed"))?);
            }
            Change::Buried {
                queue,
                task,
                why,
                dead,
                id,
                letter,
            } => {
                let (source, dead_slot) = (self.slot(queue)?, self.slot(dead)?);
                if applies(queue) {
                    let mut q = self.lock(&source);
                    let leased = q
                        .unlease(task, None)
                        .ok_or_else(|| misplaced(queue, task, "leased"))?;
                    q.held -= leased.item.cost();
                    q.routes.left(task);
                    q.count_buried(why);
                }
                if applies(dead) {
                    dead_slot.dead_letters.store(true, Relaxed);
                    self.lock(&dead_slot).push(id, letter);
                }
                self.seen_id(id);
            }
            Change::Routed {
                queue,
                first,
                count,
                reply,
            } => {
                let slot = self.slot(queue)?;
                let reply = bytes::Bytes::copy_from_slice(reply);
                self.lock(&slot).routes.add(first, count, &reply);
            }
            Change::Purged { queue } => {
                let slot = self.slot(queue)?;
                // (What it told reply queues is in the log as puts of its own.)
                self.lock(&slot).purge("");
            }
            Change::Deleted { queue } => {
                let slot = self.slot(queue)?;
                let mut q = self.lock(&slot);
                q.purge("");
                q.deleted = true;
                drop(q);
                let mut registry = self.registry_mut();
                registry.by_name.remove(&slot.name);
                registry.all[slot.rank] = None;
            }
        }
        Ok(())
    }

    /// The queue of rank `queue`.
    fn slot(&self, queue: QueueRank) -> Result<Arc<Slot>, ReplayError> {
        self.registry()
            .all
            .get(queue as usize)
            .cloned()
            .flatten()
            .ok_or(ReplayError::NoSuchQueue(queue))
    }

    /// New ids start past every id replayed.
    pub(super) fn seen_id(&self, id: TaskId) {
        self.shared.next_task.fetch_max(id + 1, Relaxed);
    }

    /// New sessions start past every session replayed.
    pub(super) fn seen_session(&self, session: u64) {
        self.shared.next_session.fetch_max(session, Relaxed);
    }
}

fn misplaced(queue: QueueRank, task: TaskId, expected: &'static str) -> ReplayError {
    ReplayError::Misplaced {
        queue,
        task,
        expected,
    }
}

/// Everything one queue holds, in a form two brokers can be compared by (tests only).
#[cfg(test)]
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct QueueDump {
    pub name: String,
    pub dead_letters: bool,
    /// Counters and capacity; waiters are not state a journal keeps, so they read zero.
    pub stats: taskmill_protocol::QueueStats,
    /// `(id, deliveries, payload)` in queue order.
    pub items: Vec<(TaskId, u32, Vec<u8>)>,
    /// `(id, holder, deadline, length in ms, deliveries, payload)` by id.
    pub leased: Vec<(TaskId, u64, tokio::time::Instant, u32, u32, Vec<u8>)>,
    /// `(due, id, deliveries, payload)` by due time.
    pub delayed: Vec<(tokio::time::Instant, TaskId, u32, Vec<u8>)>,
    /// Live leases per session holding any.
    pub live: Vec<(u64, usize)>,
    /// Reply routes by first id.
    pub routes: Vec<(TaskId, super::route::Route)>,
}

#[cfg(test)]
impl Broker {
    /// Every queue's contents in rank order, and how many sessions ever completed a task.
    pub(crate) fn dump(&self) -> (Vec<QueueDump>, u64) {
        use super::lease::instant;
        let queues = self
            .slots()
            .iter()
            .map(|slot| {
                let q = self.lock(slot);
                let mut stats = q.stats(&slot.name);
                (stats.waiting_getters, stats.waiting_putters) = (0, 0);
                let mut leased: Vec<_> = q
                    .leased
                    .iter()
                    .map(|(&id, l)| {
                        let at = instant(q.epoch, l.deadline);
                        let payload = l.item.payload().to_vec();
                        (id, l.session, at, l.length_ms, l.item.deliveries(), payload)
                    })
                    .collect();
                leased.sort_unstable_by_key(|l| l.0);
                let mut delayed: Vec<_> = q
                    .delayed
                    .iter()
                    .map(|d| {
                        let item = &d.0.item;
                        let at = instant(q.epoch, d.0.at);
                        (at, item.id, item.deliveries(), item.payload().to_vec())
                    })
                    .collect();
                delayed.sort_unstable();
                let mut live: Vec<_> = q
                    .sessions
                    .iter()
                    .filter(|(_, s)| s.live > 0)
                    .map(|(&session, s)| (session, s.live))
                    .collect();
                live.sort_unstable();
                QueueDump {
                    name: slot.name.clone(),
                    dead_letters: slot.dead_letters.load(std::sync::atomic::Ordering::Relaxed),
                    stats,
                    items: q
                        .items
                        .iter()
                        .map(|i| (i.id, i.deliveries(), i.payload().to_vec()))
                        .collect(),
                    leased,
                    delayed,
                    live,
                    routes: q.routes.all(),
                }
            })
            .collect();
        let completers = super::registry::lock_unpoisoned(&self.shared.completers).total;
        (queues, completers)
    }
}
