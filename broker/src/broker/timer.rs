//! The timer task: expires leases and returns delayed tasks when they come due, visiting only
//! the queues that have something due.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio::time::Instant as Deadline;
use tokio_util::sync::CancellationToken;

use super::lease::stamp;
use super::registry::NEVER;
use super::Broker;

/// Longest the timer task sleeps, so it notices leases that became due sooner than planned.
pub(super) const TICK_MAX: Duration = Duration::from_millis(250);

impl Broker {
    /// Requeues (or dead-letters) tasks whose lease has run out by `now` and returns nacked
    /// tasks whose delay is over. Returns when it next has work to do.
    pub fn tick(&self, now: Deadline) -> Option<Deadline> {
        let due_now = stamp(self.shared.epoch, now);
        let mut next = NEVER;
        for slot in self.slots() {
            if slot.due.load(Relaxed) <= due_now {
                let _burying = self.burying();
                let mut queue = self.lock(&slot);
                let buried = queue.expire(now, slot.buries());
                drop(queue);
                self.bury(&slot, buried);
            }
            next = next.min(slot.due.load(Relaxed));
        }
        (next != NEVER).then(|| self.shared.epoch + Duration::from_nanos(next))
    }

    /// Runs [`Broker::tick`] until `stop` fires.
    pub async fn run_timers(self, stop: CancellationToken) {
        loop {
            let now = Deadline::now();
            let next = self
                .tick(now)
                .map_or(now + TICK_MAX, |at| at.min(now + TICK_MAX));
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep_until(next) => {}
            }
        }
    }
}
