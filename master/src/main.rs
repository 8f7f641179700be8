//! `taskmill-master`: parse flags, set up logging, dispatch to a command.
//!
//! # Layout
//! - `cli`: the flags, checked and turned into the broker's configuration.
//! - `cmd::serve`: the long-running master.
//! - `cmd::run`: the squares job, on this master's own queues or against another master.
//! - `cmd::stats`: a running master's queues and counters, as a table or JSON.
//! - `cmd::files`: the open-files limit, raised at start or a clear refusal to start.
//! - `keygen`, here: a fresh random authkey; `completions` and `man` (hidden), this command
//!   line as shell completions and man pages.

mod cli;
mod cmd;

use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use cli::{Cli, Command};
use taskmill_cli::{init_tracing, run_main, write_docs};

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    disable_transparent_huge_pages();
    let cli = Cli::parse();
    if let Command::Docs(docs) = &cli.command {
        return write_docs(docs, Cli::command());
    }
    init_tracing();
    run_main("taskmill-master", async {
        match cli.command {
            Command::Serve(args) => cmd::serve::serve(args).await,
            Command::Run(args) => cmd::run::run(args).await,
            Command::Stats(args) => cmd::stats::show(args).await,
            Command::Docs(_) => unreachable!("answered before the runtime starts"),
            Command::Keygen => {
                taskmill_cli::say(taskmill::AuthKey::generate_text());
                Ok(ExitCode::SUCCESS)
            }
        }
    })
}

/// Opts this process out of transparent huge pages, as Redis does (`disable-thp`): where the
/// kernel's THP mode is `always`, the allocator's arenas get 2 MiB pages of which an idle
/// connection's few KiB touch a fraction, and resident memory per connection more than
/// doubled in measurement (BENCHMARKS.md). Failure only loses the optimisation.
fn disable_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: PR_SET_THP_DISABLE takes plain integers and touches no memory of ours.
        let rc = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
        if rc != 0 {
            taskmill_cli::tell(format!(
                "taskmill-master: could not opt out of transparent huge pages: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
}
