//! The journal: every change to a queue's state as a [`Change`], handed to the [`Store`] at the
//! moment it is made, under the lock of every queue it changes. So the order in which a store
//! sees changes is the order the queues' locks made them, and replaying them in that order
//! ([`Broker::apply`](super::Broker::apply)) rebuilds the same queues, leases included. (A
//! burial is recorded under the dead-letter queue's lock only, after its task left the source
//! queue under that one's; the burial gate in `Shared` keeps a snapshot out of the gap.)
//!
//! The broker builds no record at all when its store keeps none (memory mode): each site asks
//! its queue's `Journal`, which holds no store then.
//!
//! Ids in records are the ones the live operation handed out, so replay never reserves any:
//! it moves the id counter past every id it meets. Moments (lease deadlines, nack delays) are
//! tokio instants; a store that outlives the process turns them into wall-clock times.

use std::sync::Arc;

use taskmill_protocol::{Task, TaskId};
use tokio::time::Instant as Deadline;

use super::origin::Origin;
use super::SessionId;
use crate::store::Store;

/// A queue as records name it: its rank, the order it was created in (a queue's first record
/// is its [`Change::Created`]).
pub type QueueRank = u32;

/// Why a lease ended without being settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Returned {
    /// The holder's connection closed.
    Closed,
    /// The lease ran out.
    Expired,
    /// The holder gave the task back.
    Nacked,
}

/// A lease as a record states it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTerms {
    pub session: SessionId,
    pub deadline: Deadline,
    pub length_ms: u32,
}

/// One change to the queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change<'a> {
    /// A queue came into being, by first use or as another's dead-letter queue.
    Created {
        queue: QueueRank,
        name: &'a str,
        capacity: Option<u64>,
    },
    /// A queue's capacity was set (`None`: unbounded).
    Declared {
        queue: QueueRank,
        capacity: Option<u64>,
    },
    /// An item was appended; by a put to be carried out at most once if it has an origin.
    Put {
        queue: QueueRank,
        id: TaskId,
        payload: &'a [u8],
        origin: Option<Origin>,
    },
    /// A leased task of `queue` was settled and its result appended to `target` (which may be
    /// `queue` itself) as item `id`: one change, never half of it.
    Completed {
        queue: QueueRank,
        task: TaskId,
        target: QueueRank,
        id: TaskId,
        payload: &'a [u8],
    },
    /// `tasks` were taken from the front, in order, each delivered once more: leased on
    /// `lease`'s terms, or removed without one.
    Taken {
        queue: QueueRank,
        tasks: &'a [Task],
        lease: Option<LeaseTerms>,
    },
    /// A task handed out to a waiter that was gone went back to the front as if never taken
    /// (its delivery undone); `leased` says whether it had been leased.
    Untaken {
        queue: QueueRank,
        task: &'a Task,
        leased: bool,
    },
    /// A leased task was settled without a result.
    Acked { queue: QueueRank, task: TaskId },
    /// A lease was extended.
    Touched {
        queue: QueueRank,
        task: TaskId,
        deadline: Deadline,
        length_ms: u32,
    },
    /// A lease ended unsettled and its task went back to the front.
    Requeued {
        queue: QueueRank,
        task: TaskId,
        why: Returned,
    },
    /// A leased task was nacked with a delay: it waits until `until`, then goes to the front.
    Delayed {
        queue: QueueRank,
        task: TaskId,
        until: Deadline,
    },
    /// A delayed task's wait was over; it went back to the front.
    Undelayed { queue: QueueRank, task: TaskId },
    /// A lease ended unsettled after the task's last delivery: the task left `queue` and its
    /// dead letter (`letter`, the encoded `DeadLetter`) was appended to `dead` as item `id`.
    /// One change: the task is never out of both queues.
    Buried {
        queue: QueueRank,
        task: TaskId,
        why: Returned,
        dead: QueueRank,
        id: TaskId,
        letter: &'a [u8],
    },
    /// The `count` tasks from `first` on, just put, name `reply` (a queue name) for their
    /// outcomes.
    Routed {
        queue: QueueRank,
        first: TaskId,
        count: u32,
        reply: &'a [u8],
    },
    /// Every queued and delayed item was removed.
    Purged { queue: QueueRank },
    /// The queue was deleted, with what it held; its name is free again, its rank never
    /// reused.
    Deleted { queue: QueueRank },
}

impl Change<'_> {
    /// The queue the change is made to (for a completion, the one whose lease it settles; for
    /// a burial, the one the task leaves).
    pub fn queue(&self) -> QueueRank {
        match *self {
            Change::Created { queue, .. }
            | Change::Declared { queue, .. }
            | Change::Put { queue, .. }
            | Change::Completed { queue, .. }
            | Change::Taken { queue, .. }
            | Change::Untaken { queue, .. }
            | Change::Acked { queue, .. }
            | Change::Touched { queue, .. }
            | Change::Requeued { queue, .. }
            | Change::Delayed { queue, .. }
            | Change::Undelayed { queue, .. }
            | Change::Buried { queue, .. }
            | Change::Routed { queue, .. }
            | Change::Purged { queue }
            | Change::Deleted { queue } => queue,
        }
    }

    /// The other queue a change spanning two is made to: a completion's results queue, a
    /// burial's dead-letter queue.
    pub fn second_queue(&self) -> Option<QueueRank> {
        match *self {
            Change::Completed { target, .. } => Some(target),
            Change::Buried { dead, .. } => Some(dead),
            _ => None,
        }
    }
}

/// Where one queue records its changes: the broker's store, or nowhere.
#[derive(Debug, Clone)]
pub(super) struct Journal {
    store: Option<Arc<dyn Store>>,
    pub(super) rank: QueueRank,
}

impl Journal {
    pub(super) fn new(store: Option<Arc<dyn Store>>, rank: QueueRank) -> Self {
        Self { store, rank }
    }

    pub(super) fn attach(&mut self, store: Arc<dyn Store>) {
        self.store = Some(store);
    }

    /// Records the change `make` builds; builds nothing when no store keeps records.
    #[inline]
    pub(super) fn record<'a>(&self, make: impl FnOnce(QueueRank) -> Change<'a>) {
        if let Some(store) = &self.store {
            store.record(&make(self.rank));
        }
    }
}
