//! The collector's running account: each result checked against its input, once; and the
//! inputs themselves, a pure function of the job's seed.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};

use hdrhistogram::Histogram;
use taskmill_protocol::decode_payload;
use tracing::warn;

use crate::job::JobConfig;
use crate::payload::SquareResult;

/// The collector's running account.
pub(crate) struct Tally {
    seen_bits: Vec<u64>,
    pub seen: u64,
    pub verified: u64,
    /// Results for one of this job's tasks with the wrong square.
    pub wrong: u64,
    /// Results that are not this job's (see [`crate::JobReport::foreign`]): set aside.
    pub foreign: u64,
    pub duplicates: u64,
    pub redelivered: u64,
    /// Tasks that went to the dead-letter queue instead of coming back.
    pub dead: u64,
    /// Results seen again because their ack was lost with a connection: not duplicates.
    pub results_again: u64,
    /// Ids of results whose ack failed, which may therefore come again.
    pub maybe_again: HashSet<u64>,
    pub workers: HashSet<u32>,
    pub latency: Histogram<u64>,
}

impl Tally {
    pub fn new(tasks: u64) -> Self {
        Self {
            seen_bits: vec![0; tasks.div_ceil(64) as usize],
            seen: 0,
            verified: 0,
            wrong: 0,
            foreign: 0,
            duplicates: 0,
            redelivered: 0,
            dead: 0,
            results_again: 0,
            maybe_again: HashSet::new(),
            workers: HashSet::new(),
            latency: Histogram::new(3).expect("3 significant figures is valid"),
        }
    }

    /// Checks result `id` (its payload `payload`), collected `now_us` into the job.
    pub fn record(
        &mut self,
        job: &JobConfig,
        id: u64,
        payload: &[u8],
        now_us: u64,
        put_times: &[AtomicU64],
    ) {
        let result: SquareResult = match decode_payload(payload) {
            Ok(r) => r,
            Err(err) => {
                self.set_aside(format_args!("an unreadable result ({err})"));
                return;
            }
        };
        // Another job's result, on the same queues: its seq is past this job's tasks, or its
        // input is not the one this job put at that seq. It says nothing about this job's
        // tasks, so it neither counts as one of them nor marks one as seen.
        let input = input_for(job.seed, result.seq, job.min, job.max);
        if result.seq >= job.tasks || result.input != input {
            self.set_aside(format_args!(
                "a result for input {} at seq {}, which this job did not put",
                result.input, result.seq
            ));
            return;
        }
        let (word, bit) = ((result.seq / 64) as usize, result.seq % 64);
        if self.seen_bits[word] & (1 << bit) != 0 {
            if self.maybe_again.remove(&id) {
                self.results_again += 1;
            } else {
                warn!(
                    seq = result.seq,
                    result = id,
                    "a second result for one task"
                );
                self.duplicates += 1;
            }
            return;
        }
        self.seen_bits[word] |= 1 << bit;
        self.seen += 1;
        let expected = i128::from(input) * i128::from(input);
        self.workers.insert(result.worker);
        if result.square == expected {
            self.verified += 1;
            if result.attempt > 1 {
                self.redelivered += 1;
            }
        } else {
            warn!(seq = result.seq, input, got = %result.square, "wrong result");
            self.wrong += 1;
        }
        let put_at =
            put_times[(result.seq / u64::from(job.batch)) as usize].load(Ordering::Relaxed);
        let _ = self.latency.record(now_us.saturating_sub(put_at).max(1));
    }
}

impl Tally {
    /// Task `task` was dead-lettered (its reply says why): it will not come back.
    pub fn dead(&mut self, task: u64, reason: &str) {
        warn!(
            task,
            reason, "a task failed for good and went to the dead-letter queue"
        );
        self.dead += 1;
    }

    /// Counts a foreign result, warning about the first only: a job sharing the queues with
    /// another may see thousands.
    fn set_aside(&mut self, what: std::fmt::Arguments<'_>) {
        if self.foreign == 0 {
            warn!("{what}: not from this job; set aside, and further ones counted silently");
        }
        self.foreign += 1;
    }
}

/// The input for task `seq`: uniform in `min..=max`, a pure function of the seed.
pub fn input_for(seed: u64, seq: u64, min: i64, max: i64) -> i64 {
    let span = (i128::from(max) - i128::from(min) + 1) as u128;
    let r = u128::from(splitmix64(seed ^ splitmix64(seq)));
    (i128::from(min) + (r % span) as i128) as i64
}

pub(crate) fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use taskmill_protocol::encode_payload;

    #[test]
    fn inputs_are_deterministic_and_within_range() {
        for seq in 0..10_000 {
            let n = input_for(7, seq, -5, 5);
            assert!((-5..=5).contains(&n));
            assert_eq!(n, input_for(7, seq, -5, 5));
        }
        let full: Vec<i64> = (0..1000)
            .map(|s| input_for(1, s, i64::MIN, i64::MAX))
            .collect();
        assert!(full.iter().any(|&n| n < 0) && full.iter().any(|&n| n > 0));
        assert_eq!(input_for(3, 9, 42, 42), 42);
    }

    #[test]
    fn tally_counts_duplicates_wrong_answers_and_results_of_other_jobs() {
        let job = JobConfig {
            batch: 2,
            ..JobConfig::new(4)
        };
        let times: Vec<AtomicU64> = (0..2).map(|_| AtomicU64::new(0)).collect();
        let mut tally = Tally::new(4);
        let result = |seq: u64, delta: i128| {
            let input = input_for(job.seed, seq, job.min, job.max);
            encode_payload(&SquareResult {
                seq,
                input,
                square: i128::from(input) * i128::from(input) + delta,
                attempt: 2,
                worker: 5,
            })
            .unwrap()
        };
        tally.record(&job, 1, &result(0, 0), 10, &times);
        tally.record(&job, 2, &result(0, 0), 10, &times);
        tally.maybe_again.insert(1);
        tally.record(&job, 1, &result(0, 0), 10, &times);
        tally.record(&job, 3, &result(1, 1), 10, &times);
        tally.record(&job, 4, &result(9, 0), 10, &times);
        tally.record(&job, 5, b"junk", 10, &times);
        // Another job's result for seq 2: a different input. Not this job's, so seq 2 is
        // still to come, and its own result is verified.
        let input = input_for(job.seed, 2, job.min, job.max);
        let other = encode_payload(&SquareResult {
            seq: 2,
            input: input + 1,
            square: i128::from(input + 1) * i128::from(input + 1),
            attempt: 1,
            worker: 6,
        })
        .unwrap();
        tally.record(&job, 6, &other, 10, &times);
        tally.record(&job, 7, &result(2, 0), 10, &times);
        assert_eq!(
            (
                tally.seen,
                tally.verified,
                tally.duplicates,
                tally.wrong,
                tally.foreign,
                tally.redelivered
            ),
            (3, 2, 1, 1, 3, 2)
        );
        assert_eq!(
            tally.results_again, 1,
            "a result whose ack was lost is not a duplicate"
        );
    }
}
