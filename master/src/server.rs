//! The accept loop: connection limit, one session task per connection, graceful shutdown.

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

/// What every session shares.
#[derive(Debug)]
pub(crate) struct Context {
    pub config: ServerConfig,
    pub broker: Broker,
    pub counters: Counters,
}

/// Serves `listener` until `shutdown` fires, then tells clients, gives their in-flight requests
/// the configured grace period, and returns.
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
                    shutdown.clone(),
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
    info!(
        clients = ctx.counters.clients.load(Ordering::Relaxed),
        ?grace,
        "shutting down: no new connections; finishing in-flight requests"
    );
    tracker.close();
    // Sessions bound their own drain by the grace period; the extra second covers the close.
    if tokio::time::timeout(grace + Duration::from_secs(1), tracker.wait())
        .await
        .is_err()
    {
        warn!("some connections did not finish within the grace period; dropping them");
    }
    info!("master stopped");
    Ok(())
}

/// Tells a connection we will not serve it, without waiting on it for long.
async fn refuse(stream: TcpStream, why: Rejection) {
    let mut conn =
        Connection::<_, ClientHandshake, MasterHandshake>::new(stream, HANDSHAKE_MAX_FRAME);
    let _ = tokio::time::timeout(Duration::from_secs(1), reject(&mut conn, why)).await;
}
