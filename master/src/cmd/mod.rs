//! One module per subcommand.

pub mod files;
pub mod http;
pub mod python;
pub mod run;
pub mod serve;
pub mod stats;

use std::sync::Arc;

use anyhow::{bail, Context as _};
use taskmill_broker::store::fs::RealFs;
use taskmill_broker::store::{Memory, Wal, WalOptions};
use taskmill_broker::{Master, ServerConfig};
use tokio::net::TcpListener;

use crate::cli::StorageArgs;

/// The stop signals: the first stops gracefully (drain, then stop); a second stops at once,
/// without the grace period (a durable master loses nothing it acknowledged either way).
pub fn signals() -> taskmill_cli::Signals {
    let signals = taskmill_cli::signals();
    let now = signals.now.clone();
    tokio::spawn(async move {
        now.cancelled().await;
        taskmill_cli::tell("taskmill-master: a second stop signal: exiting now");
        std::process::exit(130);
    });
    signals
}

/// Binds `addr`, saying plainly when the port is taken.
pub async fn bind(addr: &str) -> anyhow::Result<TcpListener> {
    bind_as(addr, "--listen or TASKMILL_LISTEN").await
}

/// Binds `addr`, naming `flag` as the way to choose another when the port is taken.
pub async fn bind_as(addr: &str, flag: &str) -> anyhow::Result<TcpListener> {
    match TcpListener::bind(addr).await {
        Ok(listener) => Ok(listener),
        Err(err) if err.kind() == std::io::ErrorKind::AddrInUse => {
            bail!("cannot listen on {addr}: the port is in use (pick another with {flag})")
        }
        Err(err) => Err(err).with_context(|| format!("cannot listen on {addr}")),
    }
}

/// The master `serve` and `run` serve: on its data directory, or in memory.
pub fn open(config: ServerConfig, storage: &StorageArgs) -> anyhow::Result<Master> {
    let Some(dir) = &storage.data_dir else {
        return Ok(Master::open(config, Arc::new(Memory))?);
    };
    let options = WalOptions {
        fsync: storage.fsync,
        max_disk: storage.max_disk,
        repair: storage.repair,
        segment_bytes: storage.segment_bytes,
        compact_bytes: storage.snapshot_after,
    };
    let wal = Wal::open(Arc::new(RealFs), dir, options)
        .with_context(|| format!("cannot use the data directory {}", dir.display()))?;
    Master::open(config, wal)
        .with_context(|| format!("cannot recover the queues from {}", dir.display()))
}
