//! The targets without libFuzzer: corpus replay, the seed corpus's generator, and a blind
//! mutation loop for machines where cargo-fuzz cannot run.

use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use taskmill_protocol::{
    encode_payload, ClientHandshake, ClientMessage, DeadLetter, Delivery, ErrorKind,
    MasterHandshake, MasterMessage, MemoryStats, MessageCodec, Outcome, QueueStats, Rejection, Reply, Request,
    Stats, Task, Wait, DEFAULT_MAX_FRAME, MAGIC, PROTOCOL_VERSION,
};
use taskmill_squares::{SquareResult, SquareTask};
use tokio_util::codec::Encoder;

use super::*;

/// The targets by name, as `fuzz_targets/` and `corpus/` name them.
/// A target's body.
type Target = fn(&[u8]);

const TARGETS: [(&str, Target); 4] = [
    ("decode_frames", decode_frames),
    ("master_handshake", master_handshake),
    ("client_handshake", client_handshake),
    ("python_pickle", python_pickle),
];

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target)
}

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(corpus_dir(target))
        .map(|dir| dir.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    files
        .into_iter()
        .filter(|p| p.is_file())
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect()
}

#[test]
fn every_corpus_input_passes_its_target() {
    for (target, run) in TARGETS {
        let inputs = corpus(target);
        assert!(!inputs.is_empty(), "no corpus for {target}");
        for (path, bytes) in inputs {
            let outcome = panic::catch_unwind(|| run(&bytes));
            assert!(outcome.is_ok(), "{target} fails on {}", path.display());
        }
    }
}

/// The committed corpus is what `write_seed_corpus` writes now: run it after changing the
/// messages or the seeds.
#[test]
fn every_seed_is_committed_and_current() {
    for (target, name, bytes) in seeds() {
        let committed = std::fs::read(corpus_dir(target).join(&name)).ok();
        assert_eq!(
            committed.as_deref(),
            Some(&bytes[..]),
            "{target}/{name} is missing or stale: run write_seed_corpus"
        );
    }
}

// These do not compile when a variant is added to a wire type without a seed above: give it
// one (appended, so existing seed files keep their bytes), then add its arm. No `_` arms.
#[allow(dead_code)]
fn every_request_and_reply_has_a_seed(request: &Request, reply: &Reply) {
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
}

// ---------------------------------------------------------------------------------------------
// Seeds

fn framed<T: Serialize>(msgs: &[T]) -> Vec<u8> {
    let mut codec = MessageCodec::<(), T>::new(DEFAULT_MAX_FRAME);
    let mut buf = BytesMut::new();
    for msg in msgs {
        codec.encode(msg, &mut buf).unwrap();
    }
    buf.to_vec()
}

fn with_steer(steer: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![steer];
    v.extend_from_slice(body);
    v
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
        put_total: 300,
        delivered_total: 70_000,
        settled_total: 5,
        requeued_total: 4,
        expired_total: 2,
        dead_total: 1,
    }
}

