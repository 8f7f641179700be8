//! The sealed session against someone on the path: a loopback proxy between a client and a
//! plaintext master flips a bit in, replays, drops or reorders one frame, and the connection
//! ends with a clear error instead of acting on it.

use taskmill::{Client, ClientError, Worker, WorkerConfig};
use taskmill_protocol::handshake::{self, ClientConnection};
use taskmill_protocol::{CodecError, MasterMessage, Request, Wait};
use taskmill_squares::job::{self, JobConfig};
use taskmill_squares::Squares;
use taskmill_testkit::{b, config, key, within, TestMaster};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Dir {
    ToMaster,
    ToClient,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Action {
    /// Flip one bit in the frame's last byte.
    Flip,
    /// Send the frame twice.
    Replay,
    Drop,
    /// Hold the frame and send it after the next one.
    Swap,
}

/// One frame to tamper with: frame `index` (0 is the handshake message) going `dir`.
#[derive(Debug, Clone, Copy)]
struct Tamper {
    dir: Dir,
    index: usize,
    action: Action,
}

async fn read_frame(from: &mut OwnedReadHalf) -> Option<Vec<u8>> {
    let mut header = [0u8; 4];
    from.read_exact(&mut header).await.ok()?;
    let mut frame = header.to_vec();
    frame.resize(4 + u32::from_be_bytes(header) as usize, 0);
    from.read_exact(&mut frame[4..]).await.ok()?;
    Some(frame)
}

/// Copies frames from `from` to `to`, doing `tamper` to one if it is for this direction.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, dir: Dir, tamper: Tamper) {
    let mut held: Option<Vec<u8>> = None;
    let mut index = 0;
    while let Some(mut frame) = read_frame(&mut from).await {
        let this = index;
        index += 1;
        let mut out = vec![];
        if tamper.dir == dir && tamper.index == this {
            match tamper.action {
                Action::Flip => {
                    *frame.last_mut().unwrap() ^= 0x01;
                    out.push(frame);
                }
                Action::Replay => {
                    out.push(frame.clone());
                    out.push(frame);
                }
                Action::Drop => {}
                Action::Swap => held = Some(frame),
            }
        } else {
            out.push(frame);
            out.extend(held.take());
        }
        for frame in out {
            if to.write_all(&frame).await.is_err() {
                return;
            }
        }
    }
    let _ = to.shutdown().await;
}

/// A proxy on a fresh loopback port to `master`: it does `tamper` on its first connection
/// and passes every later one through untouched.
async fn proxy(master: &str, tamper: Tamper) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let master = master.to_owned();
    tokio::spawn(async move {
        let mut tamper = Some(tamper);
        while let Ok((client, _)) = listener.accept().await {
            let Ok(upstream) = TcpStream::connect(&master).await else {
                return;
            };
            // Later connections get a tamper that never matches.
            let this = tamper.take().unwrap_or(Tamper {
                dir: Dir::ToClient,
                index: usize::MAX,
                action: Action::Drop,
            });
            tokio::spawn(async move {
                let (client_read, client_write) = client.into_split();
                let (master_read, master_write) = upstream.into_split();
                tokio::join!(
                    pump(client_read, master_write, Dir::ToMaster, this),
                    pump(master_read, client_write, Dir::ToClient, this),
                );
            });
        }
    });
    addr
}

/// A raw session through `addr`.
async fn session(addr: &str) -> ClientConnection<TcpStream> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (conn, _) = within("handshake", handshake::connect(stream, &key(), "proxy"))
        .await
        .expect("the handshake passes the proxy untouched");
    assert!(conn.is_encrypted());
    conn
}

fn put(id: u64, item: &str) -> taskmill_protocol::ClientMessage {
    taskmill_protocol::ClientMessage::Request {
        id,
        request: Request::Put {
            queue: "q".into(),
            items: vec![b(item)],
            wait: Wait::No,
            reply_to: None,
        },
    }
}

