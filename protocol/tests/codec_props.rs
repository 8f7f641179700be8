//! Property tests of the frame codec: every message with arbitrary field values round-trips,
//! a stream decodes the same however it is cut into reads, and arbitrary bytes never panic the
//! decoder nor make it hold more than one frame's worth. `fuzz/` explores the same ground with
//! coverage guidance; these keep the basics in the normal suite.

use bytes::{BufMut, Bytes, BytesMut};
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use proptest::sample::Index;
use serde::{de::DeserializeOwned, Serialize};
use taskmill_protocol::codec::{HANDSHAKE_MAX_FRAME, MAX_FRAME_CEILING};
use taskmill_protocol::{
    decode_payload, encode_payload, ClientHandshake, ClientMessage, CodecError, DeadLetter,
    Delivery, ErrorKind, MasterHandshake, MasterMessage, MemoryStats, MessageCodec, Outcome,
    QueueStats, Rejection, Reply, Request, Stats, StorageStats, Task, Wait, DEFAULT_MAX_FRAME,
};
use tokio_util::codec::{Decoder, Encoder};

const HEADER_LEN: usize = 4;

// ---------------------------------------------------------------------------------------------
// Strategies, one per wire type

fn bytes() -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..48).prop_map(Bytes::from)
}

/// Any printable text, multi-byte characters included; queue names are not validated here.
fn text() -> impl Strategy<Value = String> {
    "\\PC{0,24}"
}

fn task_ids() -> impl Strategy<Value = Vec<u64>> {
    vec(any::<u64>(), 0..8)
}

fn wait() -> impl Strategy<Value = Wait> {
    prop_oneof![
        Just(Wait::No),
        any::<u64>().prop_map(Wait::Millis),
        Just(Wait::Forever),
    ]
}

fn delivery() -> impl Strategy<Value = Delivery> {
    prop_oneof![
        option::of(any::<u64>()).prop_map(|millis| Delivery::Lease { millis }),
        Just(Delivery::Remove),
    ]
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        (text(), vec(bytes(), 0..4), wait(), option::of(text())).prop_map(
            |(queue, items, wait, reply_to)| Request::Put {
                queue,
                items,
                wait,
                reply_to,
            }
        ),
        (text(), any::<u32>(), wait(), delivery()).prop_map(|(queue, max, wait, delivery)| {
            Request::Get {
                queue,
                max,
                wait,
                delivery,
            }
        }),
        (text(), task_ids()).prop_map(|(queue, tasks)| Request::Ack { queue, tasks }),
        (text(), text(), vec((any::<u64>(), bytes()), 0..4), wait()).prop_map(
            |(queue, results, outcomes, wait)| Request::Complete {
                queue,
                results,
                outcomes: outcomes
                    .into_iter()
                    .map(|(task, result)| Outcome { task, result })
                    .collect(),
                wait,
                reply: false,
            }
        ),
        (text(), option::of(any::<u64>()))
            .prop_map(|(queue, capacity)| Request::Declare { queue, capacity }),
        text().prop_map(|queue| Request::Inspect { queue }),
        Just(Request::Stats),
        Just(Request::Ping),
        (text(), task_ids(), option::of(any::<u64>())).prop_map(|(queue, tasks, millis)| {
            Request::Touch {
                queue,
                tasks,
                millis,
            }
        }),
        (text(), task_ids(), any::<u64>(), text(), any::<bool>()).prop_map(
            |(queue, tasks, delay_ms, reason, fatal)| Request::Nack {
                queue,
                tasks,
                delay_ms,
                reason,
                fatal,
            }
        ),
        (
            (text(), text()),
            vec((any::<u64>(), bytes()), 0..4),
            any::<u32>(),
            wait(),
            option::of(any::<u64>())
        )
            .prop_map(|((queue, results), outcomes, max, wait, lease_ms)| {
                Request::CompleteAndGet {
                    queue,
                    results,
                    outcomes: outcomes
                        .into_iter()
                        .map(|(task, result)| Outcome { task, result })
                        .collect(),
                    max,
                    wait,
                    lease_ms,
                    reply: false,
                }
            }),
        (
            text(),
            vec(bytes(), 0..4),
            wait(),
            any::<u64>(),
            any::<u64>(),
            option::of(text()),
        )
            .prop_map(
                |(queue, items, wait, producer, seq, reply_to)| Request::PutOnce {
                    queue,
                    items,
                    wait,
                    producer,
                    seq,
                    reply_to,
                }
            ),
        (text(), any::<u32>()).prop_map(|(queue, max)| Request::Peek { queue, max }),
        text().prop_map(|queue| Request::Purge { queue }),
        (text(), any::<u32>()).prop_map(|(queue, max)| Request::Kick { queue, max }),
        (text(), any::<bool>()).prop_map(|(queue, if_empty)| Request::Delete { queue, if_empty }),
    ]
}

