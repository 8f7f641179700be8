//! `/metrics`: the master's counters in the OpenMetrics text format (which Prometheus reads),
//! encoded by the official `prometheus-client` crate. Every value is read at scrape time from
//! counters the master keeps anyway: a scrape costs one lock per queue, a task costs nothing
//! more for being scraped.
//!
//! Names follow Prometheus conventions: a `taskmill_` prefix, base units (`_seconds`,
//! `_bytes`), `_total` on counters, per-queue series labelled `queue`, breakdowns labelled by
//! `reason` or `outcome`.

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use taskmill_protocol::StorageStats;

use crate::broker::report::{Histogram, QueueReport, LATENCY_BOUNDS, REASONS};
use crate::broker::MemoryUse;
use crate::master::HANDSHAKES;
use crate::net::listener::REFUSALS;

/// The content type of what [`render`] returns.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Everything a scrape reports, read before encoding starts.
#[derive(Debug, Clone)]
pub struct Scrape {
    pub version: &'static str,
    pub uptime_seconds: f64,
    pub clients: u64,
    pub accepted: u64,
    pub refused: [u64; 3],
    pub handshakes: [u64; 8],
    /// Failure replies held back (the address group in debt).
    pub failures_delayed: u64,
    /// Requests refused for want of the key's right (scoped keys).
    pub forbidden: u64,
    pub completing: u64,
    pub queues: Vec<QueueReport>,
    pub storage: Option<StorageStats>,
    pub memory: MemoryUse,
    pub http_accepted: u64,
    pub http_refused: [u64; 3],
    pub http_requests: Vec<(&'static str, u64)>,
    pub http_auth_failures: u64,
    /// The Python listener's, when it runs.
    pub python: Option<PythonScrape>,
}

/// The Python listener's counters.
#[derive(Debug, Clone)]
pub struct PythonScrape {
    pub open: u64,
    pub accepted: u64,
    pub refused: [u64; 3],
    pub handshakes: [u64; 5],
    pub requests: u64,
}

/// The text a scrape returns.
pub fn render(scrape: Scrape) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(scrape));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry)
        .expect("writing to a String cannot fail");
    out
}

type Labels = Vec<(&'static str, String)>;

/// Writes metric families: each a descriptor, then a value per label set.
struct Family<'e, 'w> {
    encoder: &'e mut DescriptorEncoder<'w>,
}

/// A value as the encoder wants it for a metric type.
#[derive(Clone, Copy)]
enum Value {
    Counter(u64),
    Gauge(f64),
}

impl EncodeMetric for Value {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        match *self {
            Value::Counter(v) => encoder.encode_counter::<NoLabelSet, _, u64>(&v, None),
            Value::Gauge(v) => encoder.encode_gauge(&v),
        }
    }

    fn metric_type(&self) -> MetricType {
        match self {
            Value::Counter(_) => MetricType::Counter,
            Value::Gauge(_) => MetricType::Gauge,
        }
    }
}

impl Family<'_, '_> {
    fn emit(
        &mut self,
        name: &str,
        help: &str,
        unit: Option<Unit>,
        kind: MetricType,
        rows: impl IntoIterator<Item = (Labels, Value)>,
    ) -> std::fmt::Result {
        let mut metric = self
            .encoder
            .encode_descriptor(name, help, unit.as_ref(), kind)?;
        let mut rows = rows.into_iter().peekable();
        // A metric without labels is one value, written without an empty `{}`.
        if let Some((labels, _)) = rows.peek() {
            if labels.is_empty() {
                let (_, value) = rows.next().expect("just peeked");
                return value.encode(metric);
            }
        }
        for (labels, value) in rows {
            value.encode(metric.encode_family(&labels)?)?;
        }
        Ok(())
    }

