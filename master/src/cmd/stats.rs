//! `taskmill-master stats`: fetch a running master's state and print it as a table or JSON.

use std::fmt::Write as _;
use std::process::ExitCode;

use anyhow::Context as _;
use taskmill::{Client, ClientOptions, Stats};
use taskmill_broker::http::stats_json;
use taskmill_cli::say;

use crate::cli::StatsArgs;

pub async fn show(args: StatsArgs) -> anyhow::Result<ExitCode> {
    let connect = &args.connect;
    let key = connect.key.load()?;
    let options = ClientOptions {
        connect_timeout: args.timeout,
        request_timeout: args.timeout,
        tls: connect.tls_client()?,
    };
    let mut client = Client::connect_with(&connect.master, &key, &options).await?;
    let stats = client.stats().await.context("stats request failed")?;
    if args.json {
        say(serde_json::to_string_pretty(&stats_json(
            &connect.master,
            &stats,
        ))?);
    } else {
        say(render_table(&connect.master, &stats).trim_end());
    }
    Ok(ExitCode::SUCCESS)
}

/// The table a person reads.
pub fn render_table(master: &str, stats: &Stats) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "master {master}: up {:.1}s, {} clients connected, {} connections since start, \
         {} failed handshakes, {} connections completed tasks",
        stats.uptime_ms as f64 / 1000.0,
        stats.clients,
        stats.connections_total,
        stats.handshake_failures,
        stats.completing_clients_total,
    );
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
    for q in &stats.queues {
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

#[cfg(test)]
mod tests {
    use super::*;
    use taskmill::QueueStats;

    fn sample() -> Stats {
        Stats {
            uptime_ms: 1500,
            clients: 2,
            connections_total: 5,
            handshake_failures: 1,
            completing_clients_total: 1,
            storage: None,
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
        assert!(table.contains("2 clients connected"));
        assert!(table
            .lines()
            .any(|l| l.starts_with("tasks") && l.contains("unbounded")));
        let json = stats_json("m:1", &sample());
        assert_eq!(json["queues"][0]["size"], 3);
        assert_eq!(json["queues"][0]["capacity"], serde_json::Value::Null);
        assert_eq!(json["handshake_failures"], 1);
        assert_eq!(json["queues"][0]["dead_total"], 1);
    }
}
