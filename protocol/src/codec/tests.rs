//! The codec's unit tests: frames, limits and payload encodings, byte for byte.

use super::*;
use crate::frame_bytes;
use crate::message::*;
use bytes::Bytes;

type ClientSide = MessageCodec<MasterMessage, ClientMessage>;
type MasterSide = MessageCodec<ClientMessage, MasterMessage>;

fn round_trip_client(msg: ClientMessage) {
    let mut enc = ClientSide::new(DEFAULT_MAX_FRAME);
    let mut dec = MasterSide::new(DEFAULT_MAX_FRAME);
    let mut buf = BytesMut::new();
    enc.encode(&msg, &mut buf).unwrap();
    assert_eq!(dec.decode(&mut buf).unwrap(), Some(msg));
    assert!(buf.is_empty());
}

fn round_trip_master(msg: MasterMessage) {
    let mut enc = MasterSide::new(DEFAULT_MAX_FRAME);
    let mut dec = ClientSide::new(DEFAULT_MAX_FRAME);
    let mut buf = BytesMut::new();
    enc.encode(&msg, &mut buf).unwrap();
    assert_eq!(dec.decode(&mut buf).unwrap(), Some(msg));
    assert!(buf.is_empty());
}

fn queue_stats() -> QueueStats {
    QueueStats {
        name: "tasks".into(),
        len: 3,
        capacity: Some(10),
        leased: 2,
        delayed: 1,
        waiting_getters: 1,
        waiting_putters: 0,
        put_total: 9,
        delivered_total: 7,
        settled_total: 5,
        requeued_total: 4,
        expired_total: 2,
        dead_total: 1,
    }
}

#[test]
fn a_payload_batch_gives_the_payloads_encode_payload_would_in_one_buffer() {
    let values: Vec<(u64, String)> = (0..100)
        .map(|i| (i * 1000, "x".repeat(i as usize % 7)))
        .collect();
    let mut batch = PayloadBatch::with_capacity(values.len(), 8);
    for v in &values {
        batch.push(v).unwrap();
    }
    assert_eq!(batch.len(), values.len());
    let payloads = batch.finish();
    let alone: Vec<Bytes> = values.iter().map(|v| encode_payload(v).unwrap()).collect();
    assert_eq!(payloads, alone);
    let first = payloads[0].as_ptr() as usize;
    let last = payloads[99].as_ptr() as usize;
    assert_eq!(
        last - first,
        payloads[..99].iter().map(Bytes::len).sum::<usize>(),
        "consecutive slices of one buffer"
    );
    assert!(PayloadBatch::default().finish().is_empty());
}

#[test]
fn a_payload_that_fails_to_encode_leaves_nothing_in_the_batch() {
    /// Writes a byte, then fails.
    struct HalfWay;
    impl Serialize for HalfWay {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            use serde::ser::{Error, SerializeTuple};
            let mut t = s.serialize_tuple(2)?;
            t.serialize_element(&7u8)?;
            Err(S::Error::custom("refused"))
        }
    }
    let mut batch = PayloadBatch::default();
    batch.push(&1u8).unwrap();
    assert!(batch.push(&HalfWay).is_err());
    batch.push(&2u8).unwrap();
    assert_eq!(
        batch.finish(),
        [Bytes::from_static(&[1]), Bytes::from_static(&[2])]
    );
}

#[test]
fn every_request_round_trips() {
    let requests = vec![
        Request::Put {
            queue: "tasks".into(),
            items: vec![Bytes::from_static(b"a"), Bytes::new()],
            wait: Wait::Millis(250),
            reply_to: None,
        },
        Request::Get {
            queue: "tasks".into(),
            max: 64,
            wait: Wait::Forever,
            delivery: Delivery::Lease { millis: Some(500) },
        },
        Request::Get {
            queue: "results".into(),
            max: 1,
            wait: Wait::No,
            delivery: Delivery::Remove,
        },
        Request::Ack {
            queue: "tasks".into(),
            tasks: vec![1, u64::MAX],
        },
        Request::Touch {
            queue: "tasks".into(),
            tasks: vec![1],
            millis: None,
        },
        Request::Nack {
            queue: "tasks".into(),
            tasks: vec![2],
            delay_ms: 100,
            reason: "flaky".into(),
            fatal: false,
        },
        Request::Complete {
            queue: "tasks".into(),
            results: "results".into(),
            outcomes: vec![Outcome {
                task: 7,
                result: Bytes::from_static(b"49"),
            }],
            wait: Wait::Forever,
            reply: false,
        },
        Request::Declare {
            queue: "q".into(),
            capacity: Some(5),
        },
        Request::Declare {
            queue: "q".into(),
            capacity: None,
        },
        Request::Inspect { queue: "q".into() },
        Request::Stats,
        Request::Ping,
    ];
    for (id, request) in requests.into_iter().enumerate() {
        round_trip_client(ClientMessage::Request {
            id: id as u64,
            request,
        });
    }
}

