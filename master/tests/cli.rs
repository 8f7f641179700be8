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

/// Every binary's help screens, as `args` lists.
const HELPS: [&[&str]; 8] = [
    &["taskmill-master"],
    &["taskmill-master", "serve"],
    &["taskmill-master", "run"],
    &["taskmill-master", "stats"],
    &["taskmill-master", "keygen"],
    &["taskmill-worker"],
    &["taskmill-bench"],
    &["taskmill-bench", "--rate", "1"],
];

fn help(bin_and_args: &[&str], flag: &str) -> String {
    let out = Command::new(binary(bin_and_args[0]))
        .args(
            bin_and_args[1..]
                .iter()
                .copied()
                .filter(|a| a.starts_with(char::is_alphabetic)),
        )
        .arg(flag)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{bin_and_args:?} {flag}: {}",
        stderr(&out)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn every_help_screen_is_in_one_style_and_ends_with_the_exit_codes() {
    for args in HELPS {
        let long = help(args, "--help");
        // One style: no screen keeps a longer text for --help than for -h, which is what
        // switched clap to its spaced layout for some binaries and not others.
        assert_eq!(long, help(args, "-h"), "{args:?}");
        assert!(
            long.contains("Exit codes: 0 success") && long.contains("; 2 a mistake"),
            "{args:?}: {long}"
        );
        assert!(
            long.lines().next().unwrap().len() < 160,
            "{args:?}: a one-line summary"
        );
    }
    let run = help(&["taskmill-master", "run"], "--help");
    for heading in [
        "\nJob:\n",
        "\nKey:\n",
        "\nIts own master (not with --master):\n      --listen",
        "\nStorage of its own master (not with --master):\n",
        "\nTLS of its own master (not with --master):\n",
    ] {
        assert!(run.contains(heading), "run --help lacks {heading:?}: {run}");
    }
    for bin in ["taskmill-master", "taskmill-worker", "taskmill-bench"] {
        let args: &[&str] = match bin {
            "taskmill-master" => &[bin, "stats"],
            _ => &[bin],
        };
        let text = help(args, "--help");
        let described = text
            .lines()
            .skip_while(|l| !l.contains("--authkey-file"))
            .take(2)
            .any(|l| l.contains("File holding the shared authkey"));
        assert!(described, "{bin}: --authkey-file undescribed: {text}");
    }
}

#[test]
fn each_binary_prints_its_completions_and_man_pages() {
    let dir = scratch("docs");
    for (bin, flag, pages) in [
        (
            "taskmill-master",
            "--local-workers",
            &[
                "taskmill-master.1",
                "taskmill-master-run.1",
                "taskmill-master-serve.1",
                "taskmill-master-stats.1",
                "taskmill-master-keygen.1",
            ][..],
        ),
        ("taskmill-worker", "--concurrency", &["taskmill-worker.1"]),
        ("taskmill-bench", "--connections", &["taskmill-bench.1"]),
    ] {
        for shell in ["bash", "zsh", "fish"] {
            let out = Command::new(binary(bin))
                .args(["completions", shell])
                .output()
                .unwrap();
            let script = String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success(), "{bin} {shell}: {}", stderr(&out));
            assert!(
                script.contains(bin) && script.contains(&flag[2..]),
                "{bin} {shell}: {script}"
            );
        }
        let out = Command::new(binary(bin))
            .arg("man")
            .arg(dir.join(bin))
            .output()
            .unwrap();
        assert!(out.status.success(), "{bin} man: {}", stderr(&out));
        let mut written: Vec<String> = std::fs::read_dir(dir.join(bin))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        written.sort();
        let mut expected: Vec<String> = pages.iter().map(|p| p.to_string()).collect();
        expected.sort();
        assert_eq!(
            written, expected,
            "{bin}: no page for `help`, one per command"
        );
        // The page with the flag: the binary's own, or for the master, run's.
        let with_flag = pages
            .iter()
            .find(|p| p.ends_with("-run.1"))
            .unwrap_or(&pages[0]);
        let page = std::fs::read_to_string(dir.join(bin).join(with_flag)).unwrap();
        assert!(
            page.contains(".TH") && page.contains(&flag.replace('-', "\\-")),
            "{bin}: {page}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
