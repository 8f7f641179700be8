//! `taskmill take` (items removed as they are sent, at most once) and `taskmill peek` (left in
//! place): payloads one per line, or one JSON object per item.

use std::process::ExitCode;

use anyhow::Context as _;
use taskmill::{Task, Wait};
use taskmill_cli::{say, tell};

use super::{connect, print_json, wait};
use crate::cli::{PeekArgs, TakeArgs};
use crate::output::{task_json, text};

pub async fn take(args: TakeArgs) -> anyhow::Result<ExitCode> {
    let mut client = connect(&args.common).await?;
    let (queue, json) = (&args.queue, args.common.json);
    let mut left = args.count;
    let mut this_wait = wait(args.wait);
    let mut taken = 0;
    // One reply holds what fits in a frame; more requests get the rest, without waiting: the
    // wait is for a first item only.
    while left > 0 {
        let tasks = client
            .take(queue, left, this_wait)
            .await
            .with_context(|| format!("cannot take from {queue:?} ({taken} taken and printed)"))?;
        if tasks.is_empty() {
            break;
        }
        // Printed as they arrive: they are off the queue already.
        print(&tasks, json);
        taken += tasks.len();
        left -= tasks.len() as u32;
        this_wait = Wait::No;
    }
    if taken == 0 && !json {
        tell(format!("taskmill: queue {queue:?} is empty"));
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn peek(args: PeekArgs) -> anyhow::Result<ExitCode> {
    let mut client = connect(&args.common).await?;
    let queue = &args.queue;
    let tasks = client
        .peek(queue, args.count)
        .await
        .with_context(|| format!("cannot peek at {queue:?}"))?;
    print(&tasks, args.common.json);
    if tasks.is_empty() && !args.common.json {
        tell(format!("taskmill: queue {queue:?} is empty"));
    }
    Ok(ExitCode::SUCCESS)
}

/// Payloads one per line, or one JSON object per line.
fn print(tasks: &[Task], json: bool) {
    for task in tasks {
        if json {
            print_json(&task_json(task));
        } else {
            say(text(&task.payload));
        }
    }
}
