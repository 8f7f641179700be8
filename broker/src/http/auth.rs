//! `--http-auth-file`: one secret that a request presents as a bearer token or as the password
//! of HTTP Basic credentials (any user name), so that both Prometheus (`authorization` /
//! `basic_auth`) and a browser's login prompt work.
//!
//! The comparison is of SHA-256 digests with a constant-time equality, so neither the time a
//! wrong guess takes nor its length tells anything about the secret; guessing online is
//! throttled per address by the HTTP port's guard.

use base64::Engine as _;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Shortest secret accepted: the authkey's floor, for the same reason.
pub const MIN_SECRET: usize = 16;

/// The HTTP port's credentials.
#[derive(Clone)]
pub struct HttpAuth {
    digest: [u8; 32],
}

impl std::fmt::Debug for HttpAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HttpAuth(..)")
    }
}

/// A secret too short to be one.
#[derive(Debug, thiserror::Error)]
#[error("the HTTP secret is {0} bytes; it needs at least {MIN_SECRET}")]
pub struct WeakSecret(usize);

/// What a request's `Authorization` header amounts to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// No credentials: a browser's first request, before it asks its user.
    Missing,
    /// Credentials that do not match: counted against the address.
    Wrong,
}

impl HttpAuth {
    /// Credentials checking for `secret` (a file's contents, one trailing newline already
    /// removed by the caller).
    pub fn new(secret: &[u8]) -> Result<Self, WeakSecret> {
        if secret.len() < MIN_SECRET {
            return Err(WeakSecret(secret.len()));
        }
        Ok(Self {
            digest: Sha256::digest(secret).into(),
        })
    }

    /// Judges an `Authorization` header value (`None` when absent).
    pub fn check(&self, header: Option<&[u8]>) -> Verdict {
        let Some(header) = header else {
            return Verdict::Missing;
        };
        let presented = match split_scheme(header) {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case(b"bearer") => rest.to_vec(),
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case(b"basic") => {
                let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(rest) else {
                    return Verdict::Wrong;
                };
                match decoded.iter().position(|&b| b == b':') {
                    Some(colon) => decoded[colon + 1..].to_vec(),
                    None => return Verdict::Wrong,
                }
            }
            _ => return Verdict::Wrong,
        };
        let digest: [u8; 32] = Sha256::digest(&presented).into();
        if bool::from(digest.ct_eq(&self.digest)) {
            Verdict::Allowed
        } else {
            Verdict::Wrong
        }
    }
}

fn split_scheme(header: &[u8]) -> Option<(&[u8], &[u8])> {
    let space = header.iter().position(|&b| b == b' ')?;
    let rest = &header[space + 1..];
    let start = rest.iter().position(|&b| b != b' ')?;
    Some((&header[..space], &rest[start..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"a-dashboard-secret-of-some-length";

    fn basic(user_pass: &str) -> Vec<u8> {
        let encoded = base64::engine::general_purpose::STANDARD.encode(user_pass);
        format!("Basic {encoded}").into_bytes()
    }

    #[test]
    fn a_bearer_token_or_a_basic_password_with_any_user_is_allowed() {
        let auth = HttpAuth::new(SECRET).unwrap();
        let bearer = [b"Bearer ".as_slice(), SECRET].concat();
        assert_eq!(auth.check(Some(&bearer)), Verdict::Allowed);
        let user = format!("ops:{}", std::str::from_utf8(SECRET).unwrap());
        assert_eq!(auth.check(Some(&basic(&user))), Verdict::Allowed);
        let empty_user = format!(":{}", std::str::from_utf8(SECRET).unwrap());
        assert_eq!(auth.check(Some(&basic(&empty_user))), Verdict::Allowed);
    }

    #[test]
    fn anything_else_is_wrong_and_no_header_is_missing() {
        let auth = HttpAuth::new(SECRET).unwrap();
        assert_eq!(auth.check(None), Verdict::Missing);
        for bad in [
            b"Bearer a-dashboard-secret-of-some-lengtH".to_vec(),
            b"Bearer".to_vec(),
            b"Token a-dashboard-secret-of-some-length".to_vec(),
            b"Basic !!!not-base64".to_vec(),
            basic("no-colon-here"),
            basic("ops:wrong"),
        ] {
            assert_eq!(auth.check(Some(&bad)), Verdict::Wrong, "{bad:?}");
        }
    }

    #[test]
    fn a_short_secret_is_refused() {
        assert!(HttpAuth::new(b"short").is_err());
    }
}
