//! The work itself: squaring, as pure functions over typed and encoded tasks, and the
//! [`Squares`] handler the worker runtime calls.

use taskmill::{Answer, Failure, Handler, Task};
use taskmill_protocol::{decode_payload, CodecError, PayloadBatch};

use crate::payload::{SquareResult, SquareTask};
use crate::pickled::{self, Codec};

/// `n²`, exact for every `i64`: the largest square, `i64::MIN²` = 2¹²⁶, fits in an `i128`.
pub fn square(n: i64) -> i128 {
    let n = i128::from(n);
    n * n
}

/// Answers one task, received on its `attempt`-th delivery, as worker `worker`.
pub fn answer(task: SquareTask, attempt: u32, worker: u32) -> SquareResult {
    SquareResult {
        seq: task.seq,
        input: task.input,
        square: square(task.input),
        attempt,
        worker,
    }
}

/// Decodes a task payload and appends its encoded result to `results` (one buffer for a
/// batch's results); an undecodable payload is an error and appends nothing.
pub fn process(
    payload: &[u8],
    attempt: u32,
    worker: u32,
    results: &mut PayloadBatch,
) -> Result<(), CodecError> {
    let task: SquareTask = decode_payload(payload)?;
    results.push(&answer(task, attempt, worker))
}

/// The squares job's handler: squares each task and stamps the result with this worker's id,
/// so a collector can count the workers that took part. A task that does not decode is
/// dead-lettered: it never will.
#[derive(Debug, Clone)]
pub struct Squares {
    id: u32,
    codec: Codec,
}

impl Squares {
    /// A handler with a random worker id.
    pub fn new() -> Self {
        Self::with_id(rand::random())
    }

    pub fn with_id(id: u32) -> Self {
        Self {
            id,
            codec: Codec::Bincode,
        }
    }

    /// Tasks and results in `codec` (Python's pickles, for a job shared with Python).
    pub fn with_codec(mut self, codec: Codec) -> Self {
        self.codec = codec;
        self
    }
}

impl Default for Squares {
    fn default() -> Self {
        Self::new()
    }
}

impl Handler for Squares {
    async fn handle(&self, tasks: &[Task]) -> Vec<Answer> {
        if self.codec != Codec::Bincode {
            return tasks
                .iter()
                .map(|task| {
                    pickled::answer(&task.payload, self.codec).map_err(|why| Failure::Fatal {
                        reason: format!("undecodable task: {why}"),
                    })
                })
                .collect();
        }
        // An encoded result is about 15 bytes; one buffer holds the batch's.
        let mut results = PayloadBatch::with_capacity(tasks.len(), 24);
        // Rare, so kept apart: no allocation for a batch without one.
        let mut rejected = Vec::new();
        for (at, task) in tasks.iter().enumerate() {
            if let Err(err) = process(&task.payload, task.attempt, self.id, &mut results) {
                let reason = format!("undecodable task: {err}");
                rejected.push((at, Failure::Fatal { reason }));
            }
        }
        let mut encoded = results.finish().into_iter();
        let mut rejected = rejected.into_iter().peekable();
        (0..tasks.len())
            .map(|at| match rejected.next_if(|(r, _)| *r == at) {
                Some((_, failure)) => Err(failure),
                None => Ok(encoded.next().expect("one result per task processed")),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use taskmill_protocol::{decode_payload, encode_payload};

    #[test]
    fn squares_are_exact_across_the_whole_i64_range() {
        assert_eq!(square(0), 0);
        assert_eq!(square(-3), 9);
        assert_eq!(square(10_000), 100_000_000);
        assert_eq!(
            square(i64::MAX),
            85_070_591_730_234_615_847_396_907_784_232_501_249
        );
        assert_eq!(square(i64::MIN), 1i128 << 126);
    }

    #[test]
    fn process_round_trips_through_the_payload_encoding() {
        let task = SquareTask {
            seq: 41,
            input: -12,
        };
        let mut results = PayloadBatch::default();
        process(&encode_payload(&task).unwrap(), 2, 9, &mut results).unwrap();
        let out = results.finish();
        assert_eq!(out.len(), 1);
        let result: SquareResult = decode_payload(&out[0]).unwrap();
        assert_eq!(
            result,
            SquareResult {
                seq: 41,
                input: -12,
                square: 144,
                attempt: 2,
                worker: 9,
            }
        );
    }

    #[test]
    fn garbage_payloads_are_errors_not_panics() {
        let mut results = PayloadBatch::default();
        assert!(process(b"", 1, 1, &mut results).is_err());
        assert!(process(&[0xff; 40], 1, 1, &mut results).is_err());
        assert!(results.is_empty(), "an error appends nothing");
    }

    #[tokio::test]
    async fn the_handler_answers_each_task_in_order_and_rejects_garbage() {
        let task = |id, payload: Bytes| Task {
            id,
            attempt: 1,
            payload,
            reply_to: Bytes::new(),
        };
        let good = |seq, input| encode_payload(&SquareTask { seq, input }).unwrap();
        let tasks = [
            task(1, good(0, 3)),
            task(2, Bytes::from_static(b"")),
            task(3, good(1, -4)),
        ];
        let answers = Squares::with_id(7).handle(&tasks).await;
        assert_eq!(answers.len(), 3);
        let square = |a: &Answer| decode_payload::<SquareResult>(a.as_ref().unwrap()).unwrap();
        assert_eq!(
            (square(&answers[0]).square, square(&answers[0]).worker),
            (9, 7)
        );
        assert!(
            matches!(&answers[1], Err(Failure::Fatal { reason }) if reason.contains("undecodable"))
        );
        assert_eq!(square(&answers[2]).square, 16);
    }
}
