//! The throughput paths keep the core's semantics: `CompleteAndGet` (a completion carrying the
//! next get) and pipelined requests with out-of-order replies, answered even when a frame that
//! ends the connection, or the end of the stream, follows them. The squares job with large
//! batches and a deep prefetch window is in end_to_end.rs.

use std::collections::HashMap;

use bytes::BytesMut;
use taskmill::{Client, Worked};
use taskmill_protocol::codec::HANDSHAKE_MAX_FRAME;
use taskmill_protocol::handshake::{Binding, ClientHello};
use taskmill_protocol::seal::Side;
use taskmill_protocol::{
    ClientHandshake, ClientMessage, Connection, Delivery, MasterHandshake, MasterMessage,
    MessageCodec, Outcome, Reply, Request, Wait,
};
use taskmill_testkit::{b, config, key, within, TestMaster};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::codec::Encoder;

/// A worker's step on "tasks": complete `done` (if any) with a result, then lease up to `max`.
async fn step(c: &mut Client, done: Option<u64>, max: u32, wait: Wait) -> Worked {
    let outcomes = done
        .map(|task| Outcome {
            task,
            result: b("r"),
        })
        .into_iter()
        .collect();
    c.complete_and_get("tasks", "results", outcomes, max, wait)
        .await
        .unwrap()
}

#[tokio::test]
async fn complete_and_get_settles_then_leases_the_next_tasks_in_one_round_trip() {
    let master = TestMaster::start(config()).await;
    let mut c = master.client().await;
    c.put("tasks", vec![b("1"), b("2"), b("3")], Wait::No)
        .await
        .unwrap();
    let first = c.get("tasks", 1, Wait::No).await.unwrap().remove(0);
    let worked = step(&mut c, Some(first.id), 2, Wait::No).await;
    assert_eq!((worked.settled.done, worked.settled.pending), (1, 0));
    let next: Vec<_> = worked.tasks.iter().map(|t| t.payload.clone()).collect();
    assert_eq!(next, vec![b("2"), b("3")], "the next tasks, in order");
    let tasks = c.inspect("tasks").await.unwrap();
    assert_eq!(
        (tasks.len, tasks.leased, tasks.settled_total),
        (0, 2, 1),
        "the new tasks are leased to this connection"
    );
    // Completing the same task again is stale, and the get part still runs (empty queue).
    let again = step(&mut c, Some(first.id), 2, Wait::No).await;
    assert_eq!(
        (again.settled.done, again.settled.stale),
        (0, vec![first.id])
    );
    assert!(again.tasks.is_empty());
    let results = c.take("results", 10, Wait::No).await.unwrap();
    assert_eq!(results.len(), 1, "one result, never two");
}

#[tokio::test]
async fn complete_and_get_makes_no_get_while_results_are_left_pending() {
    let master = TestMaster::start(config()).await;
    let mut c = master.client().await;
    c.declare("results", Some(1)).await.unwrap();
    c.put("results", vec![b("full")], Wait::No).await.unwrap();
    c.put("tasks", vec![b("1"), b("2")], Wait::No)
        .await
        .unwrap();
    let first = c.get("tasks", 1, Wait::No).await.unwrap().remove(0);
    let worked = step(&mut c, Some(first.id), 1, Wait::Millis(50)).await;
    assert_eq!((worked.settled.done, worked.settled.pending), (0, 1));
    assert!(worked.tasks.is_empty(), "no new lease while a result waits");
    let tasks = c.inspect("tasks").await.unwrap();
    assert_eq!(
        (tasks.len, tasks.leased),
        (1, 1),
        "the first lease is still held"
    );
}

