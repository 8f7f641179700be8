//! Socket-free tests of queue semantics, by topic; paused time makes every wait deterministic.
//! This file holds the helpers they share.

use std::time::Duration;

use super::item::INLINE;
use super::lease::DEAD_SLACK;
use super::queue::Queue;
use super::registry::valid_name;
use super::*;
use taskmill_protocol::{DeadLetter, DEAD_SUFFIX};
use tokio_util::sync::CancellationToken;

mod admin;
mod budget;
mod dead_letters;
mod journal;
mod leases;
mod locking;
mod memory;
mod order;
mod report;
mod waiting;

pub(super) const MB: usize = 1 << 20;

pub(super) const LEASE: Delivery = Delivery::Lease { millis: None };

pub(super) fn limits() -> QueueLimits {
    QueueLimits {
        default_capacity: None,
        max_queues: 8,
        lease_timeout: Duration::from_secs(30),
        max_attempts: 3,
        max_memory: u64::MAX,
    }
}

pub(super) fn broker() -> Broker {
    Broker::new(limits())
}

pub(super) fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

pub(super) fn payloads(tasks: &[Task]) -> Vec<&[u8]> {
    tasks.iter().map(|t| t.payload.as_ref()).collect()
}

pub(super) fn ready<T: std::fmt::Debug, W: std::fmt::Debug>(step: Step<T, W>) -> T {
    match step {
        Step::Ready(t) => t,
        Step::Wait(w) => panic!("expected an answer now, got a waiter {w:?}"),
    }
}

pub(super) fn waiting<T: std::fmt::Debug, W: std::fmt::Debug>(step: Step<T, W>) -> W {
    match step {
        Step::Wait(w) => w,
        Step::Ready(t) => panic!("expected a waiter, got {t:?}"),
    }
}

impl Broker {
    pub(super) fn with_queue<R>(&self, name: &str, f: impl FnOnce(&Queue) -> R) -> R {
        let slot = self.existing(name).expect("the queue exists");
        let queue = self.lock(&slot);
        f(&queue)
    }
}

pub(super) fn in_ms(ms: u64) -> Option<Deadline> {
    Some(Deadline::now() + Duration::from_millis(ms))
}

pub(super) fn later(secs: u64) -> Deadline {
    Deadline::now() + Duration::from_secs(secs)
}

/// Fills a 1-slot "results" queue with "full" and leases `worker` one task of "tasks" (that
/// queue created first if `tasks_first`, so that it ranks below "results"); returns the
/// worker's answer to it, "9", whose completion must wait for room.
pub(super) fn answer_for_a_full_results_queue(
    br: &Broker,
    worker: SessionId,
    other: SessionId,
    tasks_first: bool,
) -> Vec<Outcome> {
    if tasks_first {
        br.declare("tasks", None).unwrap();
    }
    br.declare("results", Some(1)).unwrap();
    ready(br.put(other, "results", vec![b("full")], false).unwrap());
    ready(br.put(other, "tasks", vec![b("3")], false).unwrap());
    let task = ready(br.get(worker, "tasks", 1, MB, LEASE, false).unwrap()).remove(0);
    vec![Outcome {
        task: task.id,
        result: b("9"),
    }]
}
