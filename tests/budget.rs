//! What one connection and one request may cost a master: waiting requests charged in bytes,
//! a memory budget that refuses new work while what the master holds still moves, a cap on
//! items per request, and `Stats` paced per connection. Over real sockets, on loopback.

use std::time::{Duration, Instant};

use bytes::Bytes;
use taskmill::ClientError;
use taskmill_broker::http::HttpConfig;
use taskmill_broker::MAX_ITEMS;
use taskmill_protocol::{Delivery, ErrorKind, Reply, Request, Wait};
use taskmill_testkit::http::get;
use taskmill_testkit::{b, config, within, TestMaster};

fn put(queue: &str, items: Vec<Bytes>, wait: Wait) -> Request {
    Request::Put {
        queue: queue.into(),
        items,
        wait,
        reply_to: None,
    }
}

async fn stats_json(http: std::net::SocketAddr) -> serde_json::Value {
    serde_json::from_str(&get(http, "/api/stats", &[]).await.body).unwrap()
}

fn refused_as(reply: &Reply, want: ErrorKind) -> bool {
    matches!(reply, Reply::Error { kind, .. } if *kind == want)
}

#[tokio::test]
async fn waiting_puts_are_held_within_the_connections_byte_budget() {
    let mut cfg = config();
    cfg.max_waiting_bytes = 100_000;
    let (master, http) = TestMaster::start_with_http(cfg, HttpConfig::default()).await;
    let mut client = master.client().await;
    client
        .request(Request::Declare {
            queue: "full".into(),
            capacity: Some(1),
        })
        .await
        .unwrap();
    client.put("full", vec![b("x")], Wait::No).await.unwrap();

    // Ten items of 4,000 bytes: charged 40,160 bytes while waiting (16 an item).
    let batch = vec![Bytes::from(vec![1u8; 4000]); 10];
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(
            client
                .submit(put("full", batch.clone(), Wait::Forever))
                .await
                .unwrap(),
        );
    }
    let (id, reply) = within("the third put's refusal", client.next_reply())
        .await
        .unwrap();
    assert_eq!(id, ids[2], "the first two wait");
    assert!(
        refused_as(&reply, ErrorKind::TooManyWaiting),
        "the third would take the connection past its 100,000 bytes: {reply:?}"
    );
    let memory = &stats_json(http).await["memory"];
    assert_eq!(memory["waiting_bytes"], 2 * 40_160);
    assert_eq!(memory["limit_bytes"], taskmill_broker::DEFAULT_MAX_MEMORY);

    // Another connection has a budget of its own.
    let mut other = master.client().await;
    other
        .submit(put("full", batch, Wait::Forever))
        .await
        .unwrap();
    other.request(Request::Ping).await.unwrap();
    let memory = &stats_json(http).await["memory"];
    assert_eq!(memory["waiting_bytes"], 3 * 40_160);
    // The wire's Stats carries the same totals.
    let wire = master.client().await.stats().await.unwrap().memory;
    assert_eq!(wire.waiting_bytes, 3 * 40_160);
    assert_eq!(wire.limit_bytes, Some(taskmill_broker::DEFAULT_MAX_MEMORY));

    // Closing a connection lets go of what its requests held.
    drop(client);
    drop(other);
    let deadline = Instant::now() + Duration::from_secs(10);
    while stats_json(http).await["memory"]["waiting_bytes"] != 0 {
        assert!(Instant::now() < deadline, "waiting bytes never released");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    master.stop().await;
}

