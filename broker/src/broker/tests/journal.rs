//! The journal is complete: replaying what a broker recorded into a fresh broker rebuilds the
//! same queues, whatever the operations were and whoever's behalf they ran on.

use std::sync::{Arc, Mutex};

use super::*;
use crate::store::{Change, LeaseTerms, Store};

/// A store that keeps every change in memory. Each payload is leaked into a `'static` slice:
/// a test's few kilobytes, and it keeps the records exactly as the broker made them.
#[derive(Debug, Default)]
pub(super) struct Recorder(Mutex<Vec<Change<'static>>>);

fn leak<T: Clone>(slice: &[T]) -> &'static [T] {
    Box::leak(slice.to_vec().into_boxed_slice())
}

impl Store for Recorder {
    fn record(&self, change: &Change<'_>) {
        let owned = match *change {
            Change::Created {
                queue,
                name,
                capacity,
            } => Change::Created {
                queue,
                name: Box::leak(name.to_owned().into_boxed_str()),
                capacity,
            },
            Change::Put {
                queue,
                id,
                payload,
                origin,
            } => Change::Put {
                queue,
                id,
                payload: leak(payload),
                origin,
            },
            Change::Completed {
                queue,
                task,
                target,
                id,
                payload,
            } => Change::Completed {
                queue,
                task,
                target,
                id,
                payload: leak(payload),
            },
            Change::Taken {
                queue,
                tasks,
                lease,
            } => Change::Taken {
                queue,
                tasks: leak(tasks),
                lease,
            },
            Change::Untaken {
                queue,
                task,
                leased,
            } => Change::Untaken {
                queue,
                task: Box::leak(Box::new(task.clone())),
                leased,
            },
            Change::Buried {
                queue,
                task,
                why,
                dead,
                id,
                letter,
            } => Change::Buried {
                queue,
                task,
                why,
                dead,
                id,
                letter: leak(letter),
            },
            Change::Declared { queue, capacity } => Change::Declared { queue, capacity },
            Change::Acked { queue, task } => Change::Acked { queue, task },
            Change::Touched {
                queue,
                task,
                deadline,
                length_ms,
            } => Change::Touched {
                queue,
                task,
                deadline,
                length_ms,
            },
            Change::Requeued { queue, task, why } => Change::Requeued { queue, task, why },
            Change::Delayed { queue, task, until } => Change::Delayed { queue, task, until },
            Change::Undelayed { queue, task } => Change::Undelayed { queue, task },
            Change::Routed {
                queue,
                first,
                count,
                reply,
            } => Change::Routed {
                queue,
                first,
                count,
                reply: leak(reply),
            },
            Change::Purged { queue } => Change::Purged { queue },
            Change::Deleted { queue } => Change::Deleted { queue },
        };
        self.0.lock().unwrap().push(owned);
    }
}

pub(super) fn recorded() -> (Broker, Arc<Recorder>) {
    let recorder = Arc::new(Recorder::default());
    let limits = QueueLimits {
        max_attempts: 2,
        max_memory: u64::MAX,
        ..limits()
    };
    let br = Broker::open(limits, recorder.clone()).unwrap();
    (br, recorder)
}

/// Replays everything `recorder` holds into a fresh broker and checks it holds what `live`
/// does; returns how many changes were replayed.
pub(super) fn replays_to_the_same_queues(live: &Broker, recorder: &Recorder) -> usize {
    let fresh = Broker::new(live.shared.limits);
    let changes = recorder.0.lock().unwrap();
    for (n, change) in changes.iter().enumerate() {
        if let Err(err) = fresh.apply(change) {
            panic!("change {n} ({change:?}) does not replay: {err}");
        }
    }
    let (want, got) = (live.dump(), fresh.dump());
    for (w, g) in want.0.iter().zip(&got.0) {
        assert_eq!(w, g, "a queue replays differently");
    }
    assert_eq!(want, got);
    changes.len()
}

