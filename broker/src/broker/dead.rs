//! Dead letters: a task given back after its last delivery leaves its queue for
//! `<queue>.dead`, with the reason for its last failure.

use std::cmp::Reverse;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, RwLockReadGuard};

use taskmill_protocol::{encode_payload, DeadLetter, DEAD_SUFFIX, MAX_REASON};

use super::item::Item;
use super::journal::{Change, QueueRank, Returned};
use super::lease::GiveBack;
use super::queue::Queue;
use super::registry::Slot;
use super::report::reason_index;
use super::Broker;

/// An item on its way to its queue's dead-letter queue.
#[derive(Debug)]
pub(super) struct Buried {
    pub(super) item: Item,
    pub(super) why: Returned,
    pub(super) reason: String,
}

impl Queue {
    /// True when `item`, given back now, has had all its deliveries and goes to the
    /// dead-letter queue, if this queue `buries` (dead-letter queues don't, so no chain of
    /// queues can grow).
    pub(super) fn exhausted(&self, item: &Item, buries: bool) -> bool {
        buries && item.deliveries() >= self.limits.max_attempts
    }

    /// Gives back several items so that they keep their put order at the front. Returns those
    /// that must go to the dead-letter queue instead (see [`Queue::give_back`]).
    pub(super) fn give_back_all(
        &mut self,
        mut items: Vec<(Item, GiveBack)>,
        buries: bool,
    ) -> Vec<Buried> {
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
    pub(super) fn give_back(&mut self, item: Item, why: &GiveBack, buries: bool) -> Option<Buried> {
        let index = reason_index(why.kind());
        if !self.exhausted(&item, buries) {
            let task = item.id;
            self.tally.requeued[index] += 1;
            self.requeue(item, why.kind());
            self.journal.record(|queue| Change::Requeued {
                queue,
                task,
                why: why.kind(),
            });
            self.pump();
            return None;
        }
        self.tally.dead[index] += 1;
        self.count_buried(why.kind());
        let mut reason = why.reason();
        if reason.len() > MAX_REASON {
            let mut cut = MAX_REASON;
            while !reason.is_char_boundary(cut) {
                cut -= 1;
            }
            reason.truncate(cut);
        }
        Some(Buried {
            item,
            why: why.kind(),
            reason,
        })
    }

    /// Puts a task whose lease ended unsettled back at the front.
    pub(super) fn requeue(&mut self, item: Item, why: Returned) {
        if why == Returned::Expired {
            self.expired_total += 1;
        }
        self.requeued_total += 1;
        self.items.push_front(item);
    }

    /// Counts a task whose lease ended unsettled leaving for the dead-letter queue.
    pub(super) fn count_buried(&mut self, why: Returned) {
        if why == Returned::Expired {
            self.expired_total += 1;
        }
        self.dead_total += 1;
    }
}

impl Broker {
    /// Take before locking a queue whose tasks may be buried, and hold until [`Broker::bury`]
    /// is done (see `Shared::burials`).
    pub(super) fn burying(&self) -> RwLockReadGuard<'_, ()> {
        self.shared
            .burials
            .read()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Appends items that used up their attempts in `from` to its dead-letter queue.
    pub(super) fn bury(&self, from: &Slot, buried: Vec<Buried>) {
        if buried.is_empty() {
            return;
        }
        let dead = {
            let name = format!("{}{DEAD_SUFFIX}", from.name);
            let mut registry = self.registry_mut();
            let slot = match registry.by_name.get(&name) {
                Some(slot) => Arc::clone(slot),
                None => registry.create(&name, &self.shared),
            };
            slot.dead_letters.store(true, Relaxed);
            slot
        };
        let mut queue = self.lock(&dead);
        let first = self.reserve(buried.len());
        for (Buried { item, why, reason }, id) in buried.into_iter().zip(first..) {
            let task = item.id;
            let letter = DeadLetter {
                task: item.id,
                queue: from.name.clone(),
                attempts: item.deliveries(),
                reason,
                payload: item.into_payload(),
            };
            let letter = encode_payload(&letter).expect("a DeadLetter always encodes");
            queue.push(id, &letter);
            queue.journal.record(|dead| Change::Buried {
                queue: from.rank as QueueRank,
                task,
                why,
                dead,
                id,
                letter: &letter,
            });
        }
        queue.pump();
    }
}
