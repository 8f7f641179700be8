//! Both sides of the handshake: Noise `NNpsk0`, keyed by the authkey, bound to the transport.
//!
//! One round trip. The client's `Hello` carries the first Noise message (`psk, e`): its
//! ephemeral X25519 key and an empty payload sealed under a key mixed from the authkey, so the
//! master can check the tag before it answers. The master's `Welcome` carries the second
//! (`e, ee`): its ephemeral key and the session limits, sealed under keys that need both
//! ephemeral secrets and the authkey. Opening it proves to the client that the master holds
//! the key and that no limit was altered. Afterwards each direction has its own key with
//! forward secrecy: a key stolen later decrypts no recorded session.
//!
//! The Noise prologue is the channel binding: magic, version, the transport kind and, under
//! TLS, 32 bytes exported from the TLS session (RFC 9266's `EXPORTER-Channel-Binding`). A relay
//! that ends one TLS session and opens another, or turns plaintext into TLS, leaves the two
//! sides with different prologues, and the first tag fails.
//!
//! On plaintext every frame after the handshake is sealed (`seal.rs`). Inside TLS it is not:
//! TLS 1.3 already encrypts and authenticates every byte, and the binding proves that the TLS
//! session's two ends are the two that hold the authkey, so a second layer would cost time and
//! add no protection.
//!
//! A scoped key's id (`ScopedHello`) is appended to the prologue, so a hello made for one id
//! does not verify under another, even where two ids share a key.
//!
//! Deadlines are the caller's: wrap these in `tokio::time::timeout`.

use std::time::Duration;

use snow::params::NoiseParams;
use snow::HandshakeState;
use tokio::io::{AsyncRead, AsyncWrite};
use zeroize::Zeroizing;

use crate::auth::{AuthKey, KeyId};
use crate::codec::{clamp_max_frame, HANDSHAKE_MAX_FRAME};
use crate::error::{CodecError, ConnectError};
use crate::message::{
    ClientHandshake, ClientMessage, MasterHandshake, MasterMessage, PublicKey, Rejection,
    SealedWelcome, Tag, MAGIC, PROTOCOL_VERSION,
};
use crate::seal::{SessionKeys, Side};
use crate::Connection;

/// The Noise protocol name: the pattern, X25519, AES-256-GCM, SHA-256.
pub const NOISE_PARAMS: &str = "Noise_NNpsk0_25519_AESGCM_SHA256";

/// The TLS exporter label RFC 9266 defines for channel binding.
pub const TLS_EXPORTER_LABEL: &[u8] = b"EXPORTER-Channel-Binding";

/// An authenticated connection as seen by the master.
pub type MasterConnection<S> = Connection<S, ClientMessage, MasterMessage>;

/// An authenticated connection as seen by a client.
pub type ClientConnection<S> = Connection<S, MasterMessage, ClientMessage>;

/// The transport the handshake runs on, as both sides must see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binding {
    /// Plain TCP (or any byte stream): frames are sealed after the handshake.
    Plain,
    /// TLS 1.3, with the session's exporter value.
    Tls([u8; 32]),
}

impl Binding {
    /// The Noise prologue: what both proofs cover besides the key and the ephemeral keys.
    pub fn prologue(&self) -> Vec<u8> {
        self.prologue_for(None)
    }

    /// The prologue for a hello with key id `id` (`None`: a plain `Hello`).
    pub fn prologue_for(&self, id: Option<&KeyId>) -> Vec<u8> {
        let mut p = b"taskmill".to_vec();
        p.extend_from_slice(&MAGIC);
        p.extend_from_slice(&PROTOCOL_VERSION.to_be_bytes());
        match self {
            Binding::Plain => p.push(0),
            Binding::Tls(exporter) => {
                p.push(1);
                p.extend_from_slice(exporter);
            }
        }
        if let Some(id) = id {
            p.extend_from_slice(b"key-id");
            p.extend_from_slice(&id.to_wire());
        }
        p
    }
}

/// A stream that can say what transport it is, for the channel binding.
pub trait Channel: AsyncRead + AsyncWrite + Unpin {
    fn binding(&self) -> std::io::Result<Binding>;
}

impl Channel for tokio::net::TcpStream {
    fn binding(&self) -> std::io::Result<Binding> {
        Ok(Binding::Plain)
    }
}

impl Channel for tokio::io::DuplexStream {
    fn binding(&self) -> std::io::Result<Binding> {
        Ok(Binding::Plain)
    }
}

/// The limits the master announces in its `Welcome`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest frame either side may send.
    pub max_frame: u32,
    pub heartbeat_ms: u32,
}

