//! `taskmill-bench`: parse flags, connect, run one scenario, print figures.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{CommandFactory, Parser};
use indicatif::{ProgressBar, ProgressStyle};
use taskmill::ClientOptions;
use taskmill_bench::{bounds, Counter, Plan, Report, Scenario, Target};
use taskmill_cli::{
    init_tracing, parse_count, parse_positive_duration, run_main, say, usage, write_docs,
    ConnectArgs, Docs,
};
use taskmill_squares::micros;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Load generator for a taskmill master: talks only to the address it is given, and every
/// run is bounded by --duration and --count.
#[derive(Debug, Parser)]
#[command(
    name = "taskmill-bench",
    version,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    disable_help_subcommand = true,
    next_help_heading = "Run",
    after_help = "Scenarios: squares (the whole job with --connections in-process workers), \
                  produce (put rate), consume (lease + ack rate over a pre-filled queue), \
                  connections (open and hold --connections authenticated idle connections), \
                  latency (one task at a time, put to result). The authkey comes from \
                  TASKMILL_AUTHKEY or --authkey-file.\n\n\
                  Exit codes: 0 success (no errors during the run); 1 a failure at run time (no \
                  master, a wrong key, errors during the run); 2 a mistake in the flags, the \
                  environment or a file they name, found before starting. SIGINT/SIGTERM end a \
                  run at once, without a report."
)]
struct Cli {
    #[command(subcommand)]
    docs: Option<Docs>,
    /// What to measure.
    #[arg(required = true, help_heading = "Arguments")]
    scenario: Option<Scenario>,
    /// Connections (workers for squares).
    #[arg(long, short = 'c', env = "TASKMILL_BENCH_CONNECTIONS", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    connections: u32,
    /// Items per request (tasks leased at once for squares).
    #[arg(long, short = 'b', env = "TASKMILL_BENCH_BATCH", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    batch: u32,
    /// Requests for tasks each squares worker keeps in flight (1: the simple loop, one round
    /// trip per batch).
    #[arg(long, env = "TASKMILL_BENCH_PREFETCH", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    prefetch: u32,
    /// Stop after this long (for squares: the job's timeout). Default: 10s.
    #[arg(long, short = 'd', env = "TASKMILL_BENCH_DURATION", value_parser = parse_positive_duration)]
    duration: Option<Duration>,
    /// Stop after this many items (tasks for squares, the pre-filled queue for consume).
    /// Default: 1000000, except that produce, latency and connections given a --duration
    /// run for all of it.
    #[arg(long, short = 'n', env = "TASKMILL_BENCH_COUNT", value_parser = parse_count)]
    count: Option<u64>,
    /// Open loop: items per second in all (produce, latency). Default: as fast as possible.
    #[arg(long, env = "TASKMILL_BENCH_RATE", value_parser = parse_rate)]
    rate: Option<f64>,
    /// produce: leave the items queued when the run ends instead of taking them back out, to
    /// measure the master's memory with them queued.
    #[arg(long, env = "TASKMILL_BENCH_KEEP", value_parser = clap::builder::BoolishValueParser::new())]
    keep: bool,
    /// Print the report as JSON.
    #[arg(long, env = "TASKMILL_JSON", value_parser = clap::builder::BoolishValueParser::new())]
    json: bool,
    #[command(flatten, next_help_heading = "Connection")]
    connect: ConnectArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(docs) = &cli.docs {
        return write_docs(docs, Cli::command());
    }
    init_tracing();
    run_main("taskmill-bench", bench(cli))
}

async fn bench(cli: Cli) -> anyhow::Result<ExitCode> {
    let scenario = cli
        .scenario
        .expect("clap requires a scenario without a subcommand");
    let target = Target {
        key: cli.connect.key.load().map_err(usage)?,
        client: ClientOptions {
            tls: cli.connect.tls_client().map_err(usage)?,
            ..ClientOptions::default()
        },
        addr: cli.connect.master,
    };
    let (count, duration) = bounds(scenario, cli.count, cli.duration);
    let plan = Plan {
        scenario,
        connections: cli.connections as usize,
        batch: cli.batch,
        prefetch: cli.prefetch,
        duration,
        count,
        rate: cli.rate,
        keep: cli.keep,
    };
    let progress = Arc::new(Counter::default());
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {elapsed} {msg}").expect("the template is valid"),
    );
    let ticker = {
        let (bar, progress, scenario) = (bar.clone(), progress.clone(), scenario);
        tokio::spawn(async move {
            let mut last = 0;
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let now = progress.get();
                bar.set_message(match scenario {
                    Scenario::Connections => format!("{now} connections open"),
                    _ => format!("{now} items, {} /s", (now - last) * 2),
                });
                bar.tick();
                last = now;
            }
        })
    };
    let report = taskmill_bench::run(&target, &plan, progress).await;
    ticker.abort();
    bar.finish_and_clear();
    let report = report?;
    if cli.json {
        say(serde_json::to_string_pretty(&report)?);
    } else {
        say(summary(&report));
    }
    Ok(if report.errors == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `--rate`: a number of items per second above 0.
fn parse_rate(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(rate) if rate > 0.0 && rate.is_finite() => Ok(rate),
        _ => Err(format!("{s:?}: items per second, a number above 0")),
    }
}

/// The line a person reads: rate and batch where they mean something, latencies in units.
fn summary(report: &Report) -> String {
    let l = &report.latency_us;
    let latency = format!(
        "p50 {} p90 {} p99 {} p99.9 {} max {}",
        micros(l.p50),
        micros(l.p90),
        micros(l.p99),
        micros(l.p999),
        micros(l.max)
    );
    match (report.items_per_sec, report.batch) {
        (Some(rate), Some(batch)) => format!(
            "{:?}: {} items in {:.2} s = {rate:.0} items/s over {} connections (batch {batch}); \
             latency {latency}; errors {}",
            report.scenario, report.items, report.elapsed_secs, report.connections, report.errors
        ),
        _ => format!(
            "{:?}: {} of {} connections held for {:.2} s, each answering a ping at the end; \
             connect and handshake {latency}; errors {}",
            report.scenario, report.items, report.connections, report.elapsed_secs, report.errors
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use taskmill_bench::Percentiles;

    fn report(scenario: Scenario, batch: Option<u32>, items_per_sec: Option<f64>) -> Report {
        Report {
            scenario,
            connections: 50,
            batch,
            prefetch: 0,
            items: 50,
            elapsed_secs: 2.0,
            items_per_sec,
            latency_us: Percentiles {
                p50: 412,
                p90: 3_100,
                p99: 45_678,
                p999: 412_345,
                max: 9_936_895,
                samples: 50,
            },
            errors: 0,
        }
    }

    #[test]
    fn every_flag_can_be_set_from_the_environment() {
        assert_eq!(
            taskmill_cli::flags_without_env(&Cli::command()),
            Vec::<String>::new()
        );
    }

    #[test]
    fn connections_report_no_rate_or_batch_and_latencies_read_in_units() {
        let held = summary(&report(Scenario::Connections, None, None));
        assert!(
            !held.contains("items/s") && !held.contains("batch"),
            "{held}"
        );
        assert!(
            held.contains("50 of 50 connections held for 2.00 s"),
            "{held}"
        );
        let put = summary(&report(Scenario::Produce, Some(256), Some(25.0)));
        assert!(
            put.contains("25 items/s") && put.contains("(batch 256)"),
            "{put}"
        );
        assert!(
            put.contains("p50 412 µs p90 3.10 ms p99 45.7 ms p99.9 412 ms max 9.94 s"),
            "{put}"
        );
    }
}
