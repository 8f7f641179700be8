//! The handshake against a real master: keys, impostors, replays, reflections, deadlines, and
//! that none of it disturbs honest work.

use std::time::Duration;

use taskmill::{Client, ClientError};
use taskmill_protocol::auth::{nonce, Role};
use taskmill_protocol::codec::HANDSHAKE_MAX_FRAME;
use taskmill_protocol::{
    ClientHandshake, Connection, MasterHandshake, Rejection, MAGIC, PROTOCOL_VERSION,
};
use taskmill_squares::job::{self, JobConfig};
use taskmill_testkit::{config, fake_master, key, within, wrong_key, TestMaster};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

type RawClient = Connection<TcpStream, MasterHandshake, ClientHandshake>;

async fn raw(addr: &str) -> RawClient {
    Connection::new(TcpStream::connect(addr).await.unwrap(), HANDSHAKE_MAX_FRAME)
}

/// Sends a hello and returns the master's nonce.
async fn hello(conn: &mut RawClient, client_nonce: [u8; 32]) -> [u8; 32] {
    conn.send(&ClientHandshake::Hello {
        magic: MAGIC,
        version: PROTOCOL_VERSION,
        nonce: client_nonce,
    })
    .await
    .unwrap();
    match within("challenge", conn.recv()).await.unwrap() {
        Some(MasterHandshake::Challenge { nonce, .. }) => nonce,
        other => panic!("expected a challenge, got {other:?}"),
    }
}

/// Waits until the master has counted `n` failed handshakes. It counts just after closing the
/// connection, so the count can trail what the peer saw by a moment.
async fn expect_failures(master: &TestMaster, n: u64) {
    let mut client = master.client().await;
    within("handshake failure count", async {
        loop {
            let seen = client.stats().await.unwrap().handshake_failures;
            assert!(seen <= n, "{seen} failures counted, expected {n}");
            if seen == n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

/// Reads until the master closes the connection; fails if it stays open past the limit.
async fn assert_closed_by_master(stream: &mut TcpStream) {
    let mut buf = [0u8; 256];
    loop {
        match within("master closing the connection", stream.read(&mut buf)).await {
            Ok(0) | Err(_) => return,
            Ok(_) => continue,
        }
    }
}

#[tokio::test]
async fn the_right_key_authenticates_and_can_use_the_queues() {
    let master = TestMaster::start(config()).await;
    let mut client = master.client().await;
    client.ping().await.unwrap();
    expect_failures(&master, 0).await;
}

#[tokio::test]
async fn a_wrong_key_fails_on_both_sides_with_a_clear_error() {
    let master = TestMaster::start(config()).await;
    let err = within("connect", Client::connect(&master.addr, &wrong_key()))
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::AuthenticationFailed), "{err:?}");
    assert!(
        err.to_string()
            .contains("authentication failed: wrong authkey?"),
        "{err}"
    );
    assert!(
        !err.is_transient(),
        "a wrong key must not be retried forever"
    );
    expect_failures(&master, 1).await;
}

#[tokio::test]
async fn an_impostor_master_without_the_key_is_detected_by_the_client() {
    // A fake master that plays along but cannot prove it holds the key.
    let (addr, impostor) = fake_master(wrong_key(), 5000).await;
    let err = within("connect", Client::connect(&addr, &key()))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClientError::MasterNotAuthenticated(_)),
        "{err:?}"
    );
    impostor.await.unwrap();
}

#[tokio::test]
async fn a_replayed_proof_is_rejected() {
    let master = TestMaster::start(config()).await;
    // An eavesdropper records a genuine client's hello and proof...
    let client_nonce = nonce();
    let mut first = raw(&master.addr).await;
    let master_nonce = hello(&mut first, client_nonce).await;
    let recorded = key().proof(Role::Client, PROTOCOL_VERSION, &client_nonce, &master_nonce);
    first
        .send(&ClientHandshake::Proof { mac: recorded })
        .await
        .unwrap();
    assert!(matches!(
        within("welcome", first.recv()).await.unwrap(),
        Some(MasterHandshake::Welcome { .. })
    ));
    // ...and replays them on a new connection: the master's fresh nonce makes it worthless.
    let mut replay = raw(&master.addr).await;
    let _ = hello(&mut replay, client_nonce).await;
    replay
        .send(&ClientHandshake::Proof { mac: recorded })
        .await
        .unwrap();
    assert_eq!(
        within("rejection", replay.recv()).await.unwrap(),
        Some(MasterHandshake::Rejected(Rejection::AuthenticationFailed))
    );
}

#[tokio::test]
async fn a_reflected_master_proof_is_rejected() {
    let master = TestMaster::start(config()).await;
    let mut conn = raw(&master.addr).await;
    let client_nonce = nonce();
    let master_nonce = hello(&mut conn, client_nonce).await;
    // Even the exact MAC the master would send for this handshake does not pass as ours.
    let reflected = key().proof(Role::Master, PROTOCOL_VERSION, &client_nonce, &master_nonce);
    conn.send(&ClientHandshake::Proof { mac: reflected })
        .await
        .unwrap();
    assert_eq!(
        within("rejection", conn.recv()).await.unwrap(),
        Some(MasterHandshake::Rejected(Rejection::AuthenticationFailed))
    );
}

#[tokio::test]
async fn a_silent_peer_is_dropped_at_the_handshake_deadline() {
    let master = TestMaster::start(config()).await;
    let started = std::time::Instant::now();
    let mut stream = TcpStream::connect(&master.addr).await.unwrap();
    assert_closed_by_master(&mut stream).await;
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(400),
        "closed before the deadline: {waited:?}"
    );
    expect_failures(&master, 1).await;
}

