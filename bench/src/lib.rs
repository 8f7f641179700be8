//! taskmill's load generator as a library: each scenario drives a master at the address it is
//! given, bounded in time and count, and returns a [`Report`] with HdrHistogram percentiles.
//! `main.rs` parses flags and prints; the tests call [`run`] against an in-process master.
//!
//! Scenarios: `squares` (the whole job: producer, workers, collector), `produce` (put rate),
//! `consume` (lease + ack rate), `connections` (hold N authenticated idle connections) and
//! `latency` (one task at a time, put to result). Latencies are measured from when a request
//! was due, not when it was sent, so an open-loop `--rate` run does not hide queueing behind a
//! slow response (no coordinated omission).
//!
//! # Layout
//! - [`plan`]: where the load goes and what a run is ([`Target`], [`Scenario`], [`Plan`],
//!   [`bounds`]).
//! - this file: the report types, then one function per scenario; `main.rs` parses flags.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hdrhistogram::Histogram;
use serde::Serialize;
use taskmill::{Client, ClientError, Wait, Worker, WorkerConfig};
use taskmill_protocol::encode_payload;
use taskmill_squares::job::{self, JobConfig};
use taskmill_squares::{SquareTask, Squares};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub mod plan;
pub use plan::{bounds, Plan, Scenario, Target};

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Percentiles {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub samples: u64,
}

/// The outcome of one run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: Scenario,
    pub connections: usize,
    /// Items per request; none for `connections`, which sends no items.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch: Option<u32>,
    /// Requests for tasks each worker kept in flight (`squares` and `latency`; 0 for others).
    pub prefetch: u32,
    /// Items moved (tasks verified, items put or consumed, connections held).
    pub items: u64,
    pub elapsed_secs: f64,
    /// None for `connections`: connections held for a set time are not a rate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub items_per_sec: Option<f64>,
    /// Per request (per task for `squares` and `latency`; per connect and handshake for
    /// `connections`).
    pub latency_us: Percentiles,
    pub errors: u64,
}

/// Why a run could not start or finish.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("the squares job failed: {0}")]
    Job(#[from] job::JobError),
    #[error("{0}")]
    Plan(String),
}

/// Shared by a scenario's tasks and the progress display.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new(3).expect("3 significant figures is valid")
}

fn percentiles(h: &Histogram<u64>) -> Percentiles {
    Percentiles {
        p50: h.value_at_quantile(0.5),
        p90: h.value_at_quantile(0.9),
        p99: h.value_at_quantile(0.99),
        p999: h.value_at_quantile(0.999),
        max: h.max(),
        samples: h.len(),
    }
}

/// Runs `plan` against `target`, counting progress into `progress`.
pub async fn run(
    target: &Target,
    plan: &Plan,
    progress: Arc<Counter>,
) -> Result<Report, BenchError> {
    if plan.connections == 0 || plan.batch == 0 || plan.count == 0 {
        return Err(BenchError::Plan(
            "connections, batch and count must be at least 1".into(),
        ));
    }
    let started = Instant::now();
    let measured = |(items, h, errors, took): (u64, Histogram<u64>, u64, Duration)| {
        (items, percentiles(&h), errors, took.as_secs_f64())
    };
    let (items, latency, errors, elapsed) = match plan.scenario {
        // The whole job, its workers' start and stop included (a complete job drops its
        // workers at once).
        Scenario::Squares => {
            let (items, latency, errors) = squares(target, plan).await?;
            (items, latency, errors, started.elapsed().as_secs_f64())
        }
        Scenario::Produce => measured(produce(target, plan, &progress).await?),
        Scenario::Consume => measured(consume(target, plan, &progress).await?),
        Scenario::Connections => measured(connections(target, plan, &progress).await?),
        Scenario::Latency => measured(latency(target, plan, &progress).await?),
    };
    // The latency scenario is one task at a time on one connection, whatever the flags say.
    let (connections, batch) = match plan.scenario {
        Scenario::Latency => (1, Some(1)),
        Scenario::Connections => (plan.connections, None),
        _ => (plan.connections, Some(plan.batch)),
    };
    let prefetch = match plan.scenario {
        Scenario::Squares | Scenario::Latency => plan.prefetch,
        _ => 0,
    };
    Ok(Report {
        scenario: plan.scenario,
        connections,
        batch,
        prefetch,
        items,
        elapsed_secs: elapsed,
        items_per_sec: (plan.scenario != Scenario::Connections)
            .then(|| items as f64 / elapsed.max(f64::EPSILON)),
        latency_us: latency,
        errors,
    })
}

/// Items, latencies and errors, and the time the measured part took: without what a scenario
/// does before it (filling the queue `consume` empties) or after it (draining what `produce`
/// put, stopping the `latency` worker), which would otherwise lower the rate.
type Outcome = Result<(u64, Histogram<u64>, u64, Duration), BenchError>;

