//! A durable master meeting a full disk and a failing fsync, as a real process: a spent disk
//! budget refuses new tasks while settling goes on; a write that finds no space, or an fsync
//! that fails, stops the master with a message that says so, and nothing unwritten is
//! acknowledged. The disk is a 2 MiB tmpfs the test mounts (this needs root, as CI runs);
//! the failing fsync comes from strace's fault injection (`.ci/run` installs strace).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use taskmill_testkit::process::{binary, Proc};
use taskmill_testkit::{KEY, LIMIT};

/// A small tmpfs, unmounted when dropped.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(tag: &str) -> Self {
        let path = std::env::temp_dir().join(format!("taskmill-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&path).unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
            .arg(&path)
            .status()
            .expect("run mount");
        assert!(
            mounted.success(),
            "mounting a tmpfs needs root (CI runs as root); the same faults are also tested on \
             the simulated file system in taskmill-broker's store tests"
        );
        Self(path)
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

fn serve(dir: &Path, extra: &[&str]) -> Proc {
    let mut cmd = Command::new(binary("taskmill-master"));
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .args(["--segment-bytes", "64KiB", "--snapshot-after", "64KiB"])
        .args(extra);
    Proc::spawn(&mut cmd)
}

fn bench(args: &[&str]) -> Output {
    Command::new(binary("taskmill-bench"))
        .args(args)
        .arg("--json")
        .env("TASKMILL_AUTHKEY", KEY)
        .output()
        .unwrap()
}

/// Puts `n` items, 100 at a time, for at most `limit` (a connection the master drops ends it
/// sooner).
fn put_items(addr: &str, n: u32, limit: &str) -> Output {
    let n = n.to_string();
    bench(&[
        "produce", "-n", &n, "-c", "1", "-b", "100", "-d", limit, "--keep", "--master", addr,
    ])
}

#[test]
fn a_spent_disk_budget_refuses_new_tasks_while_settling_goes_on() {
    let disk = SmallDisk::mount("budget");
    let mut master = serve(&disk.0, &["--max-disk", "400KiB"]);
    let addr = master.listening_addr();
    // Past the budget (less the room kept for the next segment and snapshot), puts fail.
    let refused = put_items(&addr, 20_000, "10s");
    let report: serde_json::Value = serde_json::from_slice(&refused.stdout).unwrap();
    assert!(report["errors"].as_u64().unwrap() > 0, "{report}");
    assert!(report["items"].as_u64().unwrap() < 20_000, "{report}");
    // Leasing and acking still work, and free room: a put is taken again.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let key = taskmill::AuthKey::new(KEY).unwrap();
        let mut client = taskmill::Client::connect(&addr, &key).await.unwrap();
        let queue = "bench.produce";
        let more = client
            .put(queue, vec![b"x"[..].into()], taskmill::Wait::No)
            .await;
        let err = more.unwrap_err().to_string();
        assert!(err.contains("StorageFull"), "{err}");
        loop {
            let tasks = client.get(queue, 4096, taskmill::Wait::No).await.unwrap();
            if tasks.is_empty() {
                break;
            }
            let ids = tasks.iter().map(|t| t.id).collect();
            assert!(client.ack(queue, ids).await.unwrap().stale.is_empty());
        }
        // Room comes back once the acks are compacted away.
        let deadline = tokio::time::Instant::now() + LIMIT;
        loop {
            let put = client
                .put(queue, vec![b"y"[..].into()], taskmill::Wait::No)
                .await;
            if put.is_ok() {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "no room came back");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    });
    master.signal(libc::SIGTERM);
    assert!(master.wait(LIMIT).success(), "{}", master.stderr());
}

#[test]
fn a_write_that_finds_the_disk_full_stops_the_master_with_a_clear_message() {
    let disk = SmallDisk::mount("full");
    // A budget larger than the disk: the write itself meets the full disk.
    let mut master = serve(&disk.0, &["--max-disk", "1GiB"]);
    let addr = master.listening_addr();
    let out = put_items(&addr, 200_000, "60s");
    assert!(
        !out.status.success(),
        "puts past a full disk cannot all succeed"
    );
    let status = master.wait(LIMIT);
    assert!(!status.success(), "the master exits with an error");
    let log = master.stderr();
    assert!(
        log.contains("No space left on device") && log.contains("nothing more is acknowledged"),
        "{log}"
    );
}

#[test]
fn a_failed_fsync_stops_the_master_and_what_it_covered_is_not_acknowledged() {
    let dir = std::env::temp_dir().join(format!("taskmill-fsync-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // The 40th fdatasync fails with EIO: past start-up, in the middle of the puts.
    let mut cmd = Command::new("strace");
    cmd.args([
        "-f",
        "-qq",
        "-o",
        "/dev/null",
        "-e",
        "inject=fdatasync:error=EIO:when=40",
    ])
    .arg(binary("taskmill-master"))
    .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
    .arg(&dir);
    let mut master = Proc::spawn(&mut cmd);
    let addr = master.listening_addr();
    let out = put_items(&addr, 5_000, "10s");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let status = master.wait(LIMIT);
    assert!(!status.success(), "the master exits with an error");
    let log = master.stderr();
    assert!(
        log.contains("syncing the log") && log.contains("failed"),
        "{log}"
    );
    // What was acknowledged before the failure is on disk: a master on the same directory
    // holds at least that many.
    let acknowledged = report["items"].as_u64().unwrap_or(0);
    let mut again = Proc::spawn(
        Command::new(binary("taskmill-master"))
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&dir),
    );
    let addr = again.listening_addr();
    let stats = Command::new(binary("taskmill-master"))
        .args(["stats", "--json", "--master", &addr])
        .env("TASKMILL_AUTHKEY", KEY)
        .output()
        .unwrap();
    let stats: serde_json::Value = serde_json::from_slice(&stats.stdout).unwrap();
    let kept = stats["queues"][0]["size"].as_u64().unwrap_or(0);
    assert!(
        kept >= acknowledged,
        "kept {kept}, acknowledged {acknowledged}"
    );
    assert!(acknowledged < 5_000, "the failure came before the last put");
    again.signal(libc::SIGTERM);
    assert!(again.wait(LIMIT).success());
    let _ = std::fs::remove_dir_all(&dir);
}
