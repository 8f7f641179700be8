//! The protocol crate's errors: what went wrong on the wire, and why a client's handshake failed.

use std::io;

use crate::message::Rejection;

/// A frame could not be read or written. The connection must be closed after any of these.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge { len: usize, max: usize },
    #[error("undecodable frame: {0}")]
    Decode(String),
    #[error("could not encode message: {0}")]
    Encode(String),
    #[error(
        "a frame failed its integrity check: altered, replayed, reordered or dropped on the \
         way (the connection is closed; nothing in it was acted on)"
    )]
    Tampered,
    #[error("2^64 frames sent on one connection: reconnect")]
    CounterExhausted,
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl CodecError {
    pub(crate) fn from_seal(err: crate::seal::SealError) -> Self {
        match err {
            crate::seal::SealError::Forged => CodecError::Tampered,
            crate::seal::SealError::Exhausted => CodecError::CounterExhausted,
        }
    }

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

/// Why the client's side of the handshake failed. Clients fold these into their own error
/// type; the master's side has [`crate::handshake::HandshakeError`].
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(
        "authentication failed: wrong authkey? (the master rejected our hello; a relay that \
         changes the transport on the way, e.g. plaintext to TLS, fails the same way)"
    )]
    AuthenticationFailed,
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
    #[error("the master closed the connection{0}")]
    Closed(&'static str),
    #[error("protocol violation: {0}")]
    Protocol(String),
    #[error(transparent)]
    Codec(#[from] CodecError),
}
