//! The work itself: squaring, as pure functions over typed and encoded tasks.

use taskmill_protocol::squares::{SquareResult, SquareTask};
use taskmill_protocol::{decode_payload, CodecError, PayloadBatch};

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

#[cfg(test)]
mod tests {
    use super::*;
    use taskmill_protocol::encode_payload;

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
}
