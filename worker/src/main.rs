//! `taskmill-worker`: parse flags, set up logging and signals, run the worker runtime with the
//! squares handler or, with `--exec`, a command per task.

mod exec;
mod reaper;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{CommandFactory, Parser};
use taskmill::{Handler, Sleep, Worker, WorkerConfig, WorkerReport};
use taskmill_cli::{
    init_tracing, parse_bytes, parse_duration, parse_positive_duration, run_main, signals, usage,
    write_docs, ConnectArgs, Docs, Signals, EXIT_STOPPED_AT_ONCE,
};
use taskmill_squares::Squares;

use exec::Exec;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Pulls tasks from a taskmill master, works on them (squares integers, or runs --exec's
/// command per task) and pushes the results back.
#[derive(Debug, Parser)]
#[command(
    name = "taskmill-worker",
    version,
    after_help = concat!(
        "Tasks are leased: if this worker dies, the master gives its tasks to another worker. \
         If the master is not up yet or goes away, the worker retries with capped exponential \
         backoff. SIGINT/SIGTERM finish the batch in hand, push its results and exit 0 (tasks \
         leased after the signal are not started: they go back to the master); a second \
         signal stops at once. The authkey comes from TASKMILL_AUTHKEY or --authkey-file, \
         never from the command line.\n\n",
        taskmill_cli::exit_codes_help!()
    ),
    args_conflicts_with_subcommands = true,
    disable_help_subcommand = true,
    next_help_heading = "Work"
)]
struct Cli {
    #[command(subcommand)]
    docs: Option<Docs>,
    /// Tasks leased and worked on at once (like Python's Pool(K)).
    #[arg(long, env = "TASKMILL_CONCURRENCY", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    concurrency: u32,
    /// Requests for tasks kept in flight: with 2 or more, the next batch is already on its way
    /// while one is computed (up to prefetch x concurrency tasks leased at once). A prefetched
    /// batch's leases run while it waits its turn: keep prefetch x the time one batch takes
    /// well under the master's lease timeout.
    #[arg(long, env = "TASKMILL_PREFETCH", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    prefetch: u32,
    /// Exit after no task has arrived for this long (e.g. 5, 500ms, 2m). Default: run until stopped.
    #[arg(long, env = "TASKMILL_IDLE_EXIT", value_parser = parse_positive_duration)]
    idle_exit: Option<Duration>,
    /// Longest delay between reconnect attempts.
    #[arg(long, env = "TASKMILL_MAX_BACKOFF", default_value = "5s", value_parser = parse_positive_duration)]
    max_backoff: Duration,
    /// Exit at the first handshake that fails before the master has proved it holds the key
    /// (a wrong authkey, a bad protocol version, a certificate not trusted). By default such
    /// failures are logged as errors and retried, because anyone who answers on the master's
    /// address (a local user holding the port while the master restarts, a spoofed DNS
    /// answer) could otherwise stop the worker with one frame.
    #[arg(long, env = "TASKMILL_EXIT_ON_AUTH_FAILURE")]
    exit_on_auth_failure: bool,
    /// Without --exit-on-auth-failure: give up once every connect attempt has failed before
    /// the master proved itself for this long (e.g. 10m, 1h).
    #[arg(long, env = "TASKMILL_AUTH_FAILURE_WINDOW", default_value = "1h", value_parser = parse_positive_duration, conflicts_with = "exit_on_auth_failure")]
    auth_failure_window: Duration,
    /// After SIGINT/SIGTERM, how long to keep trying to hand in finished results before
    /// exiting anyway (their tasks are then redone by other workers).
    #[arg(long, env = "TASKMILL_DRAIN_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    drain_timeout: Duration,
    /// Pretend each batch of tasks takes this long (e.g. 20ms), for load tests and demos.
    #[arg(long, env = "TASKMILL_SIMULATED_WORK", default_value = "0s", value_parser = parse_duration, conflicts_with = "exec")]
    simulated_work: Duration,
    /// The tasks' and results' format when squaring: `bincode` (taskmill's own), `pickle`
    /// (a pickled int in, its pickled square out) or `pickle-text` (a pickled int in, the
    /// Python tutorial's "n * n = square" string out), for jobs shared with Python scripts
    /// on the master's --python-listen.
    #[arg(long, env = "TASKMILL_CODEC", default_value = "bincode", value_parser = taskmill_squares::pickled::parse_codec, conflicts_with = "exec")]
    codec: taskmill_squares::Codec,
    /// The queue to take tasks from.
    #[arg(long, env = "TASKMILL_QUEUE", default_value = taskmill::TASKS_QUEUE)]
    queue: String,
    /// Where results go for tasks whose producer named no reply queue.
    #[arg(long, env = "TASKMILL_RESULTS_QUEUE", default_value = taskmill::RESULTS_QUEUE)]
    results_queue: String,
    /// Run this command once per task instead of squaring (split like a shell would; no shell
    /// runs it). The payload is its stdin and its stdout the result; exit 0 completes the task,
    /// --retry-exit-code retries it, any other exit fails the attempt with the end of stderr
    /// as the reason. TASKMILL_TASK_ID and TASKMILL_ATTEMPT are set; the authkey is not.
    #[arg(
        long,
        env = "TASKMILL_EXEC",
        help_heading = "Exec",
        value_name = "COMMAND"
    )]
    exec: Option<String>,
    /// Kill a command (its whole process group) that runs longer; the attempt fails.
    #[arg(long, env = "TASKMILL_TASK_TIMEOUT", value_parser = parse_positive_duration, help_heading = "Exec", requires = "exec")]
    task_timeout: Option<Duration>,
    /// The exit code with which a command asks for its task to be retried (75 is sysexits'
    /// EX_TEMPFAIL).
    #[arg(
        long,
        env = "TASKMILL_RETRY_EXIT_CODE",
        default_value_t = 75,
        help_heading = "Exec"
    )]
    retry_exit_code: i32,
    /// How long a task whose command asked for a retry waits before it is handed out again.
    #[arg(long, env = "TASKMILL_RETRY_AFTER", default_value = "10s", value_parser = parse_duration, help_heading = "Exec")]
    retry_after: Duration,
    /// Largest output a command may write (a result must fit the master's frame limit);
    /// past it the command is killed and the attempt fails.
    #[arg(long, env = "TASKMILL_MAX_OUTPUT", default_value = "1023KiB", value_parser = parse_bytes, help_heading = "Exec")]
    max_output: u64,
    /// Bound on connecting plus authenticating.
    #[arg(long, env = "TASKMILL_CONNECT_TIMEOUT", default_value = "5s", value_parser = parse_positive_duration)]
    connect_timeout: Duration,
    #[command(flatten, next_help_heading = "Connection")]
    connect: ConnectArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(docs) = &cli.docs {
        return write_docs(docs, Cli::command());
    }
    init_tracing();
    run_main("taskmill-worker", work(cli))
}

