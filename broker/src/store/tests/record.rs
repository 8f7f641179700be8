//! The log's records: every kind of change round-trips; damage of every kind is caught.

use tokio::time::Instant;

use super::*;
use crate::broker::Origin;
use crate::store::record::{decode, encode, RecordError};
use crate::store::{Change, LeaseTerms, Returned};

fn task(id: TaskId, attempt: u32, payload: &'static [u8]) -> Task {
    Task {
        id,
        attempt,
        payload: Bytes::from_static(payload),
        reply_to: Bytes::from_static(b"replies"),
    }
}

fn one_of_each<'a>(tasks: &'a [Task], later: Instant) -> Vec<Change<'a>> {
    vec![
        Change::Created {
            queue: 0,
            name: "tasks",
            capacity: Some(5),
        },
        Change::Declared {
            queue: 0,
            capacity: None,
        },
        Change::Put {
            queue: 0,
            id: 1,
            payload: b"p",
            origin: None,
        },
        Change::Put {
            queue: 0,
            id: 2,
            payload: b"",
            origin: Some(Origin {
                producer: u64::MAX,
                seq: 9,
            }),
        },
        Change::Completed {
            queue: 0,
            task: 1,
            target: 1,
            id: 3,
            payload: b"result",
        },
        Change::Taken {
            queue: 0,
            tasks,
            lease: Some(LeaseTerms {
                session: 4,
                deadline: later,
                length_ms: 30_000,
            }),
        },
        Change::Taken {
            queue: 0,
            tasks,
            lease: None,
        },
        Change::Untaken {
            queue: 0,
            task: &tasks[0],
            leased: false,
        },
        Change::Acked { queue: 0, task: 2 },
        Change::Requeued {
            queue: 0,
            task: 2,
            why: Returned::Expired,
        },
        Change::Delayed {
            queue: 0,
            task: 2,
            until: later,
        },
        Change::Undelayed { queue: 0, task: 2 },
        Change::Buried {
            queue: 0,
            task: 2,
            why: Returned::Nacked,
            dead: 2,
            id: 5,
            letter: b"letter",
        },
        Change::Routed {
            queue: 0,
            first: 7,
            count: 3,
            reply: b"replies",
        },
        Change::Purged { queue: 0 },
        Change::Deleted { queue: 1 },
    ]
}

/// Equal as the log keeps them: a lease keeps its holder and length (its deadline is made
/// afresh when read back), a delay its end to the millisecond, a taken task its id and count.
fn same_in_log(wrote: &Change<'_>, read: &Change<'_>) -> bool {
    match (wrote, read) {
        (
            Change::Taken {
                queue,
                tasks,
                lease,
            },
            Change::Taken {
                queue: q,
                tasks: t,
                lease: l,
            },
        ) => {
            let key = |ts: &[Task]| ts.iter().map(|t| (t.id, t.attempt)).collect::<Vec<_>>();
            let terms = |l: &Option<LeaseTerms>| l.map(|l| (l.session, l.length_ms));
            queue == q && key(tasks) == key(t) && terms(lease) == terms(l)
        }
        (
            Change::Delayed { queue, task, until },
            Change::Delayed {
                queue: q,
                task: t,
                until: u,
            },
        ) => {
            let apart = until.max(u).duration_since(*until.min(u));
            queue == q && task == t && apart < Duration::from_millis(5)
        }
        _ => wrote == read,
    }
}

#[test]
fn every_kind_of_change_reads_back_as_written() {
    let tasks = [task(1, 1, b"a"), task(2, 3, b"bb")];
    let later = Instant::now() + Duration::from_secs(60);
    let changes = one_of_each(&tasks, later);
    let mut log = Vec::new();
    for change in &changes {
        assert!(encode(change, &mut log), "{change:?} is written");
    }
    let log = Bytes::from(log);
    let mut at = 0;
    for change in &changes {
        let (record, used) = decode(&log.slice(at..)).unwrap();
        assert!(
            same_in_log(change, &record.change()),
            "{change:?} read back as {record:?}"
        );
        at += used;
    }
    assert_eq!(at, log.len());
    let touched = Change::Touched {
        queue: 0,
        task: 1,
        deadline: later,
        length_ms: 5,
    };
    assert!(!encode(&touched, &mut Vec::new()), "a touch is not kept");
}

#[test]
fn a_record_cut_short_a_flipped_bit_and_garbage_are_errors_not_changes() {
    let mut log = Vec::new();
    let put = Change::Put {
        queue: 3,
        id: 7,
        payload: b"payload",
        origin: None,
    };
    encode(&put, &mut log);
    for cut in 0..log.len() {
        let short = Bytes::copy_from_slice(&log[..cut]);
        assert!(
            matches!(decode(&short), Err(RecordError::Short { .. })),
            "cut at {cut}"
        );
    }
    for byte in 8..log.len() {
        let mut flipped = log.clone();
        flipped[byte] ^= 0x01;
        let flipped = Bytes::from(flipped);
        assert_eq!(
            decode(&flipped).unwrap_err(),
            RecordError::Checksum,
            "byte {byte}"
        );
    }
    // A well-framed body that is no record.
    let body = [99u8, 1, 2, 3];
    let mut garbage = (body.len() as u32).to_le_bytes().to_vec();
    garbage.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
    garbage.extend_from_slice(&body);
    assert!(matches!(
        decode(&Bytes::from(garbage)),
        Err(RecordError::Malformed(_))
    ));
    let mut huge = u32::MAX.to_le_bytes().to_vec();
    huge.extend_from_slice(&[0; 4]);
    assert!(matches!(
        decode(&Bytes::from(huge)),
        Err(RecordError::TooLong(_))
    ));
}
