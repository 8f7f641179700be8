//! The squares job's typed payloads and queues, shared by its producer, collector and handler.

use serde::{Deserialize, Serialize};

/// The job's queues: a worker's defaults, the Python example's `get_task_queue` and
/// `get_result_queue`.
pub use taskmill::{RESULTS_QUEUE, TASKS_QUEUE};

/// One input. `seq` is the job's own numbering, so results can be matched and deduplicated even
/// when the same random input appears twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SquareTask {
    pub seq: u64,
    pub input: i64,
}

/// One answer: `square` is `input²` as `i128`, which no `i64` input can overflow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SquareResult {
    pub seq: u64,
    pub input: i64,
    pub square: i128,
    /// The delivery of the task that produced this answer (1 = first), so a collector can
    /// count redeliveries.
    pub attempt: u32,
    /// The answering worker's random id, so a collector can count the workers that took part.
    pub worker: u32,
}
