//! A master's stats as people and scripts read them: the table and the JSON that
//! `taskmill-master stats`, `taskmill stats` and `taskmill inspect` print, kept in one place so
//! the three cannot drift apart (the JSON is `taskmill_protocol::json`'s, which the master's
//! `/api/stats` serves too).

use std::fmt::Write as _;

pub use taskmill_protocol::json::{queue_json, stats_json};
use taskmill_protocol::{QueueStats, Stats};

use crate::say;

/// Prints `stats`, fetched from `master` by a connection of this process's own, as a table or
/// (with `json`) as JSON on stdout.
pub fn print(master: &str, mut stats: Stats, json: bool) -> serde_json::Result<()> {
    // The master counts the asking connection too; a person asking "who is connected" means
    // the others.
    stats.clients = stats.clients.saturating_sub(1);
    if json {
        say(serde_json::to_string_pretty(&stats_json(master, &stats))?);
    } else {
        say(render_table(master, &stats).trim_end());
    }
    Ok(())
}

/// The table a person reads.
pub fn render_table(master: &str, stats: &Stats) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "master {master}: up {:.1}s, {} clients connected (not counting this one), {} connections since start, \
         {} failed handshakes, {} probes (connected and sent nothing), {} connections completed tasks",
        stats.uptime_ms as f64 / 1000.0,
        stats.clients,
        stats.connections_total,
        stats.handshake_failures,
        stats.probes,
        stats.completing_clients_total,
    );
    if stats.forbidden_total > 0 {
        let _ = writeln!(
            out,
            "{} requests refused as beyond their key's rights (Forbidden)",
            stats.forbidden_total
        );
    }
    let m = &stats.memory;
    let limit = m.limit_bytes.map_or_else(
        || "no limit".to_owned(),
        |l| format!("{l} bytes (--max-memory)"),
    );
    let _ = writeln!(
        out,
        "memory: {} bytes held by items, {} by waiting requests, of {limit}",
        m.held_bytes, m.waiting_bytes,
    );
    out.push_str(&queue_table(&stats.queues));
    if stats.queues.is_empty() {
        out.push_str("(no queues yet)\n");
    }
    match &stats.storage {
        None => out.push_str(
            "storage: memory only (no --data-dir): queues are lost when the master stops\n",
        ),
        Some(s) => {
            let fsync = s
                .fsync_interval_ms
                .map_or_else(|| "every reply".to_owned(), |ms| format!("every {ms} ms"));
            let snapshot = s.snapshot_age_ms.map_or_else(
                || "none yet".to_owned(),
                |ms| format!("{} bytes, {:.1}s old", s.snapshot_bytes, ms as f64 / 1000.0),
            );
            let _ = writeln!(
                out,
                "storage: {}: {} of {} bytes used; log {} bytes in {} files; snapshot {snapshot}; \
                 {} records, {} fsyncs ({:.1} records each, fsync {fsync}); recovered in {} ms",
                s.data_dir,
                s.disk_bytes,
                s.disk_limit,
                s.log_bytes,
                s.log_files,
                s.records_total,
                s.fsyncs_total,
                s.records_total as f64 / s.fsyncs_total.max(1) as f64,
                s.recovery_ms,
            );
        }
    }
    out
}

/// A header line, then one line per queue: size, capacity, leased, delayed, waiters, totals.
pub fn queue_table(queues: &[QueueStats]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<24} {:>10} {:>10} {:>8} {:>8} {:>8} {:>8} {:>12} {:>12} {:>12} {:>10} {:>8}",
        "QUEUE",
        "SIZE",
        "CAPACITY",
        "LEASED",
        "DELAYED",
        "GETTERS",
        "PUTTERS",
        "PUT",
        "DELIVERED",
        "SETTLED",
        "REQUEUED",
        "DEAD"
    );
    for q in queues {
        let capacity = q
            .capacity
            .map_or_else(|| "unbounded".to_owned(), |c| c.to_string());
        let _ = writeln!(
            out,
            "{:<24} {:>10} {:>10} {:>8} {:>8} {:>8} {:>8} {:>12} {:>12} {:>12} {:>10} {:>8}",
            q.name,
            q.len,
            capacity,
            q.leased,
            q.delayed,
            q.waiting_getters,
            q.waiting_putters,
            q.put_total,
            q.delivered_total,
            q.settled_total,
            q.requeued_total,
            q.dead_total
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Stats {
        Stats {
            uptime_ms: 1500,
            clients: 2,
            connections_total: 5,
            handshake_failures: 1,
            probes: 2,
            completing_clients_total: 1,
            storage: None,
            forbidden_total: 3,
            memory: taskmill_protocol::MemoryStats {
                held_bytes: 1 << 20,
                waiting_bytes: 0,
                limit_bytes: Some(1 << 30),
            },
            queues: vec![QueueStats {
                name: "tasks".into(),
                len: 3,
                capacity: None,
                leased: 1,
                delayed: 0,
                waiting_getters: 0,
                waiting_putters: 0,
                put_total: 4,
                delivered_total: 1,
                settled_total: 0,
                requeued_total: 2,
                expired_total: 1,
                dead_total: 1,
            }],
        }
    }

    #[test]
    fn table_and_json_show_every_queue_field() {
        let table = render_table("m:1", &sample());
        assert!(table.contains("2 clients connected (not counting this one)"));
        assert!(table
            .lines()
            .any(|l| l.starts_with("tasks") && l.contains("unbounded")));
        let json = stats_json("m:1", &sample());
        assert_eq!(json["queues"][0]["size"], 3);
        assert_eq!(json["queues"][0]["capacity"], serde_json::Value::Null);
        assert_eq!(json["handshake_failures"], 1);
        assert_eq!(json["forbidden_total"], 3);
        assert_eq!(json["memory"]["held_bytes"], 1 << 20);
        assert_eq!(json["memory"]["limit_bytes"], 1 << 30);
        assert_eq!(json["queues"][0]["dead_total"], 1);
    }
}
