//! Restarting on a data directory: what was acknowledged comes back, snapshots and the log
//! agree, and damage is cut off at the end or refused in the middle, naming file and offset.

use std::io::ErrorKind;
use std::time::Duration;

use super::*;
use crate::broker::Origin;
use crate::store::Fsync;

/// Closes the live broker's log and opens the directory again. The live broker's leases are
/// ended first, as a restart ends them, so the two must then hold exactly the same.
async fn restarts_to_the_same_queues(br: &Broker, wal: &Wal, fs: &SimFs) -> Broker {
    br.release_leases();
    assert!(durable(wal).await);
    let want = br.dump();
    wal.close();
    let (again, wal) = open(fs);
    let mut got = again.dump();
    // A delay's end is kept to the millisecond, in wall-clock time.
    for (w, g) in want.0.iter().zip(got.0.iter_mut()) {
        for (w, g) in w.delayed.iter().zip(g.delayed.iter_mut()) {
            let apart = w.0.max(g.0).duration_since(w.0.min(g.0));
            assert!(apart < Duration::from_millis(5), "{w:?} came back as {g:?}");
            g.0 = w.0;
        }
    }
    // (How many connections completed a task counts since start: not compared.)
    assert_eq!(
        got.0, want.0,
        "the restarted master holds what the live one did"
    );
    wal.close();
    again
}

#[tokio::test]
async fn a_restarted_master_has_every_change_it_made() {
    let fs = SimFs::new();
    let (br, wal) = open(&fs);
    let (producer, worker, collector) = (br.open_session(), br.open_session(), br.open_session());
    br.declare("tasks", Some(100)).unwrap();
    put(&br, producer, "tasks", &["a", "b", "c", "d", "e", "f"]);
    let big = vec![9u8; 300];
    ready(br.put(producer, "tasks", vec![big.into()], false).unwrap());
    let leased = get(&br, worker, "tasks", 4, LEASE);
    let outcome = taskmill_protocol::Outcome {
        task: leased[0].id,
        result: b("A"),
    };
    ready(
        br.complete(worker, "tasks", "results", vec![outcome], false, false)
            .unwrap(),
    );
    br.ack(worker, "tasks", &ids(&leased[1..2])).unwrap();
    br.nack(
        worker,
        "tasks",
        &ids(&leased[2..3]),
        Duration::from_secs(60),
        "later",
        false,
    )
    .unwrap();
    get(&br, collector, "tasks", 1, Delivery::Remove);
    // A task that uses up its two deliveries goes to its dead-letter queue.
    put(&br, producer, "doomed", &["x"]);
    get(&br, worker, "doomed", 1, LEASE);
    br.close_session(worker);
    get(&br, collector, "doomed", 1, LEASE);
    br.close_session(collector);
    let again = restarts_to_the_same_queues(&br, &wal, &fs).await;
    let dump = again.dump().0;
    assert_eq!(payloads(queue(&dump, "results")), ["A"]);
    assert_eq!(queue(&dump, "doomed.dead").unwrap().items.len(), 1);
    let tasks = queue(&dump, "tasks").unwrap();
    assert_eq!(
        tasks.delayed.len(),
        1,
        "the nacked task waits out its delay still"
    );
    assert_eq!(tasks.stats.capacity, Some(100));
}

#[tokio::test]
async fn snapshots_taken_under_traffic_and_the_log_after_them_rebuild_the_same_queues() {
    let fs = SimFs::new();
    let options = WalOptions {
        compact_bytes: 2048,
        segment_bytes: 1024,
        ..WalOptions::default()
    };
    let (br, wal) = open_with(&fs, options).unwrap();
    let (producer, worker) = (br.open_session(), br.open_session());
    for round in 0..40 {
        let items: Vec<String> = (0..8).map(|i| format!("{round}-{i}")).collect();
        let items: Vec<&str> = items.iter().map(String::as_str).collect();
        put(&br, producer, "tasks", &items);
        let leased = get(&br, worker, "tasks", 5, LEASE);
        let outcomes = leased
            .iter()
            .map(|t| taskmill_protocol::Outcome {
                task: t.id,
                result: t.payload.clone(),
            })
            .collect();
        ready(
            br.complete(worker, "tasks", "results", outcomes, false, false)
                .unwrap(),
        );
        let results = get(&br, worker, "results", 3, LEASE);
        br.ack(worker, "results", &ids(&results)).unwrap();
        assert!(durable(&wal).await);
    }
    // Snapshots came and went while the rounds ran; old segments went with them.
    assert!(snapshot_taken(&wal).await, "{:?}", wal.stats());
    let stats = wal.stats().unwrap();
    assert!(stats.log_files < 30, "old segments were removed: {stats:?}");
    restarts_to_the_same_queues(&br, &wal, &fs).await;
}

