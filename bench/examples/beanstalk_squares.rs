//! Peer benchmark: the squares job over beanstalkd (owned by the durable comparison,
//! scripts/compare-durable.sh; not product code).
//!
//! A producer puts `--count` tasks on tube `taskmill-tasks`, pipelining `--feed-batch` puts per
//! round trip. `--workers` worker connections each `reserve` a task, square it, then put the
//! result on `taskmill-results` and `delete` the task in one round trip (beanstalkd has no
//! batch reserve: one task at a time is its only way). A collector reserves results, sending
//! each delete with the next reservation, verifies every square and stops at `--count`. Like
//! taskmill's leases, a reserved task whose worker dies comes back (after its TTR).
//!
//! Run beanstalkd with its binlog for a durable comparison: `-b DIR -f 0` fsyncs before every
//! reply (the fair comparison with taskmill's `--fsync always`), `-b DIR` alone at most every
//! 50 ms. The protocol is written by hand over a tokio `TcpStream`; every reply read has a
//! timeout and the whole run a deadline. Tasks travel as `seq:input`, results as `seq:square`;
//! the input of task `seq` is `seq % 10007`.
//!
//! ```sh
//! beanstalkd -l 127.0.0.1 -p 11400 -b /tmp/bs -f 0 &
//! cargo run --release -p taskmill-bench --example beanstalk_squares -- \
//!     --addr 127.0.0.1:11400 --workers 8 --count 20000 --json
//! ```

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Parser;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

const TASKS: &str = "taskmill-tasks";
const RESULTS: &str = "taskmill-results";
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
const INPUT_MODULUS: u64 = 10_007;

/// The squares job over beanstalkd (peer comparison for taskmill's durable queues).
#[derive(Debug, Parser)]
struct Cli {
    /// beanstalkd address (host:port).
    #[arg(long, default_value = "127.0.0.1:11300")]
    addr: String,
    /// Worker connections, each one task at a time.
    #[arg(long, short = 'w', default_value_t = 8)]
    workers: usize,
    /// Puts the producer pipelines per round trip.
    #[arg(long, default_value_t = 256)]
    feed_batch: usize,
    /// Tasks in all.
    #[arg(long, short = 'n', default_value_t = 20_000)]
    count: u64,
    /// Give up after this many seconds in all.
    #[arg(long, default_value_t = 120)]
    deadline_secs: u64,
    /// Print one JSON line.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("beanstalk_squares: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("beanstalk_squares: {err:#}");
            ExitCode::FAILURE
        }
    }
}

struct Conn {
    reader: BufReader<OwnedReadHalf>,
    writer: BufWriter<OwnedWriteHalf>,
    line: String,
}

impl Conn {
    async fn connect(addr: &str, use_tube: &str, watch: &str) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("cannot connect to beanstalkd at {addr}"))?;
        stream.set_nodelay(true)?;
        let (read, write) = stream.into_split();
        let mut conn = Self {
            reader: BufReader::new(read),
            writer: BufWriter::new(write),
            line: String::new(),
        };
        for command in [
            format!("use {use_tube}\r\n"),
            format!("watch {watch}\r\n"),
            "ignore default\r\n".to_owned(),
        ] {
            conn.writer.write_all(command.as_bytes()).await?;
        }
        conn.writer.flush().await?;
        for _ in 0..3 {
            conn.reply().await?;
        }
        Ok(conn)
    }

    async fn reply(&mut self) -> anyhow::Result<&str> {
        self.line.clear();
        let read = tokio::time::timeout(REPLY_TIMEOUT, self.reader.read_line(&mut self.line));
        if read.await.context("no reply in time")?? == 0 {
            bail!("beanstalkd closed the connection");
        }
        Ok(self.line.trim_end())
    }

    /// Queues a `put` of `body` (sent by the next flush).
    async fn put(&mut self, body: &[u8]) -> anyhow::Result<()> {
        let head = format!("put 0 0 60 {}\r\n", body.len());
        self.writer.write_all(head.as_bytes()).await?;
        self.writer.write_all(body).await?;
        self.writer.write_all(b"\r\n").await?;
        Ok(())
    }

    async fn expect(&mut self, prefix: &str) -> anyhow::Result<()> {
        let reply = self.reply().await?;
        if !reply.starts_with(prefix) {
            bail!("expected {prefix}, got {reply:?}");
        }
        Ok(())
    }

    /// Reserves one job: its id and body, or `None` if none came within a second. The
    /// replies to `deletes` deletes written before it are read first.
    async fn reserve(&mut self, deletes: usize) -> anyhow::Result<Option<(u64, Vec<u8>)>> {
        self.writer.write_all(b"reserve-with-timeout 1\r\n").await?;
        self.writer.flush().await?;
        for _ in 0..deletes {
            self.expect("DELETED").await?;
        }
        let reply = self.reply().await?.to_owned();
        if reply == "TIMED_OUT" {
            return Ok(None);
        }
        let mut words = reply.split(' ');
        let (Some("RESERVED"), Some(id), Some(len)) = (words.next(), words.next(), words.next())
        else {
            bail!("expected RESERVED, got {reply:?}");
        };
        let (id, len): (u64, usize) = (id.parse()?, len.parse()?);
        let mut body = vec![0; len + 2];
        self.reader.read_exact(&mut body).await?;
        body.truncate(len);
        Ok(Some((id, body)))
    }
}

