//! Both sides of the handshake as straight-line async functions over a [`Connection`].
//!
//! Sequence: client `Hello` (magic, version, client nonce) → master `Challenge` (master nonce) →
//! client `Proof` → master `Welcome` (master's proof, session frame cap) or `Rejected`. Deadlines
//! are the caller's: wrap these in `tokio::time::timeout`.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::auth::{nonce, AuthKey, Role};
use crate::codec::{clamp_max_frame, HANDSHAKE_MAX_FRAME};
use crate::error::{CodecError, ConnectError};
use crate::message::{
    ClientHandshake, ClientMessage, MasterHandshake, MasterMessage, Rejection, MAGIC,
    PROTOCOL_VERSION,
};
use crate::Connection;

/// An authenticated connection as seen by the master.
pub type MasterConnection<S> = Connection<S, ClientMessage, MasterMessage>;

/// An authenticated connection as seen by a client.
pub type ClientConnection<S> = Connection<S, MasterMessage, ClientMessage>;

/// Why the master refused a connection during the handshake.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("closed by the peer during the handshake")]
    Closed,
    #[error("not a taskmill client (bad magic)")]
    NotTaskmill,
    #[error("client speaks protocol version {0}, we speak {PROTOCOL_VERSION}")]
    Version(u16),
    #[error("wrong authkey (client proof did not verify)")]
    AuthenticationFailed,
    #[error("unexpected {0} during the handshake")]
    Unexpected(&'static str),
    #[error(transparent)]
    Codec(#[from] CodecError),
}

/// Runs the master's side on a fresh stream; on success the connection's frame cap is raised
/// to `max_frame` and it speaks the session messages. A failure is told to the peer at once.
pub async fn accept<S>(
    stream: S,
    key: &AuthKey,
    max_frame: usize,
    heartbeat: Duration,
) -> Result<MasterConnection<S>, HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match accept_deferred(stream, key, max_frame, heartbeat).await {
        Ok(conn) => Ok(conn),
        Err(failed) => {
            let Failed { error, reply } = failed;
            if let Some((mut conn, why)) = reply {
                reject(&mut conn, why).await;
            }
            Err(error)
        }
    }
}

/// A handshake that failed, holding the connection and the refusal owed to the peer (if any)
/// so the caller chooses when to send it: a master answers repeated failures late.
pub struct Failed<S> {
    pub error: HandshakeError,
    reply: Option<(Connection<S, ClientHandshake, MasterHandshake>, Rejection)>,
}

impl<S> std::fmt::Debug for Failed<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Failed")
            .field("error", &self.error)
            .field("reply", &self.reply.as_ref().map(|(_, why)| why))
            .finish()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Failed<S> {
    /// True if the peer is owed a refusal.
    pub fn owes_reply(&self) -> bool {
        self.reply.is_some()
    }

    /// Sends the refusal owed, if any; best effort, as [`reject`].
    pub async fn reply(self) {
        if let Some((mut conn, why)) = self.reply {
            reject(&mut conn, why).await;
        }
    }
}

/// As [`accept`], but a failure's refusal is left to the caller ([`Failed::reply`]).
pub async fn accept_deferred<S>(
    stream: S,
    key: &AuthKey,
    max_frame: usize,
    heartbeat: Duration,
) -> Result<MasterConnection<S>, Failed<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut conn =
        Connection::<S, ClientHandshake, MasterHandshake>::new(stream, HANDSHAKE_MAX_FRAME);
    let fail = |error: HandshakeError| Failed { error, reply: None };
    let client_nonce = match conn.recv().await.map_err(|e| fail(e.into()))? {
        Some(ClientHandshake::Hello {
            magic,
            version,
            nonce,
        }) => {
            if magic != MAGIC {
                return Err(Failed {
                    error: HandshakeError::NotTaskmill,
                    reply: Some((conn, Rejection::NotTaskmill)),
                });
            }
            if version != PROTOCOL_VERSION {
                let supported = PROTOCOL_VERSION;
                return Err(Failed {
                    error: HandshakeError::Version(version),
                    reply: Some((conn, Rejection::UnsupportedVersion { supported })),
                });
            }
            nonce
        }
        Some(ClientHandshake::Proof { .. }) => {
            return Err(fail(HandshakeError::Unexpected("proof")))
        }
        None => return Err(fail(HandshakeError::Closed)),
    };
    let master_nonce = nonce();
    conn.send(&MasterHandshake::Challenge {
        version: PROTOCOL_VERSION,
        nonce: master_nonce,
    })
    .await
    .map_err(|e| fail(e.into()))?;
    match conn.recv().await.map_err(|e| fail(e.into()))? {
        Some(ClientHandshake::Proof { mac }) => {
            let ok = key.verify(
                Role::Client,
                PROTOCOL_VERSION,
                &client_nonce,
                &master_nonce,
                &mac,
            );
            if !ok {
                return Err(Failed {
                    error: HandshakeError::AuthenticationFailed,
                    reply: Some((conn, Rejection::AuthenticationFailed)),
                });
            }
        }
        Some(ClientHandshake::Hello { .. }) => {
            return Err(fail(HandshakeError::Unexpected("hello")))
        }
        None => return Err(fail(HandshakeError::Closed)),
    }
    let mac = key.proof(Role::Master, PROTOCOL_VERSION, &client_nonce, &master_nonce);
    // Advertise the cap as the codec will enforce it, so both sides use the same number.
    let max_frame = clamp_max_frame(max_frame);
    conn.send(&MasterHandshake::Welcome {
        mac,
        max_frame: max_frame as u32,
        heartbeat_ms: heartbeat.as_millis().clamp(1, u128::from(u32::MAX)) as u32,
    })
    .await
    .map_err(|e| fail(e.into()))?;
    let mut conn = conn.retype();
    conn.set_max_frame(max_frame);
    Ok(conn)
}

