//! Scoped keys: each role may do what it is for and is refused the rest with `Forbidden`
//! (counted in stats); a wrong key id fails like a wrong key; keys rotate on SIGHUP while a job
//! runs.

use std::time::Duration;

use bytes::Bytes;
use taskmill::{Client, ClientError};
use taskmill_broker::http::HttpConfig;
use taskmill_broker::{Grants, Keyring};
use taskmill_protocol::auth::KeyId;
use taskmill_protocol::{AuthKey, Delivery, ErrorKind, Outcome, Request, Wait};
use taskmill_testkit::process::{binary, Proc};
use taskmill_testkit::{b, config, key, within, TestMaster};

const PRODUCER: &str = "producer-key-0123456789";
const WORKER: &str = "worker-key-abcdefghij";
const COLLECTOR: &str = "collector-key-0123456";
const ADMIN: &str = "admin-key-9876543210";

fn id(name: &str) -> KeyId {
    name.parse().unwrap()
}

fn named(secret: &str, name: &str) -> AuthKey {
    AuthKey::new(secret).unwrap().with_id(id(name))
}

async fn scoped_master() -> TestMaster {
    scoped_master_with_http().await.0
}

async fn scoped_master_with_http() -> (TestMaster, std::net::SocketAddr) {
    let mut keys = Keyring::default();
    let mut add = |name: &str, secret: &str, rights: &str, queues: &str| {
        let grants = Grants::parse(rights, queues).unwrap();
        keys.add(id(name), AuthKey::new(secret).unwrap(), grants);
    };
    add("prod", PRODUCER, "producer", "tasks");
    add("work", WORKER, "worker", "tasks,results");
    add("coll", COLLECTOR, "collector", "results");
    add("ops", ADMIN, "admin", "*");
    let mut config = config();
    config.keys = keys;
    TestMaster::start_with_http(config, HttpConfig::default()).await
}

async fn connect(master: &TestMaster, key: &AuthKey) -> Result<Client, ClientError> {
    within("connect", Client::connect(&master.addr, key)).await
}

/// Asserts that `request` is refused with `Forbidden` and that the connection stays usable.
async fn refused(client: &mut Client, request: Request) {
    let what = format!("{request:?}");
    match client.request(request).await {
        Err(ClientError::Server {
            kind: ErrorKind::Forbidden,
            message,
        }) => assert!(message.contains("this key may not"), "{message}"),
        other => panic!("{what}: expected Forbidden, got {other:?}"),
    }
    client.request(Request::Ping).await.expect("still usable");
}

fn lease(queue: &str) -> Request {
    get(queue, Delivery::Lease { millis: None })
}

fn get(queue: &str, delivery: Delivery) -> Request {
    Request::Get {
        queue: queue.into(),
        max: 10,
        wait: Wait::No,
        delivery,
    }
}

fn put(queue: &str) -> Request {
    Request::Put {
        queue: queue.into(),
        items: vec![b("x")],
        wait: Wait::No,
        reply_to: None,
    }
}

fn complete(results: &str, task: u64) -> Request {
    Request::Complete {
        queue: "tasks".into(),
        results: results.into(),
        outcomes: vec![Outcome {
            task,
            result: Bytes::from_static(b"r"),
        }],
        wait: Wait::No,
        reply: false,
    }
}

