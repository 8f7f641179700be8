//! Listeners for other protocols than taskmill's own, on the same queues: each a port of its
//! own under the master's tracker, shutdown phases and admission guard.

pub mod python;
