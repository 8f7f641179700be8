//! Blocked gets and puts: served in arrival order, bounded by deadlines, nothing left behind when dropped.

use super::*;

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
