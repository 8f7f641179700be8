//! The protocol crate's errors: what went wrong on the wire, and what a client call can fail with.

use std::io;

use crate::message::{ErrorKind, Rejection};

/// A frame could not be read or written. The connection must be closed after any of these.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge { len: usize, max: usize },
    #[error("undecodable frame: {0}")]
    Decode(String),
    #[error("could not encode message: {0}")]
    Encode(String),
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl CodecError {
    /// `LengthDelimitedCodec` reports an oversize header as an `io::Error`; give it its own kind.
    pub(crate) fn from_frame_error(err: io::Error, max: usize) -> Self {
        let too_big = err
            .get_ref()
            .is_some_and(|inner| inner.is::<tokio_util::codec::LengthDelimitedCodecError>());
        if too_big {
            // The codec does not say how long the frame claimed to be; only that it was too long.
            CodecError::FrameTooLarge { len: max + 1, max }
        } else {
            CodecError::Io(err)
        }
    }
}

/// Why a [`crate::Client`] call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to the master at {addr}: {source}")]
    Connect { addr: String, source: io::Error },
    #[error("authentication failed: wrong authkey? (the master rejected our proof)")]
    AuthenticationFailed,
    #[error(
        "TLS handshake with {addr} failed: {source} (does the master use TLS, and does the CA \
         file hold the CA that signed its certificate, for this server name?)"
    )]
    Tls { addr: String, source: io::Error },
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

impl ClientError {
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
                kind: ErrorKind::ShuttingDown,
                ..
            } => true,
            ClientError::Codec(CodecError::Io(_)) => true,
            ClientError::AuthenticationFailed
            | ClientError::Tls { .. }
            | ClientError::MasterNotAuthenticated(_)
            | ClientError::VersionMismatch { .. }
            | ClientError::Rejected(_)
            | ClientError::Protocol(_)
            | ClientError::Server { .. }
            | ClientError::Codec(_) => false,
        }
    }
}
