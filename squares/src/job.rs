//! The squares job (`taskmill-master run`): put N random integers, collect and verify every
//! square exactly once, and report throughput and latency; optionally with workers in this
//! process.
//!
//! The job talks to its master over TCP through the public `taskmill` crate, exactly as an
//! external producer and collector would: its tasks name a reply queue of its own (a
//! [`Submitter`] puts them, [`Replies`] reads their results), so jobs sharing a master and its
//! workers never see each other's results, and the queue goes with the job. Inputs are
//! derived from `(seed, seq)`, so checking a result needs no stored copy of the inputs:
//! memory is one bit per task plus one timestamp per put batch.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use taskmill::{
    AuthKey, ClientError, ClientOptions, Reconnecting, Replies, Submitter, TaskOutcome, Worker,
    WorkerConfig,
};
use taskmill_protocol::PayloadBatch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::handler::Squares;
use crate::payload::{SquareTask, TASKS_QUEUE};
use crate::pickled::Codec;
use crate::progress::Progress;
use crate::report::{Ending, JobReport};
use crate::tally::{input_for, splitmix64, Tally};

/// The longest wait between the job's reconnect attempts: a master that comes back is found
/// within a second.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Results taken per request by the collector.
const COLLECT_BATCH: u32 = 4096;

/// When results trickle in (workers handing in one task at a time), every get would bring
/// back one or two of them: a round trip and a wake-up on both sides per result. So after a
/// get that brought back fewer than `LINGER_BELOW`, the collector waits `LINGER` for more to
/// gather (tokio's millisecond timer makes that 0.5-1.5 ms). A result is recorded at most that
/// much later; the job's CPU per task falls by about a tenth (BENCHMARKS.md).
const LINGER_BELOW: usize = 64;
const LINGER: Duration = Duration::from_micros(500);

/// How long a job tries to reach its master before saying none is there.
const FIRST_CONTACT: Duration = Duration::from_secs(5);

/// Longest single wait of the producer or collector, so deadlines are checked promptly.
const POLL: Duration = Duration::from_millis(250);

/// What to run.
#[derive(Debug, Clone)]
pub struct JobConfig {
    pub tasks: u64,
    pub min: i64,
    pub max: i64,
    pub seed: u64,
    /// Tasks per put request.
    pub batch: u32,
    /// Bound on the whole job.
    pub timeout: Option<Duration>,
    /// Give up when no result has arrived for this long.
    pub stall_timeout: Duration,
    /// Workers to run in this process.
    pub local_workers: usize,
    /// Tasks each local worker leases at once.
    pub worker_concurrency: u32,
    /// Requests for tasks each local worker keeps in flight.
    pub worker_prefetch: u32,
    /// Draw a progress bar (when stderr is a terminal) or log progress lines.
    pub progress: bool,
    /// How the job's own clients connect (timeouts, TLS).
    pub client: ClientOptions,
    /// The tasks' and results' format; with a pickle codec the job runs as
    /// [`crate::pickled::drive`] describes.
    pub codec: Codec,
}

impl JobConfig {
    pub fn new(tasks: u64) -> Self {
        Self {
            tasks,
            min: 0,
            max: 10_000,
            seed: rand_seed(),
            batch: 1024,
            timeout: None,
            stall_timeout: Duration::from_secs(30),
            local_workers: 0,
            worker_concurrency: 256,
            worker_prefetch: 2,
            progress: false,
            client: ClientOptions::default(),
            codec: Codec::Bincode,
        }
    }
}

fn rand_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    splitmix64(nanos ^ u64::from(std::process::id()))
}

/// Why the job could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("--min {min} is greater than --max {max}")]
    EmptyRange { min: i64, max: i64 },
    /// Not `#[from]`: the message already says what the client error says, and a source
    /// would make the error chain repeat it.
    #[error("a job in Python's format takes inputs within ±{max} (their squares fit an i64)")]
    Range { max: i64 },
    #[error("the job cannot go on: {0}")]
    Client(ClientError),
    #[error("no master answered at {addr} for {tried:?}: {cause}")]
    Unreachable {
        addr: String,
        tried: Duration,
        cause: ClientError,
    },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl From<ClientError> for JobError {
    fn from(err: ClientError) -> Self {
        JobError::Client(err)
    }
}

