//! The Python listener against CPython's own client: the tutorial's scripts and checks in
//! `tests/py/managers/`, run with `python3` and with every 3.12 and 3.13 pyenv keeps (each
//! test prints which ran), against `taskmill-master serve --python-listen`.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use taskmill_testkit::process::{binary, Proc};
use taskmill_testkit::python::{interpreters, root};
use taskmill_testkit::LIMIT;

/// A master serving the Python listener (and HTTP) on free ports, with `extra` flags; its
/// Python address and HTTP address.
fn master(extra: &[&str]) -> (Proc, String, String) {
    let master = Proc::spawn(
        Command::new(binary("taskmill-master"))
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--python-listen",
                "127.0.0.1:0",
                "--http",
                "127.0.0.1:0",
            ])
            .args(extra),
    );
    master.listening_addr();
    let python = master.line_after("python listening on ");
    let http = master.line_after("http listening on ");
    (master, python, http)
}

/// `tests/py/managers/<script>` under `python`, pointed at the listener.
fn script(python: &Path, name: &str, addr: &str, args: &[&str]) -> Proc {
    Proc::spawn(
        Command::new(python)
            .arg(root().join("tests/py/managers").join(name))
            .args(args)
            .env("TASKMILL_PY_ADDR", addr)
            .env("PYTHONUNBUFFERED", "1"),
    )
}

/// Runs a script to its end; its stdout, or the test fails with its stderr.
fn run(python: &Path, name: &str, addr: &str, args: &[&str]) -> String {
    let mut proc = script(python, name, addr, args);
    let status = proc.wait(LIMIT);
    let out = proc.stdout_rest();
    assert!(
        status.success(),
        "{name} {args:?} failed ({status}):\n{}\n{out}",
        proc.stderr()
    );
    out
}

/// The squares in the tutorial's `"n * n = square"` lines, checked against their inputs.
fn squares(out: &str) -> Vec<i64> {
    let mut inputs: Vec<i64> = out
        .lines()
        .filter_map(|l| {
            l.strip_prefix("Put task ")?
                .strip_suffix("...")?
                .parse()
                .ok()
        })
        .collect();
    let mut results: Vec<i64> = out
        .lines()
        .filter_map(|l| l.strip_prefix("Result: "))
        .map(|r| {
            let parts: Vec<&str> = r.split(['*', '=']).map(str::trim).collect();
            let [a, b, square] = parts[..] else {
                panic!("not the tutorial's result line: {r:?}");
            };
            let (a, b, square): (i64, i64, i64) = (
                a.parse().unwrap(),
                b.parse().unwrap(),
                square.parse().unwrap(),
            );
            assert_eq!((a, a * a), (b, square), "a wrong square: {r:?}");
            a
        })
        .collect();
    inputs.sort_unstable();
    results.sort_unstable();
    assert_eq!(inputs, results, "every task came back once:\n{out}");
    results
}

fn metric(http: &str, name: &str) -> f64 {
    let addr = http.parse().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let body = runtime
        .block_on(taskmill_testkit::http::get(addr, "/metrics", &[]))
        .body;
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{body}"))
}

#[test]
fn the_tutorial_master_and_workers_run_unchanged_on_every_python() {
    for (python, version) in interpreters() {
        eprintln!("running the tutorial's scripts with {version}");
        let (_master, addr, _) = master(&[]);
        let workers: Vec<Proc> = (0..2)
            .map(|_| script(&python, "task_worker.py", &addr, &[]))
            .collect();
        let out = run(&python, "task_master.py", &addr, &["8"]);
        assert_eq!(squares(&out).len(), 8, "{version}");
        for mut worker in workers {
            let status = worker.wait(LIMIT);
            let out = worker.stdout_rest();
            assert!(status.success(), "{version} worker: {}", worker.stderr());
            assert!(out.contains("worker exit."), "{out}");
        }
    }
}

#[test]
fn cpythons_client_sees_pythons_exceptions_and_a_wrong_key_is_an_authentication_error() {
    for (python, version) in interpreters() {
        eprintln!("checking exceptions, join and a wrong key with {version}");
        let (master, addr, http) = master(&[]);
        let out = run(
            &python,
            "checks.py",
            &addr,
            &["exceptions", "join", "wrong_key"],
        );
        // `stats` counts the Python listener's connections with the main port's.
        let stats = Command::new(binary("taskmill-master"))
            .args(["stats", "--master", &master.listening_addr(), "--json"])
            .env("TASKMILL_AUTHKEY", taskmill_testkit::KEY)
            .output()
            .unwrap();
        let stats: serde_json::Value = serde_json::from_slice(&stats.stdout).unwrap();
        assert!(stats["handshake_failures"].as_u64() >= Some(1), "{stats}");
        assert!(stats["connections_total"].as_u64() >= Some(10), "{stats}");
        for check in [
            "Empty at once",
            "TypeError",
            "items of",
            "task_done and join",
            "AuthenticationError",
        ] {
            assert!(out.contains(check), "{version}: no {check:?} in\n{out}");
        }
        let failed = r#"taskmill_python_handshakes_total{outcome="failed"}"#;
        assert!(metric(&http, failed) >= 1.0, "{version}");
        let authenticated = r#"taskmill_python_handshakes_total{outcome="authenticated"}"#;
        assert!(metric(&http, authenticated) >= 10.0, "{version}");
    }
}

#[test]
fn refusing_md5_shuts_out_python_3_11_and_lets_3_12_in() {
    for (python, version) in interpreters() {
        eprintln!("--python-refuse-md5 with {version}");
        let (_master, addr, _) = master(&["--python-refuse-md5"]);
        let out = run(&python, "checks.py", &addr, &["refuse_md5"]);
        let minor: u32 = version
            .split('.')
            .nth(1)
            .and_then(|m| m.parse().ok())
            .expect("Python 3.x.y");
        let want = if minor < 12 { "refused" } else { "gets in" };
        assert!(out.contains(want), "{version}: {out}");
    }
}

