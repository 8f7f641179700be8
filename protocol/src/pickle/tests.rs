//! The scanner against the byte dumps of CPython's own pickles (docs: PYTHON-MANAGERS.md §3.3)
//! and against hostile ones.

use super::*;

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// A protocol-4 request as CPython 3.11 frames it, built from its body.
fn framed(body: &[u8]) -> Vec<u8> {
    let mut out = vec![0x80, 4, 0x95];
    out.extend_from_slice(&((body.len() as u64) - 1).to_le_bytes());
    out.extend_from_slice(body);
    out
}

fn short_str(s: &str) -> Vec<u8> {
    let mut out = vec![0x8c, s.len() as u8];
    out.extend_from_slice(s.as_bytes());
    out.push(0x94);
    out
}

#[test]
fn the_dummy_request_of_cpython_parses() {
    let data =
        hex("80 04 95 10 00 00 00 00 00 00 00 28 4e 8c 05 64 75 6d 6d 79 94 29 7d 94 74 94 2e");
    let req = Request::parse(&data, Limits::default()).unwrap();
    assert_eq!(req.ident, None);
    assert_eq!(req.method, "dummy");
    assert!(req.args.is_empty() && req.kwds.is_empty());
}

#[test]
fn get_with_a_timeout_keyword_parses() {
    let mut body = vec![0x28];
    body.extend(short_str("7f0123456789"));
    body.extend(short_str("get"));
    body.extend([0x29, 0x7d, 0x94]);
    body.extend(short_str("timeout"));
    body.extend([0x4b, 0x01, 0x73, 0x74, 0x94, 0x2e]);
    let data = framed(&body);
    let req = Request::parse(&data, Limits::default()).unwrap();
    assert_eq!(req.ident, Some("7f0123456789"));
    assert_eq!(req.method, "get");
    assert_eq!(req.kwds.len(), 1);
    assert_eq!(req.kwds[0].0, "timeout");
    assert_eq!(req.kwds[0].1.value, Value::Int(1));
}

#[test]
fn a_put_item_becomes_the_pickle_python_would_write_for_it() {
    let mut body = vec![0x28];
    body.extend(short_str("7f0123456789"));
    body.extend(short_str("put"));
    body.extend([0x4b, 0x2a, 0x85, 0x94, 0x7d, 0x94, 0x74, 0x94, 0x2e]);
    let data = framed(&body);
    let req = Request::parse(&data, Limits::default()).unwrap();
    let item = req.item(&req.args[0]).unwrap();
    assert_eq!(item, hex("80 04 4b 2a 2e"));
    assert_eq!(read_int(&item), Some(42));
    assert_eq!(
        return_item(&item, Limits::default()),
        hex("80 04 58 07 00 00 00 23 52 45 54 55 52 4e 4b 2a 86 2e")
    );
}

#[test]
fn an_item_that_reads_the_method_name_from_the_memo_gets_it_written_out() {
    // q.put('put'): the item is BINGET 1, the method name's memo entry.
    let mut body = vec![0x28];
    body.extend(short_str("ab"));
    body.extend(short_str("put"));
    body.extend([0x68, 0x01, 0x85, 0x94, 0x7d, 0x94, 0x74, 0x94, 0x2e]);
    let data = framed(&body);
    let req = Request::parse(&data, Limits::default()).unwrap();
    assert_eq!(req.args[0].value, Value::Str("put"));
    let item = req.item(&req.args[0]).unwrap();
    assert_eq!(item, hex("80 04 8c 03 70 75 74 2e"));
}

#[test]
fn memo_entries_inside_an_item_are_renumbered_from_zero() {
    // put(('x', 'x')) where the tuple shares one string: 8c 'x' 94, 68 <n>, 86 94.
    let mut body = vec![0x28];
    body.extend(short_str("ab"));
    body.extend(short_str("put"));
    body.extend(short_str("x"));
    body.extend([
        0x68, 0x02, 0x86, 0x94, 0x85, 0x94, 0x7d, 0x94, 0x74, 0x94, 0x2e,
    ]);
    let data = framed(&body);
    let req = Request::parse(&data, Limits::default()).unwrap();
    let item = req.item(&req.args[0]).unwrap();
    assert_eq!(
        item,
        hex("80 04 8c 01 78 71 00 68 00 86 71 01 2e"),
        "MEMOIZE 2 and 3 become BINPUT 0 and 1"
    );
}

#[test]
fn replies_match_the_templates() {
    assert_eq!(
        reply("#RETURN", |w| w.none()),
        hex("80 04 8c 07 23 52 45 54 55 52 4e 4e 86 2e")
    );
    let empty = reply("#ERROR", |w| w.exception("queue", "Empty", None));
    assert_eq!(
        empty,
        [
            &hex("80 04 8c 06")[..],
            b"#ERROR",
            &[0x8c, 5],
            b"queue",
            &[0x8c, 5],
            b"Empty",
            &hex("93 29 52 86 2e")
        ]
        .concat()
    );
}

