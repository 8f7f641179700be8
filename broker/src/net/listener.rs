//! The accept loop every listener runs: the connection limit (a permit taken before anything
//! else), admission by a [`Guard`] (which on the taskmill port sheds an older handshake rather
//! than refuse), one task per connection under the master's tracker, and brief refusals for
//! connections that are not served. What a connection is served, and how
//! it is told no, is the [`Protocol`]'s; each listener has its own limits and guard, so a flood
//! on one port takes no slot of another's.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use taskmill_protocol::Rejection;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::guard::{Guard, Refusal, Shed, Ticket};
use crate::master::{Context, Handshake};

/// What admits a connection: its place under the connection limit, held while it is served,
/// and its handshake slot, to be dropped once it has authenticated.
pub(crate) struct Admitted {
    pub permit: OwnedSemaphorePermit,
    pub ticket: Ticket,
}

/// A protocol served on a listener.
pub(crate) trait Protocol: Send + Sync + 'static {
    /// Serves one admitted connection to its end.
    fn serve(
        self: Arc<Self>,
        ctx: Arc<Context>,
        stream: TcpStream,
        peer: SocketAddr,
        admitted: Admitted,
    ) -> impl Future<Output = ()> + Send;

    /// Tells a connection that will not be served why, if the protocol can say so before a
    /// handshake. Bounded by the caller.
    fn refuse(
        ctx: Arc<Context>,
        stream: TcpStream,
        why: Rejection,
    ) -> impl Future<Output = ()> + Send;
}

/// Refusals being written at once; past this a refused connection is just closed, so a flood
/// of connections cannot pile up refusal tasks.
const MAX_REFUSALS: usize = 64;

/// How long a refusal may take: the TLS handshake on a TLS port, writing the reason, then
/// draining what the peer sent, so that closing does not reset the connection before the peer
/// has read why.
const REFUSAL_TIME: Duration = Duration::from_secs(1);

/// One listener's limits and what it counts.
pub(crate) struct Admission<'a> {
    /// Connections served at once; more are refused as overloaded.
    pub max_connections: usize,
    pub guard: &'a Guard,
    pub counts: &'a AdmissionCounts,
}

/// Connections a listener accepted, and refused by why.
#[derive(Debug, Default)]
pub(crate) struct AdmissionCounts {
    pub accepted: AtomicU64,
    /// By [`REFUSALS`].
    pub refused: [AtomicU64; 3],
}

/// What each index of [`AdmissionCounts::refused`] counts: the connection limit, the limit on
/// connections still to authenticate (overall or from one address group), and groups throttled
/// for failing to authenticate. The last two refuse on the HTTP port only: the taskmill port
/// sheds an older handshake instead, and answers a throttled group's failures late.
pub(crate) const REFUSALS: [&str; 3] = ["connection_limit", "handshake_limit", "throttled"];

/// Accepts connections on `listener` for `protocol` until `shutdown` fires.
pub(crate) async fn run<P: Protocol>(
    ctx: &Arc<Context>,
    protocol: Arc<P>,
    listener: TcpListener,
    shutdown: &CancellationToken,
    admission: &Admission<'_>,
) {
    let permits = Arc::new(Semaphore::new(admission.max_connections));
    let refusals = Arc::new(Semaphore::new(MAX_REFUSALS));
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
                // Usually out of file descriptors: wait for sessions to end instead of
                // spinning. Not a reconnect, so not the clients' backoff policy.
                warn!(cause = %err, retry_in = ?backoff, "accept failed");
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let counts = admission.counts;
        counts.accepted.fetch_add(1, Ordering::Relaxed);
        let refused = |why: usize| counts.refused[why].fetch_add(1, Ordering::Relaxed);
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            refused(0);
            if ctx.log_limit.allow() {
                warn!(%peer, limit = admission.max_connections, "connection limit reached; refusing");
            }
            refuse::<P>(ctx, &refusals, stream, Rejection::Overloaded);
            continue;
        };
        match admission.guard.admit(peer.ip()) {
            Ok(admitted) => {
                if let Some(shed) = admitted.shed {
                    shed_for(ctx, admission.guard, peer, shed);
                }
                let admitted = Admitted {
                    permit,
                    ticket: admitted.ticket,
                };
                let serve = Arc::clone(&protocol).serve(ctx.clone(), stream, peer, admitted);
                ctx.tracker.spawn(serve);
            }
            Err(Refusal::Busy) => {
                refused(1);
                if ctx.log_limit.allow() {
                    warn!(%peer, "handshake limit reached; refusing");
                }
                refuse::<P>(ctx, &refusals, stream, Rejection::Overloaded);
            }
            Err(Refusal::Throttled) => {
                refused(2);
                debug!(%peer, "refusing an address with too many failed handshakes");
                refuse::<P>(ctx, &refusals, stream, Rejection::Throttled);
            }
        }
    }
}

/// Counts and logs (at most once a second) a handshake shed to admit `peer`, saying which
/// limit was full and whose handshake went.
fn shed_for(ctx: &Context, guard: &Guard, peer: SocketAddr, shed: Shed) {
    let (group, _) = guard.group(peer.ip());
    let (how, rule, victim) = match shed {
        Shed::Global(victim) => (Handshake::ShedGlobal, "--max-handshakes", victim),
        Shed::PerAddress(victim) => (Handshake::ShedPerAddress, "--max-handshakes-per-ip", victim),
    };
    ctx.counters.handshake(how);
    if ctx.log_limit.allow() {
        warn!(%peer, %group, shed = %victim, rule, "handshake slots full; shedding the oldest unauthenticated handshake");
    } else {
        debug!(%peer, %group, shed = %victim, rule, "handshake slots full; shedding the oldest unauthenticated handshake");
    }
}

/// Tells a connection why it is not served, within [`REFUSAL_TIME`], if a refusal slot is free.
fn refuse<P: Protocol>(
    ctx: &Arc<Context>,
    refusals: &Arc<Semaphore>,
    stream: TcpStream,
    why: Rejection,
) {
    let Ok(slot) = refusals.clone().try_acquire_owned() else {
        return;
    };
    let refusal = P::refuse(Arc::clone(ctx), stream, why);
    ctx.tracker.spawn(async move {
        let _ = tokio::time::timeout(REFUSAL_TIME, refusal).await;
        drop(slot);
    });
}
