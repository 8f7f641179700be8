//! The configuration a master runs on. Binaries build it from flags and check their ranges;
//! embedders and tests build it in code.

use std::time::Duration;

use taskmill_protocol::{AuthKey, TlsServer, DEFAULT_MAX_FRAME};

use crate::broker::QueueLimits;
use crate::net::guard::GuardLimits;
use crate::net::keys::Keyring;

/// Smallest frame cap worth running with: every reply but a huge `Stats` fits.
pub const MIN_MAX_FRAME: usize = 4096;

/// The default memory budget (`--max-memory`): a fixed figure rather than a share of the
/// machine's memory, so a master behaves the same on a laptop, a large host and in a container
/// (where the host's memory is not the container's). 1 GiB holds about eight million small
/// tasks, or a million of 1 KB, and fits the smallest usual container with room for
/// connections' buffers.
pub const DEFAULT_MAX_MEMORY: u64 = 1 << 30;

/// Most items (or outcomes, or task ids) one request may carry: bounds how long one request
/// holds a queue's lock, whatever the frame cap.
pub const MAX_ITEMS: usize = 65_536;

/// What a running master enforces.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The default key: every right, for clients that send no key id.
    pub key: AuthKey,
    /// Scoped keys, besides the default one ([`crate::Master::set_keys`] replaces them).
    pub keys: Keyring,
    /// Bound on the whole handshake; a silent or slow peer is dropped when it passes.
    pub handshake_timeout: Duration,
    /// Bound on the wait for a connection's first byte (at most `handshake_timeout`): honest
    /// clients speak at once, so a silent connection gives its slot back early.
    pub first_byte_timeout: Duration,
    /// Frame cap after authentication, both directions.
    pub max_frame: usize,
    /// Connections served at once; more get `Rejected(Overloaded)`.
    pub max_connections: usize,
    /// Waiting requests one connection may have.
    pub max_waiting: usize,
    /// Bytes one connection's waiting requests may hold together (each charged its items'
    /// payloads plus [`crate::broker::memory::ITEM_OVERHEAD`] each, from when it starts waiting
    /// until it ends); they also count against the memory budget.
    pub max_waiting_bytes: u64,
    /// A client that does not take its replies for this long is disconnected.
    pub write_timeout: Duration,
    /// Time given to in-flight work after a shutdown signal: the master drains (no new tasks
    /// taken or leased) until every lease is settled or this passes, then stops.
    pub shutdown_grace: Duration,
    /// A side that has sent nothing for this long sends a heartbeat; a client silent for two
    /// intervals while it holds leases or waits is presumed dead and disconnected.
    pub heartbeat_interval: Duration,
    pub limits: QueueLimits,
    /// Admission control before authentication.
    pub guard: GuardLimits,
    /// Serve TLS (the HMAC handshake then runs inside it).
    pub tls: Option<TlsServer>,
}

impl ServerConfig {
    /// Production defaults around `key`.
    pub fn new(key: AuthKey) -> Self {
        Self {
            key,
            keys: Keyring::default(),
            handshake_timeout: Duration::from_secs(5),
            first_byte_timeout: Duration::from_secs(1),
            max_frame: DEFAULT_MAX_FRAME,
            max_connections: 4096,
            max_waiting: 64,
            max_waiting_bytes: 4 * DEFAULT_MAX_FRAME as u64,
            write_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(5),
            heartbeat_interval: Duration::from_secs(5),
            limits: QueueLimits {
                default_capacity: Some(1_000_000),
                max_queues: 1024,
                lease_timeout: Duration::from_secs(30),
                max_attempts: 5,
                max_memory: DEFAULT_MAX_MEMORY,
            },
            guard: GuardLimits::new(256, 32, 60),
            tls: None,
        }
    }
}
