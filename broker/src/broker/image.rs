//! A queue's whole state as plain data: captured under its lock for a snapshot, and restored
//! when a master recovers. Each image carries the journal position it was taken at: every
//! change to the queue recorded before it is in the image, none after.

use std::cmp::Reverse;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use bytes::Bytes;
use taskmill_protocol::TaskId;
use tokio::time::Instant as Deadline;

use super::item::Item;
use super::journal::{Change, QueueRank, Returned};
use super::lease::{instant, Delayed, Leased};
use super::origin;
use super::replay::ReplayError;
use super::route::Route;
use super::{Broker, SessionId};

/// A task as an image holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageItem {
    pub id: TaskId,
    pub deliveries: u32,
    pub payload: Bytes,
}

/// A leased task: recovery ends the lease, but changes recorded after the image may still
/// settle it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageLease {
    pub item: ImageItem,
    pub session: SessionId,
    pub length_ms: u32,
}

/// One queue's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueImage {
    pub rank: QueueRank,
    pub name: String,
    pub capacity: Option<u64>,
    pub dead_letters: bool,
    /// The journal position the image was taken at.
    pub position: u64,
    /// put, delivered, settled, requeued, expired and dead totals.
    pub totals: [u64; 6],
    /// Queued, in order.
    pub items: Vec<ImageItem>,
    pub leased: Vec<ImageLease>,
    /// With the moment each returns.
    pub delayed: Vec<(ImageItem, Deadline)>,
    /// What recent puts to be carried out at most once achieved, by producer.
    pub origins: Vec<(u64, origin::Outcome)>,
    /// Reply routes, by first task id.
    pub routes: Vec<(TaskId, Route)>,
}

fn image_item(item: &Item) -> ImageItem {
    ImageItem {
        id: item.id,
        deliveries: item.deliveries(),
        payload: item.payload_bytes(),
    }
}

fn item(image: &ImageItem) -> Item {
    Item::new(image.id, image.deliveries, &image.payload)
}

impl Broker {
    /// How many ranks queues have taken (deleted ones included); live queues have ranks in
    /// `0..queue_count()`.
    pub fn queue_count(&self) -> usize {
        self.registry().all.len()
    }

    /// Ranks below `count` that no restored queue took were deleted queues': they stay taken.
    pub fn reserve_ranks(&self, count: usize) {
        let mut registry = self.registry_mut();
        while registry.all.len() < count {
            registry.all.push(None);
        }
    }

    /// The next task id this broker would hand out.
    pub fn next_task_id(&self) -> TaskId {
        self.shared.next_task.load(Relaxed)
    }

    /// Ids from here on are new: no task id below `next` was handed out before.
    pub fn advance_ids(&self, next: TaskId) {
        self.shared.next_task.fetch_max(next, Relaxed);
    }

    /// The state of queue `rank`, and `position()` read while its lock is held; `None` for a
    /// deleted queue.
    pub fn capture(&self, rank: QueueRank, position: impl FnOnce() -> u64) -> Option<QueueImage> {
        let slot = self.registry().all.get(rank as usize)?.clone()?;
        // No burial half done: see `Shared::burials`.
        let _no_burial = self
            .shared
            .burials
            .write()
            .unwrap_or_else(|p| p.into_inner());
        let q = self.lock(&slot);
        if q.deleted {
            return None;
        }
        let position = position();
        let mut leased: Vec<_> = q
            .leased
            .values()
            .map(|l| ImageLease {
                item: image_item(&l.item),
                session: l.session,
                length_ms: l.length_ms,
            })
            .collect();
        // Oldest first, as a closed session's tasks would go back.
        leased.sort_unstable_by_key(|l| l.item.id);
        Some(QueueImage {
            rank,
            name: slot.name.clone(),
            capacity: q.capacity,
            dead_letters: slot.dead_letters.load(Relaxed),
            position,
            totals: [
                q.put_total,
                q.delivered_total,
                q.settled_total,
                q.requeued_total,
                q.expired_total,
                q.dead_total,
            ],
            items: q.items.iter().map(image_item).collect(),
            leased,
            delayed: q
                .delayed
                .iter()
                .map(|d| (image_item(&d.0.item), instant(q.epoch, d.0.at)))
                .collect(),
            origins: q.origins.all(),
            routes: q.routes.all(),
        })
    }

