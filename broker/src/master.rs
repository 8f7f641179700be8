//! [`Master`]: the one handle on a running master that every listener shares: its queues, its
//! counters, its admission guard, its lifecycle (serve, drain, stop) and its stats snapshot.
//!
//! Listeners (the taskmill port, the HTTP port, a second protocol later) get a clone of the
//! shared `Context` and run their sessions under its [`TaskTracker`] and `Phases`, so one
//! shutdown drains and stops them all.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use taskmill_protocol::Stats;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::broker::Broker;
use crate::config::ServerConfig;
use crate::http::{self, HttpConfig};
use crate::net::guard::Guard;
use crate::net::keys::Keyring;
use crate::net::listener::{self, Admission, AdmissionCounts};
use crate::net::peers::Peers;
use crate::net::session::Taskmill;
use crate::store::{Durability, Store, StoreError};

/// Process-wide connection counters, reported by `stats` and `/metrics`.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub clients: AtomicU64,
    /// The taskmill port's connections, accepted and refused.
    pub admission: AdmissionCounts,
    /// Handshakes by how they ended, indexed by [`Handshake`].
    pub handshakes: [AtomicU64; 8],
    /// Failed handshakes whose refusal was held back because their address group is in debt.
    pub failures_delayed: AtomicU64,
    /// The Python listener's own (`--python-listen`).
    pub python: crate::compat::python::Counters,
    /// Requests refused because the session's key lacks the right.
    pub forbidden: AtomicU64,
}

/// How a handshake ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Handshake {
    Authenticated = 0,
    /// The peer left part way through the handshake.
    Closed = 1,
    TimedOut = 2,
    /// Wrong key, another protocol version, or not taskmill at all.
    Failed = 3,
    /// The peer left at once without sending a byte (port probes, TCP health checks): no
    /// handshake was tried, so not a failure.
    Probe = 4,
    /// The peer sent nothing within the first-byte bound, or left silent but not at once.
    Silent = 5,
    /// Shed for a newcomer when every handshake slot was taken.
    ShedGlobal = 6,
    /// Shed for a newcomer from its own address group, whose slots were all taken.
    ShedPerAddress = 7,
}

/// The label each index of [`Counters::handshakes`] stands for.
pub(crate) const HANDSHAKES: [&str; 8] = [
    "authenticated",
    "closed",
    "timed_out",
    "failed",
    "probe",
    "silent",
    "shed_global",
    "shed_per_address",
];

impl Counters {
    pub fn handshake(&self, how: Handshake) {
        self.handshakes[how as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Every handshake that did not authenticate, probes aside.
    pub fn handshake_failures(&self) -> u64 {
        let outcomes = self.handshakes.iter().map(|n| n.load(Ordering::Relaxed));
        let probes = self.handshakes[Handshake::Probe as usize].load(Ordering::Relaxed);
        let ok = self.handshakes[Handshake::Authenticated as usize].load(Ordering::Relaxed);
        outcomes.sum::<u64>() - probes - ok
    }
}

/// Failure replies held back at once.
const MAX_DELAYED_REPLIES: usize = 256;

/// The two shutdown phases every session watches.
#[derive(Debug, Clone, Default)]
pub(crate) struct Phases {
    /// Stop taking new work; keep settling what was handed out.
    pub drain: CancellationToken,
    /// Answer what is waiting and close.
    pub stop: CancellationToken,
}

impl Phases {
    /// Phases that end with these or, earlier, by [`Phases::end`]: one session's own.
    pub fn child(&self) -> Phases {
        Phases {
            drain: self.drain.child_token(),
            stop: self.stop.child_token(),
        }
    }

    /// Ends both phases now (for a child, only it).
    pub fn end(&self) {
        self.drain.cancel();
        self.stop.cancel();
    }
}

/// What every listener and session shares.
#[derive(Debug)]
pub(crate) struct Context {
    pub config: ServerConfig,
    pub broker: Broker,
    pub counters: Counters,
    pub guard: Guard,
    /// Rate limit for warnings that an attacker could trigger at will.
    pub log_limit: LogLimit,
    /// Failure replies being held back at once (see [`crate::net::guard`]); past this a failed
    /// handshake is closed without one, so delays cannot pile up connections.
    pub delayed_replies: Arc<tokio::sync::Semaphore>,
    /// The same for `Forbidden` refusals, so neither kind of warning hides the other.
    pub forbidden_log: LogLimit,
    pub phases: Phases,
    /// Every session and refusal task, so the stop can wait for them.
    pub tracker: TaskTracker,
    pub started: Instant,
    /// Where the queues' changes are kept; replies wait for what it has made durable.
    pub store: Arc<dyn Store>,
    /// The open sessions, for observers.
    pub peers: Peers,
    /// The taskmill port's address, once serving.
    pub listen_addr: OnceLock<SocketAddr>,
    /// The last `Stats` answer and when its reading of the queues began (see
    /// [`Context::cached_stats`]).
    pub stats_cache: Mutex<Option<(Instant, Arc<Stats>)>>,
    /// The Python listener's address, if it runs.
    pub python_addr: OnceLock<SocketAddr>,
    /// The scoped keys now valid; replaced whole on reload.
    pub keys: RwLock<Arc<Keyring>>,
}

/// The least time between two readings of the queues for `Stats`, and between two `Stats`
/// answers on one connection.
pub(crate) const STATS_FRESH: Duration = Duration::from_millis(100);

/// A master: its queues and everything its listeners share. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Master {
    ctx: Arc<Context>,
}

impl Master {
    /// A master with `config`, its queues restored from `store` (empty for
    /// [`crate::store::Memory`]), every change to them recorded there from now on.
    pub fn open(config: ServerConfig, store: Arc<dyn Store>) -> Result<Self, StoreError> {
        let broker = Broker::open(config.limits, Arc::clone(&store))?;
        let started = Instant::now();
        Ok(Self {
            ctx: Arc::new(Context {
                guard: Guard::new(config.guard.clone()),
                delayed_replies: Arc::new(tokio::sync::Semaphore::new(MAX_DELAYED_REPLIES)),
                keys: RwLock::new(Arc::new(config.keys.clone())),
                config,
                broker,
                counters: Counters::default(),
                log_limit: LogLimit::default(),
                forbidden_log: LogLimit::default(),
                phases: Phases::default(),
                tracker: TaskTracker::new(),
                started,
                store,
                peers: Peers::new(started),
                listen_addr: OnceLock::new(),
                stats_cache: Mutex::default(),
                python_addr: OnceLock::new(),
            }),
        })
    }

