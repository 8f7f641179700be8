//! The read-only HTTP port (`--http ADDR`): `/metrics` for Prometheus, `/api/stats` (the
//! `stats --json` document), `/api/dashboard` and the dashboard page at `/`, and `/healthz`.
//! It changes nothing, and it has no authentication unless an [`HttpAuth`] is given (then
//! every route but `/healthz`, which tells only whether the master is serving, needs it).
//!
//! It runs on the shared accept loop with limits of its own, so HTTP clients never take a
//! slot of the taskmill port: a connection limit overall and per address (a guard of its own
//! whose failure budget throttles password guessing), headers bounded in size and in time
//! (hyper's buffer cap and header-read timeout, which also ends idle keep-alives), and a
//! lifetime per connection that bounds a client that stops reading. Requests are answered
//! from one snapshot each and never wait on anything but the queues' locks.
//!
//! # Layout
//! - this file: [`HttpConfig`], the listener and the routes.
//! - [`auth`]: `--http-auth-file` credentials, compared in constant time.
//! - [`metrics`]: the Prometheus encoding of the master's counters.
//! - `api`: the JSON documents.
//! - `history`: the last minutes, sampled once a second, for charts and rates.
//! - `dashboard.html`: the page, embedded in the binary.

mod api;
pub mod auth;
mod history;
pub mod metrics;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use rustc_hash::FxHashMap;
use sha2::{Digest, Sha256};
use taskmill_protocol::Rejection;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info, warn};

pub use auth::HttpAuth;
pub use taskmill_protocol::json::stats_json;

use self::auth::Verdict;
use self::history::History;
use crate::broker::report::{QueueReport, SessionReport};
use crate::broker::SessionId;
use crate::master::Context;
use crate::net::guard::{Guard, GuardLimits};
use crate::net::listener::{self, Admission, AdmissionCounts, Admitted, Protocol};

/// The HTTP port's limits and credentials.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Connections served at once; more get `503`.
    pub max_connections: usize,
    /// Connections from one address at once; more get `503`.
    pub max_connections_per_ip: u32,
    /// A request's headers must arrive within this; an idle keep-alive connection is closed
    /// after it too.
    pub header_timeout: Duration,
    /// Bytes of request head (line and headers) buffered; past it, `431` and close. hyper's
    /// floor, 8192, applies to anything smaller.
    pub max_header_bytes: usize,
    /// A connection is closed (gracefully, after the response in progress) this long after it
    /// was accepted, so that one that stops reading cannot hold its slot for ever.
    pub connection_lifetime: Duration,
    pub auth: Option<HttpAuth>,
    /// Wrong credentials one address may send per minute before its connections are refused
    /// with `429` until the budget refills.
    pub auth_failures_per_minute: u32,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            max_connections: 64,
            max_connections_per_ip: 16,
            header_timeout: Duration::from_secs(5),
            // hyper's floor; a browser's request heads are well under it.
            max_header_bytes: 8192,
            connection_lifetime: Duration::from_secs(60),
            auth: None,
            auth_failures_per_minute: 30,
        }
    }
}

/// The routes, as `taskmill_http_requests_total` labels them.
const ROUTES: [&str; 6] = [
    "/",
    "/metrics",
    "/api/stats",
    "/api/dashboard",
    "/healthz",
    "other",
];

/// The page, with a Content-Security-Policy that allows its own script and style and nothing
/// else (no other origin, no inline script but this one).
struct Page {
    html: Bytes,
    csp: HeaderValue,
}

/// One HTTP port's state.
struct Http {
    config: HttpConfig,
    guard: Guard,
    counts: AdmissionCounts,
    requests: [AtomicU64; ROUTES.len()],
    auth_failures: AtomicU64,
    history: History,
    page: Page,
    /// The last reading of the queues, reused by requests within [`FRESH`] of it.
    last: Mutex<Option<(Instant, Arc<Reading>)>>,
}

