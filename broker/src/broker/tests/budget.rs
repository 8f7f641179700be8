//! The memory budget and what one request may cost: every item held is charged, new work is
//! refused past the budget while what the master holds still moves, waiting batches stay
//! compact, and a nack's reason is kept once.

use super::*;
use crate::broker::memory::{item_cost, ITEM_OVERHEAD};

/// What the queues' contents cost, counted afresh.
fn counted(br: &Broker) -> u64 {
    br.slots()
        .iter()
        .map(|slot| {
            let q = br.lock(slot);
            let queued: u64 = q.items.iter().map(|i| i.cost()).sum();
            let leased: u64 = q.leased.values().map(|l| l.item.cost()).sum();
            let delayed: u64 = q.delayed.iter().map(|d| d.0.item.cost()).sum();
            queued + leased + delayed
        })
        .sum()
}

fn held(br: &Broker) -> u64 {
    br.memory().usage().held
}

fn budgeted(max_memory: u64) -> Broker {
    Broker::new(QueueLimits {
        max_memory,
        ..limits()
    })
}

fn ids(tasks: &[Task]) -> Vec<TaskId> {
    tasks.iter().map(|t| t.id).collect()
}

#[tokio::test(start_paused = true)]
async fn the_budget_follows_every_item_through_every_state_it_can_be_in() {
    let br = broker();
    let s = br.open_session();
    let big = Bytes::from(vec![1u8; 1000]);
    ready(
        br.put(s, "q", vec![b("a"), big.clone(), b("c"), b("d")], false)
            .unwrap(),
    );
    assert_eq!(held(&br), 3 * ITEM_OVERHEAD + item_cost(1000));
    let got = ready(br.get(s, "q", 4, MB, LEASE, false).unwrap());
    assert_eq!(held(&br), counted(&br), "leased items are still held");
    br.nack(
        s,
        "q",
        &ids(&got[..1]),
        Duration::from_secs(1),
        "later",
        false,
    )
    .unwrap();
    br.nack(s, "q", &ids(&got[1..2]), Duration::ZERO, "now", false)
        .unwrap();
    assert_eq!(held(&br), counted(&br), "delayed and given back");
    // Completed into another queue: the task leaves, its result comes.
    let outcome = Outcome {
        task: got[2].id,
        result: big.clone(),
    };
    ready(
        br.complete(s, "q", "r", vec![outcome], false, false)
            .unwrap(),
    );
    br.ack(s, "q", &ids(&got[3..])).unwrap();
    assert_eq!(held(&br), counted(&br));
    // Taken for good, and given back by a getter that was gone.
    ready(br.get(s, "r", 1, MB, Delivery::Remove, false).unwrap());
    // Used up: buried as a dead letter, then kicked back.
    for _ in 0..3 {
        let got = ready(br.get(s, "q", 4, MB, LEASE, false).unwrap());
        br.nack(s, "q", &ids(&got), Duration::ZERO, "no", false)
            .unwrap();
        tokio::time::advance(Duration::from_secs(2)).await;
        br.tick(Deadline::now());
    }
    assert!(br.inspect("q.dead").unwrap().len > 0);
    assert_eq!(held(&br), counted(&br), "dead letters are charged");
    br.kick("q", 1).unwrap();
    assert_eq!(held(&br), counted(&br));
    // Connection gone, purged, deleted.
    ready(br.get(s, "q", 1, MB, LEASE, false).unwrap());
    br.close_session(s);
    assert_eq!(held(&br), counted(&br));
    br.purge("q").unwrap();
    br.delete("q.dead", false).unwrap();
    assert_eq!(held(&br), counted(&br));
    br.purge("q").unwrap();
    assert_eq!(held(&br), 0, "nothing held, nothing charged");
}

#[tokio::test(start_paused = true)]
async fn past_the_budget_new_puts_are_refused_while_give_backs_and_dead_letters_go_through() {
    let payload = Bytes::from(vec![0u8; 1000]);
    let br = budgeted(10 * item_cost(1000));
    let s = br.open_session();
    ready(br.put(s, "q", vec![payload.clone(); 10], false).unwrap());
    let refused = br.put(s, "q", vec![b("x")], false).unwrap_err();
    assert!(
        matches!(refused, QueueError::MemoryFull { .. }),
        "{refused}"
    );
    assert_eq!(br.inspect("q").unwrap().len, 10, "nothing of it was queued");

    // Everything leased, then given back in every way: nothing is dropped.
    let got = ready(br.get(s, "q", 10, MB, LEASE, false).unwrap());
    br.nack(s, "q", &ids(&got[..5]), Duration::ZERO, "retry", false)
        .unwrap();
    br.nack(s, "q", &ids(&got[5..]), Duration::ZERO, "bad", true)
        .unwrap();
    assert_eq!(br.inspect("q").unwrap().len, 5);
    assert_eq!(
        br.inspect("q.dead").unwrap().len,
        5,
        "buried past the budget"
    );
    let short = Delivery::Lease { millis: Some(10) };
    ready(br.get(s, "q", 5, MB, short, false).unwrap());
    tokio::time::advance(Duration::from_millis(20)).await;
    br.tick(Deadline::now());
    assert_eq!(br.inspect("q").unwrap().len, 5, "expired leases come back");
    assert!(br.put(s, "q", vec![b("x")], false).is_err());

    // A completion whose result is no larger than its task still goes in; a larger one not.
    let got = ready(br.get(s, "q", 2, MB, LEASE, false).unwrap());
    let small = Outcome {
        task: got[0].id,
        result: b("ok"),
    };
    ready(br.complete(s, "q", "r", vec![small], false, false).unwrap());
    let large = Outcome {
        task: got[1].id,
        result: Bytes::from(vec![0u8; 100_000]),
    };
    let refused = br.complete(s, "q", "r", vec![large], false, false);
    assert!(matches!(refused, Err(QueueError::MemoryFull { .. })));
    assert_eq!(
        br.inspect("q").unwrap().leased,
        1,
        "its lease is still held"
    );

    // Settling and taking free room for new puts.
    br.ack(s, "q", &[got[1].id]).unwrap();
    ready(br.get(s, "q.dead", 5, MB, Delivery::Remove, false).unwrap());
    ready(br.put(s, "q", vec![payload], false).unwrap());
    assert_eq!(held(&br), counted(&br));
}

