//! The authkey: loading and checking it, keeping it out of sight, and the pre-shared key the
//! Noise handshake (`handshake.rs`) is keyed with.
//!
//! No I/O beyond reading the key.

use std::fmt;
use std::path::{Path, PathBuf};

use std::sync::Mutex;

use hmac::{Hmac, Mac as _};
use rand::{RngCore, TryRngCore};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::message::Nonce;

type HmacSha256 = Hmac<Sha256>;

/// Separates the pre-shared key from any other use of the same authkey.
const PSK_LABEL: &[u8] = b"taskmill-noise-psk-v4";

/// Shorter keys are refused: a guessable key makes the whole handshake pointless.
pub const MIN_KEY_LEN: usize = 16;

/// Shorter keys are accepted with a warning: a recorded handshake lets anyone test guesses
/// offline, and only a key of this much randomness (what `keygen` makes) is out of reach.
pub const RECOMMENDED_KEY_LEN: usize = 32;

/// Environment variable the authkey is read from when no key file is given.
pub const AUTHKEY_ENV: &str = "TASKMILL_AUTHKEY";

/// Keys printed in taskmill's own examples (`.env.example`, the crate docs): anyone who has
/// read them knows them, so they are refused like a short key.
pub const PLACEHOLDER_KEYS: &[&str] =
    &["change-me-to-a-long-random-secret", "a-long-shared-secret"];

/// Fewest different byte values a key must hold: `aaaaaaaaaaaaaaaa` is 16 bytes long but
/// one guess away. A random key of 16 bytes or more falls short of this once in far more
/// tries than anyone makes (16 hex digits drawn 32 times nearly always show all 16).
pub const MIN_DISTINCT_BYTES: usize = 8;

/// The shared secret. Its `Debug` output never shows the key, its bytes are wiped when it is
/// dropped, and it has no `PartialEq` (a plain comparison would not be constant-time).
#[derive(Clone)]
pub struct AuthKey {
    key: Zeroizing<Vec<u8>>,
    /// The key's name for a master with scoped keys: sent in a `ScopedHello` and bound into
    /// both proofs. `None`: the master's default key, with every right.
    id: Option<KeyId>,
    /// `HMAC-SHA256(key, PSK_LABEL)`: Noise takes a 32-byte pre-shared key, ours may be any
    /// length from 16 bytes. Computed once, not per handshake.
    psk: Zeroizing<[u8; 32]>,
}

impl fmt::Debug for AuthKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AuthKey(<{} bytes redacted>", self.key.len())?;
        match &self.id {
            Some(id) => write!(f, ", id {id})"),
            None => write!(f, ")"),
        }
    }
}

/// Longest key id, in bytes: ids travel in a fixed-size field, padded with zero bytes.
pub const KEY_ID_LEN: usize = 16;

/// Environment variable a client's key id is read from when `--key-id` is not given.
pub const KEY_ID_ENV: &str = "TASKMILL_KEY_ID";

/// The name of a scoped key: 1 to [`KEY_ID_LEN`] bytes of `[A-Za-z0-9._-]`, so it is padded
/// without ambiguity and prints safely in logs.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId([u8; KEY_ID_LEN]);

impl KeyId {
    /// The id as it travels in a `ScopedHello`.
    pub fn to_wire(self) -> [u8; KEY_ID_LEN] {
        self.0
    }

    /// The id a `ScopedHello` carries, or `None` if it is not a valid one.
    pub fn from_wire(bytes: [u8; KEY_ID_LEN]) -> Option<Self> {
        let len = bytes.iter().position(|&b| b == 0).unwrap_or(KEY_ID_LEN);
        let name = std::str::from_utf8(&bytes[..len]).ok()?;
        let id: KeyId = name.parse().ok()?;
        // Bytes after the first zero must be zero too: one id, one encoding.
        (id.0 == bytes).then_some(id)
    }

    pub fn as_str(&self) -> &str {
        let len = self.0.iter().position(|&b| b == 0).unwrap_or(KEY_ID_LEN);
        std::str::from_utf8(&self.0[..len]).unwrap_or("?")
    }
}