/// How long one reading of the queues answers requests: however fast clients ask, the queues'
/// locks are taken for them at most this often, so HTTP traffic cannot crowd the taskmill port
/// off its own queues.
const FRESH: Duration = Duration::from_millis(250);

/// The queues and sessions as one request (or several close together) reads them.
type Reading = (Vec<QueueReport>, FxHashMap<SessionId, SessionReport>);

/// Starts serving `listener` and sampling the history, both until the master stops.
pub(crate) fn start(ctx: Arc<Context>, listener: TcpListener, config: HttpConfig) {
    // The taskmill port's grouping and trusted networks, with the HTTP port's own counts.
    let guard = Guard::refusing(GuardLimits {
        max_handshakes: config.max_connections,
        max_handshakes_per_ip: config.max_connections_per_ip,
        auth_failures_per_minute: config.auth_failures_per_minute,
        ..ctx.config.guard.clone()
    });
    let http = Arc::new(Http {
        config,
        guard,
        counts: AdmissionCounts::default(),
        requests: Default::default(),
        auth_failures: AtomicU64::new(0),
        history: History::default(),
        page: page(),
        last: Mutex::new(None),
    });
    if let Ok(addr) = listener.local_addr() {
        let auth = if http.config.auth.is_some() {
            "required"
        } else {
            "none"
        };
        info!(%addr, auth, "http listening");
    }
    let tracker = ctx.tracker.clone();
    tracker.spawn(sample(Arc::clone(&ctx), Arc::clone(&http)));
    tracker.spawn(async move {
        let stop = ctx.phases.stop.clone();
        let admission = Admission {
            max_connections: http.config.max_connections,
            guard: &http.guard,
            counts: &http.counts,
        };
        listener::run(&ctx, Arc::clone(&http), listener, &stop, &admission).await;
    });
}

/// Records the queues once per [`history::INTERVAL`] until the master stops.
async fn sample(ctx: Arc<Context>, http: Arc<Http>) {
    let mut ticks = tokio::time::interval(history::INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = ctx.phases.stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let (queues, _) = ctx.broker.report();
        let now = Instant::now();
        let t_ms = now.saturating_duration_since(ctx.started).as_millis() as u64;
        http.history.record(now, t_ms, &queues);
    }
}

fn page() -> Page {
    let html = include_str!("dashboard.html");
    let hash = |open: &str, close: &str| {
        let start = html.find(open).expect("the page has the element") + open.len();
        let end = start + html[start..].find(close).expect("and its end");
        let digest = Sha256::digest(&html.as_bytes()[start..end]);
        format!(
            "'sha256-{}'",
            base64::engine::general_purpose::STANDARD.encode(digest)
        )
    };
    let csp = format!(
        "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; img-src 'self'; \
         base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        hash("<script>", "</script>"),
        hash("<style>", "</style>"),
    );
    Page {
        html: Bytes::from_static(html.as_bytes()),
        csp: HeaderValue::from_str(&csp).expect("a header-safe policy"),
    }
}

