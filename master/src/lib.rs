//! taskmill's master as a library: the broker that serves authenticated queues over TCP, and
//! the squares job. `main.rs` only parses flags and calls in here; tests call the same code.
//!
//! # Layout
//! - [`config`]: command line and the validated [`ServerConfig`].
//! - [`server`]: accept loop, connection limit, graceful shutdown ([`run`]).
//! - [`guard`]: admission control before authentication.
//! - `session` (private): one connection, handshake to close.
//! - [`queue`]: queue state, waiters and leases; no I/O.
//! - [`job`]: the squares job.
//! - [`stats`]: rendering of the `stats` command.

pub mod config;
pub mod guard;
pub mod job;
pub mod queue;
pub mod server;
mod session;
pub mod stats;

pub use config::ServerConfig;
pub use server::run;
