//! The real binaries as child processes: located (and built when stale), and killed and
//! reaped however the test ends.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

use crate::{KEY, LIMIT};

/// The binary `name` of this workspace (`taskmill-master`, `taskmill-worker`, ...), built
/// first (a no-op when current): a test of one package would otherwise run another
/// package's binary as some older checkout left it, or not find it at all.
pub fn binary(name: &str) -> PathBuf {
    static BUILT: Mutex<Option<HashSet<String>>> = Mutex::new(None);
    let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    if built
        .get_or_insert_with(HashSet::new)
        .insert(name.to_owned())
    {
        // Not run by cargo: use what is there.
        if let Ok(cargo) = std::env::var("CARGO") {
            let mut build = Command::new(cargo);
            build.args(["build", "--quiet", "-p", name, "--bin", name]);
            if !cfg!(debug_assertions) {
                build.arg("--release");
            }
            let status = build.status().expect("cannot run cargo");
            assert!(status.success(), "building {name} failed");
        }
    }
    // Tests run from target/<profile>/deps/; binaries are built into target/<profile>/.
    let exe = std::env::current_exe().expect("the test's own path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("a test binary lives in target/<profile>/deps");
    let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace`",
        path.display()
    );
    path
}

/// The example `name` of package `package`, built first (as [`binary`] builds binaries).
pub fn example(package: &str, name: &str) -> PathBuf {
    if let Ok(cargo) = std::env::var("CARGO") {
        let mut build = Command::new(cargo);
        build.args(["build", "--quiet", "-p", package, "--example", name]);
        if !cfg!(debug_assertions) {
            build.arg("--release");
        }
        let status = build.status().expect("cannot run cargo");
        assert!(status.success(), "building example {name} failed");
    }
    let exe = std::env::current_exe().expect("the test's own path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("a test binary lives in target/<profile>/deps");
    dir.join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX))
}

/// A child process that is killed and reaped if the test ends early.
pub struct Proc {
    pub child: Child,
    lines: mpsc::Receiver<String>,
    /// Lines read from stdout while looking for another, so that no search loses one.
    seen: std::cell::RefCell<Vec<String>>,
    /// Where the child's stderr goes; kept (and named) if the test fails.
    log: Option<PathBuf>,
}

/// A fresh file for a child's stderr.
fn log_file() -> (PathBuf, std::fs::File) {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("taskmill-test-{}-{n}.log", std::process::id()));
    let file = std::fs::File::create(&path).expect("create a log file");
    (path, file)
}

impl Proc {
    pub fn spawn(cmd: &mut Command) -> Self {
        let (log_path, log) = log_file();
        let mut proc = Self::start(cmd.stderr(Stdio::from(log)));
        proc.log = Some(log_path);
        proc
    }

    /// As [`Proc::spawn`], with stderr a pipe whose reader is gone before the child writes to
    /// it (a log shipper that crashed, `2>&1 | head -1` after its line): every write the child
    /// makes to stderr fails.
    pub fn spawn_stderr_gone(cmd: &mut Command) -> Self {
        let mut proc = Self::start(cmd.stderr(Stdio::piped()));
        drop(proc.child.stderr.take());
        proc
    }

    /// Spawns `cmd` (its stderr already chosen) with the test key and log level (the test's
    /// RUST_LOG unless `cmd` sets one), reading its stdout on a thread.
    fn start(cmd: &mut Command) -> Self {
        if !cmd.get_envs().any(|(name, _)| name == "RUST_LOG") {
            cmd.env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            );
        }
        let mut child = cmd
            .env("TASKMILL_AUTHKEY", KEY)
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            lines,
            seen: Default::default(),
            log: None,
        }
    }

    /// Guards a child spawned elsewhere (its stdout is not read).
    pub fn adopt(child: Child) -> Self {
        Self {
            child,
            lines: mpsc::channel().1,
            seen: Default::default(),
            log: None,
        }
    }

    /// The child's process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The address from the `listening on ADDR` line, on stdout (or on stderr, where a
    /// command whose stdout is for machine output writes it).
    pub fn listening_addr(&self) -> String {
        self.line_after("listening on ")
    }

    /// The rest of the first line that starts with `prefix`, on stdout or stderr.
    pub fn line_after(&self, prefix: &str) -> String {
        let found = |line: &String| line.strip_prefix(prefix).map(|rest| rest.trim().to_owned());
        if let Some(rest) = self.seen.borrow().iter().find_map(found) {
            return rest;
        }
        let deadline = Instant::now() + LIMIT;
        loop {
            match self.lines.recv_timeout(Duration::from_millis(50)) {
                Ok(line) => {
                    let rest = found(&line);
                    self.seen.borrow_mut().push(line);
                    if let Some(rest) = rest {
                        return rest;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    std::thread::sleep(Duration::from_millis(50))
                }
            }
            let stderr = self.stderr();
            if let Some(rest) = stderr.lines().find_map(|l| l.strip_prefix(prefix)) {
                return rest.trim().to_owned();
            }
            assert!(Instant::now() < deadline, "no `{prefix}` line in time");
        }
    }

    /// Stdout from after the lines the searches above have read.
    pub fn stdout_rest(&self) -> String {
        let mut out = String::new();
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            out.push_str(&line);
            out.push('\n');
        }
        out
    }

    /// What the child has written to stderr so far.
    pub fn stderr(&self) -> String {
        self.log
            .as_ref()
            .and_then(|log| std::fs::read_to_string(log).ok())
            .unwrap_or_default()
    }

    pub fn signal(&self, signal: i32) {
        let rc = unsafe { libc::kill(self.child.id() as i32, signal) };
        assert_eq!(rc, 0, "kill failed");
    }

    pub fn wait(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "process did not exit within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(log) = &self.log {
            if std::thread::panicking() {
                eprintln!("child {} logged to {}", self.child.id(), log.display());
            } else {
                let _ = std::fs::remove_file(log);
            }
        }
    }
}
