//! Leases: completion, ack, touch, nack, expiry, and what a closed session gives back.

use super::*;

#[test]
fn closing_a_session_requeues_its_leases_at_the_front_in_order() {
    let br = broker();
    let (worker, other) = (br.open_session(), br.open_session());
    ready(
        br.put(other, "q", vec![b("1"), b("2"), b("3"), b("4")], false)
            .unwrap(),
    );
    let got = ready(br.get(worker, "q", 2, MB, LEASE, false).unwrap());
    assert_eq!(got[0].attempt, 1);
    assert_eq!(br.close_session(worker), 2);
    let again = ready(br.get(other, "q", 10, MB, LEASE, false).unwrap());
    assert_eq!(payloads(&again), [b"1", b"2", b"3", b"4"]);
    assert_eq!((again[0].attempt, again[2].attempt), (2, 1));
}

#[test]
fn complete_settles_and_queues_the_result_atomically_and_rejects_stale_leases() {
    let br = broker();
    let (worker, other) = (br.open_session(), br.open_session());
    ready(br.put(other, "tasks", vec![b("7"), b("8")], false).unwrap());
    let got = ready(br.get(worker, "tasks", 2, MB, LEASE, false).unwrap());
    let outcomes = vec![
        Outcome {
            task: got[0].id,
            result: b("49"),
        },
        Outcome {
            task: 999,
            result: b("bogus"),
        },
    ];
    let p = ready(
        br.complete(worker, "tasks", "results", outcomes, false, false)
            .unwrap(),
    );
    assert_eq!((p.done(), p.stale.clone(), p.pending()), (1, vec![999], 0));
    // Another session cannot settle a lease it does not hold.
    let stolen = vec![Outcome {
        task: got[1].id,
        result: b("64"),
    }];
    let p = ready(
        br.complete(other, "tasks", "results", stolen, false, false)
            .unwrap(),
    );
    assert_eq!(p.stale, vec![got[1].id]);
    let results = ready(
        br.get(other, "results", 10, MB, Delivery::Remove, false)
            .unwrap(),
    );
    assert_eq!(payloads(&results), [b"49"]);
    let tasks = br.inspect("tasks").unwrap();
    assert_eq!((tasks.leased, tasks.settled_total), (1, 1));
    assert_eq!(br.snapshot().1, 1, "one session has completed work");
}

#[tokio::test(start_paused = true)]
async fn complete_into_a_full_queue_waits_and_keeps_the_lease_until_then() {
    let br = broker();
    let (worker, other) = (br.open_session(), br.open_session());
    let outcome = answer_for_a_full_results_queue(&br, worker, other, false);
    let w = waiting(
        br.complete(worker, "tasks", "results", outcome, true, false)
            .unwrap(),
    );
    assert_eq!(
        br.inspect("tasks").unwrap().leased,
        1,
        "not settled without its result"
    );
    let waiter = tokio::spawn(w.wait(None, CancellationToken::new()));
    tokio::task::yield_now().await;
    ready(
        br.get(other, "results", 1, MB, Delivery::Remove, false)
            .unwrap(),
    );
    assert_eq!(waiter.await.unwrap().done(), 1);
    assert_eq!(br.inspect("tasks").unwrap().leased, 0);
}

#[test]
fn ack_settles_only_what_the_session_holds() {
    let br = broker();
    let (worker, other) = (br.open_session(), br.open_session());
    ready(br.put(other, "q", vec![b("a"), b("b")], false).unwrap());
    let got = ready(br.get(worker, "q", 2, MB, LEASE, false).unwrap());
    let p = br.ack(worker, "q", &[got[0].id, got[0].id, 12345]).unwrap();
    assert_eq!((p.done(), p.stale), (1, vec![got[0].id, 12345]));
    assert_eq!(
        br.close_session(worker),
        1,
        "only the unacked task is requeued"
    );
}

#[tokio::test(start_paused = true)]
async fn an_expired_lease_goes_back_to_the_front_and_a_late_completion_is_stale() {
    let br = broker();
    let (slow, fast) = (br.open_session(), br.open_session());
    ready(br.put(fast, "tasks", vec![b("1"), b("2")], false).unwrap());
    let short = Delivery::Lease { millis: Some(1000) };
    let got = ready(br.get(slow, "tasks", 1, MB, short, false).unwrap());
    assert!(br.tick(later(0)).is_some(), "the lease is scheduled");
    assert_eq!(br.inspect("tasks").unwrap().leased, 1);
    tokio::time::advance(Duration::from_millis(1001)).await;
    br.tick(Deadline::now());
    let stats = br.inspect("tasks").unwrap();
    assert_eq!((stats.len, stats.leased, stats.expired_total), (2, 0, 1));
    let again = ready(br.get(fast, "tasks", 1, MB, LEASE, false).unwrap());
    assert_eq!(
        (again[0].id, again[0].attempt),
        (got[0].id, 2),
        "redelivered first"
    );
    let late = vec![Outcome {
        task: got[0].id,
        result: b("late"),
    }];
    let p = ready(
        br.complete(slow, "tasks", "results", late, false, false)
            .unwrap(),
    );
    assert_eq!(
        p.stale,
        vec![got[0].id],
        "the old holder's result is not recorded"
    );
    assert_eq!(br.inspect("results").unwrap().len, 0);
}

