//! `taskmill-master serve`: the long-running broker.

use std::process::ExitCode;

use taskmill_cli::{say, usage};

use crate::cli::ServeArgs;

pub async fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let key = args.key.load().map_err(usage)?;
    let config = args.server.to_config(key, &args.tls).map_err(usage)?;
    let master = super::open(config, &args.storage)?;
    let listener = super::bind(&args.listen).await?;
    // Scripts and tests read the bound port from this line (the flag may say port 0).
    say(format!("listening on {}", listener.local_addr()?));
    let signals = super::signals();
    master.serve(listener, signals.stop).await?;
    Ok(ExitCode::SUCCESS)
}
