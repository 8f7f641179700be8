//! Where a master's queues are kept beyond its memory. Every change to a queue is recorded
//! through [`Store`]; [`Memory`] keeps nothing.

use std::fmt;

/// Keeps a record of queue changes, to restore the queues from when a master opens.
pub trait Store: fmt::Debug + Send + Sync + 'static {}

/// Queues in memory only: lost when the master stops.
#[derive(Debug, Clone, Copy, Default)]
pub struct Memory;

impl Store for Memory {}

/// A store could not be opened or read.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
}