impl Protocol for Http {
    async fn serve(
        self: Arc<Self>,
        ctx: Arc<Context>,
        stream: TcpStream,
        peer: SocketAddr,
        admitted: Admitted,
    ) {
        // Both are held for the whole connection: HTTP authenticates each request, not the
        // connection, so its guard slot is the per-address connection count.
        let _admitted = admitted;
        let config = &self.config;
        let http = Arc::clone(&self);
        let handler = Arc::clone(&ctx);
        let service = hyper::service::service_fn(move |req| {
            let response = http.respond(&handler, peer, &req);
            std::future::ready(Ok::<_, Infallible>(response))
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(config.header_timeout)
            .max_buf_size(config.max_header_bytes.max(8192))
            .max_headers(64);
        let conn = builder.serve_connection(TokioIo::new(stream), service);
        let mut conn = std::pin::pin!(conn);
        let ended = tokio::select! {
            result = conn.as_mut() => Some(result),
            () = tokio::time::sleep(config.connection_lifetime) => None,
            () = ctx.phases.stop.cancelled() => None,
        };
        let result = match ended {
            Some(result) => result,
            None => {
                conn.as_mut().graceful_shutdown();
                match tokio::time::timeout(Duration::from_secs(1), conn).await {
                    Ok(result) => result,
                    Err(_) => return,
                }
            }
        };
        if let Err(err) = result {
            debug!(%peer, cause = %err, "http connection ended");
        }
    }

    async fn refuse(_ctx: Arc<Context>, mut stream: TcpStream, why: Rejection) {
        let status = match why {
            Rejection::Throttled => "429 Too Many Requests",
            _ => "503 Service Unavailable",
        };
        let body = "the master's HTTP port is busy or this address is throttled; retry later\n";
        let response = format!(
            "HTTP/1.1 {status}\r\ncontent-type: text/plain; charset=utf-8\r\nretry-after: 5\r\n\
             connection: close\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        if stream.write_all(response.as_bytes()).await.is_ok() {
            let _ = stream.shutdown().await;
            let mut sink = [0u8; 1024];
            while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
        }
    }
}

type Reply = Response<Full<Bytes>>;

fn reply(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Reply {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

fn text(status: StatusCode, body: &'static str) -> Reply {
    reply(status, "text/plain; charset=utf-8", body)
}

fn json(value: &impl serde::Serialize) -> Reply {
    match serde_json::to_vec(value) {
        Ok(body) => reply(StatusCode::OK, "application/json", body),
        Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "could not encode\n"),
    }
}

impl Http {
    fn respond(&self, ctx: &Context, peer: SocketAddr, req: &Request<Incoming>) -> Reply {
        let path = req.uri().path();
        let route = ROUTES[..5].iter().position(|&r| r == path).unwrap_or(5);
        self.requests[route].fetch_add(1, Relaxed);
        if req.method() != Method::GET && req.method() != Method::HEAD {
            let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "read-only: GET or HEAD\n");
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return r;
        }
        if path == "/healthz" {
            return health(ctx);
        }
        if path == "/favicon.ico" {
            // Browsers ask for it unprompted; an empty answer keeps their consoles clean.
            return reply(StatusCode::NO_CONTENT, "image/x-icon", Bytes::new());
        }
        if let Some(denied) = self.authorize(peer, req) {
            return denied;
        }
        match path {
            "/" => {
                let mut r = reply(
                    StatusCode::OK,
                    "text/html; charset=utf-8",
                    self.page.html.clone(),
                );
                let headers = r.headers_mut();
                headers.insert(header::CONTENT_SECURITY_POLICY, self.page.csp.clone());
                headers.insert(
                    header::REFERRER_POLICY,
                    HeaderValue::from_static("no-referrer"),
                );
                r
            }
            "/metrics" => {
                let body = metrics::render(self.scrape(ctx));
                reply(StatusCode::OK, metrics::CONTENT_TYPE, body)
            }
            "/api/stats" => {
                let queues = self.read(ctx).0.iter().map(|q| q.stats.clone()).collect();
                let stats = ctx.stats_of(queues, ctx.broker.completing_total());
                json(&stats_json(&master_addr(ctx), &stats))
            }
            "/api/dashboard" => json(&self.dashboard(ctx, since(req.uri().query()))),
            _ => text(
                StatusCode::NOT_FOUND,
                "not found: try /, /metrics, /api/stats or /healthz\n",
            ),
        }
    }

    /// `None` if the request may go on; otherwise the refusal.
    fn authorize(&self, peer: SocketAddr, req: &Request<Incoming>) -> Option<Reply> {
        let auth = self.config.auth.as_ref()?;
        let header = req
            .headers()
            .get(header::AUTHORIZATION)
            .map(HeaderValue::as_bytes);
        let verdict = auth.check(header);
        if verdict == Verdict::Allowed {
            return None;
        }
        let mut r = text(
            StatusCode::UNAUTHORIZED,
            "credentials needed: see --http-auth-file\n",
        );
        let headers = r.headers_mut();
        headers.insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"taskmill\", charset=\"UTF-8\""),
        );
        if verdict == Verdict::Wrong {
            self.auth_failures.fetch_add(1, Relaxed);
            if self.guard.failed(peer.ip()) {
                warn!(ip = %peer.ip(), "too many wrong HTTP credentials from this address; refusing it for a while");
            }
            // A new connection for the next try, so a throttled address is refused at accept.
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        Some(r)
    }

    /// The queues and sessions, read now or less than [`FRESH`] ago.
    fn read(&self, ctx: &Context) -> Arc<Reading> {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, reading)) = &*last {
            if at.elapsed() < FRESH {
                return Arc::clone(reading);
            }
        }
        let reading = Arc::new(ctx.broker.report());
        *last = Some((Instant::now(), Arc::clone(&reading)));
        reading
    }

    fn scrape(&self, ctx: &Context) -> metrics::Scrape {
        let c = &ctx.counters;
        let load = |n: &AtomicU64| n.load(Relaxed);
        let queues = self.read(ctx).0.clone();
        metrics::Scrape {
            version: env!("CARGO_PKG_VERSION"),
            uptime_seconds: ctx.started.elapsed().as_secs_f64(),
            clients: load(&c.clients),
            accepted: load(&c.admission.accepted),
            refused: c.admission.refused.each_ref().map(load),
            handshakes: c.handshakes.each_ref().map(load),
            failures_delayed: load(&c.failures_delayed),
            forbidden: load(&c.forbidden),
            completing: ctx.broker.completing_total(),
            queues,
            storage: ctx.store.stats(),
            memory: ctx.broker.memory().usage(),
            http_accepted: load(&self.counts.accepted),
            http_refused: self.counts.refused.each_ref().map(load),
            http_requests: ROUTES
                .iter()
                .copied()
                .zip(self.requests.each_ref().map(load))
                .collect(),
            http_auth_failures: load(&self.auth_failures),
            python: ctx.python_listening().then(|| {
                let p = &c.python;
                metrics::PythonScrape {
                    open: load(&p.open),
                    accepted: load(&p.admission.accepted),
                    refused: p.admission.refused.each_ref().map(load),
                    handshakes: p.handshakes(),
                    requests: load(&p.requests),
                }
            }),
        }
    }

    fn dashboard(&self, ctx: &Context, since: Option<u64>) -> api::Dashboard {
        let reading = self.read(ctx);
        let (queues, sessions) = &*reading;
        let rates = self.history.rates();
        api::Dashboard {
            version: env!("CARGO_PKG_VERSION"),
            master: master_addr(ctx),
            uptime_ms: ctx.started.elapsed().as_millis() as u64,
            draining: ctx.phases.drain.is_cancelled(),
            clients: ctx.counters.clients.load(Relaxed),
            handshake_failures: ctx.counters.handshake_failures(),
            durable: ctx.store.stats().is_some(),
            workers: api::worker_rows(ctx.peers.list(), sessions),
            dead_letters: api::dead_rows(&ctx.broker, queues),
            queues: api::queue_rows(queues, &rates),
            interval_ms: history::INTERVAL.as_millis() as u64,
            history: self.history.since(since),
        }
    }
}

/// `200 ok` while the master serves; `503` once it drains or its log has failed, so that a
/// load balancer or Kubernetes stops sending it work.
fn health(ctx: &Context) -> Reply {
    let failed = ctx
        .store
        .durability()
        .is_some_and(|d| d.borrow().failed.is_some());
    if failed {
        text(StatusCode::SERVICE_UNAVAILABLE, "storage failed\n")
    } else if ctx.phases.drain.is_cancelled() {
        text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    } else {
        text(StatusCode::OK, "ok\n")
    }
}

fn master_addr(ctx: &Context) -> String {
    ctx.listen_addr
        .get()
        .map_or_else(String::new, ToString::to_string)
}

/// The `since` query parameter: the last history sample the page already has.
fn since(query: Option<&str>) -> Option<u64> {
    query?
        .split('&')
        .find_map(|pair| pair.strip_prefix("since="))
        .and_then(|n| n.parse().ok())
}
