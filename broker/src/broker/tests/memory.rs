//! What the queues keep: bounded bookkeeping, payloads inline or copied, never views into frames.

use super::*;

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
