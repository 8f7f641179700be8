//! The `taskmill` command line: one subcommand per queue operation, each taking the shared
//! connection flags and `--json`; every flag can also be set through a `TASKMILL_*` variable.

use std::ffi::OsString;
use std::time::Duration;

use clap::builder::BoolishValueParser;
use clap::{Args, Parser, Subcommand};
use taskmill_cli::{parse_duration, parse_positive_duration, ConnectArgs, Docs};

/// The exit codes, for the end of every help screen (a macro so `concat!` can use it). As the
/// other binaries' (`taskmill_cli::exit_codes_help!`), less the second stop signal: this
/// command installs no handler, so Ctrl-C ends it as it ends any command.
macro_rules! exit_codes {
    () => {
        "Exit codes: 0 success (also a take, peek or dead that found nothing); 1 a failure at \
         run time (no master, a wrong key, a request the master refused, a put that found no \
         room in time); 2 a mistake in the flags, the environment, the input or a file they \
         name, found before starting."
    };
}

/// taskmill: put, take and peek at a master's queues, and look after them, from the shell.
#[derive(Debug, Parser)]
#[command(
    name = "taskmill",
    version,
    after_help = concat!(
        "Each command connects to the master at --master (TASKMILL_MASTER) with the shared \
         authkey from TASKMILL_AUTHKEY or --authkey-file, never from the command line, makes \
         its requests and exits. Every flag can also be set through the variable shown beside \
         it; --json (TASKMILL_JSON=1) prints JSON for scripts. Logging: stderr, at the level \
         in RUST_LOG (default info).\n\n",
        exit_codes!()
    )
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Put payloads on a queue, from the arguments or from stdin one per line; prints their ids.
    #[command(after_help = exit_codes!())]
    Put(PutArgs),
    /// Take items off a queue, removed at once, and print their payloads one per line.
    #[command(after_help = exit_codes!())]
    Take(TakeArgs),
    /// Print the payloads at the front of a queue one per line, leaving them in place.
    #[command(after_help = exit_codes!())]
    Peek(PeekArgs),
    /// Remove every queued and delayed item of a queue (leased ones stay); prints how many.
    #[command(after_help = exit_codes!())]
    Purge(PurgeArgs),
    /// Delete a queue and the items it holds (refused while tasks of it are leased).
    #[command(after_help = exit_codes!())]
    Delete(DeleteArgs),
    /// Create a queue or set its capacity; prints the queue.
    #[command(after_help = exit_codes!())]
    Declare(DeclareArgs),
    /// List the dead letters of a queue (QUEUE.dead) with their reasons and attempts.
    #[command(after_help = exit_codes!())]
    Dead(DeadArgs),
    /// Move dead letters from QUEUE.dead back to QUEUE, with fresh attempts; prints how many.
    #[command(after_help = exit_codes!())]
    Kick(KickArgs),
    /// Print the master's queues and connection counters (as `taskmill-master stats`).
    #[command(after_help = exit_codes!())]
    Stats(StatsArgs),
    /// Print one queue's size, capacity, leases, waiters and totals.
    #[command(after_help = exit_codes!())]
    Inspect(InspectArgs),
    #[command(flatten)]
    Docs(Docs),
}

// Help headings: each command's own flags under its name, positionals under clap's
// "Arguments"; clap keeps a flattened group's heading for whatever follows it, so `Common`
// comes last.

/// What every command takes: output format, and how to reach the master.
#[derive(Debug, Args)]
pub struct Common {
    /// Print JSON for scripts instead of text.
    #[arg(long, env = "TASKMILL_JSON", value_parser = BoolishValueParser::new(), help_heading = "Output")]
    pub json: bool,
    /// Bound on connecting, authenticating and each request's round trip (on top of --wait).
    #[arg(long, env = "TASKMILL_REQUEST_TIMEOUT", default_value = "5s", value_parser = parse_positive_duration, help_heading = "Connection")]
    pub timeout: Duration,
    #[command(flatten, next_help_heading = "Connection")]
    pub connect: ConnectArgs,
}