impl std::str::FromStr for KeyId {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, String> {
        let ok = |b: u8| b.is_ascii_alphanumeric() || b"._-".contains(&b);
        if name.is_empty() || name.len() > KEY_ID_LEN || !name.bytes().all(ok) {
            return Err(format!(
                "key id {name:?}: use 1 to {KEY_ID_LEN} characters of A-Z a-z 0-9 . _ -"
            ));
        }
        let mut bytes = [0u8; KEY_ID_LEN];
        bytes[..name.len()].copy_from_slice(name.as_bytes());
        Ok(Self(bytes))
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({})", self.as_str())
    }
}

/// The key taken out of the environment by [`take_key_from_env`], for [`AuthKey::load`].
static ENV_KEY: Mutex<Option<Zeroizing<Vec<u8>>>> = Mutex::new(None);

/// Moves [`AUTHKEY_ENV`] out of the process environment into memory that is wiped on drop, so
/// `/proc/PID/environ`, `docker inspect`'s process view and every child process no longer see
/// it; [`AuthKey::load`] finds it there. Call it first thing in `main`, before any thread
/// starts: changing the environment while another thread reads it is undefined behaviour in C
/// libraries.
pub fn take_key_from_env() {
    if let Some(value) = std::env::var_os(AUTHKEY_ENV) {
        scrub_env_entry(AUTHKEY_ENV, || std::env::remove_var(AUTHKEY_ENV));
        let mut stash = ENV_KEY.lock().unwrap_or_else(|e| e.into_inner());
        *stash = Some(Zeroizing::new(value.into_encoded_bytes()));
    }
}

/// Runs `remove` (which unlinks `name` from `environ`), then overwrites the `name=value`
/// string it unlinked with zero bytes: `/proc/PID/environ` reads the block the kernel wrote
/// at exec, which unlinking alone leaves as it was.
#[cfg(unix)]
fn scrub_env_entry(name: &str, remove: impl FnOnce()) {
    let Ok(c_name) = std::ffi::CString::new(name) else {
        return remove();
    };
    // SAFETY: called before other threads exist (see `take_key_from_env`). `getenv` returns
    // null or a pointer to the NUL-terminated value of an entry `name=value`, so the entry
    // starts `name.len() + 1` bytes before it. Unlinking frees nothing (C libraries never free
    // environment strings, since `getenv` results may still be held), and the strings are
    // writable memory of this process; zeroing up to, not including, the terminating NUL
    // leaves every other entry intact.
    unsafe {
        let value = libc::getenv(c_name.as_ptr());
        remove();
        if value.is_null() {
            return;
        }
        let entry = value.sub(name.len() + 1);
        let len = name.len() + 1 + libc::strlen(value);
        std::ptr::write_bytes(entry, 0, len);
    }
}

#[cfg(not(unix))]
fn scrub_env_entry(_: &str, remove: impl FnOnce()) {
    remove()
}

/// The key from [`take_key_from_env`]'s stash, else from the environment itself.
fn env_key() -> Option<Zeroizing<Vec<u8>>> {
    let stash = ENV_KEY.lock().unwrap_or_else(|e| e.into_inner());
    stash
        .clone()
        .or_else(|| std::env::var_os(AUTHKEY_ENV).map(|v| Zeroizing::new(v.into_encoded_bytes())))
        .filter(|v| !v.is_empty())
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
    #[error(
        "the authkey is a placeholder from taskmill's examples, known to anyone who read them; \
         make a key of your own with `taskmill-master keygen`"
    )]
    Placeholder,
    #[error(
        "the authkey is too easy to guess: {why}; make a key of your own with \
         `taskmill-master keygen`"
    )]
    TooSimple { why: String },
    #[error("cannot read authkey file {path}: {cause}")]
    File {
        path: PathBuf,
        cause: std::io::Error,
    },
}

