//! `--python-listen`: binds the Python listener and reads its key, for `serve` and `run`.

use anyhow::Context as _;
use taskmill_broker::compat::python::{Delivery, PythonConfig};
use taskmill_broker::Master;
use taskmill_cli::usage;
use taskmill_protocol::AuthKey;
use tracing::warn;

use crate::cli::{PythonArgs, PythonDelivery};

/// Starts the Python listener on `master` if `--python-listen` asks for it, with requests
/// capped at `max_frame` (the master's own cap); returns its address.
pub async fn start(
    master: &Master,
    args: &PythonArgs,
    max_frame: usize,
) -> anyhow::Result<Option<std::net::SocketAddr>> {
    let Some(addr) = &args.python_listen else {
        return Ok(None);
    };
    let mut config = PythonConfig::new();
    if let Some(path) = &args.python_authkey_file {
        let (key, warnings) = AuthKey::load(Some(path))
            .map_err(|e| usage(anyhow::anyhow!("--python-authkey-file: {e}")))?;
        for warning in warnings {
            warn!("{warning}");
        }
        config.key = Some(key);
    }
    config.refuse_md5 = args.python_refuse_md5;
    if !args.python_register.is_empty() {
        config.names = args.python_register.clone();
    }
    config.max_frame = max_frame;
    config.delivery = match args.python_delivery {
        PythonDelivery::OnWrite => Delivery::OnWrite,
        PythonDelivery::OnNextRequest => Delivery::OnNextRequest,
    };
    let listener = super::bind_as(addr, "--python-listen or TASKMILL_PYTHON_LISTEN")
        .await
        .context("the Python listener")?;
    let bound = listener.local_addr()?;
    master.serve_python(listener, config);
    Ok(Some(bound))
}
