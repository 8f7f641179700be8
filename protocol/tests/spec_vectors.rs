//! The byte-level examples and HMAC test vectors printed in docs/protocol.md, checked against
//! the code so the specification cannot drift from what is on the wire.

use bytes::{Bytes, BytesMut};
use taskmill_protocol::auth::Role;
use taskmill_protocol::{
    encode_payload, AuthKey, ClientHandshake, ClientMessage, DeadLetter, Delivery, MasterHandshake,
    MasterMessage, MessageCodec, Rejection, Reply, Request, Wait, MAGIC, PROTOCOL_VERSION,
};
use tokio_util::codec::Encoder;

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

fn seq_bytes(start: u8) -> [u8; 32] {
    std::array::from_fn(|i| start + i as u8)
}

#[test]
fn hello_frame_matches_section_9() {
    let hello = ClientHandshake::Hello {
        magic: MAGIC,
        version: PROTOCOL_VERSION,
        nonce: seq_bytes(0),
    };
    let nonce = hex(&seq_bytes(0));
    assert_eq!(
        frame(&hello),
        format!("00 00 00 26 00 54 4d 49 4c 03 {nonce}")
    );
}

#[test]
fn handshake_message_sizes_match_section_9() {
    let body_len = |s: String| (s.len() + 1) / 3 - 4;
    let challenge = MasterHandshake::Challenge {
        version: 1,
        nonce: [0; 32],
    };
    assert_eq!(body_len(frame(&challenge)), 34);
    assert_eq!(
        body_len(frame(&ClientHandshake::Proof { mac: [0; 32] })),
        33
    );
    let welcome = frame(&MasterHandshake::Welcome {
        mac: [0; 32],
        max_frame: 1 << 20,
        heartbeat_ms: 5000,
    });
    assert!(welcome.ends_with("fc 00 00 10 00 fb 88 13"), "{welcome}");
    assert_eq!(body_len(welcome), 41);
    assert!(frame(&MasterHandshake::Rejected(Rejection::AuthenticationFailed)).ends_with("02 02"));
    assert!(
        frame(&MasterHandshake::Rejected(Rejection::UnsupportedVersion {
            supported: 1
        }))
        .ends_with("02 01 01")
    );
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

#[test]
fn hmac_test_vectors_match_section_4() {
    let key = AuthKey::new("0123456789abcdef").unwrap();
    let (c, m) = (seq_bytes(0), seq_bytes(0x20));
    let compact = |mac: [u8; 32]| hex(&mac).replace(' ', "");
    assert_eq!(
        compact(key.proof(Role::Client, PROTOCOL_VERSION, &c, &m)),
        "17467358a9f028b0c37625079526dfc525e572fb7ba0b769f0a914dc53d7a881"
    );
    assert_eq!(
        compact(key.proof(Role::Master, PROTOCOL_VERSION, &c, &m)),
        "9c7c2a6fb5a12ab91c1e0e2c35010aaac03aa2612ae0a25ef2ba7fd313dea52c"
    );
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
