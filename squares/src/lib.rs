//! The squares job, taskmill's demonstration and benchmark: a producer puts random integers on
//! `tasks`, workers running the [`Squares`] handler square them, and a collector checks every
//! result exactly once.
//!
//! # Layout
//! - [`payload`]: the job's typed payloads and queue names.
//! - [`handler`]: squaring as pure functions, and the [`Squares`] handler.
//! - [`job`]: producer, collector and local workers against a master ([`job::run`]).
//! - [`pickled`]: the job in Python's format (pickled ints and squares, or the tutorial's
//!   strings), for Python scripts on the master's Python listener.
//! - `tally` (private): the collector's account of what came back.
//! - [`report`]: the summary, as data and as text.
//! - `progress` (private): a progress bar or log lines while the job runs.

pub mod handler;
pub mod job;
pub mod payload;
pub mod pickled;
mod progress;
pub mod report;
mod tally;

pub use handler::Squares;
pub use job::{JobConfig, JobError};
pub use payload::{SquareResult, SquareTask, RESULTS_QUEUE, TASKS_QUEUE};
pub use pickled::Codec;
pub use report::{micros, render, Ending, JobReport};
pub use tally::input_for;
