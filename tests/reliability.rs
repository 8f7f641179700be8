//! At-least-once delivery over real sockets: leases that expire, tasks that die, peers that go
//! silent without closing, and a master that drains before it stops.

use std::time::{Duration, Instant};

use taskmill::{Client, ClientError};
use taskmill_protocol::handshake;
use taskmill_protocol::{
    decode_payload, ClientMessage, DeadLetter, Delivery, ErrorKind, MasterMessage, Outcome,
    Request, Wait,
};
use taskmill_testkit::{b, config, fake_master, key, within, TestMaster};
use tokio::net::TcpStream;

/// Polls until `queue` has no leased tasks left, returning how long that took.
async fn until_unleased(probe: &mut Client, queue: &str) -> Duration {
    let started = Instant::now();
    within("leases given back", async {
        while probe.inspect(queue).await.unwrap().leased > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    started.elapsed()
}

#[tokio::test]
async fn an_expired_lease_is_redelivered_and_the_late_completion_is_not_counted() {
    let master = TestMaster::start(config()).await;
    let mut producer = master.client().await;
    producer.put("tasks", vec![b("7")], Wait::No).await.unwrap();
    let mut slow = master.client().await;
    let short = Delivery::Lease { millis: Some(300) };
    let first = slow
        .get_with("tasks", 1, Wait::No, short)
        .await
        .unwrap()
        .remove(0);
    let mut fast = master.client().await;
    let again = within("redelivery", fast.get("tasks", 1, Wait::Forever))
        .await
        .unwrap()
        .remove(0);
    assert_eq!((again.id, again.attempt), (first.id, 2));
    let late = slow
        .complete(
            "tasks",
            "results",
            vec![Outcome {
                task: first.id,
                result: b("49 (late)"),
            }],
            Wait::No,
        )
        .await
        .unwrap();
    assert_eq!((late.done, late.stale), (0, vec![first.id]));
    let on_time = fast
        .complete(
            "tasks",
            "results",
            vec![Outcome {
                task: again.id,
                result: b("49"),
            }],
            Wait::No,
        )
        .await
        .unwrap();
    assert_eq!(on_time.done, 1);
    let results = producer.take("results", 10, Wait::No).await.unwrap();
    assert_eq!(results.len(), 1, "exactly one result recorded");
    assert_eq!(results[0].payload, b("49"));
    let stats = producer.inspect("tasks").await.unwrap();
    assert_eq!(
        (
            stats.expired_total,
            stats.requeued_total,
            stats.settled_total
        ),
        (1, 1, 1)
    );
}

#[tokio::test]
async fn touch_keeps_a_long_task_leased() {
    let master = TestMaster::start(config()).await;
    let mut c = master.client().await;
    c.put("tasks", vec![b("x")], Wait::No).await.unwrap();
    let short = Delivery::Lease { millis: Some(300) };
    let task = c
        .get_with("tasks", 1, Wait::No, short)
        .await
        .unwrap()
        .remove(0);
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(c.touch("tasks", vec![task.id], None).await.unwrap().done, 1);
    }
    assert_eq!(
        c.ack("tasks", vec![task.id]).await.unwrap().done,
        1,
        "held for 600ms on a 300ms lease"
    );
}

#[tokio::test]
async fn a_task_past_max_attempts_is_dead_lettered_and_retrievable() {
    let mut cfg = config();
    cfg.limits.max_attempts = 2;
    let master = TestMaster::start(cfg).await;
    let mut c = master.client().await;
    c.put("tasks", vec![b("poison")], Wait::No).await.unwrap();
    for attempt in 1..=2 {
        let task = c.get("tasks", 1, Wait::No).await.unwrap().remove(0);
        assert_eq!(task.attempt, attempt);
        c.nack("tasks", vec![task.id], Duration::ZERO, "worker crashed")
            .await
            .unwrap();
    }
    assert!(
        c.get("tasks", 1, Wait::No).await.unwrap().is_empty(),
        "not retried again"
    );
    let stats = c.stats().await.unwrap();
    let tasks = stats.queues.iter().find(|q| q.name == "tasks").unwrap();
    let dead = stats
        .queues
        .iter()
        .find(|q| q.name == "tasks.dead")
        .unwrap();
    assert_eq!(
        (tasks.dead_total, dead.len),
        (1, 1),
        "visible through stats"
    );
    let letter: DeadLetter =
        decode_payload(&c.take("tasks.dead", 1, Wait::No).await.unwrap()[0].payload).unwrap();
    assert_eq!((letter.attempts, letter.payload), (2, b("poison")));
    assert_eq!(letter.reason, "nacked: worker crashed");
}

#[tokio::test]
async fn a_nacked_task_comes_back_after_its_delay() {
    let master = TestMaster::start(config()).await;
    let mut c = master.client().await;
    c.put("tasks", vec![b("later")], Wait::No).await.unwrap();
    let task = c.get("tasks", 1, Wait::No).await.unwrap().remove(0);
    let nacked = Instant::now();
    c.nack(
        "tasks",
        vec![task.id],
        Duration::from_millis(300),
        "not yet",
    )
    .await
    .unwrap();
    assert_eq!(c.inspect("tasks").await.unwrap().delayed, 1);
    let again = within("delayed redelivery", c.get("tasks", 1, Wait::Forever))
        .await
        .unwrap();
    assert!(nacked.elapsed() >= Duration::from_millis(300));
    assert_eq!(again[0].attempt, 2);
}

#[tokio::test]
async fn a_half_open_worker_is_detected_within_two_heartbeats_and_its_tasks_requeued() {
    let mut cfg = config();
    cfg.heartbeat_interval = Duration::from_millis(200);
    let master = TestMaster::start(cfg).await;
    let mut probe = master.client().await;
    probe
        .put("tasks", vec![b("1"), b("2")], Wait::No)
        .await
        .unwrap();
    // A worker that takes tasks and then neither reads nor writes, but keeps its socket open.
    let mut conn = taskmill_testkit::raw_session(&master.addr).await;
    conn.send(&taskmill_testkit::lease(1, "tasks", 2, Wait::No))
        .await
        .unwrap();
    assert!(matches!(
        within("tasks", conn.recv()).await.unwrap(),
        Some(MasterMessage::Reply { .. })
    ));
    assert_eq!(probe.inspect("tasks").await.unwrap().leased, 2);
    let detected = until_unleased(&mut probe, "tasks").await;
    // Two intervals of silence, checked once per interval: at most three, plus scheduling.
    assert!(detected < Duration::from_millis(1500), "took {detected:?}");
    assert!(
        detected >= Duration::from_millis(350),
        "too eager: {detected:?}"
    );
    assert_eq!(probe.get("tasks", 5, Wait::No).await.unwrap().len(), 2);
    drop(conn);
}

#[tokio::test]
async fn a_waiting_client_heartbeats_and_is_not_mistaken_for_dead() {
    let mut cfg = config();
    cfg.heartbeat_interval = Duration::from_millis(100);
    let master = TestMaster::start(cfg).await;
    let mut c = master.client().await;
    c.put("tasks", vec![b("x")], Wait::No).await.unwrap();
    c.get("tasks", 1, Wait::No).await.unwrap();
    // Ten heartbeat intervals waiting on an empty queue while holding a lease.
    let got = c.get("other", 1, Wait::Millis(1000)).await.unwrap();
    assert!(got.is_empty());
    assert_eq!(c.inspect("tasks").await.unwrap().leased, 1, "still ours");
}

#[tokio::test]
async fn a_client_gives_up_on_a_master_that_goes_silent() {
    // A master that completes the handshake, then never says another word.
    let (addr, silent) = fake_master(key(), 100).await;
    let mut client = within("connect", Client::connect(&addr, &key()))
        .await
        .unwrap();
    let started = Instant::now();
    let err = within("silent master", client.get("tasks", 1, Wait::Forever))
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Timeout(..)), "{err:?}");
    assert!(err.is_transient());
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    silent.abort();
}