#[test]
fn every_reply_round_trips() {
    let replies = vec![
        Reply::Put {
            first_id: 10,
            accepted: 2,
        },
        Reply::Tasks(vec![Task {
            id: 1,
            attempt: 2,
            payload: Bytes::from_static(b"xyz"),
            reply_to: Bytes::new(),
        }]),
        Reply::Tasks(vec![]),
        Reply::Settled {
            done: 3,
            stale: vec![4],
            pending: 1,
        },
        Reply::Queue(Box::new(queue_stats())),
        Reply::Stats(Box::new(Stats {
            uptime_ms: 5,
            clients: 2,
            connections_total: 3,
            handshake_failures: 1,
            probes: 4,
            completing_clients_total: 1,
            queues: vec![queue_stats()],
            storage: None,
            forbidden_total: 6,
            memory: crate::message::MemoryStats {
                held_bytes: 7,
                waiting_bytes: 8,
                limit_bytes: Some(9),
            },
        })),
        Reply::Pong,
        Reply::Error {
            kind: ErrorKind::BadQueueName,
            message: "bad".into(),
        },
    ];
    for (id, reply) in replies.into_iter().enumerate() {
        round_trip_master(MasterMessage::Reply {
            id: id as u64,
            reply,
        });
    }
    round_trip_master(MasterMessage::ShuttingDown);
    round_trip_master(MasterMessage::Heartbeat);
    round_trip_client(ClientMessage::Heartbeat);
}

#[test]
fn every_handshake_message_round_trips() {
    let mut enc = MessageCodec::<MasterHandshake, ClientHandshake>::new(HANDSHAKE_MAX_FRAME);
    let mut dec = MessageCodec::<ClientHandshake, MasterHandshake>::new(HANDSHAKE_MAX_FRAME);
    let mut buf = BytesMut::new();
    for msg in [
        ClientHandshake::Hello {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            ephemeral: [7; 32],
            tag: [8; 16],
        },
        ClientHandshake::LegacyHello {
            magic: MAGIC,
            version: 3,
            nonce: [7; 32],
        },
        ClientHandshake::LegacyProof { mac: [9; 32] },
    ] {
        enc.encode(&msg, &mut buf).unwrap();
        assert_eq!(dec.decode(&mut buf).unwrap(), Some(msg));
    }
    for msg in [
        MasterHandshake::LegacyChallenge {
            version: 3,
            nonce: [1; 32],
        },
        MasterHandshake::Welcome {
            ephemeral: [2; 32],
            sealed: [3; 24],
        },
        MasterHandshake::Rejected(Rejection::NotTaskmill),
        MasterHandshake::Rejected(Rejection::UnsupportedVersion { supported: 1 }),
        MasterHandshake::Rejected(Rejection::AuthenticationFailed),
        MasterHandshake::Rejected(Rejection::ShuttingDown),
        MasterHandshake::Rejected(Rejection::Overloaded),
        MasterHandshake::Rejected(Rejection::Throttled),
    ] {
        dec.encode(&msg, &mut buf).unwrap();
        assert_eq!(enc.decode(&mut buf).unwrap(), Some(msg));
    }
}

#[test]
fn oversize_frame_is_rejected_before_any_allocation() {
    let mut dec = MasterSide::new(HANDSHAKE_MAX_FRAME);
    let mut buf = BytesMut::with_capacity(8);
    buf.put_u32(u32::MAX);
    let capacity_before = buf.capacity();
    let err = dec.decode(&mut buf).unwrap_err();
    assert!(
        matches!(err, CodecError::FrameTooLarge { max: 512, .. }),
        "{err}"
    );
    assert_eq!(buf.capacity(), capacity_before, "decoder grew the buffer");
}

#[test]
fn lying_length_inside_a_frame_is_rejected_not_allocated() {
    // A Put whose item claims 2^40 bytes: bincode would allocate that before reading.
    let mut body = vec![
        0u8, // ClientMessage::Request
        1,   // id
        0,   // Request::Put
        1,   // queue name length
        b'q', 1,   // one item
        253, // varint u64 follows
    ];
    body.extend_from_slice(&(1u64 << 40).to_le_bytes());
    let mut buf = BytesMut::new();
    buf.put_u32(body.len() as u32);
    buf.extend_from_slice(&body);
    let err = MasterSide::new(DEFAULT_MAX_FRAME)
        .decode(&mut buf)
        .unwrap_err();
    assert!(matches!(err, CodecError::Decode(_)), "{err}");
}

