//! The squares payloads: their bytes as `docs/protocol.md` section 8 gives them, and round
//! trips and garbage for every value.

use proptest::prelude::*;
use taskmill_protocol::{decode_payload, encode_payload};
use taskmill_squares::{SquareResult, SquareTask};

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn payload_bytes_match_section_8() {
    let task = encode_payload(&SquareTask { seq: 0, input: -3 }).unwrap();
    assert_eq!(hex(&task), "00 05");
    let result = SquareResult {
        seq: 0,
        input: -3,
        square: 9,
        attempt: 1,
        worker: 7,
    };
    assert_eq!(hex(&encode_payload(&result).unwrap()), "00 05 12 01 07");
}

proptest! {
    #[test]
    fn payloads_round_trip(seq in any::<u64>(), input in any::<i64>(), attempt in any::<u32>()) {
        let task = SquareTask { seq, input };
        prop_assert_eq!(decode_payload::<SquareTask>(&encode_payload(&task).unwrap()).unwrap(), task);
        let result = SquareResult { seq, input, square: i128::from(input) * i128::from(input), attempt, worker: 0 };
        prop_assert_eq!(decode_payload::<SquareResult>(&encode_payload(&result).unwrap()).unwrap(), result);
    }

    #[test]
    fn garbage_never_panics(noise in proptest::collection::vec(any::<u8>(), 0..64)) {
        let _ = decode_payload::<SquareTask>(&noise);
        let _ = decode_payload::<SquareResult>(&noise);
    }
}
