//! Looking after queues: `purge`, `delete`, `declare`, `inspect`, and the master's `stats`
//! (printed by `taskmill_cli::stats`, as `taskmill-master stats` prints them).

use std::process::ExitCode;

use anyhow::Context as _;
use serde_json::json;
use taskmill::{ClientError, QueueStats};
use taskmill_cli::say;
use taskmill_cli::stats::{queue_json, queue_table};
use taskmill_protocol::ErrorKind;

use super::{connect, print_json};
use crate::cli::{DeclareArgs, DeleteArgs, InspectArgs, PurgeArgs, StatsArgs};
use crate::output::count;

pub async fn purge(args: PurgeArgs) -> anyhow::Result<ExitCode> {
    let mut client = connect(&args.common).await?;
    let queue = &args.queue;
    let purged = client
        .purge(queue)
        .await
        .with_context(|| format!("cannot purge {queue:?}"))?;
    if args.common.json {
        print_json(&json!({ "queue": queue, "purged": purged }));
    } else {
        say(format!("{} purged from {queue}", count(purged, "item")));
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn delete(args: DeleteArgs) -> anyhow::Result<ExitCode> {
    let mut client = connect(&args.common).await?;
    let queue = &args.queue;
    let discarded = match client.delete(queue, args.if_empty).await {
        Ok(n) => n,
        // The master's words name the queue; say what to do about it.
        Err(err @ ClientError::Server { kind, .. }) => {
            let hint = match kind {
                ErrorKind::NotEmpty => {
                    " (without --if-empty its items are discarded with it; `taskmill take` or \
                     `taskmill purge` empties it first)"
                }
                ErrorKind::InUse => {
                    " (wait for its workers to settle their tasks and stop, then try again)"
                }
                _ => "",
            };
            let err = anyhow::Error::new(err).context(format!("cannot delete {queue:?}"));
            return Err(anyhow::anyhow!("{err:#}{hint}"));
        }
        Err(err) => return Err(err).with_context(|| format!("cannot delete {queue:?}")),
    };
    if args.common.json {
        print_json(&json!({ "queue": queue, "deleted": true, "discarded": discarded }));
    } else {
        say(format!(
            "{queue} deleted, with {}",
            count(discarded, "item")
        ));
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn declare(args: DeclareArgs) -> anyhow::Result<ExitCode> {
    let mut client = connect(&args.common).await?;
    let queue = &args.queue;
    let stats = client
        .declare(queue, args.capacity)
        .await
        .with_context(|| format!("cannot declare {queue:?}"))?;
    print_queue(&stats, args.common.json);
    Ok(ExitCode::SUCCESS)
}

pub async fn inspect(args: InspectArgs) -> anyhow::Result<ExitCode> {
    let mut client = connect(&args.common).await?;
    let queue = &args.queue;
    let stats = client
        .inspect(queue)
        .await
        .with_context(|| format!("cannot inspect {queue:?}"))?;
    print_queue(&stats, args.common.json);
    Ok(ExitCode::SUCCESS)
}

pub async fn stats(args: StatsArgs) -> anyhow::Result<ExitCode> {
    let mut client = connect(&args.common).await?;
    let stats = client.stats().await.context("stats request failed")?;
    taskmill_cli::stats::print(&args.common.connect.master, stats, args.common.json)?;
    Ok(ExitCode::SUCCESS)
}

/// One queue as `stats` shows it: a row under the column names, or its JSON object.
fn print_queue(stats: &QueueStats, json: bool) {
    if json {
        print_json(&queue_json(stats));
    } else {
        say(queue_table(std::slice::from_ref(stats)).trim_end());
    }
}
