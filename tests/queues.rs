//! Python `Queue` semantics, remotely: blocking and non-blocking put/get, capacity, waiter
//! order, disconnects while waiting, leases and errors, all through real sockets.

use std::time::{Duration, Instant};

use bytes::Bytes;
use taskmill::ClientError;
use taskmill_protocol::handshake;
use taskmill_protocol::{ClientMessage, ErrorKind, MasterMessage, Outcome, Reply, Request, Wait};
use taskmill_testkit::{b, config, within, TestMaster};
use tokio::net::TcpStream;

/// Polls `inspect` until the queue shows `getters` waiting getters.
async fn until_getters(master: &TestMaster, queue: &str, getters: u64) {
    let mut probe = master.client().await;
    within("waiting getters", async {
        while probe.inspect(queue).await.map_or(0, |s| s.waiting_getters) != getters {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn put_then_get_returns_items_in_order_and_qsize_tracks_them() {
    let master = TestMaster::start(config()).await;
    let mut c = master.client().await;
    let put = c
        .put("q", vec![b("a"), b("b"), b("c")], Wait::No)
        .await
        .unwrap();
    assert_eq!(put.accepted, 3);
    let stats = c.inspect("q").await.unwrap();
    assert_eq!(
        (stats.len, stats.is_empty(), stats.is_full()),
        (3, false, false)
    );
    let got = c.take("q", 2, Wait::No).await.unwrap();
    assert_eq!(
        got.iter().map(|t| t.payload.clone()).collect::<Vec<_>>(),
        [b("a"), b("b")]
    );
    assert_eq!(got[0].id, put.first_id);
    let got = c.take("q", 5, Wait::No).await.unwrap();
    assert_eq!(got.len(), 1);
    assert!(c.inspect("q").await.unwrap().is_empty());
}

#[tokio::test]
async fn get_nowait_on_empty_and_put_nowait_on_full_answer_at_once() {
    let master = TestMaster::start(config()).await;
    let mut c = master.client().await;
    assert!(c.take("q", 1, Wait::No).await.unwrap().is_empty(), "Empty");
    let declared = c.declare("q", Some(2)).await.unwrap();
    assert_eq!(declared.capacity, Some(2));
    let put = c
        .put("q", vec![b("1"), b("2"), b("3")], Wait::No)
        .await
        .unwrap();
    assert_eq!(put.accepted, 2, "Full after two: the third was not queued");
    assert!(c.inspect("q").await.unwrap().is_full());
    let again = c.put("q", vec![b("x")], Wait::No).await.unwrap();
    assert_eq!(again.accepted, 0);
}

#[tokio::test]
async fn a_blocking_get_times_out_empty_after_its_timeout() {
    let master = TestMaster::start(config()).await;
    let mut c = master.client().await;
    let started = Instant::now();
    let got = c.get("q", 1, Wait::Millis(300)).await.unwrap();
    assert!(got.is_empty());
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(c.inspect("q").await.unwrap().waiting_getters, 0);
}

#[tokio::test]
async fn a_blocking_get_is_woken_by_another_clients_put_without_blocking_others() {
    let master = TestMaster::start(config()).await;
    let mut getter = master.client().await;
    let waiting = tokio::spawn(async move { getter.take("q", 10, Wait::Forever).await });
    until_getters(&master, "q", 1).await;
    // Other clients are served while the getter waits.
    let mut other = master.client().await;
    other.ping().await.unwrap();
    other.put("q", vec![b("hello")], Wait::No).await.unwrap();
    let got = within("woken getter", waiting).await.unwrap().unwrap();
    assert_eq!(got[0].payload, b("hello"));
}

#[tokio::test]
async fn a_blocking_put_waits_for_room_and_times_out_full() {
    let master = TestMaster::start(config()).await;
    let mut c = master.client().await;
    c.declare("q", Some(1)).await.unwrap();
    c.put("q", vec![b("first")], Wait::No).await.unwrap();
    let started = Instant::now();
    let put = c
        .put("q", vec![b("second")], Wait::Millis(300))
        .await
        .unwrap();
    assert_eq!(put.accepted, 0, "Full when the timeout passed");
    assert!(started.elapsed() >= Duration::from_millis(300));

    let mut putter = master.client().await;
    let waiting =
        tokio::spawn(async move { putter.put("q", vec![b("second")], Wait::Forever).await });
    let mut probe = master.client().await;
    within("waiting putter", async {
        while probe.inspect("q").await.unwrap().waiting_putters != 1 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    c.take("q", 1, Wait::No).await.unwrap();
    assert_eq!(
        within("putter", waiting).await.unwrap().unwrap().accepted,
        1
    );
    let rest = c.take("q", 5, Wait::No).await.unwrap();
    assert_eq!(rest[0].payload, b("second"));
}

#[tokio::test]
async fn waiting_getters_are_served_in_the_order_they_arrived() {
    let master = TestMaster::start(config()).await;
    let mut waiters = Vec::new();
    for i in 0..3u64 {
        let mut c = master.client().await;
        waiters.push(tokio::spawn(
            async move { c.take("q", 1, Wait::Forever).await },
        ));
        until_getters(&master, "q", i + 1).await;
    }
    let mut producer = master.client().await;
    producer
        .put("q", vec![b("1"), b("2"), b("3")], Wait::No)
        .await
        .unwrap();
    for (waiter, expected) in waiters.into_iter().zip(["1", "2", "3"]) {
        let got = within("waiter", waiter).await.unwrap().unwrap();
        assert_eq!(got[0].payload, b(expected));
    }
}

#[tokio::test]
async fn a_waiter_that_disconnects_leaves_nothing_behind() {
    let master = TestMaster::start(config()).await;
    let mut doomed = master.client().await;
    let waiting = tokio::spawn(async move { doomed.take("q", 1, Wait::Forever).await });
    until_getters(&master, "q", 1).await;
    waiting.abort();
    let _ = waiting.await;
    until_getters(&master, "q", 0).await;
    let mut c = master.client().await;
    c.put("q", vec![b("kept")], Wait::No).await.unwrap();
    let got = c.take("q", 1, Wait::No).await.unwrap();
    assert_eq!(
        got[0].payload,
        b("kept"),
        "the item did not go to the vanished waiter"
    );
}

#[tokio::test]
async fn worker_disconnect_requeues_its_leased_tasks() {
    let master = TestMaster::start(config()).await;
    let mut producer = master.client().await;
    producer
        .put("tasks", vec![b("1"), b("2"), b("3")], Wait::No)
        .await
        .unwrap();
    let mut worker = master.client().await;
    let leased = worker.get("tasks", 2, Wait::No).await.unwrap();
    assert_eq!(producer.inspect("tasks").await.unwrap().leased, 2);
    drop(worker);
    let mut other = master.client().await;
    let again = within("requeued tasks", async {
        loop {
            let stats = other.inspect("tasks").await.unwrap();
            if stats.leased == 0 {
                return other.get("tasks", 10, Wait::No).await.unwrap();
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert_eq!(again.len(), 3);
    assert_eq!(again[0].id, leased[0].id, "requeued at the front, in order");
    assert_eq!((again[0].attempt, again[2].attempt), (2, 1));
}

#[tokio::test]
async fn complete_moves_a_result_and_settles_its_lease_once() {
    let master = TestMaster::start(config()).await;
    let mut c = master.client().await;
    c.put("tasks", vec![b("7")], Wait::No).await.unwrap();
    let task = c.get("tasks", 1, Wait::No).await.unwrap().remove(0);
    let outcome = Outcome {
        task: task.id,
        result: b("49"),
    };
    let settled = c
        .complete("tasks", "results", vec![outcome.clone()], Wait::No)
        .await
        .unwrap();
    assert_eq!((settled.done, settled.pending), (1, 0));
    let twice = c
        .complete("tasks", "results", vec![outcome], Wait::No)
        .await
        .unwrap();
    assert_eq!(
        (twice.done, twice.stale),
        (0, vec![task.id]),
        "never counted twice"
    );
    let results = c.take("results", 10, Wait::No).await.unwrap();
    assert_eq!(results.len(), 1);
    assert_eq!(results[0].payload, b("49"));
    let tasks = c.inspect("tasks").await.unwrap();
    assert_eq!((tasks.len, tasks.leased, tasks.settled_total), (0, 0, 1));
}

#[tokio::test]
async fn bad_requests_get_typed_errors_and_the_connection_stays_usable() {
    let mut cfg = config();
    cfg.limits.max_queues = 2;
    let master = TestMaster::start(cfg).await;
    let mut c = master.client().await;
    let kind = |r: Result<_, ClientError>| match r {
        Err(ClientError::Server { kind, .. }) => kind,
        other => panic!("expected a server error, got {other:?}"),
    };
    assert_eq!(
        kind(c.put("bad name", vec![], Wait::No).await.map(|_| ())),
        ErrorKind::BadQueueName
    );
    assert_eq!(
        kind(c.inspect("absent").await.map(|_| ())),
        ErrorKind::NoSuchQueue
    );
    assert_eq!(
        kind(c.take("q", 0, Wait::No).await.map(|_| ())),
        ErrorKind::BadRequest
    );
    c.declare("a", None).await.unwrap();
    c.declare("b", None).await.unwrap();
    assert_eq!(
        kind(c.declare("c", None).await.map(|_| ())),
        ErrorKind::TooManyQueues
    );
    let huge = Bytes::from(vec![0u8; c.max_frame() - 40]);
    let err = c.put("a", vec![huge], Wait::No).await;
    assert_eq!(kind(err.map(|_| ())), ErrorKind::PayloadTooLarge);
    c.ping().await.unwrap();
}

#[tokio::test]
async fn pipelined_requests_are_answered_and_waiting_ones_are_bounded() {
    let mut cfg = config();
    cfg.max_waiting = 2;
    let master = TestMaster::start(cfg).await;
    let stream = TcpStream::connect(&master.addr).await.unwrap();
    let (mut conn, _) = within(
        "handshake",
        handshake::connect(stream, &taskmill_testkit::key(), "test"),
    )
    .await
    .unwrap();
    let get = |id| ClientMessage::Request {
        id,
        request: Request::Get {
            queue: "q".into(),
            max: 1,
            wait: Wait::Forever,
            delivery: taskmill_protocol::Delivery::Remove,
        },
    };
    for id in 1..=3 {
        conn.send(&get(id)).await.unwrap();
    }
    conn.send(&ClientMessage::Request {
        id: 4,
        request: Request::Put {
            queue: "q".into(),
            items: vec![b("x"), b("y")],
            wait: Wait::No,
            reply_to: None,
        },
    })
    .await
    .unwrap();
    let mut replies = std::collections::HashMap::new();
    while replies.len() < 4 {
        match within("replies", conn.recv()).await.unwrap().unwrap() {
            MasterMessage::Reply { id, reply } => replies.insert(id, reply),
            other => panic!("unexpected {other:?}"),
        };
    }
    assert!(matches!(
        replies[&3],
        Reply::Error {
            kind: ErrorKind::TooManyWaiting,
            ..
        }
    ));
    assert!(matches!(&replies[&1], Reply::Tasks(t) if t[0].payload == b("x")));
    assert!(matches!(&replies[&2], Reply::Tasks(t) if t[0].payload == b("y")));
    assert!(matches!(replies[&4], Reply::Put { accepted: 2, .. }));
}

#[tokio::test]
async fn shutdown_answers_waiting_requests_and_tells_clients() {
    let master = TestMaster::start(config()).await;
    let mut waiting_client = master.client().await;
    let waiting = tokio::spawn(async move {
        let first = waiting_client.take("q", 1, Wait::Forever).await;
        let second = waiting_client.ping().await;
        (first, second, waiting_client.master_shutting_down())
    });
    until_getters(&master, "q", 1).await;
    let addr = master.addr.clone();
    master.stop().await;
    let (first, second, told) = within("waiting client", waiting).await.unwrap();
    assert!(first.unwrap().is_empty(), "the wait ended with Empty");
    assert!(
        matches!(second, Err(ClientError::ShuttingDown)),
        "{second:?}"
    );
    assert!(told);
    let refused = taskmill::Client::connect(&addr, &taskmill_testkit::key()).await;
    assert!(
        matches!(refused, Err(ClientError::Connect { .. })),
        "{refused:?}"
    );
}
