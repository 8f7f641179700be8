//! The squares job (`taskmill-master run`): serve the queues, put N random integers, collect and
//! verify every square exactly once, and report throughput and latency.
//!
//! The job talks to its own master over TCP through the public [`Client`], exactly as an
//! external producer and collector would. Inputs are derived from `(seed, seq)`, so checking
//! a result needs no stored copy of the inputs: memory is one bit per task plus one timestamp
//! per put batch.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use taskmill_protocol::squares::{SquareResult, SquareTask, RESULTS_QUEUE, TASKS_QUEUE};
use taskmill_protocol::{
    decode_payload, AuthKey, Client, ClientError, ClientOptions, PayloadBatch, Wait,
};
use taskmill_worker::WorkerConfig;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::ServerConfig;

/// Results taken per request by the collector.
const COLLECT_BATCH: u32 = 4096;

/// When results trickle in (workers handing in one task at a time), every get would bring
/// back one or two of them: a round trip and a wake-up on both sides per result. So after a
/// get that brought back fewer than `LINGER_BELOW`, the collector waits `LINGER` for more to
/// gather (tokio's millisecond timer makes that 0.5-1.5 ms). A result is recorded at most that
/// much later; the job's CPU per task falls by about a tenth (BENCHMARKS.md).
const LINGER_BELOW: usize = 64;
const LINGER: Duration = Duration::from_micros(500);

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
        }
    }
}

fn rand_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    splitmix64(nanos ^ u64::from(std::process::id()))
}

/// How the job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Ending {
    /// Every task came back.
    Complete,
    /// `timeout` passed.
    TimedOut,
    /// No result for `stall_timeout`.
    Stalled,
    /// Stopped by a signal.
    Interrupted,
}

/// The job's summary.
#[derive(Debug, Clone, Serialize)]
pub struct JobReport {
    pub ending: Ending,
    pub tasks: u64,
    /// Results with the right input and square, each task counted once.
    pub verified: u64,
    /// Results whose input or square was wrong.
    pub wrong: u64,
    /// Results for a task already seen (redelivered work), dropped.
    pub duplicates: u64,
    /// Verified results that came from a redelivery (the task's first holder lost it).
    pub redelivered: u64,
    /// Tasks with no result.
    pub missing: u64,
    /// Distinct workers whose results were verified or counted during the job.
    pub workers_seen: u64,
    pub seed: u64,
    pub elapsed_secs: f64,
    pub tasks_per_sec: f64,
    /// Time from a task's put request to its result being collected, in microseconds.
    pub latency_p50_us: u64,
    pub latency_p90_us: u64,
    pub latency_p99_us: u64,
    pub latency_p999_us: u64,
    pub latency_max_us: u64,
}

impl JobReport {
    /// Every input came back exactly once with the right square.
    pub fn success(&self) -> bool {
        self.ending == Ending::Complete && self.verified == self.tasks && self.wrong == 0
    }
}

/// Why the job could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("--min {min} is greater than --max {max}")]
    EmptyRange { min: i64, max: i64 },
    /// Not `#[from]`: the message already says what the client error says, and a source
    /// would make the error chain repeat it.
    #[error("the job cannot go on: {0}")]
    Client(ClientError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl From<ClientError> for JobError {
    fn from(err: ClientError) -> Self {
        JobError::Client(err)
    }
}

/// Serves `listener`, runs the job against it, then stops the server.
pub async fn run(
    listener: TcpListener,
    server: ServerConfig,
    job: JobConfig,
    shutdown: CancellationToken,
) -> Result<JobReport, JobError> {
    let addr = listener.local_addr()?;
    // A wildcard listen address is not something to connect to; loopback reaches the same port.
    let connect_addr = if addr.ip().is_unspecified() {
        format!("127.0.0.1:{}", addr.port())
    } else {
        addr.to_string()
    };
    let key = server.key.clone();
    let server_stop = CancellationToken::new();
    let server_task = tokio::spawn(crate::server::run(listener, server, server_stop.clone()));
    let report = run_against(&connect_addr, &key, &job, &shutdown).await;
    server_stop.cancel();
    match server_task.await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => warn!(cause = %err, "master stopped with an error"),
        Err(err) => warn!(cause = %err, "master task panicked"),
    }
    report
}