    /// The queues, for embedding the master in a program of one's own.
    pub fn broker(&self) -> &Broker {
        &self.ctx.broker
    }

    /// Serves `listener` until `shutdown` fires; then drains for up to the grace period (no new
    /// connections, no new tasks accepted or leased, completions still welcome) until every
    /// lease is settled, stops every session, and returns.
    ///
    /// If the durable log fails, the master stops at once (no drain: nothing more can be
    /// acknowledged) and returns the failure.
    pub async fn serve(self, listener: TcpListener, shutdown: CancellationToken) -> io::Result<()> {
        let ctx = &self.ctx;
        let timers = tokio::spawn(ctx.broker.clone().run_timers(ctx.phases.stop.clone()));
        let addr = listener.local_addr()?;
        let _ = ctx.listen_addr.set(addr);
        info!(%addr, "master listening");
        let stop_accepting = shutdown.child_token();
        let failure = tokio::spawn(storage_failure(
            ctx.store.durability(),
            stop_accepting.clone(),
        ));
        let admission = Admission {
            max_connections: ctx.config.max_connections,
            guard: &ctx.guard,
            counts: &ctx.counters.admission,
        };
        listener::run(
            ctx,
            Arc::new(Taskmill),
            listener,
            &stop_accepting,
            &admission,
        )
        .await;
        failure.abort();
        let failed = failure.await.ok().flatten();
        if failed.is_none() {
            self.drain().await;
        }
        ctx.phases.stop.cancel();
        ctx.tracker.close();
        let grace = ctx.config.shutdown_grace;
        // Sessions bound their own finish by the grace period; the extra second covers the close.
        if tokio::time::timeout(grace + Duration::from_secs(1), ctx.tracker.wait())
            .await
            .is_err()
        {
            warn!("some connections did not finish within the grace period; dropping them");
        }
        let _ = timers.await;
        ctx.store.close();
        // A failure during the drain or the close is as much a failure as one before.
        let failed = failed.or_else(|| {
            let durability = ctx.store.durability()?;
            let failed = durability.borrow().failed.clone();
            failed
        });
        info!("master stopped");
        match failed {
            Some(failure) => Err(io::Error::other(failure.to_string())),
            None => Ok(()),
        }
    }

    /// Serves the read-only HTTP port (metrics, JSON stats, health, the dashboard) on
    /// `listener`, from now until this master stops. Call before [`Master::serve`], on the
    /// runtime that will run it.
    pub fn serve_http(&self, listener: TcpListener, config: HttpConfig) {
        http::start(Arc::clone(&self.ctx), listener, config);
    }

    /// Serves Python's `multiprocessing.managers` protocol on `listener` (see
    /// [`crate::compat::python`]), from now until this master drains. Call before
    /// [`Master::serve`], on the runtime that will run it.
    pub fn serve_python(&self, listener: TcpListener, config: crate::compat::python::PythonConfig) {
        crate::compat::python::start(Arc::clone(&self.ctx), listener, config);
    }

    /// Tells every session to take no new work and waits, up to the grace period, for the
    /// leased tasks to be settled.
    async fn drain(&self) {
        let ctx = &self.ctx;
        let grace = ctx.config.shutdown_grace;
        ctx.phases.drain.cancel();
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
    }

