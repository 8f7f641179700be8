//! `--http`: binds the HTTP port and reads its credentials, for `serve` and `run`.

use std::os::unix::fs::PermissionsExt as _;

use anyhow::Context as _;
use taskmill_broker::http::{HttpAuth, HttpConfig};
use taskmill_broker::Master;
use tracing::warn;

use crate::cli::HttpArgs;

/// Starts the HTTP port on `master` if `--http` asks for it; returns its address.
pub async fn start(
    master: &Master,
    args: &HttpArgs,
) -> anyhow::Result<Option<std::net::SocketAddr>> {
    let Some(addr) = &args.http else {
        return Ok(None);
    };
    let mut config = HttpConfig::default();
    if let Some(path) = &args.http_auth_file {
        let secret = std::fs::read(path)
            .with_context(|| format!("--http-auth-file: cannot read {}", path.display()))?;
        if let Ok(meta) = std::fs::metadata(path) {
            if meta.permissions().mode() & 0o077 != 0 {
                warn!(file = %path.display(), "the HTTP secret file is readable by other users; chmod 600 it");
            }
        }
        let secret = secret
            .strip_suffix(b"\n")
            .map(|s| s.strip_suffix(b"\r").unwrap_or(s))
            .unwrap_or(&secret);
        let auth = HttpAuth::new(secret)
            .with_context(|| format!("--http-auth-file {}", path.display()))?;
        config.auth = Some(auth);
    }
    let listener = super::bind_as(addr, "--http or TASKMILL_HTTP").await?;
    let bound = listener.local_addr()?;
    master.serve_http(listener, config);
    Ok(Some(bound))
}