fn requests() -> Vec<(&'static str, Request)> {
    let q = || "tasks".to_string();
    vec![
        (
            "put",
            Request::Put {
                queue: q(),
                items: vec![Bytes::from_static(b"abc"), Bytes::new()],
                wait: Wait::Millis(250),
                reply_to: None,
            },
        ),
        (
            "get-lease",
            Request::Get {
                queue: q(),
                max: 64,
                wait: Wait::Forever,
                delivery: Delivery::Lease { millis: Some(500) },
            },
        ),
        (
            "get-remove",
            Request::Get {
                queue: "results".into(),
                max: 1,
                wait: Wait::No,
                delivery: Delivery::Remove,
            },
        ),
        (
            "ack",
            Request::Ack {
                queue: q(),
                tasks: vec![1, 300, u64::MAX],
            },
        ),
        (
            "complete",
            Request::Complete {
                queue: q(),
                results: "results".into(),
                outcomes: vec![Outcome {
                    task: 7,
                    result: Bytes::from_static(b"49"),
                }],
                wait: Wait::Forever,
                reply: false,
            },
        ),
        (
            "declare",
            Request::Declare {
                queue: q(),
                capacity: Some(70_000),
            },
        ),
        ("inspect", Request::Inspect { queue: q() }),
        ("stats", Request::Stats),
        ("ping", Request::Ping),
        (
            "touch",
            Request::Touch {
                queue: q(),
                tasks: vec![5],
                millis: None,
            },
        ),
        (
            "nack",
            Request::Nack {
                queue: q(),
                tasks: vec![6],
                delay_ms: 100,
                reason: "flaky".into(),
                fatal: false,
            },
        ),
        (
            "complete-and-get",
            Request::CompleteAndGet {
                queue: q(),
                results: "results".into(),
                outcomes: vec![Outcome {
                    task: 7,
                    result: Bytes::from_static(b"49"),
                }],
                max: 16,
                wait: Wait::Millis(1000),
                lease_ms: Some(500),
                reply: false,
            },
        ),
        (
            "put-once",
            Request::PutOnce {
                queue: q(),
                items: vec![Bytes::from_static(b"7")],
                wait: Wait::Millis(1000),
                producer: 0x5eed,
                seq: 42,
                reply_to: None,
            },
        ),
        ("peek", Request::Peek { queue: q(), max: 8 }),
        ("purge", Request::Purge { queue: q() }),
        (
            "kick",
            Request::Kick {
                queue: q(),
                max: 300,
            },
        ),
        (
            "delete",
            Request::Delete {
                queue: "reply.1".into(),
                if_empty: true,
            },
        ),
    ]
}

fn replies() -> Vec<(&'static str, Reply)> {
    vec![
        (
            "put",
            Reply::Put {
                first_id: 1 << 40,
                accepted: 2,
            },
        ),
        (
            "tasks",
            Reply::Tasks(vec![Task {
                id: 1,
                attempt: 2,
                payload: Bytes::from_static(b"xyz"),
                reply_to: Bytes::from_static(b"reply.1"),
            }]),
        ),
        (
            "settled",
            Reply::Settled {
                done: 3,
                stale: vec![4],
                pending: 1,
            },
        ),
        ("queue", Reply::Queue(Box::new(queue_stats()))),
        (
            "stats",
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
                memory: MemoryStats {
                    held_bytes: 7,
                    waiting_bytes: 8,
                    limit_bytes: Some(9),
                },
            })),
        ),
        ("pong", Reply::Pong),
        (
            "error",
            Reply::Error {
                kind: ErrorKind::PayloadTooLarge,
                message: "too big".into(),
            },
        ),
        (
            "worked",
            Reply::Worked {
                done: 1,
                stale: vec![2],
                pending: 0,
                tasks: vec![Task::new(3, 1, Bytes::from_static(b"7"))],
            },
        ),
        ("count", Reply::Count(70_000)),
    ]
}

fn hello() -> ClientHandshake {
    ClientHello::start(key(), &Binding::Plain, Some(&CLIENT_EPHEMERAL)).1
}

fn scoped_hello() -> ClientHandshake {
    let key = key().clone().with_id("worker-1".parse().unwrap());
    ClientHello::start(&key, &Binding::Plain, Some(&CLIENT_EPHEMERAL)).1
}

/// A hello from an older client.
fn legacy_hello(version: u16) -> ClientHandshake {
    ClientHandshake::LegacyHello {
        magic: MAGIC,
        version,
        nonce: [0x5a; 32],
    }
}

fn rejections() -> Vec<Rejection> {
    vec![
        Rejection::NotTaskmill,
        Rejection::UnsupportedVersion { supported: 1 },
        Rejection::AuthenticationFailed,
        Rejection::ShuttingDown,
        Rejection::Overloaded,
        Rejection::Throttled,
    ]
}