    /// The master's state: every queue and the connection counters.
    pub fn stats(&self) -> Stats {
        self.ctx.stats()
    }

    /// Replaces the scoped keys (a reload of the keys file): new connections use `keys`;
    /// sessions already open keep the rights they authenticated with.
    pub fn set_keys(&self, keys: Keyring) {
        *self.ctx.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(keys);
    }
}

impl Context {
    pub fn python_listening(&self) -> bool {
        self.python_addr.get().is_some()
    }

    pub fn stats(&self) -> Stats {
        let (queues, completing) = self.broker.snapshot();
        self.stats_of(queues, completing)
    }

    /// The memory budget and what it is charged.
    pub fn memory_stats(&self) -> taskmill_protocol::MemoryStats {
        let usage = self.broker.memory().usage();
        taskmill_protocol::MemoryStats {
            held_bytes: usage.held,
            waiting_bytes: usage.waiting,
            limit_bytes: Some(usage.budget).filter(|&b| b != u64::MAX),
        }
    }

    /// [`Context::stats`] from a reading of the queues that began after this call did, so it
    /// shows everything done before the request; callers that ask while one is being read
    /// share it. [`Context::next_stats_reading`] paces the readings.
    pub fn cached_stats(&self) -> Arc<Stats> {
        let asked = Instant::now();
        // Read under the cache's lock, so sessions asking together read the queues once.
        let mut cache = self.stats_cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((began, stats)) = &*cache {
            if *began >= asked {
                return Arc::clone(stats);
            }
        }
        let began = Instant::now();
        let stats = Arc::new(self.stats());
        *cache = Some((began, Arc::clone(&stats)));
        stats
    }

    /// When the next reading of the queues for `Stats` may begin: [`STATS_FRESH`] after the
    /// last began, so a flood of `Stats` from many connections locks each queue at most ten
    /// times a second.
    pub fn next_stats_reading(&self) -> Instant {
        let cache = self.stats_cache.lock().unwrap_or_else(|p| p.into_inner());
        cache
            .as_ref()
            .map_or_else(Instant::now, |(began, _)| *began + STATS_FRESH)
    }

    /// The stats around queues read already.
    pub fn stats_of(&self, queues: Vec<taskmill_protocol::QueueStats>, completing: u64) -> Stats {
        let counters = &self.counters;
        // The Python listener's connections count with the main port's here; /metrics
        // tells them apart.
        let python = &counters.python;
        let python_handshakes = python.handshakes();
        Stats {
            uptime_ms: self.started.elapsed().as_millis() as u64,
            clients: counters.clients.load(Ordering::Relaxed) + python.open.load(Ordering::Relaxed),
            connections_total: counters.admission.accepted.load(Ordering::Relaxed)
                + python.admission.accepted.load(Ordering::Relaxed),
            handshake_failures: counters.handshake_failures()
                + python_handshakes[Handshake::Closed as usize..=Handshake::Failed as usize]
                    .iter()
                    .sum::<u64>(),
            probes: counters.handshakes[Handshake::Probe as usize].load(Ordering::Relaxed)
                + python_handshakes[Handshake::Probe as usize],
            completing_clients_total: completing,
            queues,
            storage: self.store.stats(),
            forbidden_total: counters.forbidden.load(Ordering::Relaxed),
            memory: self.memory_stats(),
        }
    }
}

/// Resolves with the log's failure, once it fails, having cancelled `stop`; never without a
/// durable log.
async fn storage_failure(
    durability: Option<watch::Receiver<Durability>>,
    stop: CancellationToken,
) -> Option<Arc<str>> {
    let mut durability = durability?;
    loop {
        if let Some(failure) = durability.borrow_and_update().failed.clone() {
            stop.cancel();
            return Some(failure);
        }
        if durability.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
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

#[cfg(test)]
mod tests {
    use taskmill_protocol::AuthKey;

    use super::*;
    use crate::store::Memory;

    #[test]
    fn stats_requests_share_a_reading_only_if_it_began_after_they_asked() {
        let key = AuthKey::new("master-test-key-0123").unwrap();
        let master = Master::open(ServerConfig::new(key), Arc::new(Memory)).unwrap();
        let ctx = &master.ctx;
        let first = ctx.cached_stats();
        assert!(
            ctx.next_stats_reading() > Instant::now(),
            "the next reading is paced"
        );
        // A reading that began before the request is never its answer: it would not show what
        // the client did just before asking.
        ctx.broker.declare("new", None).unwrap();
        let second = ctx.cached_stats();
        assert!(!Arc::ptr_eq(&first, &second));
        assert_eq!(second.queues.len(), 1);
        // One that began after it (as when another session read the queues while this one
        // waited for the lock) is shared.
        *ctx.stats_cache.lock().unwrap() =
            Some((Instant::now() + Duration::from_secs(1), Arc::clone(&first)));
        assert!(
            Arc::ptr_eq(&first, &ctx.cached_stats()),
            "read once for both"
        );
    }
}
