//! One module per subcommand.

pub mod run;
pub mod serve;
pub mod stats;

use std::sync::Arc;

use anyhow::{bail, Context as _};
use taskmill_broker::store::Memory;
use taskmill_broker::{Master, ServerConfig};
use tokio::net::TcpListener;

/// Binds `addr`, saying plainly when the port is taken.
pub async fn bind(addr: &str) -> anyhow::Result<TcpListener> {
    match TcpListener::bind(addr).await {
        Ok(listener) => Ok(listener),
        Err(err) if err.kind() == std::io::ErrorKind::AddrInUse => {
            bail!("cannot listen on {addr}: the port is in use (pick another with --listen or TASKMILL_LISTEN)")
        }
        Err(err) => Err(err).with_context(|| format!("cannot listen on {addr}")),
    }
}

/// The master `serve` and `run` serve.
pub fn open(config: ServerConfig) -> anyhow::Result<Master> {
    Ok(Master::open(config, Arc::new(Memory))?)
}
