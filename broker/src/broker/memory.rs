//! The master's memory budget: one total of what every item held costs (queued, leased,
//! delayed, dead-lettered) plus what waiting requests hold, against one limit.
//!
//! Each queue keeps its own total under its lock and publishes the change when it is
//! unlocked, so the hot path adds to a field it owns and the shared atomic moves once per lock,
//! not once per item. New tasks and results are refused past the budget; what the master
//! already holds (a task given back, a dead letter, a reply-queue notice) always goes in, so a
//! task is never dropped to keep within it.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use super::item::{Item, Stored};
use super::{Broker, QueueError};

/// What the budget charges an item beyond its payload: its slot in the queue, or its lease
/// entry with the expiry and session-list entries beside it, with the tables' growth slack.
/// One figure for every state keeps an item's charge the same wherever it moves; 128 is the
/// costliest state (a lease: a 64-byte map entry at up to 2× slack, 16 for its expiry, 8 in its
/// session's list) rounded up.
pub const ITEM_OVERHEAD: u64 = 128;

/// What a payload stored on its own costs beyond its bytes: the box around its handle and the
/// shared header its first clone allocates.
const BOXED_OVERHEAD: u64 = 64;

/// What the budget charges for holding an item with `payload` bytes.
pub fn item_cost(payload: usize) -> u64 {
    ITEM_OVERHEAD
        + if payload > super::item::INLINE {
            payload as u64 + BOXED_OVERHEAD
        } else {
            0
        }
}

impl Item {
    /// What holding this item is charged.
    pub(super) fn cost(&self) -> u64 {
        match &self.stored {
            Stored::Inline { .. } => ITEM_OVERHEAD,
            Stored::Boxed { bytes, .. } => item_cost(bytes.len()),
        }
    }
}

impl Broker {
    /// The memory budget and what it has been charged.
    pub fn memory(&self) -> &Arc<Memory> {
        &self.shared.memory
    }

    /// Refuses new work of `cost` bytes that does not fit the memory budget.
    pub(super) fn admit(&self, cost: u64) -> Result<(), QueueError> {
        if self.shared.memory.admits(cost) {
            return Ok(());
        }
        Err(QueueError::MemoryFull {
            budget: self.shared.limits.max_memory,
        })
    }
}

/// The budget and what it has been charged.
#[derive(Debug)]
pub struct Memory {
    budget: u64,
    /// Items the queues hold, as last published by each queue on unlock.
    held: AtomicU64,
    /// Requests waiting for room, charged in full from when they start waiting until they end.
    waiting: AtomicU64,
}

/// The budget's totals, for observers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryUse {
    /// Charged for items held (queued, leased, delayed, dead letters).
    pub held: u64,
    /// Charged for requests waiting for room.
    pub waiting: u64,
    /// The limit; `u64::MAX` for none.
    pub budget: u64,
}

impl Memory {
    pub(super) fn new(budget: u64) -> Self {
        Self {
            budget,
            held: AtomicU64::new(0),
            waiting: AtomicU64::new(0),
        }
    }

    /// True if `more` bytes of new work fit the budget now.
    pub fn admits(&self, more: u64) -> bool {
        let used = self
            .held
            .load(Relaxed)
            .saturating_add(self.waiting.load(Relaxed));
        used.saturating_add(more) <= self.budget
    }

    /// Adds `delta` (two's complement for a decrease) to what the queues hold.
    pub(super) fn publish(&self, delta: u64) {
        self.held.fetch_add(delta, Relaxed);
    }

    /// Charges a waiting request `bytes`, here and to its connection's total `local`, until
    /// the returned guard is dropped.
    pub fn wait(self: &Arc<Self>, local: &Arc<AtomicU64>, bytes: u64) -> WaitCharge {
        self.waiting.fetch_add(bytes, Relaxed);
        local.fetch_add(bytes, Relaxed);
        WaitCharge {
            memory: Arc::clone(self),
            local: Arc::clone(local),
            bytes,
        }
    }

    pub fn usage(&self) -> MemoryUse {
        MemoryUse {
            held: self.held.load(Relaxed),
            waiting: self.waiting.load(Relaxed),
            budget: self.budget,
        }
    }
}

/// A waiting request's charge, returned when it is dropped.
#[derive(Debug)]
pub struct WaitCharge {
    memory: Arc<Memory>,
    local: Arc<AtomicU64>,
    bytes: u64,
}

impl Drop for WaitCharge {
    fn drop(&mut self) {
        self.memory.waiting.fetch_sub(self.bytes, Relaxed);
        self.local.fetch_sub(self.bytes, Relaxed);
    }
}
