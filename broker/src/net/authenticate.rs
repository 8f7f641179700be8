//! A connection's way in: the handshake under its deadlines (a tight one for the first byte,
//! then the whole), shed if a newer one needs its slot, and what a handshake that does not
//! authenticate costs: its count, its charge to the address, its refusal, late if the address
//! is in debt (see [`super::guard`]).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use taskmill_protocol::auth::KeyId;
use taskmill_protocol::handshake::{self, Failed, HandshakeError, MasterConnection};
use taskmill_protocol::Stream;
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::guard::Ticket;
use super::keys::Grants;
use super::listener::Admitted;
use crate::master::{Context, Handshake};

/// Runs the handshake of an admitted connection: the authenticated connection and its place
/// under the connection limit, or `None` once a failure has been settled.
pub(super) async fn authenticate(
    ctx: &Context,
    stream: TcpStream,
    peer: SocketAddr,
    admitted: Admitted,
) -> Option<(MasterConnection<Stream>, Arc<Grants>, OwnedSemaphorePermit)> {
    let Admitted { permit, ticket } = admitted;
    let phases = &ctx.phases;
    taskmill_protocol::tune_socket(&stream);
    let config = &ctx.config;
    let started = Instant::now();
    let first_byte_timeout = config.first_byte_timeout.min(config.handshake_timeout);
    // One deadline covers the TLS handshake and ours; a tighter one the first byte.
    let handshake = tokio::time::timeout(config.handshake_timeout, async {
        match tokio::time::timeout(first_byte_timeout, first_byte(&stream)).await {
            Err(_) => return Err(Early::Silent),
            Ok(false) => return Err(Early::Left),
            Ok(true) => {}
        }
        let stream = match &config.tls {
            Some(tls) => tls.accept(stream).await.map_err(Early::Tls)?,
            None if starts_tls(&stream).await => {
                refuse_tls(stream).await;
                return Err(Early::TlsOnPlainPort);
            }
            None => Stream::Plain(stream),
        };
        // A plain hello is made with the authkey, which may do anything; a scoped one with a
        // named key, which may do what the keys file grants it.
        let keys = |id: Option<&KeyId>| match id {
            None => vec![(config.key.clone(), Arc::new(Grants::all()))],
            Some(id) => ctx
                .keys
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .lookup(id),
        };
        handshake::accept_scoped(stream, keys, config.max_frame, config.heartbeat_interval)
            .await
            .map_err(|failed| Early::Failed(Box::new(failed)))
    });
    let outcome = tokio::select! {
        outcome = handshake => outcome,
        () = ticket.shed() => {
            // Counted and logged by the accept loop, which shed it; charged, since it did not
            // authenticate.
            ticket.fail();
            debug!(%peer, "handshake shed to make room for a newer one");
            return None;
        }
        () = phases.drain.cancelled() => return None,
    };
    let early = match outcome {
        Ok(Ok((conn, grants))) => {
            // The handshake slot is for unauthenticated connections only.
            ticket.spare();
            return Some((conn, grants, permit));
        }
        Ok(Err(early)) => early,
        Err(_) => Early::TimedOut,
    };
    not_authenticated(ctx, peer, ticket, permit, started, early).await;
    None
}

/// A connection that closes this soon without sending a byte is a probe (a port scan, a TCP
/// health check), not a failed handshake: it is not charged to its address.
const PROBE_GRACE: Duration = Duration::from_millis(100);

/// How long a refusal owed to a failed handshake may take to write.
const REPLY_TIME: Duration = Duration::from_secs(1);

/// How a handshake ended short of a session.
enum Early {
    /// Left without a byte: a probe if at once, else silent.
    Left,
    /// Sent nothing within the first-byte bound.
    Silent,
    TimedOut,
    Tls(std::io::Error),
    /// A TLS client on this plain port, answered with a TLS alert.
    TlsOnPlainPort,
    /// Boxed: it holds the connection, and this enum is returned on every handshake.
    Failed(Box<Failed<Stream>>),
}

