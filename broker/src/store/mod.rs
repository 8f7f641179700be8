//! Where a master's queues are kept beyond its memory. The broker hands every change to a queue
//! to its [`Store`] (see [`crate::broker::journal`]); [`Memory`] keeps nothing, and then the
//! broker builds no records at all.

mod compact;
pub mod fs;
pub mod record;
mod recover;
mod snapshot;
mod wal;

#[cfg(test)]
mod tests;

pub use wal::{Fsync, Wal, WalOptions};

use std::fmt;

use tokio::sync::watch;

pub use crate::broker::journal::{Change, LeaseTerms, QueueRank, Returned};
use crate::broker::Broker;

/// Keeps the record of queue changes that a master's queues are restored from.
pub trait Store: fmt::Debug + Send + Sync + 'static {
    /// Whether this store keeps records. One that does not costs the broker nothing per
    /// change: no record is even built, and none of the calls below is made.
    fn records(&self) -> bool {
        true
    }

    /// Records one change. Called with the lock of every queue the change names held, so the
    /// order of calls is the order of the changes; it must not block (a push into a buffer).
    fn record(&self, change: &Change<'_>);

    /// Restores the queues this store keeps into `broker`, which has none yet and records
    /// nothing while this runs.
    fn restore(&self, _broker: &Broker) -> Result<(), StoreError> {
        Ok(())
    }

    /// Starts what keeps the store in shape while `broker` runs (compaction); stopped by
    /// [`Store::close`].
    fn start(&self, _broker: &Broker) {}

    /// Where the records so far end: a reply made now must not leave before everything up to
    /// here is durable.
    fn position(&self) -> u64 {
        0
    }

    /// How far records are durable, as it changes; `None` if there is nothing to wait for.
    fn durability(&self) -> Option<watch::Receiver<Durability>> {
        None
    }

    /// Whether there is room to accept new tasks.
    fn has_room(&self) -> bool {
        true
    }

    /// What the store holds and does, for `stats`.
    fn stats(&self) -> Option<taskmill_protocol::StorageStats> {
        None
    }

    /// Makes everything recorded durable and stops background work.
    fn close(&self) {}
}

/// How far the records are durable.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Durability {
    /// Every record before this position is durable (written, in interval mode).
    pub upto: u64,
    /// Set once writing failed: nothing more will become durable.
    pub failed: Option<std::sync::Arc<str>>,
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
    #[error("{}: another master is using this data directory (its lock file is held)", .0.display())]
    Locked(std::path::PathBuf),
    #[error(
        "{} is damaged at byte {offset}: {problem}. The master will not start on a damaged log; \
         --repair cuts the log at the damage, losing what follows",
        file.display()
    )]
    Corrupt {
        file: std::path::PathBuf,
        offset: u64,
        problem: String,
    },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}
