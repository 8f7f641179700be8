//! The `taskmill` command line without a master: help in the other binaries' style, usage
//! mistakes exit 2, completions and man pages.

mod support;

use support::run;

const COMMANDS: [&str; 10] = [
    "put", "take", "peek", "purge", "delete", "declare", "dead", "kick", "stats", "inspect",
];

#[tokio::test]
async fn every_help_screen_is_in_one_style_and_ends_with_the_exit_codes() {
    let top = run(&["--help"], None, &[]).await;
    for command in COMMANDS {
        assert!(top.ok().contains(&format!("\n  {command} ")), "{command}");
    }
    let mut screens = vec![vec!["--help"]];
    screens.extend(COMMANDS.map(|c| vec![c, "--help"]));
    for args in screens {
        let long = run(&args, None, &[]).await;
        let mut short_args = args.clone();
        *short_args.last_mut().unwrap() = "-h";
        // No screen keeps a longer text for --help than for -h, as in the other binaries.
        assert_eq!(
            long.ok(),
            run(&short_args, None, &[]).await.ok(),
            "{args:?}"
        );
        let text = long.ok();
        assert!(
            text.contains("Exit codes: 0 success") && text.contains("; 2 a mistake"),
            "{args:?}: {text}"
        );
        assert!(text.lines().next().unwrap().len() < 160, "{args:?}");
        if args.len() == 2 && args[0] != "stats" {
            assert!(text.contains("\nArguments:\n  <QUEUE>"), "{args:?}: {text}");
        }
        if args.len() == 2 {
            for heading in ["\nOutput:\n      --json", "\nConnection:\n"] {
                assert!(text.contains(heading), "{args:?} lacks {heading:?}: {text}");
            }
            assert!(text.contains("TASKMILL_MASTER") && text.contains("--authkey-file"));
        }
    }
    let take = run(&["take", "--help"], None, &[]).await;
    assert!(
        take.ok().contains("\nTake:\n  -n, --count <COUNT>"),
        "{take:?}"
    );
}

#[tokio::test]
async fn mistakes_in_flags_and_environment_exit_2_before_connecting() {
    let key = ("TASKMILL_AUTHKEY", taskmill_testkit::KEY);
    for (args, env, says) in [
        (&["put"][..], vec![key], "<QUEUE>"),
        (&["take", "q", "-n", "0"], vec![key], "--count"),
        (&["take", "q", "--wait", "soon"], vec![key], "--wait"),
        (
            &["put", "q", "x", "--stdin-raw"],
            vec![key],
            "cannot be used with",
        ),
        (&["stats"], vec![], "TASKMILL_AUTHKEY"),
        (
            &["stats"],
            vec![key, ("TASKMILL_MASTER", "::1:5000")],
            "brackets",
        ),
        (
            &["peek", "q"],
            vec![key, ("TASKMILL_COUNT", "none")],
            "--count",
        ),
        (
            &["stats"],
            vec![key, ("TASKMILL_AUTHKEY_FILE", "/nonexistent/taskmill.key")],
            "/nonexistent/taskmill.key",
        ),
    ] {
        let out = run(args, None, &env).await;
        out.failed(2, says);
    }
}

#[tokio::test]
async fn completions_and_man_pages_come_from_the_same_definition() {
    for shell in ["bash", "zsh", "fish"] {
        let script = run(&["completions", shell], None, &[]).await;
        let script = script.ok();
        assert!(
            script.contains("taskmill") && script.contains("json-lines"),
            "{shell}"
        );
    }
    let dir = std::env::temp_dir().join(format!("taskmill-ctl-man-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = run(&["man", dir.to_str().unwrap()], None, &[]).await;
    out.ok();
    let mut pages: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    pages.sort();
    let mut expected: Vec<String> = COMMANDS.map(|c| format!("taskmill-{c}.1")).into();
    expected.push("taskmill.1".into());
    expected.sort();
    assert_eq!(pages, expected, "one page per command, none for help");
    let put = std::fs::read_to_string(dir.join("taskmill-put.1")).unwrap();
    assert!(put.contains("\\-\\-stdin\\-raw"), "{put}");
    std::fs::remove_dir_all(&dir).unwrap();
}
