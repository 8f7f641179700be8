//! What a run is: where the load goes, which scenario, and its bounds.

use std::time::Duration;

use serde::Serialize;
use taskmill::{AuthKey, ClientOptions};

/// Where to send the load.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: String,
    pub key: AuthKey,
    pub client: ClientOptions,
}

/// What to run. Every scenario also stops at its duration and count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Scenario {
    Squares,
    Produce,
    Consume,
    Connections,
    Latency,
}

/// Shape and bounds of a run.
#[derive(Debug, Clone)]
pub struct Plan {
    pub scenario: Scenario,
    /// Connections (workers for `squares`, idle connections for `connections`).
    pub connections: usize,
    /// Items per request.
    pub batch: u32,
    /// Requests for tasks each `squares` worker keeps in flight.
    pub prefetch: u32,
    /// Stop after this long.
    pub duration: Duration,
    /// Stop after this many items (tasks, puts, connections).
    pub count: u64,
    /// Open loop: this many items per second in all, spread over the connections.
    pub rate: Option<f64>,
    /// `produce` leaves its items queued instead of draining them at the end.
    pub keep: bool,
}

/// How many items and how long a run of `scenario` is bounded by, from the flags as given:
/// 10 s and 1,000,000 items unless said otherwise. A duration alone makes `produce`,
/// `latency` and `connections` run for all of it (otherwise `produce -d 10s` ended as soon as
/// its million items were in, in a fraction of a second); `squares` and `consume` still need
/// a count, the size of the job or of the pre-filled queue.
pub fn bounds(
    scenario: Scenario,
    count: Option<u64>,
    duration: Option<Duration>,
) -> (u64, Duration) {
    let timed = matches!(
        scenario,
        Scenario::Produce | Scenario::Latency | Scenario::Connections
    );
    let count = match (count, duration) {
        (Some(count), _) => count,
        (None, Some(_)) if timed => u64::MAX,
        (None, _) => 1_000_000,
    };
    (count, duration.unwrap_or(Duration::from_secs(10)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_duration_alone_bounds_the_timed_scenarios_and_counts_stay_for_the_others() {
        let ten = Duration::from_secs(10);
        let three = Duration::from_secs(3);
        let d = Some(three);
        for timed in [Scenario::Produce, Scenario::Latency, Scenario::Connections] {
            assert_eq!(bounds(timed, None, d), (u64::MAX, three));
            assert_eq!(bounds(timed, None, None), (1_000_000, ten));
            assert_eq!(bounds(timed, Some(5), d), (5, three));
        }
        for sized in [Scenario::Squares, Scenario::Consume] {
            assert_eq!(bounds(sized, None, d), (1_000_000, three));
            assert_eq!(bounds(sized, Some(7), None), (7, ten));
        }
    }
}
