//! `taskmill dead` lists a queue's dead letters (peeked at, never taken) and `taskmill kick`
//! moves them back for another round of attempts.

use std::process::ExitCode;

use anyhow::Context as _;
use serde_json::{json, Value};
use taskmill::{Client, ClientError, Task};
use taskmill_cli::{say, tell};
use taskmill_protocol::{decode_payload, DeadLetter, ErrorKind, DEAD_SUFFIX};

use super::{connect, print_json};
use crate::cli::{DeadArgs, KickArgs};
use crate::output::{count, one_line, payload_fields, text};

pub async fn list(args: DeadArgs) -> anyhow::Result<ExitCode> {
    let mut client = connect(&args.common).await?;
    let dead = format!("{}{DEAD_SUFFIX}", args.queue);
    let json = args.common.json;
    let items = match client.peek(&dead, args.count).await {
        Ok(items) => items,
        // No dead-letter queue yet: nothing ever died.
        Err(ClientError::Server {
            kind: ErrorKind::NoSuchQueue,
            ..
        }) => Vec::new(),
        Err(err) => return Err(err).with_context(|| format!("cannot peek at {dead:?}")),
    };
    if !json && !items.is_empty() {
        say("ID\tTASK\tATTEMPTS\tREASON\tPAYLOAD");
    }
    for item in &items {
        let letter = decode_payload::<DeadLetter>(&item.payload).ok();
        if json {
            print_json(&letter_json(item, letter.as_ref()));
        } else {
            say(letter_line(item, letter.as_ref()));
        }
    }
    if !json {
        tell_rest(&mut client, &dead, items.len()).await;
    }
    Ok(ExitCode::SUCCESS)
}

/// Says on stderr when nothing was listed, or not everything.
async fn tell_rest(client: &mut Client, dead: &str, shown: usize) {
    let len = client.inspect(dead).await.map_or(0, |q| q.len);
    if shown == 0 {
        tell(format!("taskmill: no dead letters in {dead:?}"));
    } else if len > shown as u64 {
        tell(format!(
            "taskmill: {shown} of {len} dead letters in {dead:?} shown (-n for more)"
        ));
    }
}

/// One tab-separated line: the item's id in the dead-letter queue, the task's id in its own
/// queue, its deliveries, why the last one failed and its payload; reason and payload
/// escaped to stay on one line. An item that is not a [`DeadLetter`] (put there by hand)
/// shows `-` and its payload as it is.
fn letter_line(item: &Task, letter: Option<&DeadLetter>) -> String {
    match letter {
        Some(d) => format!(
            "{}\t{}\t{}\t{}\t{}",
            item.id,
            d.task,
            d.attempts,
            one_line(&d.reason),
            one_line(&text(&d.payload))
        ),
        None => format!("{}\t-\t-\t-\t{}", item.id, one_line(&text(&item.payload))),
    }
}

/// The same as a JSON object; `task`, `queue`, `attempts` and `reason` are `null` for an item
/// that is not a [`DeadLetter`].
fn letter_json(item: &Task, letter: Option<&DeadLetter>) -> Value {
    let payload = letter.map_or(&item.payload, |d| &d.payload);
    let (payload, encoding) = payload_fields(payload);
    json!({
        "id": item.id,
        "task": letter.map(|d| d.task),
        "queue": letter.map(|d| &d.queue),
        "attempts": letter.map(|d| d.attempts),
        "reason": letter.map(|d| &d.reason),
        "payload": payload,
        "encoding": encoding,
    })
}

pub async fn kick(args: KickArgs) -> anyhow::Result<ExitCode> {
    let mut client = connect(&args.common).await?;
    let queue = &args.queue;
    let moved = client
        .kick(queue, args.count.unwrap_or(u32::MAX))
        .await
        .with_context(|| format!("cannot kick dead letters back to {queue:?}"))?;
    if args.common.json {
        print_json(&json!({ "queue": queue, "kicked": moved }));
    } else {
        say(format!(
            "{} moved from {queue}{DEAD_SUFFIX} back to {queue}",
            count(moved, "dead letter")
        ));
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_letter_is_one_line_with_its_reason_escaped() {
        let letter = DeadLetter {
            task: 7,
            queue: "jobs".into(),
            attempts: 5,
            reason: "exit 3: line one\nline two".into(),
            payload: "hello".into(),
        };
        let item = Task::new(40, 1, taskmill_protocol::encode_payload(&letter).unwrap());
        let decoded = decode_payload::<DeadLetter>(&item.payload).ok();
        assert_eq!(
            letter_line(&item, decoded.as_ref()),
            "40\t7\t5\texit 3: line one\\nline two\thello"
        );
        let json = letter_json(&item, decoded.as_ref());
        assert_eq!(json["reason"], "exit 3: line one\nline two");
        assert_eq!(json["payload"], "hello");
        let raw = Task::new(41, 1, "by hand".into());
        assert_eq!(letter_line(&raw, None), "41\t-\t-\t-\tby hand");
        assert_eq!(letter_json(&raw, None)["task"], Value::Null);
    }
}