#[tokio::test]
async fn a_draining_master_refuses_new_work_but_accepts_completions_then_stops() {
    let mut cfg = config();
    cfg.shutdown_grace = Duration::from_secs(10);
    let master = TestMaster::start(cfg).await;
    let mut worker = master.client().await;
    worker
        .put("tasks", vec![b("3"), b("4")], Wait::No)
        .await
        .unwrap();
    let held = worker.get("tasks", 1, Wait::No).await.unwrap().remove(0);
    let addr = master.addr.clone();
    let started = Instant::now();
    let stopping = tokio::spawn(master.stop());
    // The notice arrives with the next reply; new work is refused from now on.
    let refused = within("refused put", async {
        loop {
            match worker.put("tasks", vec![b("5")], Wait::No).await {
                Ok(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                Err(err) => return err,
            }
        }
    })
    .await;
    assert!(
        matches!(
            refused,
            ClientError::Server {
                kind: ErrorKind::ShuttingDown,
                ..
            }
        ),
        "{refused:?}"
    );
    assert!(worker.master_shutting_down());
    assert!(matches!(
        worker.get("tasks", 1, Wait::No).await,
        Err(ClientError::Server {
            kind: ErrorKind::ShuttingDown,
            ..
        })
    ));
    assert!(
        TcpStream::connect(&addr).await.is_err(),
        "no new connections while draining"
    );
    let done = worker
        .complete(
            "tasks",
            "results",
            vec![Outcome {
                task: held.id,
                result: b("9"),
            }],
            Wait::No,
        )
        .await
        .unwrap();
    assert_eq!(
        done.done, 1,
        "an in-flight completion is accepted while draining"
    );
    within("master stop", stopping).await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the master stopped once no lease was left, not at the end of its grace"
    );
}

