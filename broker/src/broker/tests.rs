//! Socket-free tests of queue semantics; paused time makes every wait deterministic.

use std::time::Duration;

use super::*;
use taskmill_protocol::DeadLetter;

const MB: usize = 1 << 20;

const LEASE: Delivery = Delivery::Lease { millis: None };

fn limits() -> QueueLimits {
    QueueLimits {
        default_capacity: None,
        max_queues: 8,
        lease_timeout: Duration::from_secs(30),
        max_attempts: 3,
    }
}

fn broker() -> Broker {
    Broker::new(limits())
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn payloads(tasks: &[Task]) -> Vec<&[u8]> {
    tasks.iter().map(|t| t.payload.as_ref()).collect()
}

fn ready<T: std::fmt::Debug, W: std::fmt::Debug>(step: Step<T, W>) -> T {
    match step {
        Step::Ready(t) => t,
        Step::Wait(w) => panic!("expected an answer now, got a waiter {w:?}"),
    }
}

fn waiting<T: std::fmt::Debug, W: std::fmt::Debug>(step: Step<T, W>) -> W {
    match step {
        Step::Wait(w) => w,
        Step::Ready(t) => panic!("expected a waiter, got {t:?}"),
    }
}

impl Broker {
    fn with_queue<R>(&self, name: &str, f: impl FnOnce(&Queue) -> R) -> R {
        let cell = self.existing(name).expect("the queue exists");
        let queue = self.lock(&cell);
        f(&queue)
    }
}

fn in_ms(ms: u64) -> Option<Deadline> {
    Some(Deadline::now() + Duration::from_millis(ms))
}

#[test]
fn items_come_out_in_put_order_with_consecutive_ids() {
    let br = broker();
    let s = br.open_session();
    let p = ready(br.put(s, "q", vec![b("a"), b("b"), b("c")], false).unwrap());
    assert_eq!((p.done(), p.pending()), (3, 0));
    let got = ready(br.get(s, "q", 2, MB, Delivery::Remove, false).unwrap());
    assert_eq!(payloads(&got), [b"a", b"b"]);
    assert_eq!(got[0].id, p.first_id);
    assert_eq!(got[1].id, p.first_id + 1);
    let got = ready(br.get(s, "q", 10, MB, Delivery::Remove, false).unwrap());
    assert_eq!(payloads(&got), [b"c"]);
}

#[test]
fn nowait_reports_empty_and_full_at_once() {
    let br = broker();
    let s = br.open_session();
    assert!(ready(br.get(s, "q", 1, MB, Delivery::Remove, false).unwrap()).is_empty());
    br.declare("q", Some(2)).unwrap();
    let p = ready(br.put(s, "q", vec![b("1"), b("2"), b("3")], false).unwrap());
    assert_eq!((p.done(), p.pending()), (2, 1), "a prefix is accepted");
    let stats = br.inspect("q").unwrap();
    assert!(stats.is_full() && stats.len == 2);
}

#[test]
fn capacity_zero_or_none_is_unbounded_and_names_are_checked() {
    let br = broker();
    let s = br.open_session();
    assert_eq!(br.declare("q", Some(0)).unwrap().capacity, None);
    let p = ready(br.put(s, "q", vec![Bytes::new(); 1000], false).unwrap());
    assert_eq!(p.done(), 1000);
    for bad in ["", "has space", "slash/", &"x".repeat(MAX_QUEUE_NAME + 1)] {
        assert!(matches!(
            br.put(s, bad, vec![], false),
            Err(QueueError::BadName(_))
        ));
    }
    assert!(matches!(
        br.inspect("nope"),
        Err(QueueError::NoSuchQueue(_))
    ));
}

#[test]
fn queue_count_is_limited() {
    let br = broker();
    for i in 0..8 {
        br.declare(&format!("q{i}"), None).unwrap();
    }
    assert!(matches!(
        br.declare("one-too-many", None),
        Err(QueueError::TooManyQueues { max: 8, .. })
    ));
    assert!(
        br.declare("q3", Some(4)).is_ok(),
        "existing queues still work"
    );
}

#[tokio::test(start_paused = true)]
async fn blocked_get_times_out_empty_and_leaves_no_waiter() {
    let br = broker();
    let s = br.open_session();
    let w = waiting(br.get(s, "q", 1, MB, LEASE, true).unwrap());
    assert_eq!(br.inspect("q").unwrap().waiting_getters, 1);
    assert!(w
        .wait(in_ms(100), CancellationToken::new())
        .await
        .is_empty());
    assert_eq!(br.inspect("q").unwrap().waiting_getters, 0);
}

#[tokio::test(start_paused = true)]
async fn blocked_get_is_woken_by_a_put() {
    let br = broker();
    let (s1, s2) = (br.open_session(), br.open_session());
    let w = waiting(br.get(s1, "q", 5, MB, LEASE, true).unwrap());
    let waiter = tokio::spawn(w.wait(None, CancellationToken::new()));
    tokio::task::yield_now().await;
    ready(br.put(s2, "q", vec![b("x"), b("y")], false).unwrap());
    let got = waiter.await.unwrap();
    assert_eq!(payloads(&got), [b"x", b"y"]);
    let stats = br.inspect("q").unwrap();
    assert_eq!((stats.len, stats.leased), (0, 2));
}

#[tokio::test(start_paused = true)]
async fn waiting_getters_are_served_in_arrival_order() {
    let br = broker();
    let s = br.open_session();
    let mut handles = Vec::new();
    for _ in 0..3 {
        let w = waiting(br.get(s, "q", 1, MB, Delivery::Remove, true).unwrap());
        handles.push(tokio::spawn(w.wait(None, CancellationToken::new())));
    }
    ready(br.put(s, "q", vec![b("1"), b("2"), b("3")], false).unwrap());
    let mut order = Vec::new();
    for h in handles {
        order.push(h.await.unwrap()[0].payload.clone());
    }
    assert_eq!(order, [b("1"), b("2"), b("3")]);
}

#[tokio::test(start_paused = true)]
async fn blocked_put_waits_for_room_and_times_out_with_a_prefix() {
    let br = broker();
    let s = br.open_session();
    br.declare("q", Some(1)).unwrap();
    ready(br.put(s, "q", vec![b("a")], false).unwrap());
    let w = waiting(br.put(s, "q", vec![b("b"), b("c")], true).unwrap());
    assert_eq!(br.inspect("q").unwrap().waiting_putters, 1);
    let waiter = tokio::spawn(w.wait(in_ms(1000), CancellationToken::new()));
    tokio::task::yield_now().await;
    // One get makes room for exactly one more item.
    let got = ready(br.get(s, "q", 1, MB, Delivery::Remove, false).unwrap());
    assert_eq!(payloads(&got), [b"a"]);
    let progress = waiter.await.unwrap();
    assert_eq!((progress.done(), progress.pending()), (1, 1));
    let stats = br.inspect("q").unwrap();
    assert_eq!((stats.len, stats.waiting_putters), (1, 0));
}

#[tokio::test(start_paused = true)]
async fn waiting_putters_keep_their_order_and_new_puts_do_not_overtake() {
    let br = broker();
    let s = br.open_session();
    br.declare("q", Some(1)).unwrap();
    ready(br.put(s, "q", vec![b("0")], false).unwrap());
    let first = waiting(br.put(s, "q", vec![b("1")], true).unwrap());
    let second = waiting(br.put(s, "q", vec![b("2")], true).unwrap());
    let first = tokio::spawn(first.wait(None, CancellationToken::new()));
    let second = tokio::spawn(second.wait(None, CancellationToken::new()));
    for expected in ["0", "1"] {
        let got = ready(br.get(s, "q", 1, MB, Delivery::Remove, false).unwrap());
        assert_eq!(got[0].payload, b(expected));
    }
    assert_eq!(first.await.unwrap().done(), 1);
    // A nowait put now finds the queue full: the second waiter got the room first.
    assert_eq!(
        ready(br.put(s, "q", vec![b("x")], false).unwrap()).done(),
        0
    );
    assert_eq!(second.await.unwrap().done(), 1);
    let got = ready(br.get(s, "q", 5, MB, Delivery::Remove, false).unwrap());
    assert_eq!(payloads(&got), [b"2"]);
}

#[tokio::test(start_paused = true)]
async fn a_dropped_waiter_leaves_nothing_behind() {
    let br = broker();
    let s = br.open_session();
    let w = waiting(br.get(s, "q", 1, MB, Delivery::Remove, true).unwrap());
    drop(w);
    br.declare("full", Some(1)).unwrap();
    ready(br.put(s, "full", vec![b("a")], false).unwrap());
    let p = waiting(br.put(s, "full", vec![b("b")], true).unwrap());
    drop(p);
    ready(br.put(s, "q", vec![b("kept")], false).unwrap());
    let (q, full) = (br.inspect("q").unwrap(), br.inspect("full").unwrap());
    assert_eq!(
        (q.len, q.waiting_getters),
        (1, 0),
        "no item went to the dropped getter"
    );
    assert_eq!((full.len, full.waiting_putters), (1, 0));
}

#[tokio::test(start_paused = true)]
async fn items_handed_to_a_waiter_that_is_dropped_go_back_to_the_front() {
    let br = broker();
    let s = br.open_session();
    let w = waiting(br.get(s, "q", 2, MB, Delivery::Remove, true).unwrap());
    // The put hands both items to the waiter before the waiter's future ever runs again.
    ready(br.put(s, "q", vec![b("1"), b("2"), b("3")], false).unwrap());
    drop(w);
    let got = ready(br.get(s, "q", 10, MB, Delivery::Remove, false).unwrap());
    assert_eq!(payloads(&got), [b"1", b"2", b"3"]);
    assert_eq!(
        got[0].attempt, 1,
        "an undelivered item is not counted as delivered"
    );
}

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
        br.complete(worker, "tasks", "results", outcomes, false)
            .unwrap(),
    );
    assert_eq!((p.done(), p.stale.clone(), p.pending()), (1, vec![999], 0));
    // Another session cannot settle a lease it does not hold.
    let stolen = vec![Outcome {
        task: got[1].id,
        result: b("64"),
    }];
    let p = ready(
        br.complete(other, "tasks", "results", stolen, false)
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

/// Fills a 1-slot "results" queue with "full" and leases `worker` one task of "tasks" (that
/// queue created first if `tasks_first`, so that it ranks below "results"); returns the
/// worker's answer to it, "9", whose completion must wait for room.
fn answer_for_a_full_results_queue(
    br: &Broker,
    worker: SessionId,
    other: SessionId,
    tasks_first: bool,
) -> Vec<Outcome> {
    if tasks_first {
        br.declare("tasks", None).unwrap();
    }
    br.declare("results", Some(1)).unwrap();
    ready(br.put(other, "results", vec![b("full")], false).unwrap());
    ready(br.put(other, "tasks", vec![b("3")], false).unwrap());
    let task = ready(br.get(worker, "tasks", 1, MB, LEASE, false).unwrap()).remove(0);
    vec![Outcome {
        task: task.id,
        result: b("9"),
    }]
}

#[tokio::test(start_paused = true)]
async fn complete_into_a_full_queue_waits_and_keeps_the_lease_until_then() {
    let br = broker();
    let (worker, other) = (br.open_session(), br.open_session());
    let outcome = answer_for_a_full_results_queue(&br, worker, other, false);
    let w = waiting(
        br.complete(worker, "tasks", "results", outcome, true)
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

#[test]
fn a_reply_is_cut_to_fit_the_frame_but_always_carries_one_item() {
    let br = broker();
    let s = br.open_session();
    let big = Bytes::from(vec![0u8; 600]);
    ready(
        br.put(s, "q", vec![big.clone(), big.clone(), big], false)
            .unwrap(),
    );
    let got = ready(br.get(s, "q", 10, 1000, Delivery::Remove, false).unwrap());
    assert_eq!(got.len(), 1);
    let got = ready(br.get(s, "q", 10, 100, Delivery::Remove, false).unwrap());
    assert_eq!(
        got.len(),
        1,
        "one item even when it alone is over the budget"
    );
}

#[tokio::test(start_paused = true)]
async fn stop_ends_a_wait_early_with_partial_progress() {
    let br = broker();
    let s = br.open_session();
    let stop = CancellationToken::new();
    let w = waiting(br.get(s, "q", 1, MB, LEASE, true).unwrap());
    let waiter = tokio::spawn(w.wait(None, stop.clone()));
    stop.cancel();
    assert!(waiter.await.unwrap().is_empty());
    assert_eq!(br.inspect("q").unwrap().waiting_getters, 0);
}

fn later(secs: u64) -> Deadline {
    Deadline::now() + Duration::from_secs(secs)
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
    let p = ready(br.complete(slow, "tasks", "results", late, false).unwrap());
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
        .nack(s, "tasks", &[a.id, 999], Duration::from_secs(2), "busy")
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

#[tokio::test(start_paused = true)]
async fn a_task_that_fails_every_attempt_is_dead_lettered_with_its_last_reason() {
    let br = broker();
    let s = br.open_session();
    ready(br.put(s, "tasks", vec![b("poison")], false).unwrap());
    for attempt in 1..=3 {
        let task = ready(br.get(s, "tasks", 1, MB, LEASE, false).unwrap()).remove(0);
        assert_eq!(task.attempt, attempt);
        br.nack(
            s,
            "tasks",
            &[task.id],
            Duration::ZERO,
            &format!("crash {attempt}"),
        )
        .unwrap();
    }
    assert!(ready(br.get(s, "tasks", 1, MB, LEASE, false).unwrap()).is_empty());
    let stats = br.inspect("tasks").unwrap();
    assert_eq!((stats.dead_total, stats.requeued_total), (1, 2));
    let dead = ready(
        br.get(s, "tasks.dead", 5, MB, Delivery::Remove, false)
            .unwrap(),
    );
    let letter: DeadLetter = taskmill_protocol::decode_payload(&dead[0].payload).unwrap();
    assert_eq!(letter.queue, "tasks");
    assert_eq!(letter.attempts, 3);
    assert_eq!(letter.reason, "nacked: crash 3");
    assert_eq!(letter.payload, b("poison"));
}

#[tokio::test(start_paused = true)]
async fn expiry_and_disconnects_count_as_attempts_too() {
    let br = broker();
    let producer = br.open_session();
    ready(br.put(producer, "tasks", vec![b("t")], false).unwrap());
    let short = Delivery::Lease { millis: Some(100) };
    for _ in 0..2 {
        let s = br.open_session();
        ready(br.get(s, "tasks", 1, MB, short, false).unwrap());
        br.close_session(s);
    }
    let s = br.open_session();
    ready(br.get(s, "tasks", 1, MB, short, false).unwrap());
    tokio::time::advance(Duration::from_millis(200)).await;
    br.tick(Deadline::now());
    let dead = br.inspect("tasks.dead").unwrap();
    assert_eq!(dead.len, 1);
    let letter: DeadLetter = {
        let got = ready(
            br.get(s, "tasks.dead", 1, MB, Delivery::Remove, false)
                .unwrap(),
        );
        taskmill_protocol::decode_payload(&got[0].payload).unwrap()
    };
    assert!(
        letter.reason.starts_with("lease expired"),
        "{}",
        letter.reason
    );
}

#[test]
fn dead_letter_queues_do_not_count_against_the_queue_limit_nor_chain() {
    let mut l = limits();
    l.max_queues = 1;
    l.max_attempts = 1;
    let br = Broker::new(l);
    let s = br.open_session();
    ready(br.put(s, "q", vec![b("x")], false).unwrap());
    let t = ready(br.get(s, "q", 1, MB, LEASE, false).unwrap()).remove(0);
    br.nack(s, "q", &[t.id], Duration::ZERO, "no").unwrap();
    let d = ready(br.get(s, "q.dead", 1, MB, LEASE, false).unwrap()).remove(0);
    br.nack(s, "q.dead", &[d.id], Duration::ZERO, "still no")
        .unwrap();
    assert_eq!(
        br.inspect("q.dead").unwrap().len,
        1,
        "a dead letter stays in its queue"
    );
    assert!(br.inspect("q.dead.dead").is_err());
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
    br.nack(s, "q", &ids[..2], Duration::ZERO, "now").unwrap();
    br.nack(s, "q", &ids[2..], Duration::from_secs(1), "later")
        .unwrap();
    let at_once = ready(br.get(s, "q", 4, MB, LEASE, false).unwrap());
    assert_eq!(payloads(&at_once), [b"1", b"2"]);
    tokio::time::advance(Duration::from_secs(1)).await;
    br.tick(Deadline::now());
    let delayed = ready(br.get(s, "q", 4, MB, Delivery::Remove, false).unwrap());
    assert_eq!(payloads(&delayed), [b"3", b"4"]);
}

#[tokio::test(start_paused = true)]
async fn a_nack_in_a_dead_letter_queue_still_honours_its_delay() {
    let mut l = limits();
    l.max_attempts = 1;
    let br = Broker::new(l);
    let s = br.open_session();
    ready(br.put(s, "q", vec![b("x")], false).unwrap());
    let t = ready(br.get(s, "q", 1, MB, LEASE, false).unwrap()).remove(0);
    br.nack(s, "q", &[t.id], Duration::ZERO, "dead").unwrap();
    let d = ready(br.get(s, "q.dead", 1, MB, LEASE, false).unwrap()).remove(0);
    br.nack(s, "q.dead", &[d.id], Duration::from_secs(5), "wait")
        .unwrap();
    assert_eq!(br.inspect("q.dead").unwrap().delayed, 1);
    assert!(ready(br.get(s, "q.dead", 1, MB, LEASE, false).unwrap()).is_empty());
}

#[test]
fn client_made_dead_names_count_against_the_limit_and_long_dead_names_are_valid() {
    let mut l = limits();
    l.max_queues = 1;
    let br = Broker::new(l);
    br.declare("mine.dead", None).unwrap();
    assert!(matches!(
        br.declare("other", None),
        Err(QueueError::TooManyQueues { .. })
    ));
    let long = "q".repeat(MAX_QUEUE_NAME);
    assert!(valid_name(&format!("{long}{DEAD_SUFFIX}")));
    assert!(!valid_name(&format!("{long}x")));
}

/// Puts, leases and acks 50,000 tasks on "q", a thousand at a time.
fn lease_and_settle_50_000(br: &Broker, s: SessionId) {
    for _ in 0..50 {
        ready(br.put(s, "q", vec![Bytes::new(); 1000], false).unwrap());
        let got = ready(br.get(s, "q", 1000, MB, LEASE, false).unwrap());
        let ids: Vec<_> = got.iter().map(|t| t.id).collect();
        br.ack(s, "q", &ids).unwrap();
    }
}

#[test]
fn settled_leases_do_not_pile_up_in_the_expiry_heap() {
    let br = broker();
    let s = br.open_session();
    lease_and_settle_50_000(&br, s);
    let heap = br.with_queue("q", |q| q.expiries.len());
    assert!(
        heap <= DEAD_SLACK + 1000,
        "{heap} entries for 50,000 settled leases"
    );
    // A live lease still expires after a rebuild.
    ready(br.put(s, "q", vec![b("x")], false).unwrap());
    ready(
        br.get(s, "q", 1, MB, Delivery::Lease { millis: Some(1) }, false)
            .unwrap(),
    );
    br.tick(Deadline::now() + Duration::from_secs(1));
    assert_eq!(br.inspect("q").unwrap().len, 1, "expired and requeued");
}

#[test]
fn a_sessions_settled_leases_are_pruned_and_its_live_ones_still_requeued_on_close() {
    let br = broker();
    let s = br.open_session();
    lease_and_settle_50_000(&br, s);
    let held = br.with_queue("q", |q| q.sessions[&s].held.len());
    assert!(
        held <= DEAD_SLACK + 1000,
        "{held} entries for 50,000 settled leases"
    );
    // The same task leased twice by the session (expired in between) is given back once.
    ready(br.put(s, "q", vec![b("a"), b("b")], false).unwrap());
    let short = Delivery::Lease { millis: Some(1) };
    ready(br.get(s, "q", 1, MB, short, false).unwrap());
    br.tick(Deadline::now() + Duration::from_secs(1));
    assert_eq!(ready(br.get(s, "q", 2, MB, LEASE, false).unwrap()).len(), 2);
    assert!(br.holds_leases(s));
    assert_eq!(br.close_session(s), 2);
    let q = br.inspect("q").unwrap();
    assert_eq!((q.len, q.leased), (2, 0));
    assert_eq!(br.leased_total(), 0);
}

#[test]
fn payloads_inline_or_boxed_come_back_byte_for_byte() {
    let br = broker();
    let s = br.open_session();
    let sizes = [0, 1, INLINE, INLINE + 1, 4096];
    let items: Vec<Bytes> = sizes
        .iter()
        .map(|&n| Bytes::from((0..n).map(|i| i as u8).collect::<Vec<_>>()))
        .collect();
    ready(br.put(s, "q", items.clone(), false).unwrap());
    let got = ready(br.get(s, "q", 10, MB, LEASE, false).unwrap());
    assert_eq!(
        got.iter().map(|t| t.payload.clone()).collect::<Vec<_>>(),
        items
    );
    // Given back and handed out again, the queue's own copies are intact too.
    assert_eq!(br.close_session(s), sizes.len());
    let again = ready(br.get(s, "q", 10, MB, Delivery::Remove, false).unwrap());
    assert_eq!(
        again.into_iter().map(|t| t.payload).collect::<Vec<_>>(),
        items
    );
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
    ready(br.complete(worker, "q", "r", vec![stale], false).unwrap());
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
        ready(br.complete(worker, "q", "r", vec![done], false).unwrap());
    }
    assert_eq!(br.snapshot().1, 1, "one completing session, counted once");
}

#[test]
fn a_locked_queue_does_not_hold_up_work_on_other_queues() {
    let br = broker();
    let s = br.open_session();
    br.declare("busy", None).unwrap();
    let busy = br.existing("busy").unwrap();
    let held = br.lock(&busy);
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let other = br.clone();
    std::thread::spawn(move || {
        ready(other.put(s, "free", vec![b("1")], false).unwrap());
        let task = ready(other.get(s, "free", 1, MB, LEASE, false).unwrap()).remove(0);
        let done = Outcome {
            task: task.id,
            result: b("1"),
        };
        let p = ready(other.complete(s, "free", "out", vec![done], false).unwrap());
        done_tx.send(p.done()).unwrap();
    });
    let done = done_rx.recv_timeout(Duration::from_secs(10));
    drop(held);
    assert_eq!(
        done,
        Ok(1),
        "put, get and complete on other queues went ahead"
    );
}

#[tokio::test(start_paused = true)]
async fn a_waiting_completion_keeps_its_place_among_plain_puts_whichever_queue_came_first() {
    for tasks_first in [true, false] {
        let br = broker();
        let (worker, other) = (br.open_session(), br.open_session());
        let outcome = answer_for_a_full_results_queue(&br, worker, other, tasks_first);
        let stop = CancellationToken::new;
        let first = waiting(br.put(other, "results", vec![b("a")], true).unwrap());
        let first = tokio::spawn(first.wait(None, stop()));
        let completion = waiting(
            br.complete(worker, "tasks", "results", outcome, true)
                .unwrap(),
        );
        let completion = tokio::spawn(completion.wait(None, stop()));
        let last = waiting(br.put(other, "results", vec![b("z")], true).unwrap());
        let last = tokio::spawn(last.wait(None, stop()));
        tokio::task::yield_now().await;
        let mut seen = Vec::new();
        for _ in 0..4 {
            let got = br
                .get(other, "results", 1, MB, Delivery::Remove, true)
                .unwrap();
            let got = match got {
                Step::Ready(tasks) => tasks,
                Step::Wait(w) => w.wait(in_ms(1000), stop()).await,
            };
            seen.extend(got.into_iter().map(|t| t.payload));
        }
        assert_eq!(seen, [b("full"), b("a"), b("9"), b("z")], "{tasks_first}");
        assert_eq!(first.await.unwrap().done(), 1);
        assert_eq!(completion.await.unwrap().done(), 1);
        assert_eq!(last.await.unwrap().done(), 1);
        assert_eq!(br.inspect("tasks").unwrap().leased, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn completions_across_queues_in_both_lock_orders_neither_deadlock_nor_lose_a_task() {
    const TASKS: usize = 20_000;
    let br = broker();
    // "a.results" ranks above "a" and "b.results" below "b", so completions take the two
    // locks in both orders; small capacities make them wait and wake each other.
    br.declare("a", None).unwrap();
    br.declare("b.results", Some(8)).unwrap();
    br.declare("a.results", Some(8)).unwrap();
    br.declare("b", None).unwrap();
    let feeder = br.open_session();
    for q in ["a", "b"] {
        let items = (0..TASKS).map(|i| Bytes::from(i.to_string())).collect();
        ready(br.put(feeder, q, items, false).unwrap());
    }
    let mut handles = Vec::new();
    for (q, results) in [("a", "a.results"), ("b", "b.results")] {
        for _ in 0..2 {
            let br = br.clone();
            handles.push(tokio::spawn(async move {
                let s = br.open_session();
                loop {
                    let tasks = ready(br.get(s, q, 16, MB, LEASE, false).unwrap());
                    if tasks.is_empty() {
                        return;
                    }
                    let outcomes = tasks
                        .into_iter()
                        .map(|t| Outcome {
                            task: t.id,
                            result: t.payload,
                        })
                        .collect();
                    let p = match br.complete(s, q, results, outcomes, true).unwrap() {
                        Step::Ready(p) => p,
                        Step::Wait(w) => w.wait(None, CancellationToken::new()).await,
                    };
                    assert_eq!(p.pending(), 0);
                    assert!(p.stale.is_empty());
                }
            }));
        }
        let br = br.clone();
        handles.push(tokio::spawn(async move {
            let s = br.open_session();
            let mut got = 0;
            while got < TASKS {
                let step = br.get(s, results, 64, MB, Delivery::Remove, true).unwrap();
                got += match step {
                    Step::Ready(tasks) => tasks.len(),
                    Step::Wait(w) => w.wait(None, CancellationToken::new()).await.len(),
                };
            }
        }));
    }
    let all = futures::future::join_all(handles);
    let joined = tokio::time::timeout(Duration::from_secs(60), all)
        .await
        .expect("every worker and collector finished: no deadlock, nothing lost");
    for j in joined {
        j.unwrap();
    }
    for q in ["a", "b"] {
        let stats = br.inspect(q).unwrap();
        assert_eq!((stats.len, stats.leased), (0, 0));
        assert_eq!(stats.settled_total, TASKS as u64);
    }
}

#[test]
fn a_queued_payload_is_a_copy_not_a_view_into_the_frame_it_came_in() {
    let br = broker();
    let s = br.open_session();
    let frame = Bytes::from(vec![7u8; 1 << 20]);
    let range = frame.as_ptr_range();
    let views = vec![frame.slice(100..300), frame.slice(300..305)];
    ready(br.put(s, "q", views.clone(), false).unwrap());
    drop(frame);
    let got = ready(br.get(s, "q", 2, MB, LEASE, false).unwrap());
    assert_eq!(
        got.iter().map(|t| t.payload.clone()).collect::<Vec<_>>(),
        views
    );
    for task in &got {
        assert!(
            !range.contains(&task.payload.as_ptr()),
            "the queue keeps its own copy, so the 1 MiB frame can be freed"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_put_into_a_small_queue_feeds_every_waiting_getter_before_it_waits() {
    let br = broker();
    let s = br.open_session();
    br.declare("q", Some(1)).unwrap();
    let getters: Vec<_> = (0..3)
        .map(|_| {
            let w = waiting(br.get(s, "q", 1, MB, Delivery::Remove, true).unwrap());
            tokio::spawn(w.wait(None, CancellationToken::new()))
        })
        .collect();
    tokio::task::yield_now().await;
    let items = vec![b("1"), b("2"), b("3"), b("4")];
    // Each item handed to a getter frees the one slot again, so all four go in at once: three
    // to the getters, the last one queued.
    let put = ready(br.put(s, "q", items, true).unwrap());
    assert_eq!(put.done(), 4);
    let mut got = Vec::new();
    for g in getters {
        got.extend(g.await.unwrap().into_iter().map(|t| t.payload));
    }
    assert_eq!(got, [b("1"), b("2"), b("3")]);
    let q = br.inspect("q").unwrap();
    assert_eq!((q.len, q.waiting_putters), (1, 0));
}

#[tokio::test(start_paused = true)]
async fn room_goes_to_a_waiting_completion_even_while_its_own_task_is_busy() {
    let br = broker();
    let (worker, other) = (br.open_session(), br.open_session());
    let outcome = answer_for_a_full_results_queue(&br, worker, other, true);
    // The completion waits, but its future is not polled: its session could be busy writing.
    let w = waiting(
        br.complete(worker, "tasks", "results", outcome, true)
            .unwrap(),
    );
    ready(
        br.get(other, "results", 1, MB, Delivery::Remove, false)
            .unwrap(),
    );
    let (tasks, results) = (br.inspect("tasks").unwrap(), br.inspect("results").unwrap());
    assert_eq!(
        (tasks.leased, tasks.settled_total, results.len),
        (0, 1, 1),
        "settled and queued by whoever made the room"
    );
    assert_eq!(w.wait(in_ms(0), CancellationToken::new()).await.done(), 1);
}
