//! `taskmill-master serve`: the long-running broker.

use std::process::ExitCode;

use taskmill_cli::{say, usage};

use crate::cli::ServeArgs;

pub async fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    // First, so that a stop signal is never met by the default action (death without a
    // drain), however early it comes.
    let signals = super::signals();
    let key = args.key.load().map_err(usage)?;
    let config = args.server.to_config(key, &args.tls).map_err(usage)?;
    super::files::ensure(&config, args.http.http.is_some()).map_err(usage)?;
    let master = super::open(config, &args.storage)?;
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