    fn counter(
        &mut self,
        name: &str,
        help: &str,
        rows: impl IntoIterator<Item = (Labels, u64)>,
    ) -> std::fmt::Result {
        let rows = rows.into_iter().map(|(l, v)| (l, Value::Counter(v)));
        self.emit(name, help, None, MetricType::Counter, rows)
    }

    fn gauge(
        &mut self,
        name: &str,
        help: &str,
        unit: Option<Unit>,
        rows: impl IntoIterator<Item = (Labels, f64)>,
    ) -> std::fmt::Result {
        let rows = rows.into_iter().map(|(l, v)| (l, Value::Gauge(v)));
        self.emit(name, help, unit, MetricType::Gauge, rows)
    }

    fn histograms<'h>(
        &mut self,
        name: &str,
        help: &str,
        rows: impl IntoIterator<Item = (Labels, &'h Histogram)>,
    ) -> std::fmt::Result {
        let unit = Unit::Seconds;
        let mut metric =
            self.encoder
                .encode_descriptor(name, help, Some(&unit), MetricType::Histogram)?;
        for (labels, h) in rows {
            let buckets: Vec<(f64, u64)> = LATENCY_BOUNDS
                .iter()
                .copied()
                .chain([f64::MAX])
                .zip(h.buckets)
                .collect();
            metric
                .encode_family(&labels)?
                .encode_histogram::<NoLabelSet>(h.sum_seconds, h.count, &buckets, None)?;
        }
        Ok(())
    }
}

fn none() -> Labels {
    Vec::new()
}

fn queue(name: &str) -> Labels {
    vec![("queue", name.to_owned())]
}

fn by<'a>(label: &'static str, names: &'a [&'static str], values: &'a [u64]) -> Vec<(Labels, u64)> {
    names
        .iter()
        .zip(values)
        .map(|(&name, &v)| (vec![(label, name.to_owned())], v))
        .collect()
}

impl prometheus_client::collector::Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let mut f = Family {
            encoder: &mut encoder,
        };
        let version = vec![("version", self.version.to_owned())];
        f.encoder
            .encode_descriptor(
                "taskmill_build",
                "The master's version.",
                None,
                MetricType::Info,
            )?
            .encode_info(&version)?;
        let uptime = self.uptime_seconds;
        f.gauge(
            "taskmill_uptime",
            "Time since the master started.",
            Some(Unit::Seconds),
            [(none(), uptime)],
        )?;
        self.connections(&mut f)?;
        self.queues(&mut f)?;
        self.memory(&mut f)?;
        self.storage(&mut f)?;
        self.http(&mut f)?;
        self.python(&mut f)
    }
}

impl Scrape {
    fn connections(&self, f: &mut Family) -> std::fmt::Result {
        f.gauge(
            "taskmill_connections",
            "Authenticated connections open now.",
            None,
            [(none(), self.clients as f64)],
        )?;
        f.counter(
            "taskmill_connections_accepted",
            "Connections accepted on the taskmill port, authenticated or not.",
            [(none(), self.accepted)],
        )?;
        f.counter(
            "taskmill_connections_refused",
            "Connections refused before their handshake, by reason.",
            by("reason", &REFUSALS, &self.refused),
        )?;
        f.counter("taskmill_handshakes", "Handshakes by outcome: authenticated, closed (left part way), timed_out, failed (wrong key, version or protocol), probe (left at once without sending a byte: port probes, health checks), silent (sent nothing within the first-byte bound), shed_global and shed_per_address (cut to make room for a newcomer when every handshake slot, or its address group's, was taken).", by("outcome", &HANDSHAKES, &self.handshakes))?;
        f.counter(
            "taskmill_handshake_failures_delayed",
            "Failed handshakes whose refusal was held back because their address group had spent its failure budget.",
            [(none(), self.failures_delayed)],
        )?;
        f.counter(
            "taskmill_forbidden_requests",
            "Requests refused with Forbidden: the session's scoped key lacks the right.",
            [(none(), self.forbidden)],
        )?;
        f.counter(
            "taskmill_completing_connections",
            "Connections that completed at least one task.",
            [(none(), self.completing)],
        )
    }

