//! Reply routes, and the operations for people and scripts: peek, purge, kick, delete.

use super::*;

fn routed_put(br: &Broker, s: SessionId, queue: &str, items: &[&str], reply: &str) -> Progress {
    let items = items.iter().map(|i| b(i)).collect();
    ready(
        br.put_once(s, queue, items, false, None, Some(reply))
            .unwrap(),
    )
}

fn ids(tasks: &[Task]) -> Vec<TaskId> {
    tasks.iter().map(|t| t.id).collect()
}

fn routes(br: &Broker, queue: &str) -> usize {
    br.with_queue(queue, |q| q.routes.all().len())
}

#[test]
fn tasks_name_their_puts_reply_queue_and_routes_go_with_their_last_task() {
    let br = broker();
    let s = br.open_session();
    routed_put(&br, s, "q", &["a", "b"], "replies.1");
    ready(br.put(s, "q", vec![b("plain")], false).unwrap());
    routed_put(&br, s, "q", &["c"], "replies.2");
    let tasks = ready(br.get(s, "q", 10, MB, LEASE, false).unwrap());
    let replies: Vec<_> = tasks.iter().map(Task::reply_queue).collect();
    assert_eq!(
        replies,
        [
            Some("replies.1"),
            Some("replies.1"),
            None,
            Some("replies.2")
        ]
    );
    assert_eq!(routes(&br, "q"), 2);
    br.ack(s, "q", &ids(&tasks[..2])).unwrap();
    assert_eq!(
        routes(&br, "q"),
        1,
        "the first put's route went with its last task"
    );
    let removed = ready(br.get(s, "q", 10, MB, Delivery::Remove, false).unwrap());
    assert!(removed.is_empty());
    br.ack(s, "q", &ids(&tasks[2..])).unwrap();
    assert_eq!(routes(&br, "q"), 0);
}

#[test]
fn a_bad_reply_queue_name_is_refused() {
    let br = broker();
    let s = br.open_session();
    let put = br.put_once(s, "q", vec![b("x")], false, None, Some("no spaces"));
    assert!(matches!(put, Err(QueueError::BadName(_))));
}

#[test]
fn a_fatal_nack_buries_at_once_and_tells_the_reply_queue_while_it_exists() {
    let br = broker();
    let s = br.open_session();
    br.declare("replies", None).unwrap();
    routed_put(&br, s, "q", &["x", "y"], "replies");
    let t = ready(br.get(s, "q", 2, MB, LEASE, false).unwrap());
    br.nack(
        s,
        "q",
        &ids(&t[..1]),
        Duration::from_secs(60),
        "cannot parse",
        true,
    )
    .unwrap();
    let dead = ready(br.get(s, "q.dead", 1, MB, Delivery::Remove, false).unwrap());
    let letter: DeadLetter = taskmill_protocol::decode_payload(&dead[0].payload).unwrap();
    assert_eq!((letter.attempts, letter.payload), (1, b("x")));
    assert!(letter.reason.contains("cannot parse"), "{}", letter.reason);
    let told = ready(
        br.get(s, "replies", 1, MB, Delivery::Remove, false)
            .unwrap(),
    );
    let reply = taskmill_protocol::TaskReply::decode(&told[0].payload).unwrap();
    assert_eq!(reply.task, t[0].id);
    assert!(
        matches!(&reply.outcome, taskmill_protocol::TaskOutcome::Dead { attempts: 1, reason } if reason.contains("cannot parse")),
        "{reply:?}"
    );
    // A reply queue that is gone has lost its producer: nothing to tell, none created.
    br.delete("replies", false).unwrap();
    br.nack(s, "q", &ids(&t[1..]), Duration::ZERO, "gone", true)
        .unwrap();
    assert_eq!(br.inspect("q.dead").unwrap().len, 1);
    assert!(matches!(
        br.inspect("replies"),
        Err(QueueError::NoSuchQueue(_))
    ));
}