#[tokio::test]
async fn each_role_may_do_its_part_and_is_refused_the_rest() {
    let (master, http) = scoped_master_with_http().await;
    let mut producer = connect(&master, &named(PRODUCER, "prod")).await.unwrap();
    let mut worker = connect(&master, &named(WORKER, "work")).await.unwrap();
    let mut collector = connect(&master, &named(COLLECTOR, "coll")).await.unwrap();
    let mut admin = connect(&master, &named(ADMIN, "ops")).await.unwrap();

    // Producer: puts on its queue only.
    producer
        .put("tasks", vec![b("1"), b("2")], Wait::No)
        .await
        .unwrap();
    refused(&mut producer, put("other")).await;
    refused(&mut producer, lease("tasks")).await;
    refused(&mut producer, get("tasks", Delivery::Remove)).await;
    refused(
        &mut producer,
        Request::Purge {
            queue: "tasks".into(),
        },
    )
    .await;
    refused(&mut producer, Request::Stats).await;

    // Worker: leases and completes into its results queue; takes nothing for good.
    refused(&mut worker, put("tasks")).await;
    refused(&mut worker, get("tasks", Delivery::Remove)).await;
    let tasks = worker.get("tasks", 1, Wait::No).await.unwrap();
    assert_eq!(tasks.len(), 1);
    refused(&mut worker, complete("forged", tasks[0].id)).await;
    let settled = worker
        .complete(
            "tasks",
            "results",
            vec![Outcome {
                task: tasks[0].id,
                result: b("r"),
            }],
            Wait::No,
        )
        .await
        .unwrap();
    assert_eq!(settled.done, 1);
    refused(
        &mut worker,
        Request::Declare {
            queue: "tasks".into(),
            capacity: Some(1),
        },
    )
    .await;

    // Collector: reads results, nothing else.
    let results = collector.take("results", 10, Wait::No).await.unwrap();
    assert_eq!(results.len(), 1);
    refused(&mut collector, lease("tasks")).await;
    refused(&mut collector, put("results")).await;
    refused(&mut collector, Request::Stats).await;

    // Admin: declares, inspects, kicks, purges, deletes and reads stats; handles no tasks.
    admin
        .request(Request::Declare {
            queue: "spare".into(),
            capacity: Some(5),
        })
        .await
        .unwrap();
    admin
        .request(Request::Kick {
            queue: "tasks".into(),
            max: 1,
        })
        .await
        .unwrap();
    admin
        .request(Request::Purge {
            queue: "tasks".into(),
        })
        .await
        .unwrap();
    admin
        .request(Request::Delete {
            queue: "spare".into(),
            if_empty: true,
        })
        .await
        .unwrap();
    refused(&mut admin, put("tasks")).await;
    refused(&mut admin, lease("tasks")).await;
    let stats = admin.stats().await.unwrap();
    assert_eq!(stats.forbidden_total, 14, "every refusal counted");

    // The default key keeps every right.
    let mut root = master.client().await;
    root.put("anything", vec![b("1")], Wait::No).await.unwrap();
    root.take("anything", 1, Wait::No).await.unwrap();
    assert_eq!(root.stats().await.unwrap().forbidden_total, 14);
    let metrics = taskmill_testkit::http::get(http, "/metrics", &[]).await;
    assert!(
        metrics
            .body
            .contains("taskmill_forbidden_requests_total 14\n"),
        "{}",
        metrics.body
    );
    let api = taskmill_testkit::http::get(http, "/api/stats", &[]).await;
    let api: serde_json::Value = serde_json::from_str(&api.body).unwrap();
    assert_eq!(api["forbidden_total"], 14);
    master.stop().await;
}

#[tokio::test]
async fn a_wrong_key_id_fails_exactly_like_a_wrong_key() {
    let master = scoped_master().await;
    let failures = [
        // An id the master does not have.
        named(WORKER, "nobody"),
        // A real id with another key's secret, and another id for a real secret.
        named(PRODUCER, "work"),
        named(WORKER, "prod"),
        // A named key's secret sent as the default key.
        AuthKey::new(WORKER).unwrap(),
        // The default key under a name.
        key().with_id(id("work")),
    ];
    for bad in failures {
        match connect(&master, &bad).await {
            Err(ClientError::AuthenticationFailed) => {}
            other => panic!("{bad:?}: {other:?}"),
        }
    }
    connect(&master, &named(WORKER, "work")).await.unwrap();
    // A master without scoped keys refuses every id the same way.
    let plain = TestMaster::start(config()).await;
    match within(
        "connect",
        Client::connect(&plain.addr, &key().with_id(id("work"))),
    )
    .await
    {
        Err(ClientError::AuthenticationFailed) => {}
        other => panic!("{other:?}"),
    }
    plain.stop().await;
    master.stop().await;
}

