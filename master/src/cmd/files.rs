//! The open-files limit a master needs: raised to what the system allows at start, or a clear
//! refusal to start when `--max-connections` cannot be served with it.
//!
//! Every connection is a file descriptor, and the usual soft limit (1024) is below the default
//! `--max-connections` (4096): without this, accepts start failing long before the limit the
//! operator set, and a client is turned away with no reason given.

use anyhow::bail;
use taskmill_broker::http::HttpConfig;
use taskmill_broker::ServerConfig;

/// Descriptors kept for what is not a served connection: listeners, the data directory's
/// files, refusals and failure replies being written, the runtime's own.
const RESERVE: u64 = 512;

/// Raises the soft open-files limit to the hard one and checks that it covers `config` (and
/// the HTTP port if `http`). Returns the limit now in force.
pub fn ensure(config: &ServerConfig, http: bool) -> anyhow::Result<u64> {
    let http_connections = if http {
        HttpConfig::default().max_connections as u64
    } else {
        0
    };
    let need = config.max_connections as u64 + http_connections + RESERVE;
    let have = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(err) => {
            // No way to read or raise it (not Unix, or a sandbox): go on as before.
            tracing::debug!(cause = %err, "cannot read the open-files limit");
            return Ok(u64::MAX);
        }
    };
    if have < need {
        bail!(
            "--max-connections {} needs about {need} open files, but this process may open at \
             most {have} (the hard limit, `ulimit -Hn`): lower --max-connections to {} or \
             less, or raise the limit (`ulimit -n`, LimitNOFILE= in systemd, --ulimit nofile= \
             in Docker)",
            config.max_connections,
            have.saturating_sub(http_connections + RESERVE).max(1),
        );
    }
    Ok(have)
}