fn error_kind() -> impl Strategy<Value = ErrorKind> {
    prop::sample::select(ErrorKind::ALL.to_vec())
}

fn storage_stats() -> impl Strategy<Value = StorageStats> {
    (
        text(),
        proptest::array::uniform8(any::<u64>()),
        option::of(any::<u64>()),
        option::of(any::<u64>()),
    )
        .prop_map(
            |(data_dir, n, snapshot_age_ms, fsync_interval_ms)| StorageStats {
                data_dir,
                disk_bytes: n[0],
                disk_limit: n[1],
                log_bytes: n[2],
                log_files: n[3],
                snapshot_bytes: n[4],
                snapshot_age_ms,
                records_total: n[5],
                fsyncs_total: n[6],
                recovery_ms: n[7],
                fsync_interval_ms,
            },
        )
}

fn queue_stats() -> impl Strategy<Value = QueueStats> {
    (
        text(),
        option::of(any::<u64>()),
        proptest::array::uniform11(any::<u64>()),
    )
        .prop_map(|(name, capacity, n)| QueueStats {
            name,
            len: n[0],
            capacity,
            leased: n[1],
            delayed: n[2],
            waiting_getters: n[3],
            waiting_putters: n[4],
            put_total: n[5],
            delivered_total: n[6],
            settled_total: n[7],
            requeued_total: n[8],
            expired_total: n[9],
            dead_total: n[10],
        })
}

fn task() -> impl Strategy<Value = Task> {
    (any::<u64>(), any::<u32>(), bytes(), bytes()).prop_map(|(id, attempt, payload, reply_to)| {
        Task {
            id,
            attempt,
            payload,
            reply_to,
        }
    })
}

fn reply() -> impl Strategy<Value = Reply> {
    prop_oneof![
        (any::<u64>(), any::<u32>())
            .prop_map(|(first_id, accepted)| Reply::Put { first_id, accepted }),
        vec(task(), 0..4).prop_map(Reply::Tasks),
        (any::<u32>(), task_ids(), any::<u32>()).prop_map(|(done, stale, pending)| {
            Reply::Settled {
                done,
                stale,
                pending,
            }
        }),
        queue_stats().prop_map(|q| Reply::Queue(Box::new(q))),
        (
            proptest::array::uniform10(any::<u64>()),
            vec(queue_stats(), 0..3),
            option::of(storage_stats()),
        )
            .prop_map(|(n, queues, storage)| Reply::Stats(Box::new(Stats {
                uptime_ms: n[0],
                clients: n[1],
                connections_total: n[2],
                handshake_failures: n[3],
                probes: n[4],
                completing_clients_total: n[5],
                queues,
                storage,
                forbidden_total: n[6],
                memory: MemoryStats {
                    held_bytes: n[7],
                    waiting_bytes: n[8],
                    limit_bytes: (n[9] % 2 == 0).then_some(n[9]),
                },
            }))),
        Just(Reply::Pong),
        (error_kind(), text()).prop_map(|(kind, message)| Reply::Error { kind, message }),
        (any::<u32>(), task_ids(), any::<u32>(), vec(task(), 0..4)).prop_map(
            |(done, stale, pending, tasks)| Reply::Worked {
                done,
                stale,
                pending,
                tasks,
            }
        ),
        any::<u64>().prop_map(Reply::Count),
    ]
}

fn client_message() -> impl Strategy<Value = ClientMessage> {
    prop_oneof![
        4 => (any::<u64>(), request()).prop_map(|(id, request)| ClientMessage::Request { id, request }),
        1 => Just(ClientMessage::Heartbeat),
    ]
}

fn master_message() -> impl Strategy<Value = MasterMessage> {
    prop_oneof![
        4 => (any::<u64>(), reply()).prop_map(|(id, reply)| MasterMessage::Reply { id, reply }),
        1 => Just(MasterMessage::ShuttingDown),
        1 => Just(MasterMessage::Heartbeat),
    ]
}

