//! Where a master's queues are kept beyond its memory. The broker hands every change to a queue
//! to its [`Store`] (see [`crate::broker::journal`]); [`Memory`] keeps nothing, and then the
//! broker builds no records at all.

use std::fmt;

pub use crate::broker::journal::{Change, LeaseTerms, QueueRank, Returned};

/// Keeps the record of queue changes that a master's queues are restored from.
pub trait Store: fmt::Debug + Send + Sync + 'static {
    /// Whether this store keeps records. One that does not costs the broker nothing per
    /// change: no record is even built.
    fn records(&self) -> bool {
        true
    }

    /// Records one change. Called with the lock of every queue the change names held, so the
    /// order of calls is the order of the changes; it must not block (a push into a buffer).
    fn record(&self, change: &Change<'_>);
}

/// Queues in memory only: lost when the master stops.
#[derive(Debug, Clone, Copy, Default)]
pub struct Memory;

impl Store for Memory {
    fn records(&self) -> bool {
        false
    }

    fn record(&self, _change: &Change<'_>) {}
}

/// A store could not be opened or read.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
}
