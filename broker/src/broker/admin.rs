//! Operations for people and scripts rather than workers: look at a queue's front without
//! taking it, empty a queue, delete one. Tasks they remove whose put named a reply queue are
//! reported there, so no producer waits for them forever.

use bytes::Bytes;
use taskmill_protocol::{Task, TaskOutcome, TaskReply};

use super::journal::Change;
use super::queue::{Queue, TASK_OVERHEAD};
use super::{Broker, QueueError};

/// What to tell which reply queue.
pub(super) type Notices = Vec<(Bytes, TaskReply)>;

impl Queue {
    /// Removes every queued and delayed item (leased ones stay, to be settled); returns how
    /// many, and what to tell the reply queues of those whose put named one. Room freed goes to
    /// waiting putters at the next pump.
    pub(super) fn purge(&mut self, why: &str) -> (u64, Notices) {
        let removed = (self.items.len() + self.delayed.len()) as u64;
        let items = self.items.iter().map(|i| (i.id, i.deliveries()));
        let delayed = self
            .delayed
            .iter()
            .map(|d| (d.0.item.id, d.0.item.deliveries()));
        let gone: Vec<_> = items.chain(delayed).collect();
        let mut notices = Vec::new();
        for (task, attempts) in gone {
            if let Some(reply) = self.routes.left(task) {
                let reason = why.to_owned();
                let outcome = TaskOutcome::Dead { attempts, reason };
                notices.push((reply, TaskReply { task, outcome }));
            }
        }
        self.items.clear();
        self.delayed.clear();
        // Only leased items are left.
        self.held = self.leased.values().map(|l| l.item.cost()).sum();
        (removed, notices)
    }
}

impl Broker {
    /// Up to `max` items from the front of `queue` (their reply within `max_bytes`), left in
    /// place; each with the delivery it would be.
    pub fn peek(&self, queue: &str, max: u32, max_bytes: usize) -> Result<Vec<Task>, QueueError> {
        let missing = || QueueError::NoSuchQueue(queue.to_owned());
        let slot = self.existing(queue).ok_or_else(missing)?;
        let q = self.lock(&slot);
        if q.deleted {
            return Err(missing());
        }
        let mut bytes = 0;
        let mut tasks = Vec::new();
        for item in q.items.iter().take(max as usize) {
            bytes += item.payload_len() + TASK_OVERHEAD;
            if !tasks.is_empty() && bytes > max_bytes {
                break;
            }
            tasks.push(Task {
                id: item.id,
                attempt: item.deliveries() + 1,
                payload: item.payload_bytes(),
                reply_to: q.routes.reply(item.id).cloned().unwrap_or_default(),
            });
        }
        Ok(tasks)
    }

    /// Removes every queued and delayed item of `queue`; returns how many.
    pub fn purge(&self, queue: &str) -> Result<u64, QueueError> {
        let missing = || QueueError::NoSuchQueue(queue.to_owned());
        let slot = self.existing(queue).ok_or_else(missing)?;
        // The notices to reply queues go out under the gate deletes take exclusively.
        let _telling = self.burying();
        let mut q = self.lock(&slot);
        if q.deleted {
            return Err(missing());
        }
        let (removed, notices) = q.purge(&format!("purged from {queue}"));
        q.journal.record(|queue| Change::Purged { queue });
        q.pump();
        drop(q);
        self.tell_all(notices);
        Ok(removed)
    }

    /// Deletes `queue` and what it holds (queued and delayed items); returns how many items
    /// went with it. Refused while tasks of it are leased or requests wait on it, and, with
    /// `if_empty`, while it holds items.
    pub fn delete(&self, queue: &str, if_empty: bool) -> Result<u64, QueueError> {
        // No burial or snapshot is half way through this queue meanwhile.
        let _gate = self
            .shared
            .burials
            .write()
            .unwrap_or_else(|p| p.into_inner());
        let mut registry = self.registry_mut();
        let slot = registry
            .by_name
            .get(queue)
            .cloned()
            .ok_or_else(|| QueueError::NoSuchQueue(queue.to_owned()))?;
        let mut q = self.lock(&slot);
        if !q.leased.is_empty() || !q.getters.is_empty() || !q.putters.is_empty() {
            return Err(QueueError::InUse(queue.to_owned()));
        }
        if if_empty && !(q.items.is_empty() && q.delayed.is_empty()) {
            return Err(QueueError::NotEmpty(queue.to_owned()));
        }
        let (removed, notices) = q.purge(&format!("its queue {queue} was deleted"));
        q.deleted = true;
        q.routes.clear();
        q.journal.record(|queue| Change::Deleted { queue });
        drop(q);
        registry.by_name.remove(queue);
        registry.all[slot.rank] = None;
        drop((registry, _gate));
        let _telling = self.burying();
        self.tell_all(notices);
        Ok(removed)
    }
}