/// Runs the job against the master at `addr`, with `job.local_workers` in-process workers
/// that are stopped when it ends.
pub async fn run(
    addr: &str,
    key: &AuthKey,
    job: &JobConfig,
    shutdown: &CancellationToken,
) -> Result<JobReport, JobError> {
    if job.min > job.max {
        return Err(JobError::EmptyRange {
            min: job.min,
            max: job.max,
        });
    }
    let worker_stop = CancellationToken::new();
    let mut workers = JoinSet::new();
    for _ in 0..job.local_workers {
        let mut config = WorkerConfig::new(addr, key.clone());
        config.concurrency = job.worker_concurrency;
        config.prefetch = job.worker_prefetch;
        config.client = job.client.clone();
        let squares = Squares::new().with_codec(job.codec);
        workers.spawn(Worker::new(config, squares).run(worker_stop.clone()));
    }
    info!(
        tasks = job.tasks,
        local_workers = job.local_workers,
        master = %addr,
        seed = job.seed,
        "squares job started"
    );
    let report = match job.codec {
        Codec::Bincode => drive(addr, key, job, shutdown).await,
        _ => crate::pickled::drive(addr, key, job, shutdown).await,
    };
    // A complete job has every result in hand, so its workers hold nothing worth handing in:
    // they are dropped, not drained. Drained, each would first wait out its request for more
    // tasks (up to the worker's poll, a second), and the job would end that much later.
    if matches!(&report, Ok(r) if r.ending == Ending::Complete) {
        workers.abort_all();
    } else {
        worker_stop.cancel();
    }
    while let Some(done) = workers.join_next().await {
        match done {
            Ok(Ok(_)) => {}
            Ok(Err(err)) => warn!(cause = %err, "local worker failed"),
            Err(err) if err.is_cancelled() => {}
            Err(err) => warn!(cause = %err, "local worker panicked"),
        }
    }
    report
}

/// Producer and collector against an already running master at `addr`.
pub async fn drive(
    addr: &str,
    key: &AuthKey,
    job: &JobConfig,
    shutdown: &CancellationToken,
) -> Result<JobReport, JobError> {
    let producer = Reconnecting::new("producer", addr, key, &job.client, MAX_BACKOFF);
    let mut collector = Reconnecting::new("collector", addr, key, &job.client, MAX_BACKOFF);
    first_contact(&mut collector, shutdown).await?;
    let reply_queue = format!("squares.reply.{:016x}", rand::random::<u64>());
    if let Some(client) = collector.connected() {
        client.declare(&reply_queue, None).await?;
    }
    let mut collector = Replies::new(collector, reply_queue.clone());
    let start = Instant::now();
    let batches = job.tasks.div_ceil(u64::from(job.batch)) as usize;
    let put_times: Arc<Vec<AtomicU64>> =
        Arc::new((0..batches).map(|_| AtomicU64::new(0)).collect());

    let stop_producer = CancellationToken::new();
    let producing = tokio::spawn(produce(
        Submitter::new(producer, Some(reply_queue.clone())),
        job.clone(),
        start,
        put_times.clone(),
        stop_producer.clone(),
    ));

    let mut tally = Tally::new(job.tasks);
    let progress = Progress::new(job.progress, job.tasks);
    let mut last_result = Instant::now();
    let ending = loop {
        if tally.seen == job.tasks {
            break Ending::Complete;
        }
        if job.timeout.is_some_and(|t| start.elapsed() >= t) {
            break Ending::TimedOut;
        }
        if last_result.elapsed() >= job.stall_timeout {
            break Ending::Stalled;
        }
        // Leased, and acknowledged once recorded: results in flight when a connection drops
        // are redelivered, never lost, and the tally knows them again.
        let taken = tokio::select! {
            () = shutdown.cancelled() => break Ending::Interrupted,
            r = collector.next(COLLECT_BATCH, POLL) => r,
        };
        let replies = taken?;
        if replies.is_empty() {
            continue;
        }
        last_result = Instant::now();
        let now_us = start.elapsed().as_micros() as u64;
        let trickle = replies.len() < LINGER_BELOW;
        let ids: Vec<_> = replies.iter().map(|(id, _)| *id).collect();
        for (id, reply) in replies {
            match reply.outcome {
                TaskOutcome::Done(result) => tally.record(job, id, &result, now_us, &put_times),
                TaskOutcome::Dead { reason, .. } => tally.dead(reply.task, &reason),
            }
        }
        progress.update(tally.seen);
        if !collector.ack(ids.clone()).await? {
            tally.maybe_again.extend(ids);
        }
        if trickle {
            tokio::time::sleep(LINGER).await;
        }
    };
    progress.finish();
    // A job that stalled because its master went away says so.
    let cause = (ending == Ending::Stalled)
        .then(|| collector.link().last_error())
        .flatten()
        .map(|err| format!("the master at {addr} went away: {err}"));
    stop_producer.cancel();
    match producing.await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => warn!(cause = %err, "producer failed"),
        Err(err) => warn!(cause = %err, "producer panicked"),
    }
    // The job's results go with it: a later job never sees them. Its tasks still queued (a
    // stopped job) are settled by workers with their results dropped.
    // (A wait the collector left behind ends with its connection.)
    collector.link().disconnect();
    let deleted = taskmill::producer::delete_reply_queue(collector.link(), &reply_queue);
    if let Err(err) = deleted.await {
        warn!(queue = %reply_queue, cause = %err, "cannot delete the job's reply queue");
    }
    let elapsed = start.elapsed().as_secs_f64();
    Ok(JobReport {
        ending,
        cause,
        tasks: job.tasks,
        verified: tally.verified,
        wrong: tally.wrong,
        foreign: tally.foreign,
        duplicates: tally.duplicates,
        results_again: tally.results_again,
        redelivered: tally.redelivered,
        dead: tally.dead,
        missing: job.tasks - tally.seen,
        workers_seen: tally.workers.len() as u64,
        seed: job.seed,
        elapsed_secs: elapsed,
        tasks_per_sec: if elapsed > 0.0 {
            tally.seen as f64 / elapsed
        } else {
            0.0
        },
        latency_p50_us: tally.latency.value_at_quantile(0.5),
        latency_p90_us: tally.latency.value_at_quantile(0.9),
        latency_p99_us: tally.latency.value_at_quantile(0.99),
        latency_p999_us: tally.latency.value_at_quantile(0.999),
        latency_max_us: tally.latency.max(),
    })
}

