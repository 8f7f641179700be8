//! The JSON the HTTP port serves: `/api/stats`, the same document as `taskmill-master stats
//! --json` (that command renders with [`stats_json`] too), and `/api/dashboard`, what the
//! dashboard page draws: queues with their rates, connected clients, dead letters with their
//! reasons, and the history for the charts.

use std::collections::BTreeMap;

use rustc_hash::FxHashMap;
use serde::Serialize;

use taskmill_protocol::{decode_payload, DeadLetter, DEAD_SUFFIX};

use super::history::{Rates, Sample};
use crate::broker::report::{QueueReport, SessionReport, REASONS};
use crate::broker::{Broker, SessionId};
use crate::net::peers::PeerView;

/// Dead letters the dashboard lists, newest first over all dead-letter queues.
const DEAD_SHOWN: usize = 20;

/// Dead-letter queues read for them.
const DEAD_QUEUES_READ: usize = 16;

/// What `/api/dashboard` returns.
#[derive(Debug, Serialize)]
pub struct Dashboard {
    pub version: &'static str,
    pub master: String,
    pub uptime_ms: u64,
    pub draining: bool,
    pub clients: u64,
    pub handshake_failures: u64,
    pub durable: bool,
    pub queues: Vec<QueueRow>,
    pub workers: Vec<WorkerRow>,
    pub dead_letters: Vec<DeadRow>,
    pub interval_ms: u64,
    pub history: Vec<Sample>,
}

#[derive(Debug, Serialize)]
pub struct QueueRow {
    pub name: String,
    pub depth: u64,
    pub capacity: Option<u64>,
    pub leased: u64,
    pub delayed: u64,
    pub waiting_getters: u64,
    pub waiting_putters: u64,
    /// Holds another queue's dead letters.
    pub dead_letter_queue: bool,
    pub dead_total: u64,
    /// Dead letters by why their last lease ended, since the master started.
    pub dead_by_reason: BTreeMap<&'static str, u64>,
    pub put_total: u64,
    pub settled_total: u64,
    #[serde(flatten)]
    pub rates: Rates,
}

#[derive(Debug, Serialize)]
pub struct WorkerRow {
    pub session: SessionId,
    pub addr: String,
    pub connected_s: f64,
    /// Since it last sent anything (a request or a heartbeat).
    pub silent_s: f64,
    pub leased: u64,
    pub settled: u64,
    /// Queues it holds or settled leases on.
    pub queues: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct DeadRow {
    /// The dead-letter queue it sits in.
    pub queue: String,
    pub from: String,
    pub task: u64,
    pub attempts: u32,
    pub reason: String,
    pub payload_bytes: usize,
}

/// The queue rows, with their rates from `rates`.
pub fn queue_rows(queues: &[QueueReport], rates: &BTreeMap<String, Rates>) -> Vec<QueueRow> {
    queues
        .iter()
        .map(|q| {
            let s = &q.stats;
            QueueRow {
                name: s.name.clone(),
                depth: s.len,
                capacity: s.capacity,
                leased: s.leased,
                delayed: s.delayed,
                waiting_getters: s.waiting_getters,
                waiting_putters: s.waiting_putters,
                dead_letter_queue: q.dead_letters,
                dead_total: s.dead_total,
                dead_by_reason: REASONS.iter().copied().zip(q.tally.dead).collect(),
                put_total: s.put_total,
                settled_total: s.settled_total,
                rates: rates.get(&s.name).copied().unwrap_or_default(),
            }
        })
        .collect()
}

/// One row per open session, with what it holds and settled.
pub fn worker_rows(
    peers: Vec<PeerView>,
    sessions: &FxHashMap<SessionId, SessionReport>,
) -> Vec<WorkerRow> {
    peers
        .into_iter()
        .map(|p| {
            let s = sessions.get(&p.session).cloned().unwrap_or_default();
            WorkerRow {
                session: p.session,
                addr: p.addr.to_string(),
                connected_s: p.connected_for.as_secs_f64(),
                silent_s: p.silent_for.as_secs_f64(),
                leased: s.leased,
                settled: s.settled,
                queues: s.queues,
            }
        })
        .collect()
}

/// The newest dead letters over every dead-letter queue, newest (highest id) first.
pub fn dead_rows(broker: &Broker, queues: &[QueueReport]) -> Vec<DeadRow> {
    let mut rows: Vec<(u64, DeadRow)> = Vec::new();
    // The newest dead-letter queues (highest rank) first, a bounded number of them: a master
    // with a thousand of them should not decode twenty thousand letters per page update.
    let dead = queues
        .iter()
        .rev()
        .filter(|q| q.dead_letters && q.stats.len > 0);
    for q in dead.take(DEAD_QUEUES_READ) {
        let name = &q.stats.name;
        let newest = broker.newest(name, DEAD_SHOWN).unwrap_or_default();
        for (id, payload) in newest {
            // A client may put anything into a `.dead` queue; show what decodes.
            let Ok(letter) = decode_payload::<DeadLetter>(&payload) else {
                continue;
            };
            let from = name.strip_suffix(DEAD_SUFFIX).unwrap_or(&letter.queue);
            let row = DeadRow {
                queue: name.clone(),
                from: from.to_owned(),
                task: letter.task,
                attempts: letter.attempts,
                reason: letter.reason,
                payload_bytes: letter.payload.len(),
            };
            rows.push((id, row));
        }
    }
    rows.sort_unstable_by_key(|(id, _)| std::cmp::Reverse(*id));
    rows.truncate(DEAD_SHOWN);
    rows.into_iter().map(|(_, row)| row).collect()
}
