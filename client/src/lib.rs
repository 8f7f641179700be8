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
//!   pipelined; [`admin`] has its calls for looking after queues.
//! - [`error`]: [`ClientError`], and which errors a retry may cure.
//! - [`reconnect`]: [`Backoff`], the one reconnect policy, and [`Reconnecting`], a connection
//!   made again after transient failures.
//! - [`handler`]: the [`Handler`] seam where a task's work plugs in, and how a task fails.
//! - [`job`]: typed tasks ([`Job`]), their [`Codec`]s, and [`JobHandler`], an async fn per
//!   task on the worker runtime.
//! - [`producer`]: putting tasks with a reply queue and getting each outcome back
//!   ([`Producer`], and its parts [`Submitter`] and [`Replies`]).
//! - [`worker`]: the worker runtime around a handler: leases kept alive, completions routed
//!   to reply queues, failures reported, reconnects, drain; and [`WorkerBuilder`].
//!
//! The wire format is the `taskmill-protocol` crate's; its types are re-exported here.

pub mod admin;
pub mod client;
pub mod error;
pub mod handler;
pub mod job;
pub mod producer;
pub mod reconnect;
pub mod worker;

pub use client::{Client, ClientOptions, PutOutcome, Settled, Worked};
pub use error::ClientError;
pub use handler::{Answer, Failure, Handler, Sleep};
pub use job::{Bincode, Codec, Job, JobHandler, Json, Raw};
pub use producer::{Producer, ProducerConfig, Replies, Submitter, TaskError, TaskHandle};
pub use reconnect::{Backoff, Reconnecting};
pub use taskmill_protocol::{
    AuthKey, DeadLetter, Delivery, KeyError, Outcome, QueueStats, Stats, Task, TaskId, TaskOutcome,
    TaskReply, TlsClient, Wait,
};
pub use worker::{Worker, WorkerBuilder, WorkerConfig, WorkerError, WorkerReport};

/// The queue workers take tasks from unless told otherwise (the Python example's
/// `get_task_queue`).
pub const TASKS_QUEUE: &str = "tasks";

/// The queue workers put results on unless told otherwise (the Python example's
/// `get_result_queue`).
pub const RESULTS_QUEUE: &str = "results";