#[test]
fn truncated_input_waits_for_more_and_garbage_is_an_error() {
    let mut enc = ClientSide::new(DEFAULT_MAX_FRAME);
    let mut full = BytesMut::new();
    enc.encode(
        &ClientMessage::Request {
            id: 1,
            request: Request::Ping,
        },
        &mut full,
    )
    .unwrap();
    let mut dec = MasterSide::new(DEFAULT_MAX_FRAME);
    let mut partial = BytesMut::from(&full[..full.len() - 1]);
    assert_eq!(dec.decode(&mut partial).unwrap(), None);

    let mut garbage = BytesMut::new();
    garbage.put_u32(5);
    garbage.extend_from_slice(&[0xff, 0xfe, 0xfd, 0xfc, 0xfb]);
    assert!(matches!(
        dec.decode(&mut garbage),
        Err(CodecError::Decode(_))
    ));

    let mut trailing = full.clone();
    trailing[3] += 1;
    trailing.put_u8(0);
    assert!(matches!(
        dec.decode(&mut trailing),
        Err(CodecError::Decode(_))
    ));
}

#[test]
fn a_stream_ending_right_after_a_header_is_an_error_not_a_clean_close() {
    let mut dec = MasterSide::new(DEFAULT_MAX_FRAME);
    let mut buf = BytesMut::new();
    buf.put_u32(10);
    assert_eq!(dec.decode(&mut buf).unwrap(), None);
    assert!(buf.is_empty(), "the header was consumed");
    assert!(dec.decode_eof(&mut buf).is_err());
    let mut empty = BytesMut::new();
    assert_eq!(
        MasterSide::new(DEFAULT_MAX_FRAME)
            .decode_eof(&mut empty)
            .unwrap(),
        None
    );
}

/// Distinct payloads of 15 to 46 bytes: past any inline size, so a copy would show.
fn payloads(n: usize) -> Vec<Bytes> {
    (0..n)
        .map(|i| Bytes::from(format!("payload {i:>6} {}", "x".repeat(i % 32))))
        .collect()
}

/// Encodes `msg` into a frame, decodes it back, and checks that it comes back equal and that
/// every payload `of` names in it lies inside the buffer the frame was read from.
fn decodes_in_place<M>(msg: &M, of: impl Fn(&M) -> Vec<&Bytes>)
where
    M: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let mut codec = MessageCodec::<M, M>::new(DEFAULT_MAX_FRAME);
    let mut buf = BytesMut::new();
    codec.encode(msg, &mut buf).unwrap();
    let read = buf.as_ptr_range();
    let decoded = codec.decode(&mut buf).unwrap().unwrap();
    assert_eq!(&decoded, msg);
    for payload in of(&decoded) {
        let at = payload.as_ptr_range();
        assert!(
            read.start <= at.start && at.end <= read.end,
            "a payload was copied out of its frame"
        );
    }
    assert!(!frame_bytes::in_scope());
}

#[test]
fn put_items_decode_as_views_into_the_frame() {
    let msg = ClientMessage::Request {
        id: 1,
        request: Request::Put {
            queue: "tasks".into(),
            items: payloads(10_000),
            wait: Wait::No,
            reply_to: None,
        },
    };
    decodes_in_place(&msg, |m| match m {
        ClientMessage::Request {
            request: Request::Put { items, .. },
            ..
        } => items.iter().collect(),
        other => panic!("decoded as {other:?}"),
    });
}

#[test]
fn outcomes_and_tasks_decode_as_views_into_the_frame() {
    let outcomes: Vec<_> = payloads(1000)
        .into_iter()
        .zip(1..)
        .map(|(result, task)| Outcome { task, result })
        .collect();
    let tasks: Vec<_> = payloads(1000)
        .into_iter()
        .zip(1..)
        .map(|(payload, id)| Task {
            id,
            attempt: 1,
            payload,
            reply_to: Bytes::new(),
        })
        .collect();
    let requests = [
        Request::Complete {
            queue: "tasks".into(),
            results: "results".into(),
            outcomes: outcomes.clone(),
            wait: Wait::Forever,
            reply: false,
        },
        Request::CompleteAndGet {
            queue: "tasks".into(),
            results: "results".into(),
            outcomes,
            max: 8,
            wait: Wait::Forever,
            lease_ms: None,
            reply: false,
        },
    ];
    for request in requests {
        decodes_in_place(&ClientMessage::Request { id: 2, request }, |m| match m {
            ClientMessage::Request {
                request:
                    Request::Complete { outcomes, .. } | Request::CompleteAndGet { outcomes, .. },
                ..
            } => outcomes.iter().map(|o| &o.result).collect(),
            other => panic!("decoded as {other:?}"),
        });
    }
    let replies = [
        Reply::Tasks(tasks.clone()),
        Reply::Worked {
            done: 1,
            stale: vec![],
            pending: 0,
            tasks,
        },
    ];
    for reply in replies {
        decodes_in_place(&MasterMessage::Reply { id: 3, reply }, |m| match m {
            MasterMessage::Reply {
                reply: Reply::Tasks(tasks) | Reply::Worked { tasks, .. },
                ..
            } => tasks.iter().map(|t| &t.payload).collect(),
            other => panic!("decoded as {other:?}"),
        });
    }
}

