//! `taskmill-master`: parse flags, set up logging and signals, bind, call the library.

use std::process::ExitCode;

use anyhow::{bail, Context as _};
use clap::Parser;
use taskmill_master::config::{Cli, Command, RunArgs, ServeArgs, StatsArgs};
use taskmill_master::job::{self, JobConfig};
use taskmill_master::stats;
use taskmill_protocol::{AuthKey, Client, ClientOptions, KeyError};
use taskmill_worker::support::{cancel_on_signal, init_tracing, load_key, run_main};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    disable_transparent_huge_pages();
    let cli = Cli::parse();
    init_tracing();
    run_main("taskmill-master", async {
        match cli.command {
            Command::Serve(args) => serve(args).await,
            Command::Run(args) => run(args).await,
            Command::Stats(args) => show_stats(args).await,
        }
    })
}

async fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let key = load_key(args.server.authkey_file.as_deref())?;
    let config = args.server.into_config(key)?;
    let listener = bind(&args.listen).await?;
    // Scripts and tests read the bound port from this line (the flag may say port 0).
    println!("listening on {}", listener.local_addr()?);
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    taskmill_master::run(listener, config, shutdown).await?;
    Ok(ExitCode::SUCCESS)
}

async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let key = match load_key(args.server.authkey_file.as_deref()) {
        Ok(key) => key,
        // Nobody else needs the key when every worker runs in this process.
        Err(KeyError::Missing)
            if args.local_workers > 0 && args.listen.is_none() && args.master.is_none() =>
        {
            AuthKey::random()
        }
        Err(err) => return Err(err.into()),
    };
    let serves_tls = args.server.tls_cert.is_some();
    if serves_tls && args.tls_client.tls_ca.is_none() && args.master.is_none() {
        bail!("--tls-cert also needs --tls-ca (and --tls-server-name if the certificate does not name 127.0.0.1): the job's own clients connect over TLS too");
    }
    let client_target = args
        .master
        .clone()
        .unwrap_or_else(|| "127.0.0.1:0".to_owned());
    let job = JobConfig {
        tasks: args.tasks,
        min: args.min,
        max: args.max,
        seed: args.seed.unwrap_or(JobConfig::new(0).seed),
        batch: args.batch,
        timeout: args.timeout,
        stall_timeout: args.stall_timeout,
        local_workers: args.local_workers,
        worker_concurrency: args.concurrency,
        worker_prefetch: args.prefetch,
        progress: !args.json,
        client: ClientOptions {
            tls: args.tls_client.client(&client_target)?,
            ..ClientOptions::default()
        },
    };
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    let report = if let Some(master) = &args.master {
        job::run_against(master, &key, &job, &shutdown).await?
    } else {
        let listen = args.listen.clone().unwrap_or_else(|| {
            if args.local_workers > 0 {
                "127.0.0.1:0".to_owned()
            } else {
                "0.0.0.0:5000".to_owned()
            }
        });
        let config = args.server.into_config(key)?;
        let listener = bind(&listen).await?;
        let addr = listener.local_addr()?;
        println!("listening on {addr}");
        if args.local_workers == 0 {
            eprintln!(
                "waiting for workers: start `taskmill-worker --master <this host>:{}` with the same authkey",
                addr.port()
            );
        }
        job::run(listener, config, job, shutdown).await?
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", job::render(&report));
    }
    Ok(if report.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn show_stats(args: StatsArgs) -> anyhow::Result<ExitCode> {
    let key = load_key(args.authkey_file.as_deref())?;
    let options = ClientOptions {
        connect_timeout: args.timeout,
        request_timeout: args.timeout,
        tls: args.tls.client(&args.master)?,
    };
    let mut client = Client::connect_with(&args.master, &key, &options).await?;
    let stats = client.stats().await.context("stats request failed")?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&stats::render_json(&args.master, &stats))?
        );
    } else {
        print!("{}", stats::render_table(&args.master, &stats));
    }
    Ok(ExitCode::SUCCESS)
}

async fn bind(addr: &str) -> anyhow::Result<TcpListener> {
    match TcpListener::bind(addr).await {
        Ok(listener) => Ok(listener),
        Err(err) if err.kind() == std::io::ErrorKind::AddrInUse => {
            bail!("cannot listen on {addr}: the port is in use (pick another with --listen or TASKMILL_LISTEN)")
        }
        Err(err) => Err(err).with_context(|| format!("cannot listen on {addr}")),
    }
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
            eprintln!(
                "taskmill-master: could not opt out of transparent huge pages: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}