fn client_handshake() -> impl Strategy<Value = ClientHandshake> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>(), any::<[u8; 32]>()).prop_map(|(magic, version, nonce)| {
            ClientHandshake::LegacyHello {
                magic,
                version,
                nonce,
            }
        }),
        any::<[u8; 32]>().prop_map(|mac| ClientHandshake::LegacyProof { mac }),
        (
            any::<[u8; 4]>(),
            any::<u16>(),
            any::<[u8; 32]>(),
            any::<[u8; 16]>()
        )
            .prop_map(|(magic, version, ephemeral, tag)| ClientHandshake::Hello {
                magic,
                version,
                ephemeral,
                tag,
            }),
        (
            any::<[u8; 4]>(),
            any::<u16>(),
            any::<[u8; 16]>(),
            any::<[u8; 32]>(),
            any::<[u8; 16]>()
        )
            .prop_map(|(magic, version, key_id, ephemeral, tag)| {
                ClientHandshake::ScopedHello {
                    magic,
                    version,
                    key_id,
                    ephemeral,
                    tag,
                }
            }),
    ]
}

fn rejection() -> impl Strategy<Value = Rejection> {
    prop_oneof![
        Just(Rejection::NotTaskmill),
        any::<u16>().prop_map(|supported| Rejection::UnsupportedVersion { supported }),
        Just(Rejection::AuthenticationFailed),
        Just(Rejection::ShuttingDown),
        Just(Rejection::Overloaded),
        Just(Rejection::Throttled),
    ]
}

fn master_handshake() -> impl Strategy<Value = MasterHandshake> {
    prop_oneof![
        (any::<u16>(), any::<[u8; 32]>())
            .prop_map(|(version, nonce)| MasterHandshake::LegacyChallenge { version, nonce }),
        (any::<[u8; 32]>(), any::<u32>(), any::<u32>()).prop_map(
            |(mac, max_frame, heartbeat_ms)| MasterHandshake::LegacyWelcome {
                mac,
                max_frame,
                heartbeat_ms,
            }
        ),
        rejection().prop_map(MasterHandshake::Rejected),
        (any::<[u8; 32]>(), any::<[u8; 16]>(), any::<[u8; 8]>()).prop_map(|(ephemeral, a, b)| {
            let mut sealed = [0u8; 24];
            sealed[..16].copy_from_slice(&a);
            sealed[16..].copy_from_slice(&b);
            MasterHandshake::Welcome { ephemeral, sealed }
        }),
    ]
}

// These do not compile when a variant is added to a wire type without a strategy above: give
// it one, then add its arm. (No `_` arms, on purpose.)

#[allow(dead_code)]
fn every_request_has_a_strategy(request: &Request) {
    match request {
        Request::Put { .. }
        | Request::Get { .. }
        | Request::Ack { .. }
        | Request::Complete { .. }
        | Request::Declare { .. }
        | Request::Inspect { .. }
        | Request::Stats
        | Request::Ping
        | Request::Touch { .. }
        | Request::Nack { .. }
        | Request::CompleteAndGet { .. }
        | Request::PutOnce { .. }
        | Request::Peek { .. }
        | Request::Purge { .. }
        | Request::Kick { .. }
        | Request::Delete { .. } => {}
    }
}

#[allow(dead_code)]
fn every_reply_has_a_strategy(reply: &Reply, kind: ErrorKind) {
    match reply {
        Reply::Put { .. }
        | Reply::Tasks(_)
        | Reply::Settled { .. }
        | Reply::Queue(_)
        | Reply::Stats(_)
        | Reply::Pong
        | Reply::Error { .. }
        | Reply::Worked { .. }
        | Reply::Count(_) => {}
    }
    match kind {
        ErrorKind::BadQueueName
        | ErrorKind::TooManyQueues
        | ErrorKind::BadRequest
        | ErrorKind::TooManyWaiting
        | ErrorKind::NoSuchQueue
        | ErrorKind::PayloadTooLarge
        | ErrorKind::ReplyTooLarge
        | ErrorKind::ShuttingDown
        | ErrorKind::StorageFull
        | ErrorKind::StorageFailed
        | ErrorKind::InProgress
        | ErrorKind::NotEmpty
        | ErrorKind::InUse
        | ErrorKind::Forbidden
        | ErrorKind::Unknown
        | ErrorKind::MemoryFull => {}
    }
}