#[test]
fn peek_shows_the_front_without_taking_it() {
    let br = broker();
    let s = br.open_session();
    routed_put(&br, s, "q", &["a", "b", "c"], "r");
    let seen = br.peek("q", 2, MB).unwrap();
    assert_eq!(payloads(&seen), [b"a", b"b"]);
    assert_eq!((seen[0].attempt, seen[0].reply_queue()), (1, Some("r")));
    assert_eq!(br.inspect("q").unwrap().len, 3);
    assert!(matches!(
        br.peek("none", 1, MB),
        Err(QueueError::NoSuchQueue(_))
    ));
}

#[tokio::test(start_paused = true)]
async fn purge_empties_queued_and_delayed_items_keeps_leases_and_makes_room() {
    let br = broker();
    let s = br.open_session();
    br.declare("q", Some(3)).unwrap();
    ready(br.put(s, "q", vec![b("1"), b("2"), b("3")], false).unwrap());
    let leased = ready(br.get(s, "q", 1, MB, LEASE, false).unwrap());
    let delayed = ready(br.get(s, "q", 1, MB, LEASE, false).unwrap());
    br.nack(
        s,
        "q",
        &ids(&delayed),
        Duration::from_secs(60),
        "later",
        false,
    )
    .unwrap();
    ready(br.put(s, "q", vec![b("4"), b("5")], false).unwrap());
    let put = waiting(br.put(s, "q", vec![b("6")], true).unwrap());
    assert_eq!(br.purge("q").unwrap(), 4, "3, 4, 5 and the delayed 2");
    let done = put.wait(None, CancellationToken::new()).await;
    assert_eq!(done.done(), 1, "the waiting put found room");
    let stats = br.inspect("q").unwrap();
    assert_eq!((stats.len, stats.leased, stats.delayed), (1, 1, 0));
    assert_eq!(br.ack(s, "q", &ids(&leased)).unwrap().done(), 1);
}

#[test]
fn kick_moves_dead_letters_back_with_fresh_attempts_as_far_as_there_is_room() {
    let br = broker();
    let s = br.open_session();
    ready(br.put(s, "q", vec![b("x"), b("y")], false).unwrap());
    let t = ready(br.get(s, "q", 2, MB, LEASE, false).unwrap());
    br.nack(s, "q", &ids(&t), Duration::ZERO, "no", true)
        .unwrap();
    assert_eq!(br.inspect("q.dead").unwrap().len, 2);
    br.declare("q", Some(1)).unwrap();
    assert_eq!(br.kick("q", 10).unwrap(), 1, "room for one");
    let back = ready(br.get(s, "q", 1, MB, Delivery::Remove, false).unwrap());
    assert_eq!(back[0].attempt, 1, "a fresh start");
    assert_eq!(br.kick("q", 10).unwrap(), 1);
    let again = ready(br.get(s, "q", 1, MB, Delivery::Remove, false).unwrap());
    let mut moved = [back[0].payload.clone(), again[0].payload.clone()];
    moved.sort();
    assert_eq!(moved, [b("x"), b("y")], "the original payloads");
    assert_eq!(br.kick("q", 10).unwrap(), 0, "nothing left");
    assert_eq!(br.kick("never", 10).unwrap(), 0);
}

#[tokio::test(start_paused = true)]
async fn delete_refuses_a_queue_in_use_or_not_empty_when_asked_and_frees_the_name() {
    let br = broker();
    let s = br.open_session();
    ready(br.put(s, "q", vec![b("1"), b("2")], false).unwrap());
    let leased = ready(br.get(s, "q", 1, MB, LEASE, false).unwrap());
    assert!(matches!(br.delete("q", false), Err(QueueError::InUse(_))));
    br.ack(s, "q", &ids(&leased)).unwrap();
    assert!(matches!(br.delete("q", true), Err(QueueError::NotEmpty(_))));
    let getter = waiting(br.get(s, "empty", 1, MB, LEASE, true).unwrap());
    assert!(matches!(
        br.delete("empty", false),
        Err(QueueError::InUse(_))
    ));
    drop(getter);
    assert_eq!(br.delete("empty", true).unwrap(), 0);
    assert_eq!(br.delete("q", false).unwrap(), 1);
    assert!(matches!(br.inspect("q"), Err(QueueError::NoSuchQueue(_))));
    assert!(matches!(
        br.delete("q", false),
        Err(QueueError::NoSuchQueue(_))
    ));
    // The name is free: a new queue, empty, with a new rank.
    ready(br.put(s, "q", vec![b("new")], false).unwrap());
    assert_eq!(br.inspect("q").unwrap().len, 1);
    assert_eq!(br.snapshot().0.len(), 1, "deleted queues are not listed");
}

