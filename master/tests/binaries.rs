//! The real binaries as processes: `run` with two worker processes, `serve` + `stats`, SIGTERM
//! handling, and refusing to start without a key.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use taskmill_testkit::process::{binary, Proc};
use taskmill_testkit::{KEY, LIMIT};

#[test]
fn run_job_with_two_worker_processes_completes_and_sigterm_stops_the_workers() {
    let worker = binary("taskmill-worker"); // before the job's stall clock starts
    let mut master = Proc::spawn(Command::new(binary("taskmill-master")).args([
        "run",
        "--tasks",
        "20000",
        "--listen",
        "127.0.0.1:0",
        "--json",
        "--stall-timeout",
        "30s",
    ]));
    let addr = master.listening_addr();
    let mut workers: Vec<Proc> = (0..2)
        .map(|_| {
            Proc::spawn(Command::new(&worker).args(["--master", &addr, "--max-backoff", "200ms"]))
        })
        .collect();
    let status = master.wait(LIMIT);
    let report: serde_json::Value =
        serde_json::from_str(&master.stdout_rest()).expect("the job prints its report as JSON");
    assert!(status.success(), "job failed: {report}");
    assert_eq!(report["ending"], "complete");
    assert_eq!(report["verified"], 20000);
    assert_eq!(report["missing"], 0);
    for worker in &mut workers {
        worker.signal(libc::SIGTERM);
        let status = worker.wait(Duration::from_secs(15));
        assert!(status.success(), "worker exit on SIGTERM: {status:?}");
    }
}

#[test]
fn serve_answers_stats_and_stops_cleanly_on_sigterm() {
    let mut master = Proc::spawn(Command::new(binary("taskmill-master")).args([
        "serve",
        "--listen",
        "127.0.0.1:0",
    ]));
    let addr = master.listening_addr();
    let out = Command::new(binary("taskmill-master"))
        .args(["stats", "--master", &addr, "--json"])
        .env("TASKMILL_AUTHKEY", KEY)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(stats["master"], addr.as_str());
    assert_eq!(
        stats["clients"], 0,
        "the stats connection does not count itself"
    );

    let wrong = Command::new(binary("taskmill-master"))
        .args(["stats", "--master", &addr])
        .env("TASKMILL_AUTHKEY", "some-other-key-entirely")
        .output()
        .unwrap();
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("wrong authkey"));

    // The key left the environment, /proc's view of it included.
    let environ = std::fs::read(format!("/proc/{}/environ", master.id())).unwrap();
    let environ = String::from_utf8_lossy(&environ);
    assert!(environ.contains("RUST_LOG="), "environ was read: {environ}");
    assert!(!environ.contains("TASKMILL_AUTHKEY"), "{environ}");
    assert!(!environ.contains(KEY), "{environ}");
    // The test key is 22 bytes: accepted, with a warning that says what to do.
    let log = master.stderr();
    assert!(log.contains("use 32 or more random bytes"), "{log}");

    master.signal(libc::SIGTERM);
    let status = master.wait(Duration::from_secs(15));
    assert!(status.success(), "master exit on SIGTERM: {status:?}");
}

#[test]
fn a_worker_process_drains_on_sigterm_while_connected_to_a_serving_master() {
    let mut master = Proc::spawn(Command::new(binary("taskmill-master")).args([
        "serve",
        "--listen",
        "127.0.0.1:0",
    ]));
    let addr = master.listening_addr();
    let mut worker = Proc::spawn(Command::new(binary("taskmill-worker")).args(["--master", &addr]));
    // Wait until the worker is connected, so SIGTERM interrupts a live session.
    let deadline = Instant::now() + LIMIT;
    loop {
        let out = Command::new(binary("taskmill-master"))
            .args(["stats", "--master", &addr, "--json"])
            .env("TASKMILL_AUTHKEY", KEY)
            .output()
            .unwrap();
        let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        if stats["clients"].as_u64() == Some(1) {
            break;
        }
        assert!(Instant::now() < deadline, "worker never connected");
        std::thread::sleep(Duration::from_millis(50));
    }
    worker.signal(libc::SIGTERM);
    assert!(worker.wait(Duration::from_secs(15)).success());
    master.signal(libc::SIGINT);
    assert!(master.wait(Duration::from_secs(15)).success());
}

