//! The byte-level examples and handshake test vectors printed in docs/protocol.md, checked
//! against the code so the specification cannot drift from what is on the wire.

use bytes::{Bytes, BytesMut};
use taskmill_protocol::handshake::{self, Binding, ClientHello, Limits};
use taskmill_protocol::seal::Side;
use taskmill_protocol::{
    encode_payload, AuthKey, ClientHandshake, ClientMessage, DeadLetter, Delivery, ErrorKind,
    MasterHandshake, MasterMessage, MessageCodec, Outcome, Rejection, Reply, Request, Task,
    TaskOutcome, TaskReply, Wait, MAGIC, PROTOCOL_VERSION,
};
use tokio_util::codec::{Decoder, Encoder};

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn frame<T: serde::Serialize>(msg: &T) -> String {
    let mut codec = MessageCodec::<(), T>::new(1 << 20);
    let mut buf = BytesMut::new();
    codec.encode(msg, &mut buf).unwrap();
    hex(&buf)
}

/// Bytes from the document's spaced hex.
fn unhex(text: &str) -> Vec<u8> {
    text.split_whitespace()
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect()
}

fn seq_bytes(start: u8) -> [u8; 32] {
    std::array::from_fn(|i| start + i as u8)
}

#[test]
fn hello_frame_matches_section_9() {
    let hello = ClientHandshake::Hello {
        magic: MAGIC,
        version: PROTOCOL_VERSION,
        ephemeral: seq_bytes(0),
        tag: [0xaa; 16],
    };
    let ephemeral = hex(&seq_bytes(0));
    let tag = hex(&[0xaa; 16]);
    assert_eq!(
        frame(&hello),
        format!("00 00 00 36 02 54 4d 49 4c 04 {ephemeral} {tag}")
    );
}

#[test]
fn handshake_message_sizes_match_section_9() {
    let body_len = |s: String| (s.len() + 1) / 3 - 4;
    let welcome = frame(&MasterHandshake::Welcome {
        ephemeral: [0; 32],
        sealed: [0; 24],
    });
    assert!(welcome.starts_with("00 00 00 39 03 00"), "{welcome}");
    assert_eq!(body_len(welcome), 57);
    // Versions 1-3's messages keep their variant numbers: an older client's hello starts
    // `00 54 4d 49 4c 03`, and a client of this version that gets a challenge (`00`) is
    // talking to an older master.
    let legacy = frame(&ClientHandshake::LegacyHello {
        magic: MAGIC,
        version: 3,
        nonce: [0; 32],
    });
    assert!(
        legacy.starts_with("00 00 00 26 00 54 4d 49 4c 03"),
        "{legacy}"
    );
    assert!(frame(&MasterHandshake::Rejected(Rejection::AuthenticationFailed)).ends_with("02 02"));
    assert!(
        frame(&MasterHandshake::Rejected(Rejection::UnsupportedVersion {
            supported: PROTOCOL_VERSION
        }))
        .ends_with("02 01 04")
    );
    assert!(frame(&MasterHandshake::Rejected(Rejection::Overloaded)).ends_with("02 04"));
}

#[test]
fn ping_pong_put_and_shutdown_frames_match_section_9() {
    let ping = ClientMessage::Request {
        id: 1,
        request: Request::Ping,
    };
    assert_eq!(frame(&ping), "00 00 00 03 00 01 07");
    let pong = MasterMessage::Reply {
        id: 1,
        reply: Reply::Pong,
    };
    assert_eq!(frame(&pong), "00 00 00 03 00 01 05");
    // The squares job's task (seq 0, input -3): its encoding is checked in the squares crate.
    let task = Bytes::from_static(&[0x00, 0x05]);
    let put = ClientMessage::Request {
        id: 2,
        request: Request::Put {
            queue: "tasks".into(),
            items: vec![task],
            wait: Wait::Millis(1000),
            reply_to: None,
        },
    };
    assert_eq!(
        frame(&put),
        "00 00 00 12 00 02 00 05 74 61 73 6b 73 01 02 00 05 01 fb e8 03 00"
    );
    let reply = MasterMessage::Reply {
        id: 2,
        reply: Reply::Put {
            first_id: 300,
            accepted: 1,
        },
    };
    assert_eq!(frame(&reply), "00 00 00 07 00 02 00 fb 2c 01 01");
    assert_eq!(frame(&MasterMessage::ShuttingDown), "00 00 00 01 01");
}

