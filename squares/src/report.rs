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
    /// Results whose input or square was wrong.
    pub wrong: u64,
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
         missing:       {}\n\
         dead:          {} (tasks that failed for good: see tasks.dead)\n\
         duplicates:    {} (a second result for a task already verified)\n\
         again:         {} (results collected again after a lost ack)\n\
         redelivered:   {} (tasks completed on a later attempt)\n\
         workers seen:  {}\n\
         elapsed:       {:.3} s\n\
         throughput:    {:.0} tasks/s\n\
         latency:       p50 {} us, p99 {} us, max {} us (put request to result collected)\n\
         seed:          {}\n",
        r.ending,
        r.cause
            .as_ref()
            .map(|c| format!(" ({c})"))
            .unwrap_or_default(),
        r.tasks,
        r.verified,
        r.wrong,
        r.missing,
        r.dead,
        r.duplicates,
        r.results_again,
        r.redelivered,
        r.workers_seen,
        r.elapsed_secs,
        r.tasks_per_sec,
        r.latency_p50_us,
        r.latency_p99_us,
        r.latency_max_us,
        r.seed,
    )
}
