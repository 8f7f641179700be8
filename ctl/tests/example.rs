//! `examples/queue-ops.sh` runs as written: with a master of its own (and the squares worker
//! dead-lettering a poison task), and against a master it is given, where it leaves nothing.

use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use taskmill_testkit::process::binary;
use taskmill_testkit::{config, TestMaster, KEY, LIMIT};

/// Runs the script with the workspace's binaries first on PATH and `env` as its only
/// `TASKMILL_*` variables; bounded by [`LIMIT`], after which its whole process group (the
/// master it started included) is killed.
fn script(env: &[(&str, &str)]) -> (Output, String, String) {
    binary("taskmill-master");
    binary("taskmill-worker");
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_taskmill"));
    let dir = bin.parent().unwrap();
    let path = format!(
        "{}:{}",
        dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut cmd = Command::new("bash");
    cmd.arg(root.join("examples/queue-ops.sh"))
        .env("PATH", path)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("TASKMILL_") {
            cmd.env_remove(name);
        }
    }
    cmd.envs(env.iter().copied());
    let child = cmd.spawn().expect("bash runs");
    let pgid = child.id();
    // A watchdog, so a hung script fails the test instead of hanging it.
    let (done, finished) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        let started = Instant::now();
        // Disconnected: the script has ended.
        while let Err(RecvTimeoutError::Timeout) = finished.recv_timeout(Duration::from_millis(100))
        {
            if started.elapsed() > LIMIT {
                let _ = Command::new("kill")
                    .args(["-KILL", "--", &format!("-{pgid}")])
                    .status();
                return true;
            }
        }
        false
    });
    let out = child.wait_with_output().expect("the script ends");
    drop(done);
    let killed = watchdog.join().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !killed,
        "killed after {LIMIT:?}; stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    (out, stdout, stderr)
}

/// Checks `text` holds each of `parts`, in order.
fn in_order(text: &str, parts: &[&str]) {
    let mut rest = text;
    for part in parts {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => panic!("{part:?} missing (or out of order) in:\n{text}"),
        }
    }
}

#[test]
fn the_example_runs_with_a_master_of_its_own_and_shows_a_dead_letter_kicked_back() {
    let (_, stdout, stderr) = script(&[("TASKMILL_AUTHKEY", KEY)]);
    in_order(
        &stdout,
        &[
            "a master of our own at 127.0.0.1:",
            "$ taskmill declare demo.jobs --capacity 100\n",
            "demo.jobs ",
            "$ taskmill put demo.jobs 'resize photo-1.jpg' 'resize photo-2.jpg'\n0\n1\n",
            "| taskmill put demo.jobs\n2\n3\n4\n",
            "| taskmill put demo.events --json-lines\n5\n6\n",
            "$ taskmill peek demo.jobs -n 3\nresize photo-1.jpg\nresize photo-2.jpg\nresize photo-3.jpg\n",
            "$ taskmill take demo.jobs -n 2\nresize photo-1.jpg\nresize photo-2.jpg\n",
            "\"payload\":\"resize photo-3.jpg\"",
            "2 items purged from demo.jobs",
            "$ taskmill dead tasks\nID\tTASK\tATTEMPTS\tREASON\tPAYLOAD\n",
            "\t1\tfailed for good: undecodable task: ",
            "\tnot a number\n",
            "1 dead letter moved from tasks.dead back to tasks",
            "$ taskmill peek tasks\nnot a number\n",
            "1 item purged from tasks",
            "(refused: demo.events still holds its 2 events)",
            "demo.events deleted, with 2 items",
            "demo.jobs deleted, with 0 items",
            "master 127.0.0.1:",
        ],
    );
    assert!(
        stderr.contains("holds items"),
        "the refusal says why: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_against_a_given_master_leaves_no_queue_behind() {
    let master = TestMaster::start(config()).await;
    let addr = master.addr.clone();
    let given = addr.clone();
    let (_, stdout, _) = tokio::task::spawn_blocking(move || {
        script(&[("TASKMILL_AUTHKEY", KEY), ("TASKMILL_MASTER", &given)])
    })
    .await
    .unwrap();
    assert!(!stdout.contains("a master of our own"), "{stdout}");
    assert!(!stdout.contains("taskmill dead tasks"), "{stdout}");
    in_order(&stdout, &["demo.jobs deleted", &format!("master {addr}")]);
    let stats = master.client().await.stats().await.unwrap();
    assert!(stats.queues.is_empty(), "{:?}", stats.queues);
}