/// Section 4.4's vector: key `"0123456789abcdef"`, client ephemeral private key `40 41 .. 5f`,
/// master's `60 61 .. 7f`, a plaintext transport, limits 1 MiB and 5000 ms, then the client's
/// first frame (a ping, id 1) and the master's (its pong).
#[test]
fn noise_handshake_and_sealed_frames_match_section_4() {
    let key = AuthKey::new("0123456789abcdef").unwrap();
    let compact = |bytes: &[u8]| hex(bytes).replace(' ', "");
    assert_eq!(
        compact(&Binding::Plain.prologue()),
        "7461736b6d696c6c544d494c000400"
    );
    let (client, hello) = ClientHello::start(&key, &Binding::Plain, Some(&seq_bytes(0x40)));
    let ClientHandshake::Hello { ephemeral, tag, .. } = hello else {
        panic!("a hello");
    };
    let limits = Limits {
        max_frame: 1 << 20,
        heartbeat_ms: 5000,
    };
    let (welcome, master_keys) = handshake::answer(
        &key,
        &Binding::Plain,
        &ephemeral,
        &tag,
        limits,
        Some(&seq_bytes(0x60)),
    )
    .expect("the hello verifies");
    let MasterHandshake::Welcome {
        ephemeral: m_ephemeral,
        sealed,
    } = welcome
    else {
        panic!("a welcome");
    };
    let (opened, client_keys) = client.finish(&m_ephemeral, &sealed).unwrap();
    assert_eq!(opened, limits);
    let vector = [
        compact(&ephemeral),
        compact(&tag),
        compact(&m_ephemeral),
        compact(&sealed),
    ];
    assert_eq!(
        vector,
        [
            "79a631eede1bf9c98f12032cdeadd0e7a079398fc786b88cc846ec89af85a51a".to_string(),
            "26245de2485558e5c08e55a752a5bccf".into(),
            "675dd574ed7789310b3d2e7681f3790b466c773b1521fecf36577958371ea52f".into(),
            "489c7d6a116180844428c5ebe30bcfbcf7d7600422ee3a11".into()
        ]
    );
    let mut ping = MessageCodec::<MasterMessage, ClientMessage>::new(1 << 20);
    let (seal, open) = client_keys.for_side(Side::Client);
    ping.encrypt(seal, open);
    let mut wire = BytesMut::new();
    ping.encode(
        &ClientMessage::Request {
            id: 1,
            request: Request::Ping,
        },
        &mut wire,
    )
    .unwrap();
    let mut pong = MessageCodec::<ClientMessage, MasterMessage>::new(1 << 20);
    let (seal, open) = master_keys.for_side(Side::Master);
    pong.encrypt(seal, open);
    let mut back = BytesMut::new();
    pong.encode(
        &MasterMessage::Reply {
            id: 1,
            reply: Reply::Pong,
        },
        &mut back,
    )
    .unwrap();
    assert_eq!(
        hex(&wire),
        "00 00 00 13 f7 b3 6c 73 0c c2 12 4c fb 32 de d8 4d 3d ac 74 27 3c 27"
    );
    assert_eq!(
        hex(&back),
        "00 00 00 13 5e 5b 3e 17 b4 c5 ef 9b bc 5d 3b 97 f2 89 ed db ef 80 43"
    );
    // Each side opens the other's frame.
    assert!(matches!(
        pong.decode(&mut wire).unwrap(),
        Some(ClientMessage::Request { id: 1, .. })
    ));
    assert!(matches!(
        ping.decode(&mut back).unwrap(),
        Some(MasterMessage::Reply { id: 1, .. })
    ));
}