#[allow(dead_code)]
fn every_session_message_has_a_strategy(
    client: &ClientMessage,
    master: &MasterMessage,
    wait: Wait,
    delivery: Delivery,
) {
    match client {
        ClientMessage::Request { .. } | ClientMessage::Heartbeat => {}
    }
    match master {
        MasterMessage::Reply { .. } | MasterMessage::ShuttingDown | MasterMessage::Heartbeat => {}
    }
    match wait {
        Wait::No | Wait::Millis(_) | Wait::Forever => {}
    }
    match delivery {
        Delivery::Lease { .. } | Delivery::Remove => {}
    }
}

#[allow(dead_code)]
fn every_handshake_message_has_a_strategy(
    client: &ClientHandshake,
    master: &MasterHandshake,
    rejection: Rejection,
) {
    match client {
        ClientHandshake::LegacyHello { .. }
        | ClientHandshake::LegacyProof { .. }
        | ClientHandshake::Hello { .. }
        | ClientHandshake::ScopedHello { .. } => {}
    }
    match master {
        MasterHandshake::LegacyChallenge { .. }
        | MasterHandshake::LegacyWelcome { .. }
        | MasterHandshake::Rejected(_)
        | MasterHandshake::Welcome { .. } => {}
    }
    match rejection {
        Rejection::NotTaskmill
        | Rejection::UnsupportedVersion { .. }
        | Rejection::AuthenticationFailed
        | Rejection::ShuttingDown
        | Rejection::Overloaded
        | Rejection::Throttled => {}
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// Encodes `msgs` as one stream; also returns where each frame ends.
fn encode_all<T: Serialize>(msgs: &[T], cap: usize) -> (Vec<u8>, Vec<usize>) {
    let mut codec = MessageCodec::<(), T>::new(cap);
    let mut buf = BytesMut::new();
    let mut ends = Vec::new();
    for msg in msgs {
        codec.encode(msg, &mut buf).expect("fits the cap");
        ends.push(buf.len());
    }
    (buf.to_vec(), ends)
}

/// Sorted cut points in `0..=len` from arbitrary indices.
fn cut_points(cuts: &[Index], len: usize) -> Vec<usize> {
    let mut points: Vec<usize> = cuts.iter().map(|i| i.index(len + 1)).collect();
    points.sort_unstable();
    points
}

/// What a decoder made of a stream fed in pieces, `Framed`-style.
struct Decoded<T> {
    messages: Vec<T>,
    error: Option<CodecError>,
    /// `decode_eof`'s verdict, when no error came first.
    eof: Option<Result<Option<T>, CodecError>>,
}

/// Feeds `stream` cut at `points` to a fresh decoder under `cap`, checking after every
/// `Ok(None)` that it holds less than one frame's worth, and that its buffer never grew far
/// past what was fed plus one frame.
fn feed<T: DeserializeOwned>(stream: &[u8], points: &[usize], cap: usize) -> Decoded<T> {
    let mut codec = MessageCodec::<T, ()>::new(cap);
    let mut buf = BytesMut::new();
    let mut out = Decoded {
        messages: Vec::new(),
        error: None,
        eof: None,
    };
    let mut start = 0;
    for &end in points.iter().chain(std::iter::once(&stream.len())) {
        buf.extend_from_slice(&stream[start..end]);
        let piece = end - start;
        start = end;
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(msg)) => out.messages.push(msg),
                Ok(None) => {
                    assert!(
                        buf.len() < HEADER_LEN + cap,
                        "holding {} bytes, cap {cap}",
                        buf.len()
                    );
                    assert!(
                        buf.capacity() <= 4 * (HEADER_LEN + cap + piece) + 64,
                        "buffer capacity {} for a cap of {cap}",
                        buf.capacity()
                    );
                    break;
                }
                Err(err) => {
                    out.error = Some(err);
                    return out;
                }
            }
        }
    }
    out.eof = Some(codec.decode_eof(&mut buf));
    out
}

