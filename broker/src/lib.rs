//! taskmill's master as a library: named bounded queues with leases, served to authenticated
//! clients over TCP. The `taskmill-master` binary parses flags and calls in here; tests and
//! programs that embed a master call the same code.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use taskmill_broker::{store::Memory, Master, ServerConfig};
//! use taskmill_protocol::AuthKey;
//!
//! let config = ServerConfig::new(AuthKey::new(std::env::var("TASKMILL_AUTHKEY")?)?);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:5000").await?;
//! let shutdown = tokio_util::sync::CancellationToken::new();
//! Master::open(config, Arc::new(Memory))?.serve(listener, shutdown).await?;
//! # Ok(()) }
//! ```
//!
//! Depends on the wire crate only: no client, worker or job code.
//!
//! # Layout
//! - [`config`]: the validated [`ServerConfig`].
//! - [`master`]: [`Master`], the handle every listener shares: queues, counters, lifecycle,
//!   stats.
//! - [`net`]: the accept loop, admission ([`net::guard`]), sessions and request dispatch.
//! - [`http`]: the optional read-only HTTP port: `/metrics`, `/api/stats`, `/healthz` and the
//!   dashboard.
//! - [`compat`]: listeners for other protocols on the same queues: Python's
//!   `multiprocessing.managers` ([`compat::python`]).
//! - [`broker`]: queue state, waiters and leases; no I/O.
//! - [`store`]: where queue changes are recorded ([`store::Memory`]: nowhere).

pub mod broker;
pub mod compat;
pub mod config;
pub mod http;
pub mod master;
pub mod net;
pub mod store;

pub use broker::{Broker, QueueLimits, SessionId};
pub use config::{ServerConfig, DEFAULT_MAX_MEMORY, MAX_ITEMS, MIN_MAX_FRAME};
pub use ipnet::IpNet;
pub use master::Master;
pub use net::guard::GuardLimits;
pub use net::keys::{Grants, Keyring};
