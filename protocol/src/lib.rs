//! taskmill's wire protocol: message types, framing and the authenticated handshake.
//!
//! Pure: no queue logic, no job and no background tasks. Its only I/O is [`Connection`]; the
//! client built on it is the `taskmill` crate, the broker the `taskmill-broker` crate.
//!
//! # Layout
//! - [`message`]: every message, one enum per sender and phase.
//! - [`codec`]: frames (4-byte big-endian length + bincode), with the frame cap and allocation
//!   budget. The only file that knows the encoding.
//! - `frame_bytes`: decoded payloads as views into their frame rather than copies.
//! - [`auth`]: the authkey and the pre-shared key derived from it.
//! - [`handshake`]: both sides of the handshake (Noise `NNpsk0`, bound to the transport).
//! - [`seal`]: sealed frames after a plaintext handshake (AES-256-GCM, counter nonces).
//! - [`connection`]: a framed stream of whole messages.
//! - [`error`]: codec errors and the client side's handshake errors.
//! - `error_kind`: [`ErrorKind`], encoded by hand so kinds added after `Unknown` keep their
//!   indices.
//! - [`tls`]: optional TLS, and the stream type connections run on.
//! - [`json`]: `Stats` as the JSON document every `stats --json` and `/api/stats` give.
//! - [`pickle`]: Python pickles, scanned under limits and never run: the envelopes and items
//!   of `multiprocessing.managers`, for the Python listener and pickle-speaking workers.
//!
//! `docs/protocol.md` in the repository is the wire specification.

pub mod auth;
pub mod codec;
pub mod connection;
pub mod error;
mod error_kind;
mod frame_bytes;
pub mod handshake;
pub mod json;
pub mod message;
pub mod pickle;
pub mod seal;
pub mod tls;

pub use auth::{AuthKey, KeyError};
pub use codec::{decode_payload, encode_payload, MessageCodec, PayloadBatch, DEFAULT_MAX_FRAME};
pub use connection::Connection;
pub use error::{CodecError, ConnectError};
pub use message::*;
pub use tls::{Stream, TlsClient, TlsError, TlsServer};

/// How long an idle TCP connection waits before the kernel starts probing the peer: a host
/// that vanished without a FIN is then found even on a connection with nothing to say.
const KEEPALIVE_IDLE: std::time::Duration = std::time::Duration::from_secs(10);

/// How long sent data may stay unacknowledged before the kernel gives up on the connection
/// (Linux). Keepalive probes are not sent while data is outstanding, so this is what bounds a
/// peer that vanished while we were writing to it.
#[cfg(target_os = "linux")]
const USER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Socket options every taskmill connection wants: no Nagle delay for small request/reply
/// frames, TCP keepalive, and a bound on unacknowledged data. Best effort: failing to set them
/// only costs latency or slower detection of a vanished peer.
pub fn tune_socket(stream: &tokio::net::TcpStream) {
    let _ = stream.set_nodelay(true);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_IDLE / 2);
    #[cfg(any(target_os = "linux", target_os = "macos", target_os = "freebsd"))]
    let keepalive = keepalive.with_retries(3);
    let socket = socket2::SockRef::from(stream);
    let _ = socket.set_tcp_keepalive(&keepalive);
    #[cfg(target_os = "linux")]
    let _ = socket.set_tcp_user_timeout(Some(USER_TIMEOUT));
}
