//! The HTTP port of the real binaries: `/metrics` after a job, read by the Prometheus client
//! library's own parser, and the dashboard in headless Chromium while a job runs.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Command;

use serde_json::Value;
use taskmill_testkit::http::{get, Response};
use taskmill_testkit::process::{binary, Proc};
use taskmill_testkit::{python, LIMIT};

fn fetch(addr: SocketAddr, path: &str) -> Response {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(get(addr, path, &[]))
}

/// A `serve` master with its HTTP port on loopback: (process, taskmill address, HTTP address).
fn serve_with_http() -> (Proc, String, SocketAddr) {
    let master = Proc::spawn(Command::new(binary("taskmill-master")).args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--http",
        "127.0.0.1:0",
        // Workers' "last heard" is published on each half interval.
        "--heartbeat-interval",
        "1s",
    ]));
    let addr = master.listening_addr();
    let http = master.line_after("http listening on ").parse().unwrap();
    (master, addr, http)
}

fn workers(addr: &str, n: usize, extra: &[&str]) -> Vec<Proc> {
    let worker = binary("taskmill-worker");
    (0..n)
        .map(|_| {
            Proc::spawn(
                Command::new(&worker)
                    .args(["--master", addr, "--max-backoff", "200ms"])
                    .args(extra),
            )
        })
        .collect()
}

/// The samples of a parsed exposition, keyed by name and then by their labels.
type Samples = HashMap<String, Vec<(HashMap<String, String>, f64)>>;

fn value(samples: &Samples, name: &str, labels: &[(&str, &str)]) -> f64 {
    let rows = samples
        .get(name)
        .unwrap_or_else(|| panic!("no {name} in /metrics"));
    let matching: Vec<f64> = rows
        .iter()
        .filter(|(l, _)| {
            labels
                .iter()
                .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, v)| *v)
        .collect();
    assert_eq!(matching.len(), 1, "{name}{labels:?}: {rows:?}");
    matching[0]
}

#[test]
fn metrics_after_a_job_count_what_it_did_as_the_prometheus_parser_reads_them() {
    const TASKS: u64 = 20_000;
    let (_master, addr, http) = serve_with_http();
    let _workers = workers(&addr, 2, &[]);
    let mut job = Proc::spawn(Command::new(binary("taskmill-master")).args([
        "run",
        "--master",
        &addr,
        "--tasks",
        &TASKS.to_string(),
        "--json",
        "--stall-timeout",
        "30s",
    ]));
    assert!(job.wait(LIMIT).success(), "the job failed");
    let report: Value = serde_json::from_str(&job.stdout_rest()).expect("the job's report");
    assert_eq!(report["verified"], TASKS);

    let response = fetch(http, "/metrics");
    assert_eq!(response.status, 200);
    assert!(response
        .header("content-type")
        .is_some_and(|t| t.starts_with("application/openmetrics-text")));
    let parsed = python::run(
        "openmetrics.py",
        &[],
        &response.body,
        &["prometheus_client"],
        LIMIT,
    );
    let parsed: Value = serde_json::from_str(&parsed).expect("the parser's JSON");
    let families = parsed["families"].as_object().unwrap();
    for (name, kind) in [
        ("taskmill_queue_puts", "counter"),
        ("taskmill_queue_depth", "gauge"),
        ("taskmill_task_latency_seconds", "histogram"),
        ("taskmill_handshakes", "counter"),
        ("taskmill_build", "info"),
        ("taskmill_uptime_seconds", "gauge"),
    ] {
        assert_eq!(
            families.get(name).and_then(Value::as_str),
            Some(kind),
            "{name}"
        );
    }
    let mut samples = Samples::new();
    for s in parsed["samples"].as_array().unwrap() {
        let labels = serde_json::from_value(s["labels"].clone()).unwrap();
        let name = s["name"].as_str().unwrap().to_owned();
        samples
            .entry(name)
            .or_default()
            .push((labels, s["value"].as_f64().unwrap()));
    }
    let n = TASKS as f64;
    let tasks = [("queue", "tasks")];
    assert_eq!(value(&samples, "taskmill_queue_puts_total", &tasks), n);
    assert_eq!(
        value(&samples, "taskmill_queue_completions_total", &tasks),
        n
    );
    assert!(value(&samples, "taskmill_queue_deliveries_total", &tasks) >= n);
    // The job's results went to a reply queue of its own, which went with it.
    let queues: Vec<_> = samples["taskmill_queue_depth"]
        .iter()
        .map(|(labels, _)| labels["queue"].clone())
        .collect();
    assert_eq!(queues, ["tasks"]);
    for queue in [tasks] {
        assert_eq!(value(&samples, "taskmill_queue_depth", &queue), 0.0);
        assert_eq!(value(&samples, "taskmill_queue_leased", &queue), 0.0);
        for reason in ["closed", "expired", "nacked"] {
            let labels = [queue[0], ("reason", reason)];
            assert_eq!(
                value(&samples, "taskmill_queue_dead_letters_total", &labels),
                0.0
            );
        }
    }
    // Two workers, the job's producer and collector: all authenticated, none failed.
    let ok = value(
        &samples,
        "taskmill_handshakes_total",
        &[("outcome", "authenticated")],
    );
    assert!(ok >= 4.0, "{ok}");
    assert_eq!(
        value(
            &samples,
            "taskmill_handshakes_total",
            &[("outcome", "failed")]
        ),
        0.0
    );
    assert_eq!(
        value(&samples, "taskmill_connections", &[]),
        2.0,
        "the workers stay"
    );
    // One task in 64 by id is timed; ids are shared with the results queue, so about half of
    // the sampled ids are tasks.
    let count = value(&samples, "taskmill_task_latency_seconds_count", &tasks);
    let inf = value(
        &samples,
        "taskmill_task_latency_seconds_bucket",
        &[tasks[0], ("le", "+Inf")],
    );
    assert_eq!(count, inf);
    assert!(
        count >= n / 64.0 / 4.0 && count <= n / 64.0 + 2.0,
        "{count}"
    );
    assert!(value(&samples, "taskmill_task_latency_seconds_sum", &tasks) > 0.0);
    let version = [("version", env!("CARGO_PKG_VERSION"))];
    assert_eq!(value(&samples, "taskmill_build_info", &version), 1.0);
}

