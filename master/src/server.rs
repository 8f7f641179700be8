//! The accept loop: connection limit, one session task per connection, the lease timers, and
//! graceful shutdown in two phases: drain (no new connections, no new tasks accepted or leased,
//! completions still welcome) until every lease is settled or the grace period passes, then
//! stop.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use taskmill_protocol::codec::HANDSHAKE_MAX_FRAME;
use taskmill_protocol::handshake::reject;
use taskmill_protocol::{ClientHandshake, Connection, MasterHandshake, Rejection};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::config::ServerConfig;
use crate::guard::{Guard, Refusal};
use crate::queue::Broker;
use crate::session;

/// Process-wide connection counters, reported by `stats`.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub clients: AtomicU64,
    pub connections_total: AtomicU64,
    pub handshake_failures: AtomicU64,
}

/// The two shutdown phases every session watches.
#[derive(Debug, Clone, Default)]
pub(crate) struct Phases {
    /// Stop taking new work; keep settling what was handed out.
    pub drain: CancellationToken,
    /// Answer what is waiting and close.
    pub stop: CancellationToken,
}

/// What every session shares.
#[derive(Debug)]
pub(crate) struct Context {
    pub config: ServerConfig,
    pub broker: Broker,
    pub counters: Counters,
    pub guard: Guard,
    /// Rate limit for warnings that an attacker could trigger at will.
    pub log_limit: LogLimit,
}

/// Serves `listener` until `shutdown` fires; then drains for up to the grace period (see the
/// module doc), stops every session, and returns.
pub async fn run(
    listener: TcpListener,
    config: ServerConfig,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let addr = listener.local_addr()?;
    let grace = config.shutdown_grace;
    let permits = Arc::new(Semaphore::new(config.max_connections));
    let guard = Guard::new(config.guard);
    let ctx = Arc::new(Context {
        broker: Broker::new(config.limits),
        config,
        counters: Counters::default(),
        guard: guard.clone(),
        log_limit: LogLimit::default(),
    });
    let refusals = Arc::new(Semaphore::new(MAX_REFUSALS));
    let tracker = TaskTracker::new();
    let phases = Phases::default();
    let timers = tokio::spawn(ctx.broker.clone().run_timers(phases.stop.clone()));
    info!(%addr, "master listening");
    let mut backoff = Duration::from_millis(10);
    loop {
        let accepted = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(conn) => {
                backoff = Duration::from_millis(10);
                conn
            }
            Err(err) => {
                // Usually out of file descriptors: wait for sessions to end instead of spinning.
                warn!(cause = %err, retry_in = ?backoff, "accept failed");
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        ctx.counters
            .connections_total
            .fetch_add(1, Ordering::Relaxed);
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            if ctx.log_limit.allow() {
                warn!(%peer, limit = ctx.config.max_connections, "connection limit reached; refusing");
            }
            refuse(&tracker, &refusals, stream, Rejection::Overloaded);
            continue;
        };
        match guard.admit(peer.ip()) {
            Ok(ticket) => {
                tracker.spawn(session::run(
                    stream,
                    peer,
                    ctx.clone(),
                    phases.clone(),
                    (permit, ticket),
                ));
            }
            Err(Refusal::Busy) => {
                if ctx.log_limit.allow() {
                    warn!(%peer, "handshake limit reached; refusing");
                }
                refuse(&tracker, &refusals, stream, Rejection::Overloaded);
            }
            Err(Refusal::Throttled) => {
                debug!(%peer, "refusing an address with too many failed handshakes");
                refuse(&tracker, &refusals, stream, Rejection::Throttled);
            }
        }
    }
    drop(listener);
    phases.drain.cancel();
    info!(
        clients = ctx.counters.clients.load(Ordering::Relaxed),
        leased = ctx.broker.leased_total(),
        ?grace,
        "draining: no new connections or tasks; waiting for leased tasks to be completed"
    );
    let drained = tokio::time::timeout(grace, async {
        while ctx.broker.leased_total() > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    if drained.is_err() {
        warn!(
            leased = ctx.broker.leased_total(),
            "grace period over with tasks still leased; they are lost with the master"
        );
    }
    phases.stop.cancel();
    tracker.close();
    // Sessions bound their own finish by the grace period; the extra second covers the close.
    if tokio::time::timeout(grace + Duration::from_secs(1), tracker.wait())
        .await
        .is_err()
    {
        warn!("some connections did not finish within the grace period; dropping them");
    }
    let _ = timers.await;
    info!("master stopped");
    Ok(())
}

/// Refusals being written at once; past this a refused connection is just closed, so a flood
/// of connections cannot pile up refusal tasks.
const MAX_REFUSALS: usize = 64;

/// How long a refusal may take: write the reason, then drain what the peer sent, so that
/// closing does not reset the connection before the peer has read why.
const REFUSAL_TIME: Duration = Duration::from_secs(1);

/// Tells a connection why it is not served, within [`REFUSAL_TIME`], if a refusal slot is free.
fn refuse(tracker: &TaskTracker, refusals: &Arc<Semaphore>, stream: TcpStream, why: Rejection) {
    let Ok(slot) = refusals.clone().try_acquire_owned() else {
        return;
    };
    tracker.spawn(async move {
        let mut conn =
            Connection::<_, ClientHandshake, MasterHandshake>::new(stream, HANDSHAKE_MAX_FRAME);
        let _ = tokio::time::timeout(REFUSAL_TIME, async {
            reject(&mut conn, why).await;
            let _ = conn.shutdown().await;
            while let Ok(Some(_)) = conn.recv().await {}
        })
        .await;
        drop(slot);
    });
}

/// Allows a log line at most once per second, so a flood of refusals cannot flood the log.
#[derive(Debug, Default)]
pub(crate) struct LogLimit {
    last_ms: AtomicU64,
}

impl LogLimit {
    pub fn allow(&self) -> bool {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let last = self.last_ms.load(Ordering::Relaxed);
        now >= last + 1000
            && self
                .last_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}
