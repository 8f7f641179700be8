//! Process plumbing every taskmill binary shares: the flag groups they all take (the key, the
//! master to reach, TLS), duration flags, logging, the runtime, signals.
//!
//! Binaries only: the libraries take typed configuration, never flags.
//!
//! # Exit codes
//! The same mistake gets the same code from every binary: 0 success; 1 a failure at run time
//! (a master that cannot be reached or refuses the key, a job that did not verify); 2 a
//! mistake in the flags, the environment or a file they name, found before anything started
//! (clap's own code for flags it cannot parse; see [`Usage`]); 130 a second SIGINT/SIGTERM,
//! which stops at once.
//!
//! # Layout
//! - this file: the flag groups ([`KeyArgs`], [`ConnectArgs`], [`TlsClientArgs`]), then the
//!   value parsers ([`parse_duration`], [`parse_bytes`], [`parse_master_addr`], ...), logging
//!   and [`say`], [`Usage`] and [`run_main`], and [`signals`].
//! - [`docs`]: the hidden `completions` and `man` subcommands ([`Docs`]).
//! - [`stats`]: a master's stats as a table or JSON, for every binary that shows them.

pub mod docs;
pub mod stats;

pub use docs::Docs;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use taskmill_protocol::auth::KeyId;
use taskmill_protocol::{AuthKey, KeyError, TlsClient, TlsError};
use tokio_util::sync::CancellationToken;

/// Where the shared authkey comes from, for every binary.
#[derive(Debug, Clone, clap::Args)]
pub struct KeyArgs {
    /// File holding the shared authkey (one trailing newline is ignored). Without it the key
    /// is read from TASKMILL_AUTHKEY; with both, the file wins (and a warning says so).
    #[arg(long, env = "TASKMILL_AUTHKEY_FILE")]
    pub authkey_file: Option<PathBuf>,
}

impl KeyArgs {
    /// The key, logging a warning about loose file permissions or a key set twice.
    pub fn load(&self) -> Result<AuthKey, KeyError> {
        load_key(self.authkey_file.as_deref())
    }
}

/// A client's key: the authkey, and its name if it is one of the master's scoped keys.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientKeyArgs {
    #[command(flatten)]
    pub key: KeyArgs,
    /// The name of the key, when the master gives out scoped keys (its --keys-file); without
    /// it the key is the master's default key.
    #[arg(long, env = taskmill_protocol::auth::KEY_ID_ENV, value_parser = parse_key_id)]
    pub key_id: Option<KeyId>,
}

impl ClientKeyArgs {
    /// The key under its id, if any; see [`KeyArgs::load`].
    pub fn load(&self) -> Result<AuthKey, KeyError> {
        let key = self.key.load()?;
        Ok(match self.key_id {
            Some(id) => key.with_id(id),
            None => key,
        })
    }
}

fn parse_key_id(text: &str) -> Result<KeyId, String> {
    text.parse()
}

/// How a client binary reaches a master: its address, the key, and TLS.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnectArgs {
    /// Master address (host:port).
    #[arg(long, env = "TASKMILL_MASTER", default_value = "127.0.0.1:5000", value_parser = parse_master_addr)]
    pub master: String,
    #[command(flatten)]
    pub key: ClientKeyArgs,
    #[command(flatten)]
    pub tls: TlsClientArgs,
}

impl ConnectArgs {
    /// The TLS settings for [`ConnectArgs::master`], if TLS was asked for.
    pub fn tls_client(&self) -> Result<Option<TlsClient>, TlsError> {
        self.tls.client(&self.master)
    }
}

/// Parses `5`, `2.5` (seconds) or a unit suffix like `500ms`, `10s`, `2m`, `1h 30m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<f64>() {
        return Duration::try_from_secs_f64(secs).map_err(|e| format!("{s:?}: {e}"));
    }
    humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e} (try 5, 2.5, 500ms, 10s, 2m)"))
}

