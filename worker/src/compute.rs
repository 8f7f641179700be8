//! The work itself: squaring, as pure functions over typed and encoded tasks.

use bytes::Bytes;
use taskmill_protocol::squares::{SquareResult, SquareTask};
use taskmill_protocol::{decode_payload, encode_payload, CodecError, PayloadBatch};

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

/// Decodes a task payload and encodes its result; an undecodable payload is an error.
pub fn process(payload: &[u8], attempt: u32, worker: u32) -> Result<Bytes, CodecError> {
    let task: SquareTask = decode_payload(payload)?;
    encode_payload(&answer(task, attempt, worker))
}

/// [`process`] for a batch: appends the result to `results`, which encodes a whole batch into
/// one buffer.
pub fn process_into(
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
        let out = process(&encode_payload(&task).unwrap(), 2, 9).unwrap();
        let result: SquareResult = decode_payload(&out).unwrap();
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
        assert!(process(b"", 1, 1).is_err());
        assert!(process(&[0xff; 40], 1, 1).is_err());
    }
}