#[test]
fn the_dashboard_shows_a_running_job_in_a_real_browser() {
    const WORKERS: usize = 3;
    let (_master, addr, http) = serve_with_http();
    // Slow workers keep the job running while the browser looks.
    let _workers = workers(
        &addr,
        WORKERS,
        &["--concurrency", "16", "--simulated-work", "20ms"],
    );
    let _job = Proc::spawn(Command::new(binary("taskmill-master")).args([
        "run",
        "--master",
        &addr,
        "--tasks",
        "1000000",
        "--stall-timeout",
        "60s",
    ]));
    assert_eq!(fetch(http, "/healthz").body, "ok\n");
    let screenshot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    let out = python::run(
        "dashboard.py",
        &[
            "--url",
            &format!("http://{http}/"),
            "--workers",
            &WORKERS.to_string(),
            "--screenshot",
            screenshot.to_str().unwrap(),
        ],
        "",
        &["selenium"],
        LIMIT * 3,
    );
    let seen: Value = serde_json::from_str(out.trim()).expect("the check's JSON");
    assert_eq!(seen["ok"], true);
    assert!(screenshot.exists());
    eprintln!("dashboard screenshot: {}", screenshot.display());
}

#[test]
fn the_deploy_examples_parse_and_name_only_metrics_a_durable_master_exports() {
    let used = python::run(
        "deploy.py",
        &[python::root().join("deploy").to_str().unwrap()],
        "",
        &["yaml"],
        LIMIT,
    );
    let data = std::env::temp_dir().join(format!("taskmill-deploy-test-{}", std::process::id()));
    let master = Proc::spawn(Command::new(binary("taskmill-master")).args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--http",
        "127.0.0.1:0",
        "--data-dir",
        data.to_str().unwrap(),
    ]));
    let addr = master.listening_addr();
    let http = master.line_after("http listening on ").parse().unwrap();
    let _worker = workers(&addr, 1, &[]);
    let mut job = Proc::spawn(
        Command::new(binary("taskmill-master"))
            .args(["run", "--master", &addr, "--tasks", "2000", "--json"]),
    );
    assert!(job.wait(LIMIT).success(), "the job failed");
    let exposition = fetch(http, "/metrics").body;
    let parsed = python::run(
        "openmetrics.py",
        &[],
        &exposition,
        &["prometheus_client"],
        LIMIT,
    );
    let parsed: Value = serde_json::from_str(&parsed).unwrap();
    let exported: std::collections::HashSet<&str> = parsed["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    let used: Vec<&str> = used.lines().filter(|l| !l.is_empty()).collect();
    assert!(used.len() >= 10, "{used:?}");
    for name in &used {
        assert!(
            exported.contains(name),
            "deploy/ uses {name}, which /metrics does not export"
        );
    }
    drop(master);
    let _ = std::fs::remove_dir_all(&data);
}