impl Limits {
    fn encode(self) -> [u8; 8] {
        let mut out = [0u8; 8];
        out[..4].copy_from_slice(&self.max_frame.to_be_bytes());
        out[4..].copy_from_slice(&self.heartbeat_ms.to_be_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        let bytes: &[u8; 8] = bytes.try_into().ok()?;
        Some(Self {
            max_frame: u32::from_be_bytes(bytes[..4].try_into().ok()?),
            heartbeat_ms: u32::from_be_bytes(bytes[4..].try_into().ok()?),
        })
    }
}

/// Why the master refused a connection during the handshake.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("closed by the peer during the handshake")]
    Closed,
    #[error("not a taskmill client (bad magic)")]
    NotTaskmill,
    #[error("client speaks protocol version {0}, we speak {PROTOCOL_VERSION}")]
    Version(u16),
    #[error(
        "wrong authkey or key id, or a relay in between (the client's hello did not verify for \
         this transport)"
    )]
    AuthenticationFailed,
    #[error("unexpected {0} during the handshake")]
    Unexpected(&'static str),
    #[error("cannot read the TLS channel binding: {0}")]
    Binding(std::io::Error),
    #[error(transparent)]
    Codec(#[from] CodecError),
}

fn builder<'a>(key: &'a AuthKey, prologue: &'a [u8]) -> snow::Builder<'a> {
    let params: NoiseParams = NOISE_PARAMS.parse().expect("a valid Noise protocol name");
    snow::Builder::new(params)
        .prologue(prologue)
        .expect("one prologue")
        .psk(0, key.psk())
        .expect("one psk at position 0")
}

fn split(state: &mut HandshakeState) -> SessionKeys {
    let (c2m, m2c) = state.dangerously_get_raw_split();
    SessionKeys {
        client_to_master: Zeroizing::new(c2m),
        master_to_client: Zeroizing::new(m2c),
    }
}

/// The client's half-done handshake: its hello is out, the welcome is awaited.
pub struct ClientHello {
    state: HandshakeState,
}

impl ClientHello {
    /// Starts the client's side: the state to finish with and the `Hello` to send.
    /// `ephemeral` fixes the client's ephemeral private key, for test vectors only.
    pub fn start(
        key: &AuthKey,
        binding: &Binding,
        ephemeral: Option<&[u8; 32]>,
    ) -> (Self, ClientHandshake) {
        let prologue = binding.prologue_for(key.id());
        let mut b = builder(key, &prologue);
        if let Some(e) = ephemeral {
            b = b.fixed_ephemeral_key_for_testing_only(e);
        }
        let mut state = b.build_initiator().expect("NNpsk0 builds");
        let mut msg = [0u8; 48];
        let len = state
            .write_message(&[], &mut msg)
            .expect("the first message fits 48 bytes");
        debug_assert_eq!(len, 48);
        let mut ephemeral = PublicKey::default();
        let mut tag = Tag::default();
        ephemeral.copy_from_slice(&msg[..32]);
        tag.copy_from_slice(&msg[32..]);
        let hello = match key.id() {
            None => ClientHandshake::Hello {
                magic: MAGIC,
                version: PROTOCOL_VERSION,
                ephemeral,
                tag,
            },
            Some(id) => ClientHandshake::ScopedHello {
                magic: MAGIC,
                version: PROTOCOL_VERSION,
                key_id: id.to_wire(),
                ephemeral,
                tag,
            },
        };
        (Self { state }, hello)
    }

    /// Opens the master's `Welcome`: its limits and the session keys, or `None` if it does not
    /// open (the peer does not hold the key, or something on the path altered it).
    pub fn finish(
        mut self,
        ephemeral: &PublicKey,
        sealed: &SealedWelcome,
    ) -> Option<(Limits, SessionKeys)> {
        let mut msg = [0u8; 56];
        msg[..32].copy_from_slice(ephemeral);
        msg[32..].copy_from_slice(sealed);
        let mut payload = [0u8; 56];
        let len = self.state.read_message(&msg, &mut payload).ok()?;
        let limits = Limits::decode(&payload[..len])?;
        Some((limits, split(&mut self.state)))
    }
}

/// The master's answer to a `Hello` that passed the magic and version checks: the `Welcome`
/// and the session keys, or `None` if the hello's tag does not verify (wrong key, or a
/// different transport on the client's side). The hello's key id is `key`'s own
/// ([`AuthKey::id`]). `ephemeral` is for test vectors only.
pub fn answer(
    key: &AuthKey,
    binding: &Binding,
    hello_ephemeral: &PublicKey,
    hello_tag: &Tag,
    limits: Limits,
    ephemeral: Option<&[u8; 32]>,
) -> Option<(MasterHandshake, SessionKeys)> {
    let prologue = binding.prologue_for(key.id());
    let mut b = builder(key, &prologue);
    if let Some(e) = ephemeral {
        b = b.fixed_ephemeral_key_for_testing_only(e);
    }
    let mut state = b.build_responder().expect("NNpsk0 builds");
    let mut msg = [0u8; 48];
    msg[..32].copy_from_slice(hello_ephemeral);
    msg[32..].copy_from_slice(hello_tag);
    let mut payload = [0u8; 48];
    let len = state.read_message(&msg, &mut payload).ok()?;
    if len != 0 {
        return None;
    }
    let mut out = [0u8; 56];
    let len = state
        .write_message(&limits.encode(), &mut out)
        .expect("the second message fits 56 bytes");
    debug_assert_eq!(len, 56);
    let mut ephemeral = PublicKey::default();
    let mut sealed = SealedWelcome::default();
    ephemeral.copy_from_slice(&out[..32]);
    sealed.copy_from_slice(&out[32..]);
    let keys = split(&mut state);
    Some((MasterHandshake::Welcome { ephemeral, sealed }, keys))
}

/// Runs the master's side on a fresh stream; on success the connection's frame cap is raised
/// to `max_frame`, frames are sealed if the transport is plain, and it speaks the session
/// messages. A failure is told to the peer at once.
pub async fn accept<S: Channel>(
    stream: S,
    key: &AuthKey,
    max_frame: usize,
    heartbeat: Duration,
) -> Result<MasterConnection<S>, HandshakeError> {
    let keys = |id: Option<&KeyId>| match id {
        None => vec![(key.clone(), ())],
        Some(_) => vec![],
    };
    match accept_scoped(stream, keys, max_frame, heartbeat).await {
        Ok((conn, ())) => Ok(conn),
        Err(Failed { error, reply }) => {
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

impl<S> From<HandshakeError> for Failed<S> {
    fn from(error: HandshakeError) -> Self {
        Failed { error, reply: None }
    }
}

impl<S> From<CodecError> for Failed<S> {
    fn from(error: CodecError) -> Self {
        HandshakeError::from(error).into()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Failed<S> {
    fn owing(
        conn: Connection<S, ClientHandshake, MasterHandshake>,
        why: Rejection,
        error: HandshakeError,
    ) -> Self {
        Failed {
            error,
            reply: Some((conn, why)),
        }
    }

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

/// [`accept`] for a master with scoped keys: `keys` gives the keys a hello may have been made
/// with, each with what the session gets if it verifies (the key's rights), for the hello's
/// key id (`None`: a plain `Hello`). The keys' own ids must be the id asked for. An id without
/// keys fails exactly like a wrong key, after the same work, so a client cannot learn which
/// ids exist.
pub async fn accept_scoped<S: Channel, T>(
    stream: S,
    keys: impl FnOnce(Option<&KeyId>) -> Vec<(AuthKey, T)>,
    max_frame: usize,
    heartbeat: Duration,
) -> Result<(MasterConnection<S>, T), Failed<S>> {
    let binding = stream.binding().map_err(HandshakeError::Binding)?;
    let mut conn =
        Connection::<S, ClientHandshake, MasterHandshake>::new(stream, HANDSHAKE_MAX_FRAME);
    let (id, ephemeral, tag) = match conn.recv().await? {
        Some(ClientHandshake::Hello {
            magic,
            version,
            ephemeral,
            tag,
        }) => {
            if let Err((why, error)) = check_hello(magic, version) {
                return Err(Failed::owing(conn, why, error));
            }
            (None, ephemeral, tag)
        }
        Some(ClientHandshake::ScopedHello {
            magic,
            version,
            key_id,
            ephemeral,
            tag,
        }) => {
            if let Err((why, error)) = check_hello(magic, version) {
                return Err(Failed::owing(conn, why, error));
            }
            // An id that is not even well-formed is a wrong key like any other.
            let id = KeyId::from_wire(key_id).unwrap_or_else(|| "-".parse().expect("valid"));
            (Some(id), ephemeral, tag)
        }
        Some(ClientHandshake::LegacyHello { magic, version, .. }) => {
            if let Err((why, error)) = check_hello(magic, version) {
                return Err(Failed::owing(conn, why, error));
            }
            return Err(HandshakeError::Unexpected("old hello of the current version").into());
        }
        Some(ClientHandshake::LegacyProof { .. }) => {
            return Err(HandshakeError::Unexpected("proof").into())
        }
        None => return Err(HandshakeError::Closed.into()),
    };
    // Advertise the cap as the codec will enforce it, so both sides use the same number.
    let max_frame = clamp_max_frame(max_frame);
    let limits = Limits {
        max_frame: max_frame as u32,
        heartbeat_ms: heartbeat.as_millis().clamp(1, u128::from(u32::MAX)) as u32,
    };
    let mut candidates = keys(id.as_ref());
    if candidates.is_empty() {
        // No such id: spend the same work on a key nobody holds, then fail as a wrong key does.
        if let Some(id) = id {
            let _ = answer(
                &AuthKey::random().with_id(id),
                &binding,
                &ephemeral,
                &tag,
                limits,
                None,
            );
        }
    }
    let verified = candidates.drain(..).find_map(|(key, grant)| {
        debug_assert_eq!(key.id(), id.as_ref());
        answer(&key, &binding, &ephemeral, &tag, limits, None).map(|done| (done, grant))
    });
    let Some(((welcome, keys), grant)) = verified else {
        return Err(Failed::owing(
            conn,
            Rejection::AuthenticationFailed,
            HandshakeError::AuthenticationFailed,
        ));
    };
    conn.send(&welcome).await?;
    let mut conn = conn.retype();
    if binding == Binding::Plain {
        let (seal, open) = keys.for_side(Side::Master);
        conn.encrypt(seal, open);
    }
    conn.set_max_frame(max_frame);
    Ok((conn, grant))
}

/// The refusal owed to a hello of another protocol or version, and the error it is.
fn check_hello(magic: [u8; 4], version: u16) -> Result<(), (Rejection, HandshakeError)> {
    if magic != MAGIC {
        return Err((Rejection::NotTaskmill, HandshakeError::NotTaskmill));
    }
    if version != PROTOCOL_VERSION {
        let supported = PROTOCOL_VERSION;
        return Err((
            Rejection::UnsupportedVersion { supported },
            HandshakeError::Version(version),
        ));
    }
    Ok(())
}

/// Tells the peer why before the caller drops the connection. Best effort: the peer may be gone.
pub async fn reject<S>(conn: &mut Connection<S, ClientHandshake, MasterHandshake>, why: Rejection)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let _ = conn.send(&MasterHandshake::Rejected(why)).await;
}

/// Runs the client's side on a fresh stream. `peer` names the master in errors. Returns the
/// connection (its frames sealed if the transport is plain) and the master's heartbeat
/// interval.
pub async fn connect<S: Channel>(
    stream: S,
    key: &AuthKey,
    peer: &str,
) -> Result<(ClientConnection<S>, Duration), ConnectError> {
    let binding = stream
        .binding()
        .map_err(|e| ConnectError::Codec(CodecError::Io(e)))?;
    let mut conn =
        Connection::<S, MasterHandshake, ClientHandshake>::new(stream, HANDSHAKE_MAX_FRAME);
    let (state, hello) = ClientHello::start(key, &binding, None);
    conn.send(&hello).await?;
    match recv_handshake(&mut conn).await? {
        MasterHandshake::Welcome { ephemeral, sealed } => {
            let Some((limits, keys)) = state.finish(&ephemeral, &sealed) else {
                return Err(ConnectError::MasterNotAuthenticated(peer.to_owned()));
            };
            let mut conn = conn.retype();
            if binding == Binding::Plain {
                let (seal, open) = keys.for_side(Side::Client);
                conn.encrypt(seal, open);
            }
            conn.set_max_frame(limits.max_frame as usize);
            let heartbeat = Duration::from_millis(limits.heartbeat_ms.max(1).into());
            Ok((conn, heartbeat))
        }
        MasterHandshake::LegacyChallenge { version, .. } => Err(ConnectError::VersionMismatch {
            master: version,
            client: PROTOCOL_VERSION,
        }),
        MasterHandshake::LegacyWelcome { .. } => Err(ConnectError::Protocol(
            "a welcome of an older version".into(),
        )),
        MasterHandshake::Rejected(why) => Err(rejection_error(why)),
    }
}

async fn recv_handshake<S>(
    conn: &mut Connection<S, MasterHandshake, ClientHandshake>,
) -> Result<MasterHandshake, ConnectError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match conn.recv().await {
        Ok(Some(msg)) => Ok(msg),
        Ok(None) | Err(CodecError::Io(_)) => Err(ConnectError::Closed(
            " during the handshake (not a taskmill master, an older one, one that requires \
             TLS, or overloaded?)",
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