async fn work(cli: Cli) -> anyhow::Result<ExitCode> {
    let mut config = WorkerConfig::new(
        cli.connect.master.clone(),
        cli.connect.key.load().map_err(usage)?,
    );
    config.client.tls = cli.connect.tls_client().map_err(usage)?;
    config.concurrency = cli.concurrency;
    config.prefetch = cli.prefetch;
    config.idle_exit = cli.idle_exit;
    config.max_backoff = cli.max_backoff;
    config.handshake_patience = (!cli.exit_on_auth_failure).then_some(cli.auth_failure_window);
    config.drain_timeout = cli.drain_timeout;
    config.client.connect_timeout = cli.connect_timeout;
    config.tasks_queue = cli.queue.clone();
    config.results_queue = cli.results_queue.clone();

    let signals = signals();
    let report = match &cli.exec {
        Some(command) => {
            let argv = shell_words::split(command)
                .map_err(|err| usage(anyhow::anyhow!("--exec {command:?}: {err}")))?;
            if argv.is_empty() {
                return Err(usage(anyhow::anyhow!("--exec needs a command")));
            }
            let children = Arc::new(reaper::Children::default());
            reaper::start(Arc::clone(&children));
            let exec = Exec {
                argv,
                timeout: cli.task_timeout,
                retry_code: cli.retry_exit_code,
                retry_after: cli.retry_after,
                max_output: usize::try_from(cli.max_output).unwrap_or(usize::MAX),
                children,
            };
            work_with(config, exec, &signals).await?
        }
        None => {
            let handler = Sleep::new(Squares::new().with_codec(cli.codec), cli.simulated_work);
            work_with(config, handler, &signals).await?
        }
    };
    tracing::info!(
        completed = report.completed,
        stale = report.stale,
        abandoned = report.abandoned,
        failed = report.failed,
        buried = report.buried,
        connections = report.connections,
        "worker finished"
    );
    Ok(if signals.now.is_cancelled() {
        ExitCode::from(EXIT_STOPPED_AT_ONCE)
    } else {
        ExitCode::SUCCESS
    })
}

async fn work_with<H: Handler>(
    config: WorkerConfig,
    handler: H,
    signals: &Signals,
) -> anyhow::Result<WorkerReport> {
    let worker = Worker::new(config, handler).abort_on(signals.now.clone());
    Ok(worker.run(signals.stop.clone()).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_flag_can_be_set_from_the_environment() {
        assert_eq!(
            taskmill_cli::flags_without_env(&Cli::command()),
            Vec::<String>::new()
        );
    }
}
