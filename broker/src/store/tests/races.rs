//! Snapshots taken while other threads change the queues: each queue's image is taken at a
//! different moment, so a change that spans two queues must never be seen half done.

use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(20);

use super::*;

/// Threads bury tasks (each delivered twice, then given back by a closing connection or a
/// nack) and complete tasks into another queue while snapshots are taken as often as the
/// log allows; a master restarted on the directory must hold exactly what the live one does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_that_span_two_queues_survive_snapshots_taken_in_the_middle_of_them() {
    let fs = SimFs::new();
    let options = WalOptions {
        compact_bytes: 4096,
        segment_bytes: 2048,
        ..WalOptions::default()
    };
    let (br, wal) = open_with(&fs, options).unwrap();
    let threads: Vec<_> = (0..3)
        .map(|kind| {
            let br = br.clone();
            std::thread::spawn(move || {
                for round in 0..600 {
                    let queue = format!("q{kind}");
                    let s = br.open_session();
                    put(&br, s, &queue, &[&format!("{round}")]);
                    let leased = get(&br, s, &queue, 4, LEASE);
                    match kind {
                        0 => {
                            br.close_session(s);
                        }
                        1 => {
                            br.nack(s, &queue, &ids(&leased), Duration::ZERO, "no", false)
                                .unwrap();
                        }
                        _ => {
                            let outcomes = leased
                                .iter()
                                .map(|t| taskmill_protocol::Outcome {
                                    task: t.id,
                                    result: t.payload.clone(),
                                })
                                .collect();
                            ready(
                                br.complete(s, &queue, "results", outcomes, false, false)
                                    .unwrap(),
                            );
                        }
                    }
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    assert!(snapshot_taken(&wal).await, "{:?}", wal.stats());
    br.release_leases();
    assert!(durable(&wal).await);
    let want = br.dump().0;
    for q in ["q0", "q1"] {
        // Each round's task is buried at its second delivery, in the next round.
        let dead = queue(&want, &format!("{q}.dead")).unwrap().items.len();
        assert_eq!(dead + queue(&want, q).unwrap().items.len(), 600, "{q}");
    }
    assert_eq!(queue(&want, "results").unwrap().items.len(), 600);
    wal.close();
    let (again, wal) = open(&fs);
    assert_eq!(again.dump().0, want);
    wal.close();
}

/// A log that fails while a snapshot waits for it to begin a new segment: closing it must
/// still return, not wait on a compaction that waits for a rotation that will never come.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_that_fails_while_a_snapshot_waits_for_it_still_closes() {
    let fs = SimFs::new();
    let (br, wal) = open(&fs);
    let s = br.open_session();
    put(&br, s, "q", &["1"]);
    assert!(durable(&wal).await);
    // The next batch's sync (its write is one call, the sync the next) hangs, then fails.
    let (reached, stalled) = std::sync::mpsc::channel();
    let (release, released) = std::sync::mpsc::channel();
    fs.fail_call(fs.calls() + 2, std::io::ErrorKind::Other);
    fs.stall_failing_call(reached, released);
    put(&br, s, "q", &["2"]);
    stalled.recv_timeout(LIMIT).expect("the sync is reached");
    wal.compact_soon();
    let deadline = std::time::Instant::now() + LIMIT;
    while !wal.rotation_asked() {
        assert!(std::time::Instant::now() < deadline, "no compaction began");
        std::thread::sleep(Duration::from_millis(1));
    }
    release.send(()).unwrap();
    assert!(!durable(&wal).await);
    let (done, closed) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        wal.close();
        let _ = done.send(());
    });
    closed.recv_timeout(LIMIT).expect("the log closes");
}

/// Snapshots taken under traffic with `--fsync` on an interval (so nothing but a rotation
/// syncs), and power cuts at many moments: every image in the newest snapshot must be backed
/// by log the cut kept, so the directory opens, and no task is both done and still to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_never_gets_ahead_of_the_synced_log() {
    let fs = SimFs::new();
    let options = WalOptions {
        fsync: crate::store::Fsync::Every(Duration::from_secs(3600)),
        compact_bytes: 2048,
        ..WalOptions::default()
    };
    let (br, wal) = open_with(&fs, options).unwrap();
    let producer = {
        let br = br.clone();
        std::thread::spawn(move || {
            let s = br.open_session();
            for round in 0..10_000 {
                put(&br, s, "tasks", &[&format!("{round}")]);
            }
        })
    };
    let worker = br.clone();
    let s = worker.open_session();
    let (mut done, mut cuts) = (0, Vec::new());
    while done < 10_000 {
        if cuts.len() < done / 100 {
            cuts.push(fs.after_crash(done as u64));
        }
        let leased = get(&worker, s, "tasks", 16, LEASE);
        done += leased.len();
        let outcomes = leased
            .iter()
            .map(|t| taskmill_protocol::Outcome {
                task: t.id,
                result: t.payload.clone(),
            })
            .collect();
        ready(
            worker
                .complete(s, "tasks", "results", outcomes, false, false)
                .unwrap(),
        );
    }
    producer.join().unwrap();
    assert!(snapshot_taken(&wal).await, "{:?}", wal.stats());
    for (cut, fs) in cuts.iter().enumerate() {
        let (again, wal) = open(fs);
        let dump = again.dump().0;
        let mut all = payloads(queue(&dump, "tasks"));
        all.extend(payloads(queue(&dump, "results")));
        let n = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), n, "a task both done and to do (cut {cut})");
        wal.close();
    }
    wal.close();
}

/// A log that fails while the master stops (its last sync, under `--fsync DURATION`): the
/// master still reports the failure, not a clean stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_while_the_master_stops_is_reported() {
    use crate::{Master, ServerConfig};

    let fs = SimFs::new();
    let options = WalOptions {
        fsync: crate::store::Fsync::Every(Duration::from_secs(3600)),
        ..WalOptions::default()
    };
    let wal = Wal::open(Arc::new(fs.clone()), DIR, options).unwrap();
    let key = taskmill_protocol::AuthKey::new("0123456789abcdef0123").unwrap();
    let master = Master::open(ServerConfig::new(key), wal.clone()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let served = tokio::spawn(master.clone().serve(listener, stop.clone()));
    let s = master.broker().open_session();
    put(master.broker(), s, "q", &["written, not synced"]);
    assert!(durable(&wal).await);
    // The next call is the sync the close makes.
    fs.fail_call(fs.calls() + 1, std::io::ErrorKind::Other);
    stop.cancel();
    let served = tokio::time::timeout(LIMIT, served).await.unwrap().unwrap();
    let err = served.expect_err("the failed sync is reported");
    assert!(err.to_string().contains("syncing"), "{err}");
}
