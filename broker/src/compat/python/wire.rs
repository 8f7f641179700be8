//! `multiprocessing.connection` on the wire: frames (a signed 4-byte big-endian length, then
//! the payload) and the mutual HMAC challenge of both dialects, server side.
//!
//! The server challenges first with `{sha256}` + 40 random bytes and accepts the `{sha256}`
//! HMAC of Python 3.12+ or the raw 16-byte HMAC-MD5 a 3.11 client sends (unless MD5 is
//! refused). Only once the client has passed does the server answer the client's challenge:
//! an unauthenticated peer never gets an HMAC out of it. Nothing but the challenge, the
//! verdict and that answer is sent before authentication, and nothing is parsed.

use hmac::{Hmac, Mac};
use md5::Md5;
use rand::TryRngCore;
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Every handshake frame is read under this cap, as CPython does.
pub(super) const HANDSHAKE_MAX_FRAME: usize = 256;

const CHALLENGE: &[u8] = b"#CHALLENGE#";
const WELCOME: &[u8] = b"#WELCOME#";
const FAILURE: &[u8] = b"#FAILURE#";
const SHA256_PREFIX: &[u8] = b"{sha256}";
/// Random bytes in the server's challenge (CPython 3.12's `MESSAGE_LENGTH`).
const NONCE_LEN: usize = 40;
/// The challenge of a Python 3.11 client: 20 random bytes, answered with raw HMAC-MD5.
const LEGACY_CHALLENGE_LEN: usize = 20;

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub(super) enum FrameError {
    #[error("connection closed in the middle of a frame")]
    Truncated,
    /// Negative lengths, including the `-1` escape for payloads over 2 GiB.
    #[error("frame length {0} is not accepted")]
    BadLength(i32),
    #[error("frame of {size} bytes is over the cap of {cap}")]
    TooLarge { size: usize, cap: usize },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Reads one frame of at most `cap` bytes; `None` at a clean end before its first byte. The
/// length is checked before anything is allocated.
pub(super) async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    cap: usize,
) -> Result<Option<Vec<u8>>, FrameError> {
    let mut header = [0u8; 4];
    if r.read(&mut header[..1]).await? == 0 {
        return Ok(None);
    }
    r.read_exact(&mut header[1..]).await.map_err(eof)?;
    let n = i32::from_be_bytes(header);
    let size = usize::try_from(n).map_err(|_| FrameError::BadLength(n))?;
    if size > cap {
        return Err(FrameError::TooLarge { size, cap });
    }
    let mut payload = vec![0; size];
    r.read_exact(&mut payload).await.map_err(eof)?;
    Ok(Some(payload))
}

fn eof(err: std::io::Error) -> FrameError {
    if err.kind() == std::io::ErrorKind::UnexpectedEof {
        FrameError::Truncated
    } else {
        FrameError::Io(err)
    }
}

/// Writes one frame, header and payload in one write (CPython's client reads either way, and
/// one segment avoids a Nagle wait).
pub(super) async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    payload: &[u8],
) -> std::io::Result<()> {
    let n = i32::try_from(payload.len()).map_err(|_| std::io::Error::other("reply over 2 GiB"))?;
    let mut frame = Vec::with_capacity(4 + payload.len());
    frame.extend_from_slice(&n.to_be_bytes());
    frame.extend_from_slice(payload);
    w.write_all(&frame).await?;
    w.flush().await
}

