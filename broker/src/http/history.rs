//! The last minutes, for the dashboard's charts and rates: once a second, while the HTTP port
//! is open, the queues' totals are read (one lock per queue, as a stats request takes) and
//! turned into rates and latency percentiles for that second. Nothing is counted on the hot
//! path for it; a master without `--http` keeps no history.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::broker::report::{Histogram, QueueReport};

/// How often a sample is taken.
pub const INTERVAL: Duration = Duration::from_secs(1);

/// Samples kept: ten minutes.
const KEPT: usize = 600;

/// Samples a queue's rates are averaged over, so a rate does not flicker with batching.
const RATE_WINDOW: usize = 5;

/// One second of the whole master (dead-letter queues left out: their puts are burials).
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub seq: u64,
    /// Milliseconds since the master started.
    pub t_ms: u64,
    pub put_per_s: f64,
    pub delivered_per_s: f64,
    pub completed_per_s: f64,
    /// Items queued and leased at the end of the second.
    pub depth: u64,
    pub leased: u64,
    /// Put-to-settle latency of the tasks sampled in this second, per queue (queues differ:
    /// a task queue's wait is not its results queue's), for the queues that settled any.
    pub latency: BTreeMap<String, Percentiles>,
}

/// Latency percentiles of one queue over one sample.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Percentiles {
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Sampled tasks they are read from.
    pub n: u64,
}

/// Queues whose latency one sample keeps (the busiest), so the history stays small.
const LATENCY_QUEUES: usize = 8;

/// A queue's totals at one reading.
#[derive(Debug, Clone, Default)]
struct Totals {
    put: u64,
    delivered: u64,
    settled: u64,
    latency: Histogram,
}

/// A queue's rates over the last few seconds.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Rates {
    pub put_per_s: f64,
    pub delivered_per_s: f64,
    pub settled_per_s: f64,
}

#[derive(Debug, Default)]
struct State {
    samples: VecDeque<Sample>,
    /// The last readings, newest last, each with when it was taken.
    recent: VecDeque<(Instant, BTreeMap<String, Totals>)>,
    next_seq: u64,
}

/// The history kept for one HTTP port.
#[derive(Debug, Default)]
pub struct History {
    state: Mutex<State>,
}

fn per_s(now: u64, then: u64, secs: f64) -> f64 {
    now.saturating_sub(then) as f64 / secs
}

impl History {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a reading of the queues taken at `at`, `t_ms` after the master started.
    pub fn record(&self, at: Instant, t_ms: u64, queues: &[QueueReport]) {
        let live = queues.iter().filter(|q| !q.dead_letters);
        let totals: BTreeMap<String, Totals> = live
            .clone()
            .map(|q| {
                let s = &q.stats;
                let t = Totals {
                    put: s.put_total,
                    delivered: s.delivered_total,
                    settled: s.settled_total,
                    latency: q.latency.clone(),
                };
                (s.name.clone(), t)
            })
            .collect();
        let mut state = self.lock();
        if let Some((then, before)) = state.recent.back() {
            let secs = at.saturating_duration_since(*then).as_secs_f64().max(1e-3);
            let sum = |f: fn(&Totals) -> u64| -> f64 {
                totals
                    .iter()
                    .map(|(name, now)| {
                        let then = before.get(name).map_or(0, f);
                        per_s(f(now), then, secs)
                    })
                    .sum()
            };
            let mut latency: Vec<(String, Histogram)> = totals
                .iter()
                .map(|(name, now)| match before.get(name) {
                    Some(then) => (name.clone(), now.latency.since(&then.latency)),
                    None => (name.clone(), now.latency.clone()),
                })
                .filter(|(_, h)| h.count > 0)
                .collect();
            latency.sort_by_key(|(_, h)| std::cmp::Reverse(h.count));
            latency.truncate(LATENCY_QUEUES);
            let ms = |h: &Histogram, q| h.quantile(q).map_or(0.0, |s| s * 1000.0);
            let sample = Sample {
                seq: state.next_seq,
                t_ms,
                put_per_s: sum(|t| t.put),
                delivered_per_s: sum(|t| t.delivered),
                completed_per_s: sum(|t| t.settled),
                depth: live.clone().map(|q| q.stats.len).sum(),
                leased: live.map(|q| q.stats.leased).sum(),
                latency: latency
                    .into_iter()
                    .map(|(name, h)| {
                        let p = Percentiles {
                            p50_ms: ms(&h, 0.5),
                            p99_ms: ms(&h, 0.99),
                            n: h.count,
                        };
                        (name, p)
                    })
                    .collect(),
            };
            state.next_seq += 1;
            if state.samples.len() == KEPT {
                state.samples.pop_front();
            }
            state.samples.push_back(sample);
        }
        if state.recent.len() > RATE_WINDOW {
            state.recent.pop_front();
        }
        state.recent.push_back((at, totals));
    }

    /// The samples after `since` (all kept ones for `None`).
    pub fn since(&self, since: Option<u64>) -> Vec<Sample> {
        let state = self.lock();
        let after = |s: &&Sample| since.is_none_or(|n| s.seq > n);
        state.samples.iter().filter(after).cloned().collect()
    }

    /// Each queue's rates over the last few seconds.
    pub fn rates(&self) -> BTreeMap<String, Rates> {
        let state = self.lock();
        let (Some((first, old)), Some((last, new))) = (state.recent.front(), state.recent.back())
        else {
            return BTreeMap::new();
        };
        let secs = last.saturating_duration_since(*first).as_secs_f64();
        if secs <= 0.0 {
            return BTreeMap::new();
        }
        new.iter()
            .map(|(name, now)| {
                let then = old.get(name).cloned().unwrap_or_default();
                let rates = Rates {
                    put_per_s: per_s(now.put, then.put, secs),
                    delivered_per_s: per_s(now.delivered, then.delivered, secs),
                    settled_per_s: per_s(now.settled, then.settled, secs),
                };
                (name.clone(), rates)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use taskmill_protocol::QueueStats;

    fn queue(name: &str, put: u64) -> QueueReport {
        QueueReport {
            stats: QueueStats {
                name: name.into(),
                len: 0,
                capacity: None,
                leased: 0,
                delayed: 0,
                waiting_getters: 0,
                waiting_putters: 0,
                put_total: put,
                delivered_total: 0,
                settled_total: 0,
                requeued_total: 0,
                expired_total: 0,
                dead_total: 0,
            },
            dead_letters: false,
            tally: Default::default(),
            latency: Histogram::default(),
        }
    }

    #[test]
    fn samples_hold_per_second_rates_and_queues_their_recent_rate() {
        let h = History::default();
        let t0 = Instant::now();
        h.record(t0, 0, &[queue("tasks", 0)]);
        assert!(h.since(None).is_empty(), "one reading makes no rate");
        h.record(t0 + Duration::from_secs(2), 2000, &[queue("tasks", 100)]);
        let samples = h.since(None);
        assert_eq!(samples.len(), 1);
        assert!((samples[0].put_per_s - 50.0).abs() < 1e-9);
        assert!(samples[0].latency.is_empty(), "no task was timed");
        assert!(h.since(Some(samples[0].seq)).is_empty());
        assert!((h.rates()["tasks"].put_per_s - 50.0).abs() < 1e-9);
    }
}
