//! Argument binding and timeouts as CPython's `queue.Queue` has them.

use taskmill_protocol::pickle::{Limits, Request, Writer};

use super::queue::tests_api::{bind_message, wait_message};

/// `('q0', method, args, kwds)` with `args` and `kwds` written by the closures.
fn request(method: &str, args: &[i64], kwds: &[(&str, i64)]) -> Vec<u8> {
    let mut w = Writer::default();
    w.proto(4);
    w.mark();
    w.str("q0");
    w.str(method);
    w.mark();
    args.iter().for_each(|&a| w.int(i128::from(a)));
    w.tuple(args.len(), true);
    w.raw(b"}");
    w.mark();
    for (k, v) in kwds {
        w.str(k);
        w.int(i128::from(*v));
    }
    w.raw(b"u");
    w.tuple(4, true);
    w.stop();
    w.finish()
}

fn parse(data: &[u8]) -> Request<'_> {
    Request::parse(data, Limits::default()).unwrap()
}

#[test]
fn arguments_bind_with_pythons_messages() {
    let cases: [(&str, Vec<u8>, Option<&str>); 7] = [
        ("get", request("get", &[1, 2], &[]), None),
        (
            "get",
            request("get", &[1, 2, 3], &[]),
            Some("Queue.get() takes from 1 to 3 positional arguments but 4 were given"),
        ),
        (
            "get",
            request("get", &[1], &[("block", 1)]),
            Some("Queue.get() got multiple values for argument 'block'"),
        ),
        (
            "get",
            request("get", &[], &[("wait", 1)]),
            Some("Queue.get() got an unexpected keyword argument 'wait'"),
        ),
        (
            "put",
            request("put", &[], &[("block", 0)]),
            Some("Queue.put() missing 1 required positional argument: 'item'"),
        ),
        (
            "qsize",
            request("qsize", &[1], &[]),
            Some("Queue.qsize() takes 1 positional argument but 2 were given"),
        ),
        (
            "put",
            request("put", &[], &[("item", 5), ("timeout", 1)]),
            None,
        ),
    ];
    for (method, data, want) in cases {
        assert_eq!(
            bind_message(method, &parse(&data)).as_deref(),
            want,
            "{method}"
        );
    }
}

#[test]
fn timeouts_are_read_as_queue_queue_reads_them() {
    let got = |kwds: &[(&str, i64)]| wait_message(&parse(&request("get", &[], kwds)));
    assert_eq!(got(&[("timeout", 2)]), "For(2s)");
    assert_eq!(got(&[]), "Forever");
    assert_eq!(got(&[("block", 0), ("timeout", -1)]), "No");
    assert_eq!(
        got(&[("timeout", -1)]),
        "ValueError: 'timeout' must be a non-negative number"
    );
    assert_eq!(
        got(&[("timeout", 2_000_000_000)]),
        "OverflowError: timeout value is too large"
    );
}
