//! Typed jobs end to end: every outcome of a handler (a value, retry after, fatal, a panic, a
//! timeout) as its producer sees it, a long task's lease kept alive, producers sharing a task
//! queue without seeing each other's results, and the primes example as written.

use std::collections::HashMap;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use taskmill::{Failure, Job, Json, Producer, TaskError, WorkerBuilder};
use taskmill_testkit::process::{example, Proc};
use taskmill_testkit::{config, key, within, TestMaster, KEY};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Step {
    n: u32,
    /// What the handler does with it: "ok", "retry once", "fatal", "panic", "hang", "slow".
    mode: String,
}

impl Job for Step {
    const QUEUE: &'static str = "steps";
    type Output = u32;
    type Codec = Json;
}

fn step(n: u32, mode: &str) -> Step {
    Step {
        n,
        mode: mode.into(),
    }
}

async fn master(attempts: u32) -> TestMaster {
    let mut config = config();
    config.limits.max_attempts = attempts;
    TestMaster::start(config).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_outcome_of_a_handler_reaches_the_producer() {
    let master = master(2).await;
    // Attempts seen per task, to retry once.
    let seen: Arc<Mutex<HashMap<u32, u32>>> = Arc::default();
    let worker = {
        let seen = Arc::clone(&seen);
        WorkerBuilder::new(master.addr.clone(), key())
            .task_timeout(Duration::from_millis(300))
            .retry_delay(Duration::from_millis(20))
            .job(move |s: Step| {
                let attempt = {
                    let mut seen = seen.lock().unwrap();
                    let a = seen.entry(s.n).or_default();
                    *a += 1;
                    *a
                };
                async move {
                    match s.mode.as_str() {
                        "ok" => Ok(s.n * 2),
                        "retry once" if attempt == 1 => {
                            Err(Failure::retry_after(Duration::from_millis(50), "not yet"))
                        }
                        "retry once" => Ok(s.n * 2),
                        "fatal" => Err(Failure::fatal("cannot ever work")),
                        "panic" => panic!("boom {}", s.n),
                        "hang" => {
                            tokio::time::sleep(Duration::from_secs(3600)).await;
                            Ok(0)
                        }
                        _ => Err(std::io::Error::other("an error").into()),
                    }
                }
            })
    };
    let stop = CancellationToken::new();
    let running = tokio::spawn(worker.run(stop.clone()));
    let producer = Producer::connect(&master.addr, &key()).await.unwrap();
    let modes = ["ok", "retry once", "fatal", "panic", "hang", "error"];
    let tasks: Vec<_> = modes
        .iter()
        .enumerate()
        .map(|(n, m)| step(n as u32, m))
        .collect();
    let handles = producer.submit_all(&tasks).await.unwrap();
    let mut outcomes = Vec::new();
    for handle in handles {
        outcomes.push(within("an outcome", handle).await);
    }
    assert_eq!(outcomes[0], Ok(0));
    assert_eq!(outcomes[1], Ok(2), "retried, then done");
    let dead = |at: usize| match &outcomes[at] {
        Err(TaskError::Dead {
            attempts, reason, ..
        }) => (*attempts, reason.clone()),
        other => panic!("{}: expected a dead task, got {other:?}", modes[at]),
    };
    let (attempts, reason) = dead(2);
    assert_eq!(attempts, 1, "fatal: no second attempt");
    assert!(reason.contains("cannot ever work"), "{reason}");
    let (attempts, reason) = dead(3);
    assert_eq!(attempts, 2);
    assert!(reason.contains("panicked: boom 3"), "{reason}");
    let (attempts, reason) = dead(4);
    assert_eq!(attempts, 2);
    assert!(reason.contains("timed out after 300ms"), "{reason}");
    let (_, reason) = dead(5);
    assert!(reason.contains("an error"), "{reason}");
    producer.close().await.unwrap();
    stop.cancel();
    within("the worker stops", running).await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_longer_than_its_lease_is_kept_alive_and_done_once() {
    let master = master(5).await;
    let runs = Arc::new(Mutex::new(0));
    let worker = {
        let runs = Arc::clone(&runs);
        WorkerBuilder::new(master.addr.clone(), key())
            .lease(Duration::from_millis(300))
            .job(move |s: Step| {
                *runs.lock().unwrap() += 1;
                async move {
                    tokio::time::sleep(Duration::from_millis(1500)).await;
                    Ok(s.n)
                }
            })
    };
    let stop = CancellationToken::new();
    let running = tokio::spawn(worker.run(stop.clone()));
    let producer = Producer::connect(&master.addr, &key()).await.unwrap();
    let handle = producer.submit(&step(7, "slow")).await.unwrap();
    assert_eq!(within("the result", handle).await, Ok(7));
    assert_eq!(*runs.lock().unwrap(), 1, "never redelivered while it ran");
    producer.close().await.unwrap();
    stop.cancel();
    within("the worker stops", running).await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producers_sharing_a_queue_and_its_workers_each_get_only_their_own_results() {
    let master = master(5).await;
    let stop = CancellationToken::new();
    let worker = WorkerBuilder::new(master.addr.clone(), key())
        .concurrency(16)
        .job(|s: Step| async move { Ok(s.n + 1000) });
    let running = tokio::spawn(worker.run(stop.clone()));
    let produce = |base: u32| {
        let addr = master.addr.clone();
        async move {
            let producer = Producer::connect(&addr, &key()).await.unwrap();
            let tasks: Vec<_> = (base..base + 500).map(|n| step(n, "ok")).collect();
            let handles = producer.submit_all(&tasks).await.unwrap();
            let mut got = Vec::new();
            for handle in handles {
                got.push(handle.await.unwrap());
            }
            producer.close().await.unwrap();
            got
        }
    };
    let (a, b) = within("both producers", async {
        tokio::join!(produce(0), produce(10_000))
    })
    .await;
    assert_eq!(a, (1000..1500).collect::<Vec<_>>());
    assert_eq!(b, (11_000..11_500).collect::<Vec<_>>());
    // Closed producers leave no reply queue behind.
    let mut client = master.client().await;
    let stats = client.stats().await.unwrap();
    let names: Vec<_> = stats.queues.iter().map(|q| q.name.as_str()).collect();
    assert_eq!(names, ["steps"], "{names:?}");
    stop.cancel();
    within("the worker stops", running).await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_primes_example_runs_as_written() {
    let master = master(5).await;
    let mut run = Proc::spawn(
        Command::new(example("taskmill", "primes"))
            .args(["both", "100000", "8"])
            .env("TASKMILL_MASTER", &master.addr)
            .env("TASKMILL_AUTHKEY", KEY),
    );
    let status = tokio::task::spawn_blocking(move || {
        let status = run.wait(taskmill_testkit::LIMIT);
        (status, run.stdout_rest())
    })
    .await
    .unwrap();
    assert!(status.0.success(), "{:?} {}", status.0, status.1);
    assert!(
        status.1.contains("primes below 100000: 9592"),
        "{}",
        status.1
    );
}
