//! `taskmill-master serve`: the long-running broker.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use taskmill_broker::{Keyring, Master};
use taskmill_cli::{say, usage};
use taskmill_protocol::{AuthKey, KeyError};

use crate::cli::ServeArgs;

pub async fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    // First, so that a stop signal is never met by the default action (death without a
    // drain), however early it comes.
    let signals = super::signals();
    let key = match (args.key.load(), &args.keys_file) {
        // Nobody holds a random default key: only named keys get in.
        (Err(KeyError::Missing), Some(_)) => AuthKey::random(),
        (key, _) => key.map_err(usage)?,
    };
    let mut config = args.server.to_config(key, &args.tls).map_err(usage)?;
    if let Some(path) = &args.keys_file {
        config.keys = load_keys(path).map_err(|e| usage(anyhow::anyhow!(e)))?;
    }
    super::files::ensure(&config, args.http.http.is_some()).map_err(usage)?;
    let master = super::open(config, &args.storage)?;
    if let Some(path) = args.keys_file.clone() {
        reload_on_hangup(master.clone(), path);
    }
    let listener = super::bind(&args.listen).await?;
    // Scripts and tests read the bound ports from these lines (the flags may say port 0).
    say(format!("listening on {}", listener.local_addr()?));
    if let Some(http) = super::http::start(&master, &args.http).await? {
        say(format!("http listening on {http}"));
    }
    if let Some(python) = super::python::start(&master, &args.python, args.server.max_frame).await?
    {
        say(format!("python listening on {python}"));
    }
    master.serve(listener, signals.stop).await?;
    Ok(ExitCode::SUCCESS)
}

fn load_keys(path: &Path) -> Result<Keyring, String> {
    let keys = Keyring::load(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o077 != 0) {
            tracing::warn!(
                "keys file {} is readable by other users; chmod 600 it",
                path.display()
            );
        }
    }
    tracing::info!(keys = keys.len(), file = %path.display(), "scoped keys loaded");
    Ok(keys)
}

/// Re-reads the keys file on each SIGHUP. A file that does not load leaves the keys as they
/// were (a typo must not lock everyone out), and says why.
fn reload_on_hangup(master: Master, path: PathBuf) {
    #[cfg(unix)]
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hangup) = signal(SignalKind::hangup()) else {
            tracing::error!("cannot install the SIGHUP handler: the keys file is not reloaded");
            return;
        };
        while hangup.recv().await.is_some() {
            match load_keys(&path) {
                Ok(keys) => master.set_keys(keys),
                Err(err) => tracing::error!("SIGHUP: keys not reloaded, the old ones stay: {err}"),
            }
        }
    });
    #[cfg(not(unix))]
    let _ = (master, path);
}
