//! Leases: who holds which task until when, the per-session lists that requeue a closed
//! session's tasks, expiry, touch, and nacked tasks waiting out their delay.

use std::cmp::Reverse;
use std::collections::hash_map::Entry;
use std::sync::Arc;
use std::time::Duration;

use taskmill_protocol::TaskId;
use tokio::time::Instant as Deadline;

use super::dead::{cut_reason, Buried};
use super::item::Item;
use super::journal::{Change, Returned};
use super::progress::{settled, Progress};
use super::queue::Queue;
use super::report::reason_index;
use super::{Broker, QueueError, SessionId};

/// Longest lease or nack delay a client may ask for; longer requests are cut to this.
pub const MAX_LEASE: Duration = Duration::from_secs(24 * 3600);

/// Dead entries the expiry heap or a session's lease list may hold beyond twice the live
/// leases before it is rebuilt.
pub(super) const DEAD_SLACK: usize = 4096;

/// A moment as nanoseconds from [`Shared::epoch`]: 8 bytes where a `Deadline` takes 16.
pub(super) type Stamp = u64;

pub(super) fn stamp(epoch: Deadline, at: Deadline) -> Stamp {
    at.saturating_duration_since(epoch).as_nanos() as Stamp
}

/// The moment a stamp stands for.
pub(super) fn instant(epoch: Deadline, stamp: Stamp) -> Deadline {
    epoch + Duration::from_nanos(stamp)
}

#[derive(Debug)]
pub(super) struct Leased {
    pub(super) item: Item,
    pub(super) session: SessionId,
    pub(super) deadline: Stamp,
    /// The lease's length in milliseconds, reused when a touch does not name one.
    pub(super) length_ms: u32,
}

// The lease map is the master's hottest table, touched at random by every completion and
// mostly out of cache: 64-byte entries (80 before stamps) keep more of it in cache.
const _: () = assert!(std::mem::size_of::<(TaskId, Leased)>() <= 64);

/// A nacked item and when it may return to its queue.
#[derive(Debug)]
pub(super) struct Delayed {
    pub(super) at: Stamp,
    pub(super) item: Item,
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
pub(super) enum GiveBack {
    ConnectionClosed,
    Expired(Duration),
    /// A nack's reason, cut to [`MAX_REASON`](taskmill_protocol::MAX_REASON) once per request
    /// and shared by every task it names: a request naming thousands of tasks costs one
    /// reason, not one per task.
    Nacked(Arc<str>),
    /// A nack saying the task can never succeed: buried at once.
    Fatal(Arc<str>),
}

impl GiveBack {
    pub(super) fn kind(&self) -> Returned {
        match self {
            GiveBack::ConnectionClosed => Returned::Closed,
            GiveBack::Expired(_) => Returned::Expired,
            GiveBack::Nacked(_) | GiveBack::Fatal(_) => Returned::Nacked,
        }
    }

    pub(super) fn reason(&self) -> String {
        match self {
            GiveBack::ConnectionClosed => "connection closed while holding the lease".into(),
            GiveBack::Expired(d) => format!("lease expired after {d:?}"),
            GiveBack::Nacked(reason) => format!("nacked: {reason}"),
            GiveBack::Fatal(reason) => format!("failed for good: {reason}"),
        }
    }
}

/// The leases one session took from one queue. `held` is appended to on every leasing get and
/// never searched: an entry counts only while the queue's lease map still names this session,
/// so settling a lease costs a counter decrement, and the list is pruned once dead entries
/// outnumber `live`.
#[derive(Debug, Default)]
pub(super) struct SessionLeases {
    pub(super) held: Vec<TaskId>,
    pub(super) live: usize,
    /// This queue has reported the session to [`Shared::completers`].
    pub(super) completed: bool,
    /// Leases it settled here, for observers: counted once per completion or ack request,
    /// where the entry is looked up anyway, not per task.
    pub(super) settled: u64,
}

impl Queue {
    /// True while `session` holds the lease on `task`.
    pub(super) fn holds(&self, task: TaskId, session: SessionId) -> bool {
        self.leased.get(&task).is_some_and(|l| l.session == session)
    }

    /// The lease `session` holds on `task`, if it does.
    pub(super) fn held_by(&mut self, task: TaskId, session: SessionId) -> Option<&mut Leased> {
        self.leased.get_mut(&task).filter(|l| l.session == session)
    }

