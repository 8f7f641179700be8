//! What a [`crate::Client`] call can fail with, and which failures a retry may cure.

use std::io;

use taskmill_protocol::{CodecError, ConnectError, ErrorKind, Rejection};

/// Why a [`crate::Client`] call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    // (`cause`, not `source`: the message already says it, and error chains would repeat it.)
    #[error("cannot connect to the master at {addr}: {cause}")]
    Connect { addr: String, cause: io::Error },
    #[error(
        "authentication failed: wrong authkey? (the master rejected our hello; a relay that \
         changes the transport on the way, e.g. plaintext to TLS, fails the same way)"
    )]
    AuthenticationFailed,
    #[error(
        "TLS handshake with {addr} failed: {cause} (does the master use TLS, and does the CA \
         file hold the CA that signed its certificate, for this server name?)"
    )]
    Tls { addr: String, cause: io::Error },
    #[error(
        "the peer at {0} did not prove it holds the authkey: wrong authkey on the master, or not our master"
    )]
    MasterNotAuthenticated(String),
    #[error("the master speaks protocol version {master}, this client speaks {client}")]
    VersionMismatch { master: u16, client: u16 },
    #[error("the master refused the connection: {}", .0.describe())]
    Rejected(Rejection),
    #[error("the master is shutting down")]
    ShuttingDown,
    #[error("timed out after {0:?} {1}")]
    Timeout(std::time::Duration, &'static str),
    #[error("the master closed the connection{0}")]
    Closed(&'static str),
    #[error("protocol violation: {0}")]
    Protocol(String),
    #[error("the master refused the request ({kind:?}): {message}")]
    Server { kind: ErrorKind, message: String },
    #[error(transparent)]
    Codec(#[from] CodecError),
}

impl From<ConnectError> for ClientError {
    fn from(err: ConnectError) -> Self {
        match err {
            ConnectError::AuthenticationFailed => ClientError::AuthenticationFailed,
            ConnectError::MasterNotAuthenticated(peer) => ClientError::MasterNotAuthenticated(peer),
            ConnectError::VersionMismatch { master, client } => {
                ClientError::VersionMismatch { master, client }
            }
            ConnectError::Rejected(why) => ClientError::Rejected(why),
            ConnectError::ShuttingDown => ClientError::ShuttingDown,
            ConnectError::Closed(why) => ClientError::Closed(why),
            ConnectError::Protocol(what) => ClientError::Protocol(what),
            ConnectError::Codec(err) => ClientError::Codec(err),
        }
    }
}

impl ClientError {
    /// True when this connection is gone (closed, reset, or the master said it is shutting
    /// down): further calls on the same [`crate::Client`] cannot succeed, only a new one can.
    pub fn is_connection_lost(&self) -> bool {
        matches!(
            self,
            ClientError::Closed(_)
                | ClientError::ShuttingDown
                | ClientError::Codec(
                    CodecError::Io(_) | CodecError::Tampered | CodecError::CounterExhausted
                )
        )
    }

    /// True when retrying on a new connection may succeed (master restarting, network trouble);
    /// false for errors that will repeat (wrong key, wrong version, bad requests).
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Connect { .. }
            | ClientError::ShuttingDown
            | ClientError::Timeout(..)
            | ClientError::Closed(_)
            | ClientError::Rejected(
                Rejection::ShuttingDown | Rejection::Overloaded | Rejection::Throttled,
            )
            | ClientError::Server {
                kind:
                    ErrorKind::ShuttingDown
                    | ErrorKind::StorageFull
                    | ErrorKind::MemoryFull
                    | ErrorKind::InProgress,
                ..
            } => true,
            ClientError::Codec(CodecError::Io(_)) => true,
            // Someone on the path altered the stream: this connection is spoilt, a new one
            // may well be clean, and giving up would hand the attacker an outage.
            ClientError::Codec(CodecError::Tampered | CodecError::CounterExhausted) => true,
            // The connection broke during the TLS handshake (a master restarting, or refusing
            // for load): worth retrying. A certificate it does not trust is not.
            ClientError::Tls { cause, .. } => matches!(
                cause.kind(),
                io::ErrorKind::UnexpectedEof
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::TimedOut
            ),
            ClientError::AuthenticationFailed
            | ClientError::MasterNotAuthenticated(_)
            | ClientError::VersionMismatch { .. }
            | ClientError::Rejected(_)
            | ClientError::Protocol(_)
            | ClientError::Server { .. }
            | ClientError::Codec(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tls_handshake_cut_short_is_retried_and_an_untrusted_certificate_is_not() {
        let tls = |kind| ClientError::Tls {
            addr: "m:1".into(),
            cause: io::Error::new(kind, "x"),
        };
        assert!(tls(io::ErrorKind::UnexpectedEof).is_transient());
        assert!(tls(io::ErrorKind::ConnectionReset).is_transient());
        assert!(!tls(io::ErrorKind::InvalidData).is_transient());
    }

    #[test]
    fn a_master_out_of_memory_or_disk_is_retried_later_and_a_bad_request_is_not() {
        let server = |kind| ClientError::Server {
            kind,
            message: String::new(),
        };
        assert!(server(ErrorKind::MemoryFull).is_transient());
        assert!(server(ErrorKind::StorageFull).is_transient());
        assert!(!server(ErrorKind::BadRequest).is_transient());
        assert!(!server(ErrorKind::Forbidden).is_transient());
    }

    #[test]
    fn a_tampered_frame_ends_the_connection_and_is_retried_on_a_new_one() {
        let err = ClientError::Codec(CodecError::Tampered);
        assert!(err.is_connection_lost());
        assert!(err.is_transient());
    }
}