fn write_keys(path: &std::path::Path, worker_secrets: &[&str]) {
    let mut text = format!("# test keys\nprod producer,collector,admin * {PRODUCER}\n");
    for secret in worker_secrets {
        text.push_str(&format!("work worker tasks,results {secret}\n"));
    }
    std::fs::write(path, text).unwrap();
}

/// Connects until `key` is accepted (`true`) or refused (`false`) as `want`: a reload takes
/// effect a moment after the signal.
async fn until_key_is(addr: &str, key: &AuthKey, want: bool) {
    within("the reload to take effect", async {
        loop {
            match Client::connect(addr, key).await {
                Ok(_) if want => return,
                Err(ClientError::AuthenticationFailed) if !want => return,
                Ok(_) | Err(ClientError::AuthenticationFailed) => {}
                Err(other) => panic!("{other}"),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

#[tokio::test]
async fn a_key_rotates_on_sighup_while_a_job_runs() {
    const OLD: &str = "old-worker-key-0123456";
    const NEW: &str = "new-worker-key-6543210";
    let dir = std::env::temp_dir().join(format!("taskmill-scoped-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let keys = dir.join("keys");
    write_keys(&keys, &[OLD]);
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let master = Proc::spawn(
        std::process::Command::new(binary("taskmill-master"))
            .args(["serve", "--listen", "127.0.0.1:0", "--keys-file"])
            .arg(&keys),
    );
    let addr = master.listening_addr();
    let producer_key = named(PRODUCER, "prod");
    let mut producer = within("connect", Client::connect(&addr, &producer_key))
        .await
        .unwrap();
    let items: Vec<Bytes> = (0..4).map(|i| b(&i.to_string())).collect();
    producer.put("tasks", items, Wait::No).await.unwrap();

    // The old key's worker holds half the job across the rotation.
    let mut old = within("connect", Client::connect(&addr, &named(OLD, "work")))
        .await
        .unwrap();
    let held = old.get("tasks", 2, Wait::No).await.unwrap();
    assert_eq!(held.len(), 2);

    // Both keys valid at once, then the old one removed: no restart.
    write_keys(&keys, &[OLD, NEW]);
    master.signal(libc::SIGHUP);
    until_key_is(&addr, &named(NEW, "work"), true).await;
    within("connect", Client::connect(&addr, &named(OLD, "work")))
        .await
        .expect("both valid");
    write_keys(&keys, &[NEW]);
    master.signal(libc::SIGHUP);
    until_key_is(&addr, &named(OLD, "work"), false).await;

    // A keys file that does not load keeps the keys that work.
    std::fs::write(&keys, "work worker tasks too-short\n").unwrap();
    master.signal(libc::SIGHUP);
    let mut new = within("connect", Client::connect(&addr, &named(NEW, "work")))
        .await
        .unwrap();
    refused(&mut new, put("tasks")).await;

    // The session opened with the old key finishes its tasks; the new key does the rest.
    let done = |tasks: &[taskmill_protocol::Task]| {
        tasks
            .iter()
            .map(|t| Outcome {
                task: t.id,
                result: t.payload.clone(),
            })
            .collect()
    };
    let settled = old
        .complete("tasks", "results", done(&held), Wait::No)
        .await
        .unwrap();
    assert_eq!(settled.done, 2);
    let rest = new.get("tasks", 10, Wait::No).await.unwrap();
    assert_eq!(rest.len(), 2);
    let settled = new
        .complete("tasks", "results", done(&rest), Wait::No)
        .await
        .unwrap();
    assert_eq!(settled.done, 2);
    let results = producer.take("results", 10, Wait::No).await.unwrap();
    let mut got: Vec<_> = results.iter().map(|t| t.payload.clone()).collect();
    got.sort();
    assert_eq!(got, ["0", "1", "2", "3"].map(b), "the job completed");
    let stderr = master.stderr();
    assert!(stderr.contains("keys not reloaded"), "{stderr}");
    assert!(stderr.contains("is readable by other users"), "{stderr}");
    let refusal = stderr
        .lines()
        .find(|l| l.contains("request refused: this key may not put"));
    assert!(refusal.is_some_and(|l| l.contains("work")), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The binaries end to end: a worker picks its key by `TASKMILL_KEY_ID`, the job by
/// `--key-id`, each with only the rights it needs, and the squares job completes.
#[test]
fn the_squares_job_runs_on_scoped_keys_from_the_command_line() {
    const JOB: &str = "job-runner-key-01234567";
    let dir = std::env::temp_dir().join(format!("taskmill-scoped-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let keys = dir.join("keys");
    std::fs::write(
        &keys,
        format!("job producer,collector,admin * file:job.key\nw worker tasks,results {WORKER}\n"),
    )
    .unwrap();
    std::fs::write(dir.join("job.key"), JOB).unwrap();
    std::fs::write(dir.join("worker.key"), WORKER).unwrap();
    let worker_bin = binary("taskmill-worker");
    let master = Proc::spawn(
        std::process::Command::new(binary("taskmill-master"))
            .args(["serve", "--listen", "127.0.0.1:0", "--keys-file"])
            .arg(&keys),
    );
    let addr = master.listening_addr();
    let mut worker = Proc::spawn(
        std::process::Command::new(&worker_bin)
            .args(["--master", &addr, "--authkey-file"])
            .arg(dir.join("worker.key"))
            .env("TASKMILL_KEY_ID", "w"),
    );
    let mut job = Proc::spawn(
        std::process::Command::new(binary("taskmill-master"))
            .args([
                "run", "--master", &addr, "--tasks", "2000", "--json", "--key-id", "job",
            ])
            .arg("--authkey-file")
            .arg(dir.join("job.key")),
    );
    let status = job.wait(taskmill_testkit::LIMIT);
    let report: serde_json::Value =
        serde_json::from_str(&job.stdout_rest()).expect("the job prints its report as JSON");
    assert!(status.success(), "job failed: {report} {}", job.stderr());
    assert_eq!(report["ending"], "complete");
    assert_eq!(report["verified"], 2000);
    worker.signal(libc::SIGTERM);
    assert!(worker.wait(Duration::from_secs(15)).success());

    // `run` with its own master has no use for a key id.
    let out = std::process::Command::new(binary("taskmill-master"))
        .args([
            "run",
            "--local-workers",
            "1",
            "--tasks",
            "10",
            "--key-id",
            "job",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs --master"));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// With a keys file and no authkey, only named keys get in: the default key is one nobody
/// holds.
#[tokio::test]
async fn a_master_with_only_a_keys_file_takes_only_named_keys() {
    use std::io::BufRead;
    let dir = std::env::temp_dir().join(format!("taskmill-scoped-only-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let keys = dir.join("keys");
    std::fs::write(&keys, format!("w worker tasks {WORKER}\n")).unwrap();
    let mut child = std::process::Command::new(binary("taskmill-master"))
        .args(["serve", "--listen", "127.0.0.1:0", "--keys-file"])
        .arg(&keys)
        .env_remove("TASKMILL_AUTHKEY")
        .env_remove("TASKMILL_AUTHKEY_FILE")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let _master = Proc::adopt(child);
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .unwrap();
        line
    });
    let line = within("the listening line", line).await.unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap()
        .to_owned();
    match within("connect", Client::connect(&addr, &key())).await {
        Err(ClientError::AuthenticationFailed) => {}
        other => panic!("the test key as default key: {other:?}"),
    }
    let mut worker = within("connect", Client::connect(&addr, &named(WORKER, "w")))
        .await
        .unwrap();
    refused(&mut worker, put("tasks")).await;
    std::fs::remove_dir_all(&dir).unwrap();
}