    /// Ends the lease on `task` if `owner` (or, with `None`, anyone) holds it, returning the
    /// item. The only place a lease ends.
    pub(super) fn unlease(&mut self, task: TaskId, owner: Option<SessionId>) -> Option<Leased> {
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

    /// Gives the lease on `task` a new deadline and length; false if it is not leased.
    pub(super) fn relet(&mut self, task: TaskId, deadline: Stamp, length_ms: u32) -> bool {
        let Some(lease) = self.leased.get_mut(&task) else {
            return false;
        };
        lease.deadline = deadline;
        lease.length_ms = length_ms;
        self.expiries.push(Reverse((deadline, task)));
        true
    }

    /// Settles `task` if `session` holds its lease. Inlined, as it was before it timed
    /// tasks: a call of its own cost about 40 instructions per completion in callgrind
    /// (BENCHMARKS.md, "Metrics (issue 15)").
    #[inline]
    pub(super) fn settle(&mut self, task: TaskId, session: SessionId) -> bool {
        let Some(leased) = self.unlease(task, Some(session)) else {
            return false;
        };
        self.held -= leased.item.cost();
        self.routes.left(task);
        self.settled_total += 1;
        self.latency.settled(self.epoch, task);
        true
    }

    /// Counts `settled` completions by `session`, and the session as a worker in the stats once
    /// it has completed a task from here.
    pub(super) fn completed_by(&mut self, session: SessionId, settled: u64) {
        self.tally.completed += settled;
        if let Some(s) = self.sessions.get_mut(&session) {
            s.settled += settled;
            if !s.completed {
                s.completed = true;
                self.new_completers.push(session);
            }
        }
    }
    /// Settled and touched leases leave their old entries in the expiry heap until those come
    /// due, which under load would be millions of dead entries. Rebuilding from the live leases
    /// once the dead outnumber them keeps the heap within twice the leases, at amortised O(1).
    pub(super) fn compact_expiries(&mut self) {
        if self.expiries.len() <= 2 * self.leased.len() + DEAD_SLACK {
            return;
        }
        self.expiries = self
            .leased
            .iter()
            .map(|(&task, l)| Reverse((l.deadline, task)))
            .collect();
    }
    /// Puts a task whose lease ended aside until `until`, when it goes back to the front.
    pub(super) fn delay(&mut self, item: Item, until: Deadline) {
        self.requeued_total += 1;
        let at = self.stamp(until);
        self.delayed.push(Reverse(Delayed { at, item }));
    }

    /// Requeues (or returns for burial) tasks whose lease has run out by `now`, and returns
    /// nacked tasks whose delay is over to the front.
    pub(super) fn expire(&mut self, now: Deadline, buries: bool) -> Vec<Buried> {
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
                let task = item.id;
                self.items.push_front(item);
                self.journal
                    .record(|queue| Change::Undelayed { queue, task });
            }
            self.pump();
        }
        buried
    }
}

impl Broker {
    /// Extends the leases `session` holds on `tasks` to `millis` from now, or by each lease's
    /// own length.
    pub fn touch(
        &self,
        session: SessionId,
        queue: &str,
        tasks: &[TaskId],
        millis: Option<u64>,
    ) -> Result<Progress, QueueError> {
        let Some(slot) = self.existing(queue) else {
            return Ok(settled(tasks.len(), tasks.to_vec()));
        };
        let mut queue = self.lock(&slot);
        let now = queue.stamp(Deadline::now());
        let mut stale = Vec::new();
        for &task in tasks {
            let Some(lease) = queue.held_by(task, session) else {
                stale.push(task);
                continue;
            };
            let length_ms = match millis {
                Some(ms) => ms.clamp(1, MAX_LEASE.as_millis() as u64) as u32,
                None => lease.length_ms,
            };
            let deadline = now + u64::from(length_ms) * 1_000_000;
            queue.relet(task, deadline, length_ms);
            let deadline = instant(queue.epoch, deadline);
            queue.journal.record(|queue| Change::Touched {
                queue,
                task,
                deadline,
                length_ms,
            });
        }
        queue.compact_expiries();
        Ok(settled(tasks.len(), stale))
    }

    /// Gives back leases `session` holds on `tasks`: to the front of the queue after `delay`,
    /// or to the dead-letter queue if they have had all their deliveries or are `fatal`.
    pub fn nack(
        &self,
        session: SessionId,
        queue: &str,
        tasks: &[TaskId],
        delay: Duration,
        reason: &str,
        fatal: bool,
    ) -> Result<Progress, QueueError> {
        let Some(slot) = self.existing(queue) else {
            return Ok(settled(tasks.len(), tasks.to_vec()));
        };
        // Before any lock: the reason can be almost a whole frame.
        let reason: Arc<str> = Arc::from(cut_reason(reason));
        let _burying = self.burying();
        let mut queue = self.lock(&slot);
        let buries = slot.buries();
        let mut stale = Vec::new();
        let mut now_back = Vec::new();
        for &task in tasks {
            let Some(Leased { item, .. }) = queue.unlease(task, Some(session)) else {
                stale.push(task);
                continue;
            };
            if fatal {
                now_back.push((item, GiveBack::Fatal(Arc::clone(&reason))));
            } else if delay.is_zero() || queue.exhausted(&item, buries) {
                now_back.push((item, GiveBack::Nacked(Arc::clone(&reason))));
            } else {
                let until = Deadline::now() + delay.min(MAX_LEASE);
                queue.delay(item, until);
                queue.tally.requeued[reason_index(Returned::Nacked)] += 1;
                queue
                    .journal
                    .record(|queue| Change::Delayed { queue, task, until });
            }
        }
        let buried = queue.give_back_all(now_back, buries);
        drop(queue);
        self.bury(&slot, buried);
        Ok(settled(tasks.len(), stale))
    }
}