#[test]
fn deleted_queues_do_not_count_against_the_limit() {
    let br = broker();
    let s = br.open_session();
    for round in 0..3 * limits().max_queues {
        let name = format!("q{round}");
        ready(br.put(s, &name, vec![b("x")], false).unwrap());
        br.delete(&name, false).unwrap();
    }
}

#[test]
fn a_put_to_a_queue_deleted_after_it_was_looked_up_goes_to_the_new_queue_of_that_name() {
    let br = broker();
    let s = br.open_session();
    ready(br.put(s, "q", vec![b("old")], false).unwrap());
    let stale = br.existing("q").unwrap();
    br.delete("q", false).unwrap();
    // As an operation that looked the name up just before the delete finds it.
    assert!(br.lock(&stale).deleted);
    ready(br.put(s, "q", vec![b("new")], false).unwrap());
    let got = ready(br.get(s, "q", 10, MB, Delivery::Remove, false).unwrap());
    assert_eq!(payloads(&got), [b"new"]);
}

#[test]
fn settling_in_a_queue_that_does_not_exist_creates_none() {
    let br = broker();
    let s = br.open_session();
    assert_eq!(br.ack(s, "ghost", &[1, 2]).unwrap().stale, [1, 2]);
    assert_eq!(br.touch(s, "ghost", &[1], None).unwrap().stale, [1]);
    let nack = br
        .nack(s, "ghost", &[3], Duration::ZERO, "x", false)
        .unwrap();
    assert_eq!(nack.stale, [3]);
    assert!(br.snapshot().0.is_empty());
}

#[test]
fn a_queue_name_is_valid_or_not_whatever_queues_exist() {
    let long = "a".repeat(MAX_QUEUE_NAME);
    for good in ["q", "a.b:c-d_e", "..dead", &long, &format!("{long}.dead")] {
        assert!(valid_name(good), "{good}");
    }
    for bad in [".dead", "x.dead.dead", "", "sp ace", &format!("{long}a")] {
        assert!(!valid_name(bad), "{bad}");
    }
    // A `.dead` queue a client made never buries, so there is never a `.dead.dead`.
    let br = Broker::new(QueueLimits {
        max_attempts: 1,
        ..limits()
    });
    let s = br.open_session();
    ready(br.put(s, "x.dead", vec![b("1")], false).unwrap());
    let t = ready(br.get(s, "x.dead", 1, MB, LEASE, false).unwrap());
    br.nack(s, "x.dead", &ids(&t), Duration::ZERO, "no", true)
        .unwrap();
    assert_eq!(br.inspect("x.dead").unwrap().len, 1, "requeued, not buried");
}

#[test]
fn purged_and_deleted_tasks_are_reported_to_their_reply_queues() {
    let br = broker();
    let s = br.open_session();
    br.declare("replies", None).unwrap();
    routed_put(&br, s, "q", &["a", "b"], "replies");
    ready(br.put(s, "q", vec![b("plain")], false).unwrap());
    assert_eq!(br.purge("q").unwrap(), 3);
    routed_put(&br, s, "gone", &["c"], "replies");
    assert_eq!(br.delete("gone", false).unwrap(), 1);
    let told = ready(
        br.get(s, "replies", 10, MB, Delivery::Remove, false)
            .unwrap(),
    );
    let reasons: Vec<String> = told
        .iter()
        .map(|t| {
            match taskmill_protocol::TaskReply::decode(&t.payload)
                .unwrap()
                .outcome
            {
                taskmill_protocol::TaskOutcome::Dead { reason, .. } => reason,
                other => panic!("{other:?}"),
            }
        })
        .collect();
    assert_eq!(
        reasons,
        [
            "purged from q",
            "purged from q",
            "its queue gone was deleted"
        ]
    );
}
