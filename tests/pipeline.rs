//! The throughput paths keep the core's semantics: `CompleteAndGet` (a completion carrying the
//! next get), pipelined requests with out-of-order replies, and the squares job with large
//! batches and a deep prefetch window.

mod support;

use bytes::Bytes;
use support::{config, key, within, Master};
use taskmill_master::job::{self, JobConfig};
use taskmill_protocol::{Delivery, Outcome, Reply, Request, Wait, Worked};
use taskmill_worker::WorkerConfig;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn outcome(task: u64, result: &str) -> Outcome {
    Outcome {
        task,
        result: b(result),
    }
}

#[tokio::test]
async fn complete_and_get_settles_then_leases_the_next_tasks_in_one_round_trip() {
    let master = Master::start(config()).await;
    let mut c = master.client().await;
    c.put("tasks", vec![b("1"), b("2"), b("3")], Wait::No)
        .await
        .unwrap();
    let first = c.get("tasks", 1, Wait::No).await.unwrap().remove(0);
    let worked = c
        .complete_and_get(
            "tasks",
            "results",
            vec![outcome(first.id, "1")],
            2,
            Wait::No,
        )
        .await
        .unwrap();
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
    let again = c
        .complete_and_get(
            "tasks",
            "results",
            vec![outcome(first.id, "1")],
            2,
            Wait::No,
        )
        .await
        .unwrap();
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
    let master = Master::start(config()).await;
    let mut c = master.client().await;
    c.declare("results", Some(1)).await.unwrap();
    c.put("results", vec![b("full")], Wait::No).await.unwrap();
    c.put("tasks", vec![b("1"), b("2")], Wait::No)
        .await
        .unwrap();
    let first = c.get("tasks", 1, Wait::No).await.unwrap().remove(0);
    let worked = c
        .complete_and_get(
            "tasks",
            "results",
            vec![outcome(first.id, "1")],
            1,
            Wait::Millis(50),
        )
        .await
        .unwrap();
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
    let master = Master::start(config()).await;
    let mut worker = master.client().await;
    let mut producer = master.client().await;
    producer.put("tasks", vec![b("1")], Wait::No).await.unwrap();
    let first = worker.get("tasks", 1, Wait::No).await.unwrap().remove(0);
    let waiting = tokio::spawn(async move {
        let worked = worker
            .complete_and_get(
                "tasks",
                "results",
                vec![outcome(first.id, "1")],
                1,
                Wait::Millis(10_000),
            )
            .await
            .unwrap();
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
    let empty = lone
        .complete_and_get("tasks", "results", Vec::new(), 1, Wait::Millis(50))
        .await
        .unwrap();
    assert!(
        empty.tasks.is_empty(),
        "the wait ends empty (Python's Empty)"
    );
}

#[tokio::test]
async fn a_draining_master_takes_the_completion_but_leases_nothing_more() {
    let mut cfg = config();
    cfg.shutdown_grace = std::time::Duration::from_secs(10);
    let master = Master::start(cfg).await;
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
    let worked = c
        .complete_and_get("tasks", "results", vec![outcome(held.id, "1")], 1, Wait::No)
        .await
        .unwrap();
    assert_eq!(
        worked.settled.done, 1,
        "the completion is accepted while draining"
    );
    assert!(worked.tasks.is_empty(), "no new lease while draining");
    within("master stop", stopping).await.unwrap();
}

#[tokio::test]
async fn pipelined_requests_get_every_reply_and_waiting_ones_can_be_overtaken() {
    let master = Master::start(config()).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_batches_and_a_deep_prefetch_window_deliver_every_square_exactly_once() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let stop_workers = CancellationToken::new();
    let workers: Vec<_> = (0..3)
        .map(|_| {
            let mut w = WorkerConfig::new(&addr, key());
            w.concurrency = 4096;
            w.prefetch = 4;
            tokio::spawn(taskmill_worker::run(w, stop_workers.clone()))
        })
        .collect();
    let mut job_config = JobConfig::new(200_000);
    job_config.batch = 8192;
    let report = within(
        "squares job",
        job::run(listener, config(), job_config, CancellationToken::new()),
    )
    .await
    .unwrap();
    assert!(report.success(), "{report:?}");
    assert_eq!(
        (report.verified, report.duplicates, report.missing),
        (200_000, 0, 0)
    );
    stop_workers.cancel();
    let mut completed = 0;
    for w in workers {
        let report = within("worker exit", w).await.unwrap().unwrap();
        assert_eq!(report.abandoned, 0, "a drained worker keeps no results");
        completed += report.completed;
    }
    assert_eq!(completed, 200_000, "the workers' own counts agree");
}