impl AuthKey {
    /// A key from raw bytes. Refuses keys shorter than [`MIN_KEY_LEN`], the
    /// [`PLACEHOLDER_KEYS`] (in any letter case), keys with fewer than [`MIN_DISTINCT_BYTES`]
    /// different bytes, and keys that are a shorter piece repeated (`0123456789` twice or
    /// more): each is a key an attacker tries early.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<Self, KeyError> {
        let bytes = Zeroizing::new(bytes.into());
        if bytes.len() < MIN_KEY_LEN {
            return Err(KeyError::TooShort { len: bytes.len() });
        }
        if PLACEHOLDER_KEYS
            .iter()
            .any(|p| p.as_bytes().eq_ignore_ascii_case(&bytes))
        {
            return Err(KeyError::Placeholder);
        }
        let mut seen = [false; 256];
        bytes.iter().for_each(|&b| seen[usize::from(b)] = true);
        let distinct = seen.iter().filter(|&&s| s).count();
        if distinct < MIN_DISTINCT_BYTES {
            return Err(KeyError::TooSimple {
                why: format!(
                    "it has {distinct} different characters, and {MIN_DISTINCT_BYTES} are needed"
                ),
            });
        }
        if let Some(period) = (1..=bytes.len() / 2).find(|&p| repeats_every(&bytes, p)) {
            return Err(KeyError::TooSimple {
                why: format!("it is its first {period} bytes repeated"),
            });
        }
        Ok(Self::from_checked(bytes))
    }

    fn from_checked(key: Zeroizing<Vec<u8>>) -> Self {
        let mut mac = HmacSha256::new_from_slice(&key).expect("HMAC accepts keys of any length");
        mac.update(PSK_LABEL);
        let psk = Zeroizing::new(mac.finalize().into_bytes().into());
        Self { key, psk, id: None }
    }

    /// This key under the name `id`: a client sends it in a `ScopedHello`, and both sides
    /// bind it into the handshake (`handshake.rs`).
    pub fn with_id(mut self, id: KeyId) -> Self {
        self.id = Some(id);
        self
    }

    /// The key's name, if it is a scoped key.
    pub fn id(&self) -> Option<&KeyId> {
        self.id.as_ref()
    }

    /// The pre-shared key for the Noise handshake.
    pub(crate) fn psk(&self) -> &[u8; 32] {
        &self.psk
    }

    /// Whether this is a shorter key than [`RECOMMENDED_KEY_LEN`].
    pub fn is_short(&self) -> bool {
        self.key.len() < RECOMMENDED_KEY_LEN
    }

    /// The key's bytes, for the other handshakes keyed by the same secret (the Python manager
    /// listener's HMACs). Never log or send them.
    pub fn secret(&self) -> &[u8] {
        &self.key
    }

    /// A fresh random key, for a master that runs its own workers in-process.
    pub fn random() -> Self {
        let mut bytes = Zeroizing::new(vec![0u8; 32]);
        rand::rng().fill_bytes(&mut bytes);
        Self::from_checked(bytes)
    }

    /// A fresh key as text to store and share: 32 bytes from the operating system's random
    /// source, in hex (64 characters, safe in shells, `.env` files and YAML).
    pub fn generate_text() -> String {
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng
            .try_fill_bytes(&mut bytes)
            .expect("the operating system's random source is available");
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The key from `file` if given, else from [`AUTHKEY_ENV`] (or where
    /// [`take_key_from_env`] put it). One trailing newline (`\n` or `\r\n`) is dropped from
    /// either, since editors and `echo` add one. Returns warnings to log: a key shorter than
    /// [`RECOMMENDED_KEY_LEN`]; a file readable by users other than its owner; a file given
    /// while [`AUTHKEY_ENV`] is set too (the file wins).
    pub fn load(file: Option<&Path>) -> Result<(Self, Vec<String>), KeyError> {
        let (key, mut warnings) = Self::load_unchecked_length(file)?;
        if key.is_short() {
            warnings.push(format!(
                "the authkey is {} bytes; use {RECOMMENDED_KEY_LEN} or more random bytes \
                 (`taskmill-master keygen`), since a recorded handshake lets anyone test \
                 guesses offline",
                key.key.len()
            ));
        }
        Ok((key, warnings))
    }

    fn load_unchecked_length(file: Option<&Path>) -> Result<(Self, Vec<String>), KeyError> {
        let env = env_key();
        let Some(path) = file else {
            let mut value = env.ok_or(KeyError::Missing)?;
            without_newline(&mut value);
            return Ok((Self::new(std::mem::take(&mut *value))?, vec![]));
        };
        let mut bytes = Zeroizing::new(std::fs::read(path).map_err(|cause| KeyError::File {
            path: path.to_owned(),
            cause,
        })?);
        without_newline(&mut bytes);
        let mut warnings = Vec::new();
        if loose_permissions(path) {
            warnings.push(format!(
                "authkey file {} is readable by other users; chmod 600 it",
                path.display()
            ));
        }
        if env.is_some() {
            warnings.push(format!(
                "{AUTHKEY_ENV} is set and so is a key file: using the key in {}",
                path.display()
            ));
        }
        Ok((Self::new(std::mem::take(&mut *bytes))?, warnings))
    }
}

/// Drops one trailing `\n` or `\r\n`.
fn without_newline(bytes: &mut Vec<u8>) {
    if bytes.ends_with(b"\n") {
        bytes.pop();
        if bytes.ends_with(b"\r") {
            bytes.pop();
        }
    }
}

/// Whether `bytes` is its first `period` bytes over and over (the last copy may be cut short).
fn repeats_every(bytes: &[u8], period: usize) -> bool {
    bytes[period..]
        .iter()
        .zip(bytes)
        .all(|(later, earlier)| later == earlier)
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
    fn the_psk_depends_on_every_byte_of_the_key_and_nothing_else() {
        assert_eq!(
            key("sixteen-byte-key!").psk(),
            key("sixteen-byte-key!").psk()
        );
        assert_ne!(
            key("sixteen-byte-key!").psk(),
            key("sixteen-byte-key?").psk()
        );
        assert_ne!(
            key("sixteen-byte-key!").psk().as_slice(),
            b"sixteen-byte-key!"
        );
    }

    #[test]
    fn key_ids_have_one_encoding_and_a_small_alphabet() {
        let id: KeyId = "worker-1".parse().unwrap();
        assert_eq!(id.to_string(), "worker-1");
        assert_eq!(KeyId::from_wire(id.to_wire()), Some(id));
        for bad in ["", "has space", "seventeen-chars-x", "é"] {
            assert!(bad.parse::<KeyId>().is_err(), "{bad}");
        }
        let mut wire = id.to_wire();
        wire[KEY_ID_LEN - 1] = b'x';
        assert_eq!(KeyId::from_wire(wire), None, "bytes after the zero padding");
        assert_eq!(KeyId::from_wire([0; KEY_ID_LEN]), None);
        let k = key("super-secret-value").with_id(id);
        assert!(format!("{k:?}").contains("worker-1"));
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
    fn placeholders_and_keys_with_little_variety_are_refused() {
        for placeholder in [
            "change-me-to-a-long-random-secret",
            "CHANGE-ME-TO-A-LONG-RANDOM-SECRET",
            "a-long-shared-secret",
        ] {
            assert!(
                matches!(AuthKey::new(placeholder), Err(KeyError::Placeholder)),
                "{placeholder}"
            );
        }
        for simple in [
            "aaaaaaaaaaaaaaaaaaaa",
            "abababababababab",
            "abcabcabcabcabcabc",
            "0123456789012345678901234",
            "letmeinletmeinletmein",
        ] {
            let err = AuthKey::new(simple).unwrap_err();
            assert!(matches!(err, KeyError::TooSimple { .. }), "{simple}");
            assert!(err.to_string().contains("taskmill-master keygen"), "{err}");
        }
        // Eight different bytes and no repeated piece is enough; so is any generated key.
        for fine in [
            "0123456789abcdef",
            "abcdefgh-abcdefg",
            "correct horse battery staple",
        ] {
            key(fine);
        }
        for _ in 0..100 {
            let text = AuthKey::generate_text();
            assert_eq!(text.len(), 64);
            assert!(text.bytes().all(|b| b.is_ascii_hexdigit()));
            key(&text);
        }
        assert_ne!(AuthKey::generate_text(), AuthKey::generate_text());
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
            let loose = |warnings: &[String]| warnings.iter().any(|w| w.contains("chmod 600"));
            let (k, warnings) = AuthKey::load(Some(&path)).unwrap();
            assert_eq!(
                k.psk(),
                key("0123456789abcdef").psk(),
                "the newline was dropped"
            );
            assert!(loose(&warnings), "{warnings:?}");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            assert!(!loose(&AuthKey::load(Some(&path)).unwrap().1));
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
