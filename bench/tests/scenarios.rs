//! Every scenario runs briefly against a real master and produces a sane, parseable report.

use std::sync::Arc;
use std::time::Duration;

use taskmill::{Client, ClientOptions};
use taskmill_bench::{Counter, Plan, Scenario, Target};
use taskmill_broker::ServerConfig;
use taskmill_testkit::{key, within, TestMaster};

fn plan(scenario: Scenario, connections: usize, count: u64) -> Plan {
    Plan {
        scenario,
        connections,
        batch: 64,
        prefetch: 2,
        duration: Duration::from_secs(2),
        count,
        rate: None,
        keep: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_reports_parseable_sane_figures() {
    let master = TestMaster::start(ServerConfig::new(key())).await;
    let target = Target {
        addr: master.addr.clone(),
        key: key(),
        client: ClientOptions::default(),
    };
    let mut open_loop = plan(Scenario::Latency, 1, 200);
    open_loop.rate = Some(500.0);
    for plan in [
        plan(Scenario::Squares, 2, 5_000),
        plan(Scenario::Produce, 3, 20_000), // not a multiple of the connections
        plan(Scenario::Consume, 2, 20_000),
        plan(Scenario::Connections, 50, 50),
        plan(Scenario::Latency, 1, 200),
        open_loop,
    ] {
        let progress = Arc::new(Counter::default());
        let report = within(
            "a bench run",
            taskmill_bench::run(&target, &plan, progress.clone()),
        )
        .await
        .unwrap();
        // What `--json` prints, parsed back as the comparison scripts read it.
        let text = serde_json::to_string_pretty(&report).unwrap();
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        let name = serde_json::to_value(plan.scenario).unwrap();
        assert_eq!(json["scenario"], name, "{text}");
        for field in ["connections", "prefetch", "items", "errors"] {
            assert!(json[field].is_u64(), "{field} is a count: {text}");
        }
        assert!(json["elapsed_secs"].is_f64(), "{text}");
        if plan.scenario == Scenario::Connections {
            // Idle connections held for a set time: no items per second, no batch.
            assert!(json.get("items_per_sec").is_none(), "{text}");
            assert!(json.get("batch").is_none(), "{text}");
        } else {
            assert!(json["items_per_sec"].as_f64().unwrap() > 0.0, "{text}");
            assert!(json["batch"].is_u64(), "{text}");
        }
        for field in ["p50", "p90", "p99", "p999", "max", "samples"] {
            assert!(
                json["latency_us"][field].is_u64(),
                "latency_us.{field}: {text}"
            );
        }
        assert_eq!(report.errors, 0, "{text}");
        assert_eq!(report.items, plan.count, "{text}");
        let l = &json["latency_us"];
        let (p50, p99, max) = (
            l["p50"].as_u64().unwrap(),
            l["p99"].as_u64().unwrap(),
            l["max"].as_u64().unwrap(),
        );
        assert!(0 < p50 && p50 <= p99 && p99 <= max, "{text}");
        if plan.scenario != Scenario::Squares {
            assert_eq!(progress.get(), report.items, "progress counts every item");
        }
    }
    // Every produce run above drained what it put; with `keep` the items stay queued.
    let mut kept = plan(Scenario::Produce, 2, 1_000);
    kept.keep = true;
    let report = taskmill_bench::run(&target, &kept, Arc::new(Counter::default()));
    let report = within("a bench run", report).await.unwrap();
    assert_eq!(report.items, 1_000);
    let mut client = Client::connect(&target.addr, &target.key).await.unwrap();
    assert_eq!(client.inspect("bench.produce").await.unwrap().len, 1_000);
    master.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_loop_latency_run_lasts_count_over_rate_not_a_worker_poll_more() {
    let master = TestMaster::start(ServerConfig::new(key())).await;
    let target = Target {
        addr: master.addr.clone(),
        key: key(),
        client: ClientOptions::default(),
    };
    let mut open_loop = plan(Scenario::Latency, 1, 200);
    open_loop.rate = Some(500.0);
    let report = taskmill_bench::run(&target, &open_loop, Arc::new(Counter::default()));
    let report = within("a bench run", report).await.unwrap();
    // 200 round trips due over 0.4 s; stopping the scenario's worker must not add its
    // one-second poll to the measured time.
    assert!(
        (0.39..0.9).contains(&report.elapsed_secs),
        "{} s",
        report.elapsed_secs
    );
    master.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_produce_run_counts_its_puts_not_the_drain_after_them() {
    let master = TestMaster::start(ServerConfig::new(key())).await;
    let target = Target {
        addr: master.addr.clone(),
        key: key(),
        client: ClientOptions::default(),
    };
    let mut timed = plan(Scenario::Produce, 1, u64::MAX);
    timed.duration = Duration::from_millis(500);
    timed.batch = 4096;
    let started = std::time::Instant::now();
    let report = taskmill_bench::run(&target, &timed, Arc::new(Counter::default()));
    let report = within("a bench run", report).await.unwrap();
    let wall = started.elapsed().as_secs_f64();
    // Taking the items back out afterwards is clean-up: counted, it made the put rate look
    // lower the more was put.
    let drain = wall - report.elapsed_secs;
    assert!(
        report.elapsed_secs < 0.5 + 0.2 && drain > 0.0,
        "measured {} s of {wall} s",
        report.elapsed_secs
    );
    let rate = report.items as f64 / report.elapsed_secs;
    assert!(
        (report.items_per_sec.unwrap() - rate).abs() < 1.0,
        "{report:?}"
    );
    let mut client = Client::connect(&target.addr, &target.key).await.unwrap();
    assert_eq!(
        client.inspect("bench.produce").await.unwrap().len,
        0,
        "drained"
    );
    master.stop().await;
}