#[test]
fn a_nack_of_thousands_of_tasks_keeps_its_reason_once_and_cut() {
    let br = broker();
    let s = br.open_session();
    ready(br.put(s, "q", vec![Bytes::new(); 3000], false).unwrap());
    let got = ready(br.get(s, "q", 3000, MB, LEASE, false).unwrap());
    let reason = "é".repeat(500_000);
    br.nack(s, "q", &ids(&got), Duration::ZERO, &reason, true)
        .unwrap();
    let letters = ready(
        br.get(s, "q.dead", 3000, 64 * MB, Delivery::Remove, false)
            .unwrap(),
    );
    assert_eq!(letters.len(), 3000);
    for letter in letters {
        let letter: DeadLetter = taskmill_protocol::decode_payload(&letter.payload).unwrap();
        assert!(letter.reason.len() <= taskmill_protocol::MAX_REASON);
        assert!(letter.reason.ends_with('é'), "cut at a character boundary");
    }
}

#[tokio::test(start_paused = true)]
async fn a_waiting_put_keeps_its_items_compact_and_lets_go_of_the_frame() {
    let br = broker();
    let s = br.open_session();
    br.declare("q", Some(1)).unwrap();
    let frame = Bytes::from(vec![7u8; MB]);
    let views: Vec<Bytes> = (0..1000)
        .map(|i| frame.slice(i * 40..i * 40 + 40))
        .collect();
    let w = waiting(br.put(s, "q", views, true).unwrap());
    assert!(
        frame.is_unique(),
        "the waiting put keeps copies of its 999 items left, not views into the 1 MiB frame"
    );
    let bytes = br.with_queue("q", |q| match &q.putters[0].pending {
        progress::Batch::Packed { data, ends, .. } => data.len() + 4 * ends.len(),
        other => panic!("not packed: {other:?}"),
    });
    assert_eq!(bytes, 999 * 44);
    // And it still goes in, in order, as room appears.
    let first = ready(br.get(s, "q", 1, MB, Delivery::Remove, false).unwrap());
    assert_eq!(first[0].payload.len(), 40);
    let next = ready(br.get(s, "q", 1, MB, Delivery::Remove, false).unwrap());
    assert_eq!(next[0].id, first[0].id + 1);
    drop(w);
}

#[tokio::test(start_paused = true)]
async fn tasks_given_back_while_a_getter_waits_reach_it_oldest_first_and_together() {
    let br = broker();
    let (holder, getter) = (br.open_session(), br.open_session());
    ready(
        br.put(holder, "q", vec![b("1"), b("2"), b("3")], false)
            .unwrap(),
    );
    ready(br.get(holder, "q", 3, MB, LEASE, false).unwrap());
    let w = waiting(br.get(getter, "q", 10, MB, LEASE, true).unwrap());
    br.close_session(holder);
    let got = w.wait(in_ms(1000), CancellationToken::new()).await;
    assert_eq!(payloads(&got), [b"1", b"2", b"3"]);

    // The same for leases that expire in one tick.
    let w = waiting(br.get(holder, "q", 10, MB, LEASE, true).unwrap());
    br.close_session(getter);
    let got = w.wait(in_ms(1000), CancellationToken::new()).await;
    assert_eq!(payloads(&got), [b"1", b"2", b"3"]);
    let short = Delivery::Lease { millis: Some(10) };
    let s = br.open_session();
    br.ack(holder, "q", &ids(&got)).unwrap();
    ready(br.put(s, "q", vec![b("4"), b("5"), b("6")], false).unwrap());
    ready(br.get(s, "q", 3, MB, short, false).unwrap());
    let w = waiting(br.get(holder, "q", 10, MB, LEASE, true).unwrap());
    tokio::time::advance(Duration::from_millis(20)).await;
    br.tick(Deadline::now());
    let got = w.wait(in_ms(1000), CancellationToken::new()).await;
    assert_eq!(payloads(&got), [b"4", b"5", b"6"]);
}

#[test]
fn a_get_that_must_fit_takes_nothing_rather_than_a_task_too_large_for_its_room() {
    let br = broker();
    let s = br.open_session();
    ready(
        br.put(s, "q", vec![Bytes::from(vec![0u8; 3000]), b("x")], false)
            .unwrap(),
    );
    let none = ready(br.get_fitting(s, "q", 2, 1000, LEASE, true).unwrap());
    assert!(
        none.is_empty(),
        "the front task does not fit, and waiting cannot help"
    );
    let q = br.inspect("q").unwrap();
    assert_eq!((q.len, q.leased), (2, 0), "nothing was leased");
    let both = ready(br.get_fitting(s, "q", 2, 4000, LEASE, false).unwrap());
    assert_eq!(both.len(), 2);
    // A plain get always carries the first task, whatever its size.
    ready(
        br.put(s, "q", vec![Bytes::from(vec![0u8; 3000])], false)
            .unwrap(),
    );
    assert_eq!(ready(br.get(s, "q", 1, 10, LEASE, false).unwrap()).len(), 1);
}
