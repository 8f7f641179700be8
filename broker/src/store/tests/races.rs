//! Snapshots taken while other threads change the queues: each queue's image is taken at a
//! different moment, so a change that spans two queues must never be seen half done.

use std::time::Duration;

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
                            br.nack(s, &queue, &ids(&leased), Duration::ZERO, "no")
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
                            ready(br.complete(s, &queue, "results", outcomes, false).unwrap());
                        }
                    }
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let stats = wal.stats().unwrap();
    assert!(stats.snapshot_age_ms.is_some(), "{stats:?}");
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