/// As [`parse_duration`], refusing zero: for waits and limits where none would mean the thing
/// never happens or happens at once (`--idle-exit 0` would exit before connecting).
pub fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        zero if zero.is_zero() => Err(format!("{s:?}: must be more than 0")),
        d => Ok(d),
    }
}

/// A count of 1 or more (`--tasks 0` would be a job with nothing to verify).
pub fn parse_count(s: &str) -> Result<u64, String> {
    match s.trim().replace('_', "").parse::<u64>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(err) => Err(format!("{s:?}: {err}")),
    }
}

/// Checks a master's address to connect to: `host:port`, `[v6]:port`, a port from 1 up.
/// Without the check, a missing port (`--master 127.0.0.1`) made a worker retry for ever.
pub fn parse_master_addr(s: &str) -> Result<String, String> {
    check_addr(s, false)
}

/// Checks an address to listen on: as [`parse_master_addr`], and port 0 (a free port) is
/// allowed.
pub fn parse_listen_addr(s: &str) -> Result<String, String> {
    check_addr(s, true)
}

fn check_addr(s: &str, any_port: bool) -> Result<String, String> {
    let s = s.trim();
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err(format!("{s:?} has no port: write host:port, e.g. {s}:5000"));
    };
    if host.is_empty() {
        return Err(format!(
            "{s:?} has no host: write host:port, e.g. 127.0.0.1{s}"
        ));
    }
    let bracketed = host.starts_with('[') && host.ends_with(']');
    if host.contains(':') && !bracketed {
        return Err(format!(
            "{s:?}: an IPv6 address goes in brackets, with the port after them: [::1]:5000"
        ));
    }
    match port.parse::<u16>() {
        Ok(0) if !any_port => Err(format!("{s:?}: port 0 is not a master's port")),
        Ok(_) => Ok(s.to_owned()),
        Err(_) => Err(format!("{s:?}: {port:?} is not a port number (1 to 65535)")),
    }
}

/// Parses a byte count: `1048576`, or with a unit: `500MB`, `20GiB`, `1.5TB` (KB, MB, GB, TB
/// are powers of 1000; KiB, MiB, GiB, TiB of 1024).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{s:?}: not a size (try 500MB, 20GiB)"))?;
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        "t" | "tb" => 1_000_000_000_000,
        "tib" => 1 << 40,
        other => {
            return Err(format!(
                "{s:?}: unknown unit {other:?} (try MB, GB, MiB, GiB)"
            ))
        }
    };
    Ok((number * scale as f64) as u64)
}

/// Client-side TLS flags, shared by every command that connects to a master.
#[derive(Debug, Clone, clap::Args)]
pub struct TlsClientArgs {
    /// Speak TLS to the master, trusting the CA certificates (PEM) in this file.
    #[arg(long, env = "TASKMILL_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// The name the master's certificate must carry. Default: the host part of the master
    /// address.
    #[arg(long, env = "TASKMILL_TLS_SERVER_NAME", requires = "tls_ca")]
    pub tls_server_name: Option<String>,
}

impl TlsClientArgs {
    /// The TLS settings for connecting to `master` (`host:port`), if TLS was asked for.
    pub fn client(&self, master: &str) -> Result<Option<TlsClient>, TlsError> {
        let Some(ca) = &self.tls_ca else {
            return Ok(None);
        };
        let name = match &self.tls_server_name {
            Some(name) => name.clone(),
            None => host_of(master).to_owned(),
        };
        TlsClient::from_ca_file(ca, &name).map(Some)
    }
}

/// `host` of `host:port` or `[v6]:port`.
fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// The long flags of `cmd` and its subcommands that no environment variable sets, as
/// `command --flag`: the README promises every flag has one, and each binary's tests hold it
/// to that (help and version aside).
pub fn flags_without_env(cmd: &clap::Command) -> Vec<String> {
    let mut missing: Vec<String> = cmd
        .get_arguments()
        .filter(|arg| !arg.is_positional() && arg.get_env().is_none())
        .filter_map(|arg| arg.get_long())
        .filter(|long| !matches!(*long, "help" | "version"))
        .map(|long| format!("{} --{long}", cmd.get_name()))
        .collect();
    for sub in cmd.get_subcommands() {
        missing.extend(flags_without_env(sub));
    }
    missing
}