/// Runs the job against the master at `addr`, with `job.local_workers` in-process workers
/// that are stopped when it ends.
pub async fn run_against(
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
        workers.spawn(taskmill_worker::run(config, worker_stop.clone()));
    }
    info!(
        tasks = job.tasks,
        local_workers = job.local_workers,
        master = %addr,
        seed = job.seed,
        "squares job started"
    );
    let report = drive(addr, key, job, shutdown).await;
    worker_stop.cancel();
    while let Some(done) = workers.join_next().await {
        match done {
            Ok(Ok(_)) => {}
            Ok(Err(err)) => warn!(cause = %err, "local worker failed"),
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
    let producer = Link::new("producer", addr, key, &job.client);
    let mut collector = Link::new("collector", addr, key, &job.client);
    let start = Instant::now();
    let batches = job.tasks.div_ceil(u64::from(job.batch)) as usize;
    let put_times: Arc<Vec<AtomicU64>> =
        Arc::new((0..batches).map(|_| AtomicU64::new(0)).collect());

    let stop_producer = CancellationToken::new();
    let producing = tokio::spawn(produce(
        producer,
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
        // are redelivered, never lost, and the tally drops the duplicates.
        let wait = Wait::Millis(POLL.as_millis() as u64);
        let taken = tokio::select! {
            () = shutdown.cancelled() => break Ending::Interrupted,
            r = async { collector.client().await?.get(RESULTS_QUEUE, COLLECT_BATCH, wait).await } => r,
        };
        let results = match taken {
            Ok(results) => results,
            Err(err) => {
                collector.failed(err).await?;
                continue;
            }
        };
        if results.is_empty() {
            continue;
        }
        last_result = Instant::now();
        let now_us = start.elapsed().as_micros() as u64;
        let trickle = results.len() < LINGER_BELOW;
        let ids = results.iter().map(|r| r.id).collect();
        for result in results {
            tally.record(job, &result.payload, now_us, &put_times);
        }
        progress.update(tally.seen);
        let acked = async { collector.client().await?.ack(RESULTS_QUEUE, ids).await };
        if let Err(err) = acked.await {
            collector.failed(err).await?;
        }
        if trickle {
            tokio::time::sleep(LINGER).await;
        }
    };
    progress.finish();
    stop_producer.cancel();
    match producing.await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => warn!(cause = %err, "producer failed"),
        Err(err) => warn!(cause = %err, "producer panicked"),
    }
    let elapsed = start.elapsed().as_secs_f64();
    Ok(JobReport {
        ending,
        tasks: job.tasks,
        verified: tally.verified,
        wrong: tally.wrong,
        duplicates: tally.duplicates,
        redelivered: tally.redelivered,
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

/// A connection that is made again after a transient error, so the job outlives a master
/// that stalls or drops it for a while.
struct Link {
    role: &'static str,
    addr: String,
    key: AuthKey,
    options: ClientOptions,
    client: Option<Client>,
    backoff: Duration,
}

impl Link {
    fn new(role: &'static str, addr: &str, key: &AuthKey, options: &ClientOptions) -> Self {
        Self {
            role,
            addr: addr.to_owned(),
            key: key.clone(),
            options: options.clone(),
            client: None,
            backoff: Duration::from_millis(50),
        }
    }

    async fn client(&mut self) -> Result<&mut Client, ClientError> {
        if self.client.is_none() {
            let client = Client::connect_with(&self.addr, &self.key, &self.options).await?;
            self.backoff = Duration::from_millis(50);
            self.client = Some(client);
        }
        Ok(self.client.as_mut().expect("just connected"))
    }

    /// Drops the connection after a transient error and waits a moment before the next try;
    /// anything else is returned.
    async fn failed(&mut self, err: ClientError) -> Result<(), ClientError> {
        if !err.is_transient() {
            return Err(err);
        }
        warn!(role = self.role, cause = %err, retry_in = ?self.backoff, "lost the master; reconnecting");
        self.client = None;
        tokio::time::sleep(self.backoff).await;
        self.backoff = (self.backoff * 2).min(Duration::from_secs(1));
        Ok(())
    }
}

/// Puts every task in order, waiting for room, recording when each batch was sent. A batch
/// whose reply was lost is put again; the collector drops the duplicate results.
async fn produce(
    mut link: Link,
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
        let mut items = tasks.finish();
        put_times[index].store(start.elapsed().as_micros() as u64, Ordering::Relaxed);
        while !items.is_empty() {
            let wait = Wait::Millis(POLL.as_millis() as u64);
            let put = tokio::select! {
                () = stop.cancelled() => return Ok(()),
                put = async { link.client().await?.put(TASKS_QUEUE, items.clone(), wait).await } => put,
            };
            match put {
                Ok(put) => drop(items.drain(..put.accepted as usize)),
                Err(err) => link.failed(err).await?,
            }
        }
    }
    Ok(())
}

/// The collector's running account.
struct Tally {
    seen_bits: Vec<u64>,
    seen: u64,
    verified: u64,
    wrong: u64,
    duplicates: u64,
    redelivered: u64,
    workers: std::collections::HashSet<u32>,
    latency: Histogram<u64>,
}

impl Tally {
    fn new(tasks: u64) -> Self {
        Self {
            seen_bits: vec![0; tasks.div_ceil(64) as usize],
            seen: 0,
            verified: 0,
            wrong: 0,
            duplicates: 0,
            redelivered: 0,
            workers: std::collections::HashSet::new(),
            latency: Histogram::new(3).expect("3 significant figures is valid"),
        }
    }

    fn record(&mut self, job: &JobConfig, payload: &[u8], now_us: u64, put_times: &[AtomicU64]) {
        let result: SquareResult = match decode_payload(payload) {
            Ok(r) => r,
            Err(err) => {
                warn!(cause = %err, "undecodable result");
                self.wrong += 1;
                return;
            }
        };
        if result.seq >= job.tasks {
            warn!(seq = result.seq, "result for a task this job never put");
            self.wrong += 1;
            return;
        }
        let (word, bit) = ((result.seq / 64) as usize, result.seq % 64);
        if self.seen_bits[word] & (1 << bit) != 0 {
            self.duplicates += 1;
            return;
        }
        self.seen_bits[word] |= 1 << bit;
        self.seen += 1;
        let input = input_for(job.seed, result.seq, job.min, job.max);
        let expected = i128::from(input) * i128::from(input);
        self.workers.insert(result.worker);
        if result.input == input && result.square == expected {
            self.verified += 1;
            if result.attempt > 1 {
                self.redelivered += 1;
            }
        } else {
            warn!(seq = result.seq, input, got_input = result.input, got = %result.square, "wrong result");
            self.wrong += 1;
        }
        let put_at =
            put_times[(result.seq / u64::from(job.batch)) as usize].load(Ordering::Relaxed);
        let _ = self.latency.record(now_us.saturating_sub(put_at).max(1));
    }
}

/// The summary a person reads.
pub fn render(r: &JobReport) -> String {
    let verdict = if r.success() {
        "OK: every input came back exactly once with the right square"
    } else {
        "FAILED"
    };
    format!(
        "{verdict}\n\
         ending:        {:?}\n\
         tasks:         {}\n\
         verified:      {}\n\
         wrong:         {}\n\
         missing:       {}\n\
         duplicates:    {} (results for tasks already verified, dropped)\n\
         redelivered:   {} (tasks completed on a later attempt)\n\
         workers seen:  {}\n\
         elapsed:       {:.3} s\n\
         throughput:    {:.0} tasks/s\n\
         latency:       p50 {} us, p99 {} us, max {} us (put request to result collected)\n\
         seed:          {}\n",
        r.ending,
        r.tasks,
        r.verified,
        r.wrong,
        r.missing,
        r.duplicates,
        r.redelivered,
        r.workers_seen,
        r.elapsed_secs,
        r.tasks_per_sec,
        r.latency_p50_us,
        r.latency_p99_us,
        r.latency_max_us,
        r.seed,
    )
}

/// The input for task `seq`: uniform in `min..=max`, a pure function of the seed.
pub fn input_for(seed: u64, seq: u64, min: i64, max: i64) -> i64 {
    let span = (i128::from(max) - i128::from(min) + 1) as u128;
    let r = u128::from(splitmix64(seed ^ splitmix64(seq)));
    (i128::from(min) + (r % span) as i128) as i64
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// A progress bar on a terminal, a log line every few seconds elsewhere.
enum Progress {
    Off,
    Bar(ProgressBar),
    Log {
        total: u64,
        start: Instant,
        next: std::cell::Cell<Instant>,
    },
}

impl Progress {
    const LOG_EVERY: Duration = Duration::from_secs(2);

    fn new(enabled: bool, total: u64) -> Self {
        if !enabled {
            return Self::Off;
        }
        if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} {per_sec} eta {eta}",
                )
                .expect("the template is valid"),
            );
            Self::Bar(bar)
        } else {
            let now = Instant::now();
            Self::Log {
                total,
                start: now,
                next: std::cell::Cell::new(now + Self::LOG_EVERY),
            }
        }
    }

    fn update(&self, done: u64) {
        match self {
            Self::Off => {}
            Self::Bar(bar) => bar.set_position(done),
            Self::Log { total, start, next } => {
                if Instant::now() >= next.get() {
                    next.set(Instant::now() + Self::LOG_EVERY);
                    let rate = done as f64 / start.elapsed().as_secs_f64();
                    info!("progress: {done}/{total} results ({rate:.0} tasks/s)");
                }
            }
        }
    }

    fn finish(&self) {
        if let Self::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use taskmill_protocol::encode_payload;

    #[test]
    fn inputs_are_deterministic_and_within_range() {
        for seq in 0..10_000 {
            let n = input_for(7, seq, -5, 5);
            assert!((-5..=5).contains(&n));
            assert_eq!(n, input_for(7, seq, -5, 5));
        }
        let full: Vec<i64> = (0..1000)
            .map(|s| input_for(1, s, i64::MIN, i64::MAX))
            .collect();
        assert!(full.iter().any(|&n| n < 0) && full.iter().any(|&n| n > 0));
        assert_eq!(input_for(3, 9, 42, 42), 42);
    }

    #[test]
    fn tally_counts_duplicates_and_wrong_answers() {
        let job = JobConfig {
            batch: 2,
            ..JobConfig::new(4)
        };
        let times: Vec<AtomicU64> = (0..2).map(|_| AtomicU64::new(0)).collect();
        let mut tally = Tally::new(4);
        let result = |seq: u64, delta: i128| {
            let input = input_for(job.seed, seq, job.min, job.max);
            encode_payload(&SquareResult {
                seq,
                input,
                square: i128::from(input) * i128::from(input) + delta,
                attempt: 2,
                worker: 5,
            })
            .unwrap()
        };
        tally.record(&job, &result(0, 0), 10, &times);
        tally.record(&job, &result(0, 0), 10, &times);
        tally.record(&job, &result(1, 1), 10, &times);
        tally.record(&job, &result(9, 0), 10, &times);
        tally.record(&job, b"junk", 10, &times);
        assert_eq!(
            (
                tally.seen,
                tally.verified,
                tally.duplicates,
                tally.wrong,
                tally.redelivered
            ),
            (2, 1, 1, 3, 1)
        );
    }
}
