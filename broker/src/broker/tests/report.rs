//! What observers read: settlements and returns split by kind, per-session counts, sampled
//! latency, and the newest items.

use super::*;

#[tokio::test(start_paused = true)]
async fn the_report_splits_completions_acks_and_returns_and_counts_per_session() {
    let br = broker();
    let (worker, producer) = (br.open_session(), br.open_session());
    // 130 tasks hold the sampled ids 0, 64 and 128.
    let items = (0..130).map(|i| b(&i.to_string())).collect();
    ready(br.put(producer, "tasks", items, false).unwrap());
    tokio::time::advance(Duration::from_millis(40)).await;
    let got = ready(br.get(worker, "tasks", 130, MB, LEASE, false).unwrap());
    let outcomes = got[..120]
        .iter()
        .map(|t| Outcome {
            task: t.id,
            result: t.payload.clone(),
        })
        .collect();
    ready(
        br.complete(worker, "tasks", "results", outcomes, false, false)
            .unwrap(),
    );
    let ids: Vec<_> = got[120..].iter().map(|t| t.id).collect();
    br.ack(worker, "tasks", &ids[..5]).unwrap();
    br.nack(
        worker,
        "tasks",
        &ids[5..8],
        Duration::ZERO,
        "try again",
        false,
    )
    .unwrap();

    let (queues, sessions) = br.report();
    let tasks = queues.iter().find(|q| q.stats.name == "tasks").unwrap();
    assert_eq!((tasks.tally.completed, tasks.tally.acked), (120, 5));
    assert_eq!(tasks.tally.requeued, [0, 0, 3]);
    assert_eq!(tasks.stats.settled_total, 125);
    // Ids 0 and 64 were settled 40 ms after their put; 128 was nacked.
    assert_eq!(tasks.latency.count, 2);
    let p50 = tasks.latency.quantile(0.5).unwrap();
    assert!((0.02..=0.05).contains(&p50), "{p50}");
    let s = &sessions[&worker];
    assert_eq!((s.leased, s.settled), (2, 125));
    assert_eq!(s.queues, ["tasks"]);
    assert!(!sessions.contains_key(&producer), "it never leased");

    let newest = br.newest("results", 2).unwrap();
    assert_eq!(newest.len(), 2);
    assert_eq!(&newest[0].1[..], b"119", "newest first");
    assert!(br.newest("nowhere", 1).is_none());
}
