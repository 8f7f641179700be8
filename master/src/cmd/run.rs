//! `taskmill-master run`: the squares job, on this master's own queues (with or without
//! workers in this process) or against a master running elsewhere.

use std::process::ExitCode;

use anyhow::anyhow;
use taskmill::{AuthKey, ClientOptions, KeyError};
use taskmill_cli::{say, tell, usage};
use taskmill_squares::job::{self, JobConfig};
use taskmill_squares::render;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::cli::RunArgs;

pub async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    args.check().map_err(usage)?;
    if args.key.key_id.is_some() && args.master.is_none() {
        return Err(usage(anyhow!(
            "--key-id names a key of a master elsewhere: it needs --master (this process's own \
             master uses the authkey, with every right)"
        )));
    }
    let key = match args.key.load() {
        Ok(key) => key,
        // Nobody else needs the key when every worker runs in this process.
        Err(KeyError::Missing)
            if args.local_workers > 0 && args.listen.is_none() && args.master.is_none() =>
        {
            AuthKey::random()
        }
        Err(err) => return Err(usage(err)),
    };
    let serves_tls = args.tls_server.tls_cert.is_some();
    if serves_tls && args.tls_client.tls_ca.is_none() {
        return Err(usage(anyhow!("--tls-cert also needs --tls-ca (and --tls-server-name if the certificate does not name 127.0.0.1): the job's own clients connect over TLS too")));
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
        local_workers: args.local_workers as usize,
        worker_concurrency: args.concurrency,
        worker_prefetch: args.prefetch,
        progress: !args.json,
        codec: args.codec,
        client: ClientOptions {
            tls: args.tls_client.client(&client_target).map_err(usage)?,
            ..ClientOptions::default()
        },
    };
    let shutdown = super::signals().stop;
    let report = if let Some(master) = &args.master {
        job::run(master, &key, &job, &shutdown).await?
    } else {
        let listen = args.listen.clone().unwrap_or_else(|| {
            if args.local_workers > 0 {
                "127.0.0.1:0".to_owned()
            } else {
                "0.0.0.0:5000".to_owned()
            }
        });
        let config = args
            .server
            .to_config(key.clone(), &args.tls_server)
            .map_err(usage)?;
        super::files::ensure(&config, args.http.http.is_some()).map_err(usage)?;
        let master = super::open(config, &args.storage)?;
        let listener = super::bind(&listen).await?;
        let addr = listener.local_addr()?;
        // With --json, stdout holds the report alone.
        if args.json {
            tell(format!("listening on {addr}"));
        } else {
            say(format!("listening on {addr}"));
        }
        if args.local_workers == 0 {
            tell(format!(
                "waiting for workers: start `taskmill-worker --master <this host>:{}` with the same authkey",
                addr.port()
            ));
        }
        // A wildcard listen address is not something to connect to; loopback reaches the same
        // port.
        let connect = if addr.ip().is_unspecified() {
            format!("127.0.0.1:{}", addr.port())
        } else {
            addr.to_string()
        };
        if let Some(http) = super::http::start(&master, &args.http).await? {
            let line = format!("http listening on {http}");
            if args.json {
                tell(line);
            } else {
                say(line);
            }
        }
        if let Some(python) =
            super::python::start(&master, &args.python, args.server.max_frame).await?
        {
            let line = format!("python listening on {python}");
            if args.json {
                tell(line);
            } else {
                say(line);
            }
        }
        let stop = CancellationToken::new();
        let serving = tokio::spawn(master.serve(listener, stop.clone()));
        let report = job::run(&connect, &key, &job, &shutdown).await;
        stop.cancel();
        match serving.await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => warn!(cause = %err, "master stopped with an error"),
            Err(err) => warn!(cause = %err, "master task panicked"),
        }
        report?
    };
    if args.json {
        let mut json = serde_json::to_value(&report)?;
        // jq and JavaScript read numbers as doubles: a 64-bit seed loses its last digits.
        json["seed_text"] = report.seed.to_string().into();
        json["ok"] = report.success().into();
        say(serde_json::to_string_pretty(&json)?);
    } else {
        say(render(&report).trim_end());
    }
    Ok(if report.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
