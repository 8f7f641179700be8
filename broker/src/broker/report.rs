//! What an observer reads of the queues beyond the wire's [`QueueStats`]: the counters that
//! split settlements and returns by kind, put-to-settle latency of sampled tasks, which
//! sessions hold and settled what, and the newest items of a queue. Everything here is counted
//! where the queue already holds its lock and read by [`Broker::report`]; nothing is computed
//! per task that the hot path did not already touch.
//!
//! These counters start at zero with the process: they are not in the durable log's records
//! or snapshots (the wire totals are), so a recovered master reports what it did since it
//! started, as Prometheus counters usually do.

use std::collections::VecDeque;

use bytes::Bytes;
use rustc_hash::FxHashMap;
use taskmill_protocol::{QueueStats, TaskId};
use tokio::time::Instant as Deadline;

use super::journal::Returned;
use super::lease::{stamp, Stamp};
use super::{Broker, SessionId};

/// One task in this many, by id, has its put-to-settle latency measured: ids are handed out
/// in put order whatever the tasks hold, so the sample is unbiased, and the other 63 pay one
/// mask test at settle time.
pub const LATENCY_SAMPLE: u64 = 64;
const _: () = assert!(
    LATENCY_SAMPLE.is_power_of_two(),
    "sampled ids are found by a mask"
);

/// Puts remembered for latency, per queue: with batches of 1,024 that covers four million
/// queued tasks; a task put longer ago than that is not measured.
const PUTS_KEPT: usize = 4096;

/// Upper bounds of the latency buckets, in seconds (1-2-5 per decade, 100 µs to 10 min: a
/// quantile read from them is within a factor of 2.5); one more bucket counts everything above.
pub const LATENCY_BOUNDS: [f64; 22] = [
    0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
    10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 600.0,
];

/// Counters by kind, since the process started.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    /// Leases settled by a completion (a result queued).
    pub completed: u64,
    /// Leases settled by an ack.
    pub acked: u64,
    /// Leases given back to the queue, by why they ended: closed, expired, nacked.
    pub requeued: [u64; 3],
    /// Tasks moved to the dead-letter queue, by why their last lease ended.
    pub dead: [u64; 3],
}

/// The index of `why` in [`Tally::requeued`] and [`Tally::dead`].
pub fn reason_index(why: Returned) -> usize {
    match why {
        Returned::Closed => 0,
        Returned::Expired => 1,
        Returned::Nacked => 2,
    }
}

/// The label each index of [`Tally::requeued`] and [`Tally::dead`] stands for.
pub const REASONS: [&str; 3] = ["closed", "expired", "nacked"];

/// Put-to-settle latency of the sampled tasks of one queue.
#[derive(Debug, Default)]
pub(super) struct Latency {
    /// `(first id, end id, when)` of recent puts that hold a sampled id, in id order (ids are
    /// reserved under the queue's lock, so they grow with put order within a queue).
    puts: VecDeque<(TaskId, TaskId, Stamp)>,
    histogram: Histogram,
}

/// Counts per bucket of [`LATENCY_BOUNDS`] (plus one above), their sum and count.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Histogram {
    pub buckets: [u64; LATENCY_BOUNDS.len() + 1],
    pub count: u64,
    pub sum_seconds: f64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        let bucket = LATENCY_BOUNDS.partition_point(|&bound| bound < seconds);
        self.buckets[bucket] += 1;
        self.count += 1;
        self.sum_seconds += seconds;
    }

    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: &Histogram) {
        for (mine, theirs) in self.buckets.iter_mut().zip(other.buckets) {
            *mine += theirs;
        }
        self.count += other.count;
        self.sum_seconds += other.sum_seconds;
    }

    /// The counts since `earlier`, a reading of the same histogram.
    pub fn since(&self, earlier: &Histogram) -> Histogram {
        let mut out = self.clone();
        for (now, then) in out.buckets.iter_mut().zip(earlier.buckets) {
            *now = now.saturating_sub(then);
        }
        out.count = self.count.saturating_sub(earlier.count);
        out.sum_seconds = (self.sum_seconds - earlier.sum_seconds).max(0.0);
        out
    }

    /// The `q`-quantile in seconds, interpolated within its bucket; `None` without samples.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * self.count as f64;
        let mut below = 0.0;
        for (i, &n) in self.buckets.iter().enumerate() {
            let n = n as f64;
            if n > 0.0 && below + n >= rank {
                let low = if i == 0 { 0.0 } else { LATENCY_BOUNDS[i - 1] };
                // Above the last bound there is nothing to interpolate towards.
                let Some(&high) = LATENCY_BOUNDS.get(i) else {
                    return Some(low);
                };
                return Some(low + (high - low) * ((rank - below) / n).clamp(0.0, 1.0));
            }
            below += n;
        }
        LATENCY_BOUNDS.last().copied()
    }
}

