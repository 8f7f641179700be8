//! Chaos with real processes: the squares job runs while workers are killed with SIGKILL and
//! replaced, and one is frozen with SIGSTOP for longer than its lease. Every input must still
//! come back exactly once, verified.
//!
//! The workers simulate 20 ms of work per 64 tasks, which paces the job (about 12,800 tasks/s)
//! so the chaos happens while it runs, in debug and release alike. Half of them lease batches
//! of 512 with two requests in flight, so large batches and prefetched leases are killed too.
//! `long_chaos_run` (ignored) is the long version; size it with TASKMILL_CHAOS_TASKS:
//! `cargo test --release -p taskmill-master --test chaos -- --ignored --nocapture`.

use std::process::Command;
use std::time::{Duration, Instant};

use taskmill_testkit::process::{binary, Proc};
use taskmill_testkit::KEY;

const WORKERS: usize = 4;
const LEASE: &str = "1s";
const HEARTBEAT: &str = "250ms";
/// Longer than the lease, so the frozen worker's tasks must be redelivered.
const FREEZE: Duration = Duration::from_millis(2500);
const KILL_EVERY: Duration = Duration::from_millis(700);
/// Long runs freeze a worker again this often.
const FREEZE_EVERY: Duration = Duration::from_secs(20);

struct Figures {
    tasks: u64,
    kills: u32,
    freezes: u32,
    elapsed: Duration,
    report: serde_json::Value,
}

/// A small xorshift generator: enough to pick victims, without a dependency.
struct Dice(u64);

impl Dice {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// Worker slot `i`: even slots take batches of 64 one request at a time, odd slots batches of
/// 512 with a prefetch window of 2 (the same pace: 512 tasks per 160 ms), so that kills and
/// freezes also hit large batches and requests in flight.
fn spawn_worker(addr: &str, i: usize) -> Proc {
    let (concurrency, prefetch, work) = if i.is_multiple_of(2) {
        ("64", "1", "20ms")
    } else {
        ("512", "2", "160ms")
    };
    Proc::spawn(Command::new(binary("taskmill-worker")).args([
        "--master",
        addr,
        "--concurrency",
        concurrency,
        "--prefetch",
        prefetch,
        "--simulated-work",
        work,
        "--max-backoff",
        "200ms",
    ]))
}

fn delivered(addr: &str) -> Option<u64> {
    let out = Command::new(binary("taskmill-master"))
        .args(["stats", "--master", addr, "--json", "--timeout", "2s"])
        .env("TASKMILL_AUTHKEY", KEY)
        .output()
        .ok()?;
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    stats["queues"]
        .as_array()?
        .iter()
        .find(|q| q["name"] == "tasks")?["delivered_total"]
        .as_u64()
}

fn chaos(tasks: u64, limit: Duration) -> Figures {
    // Built (or found current) before the job's stall clock starts: a first release build of
    // the worker takes longer than the stall timeout.
    binary("taskmill-worker");
    let started = Instant::now();
    let tasks_arg = tasks.to_string();
    let mut master = Proc::spawn(Command::new(binary("taskmill-master")).args([
        "run",
        "--tasks",
        &tasks_arg,
        "--listen",
        "127.0.0.1:0",
        "--json",
        "--lease-timeout",
        LEASE,
        "--heartbeat-interval",
        HEARTBEAT,
        "--stall-timeout",
        "30s",
        "--timeout",
        &format!("{}s", limit.as_secs()),
    ]));
    let addr = master.listening_addr();
    let mut workers: Vec<Proc> = (0..WORKERS).map(|i| spawn_worker(&addr, i)).collect();
    let mut dice = Dice(started.elapsed().as_nanos() as u64 | 1);
    let (mut kills, mut freezes) = (0u32, 0u32);
    let mut frozen: Option<(usize, Instant)> = None;
    let mut last_freeze: Option<Instant> = None;
    let mut next_kill = Instant::now() + KILL_EVERY;
    let status = loop {
        if let Some(status) = master.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < limit + Duration::from_secs(30),
            "the job did not end"
        );
        if let Some((i, since)) = frozen {
            if since.elapsed() >= FREEZE {
                workers[i].signal(libc::SIGCONT);
                frozen = None;
            }
        } else if last_freeze.is_none_or(|t| t.elapsed() >= FREEZE_EVERY)
            && delivered(&addr).is_some_and(|d| d > 0)
        {
            let i = dice.below(WORKERS);
            workers[i].signal(libc::SIGSTOP);
            frozen = Some((i, Instant::now()));
            last_freeze = Some(Instant::now());
            freezes += 1;
        }
        if freezes > 0 && Instant::now() >= next_kill {
            let i = dice.below(WORKERS);
            if frozen.map(|(f, _)| f) != Some(i) {
                workers[i].signal(libc::SIGKILL);
                workers[i].wait(Duration::from_secs(10));
                workers[i] = spawn_worker(&addr, i);
                kills += 1;
            }
            next_kill = Instant::now() + KILL_EVERY;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    if let Some((i, _)) = frozen {
        workers[i].signal(libc::SIGCONT);
    }
    let report: serde_json::Value =
        serde_json::from_str(&master.stdout_rest()).expect("the job prints a JSON report");
    assert!(status.success(), "job failed: {report}");
    for worker in &mut workers {
        worker.signal(libc::SIGTERM);
        assert!(worker.wait(Duration::from_secs(20)).success());
    }
    Figures {
        tasks,
        kills,
        freezes,
        elapsed: started.elapsed(),
        report,
    }
}

fn check(f: &Figures) {
    let r = &f.report;
    println!(
        "chaos: {} tasks in {:.1}s, {} kills, {} freezes; verified {}, redelivered {}, \
         duplicates removed {}, wrong {}, missing {}",
        f.tasks,
        f.elapsed.as_secs_f64(),
        f.kills,
        f.freezes,
        r["verified"],
        r["redelivered"],
        r["duplicates"],
        r["wrong"],
        r["missing"]
    );
    assert_eq!(r["ending"], "complete");
    assert_eq!(r["verified"], f.tasks, "every input verified exactly once");
    assert_eq!(
        (r["wrong"].as_u64(), r["missing"].as_u64()),
        (Some(0), Some(0))
    );
    assert!(
        f.freezes >= 1,
        "no worker was frozen: the job ended too soon"
    );
    assert!(
        f.kills >= 3,
        "only {} kills: the job ended too soon",
        f.kills
    );
    assert!(
        r["redelivered"].as_u64().unwrap_or(0) > 0,
        "killed and frozen workers' tasks must have been redelivered"
    );
}

#[test]
fn killed_and_frozen_workers_lose_no_task_and_count_none_twice() {
    check(&chaos(200_000, Duration::from_secs(180)));
}

#[test]
#[ignore = "minutes long; run with --ignored (sized by TASKMILL_CHAOS_TASKS)"]
fn long_chaos_run() {
    let tasks = std::env::var("TASKMILL_CHAOS_TASKS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2_000_000);
    check(&chaos(tasks, Duration::from_secs(1800)));
}