#[test]
fn leasing_get_heartbeats_and_dead_letters_match_section_9() {
    let get = |delivery| ClientMessage::Request {
        id: 3,
        request: Request::Get {
            queue: "tasks".into(),
            max: 16,
            wait: Wait::Forever,
            delivery,
        },
    };
    assert_eq!(
        frame(&get(Delivery::Lease { millis: None })),
        "00 00 00 0d 00 03 01 05 74 61 73 6b 73 10 02 00 00"
    );
    assert!(frame(&get(Delivery::Lease { millis: Some(500) })).ends_with("02 00 01 fb f4 01"));
    assert_eq!(frame(&ClientMessage::Heartbeat), "00 00 00 01 01");
    assert_eq!(frame(&MasterMessage::Heartbeat), "00 00 00 01 02");
    let letter = DeadLetter {
        task: 7,
        queue: "tasks".into(),
        attempts: 5,
        reason: "nacked: x".into(),
        payload: Bytes::from_static(&[0x00, 0x05]),
    };
    assert_eq!(
        hex(&encode_payload(&letter).unwrap()),
        "07 05 74 61 73 6b 73 05 09 6e 61 63 6b 65 64 3a 20 78 02 00 05"
    );
}

/// The task of section 9's examples: id 300, first delivery, the squares task, reply queue r.1.
fn routed_task() -> Task {
    Task {
        id: 300,
        attempt: 1,
        payload: Bytes::from_static(&[0x00, 0x05]),
        reply_to: Bytes::from_static(b"r.1"),
    }
}

/// Its `TaskReply` `Done`, carrying the squares result of section 8.
fn done_reply() -> TaskReply {
    TaskReply {
        task: 300,
        outcome: TaskOutcome::Done(Bytes::from_static(&[0x00, 0x05, 0x12, 0x01, 0x07])),
    }
}

#[test]
fn reply_queue_frames_and_task_replies_match_section_9() {
    let put = ClientMessage::Request {
        id: 2,
        request: Request::Put {
            queue: "tasks".into(),
            items: vec![Bytes::from_static(&[0x00, 0x05])],
            wait: Wait::Millis(1000),
            reply_to: Some("r.1".into()),
        },
    };
    assert_eq!(
        frame(&put),
        "00 00 00 16 00 02 00 05 74 61 73 6b 73 01 02 00 05 01 fb e8 03 01 03 72 2e 31"
    );
    let tasks = MasterMessage::Reply {
        id: 3,
        reply: Reply::Tasks(vec![routed_task()]),
    };
    assert_eq!(
        frame(&tasks),
        "00 00 00 0f 00 03 01 01 fb 2c 01 01 02 00 05 03 72 2e 31"
    );
    assert_eq!(hex(&done_reply().encode()), "00 fb 2c 01 00 05 12 01 07");
    let dead = TaskReply {
        task: 300,
        outcome: TaskOutcome::Dead {
            attempts: 5,
            reason: "nacked: x".into(),
        },
    };
    assert_eq!(
        hex(&dead.encode()),
        "01 fb 2c 01 05 6e 61 63 6b 65 64 3a 20 78"
    );
    for reply in [done_reply(), dead] {
        assert_eq!(TaskReply::decode(&reply.encode()).unwrap(), reply);
    }
    let complete = ClientMessage::Request {
        id: 4,
        request: Request::Complete {
            queue: "tasks".into(),
            results: "r.1".into(),
            outcomes: vec![Outcome {
                task: 300,
                result: done_reply().encode(),
            }],
            wait: Wait::No,
            reply: true,
        },
    };
    assert_eq!(
        frame(&complete),
        concat!(
            "00 00 00 1d 00 04 03 05 74 61 73 6b 73 03 72 2e 31 ",
            "01 fb 2c 01 09 00 fb 2c 01 00 05 12 01 07 00 01"
        )
    );
}