/// Reads frames for `span`, returning the arrival time of each heartbeat.
async fn heartbeats_during(
    conn: &mut handshake::ClientConnection<TcpStream>,
    span: Duration,
) -> Vec<Instant> {
    let mut beats = Vec::new();
    let end = tokio::time::Instant::now() + span;
    while let Ok(frame) = tokio::time::timeout_at(end, conn.recv()).await {
        if let Some(MasterMessage::Heartbeat) = frame.unwrap() {
            beats.push(Instant::now());
        }
    }
    beats
}

#[tokio::test]
async fn the_master_heartbeats_a_waiting_client_within_each_interval_and_an_idle_one_never() {
    let mut cfg = config();
    let beat = Duration::from_millis(200);
    cfg.heartbeat_interval = beat;
    let master = TestMaster::start(cfg).await;
    let stream = TcpStream::connect(&master.addr).await.unwrap();
    let (mut conn, _) = within("handshake", handshake::connect(stream, &key(), "test"))
        .await
        .unwrap();
    assert!(
        heartbeats_during(&mut conn, beat * 3).await.is_empty(),
        "an idle client is not sent heartbeats it would never read"
    );
    conn.send(&ClientMessage::Request {
        id: 1,
        request: Request::Get {
            queue: "empty".into(),
            max: 1,
            wait: Wait::Forever,
            delivery: Delivery::Remove,
        },
    })
    .await
    .unwrap();
    let waited = Instant::now();
    // Keep the master from presuming us dead while we listen.
    let beats = within("heartbeats", async {
        let mut all = Vec::new();
        for _ in 0..8 {
            conn.send(&ClientMessage::Heartbeat).await.unwrap();
            all.extend(heartbeats_during(&mut conn, beat / 2).await);
        }
        all
    })
    .await;
    assert!(
        beats.len() >= 3,
        "{} heartbeats in {:?}",
        beats.len(),
        beat * 4
    );
    let mut previous = waited;
    for at in beats {
        let gap = at - previous;
        assert!(
            gap < beat * 2,
            "{gap:?} of silence: a client would give up at {:?}",
            beat * 2
        );
        previous = at;
    }
}