/// In open loop (`per_conn` requests per second), waits until request `n` of one connection
/// is due and returns that moment; in closed loop, returns now. The timer's millisecond
/// granularity would otherwise be counted as the master's latency, so the last stretch is
/// spent yielding rather than sleeping.
async fn pace(start: Instant, n: u64, per_conn: Option<f64>) -> Instant {
    let Some(rate) = per_conn else {
        return Instant::now();
    };
    let at = start + Duration::from_secs_f64(n as f64 / rate);
    if let Some(early) = at.checked_sub(Duration::from_millis(2)) {
        tokio::time::sleep_until(early).await;
    }
    while Instant::now() < at {
        tokio::task::yield_now().await;
    }
    at
}

/// Runs one request loop per connection and merges their counts and histograms.
async fn per_connection<F, Fut>(plan: &Plan, work: F) -> Outcome
where
    F: Fn(usize, Instant) -> Fut,
    Fut: std::future::Future<Output = Result<(u64, Histogram<u64>, u64), BenchError>>
        + Send
        + 'static,
{
    let start = Instant::now();
    let mut set = JoinSet::new();
    for i in 0..plan.connections {
        set.spawn(work(i, start));
    }
    let (mut items, mut latency, mut errors) = (0, histogram(), 0);
    while let Some(done) = set.join_next().await {
        let (n, h, e) =
            done.map_err(|e| BenchError::Plan(format!("a connection task failed: {e}")))??;
        items += n;
        latency.add(h).expect("histograms with the same bounds");
        errors += e;
    }
    Ok((items, latency, errors, start.elapsed()))
}

async fn squares(target: &Target, plan: &Plan) -> Result<(u64, Percentiles, u64), BenchError> {
    let mut config = JobConfig::new(plan.count);
    config.local_workers = plan.connections;
    config.worker_concurrency = plan.batch;
    config.worker_prefetch = plan.prefetch;
    config.timeout = Some(plan.duration);
    config.client = target.client.clone();
    let report = job::run(
        &target.addr,
        &target.key,
        &config,
        &CancellationToken::new(),
    )
    .await?;
    let latency = Percentiles {
        p50: report.latency_p50_us,
        p90: report.latency_p90_us,
        p99: report.latency_p99_us,
        p999: report.latency_p999_us,
        max: report.latency_max_us,
        samples: report.verified,
    };
    Ok((report.verified, latency, report.wrong + report.missing))
}

async fn produce(target: &Target, plan: &Plan, progress: &Arc<Counter>) -> Outcome {
    let queue = "bench.produce";
    let mut setup = Client::connect_with(&target.addr, &target.key, &target.client).await?;
    setup.declare(queue, None).await?;
    let per_conn = plan
        .rate
        .map(|r| r / f64::from(plan.batch) / plan.connections as f64);
    let conns = plan.connections as u64;
    let outcome = per_connection(plan, |i, start| {
        let (target, plan, progress) = (target.clone(), plan.clone(), progress.clone());
        // The first `count % connections` connections put one item more, so all add up.
        let quota = plan.count / conns + u64::from((i as u64) < plan.count % conns);
        async move {
            let mut client =
                Client::connect_with(&target.addr, &target.key, &target.client).await?;
            let (mut items, mut latency, mut errors) = (0u64, histogram(), 0u64);
            let batch: Vec<Bytes> = (0..plan.batch)
                .map(|i| Bytes::copy_from_slice(&u64::from(i).to_le_bytes()))
                .collect();
            let end = start + plan.duration;
            let mut n = 0;
            while items < quota && Instant::now() < end {
                let at = pace(start, n, per_conn).await;
                n += 1;
                let left = (quota - items).min(batch.len() as u64) as usize;
                match client
                    .put(queue, batch[..left].to_vec(), Wait::Millis(1000))
                    .await
                {
                    Ok(put) => {
                        items += u64::from(put.accepted);
                        progress.add(u64::from(put.accepted));
                    }
                    Err(err) if err.is_connection_lost() => {
                        errors += 1;
                        break;
                    }
                    Err(_) => errors += 1,
                }
                let _ = latency.record(at.elapsed().as_micros().max(1) as u64);
            }
            Ok((items, latency, errors))
        }
    })
    .await;
    if !plan.keep {
        drain(&mut setup, queue).await?;
    }
    outcome
}

/// Empties a bench queue so a run leaves nothing behind in the master's memory.
async fn drain(client: &mut Client, queue: &str) -> Result<(), ClientError> {
    while !client.take(queue, 65_536, Wait::No).await?.is_empty() {}
    Ok(())
}

