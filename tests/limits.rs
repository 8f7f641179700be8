//! Every limit in front of and inside a session: the right refusal, the connection closed,
//! nothing else affected, nothing lost.

use std::time::{Duration, Instant};

use bytes::Bytes;
use taskmill::{Client, ClientError};
use taskmill_protocol::handshake;
use taskmill_protocol::{ClientMessage, Rejection, Request, Wait};
use taskmill_testkit::{config, connect_from, key, within, wrong_key, TestMaster};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// A TCP connection to `addr` from the loopback address `source`.
async fn connect(source: [u8; 4], addr: &str) -> TcpStream {
    connect_from(source, addr.parse().unwrap()).await.unwrap()
}

async fn handshake_from(
    source: [u8; 4],
    addr: &str,
    key: &taskmill_protocol::AuthKey,
) -> Result<(), ClientError> {
    let stream = connect(source, addr).await;
    within("handshake", handshake::connect(stream, key, addr))
        .await
        .map(|_| ())
        .map_err(ClientError::from)
}

#[tokio::test]
async fn connections_past_the_limit_are_told_the_master_is_overloaded() {
    let mut cfg = config();
    cfg.max_connections = 2;
    let master = TestMaster::start(cfg).await;
    let _a = master.client().await;
    let _b = master.client().await;
    let err = within("refused", Client::connect(&master.addr, &key()))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClientError::Rejected(Rejection::Overloaded)),
        "{err:?}"
    );
    assert!(err.is_transient());
    assert!(err.to_string().contains("overloaded"), "{err}");
    drop(_a);
    // The freed slot is usable again once the master has noticed the close.
    within("slot freed", async {
        loop {
            if Client::connect(&master.addr, &key()).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

/// Reads until the master closes `stream` (end of stream or reset).
async fn closed(stream: &mut TcpStream) {
    let mut buf = [0u8; 64];
    while let Ok(n) = stream.read(&mut buf).await {
        if n == 0 {
            return;
        }
    }
}

#[tokio::test]
async fn a_full_address_sheds_its_oldest_handshake_so_a_peer_with_the_key_gets_in() {
    let mut cfg = config();
    cfg.guard.max_handshakes_per_ip = 2;
    cfg.handshake_timeout = Duration::from_secs(30);
    cfg.first_byte_timeout = Duration::from_secs(30);
    let master = TestMaster::start(cfg).await;
    // Two silent connections from one address take its handshake slots...
    let mut s1 = connect([127, 0, 0, 1], &master.addr).await;
    let _s2 = connect([127, 0, 0, 1], &master.addr).await;
    // ...yet a peer with the key from that same address is let in at once, in the place of
    // the oldest; the newer silent one keeps its slot.
    handshake_from([127, 0, 0, 1], &master.addr, &key())
        .await
        .unwrap();
    within("the oldest shed", closed(&mut s1)).await;
    let mut client = master.client().await;
    let stats = client.stats().await.unwrap();
    assert!(stats.handshake_failures >= 1, "{stats:?}");
    handshake_from([127, 0, 0, 2], &master.addr, &key())
        .await
        .unwrap();
}

#[tokio::test]
async fn an_address_in_debt_gets_its_failures_late_but_a_peer_with_the_key_at_once() {
    let mut cfg = config();
    // 30 a minute: one failure of debt is answered 2 s late.
    cfg.guard.auth_failures_per_minute = 30;
    let master = TestMaster::start(cfg).await;
    for _ in 0..30 {
        let err = handshake_from([127, 0, 0, 3], &master.addr, &wrong_key())
            .await
            .unwrap_err();
        assert!(matches!(err, ClientError::AuthenticationFailed), "{err:?}");
    }
    let started = Instant::now();
    let late = tokio::spawn({
        let addr = master.addr.clone();
        async move { handshake_from([127, 0, 0, 3], &addr, &wrong_key()).await }
    });
    // Never a refusal before the proof: the right key from the same address gets in now.
    handshake_from([127, 0, 0, 3], &master.addr, &key())
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    let err = late.await.unwrap().unwrap_err();
    assert!(matches!(err, ClientError::AuthenticationFailed), "{err:?}");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    // Other addresses are answered at once.
    let started = Instant::now();
    let err = handshake_from([127, 0, 0, 4], &master.addr, &wrong_key())
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::AuthenticationFailed), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_connection_silent_past_the_first_byte_bound_is_closed_before_the_handshake_deadline() {
    let mut cfg = config();
    cfg.handshake_timeout = Duration::from_secs(30);
    cfg.first_byte_timeout = Duration::from_millis(200);
    let master = TestMaster::start(cfg).await;
    let started = Instant::now();
    let mut silent = connect([127, 0, 0, 5], &master.addr).await;
    within("silent connection closed", closed(&mut silent)).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let mut client = master.client().await;
    within("counted as a failure", async {
        while client.stats().await.unwrap().handshake_failures < 1 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let stats = client.stats().await.unwrap();
    assert_eq!(
        (stats.handshake_failures, stats.probes),
        (1, 0),
        "{stats:?}"
    );
}

#[tokio::test]
async fn a_client_that_never_reads_is_disconnected_and_its_leases_requeued() {
    let mut cfg = config();
    cfg.write_timeout = Duration::from_millis(300);
    let master = TestMaster::start(cfg).await;
    let mut probe = master.client().await;
    let big = Bytes::from(vec![7u8; 200_000]);
    probe
        .put("tasks", vec![big.clone(); 4], Wait::No)
        .await
        .unwrap();
    probe.put("shown", vec![big; 4], Wait::No).await.unwrap();
    let mut conn = taskmill_testkit::raw_session(&master.addr).await;
    conn.send(&taskmill_testkit::lease(1, "tasks", 4, Wait::No))
        .await
        .unwrap();
    // Then a flood of requests whose replies (800 KB each) are never read: the master's
    // writes back up. (Not `Stats`: one connection gets ten of those a second.)
    let flood = async {
        for id in 2.. {
            let peek = ClientMessage::Request {
                id,
                request: Request::Peek {
                    queue: "shown".into(),
                    max: 4,
                },
            };
            if conn.send(&peek).await.is_err() {
                return;
            }
        }
    };
    let started = Instant::now();
    within("master gives up on a client that does not read", flood).await;
    let mut back = Duration::ZERO;
    within("leases given back", async {
        while probe.inspect("tasks").await.unwrap().leased > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        back = started.elapsed();
    })
    .await;
    let tasks = probe.inspect("tasks").await.unwrap();
    assert_eq!((tasks.len, tasks.leased), (4, 0), "nothing lost");
    assert!(back < Duration::from_secs(10), "{back:?}");
}

#[tokio::test]
async fn a_trickling_peer_is_dropped_at_the_handshake_deadline() {
    let master = TestMaster::start(config()).await;
    let mut stream = TcpStream::connect(&master.addr).await.unwrap();
    let started = Instant::now();
    // A header announcing 100 bytes, then one byte at a time, slower than the deadline allows.
    let trickle = async {
        use tokio::io::AsyncWriteExt;
        stream.write_all(&100u32.to_be_bytes()).await?;
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            stream.write_all(&[0]).await?;
        }
        Ok::<_, std::io::Error>(())
    };
    let _ = within("trickle", trickle).await;
    let mut buf = [0u8; 64];
    let closed = within("close", async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return started.elapsed(),
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed < Duration::from_secs(3), "dropped after {closed:?}");
}