/// Sends three puts at once through a proxy doing `action` to the master's `index`th frame,
/// and reads replies until the connection ends: the error, and the replies read before it.
async fn replies_until_tampered(action: Action, index: usize) -> (CodecError, usize) {
    let master = TestMaster::start(config()).await;
    let tamper = Tamper {
        dir: Dir::ToClient,
        index,
        action,
    };
    let mut conn = session(&proxy(&master.addr, tamper).await).await;
    for id in 1..=3 {
        conn.feed(&put(id, "x")).await.unwrap();
    }
    conn.flush().await.unwrap();
    let mut replies = 0;
    loop {
        match within("replies", conn.recv()).await {
            Ok(Some(MasterMessage::Reply { .. })) => replies += 1,
            Ok(other) => panic!("{action:?}: the connection went on: {other:?}"),
            Err(err) => return (err, replies),
        }
    }
}

#[tokio::test]
async fn a_frame_altered_replayed_dropped_or_reordered_ends_the_connection_with_a_clear_error() {
    for (action, index, good) in [
        (Action::Flip, 1, 0),
        (Action::Replay, 1, 1),
        (Action::Drop, 1, 0),
        (Action::Swap, 1, 0),
        (Action::Flip, 3, 2),
    ] {
        let (err, replies) = replies_until_tampered(action, index).await;
        assert!(matches!(err, CodecError::Tampered), "{action:?}: {err:?}");
        assert!(
            err.to_string().contains("failed its integrity check"),
            "{err}"
        );
        assert_eq!(replies, good, "{action:?}: replies before the bad frame");
    }
}

#[tokio::test]
async fn a_request_altered_on_the_way_is_not_carried_out_and_the_master_hangs_up() {
    let master = TestMaster::start(config()).await;
    for (action, index) in [
        (Action::Flip, 1),
        (Action::Replay, 1),
        (Action::Drop, 1),
        (Action::Swap, 1),
    ] {
        let tamper = Tamper {
            dir: Dir::ToMaster,
            index,
            action,
        };
        let mut conn = session(&proxy(&master.addr, tamper).await).await;
        for id in 1..=2 {
            conn.feed(&put(id, &format!("{action:?}"))).await.unwrap();
        }
        conn.flush().await.unwrap();
        // Whatever came before the bad frame is answered; then the master closes.
        loop {
            match within("the master hanging up", conn.recv()).await {
                Ok(Some(MasterMessage::Reply { .. })) => continue,
                Ok(None) | Err(CodecError::Io(_)) => break,
                other => panic!("{action:?}: {other:?}"),
            }
        }
    }
    // Replayed: the first put went in once, its copy was refused. No other put got in.
    let mut reader = master.client().await;
    assert_eq!(
        reader.inspect("q").await.unwrap().len,
        1,
        "only the replayed put's original got in"
    );
}

#[tokio::test]
async fn welcome_fields_cannot_be_altered() {
    let master = TestMaster::start(config()).await;
    let tamper = Tamper {
        dir: Dir::ToClient,
        index: 0,
        action: Action::Flip,
    };
    let addr = proxy(&master.addr, tamper).await;
    let err = within("connect", Client::connect(&addr, &key()))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClientError::MasterNotAuthenticated(_)),
        "{err:?}"
    );
    // And a hello altered on the way is refused by the master.
    let tamper = Tamper {
        dir: Dir::ToMaster,
        index: 0,
        action: Action::Flip,
    };
    let addr = proxy(&master.addr, tamper).await;
    let err = within("connect", Client::connect(&addr, &key()))
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::AuthenticationFailed), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_connection_is_tampered_with_reconnects_and_the_job_completes() {
    let master = TestMaster::start(config()).await;
    // The worker's first connection: the master's 3rd frame to it has a bit flipped.
    let tamper = Tamper {
        dir: Dir::ToClient,
        index: 3,
        action: Action::Flip,
    };
    let mut worker = WorkerConfig::new(proxy(&master.addr, tamper).await, key());
    worker.max_backoff = std::time::Duration::from_millis(100);
    let stop = CancellationToken::new();
    let worker = tokio::spawn(Worker::new(worker, Squares::new()).run(stop.clone()));
    let report = within(
        "a job through a worker that lost one connection to tampering",
        job::run(
            &master.addr,
            &key(),
            &JobConfig::new(2000),
            &CancellationToken::new(),
        ),
    )
    .await
    .unwrap();
    assert!(report.success(), "{report:?}");
    assert_eq!(report.verified, 2000);
    stop.cancel();
    let report = within("worker exit", worker).await.unwrap().unwrap();
    assert!(report.connections >= 2, "it reconnected: {report:?}");
}
