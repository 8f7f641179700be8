//! Dead letters: a task given back after its last delivery leaves its queue for
//! `<queue>.dead`, with the reason for its last failure.

use std::cmp::Reverse;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, RwLockReadGuard};

use bytes::Bytes;

use taskmill_protocol::{
    decode_payload, encode_payload, DeadLetter, TaskOutcome, TaskReply, DEAD_SUFFIX, MAX_REASON,
};

use super::item::Item;
use super::journal::{Change, QueueRank, Returned};
use super::lease::GiveBack;
use super::queue::Queue;
use super::registry::Slot;
use super::report::reason_index;
use super::{Broker, QueueError};

/// An item on its way to its queue's dead-letter queue.
#[derive(Debug)]
pub(super) struct Buried {
    pub(super) item: Item,
    pub(super) why: Returned,
    pub(super) reason: String,
    /// The queue to tell, if the task's put named one.
    pub(super) reply: Option<Bytes>,
}

/// `reason` cut to [`MAX_REASON`] bytes, at a character boundary.
pub(super) fn cut_reason(reason: &str) -> &str {
    if reason.len() <= MAX_REASON {
        return reason;
    }
    let mut cut = MAX_REASON;
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    &reason[..cut]
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
        // Waiters are served once all are back, so a waiting getter gets them oldest first
        // and as many as it asked for, not the newest alone.
        items.sort_unstable_by_key(|(item, _)| Reverse(item.id));
        let buried = items
            .into_iter()
            .filter_map(|(item, why)| self.give_back(item, &why, buries))
            .collect();
        self.pump();
        buried
    }

    /// Puts an item whose lease ended unsettled back at the front or, once it is
    /// [`exhausted`](Queue::exhausted), returns it for the dead-letter queue, which the caller
    /// fills after unlocking. Serving waiters is the caller's to do, once for all.
    fn give_back(&mut self, item: Item, why: &GiveBack, buries: bool) -> Option<Buried> {
        let index = reason_index(why.kind());
        let fatal = matches!(why, GiveBack::Fatal(_));
        if !(self.exhausted(&item, buries) || fatal && buries) {
            let task = item.id;
            self.tally.requeued[index] += 1;
            self.requeue(item, why.kind());
            self.journal.record(|queue| Change::Requeued {
                queue,
                task,
                why: why.kind(),
            });
            return None;
        }
        self.tally.dead[index] += 1;
        self.count_buried(why.kind());
        // Charged again, as a letter, in the dead-letter queue.
        self.held -= item.cost();
        let mut reason = why.reason();
        let kept = cut_reason(&reason).len();
        reason.truncate(kept);
        let reply = self.routes.left(item.id);
        Some(Buried {
            item,
            why: why.kind(),
            reason,
            reply,
        })
    }

    /// Lets waiting putters in past capacity, as far as they can go now: dead letters, which
    /// are never refused, are about to go in past it, and must not overtake requests already
    /// in line (their ids are older, and ids grow with queue order).
    pub(super) fn let_in_waiting(&mut self) {
        if self.putters.is_empty() {
            return;
        }
        let capacity = self.capacity.take();
        self.pump();
        self.capacity = capacity;
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
    /// is done (see `Shared::burials`). Deletes take it exclusively, so no queue a burial
    /// uses goes meanwhile.
    pub(super) fn burying(&self) -> RwLockReadGuard<'_, ()> {
        self.shared
            .burials
            .read()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Appends items that used up their attempts in `from` to its dead-letter queue, and
    /// tells the reply queue of each that has one.
    pub(super) fn bury(&self, from: &Slot, buried: Vec<Buried>) {
        if buried.is_empty() {
            return;
        }
        // (No delete runs meanwhile: it takes the burial gate our caller holds.)
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
        queue.let_in_waiting();
        let mut notices = Vec::new();
        let first = self.reserve(buried.len());
        for (buried, id) in buried.into_iter().zip(first..) {
            let Buried {
                item,
                why,
                reason,
                reply,
            } = buried;
            let task = item.id;
            let attempts = item.deliveries();
            if let Some(reply) = reply {
                let outcome = TaskOutcome::Dead {
                    attempts,
                    reason: reason.clone(),
                };
                notices.push((reply, TaskReply { task, outcome }));
            }
            let letter = DeadLetter {
                task,
                queue: from.name.clone(),
                attempts,
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
        drop(queue);
        self.tell_all(notices);
    }

    /// Tells each reply queue what became of its task (see [`Broker::tell`]). Call under the
    /// burial gate.
    pub(super) fn tell_all(&self, notices: Vec<(Bytes, TaskReply)>) {
        for (reply, notice) in notices {
            self.tell(&reply, &notice.encode());
        }
    }

    /// Appends `payload` to the reply queue named `reply`, if it still exists (one that does
    /// not has lost its producer; the dead letter is kept either way). Called under the
    /// burial gate, so no delete runs meanwhile.
    fn tell(&self, reply: &[u8], payload: &[u8]) {
        let Some(slot) = self.existing(&String::from_utf8_lossy(reply)) else {
            return;
        };
        let mut queue = self.lock(&slot);
        let id = self.reserve(1);
        queue.push(id, payload);
        queue.journal.record(|queue| Change::Put {
            queue,
            id,
            payload,
            origin: None,
        });
        queue.pump();
    }

    /// Moves up to `max` dead letters of `queue` (from `<queue>.dead`) back to its end, as
    /// long as it has room: each with its original payload and no deliveries yet. An item of
    /// the dead-letter queue that is not a dead letter (a client put it there) moves as it
    /// is. Returns how many moved.
    pub fn kick(&self, queue: &str, max: u32) -> Result<u64, QueueError> {
        let name = format!("{queue}{DEAD_SUFFIX}");
        loop {
            let Some(dead) = self.existing(&name) else {
                return Ok(0);
            };
            let target = self.queue(queue)?;
            let (mut to, from) = self.lock_pair(&target, Some(&dead));
            let mut from = from.expect("two queues");
            if to.deleted || from.deleted {
                continue;
            }
            let mut moved = 0;
            while moved < u64::from(max) && to.has_room() && !from.items.is_empty() {
                let small = from.items[0].inline().map_or(0, <[u8]>::len);
                let taken = from.take_front(1, small, 0, None);
                let letter = &taken[0].payload;
                let payload =
                    decode_payload::<DeadLetter>(letter).map_or(letter.clone(), |d| d.payload);
                let id = self.reserve(1);
                to.push(id, &payload);
                to.journal.record(|queue| Change::Put {
                    queue,
                    id,
                    payload: &payload,
                    origin: None,
                });
                moved += 1;
            }
            to.pump();
            from.pump();
            return Ok(moved);
        }
    }
}
