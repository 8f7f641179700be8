//! Squares jobs sharing one master and its workers, as processes: two at once each verify
//! exactly their own results, and a job stopped half way leaves nothing a later job counts.

use std::process::Command;
use std::time::{Duration, Instant};

use taskmill_testkit::process::{binary, Proc};
use taskmill_testkit::{KEY, LIMIT};

fn serve() -> (Proc, String) {
    let master = Proc::spawn(Command::new(binary("taskmill-master")).args([
        "serve",
        "--listen",
        "127.0.0.1:0",
    ]));
    let addr = master.listening_addr();
    (master, addr)
}

fn worker(addr: &str) -> Proc {
    Proc::spawn(Command::new(binary("taskmill-worker")).args(["--master", addr]))
}

fn job(addr: &str, tasks: u32) -> Proc {
    Proc::spawn(Command::new(binary("taskmill-master")).args([
        "run",
        "--master",
        addr,
        "--tasks",
        &tasks.to_string(),
        "--json",
    ]))
}

/// The job's JSON report, once it has ended.
fn report(mut job: Proc) -> serde_json::Value {
    let status = job.wait(LIMIT * 2);
    let out = job.stdout_rest();
    let report: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|err| panic!("{err}: {out}\n{}", job.stderr()));
    assert!(status.success(), "{report}");
    report
}

fn queue_names(addr: &str) -> Vec<String> {
    let out = Command::new(binary("taskmill-master"))
        .args(["stats", "--json", "--master", addr])
        .env("TASKMILL_AUTHKEY", KEY)
        .output()
        .unwrap();
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    stats["queues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["name"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn two_jobs_at_once_on_one_master_each_verify_exactly_their_own_results() {
    let (_master, addr) = serve();
    let _workers = [worker(&addr), worker(&addr)];
    let (a, b) = (job(&addr, 20_000), job(&addr, 30_000));
    for (report, tasks) in [(report(a), 20_000), (report(b), 30_000)] {
        assert_eq!(report["verified"], tasks, "{report}");
        assert_eq!(report["foreign"], 0, "{report}");
        assert_eq!(report["ok"], true, "{report}");
    }
    assert_eq!(
        queue_names(&addr),
        ["tasks"],
        "the jobs' reply queues went with them"
    );
}

#[test]
fn a_job_stopped_half_way_leaves_nothing_that_a_later_job_counts() {
    let (_master, addr) = serve();
    // No workers yet: the first job puts its tasks and waits.
    let first = job(&addr, 50_000);
    let deadline = Instant::now() + LIMIT;
    while !queue_names(&addr).iter().any(|q| q == "tasks") {
        assert!(Instant::now() < deadline, "the first job put nothing");
        std::thread::sleep(Duration::from_millis(50));
    }
    first.signal(libc::SIGINT);
    let stopped = {
        let mut first = first;
        first.wait(LIMIT);
        first.stdout_rest()
    };
    let stopped: serde_json::Value = serde_json::from_str(&stopped).unwrap();
    assert_eq!(stopped["ending"], "interrupted", "{stopped}");
    // Workers now take the stopped job's tasks as well as the next job's.
    let _workers = [worker(&addr), worker(&addr)];
    let later = report(job(&addr, 5_000));
    assert_eq!(later["verified"], 5_000, "{later}");
    assert_eq!(later["foreign"], 0, "{later}");
    assert_eq!(later["ok"], true, "{later}");
    // The stopped job's results were dropped with its reply queue, none recreated it.
    let deadline = Instant::now() + LIMIT;
    loop {
        let names = queue_names(&addr);
        if names == ["tasks"] {
            break;
        }
        assert!(Instant::now() < deadline, "{names:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