#[test]
fn a_frame_failing_midway_leaves_no_frame_in_scope() {
    let mut buf = BytesMut::new();
    ClientSide::new(DEFAULT_MAX_FRAME)
        .encode(
            &ClientMessage::Request {
                id: 1,
                request: Request::Put {
                    queue: "tasks".into(),
                    items: payloads(100),
                    wait: Wait::No,
                    reply_to: None,
                },
            },
            &mut buf,
        )
        .unwrap();
    // The last byte is the `Wait` tag: every item decodes, then the message fails.
    *buf.last_mut().unwrap() = 200;
    let err = MasterSide::new(DEFAULT_MAX_FRAME)
        .decode(&mut buf)
        .unwrap_err();
    assert!(matches!(err, CodecError::Decode(_)), "{err}");
    assert!(!frame_bytes::in_scope());

    // Decoding outside a frame still works, and copies.
    let letter = DeadLetter {
        task: 7,
        queue: "tasks".into(),
        attempts: 5,
        reason: "nacked".into(),
        payload: Bytes::from_static(b"the original payload"),
    };
    let encoded = encode_payload(&letter).unwrap();
    let decoded: DeadLetter = decode_payload(&encoded).unwrap();
    assert_eq!(decoded, letter);
    let (within, at) = (encoded.as_ptr_range(), decoded.payload.as_ptr_range());
    assert!(
        at.end <= within.start || within.end <= at.start,
        "not a copy"
    );
}

#[test]
fn encoder_refuses_frames_over_the_cap() {
    let mut enc = ClientSide::new(HANDSHAKE_MAX_FRAME);
    let mut buf = BytesMut::new();
    let big = ClientMessage::Request {
        id: 1,
        request: Request::Put {
            queue: "q".into(),
            items: vec![Bytes::from(vec![0u8; 1000])],
            wait: Wait::No,
            reply_to: None,
        },
    };
    assert!(matches!(
        enc.encode(&big, &mut buf),
        Err(CodecError::FrameTooLarge { .. })
    ));
    assert!(buf.is_empty(), "a refused frame must leave nothing behind");
}

#[test]
fn an_error_kind_from_a_newer_master_reads_as_unknown() {
    use crate::ErrorKind;
    for index in [15u32, 99, 1_000_000] {
        let kind: ErrorKind = decode_payload(&encode_payload(&index).unwrap()).unwrap();
        assert_eq!(kind, ErrorKind::Unknown, "index {index}");
    }
    let known: ErrorKind = decode_payload(&encode_payload(&12u32).unwrap()).unwrap();
    assert_eq!(known, ErrorKind::InUse);
    let known: ErrorKind = decode_payload(&encode_payload(&13u32).unwrap()).unwrap();
    assert_eq!(known, ErrorKind::Forbidden);
}

#[test]
fn a_task_reply_round_trips_and_a_small_result_stays_small() {
    use crate::{TaskOutcome, TaskReply};
    let done = TaskReply {
        task: 1_000_000,
        outcome: TaskOutcome::Done(Bytes::from_static(b"eleven byte")),
    };
    let encoded = done.encode();
    assert_eq!(
        encoded.len(),
        1 + 5 + 11,
        "kind, varint id, the result itself"
    );
    assert_eq!(TaskReply::decode(&encoded).unwrap(), done);
    let dead = TaskReply {
        task: 7,
        outcome: TaskOutcome::Dead {
            attempts: 3,
            reason: "lease expired".into(),
        },
    };
    assert_eq!(TaskReply::decode(&dead.encode()).unwrap(), dead);
    for bad in [&b""[..], &[9, 1][..], &[1, 7, 3, 0xff][..]] {
        assert!(TaskReply::decode(&Bytes::copy_from_slice(bad)).is_err());
    }
}
