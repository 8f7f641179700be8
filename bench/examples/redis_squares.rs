//! Peer benchmark: the squares job over a Redis list work queue (owned by the peer comparison,
//! scripts/compare-peers.sh; not product code).
//!
//! A producer LPUSHes `--count` tasks onto `taskmill-peer:tasks`, `--batch` values per multi-value
//! LPUSH and one LPUSH per round trip. `--workers` worker connections pop tasks (batch 1: `BRPOP`;
//! batch > 1: Redis 7 `BLMPOP 1 1 tasks RIGHT COUNT b`, or `RPOP tasks b` with a short retry on
//! Redis < 7), square them and LPUSH the results (multi-value) onto `taskmill-peer:results`. A
//! collector pops results the same way, verifies every square and stops at `--count`.
//! `--feed-batch` sets the producer's and collector's batch apart from the workers' (default:
//! the same as `--batch`).
//!
//! This is a plain list queue with no acknowledgement and no lease: a task popped by a worker
//! that then dies is lost, like the Python original. The reliable Redis pattern
//! (`LMOVE`/`RPOPLPUSH` into a processing list, then `LREM` to acknowledge) costs more round
//! trips and work on the server, so this measurement favours Redis over taskmill, which leases
//! and acknowledges.
//!
//! RESP is written and read by hand over a tokio `TcpStream` (it is tiny), so the example needs
//! no dependency beyond the bench crate's own. Every reply read has a timeout and the whole run
//! has a deadline. Tasks travel as decimal text `seq:input`, results as `seq:square`; the input
//! of task `seq` is `seq % 10007`, so the collector can check each square without a table.
//!
//! ```sh
//! redis-server --port 6390 --save '' --appendonly no &
//! cargo run --release -p taskmill-bench --example redis_squares -- \
//!     --addr 127.0.0.1:6390 --workers 4 --batch 64 --count 2000000 --json
//! ```

use std::future::Future;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use clap::Parser;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

const TASKS: &str = "taskmill-peer:tasks";
const RESULTS: &str = "taskmill-peer:results";
/// Seconds a blocking pop waits on the server before it answers nil.
const BLOCK_SECS: &str = "1";
/// Longest wait for any one reply: the blocking pop's own timeout plus slack.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause before retrying a non-blocking `RPOP` that found the list empty (Redis < 7 only).
const RETRY_PAUSE: Duration = Duration::from_micros(200);
/// The inputs are `seq % INPUT_MODULUS`, like the original's random integers below 10,000.
const INPUT_MODULUS: u64 = 10_007;