/// Logs to stderr at the level `RUST_LOG` sets (default `info`). A log line that cannot be
/// written (stderr closed, a pipe whose reader left) is dropped, never a panic: logging must
/// not take a process down.
pub fn init_tracing() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(|| QuietStderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// stderr, but a write that fails is taken as done: there is no one left to tell.
struct QuietStderr;

impl std::io::Write for QuietStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

/// Prints `text` and a newline on stderr, for messages a person reads; as [`say`], a reader
/// that has gone is no reason to panic.
pub fn tell(text: impl std::fmt::Display) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "{text}");
}

/// Prints `text` and a newline on stdout. If the reader has gone (`| head`), the rest of the
/// output is dropped quietly instead of panicking as `println!` does.
pub fn say(text: impl std::fmt::Display) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}").and_then(|()| out.flush());
}

/// The authkey from `file` or `TASKMILL_AUTHKEY`, logging what [`AuthKey::load`] warns of.
fn load_key(file: Option<&Path>) -> Result<AuthKey, KeyError> {
    let (key, warnings) = AuthKey::load(file)?;
    for warning in warnings {
        tracing::warn!("{warning}");
    }
    Ok(key)
}

/// Exit code for a mistake in the flags, environment or files, found before starting.
pub const EXIT_USAGE: u8 = 2;
/// Exit code after a second stop signal, which stops at once (128 + SIGINT, as shells report
/// a process killed by Ctrl-C).
pub const EXIT_STOPPED_AT_ONCE: u8 = 130;

/// The exit codes, for the end of every binary's `--help` (a macro so `concat!` can use it).
#[macro_export]
macro_rules! exit_codes_help {
    () => {
        "Exit codes: 0 success; 1 a failure at run time (no master, a wrong key, a job that did \
         not verify); 2 a mistake in the flags, the environment or a file they name, found \
         before starting; 130 stopped at once by a second SIGINT/SIGTERM."
    };
}

/// A mistake in the flags, the environment or a file they name, found before anything
/// started: [`run_main`] exits [`EXIT_USAGE`] for it, as clap does for a flag it cannot parse.
#[derive(Debug)]
pub struct Usage(pub anyhow::Error);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#}", self.0)
    }
}

impl std::error::Error for Usage {}

/// Marks an error as a [`Usage`] mistake.
pub fn usage(err: impl Into<anyhow::Error>) -> anyhow::Error {
    Usage(err.into()).into()
}

/// The exit code for `err`: [`EXIT_USAGE`] for a [`Usage`] mistake, else 1.
pub fn exit_code(err: &anyhow::Error) -> ExitCode {
    if err.chain().any(|cause| cause.is::<Usage>()) {
        ExitCode::from(EXIT_USAGE)
    } else {
        ExitCode::FAILURE
    }
}

/// Runs a binary's async body on a fresh runtime; an error is printed as `name: error` (with
/// its causes) and exits with [`exit_code`].
pub fn run_main<F>(name: &str, body: F) -> ExitCode
where
    F: std::future::Future<Output = anyhow::Result<ExitCode>>,
{
    // Before the runtime starts its threads: see `take_key_from_env`.
    taskmill_protocol::auth::take_key_from_env();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(err) => {
            tell(format!("{name}: cannot start the runtime: {err}"));
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(body) {
        Ok(code) => code,
        Err(err) => {
            tell(format!("{name}: {err:#}"));
            exit_code(&err)
        }
    }
}

/// Writes `docs` about `cmd` for a binary whose `main` has no runtime yet; a failure to write
/// (a closed stdout) exits 1.
pub fn write_docs(docs: &Docs, cmd: clap::Command) -> ExitCode {
    match docs.write(cmd) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tell(format!("cannot write: {err}"));
            ExitCode::FAILURE
        }
    }
}