#[tokio::test]
async fn past_the_memory_budget_puts_are_refused_until_tasks_are_taken() {
    let mut cfg = config();
    cfg.limits.max_memory = 1 << 20;
    let (master, http) = TestMaster::start_with_http(cfg, HttpConfig::default()).await;
    let mut client = master.client().await;
    let item = Bytes::from(vec![7u8; 10_000]);
    let mut accepted = 0;
    let refusal = loop {
        match client.put("q", vec![item.clone(); 10], Wait::No).await {
            Ok(put) => accepted += put.accepted,
            Err(err) => break err,
        }
        assert!(accepted < 200, "1 MiB cannot hold 200 items of 10 KB");
    };
    assert!(
        matches!(
            refusal,
            ClientError::Server {
                kind: ErrorKind::MemoryFull,
                ..
            }
        ),
        "{refusal}"
    );
    assert!(accepted >= 90, "about 100 fit in 1 MiB, {accepted} did");
    let memory = &stats_json(http).await["memory"];
    let held = memory["held_bytes"].as_u64().unwrap();
    assert!(held <= 1 << 20, "{held} bytes held");
    assert_eq!(memory["limit_bytes"], 1 << 20);
    let metrics = get(http, "/metrics", &[]).await.body;
    assert!(metrics.contains(&format!("taskmill_memory_held_bytes {held}")));
    assert!(metrics.contains("taskmill_memory_limit_bytes 1048576"));

    // Leased tasks given back (the connection closes) still go back; taking some for good
    // makes room again.
    client
        .get_with("q", 10, Wait::No, Delivery::Lease { millis: None })
        .await
        .unwrap();
    drop(client);
    let mut client = master.client().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while counts(&mut client, "q").await != (accepted.into(), 0) {
        assert!(Instant::now() < deadline, "the leases never came back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    client.take("q", 20, Wait::No).await.unwrap();
    client.put("q", vec![item; 10], Wait::No).await.unwrap();
    master.stop().await;
}

/// How many items `queue` has queued and leased.
async fn counts(client: &mut taskmill::Client, queue: &str) -> (u64, u64) {
    let reply = client
        .request(Request::Inspect {
            queue: queue.into(),
        })
        .await
        .unwrap();
    match reply {
        Reply::Queue(q) => (q.len, q.leased),
        other => panic!("not a queue's stats: {other:?}"),
    }
}

#[tokio::test]
async fn a_request_of_more_items_than_the_cap_is_refused_whole() {
    let master = TestMaster::start(config()).await;
    let mut client = master.client().await;
    let reply = client
        .request(put("q", vec![Bytes::new(); MAX_ITEMS + 1], Wait::No))
        .await;
    assert!(
        matches!(
            &reply,
            Err(ClientError::Server { kind: ErrorKind::BadRequest, message }) if message.contains("65536")
        ),
        "{reply:?}"
    );
    let put = client
        .put("q", vec![Bytes::new(); MAX_ITEMS], Wait::No)
        .await
        .unwrap();
    assert_eq!(
        put.accepted as usize, MAX_ITEMS,
        "the cap itself is allowed"
    );
    let nack = client
        .request(Request::Nack {
            queue: "q".into(),
            tasks: vec![1; MAX_ITEMS + 1],
            delay_ms: 0,
            reason: String::new(),
            fatal: false,
        })
        .await;
    assert!(matches!(
        nack,
        Err(ClientError::Server {
            kind: ErrorKind::BadRequest,
            ..
        })
    ));
    master.stop().await;
}

#[tokio::test]
async fn stats_are_answered_at_most_ten_times_a_second_per_connection() {
    let master = TestMaster::start(config()).await;
    let mut client = master.client().await;
    let start = Instant::now();
    for _ in 0..5 {
        client.request(Request::Stats).await.unwrap();
    }
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(400),
        "5 stats in {took:?}: the 2nd to 5th wait 100 ms each"
    );
    // Other requests on another connection are not held up meanwhile.
    let mut other = master.client().await;
    let ping = Instant::now();
    other.request(Request::Ping).await.unwrap();
    assert!(ping.elapsed() < Duration::from_secs(5));
    master.stop().await;
}

#[tokio::test]
async fn complete_and_get_with_many_stale_outcomes_leases_nothing_it_could_not_send() {
    let mut cfg = config();
    cfg.max_frame = taskmill_broker::MIN_MAX_FRAME;
    let master = TestMaster::start(cfg).await;
    let mut client = master.client().await;
    client
        .put("q", vec![Bytes::from(vec![1u8; 3000])], Wait::No)
        .await
        .unwrap();
    // 400 ids this connection never held, each 5 bytes on the wire: the stale list and the
    // queued task would not fit one 4 KiB reply together.
    let outcomes = (100_000..100_400)
        .map(|task| taskmill_protocol::Outcome {
            task,
            result: Bytes::new(),
        })
        .collect();
    let reply = client
        .request(Request::CompleteAndGet {
            queue: "q".into(),
            results: "r".into(),
            outcomes,
            max: 1,
            wait: Wait::No,
            lease_ms: None,
            reply: false,
        })
        .await
        .unwrap();
    match reply {
        Reply::Worked {
            done, stale, tasks, ..
        } => {
            assert_eq!((done, stale.len()), (0, 400));
            assert!(tasks.is_empty(), "no task fits beside 400 stale ids");
        }
        other => panic!("expected Worked, got {other:?}"),
    }
    assert_eq!(counts(&mut client, "q").await, (1, 0), "nothing was leased");
    master.stop().await;
}
