//! The master binary's command line: the key it accepts, `keygen`, and the inputs it refuses
//! before starting anything (exit code 2, as clap's own).

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};

use taskmill_testkit::process::{binary, Proc};

/// `taskmill-master` with no key in its environment.
fn master() -> Command {
    let mut cmd = Command::new(binary("taskmill-master"));
    cmd.env_remove("TASKMILL_AUTHKEY")
        .env_remove("TASKMILL_AUTHKEY_FILE");
    cmd
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A fresh directory for one test's files.
fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("taskmill-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn the_example_key_and_keys_with_little_variety_are_refused() {
    for (key, says) in [
        ("change-me-to-a-long-random-secret", "placeholder"),
        ("aaaaaaaaaaaaaaaaaaaa", "too easy to guess"),
        ("01234567890123456789", "too easy to guess"),
    ] {
        let out = master()
            .args(["serve", "--listen", "127.0.0.1:0"])
            .env("TASKMILL_AUTHKEY", key)
            .output()
            .unwrap();
        let err = stderr(&out);
        assert!(!out.status.success(), "{key} was accepted");
        assert!(
            err.contains(says) && err.contains("taskmill-master keygen"),
            "{err}"
        );
    }
}

#[test]
fn keygen_prints_a_fresh_key_that_the_binaries_accept() {
    let keygen = || {
        let out = master().arg("keygen").output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        String::from_utf8(out.stdout).unwrap()
    };
    let (text, other) = (keygen(), keygen());
    let key = text.trim_end();
    assert_eq!(text, format!("{key}\n"), "one line");
    assert_eq!(key.len(), 64);
    assert!(key.bytes().all(|b| b.is_ascii_hexdigit()), "{key}");
    assert_ne!(text, other, "every key is new");

    // A master on the key in a file, while TASKMILL_AUTHKEY holds another key (Proc sets the
    // test key): the file wins, and the master says so.
    let dir = scratch("keygen");
    let file = dir.join("taskmill.key");
    std::fs::write(&file, &text).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let served = Proc::spawn(
        Command::new(binary("taskmill-master"))
            .args(["serve", "--listen", "127.0.0.1:0", "--authkey-file"])
            .arg(&file),
    );
    let addr = served.listening_addr();
    assert!(
        served
            .stderr()
            .contains("set and so is a key file: using the key in"),
        "{}",
        served.stderr()
    );
    // The same key from the environment, with the newline `$(cat file)`-less scripts and
    // `.env` editors leave on it.
    let out = master()
        .args(["stats", "--master", &addr])
        .env("TASKMILL_AUTHKEY", &text)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Runs `taskmill-master args` with a usable key and expects it to refuse to start: exit 2,
/// within seconds, having started nothing, with `says` in its message.
fn refused(args: &[&str], says: &str) {
    let started = std::time::Instant::now();
    let out = master()
        .args(args)
        .env("TASKMILL_AUTHKEY", taskmill_testkit::KEY)
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
    assert!(err.contains(says), "{args:?}: {err}");
    assert!(
        !err.contains("listening on"),
        "{args:?} started a master: {err}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "{args:?}"
    );
}

#[test]
fn inputs_that_can_never_work_exit_2_before_anything_starts() {
    refused(
        &["run", "--tasks", "10", "--min", "10", "--max", "5"],
        "--min",
    );
    refused(
        &["run", "--tasks", "0", "--local-workers", "1"],
        "at least 1",
    );
    refused(
        &["run", "--tasks", "10", "--local-workers", "100000"],
        "0..=1024",
    );
    refused(
        &["run", "--tasks", "10", "--stall-timeout", "0"],
        "more than 0",
    );
    refused(
        &["run", "--tasks", "10", "--master", "127.0.0.1"],
        "no port",
    );
    refused(&["stats", "--master", "127.0.0.1"], "no port");
    refused(&["stats", "--master", "::1:5000"], "brackets");
    refused(&["serve", "--listen", "0.0.0.0"], "no port");
    refused(
        &["serve", "--listen", "127.0.0.1:0", "--max-frame", "1"],
        "--max-frame",
    );
    // `run --master` uses a master configured elsewhere: its own flags would be ignored.
    for flag in [
        ["--lease-timeout", "3s"],
        ["--data-dir", "/tmp"],
        ["--listen", "127.0.0.1:0"],
    ] {
        let mut args = vec!["run", "--tasks", "10", "--master", "127.0.0.1:5000"];
        args.extend(flag);
        refused(&args, "cannot be used with");
    }
    // Key mistakes are found before starting too, by every command that needs the key.
    for args in [&["serve"][..], &["stats"], &["run", "--tasks", "10"]] {
        let out = master()
            .args(args)
            .env("TASKMILL_AUTHKEY", "short")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
    }
}

#[test]
fn every_command_documents_the_exit_codes() {
    for args in [
        &["--help"][..],
        &["serve", "--help"],
        &["run", "--help"],
        &["stats", "--help"],
    ] {
        let out = master().args(args).output().unwrap();
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(
            help.contains("Exit codes: 0 success; 1 ")
                && help.contains("; 2 ")
                && help.contains("130"),
            "{args:?}: {help}"
        );
    }
}
