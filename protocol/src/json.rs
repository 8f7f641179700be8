//! [`Stats`] as JSON: the one document `/api/stats` serves and every `stats --json` prints, so
//! scripts read the same fields whichever they ask.

use serde_json::json;

use crate::message::{QueueStats, Stats};

/// A master's stats as `/api/stats` serves them and every `stats --json` prints them;
/// `master` is the address they describe.
pub fn stats_json(master: &str, stats: &Stats) -> serde_json::Value {
    json!({
        "master": master,
        "uptime_ms": stats.uptime_ms,
        "clients": stats.clients,
        "connections_total": stats.connections_total,
        "handshake_failures": stats.handshake_failures,
        "probes": stats.probes,
        "forbidden_total": stats.forbidden_total,
        "completing_clients_total": stats.completing_clients_total,
        "queues": stats.queues.iter().map(queue_json).collect::<Vec<_>>(),
        "storage": stats.storage.as_ref().map(|s| json!({
            "data_dir": s.data_dir,
            "disk_bytes": s.disk_bytes,
            "disk_limit": s.disk_limit,
            "log_bytes": s.log_bytes,
            "log_files": s.log_files,
            "snapshot_bytes": s.snapshot_bytes,
            "snapshot_age_ms": s.snapshot_age_ms,
            "records_total": s.records_total,
            "fsyncs_total": s.fsyncs_total,
            "recovery_ms": s.recovery_ms,
            "fsync_interval_ms": s.fsync_interval_ms,
        })),
        "memory": {
            "held_bytes": stats.memory.held_bytes,
            "waiting_bytes": stats.memory.waiting_bytes,
            "limit_bytes": stats.memory.limit_bytes,
        },
    })
}

/// One queue, for scripts (an element of [`stats_json`]'s `queues`).
pub fn queue_json(q: &QueueStats) -> serde_json::Value {
    json!({
        "name": q.name,
        "size": q.len,
        "capacity": q.capacity,
        "empty": q.is_empty(),
        "full": q.is_full(),
        "leased": q.leased,
        "delayed": q.delayed,
        "waiting_getters": q.waiting_getters,
        "waiting_putters": q.waiting_putters,
        "put_total": q.put_total,
        "delivered_total": q.delivered_total,
        "settled_total": q.settled_total,
        "requeued_total": q.requeued_total,
        "expired_total": q.expired_total,
        "dead_total": q.dead_total,
    })
}
