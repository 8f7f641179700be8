//! What the review's two memory-amplifying requests (`../shared/REVIEW.md`, H1 and H2) cost a
//! running master: prints its resident memory (VmRSS) and peak (VmHWM) before and after each.
//! Measurement code for BENCHMARKS.md, not product code; `scripts/measure-hostile.sh` starts
//! a release master on a free loopback port and runs it.
//!
//! - **H1**: 3,000 one-byte tasks leased in one `Get`, then one `Nack` of all of them with a
//!   1,000,000-byte reason (a frame of about 1 MB).
//! - **H2**: a queue of capacity 1, full; then 3 connections each pipeline 64 waiting `Put`s
//!   of a 1 MiB frame: first the review's 1,048,540 empty items each, then (those being over
//!   the item cap now) 65,536 items of 14 bytes each, about as large a frame as the cap
//!   allows. The review saw 192 MiB sent hold 6.2 GiB.
//!
//! ```sh
//! TASKMILL_AUTHKEY=... cargo run --release -p taskmill-bench --example hostile_memory -- \
//!     127.0.0.1:5000 MASTER_PID [h1]
//! ```
//!
//! With `h1`, only the first request is sent. Between H1 and H2 it also times a put of 65,536
//! empty items, the most one request may carry (the review's L4: 158 ms for 1,048,560).

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use bytes::Bytes;
use taskmill::Client;
use taskmill_protocol::{AuthKey, Delivery, ErrorKind, Reply, Request, Wait};

/// VmRSS and VmHWM of `pid`, in MiB.
fn memory(pid: u32) -> anyhow::Result<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let kib = |key: &str| -> anyhow::Result<f64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(key))
            .with_context(|| format!("no {key} in /proc/{pid}/status"))?;
        let n: f64 = line.split_whitespace().nth(1).unwrap_or("0").parse()?;
        Ok(n / 1024.0)
    };
    Ok((kib("VmRSS:")?, kib("VmHWM:")?))
}

fn show(what: &str, pid: u32) -> anyhow::Result<()> {
    let (rss, hwm) = memory(pid)?;
    println!("{what:<58} master RSS {rss:>8.1} MiB, peak {hwm:>8.1} MiB");
    Ok(())
}

async fn nack_amplification(addr: &str, key: &AuthKey, pid: u32) -> anyhow::Result<()> {
    const TASKS: usize = 3000;
    let mut client = Client::connect(addr, key).await?;
    client
        .put("h1", vec![Bytes::from_static(b"x"); TASKS], Wait::No)
        .await?;
    let tasks = client
        .get_with(
            "h1",
            TASKS as u32,
            Wait::No,
            Delivery::Lease { millis: None },
        )
        .await?;
    if tasks.len() != TASKS {
        bail!("leased {} tasks, not {TASKS}", tasks.len());
    }
    show("H1: 3,000 tasks leased", pid)?;
    let started = Instant::now();
    let reply = client
        .request(Request::Nack {
            queue: "h1".into(),
            tasks: tasks.iter().map(|t| t.id).collect(),
            delay_ms: 0,
            reason: "r".repeat(1_000_000),
            fatal: false,
        })
        .await?;
    let took = started.elapsed();
    match reply {
        Reply::Settled { done, .. } => println!("H1: nack settled {done} tasks in {took:?}"),
        other => bail!("unexpected reply to the nack: {other:?}"),
    }
    show("H1: after one 1 MB Nack of 3,000 tasks", pid)
}

/// Pipelines 64 waiting puts of `items` to "full" on a new connection; returns the client
/// (its puts still waiting) and how many were refused at once, by kind.
async fn waiting_puts(
    addr: &str,
    key: &AuthKey,
    items: &[Bytes],
) -> anyhow::Result<(Client, Vec<ErrorKind>)> {
    let mut client = Client::connect(addr, key).await?;
    for _ in 0..64 {
        let request = Request::Put {
            queue: "full".into(),
            items: items.to_vec(),
            wait: Wait::Forever,
            reply_to: None,
        };
        client.submit(request).await?;
    }
    // Refusals come at once; a ping's reply comes after them, as requests are handled in
    // order: what has not answered by then is waiting.
    let ping = client.submit(Request::Ping).await?;
    let mut refused = Vec::new();
    loop {
        let (id, reply) = tokio::time::timeout(Duration::from_secs(60), client.next_reply())
            .await
            .context("no reply within 60 s")??;
        match reply {
            Reply::Pong if id == ping => break,
            Reply::Error { kind, .. } => refused.push(kind),
            other => bail!("unexpected reply {other:?}"),
        }
    }
    Ok((client, refused))
}

async fn waiting_amplification(
    addr: &str,
    key: &AuthKey,
    pid: u32,
    what: &str,
    items: Vec<Bytes>,
) -> anyhow::Result<()> {
    let mut held = Vec::new();
    for conn in 1..=3 {
        let (client, refused) = waiting_puts(addr, key, &items).await?;
        held.push(client);
        let waiting = 64 - refused.len();
        let kinds: std::collections::BTreeSet<_> =
            refused.iter().map(|k| format!("{k:?}")).collect();
        println!(
            "H2 ({what}): connection {conn}: {} MiB sent, {waiting} waiting, {} refused {kinds:?}",
            64,
            refused.len()
        );
        show(&format!("H2 ({what}): after connection {conn}"), pid)?;
    }
    for client in &mut held {
        client.heartbeat().await?;
    }
    drop(held);
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(addr), Some(pid)) = (args.next(), args.next()) else {
        bail!("usage: hostile_memory MASTER_ADDR MASTER_PID (key in TASKMILL_AUTHKEY)");
    };
    let pid: u32 = pid.parse().context("MASTER_PID")?;
    let key = AuthKey::new(std::env::var("TASKMILL_AUTHKEY").context("TASKMILL_AUTHKEY")?)?;
    show("start", pid)?;
    nack_amplification(&addr, &key, pid).await?;
    // `h1` stops here: a build from before the fix would take gigabytes for H2.
    if args.next().as_deref() == Some("h1") {
        return Ok(());
    }

    let mut client = Client::connect(&addr, &key).await?;
    // L4: the longest a put may hold its queue's lock is one of as many items as allowed.
    let started = Instant::now();
    client
        .put("l4", vec![Bytes::new(); 65_536], Wait::No)
        .await?;
    println!(
        "L4: a put of 65,536 empty items answered in {:?}",
        started.elapsed()
    );
    client
        .request(Request::Declare {
            queue: "full".into(),
            capacity: Some(1),
        })
        .await?;
    client.put("full", vec![Bytes::new()], Wait::No).await?;
    let review = vec![Bytes::new(); 1_048_540];
    waiting_amplification(&addr, &key, pid, "1,048,540 empty items", review).await?;
    let capped = vec![Bytes::from_static(&[7; 14]); 65_536];
    waiting_amplification(&addr, &key, pid, "65,536 items of 14 B", capped).await?;
    show("end", pid)?;
    Ok(())
}
