//! Shared helpers for the end-to-end tests: an in-process master on 127.0.0.1:0, clients, and
//! a bound on every wait.

#![allow(dead_code)] // Each test binary uses its own subset.

use std::future::Future;
use std::time::Duration;

use taskmill_master::ServerConfig;
use taskmill_protocol::handshake::{self, ClientConnection};
use taskmill_protocol::{AuthKey, Client, ClientMessage, Delivery, Request, Wait};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Upper bound on any single wait in these tests; passing it is a failure, not a retry.
pub const LIMIT: Duration = Duration::from_secs(20);

pub fn key() -> AuthKey {
    AuthKey::new("end-to-end-test-key").unwrap()
}

pub fn wrong_key() -> AuthKey {
    AuthKey::new("not-the-right-key!!").unwrap()
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

/// An authenticated connection that speaks raw frames, for clients that misbehave after the
/// handshake (never reading, going silent, pipelining).
pub async fn raw_session(addr: &str) -> ClientConnection<TcpStream> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (conn, _) = within("handshake", handshake::connect(stream, &key(), "test"))
        .await
        .unwrap();
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

/// A master serving on a fresh loopback port; stopped when dropped.
pub struct Master {
    pub addr: String,
    shutdown: CancellationToken,
    handle: Option<JoinHandle<std::io::Result<()>>>,
}

impl Master {
    pub async fn start(config: ServerConfig) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener, config)
    }

    pub fn serve(listener: TcpListener, config: ServerConfig) -> Self {
        let addr = listener.local_addr().unwrap().to_string();
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(taskmill_master::run(listener, config, shutdown.clone()));
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
        let handle = self.handle.take().unwrap();
        within("master shutdown", handle).await.unwrap().unwrap();
    }
}

impl Drop for Master {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
