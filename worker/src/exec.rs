//! `--exec`: one process per task. The payload goes to the command's stdin, its stdout is the
//! result; exit 0 completes the task, the retry code (75, EX_TEMPFAIL, by default) retries it
//! after a delay, anything else fails the attempt with the tail of stderr (so the task ends in
//! `<queue>.dead` once its attempts are spent). Each command runs in a process group of its
//! own, killed whole when it exits, times out or writes too much, so no grandchild outlives its
//! task or holds its pipes open.

use std::io;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use taskmill::{Answer, Failure, Handler, Task};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

use crate::reaper::Children;

/// Bytes of stderr kept for a failure's reason.
const STDERR_TAIL: usize = 2048;

/// How long the pipes may stay open after the process group is gone.
const PIPES_CLOSE: Duration = Duration::from_secs(1);

/// What `--exec` runs, and its limits.
#[derive(Debug, Clone)]
pub struct Exec {
    /// The program and its arguments.
    pub argv: Vec<String>,
    /// Longest a task's process may run.
    pub timeout: Option<Duration>,
    /// The exit code that asks for a retry.
    pub retry_code: i32,
    /// The delay before such a retry.
    pub retry_after: Duration,
    /// Largest result (the master's frame limit bounds it).
    pub max_output: usize,
    /// Direct children, which the PID-1 reaper leaves to tokio.
    pub children: Arc<Children>,
}

impl Handler for Exec {
    async fn handle(&self, tasks: &[Task]) -> Vec<Answer> {
        futures::future::join_all(tasks.iter().map(|task| self.run(task))).await
    }
}

/// Why a task's process ended.
enum Ended {
    Exited(ExitStatus),
    TimedOut(Duration),
    TooMuchOutput,
}

impl Exec {
    async fn run(&self, task: &Task) -> Answer {
        let mut cmd = Command::new(&self.argv[0]);
        cmd.args(&self.argv[1..])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true)
            // The key is ours, not the command's.
            .env_remove("TASKMILL_AUTHKEY")
            .env_remove("TASKMILL_AUTHKEY_FILE")
            .env("TASKMILL_TASK_ID", task.id.to_string())
            .env("TASKMILL_ATTEMPT", task.attempt.to_string());
        let (mut child, pid) = self
            .children
            .spawn(&mut cmd)
            .map_err(|err| Failure::Failed {
                reason: format!("cannot start {}: {err}", self.argv[0]),
            })?;
        let outcome = self.supervise(&mut child, task.payload.clone()).await;
        if let Some(pid) = pid {
            kill_group(pid);
            self.children.remove(pid);
        }
        outcome
    }

    /// Feeds stdin, reads stdout and stderr, and waits for the process, all at once so that
    /// no pipe can fill and stall it.
    async fn supervise(&self, child: &mut Child, payload: Bytes) -> Answer {
        let (stdin, stdout, stderr) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take());
        let feed = async move {
            if let Some(mut stdin) = stdin {
                // A command that does not read its input, or exits first, closes the pipe:
                // not an error.
                let _ = stdin.write_all(&payload).await;
            }
        };
        let (cap, pid) = (self.max_output, child.id());
        let out = async move {
            let out = read_capped(stdout, cap).await;
            if let (Ok(None), Some(pid)) = (&out, pid) {
                kill_group(pid);
            }
            out
        };
        let err = async move { read_tail(stderr, STDERR_TAIL).await };
        let run = async {
            let (_, out, status) = tokio::join!(feed, out, async {
                let status = child.wait().await;
                // The pipes end once the group is gone, even if a grandchild held them.
                if let Some(pid) = pid {
                    kill_group(pid);
                }
                status
            });
            (out, status)
        };
        let err = tokio::spawn(err);
        let (ended, stdout) = match self.timeout {
            Some(limit) => match tokio::time::timeout(limit, run).await {
                Ok((out, status)) => ended(out, status),
                Err(_) => (Ok(Ended::TimedOut(limit)), None),
            },
            None => {
                let (out, status) = run.await;
                ended(out, status)
            }
        };
        if let Some(pid) = pid {
            kill_group(pid);
        }
        // The child is reaped by tokio (kill_on_drop, and the wait above).
        let _ = child.start_kill();
        let stderr = match tokio::time::timeout(PIPES_CLOSE, err).await {
            Ok(Ok(tail)) => tail,
            _ => String::new(),
        };
        let ended = ended.map_err(|err| Failure::Failed {
            reason: format!("running {}: {err}", self.argv[0]),
        })?;
        let with_stderr = |what: String| {
            if stderr.is_empty() {
                what
            } else {
                format!("{what}; stderr: {stderr}")
            }
        };
        match ended {
            Ended::Exited(status) if status.success() => Ok(stdout.unwrap_or_default()),
            Ended::Exited(status) if status.code() == Some(self.retry_code) => {
                Err(Failure::Retry {
                    after: self.retry_after,
                    reason: with_stderr(format!("exit code {} (retry)", self.retry_code)),
                })
            }
            Ended::Exited(status) => Err(Failure::Failed {
                reason: with_stderr(describe(status)),
            }),
            Ended::TimedOut(limit) => Err(Failure::Failed {
                reason: with_stderr(format!("killed after the task timeout of {limit:?}")),
            }),
            Ended::TooMuchOutput => Err(Failure::Failed {
                reason: with_stderr(format!(
                    "killed: more than {} bytes of output (the most a result may hold)",
                    self.max_output
                )),
            }),
        }
    }
}

/// What the process's end and its stdout make of the task.
fn ended(
    out: io::Result<Option<Bytes>>,
    status: io::Result<ExitStatus>,
) -> (io::Result<Ended>, Option<Bytes>) {
    match (out, status) {
        (Ok(None), _) => (Ok(Ended::TooMuchOutput), None),
        (Ok(Some(out)), Ok(status)) => (Ok(Ended::Exited(status)), Some(out)),
        (Err(err), _) | (_, Err(err)) => (Err(err), None),
    }
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => format!("ended with {status}"),
    }
}

/// All of `pipe`, or `None` (the group is killed) once it passes `cap` bytes.
async fn read_capped(
    pipe: Option<impl AsyncRead + Unpin>,
    cap: usize,
) -> io::Result<Option<Bytes>> {
    let Some(pipe) = pipe else {
        return Ok(Some(Bytes::new()));
    };
    let mut out = Vec::new();
    let read = pipe.take(cap as u64 + 1).read_to_end(&mut out).await?;
    Ok((read <= cap).then(|| Bytes::from(out)))
}

/// The last `keep` bytes of `pipe`, read to its end, as text.
async fn read_tail(pipe: Option<impl AsyncRead + Unpin>, keep: usize) -> String {
    let Some(mut pipe) = pipe else {
        return String::new();
    };
    let (mut tail, mut chunk) = (Vec::new(), vec![0u8; 8192]);
    loop {
        match pipe.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                tail.extend_from_slice(&chunk[..n]);
                if tail.len() > keep {
                    tail.drain(..tail.len() - keep);
                }
            }
        }
    }
    String::from_utf8_lossy(&tail).trim().to_owned()
}

/// Kills process group `pgid` (the task's command and whatever it started); gone is fine.
fn kill_group(pgid: u32) {
    // SAFETY: kill(2) with a negative pid signals a process group; no memory is involved.
    unsafe {
        libc::kill(-(pgid as libc::pid_t), libc::SIGKILL);
    }
}