/// How a handshake failed.
#[derive(Debug, thiserror::Error)]
pub(super) enum HandshakeError {
    /// The peer left without sending a byte (a port probe).
    #[error("closed before sending anything")]
    Probe,
    #[error("closed during the handshake")]
    Closed,
    #[error("{0}")]
    Failed(&'static str),
    #[error(transparent)]
    Frame(#[from] FrameError),
}

/// Runs the server side of the handshake with `key`.
pub(super) async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    key: &[u8],
    refuse_md5: bool,
) -> Result<(), HandshakeError> {
    let mut message = SHA256_PREFIX.to_vec();
    let mut nonce = [0u8; NONCE_LEN];
    rand::rngs::OsRng
        .try_fill_bytes(&mut nonce)
        .map_err(|_| HandshakeError::Failed("no randomness for the challenge"))?;
    message.extend_from_slice(&nonce);
    write_frame(s, &[CHALLENGE, &message].concat())
        .await
        .map_err(FrameError::Io)?;
    let response = read_frame(s, HANDSHAKE_MAX_FRAME)
        .await?
        .ok_or(HandshakeError::Probe)?;
    if !verify(key, &message, &response, refuse_md5) {
        let _ = write_frame(s, FAILURE).await;
        return Err(HandshakeError::Failed(
            if refuse_md5 && response.len() == 16 {
                "the client answered with HMAC-MD5 (Python 3.11 or older), which is refused"
            } else {
                "wrong digest: is the client's authkey the same?"
            },
        ));
    }
    write_frame(s, WELCOME).await.map_err(FrameError::Io)?;
    let challenge = read_frame(s, HANDSHAKE_MAX_FRAME)
        .await?
        .ok_or(HandshakeError::Closed)?;
    let theirs = challenge
        .strip_prefix(CHALLENGE)
        .ok_or(HandshakeError::Failed("expected the client's challenge"))?;
    let answer = if theirs.len() == LEGACY_CHALLENGE_LEN && !refuse_md5 {
        hmac_md5(key, theirs).to_vec()
    } else if theirs.starts_with(SHA256_PREFIX) && theirs.len() > LEGACY_CHALLENGE_LEN {
        [SHA256_PREFIX, &hmac_sha256(key, theirs)].concat()
    } else {
        return Err(HandshakeError::Failed(
            "the client's challenge is neither {sha256} nor the 20-byte legacy one",
        ));
    };
    write_frame(s, &answer).await.map_err(FrameError::Io)?;
    match read_frame(s, HANDSHAKE_MAX_FRAME).await? {
        Some(verdict) if verdict == WELCOME => Ok(()),
        Some(_) => Err(HandshakeError::Failed(
            "the client refused our answer: is its authkey the same?",
        )),
        None => Err(HandshakeError::Closed),
    }
}

/// Checks a client's response to `message`, in constant time.
fn verify(key: &[u8], message: &[u8], response: &[u8], refuse_md5: bool) -> bool {
    if let Some(digest) = response.strip_prefix(SHA256_PREFIX) {
        let mut mac = <Hmac<Sha256>>::new_from_slice(key).expect("any key length");
        mac.update(message);
        return mac.verify_slice(digest).is_ok();
    }
    if response.len() == 16 && !refuse_md5 {
        let mut mac = <Hmac<Md5>>::new_from_slice(key).expect("any key length");
        mac.update(message);
        return mac.verify_slice(response).is_ok();
    }
    false
}

pub(super) fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256>>::new_from_slice(key).expect("any key length");
    mac.update(message);
    mac.finalize().into_bytes().into()
}

pub(super) fn hmac_md5(key: &[u8], message: &[u8]) -> [u8; 16] {
    let mut mac = <Hmac<Md5>>::new_from_slice(key).expect("any key length");
    mac.update(message);
    mac.finalize().into_bytes().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// PYTHON-MANAGERS.md §2.6, checked there against CPython 3.12's own functions.
    #[test]
    fn digests_match_cpythons_test_vectors() {
        let legacy: Vec<u8> = (0..20).collect();
        assert_eq!(
            hex(&hmac_md5(b"abc", &legacy)),
            "1b373176a84c1b044d9ba09795b53791"
        );
        let prefixed = [SHA256_PREFIX, &(0..40).collect::<Vec<u8>>()].concat();
        assert_eq!(
            hex(&hmac_sha256(b"abc", &prefixed)),
            "ee2b4cd766c1e0f5eb564525d250361f729d00e3948c83c5651d1cefdb97de31"
        );
        assert_eq!(
            hex(&hmac_md5(b"abc", &prefixed)),
            "3e4faf2fc53f133cd76571e5d3fb9fd5"
        );
    }

    #[test]
    fn both_dialects_verify_and_md5_can_be_refused() {
        let message = [SHA256_PREFIX, &[7u8; 40]].concat();
        let sha = [SHA256_PREFIX, &hmac_sha256(b"k", &message)].concat();
        let md5 = hmac_md5(b"k", &message);
        assert!(verify(b"k", &message, &sha, false));
        assert!(verify(b"k", &message, &sha, true));
        assert!(verify(b"k", &message, &md5, false));
        assert!(!verify(b"k", &message, &md5, true));
        assert!(!verify(b"other", &message, &sha, false));
        assert!(!verify(b"k", &message, &sha[..39], false));
    }

    #[tokio::test]
    async fn a_negative_or_oversized_length_is_refused_before_reading_the_body() {
        let mut input: &[u8] = &[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 1];
        assert!(matches!(
            read_frame(&mut input, 256).await,
            Err(FrameError::BadLength(-1))
        ));
        let mut input: &[u8] = &[0x7f, 0xff, 0xff, 0xff];
        assert!(matches!(
            read_frame(&mut input, 256).await,
            Err(FrameError::TooLarge { cap: 256, .. })
        ));
        let mut input: &[u8] = &[0, 0, 0, 3, b'a'];
        assert!(matches!(
            read_frame(&mut input, 256).await,
            Err(FrameError::Truncated)
        ));
        let mut input: &[u8] = &[];
        assert!(read_frame(&mut input, 256).await.unwrap().is_none());
    }
}