#[tokio::test]
async fn reply_routes_purges_and_deletes_survive_restarts_and_snapshots() {
    let fs = SimFs::new();
    let options = WalOptions {
        compact_bytes: 2048,
        segment_bytes: 1024,
        ..WalOptions::default()
    };
    let (br, wal) = open_with(&fs, options).unwrap();
    let s = br.open_session();
    for round in 0..30 {
        let queue = format!("q{}", round % 3);
        let items = vec![b(&format!("{round}-a")), b(&format!("{round}-b"))];
        let reply = format!("replies.{}", round % 2);
        ready(
            br.put_once(s, &queue, items, false, None, Some(&reply))
                .unwrap(),
        );
        let t = get(&br, s, &queue, 1, LEASE);
        br.ack(s, &queue, &ids(&t)).unwrap();
        if round % 7 == 3 {
            br.purge(&queue).unwrap();
        }
        if round % 10 == 9 {
            br.delete(&format!("q{}", (round + 1) % 3), false).unwrap();
        }
        assert!(durable(&wal).await);
    }
    assert!(snapshot_taken(&wal).await, "{:?}", wal.stats());
    let again = restarts_to_the_same_queues(&br, &wal, &fs).await;
    let dump = again.dump().0;
    assert!(dump.iter().any(|q| !q.routes.is_empty()), "{dump:?}");
}

#[tokio::test]
async fn a_log_of_format_1_is_still_read() {
    let fs = SimFs::new();
    let (br, wal) = open(&fs);
    put(&br, br.open_session(), "q", &["1"]);
    assert!(durable(&wal).await);
    wal.close();
    let segment = segments(&fs).pop().unwrap();
    let mut bytes = fs.contents(&segment).unwrap();
    bytes[8..12].copy_from_slice(&1u32.to_le_bytes());
    fs.set_contents(&segment, bytes);
    let (again, wal) = open(&fs);
    assert_eq!(payloads(queue(&again.dump().0, "q")), ["1"]);
    wal.close();
}

#[tokio::test]
async fn a_record_cut_short_at_the_end_is_cut_off_and_the_rest_kept() {
    let fs = SimFs::new();
    let (br, wal) = open(&fs);
    let s = br.open_session();
    put(&br, s, "q", &["1", "2", "3"]);
    assert!(durable(&wal).await);
    wal.close();
    let last = segments(&fs).pop().unwrap();
    let mut bytes = fs.contents(&last).unwrap();
    let whole = bytes.len();
    // A record's first bytes, the rest never written.
    bytes.extend_from_slice(&[40, 0, 0, 0, 1, 2]);
    fs.set_contents(&last, bytes);
    let (again, wal) = open(&fs);
    assert_eq!(payloads(queue(&again.dump().0, "q")), ["1", "2", "3"]);
    assert_eq!(
        fs.contents(&last).unwrap().len(),
        whole,
        "the torn record was cut off"
    );
    wal.close();
}