/// Settles a handshake that did not authenticate: counts it, charges it to its address group
/// (a probe aside), logs it, and sends the refusal it is owed, late if the group is in debt.
async fn not_authenticated(
    ctx: &Context,
    peer: SocketAddr,
    ticket: Ticket,
    permit: OwnedSemaphorePermit,
    started: Instant,
    early: Early,
) {
    let config = &ctx.config;
    let (how, cause, reply) = match early {
        Early::Left if started.elapsed() < PROBE_GRACE => {
            ticket.spare();
            ctx.counters.handshake(Handshake::Probe);
            debug!(%peer, "connection closed before sending anything");
            return;
        }
        Early::Left => (
            Handshake::Silent,
            "closed without sending anything".into(),
            None,
        ),
        Early::Silent => {
            let bound = config.first_byte_timeout.min(config.handshake_timeout);
            (
                Handshake::Silent,
                format!("sent nothing within {bound:?}"),
                None,
            )
        }
        Early::TimedOut => {
            let bound = config.handshake_timeout;
            (
                Handshake::TimedOut,
                format!("handshake timed out after {bound:?}"),
                None,
            )
        }
        Early::Tls(err) => (
            Handshake::Failed,
            format!("TLS handshake failed: {err}"),
            None,
        ),
        Early::TlsOnPlainPort => (
            Handshake::Failed,
            "a TLS ClientHello on this port without TLS (a client with --tls-ca, a master \
             without --tls-cert)"
                .into(),
            None,
        ),
        Early::Failed(failed) => {
            let how = match failed.error {
                HandshakeError::Closed => Handshake::Closed,
                _ => Handshake::Failed,
            };
            (how, failed.error.to_string(), Some(*failed))
        }
    };
    ctx.counters.handshake(how);
    let failure = ticket.fail();
    if failure.newly_throttled {
        let (group, _) = ctx.guard.group(peer.ip());
        warn!(
            %group,
            rule = "--auth-failures-per-minute",
            delay = ?failure.delay,
            "too many failed handshakes from this address group; answering its failures late"
        );
    }
    if matches!(how, Handshake::Failed | Handshake::TimedOut) && ctx.log_limit.allow() {
        warn!(%peer, %cause, "handshake failed");
    } else {
        debug!(%peer, %cause, "handshake failed");
    }
    let Some(reply) = reply.filter(Failed::owes_reply) else {
        return;
    };
    if !failure.delay.is_zero() {
        // The wait holds a delayed-reply slot instead of a connection slot; with none free the
        // failure is closed at once, unanswered.
        drop(permit);
        let Ok(_slot) = Arc::clone(&ctx.delayed_replies).try_acquire_owned() else {
            return;
        };
        ctx.counters
            .failures_delayed
            .fetch_add(1, Ordering::Relaxed);
        tokio::select! {
            () = tokio::time::sleep(failure.delay) => {}
            () = ctx.phases.drain.cancelled() => return,
        }
    }
    let _ = tokio::time::timeout(REPLY_TIME, reply.reply()).await;
}

/// Waits for the client's first byte without taking it: false if the connection ends, or
/// fails, before it sends one.
async fn first_byte(stream: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(stream.peek(&mut byte).await, Ok(n) if n > 0)
}

/// Whether the client's first byte opens a TLS handshake record. Never a taskmill frame: a
/// handshake frame's length fits in 512 bytes, so its first byte is 0.
async fn starts_tls(stream: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(stream.peek(&mut byte).await, Ok(1) if byte[0] == TLS_HANDSHAKE_RECORD)
}

const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Answers a TLS client on a plain port with a fatal TLS alert, which its TLS library reports
/// as such (a configuration error, not retried), rather than a bare close that would look like a
/// master restarting. Reads until the client closes (the handshake deadline bounds it), so no
/// unread ClientHello turns the close into a reset that could reach the client before the alert.
async fn refuse_tls(mut stream: TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // A TLS 1.2 record header (alert, 2 bytes) then level fatal (2), protocol_version (70).
    const ALERT: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 70];
    if stream.write_all(&ALERT).await.is_err() {
        return;
    }
    let _ = stream.shutdown().await;
    let mut sink = [0u8; 512];
    while let Ok(n) = stream.read(&mut sink).await {
        if n == 0 {
            break;
        }
    }
}
