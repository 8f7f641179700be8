//! The authkey and the handshake's maths: HMAC-SHA256 proofs and their constant-time check.
//!
//! No I/O beyond reading the key. Each proof covers a domain tag, the protocol version, the
//! prover's role and both nonces, so a proof is useless in any other handshake (replay) and a
//! master's proof cannot pass as a client's (reflection).

use std::fmt;
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac as _};
use rand::RngCore;
use sha2::Sha256;

use crate::message::{Mac, Nonce};

type HmacSha256 = Hmac<Sha256>;

/// Separates our MACs from any other use of the same key.
const DOMAIN: &[u8] = b"taskmill-handshake";

/// Shorter keys are refused: a guessable key makes the whole handshake pointless.
pub const MIN_KEY_LEN: usize = 16;

/// Environment variable the authkey is read from when no key file is given.
pub const AUTHKEY_ENV: &str = "TASKMILL_AUTHKEY";

/// Which side of the handshake a proof speaks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Client,
    Master,
}

impl Role {
    fn tag(self) -> &'static [u8] {
        match self {
            Role::Client => b"client",
            Role::Master => b"master",
        }
    }
}

/// The shared secret. Its `Debug` output never shows the key.
#[derive(Clone, PartialEq, Eq)]
pub struct AuthKey(Vec<u8>);

impl fmt::Debug for AuthKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AuthKey(<{} bytes redacted>)", self.0.len())
    }
}

/// Why no usable key could be found.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(
        "no authkey: set {AUTHKEY_ENV} or pass --authkey-file PATH (the key is never taken from \
         the command line, where `ps` would show it)"
    )]
    Missing,
    #[error("authkey is {len} bytes; at least {MIN_KEY_LEN} are required")]
    TooShort { len: usize },
    #[error("cannot read authkey file {path}: {cause}")]
    File {
        path: PathBuf,
        cause: std::io::Error,
    },
}

impl AuthKey {
    /// A key from raw bytes, refusing keys shorter than [`MIN_KEY_LEN`].
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<Self, KeyError> {
        let bytes = bytes.into();
        if bytes.len() < MIN_KEY_LEN {
            return Err(KeyError::TooShort { len: bytes.len() });
        }
        Ok(Self(bytes))
    }

    /// A fresh random key, for a master that runs its own workers in-process.
    pub fn random() -> Self {
        let mut bytes = vec![0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        Self(bytes)
    }

    /// The key from `file` if given, else from [`AUTHKEY_ENV`]. One trailing newline in the file
    /// is ignored, since editors add one. Returns a warning to log when the file is readable by
    /// users other than its owner.
    pub fn load(file: Option<&Path>) -> Result<(Self, Option<String>), KeyError> {
        if let Some(path) = file {
            let mut bytes = std::fs::read(path).map_err(|cause| KeyError::File {
                path: path.to_owned(),
                cause,
            })?;
            if bytes.ends_with(b"\n") {
                bytes.pop();
                if bytes.ends_with(b"\r") {
                    bytes.pop();
                }
            }
            let warning = loose_permissions(path).then(|| {
                format!(
                    "authkey file {} is readable by other users; chmod 600 it",
                    path.display()
                )
            });
            return Ok((Self::new(bytes)?, warning));
        }
        match std::env::var_os(AUTHKEY_ENV) {
            Some(value) if !value.is_empty() => Ok((Self::new(value.into_encoded_bytes())?, None)),
            _ => Err(KeyError::Missing),
        }
    }

    /// The proof that `role` holds this key, for the handshake between these two nonces.
    pub fn proof(&self, role: Role, version: u16, client: &Nonce, master: &Nonce) -> Mac {
        self.mac(role, version, client, master)
            .finalize()
            .into_bytes()
            .into()
    }

    /// Checks a peer's proof in constant time.
    pub fn verify(
        &self,
        role: Role,
        version: u16,
        client: &Nonce,
        master: &Nonce,
        proof: &Mac,
    ) -> bool {
        self.mac(role, version, client, master)
            .verify_slice(proof)
            .is_ok()
    }

    fn mac(&self, role: Role, version: u16, client: &Nonce, master: &Nonce) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.0).expect("HMAC accepts keys of any length");
        mac.update(DOMAIN);
        mac.update(&version.to_be_bytes());
        mac.update(role.tag());
        mac.update(client);
        mac.update(master);
        mac
    }
}

#[cfg(unix)]
fn loose_permissions(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o077 != 0)
}

#[cfg(not(unix))]
fn loose_permissions(_: &Path) -> bool {
    false
}

/// A fresh random nonce.
pub fn nonce() -> Nonce {
    let mut nonce = [0u8; 32];
    rand::rng().fill_bytes(&mut nonce);
    nonce
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> AuthKey {
        AuthKey::new(s.as_bytes()).unwrap()
    }

    #[test]
    fn the_right_key_verifies_and_a_wrong_one_does_not() {
        let (c, m) = (nonce(), nonce());
        let proof = key("sixteen-byte-key!").proof(Role::Client, 1, &c, &m);
        assert!(key("sixteen-byte-key!").verify(Role::Client, 1, &c, &m, &proof));
        assert!(!key("another-key-16b!!").verify(Role::Client, 1, &c, &m, &proof));
    }

    #[test]
    fn a_proof_is_bound_to_role_nonces_and_version() {
        let k = key("sixteen-byte-key!");
        let (c, m) = (nonce(), nonce());
        let proof = k.proof(Role::Client, 1, &c, &m);
        assert!(!k.verify(Role::Master, 1, &c, &m, &proof), "reflected");
        assert!(!k.verify(Role::Client, 1, &c, &nonce(), &proof), "replayed");
        assert!(!k.verify(Role::Client, 1, &nonce(), &m, &proof), "replayed");
        assert!(!k.verify(Role::Client, 2, &c, &m, &proof), "other version");
        assert!(!k.verify(Role::Client, 1, &m, &c, &proof), "nonces swapped");
    }

    #[test]
    fn short_keys_are_refused_and_debug_hides_the_key() {
        assert!(matches!(
            AuthKey::new("short"),
            Err(KeyError::TooShort { len: 5 })
        ));
        let k = key("super-secret-value");
        assert!(!format!("{k:?}").contains("secret"));
    }

    #[test]
    fn key_file_drops_one_trailing_newline_and_flags_loose_permissions() {
        let dir = std::env::temp_dir().join(format!("taskmill-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("key");
        std::fs::write(&path, "0123456789abcdef\n").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            let (k, warning) = AuthKey::load(Some(&path)).unwrap();
            assert_eq!(k, key("0123456789abcdef"));
            assert!(warning.is_some());
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            assert!(AuthKey::load(Some(&path)).unwrap().1.is_none());
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