fn pair(a: u64, b: u64) -> Vec<u8> {
    format!("{a}:{b}").into_bytes()
}

fn split_pair(value: &[u8]) -> anyhow::Result<(u64, u64)> {
    let text = std::str::from_utf8(value)?;
    let (a, b) = text.split_once(':').context("not a pair")?;
    Ok((a.parse()?, b.parse()?))
}

async fn producer(mut conn: Conn, count: u64, batch: usize) -> anyhow::Result<()> {
    let mut seq = 0;
    while seq < count {
        let n = (count - seq).min(batch as u64);
        for s in seq..seq + n {
            conn.put(&pair(s, s % INPUT_MODULUS)).await?;
        }
        conn.writer.flush().await?;
        for _ in 0..n {
            conn.expect("INSERTED").await?;
        }
        seq += n;
    }
    Ok(())
}

async fn worker(mut conn: Conn, done: Arc<AtomicBool>) -> anyhow::Result<()> {
    while !done.load(Ordering::Relaxed) {
        let Some((id, body)) = conn.reserve(0).await? else {
            continue;
        };
        let (seq, input) = split_pair(&body)?;
        conn.put(&pair(seq, input * input)).await?;
        conn.writer
            .write_all(format!("delete {id}\r\n").as_bytes())
            .await?;
        conn.writer.flush().await?;
        conn.expect("INSERTED").await?;
        conn.expect("DELETED").await?;
    }
    Ok(())
}

/// Results verified, and how many were wrong (bad square, unknown or repeated seq).
async fn collector(mut conn: Conn, count: u64, wrong: &mut u64) -> anyhow::Result<u64> {
    let mut seen = vec![false; count as usize];
    let (mut received, mut unacked) = (0u64, 0usize);
    while received < count {
        // Deletes are pipelined: their replies are read before the next reservation's.
        let reserved = conn.reserve(unacked).await?;
        unacked = 0;
        let Some((id, body)) = reserved else {
            continue;
        };
        received += 1;
        let (seq, square) = split_pair(&body)?;
        let input = seq % INPUT_MODULUS;
        match seen.get_mut(seq as usize) {
            Some(slot) if !*slot && square == input * input => *slot = true,
            _ => *wrong += 1,
        }
        conn.writer
            .write_all(format!("delete {id}\r\n").as_bytes())
            .await?;
        unacked += 1;
    }
    conn.writer.flush().await?;
    for _ in 0..unacked {
        conn.expect("DELETED").await?;
    }
    Ok(received)
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    if cli.workers == 0 || cli.feed_batch == 0 || cli.count == 0 {
        bail!("--workers, --feed-batch and --count must be at least 1");
    }
    let deadline = Duration::from_secs(cli.deadline_secs);
    // Every connection is open before the clock starts.
    let producer_conn = Conn::connect(&cli.addr, TASKS, TASKS).await?;
    let collector_conn = Conn::connect(&cli.addr, RESULTS, RESULTS).await?;
    let mut workers = Vec::with_capacity(cli.workers);
    for _ in 0..cli.workers {
        workers.push(Conn::connect(&cli.addr, RESULTS, TASKS).await?);
    }
    let done = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let producer = tokio::spawn(producer(producer_conn, cli.count, cli.feed_batch));
    let workers: Vec<_> = workers
        .into_iter()
        .map(|conn| tokio::spawn(worker(conn, done.clone())))
        .collect();
    let mut wrong = 0;
    let collected =
        tokio::time::timeout(deadline, collector(collector_conn, cli.count, &mut wrong)).await;
    let elapsed = start.elapsed().as_secs_f64();
    done.store(true, Ordering::Relaxed);
    producer.abort();
    for worker in workers {
        worker.abort();
    }
    let (received, error) = match collected {
        Ok(Ok(received)) => (received, None),
        Ok(Err(err)) => (0, Some(format!("collector: {err:#}"))),
        Err(_) => (0, Some(format!("deadline of {deadline:?} passed"))),
    };
    let verified = error.is_none() && wrong == 0 && received == cli.count;
    let rate = received as f64 / elapsed.max(f64::EPSILON);
    if cli.json {
        let mut report = serde_json::json!({
            "peer": "beanstalkd",
            "workers": cli.workers,
            "feed_batch": cli.feed_batch,
            "tasks": received,
            "elapsed_secs": elapsed,
            "tasks_per_sec": rate,
            "verified": verified,
        });
        if let Some(error) = &error {
            report["error"] = error.clone().into();
        }
        println!("{report}");
    } else {
        println!(
            "beanstalkd: {received} tasks in {elapsed:.3} s = {rate:.0} tasks/s over {} workers; \
             verified {verified}{}",
            cli.workers,
            error.map(|e| format!(" ({e})")).unwrap_or_default()
        );
    }
    Ok(if verified {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