#[tokio::test(start_paused = true)]
async fn touch_extends_a_lease_and_only_for_its_holder() {
    let br = broker();
    let (holder, other) = (br.open_session(), br.open_session());
    ready(br.put(holder, "tasks", vec![b("x")], false).unwrap());
    let short = Delivery::Lease { millis: Some(1000) };
    let task = ready(br.get(holder, "tasks", 1, MB, short, false).unwrap()).remove(0);
    tokio::time::advance(Duration::from_millis(800)).await;
    let p = br.touch(holder, "tasks", &[task.id], None).unwrap();
    assert_eq!((p.done(), p.stale.len()), (1, 0));
    assert_eq!(
        br.touch(other, "tasks", &[task.id], Some(5)).unwrap().stale,
        vec![task.id]
    );
    tokio::time::advance(Duration::from_millis(800)).await;
    br.tick(Deadline::now());
    assert_eq!(
        br.inspect("tasks").unwrap().leased,
        1,
        "still held: touched at 800ms"
    );
    tokio::time::advance(Duration::from_millis(300)).await;
    br.tick(Deadline::now());
    assert_eq!(
        br.inspect("tasks").unwrap().leased,
        0,
        "expired 1s after the touch"
    );
}

#[tokio::test(start_paused = true)]
async fn nack_returns_a_task_after_its_delay() {
    let br = broker();
    let s = br.open_session();
    ready(br.put(s, "tasks", vec![b("a"), b("b")], false).unwrap());
    let a = ready(br.get(s, "tasks", 1, MB, LEASE, false).unwrap()).remove(0);
    let p = br
        .nack(
            s,
            "tasks",
            &[a.id, 999],
            Duration::from_secs(2),
            "busy",
            false,
        )
        .unwrap();
    assert_eq!((p.done(), p.stale.clone()), (1, vec![999]));
    let stats = br.inspect("tasks").unwrap();
    assert_eq!((stats.len, stats.leased, stats.delayed), (1, 0, 1));
    tokio::time::advance(Duration::from_secs(2)).await;
    br.tick(Deadline::now());
    let next = ready(br.get(s, "tasks", 5, MB, LEASE, false).unwrap());
    assert_eq!(payloads(&next), [b"a", b"b"], "back at the front");
    assert_eq!(next[0].attempt, 2);
}

#[test]
fn holds_leases_and_leased_total_track_what_a_session_has() {
    let br = broker();
    let s = br.open_session();
    assert!(!br.holds_leases(s));
    ready(br.put(s, "q", vec![b("x"), b("y")], false).unwrap());
    let got = ready(br.get(s, "q", 2, MB, LEASE, false).unwrap());
    assert!(br.holds_leases(s));
    assert_eq!(br.leased_total(), 2);
    br.ack(s, "q", &[got[0].id, got[1].id]).unwrap();
    assert!(!br.holds_leases(s));
    assert_eq!(br.leased_total(), 0);
}

#[tokio::test(start_paused = true)]
async fn batches_given_back_keep_their_put_order() {
    let br = broker();
    let s = br.open_session();
    ready(
        br.put(s, "q", vec![b("1"), b("2"), b("3"), b("4")], false)
            .unwrap(),
    );
    let short = Delivery::Lease { millis: Some(100) };
    ready(br.get(s, "q", 3, MB, short, false).unwrap());
    tokio::time::advance(Duration::from_millis(150)).await;
    br.tick(Deadline::now());
    let after_expiry = ready(br.get(s, "q", 4, MB, LEASE, false).unwrap());
    assert_eq!(payloads(&after_expiry), [b"1", b"2", b"3", b"4"]);

    let ids: Vec<_> = after_expiry.iter().map(|t| t.id).collect();
    br.nack(s, "q", &ids[..2], Duration::ZERO, "now", false)
        .unwrap();
    br.nack(s, "q", &ids[2..], Duration::from_secs(1), "later", false)
        .unwrap();
    let at_once = ready(br.get(s, "q", 4, MB, LEASE, false).unwrap());
    assert_eq!(payloads(&at_once), [b"1", b"2"]);
    tokio::time::advance(Duration::from_secs(1)).await;
    br.tick(Deadline::now());
    let delayed = ready(br.get(s, "q", 4, MB, Delivery::Remove, false).unwrap());
    assert_eq!(payloads(&delayed), [b"3", b"4"]);
}

#[test]
fn a_session_counts_as_completing_once_and_only_for_completions_that_settle() {
    let br = broker();
    let acker = br.open_session();
    let worker = br.open_session();
    ready(
        br.put(acker, "q", vec![b("1"), b("2"), b("3")], false)
            .unwrap(),
    );
    let acked = ready(br.get(acker, "q", 1, MB, LEASE, false).unwrap());
    br.ack(acker, "q", &[acked[0].id]).unwrap();
    let stale = Outcome {
        task: acked[0].id,
        result: b("x"),
    };
    ready(
        br.complete(worker, "q", "r", vec![stale], false, false)
            .unwrap(),
    );
    assert_eq!(
        br.snapshot().1,
        0,
        "an ack and a stale completion count no one"
    );
    let got = ready(br.get(worker, "q", 2, MB, LEASE, false).unwrap());
    for task in got {
        let done = Outcome {
            task: task.id,
            result: b("y"),
        };
        ready(
            br.complete(worker, "q", "r", vec![done], false, false)
                .unwrap(),
        );
    }
    assert_eq!(br.snapshot().1, 1, "one completing session, counted once");
}
