//! Dead letters: tasks that used up their attempts, and the queues that hold them.

use super::*;

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
            false,
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
    br.nack(s, "q", &[t.id], Duration::ZERO, "no", false)
        .unwrap();
    let d = ready(br.get(s, "q.dead", 1, MB, LEASE, false).unwrap()).remove(0);
    br.nack(s, "q.dead", &[d.id], Duration::ZERO, "still no", false)
        .unwrap();
    assert_eq!(
        br.inspect("q.dead").unwrap().len,
        1,
        "a dead letter stays in its queue"
    );
    assert!(br.inspect("q.dead.dead").is_err());
}

#[tokio::test(start_paused = true)]
async fn a_nack_in_a_dead_letter_queue_still_honours_its_delay() {
    let mut l = limits();
    l.max_attempts = 1;
    let br = Broker::new(l);
    let s = br.open_session();
    ready(br.put(s, "q", vec![b("x")], false).unwrap());
    let t = ready(br.get(s, "q", 1, MB, LEASE, false).unwrap()).remove(0);
    br.nack(s, "q", &[t.id], Duration::ZERO, "dead", false)
        .unwrap();
    let d = ready(br.get(s, "q.dead", 1, MB, LEASE, false).unwrap()).remove(0);
    br.nack(s, "q.dead", &[d.id], Duration::from_secs(5), "wait", false)
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

#[tokio::test(start_paused = true)]
async fn dead_letters_do_not_overtake_puts_waiting_in_their_queue() {
    let br = broker();
    let s = br.open_session();
    br.declare("q.dead", Some(1)).unwrap();
    ready(br.put(s, "q.dead", vec![b("first")], false).unwrap());
    let w = waiting(br.put(s, "q.dead", vec![b("waiting")], true).unwrap());
    ready(br.put(s, "q", vec![b("doomed")], false).unwrap());
    let task = ready(br.get(s, "q", 1, MB, LEASE, false).unwrap()).remove(0);
    br.nack(s, "q", &[task.id], Duration::ZERO, "no", true)
        .unwrap();
    let put = w.wait(in_ms(1000), CancellationToken::new()).await;
    assert_eq!(put.done(), 1, "the waiting put went in ahead of the letter");
    let all = ready(br.get(s, "q.dead", 3, MB, Delivery::Remove, false).unwrap());
    assert_eq!(&payloads(&all)[..2], [&b"first"[..], b"waiting"]);
    let letter: DeadLetter = taskmill_protocol::decode_payload(&all[2].payload).unwrap();
    assert_eq!(letter.payload, b("doomed"));
    assert!(
        all.windows(2).all(|w| w[0].id < w[1].id),
        "ids grow with queue order"
    );
}
