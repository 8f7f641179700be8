//! The bench binary's command line: flags from the environment, and mistakes refused before
//! a run starts.

use std::process::{Command, Output};

use taskmill_broker::ServerConfig;
use taskmill_testkit::{key, within, TestMaster, KEY};

/// `taskmill-bench args` with the test key and nothing else from the environment.
async fn bench(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_taskmill-bench"));
    cmd.args(args).env("TASKMILL_AUTHKEY", KEY);
    for var in ["TASKMILL_AUTHKEY_FILE", "TASKMILL_MASTER", "TASKMILL_JSON"] {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied());
    within(
        "the bench",
        tokio::task::spawn_blocking(move || cmd.output()),
    )
    .await
    .unwrap()
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duration_alone_from_the_environment_makes_produce_run_for_all_of_it() {
    let master = TestMaster::start(ServerConfig::new(key())).await;
    let out = bench(
        &["produce", "-c", "1", "-b", "16"],
        &[
            ("TASKMILL_MASTER", master.addr.as_str()),
            ("TASKMILL_BENCH_DURATION", "1s"),
            ("TASKMILL_JSON", "1"),
        ],
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_str(&stdout).expect("JSON, from TASKMILL_JSON");
    // Not the 10 s default, and not over once a default count is in.
    let elapsed = report["elapsed_secs"].as_f64().unwrap();
    assert!((0.95..5.0).contains(&elapsed), "{report}");
    assert!(report["items"].as_u64().unwrap() > 0, "{report}");
    master.stop().await;
}

#[tokio::test]
async fn mistakes_in_the_flags_exit_2_without_running() {
    for (args, says) in [
        (&["produce", "--master", "127.0.0.1"][..], "no port"),
        (&["produce", "-n", "0"], "at least 1"),
        (&["produce", "-c", "0"], "-c"),
        (&["latency", "--rate", "0"], "above 0"),
        (&["produce", "-d", "0s"], "more than 0"),
    ] {
        let out = bench(args, &[]).await;
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
    let out = bench(
        &["produce"],
        &[("TASKMILL_AUTHKEY", "aaaaaaaaaaaaaaaaaaaa")],
    )
    .await;
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
