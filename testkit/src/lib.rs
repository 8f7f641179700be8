//! Helpers for taskmill's tests, and only its tests (a dev-dependency, never published): one
//! bound on every wait, one test key, a master on a free loopback port, a fake master, raw
//! sessions, and child processes that are killed and reaped however a test ends.
//!
//! # Layout
//! - this file: [`LIMIT`] and [`within`], keys, a short-deadline [`config`], [`TestMaster`],
//!   [`fake_master`], raw connections and requests.
//! - [`process`]: the real binaries as child processes ([`process::Proc`]).
//! - [`http`]: one-shot HTTP requests for the master's HTTP port.
//! - [`python`]: the Python helpers in `tests/py/`, never skipped.

pub mod http;
pub mod process;
pub mod python;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use taskmill::Client;
use taskmill_broker::http::HttpConfig;
use taskmill_broker::store::Memory;
use taskmill_broker::{Master, ServerConfig};
use taskmill_protocol::auth::nonce;
use taskmill_protocol::codec::HANDSHAKE_MAX_FRAME;
use taskmill_protocol::handshake::{self, Binding, ClientConnection, Limits};
use taskmill_protocol::{
    AuthKey, ClientHandshake, ClientMessage, Connection, Delivery, MasterHandshake, Request, Wait,
};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Upper bound on any single wait in a test; passing it is a failure, not a retry. Generous,
/// because CI machines are shared: it only decides how long a broken test takes to fail.
pub const LIMIT: Duration = Duration::from_secs(60);

/// The key every test master and client uses (children get it as `TASKMILL_AUTHKEY`).
pub const KEY: &str = "taskmill-test-key-0123";

pub fn key() -> AuthKey {
    AuthKey::new(KEY).expect("a valid test key")
}

pub fn wrong_key() -> AuthKey {
    AuthKey::new("not-the-right-key!!").expect("a valid key")
}

/// A payload from a string.
pub fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// Defaults with short real deadlines, so deadline tests finish quickly.
pub fn config() -> ServerConfig {
    let mut config = ServerConfig::new(key());
    config.handshake_timeout = Duration::from_millis(500);
    config.shutdown_grace = Duration::from_secs(2);
    config
}

/// Awaits `fut`, failing the test if it takes longer than [`LIMIT`].
pub async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(LIMIT, fut).await {
        Ok(out) => out,
        Err(_) => panic!("timed out after {LIMIT:?}: {what}"),
    }
}

/// A TCP connection to `addr` from the loopback address `source` (any 127/8 address works),
/// so a test can play several hosts.
pub async fn connect_from(source: [u8; 4], addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((source, 0)))?;
    socket.connect(addr).await
}

/// An authenticated connection that speaks raw frames, for clients that misbehave after the
/// handshake (never reading, going silent, pipelining).
pub async fn raw_session(addr: &str) -> ClientConnection<TcpStream> {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (conn, _) = within("handshake", handshake::connect(stream, &key(), "test"))
        .await
        .expect("handshake with the right key");
    conn
}

/// A `get` of up to `max` tasks from `queue` under the master's default lease.
pub fn lease(id: u64, queue: &str, max: u32, wait: Wait) -> ClientMessage {
    ClientMessage::Request {
        id,
        request: Request::Get {
            queue: queue.into(),
            max,
            wait,
            delivery: Delivery::Lease { millis: None },
        },
    }
}

/// A master in this process, serving on a fresh loopback port; stopped when dropped.
pub struct TestMaster {
    pub addr: String,
    shutdown: CancellationToken,
    handle: Option<JoinHandle<std::io::Result<()>>>,
}

impl TestMaster {
    pub async fn start(config: ServerConfig) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        Self::serve(listener, config)
    }

    /// A master that also serves its HTTP port (`http`) on a fresh loopback port, returned
    /// beside it.
    pub async fn start_with_http(config: ServerConfig, http: HttpConfig) -> (Self, SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let web = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let web_addr = web.local_addr().expect("local address");
        (
            Self::serve_both(listener, config, Some((web, http))),
            web_addr,
        )
    }

    /// Serves on a listener the test bound itself (to learn the port before the master runs).
    pub fn serve(listener: TcpListener, config: ServerConfig) -> Self {
        Self::serve_both(listener, config, None)
    }

    fn serve_both(
        listener: TcpListener,
        config: ServerConfig,
        http: Option<(TcpListener, HttpConfig)>,
    ) -> Self {
        let addr = listener.local_addr().expect("local address").to_string();
        let shutdown = CancellationToken::new();
        let master = Master::open(config, Arc::new(Memory)).expect("a memory master opens");
        if let Some((web, http)) = http {
            master.serve_http(web, http);
        }
        let handle = tokio::spawn(master.serve(listener, shutdown.clone()));
        Self {
            addr,
            shutdown,
            handle: Some(handle),
        }
    }

    pub async fn client(&self) -> Client {
        within("connect", Client::connect(&self.addr, &key()))
            .await
            .expect("connect with the right key")
    }

    /// Signals shutdown and waits for the master to return.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        let handle = self.handle.take().expect("not stopped yet");
        within("master shutdown", handle)
            .await
            .expect("the master task did not panic")
            .expect("the master stopped cleanly");
    }
}

impl Drop for TestMaster {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A fake master on a fresh loopback port that answers one client's handshake as if it held
/// `proof_key` (with the wrong key it cannot, and answers with a welcome of random bytes: an
/// impostor), then hands its end of the connection to the test: the task's result, which the
/// test may hold open and silent.
pub async fn fake_master(
    proof_key: AuthKey,
    heartbeat_ms: u32,
) -> (
    String,
    JoinHandle<Connection<TcpStream, ClientHandshake, MasterHandshake>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local address").to_string();
    let task = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.expect("accept");
        let mut conn =
            Connection::<_, ClientHandshake, MasterHandshake>::new(stream, HANDSHAKE_MAX_FRAME);
        let Some(ClientHandshake::Hello { ephemeral, tag, .. }) = conn.recv().await.expect("recv")
        else {
            panic!("no hello");
        };
        let limits = Limits {
            max_frame: 1 << 20,
            heartbeat_ms,
        };
        let welcome =
            match handshake::answer(&proof_key, &Binding::Plain, &ephemeral, &tag, limits, None) {
                Some((welcome, _keys)) => welcome,
                None => {
                    let mut sealed = [0u8; 24];
                    sealed[..16].copy_from_slice(&nonce()[..16]);
                    MasterHandshake::Welcome {
                        ephemeral: nonce(),
                        sealed,
                    }
                }
            };
        conn.send(&welcome).await.expect("send the welcome");
        conn
    });
    (addr, task)
}
