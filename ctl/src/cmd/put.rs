//! `taskmill put`: payloads from the arguments or stdin, checked whole before the first is
//! sent, put in batches that fit the master's frame, waiting for room up to `--wait`.

use std::ffi::OsString;
use std::io::{IsTerminal as _, Read as _};
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context as _};
use bytes::Bytes;
use serde_json::json;
use taskmill::{Client, TaskId, Wait};
use taskmill_cli::{say, tell, usage};
use taskmill_protocol::{Reply, Request};
use tokio::time::Instant;

use super::{print_json, wait, Prepared};
use crate::cli::PutArgs;

/// Items per put request at most, whatever their size: as the client library's producer.
const BATCH: usize = 65_536;

pub async fn put(args: PutArgs) -> anyhow::Result<ExitCode> {
    let prepared = Prepared::new(&args.common)?;
    let payloads = if args.payloads.is_empty() {
        if std::io::stdin().is_terminal() {
            tell("taskmill: reading payloads from stdin, one per line; end with Ctrl-D");
        }
        let mut input = Vec::new();
        std::io::stdin()
            .read_to_end(&mut input)
            .context("cannot read stdin")?;
        from_stdin(input, args.json_lines, args.stdin_raw).map_err(|e| usage(anyhow!(e)))?
    } else {
        from_args(args.payloads, args.json_lines).map_err(|e| usage(anyhow!(e)))?
    };
    let total = payloads.len();
    let mut client = prepared.connect().await?;
    check_sizes(
        &payloads,
        taskmill_protocol::max_payload(client.max_frame()),
    )
    .map_err(usage)?;

    let deadline = args.wait.map(|d| Instant::now() + d);
    let mut ids: Vec<TaskId> = Vec::with_capacity(total);
    let mut rest = &payloads[..];
    let mut failed = None;
    while !rest.is_empty() {
        let take = batch_len(rest, client.max_frame());
        let this_wait = match deadline {
            None => Wait::No,
            Some(deadline) => wait(Some(deadline.saturating_duration_since(Instant::now()))),
        };
        let batch = rest[..take].to_vec();
        match put_batch(&mut client, &args.queue, batch, this_wait, &args.reply_to).await {
            Ok((first, accepted)) => {
                ids.extend(first..first + TaskId::from(accepted));
                rest = &rest[accepted as usize..];
                // Fewer than sent: the queue stayed full for the whole wait.
                if (accepted as usize) < take && this_wait == Wait::No {
                    break;
                }
            }
            Err(err) => {
                failed = Some(err);
                break;
            }
        }
    }

    if args.common.json {
        print_json(&json!({ "queue": args.queue, "ids": ids }));
    } else {
        for id in &ids {
            say(id);
        }
    }
    if total == 0 {
        tell("taskmill: nothing to put (no arguments, and stdin was empty)");
    }
    let done = match ids.len() {
        0 => "none".to_owned(),
        n => format!("{n} (their ids are printed)"),
    };
    if let Some(err) = failed {
        return Err(err.context(format!(
            "of {total} payloads for {:?}, {done} were put",
            args.queue
        )));
    }
    if !rest.is_empty() {
        let how = match args.wait {
            None => "(--wait lets a put wait for room)".to_owned(),
            Some(d) => format!("in {d:?}"),
        };
        bail!(
            "queue {:?} is full: of {total} payloads, {done} were put; the last {} found no \
             room {how}",
            args.queue,
            rest.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// One put request; its first id and how many it accepted.
async fn put_batch(
    client: &mut Client,
    queue: &str,
    items: Vec<Bytes>,
    wait: Wait,
    reply_to: &Option<String>,
) -> anyhow::Result<(TaskId, u32)> {
    // A plain put, not `put_once`: the master would keep this one-off producer's sequence
    // numbers among the last 1,024 producers it remembers per queue, pushing out a real one's.
    let request = Request::Put {
        queue: queue.to_owned(),
        items,
        wait,
        reply_to: reply_to.clone(),
    };
    match client.request(request).await? {
        Reply::Put { first_id, accepted } => Ok((first_id, accepted)),
        other => bail!("the master answered a put with {other:?}"),
    }
}

/// How many of `items` go in the next request: at most [`BATCH`], within half a frame (the
/// rest is the envelope's), and always at least one.
fn batch_len(items: &[Bytes], max_frame: usize) -> usize {
    let budget = max_frame / 2;
    let mut bytes = 0;
    let fit = items
        .iter()
        .take(BATCH)
        .take_while(|item| {
            bytes += item.len() + 16;
            bytes <= budget
        })
        .count();
    fit.max(1)
}

/// Refuses the whole input if any payload is larger than the master takes, before any is put.
fn check_sizes(payloads: &[Bytes], max: usize) -> anyhow::Result<()> {
    match payloads.iter().position(|p| p.len() > max) {
        None => Ok(()),
        Some(i) => bail!(
            "payload {} is {} bytes; this master takes items of at most {max} bytes (its \
             --max-frame less 512); nothing was put",
            i + 1,
            payloads[i].len()
        ),
    }
}

/// The arguments as payloads, byte for byte (an argument need not be UTF-8).
fn from_args(args: Vec<OsString>, json_lines: bool) -> Result<Vec<Bytes>, String> {
    let payloads: Vec<Bytes> = args.into_iter().map(os_bytes).collect();
    if json_lines {
        for (i, payload) in payloads.iter().enumerate() {
            check_json(payload).map_err(|e| format!("argument {}: {e}", i + 1))?;
        }
    }
    Ok(payloads)
}

#[cfg(unix)]
fn os_bytes(arg: OsString) -> Bytes {
    use std::os::unix::ffi::OsStringExt as _;
    Bytes::from(arg.into_vec())
}

#[cfg(not(unix))]
fn os_bytes(arg: OsString) -> Bytes {
    Bytes::from(arg.to_string_lossy().into_owned())
}

/// Stdin as payloads: all of it as one (`raw`), or one per line, the `\n` removed and nothing
/// else (a `\r` stays: a payload is bytes, and `take` gives back what was put). With
/// `json_lines`, blank lines are skipped and every other line must be JSON.
fn from_stdin(input: Vec<u8>, json_lines: bool, raw: bool) -> Result<Vec<Bytes>, String> {
    if raw {
        return Ok(vec![Bytes::from(input)]);
    }
    let input = Bytes::from(input);
    let mut payloads = Vec::new();
    let mut start = 0;
    for (number, line) in input.split(|&b| b == b'\n').enumerate() {
        let end = start + line.len();
        let item = input.slice(start..end);
        start = end + 1;
        if end == input.len() && line.is_empty() {
            // After the last newline: no line.
            break;
        }
        if json_lines {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            check_json(line).map_err(|e| format!("stdin line {}: {e}", number + 1))?;
        }
        payloads.push(item);
    }
    Ok(payloads)
}

fn check_json(payload: &[u8]) -> Result<(), String> {
    serde_json::from_slice::<serde_json::Value>(payload)
        .map(drop)
        .map_err(|e| format!("not JSON ({e})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(payloads: &[Bytes]) -> Vec<&str> {
        payloads
            .iter()
            .map(|p| std::str::from_utf8(p).unwrap())
            .collect()
    }

    #[test]
    fn stdin_is_one_payload_per_line_keeping_empty_lines_and_carriage_returns() {
        let got = from_stdin(b"a\n\nb c\r\nlast".to_vec(), false, false).unwrap();
        assert_eq!(strings(&got), ["a", "", "b c\r", "last"]);
        let got = from_stdin(b"a\nb\n".to_vec(), false, false).unwrap();
        assert_eq!(strings(&got), ["a", "b"], "no item after the last newline");
        assert!(from_stdin(Vec::new(), false, false).unwrap().is_empty());
        let got = from_stdin(b"a\nb\n".to_vec(), false, true).unwrap();
        assert_eq!(strings(&got), ["a\nb\n"], "raw: all of it, once");
    }

    #[test]
    fn json_lines_skip_blank_lines_and_name_the_first_bad_one() {
        let got = from_stdin(b"{\"n\": 1}\n\n  \n[2]\n".to_vec(), true, false).unwrap();
        assert_eq!(strings(&got), ["{\"n\": 1}", "[2]"]);
        let err = from_stdin(b"1\n{oops\n".to_vec(), true, false).unwrap_err();
        assert!(err.starts_with("stdin line 2: not JSON"), "{err}");
        let err = from_args(vec!["{}".into(), "x".into()], true).unwrap_err();
        assert!(err.starts_with("argument 2: not JSON"), "{err}");
    }

    #[test]
    fn batches_fit_half_a_frame_and_hold_at_least_one_item() {
        let small: Vec<Bytes> = (0..1000).map(|_| Bytes::from(vec![0; 100])).collect();
        let n = batch_len(&small, 4096);
        assert!(n > 1 && n * 116 <= 2048, "{n}");
        let big = [Bytes::from(vec![0; 5000])];
        assert_eq!(batch_len(&big, 4096), 1);
        assert!(check_sizes(&big, 4000).is_err());
        assert!(check_sizes(&big, 5000).is_ok());
    }
}