/// Tells the peer why before the caller drops the connection. Best effort: the peer may be gone.
pub async fn reject<S>(conn: &mut Connection<S, ClientHandshake, MasterHandshake>, why: Rejection)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let _ = conn.send(&MasterHandshake::Rejected(why)).await;
}

/// Runs the client's side on a fresh stream. `peer` names the master in errors. Returns the
/// connection and the master's heartbeat interval.
pub async fn connect<S>(
    stream: S,
    key: &AuthKey,
    peer: &str,
) -> Result<(ClientConnection<S>, Duration), ConnectError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut conn =
        Connection::<S, MasterHandshake, ClientHandshake>::new(stream, HANDSHAKE_MAX_FRAME);
    let client_nonce = nonce();
    conn.send(&ClientHandshake::Hello {
        magic: MAGIC,
        version: PROTOCOL_VERSION,
        nonce: client_nonce,
    })
    .await?;
    let master_nonce = match recv_handshake(&mut conn, false).await? {
        MasterHandshake::Challenge { version, nonce } if version == PROTOCOL_VERSION => nonce,
        MasterHandshake::Challenge { version, .. } => {
            return Err(ConnectError::VersionMismatch {
                master: version,
                client: PROTOCOL_VERSION,
            })
        }
        MasterHandshake::Welcome { .. } => {
            return Err(ConnectError::Protocol("welcome before our proof".into()))
        }
        MasterHandshake::Rejected(why) => return Err(rejection_error(why)),
    };
    let mac = key.proof(Role::Client, PROTOCOL_VERSION, &client_nonce, &master_nonce);
    conn.send(&ClientHandshake::Proof { mac }).await?;
    match recv_handshake(&mut conn, true).await? {
        MasterHandshake::Welcome {
            mac,
            max_frame,
            heartbeat_ms,
        } => {
            let genuine = key.verify(
                Role::Master,
                PROTOCOL_VERSION,
                &client_nonce,
                &master_nonce,
                &mac,
            );
            if !genuine {
                return Err(ConnectError::MasterNotAuthenticated(peer.to_owned()));
            }
            let mut conn = conn.retype();
            conn.set_max_frame(max_frame as usize);
            Ok((conn, Duration::from_millis(heartbeat_ms.max(1).into())))
        }
        MasterHandshake::Rejected(why) => Err(rejection_error(why)),
        MasterHandshake::Challenge { .. } => Err(ConnectError::Protocol("second challenge".into())),
    }
}

async fn recv_handshake<S>(
    conn: &mut Connection<S, MasterHandshake, ClientHandshake>,
    proof_sent: bool,
) -> Result<MasterHandshake, ConnectError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match conn.recv().await {
        Ok(Some(msg)) => Ok(msg),
        // A master that drops us right after our proof is most likely refusing the key, but an
        // old master or a different service does the same: say both.
        Ok(None) | Err(CodecError::Io(_)) if proof_sent => Err(ConnectError::Closed(
            " after our proof (wrong authkey, or not a taskmill master?)",
        )),
        Ok(None) => Err(ConnectError::Closed(
            " during the handshake (not a taskmill master, one that requires TLS, or overloaded?)",
        )),
        Err(CodecError::FrameTooLarge { .. } | CodecError::Decode(_)) => {
            Err(ConnectError::Protocol(
                "the peer does not speak the taskmill protocol (or it requires TLS: --tls-ca)"
                    .into(),
            ))
        }
        Err(err) => Err(err.into()),
    }
}

fn rejection_error(why: Rejection) -> ConnectError {
    match why {
        Rejection::AuthenticationFailed => ConnectError::AuthenticationFailed,
        Rejection::UnsupportedVersion { supported } => ConnectError::VersionMismatch {
            master: supported,
            client: PROTOCOL_VERSION,
        },
        Rejection::ShuttingDown => ConnectError::ShuttingDown,
        Rejection::NotTaskmill | Rejection::Overloaded | Rejection::Throttled => {
            ConnectError::Rejected(why)
        }
    }
}
