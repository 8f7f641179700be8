//! Counting primes in ranges with taskmill: a typed job, a worker running an async fn per
//! task, and a producer that awaits each task's result.
//!
//! ```sh
//! taskmill-master serve --listen 127.0.0.1:5555 &      # with TASKMILL_AUTHKEY set
//! cargo run -p taskmill --example primes -- worker &    # as many as you like, anywhere
//! cargo run -p taskmill --example primes -- produce 1000000 10
//! ```
//!
//! `both` runs a worker and the producer in this one process. The master's address comes from
//! `TASKMILL_MASTER` (default `127.0.0.1:5555`), the key from `TASKMILL_AUTHKEY`.

use serde::{Deserialize, Serialize};
use taskmill::{AuthKey, Failure, Job, Json, Producer, WorkerBuilder};
use tokio_util::sync::CancellationToken;

/// Count the primes in `from..to`.
#[derive(Debug, Serialize, Deserialize)]
struct CountPrimes {
    from: u64,
    to: u64,
}

impl Job for CountPrimes {
    const QUEUE: &'static str = "primes";
    type Output = u64;
    type Codec = Json;
}

fn is_prime(n: u64) -> bool {
    n >= 2
        && (2..)
            .take_while(|d| d * d <= n)
            .all(|d| !n.is_multiple_of(d))
}

/// The work: CPU-bound, so off the async threads.
async fn count(task: CountPrimes) -> Result<u64, Failure> {
    if task.from > task.to {
        return Err(Failure::fatal(format!(
            "an empty range {}..{}",
            task.from, task.to
        )));
    }
    Ok(tokio::task::spawn_blocking(move || {
        (task.from..task.to).filter(|&n| is_prime(n)).count() as u64
    })
    .await?)
}

async fn produce(
    master: &str,
    key: &AuthKey,
    below: u64,
    parts: u64,
) -> Result<u64, Box<dyn std::error::Error>> {
    let producer = Producer::connect(master, key).await?;
    let step = below.div_ceil(parts);
    let tasks: Vec<_> = (0..below)
        .step_by(step as usize)
        .map(|from| CountPrimes {
            from,
            to: (from + step).min(below),
        })
        .collect();
    let handles = producer.submit_all(&tasks).await?;
    let mut total = 0;
    for (task, handle) in tasks.iter().zip(handles) {
        let primes = handle.await?;
        println!("{:>12}..{:<12} {primes}", task.from, task.to);
        total += primes;
    }
    producer.close().await?;
    println!("primes below {below}: {total}");
    Ok(total)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let master = std::env::var("TASKMILL_MASTER").unwrap_or_else(|_| "127.0.0.1:5555".into());
    let key = AuthKey::new(std::env::var("TASKMILL_AUTHKEY")?)?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let number =
        |at: usize, default: u64| args.get(at).and_then(|a| a.parse().ok()).unwrap_or(default);
    let worker = || {
        WorkerBuilder::new(master.clone(), key.clone())
            .concurrency(4)
            .job(count)
    };
    match args.first().map(String::as_str) {
        Some("worker") => {
            worker().run(CancellationToken::new()).await?;
        }
        Some("produce") => {
            produce(&master, &key, number(1, 1_000_000), number(2, 10)).await?;
        }
        Some("both") => {
            let stop = CancellationToken::new();
            let running = tokio::spawn(worker().run(stop.clone()));
            produce(&master, &key, number(1, 1_000_000), number(2, 10)).await?;
            stop.cancel();
            running.await??;
        }
        _ => eprintln!("usage: primes worker | produce [BELOW [PARTS]] | both [BELOW [PARTS]]"),
    }
    Ok(())
}
