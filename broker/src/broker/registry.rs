//! The registry of queues and the locking discipline: each queue behind its own lock, taken
//! in creation order when an operation spans two; a [`Locked`] queue publishes on unlock what
//! others read without the lock.

use std::collections::HashMap;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, RwLockReadGuard, RwLockWriteGuard};

use taskmill_protocol::DEAD_SUFFIX;

use super::journal::{Change, Journal, QueueRank};
use super::queue::Queue;
use super::{Broker, QueueError, Shared, MAX_QUEUE_NAME};

/// A queue's `due` when it has no lease to expire and no delayed item to return.
pub(super) const NEVER: u64 = u64::MAX;

#[derive(Debug, Default)]
pub(super) struct Registry {
    pub(super) by_name: HashMap<String, Arc<Slot>>,
    /// In creation order: a queue's index here is its `rank`. A deleted queue leaves `None`:
    /// ranks are never reused, as records name queues by rank.
    pub(super) all: Vec<Option<Arc<Slot>>>,
}

/// One queue and what may be read of it without its lock.
#[derive(Debug)]
pub(super) struct Slot {
    pub(super) name: String,
    /// Creation order; two queue locks are always taken lowest rank first.
    pub(super) rank: usize,
    /// Holds dead letters a burial put there: exempt from the queue limit. (A `x.dead` a
    /// client created counts until x's first burial.)
    pub(super) dead_letters: AtomicBool,
    /// When the queue next has a lease to expire or a delayed item to return ([`NEVER`] for
    /// nothing). Written on every unlock, so the timer can skip idle queues without locking
    /// them.
    pub(super) due: AtomicU64,
    pub(super) queue: Mutex<Queue>,
}

/// The grammar: `name = base [".dead"]`, where `base` is 1 to [`MAX_QUEUE_NAME`] bytes of
/// `[A-Za-z0-9._:-]` not itself ending in `.dead`. `base.dead` is `base`'s dead-letter
/// queue (which never buries: there is no `.dead.dead`). Whether a name is valid never
/// depends on which queues exist.
pub(super) fn valid_name(name: &str) -> bool {
    let base = name.strip_suffix(DEAD_SUFFIX).unwrap_or(name);
    (1..=MAX_QUEUE_NAME).contains(&base.len())
        && !base.ends_with(DEAD_SUFFIX)
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// A locked queue. Unlocking publishes what others read without the lock: when the timer is
/// next due here, and sessions that completed their first task here.
pub(super) struct Locked<'a> {
    pub(super) shared: &'a Shared,
    pub(super) slot: &'a Slot,
    pub(super) queue: MutexGuard<'a, Queue>,
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
        self.slot.due.store(due, Relaxed);
        let queue = &mut *self.queue;
        if queue.held != queue.published {
            self.shared
                .memory
                .publish(queue.held.wrapping_sub(queue.published));
            queue.published = queue.held;
        }
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
pub(super) fn lock_unpoisoned<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl Registry {
    /// Creates the queue `name`, recording it first: no change to it can precede that record,
    /// as no one finds it before this lock is released.
    pub(super) fn create(&mut self, name: &str, shared: &Shared) -> Arc<Slot> {
        let rank = self.all.len();
        let journal = Journal::new(shared.store.get().cloned(), rank as QueueRank);
        let queue = Queue::new(shared.limits, shared.epoch, journal);
        let capacity = queue.capacity;
        queue.journal.record(|queue| Change::Created {
            queue,
            name,
            capacity,
        });
        let slot = Arc::new(Slot {
            name: name.to_owned(),
            rank,
            dead_letters: AtomicBool::new(false),
            due: AtomicU64::new(NEVER),
            queue: Mutex::new(queue),
        });
        self.all.push(Some(Arc::clone(&slot)));
        self.by_name.insert(name.to_owned(), Arc::clone(&slot));
        slot
    }
}

impl Slot {
    /// Whether tasks that used up their attempts here go to a dead-letter queue: all but the
    /// `.dead` queues do.
    pub(super) fn buries(&self) -> bool {
        !self.name.ends_with(DEAD_SUFFIX)
    }
}

impl Broker {
    pub(super) fn lock<'a>(&'a self, slot: &'a Slot) -> Locked<'a> {
        Locked {
            shared: &self.shared,
            slot,
            queue: lock_unpoisoned(&slot.queue),
        }
    }

    /// Locks `target` and, if it is another queue, `source`, lowest rank first.
    pub(super) fn lock_pair<'a>(
        &'a self,
        target: &'a Slot,
        source: Option<&'a Slot>,
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

    pub(super) fn registry(&self) -> RwLockReadGuard<'_, Registry> {
        self.shared
            .registry
            .read()
            .unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn registry_mut(&self) -> RwLockWriteGuard<'_, Registry> {
        self.shared
            .registry
            .write()
            .unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn existing(&self, name: &str) -> Option<Arc<Slot>> {
        self.registry().by_name.get(name).cloned()
    }

    /// Every queue, in rank order.
    pub(super) fn slots(&self) -> Vec<Arc<Slot>> {
        self.registry().all.iter().flatten().cloned().collect()
    }

    /// The queue named `name`, created on first use.
    pub(super) fn queue(&self, name: &str) -> Result<Arc<Slot>, QueueError> {
        if let Some(slot) = self.existing(name) {
            return Ok(slot);
        }
        if !valid_name(name) {
            return Err(QueueError::BadName(name.to_owned()));
        }
        let mut registry = self.registry_mut();
        if let Some(slot) = registry.by_name.get(name) {
            return Ok(Arc::clone(slot)); // created since we looked
        }
        let limits = self.shared.limits;
        let user_queues = registry
            .all
            .iter()
            .flatten()
            .filter(|c| !c.dead_letters.load(Relaxed))
            .count();
        if user_queues >= limits.max_queues {
            return Err(QueueError::TooManyQueues {
                name: name.to_owned(),
                max: limits.max_queues,
            });
        }
        Ok(registry.create(name, &self.shared))
    }
}
