//! Put order, ids, capacity, names and the queue limit.

use super::*;

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