/// Every seed as (target, file name, bytes).
fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut add = |target: &'static str, name: String, bytes: Vec<u8>| {
        out.push((target, name, bytes));
    };

    // decode_frames: one file per message variant, steered to the 4 KiB cap (steer & 3 == 1)
    // with varied chunking, plus whole conversations.
    let requests = requests();
    for (i, (name, request)) in requests.iter().enumerate() {
        let msg = ClientMessage::Request {
            id: i as u64 * 97,
            request: request.clone(),
        };
        add(
            "decode_frames",
            format!("client-request-{name}"),
            with_steer(1 | (i as u8) << 2, &framed(&[msg])),
        );
    }
    for (i, (name, reply)) in replies().iter().enumerate() {
        let msg = MasterMessage::Reply {
            id: i as u64 + 250,
            reply: reply.clone(),
        };
        add(
            "decode_frames",
            format!("master-reply-{name}"),
            with_steer(1 | (i as u8) << 3, &framed(&[msg])),
        );
    }
    add(
        "decode_frames",
        "session-unsolicited".into(),
        with_steer(
            2,
            &[
                framed(&[ClientMessage::Heartbeat]),
                framed(&[MasterMessage::Heartbeat, MasterMessage::ShuttingDown]),
            ]
            .concat(),
        ),
    );
    add(
        "decode_frames",
        "client-handshake".into(),
        with_steer(
            0,
            &framed(&[
                hello(),
                legacy_hello(3),
                ClientHandshake::LegacyProof { mac: [9; 32] },
                scoped_hello(),
            ]),
        ),
    );
    let mut master_hs = vec![
        MasterHandshake::LegacyChallenge {
            version: 3,
            nonce: [0xa5; 32],
        },
        MasterHandshake::Welcome {
            ephemeral: [3; 32],
            sealed: [4; 24],
        },
    ];
    master_hs.extend(rejections().into_iter().map(MasterHandshake::Rejected));
    add(
        "decode_frames",
        "master-handshake".into(),
        with_steer(0x40, &framed(&master_hs)),
    );
    let conversation: Vec<ClientMessage> = requests
        .iter()
        .enumerate()
        .map(|(i, (_, request))| ClientMessage::Request {
            id: i as u64,
            request: request.clone(),
        })
        .collect();
    add(
        "decode_frames",
        "client-pipelined".into(),
        with_steer(0x3c, &framed(&conversation)),
    );
    let square = SquareResult {
        seq: 9,
        input: -3,
        square: 9,
        attempt: 1,
        worker: 7,
    };
    add(
        "decode_frames",
        "payload-square-result".into(),
        with_steer(0, &encode_payload(&square).unwrap()),
    );
    add(
        "decode_frames",
        "payload-square-task".into(),
        with_steer(
            0,
            &encode_payload(&SquareTask {
                seq: 1,
                input: i64::MIN,
            })
            .unwrap(),
        ),
    );
    add(
        "decode_frames",
        "payload-dead-letter".into(),
        with_steer(
            0,
            &encode_payload(&DeadLetter {
                task: 4,
                queue: "tasks".into(),
                attempts: 3,
                reason: "lease expired".into(),
                payload: Bytes::from_static(b"p"),
            })
            .unwrap(),
        ),
    );
    let mut oversize = BytesMut::new();
    oversize.put_u32(u32::MAX);
    oversize.put_slice(b"\0\x01");
    add(
        "decode_frames",
        "header-4gib".into(),
        with_steer(3, &oversize),
    );

    // master_handshake: steering byte = scenario | write size << 2 | pipe << 5 | drop << 7.
    let hello_frame = framed(&[hello()]);
    let proof = framed(&[ClientHandshake::LegacyProof { mac: [7; 32] }]);
    let session = framed(&[
        ClientMessage::Request {
            id: 1,
            request: Request::Ping,
        },
        ClientMessage::Heartbeat,
        ClientMessage::Request {
            id: 2,
            request: requests[0].1.clone(),
        },
    ]);
    let bad_magic = framed(&[ClientHandshake::Hello {
        magic: *b"HTTP",
        version: PROTOCOL_VERSION,
        ephemeral: [0x5a; 32],
        tag: [0; 16],
    }]);
    let bad_version = framed(&[ClientHandshake::Hello {
        magic: MAGIC,
        version: 2,
        ephemeral: [0x5a; 32],
        tag: [0; 16],
    }]);
    let m = "master_handshake";
    add(m, "raw-hello".into(), with_steer(0x1c, &hello_frame));
    add(m, "raw-bad-magic".into(), with_steer(0x60, &bad_magic));
    add(m, "raw-bad-version".into(), with_steer(0x04, &bad_version));
    add(
        m,
        "raw-legacy-hello".into(),
        with_steer(0x44, &framed(&[legacy_hello(3)])),
    );
    add(m, "raw-proof-first".into(), with_steer(0x40, &proof));
    add(
        m,
        "raw-http".into(),
        with_steer(0x7c, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
    );
    add(m, "hello-then-hello".into(), with_steer(0x61, &hello_frame));
    add(
        m,
        "hello-then-unsealed-session".into(),
        with_steer(0x01 | 0x80, &session),
    );
    add(m, "honest-then-session".into(), with_steer(0x62, &session));
    add(
        m,
        "honest-then-oversize".into(),
        with_steer(0x0a, &oversize),
    );
    add(m, "tampered-hello".into(), with_steer(0x23, &[37]));
    // A scoped key's hello to a master without scoped keys: refused as a wrong key.
    let scoped = framed(&[scoped_hello()]);
    add(m, "raw-scoped-hello".into(), with_steer(0x1c, &scoped));

    // client_handshake: the same steering; scenario 2 reads max_frame and heartbeat_ms as two
    // little-endian u32 before the session bytes.
    let challenge = framed(&[MasterHandshake::LegacyChallenge {
        version: 3,
        nonce: [0xa5; 32],
    }]);
    let forged_welcome = framed(&[MasterHandshake::Welcome {
        ephemeral: [1; 32],
        sealed: [2; 24],
    }]);
    let replies_stream = framed(&[
        MasterMessage::Reply {
            id: 1,
            reply: Reply::Pong,
        },
        MasterMessage::Heartbeat,
        MasterMessage::Reply {
            id: 2,
            reply: replies()[1].1.clone(),
        },
        MasterMessage::ShuttingDown,
    ]);
    let c = "client_handshake";
    add(
        c,
        "raw-forged-welcome".into(),
        with_steer(0x1c, &forged_welcome),
    );
    add(
        c,
        "raw-legacy-challenge".into(),
        with_steer(0x60, &challenge),
    );
    for (i, why) in rejections().into_iter().enumerate() {
        add(
            c,
            format!("raw-rejected-{i}"),
            with_steer(
                (i as u8) << 2 | 0x40,
                &framed(&[MasterHandshake::Rejected(why)]),
            ),
        );
    }
    add(
        c,
        "hello-then-forged-welcome".into(),
        with_steer(0x05, &forged_welcome),
    );
    add(
        c,
        "hello-then-legacy-challenge".into(),
        with_steer(0x21, &challenge),
    );
    let mut limits = Vec::new();
    limits.put_u32_le(4096);
    limits.put_u32_le(250);
    add(
        c,
        "honest-welcome-then-replies".into(),
        with_steer(0x62, &[limits.clone(), replies_stream].concat()),
    );
    add(
        c,
        "honest-welcome-then-oversize".into(),
        with_steer(0x6a, &[limits.clone(), oversize.to_vec()].concat()),
    );
    add(
        c,
        "tampered-welcome".into(),
        with_steer(0x23, &[limits, vec![41]].concat()),
    );
    add(
        c,
        "hello-then-rejected".into(),
        with_steer(
            0x81,
            &framed(&[MasterHandshake::Rejected(Rejection::AuthenticationFailed)]),
        ),
    );
    for (name, bytes) in pickle_seeds() {
        add("python_pickle", name.into(), bytes);
    }
    out
}

