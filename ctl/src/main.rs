//! `taskmill`: a master's queues from the shell, as `redis-cli`, `nats` and beanstalkd's
//! clients give them: parse flags, set up logging, dispatch to a command.
//!
//! # Layout
//! - `cli`: the flags (every one also read from a `TASKMILL_*` variable) and the help text.
//! - `cmd::put`: payloads from the arguments or stdin onto a queue.
//! - `cmd::take`: `take` (removes) and `peek` (leaves in place).
//! - `cmd::dead`: `dead` lists dead letters with their reasons; `kick` moves them back.
//! - `cmd::admin`: `purge`, `delete`, `declare`, `inspect` and `stats`.
//! - `output`: payloads as text, or as JSON with base64 for bytes that are not UTF-8.
//! - `completions` and `man` (hidden): this command line as shell completions and man pages.

mod cli;
mod cmd;
mod output;

use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use cli::{Cli, Command};
use taskmill_cli::{init_tracing, run_main, write_docs};

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Docs(docs) = &cli.command {
        return write_docs(docs, Cli::command());
    }
    init_tracing();
    run_main("taskmill", async {
        match cli.command {
            Command::Put(args) => cmd::put::put(args).await,
            Command::Take(args) => cmd::take::take(args).await,
            Command::Peek(args) => cmd::take::peek(args).await,
            Command::Purge(args) => cmd::admin::purge(args).await,
            Command::Delete(args) => cmd::admin::delete(args).await,
            Command::Declare(args) => cmd::admin::declare(args).await,
            Command::Dead(args) => cmd::dead::list(args).await,
            Command::Kick(args) => cmd::dead::kick(args).await,
            Command::Stats(args) => cmd::admin::stats(args).await,
            Command::Inspect(args) => cmd::admin::inspect(args).await,
            Command::Docs(_) => unreachable!("answered before the runtime starts"),
        }
    })
}
