//! Tests of the durable log on a simulated file system: its records, recovery from what a
//! crash leaves, damage, a full disk and failed fsyncs. This file holds what they share.

mod crash;
mod races;
mod record;
mod recovery;
mod sim;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use taskmill_protocol::{Delivery, Task, TaskId};

pub(super) use sim::SimFs;

use super::{Store, StoreError, Wal, WalOptions};
use crate::broker::{Broker, Progress, QueueDump, QueueLimits, SessionId, Step};

pub(super) const DIR: &str = "/data";

pub(super) const LEASE: Delivery = Delivery::Lease { millis: None };

pub(super) fn dir() -> PathBuf {
    PathBuf::from(DIR)
}

pub(super) fn limits() -> QueueLimits {
    QueueLimits {
        default_capacity: None,
        max_queues: 64,
        lease_timeout: Duration::from_secs(30),
        max_attempts: 2,
        max_memory: u64::MAX,
    }
}

pub(super) fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// A broker on `fs`'s data directory, recovered from what is there.
pub(super) fn open_with(fs: &SimFs, options: WalOptions) -> Result<(Broker, Arc<Wal>), StoreError> {
    let wal = Wal::open(Arc::new(fs.clone()), DIR, options)?;
    match Broker::open(limits(), wal.clone()) {
        Ok(broker) => Ok((broker, wal)),
        Err(err) => {
            wal.close();
            Err(err)
        }
    }
}

pub(super) fn open(fs: &SimFs) -> (Broker, Arc<Wal>) {
    open_with(fs, WalOptions::default()).expect("the data directory opens")
}

/// Waits until everything recorded so far is durable; false if the log failed first.
pub(super) async fn durable(wal: &Wal) -> bool {
    let target = wal.position();
    let mut durability = wal.durability().expect("a log has durability");
    let waited = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            {
                let d = durability.borrow_and_update();
                if d.failed.is_some() {
                    return false;
                }
                if d.upto >= target {
                    return true;
                }
            }
            if durability.changed().await.is_err() {
                return false;
            }
        }
    });
    waited.await.expect("the log answers within 20 s")
}

/// Waits (up to 20 s) until a snapshot the traffic so far triggered has been written: the
/// snapshot runs beside the traffic, so it may still be going when the last request returns.
pub(super) async fn snapshot_taken(wal: &Wal) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while wal
        .stats()
        .expect("stats of an open log")
        .snapshot_age_ms
        .is_none()
    {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    true
}

pub(super) fn ready<T: std::fmt::Debug, W: std::fmt::Debug>(step: Step<T, W>) -> T {
    match step {
        Step::Ready(t) => t,
        Step::Wait(w) => panic!("expected an answer now, got a waiter {w:?}"),
    }
}

pub(super) fn put(br: &Broker, s: SessionId, queue: &str, items: &[&str]) -> Progress {
    let items = items.iter().map(|i| b(i)).collect();
    ready(br.put(s, queue, items, false).unwrap())
}

pub(super) fn get(
    br: &Broker,
    s: SessionId,
    queue: &str,
    max: u32,
    delivery: Delivery,
) -> Vec<Task> {
    ready(br.get(s, queue, max, 1 << 20, delivery, false).unwrap())
}

pub(super) fn ids(tasks: &[Task]) -> Vec<TaskId> {
    tasks.iter().map(|t| t.id).collect()
}

/// The queue named `name` in a dump.
pub(super) fn queue<'a>(dump: &'a [QueueDump], name: &str) -> Option<&'a QueueDump> {
    dump.iter().find(|q| q.name == name)
}

/// The payloads a queue holds, queued and delayed, as text.
pub(super) fn payloads(q: Option<&QueueDump>) -> Vec<String> {
    let Some(q) = q else { return Vec::new() };
    let text = |p: &Vec<u8>| String::from_utf8_lossy(p).into_owned();
    let queued = q.items.iter().map(|(_, _, p)| text(p));
    queued
        .chain(q.delayed.iter().map(|(_, _, _, p)| text(p)))
        .collect()
}

/// The log segments in the data directory, oldest first.
pub(super) fn segments(fs: &SimFs) -> Vec<PathBuf> {
    let dir = dir();
    let mut found: Vec<_> = fs
        .names()
        .into_iter()
        .filter(|p| p.parent() == Some(Path::new(&dir)))
        .filter(|p| p.extension().is_some_and(|e| e == "tml"))
        .collect();
    found.sort();
    found
}