/// Connects `link`, giving up with a clear error if no master answers within
/// [`FIRST_CONTACT`]: a job against a master that was never there says so in seconds. (One
/// that goes away later is waited for, up to the stall timeout.)
async fn first_contact(
    link: &mut Reconnecting,
    shutdown: &CancellationToken,
) -> Result<(), JobError> {
    let started = Instant::now();
    loop {
        let err = match link.client().await {
            Ok(_) => return Ok(()),
            Err(err) if !err.is_transient() => return Err(err.into()),
            Err(err) => err,
        };
        if started.elapsed() >= FIRST_CONTACT {
            return Err(JobError::Unreachable {
                addr: link.addr().to_owned(),
                tried: FIRST_CONTACT,
                cause: err,
            });
        }
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            retried = link.failed(err) => retried?,
        }
    }
}

/// Puts every task in order, waiting for room, recording when each batch was sent. Each put is
/// carried out at most once (see [`Submitter`]).
async fn produce(
    mut submitter: Submitter,
    job: JobConfig,
    start: Instant,
    put_times: Arc<Vec<AtomicU64>>,
    stop: CancellationToken,
) -> Result<(), ClientError> {
    let batch = u64::from(job.batch);
    for (index, first) in (0..job.tasks).step_by(batch as usize).enumerate() {
        let last = (first + batch).min(job.tasks);
        // One buffer for the batch, so a retry's clone of the items copies no payload either.
        let mut tasks = PayloadBatch::with_capacity((last - first) as usize, 10);
        for seq in first..last {
            let task = SquareTask {
                seq,
                input: input_for(job.seed, seq, job.min, job.max),
            };
            tasks.push(&task).expect("a SquareTask always encodes");
        }
        put_times[index].store(start.elapsed().as_micros() as u64, Ordering::Relaxed);
        submitter.put(TASKS_QUEUE, tasks.finish(), &stop).await?;
        if stop.is_cancelled() {
            break;
        }
    }
    Ok(())
}