    fn queues(&self, f: &mut Family) -> std::fmt::Result {
        let qs = &self.queues;
        let gauge = |get: fn(&QueueReport) -> u64| {
            qs.iter()
                .map(move |q| (queue(&q.stats.name), get(q) as f64))
        };
        let counter =
            |get: fn(&QueueReport) -> u64| qs.iter().map(move |q| (queue(&q.stats.name), get(q)));
        f.gauge(
            "taskmill_queue_depth",
            "Items queued, waiting to be handed out.",
            None,
            gauge(|q| q.stats.len),
        )?;
        let bounded = qs
            .iter()
            .filter_map(|q| Some((queue(&q.stats.name), q.stats.capacity? as f64)));
        f.gauge(
            "taskmill_queue_capacity",
            "Items a queue holds before puts wait (absent: unbounded).",
            None,
            bounded,
        )?;
        f.gauge(
            "taskmill_queue_leased",
            "Items handed out under a lease and not yet settled.",
            None,
            gauge(|q| q.stats.leased),
        )?;
        f.gauge(
            "taskmill_queue_delayed",
            "Nacked items waiting out their delay.",
            None,
            gauge(|q| q.stats.delayed),
        )?;
        f.gauge(
            "taskmill_queue_waiting_getters",
            "Get requests waiting for items.",
            None,
            gauge(|q| q.stats.waiting_getters),
        )?;
        f.gauge(
            "taskmill_queue_waiting_putters",
            "Put and complete requests waiting for room.",
            None,
            gauge(|q| q.stats.waiting_putters),
        )?;
        f.counter(
            "taskmill_queue_puts",
            "Items put (results of completions included).",
            counter(|q| q.stats.put_total),
        )?;
        f.counter(
            "taskmill_queue_deliveries",
            "Items handed out (a redelivery counts again).",
            counter(|q| q.stats.delivered_total),
        )?;
        f.counter(
            "taskmill_queue_completions",
            "Leases settled by a completion (its result queued), since the master started.",
            counter(|q| q.tally.completed),
        )?;
        f.counter(
            "taskmill_queue_acks",
            "Leases settled by an ack, since the master started.",
            counter(|q| q.tally.acked),
        )?;
        let reasons = |get: fn(&QueueReport) -> [u64; 3]| {
            qs.iter().flat_map(move |q| {
                REASONS.iter().zip(get(q)).map(|(&why, n)| {
                    (
                        vec![("queue", q.stats.name.clone()), ("reason", why.to_owned())],
                        n,
                    )
                })
            })
        };
        f.counter("taskmill_queue_redeliveries", "Leases given back to their queue, by reason (closed, expired, nacked), since the master started.", reasons(|q| q.tally.requeued))?;
        f.counter("taskmill_queue_dead_letters", "Tasks moved to the dead-letter queue after their last attempt, by reason, since the master started.", reasons(|q| q.tally.dead))?;
        let latency = qs.iter().map(|q| (queue(&q.stats.name), &q.latency));
        f.histograms(
            "taskmill_task_latency",
            "Time from a task's put to its lease being settled, for one task in 64 (by id).",
            latency,
        )
    }

    fn memory(&self, f: &mut Family) -> std::fmt::Result {
        let one = |v: u64| [(none(), v as f64)];
        let m = self.memory;
        f.gauge(
            "taskmill_memory_held",
            "Memory budget charged for the tasks and results held: queued, leased, delayed, dead letters (payload plus 128 bytes each).",
            Some(Unit::Bytes),
            one(m.held),
        )?;
        f.gauge(
            "taskmill_memory_waiting",
            "Memory budget charged for requests waiting for room.",
            Some(Unit::Bytes),
            one(m.waiting),
        )?;
        if m.budget != u64::MAX {
            f.gauge(
                "taskmill_memory_limit",
                "Memory budget (--max-memory); past it new puts and results are refused.",
                Some(Unit::Bytes),
                one(m.budget),
            )?;
        }
        Ok(())
    }

