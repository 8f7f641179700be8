//! `taskmill-worker --exec`: one process per task against an in-process master. Every way a
//! command can end (exit 0, the retry code, another code, killed by the task timeout, too much
//! output, never reading its input), what reaches the command's environment, and zombies when
//! the worker is PID 1.

use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use taskmill::{Client, DeadLetter, Delivery, Producer, Task, TaskError, Wait};
use taskmill_protocol::decode_payload;
use taskmill_testkit::process::{binary, Proc};
use taskmill_testkit::{config, key, TestMaster, LIMIT};

/// A master whose tasks get `attempts` deliveries.
async fn master(attempts: u32) -> TestMaster {
    let mut config = config();
    config.limits.max_attempts = attempts;
    TestMaster::start(config).await
}

fn exec_worker(addr: &str, command: &str, extra: &[&str]) -> Proc {
    Proc::spawn(
        Command::new(binary("taskmill-worker"))
            .args(["--master", addr, "--queue", "jobs", "--exec", command])
            .args(["--retry-after", "50ms", "--max-backoff", "200ms"])
            .args(extra),
    )
}

/// Up to `n` items of `queue`, removed, waiting at most [`LIMIT`] for them all.
async fn take(client: &mut Client, queue: &str, n: usize) -> Vec<Task> {
    let deadline = Instant::now() + LIMIT;
    let mut got = Vec::new();
    while got.len() < n {
        assert!(
            Instant::now() < deadline,
            "{} of {n} from {queue}",
            got.len()
        );
        let more = client
            .get_with(queue, n as u32, Wait::Millis(200), Delivery::Remove)
            .await
            .unwrap();
        got.extend(more);
    }
    got
}

