//! Who is connected, for observers: each authenticated session's address, when it connected
//! and when it was last heard from. Written when a session opens and closes and on its
//! liveness tick, never per request; read by the HTTP port.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::broker::SessionId;

/// The open sessions.
#[derive(Debug)]
pub(crate) struct Peers {
    /// The origin of the times kept here (the master's start).
    origin: Instant,
    open: Mutex<BTreeMap<SessionId, Peer>>,
}

#[derive(Debug)]
struct Peer {
    addr: SocketAddr,
    connected: Instant,
    heard: Arc<AtomicU64>,
}

/// Where a session publishes when it was last heard from.
#[derive(Debug)]
pub(crate) struct Heard {
    origin: Instant,
    millis: Arc<AtomicU64>,
}

impl Heard {
    pub fn set(&self, at: Instant) {
        let ms = at.saturating_duration_since(self.origin).as_millis() as u64;
        self.millis.store(ms, Relaxed);
    }
}

/// One open session as an observer sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerView {
    pub session: SessionId,
    pub addr: SocketAddr,
    pub connected_for: Duration,
    /// Since it last sent anything, to within half a heartbeat interval.
    pub silent_for: Duration,
}

impl Peers {
    pub fn new(origin: Instant) -> Self {
        Self {
            origin,
            open: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<SessionId, Peer>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a session that has just authenticated.
    pub fn open(&self, session: SessionId, addr: SocketAddr) -> Heard {
        let heard = Heard {
            origin: self.origin,
            millis: Arc::default(),
        };
        let now = Instant::now();
        heard.set(now);
        let peer = Peer {
            addr,
            connected: now,
            heard: Arc::clone(&heard.millis),
        };
        self.lock().insert(session, peer);
        heard
    }

    pub fn close(&self, session: SessionId) {
        self.lock().remove(&session);
    }

    /// Every open session, oldest first.
    pub fn list(&self) -> Vec<PeerView> {
        let now = Instant::now();
        let since_origin = now.saturating_duration_since(self.origin);
        self.lock()
            .iter()
            .map(|(&session, p)| PeerView {
                session,
                addr: p.addr,
                connected_for: now.saturating_duration_since(p.connected),
                silent_for: since_origin
                    .saturating_sub(Duration::from_millis(p.heard.load(Relaxed))),
            })
            .collect()
    }
}
