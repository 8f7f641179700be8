//! Waiting requests: a get waiting for items, a put or complete waiting for room, and the
//! futures that hold their place in line and clean up when dropped.

use std::sync::Arc;

use taskmill_protocol::{Delivery, Task};
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant as Deadline;
use tokio_util::sync::CancellationToken;

use super::progress::{Batch, Progress};
use super::registry::Slot;
use super::{Broker, SessionId};

pub(super) type WaiterId = u64;

#[derive(Debug)]
pub(super) struct GetWaiter {
    pub(super) id: WaiterId,
    pub(super) session: SessionId,
    pub(super) max: u32,
    pub(super) max_bytes: usize,
    /// Not even the first task may pass `max_bytes`.
    pub(super) strict: bool,
    pub(super) delivery: Delivery,
    pub(super) tx: oneshot::Sender<Vec<Task>>,
}

/// A put or complete that is waiting for room, with what it has done so far.
#[derive(Debug)]
pub(super) struct PutWaiter {
    pub(super) id: WaiterId,
    pub(super) session: SessionId,
    pub(super) pending: Batch,
    pub(super) progress: Progress,
    /// Whoever fills the waiter's last item sends its final progress here.
    pub(super) tx: oneshot::Sender<Progress>,
    pub(super) cross: Option<CrossQueue>,
}

/// A completion waiting for room in another queue than the one holding its leases. Whoever
/// frees room may not wait for that queue's lock (it holds this one's, and the two are taken
/// in rank order), so it tries the lock, and if it is taken, wakes the waiter to fill itself.
#[derive(Debug)]
pub(super) struct CrossQueue {
    pub(super) source: Arc<Slot>,
    pub(super) turn: Arc<Notify>,
}

/// Resolves at `deadline`, or never without one.
pub(super) async fn until(deadline: Option<Deadline>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// A `get` waiting for items. Dropping it unregisters it; items handed to it in the meantime
/// go back to the front of the queue.
#[derive(Debug)]
pub struct GetWaiting {
    pub(super) broker: Broker,
    pub(super) slot: Arc<Slot>,
    pub(super) id: WaiterId,
    pub(super) session: SessionId,
    pub(super) delivery: Delivery,
    pub(super) rx: Option<oneshot::Receiver<Vec<Task>>>,
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
    pub(super) fn give_up(&mut self) -> Option<Vec<Task>> {
        let mut rx = self.rx.take()?;
        let mut queue = self.broker.lock(&self.slot);
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
            let mut queue = self.broker.lock(&self.slot);
            queue.untake(tasks, self.delivery, self.session);
            queue.pump();
        }
    }
}

/// A `put` or `complete` waiting for room. Dropping it unregisters it; what it already queued
/// stays queued.
#[derive(Debug)]
pub struct PutWaiting {
    pub(super) broker: Broker,
    pub(super) target: Arc<Slot>,
    /// The queue holding the leases a completion settles, when it is not `target`.
    pub(super) source: Option<Arc<Slot>>,
    pub(super) id: WaiterId,
    pub(super) rx: Option<oneshot::Receiver<Progress>>,
    /// With a `source`: rung when room appeared but the source's lock was taken.
    pub(super) turn: Option<Arc<Notify>>,
}

/// Resolves when `turn` is rung, or never without one.
pub(super) async fn rung(turn: Option<&Notify>) {
    match turn {
        Some(turn) => turn.notified().await,
        None => std::future::pending().await,
    }
}

impl PutWaiting {
    /// Waits until everything is queued, `deadline` passes or `stop` fires, and says how far it
    /// got.
    pub async fn wait(mut self, deadline: Option<Deadline>, stop: CancellationToken) -> Progress {
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
    pub(super) fn fill_self(&self) -> Option<Progress> {
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
            queue.finished(&w.pending);
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

    pub(super) fn give_up(&mut self) -> Option<Progress> {
        let mut rx = self.rx.take()?;
        let mut queue = self.broker.lock(&self.target);
        if let Some(pos) = queue.putters.iter().position(|w| w.id == self.id) {
            let w = queue.putters.remove(pos).expect("position is in range");
            queue.finished(&w.pending);
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