    fn storage(&self, f: &mut Family) -> std::fmt::Result {
        let Some(s) = &self.storage else {
            return Ok(());
        };
        let one = |v: u64| [(none(), v as f64)];
        f.gauge(
            "taskmill_storage_disk",
            "Log and snapshot bytes on disk.",
            Some(Unit::Bytes),
            one(s.disk_bytes),
        )?;
        f.gauge(
            "taskmill_storage_disk_limit",
            "Disk budget (--max-disk); past it puts are refused.",
            Some(Unit::Bytes),
            one(s.disk_limit),
        )?;
        f.gauge(
            "taskmill_storage_log",
            "Bytes in log segments.",
            Some(Unit::Bytes),
            one(s.log_bytes),
        )?;
        f.gauge(
            "taskmill_storage_log_files",
            "Log segments on disk.",
            None,
            one(s.log_files),
        )?;
        f.gauge(
            "taskmill_storage_snapshot",
            "Size of the newest snapshot.",
            Some(Unit::Bytes),
            one(s.snapshot_bytes),
        )?;
        if let Some(age) = s.snapshot_age_ms {
            f.gauge(
                "taskmill_storage_snapshot_age",
                "Time since the newest snapshot was written.",
                Some(Unit::Seconds),
                [(none(), age as f64 / 1000.0)],
            )?;
        }
        f.counter(
            "taskmill_storage_records",
            "Records appended to the log.",
            [(none(), s.records_total)],
        )?;
        f.counter(
            "taskmill_storage_fsyncs",
            "fsyncs of the log (one covers every record since the last).",
            [(none(), s.fsyncs_total)],
        )?;
        f.gauge(
            "taskmill_storage_recovery",
            "Time the last start took to recover the queues.",
            Some(Unit::Seconds),
            [(none(), s.recovery_ms as f64 / 1000.0)],
        )
    }

    fn python(&self, f: &mut Family) -> std::fmt::Result {
        let Some(p) = &self.python else {
            return Ok(());
        };
        f.gauge(
            "taskmill_python_connections",
            "Authenticated connections open now on the Python listener (requests and method channels).",
            None,
            [(none(), p.open as f64)],
        )?;
        f.counter(
            "taskmill_python_connections_accepted",
            "Connections accepted on the Python listener, authenticated or not.",
            [(none(), p.accepted)],
        )?;
        f.counter(
            "taskmill_python_connections_refused",
            "Python listener connections refused before their handshake, by reason.",
            by("reason", &REFUSALS, &p.refused),
        )?;
        f.counter(
            "taskmill_python_handshakes",
            "Python listener handshakes by outcome (as taskmill_handshakes).",
            by("outcome", &HANDSHAKES, &p.handshakes),
        )?;
        f.counter(
            "taskmill_python_requests",
            "Requests answered on the Python listener: server requests and method calls.",
            [(none(), p.requests)],
        )
    }

    fn http(&self, f: &mut Family) -> std::fmt::Result {
        f.counter(
            "taskmill_http_connections_accepted",
            "Connections accepted on the HTTP port.",
            [(none(), self.http_accepted)],
        )?;
        f.counter(
            "taskmill_http_connections_refused",
            "HTTP connections refused, by reason.",
            by("reason", &REFUSALS, &self.http_refused),
        )?;
        let requests = self
            .http_requests
            .iter()
            .map(|&(path, n)| (vec![("path", path.to_owned())], n));
        f.counter(
            "taskmill_http_requests",
            "HTTP requests by route (other: anything unknown).",
            requests,
        )?;
        f.counter(
            "taskmill_http_auth_failures",
            "HTTP requests with wrong credentials.",
            [(none(), self.http_auth_failures)],
        )
    }
}