#[tokio::test]
async fn garbage_oversize_and_foreign_protocols_are_refused_and_closed() {
    let master = TestMaster::start(config()).await;
    for bytes in [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        [0xFF, 0xFF, 0xFF, 0xFF].to_vec(),
        [0, 0, 0, 5, 0xde, 0xad, 0xbe, 0xef, 0x00].to_vec(),
    ] {
        let mut stream = TcpStream::connect(&master.addr).await.unwrap();
        stream.write_all(&bytes).await.unwrap();
        assert_closed_by_master(&mut stream).await;
    }
    let mut conn = raw(&master.addr).await;
    conn.send(&ClientHandshake::Hello {
        magic: *b"NOPE",
        version: PROTOCOL_VERSION,
        nonce: nonce(),
    })
    .await
    .unwrap();
    assert_eq!(
        within("rejection", conn.recv()).await.unwrap(),
        Some(MasterHandshake::Rejected(Rejection::NotTaskmill))
    );
    let mut conn = raw(&master.addr).await;
    conn.send(&ClientHandshake::Hello {
        magic: MAGIC,
        version: PROTOCOL_VERSION + 1,
        nonce: nonce(),
    })
    .await
    .unwrap();
    assert_eq!(
        within("rejection", conn.recv()).await.unwrap(),
        Some(MasterHandshake::Rejected(Rejection::UnsupportedVersion {
            supported: PROTOCOL_VERSION
        }))
    );
    expect_failures(&master, 5).await;
    master.client().await.ping().await.unwrap();
}

#[tokio::test]
async fn a_peer_that_leaves_part_way_through_the_handshake_is_charged() {
    // M2 in REVIEW.md: a hello and a clean close used to cost nothing, so a few addresses
    // could hold every handshake slot for ever without being throttled.
    let mut cfg = config();
    cfg.guard.auth_failures_per_minute = 30;
    let master = TestMaster::start(cfg).await;
    for _ in 0..30 {
        let mut conn = raw(&master.addr).await;
        hello(&mut conn, nonce()).await;
    }
    // The budget is spent, so the next failure is answered late (one failure's worth: 2 s).
    let started = std::time::Instant::now();
    let err = within(
        "a late refusal",
        Client::connect(&master.addr, &wrong_key()),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ClientError::AuthenticationFailed), "{err:?}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(1),
        "answered after {waited:?}"
    );
    // While a peer with the key gets in at once.
    master.client().await.ping().await.unwrap();
}

#[tokio::test]
async fn connections_that_send_nothing_are_probes_not_failed_handshakes() {
    let mut cfg = config();
    cfg.guard.auth_failures_per_minute = 2;
    let master = TestMaster::start(cfg).await;
    // Port probes and TCP health checks: connect and close, or connect and reset.
    for _ in 0..5 {
        drop(TcpStream::connect(&master.addr).await.unwrap());
    }
    let reset = TcpStream::connect(&master.addr).await.unwrap();
    reset.set_zero_linger().unwrap();
    drop(reset);
    let mut client = master.client().await;
    within("six probes counted", async {
        while client.stats().await.unwrap().probes < 6 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let stats = client.stats().await.unwrap();
    assert_eq!((stats.probes, stats.handshake_failures), (6, 0));
    // Far past the failure budget of 2, yet the address is not throttled.
    master.client().await.ping().await.unwrap();
    // One byte makes it a handshake, and its failure counts.
    let mut stream = TcpStream::connect(&master.addr).await.unwrap();
    stream.write_all(&[0]).await.unwrap();
    drop(stream);
    expect_failures(&master, 1).await;
}

#[tokio::test]
async fn a_client_reports_a_peer_that_is_not_a_taskmill_master() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let _ = stream.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
    });
    let err = within("connect", Client::connect(&addr, &key()))
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Protocol(_)), "{err:?}");
    assert!(err
        .to_string()
        .contains("does not speak the taskmill protocol"));
}

#[tokio::test]
async fn hostile_handshakes_do_not_disturb_a_running_job() {
    let master = TestMaster::start(config()).await;
    let addr = master.addr.clone();
    let mut job_config = JobConfig::new(20_000);
    job_config.local_workers = 2;
    job_config.stall_timeout = Duration::from_secs(15);
    let job = tokio::spawn(async move {
        let shutdown = tokio_util::sync::CancellationToken::new();
        job::run(&master.addr, &key(), &job_config, &shutdown).await
    });
    let hostile = async {
        for round in 0..10 {
            let _ = Client::connect(&addr, &wrong_key()).await.unwrap_err();
            if let Ok(mut stream) = TcpStream::connect(&addr).await {
                let _ = stream.write_all(&[0xFF; 64]).await;
            }
            if let Ok(mut stream) = TcpStream::connect(&addr).await {
                let _ = stream.write_all(&u32::MAX.to_be_bytes()).await;
            }
            if round % 3 == 0 {
                // Silent: held open until the master's deadline drops it.
                let stream = TcpStream::connect(&addr).await;
                tokio::spawn(async move {
                    if let Ok(mut s) = stream {
                        let mut buf = [0u8; 16];
                        let _ =
                            tokio::time::timeout(taskmill_testkit::LIMIT, s.read(&mut buf)).await;
                    }
                });
            }
        }
    };
    let (report, ()) = within("job beside hostile clients", async {
        tokio::join!(async { job.await.unwrap() }, hostile)
    })
    .await;
    let report = report.unwrap();
    assert!(report.success(), "{report:?}");
    assert_eq!(report.verified, 20_000);
}