    /// Makes the queue an image describes, as it was; queues must be restored in rank order
    /// (ranks skipped were deleted queues') and before any change is replayed.
    pub fn restore(&self, image: &QueueImage) -> Result<(), ReplayError> {
        self.reserve_ranks(image.rank as usize);
        let slot = {
            let mut registry = self.registry_mut();
            let existing = registry.all.len();
            if existing != image.rank as usize || registry.by_name.contains_key(&image.name) {
                return Err(ReplayError::CreatedOutOfOrder {
                    name: image.name.clone(),
                    rank: image.rank,
                    existing,
                });
            }
            registry.create(&image.name, &self.shared)
        };
        slot.dead_letters.store(image.dead_letters, Relaxed);
        let mut q = self.lock(&slot);
        q.capacity = image.capacity;
        [
            q.put_total,
            q.delivered_total,
            q.settled_total,
            q.requeued_total,
            q.expired_total,
            q.dead_total,
        ] = image.totals;
        q.items = image.items.iter().map(item).collect();
        for lease in &image.leased {
            let length = Duration::from_millis(lease.length_ms.into());
            let deadline = q.stamp(Deadline::now() + length);
            let id = lease.item.id;
            q.leased.insert(
                id,
                Leased {
                    item: item(&lease.item),
                    session: lease.session,
                    deadline,
                    length_ms: lease.length_ms,
                },
            );
            let leases = q.sessions.entry(lease.session).or_default();
            leases.held.push(id);
            leases.live += 1;
            q.expiries.push(Reverse((deadline, id)));
            self.seen_session(lease.session);
        }
        for &(producer, outcome) in &image.origins {
            q.origins.restore(producer, outcome);
        }
        for (first, route) in &image.routes {
            q.routes.restore(*first, route.clone());
        }
        for (image, until) in &image.delayed {
            let at = q.stamp(*until);
            q.delayed.push(Reverse(Delayed {
                at,
                item: item(image),
            }));
        }
        q.recount();
        let ids = image.items.iter().map(|i| i.id);
        let ids = ids.chain(image.leased.iter().map(|l| l.item.id));
        let ids = ids.chain(image.delayed.iter().map(|(i, _)| i.id));
        if let Some(max) = ids.max() {
            self.seen_id(max);
        }
        Ok(())
    }
}

impl Broker {
    /// How many tasks the queues hold: queued, leased and delayed.
    pub fn task_count(&self) -> u64 {
        self.slots()
            .iter()
            .map(|slot| {
                let q = self.lock(slot);
                (q.items.len() + q.leased.len() + q.delayed.len()) as u64
            })
            .sum()
    }

    /// Ends every lease, as after a restart no connection holds any: each task goes back to the
    /// front of its queue, oldest first, its deliveries kept and none dead-lettered (a restart
    /// is not the task's fault). Recorded as requeued. Returns how many there were.
    pub fn release_leases(&self) -> usize {
        let mut released = 0;
        for slot in self.slots() {
            let mut q = self.lock(&slot);
            let mut ids: Vec<TaskId> = q.leased.keys().copied().collect();
            ids.sort_unstable_by_key(|&id| Reverse(id));
            for task in ids {
                let leased = q.unlease(task, None).expect("just listed");
                q.requeue(leased.item, Returned::Closed);
                q.journal.record(|queue| Change::Requeued {
                    queue,
                    task,
                    why: Returned::Closed,
                });
                released += 1;
            }
            q.sessions.clear();
        }
        released
    }
}