/// What SIGINT and SIGTERM (the stop signal of container runtimes, where the process is PID 1
/// and gets no default handling) have asked for.
#[derive(Debug, Clone, Default)]
pub struct Signals {
    /// The first: stop gracefully (finish and hand in what is in hand).
    pub stop: CancellationToken,
    /// A second: stop now.
    pub now: CancellationToken,
}

/// Starts listening for the stop signals (call inside the runtime). The handlers are in place
/// when this returns, so a signal from then on is never met by the default action (death
/// without a drain). Each is acted on before it is logged.
pub fn signals() -> Signals {
    let signals = Signals::default();
    let (stop, now) = (signals.stop.clone(), signals.now.clone());
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot install signal handlers; stop with SIGKILL");
            return signals;
        };
        tokio::spawn(async move {
            for token in [stop, now] {
                let name = tokio::select! {
                    _ = term.recv() => "SIGTERM",
                    _ = int.recv() => "SIGINT",
                };
                token.cancel();
                tracing::info!("{name} received");
            }
            tracing::info!("a second stop signal: stopping now");
        });
    }
    #[cfg(not(unix))]
    tokio::spawn(async move {
        for token in [stop, now] {
            let _ = tokio::signal::ctrl_c().await;
            token.cancel();
        }
    });
    signals
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tls_server_name_defaults_to_the_master_host() {
        assert_eq!(host_of("master:5000"), "master");
        assert_eq!(host_of("10.0.0.1:5000"), "10.0.0.1");
        assert_eq!(host_of("[::1]:5000"), "::1");
    }

    #[test]
    fn sizes_accept_plain_bytes_and_units() {
        assert_eq!(parse_bytes("1048576").unwrap(), 1 << 20);
        assert_eq!(parse_bytes("500MB").unwrap(), 500_000_000);
        assert_eq!(parse_bytes("20GiB").unwrap(), 20 << 30);
        assert_eq!(parse_bytes("1.5 kb").unwrap(), 1500);
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("5 parsecs").is_err());
    }

    #[test]
    fn addresses_need_a_host_and_a_port() {
        for good in [
            "127.0.0.1:5000",
            "master:5000",
            "[::1]:5000",
            " a.example:1 ",
        ] {
            assert_eq!(parse_master_addr(good).unwrap(), good.trim());
        }
        for (bad, says) in [
            ("127.0.0.1", "no port"),
            ("master", "no port"),
            (":5000", "no host"),
            ("::1", "brackets"),
            ("::1:5000", "brackets"),
            ("host:http", "not a port number"),
            ("host:65536", "not a port number"),
            ("host:0", "port 0"),
        ] {
            let err = parse_master_addr(bad).unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
        assert_eq!(parse_listen_addr("127.0.0.1:0").unwrap(), "127.0.0.1:0");
        assert!(parse_listen_addr("0.0.0.0").is_err());
    }

    #[test]
    fn usage_mistakes_exit_2_and_other_failures_1() {
        use anyhow::Context as _;
        let mistake = Err::<(), _>(usage(anyhow::anyhow!("bad flag"))).context("starting");
        assert_eq!(exit_code(&mistake.unwrap_err()), ExitCode::from(2));
        assert_eq!(exit_code(&anyhow::anyhow!("refused")), ExitCode::FAILURE);
        assert!(parse_count("0").is_err());
        assert_eq!(parse_count("1_000_000").unwrap(), 1_000_000);
        assert!(parse_positive_duration("0").is_err());
        assert!(parse_positive_duration("0s").is_err());
        assert_eq!(
            parse_positive_duration("1ms").unwrap(),
            Duration::from_millis(1)
        );
    }

    #[test]
    fn durations_accept_plain_seconds_and_units() {
        assert_eq!(parse_duration("5").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("0.25").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("-1").is_err());
        assert!(parse_duration("soon").is_err());
    }
}