/// The squares job over a Redis list work queue (peer comparison for taskmill).
#[derive(Debug, Parser)]
struct Cli {
    /// Redis address (host:port).
    #[arg(long, default_value = "127.0.0.1:6379")]
    addr: String,
    /// Worker connections.
    #[arg(long, short = 'w', default_value_t = 4)]
    workers: usize,
    /// Values per LPUSH and per pop.
    #[arg(long, short = 'b', default_value_t = 1)]
    batch: usize,
    /// Values per LPUSH for the producer and per pop for the collector; default: --batch. With
    /// `--batch 1 --feed-batch 1024` only the workers go one task per round trip, which is the
    /// shape of `taskmill-bench squares -b 1` (its job puts and collects in batches).
    #[arg(long)]
    feed_batch: Option<usize>,
    /// Tasks in all.
    #[arg(long, short = 'n', default_value_t = 100_000)]
    count: u64,
    /// Client threads. 1 (the default) runs every connection on one thread, leaving the other
    /// core of a 2-core machine to the single-threaded Redis server: its best case here.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Give up after this many seconds in all.
    #[arg(long, default_value_t = 60)]
    deadline_secs: u64,
    /// Print one JSON line.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match cli.threads {
        0 | 1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
    };
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("redis_squares: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("redis_squares: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// One RESP reply.
#[derive(Debug)]
enum Reply {
    Simple(Vec<u8>),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

impl Reply {
    fn into_bulk(self) -> anyhow::Result<Vec<u8>> {
        match self {
            Reply::Bulk(Some(value)) | Reply::Simple(value) => Ok(value),
            other => bail!("expected a bulk string, got {other:?}"),
        }
    }

    fn into_array(self) -> anyhow::Result<Option<Vec<Reply>>> {
        match self {
            Reply::Array(items) => Ok(items),
            // RESP2 null bulk: what some pops answer when nothing came.
            Reply::Bulk(None) => Ok(None),
            other => bail!("expected an array, got {other:?}"),
        }
    }
}

/// One Redis connection speaking RESP2.
struct Conn {
    reader: BufReader<OwnedReadHalf>,
    writer: BufWriter<OwnedWriteHalf>,
    /// The command being built (reused).
    out: Vec<u8>,
    /// The reply line being read (reused).
    line: Vec<u8>,
}

impl Conn {
    async fn connect(addr: &str) -> anyhow::Result<Self> {
        let stream = tokio::time::timeout(REPLY_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| anyhow!("connecting to {addr} timed out"))?
            .with_context(|| format!("cannot connect to {addr}"))?;
        stream.set_nodelay(true)?;
        let (read, write) = stream.into_split();
        Ok(Conn {
            reader: BufReader::with_capacity(64 * 1024, read),
            writer: BufWriter::with_capacity(64 * 1024, write),
            out: Vec::with_capacity(4096),
            line: Vec::with_capacity(64),
        })
    }

    /// Start a command of `args` arguments (the name counts).
    fn begin(&mut self, args: usize) {
        self.out.clear();
        self.out.push(b'*');
        push_u64(&mut self.out, args as u64);
        self.out.extend_from_slice(b"\r\n");
    }

    fn arg(&mut self, arg: &[u8]) {
        self.out.push(b'$');
        push_u64(&mut self.out, arg.len() as u64);
        self.out.extend_from_slice(b"\r\n");
        self.out.extend_from_slice(arg);
        self.out.extend_from_slice(b"\r\n");
    }

    /// Send the built command and read its reply, within [`REPLY_TIMEOUT`].
    async fn call(&mut self) -> anyhow::Result<Reply> {
        let round_trip = async {
            self.writer.write_all(&self.out).await?;
            self.writer.flush().await?;
            self.read_reply().await
        };
        tokio::time::timeout(REPLY_TIMEOUT, round_trip)
            .await
            .map_err(|_| anyhow!("no reply from Redis within {REPLY_TIMEOUT:?}"))?
    }

    async fn command(&mut self, args: &[&[u8]]) -> anyhow::Result<Reply> {
        self.begin(args.len());
        for arg in args {
            self.arg(arg);
        }
        self.call().await
    }

    fn read_reply(&mut self) -> Pin<Box<dyn Future<Output = anyhow::Result<Reply>> + Send + '_>> {
        Box::pin(async move {
            self.line.clear();
            let n = self.reader.read_until(b'\n', &mut self.line).await?;
            if n == 0 {
                bail!("Redis closed the connection");
            }
            if self.line.len() < 3 || !self.line.ends_with(b"\r\n") {
                bail!(
                    "malformed reply line {:?}",
                    String::from_utf8_lossy(&self.line)
                );
            }
            let kind = self.line[0];
            let body = &self.line[1..self.line.len() - 2];
            match kind {
                b'+' => Ok(Reply::Simple(body.to_vec())),
                b'-' => bail!("Redis error: {}", String::from_utf8_lossy(body)),
                b':' => Ok(Reply::Int(parse_i64(body)?)),
                b'$' => {
                    let len = parse_i64(body)?;
                    if len < 0 {
                        return Ok(Reply::Bulk(None));
                    }
                    let mut value = vec![0; len as usize + 2];
                    self.reader.read_exact(&mut value).await?;
                    if !value.ends_with(b"\r\n") {
                        bail!("bulk string not ended by CRLF");
                    }
                    value.truncate(len as usize);
                    Ok(Reply::Bulk(Some(value)))
                }
                b'*' => {
                    let len = parse_i64(body)?;
                    if len < 0 {
                        return Ok(Reply::Array(None));
                    }
                    let mut items = Vec::with_capacity(len as usize);
                    for _ in 0..len {
                        items.push(self.read_reply().await?);
                    }
                    Ok(Reply::Array(Some(items)))
                }
                other => bail!("unknown reply type {:?}", other as char),
            }
        })
    }

    /// LPUSH `values` onto `key` in one round trip.
    async fn lpush(&mut self, key: &str, values: &[Vec<u8>]) -> anyhow::Result<()> {
        self.begin(2 + values.len());
        self.arg(b"LPUSH");
        self.arg(key.as_bytes());
        for value in values {
            self.arg(value);
        }
        match self.call().await? {
            // The list's new length: at least what was just pushed.
            Reply::Int(len) if len >= values.len() as i64 => Ok(()),
            other => bail!("LPUSH answered {other:?}"),
        }
    }

    /// Pop up to `batch` values from the right of `key` into `into`; none after about a second
    /// of an empty list.
    async fn pop(
        &mut self,
        key: &str,
        batch: usize,
        mode: PopMode,
        into: &mut Vec<Vec<u8>>,
    ) -> anyhow::Result<()> {
        into.clear();
        let count = batch.to_string();
        match (batch, mode) {
            (1, _) => {
                // BRPOP key timeout -> [key, value] | nil
                let reply = self
                    .command(&[b"BRPOP", key.as_bytes(), BLOCK_SECS.as_bytes()])
                    .await?;
                if let Some(pair) = reply.into_array()? {
                    let value = pair
                        .into_iter()
                        .nth(1)
                        .ok_or_else(|| anyhow!("short BRPOP"))?;
                    into.push(value.into_bulk()?);
                }
            }
            (_, PopMode::Blmpop) => {
                // BLMPOP timeout numkeys key RIGHT COUNT b -> [key, [values]] | nil
                let reply = self
                    .command(&[
                        b"BLMPOP",
                        BLOCK_SECS.as_bytes(),
                        b"1",
                        key.as_bytes(),
                        b"RIGHT",
                        b"COUNT",
                        count.as_bytes(),
                    ])
                    .await?;
                if let Some(pair) = reply.into_array()? {
                    let values = pair
                        .into_iter()
                        .nth(1)
                        .ok_or_else(|| anyhow!("short BLMPOP"))?;
                    for value in values.into_array()?.unwrap_or_default() {
                        into.push(value.into_bulk()?);
                    }
                }
            }
            (_, PopMode::RpopRetry) => {
                // RPOP key count -> [values] | nil; retry briefly for up to a second.
                let until = Instant::now() + Duration::from_secs(1);
                loop {
                    let reply = self
                        .command(&[b"RPOP", key.as_bytes(), count.as_bytes()])
                        .await?;
                    if let Some(values) = reply.into_array()? {
                        for value in values {
                            into.push(value.into_bulk()?);
                        }
                        break;
                    }
                    if Instant::now() >= until {
                        break;
                    }
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
            }
        }
        Ok(())
    }
}

/// How batches are popped: Redis 7's blocking `BLMPOP`, or `RPOP key count` and retry.
#[derive(Debug, Clone, Copy)]
enum PopMode {
    Blmpop,
    RpopRetry,
}

fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

fn parse_u64(text: &[u8]) -> anyhow::Result<u64> {
    if text.is_empty() || text.len() > 20 {
        bail!("not a number: {:?}", String::from_utf8_lossy(text));
    }
    let mut n: u64 = 0;
    for &b in text {
        if !b.is_ascii_digit() {
            bail!("not a number: {:?}", String::from_utf8_lossy(text));
        }
        n = n
            .checked_mul(10)
            .and_then(|n| n.checked_add(u64::from(b - b'0')))
            .ok_or_else(|| anyhow!("number too large"))?;
    }
    Ok(n)
}

fn parse_i64(text: &[u8]) -> anyhow::Result<i64> {
    match text.strip_prefix(b"-") {
        Some(rest) => Ok(-(parse_u64(rest)? as i64)),
        None => Ok(parse_u64(text)? as i64),
    }
}

/// `a:b` as two numbers.
fn split_pair(value: &[u8]) -> anyhow::Result<(u64, u64)> {
    let colon = value
        .iter()
        .position(|&b| b == b':')
        .ok_or_else(|| anyhow!("no ':' in {:?}", String::from_utf8_lossy(value)))?;
    Ok((parse_u64(&value[..colon])?, parse_u64(&value[colon + 1..])?))
}

fn pair(a: u64, b: u64) -> Vec<u8> {
    let mut value = Vec::with_capacity(24);
    push_u64(&mut value, a);
    value.push(b':');
    push_u64(&mut value, b);
    value
}

fn input_of(seq: u64) -> u64 {
    seq % INPUT_MODULUS
}

/// The major version from `INFO server`.
async fn redis_major(conn: &mut Conn) -> anyhow::Result<(u32, String)> {
    let info = conn.command(&[b"INFO", b"server"]).await?.into_bulk()?;
    let info = String::from_utf8_lossy(&info);
    let version = info
        .lines()
        .find_map(|line| line.strip_prefix("redis_version:"))
        .ok_or_else(|| anyhow!("INFO server has no redis_version"))?
        .trim()
        .to_owned();
    let major = version
        .split('.')
        .next()
        .and_then(|major| major.parse().ok())
        .ok_or_else(|| anyhow!("cannot read Redis version {version:?}"))?;
    Ok((major, version))
}

async fn producer(mut conn: Conn, count: u64, batch: usize) -> anyhow::Result<()> {
    let mut values = Vec::with_capacity(batch);
    let mut seq = 0;
    while seq < count {
        values.clear();
        while values.len() < batch && seq < count {
            values.push(pair(seq, input_of(seq)));
            seq += 1;
        }
        conn.lpush(TASKS, &values).await?;
    }
    Ok(())
}

async fn worker(
    mut conn: Conn,
    batch: usize,
    mode: PopMode,
    done: Arc<AtomicBool>,
) -> anyhow::Result<u64> {
    let mut tasks = Vec::with_capacity(batch);
    let mut results = Vec::with_capacity(batch);
    let mut squared = 0;
    while !done.load(Ordering::Relaxed) {
        conn.pop(TASKS, batch, mode, &mut tasks).await?;
        if tasks.is_empty() {
            continue;
        }
        results.clear();
        for task in &tasks {
            let (seq, input) = split_pair(task)?;
            results.push(pair(seq, input * input));
        }
        conn.lpush(RESULTS, &results).await?;
        squared += tasks.len() as u64;
    }
    Ok(squared)
}

/// Tasks received and how many of them were wrong (bad square, unknown or repeated seq).
async fn collector(
    mut conn: Conn,
    count: u64,
    batch: usize,
    mode: PopMode,
    received: &mut u64,
    wrong: &mut u64,
) -> anyhow::Result<()> {
    let mut seen = vec![false; count as usize];
    let mut values = Vec::with_capacity(batch);
    while *received < count {
        conn.pop(RESULTS, batch, mode, &mut values).await?;
        for value in &values {
            *received += 1;
            let (seq, square) = split_pair(value)?;
            let input = input_of(seq);
            match seen.get_mut(seq as usize) {
                Some(slot) if !*slot && square == input * input => *slot = true,
                _ => *wrong += 1,
            }
        }
    }
    Ok(())
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let feed_batch = cli.feed_batch.unwrap_or(cli.batch);
    if cli.workers == 0 || cli.batch == 0 || feed_batch == 0 || cli.count == 0 {
        bail!("--workers, --batch, --feed-batch and --count must be at least 1");
    }
    let deadline = Duration::from_secs(cli.deadline_secs);

    let mut admin = Conn::connect(&cli.addr).await?;
    let (major, version) = redis_major(&mut admin).await?;
    let mode = if major >= 7 {
        PopMode::Blmpop
    } else {
        PopMode::RpopRetry
    };
    admin
        .command(&[b"DEL", TASKS.as_bytes(), RESULTS.as_bytes()])
        .await?;

    // Every connection is open before the clock starts.
    let producer_conn = Conn::connect(&cli.addr).await?;
    let collector_conn = Conn::connect(&cli.addr).await?;
    let mut worker_conns = Vec::with_capacity(cli.workers);
    for _ in 0..cli.workers {
        worker_conns.push(Conn::connect(&cli.addr).await?);
    }

    let done = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let producer = tokio::spawn(producer(producer_conn, cli.count, feed_batch));
    let workers: Vec<_> = worker_conns
        .into_iter()
        .map(|conn| tokio::spawn(worker(conn, cli.batch, mode, done.clone())))
        .collect();

    let (mut received, mut wrong) = (0, 0);
    let collected = tokio::time::timeout(
        deadline,
        collector(
            collector_conn,
            cli.count,
            feed_batch,
            mode,
            &mut received,
            &mut wrong,
        ),
    )
    .await;
    let elapsed = start.elapsed().as_secs_f64();
    done.store(true, Ordering::Relaxed);

    // The workers stop within a blocking pop's timeout; no need to wait for that.
    producer.abort();
    let mut failures = Vec::new();
    for worker in workers {
        worker.abort();
        if let Ok(Ok(Err(err))) = tokio::time::timeout(Duration::from_millis(10), worker).await {
            failures.push(format!("worker: {err:#}"));
        }
    }
    let error = match collected {
        Ok(Ok(())) => None,
        Ok(Err(err)) => Some(format!("collector: {err:#}")),
        Err(_) => Some(format!("deadline of {deadline:?} passed")),
    }
    .or_else(|| failures.into_iter().next());
    // Leave nothing behind on a shared server.
    let _ = admin
        .command(&[b"DEL", TASKS.as_bytes(), RESULTS.as_bytes()])
        .await;

    let verified = error.is_none() && wrong == 0 && received == cli.count;
    let rate = if elapsed > 0.0 {
        received as f64 / elapsed
    } else {
        0.0
    };
    let pop = match (cli.batch, mode) {
        (1, _) => "BRPOP",
        (_, PopMode::Blmpop) => "BLMPOP",
        (_, PopMode::RpopRetry) => "RPOP+retry",
    };
    if cli.json {
        let mut report = serde_json::json!({
            "peer": "redis-list",
            "batch": cli.batch,
            "feed_batch": feed_batch,
            "workers": cli.workers,
            "threads": cli.threads.max(1),
            "tasks": received,
            "elapsed_secs": elapsed,
            "tasks_per_sec": rate,
            "verified": verified,
            "redis_version": version,
            "pop": pop,
        });
        if let Some(error) = &error {
            report["error"] = error.clone().into();
        }
        if wrong > 0 {
            report["wrong"] = wrong.into();
        }
        println!("{report}");
    } else {
        println!(
            "redis-list (Redis {version}): {received} tasks in {elapsed:.3} s = {rate:.0} tasks/s \
             over {} workers, batch {} (feed {feed_batch}); verified {verified}{}",
            cli.workers,
            cli.batch,
            error.map(|e| format!(" ({e})")).unwrap_or_default()
        );
    }
    Ok(if verified {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