#[test]
fn nack_delete_count_and_an_unknown_error_kind_match_section_9() {
    let nack = ClientMessage::Request {
        id: 5,
        request: Request::Nack {
            queue: "tasks".into(),
            tasks: vec![300],
            delay_ms: 0,
            reason: "bad input".into(),
            fatal: true,
        },
    };
    assert_eq!(
        frame(&nack),
        "00 00 00 19 00 05 09 05 74 61 73 6b 73 01 fb 2c 01 00 09 62 61 64 20 69 6e 70 75 74 01"
    );
    let delete = ClientMessage::Request {
        id: 6,
        request: Request::Delete {
            queue: "r.1".into(),
            if_empty: false,
        },
    };
    assert_eq!(frame(&delete), "00 00 00 08 00 06 0f 03 72 2e 31 00");
    let count = MasterMessage::Reply {
        id: 6,
        reply: Reply::Count(2),
    };
    assert_eq!(frame(&count), "00 00 00 04 00 06 08 02");
    // A kind this version does not know, from a newer master: read as Unknown, message kept.
    let mut codec = MessageCodec::<MasterMessage, ()>::new(1 << 20);
    let mut bytes = BytesMut::from(&unhex("00 00 00 09 00 07 06 0f 04 6e 65 77 21")[..]);
    assert_eq!(
        codec.decode(&mut bytes).unwrap(),
        Some(MasterMessage::Reply {
            id: 7,
            reply: Reply::Error {
                kind: ErrorKind::Unknown,
                message: "new!".into(),
            },
        })
    );
}

/// Section 4.2's scoped vector: the same keys and ephemerals, key id `"worker-1"` (its
/// prologue ends `"key-id"` and the id padded to 16 bytes): the tags change, the ephemeral
/// keys do not. Checked against `python3 scripts/noise-vector.py worker-1`.
#[test]
fn a_scoped_hello_binds_its_key_id() {
    let id = "worker-1".parse().unwrap();
    let key = AuthKey::new("0123456789abcdef").unwrap().with_id(id);
    let compact = |bytes: &[u8]| hex(bytes).replace(' ', "");
    let (client, hello) = ClientHello::start(&key, &Binding::Plain, Some(&seq_bytes(0x40)));
    let frame = frame(&hello);
    assert!(
        frame.starts_with("00 00 00 46 03 54 4d 49 4c 04 77 6f 72 6b 65 72 2d 31 00 00"),
        "{frame}"
    );
    let ClientHandshake::ScopedHello { ephemeral, tag, .. } = hello else {
        panic!("a scoped hello");
    };
    assert_eq!(compact(&tag), "e375dabd6135b1b6ebd8c05c83918fb4");
    let limits = Limits {
        max_frame: 1 << 20,
        heartbeat_ms: 5000,
    };
    let answer = |key: &AuthKey| {
        handshake::answer(
            key,
            &Binding::Plain,
            &ephemeral,
            &tag,
            limits,
            Some(&seq_bytes(0x60)),
        )
    };
    let unscoped = AuthKey::new("0123456789abcdef").unwrap();
    assert!(answer(&unscoped).is_none(), "the id is bound");
    let other = unscoped.clone().with_id("worker-2".parse().unwrap());
    assert!(answer(&other).is_none(), "the id is bound");
    let (welcome, _) = answer(&key).expect("the hello verifies");
    let MasterHandshake::Welcome {
        ephemeral: m_ephemeral,
        sealed,
    } = welcome
    else {
        panic!("a welcome");
    };
    assert_eq!(
        compact(&sealed),
        "489c7d6a11618084f09c31fbf94917f2a059cd7b328e1eaf"
    );
    assert_eq!(client.finish(&m_ephemeral, &sealed).unwrap().0, limits);
}
