//! taskmill's wire protocol: message types, framing, the authenticated handshake and a client.
//!
//! Pure: no queue logic and no background tasks. Its only I/O is [`Connection`] and the
//! [`Client`] built on it.
//!
//! # Layout
//! - [`message`]: every message, one enum per sender and phase.
//! - [`codec`]: frames (4-byte big-endian length + bincode), with the frame cap and allocation
//!   budget. The only file that knows the encoding.
//! - [`auth`]: the authkey and the HMAC-SHA256 proofs.
//! - [`handshake`]: both sides of the handshake.
//! - [`connection`]: a framed stream of whole messages.
//! - [`client`]: connect + handshake + typed calls.
//! - [`squares`]: the squares job's payloads.
//!
//! `docs/protocol.md` in the repository is the wire specification.

pub mod auth;
pub mod client;
pub mod codec;
pub mod connection;
pub mod error;
pub mod handshake;
pub mod message;
pub mod squares;

pub use auth::{AuthKey, KeyError};
pub use client::{Client, ClientOptions, PutOutcome, Settled};
pub use codec::{decode_payload, encode_payload, MessageCodec, DEFAULT_MAX_FRAME};
pub use connection::Connection;
pub use error::{ClientError, CodecError};
pub use message::*;