/// Encodes one message and decodes it back under `cap`; checks the header states the body's
/// length and nothing is left over.
fn round_trip<T>(msg: &T, cap: usize) -> Result<(), TestCaseError>
where
    T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let mut buf = BytesMut::new();
    MessageCodec::<(), T>::new(cap)
        .encode(msg, &mut buf)
        .map_err(|e| TestCaseError::fail(format!("{msg:?} did not encode: {e}")))?;
    let declared = u32::from_be_bytes(buf[..HEADER_LEN].try_into().unwrap()) as usize;
    prop_assert_eq!(declared, buf.len() - HEADER_LEN);
    let decoded = MessageCodec::<T, ()>::new(cap)
        .decode(&mut buf)
        .map_err(|e| TestCaseError::fail(format!("{msg:?} did not decode: {e}")))?;
    prop_assert_eq!(decoded.as_ref(), Some(msg));
    prop_assert!(buf.is_empty());
    Ok(())
}

fn cap() -> impl Strategy<Value = usize> {
    prop_oneof![
        Just(HANDSHAKE_MAX_FRAME),
        Just(4096),
        Just(DEFAULT_MAX_FRAME)
    ]
}

// ---------------------------------------------------------------------------------------------
// Properties

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn every_client_message_round_trips(msg in client_message()) {
        round_trip(&msg, DEFAULT_MAX_FRAME)?;
    }

    #[test]
    fn every_master_message_round_trips(msg in master_message()) {
        round_trip(&msg, DEFAULT_MAX_FRAME)?;
    }

    #[test]
    fn every_handshake_message_round_trips_under_the_pre_auth_cap(
        client in client_handshake(),
        master in master_handshake(),
    ) {
        round_trip(&client, HANDSHAKE_MAX_FRAME)?;
        round_trip(&master, HANDSHAKE_MAX_FRAME)?;
    }

    #[test]
    fn dead_letters_round_trip(
        letter in (any::<u64>(), text(), any::<u32>(), text(), bytes()),
    ) {
        let (task, queue, attempts, reason, payload) = letter;
        let letter = DeadLetter { task, queue, attempts, reason, payload };
        let encoded = encode_payload(&letter).unwrap();
        prop_assert_eq!(decode_payload::<DeadLetter>(&encoded).unwrap(), letter);
    }

    /// A message too big for the cap is refused by the encoder, which leaves the buffer as it
    /// was; one that fits always encodes.
    #[test]
    fn the_encoder_refuses_exactly_what_exceeds_the_cap(
        msg in client_message(),
        cap in prop_oneof![Just(HANDSHAKE_MAX_FRAME), 512usize..2048],
    ) {
        let body = encode_all(std::slice::from_ref(&msg), MAX_FRAME_CEILING).0.len() - HEADER_LEN;
        let mut codec = MessageCodec::<(), ClientMessage>::new(cap);
        let mut buf = BytesMut::from(&b"kept"[..]);
        match codec.encode(&msg, &mut buf) {
            Ok(()) => prop_assert!(body <= codec.max_frame()),
            Err(CodecError::FrameTooLarge { .. }) => {
                prop_assert!(body > codec.max_frame());
                prop_assert_eq!(&buf[..], b"kept");
            }
            Err(e) => return Err(TestCaseError::fail(format!("unexpected {e}"))),
        }
    }

    #[test]
    fn a_client_stream_cut_anywhere_decodes_to_the_same_messages(
        msgs in vec(client_message(), 1..6),
        cuts in vec(any::<Index>(), 0..12),
    ) {
        let (stream, _) = encode_all(&msgs, DEFAULT_MAX_FRAME);
        let decoded = feed::<ClientMessage>(&stream, &cut_points(&cuts, stream.len()), DEFAULT_MAX_FRAME);
        prop_assert!(decoded.error.is_none(), "{:?}", decoded.error);
        prop_assert_eq!(decoded.messages, msgs);
        prop_assert!(matches!(decoded.eof, Some(Ok(None))));
    }

    #[test]
    fn a_master_stream_cut_anywhere_decodes_to_the_same_messages(
        msgs in vec(master_message(), 1..6),
        cuts in vec(any::<Index>(), 0..12),
    ) {
        let (stream, _) = encode_all(&msgs, DEFAULT_MAX_FRAME);
        let decoded = feed::<MasterMessage>(&stream, &cut_points(&cuts, stream.len()), DEFAULT_MAX_FRAME);
        prop_assert!(decoded.error.is_none(), "{:?}", decoded.error);
        prop_assert_eq!(decoded.messages, msgs);
        prop_assert!(matches!(decoded.eof, Some(Ok(None))));
    }

    #[test]
    fn a_handshake_stream_cut_anywhere_decodes_to_the_same_messages(
        msgs in vec(master_handshake(), 1..6),
        cuts in vec(any::<Index>(), 0..12),
    ) {
        let (stream, _) = encode_all(&msgs, HANDSHAKE_MAX_FRAME);
        let decoded = feed::<MasterHandshake>(&stream, &cut_points(&cuts, stream.len()), HANDSHAKE_MAX_FRAME);
        prop_assert!(decoded.error.is_none(), "{:?}", decoded.error);
        prop_assert_eq!(decoded.messages, msgs);
        prop_assert!(matches!(decoded.eof, Some(Ok(None))));
    }

    /// Valid frames followed by noise, in arbitrary pieces, under every view: whatever
    /// decodes before the noise is what was sent, and `feed` checks the decoder never holds
    /// a frame's worth (nor panics).
    #[test]
    fn arbitrary_bytes_never_panic_nor_overfill_the_decoder(
        msgs in vec(client_message(), 0..3),
        noise in vec(any::<u8>(), 0..1024),
        cuts in vec(any::<Index>(), 0..8),
        cap in cap(),
    ) {
        let (mut stream, _) = encode_all(&msgs, cap.max(DEFAULT_MAX_FRAME));
        stream.extend_from_slice(&noise);
        let points = cut_points(&cuts, stream.len());
        let decoded = feed::<ClientMessage>(&stream, &points, cap);
        if cap == DEFAULT_MAX_FRAME {
            prop_assert!(decoded.messages.len() >= msgs.len());
            prop_assert_eq!(&decoded.messages[..msgs.len()], &msgs[..]);
        }
        feed::<MasterMessage>(&stream, &points, cap);
        feed::<ClientHandshake>(&stream, &points, HANDSHAKE_MAX_FRAME);
        feed::<MasterHandshake>(&stream, &points, HANDSHAKE_MAX_FRAME);
        let _ = decode_payload::<DeadLetter>(&noise);
    }

    /// A length header over the cap is refused as soon as it is complete: the decoder neither
    /// waits for the body nor makes room for it.
    #[test]
    fn a_header_over_the_cap_is_refused_before_any_buffering(
        cap in cap(),
        excess in 1u64..=(u64::from(u32::MAX)),
    ) {
        let declared = (cap as u64 + excess).min(u64::from(u32::MAX)) as u32;
        let mut buf = BytesMut::new();
        buf.put_u32(declared);
        let capacity = buf.capacity();
        let result = MessageCodec::<ClientMessage, ()>::new(cap).decode(&mut buf);
        prop_assert!(matches!(result, Err(CodecError::FrameTooLarge { .. })), "{:?}", result);
        prop_assert_eq!(buf.capacity(), capacity);
    }

    /// A stream that ends inside a frame is an error at the end of stream, not a clean close
    /// (docs/protocol.md section 1), wherever the cut falls, right after a header included.
    #[test]
    fn a_stream_cut_inside_a_frame_is_an_error_at_eof(
        msgs in vec(client_message(), 1..4),
        cut in any::<Index>(),
    ) {
        let (stream, ends) = encode_all(&msgs, DEFAULT_MAX_FRAME);
        let cut = cut.index(stream.len());
        let starts: Vec<usize> = std::iter::once(0).chain(ends.iter().copied()).collect();
        prop_assume!(!starts.contains(&cut));
        let decoded = feed::<ClientMessage>(&stream[..cut], &[], DEFAULT_MAX_FRAME);
        prop_assert!(decoded.error.is_none());
        prop_assert!(matches!(decoded.eof, Some(Err(CodecError::Io(_)))), "{:?}", decoded.eof);
    }
}

/// The case that once read as a clean close: `LengthDelimitedCodec` consumes a header before
/// its body arrives, so the buffer is empty when the stream ends (fuzz/README.md, Findings).
#[test]
fn a_stream_cut_right_after_a_length_header_is_an_error_at_eof() {
    let mut buf = BytesMut::new();
    buf.put_u32(5);
    let mut codec = MessageCodec::<ClientMessage, ()>::new(DEFAULT_MAX_FRAME);
    assert!(matches!(codec.decode(&mut buf), Ok(None)));
    let eof = codec.decode_eof(&mut buf);
    assert!(matches!(eof, Err(CodecError::Io(_))), "{eof:?}");
}