fn kind(change: &Change<'_>) -> &'static str {
    match change {
        Change::Created { .. } => "created",
        Change::Declared { .. } => "declared",
        Change::Put { .. } => "put",
        Change::Completed { .. } => "completed",
        Change::Taken { .. } => "taken",
        Change::Untaken { .. } => "untaken",
        Change::Acked { .. } => "acked",
        Change::Touched { .. } => "touched",
        Change::Requeued { .. } => "requeued",
        Change::Delayed { .. } => "delayed",
        Change::Undelayed { .. } => "undelayed",
        Change::Buried { .. } => "buried",
        Change::Routed { .. } => "routed",
        Change::Purged { .. } => "purged",
        Change::Deleted { .. } => "deleted",
    }
}

fn ids(tasks: &[Task]) -> Vec<TaskId> {
    tasks.iter().map(|t| t.id).collect()
}

#[tokio::test(start_paused = true)]
async fn replaying_the_journal_of_a_mixed_scenario_rebuilds_the_same_queues() {
    let (br, recorder) = recorded();
    let never = CancellationToken::new();
    let (producer, worker, other) = (br.open_session(), br.open_session(), br.open_session());

    // Puts, a declared capacity, small and large payloads, a lease and a removal.
    br.declare("tasks", Some(10)).unwrap();
    let big = Bytes::from(vec![7u8; INLINE + 10]);
    let items = vec![b("1"), b("2"), big, b("4"), b("5"), b("6")];
    ready(br.put(producer, "tasks", items, false).unwrap());
    let leased = ready(br.get(worker, "tasks", 3, MB, LEASE, false).unwrap());
    ready(
        br.get(other, "tasks", 1, MB, Delivery::Remove, false)
            .unwrap(),
    );

    // A completion across queues, an ack, a touch, a nack with a delay and one without.
    let outcome = |task: &Task, r: &str| Outcome {
        task: task.id,
        result: b(r),
    };
    let done = ready(
        br.complete(
            worker,
            "tasks",
            "results",
            vec![outcome(&leased[0], "one")],
            false,
            false,
        )
        .unwrap(),
    );
    assert_eq!(done.done(), 1);
    br.touch(worker, "tasks", &ids(&leased[1..2]), Some(60_000))
        .unwrap();
    br.nack(
        worker,
        "tasks",
        &ids(&leased[1..2]),
        Duration::from_secs(5),
        "later",
        false,
    )
    .unwrap();
    br.nack(
        worker,
        "tasks",
        &ids(&leased[2..3]),
        Duration::ZERO,
        "again",
        false,
    )
    .unwrap();

    // A getter served by another session's put; a put waiting for room that another
    // session's get makes, and a completion waiting for room in another queue.
    let getter = waiting(br.get(other, "wanted", 1, MB, LEASE, true).unwrap());
    let getter = tokio::spawn(getter.wait(None, never.clone()));
    ready(br.put(producer, "wanted", vec![b("w")], false).unwrap());
    let served = getter.await.unwrap();
    assert_eq!(br.ack(other, "wanted", &ids(&served)).unwrap().done(), 1);
    let result = answer_for_a_full_results_queue(&br, worker, other, false);
    let completion = waiting(
        br.complete(worker, "tasks", "results", result, true, false)
            .unwrap(),
    );
    let completion = tokio::spawn(completion.wait(None, never.clone()));
    tokio::task::yield_now().await;
    let taken = ready(
        br.get(other, "results", 10, MB, Delivery::Remove, false)
            .unwrap(),
    );
    assert_eq!(taken.len(), 1, "the room the completion waits for");
    assert_eq!(completion.await.unwrap().done(), 1);

    // Items handed to a waiter that is gone go back as if never taken.
    let gone = waiting(br.get(other, "handed", 2, MB, LEASE, true).unwrap());
    ready(
        br.put(producer, "handed", vec![b("h1"), b("h2")], false)
            .unwrap(),
    );
    drop(gone);

    // Expiry, a delayed task coming back, and a task that uses up its two deliveries: first
    // its holder's connection closes, then its lease runs out, and it is dead-lettered.
    ready(br.put(producer, "doomed", vec![b("d")], false).unwrap());
    ready(br.get(other, "doomed", 1, MB, LEASE, false).unwrap());
    br.close_session(other);
    ready(br.get(worker, "doomed", 1, MB, LEASE, false).unwrap());
    ready(br.get(worker, "tasks", 1, MB, LEASE, false).unwrap());
    tokio::time::advance(Duration::from_secs(31)).await;
    br.tick(Deadline::now());
    assert_eq!(br.inspect("doomed.dead").unwrap().len, 1, "a dead letter");
    assert!(br.inspect("tasks").unwrap().expired_total > 0, "an expiry");

    // Puts that name a reply queue: one task buried at once by a fatal nack (its reply queue
    // is told), kicked back, then a purge and a delete.
    let routed = vec![b("r1"), b("r2"), b("r3")];
    let reply = Some("replies");
    br.declare("replies", None).unwrap();
    ready(
        br.put_once(producer, "routed", routed, false, None, reply)
            .unwrap(),
    );
    let first = ready(br.get(worker, "routed", 1, MB, LEASE, false).unwrap());
    assert_eq!(first[0].reply_queue(), Some("replies"));
    br.nack(worker, "routed", &ids(&first), Duration::ZERO, "bad", true)
        .unwrap();
    assert_eq!(
        br.inspect("replies").unwrap().len,
        1,
        "the reply queue was told"
    );
    assert_eq!(br.kick("routed", 10).unwrap(), 1);
    assert_eq!(br.purge("routed").unwrap(), 3);
    // The burial's notice, and the two routed tasks the purge removed.
    assert_eq!(br.delete("replies", false).unwrap(), 3);

    // What the worker still holds stays leased in the replay too.
    let held = ready(br.get(worker, "tasks", 2, MB, LEASE, false).unwrap());
    assert!(!held.is_empty());
    let changes = replays_to_the_same_queues(&br, &recorder);
    assert!(changes > 30, "{changes} changes");
    let kinds: std::collections::BTreeSet<_> =
        recorder.0.lock().unwrap().iter().map(kind).collect();
    assert_eq!(
        kinds.len(),
        15,
        "the scenario makes every kind of change: {kinds:?}"
    );

    // And what a closed connection held goes back to the front, in the journal too.
    br.close_session(worker);
    replays_to_the_same_queues(&br, &recorder);
}

#[test]
fn a_broker_whose_store_keeps_no_records_builds_none() {
    #[derive(Debug)]
    struct Refuses;
    impl Store for Refuses {
        fn records(&self) -> bool {
            false
        }
        fn record(&self, change: &Change<'_>) {
            panic!("asked to record {change:?}");
        }
    }
    let br = Broker::open(limits(), Arc::new(Refuses)).unwrap();
    let s = br.open_session();
    ready(br.put(s, "q", vec![b("1")], false).unwrap());
    ready(br.get(s, "q", 1, MB, LEASE, false).unwrap());
    br.close_session(s);
}

#[test]
fn a_change_that_does_not_fit_the_queues_is_refused() {
    let br = broker();
    let put = Change::Put {
        queue: 0,
        id: 1,
        payload: b"x",
        origin: None,
    };
    assert_eq!(br.apply(&put), Err(ReplayError::NoSuchQueue(0)));
    let create = |queue| Change::Created {
        queue,
        name: "q",
        capacity: None,
    };
    assert!(matches!(
        br.apply(&create(1)),
        Err(ReplayError::CreatedOutOfOrder { .. })
    ));
    br.apply(&create(0)).unwrap();
    let ack = Change::Acked { queue: 0, task: 9 };
    assert!(matches!(br.apply(&ack), Err(ReplayError::Misplaced { .. })));
    let taken = Change::Taken {
        queue: 0,
        tasks: &[],
        lease: Some(LeaseTerms {
            session: 1,
            deadline: Deadline::now(),
            length_ms: 1,
        }),
    };
    br.apply(&taken).unwrap();
}