async fn consume(target: &Target, plan: &Plan, progress: &Arc<Counter>) -> Outcome {
    let queue = "bench.consume";
    let mut setup = Client::connect_with(&target.addr, &target.key, &target.client).await?;
    setup.declare(queue, None).await?;
    let item = Bytes::from_static(&[7; 8]);
    let mut filled = 0;
    while filled < plan.count {
        let n = (plan.count - filled).min(16_384);
        setup
            .put(queue, vec![item.clone(); n as usize], Wait::Forever)
            .await?;
        filled += n;
    }
    let outcome = per_connection(plan, |_, start| {
        let (target, plan, progress) = (target.clone(), plan.clone(), progress.clone());
        async move {
            let mut client =
                Client::connect_with(&target.addr, &target.key, &target.client).await?;
            let (mut items, mut latency, mut errors) = (0u64, histogram(), 0u64);
            let end = start + plan.duration;
            while Instant::now() < end {
                let at = Instant::now();
                let tasks = match client.get(queue, plan.batch, Wait::No).await {
                    Ok(tasks) if tasks.is_empty() => break,
                    Ok(tasks) => tasks,
                    Err(err) => {
                        errors += 1;
                        if err.is_connection_lost() {
                            break;
                        }
                        continue;
                    }
                };
                let ids = tasks.iter().map(|t| t.id).collect();
                match client.ack(queue, ids).await {
                    Ok(settled) => {
                        items += u64::from(settled.done);
                        progress.add(u64::from(settled.done));
                    }
                    Err(_) => errors += 1,
                }
                let _ = latency.record(at.elapsed().as_micros().max(1) as u64);
            }
            Ok((items, latency, errors))
        }
    })
    .await;
    drain(&mut setup, queue).await?;
    outcome
}

async fn connections(target: &Target, plan: &Plan, progress: &Arc<Counter>) -> Outcome {
    let count = plan.count.min(plan.connections as u64) as usize;
    let started = Instant::now();
    let mut held = Vec::with_capacity(count);
    let mut latency = histogram();
    let mut errors = 0;
    // Open in waves below the master's per-address handshake cap, retrying a refusal for
    // overload: the scenario measures holding connections, not the admission limits.
    for wave in (0..count).collect::<Vec<_>>().chunks(16) {
        let mut set = JoinSet::new();
        for _ in wave {
            let target = target.clone();
            set.spawn(async move {
                let at = Instant::now();
                let mut tries = 0;
                loop {
                    match Client::connect_with(&target.addr, &target.key, &target.client).await {
                        Err(err) if err.is_transient() && tries < 20 => {
                            tries += 1;
                            tokio::time::sleep(Duration::from_millis(10 * tries)).await;
                        }
                        client => return (client, at.elapsed()),
                    }
                }
            });
        }
        while let Some(done) = set.join_next().await {
            match done {
                Ok((Ok(client), took)) => {
                    let _ = latency.record(took.as_micros().max(1) as u64);
                    held.push(client);
                    progress.add(1);
                }
                _ => errors += 1,
            }
        }
        if started.elapsed() >= plan.duration {
            break;
        }
    }
    // Hold them for the rest of the run, then check every one still answers.
    tokio::time::sleep_until(started + plan.duration).await;
    let held_for = started.elapsed();
    let mut alive = 0;
    for client in &mut held {
        if client.ping().await.is_ok() {
            alive += 1;
        } else {
            errors += 1;
        }
    }
    Ok((alive, latency, errors, held_for))
}

async fn latency(target: &Target, plan: &Plan, progress: &Arc<Counter>) -> Outcome {
    let (tasks_queue, results_queue) = ("bench.latency.tasks", "bench.latency.results");
    let mut worker_config = WorkerConfig::new(target.addr.clone(), target.key.clone());
    worker_config.client = target.client.clone();
    worker_config.concurrency = 1;
    worker_config.prefetch = plan.prefetch;
    worker_config.tasks_queue = tasks_queue.into();
    worker_config.results_queue = results_queue.into();
    let worker =
        tokio::spawn(Worker::new(worker_config, Squares::new()).run(CancellationToken::new()));
    let mut client = Client::connect_with(&target.addr, &target.key, &target.client).await?;
    let per_sec = plan.rate;
    let (mut items, mut latency, mut errors) = (0u64, histogram(), 0u64);
    let start = Instant::now();
    let end = start + plan.duration;
    while items < plan.count && Instant::now() < end {
        let at = pace(start, items, per_sec).await;
        let task = encode_payload(&SquareTask {
            seq: items,
            input: items as i64,
        })
        .expect("a SquareTask always encodes");
        // Timed from put to result in hand; settling the result afterwards is not counted.
        let round = async {
            client.put(tasks_queue, vec![task], Wait::Forever).await?;
            let result = client.get(results_queue, 1, Wait::Millis(5000)).await?;
            let took = at.elapsed();
            let ids = result.iter().map(|r| r.id).collect::<Vec<_>>();
            client.ack(results_queue, ids.clone()).await?;
            Ok::<_, ClientError>((ids.len(), took))
        };
        match round.await {
            Ok((1, took)) => {
                items += 1;
                progress.add(1);
                let _ = latency.record(took.as_micros().max(1) as u64);
            }
            _ => errors += 1,
        }
    }
    let took = start.elapsed();
    // Each round trip ended with its result in hand (or was counted as an error): the worker
    // holds nothing worth draining for, and a graceful stop would wait out its get for the
    // next task (its poll, a second) inside the measured time.
    worker.abort();
    let _ = worker.await;
    Ok((items, latency, errors, took))
}