#[tokio::test]
async fn a_whole_record_of_an_unknown_kind_at_the_end_is_refused_not_cut() {
    let fs = SimFs::new();
    let (br, wal) = open(&fs);
    let s = br.open_session();
    put(&br, s, "q", &["1"]);
    assert!(durable(&wal).await);
    wal.close();
    let last = segments(&fs).pop().unwrap();
    let mut bytes = fs.contents(&last).unwrap();
    // As a newer master might write: framed and checksummed, of a kind this one lacks.
    let body = [200u8, 1, 2, 3];
    bytes.extend_from_slice(&(body.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
    bytes.extend_from_slice(&body);
    fs.set_contents(&last, bytes.clone());
    let err = open_with(&fs, WalOptions::default()).unwrap_err();
    assert!(err.to_string().contains("unknown kind"), "{err}");
    assert_eq!(fs.contents(&last).unwrap(), bytes, "nothing was cut");
}

#[tokio::test]
async fn damage_in_the_middle_stops_the_master_naming_file_and_offset_unless_repair_is_asked() {
    let fs = SimFs::new();
    let (br, wal) = open(&fs);
    let s = br.open_session();
    for i in 0..10 {
        put(&br, s, "q", &[&format!("item-{i}")]);
    }
    assert!(durable(&wal).await);
    wal.close();
    let segment = segments(&fs).pop().unwrap();
    let mut bytes = fs.contents(&segment).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    fs.set_contents(&segment, bytes);
    let err = open_with(&fs, WalOptions::default()).unwrap_err();
    let StoreError::Corrupt { file, offset, .. } = &err else {
        panic!("expected damage, got {err}");
    };
    assert_eq!(file, &segment);
    assert!(*offset <= middle as u64 && *offset > 24, "{err}");
    let message = err.to_string();
    assert!(
        message.contains("--repair") && message.contains(&format!("byte {offset}")),
        "{message}"
    );
    let repair = WalOptions {
        repair: true,
        ..WalOptions::default()
    };
    let (again, wal) = open_with(&fs, repair).unwrap();
    let kept = payloads(queue(&again.dump().0, "q"));
    assert!(
        !kept.is_empty() && kept.len() < 10,
        "what came before the damage: {kept:?}"
    );
    wal.close();
}

#[tokio::test]
async fn a_record_that_does_not_fit_is_refused_at_its_first_byte_and_repair_cuts_it() {
    let fs = SimFs::new();
    let (br, wal) = open(&fs);
    let s = br.open_session();
    put(&br, s, "q", &["1"]);
    assert!(durable(&wal).await);
    let segment = segments(&fs).pop().unwrap();
    let misfit = fs.contents(&segment).unwrap().len() as u64;
    // Well formed, but for a task that was never leased.
    wal.record(&crate::broker::journal::Change::Acked {
        queue: 0,
        task: 12_345,
    });
    put(&br, s, "q", &["2"]);
    assert!(durable(&wal).await);
    wal.close();
    let err = open_with(&fs, WalOptions::default()).unwrap_err();
    let StoreError::Corrupt { file, offset, .. } = &err else {
        panic!("expected damage, got {err}");
    };
    assert_eq!((file, *offset), (&segment, misfit), "{err}");
    assert!(err.to_string().contains("task 12345"), "{err}");
    let repair = WalOptions {
        repair: true,
        ..WalOptions::default()
    };
    let (again, wal) = open_with(&fs, repair).unwrap();
    assert_eq!(payloads(queue(&again.dump().0, "q")), ["1"]);
    assert_eq!(fs.contents(&segment).unwrap().len() as u64, misfit);
    wal.close();
}

#[tokio::test]
async fn a_missing_segment_is_a_gap_that_stops_the_master() {
    let fs = SimFs::new();
    let options = WalOptions {
        segment_bytes: 256,
        ..WalOptions::default()
    };
    let (br, wal) = open_with(&fs, options).unwrap();
    let s = br.open_session();
    for i in 0..40 {
        put(&br, s, "q", &[&format!("item-{i}")]);
        assert!(durable(&wal).await);
    }
    wal.close();
    let all = segments(&fs);
    assert!(all.len() >= 3, "{all:?}");
    fs.lose(&all[1]);
    let err = open_with(&fs, WalOptions::default()).unwrap_err();
    assert!(err.to_string().contains("gap"), "{err}");
}

#[tokio::test]
async fn a_segment_whose_header_names_another_position_is_refused() {
    let fs = SimFs::new();
    let (br, wal) = open(&fs);
    put(&br, br.open_session(), "q", &["1"]);
    assert!(durable(&wal).await);
    wal.close();
    let segment = segments(&fs).pop().unwrap();
    let mut bytes = fs.contents(&segment).unwrap();
    bytes[16..24].copy_from_slice(&7u64.to_le_bytes());
    fs.set_contents(&segment, bytes);
    let err = open_with(&fs, WalOptions::default()).unwrap_err();
    assert!(
        err.to_string().contains("position 7 under the name of"),
        "{err}"
    );
}

#[tokio::test]
async fn a_second_master_cannot_use_the_same_directory() {
    let fs = SimFs::new();
    let (_br, wal) = open(&fs);
    let err = Wal::open(Arc::new(fs.clone()), DIR, WalOptions::default()).unwrap_err();
    assert!(matches!(err, StoreError::Locked(_)), "{err}");
    assert!(err.to_string().contains("another master"), "{err}");
    wal.close();
}

#[tokio::test]
async fn a_failed_fsync_stops_acknowledging_for_good() {
    let fs = SimFs::new();
    let (br, wal) = open(&fs);
    let s = br.open_session();
    put(&br, s, "q", &["1"]);
    assert!(durable(&wal).await);
    // The next sync fails: writing the next batch is one call, syncing it the next.
    fs.fail_call(fs.calls() + 2, ErrorKind::Other);
    put(&br, s, "q", &["2"]);
    assert!(
        !durable(&wal).await,
        "a failed fsync is never taken as durable"
    );
    put(&br, s, "q", &["3"]);
    assert!(!durable(&wal).await, "nor is anything after it");
    let failure = wal.durability().unwrap().borrow().failed.clone().unwrap();
    assert!(failure.contains("syncing"), "{failure}");
    wal.close();
}

#[tokio::test]
async fn a_full_disk_fails_the_log_and_a_spent_budget_refuses_new_puts_only() {
    let fs = SimFs::new();
    let (br, wal) = open(&fs);
    let s = br.open_session();
    put(&br, s, "q", &["1"]);
    assert!(durable(&wal).await);
    fs.set_capacity(fs.contents(&segments(&fs)[0]).unwrap().len() + 10);
    put(&br, s, "q", &["a payload too long for what is left"]);
    assert!(
        !durable(&wal).await,
        "a write refused for room fails the log"
    );
    wal.close();

    // A budget below what is used: new tasks are refused, settling goes on.
    let fs = SimFs::new();
    let budget = WalOptions {
        max_disk: Some(1),
        ..WalOptions::default()
    };
    let (br, wal) = open_with(&fs, budget).unwrap();
    assert!(!wal.has_room());
    let s = br.open_session();
    put(&br, s, "q", &["settled anyway"]);
    let leased = get(&br, s, "q", 1, LEASE);
    br.ack(s, "q", &ids(&leased)).unwrap();
    assert!(durable(&wal).await);
    wal.close();
}

#[tokio::test]
async fn after_a_restart_the_disk_for_settling_queued_tasks_is_still_kept() {
    let fs = SimFs::new();
    let (br, wal) = open(&fs);
    let s = br.open_session();
    let items: Vec<String> = (0..1000).map(|i| i.to_string()).collect();
    put(
        &br,
        s,
        "q",
        &items.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    assert!(durable(&wal).await);
    wal.close();
    let (_again, wal) = open(&fs);
    let used = wal.disk_bytes();
    wal.close();
    // Room for what is on disk, the next segment, a restart's new segment header, and half
    // of what settling 1000 tasks needs: too little.
    let limit = used + WalOptions::default().segment_bytes + 64 + 1000 * 32;
    let budget = WalOptions {
        max_disk: Some(limit),
        ..WalOptions::default()
    };
    let (_again, wal) = open_with(&fs, budget).unwrap();
    assert!(!wal.has_room(), "used {used}, limit {limit}");
    wal.close();
}

#[tokio::test]
async fn interval_fsync_acknowledges_after_the_write_and_syncs_soon_after() {
    let fs = SimFs::new();
    let every = WalOptions {
        fsync: Fsync::Every(Duration::from_millis(50)),
        ..WalOptions::default()
    };
    let (br, wal) = open_with(&fs, every).unwrap();
    let s = br.open_session();
    put(&br, s, "q", &["1"]);
    assert!(durable(&wal).await);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let crashed = fs.after_crash(1);
    wal.close();
    let (again, wal) = open(&crashed);
    assert_eq!(
        payloads(queue(&again.dump().0, "q")),
        ["1"],
        "synced within the interval"
    );
    wal.close();
}

#[tokio::test]
async fn interval_fsync_syncs_a_segment_before_leaving_it_for_size() {
    let fs = SimFs::new();
    let options = WalOptions {
        fsync: Fsync::Every(Duration::from_secs(3600)),
        segment_bytes: 256,
        ..WalOptions::default()
    };
    let (br, wal) = open_with(&fs, options).unwrap();
    let s = br.open_session();
    // Items in a segment that was left are durable, whatever the interval. (A new segment
    // may appear only after the put that filled the old one was acknowledged: one seen during
    // put `i` vouches for the items before it.)
    let mut safe = 0;
    for i in 0..40 {
        let before = segments(&fs).len();
        put(&br, s, "q", &[&format!("{i:03}")]);
        assert!(durable(&wal).await);
        if segments(&fs).len() > before {
            safe = i;
        }
    }
    assert!(safe >= 10, "segments were left: {safe}");
    for seed in 0..4 {
        let crashed = fs.after_crash(seed);
        let (again, wal) = open(&crashed);
        let got = payloads(queue(&again.dump().0, "q"));
        let want: Vec<String> = (0..got.len()).map(|i| format!("{i:03}")).collect();
        assert_eq!(got, want, "a prefix of what was put");
        assert!(
            got.len() >= safe,
            "{} of {safe} left in closed segments",
            got.len()
        );
        wal.close();
    }
    wal.close();
}

#[tokio::test]
async fn a_put_resent_after_a_restart_is_answered_not_repeated() {
    let fs = SimFs::new();
    let (br, wal) = open(&fs);
    let s = br.open_session();
    let origin = Some(Origin {
        producer: 77,
        seq: 3,
    });
    let items = vec![b("x"), b("y")];
    let first = ready(
        br.put_once(s, "q", items.clone(), false, origin, None)
            .unwrap(),
    );
    assert!(durable(&wal).await);
    let again = restarts_to_the_same_queues(&br, &wal, &fs).await;
    drop(again);
    let (again, wal) = open(&fs);
    let resent = ready(again.put_once(s, "q", items, false, origin, None).unwrap());
    assert_eq!((resent.first_id, resent.done()), (first.first_id, 2));
    assert_eq!(
        payloads(queue(&again.dump().0, "q")),
        ["x", "y"],
        "queued once"
    );
    wal.close();
}