/// `python_pickle` seeds: CPython 3.11's own requests (PYTHON-MANAGERS.md §3.3), items of
/// several kinds, and hostile pickles. Steering 0: a request; 1: a stored payload.
fn pickle_seeds() -> Vec<(&'static str, Vec<u8>)> {
    fn s(text: &str) -> Vec<u8> {
        [&[0x8c, text.len() as u8][..], text.as_bytes(), &[0x94]].concat()
    }
    fn request(ident: Option<&str>, method: &str, args: &[u8], kwds: &[u8]) -> Vec<u8> {
        let mut body = vec![0x28];
        body.extend(ident.map_or(vec![0x4e], s));
        body.extend(s(method));
        body.extend(args);
        body.extend(kwds);
        body.extend([0x74, 0x94, 0x2e]);
        let mut out = vec![0, 0x80, 4, 0x95];
        out.extend(((body.len() - 1) as u64).to_le_bytes());
        out.extend(body);
        out
    }
    let timeout = [&[0x7d, 0x94][..], &s("timeout"), &[0x4b, 0x01, 0x73]].concat();
    let mut bomb = vec![1, 0x80, 4, 0x5d, 0x94, 0x30];
    for i in 0..28u8 {
        bomb.extend([0x28, 0x68, i, 0x68, i, 0x6c, 0x94, 0x30]);
    }
    bomb.extend([0x68, 28, 0x2e]);
    let object = [
        &[1, 0x80, 4][..],
        &s("collections"),
        &s("OrderedDict"),
        &[0x93, 0x94, 0x29, 0x52, 0x94, 0x28],
        &s("a"),
        &[0x4b, 0x01, 0x75, 0x2e],
    ]
    .concat();
    vec![
        ("dummy", request(None, "dummy", &[0x29], &[0x7d, 0x94])),
        (
            "create",
            request(
                None,
                "create",
                &[&s("get_task_queue")[..], &[0x85, 0x94]].concat(),
                &[0x7d, 0x94],
            ),
        ),
        ("get-timeout", request(Some("q0"), "get", &[0x29], &timeout)),
        (
            "put-int",
            request(Some("q0"), "put", &[0x4b, 0x2a, 0x85, 0x94], &[0x7d, 0x94]),
        ),
        (
            "put-method-name",
            request(Some("q0"), "put", &[0x68, 0x01, 0x85, 0x94], &[0x7d, 0x94]),
        ),
        (
            "put-shared-tuple",
            request(
                Some("q0"),
                "put",
                &[&s("x")[..], &[0x68, 0x02, 0x86, 0x94, 0x85, 0x94]].concat(),
                &[0x7d, 0x94],
            ),
        ),
        ("payload-int", vec![1, 0x80, 4, 0x4d, 0xe4, 0x06, 0x2e]),
        ("payload-object", object),
        ("payload-bomb", bomb),
        ("payload-raw", b"\x01not a pickle".to_vec()),
    ]
}