#[test]
fn ints_use_the_shortest_opcode_and_read_back() {
    for n in [
        0i128,
        255,
        256,
        65535,
        65536,
        -1,
        i32::MIN as i128,
        1 << 40,
        -(1 << 40),
    ] {
        let p = int_pickle(n);
        assert_eq!(read_int(&p), Some(n as i64), "{n}: {p:02x?}");
    }
    assert_eq!(int_pickle(1764), hex("80 04 4d e4 06 2e"));
    assert_eq!(int_pickle(1 << 40)[2..5], [0x8a, 6, 0]);
    let big = int_pickle(i128::from(i64::MAX) * 4);
    assert!(matches!(
        inspect(&big, Limits::default()),
        Payload::Pickle {
            value: Value::BigInt { negative: false },
            ..
        }
    ));
}

#[test]
fn a_memo_bomb_costs_its_size_not_its_expansion() {
    // 40 levels of x = [x_prev, x_prev]: 2^40 leaves when unpickled.
    let mut body = vec![0x80, 4, 0x5d, 0x94, 0x30];
    for i in 0..40u8 {
        body.extend([0x28, 0x68, i, 0x68, i, 0x6c, 0x94, 0x30]);
    }
    body.extend([0x68, 40, 0x2e]);
    let started = std::time::Instant::now();
    assert!(matches!(
        inspect(&body, Limits::default()),
        Payload::Pickle { .. }
    ));
    assert!(started.elapsed() < std::time::Duration::from_secs(1));
}

#[test]
fn hostile_pickles_are_refused_with_a_reason() {
    let limits = Limits::default();
    let cases: [(&[u8], PickleError); 8] = [
        (&[0x80, 4, 0x4e], PickleError::Truncated),
        (&[0x4e, 0x2e], PickleError::NoProto),
        (&[0x80, 9, 0x4e, 0x2e], PickleError::Protocol(9)),
        (&[0x80, 4, 0x4e, 0x4e, 0x2e], PickleError::NotOneValue),
        (&[0x80, 4, 0x52, 0x2e], PickleError::StackUnderflow(2)),
        (&[0x80, 4, 0x68, 0x07, 0x2e], PickleError::BadMemo(2)),
        (
            &[0x80, 4, 0x51, 0x2e],
            PickleError::Refused("persistent id", 2),
        ),
        (&[0x80, 4, 0x4e, 0x2e, 0x00], PickleError::Trailing),
    ];
    for (data, want) in cases {
        assert_eq!(scan::scan(data, limits).unwrap_err(), want, "{data:02x?}");
    }
    // A length that claims more than there is.
    let huge = [
        0x80, 4, 0x8e, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, 0x2e,
    ];
    assert_eq!(
        scan::scan(&huge, limits).unwrap_err(),
        PickleError::Truncated
    );
    // A deep nest of MARKs hits the limit instead of growing.
    let deep: Vec<u8> = [0x80, 4]
        .into_iter()
        .chain(std::iter::repeat_n(0x28, 20_000))
        .collect();
    assert_eq!(
        scan::scan(&deep, limits).unwrap_err(),
        PickleError::Limit("marks")
    );
    let deep: Vec<u8> = [0x80, 4]
        .into_iter()
        .chain(std::iter::repeat_n(0x4e, 20_000))
        .collect();
    assert_eq!(
        scan::scan(&deep, limits).unwrap_err(),
        PickleError::Limit("stack")
    );
}

#[test]
fn nested_tuples_keep_only_shallow_values_so_dropping_never_recurses_deeply() {
    let mut data = vec![0x80, 4, 0x4e];
    data.extend(std::iter::repeat_n(0x85, 100_000));
    data.push(0x2e);
    assert!(matches!(
        inspect(&data, Limits::default()),
        Payload::Pickle {
            value: Value::Other { truthy: true },
            ..
        }
    ));
}

#[test]
fn a_payload_that_is_not_a_pickle_goes_back_as_bytes() {
    let raw = b"\x01\x02 not a pickle";
    let mut want = hex("80 04 8c 07");
    want.extend_from_slice(b"#RETURN");
    want.extend([0x43, raw.len() as u8]);
    want.extend_from_slice(raw);
    want.extend([0x86, 0x2e]);
    assert_eq!(return_item(raw, Limits::default()), want);
}

#[test]
fn cpython_312_server_requests_parse() {
    for (data, method) in [
        ("8004952300000000000000284e8c06637265617465948c0e6765745f7461736b5f71756575659485947d9474942e", "create"),
        ("8004951700000000000000284e8c06696e63726566948c0271309485947d9474942e", "incref"),
        ("8004952b00000000000000284e8c116163636570745f636f6e6e656374696f6e948c0b4d61696e50726f636573739485947d9474942e", "accept_connection"),
    ] {
        let data = hex(data);
        let req = Request::parse(&data, Limits::default()).unwrap();
        assert_eq!(req.method, method);
        assert_eq!(req.args.len(), 1);
    }
}