impl Latency {
    /// Notes when the tasks `first..first + n` were put, if one of them is sampled.
    pub(super) fn put(&mut self, epoch: Deadline, first: TaskId, n: usize) {
        let end = first + n as u64;
        if first.next_multiple_of(LATENCY_SAMPLE) >= end {
            return;
        }
        if self.puts.len() == PUTS_KEPT {
            self.puts.pop_front();
        }
        self.puts
            .push_back((first, end, stamp(epoch, Deadline::now())));
    }

    /// Measures `task`, just settled, if it is sampled and its put is remembered. Inlined
    /// into every settlement: for 63 tasks in 64 it is a mask test.
    #[inline]
    pub(super) fn settled(&mut self, epoch: Deadline, task: TaskId) {
        if task & (LATENCY_SAMPLE - 1) == 0 {
            self.measure(epoch, task);
        }
    }

    #[inline(never)]
    fn measure(&mut self, epoch: Deadline, task: TaskId) {
        let at = self.puts.partition_point(|&(first, ..)| first <= task);
        let Some(&(_, end, put)) = at.checked_sub(1).and_then(|i| self.puts.get(i)) else {
            return;
        };
        if task < end {
            let now = stamp(epoch, Deadline::now());
            self.histogram.observe(now.saturating_sub(put) as f64 / 1e9);
        }
    }
}

/// One queue as an observer sees it.
#[derive(Debug, Clone)]
pub struct QueueReport {
    pub stats: QueueStats,
    /// Holds another queue's dead letters.
    pub dead_letters: bool,
    pub tally: Tally,
    pub latency: Histogram,
}

/// What one session holds and has settled, over all queues.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SessionReport {
    /// Leases it holds now.
    pub leased: u64,
    /// Leases it settled (completed or acked) since it connected.
    pub settled: u64,
    /// The queues it holds or settled leases on, in rank order.
    pub queues: Vec<String>,
}

impl Broker {
    /// Every queue, and every session that has held a lease, in one pass that locks each queue
    /// once.
    pub fn report(&self) -> (Vec<QueueReport>, FxHashMap<SessionId, SessionReport>) {
        let mut sessions: FxHashMap<SessionId, SessionReport> = FxHashMap::default();
        let mut queues = Vec::new();
        for slot in self.slots() {
            let queue = self.lock(&slot);
            for (&id, leases) in &queue.sessions {
                let s = sessions.entry(id).or_default();
                s.leased += leases.live as u64;
                s.settled += leases.settled;
                s.queues.push(slot.name.clone());
            }
            queues.push(QueueReport {
                stats: queue.stats(&slot.name),
                dead_letters: !slot.buries(),
                tally: queue.tally,
                latency: queue.latency.histogram.clone(),
            });
        }
        (queues, sessions)
    }

    /// Sessions that ever completed a task, as [`Broker::snapshot`] counts them, without
    /// locking any queue.
    pub fn completing_total(&self) -> u64 {
        super::registry::lock_unpoisoned(&self.shared.completers).total
    }

    /// The newest `max` items of `queue`, newest first, without taking them; `None` if there is
    /// no such queue.
    pub fn newest(&self, queue: &str, max: usize) -> Option<Vec<(TaskId, Bytes)>> {
        let slot = self.existing(queue)?;
        let queue = self.lock(&slot);
        let items = queue.items.iter().rev().take(max);
        Some(items.map(|i| (i.id, i.payload_bytes())).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_within_a_bucket_and_stop_at_the_last_bound() {
        let mut h = Histogram::default();
        assert_eq!(h.quantile(0.5), None);
        for _ in 0..100 {
            h.observe(0.003); // the (2 ms, 5 ms] bucket
        }
        let p50 = h.quantile(0.5).unwrap();
        assert!((0.002..=0.005).contains(&p50), "{p50}");
        h.observe(1000.0);
        assert_eq!(h.quantile(1.0), Some(600.0));
        let later = {
            let mut l = h.clone();
            l.observe(0.00005);
            l
        };
        let delta = later.since(&h);
        assert_eq!((delta.count, delta.buckets[0]), (1, 1));
    }

    #[test]
    fn only_sampled_ids_of_a_remembered_put_are_measured() {
        let epoch = Deadline::now();
        let mut l = Latency::default();
        l.put(epoch, 1, 10); // ids 1..11: none sampled
        assert!(l.puts.is_empty());
        l.put(epoch, 60, 10); // 60..70 holds 64
        l.settled(epoch, 63);
        assert_eq!(l.histogram.count, 0, "63 is not sampled");
        l.settled(epoch, 64);
        l.settled(epoch, 128); // sampled, but never put here
        assert_eq!(l.histogram.count, 1);
    }
}
