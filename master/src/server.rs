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
use tracing::{info, warn};

use crate::config::ServerConfig;
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
    let ctx = Arc::new(Context {
        broker: Broker::new(config.limits),
        config,
        counters: Counters::default(),
    });
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
        match permits.clone().try_acquire_owned() {
            Ok(permit) => {
                tracker.spawn(session::run(
                    stream,
                    peer,
                    ctx.clone(),
                    phases.clone(),
                    permit,
                ));
            }
            Err(_) => {
                warn!(%peer, limit = ctx.config.max_connections, "connection limit reached; refusing");
                tracker.spawn(refuse(stream, Rejection::Overloaded));
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

/// Tells a connection we will not serve it, without waiting on it for long.
async fn refuse(stream: TcpStream, why: Rejection) {
    let mut conn =
        Connection::<_, ClientHandshake, MasterHandshake>::new(stream, HANDSHAKE_MAX_FRAME);
    let _ = tokio::time::timeout(Duration::from_secs(1), reject(&mut conn, why)).await;
}
