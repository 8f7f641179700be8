//! `taskmill-master stats`: fetch a running master's state and print it as a table or JSON
//! (the rendering is `taskmill_cli::stats`, shared with `taskmill stats`).

use std::process::ExitCode;

use anyhow::Context as _;
use taskmill::{Client, ClientOptions};
use taskmill_cli::usage;

use crate::cli::StatsArgs;

pub async fn show(args: StatsArgs) -> anyhow::Result<ExitCode> {
    let connect = &args.connect;
    let key = connect.key.load().map_err(usage)?;
    let options = ClientOptions {
        connect_timeout: args.timeout,
        request_timeout: args.timeout,
        tls: connect.tls_client().map_err(usage)?,
    };
    let mut client = Client::connect_with(&connect.master, &key, &options).await?;
    let stats = client.stats().await.context("stats request failed")?;
    taskmill_cli::stats::print(&connect.master, stats, args.json)?;
    Ok(ExitCode::SUCCESS)
}
