//! Runs the `taskmill` binary for the tests: every run bounded by `LIMIT`, with the test key
//! and none of the caller's other `TASKMILL_*` variables (a developer's `TASKMILL_JSON=1`
//! would change every output).

#![allow(dead_code)] // each test file uses its own part

use std::process::Stdio;

use taskmill_testkit::{within, KEY};
use tokio::io::AsyncWriteExt as _;

/// What a run printed, and how it ended.
#[derive(Debug)]
pub struct Out {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    /// Stdout, after checking the run succeeded.
    pub fn ok(&self) -> &str {
        assert_eq!(self.code, Some(0), "{self:#?}");
        &self.stdout
    }

    /// Stdout's lines, after checking the run succeeded: split at `\n` alone (`str::lines`
    /// would drop a `\r` that belongs to a payload).
    pub fn lines(&self) -> Vec<&str> {
        match self.ok().strip_suffix('\n') {
            None => Vec::new(),
            Some(text) => text.split('\n').collect(),
        }
    }

    /// Stdout as one JSON document per line, after checking the run succeeded.
    pub fn json_lines(&self) -> Vec<serde_json::Value> {
        self.lines()
            .into_iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
            .collect()
    }

    /// Stdout as one JSON document, after checking the run succeeded.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.ok()).unwrap_or_else(|e| panic!("{e}: {self:#?}"))
    }

    /// Checks the run failed with `code` and said `says` on stderr.
    pub fn failed(&self, code: i32, says: &str) {
        assert_eq!(self.code, Some(code), "{self:#?}");
        assert!(self.stderr.contains(says), "wanted {says:?}: {self:#?}");
    }
}

/// `taskmill ARGS` against `master`, with the test key.
pub async fn taskmill(master: &str, args: &[&str]) -> Out {
    run(
        args,
        None,
        &[("TASKMILL_MASTER", master), ("TASKMILL_AUTHKEY", KEY)],
    )
    .await
}

/// As [`taskmill`], with `stdin` as its input.
pub async fn taskmill_stdin(master: &str, args: &[&str], stdin: &[u8]) -> Out {
    let env = [("TASKMILL_MASTER", master), ("TASKMILL_AUTHKEY", KEY)];
    run(args, Some(stdin), &env).await
}

/// `taskmill ARGS` with only `env` of the `TASKMILL_*` variables, and `stdin` (or none).
pub async fn run(args: &[&str], stdin: Option<&[u8]>, env: &[(&str, &str)]) -> Out {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_taskmill"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("TASKMILL_") {
            cmd.env_remove(name);
        }
    }
    cmd.args(args)
        .envs(env.iter().copied())
        .env("RUST_LOG", "warn")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("spawn taskmill");
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        let input = input.to_vec();
        // Written beside the reads, so a large input and output cannot block each other.
        tokio::spawn(async move {
            let _ = pipe.write_all(&input).await;
        });
    }
    let what = format!("taskmill {args:?}");
    let out = within(&what, child.wait_with_output())
        .await
        .expect("taskmill ran");
    Out {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}
