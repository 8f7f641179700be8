//! The Python listener: CPython's `multiprocessing.managers` protocol on a port of its own, so
//! an unchanged script that `connect()`s a `BaseManager` and calls `get`/`put` on its
//! `queue.Queue` proxies works against this master's queues.
//!
//! It shares the main port's admission guard (handshake slots and the failure budget per
//! address, so an address throttled on one port is throttled on both) and connection cap
//! (the same number, counted per port). The handshake runs under the master's handshake
//! deadline with 256-byte frames; nothing is parsed before it passes. Items are kept as
//! standalone pickles, never resolved: see `taskmill_protocol::pickle`.
//!
//! # Layout
//! - this file: the configuration, the counters, the accept loop and each connection's
//!   handshake.
//! - `wire`: frames and the HMAC challenge of both dialects.
//! - `manager`: the server requests (`create`, `incref`, `accept_connection`, ...) and the
//!   method channel loop.
//! - `queue`: the `queue.Queue` methods with Python's argument binding and exceptions.

mod manager;
mod queue;
mod wire;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use taskmill_protocol::{AuthKey, Rejection};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info, warn};

use crate::master::{Context, Handshake};
use crate::net::listener::{self, Admission, AdmissionCounts, Admitted, Protocol};
use wire::HandshakeError;

/// When a Python `get`'s item counts as delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Delivery {
    /// Once the reply is written: an item whose reply could not be written goes back to the
    /// queue (CPython loses it).
    #[default]
    OnWrite,
    /// Once the same connection sends its next request (the tutorial worker's `put` of the
    /// result, or its next `get`): a worker killed while working gives its item back, which
    /// makes an unchanged worker at-least-once. The lease is renewed while the connection is
    /// open, so a connected worker that hangs holds its item until it disconnects.
    OnNextRequest,
}

/// The Python listener's settings.
#[derive(Debug, Clone)]
pub struct PythonConfig {
    /// The authkey Python clients use; `None`: the master's own.
    pub key: Option<AuthKey>,
    /// Refuse the HMAC-MD5 handshake of Python 3.11 and older clients.
    pub refuse_md5: bool,
    /// `(typeid, queue)`: what `register(typeid)` on the client side reaches here.
    pub names: Vec<(String, String)>,
    /// Largest request frame after authentication.
    pub max_frame: usize,
    pub delivery: Delivery,
}

impl PythonConfig {
    /// The tutorial's names, `get_task_queue` → `tasks` and `get_result_queue` → `results`,
    /// on the master's key.
    pub fn new() -> Self {
        Self {
            key: None,
            refuse_md5: false,
            names: vec![
                ("get_task_queue".into(), "tasks".into()),
                ("get_result_queue".into(), "results".into()),
            ],
            max_frame: 16 << 20,
            delivery: Delivery::OnWrite,
        }
    }
}

impl Default for PythonConfig {
    fn default() -> Self {
        Self::new()
    }
}

/// What the Python listener counts, for `/metrics`.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub admission: AdmissionCounts,
    /// By [`crate::master::HANDSHAKES`].
    pub handshakes: [AtomicU64; 5],
    /// Authenticated connections open now (requests and method channels).
    pub open: AtomicU64,
    /// Requests answered, server requests and method calls.
    pub requests: AtomicU64,
}

impl Counters {
    fn handshake(&self, how: Handshake) {
        self.handshakes[how as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// The counters in the order of [`crate::master::HANDSHAKES`].
    pub fn handshakes(&self) -> [u64; 5] {
        self.handshakes
            .each_ref()
            .map(|n| n.load(Ordering::Relaxed))
    }
}

/// The listener, shared by its connections.
pub(crate) struct Python {
    config: PythonConfig,
    manager: manager::Manager,
}

/// Serves `listener` until the master stops.
pub(crate) fn start(ctx: Arc<Context>, listener: TcpListener, config: PythonConfig) {
    if let Ok(addr) = listener.local_addr() {
        let _ = ctx.python_addr.set(addr);
        info!(%addr, refuse_md5 = config.refuse_md5, "python listening");
    }
    let python = Arc::new(Python {
        manager: manager::Manager::new(&config),
        config,
    });
    let tracker = ctx.tracker.clone();
    tracker.spawn(async move {
        // Like the main port, stop taking connections once the master drains.
        let stop = ctx.phases.drain.clone();
        let admission = Admission {
            max_connections: ctx.config.max_connections,
            guard: &ctx.guard,
            counts: &ctx.counters.python.admission,
        };
        listener::run(&ctx, python, listener, &stop, &admission).await;
    });
}

impl Protocol for Python {
    async fn serve(
        self: Arc<Self>,
        ctx: Arc<Context>,
        stream: TcpStream,
        peer: SocketAddr,
        admitted: Admitted,
    ) {
        let Admitted { permit, ticket } = admitted;
        taskmill_protocol::tune_socket(&stream);
        let mut stream = stream;
        let key = self.config.key.as_ref().unwrap_or(&ctx.config.key);
        let handshake = tokio::time::timeout(
            ctx.config.handshake_timeout,
            wire::accept(&mut stream, key.secret(), self.config.refuse_md5),
        );
        let outcome = tokio::select! {
            outcome = handshake => outcome,
            () = ticket.shed() => {
                // Shed for a newer handshake (counted by the accept loop): it did not
                // authenticate, so its reserved failure stays charged.
                ticket.fail();
                debug!(%peer, "python handshake shed to make room for a newer one");
                return;
            }
            () = ctx.phases.drain.cancelled() => return,
        };
        let counters = &ctx.counters.python;
        let failure = match outcome {
            Ok(Ok(())) => None,
            Ok(Err(HandshakeError::Probe)) => {
                ticket.spare();
                counters.handshake(Handshake::Probe);
                return;
            }
            Ok(Err(HandshakeError::Closed)) => {
                // Charged like the main port's handshakes that leave part way.
                ticket.fail();
                counters.handshake(Handshake::Closed);
                debug!(%peer, "python client closed before authenticating");
                return;
            }
            Ok(Err(err)) => Some((Handshake::Failed, err.to_string())),
            Err(_) => Some((
                Handshake::TimedOut,
                format!(
                    "handshake timed out after {:?}",
                    ctx.config.handshake_timeout
                ),
            )),
        };
        if let Some((how, cause)) = failure {
            counters.handshake(how);
            // The refusal (CPython's `#FAILURE`) went out within the handshake: on this port a
            // group in debt costs its failing peers no extra time, but its count still shows.
            if ticket.fail().newly_throttled {
                let (group, _) = ctx.guard.group(peer.ip());
                warn!(%group, rule = "--auth-failures-per-minute", "too many failed python handshakes from this address group");
            }
            if ctx.log_limit.allow() {
                warn!(%peer, %cause, "python handshake failed");
            } else {
                debug!(%peer, %cause, "python handshake failed");
            }
            return;
        }
        ticket.spare();
        counters.handshake(Handshake::Authenticated);
        counters.open.fetch_add(1, Ordering::Relaxed);
        self.manager.serve(&ctx, &self.config, stream, peer).await;
        counters.open.fetch_sub(1, Ordering::Relaxed);
        drop(permit);
    }

    /// A Python client cannot read a refusal: it is closed, which its script sees as a
    /// connection error.
    async fn refuse(_ctx: Arc<Context>, stream: TcpStream, _why: Rejection) {
        drop(stream);
    }
}

#[cfg(test)]
mod tests;
