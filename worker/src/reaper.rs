//! Zombies, when the worker is a container's PID 1: a task command's grandchildren, killed
//! with its process group, are reparented to PID 1, which must reap them or they stay in the
//! process table for good. Tokio reaps the commands it started; this reaps the rest, and
//! never a command tokio still has to wait for.

use std::collections::HashSet;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::process::{Child, Command};

/// How often the reaper looks even without a SIGCHLD (one may be coalesced with another).
const SWEEP: Duration = Duration::from_secs(1);

/// The worker's direct children: the task commands tokio waits for.
#[derive(Debug, Default)]
pub struct Children(Mutex<HashSet<u32>>);

impl Children {
    fn lock(&self) -> MutexGuard<'_, HashSet<u32>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts `cmd` and notes its pid before the reaper can look again.
    pub fn spawn(&self, cmd: &mut Command) -> io::Result<(Child, Option<u32>)> {
        let mut set = self.lock();
        let child = cmd.spawn()?;
        let pid = child.id();
        set.extend(pid);
        Ok((child, pid))
    }

    /// Tokio has waited for `pid`.
    pub fn remove(&self, pid: u32) {
        self.lock().remove(&pid);
    }
}

/// When this process is PID 1, reaps orphans reparented to it until the runtime ends.
pub fn start(children: Arc<Children>) {
    if std::process::id() != 1 {
        return;
    }
    tokio::spawn(async move {
        let mut sigchld =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child()).ok();
        loop {
            sweep(&children);
            match &mut sigchld {
                Some(signal) => {
                    let _ = tokio::time::timeout(SWEEP, signal.recv()).await;
                }
                None => tokio::time::sleep(SWEEP).await,
            }
        }
    });
}

/// Reaps every zombie child of ours that is not one of tokio's commands.
fn sweep(children: &Children) {
    let mine = std::process::id();
    let ours = children.lock();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if ours.contains(&pid) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        if zombie_child_of(&stat, mine) {
            // SAFETY: waitpid on a pid that is our zombie child; no memory is shared.
            unsafe {
                libc::waitpid(pid as libc::pid_t, std::ptr::null_mut(), libc::WNOHANG);
            }
        }
    }
}

/// Whether a `/proc/PID/stat` line is a zombie whose parent is `parent`. The command name
/// (field 2) may hold spaces and parentheses: the fields after it follow the last `)`.
fn zombie_child_of(stat: &str, parent: u32) -> bool {
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return false;
    };
    let mut fields = rest.split_whitespace();
    let state = fields.next();
    let ppid = fields.next().and_then(|p| p.parse::<u32>().ok());
    state == Some("Z") && ppid == Some(parent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_line_is_read_past_an_awkward_command_name() {
        assert!(zombie_child_of("42 (sh) Z 1 42 42 0", 1));
        assert!(zombie_child_of("42 (a) b (c)) Z 7 0", 7));
        assert!(!zombie_child_of("42 (sh) S 1 42", 1));
        assert!(!zombie_child_of("42 (sh) Z 2 42", 1));
        assert!(!zombie_child_of("garbage", 1));
    }
}
