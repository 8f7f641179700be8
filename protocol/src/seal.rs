//! Sealed frames: each frame's body after the handshake is encrypted and authenticated with
//! AES-256-GCM under the direction's key from the Noise handshake, with the frame's number in
//! its direction as the nonce.
//!
//! The nonce is Noise's own (4 zero bytes, then the 64-bit counter big-endian), so a frame
//! opens only as the next frame of its direction: one altered, replayed, reordered or dropped
//! in flight fails at the frame where the stream departs from what was sent, and the
//! connection ends there. Noise's transport messages are capped at 64 KiB; frames go up to
//! 64 MiB, so the codec seals whole frames with the split keys itself (an AEAD with a 96-bit
//! counter nonce is sound far past either size).

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use zeroize::Zeroizing;

/// Bytes a sealed frame adds to its body.
pub const TAG_LEN: usize = 16;

/// The two directions' keys from a finished handshake; wiped when dropped.
pub struct SessionKeys {
    pub(crate) client_to_master: Zeroizing<[u8; 32]>,
    pub(crate) master_to_client: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKeys(<redacted>)")
    }
}

/// Which side of the session we are: it picks which key seals and which opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Master,
}

/// One direction's key and frame counter.
pub struct FrameKey {
    key: LessSafeKey,
    next: u64,
}

impl std::fmt::Debug for FrameKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FrameKey(<redacted>, next {})", self.next)
    }
}

/// Why a frame could not be sealed or opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SealError {
    /// The tag did not verify.
    Forged,
    /// 2^64 frames in one direction: never in practice, but the nonce must not repeat.
    Exhausted,
}

impl FrameKey {
    fn new(key: &[u8; 32]) -> Self {
        let key = UnboundKey::new(&AES_256_GCM, key).expect("AES-256-GCM takes 32-byte keys");
        Self {
            key: LessSafeKey::new(key),
            next: 0,
        }
    }

    fn nonce(&mut self) -> Result<Nonce, SealError> {
        let n = self.next;
        self.next = n.checked_add(1).ok_or(SealError::Exhausted)?;
        let mut nonce = [0u8; NONCE_LEN];
        nonce[4..].copy_from_slice(&n.to_be_bytes());
        Ok(Nonce::assume_unique_for_key(nonce))
    }

    /// Encrypts `body` in place and returns the tag to append.
    pub fn seal(&mut self, body: &mut [u8]) -> Result<[u8; TAG_LEN], SealError> {
        let nonce = self.nonce()?;
        let tag = self
            .key
            .seal_in_place_separate_tag(nonce, Aad::empty(), body)
            .map_err(|_| SealError::Forged)?;
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(tag.as_ref());
        Ok(out)
    }

    /// Decrypts `frame` (body then tag) in place; returns the body's length.
    pub fn open(&mut self, frame: &mut [u8]) -> Result<usize, SealError> {
        let nonce = self.nonce()?;
        let body = self
            .key
            .open_in_place(nonce, Aad::empty(), frame)
            .map_err(|_| SealError::Forged)?;
        Ok(body.len())
    }

    /// Frames sealed or opened so far.
    pub fn count(&self) -> u64 {
        self.next
    }
}

impl SessionKeys {
    /// The key `side` seals its frames with, and the one it opens the peer's with.
    pub fn for_side(&self, side: Side) -> (FrameKey, FrameKey) {
        let c2m = FrameKey::new(&self.client_to_master);
        let m2c = FrameKey::new(&self.master_to_client);
        match side {
            Side::Client => (c2m, m2c),
            Side::Master => (m2c, c2m),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> SessionKeys {
        SessionKeys {
            client_to_master: Zeroizing::new([1; 32]),
            master_to_client: Zeroizing::new([2; 32]),
        }
    }

    #[test]
    fn frames_open_once_in_order_in_their_own_direction_only() {
        let (mut c_seal, _) = keys().for_side(Side::Client);
        let (_, mut m_open) = keys().for_side(Side::Master);
        let (_, mut c_open) = keys().for_side(Side::Client);
        let sealed: Vec<Vec<u8>> = [b"first".as_slice(), b"second"]
            .iter()
            .map(|body| {
                let mut frame = body.to_vec();
                let tag = c_seal.seal(&mut frame).unwrap();
                frame.extend_from_slice(&tag);
                frame
            })
            .collect();
        assert_ne!(&sealed[0][..5], b"first", "encrypted");
        // The master's opener of client frames would take the first; the client's own
        // opener (the master's direction) takes neither: no reflection.
        assert_eq!(c_open.open(&mut sealed[0].clone()), Err(SealError::Forged));
        // Out of order: the second frame in the first's place fails.
        assert_eq!(m_open.open(&mut sealed[1].clone()), Err(SealError::Forged));
        let (_, mut m_open) = keys().for_side(Side::Master);
        let mut first = sealed[0].clone();
        assert_eq!(m_open.open(&mut first), Ok(5));
        assert_eq!(&first[..5], b"first");
        // Replayed: the first frame again, where the second belongs.
        assert_eq!(m_open.open(&mut sealed[0].clone()), Err(SealError::Forged));
        let (_, mut m_open) = keys().for_side(Side::Master);
        let mut flipped = sealed[0].clone();
        flipped[2] ^= 1;
        assert_eq!(m_open.open(&mut flipped), Err(SealError::Forged));
    }
}