/// A worker with a wrong key, run with `flags`: its exit status and stderr.
fn worker_with_the_wrong_key(flags: &[&str]) -> (std::process::ExitStatus, String) {
    let _master = Proc::spawn(Command::new(binary("taskmill-master")).args([
        "serve",
        "--listen",
        "127.0.0.1:0",
    ]));
    let addr = _master.listening_addr();
    let mut worker = Command::new(binary("taskmill-worker"))
        .args(["--master", &addr])
        .args(flags)
        .env("TASKMILL_AUTHKEY", "a-different-key-here")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = worker.stderr.take().unwrap();
    let mut worker = Proc::adopt(worker);
    // A worker that retried a wrong key forever would never exit: the bounded wait fails.
    let status = worker.wait(Duration::from_secs(30));
    let mut err = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut err).unwrap();
    (status, err)
}

#[test]
fn a_worker_asked_to_exit_on_auth_failure_exits_at_once_with_a_clear_error() {
    let (status, err) = worker_with_the_wrong_key(&["--exit-on-auth-failure"]);
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains("authentication failed: wrong authkey?"),
        "{err}"
    );
    assert!(!err.contains("retrying"), "{err}");
}

#[test]
fn a_worker_with_the_wrong_key_retries_loudly_and_gives_up_after_its_window() {
    let (status, err) =
        worker_with_the_wrong_key(&["--auth-failure-window", "1s", "--max-backoff", "100ms"]);
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.matches("before the master proved it holds the key")
            .count()
            >= 2,
        "each failed attempt is an error line: {err}"
    );
    assert!(err.contains("giving up"), "{err}");
    assert!(
        err.contains("authentication failed: wrong authkey?"),
        "{err}"
    );
}