#[test]
fn a_bounded_queue_raises_full_after_the_timeout() {
    for (python, version) in interpreters() {
        eprintln!("checking a bounded queue with {version}");
        let (_master, addr, _) = master(&["--queue-capacity", "2"]);
        let out = run(&python, "checks.py", &addr, &["bounded"]);
        assert!(
            out.contains("ok a waiting put gets the room"),
            "{version}: {out}"
        );
    }
}

/// Resident memory of process `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

#[test]
fn hostile_input_on_the_python_port_costs_the_master_nothing() {
    let (python, version) = interpreters().remove(0);
    let (master, addr, _) = master(&[]);
    // Warm up the master's allocator and the listener first, so the comparison is fair.
    run(&python, "checks.py", &addr, &["wrong_key"]);
    let before = rss_kib(master.id());
    let out = run(&python, "checks.py", &addr, &["hostile"]);
    let after = rss_kib(master.id());
    assert!(out.contains("pickle bomb"), "{version}: {out}");
    assert!(
        after < before + 32 * 1024,
        "the master grew from {before} KiB to {after} KiB"
    );
    // And it still serves.
    let out = run(&python, "checks.py", &addr, &["join"]);
    assert!(out.contains("ok task_done and join"));
}

#[test]
fn a_python_worker_killed_mid_task_has_its_task_redelivered() {
    let (python, version) = interpreters().remove(0);
    eprintln!("killing a worker mid-task with {version}");
    let (_master, addr, _) = master(&["--python-delivery", "on-next-request"]);
    let mut producer = script(&python, "task_master.py", &addr, &["1"]);
    let doomed = script(&python, "task_worker.py", &addr, &[]);
    // The tutorial worker sleeps a second between its get and its put: kill it there.
    let taken = doomed.line_after("run task ");
    doomed.signal(libc::SIGKILL);
    drop(doomed);
    let mut rescuer = script(&python, "task_worker.py", &addr, &[]);
    assert_eq!(
        rescuer.line_after("run task "),
        taken,
        "the same task again"
    );
    let status = producer.wait(LIMIT);
    let out = producer.stdout_rest();
    assert!(status.success(), "{}", producer.stderr());
    assert_eq!(squares(&out).len(), 1);
    rescuer.signal(libc::SIGKILL);
    let _ = rescuer.wait(Duration::from_secs(10));
}

#[test]
fn an_unchanged_python_master_script_works_with_rust_workers() {
    for (python, version) in interpreters() {
        eprintln!("the tutorial's master with {version}, squared by taskmill-worker");
        let (master, addr, _) = master(&[]);
        let main = master.listening_addr();
        let worker = Proc::spawn(Command::new(binary("taskmill-worker")).args([
            "--master",
            &main,
            "--codec",
            "pickle-text",
        ]));
        let out = run(&python, "task_master.py", &addr, &["40"]);
        assert_eq!(squares(&out).len(), 40, "{version}");
        drop(worker);
    }
}

#[test]
fn unchanged_python_workers_work_with_taskmill_master_run() {
    let worker_bin = binary("taskmill-worker");
    for (python, version) in interpreters() {
        eprintln!("taskmill-master run --codec pickle, squared by the tutorial's workers on {version} and a taskmill-worker");
        let mut job = Proc::spawn(Command::new(binary("taskmill-master")).args([
            "run",
            "--tasks",
            "30",
            "--codec",
            "pickle",
            "--listen",
            "127.0.0.1:0",
            "--python-listen",
            "127.0.0.1:0",
            "--json",
            "--stall-timeout",
            "20s",
        ]));
        let main = job.listening_addr();
        let addr = job.line_after("python listening on ");
        // Python and Rust workers on the same job: the Rust one writes pickled squares, the
        // Python ones the tutorial's strings; the job accepts both.
        let _python_workers: Vec<Proc> = (0..2)
            .map(|_| script(&python, "task_worker.py", &addr, &[]))
            .collect();
        let _rust_worker = Proc::spawn(Command::new(&worker_bin).args([
            "--master",
            &main,
            "--codec",
            "pickle",
            "--simulated-work",
            "300ms",
            "--concurrency",
            "1",
            "--prefetch",
            "1",
        ]));
        let status = job.wait(LIMIT);
        let report: serde_json::Value = serde_json::from_str(&job.stdout_rest())
            .unwrap_or_else(|e| panic!("{version}: no JSON report ({e}): {}", job.stderr()));
        assert!(status.success(), "{version}: {report}");
        assert_eq!(report["verified"], 30, "{version}: {report}");
        assert_eq!(report["foreign"], 0, "{version}: {report}");
    }
}

#[test]
fn python_puts_survive_a_master_killed_and_restarted_on_its_data_directory() {
    let (python, version) = interpreters().remove(0);
    let dir = std::env::temp_dir().join(format!("taskmill-python-durable-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let data = dir.to_str().unwrap();
    let (mut first, addr, _) = master(&["--data-dir", data]);
    let out = run(&python, "checks.py", &addr, &["durable_put"]);
    assert!(out.contains("ok puts acknowledged"), "{version}: {out}");
    first.signal(libc::SIGKILL);
    first.wait(LIMIT);
    let (_second, addr, _) = master(&["--data-dir", data]);
    let out = run(&python, "checks.py", &addr, &["durable_get"]);
    assert!(
        out.contains("ok every acknowledged put survived"),
        "{version}: {out}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
