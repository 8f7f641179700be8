//! The worker binary's start-up checks: a usable key, readable flags.

use std::process::Command;

fn worker() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_taskmill-worker"));
    cmd.env_remove("TASKMILL_AUTHKEY")
        .env_remove("TASKMILL_AUTHKEY_FILE");
    cmd
}

#[test]
fn refuses_to_start_without_a_key_and_says_how_to_set_one() {
    let out = worker().args(["--master", "127.0.0.1:1"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("TASKMILL_AUTHKEY") && err.contains("--authkey-file"),
        "{err}"
    );
}

#[test]
fn refuses_a_short_key_and_a_missing_key_file() {
    let out = worker().env("TASKMILL_AUTHKEY", "abc").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least 16"));

    let out = worker()
        .args(["--authkey-file", "/nonexistent/taskmill.key"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/taskmill.key"));
}

#[test]
fn refuses_the_example_key_from_env_example() {
    let out = worker()
        .env("TASKMILL_AUTHKEY", "change-me-to-a-long-random-secret")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("placeholder") && err.contains("keygen"),
        "{err}"
    );
}

#[test]
fn an_address_without_a_port_or_a_zero_idle_limit_exits_2_at_once() {
    for (args, says) in [
        (&["--master", "127.0.0.1"][..], "no port"),
        (&["--master", "master:http"], "not a port number"),
        (&["--idle-exit", "0"], "more than 0"),
    ] {
        // A worker that took the address would retry for ever: output() would never return.
        let out = worker()
            .args(args)
            .env("TASKMILL_AUTHKEY", "a-usable-key-for-the-worker")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
    let out = worker()
        .env("TASKMILL_MASTER", "127.0.0.1")
        .env("TASKMILL_AUTHKEY", "a-usable-key-for-the-worker")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "the environment is checked too");
}

#[test]
fn help_documents_the_flags_and_their_variables() {
    let out = worker().arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--master",
        "--concurrency",
        "--idle-exit",
        "TASKMILL_MASTER",
        "TASKMILL_AUTHKEY",
        "Exit codes: 0 success; 1 ",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
}
