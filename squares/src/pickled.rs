//! The squares job in Python's format, so Python and Rust take part in the same job through
//! the master's Python listener (`--python-listen`): tasks are pickled ints, results pickled
//! squares ([`Codec::Pickle`]) or the tutorial's `"n * n = square"` strings
//! ([`Codec::PickleText`]). The master stores both as they are; only the job's ends know the
//! format, which is a property of the job, never guessed from the bytes.
//!
//! No sequence number travels (a Python worker would not carry it), so the collector checks
//! the results as a multiset: each expected input once, with its square.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use taskmill::{AuthKey, Client, ClientError};
use taskmill_protocol::pickle::{self, Limits, Payload, Value};
use taskmill_protocol::Wait;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::handler::square;
use crate::job::{JobConfig, JobError};
use crate::payload::{RESULTS_QUEUE, TASKS_QUEUE};
use crate::report::{Ending, JobReport};
use crate::tally::input_for;

/// How tasks and results are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Codec {
    /// taskmill's own: `SquareTask` and `SquareResult` (docs/protocol.md).
    #[default]
    Bincode,
    /// A pickled int in, its pickled square out.
    Pickle,
    /// A pickled int in, the tutorial's pickled `"n * n = square"` out.
    PickleText,
}

/// `--codec`'s values: `bincode`, `pickle`, `pickle-text`.
pub fn parse_codec(s: &str) -> Result<Codec, String> {
    match s.trim() {
        "bincode" => Ok(Codec::Bincode),
        "pickle" => Ok(Codec::Pickle),
        "pickle-text" => Ok(Codec::PickleText),
        other => Err(format!("{other:?}: use bincode, pickle or pickle-text")),
    }
}

/// Largest input magnitude a pickled job takes: its square still fits an `i64`, which is
/// what the scanner reads a pickled int as.
pub const MAX_PICKLED_INPUT: i64 = 3_037_000_499;

/// A task for Python: `pickle.dumps(n)`.
pub fn task(n: i64) -> Bytes {
    pickle::int_pickle(i128::from(n)).into()
}

/// The answer to a pickled task, or why it is not one.
pub fn answer(payload: &[u8], codec: Codec) -> Result<Bytes, String> {
    let n = pickle::read_int(payload).ok_or("not a pickled int")?;
    let sq = square(n);
    Ok(match codec {
        Codec::PickleText => pickle::str_pickle(&format!("{n} * {n} = {sq}")),
        _ => pickle::int_pickle(sq),
    }
    .into())
}

/// A result as the collector reads it: the input when the result names it, and the square.
pub fn read_result(payload: &[u8]) -> Option<(Option<i64>, i128)> {
    let Payload::Pickle { value, .. } = pickle::inspect(payload, Limits::default()) else {
        return None;
    };
    match value {
        Value::Int(sq) => Some((None, i128::from(sq))),
        Value::Str(text) => {
            let parts: Vec<&str> = text.split(['*', '=']).map(str::trim).collect();
            let [a, b, sq] = parts[..] else {
                return None;
            };
            let (a, b): (i64, i64) = (a.parse().ok()?, b.parse().ok()?);
            (a == b).then_some(())?;
            Some((Some(a), sq.parse().ok()?))
        }
        _ => None,
    }
}