#[tokio::test]
async fn complete_and_get_waits_for_the_next_task_within_its_deadline() {
    let master = TestMaster::start(config()).await;
    let mut worker = master.client().await;
    let mut producer = master.client().await;
    producer.put("tasks", vec![b("1")], Wait::No).await.unwrap();
    let first = worker.get("tasks", 1, Wait::No).await.unwrap().remove(0);
    let waiting = tokio::spawn(async move {
        let worked = step(&mut worker, Some(first.id), 1, Wait::Millis(10_000)).await;
        (worker, worked)
    });
    // The completion is processed before the get part: its result shows up first. Whether the
    // next put then meets a waiting get or an immediate one, the worker gets it.
    within("the result", async {
        while producer.inspect("results").await.map_or(0, |q| q.len) == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    producer.put("tasks", vec![b("2")], Wait::No).await.unwrap();
    let (_worker, worked) = within("the waiting get", waiting).await.unwrap();
    assert_eq!(worked.settled.done, 1);
    assert_eq!(worked.tasks.len(), 1);
    assert_eq!(worked.tasks[0].payload, b("2"));

    let mut lone = master.client().await;
    let empty = step(&mut lone, None, 1, Wait::Millis(50)).await;
    assert!(
        empty.tasks.is_empty(),
        "the wait ends empty (Python's Empty)"
    );
}

#[tokio::test]
async fn a_draining_master_takes_the_completion_but_leases_nothing_more() {
    let mut cfg = config();
    cfg.shutdown_grace = std::time::Duration::from_secs(10);
    let master = TestMaster::start(cfg).await;
    let mut c = master.client().await;
    c.put("tasks", vec![b("1"), b("2")], Wait::No)
        .await
        .unwrap();
    let held = c.get("tasks", 1, Wait::No).await.unwrap().remove(0);
    let stopping = tokio::spawn(master.stop());
    // Wait for the drain notice, which rides on the next reply.
    within("the drain notice", async {
        while !c.master_shutting_down() {
            c.ping().await.unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await;
    let worked = step(&mut c, Some(held.id), 1, Wait::No).await;
    assert_eq!(
        worked.settled.done, 1,
        "the completion is accepted while draining"
    );
    assert!(worked.tasks.is_empty(), "no new lease while draining");
    within("master stop", stopping).await.unwrap();
}

#[tokio::test]
async fn pipelined_requests_get_every_reply_and_waiting_ones_can_be_overtaken() {
    let master = TestMaster::start(config()).await;
    let mut c = master.client().await;
    let get = |wait| Request::Get {
        queue: "pipe".into(),
        max: 1,
        wait,
        delivery: Delivery::Lease { millis: None },
    };
    let waiting = c.submit(get(Wait::Millis(10_000))).await.unwrap();
    let ping = c.submit(Request::Ping).await.unwrap();
    assert_eq!(c.in_flight(), 2);
    let (id, reply) = within("the ping", c.next_reply()).await.unwrap();
    assert_eq!(
        (id, reply),
        (ping, Reply::Pong),
        "the ping overtakes the waiting get"
    );
    // A sequential call in between keeps the other reply for next_reply.
    c.put("pipe", vec![b("x")], Wait::No).await.unwrap();
    let (id, reply) = within("the waiting get", c.next_reply()).await.unwrap();
    assert_eq!(id, waiting);
    let worked = Worked::from_reply(reply).unwrap();
    assert_eq!(worked.tasks.len(), 1);
    assert_eq!(worked.tasks[0].payload, b("x"));
    assert_eq!(c.in_flight(), 0);
    assert!(
        c.next_reply().await.is_err(),
        "nothing in flight is an error, not a hang"
    );
}

/// Writes `requests`, then `tail` (frame bodies, sealed like the requests), in one write on a
/// fresh session, and reads until the master closes: every reply it sent by request id.
async fn replies_before_close(
    master: &TestMaster,
    requests: Vec<ClientMessage>,
    tail: &[Vec<u8>],
    half_close: bool,
) -> HashMap<u64, Reply> {
    // The handshake by hand, to hold the session keys and seal frames of our own making.
    let mut hs = Connection::<_, MasterHandshake, ClientHandshake>::new(
        TcpStream::connect(&master.addr).await.unwrap(),
        HANDSHAKE_MAX_FRAME,
    );
    let (state, hello) = ClientHello::start(&key(), &Binding::Plain, None);
    hs.send(&hello).await.unwrap();
    let Some(MasterHandshake::Welcome { ephemeral, sealed }) =
        within("welcome", hs.recv()).await.unwrap()
    else {
        panic!("no welcome");
    };
    let (limits, keys) = state.finish(&ephemeral, &sealed).unwrap();
    let max_frame = limits.max_frame as usize;
    let mut stream = hs.into_inner();
    let (mut seal, _) = keys.for_side(Side::Client);
    let mut plain = MessageCodec::<(), ClientMessage>::new(max_frame);
    let mut bodies: Vec<Vec<u8>> = requests
        .iter()
        .map(|request| {
            let mut frame = BytesMut::new();
            plain.encode(request, &mut frame).unwrap();
            frame[4..].to_vec()
        })
        .collect();
    bodies.extend(tail.iter().cloned());
    let mut bytes = Vec::new();
    for mut body in bodies {
        let tag = seal.seal(&mut body).unwrap();
        bytes.extend_from_slice(&((body.len() + tag.len()) as u32).to_be_bytes());
        bytes.extend_from_slice(&body);
        bytes.extend_from_slice(&tag);
    }
    stream.write_all(&bytes).await.unwrap();
    if half_close {
        stream.shutdown().await.unwrap();
    }
    let mut conn = Connection::<_, MasterMessage, ClientMessage>::new(stream, max_frame);
    let (unused, open) = keys.for_side(Side::Client);
    conn.encrypt(unused, open);
    conn.set_max_frame(max_frame);
    let mut replies = HashMap::new();
    loop {
        match within("replies, then the close", conn.recv()).await {
            Ok(Some(MasterMessage::Reply { id, reply })) => {
                assert!(replies.insert(id, reply).is_none(), "one reply per id");
            }
            Ok(Some(other)) => panic!("unexpected {other:?}"),
            Ok(None) | Err(_) => return replies,
        }
    }
}

/// A put, a get that must wait, and a ping, pipelined on `queue`.
fn three_requests(queue: &str) -> Vec<ClientMessage> {
    let request = |id, request| ClientMessage::Request { id, request };
    vec![
        request(
            1,
            Request::Put {
                queue: queue.into(),
                items: vec![b("kept")],
                wait: Wait::No,
                reply_to: None,
            },
        ),
        request(
            2,
            Request::Get {
                queue: format!("{queue}.empty"),
                max: 1,
                wait: Wait::Forever,
                delivery: Delivery::Lease { millis: None },
            },
        ),
        request(3, Request::Ping),
    ]
}

#[tokio::test]
async fn requests_read_before_a_bad_frame_are_answered_before_the_master_closes() {
    let master = TestMaster::start(config()).await;
    // A sealed frame whose body does not decode (no request has index 200), then a put that
    // is never read.
    let bad = vec![0x00, 0x09, 200];
    let mut after = BytesMut::new();
    MessageCodec::<(), ClientMessage>::new(1 << 20)
        .encode(
            &ClientMessage::Request {
                id: 4,
                request: Request::Put {
                    queue: "bad".into(),
                    items: vec![b("never")],
                    wait: Wait::No,
                    reply_to: None,
                },
            },
            &mut after,
        )
        .unwrap();
    let tail = [bad, after[4..].to_vec()];
    let replies = replies_before_close(&master, three_requests("bad"), &tail, false).await;
    assert!(
        matches!(replies.get(&1), Some(Reply::Put { accepted: 1, .. })),
        "{replies:?}"
    );
    assert_eq!(
        replies.get(&2),
        Some(&Reply::Tasks(Vec::new())),
        "the waiting get ends at once, empty"
    );
    assert_eq!(replies.get(&3), Some(&Reply::Pong));
    assert_eq!(replies.len(), 3, "nothing after the bad frame: {replies:?}");
    let mut c = master.client().await;
    assert_eq!(c.inspect("bad").await.unwrap().len, 1, "only the first put");
    assert_eq!(c.inspect("bad.empty").await.unwrap().waiting_getters, 0);
}

#[tokio::test]
async fn requests_before_the_end_of_the_stream_are_answered() {
    let master = TestMaster::start(config()).await;
    let replies = replies_before_close(&master, three_requests("eof"), &[], true).await;
    assert!(
        matches!(replies.get(&1), Some(Reply::Put { accepted: 1, .. })),
        "{replies:?}"
    );
    assert_eq!(replies.get(&2), Some(&Reply::Tasks(Vec::new())));
    assert_eq!(replies.get(&3), Some(&Reply::Pong));
}