#[test]
fn the_master_refuses_to_start_without_a_usable_key_and_says_how_to_set_one() {
    let out = Command::new(binary("taskmill-master"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env_remove("TASKMILL_AUTHKEY")
        .env_remove("TASKMILL_AUTHKEY_FILE")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("TASKMILL_AUTHKEY") && err.contains("--authkey-file"),
        "{err}"
    );

    let out = Command::new(binary("taskmill-master"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("TASKMILL_AUTHKEY", "short")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least 16"));

    let help = Command::new(binary("taskmill-master"))
        .args(["run", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "--tasks",
        "--local-workers",
        "--seed",
        "--timeout",
        "TASKMILL_LISTEN",
    ] {
        assert!(help.contains(flag), "run --help lacks {flag}");
    }
}

#[test]
fn run_with_local_workers_needs_no_key_and_prints_a_summary() {
    let out = Command::new(binary("taskmill-master"))
        .args([
            "run",
            "--tasks",
            "3000",
            "--local-workers",
            "2",
            "--seed",
            "7",
        ])
        .env_remove("TASKMILL_AUTHKEY")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("OK: every input came back exactly once"),
        "{stdout}"
    );
    assert!(stdout.contains("verified:      3000"), "{stdout}");
    assert!(stdout.contains("p99"), "{stdout}");
}

/// A serving master with `tasks` squares queued and a worker (one batch of 10 at a time, each
/// batch taking `work`) holding its first batch.
async fn worker_mid_batch(tasks: u64, work: &str) -> (Proc, Proc, taskmill::Client) {
    use taskmill::{AuthKey, Client, Wait};
    use taskmill_protocol::encode_payload;
    use taskmill_squares::{SquareTask, TASKS_QUEUE};

    let master = Proc::spawn(Command::new(binary("taskmill-master")).args([
        "serve",
        "--listen",
        "127.0.0.1:0",
    ]));
    let addr = master.listening_addr();
    let key = AuthKey::new(KEY).unwrap();
    let mut client = Client::connect(&addr, &key).await.unwrap();
    let tasks = (0..tasks)
        .map(|seq| encode_payload(&SquareTask { seq, input: 3 }).unwrap())
        .collect();
    client.put(TASKS_QUEUE, tasks, Wait::No).await.unwrap();
    let worker = Proc::spawn(Command::new(binary("taskmill-worker")).args([
        "--master",
        &addr,
        "--concurrency",
        "10",
        "--prefetch",
        "1",
        "--simulated-work",
        work,
    ]));
    let deadline = Instant::now() + LIMIT;
    while client.inspect(TASKS_QUEUE).await.unwrap().leased < 10 {
        assert!(Instant::now() < deadline, "the worker never took the batch");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (master, worker, client)
}

async fn wait_exit(mut worker: Proc, limit: Duration) -> std::process::ExitStatus {
    tokio::task::spawn_blocking(move || worker.wait(limit))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_makes_a_worker_finish_and_hand_in_the_batch_it_holds_and_take_no_more() {
    use taskmill_squares::{RESULTS_QUEUE, TASKS_QUEUE};

    let (_master, worker, mut client) = worker_mid_batch(30, "1500ms").await;
    worker.signal(libc::SIGTERM);
    let status = wait_exit(worker, Duration::from_secs(15)).await;
    assert!(status.success(), "{status:?}");
    let tasks = client.inspect(TASKS_QUEUE).await.unwrap();
    // The batch in hand was finished; the signal came before any other was leased.
    assert_eq!(
        (
            tasks.delivered_total,
            tasks.settled_total,
            tasks.leased,
            tasks.len
        ),
        (10, 10, 0, 20)
    );
    assert_eq!(client.inspect(RESULTS_QUEUE).await.unwrap().len, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_stops_a_worker_at_once_and_its_batch_goes_back() {
    use taskmill_squares::TASKS_QUEUE;

    // A batch that takes ten minutes: only stopping at once ends the worker in time.
    let (_master, worker, mut client) = worker_mid_batch(10, "10m").await;
    worker.signal(libc::SIGTERM);
    // The worker says it got the first signal before the second is sent, so the two are not
    // taken as one.
    let deadline = Instant::now() + LIMIT;
    while !worker.stderr().contains("SIGTERM received") {
        assert!(Instant::now() < deadline, "{}", worker.stderr());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    worker.signal(libc::SIGTERM);
    let status = wait_exit(worker, LIMIT).await;
    assert_eq!(status.code(), Some(130), "stopped at once: {status:?}");
    let deadline = Instant::now() + LIMIT;
    loop {
        let tasks = client.inspect(TASKS_QUEUE).await.unwrap();
        if (tasks.leased, tasks.len) == (0, 10) {
            break;
        }
        assert!(Instant::now() < deadline, "{tasks:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn run_json_is_the_only_thing_on_stdout_and_carries_ok_and_the_seed_as_text() {
    let out = Command::new(binary("taskmill-master"))
        .args(["run", "--tasks", "1000", "--local-workers", "2", "--json"])
        .args(["--seed", "18446744073709551615"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|err| panic!("{err}: {}", String::from_utf8_lossy(&out.stdout)));
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["seed_text"], "18446744073709551615", "{report}");
    assert_eq!(report["verified"], 1000, "{report}");
    assert!(stderr.contains("listening on"), "{stderr}");
}

#[test]
fn a_job_whose_stdout_and_stderr_readers_are_gone_still_runs_to_the_end() {
    // As `... 2>&1 | head -n 1`: both pipes lose their reader at once.
    let mut child = Command::new(binary("taskmill-master"))
        .args(["run", "--tasks", "5000", "--local-workers", "2"])
        .env("RUST_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    drop(child.stderr.take());
    let status = Proc::adopt(child).wait(LIMIT);
    assert_eq!(status.code(), Some(0), "{status:?}");
}

#[test]
fn a_job_against_an_address_where_no_master_listens_fails_within_seconds() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let started = Instant::now();
    let mut job = Proc::spawn(
        Command::new(binary("taskmill-master"))
            .args(["run", "--tasks", "10", "--master"])
            .arg(format!("127.0.0.1:{port}")),
    );
    let status = job.wait(LIMIT);
    let err = job.stderr();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("no master answered at 127.0.0.1:"), "{err}");
    // The 5 s of first contact and one backoff step, well short of the 30 s stall timeout.
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_stops_a_draining_master_at_once_with_exit_code_130() {
    use taskmill::{AuthKey, Client, Wait};

    let master = Proc::spawn(Command::new(binary("taskmill-master")).args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--shutdown-grace",
        "10m",
    ]));
    let addr = master.listening_addr();
    // A lease held through the drain: only the second signal ends the master in time.
    let mut client = Client::connect(&addr, &AuthKey::new(KEY).unwrap())
        .await
        .unwrap();
    client
        .put("tasks", vec![taskmill_testkit::b("7")], Wait::No)
        .await
        .unwrap();
    assert_eq!(client.get("tasks", 1, Wait::No).await.unwrap().len(), 1);
    master.signal(libc::SIGTERM);
    let deadline = Instant::now() + LIMIT;
    while !master.stderr().contains("draining") {
        assert!(Instant::now() < deadline, "{}", master.stderr());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    master.signal(libc::SIGTERM);
    let status = wait_exit(master, LIMIT).await;
    assert_eq!(status.code(), Some(130), "{status:?}");
}