#[derive(Debug, Args)]
pub struct PutArgs {
    /// The queue to put on (created on first use).
    pub queue: String,
    /// One item each, in order. None: stdin, one item per line (the newline removed).
    pub payloads: Vec<OsString>,
    /// Refuse the input unless every payload is JSON (blank lines are skipped).
    #[arg(long, env = "TASKMILL_JSON_LINES", value_parser = BoolishValueParser::new(), conflicts_with = "stdin_raw", help_heading = "Put")]
    pub json_lines: bool,
    /// Put all of stdin as one item, byte for byte (a file, an image, a document).
    #[arg(long, env = "TASKMILL_STDIN_RAW", value_parser = BoolishValueParser::new(), conflicts_with = "payloads", help_heading = "Put")]
    pub stdin_raw: bool,
    /// Wait up to this long for room in a full queue (e.g. 10s). Default: put what fits now.
    #[arg(long, env = "TASKMILL_WAIT", value_parser = parse_duration, help_heading = "Put")]
    pub wait: Option<Duration>,
    /// Name this queue for the items' outcomes, as a producer does (workers complete into it).
    #[arg(long, env = "TASKMILL_REPLY_TO", help_heading = "Put")]
    pub reply_to: Option<String>,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Args)]
pub struct TakeArgs {
    /// The queue to take from.
    pub queue: String,
    /// Take up to this many items.
    #[arg(short = 'n', long, env = "TASKMILL_COUNT", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..), help_heading = "Take")]
    pub count: u32,
    /// Wait up to this long for a first item if the queue is empty (e.g. 10s). Default: no wait.
    #[arg(long, env = "TASKMILL_WAIT", value_parser = parse_duration, help_heading = "Take")]
    pub wait: Option<Duration>,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Args)]
pub struct PeekArgs {
    /// The queue to look at.
    pub queue: String,
    /// Show up to this many items from the front (as many as one reply holds).
    #[arg(short = 'n', long, env = "TASKMILL_COUNT", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..), help_heading = "Peek")]
    pub count: u32,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Args)]
pub struct PurgeArgs {
    /// The queue to empty.
    pub queue: String,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// The queue to delete.
    pub queue: String,
    /// Refuse (exit 1) if the queue still holds items, instead of discarding them.
    #[arg(long, env = "TASKMILL_IF_EMPTY", value_parser = BoolishValueParser::new(), help_heading = "Delete")]
    pub if_empty: bool,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Args)]
pub struct DeclareArgs {
    /// The queue to create or change.
    pub queue: String,
    /// Items it may hold before puts wait. 0 or none: unbounded (a queue created by a put gets
    /// the master's --queue-capacity instead).
    #[arg(long, env = "TASKMILL_CAPACITY", help_heading = "Declare")]
    pub capacity: Option<u64>,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Args)]
pub struct DeadArgs {
    /// The queue whose dead letters to list (they are in QUEUE.dead).
    pub queue: String,
    /// List up to this many, oldest first (as many as one reply holds).
    #[arg(short = 'n', long, env = "TASKMILL_COUNT", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..), help_heading = "Dead letters")]
    pub count: u32,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Args)]
pub struct KickArgs {
    /// The queue to move dead letters back to (from QUEUE.dead).
    pub queue: String,
    /// Move up to this many, oldest first. Default: all (as many as the queue has room for).
    #[arg(short = 'n', long, env = "TASKMILL_COUNT", value_parser = clap::value_parser!(u32).range(1..), help_heading = "Kick")]
    pub count: Option<u32>,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The queue to describe.
    pub queue: String,
    #[command(flatten)]
    pub common: Common,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn every_flag_can_be_set_from_the_environment() {
        let missing = taskmill_cli::flags_without_env(&Cli::command());
        assert!(missing.is_empty(), "flags without a variable: {missing:?}");
    }

    #[test]
    fn the_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
