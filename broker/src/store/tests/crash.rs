//! A power cut at every file-system call of a scripted run, each followed by recovery: what
//! was acknowledged is never lost, a result never stands without its task settled nor a
//! settled task without its result, nothing is queued twice, order and delivery counts hold,
//! and a task whose put named a reply queue still names it.
//!
//! A step counts as acknowledged once the log is durable past it, as a reply would wait for.
//! A step that was tried but not acknowledged may or may not have happened; the checks allow
//! both and nothing else.

use std::collections::{BTreeMap, BTreeSet};

use super::*;
use crate::broker::Origin;

/// What the run tried and what of it was acknowledged, by task number (task `n` is put as
/// `t{n}`; its result is `r{n}`).
#[derive(Debug, Default)]
struct Model {
    put: BTreeSet<u32>,
    /// Tasks some step may have settled or moved: they may be gone.
    may_be_gone: BTreeSet<u32>,
    /// Acknowledged completions, acks, removals and burials: certainly gone.
    gone: BTreeSet<u32>,
    /// Acknowledged completions: their result must be there unless it may have been taken.
    completed: BTreeSet<u32>,
    results_may_be_gone: BTreeSet<u32>,
    /// Deliveries acknowledged per task.
    delivered: BTreeMap<u32, u32>,
}

fn number(payload: &[u8]) -> u32 {
    std::str::from_utf8(&payload[1..]).unwrap().parse().unwrap()
}

fn names(range: std::ops::Range<u32>) -> Vec<String> {
    range.map(|n| format!("t{n}")).collect()
}