fn text(b: &Bytes) -> &str {
    std::str::from_utf8(b).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdout_is_the_result_exit_75_retries_and_the_key_stays_with_the_worker() {
    let master = master(5).await;
    let mut client = master.client().await;
    let items = ["one", "two"].map(|s| Bytes::from_static(s.as_bytes()));
    client.put("jobs", items.to_vec(), Wait::No).await.unwrap();
    // First attempt asks for a retry; the second answers with stdin, attempt and key.
    let script = r#"sh -c 'if [ "$TASKMILL_ATTEMPT" = 1 ]; then exit 75; fi; printf "%s/%s/%s" "$(cat)" "$TASKMILL_ATTEMPT" "${TASKMILL_AUTHKEY:-no key}"'"#;
    let _worker = exec_worker(&master.addr, script, &[]);
    let mut results: Vec<_> = take(&mut client, "results", 2)
        .await
        .iter()
        .map(|t| text(&t.payload).to_owned())
        .collect();
    results.sort();
    assert_eq!(results, ["one/2/no key", "two/2/no key"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_command_ends_in_the_dead_letter_queue_with_its_stderr_and_the_producer_hears() {
    let master = master(2).await;
    let producer = Producer::connect(&master.addr, &key()).await.unwrap();
    #[derive(serde::Serialize, serde::Deserialize)]
    struct Job(u32);
    impl taskmill::Job for Job {
        const QUEUE: &'static str = "jobs";
        type Output = String;
        type Codec = taskmill::Json;
    }
    let handle = producer.submit(&Job(7)).await.unwrap();
    let _worker = exec_worker(&master.addr, "sh -c 'echo boom >&2; exit 3'", &[]);
    let outcome = tokio::time::timeout(LIMIT, handle).await.unwrap();
    match outcome {
        Err(TaskError::Dead {
            attempts, reason, ..
        }) => {
            assert_eq!(attempts, 2);
            assert!(
                reason.contains("exit code 3") && reason.contains("boom"),
                "{reason}"
            );
        }
        other => panic!("expected a dead task, got {other:?}"),
    }
    let mut client = master.client().await;
    let dead = take(&mut client, "jobs.dead", 1).await;
    let letter: DeadLetter = decode_payload(&dead[0].payload).unwrap();
    assert_eq!(letter.payload, Bytes::from_static(b"7"));
    producer.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_task_timeout_kills_the_whole_process_group() {
    let master = master(1).await;
    let mut client = master.client().await;
    // A marker no other process has, to find the grandchild by.
    let marker = format!("{}.{}", 40 + std::process::id() % 50, std::process::id());
    let command = format!("sh -c 'sleep {marker} & sleep {marker}'");
    client
        .put("jobs", vec![Bytes::from_static(b"x")], Wait::No)
        .await
        .unwrap();
    let started = Instant::now();
    let _worker = exec_worker(&master.addr, &command, &["--task-timeout", "300ms"]);
    let dead = take(&mut client, "jobs.dead", 1).await;
    let letter: DeadLetter = decode_payload(&dead[0].payload).unwrap();
    assert!(letter.reason.contains("task timeout"), "{}", letter.reason);
    assert!(started.elapsed() < Duration::from_secs(20));
    // Neither sleep outlives the task.
    let deadline = Instant::now() + LIMIT;
    while running(&format!("sleep {marker}")) > 0 {
        assert!(Instant::now() < deadline, "a process of the group survived");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_much_output_fails_the_attempt_and_a_command_that_ignores_its_input_does_not_stall() {
    let master = master(1).await;
    let mut client = master.client().await;
    client
        .put("jobs", vec![Bytes::from_static(b"x")], Wait::No)
        .await
        .unwrap();
    client
        .put("quiet", vec![Bytes::from(vec![b'y'; 4 << 20])], Wait::No)
        .await
        .unwrap_err(); // larger than a frame: refused, so use the biggest that fits
    client
        .put("quiet", vec![Bytes::from(vec![b'y'; 1000 << 10])], Wait::No)
        .await
        .unwrap();
    let _loud = exec_worker(
        &master.addr,
        "sh -c 'yes | head -c 3000000'",
        &["--max-output", "100KiB"],
    );
    let dead = take(&mut client, "jobs.dead", 1).await;
    let letter: DeadLetter = decode_payload(&dead[0].payload).unwrap();
    assert!(
        letter.reason.contains("more than 102400 bytes"),
        "{}",
        letter.reason
    );
    // 1000 KiB on stdin of a command that never reads it: more than a pipe holds.
    let _deaf = Proc::spawn(Command::new(binary("taskmill-worker")).args([
        "--master",
        &master.addr,
        "--queue",
        "quiet",
        "--exec",
        "echo done",
    ]));
    let result = take(&mut client, "results", 1).await;
    assert_eq!(text(&result[0].payload), "done\n");
}

#[test]
fn orphans_of_task_commands_are_reaped_when_the_worker_is_pid_1() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let master = runtime.block_on(master(5));
    let mut client = runtime.block_on(master.client());
    let items = (0..20).map(|i| Bytes::from(i.to_string())).collect();
    runtime
        .block_on(client.put("jobs", items, Wait::No))
        .unwrap();
    // A new PID namespace makes the worker its init (this needs root, as CI runs).
    let unshare = Command::new("unshare")
        .args(["--fork", "--pid", "--mount-proc", "true"])
        .status()
        .expect("run unshare (util-linux)");
    assert!(
        unshare.success(),
        "a PID namespace needs root (CI runs as root)"
    );
    // Each command leaves a grandchild behind; the group kill makes it a zombie under PID 1.
    let mut worker = Proc::spawn(
        Command::new("unshare")
            .args(["--fork", "--pid", "--mount-proc", "--kill-child"])
            .arg(binary("taskmill-worker"))
            .args(["--master", &master.addr, "--queue", "jobs", "--exec"])
            .arg("sh -c 'sleep 30 & cat'"),
    );
    let results = runtime.block_on(take(&mut client, "results", 20));
    assert_eq!(results.len(), 20);
    // The worker is unshare's child; its zombies are its children in state Z.
    let unshare_pid = worker.child.id();
    let worker_pid = children_of(unshare_pid)
        .into_iter()
        .next()
        .expect("the worker");
    let deadline = Instant::now() + LIMIT;
    loop {
        let zombies = children_of(worker_pid)
            .into_iter()
            .filter(|&pid| state(pid) == Some('Z'))
            .count();
        if zombies == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{zombies} zombies left");
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: kill(2) on the worker's pid; no memory is involved.
    unsafe { libc::kill(worker_pid as libc::pid_t, libc::SIGTERM) };
    assert!(worker.wait(LIMIT).success(), "{}", worker.stderr());
}

/// Processes whose command line is `cmdline` (words joined by spaces).
fn running(cmdline: &str) -> usize {
    processes()
        .filter(|&pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).replace('\0', " ").trim() == cmdline)
        })
        .count()
}

fn processes() -> impl Iterator<Item = u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
}

/// `(state, ppid)` of a process, from `/proc/PID/stat`.
fn stat(pid: u32) -> Option<(char, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    Some((state, fields.next()?.parse().ok()?))
}

fn state(pid: u32) -> Option<char> {
    stat(pid).map(|(s, _)| s)
}

fn children_of(parent: u32) -> Vec<u32> {
    processes()
        .filter(|&pid| stat(pid).is_some_and(|(_, ppid)| ppid == parent))
        .collect()
}