/// Writes the seed corpus: `cargo test --no-default-features --lib -- --ignored write_seed_corpus`
/// in `fuzz/`.
/// Files not named here (regression inputs added by hand) are left alone.
#[test]
#[ignore = "writes fuzz/corpus; run by hand after changing the messages"]
fn write_seed_corpus() {
    for (target, name, bytes) in seeds() {
        let dir = corpus_dir(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

// ---------------------------------------------------------------------------------------------
// Blind fuzzing, for machines where libFuzzer cannot be built

/// xorshift64*: enough randomness for mutations, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Bytes a mutation likes to write: varint markers, length-ish values, enum indices.
const INTERESTING: [u8; 10] = [0, 1, 2, 0x7f, 0x80, 0xfa, 0xfb, 0xfc, 0xfd, 0xff];

fn mutate(rng: &mut Rng, input: &mut Vec<u8>, other: &[u8]) {
    for _ in 0..1 + rng.below(4) {
        let len = input.len();
        match rng.below(8) {
            0 if len > 0 => input[rng.below(len)] ^= 1 << rng.below(8),
            1 if len > 0 => input[rng.below(len)] = INTERESTING[rng.below(INTERESTING.len())],
            2 => {
                let at = rng.below(len + 1);
                let n = 1 + rng.below(8);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                input.splice(at..at, bytes);
            }
            3 if len > 1 => {
                let at = rng.below(len);
                let n = 1 + rng.below(len - at);
                input.drain(at..at + n);
            }
            4 if len > 0 => {
                let at = rng.below(len);
                let n = 1 + rng.below(len - at);
                let copy = input[at..at + n].to_vec();
                let to = rng.below(len + 1);
                input.splice(to..to, copy);
            }
            5 if !other.is_empty() => {
                let cut = rng.below(len + 1);
                let from = rng.below(other.len());
                input.truncate(cut);
                input.extend_from_slice(&other[from..]);
            }
            6 if len > 0 => input[0] = rng.next() as u8,
            _ if len > 4 => {
                let at = rng.below(len - 3);
                let value = [0u32, 1, 255, 511, 512, 513, 4096, u32::MAX][rng.below(8)];
                input[at..at + 4].copy_from_slice(&value.to_be_bytes());
            }
            _ => input.push(rng.next() as u8),
        }
    }
    input.truncate(4096);
}

/// Mutates each target's corpus at random for `FUZZ_SECONDS` (default 10) per target, with no
/// coverage feedback, and prints `fuzz: <target> <N> execs, <K> crashes` lines. Inputs that
/// panic are saved under `fuzz/artifacts/<target>/`. `FUZZ_TARGET` limits it to one target.
#[test]
#[ignore = "long; run by scripts/fuzz.sh when cargo-fuzz is unavailable"]
fn blind_fuzz() {
    let secs: u64 = std::env::var("FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let only = std::env::var("FUZZ_TARGET").ok();
    // The targets' own panics are the findings; keep their messages short.
    let hook = panic::take_hook();
    panic::set_hook(Box::new(|info| eprintln!("crash: {info}")));
    let mut total_crashes = 0;
    for (target, run) in TARGETS {
        if only.as_deref().is_some_and(|t| t != target) {
            continue;
        }
        let seeds: Vec<Vec<u8>> = corpus(target).into_iter().map(|(_, b)| b).collect();
        let mut rng = Rng(0x243f_6a88_85a3_08d3 ^ secs ^ target.len() as u64);
        let deadline = Instant::now() + Duration::from_secs(secs);
        let (mut execs, mut crashes) = (0u64, 0u64);
        'fuzzing: while Instant::now() < deadline {
            for _ in 0..64 {
                let mut input = seeds[rng.below(seeds.len())].clone();
                let other = &seeds[rng.below(seeds.len())];
                mutate(&mut rng, &mut input, other);
                execs += 1;
                if panic::catch_unwind(AssertUnwindSafe(|| run(&input))).is_err() {
                    crashes += 1;
                    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
                        .join("artifacts")
                        .join(target);
                    std::fs::create_dir_all(&dir).unwrap();
                    let path = dir.join(format!("crash-blind-{execs}"));
                    std::fs::write(&path, &input).unwrap();
                    eprintln!("crash input saved to {}", path.display());
                    // Like libFuzzer: stop this target at its first crash.
                    break 'fuzzing;
                }
            }
        }
        println!("fuzz: {target} {execs} execs, {crashes} crashes");
        total_crashes += crashes;
    }
    panic::set_hook(hook);
    assert_eq!(total_crashes, 0, "blind fuzzing found crashes");
}
