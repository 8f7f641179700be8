//! The squares job end to end in one process: real sockets, the real worker loop.

use std::time::{Duration, Instant};

use taskmill::{Worker, WorkerConfig, WorkerReport};
use taskmill_squares::job::{self, JobConfig};
use taskmill_squares::{Ending, JobReport, Squares};
use taskmill_testkit::{config, key, within, TestMaster};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

fn worker(addr: &str) -> WorkerConfig {
    let mut config = WorkerConfig::new(addr, key());
    config.concurrency = 128;
    config.max_backoff = Duration::from_millis(200);
    config
}

/// A squares worker with `config`, stopped by `stop`.
fn spawn_worker(
    config: WorkerConfig,
    stop: &CancellationToken,
) -> tokio::task::JoinHandle<Result<WorkerReport, taskmill::WorkerError>> {
    tokio::spawn(Worker::new(config, Squares::new()).run(stop.clone()))
}

/// Runs `job` against the master at `addr`.
async fn run_job(addr: &str, job: JobConfig) -> JobReport {
    within(
        "squares job",
        job::run(addr, &key(), &job, &CancellationToken::new()),
    )
    .await
    .unwrap()
}

/// Runs `job` on a fresh master with `n` in-process workers made by `worker` for its address,
/// then stops the workers; returns the job's report and theirs.
async fn job_with_workers(
    n: usize,
    worker: impl Fn(&str) -> WorkerConfig,
    job: JobConfig,
) -> (JobReport, Vec<WorkerReport>) {
    let master = TestMaster::start(config()).await;
    let stop_workers = CancellationToken::new();
    let workers: Vec<_> = (0..n)
        .map(|_| spawn_worker(worker(&master.addr), &stop_workers))
        .collect();
    let report = run_job(&master.addr, job).await;
    stop_workers.cancel();
    let mut reports = Vec::new();
    for w in workers {
        reports.push(within("worker exit", w).await.unwrap().unwrap());
    }
    (report, reports)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_thousand_tasks_through_three_workers_come_back_exactly_once() {
    let mut job_config = JobConfig::new(20_000);
    job_config.min = -1_000_000;
    job_config.max = 1_000_000;
    job_config.batch = 500;
    let (report, workers) = job_with_workers(3, worker, job_config).await;
    assert!(report.success(), "{report:?}");
    assert_eq!(
        (report.verified, report.wrong, report.missing),
        (20_000, 0, 0)
    );
    assert_eq!(report.workers_seen, 3, "every worker took part");
    let completed: u64 = workers.iter().map(|w| w.completed).sum();
    assert_eq!(completed, 20_000, "the workers' own counts agree");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_batches_and_a_deep_prefetch_window_deliver_every_square_exactly_once() {
    let big = |addr: &str| {
        let mut w = WorkerConfig::new(addr, key());
        w.concurrency = 4096;
        w.prefetch = 4;
        w
    };
    let mut job_config = JobConfig::new(200_000);
    job_config.batch = 8192;
    let (report, workers) = job_with_workers(3, big, job_config).await;
    assert!(report.success(), "{report:?}");
    assert_eq!(
        (report.verified, report.duplicates, report.missing),
        (200_000, 0, 0)
    );
    for w in &workers {
        assert_eq!(w.abandoned, 0, "a drained worker keeps no results");
    }
    let completed: u64 = workers.iter().map(|w| w.completed).sum();
    assert_eq!(completed, 200_000, "the workers' own counts agree");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_started_before_the_master_joins_once_it_is_up() {
    // Reserve a port, then free it so the worker finds nothing listening there.
    let port = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let stop_worker = CancellationToken::new();
    let early = spawn_worker(worker(&addr), &stop_worker);
    // Keep the master down long enough for several refused connection attempts.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !early.is_finished(),
        "the worker gave up instead of retrying"
    );
    let listener = TcpListener::bind(&addr).await.unwrap();
    let _master = TestMaster::serve(listener, config());
    let report = run_job(&addr, JobConfig::new(2_000)).await;
    assert!(report.success(), "{report:?}");
    assert_eq!(report.workers_seen, 1);
    stop_worker.cancel();
    let done = within("worker exit", early).await.unwrap().unwrap();
    assert_eq!(done.completed, 2_000);
    assert_eq!(done.connections, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_without_workers_reports_what_is_missing_when_it_stalls() {
    let master = TestMaster::start(config()).await;
    let mut job_config = JobConfig::new(100);
    job_config.stall_timeout = Duration::from_millis(300);
    let report = run_job(&master.addr, job_config).await;
    assert_eq!(report.ending, Ending::Stalled);
    assert_eq!((report.missing, report.verified), (100, 0));
    assert!(!report.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_with_idle_exit_stops_once_the_queue_stays_empty() {
    let master = TestMaster::start(config()).await;
    let mut config = worker(&master.addr);
    config.idle_exit = Some(Duration::from_millis(300));
    config.poll = Duration::from_millis(100);
    let report = within("idle exit", spawn_worker(config, &CancellationToken::new()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((report.completed, report.connections), (0, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_complete_job_ends_with_its_last_result_not_a_worker_poll_later() {
    let master = TestMaster::start(config()).await;
    let mut job_config = JobConfig::new(10);
    job_config.local_workers = 1;
    let started = Instant::now();
    let report = run_job(&master.addr, job_config).await;
    assert!(report.success(), "{report:?}");
    // Beyond the job's own time: connecting, and stopping its worker. A worker drained
    // instead of dropped waits out its get for more tasks, a one-second poll.
    let around = started.elapsed().as_secs_f64() - report.elapsed_secs;
    assert!(around < 0.5, "{around:.3} s outside the job's own time");
}
