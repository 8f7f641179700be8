//! taskmill's client library: connect to a master, use its queues, and run workers.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use taskmill::{AuthKey, Client, Wait};
//!
//! // The shared secret, e.g. from `taskmill-master keygen`.
//! let key = AuthKey::new(std::env::var("TASKMILL_AUTHKEY")?)?;
//! let mut client = Client::connect("127.0.0.1:5000", &key).await?;
//! client.put("tasks", vec!["7".into()], Wait::No).await?;
//! let tasks = client.get("tasks", 10, Wait::Millis(1000)).await?;
//! client.ack("tasks", tasks.iter().map(|t| t.id).collect()).await?;
//! # Ok(()) }
//! ```
//!
//! # Layout
//! - [`client`]: [`Client`], one authenticated connection with typed calls, sequential or
//!   pipelined.
//! - [`error`]: [`ClientError`], and which errors a retry may cure.
//! - [`reconnect`]: [`Backoff`], the one reconnect policy, and [`Reconnecting`], a connection
//!   made again after transient failures.
//! - [`handler`]: the [`Handler`] seam where a task's work plugs in.
//! - [`worker`]: the worker runtime around a handler: leases, heartbeats, completions,
//!   reconnects, drain.
//!
//! The wire format is the `taskmill-protocol` crate's; its types are re-exported here.

pub mod client;
pub mod error;
pub mod handler;
pub mod reconnect;
pub mod worker;

pub use client::{Client, ClientOptions, PutOutcome, Settled, Worked};
pub use error::ClientError;
pub use handler::{Answer, Failure, Handler, Sleep};
pub use reconnect::{Backoff, Reconnecting};
pub use taskmill_protocol::{
    AuthKey, Delivery, KeyError, Outcome, QueueStats, Stats, Task, TaskId, TlsClient, Wait,
};
pub use worker::{Worker, WorkerConfig, WorkerError, WorkerReport};

/// The queue workers take tasks from unless told otherwise (the Python example's
/// `get_task_queue`).
pub const TASKS_QUEUE: &str = "tasks";

/// The queue workers put results on unless told otherwise (the Python example's
/// `get_result_queue`).
pub const RESULTS_QUEUE: &str = "results";

/// A worker hands tasks its handler rejects to `<tasks queue>` + this suffix, untouched.
pub const REJECTED_SUFFIX: &str = ".rejected";
