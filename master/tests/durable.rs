//! A master with a data directory, as a real process: killed with SIGKILL again and again while
//! a job runs against it (its producer, workers and collector reconnecting each time), it loses
//! no acknowledged task and repeats no result; and a damaged directory stops it with a clear
//! message, naming the file and offset.
//!
//! Kills come at moments a xorshift picks, and at named points: while the master is recovering
//! (straight after its start), and while it compacts (it snapshots every 256 KiB of log here,
//! so compaction runs through most of each round). `TASKMILL_KILL_ROUNDS` sets the number of
//! kills (20 by default; `scripts/kill-nine.sh` runs more).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use taskmill_testkit::process::{binary, Proc};
use taskmill_testkit::LIMIT;

/// Tasks per kill: enough that the job outlasts every kill (the workers' simulated work sets
/// its pace, about 6,400 tasks/s).
const TASKS_PER_KILL: u64 = 3_000;

/// A fresh, empty data directory, removed when dropped (kept if the test fails).
struct DataDir(PathBuf);

impl DataDir {
    fn new(tag: &str) -> Self {
        let path = std::env::temp_dir().join(format!("taskmill-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("data directory kept: {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn serve(listen: &str, dir: &Path, extra: &[&str]) -> Proc {
    let mut cmd = Command::new(binary("taskmill-master"));
    cmd.args(["serve", "--listen", listen, "--heartbeat-interval", "500ms"])
        .arg("--data-dir")
        .arg(dir)
        .args(["--snapshot-after", "256KiB", "--segment-bytes", "128KiB"])
        .args(extra);
    Proc::spawn(&mut cmd)
}

fn worker(addr: &str) -> Proc {
    Proc::spawn(Command::new(binary("taskmill-worker")).args([
        "--master",
        addr,
        "--concurrency",
        "64",
        "--max-backoff",
        "200ms",
        "--simulated-work",
        "20ms",
    ]))
}

struct Dice(u64);

impl Dice {
    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        lo + self.0 % (hi - lo)
    }
}

#[test]
fn a_master_killed_again_and_again_under_load_loses_nothing_and_repeats_nothing() {
    let rounds: u32 = std::env::var("TASKMILL_KILL_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(20);
    let tasks = TASKS_PER_KILL * u64::from(rounds);
    let dir = DataDir::new("kill-nine");
    let workers_bin = binary("taskmill-worker"); // built before any clock starts
    drop(workers_bin);
    let mut master = serve("127.0.0.1:0", &dir.0, &[]);
    let addr = master.listening_addr();
    let workers: Vec<Proc> = (0..2).map(|_| worker(&addr)).collect();
    let mut job = Proc::spawn(Command::new(binary("taskmill-master")).args([
        "run",
        "--master",
        &addr,
        "--tasks",
        &tasks.to_string(),
        "--batch",
        "512",
        "--stall-timeout",
        "60s",
        "--json",
    ]));
    let mut dice = Dice(0x5eed_cafe);
    let started = Instant::now();
    let mut kills = 0;
    while kills < rounds {
        if job.child.try_wait().unwrap().is_some() {
            break;
        }
        // Every fourth kill lands while the master recovers; the others under load.
        let wait = if kills % 4 == 3 {
            dice.between(0, 30)
        } else {
            dice.between(100, 500)
        };
        std::thread::sleep(Duration::from_millis(wait));
        master.signal(libc::SIGKILL);
        master.wait(LIMIT);
        kills += 1;
        master = serve(&addr, &dir.0, &[]);
        if kills % 4 != 3 {
            master.listening_addr();
        }
    }
    let status = job.wait(LIMIT * 3);
    let report: serde_json::Value = {
        let out = job.stdout_rest();
        let Some(json) = out.find('{').map(|at| &out[at..]) else {
            let err = job.stderr();
            let tail: String = err
                .chars()
                .skip(err.chars().count().saturating_sub(4000))
                .collect();
            panic!(
                "no JSON report from the job ({status:?}): stdout {out:?}\nstderr tail:\n{tail}"
            );
        };
        serde_json::from_str(json).expect("the report parses")
    };
    eprintln!(
        "{kills} kills in {:.1}s: {report}",
        started.elapsed().as_secs_f64()
    );
    assert!(status.success(), "the job failed: {report}");
    assert_eq!(report["verified"], tasks, "{report}");
    assert_eq!(report["wrong"], 0, "{report}");
    assert_eq!(report["duplicates"], 0, "a result produced twice: {report}");
    assert_eq!(
        kills, rounds,
        "the job ended before every kill landed: slow it down"
    );
    drop(workers);
}

#[test]
fn a_damaged_log_stops_the_master_with_the_file_and_offset_and_repair_cuts_it() {
    let dir = DataDir::new("damaged");
    let mut master = serve("127.0.0.1:0", &dir.0, &[]);
    let addr = master.listening_addr();
    let produce = Command::new(binary("taskmill-bench"))
        .args([
            "produce", "-n", "2000", "-c", "1", "-b", "10", "--keep", "--master", &addr,
        ])
        .env("TASKMILL_AUTHKEY", taskmill_testkit::KEY)
        .output()
        .unwrap();
    assert!(produce.status.success(), "{produce:?}");
    master.signal(libc::SIGTERM);
    assert!(master.wait(LIMIT).success());
    let segment = std::fs::read_dir(&dir.0)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "tml"))
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let mut bytes = std::fs::read(&segment).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&segment, &bytes).unwrap();

    let mut refused = serve("127.0.0.1:0", &dir.0, &[]);
    let status = refused.wait(LIMIT);
    assert!(!status.success());
    let log = refused.stderr();
    assert!(
        log.contains(&segment.display().to_string()) && log.contains("--repair"),
        "{log}"
    );

    let mut repaired = serve("127.0.0.1:0", &dir.0, &["--repair"]);
    let addr = repaired.listening_addr();
    let stats = Command::new(binary("taskmill-master"))
        .args(["stats", "--json", "--master", &addr])
        .env("TASKMILL_AUTHKEY", taskmill_testkit::KEY)
        .output()
        .unwrap();
    let stats: serde_json::Value = serde_json::from_slice(&stats.stdout).unwrap();
    let kept = stats["queues"][0]["size"].as_u64().unwrap();
    assert!(
        kept > 0 && kept < 2000,
        "the items before the damage: {kept}"
    );
    repaired.signal(libc::SIGTERM);
    assert!(repaired.wait(LIMIT).success());
}