/// The scripted run; stops at the first step the log cannot acknowledge.
async fn run(br: &Broker, wal: &Wal, m: &mut Model) {
    let (producer, worker, collector) = (br.open_session(), br.open_session(), br.open_session());
    let mut next = 0u32;
    macro_rules! acked {
        () => {
            if !durable(wal).await {
                return;
            }
        };
    }
    for round in 0..3u64 {
        let batch = names(next..next + 6);
        let items = batch.iter().map(|n| b(n)).collect();
        let origin = Some(Origin {
            producer: 1,
            seq: round,
        });
        ready(
            br.put_once(producer, "tasks", items, false, origin, Some("replies"))
                .unwrap(),
        );
        acked!();
        m.put.extend(next..next + 6);
        next += 6;

        let leased = get(br, worker, "tasks", 4, LEASE);
        acked!();
        for t in &leased {
            *m.delivered.entry(number(&t.payload)).or_default() += 1;
        }
        let (done, rest) = leased.split_at(2.min(leased.len()));
        let outcomes = done
            .iter()
            .map(|t| taskmill_protocol::Outcome {
                task: t.id,
                result: b(&format!("r{}", number(&t.payload))),
            })
            .collect();
        m.may_be_gone
            .extend(done.iter().map(|t| number(&t.payload)));
        ready(
            br.complete(worker, "tasks", "results", outcomes, false, false)
                .unwrap(),
        );
        acked!();
        m.gone.extend(done.iter().map(|t| number(&t.payload)));
        m.completed.extend(done.iter().map(|t| number(&t.payload)));
        if let Some((acked, rest)) = rest.split_first() {
            m.may_be_gone.insert(number(&acked.payload));
            br.ack(worker, "tasks", &[acked.id]).unwrap();
            acked!();
            m.gone.insert(number(&acked.payload));
            br.nack(worker, "tasks", &ids(rest), Duration::ZERO, "again", false)
                .unwrap();
            acked!();
        }
        let taken = get(br, collector, "tasks", 1, Delivery::Remove);
        m.may_be_gone
            .extend(taken.iter().map(|t| number(&t.payload)));
        acked!();
        m.gone.extend(taken.iter().map(|t| number(&t.payload)));

        let results = get(br, collector, "results", 1, LEASE);
        m.results_may_be_gone
            .extend(results.iter().map(|r| number(&r.payload)));
        br.ack(collector, "results", &ids(&results)).unwrap();
        acked!();
        if round == 1 {
            // A snapshot in the middle of the run, and the log after it.
            wal.compact_soon();
            for _ in 0..200 {
                if wal.stats().unwrap().snapshot_age_ms.is_some() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
    // A task delivered twice and given back: dead-lettered.
    let doomed = names(next..next + 1);
    put(br, producer, "tasks", &[&doomed[0]]);
    acked!();
    m.put.insert(next);
    m.may_be_gone.insert(next);
    for _ in 0..2 {
        let s = br.open_session();
        let all = get(br, s, "tasks", 100, LEASE);
        m.may_be_gone.extend(all.iter().map(|t| number(&t.payload)));
        acked!();
        for t in &all {
            *m.delivered.entry(number(&t.payload)).or_default() += 1;
        }
        br.close_session(s);
        acked!();
    }
}

fn check(dump: &[QueueDump], m: &Model, at: u64) {
    let tasks = queue(dump, "tasks");
    let present: Vec<u32> = payloads(tasks)
        .iter()
        .map(|p| number(p.as_bytes()))
        .collect();
    let unique: BTreeSet<u32> = present.iter().copied().collect();
    // The rounds' tasks (not the doomed one, put plainly) keep their reply queue.
    if let Some(q) = tasks {
        let waiting = q.items.iter().map(|(id, _, p)| (*id, p));
        let waiting = waiting.chain(q.delayed.iter().map(|(_, id, _, p)| (*id, p)));
        for (id, payload) in waiting.filter(|(_, p)| number(p) < 18) {
            let routed = q
                .routes
                .iter()
                .any(|(first, r)| (*first..r.end).contains(&id));
            assert!(
                routed,
                "crash at call {at}: t{} lost its reply queue",
                number(payload)
            );
        }
    }
    assert_eq!(
        unique.len(),
        present.len(),
        "crash at call {at}: a task twice: {present:?}"
    );
    let results: Vec<u32> = payloads(queue(dump, "results"))
        .iter()
        .map(|p| number(p.as_bytes()))
        .collect();
    let results_unique: BTreeSet<u32> = results.iter().copied().collect();
    assert_eq!(
        results_unique.len(),
        results.len(),
        "crash at call {at}: a result twice"
    );
    let dead: BTreeSet<u32> = queue(dump, "tasks.dead").map_or_else(BTreeSet::new, |q| {
        q.items
            .iter()
            .map(|(_, _, letter)| {
                let letter: taskmill_protocol::DeadLetter =
                    taskmill_protocol::decode_payload(letter).unwrap();
                number(&letter.payload)
            })
            .collect()
    });
    for &n in &m.put {
        let here = unique.contains(&n) || dead.contains(&n);
        if !m.may_be_gone.contains(&n) {
            assert!(here, "crash at call {at}: acknowledged task t{n} lost");
        }
        if m.gone.contains(&n) {
            assert!(
                !unique.contains(&n),
                "crash at call {at}: settled task t{n} is back"
            );
        }
    }
    for &n in &results_unique {
        assert!(
            !unique.contains(&n),
            "crash at call {at}: r{n} stands beside its task t{n}"
        );
    }
    for &n in &m.completed {
        if !m.results_may_be_gone.contains(&n) {
            assert!(
                results_unique.contains(&n),
                "crash at call {at}: completed t{n} has no result"
            );
        }
    }
    // A task neither in its queue nor dead-lettered nor acknowledged-settled went only by a
    // step that may have happened: if that was a completion, its result is there.
    for &n in m.may_be_gone.difference(&m.gone) {
        let completed_maybe = !unique.contains(&n) && !dead.contains(&n);
        if completed_maybe && results_unique.contains(&n) {
            assert!(!unique.contains(&n));
        }
    }
    if let Some(q) = tasks {
        let ids: Vec<TaskId> = q.items.iter().map(|(id, _, _)| *id).collect();
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "crash at call {at}: order {ids:?}"
        );
        for (_, deliveries, payload) in &q.items {
            let n = number(payload);
            let acked = m.delivered.get(&n).copied().unwrap_or(0);
            assert!(
                *deliveries >= acked,
                "crash at call {at}: t{n} lost a delivery"
            );
        }
    }
}

#[tokio::test]
async fn a_crash_at_any_storage_call_loses_nothing_acknowledged() {
    // The whole run, to count its calls.
    let fs = SimFs::new();
    let (br, wal) = open(&fs);
    let mut whole = Model::default();
    run(&br, &wal, &mut whole).await;
    wal.close();
    let calls = fs.calls();
    assert!(calls > 50, "{calls} calls");
    let mut crashes = 0;
    for at in 1..=calls {
        let fs = SimFs::new();
        fs.crash_after(at);
        let mut m = Model::default();
        // Crashed while opening, nothing was acknowledged.
        if let Ok((br, wal)) = open_with(&fs, WalOptions::default()) {
            run(&br, &wal, &mut m).await;
            wal.close();
        }
        for seed in 0..2 {
            let after = fs.after_crash(at * 2 + seed);
            let (recovered, wal) = match open_with(&after, WalOptions::default()) {
                Ok(opened) => opened,
                Err(err) => panic!("crash at call {at}: recovery failed: {err}"),
            };
            check(&recovered.dump().0, &m, at);
            wal.close();
            crashes += 1;
        }
    }
    assert!(crashes >= 100, "{crashes} crashes");
}