/// Runs the job in Python's format against the master at `addr`: puts the inputs on
/// `tasks`, takes results off `results` (not a reply queue: Python workers put there).
pub async fn drive(
    addr: &str,
    key: &AuthKey,
    job: &JobConfig,
    shutdown: &CancellationToken,
) -> Result<JobReport, JobError> {
    if job.min < -MAX_PICKLED_INPUT || job.max > MAX_PICKLED_INPUT {
        return Err(JobError::Range {
            max: MAX_PICKLED_INPUT,
        });
    }
    let mut producer = Client::connect_with(addr, key, &job.client).await?;
    let mut collector = Client::connect_with(addr, key, &job.client).await?;
    let start = Instant::now();
    let mut expected: HashMap<i64, u32> = HashMap::new();
    for seq in 0..job.tasks {
        *expected
            .entry(input_for(job.seed, seq, job.min, job.max))
            .or_default() += 1;
    }
    let (seed, tasks, batch, min, max) = (job.seed, job.tasks, job.batch, job.min, job.max);
    let stop = shutdown.clone();
    let producing = tokio::spawn(async move {
        let mut seq = 0;
        while seq < tasks && !stop.is_cancelled() {
            let last = (seq + u64::from(batch)).min(tasks);
            let items = (seq..last)
                .map(|s| task(input_for(seed, s, min, max)))
                .collect();
            let put = producer.put(TASKS_QUEUE, items, Wait::Millis(250)).await?;
            seq += u64::from(put.accepted);
        }
        Ok::<_, ClientError>(())
    });
    let (mut seen, mut verified, mut wrong, mut foreign, mut duplicates) = (0u64, 0, 0, 0, 0);
    let mut last_result = Instant::now();
    let ending = loop {
        if seen == job.tasks {
            break Ending::Complete;
        }
        if job.timeout.is_some_and(|t| start.elapsed() >= t) {
            break Ending::TimedOut;
        }
        if last_result.elapsed() >= job.stall_timeout {
            break Ending::Stalled;
        }
        let got = tokio::select! {
            () = shutdown.cancelled() => break Ending::Interrupted,
            got = collector.get(RESULTS_QUEUE, 4096, Wait::Millis(250)) => got?,
        };
        if got.is_empty() {
            continue;
        }
        last_result = Instant::now();
        let ids = got.iter().map(|t| t.id).collect();
        for result in got {
            let Some((input, sq)) = read_result(&result.payload) else {
                foreign += 1;
                continue;
            };
            // A bare square names its input up to sign: try the root, then its negative.
            let root = sq.max(0).isqrt();
            let candidates = match input {
                Some(n) => vec![n],
                None if root * root == sq => [root, -root]
                    .into_iter()
                    .filter_map(|r| i64::try_from(r).ok())
                    .collect(),
                None => vec![],
            };
            let Some(n) = candidates.into_iter().find(|n| expected.contains_key(n)) else {
                foreign += 1;
                continue;
            };
            let left = expected.get_mut(&n).expect("found");
            if *left == 0 {
                duplicates += 1;
                continue;
            }
            *left -= 1;
            seen += 1;
            if sq == square(n) {
                verified += 1;
            } else {
                warn!(input = n, got = %sq, "wrong result");
                wrong += 1;
            }
        }
        collector.ack(RESULTS_QUEUE, ids).await?;
    };
    producing.abort();
    if let Ok(Ok(Err(err))) = tokio::time::timeout(Duration::from_secs(1), producing).await {
        warn!(cause = %err, "producer failed");
    }
    let elapsed = start.elapsed().as_secs_f64();
    Ok(JobReport {
        ending,
        cause: None,
        tasks: job.tasks,
        verified,
        wrong,
        foreign,
        duplicates,
        results_again: 0,
        redelivered: 0,
        dead: 0,
        missing: job.tasks - seen,
        workers_seen: 0,
        seed: job.seed,
        elapsed_secs: elapsed,
        tasks_per_sec: if elapsed > 0.0 {
            seen as f64 / elapsed
        } else {
            0.0
        },
        latency_p50_us: 0,
        latency_p90_us: 0,
        latency_p99_us: 0,
        latency_p999_us: 0,
        latency_max_us: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_python_values_the_collector_reads_back() {
        let t = task(-12);
        assert_eq!(&t[..], [0x80, 4, 0x4a, 0xf4, 0xff, 0xff, 0xff, 0x2e]);
        let sq = answer(&t, Codec::Pickle).unwrap();
        assert_eq!(read_result(&sq), Some((None, 144)));
        let text = answer(&t, Codec::PickleText).unwrap();
        assert_eq!(read_result(&text), Some((Some(-12), 144)));
        assert!(answer(b"junk", Codec::Pickle).is_err());
        assert_eq!(read_result(&pickle::str_pickle("7 * 8 = 56")), None);
    }
}
