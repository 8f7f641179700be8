//! The lock per queue: no queue holds up another, and completions across two queues neither deadlock nor lose their place.

use super::*;

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
        let p = ready(
            other
                .complete(s, "free", "out", vec![done], false, false)
                .unwrap(),
        );
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
            br.complete(worker, "tasks", "results", outcome, true, false)
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
    complete_across_queues_in_both_lock_orders(broker()).await;
}

/// The same run, recorded: its journal replays, so records reach the store in the order the
/// locks made the changes, even with both lock orders on several threads at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn completions_across_queues_on_many_threads_are_journaled_in_lock_order() {
    let (br, recorder) = super::journal::recorded();
    complete_across_queues_in_both_lock_orders(br.clone()).await;
    super::journal::replays_to_the_same_queues(&br, &recorder);
}

async fn complete_across_queues_in_both_lock_orders(br: Broker) {
    const TASKS: usize = 20_000;
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
                    let p = match br.complete(s, q, results, outcomes, true, false).unwrap() {
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

#[tokio::test(start_paused = true)]
async fn room_goes_to_a_waiting_completion_even_while_its_own_task_is_busy() {
    let br = broker();
    let (worker, other) = (br.open_session(), br.open_session());
    let outcome = answer_for_a_full_results_queue(&br, worker, other, true);
    // The completion waits, but its future is not polled: its session could be busy writing.
    let w = waiting(
        br.complete(worker, "tasks", "results", outcome, true, false)
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
