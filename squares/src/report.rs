//! The squares job's summary: how it ended, what was verified, and the text a person reads.

use serde::Serialize;

/// How the job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Ending {
    /// Every task came back.
    Complete,
    /// `timeout` passed.
    TimedOut,
    /// No result for `stall_timeout`.
    Stalled,
    /// Stopped by a signal.
    Interrupted,
}

/// The job's summary.
#[derive(Debug, Clone, Serialize)]
pub struct JobReport {
    pub ending: Ending,
    /// Why the job ended early, when it knows more than the ending says.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
    pub tasks: u64,
    /// Results with the right input and square, each task counted once.
    pub verified: u64,
    /// Results for this job's tasks with the wrong square. Fails the job.
    pub wrong: u64,
    /// Results that are not this job's: unreadable, or for a task it never put (another
    /// job's, sharing the queues). Taken off the results queue and set aside; they do not
    /// fail the job, whose own tasks still need their results.
    pub foreign: u64,
    /// A second, different result for a task already seen: the master let a task be done
    /// twice (or the producer put it twice). Fails the job.
    pub duplicates: u64,
    /// Results collected again because their ack was lost with a connection (not
    /// duplicates: the same result).
    pub results_again: u64,
    /// Verified results that came from a redelivery (the task's first holder lost it).
    pub redelivered: u64,
    /// Tasks dead-lettered instead of completed (their dead letters say why).
    pub dead: u64,
    /// Tasks with no result.
    pub missing: u64,
    /// Distinct workers whose results were verified or counted during the job.
    pub workers_seen: u64,
    pub seed: u64,
    pub elapsed_secs: f64,
    pub tasks_per_sec: f64,
    /// Time from a task's put request to its result being collected, in microseconds.
    pub latency_p50_us: u64,
    pub latency_p90_us: u64,
    pub latency_p99_us: u64,
    pub latency_p999_us: u64,
    pub latency_max_us: u64,
}

impl JobReport {
    /// Every input came back exactly once with the right square.
    pub fn success(&self) -> bool {
        self.ending == Ending::Complete
            && self.verified == self.tasks
            && self.wrong == 0
            && self.duplicates == 0
            && self.dead == 0
    }
}

/// The summary a person reads.
pub fn render(r: &JobReport) -> String {
    let verdict = if r.success() {
        "OK: every input came back exactly once with the right square"
    } else {
        "FAILED"
    };
    format!(
        "{verdict}\n\
         ending:        {:?}{}\n\
         tasks:         {}\n\
         verified:      {}\n\
         wrong:         {}\n\
         foreign:       {} (results not from this job: another job's on the same queues, or unreadable; set aside)\n\
         missing:       {}\n\
         dead:          {} (tasks that failed for good: see tasks.dead)\n\
         duplicates:    {} (a second result for a task already verified)\n\
         again:         {} (results collected again after a lost ack)\n\
         redelivered:   {} (tasks completed on a later attempt)\n\
         workers seen:  {}\n\
         elapsed:       {:.3} s\n\
         throughput:    {:.0} tasks/s\n\
         latency:       p50 {}, p99 {}, max {} (put request to result collected)\n\
         seed:          {}\n",
        r.ending,
        r.cause
            .as_ref()
            .map(|c| format!(" ({c})"))
            .unwrap_or_default(),
        r.tasks,
        r.verified,
        r.wrong,
        r.foreign,
        r.missing,
        r.dead,
        r.duplicates,
        r.results_again,
        r.redelivered,
        r.workers_seen,
        r.elapsed_secs,
        r.tasks_per_sec,
        micros(r.latency_p50_us),
        micros(r.latency_p99_us),
        micros(r.latency_max_us),
        r.seed,
    )
}

/// A time in microseconds as a person reads it, to three significant figures: `412 µs`,
/// `3.10 ms`, `9.94 s`.
pub fn micros(us: u64) -> String {
    fn three_figures(value: f64, unit: &str) -> String {
        match value {
            v if v < 10.0 => format!("{v:.2} {unit}"),
            v if v < 100.0 => format!("{v:.1} {unit}"),
            v => format!("{v:.0} {unit}"),
        }
    }
    match us {
        0..=999 => format!("{us} µs"),
        1_000..=999_999 => three_figures(us as f64 / 1e3, "ms"),
        _ => three_figures(us as f64 / 1e6, "s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_read_in_the_unit_that_fits() {
        for (us, text) in [
            (0, "0 µs"),
            (412, "412 µs"),
            (999, "999 µs"),
            (1_000, "1.00 ms"),
            (3_100, "3.10 ms"),
            (45_678, "45.7 ms"),
            (412_345, "412 ms"),
            (9_936_895, "9.94 s"),
            (125_000_000, "125 s"),
        ] {
            assert_eq!(micros(us), text);
        }
    }
}
