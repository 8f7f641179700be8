//! taskmill's worker as a library: connect, lease tasks, square them, complete them, and keep
//! doing so across master restarts. `main.rs` and the master's `run --local-workers` both call
//! [`run`].
//!
//! # Layout
//! - [`compute`]: the pure squaring functions.
//! - [`config`]: the configuration.
//! - [`support`]: process plumbing shared with the master's binary (flags, logging, signals).
//! - `worker` (private): the connect/retry and lease/complete loop.

pub mod compute;
pub mod config;
pub mod support;
mod worker;

pub use config::WorkerConfig;
pub use worker::{run, WorkerError, WorkerReport};
