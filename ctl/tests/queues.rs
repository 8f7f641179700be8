//! Every `taskmill` command end to end, as a process against a master on a free loopback
//! port: what it prints, in text and JSON, what it changes, and how it fails.

mod support;

use std::time::Duration;

use base64::Engine as _;
use support::{run, taskmill, taskmill_stdin};
use taskmill::Wait;
use taskmill_testkit::{b, config, within, TestMaster};

/// The payloads at the front of `queue`, left in place.
async fn peek_all(master: &TestMaster, queue: &str) -> Vec<String> {
    let out = taskmill(&master.addr, &["peek", queue, "-n", "1000"]).await;
    out.lines().into_iter().map(str::to_owned).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_from_arguments_and_stdin_then_peek_leaves_items_and_take_removes_them() {
    let master = TestMaster::start(config()).await;
    let addr = &master.addr;

    let ids = taskmill(addr, &["put", "jobs", "a", "b c"]).await;
    assert_eq!(ids.lines().len(), 2, "one id per item");
    let put = taskmill_stdin(addr, &["put", "jobs", "--json"], b"d\n\ne\r\nf").await;
    let put = put.json();
    assert_eq!(put["queue"], "jobs");
    assert_eq!(put["ids"].as_array().unwrap().len(), 4, "{put}");

    let all = ["a", "b c", "d", "", "e\r", "f"];
    assert_eq!(peek_all(&master, "jobs").await, all);
    assert_eq!(peek_all(&master, "jobs").await, all, "peek leaves them");
    assert_eq!(taskmill(addr, &["peek", "jobs"]).await.lines(), ["a"]);

    assert_eq!(
        taskmill(addr, &["take", "jobs", "-n", "3"]).await.lines(),
        ["a", "b c", "d"]
    );
    let taken = taskmill(addr, &["take", "jobs", "--json"])
        .await
        .json_lines();
    assert_eq!(taken.len(), 1);
    assert_eq!(taken[0]["payload"], "");
    assert_eq!(taken[0]["attempt"], 1);
    assert_eq!(taken[0]["reply_to"], serde_json::Value::Null);
    assert_eq!(taken[0]["id"], put["ids"][1], "the ids put printed");
    assert_eq!(
        peek_all(&master, "jobs").await,
        ["e\r", "f"],
        "take removed"
    );

    let inspect = taskmill(addr, &["inspect", "jobs", "--json"]).await.json();
    assert_eq!(inspect["size"], 2);
    let table = taskmill(addr, &["inspect", "jobs"]).await;
    assert!(table.lines()[1].starts_with("jobs "), "{table:?}");

    // An empty queue: nothing on stdout, a note on stderr, success; --wait is bounded.
    taskmill(addr, &["take", "jobs", "-n", "5"]).await;
    let started = std::time::Instant::now();
    let empty = taskmill(addr, &["take", "jobs", "--wait", "300ms"]).await;
    assert_eq!(empty.ok(), "");
    assert!(empty.stderr.contains("is empty"), "{empty:?}");
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_lines_are_checked_before_any_is_put_and_raw_stdin_is_one_exact_item() {
    let master = TestMaster::start(config()).await;
    let addr = &master.addr;

    let bad = taskmill_stdin(addr, &["put", "events", "--json-lines"], b"{}\n{oops\n").await;
    bad.failed(2, "stdin line 2: not JSON");
    let missing = taskmill(addr, &["inspect", "events"]).await;
    missing.failed(1, "no queue named");
    let good = b"{\"n\": 1}\n\n[2, 3]\n";
    let put = taskmill_stdin(addr, &["put", "events", "--json-lines"], good).await;
    assert_eq!(put.lines().len(), 2, "the blank line skipped");
    taskmill(addr, &["put", "events", "--json-lines", "nope"])
        .await
        .failed(2, "argument 1: not JSON");

    let bytes = [0xff, 0x00, b'\n', 0xfe];
    taskmill_stdin(addr, &["put", "blobs", "--stdin-raw"], &bytes)
        .await
        .ok();
    let item = &taskmill(addr, &["take", "blobs", "--json"])
        .await
        .json_lines()[0];
    assert_eq!(item["encoding"], "base64");
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(item["payload"].as_str().unwrap())
        .unwrap();
    assert_eq!(decoded, bytes);

    let routed = taskmill(addr, &["put", "jobs", "x", "--reply-to", "mine"]).await;
    routed.ok();
    let peeked = taskmill(addr, &["peek", "jobs", "--json"])
        .await
        .json_lines();
    assert_eq!(peeked[0]["reply_to"], "mine");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declare_sets_a_capacity_that_put_respects_and_waits_for() {
    let master = TestMaster::start(config()).await;
    let addr = &master.addr;

    let declared = taskmill(addr, &["declare", "small", "--capacity", "2", "--json"]).await;
    assert_eq!(declared.json()["capacity"], 2);
    let text = taskmill(addr, &["declare", "small", "--capacity", "2"]).await;
    assert!(text.lines()[1].contains(" 2 "), "{text:?}");

    let full = taskmill(addr, &["put", "small", "1", "2", "3"]).await;
    full.failed(
        1,
        "is full: of 3 payloads, 2 (their ids are printed) were put",
    );
    assert_eq!(full.stdout.lines().count(), 2, "the ids given: {full:?}");

    // A put that waits for room gets it when a take makes some.
    let waiting = tokio::spawn({
        let addr = addr.clone();
        async move { taskmill(&addr, &["put", "small", "3", "--wait", "30s"]).await }
    });
    let mut client = master.client().await;
    loop {
        let q = client.inspect("small").await.unwrap();
        if q.waiting_putters == 1 {
            break;
        }
        within(
            "the put to wait",
            tokio::time::sleep(Duration::from_millis(20)),
        )
        .await;
    }
    let taken = client.take("small", 1, Wait::No).await.unwrap();
    assert_eq!(taken[0].payload, b("1"));
    let put = within("the waiting put", waiting).await.unwrap();
    assert_eq!(put.lines().len(), 1);
    assert_eq!(peek_all(&master, "small").await, ["2", "3"]);

    let timed_out = taskmill(addr, &["put", "small", "4", "--wait", "200ms"]).await;
    timed_out.failed(1, "found no room in 200ms");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_counts_what_it_removed_and_delete_refuses_a_queue_with_items_if_asked() {
    let master = TestMaster::start(config()).await;
    let addr = &master.addr;

    taskmill(addr, &["put", "jobs", "1", "2", "3"]).await.ok();
    let purged = taskmill(addr, &["purge", "jobs"]).await;
    assert_eq!(purged.ok(), "3 items purged from jobs\n");
    let again = taskmill(addr, &["purge", "jobs", "--json"]).await.json();
    assert_eq!(again, serde_json::json!({ "queue": "jobs", "purged": 0 }));

    taskmill(addr, &["put", "jobs", "kept"]).await.ok();
    let refused = taskmill(addr, &["delete", "jobs", "--if-empty"]).await;
    refused.failed(1, "cannot delete \"jobs\"");
    assert!(
        refused.stderr.contains("holds items") && refused.stderr.contains("without --if-empty"),
        "{refused:?}"
    );
    assert_eq!(peek_all(&master, "jobs").await, ["kept"], "still there");

    let deleted = taskmill(addr, &["delete", "jobs", "--json"]).await.json();
    assert_eq!(deleted["discarded"], 1);
    taskmill(addr, &["inspect", "jobs"])
        .await
        .failed(1, "no queue named \"jobs\"");
    taskmill(addr, &["put", "empty", "x"]).await.ok();
    taskmill(addr, &["take", "empty"]).await.ok();
    let quiet = taskmill(addr, &["delete", "empty", "--if-empty"]).await;
    assert_eq!(quiet.ok(), "empty deleted, with 0 items\n");

    // A queue with a leased task is in use, --if-empty or not.
    taskmill(addr, &["put", "busy", "x"]).await.ok();
    let mut client = master.client().await;
    let leased = client.get("busy", 1, Wait::No).await.unwrap();
    assert_eq!(leased.len(), 1);
    taskmill(addr, &["delete", "busy"])
        .await
        .failed(1, "in use");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_lists_buried_tasks_with_their_reasons_and_kick_moves_them_back() {
    let master = TestMaster::start(config()).await;
    let addr = &master.addr;

    let none = taskmill(addr, &["dead", "jobs"]).await;
    assert_eq!(none.ok(), "", "no dead-letter queue yet");
    assert!(none.stderr.contains("no dead letters in \"jobs.dead\""));

    taskmill(addr, &["put", "jobs", "good", "bad\tone", "ugly"])
        .await
        .ok();
    let mut client = master.client().await;
    let tasks = client.get("jobs", 3, Wait::No).await.unwrap();
    let ids: Vec<_> = tasks.iter().map(|t| t.id).collect();
    client.ack("jobs", vec![ids[0]]).await.unwrap();
    client
        .bury("jobs", vec![ids[1]], "exit 3: no such file\nat line 2")
        .await
        .unwrap();
    client.bury("jobs", vec![ids[2]], "rejected").await.unwrap();

    let listed = taskmill(addr, &["dead", "jobs"]).await;
    assert_eq!(
        listed.lines(),
        [
            "ID\tTASK\tATTEMPTS\tREASON\tPAYLOAD",
            &format!(
                "{}\t{}\t1\tfailed for good: exit 3: no such file\\nat line 2\tbad\\tone",
                listed_id(&listed, 1),
                ids[1]
            ),
            &format!(
                "{}\t{}\t1\tfailed for good: rejected\tugly",
                listed_id(&listed, 2),
                ids[2]
            ),
        ]
    );
    let json = taskmill(addr, &["dead", "jobs", "--json", "-n", "1"])
        .await
        .json_lines();
    assert_eq!(json.len(), 1);
    assert_eq!(json[0]["task"], ids[1]);
    assert_eq!(json[0]["queue"], "jobs");
    assert_eq!(json[0]["attempts"], 1);
    assert_eq!(
        json[0]["reason"],
        "failed for good: exit 3: no such file\nat line 2"
    );
    assert_eq!(json[0]["payload"], "bad\tone");
    let some = taskmill(addr, &["dead", "jobs", "-n", "1"]).await;
    assert!(some.stderr.contains("1 of 2 dead letters"), "{some:?}");
    assert_eq!(
        taskmill(addr, &["dead", "jobs"]).await.lines().len(),
        3,
        "listing leaves them in place"
    );

    let kicked = taskmill(addr, &["kick", "jobs", "-n", "1", "--json"]).await;
    assert_eq!(kicked.json()["kicked"], 1);
    let kicked = taskmill(addr, &["kick", "jobs"]).await;
    assert_eq!(
        kicked.ok(),
        "1 dead letter moved from jobs.dead back to jobs\n"
    );
    assert_eq!(peek_all(&master, "jobs").await, ["bad\tone", "ugly"]);
    let back = taskmill(addr, &["peek", "jobs", "--json"])
        .await
        .json_lines();
    assert_eq!(back[0]["attempt"], 1, "fresh attempts");
    assert_eq!(taskmill(addr, &["dead", "jobs"]).await.ok(), "");
}

/// The dead-letter queue's id on line `line` of a `dead` listing.
fn listed_id(out: &support::Out, line: usize) -> String {
    out.stdout
        .lines()
        .nth(line)
        .unwrap()
        .split('\t')
        .next()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_prints_what_taskmill_master_stats_prints() {
    let master = TestMaster::start(config()).await;
    let addr = &master.addr;
    taskmill(addr, &["put", "jobs", "1", "2"]).await.ok();

    let json = taskmill(addr, &["stats", "--json"]).await.json();
    assert_eq!(json["master"], addr.as_str());
    assert_eq!(json["clients"], 0, "not counting itself");
    let queue = &json["queues"][0];
    assert_eq!(
        (&queue["name"], &queue["size"]),
        (&"jobs".into(), &2.into())
    );
    let text = taskmill(addr, &["stats"]).await;
    let text = text.ok();
    assert!(text.starts_with(&format!("master {addr}: up ")), "{text}");
    assert!(text.lines().any(|l| l.starts_with("jobs ")), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_key_a_bad_key_and_no_master_fail_clearly() {
    let master = TestMaster::start(config()).await;
    let addr = master.addr.clone();
    let addr = addr.as_str();

    let wrong = [
        ("TASKMILL_MASTER", addr),
        ("TASKMILL_AUTHKEY", "not-the-right-key!!"),
    ];
    for args in [&["stats"][..], &["put", "jobs", "x"], &["take", "jobs"]] {
        let out = run(args, None, &wrong).await;
        out.failed(1, "authentication failed: wrong authkey?");
        assert!(out.stderr.contains(addr), "names the master: {out:?}");
    }
    let short = [("TASKMILL_MASTER", addr), ("TASKMILL_AUTHKEY", "short")];
    run(&["stats"], None, &short).await.failed(2, "at least 16");
    // Checked before stdin is read: a put given a bad key does not wait for input.
    run(&["put", "jobs"], Some(b""), &short)
        .await
        .failed(2, "at least 16");
    let key = [("TASKMILL_AUTHKEY", taskmill_testkit::KEY)];
    run(&["stats", "--master", "127.0.0.1"], None, &key)
        .await
        .failed(2, "no port");
    // A port nothing listens on: the master's own, once it has stopped.
    master.stop().await;
    run(&["stats", "--master", addr], None, &key)
        .await
        .failed(1, "cannot connect to the master at");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_leaves_early_is_no_reason_to_panic() {
    let master = TestMaster::start(config()).await;
    let items: Vec<String> = (0..2000).map(|i| format!("item {i}")).collect();
    let input = items.join("\n");
    taskmill_stdin(&master.addr, &["put", "jobs"], input.as_bytes())
        .await
        .ok();
    // As `taskmill peek jobs -n 2000 | head -1`: stdout closed before the first line.
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_taskmill"));
    cmd.args(["peek", "jobs", "-n", "2000", "--master", &master.addr])
        .env("TASKMILL_AUTHKEY", taskmill_testkit::KEY)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().unwrap();
    drop(child.stdout.take());
    let out = within("peek into a closed pipe", child.wait_with_output())
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let left = master.client().await.inspect("jobs").await.unwrap();
    assert_eq!(left.len, 2000, "peek took none");
}
