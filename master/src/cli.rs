//! The master's command line (every flag also read from a `TASKMILL_*` variable), checked and
//! turned into the broker's [`ServerConfig`].

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use taskmill_broker::store::Fsync;
use taskmill_broker::{GuardLimits, IpNet, QueueLimits, ServerConfig, MIN_MAX_FRAME};
use taskmill_cli::{
    parse_bytes, parse_count, parse_duration, parse_listen_addr, parse_master_addr,
    parse_positive_duration, ClientKeyArgs, ConnectArgs, KeyArgs, TlsClientArgs,
};
use taskmill_protocol::codec::MAX_FRAME_CEILING;
use taskmill_protocol::{AuthKey, TlsServer, DEFAULT_MAX_FRAME};

/// taskmill master: serves authenticated task and result queues over TCP.
#[derive(Debug, Parser)]
#[command(
    name = "taskmill-master",
    version,
    after_help = concat!(
        "Workers (taskmill-worker) connect with the shared authkey, lease integer tasks, \
         square them and push results back. The authkey comes from TASKMILL_AUTHKEY or \
         --authkey-file, never from the command line; `taskmill-master keygen` makes one. \
         Every flag but --repair can also be set through the variable shown beside it. \
         Logging: stderr, at the level in RUST_LOG (default info).\n\n",
        taskmill_cli::exit_codes_help!()
    )
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the queues until SIGINT/SIGTERM (the long-running broker).
    #[command(after_help = concat!(
        "SIGINT/SIGTERM stop it gracefully: no new connections or tasks, and leased tasks get \
         --shutdown-grace to be completed; a second signal stops it at once.\n\n",
        taskmill_cli::exit_codes_help!()
    ))]
    Serve(ServeArgs),
    /// The squares job: put N random integers on `tasks`, verify every square from `results`.
    #[command(after_help = concat!(
        "Serves the queues itself (with --local-workers, workers too), or uses a master \
         running elsewhere with --master; prints a summary, and exits 0 only if all N came back \
         exactly once with the right square.\n\n\
         With --master the job runs against a master running elsewhere, and the flags under \
         the headings marked \"not with --master\" are refused: that master was configured \
         where it runs.\n\n",
        taskmill_cli::exit_codes_help!()
    ))]
    Run(RunArgs),
    /// Print a running master's queues and connection counters.
    #[command(after_help = taskmill_cli::exit_codes_help!())]
    Stats(StatsArgs),
    /// Print a fresh random authkey (64 hex characters) for TASKMILL_AUTHKEY or a key file,
    /// e.g. `(umask 077; taskmill-master keygen > taskmill.key)`.
    #[command(after_help = taskmill_cli::exit_codes_help!())]
    Keygen,
    #[command(flatten)]
    Docs(taskmill_cli::Docs),
}

// Help headings: clap keeps a flattened group's heading for whatever follows it, so each
// struct lists its own flags first and every flattened group names its heading.

#[derive(Debug, Args)]
#[command(next_help_heading = "Master")]
pub struct ServeArgs {
    /// Address to listen on (port 0: a free port, printed).
    #[arg(long, env = "TASKMILL_LISTEN", default_value = "0.0.0.0:5000", value_parser = parse_listen_addr)]
    pub listen: String,
    #[command(flatten, next_help_heading = "Master")]
    pub server: ServerArgs,
    #[command(flatten, next_help_heading = "Key")]
    pub key: KeyArgs,
    /// Scoped keys: a file of named keys, each limited to some operations on some queues
    /// (one a line: `name rights queues key`; see the README, "Scoped keys"). Clients pick
    /// one with --key-id. Re-read on SIGHUP: keys added or removed apply to new connections.
    /// With it, TASKMILL_AUTHKEY / --authkey-file (every right, for clients without a key
    /// id) may be left unset: then every client needs a named key.
    #[arg(long, env = "TASKMILL_KEYS_FILE", help_heading = "Key")]
    pub keys_file: Option<PathBuf>,
    #[command(flatten, next_help_heading = "Storage")]
    pub storage: StorageArgs,
    #[command(flatten, next_help_heading = "TLS")]
    pub tls: TlsServerArgs,
    #[command(flatten, next_help_heading = "HTTP")]
    pub http: HttpArgs,
    #[command(flatten, next_help_heading = "Python multiprocessing")]
    pub python: PythonArgs,
}

#[derive(Debug, Args)]
#[command(next_help_heading = "Job")]
pub struct RunArgs {
    /// How many integers to square (1 or more).
    #[arg(long, env = "TASKMILL_TASKS", value_parser = parse_count)]
    pub tasks: u64,
    /// Also run K workers inside this process, against this master's own port (at most 1024:
    /// each is a connection, and more than the machine has cores gains nothing).
    #[arg(long, env = "TASKMILL_LOCAL_WORKERS", default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=1024))]
    pub local_workers: u32,
    /// Tasks each local worker leases at once.
    #[arg(long, env = "TASKMILL_CONCURRENCY", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub concurrency: u32,
    /// Requests for tasks each local worker keeps in flight (1: wait for each batch).
    #[arg(long, env = "TASKMILL_PREFETCH", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub prefetch: u32,
    /// Run the job against an already running master (host:port) instead of serving the
    /// queues in this process (e.g. a `serve` master in docker compose). The flags that
    /// shape a master of its own (listen, limits, storage, --tls-cert) are refused with it.
    #[arg(long, env = "TASKMILL_MASTER", value_parser = parse_master_addr, conflicts_with_all = MASTER_ONLY)]
    pub master: Option<String>,
    /// Smallest random input.
    #[arg(
        long,
        env = "TASKMILL_MIN",
        default_value_t = 0,
        allow_negative_numbers = true
    )]
    pub min: i64,
    /// Largest random input.
    #[arg(
        long,
        env = "TASKMILL_MAX",
        default_value_t = 10_000,
        allow_negative_numbers = true
    )]
    pub max: i64,
    /// Seed for the inputs, to repeat a run exactly. Default: random.
    #[arg(long, env = "TASKMILL_SEED")]
    pub seed: Option<u64>,
    /// Tasks per put request.
    #[arg(long, env = "TASKMILL_BATCH", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=65_536))]
    pub batch: u32,
    /// Give up when the whole job takes longer than this (e.g. 90s, 10m). Default: no limit.
    #[arg(long, env = "TASKMILL_TIMEOUT", value_parser = parse_positive_duration)]
    pub timeout: Option<Duration>,
    /// Give up when no new result has arrived for this long.
    #[arg(long, env = "TASKMILL_STALL_TIMEOUT", default_value = "30s", value_parser = parse_positive_duration)]
    pub stall_timeout: Duration,
    /// Print the summary as JSON on stdout (alone: other lines go to stderr).
    #[arg(long, env = "TASKMILL_JSON", value_parser = clap::builder::BoolishValueParser::new())]
    pub json: bool,
    /// The tasks' and results' format. `bincode`: taskmill's own. `pickle` (or
    /// `pickle-text`, the same but for --local-workers' answers): Python's, for Python
    /// workers on --python-listen or `taskmill-worker --codec pickle`: pickled ints on
    /// `tasks`, and on `results` pickled squares or the tutorial's "n * n = square" strings,
    /// both accepted. Results are checked as a multiset (no sequence numbers travel), and
    /// inputs must lie within ±3037000499.
    #[arg(long, env = "TASKMILL_CODEC", default_value = "bincode", value_parser = taskmill_squares::pickled::parse_codec)]
    pub codec: taskmill_squares::Codec,
    // --key-id only with --master: this process's own master uses the authkey.
    #[command(flatten, next_help_heading = "Key")]
    pub key: ClientKeyArgs,
    /// TLS for the job's own clients (producer, collector, local workers): needed when this
    /// master serves TLS or --master names one that does.
    #[command(flatten, next_help_heading = "TLS of the job's clients")]
    pub tls_client: TlsClientArgs,
    /// Address to listen on. Default: 0.0.0.0:5000, or a free loopback port when the job
    /// uses only --local-workers.
    #[arg(long, env = "TASKMILL_LISTEN", value_parser = parse_listen_addr, help_heading = RUN_SERVER)]
    pub listen: Option<String>,
    #[command(flatten, next_help_heading = RUN_SERVER)]
    pub server: ServerArgs,
    #[command(
        flatten,
        next_help_heading = "Storage of its own master (not with --master)"
    )]
    pub storage: StorageArgs,
    #[command(
        flatten,
        next_help_heading = "TLS of its own master (not with --master)"
    )]
    pub tls_server: TlsServerArgs,
    #[command(
        flatten,
        next_help_heading = "HTTP of its own master (not with --master)"
    )]
    pub http: HttpArgs,
    #[command(
        flatten,
        next_help_heading = "Python multiprocessing on its own master (not with --master)"
    )]
    pub python: PythonArgs,
}

/// `run`'s heading for the flags of the master it serves itself.
const RUN_SERVER: &str = "Its own master (not with --master)";

#[derive(Debug, Args)]
#[command(next_help_heading = "Output")]
pub struct StatsArgs {
    /// Print JSON instead of a table.
    #[arg(long, env = "TASKMILL_JSON", value_parser = clap::builder::BoolishValueParser::new())]
    pub json: bool,
    /// Bound on connecting, authenticating and the request.
    #[arg(long, env = "TASKMILL_STATS_TIMEOUT", default_value = "5s", value_parser = parse_positive_duration)]
    pub timeout: Duration,
    #[command(flatten, next_help_heading = "Connection")]
    pub connect: ConnectArgs,
}

/// The flags of a master's own (its address, limits, storage and TLS certificate), which
/// `run --master` refuses: the master it names was configured where it runs.
const MASTER_ONLY: [&str; 35] = [
    "listen",
    "http",
    "http_auth_file",
    "handshake_timeout",
    "first_byte_timeout",
    "trusted_networks",
    "ipv6_prefix",
    "max_frame",
    "max_connections",
    "max_handshakes",
    "max_handshakes_per_ip",
    "auth_failures_per_minute",
    "max_queues",
    "queue_capacity",
    "max_waiting",
    "max_waiting_bytes",
    "max_memory",
    "write_timeout",
    "shutdown_grace",
    "lease_timeout",
    "heartbeat_interval",
    "max_attempts",
    "tls_cert",
    "tls_key",
    "data_dir",
    "fsync",
    "max_disk",
    "repair",
    "segment_bytes",
    "snapshot_after",
    "python_listen",
    "python_authkey_file",
    "python_refuse_md5",
    "python_register",
    "python_delivery",
];

/// A master's limits, shared by `serve` and `run`.
#[derive(Debug, Args)]
pub struct ServerArgs {
    /// Bound on a connection's whole handshake.
    #[arg(long, env = "TASKMILL_HANDSHAKE_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub handshake_timeout: Duration,
    /// Bound on the wait for a new connection's first byte (clients speak at once); a silent
    /// connection gives its handshake slot back after this. At most --handshake-timeout.
    #[arg(long, env = "TASKMILL_FIRST_BYTE_TIMEOUT", default_value = "1s", value_parser = parse_positive_duration)]
    pub first_byte_timeout: Duration,
    /// Largest frame in bytes after authentication (4096 to 67108864).
    #[arg(long, env = "TASKMILL_MAX_FRAME", default_value_t = DEFAULT_MAX_FRAME)]
    pub max_frame: usize,
    /// Connections served at once; further ones are refused as overloaded.
    #[arg(long, env = "TASKMILL_MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,
    /// Handshakes in progress at once (unauthenticated connections). When all are taken, a
    /// new connection takes the place of the oldest handshake, which is closed: a peer with
    /// the key always gets through, however many hostile connections share the way.
    #[arg(long, env = "TASKMILL_MAX_HANDSHAKES", default_value_t = 256)]
    pub max_handshakes: usize,
    /// Handshakes in progress at once from one source address (IPv6: one --ipv6-prefix);
    /// past it, a new one takes the place of that address's oldest.
    #[arg(long, env = "TASKMILL_MAX_HANDSHAKES_PER_IP", default_value_t = 32)]
    pub max_handshakes_per_ip: u32,
    /// Failed handshakes one source address may have per minute; past that its failures are
    /// answered late, until the budget refills. A peer with the key from that address is
    /// still let in at once.
    #[arg(long, env = "TASKMILL_AUTH_FAILURES_PER_MINUTE", default_value_t = 60)]
    pub auth_failures_per_minute: u32,
    /// Networks exempt from the per-address limits (handshakes per address, failure budget),
    /// comma-separated: e.g. 10.0.0.0/8,fd00::/8. The overall --max-handshakes still holds.
    #[arg(long, env = "TASKMILL_TRUSTED_NETWORKS", value_delimiter = ',', value_parser = parse_network)]
    pub trusted_networks: Vec<IpNet>,
    /// IPv6 sources sharing this many leading bits count as one address for the per-address
    /// limits (0 to 128; a host or subnet usually gets a /64). IPv4-mapped IPv6 addresses
    /// count as their IPv4 address.
    #[arg(long, env = "TASKMILL_IPV6_PREFIX", default_value_t = 64, value_parser = clap::value_parser!(u8).range(0..=128))]
    pub ipv6_prefix: u8,
    /// Most queues that may exist.
    #[arg(long, env = "TASKMILL_MAX_QUEUES", default_value_t = 1024)]
    pub max_queues: usize,
    /// Capacity of a queue created on first use; 0 for unbounded.
    #[arg(long, env = "TASKMILL_QUEUE_CAPACITY", default_value_t = 1_000_000)]
    pub queue_capacity: u64,
    /// Waiting (blocked) requests one connection may have.
    #[arg(long, env = "TASKMILL_MAX_WAITING", default_value_t = 64)]
    pub max_waiting: usize,
    /// Bytes one connection's waiting requests may hold together (their payloads plus 16
    /// bytes an item; e.g. 8MiB). Past it, a further waiting request gets TooManyWaiting; a
    /// connection with nothing waiting may always wait once. Default: 4 × --max-frame.
    #[arg(long, env = "TASKMILL_MAX_WAITING_BYTES", value_parser = parse_bytes)]
    pub max_waiting_bytes: Option<u64>,
    /// Memory the queues may hold (e.g. 512MiB, 4GiB): every task and result the master keeps
    /// (queued, leased, delayed, dead letters) counts its payload plus 128 bytes, and waiting
    /// requests count too. Past it, new puts and results are refused with MemoryFull (retry
    /// later) while completions, acks and give-backs go on; no task already taken is ever
    /// dropped to keep within it. A fixed default, the same on every machine and in
    /// containers: raise it to hold more.
    #[arg(long, env = "TASKMILL_MAX_MEMORY", default_value = "1GiB", value_parser = parse_bytes)]
    pub max_memory: u64,
    /// Disconnect a client that does not read its replies for this long.
    #[arg(long, env = "TASKMILL_WRITE_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub write_timeout: Duration,
    /// After SIGINT/SIGTERM: how long to wait for leased tasks to be completed (no new tasks
    /// are accepted or handed out meanwhile) before stopping.
    #[arg(long, env = "TASKMILL_SHUTDOWN_GRACE", default_value = "5s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
    /// How long a worker may hold a task before it is given to another worker (a `get` may ask
    /// for another length; `touch` extends it).
    #[arg(long, env = "TASKMILL_LEASE_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub lease_timeout: Duration,
    /// Liveness interval: a client silent for two intervals while it holds tasks is presumed
    /// dead, and its tasks are requeued.
    #[arg(long, env = "TASKMILL_HEARTBEAT_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub heartbeat_interval: Duration,
    /// Deliveries a task gets; given back after the last one (lease expired, holder gone,
    /// nacked) it moves to the `<queue>.dead` queue.
    #[arg(long, env = "TASKMILL_MAX_ATTEMPTS", default_value_t = 5)]
    pub max_attempts: u32,
}

/// The TLS a master serves (flags shared by `serve` and `run`).
#[derive(Debug, Args)]
pub struct TlsServerArgs {
    /// Serve TLS with this PEM certificate chain (needs --tls-key). Without TLS, traffic after
    /// the authenticated handshake is not encrypted.
    #[arg(long, env = "TASKMILL_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key for --tls-cert.
    #[arg(long, env = "TASKMILL_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

/// The read-only HTTP port (flags shared by `serve` and `run`).
#[derive(Debug, Args)]
pub struct HttpArgs {
    /// Serve /metrics (Prometheus), /api/stats (JSON), /healthz and a live dashboard at / on
    /// this address (e.g. 127.0.0.1:8080). Off by default. Read-only, and without
    /// authentication unless --http-auth-file is given: anyone who can reach the address sees
    /// queue names, counts, client addresses and dead-letter reasons.
    #[arg(long, env = "TASKMILL_HTTP", value_parser = parse_listen_addr)]
    pub http: Option<String>,
    /// With --http: a file holding a secret of 16 bytes or more (one trailing newline
    /// ignored); every route but /healthz then needs it, as `Authorization: Bearer SECRET` or
    /// as the password of Basic credentials (any user name).
    #[arg(long, env = "TASKMILL_HTTP_AUTH_FILE", requires = "http")]
    pub http_auth_file: Option<PathBuf>,
}

/// The Python listener (flags shared by `serve` and `run`).
#[derive(Debug, Args)]
pub struct PythonArgs {
    /// Also serve Python's multiprocessing.managers protocol on this address (e.g.
    /// 0.0.0.0:50000), so unchanged scripts that connect() a BaseManager and call get/put on
    /// its queue proxies use this master's queues. Off by default. Plain TCP, as in Python:
    /// the authkey protects the handshake, not the traffic after it.
    #[arg(long, env = "TASKMILL_PYTHON_LISTEN", value_parser = parse_listen_addr)]
    pub python_listen: Option<String>,
    /// With --python-listen: a file holding the authkey the Python scripts use (same rules as
    /// the master's key). Default: the master's own key.
    #[arg(long, env = "TASKMILL_PYTHON_AUTHKEY_FILE", requires = "python_listen")]
    pub python_authkey_file: Option<PathBuf>,
    /// With --python-listen: refuse the HMAC-MD5 handshake of Python 3.11 and older (3.12+
    /// use HMAC-SHA256); those clients then fail with AuthenticationError.
    #[arg(long, env = "TASKMILL_PYTHON_REFUSE_MD5", requires = "python_listen", value_parser = clap::builder::BoolishValueParser::new())]
    pub python_refuse_md5: bool,
    /// With --python-listen: a name the scripts register, and the queue it returns
    /// (NAME=QUEUE, repeatable, or comma-separated in the variable). Default:
    /// get_task_queue=tasks and get_result_queue=results, the tutorial's names.
    #[arg(long, env = "TASKMILL_PYTHON_REGISTER", requires = "python_listen", value_delimiter = ',', value_parser = parse_register)]
    pub python_register: Vec<(String, String)>,
    /// With --python-listen: when a Python get's item counts as delivered. `on-write`: once
    /// its reply is written (an item whose reply cannot be written goes back; Python's own
    /// server loses it). `on-next-request`: once that connection sends its next request
    /// (the worker's put of the result, or its next get), so a worker killed mid-task gives
    /// its item back: at-least-once for unchanged workers, at the cost of a lease held per
    /// connection (renewed while it is open: a connected worker that hangs keeps its item).
    #[arg(long, env = "TASKMILL_PYTHON_DELIVERY", default_value = "on-write", requires = "python_listen", value_parser = parse_delivery)]
    pub python_delivery: PythonDelivery,
}

/// `--python-delivery`'s choices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PythonDelivery {
    OnWrite,
    OnNextRequest,
}

fn parse_delivery(s: &str) -> Result<PythonDelivery, String> {
    match s.trim() {
        "on-write" => Ok(PythonDelivery::OnWrite),
        "on-next-request" => Ok(PythonDelivery::OnNextRequest),
        other => Err(format!("{other:?}: use on-write or on-next-request")),
    }
}

fn parse_register(s: &str) -> Result<(String, String), String> {
    let (name, queue) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: use NAME=QUEUE, e.g. get_jobs=jobs"))?;
    let (name, queue) = (name.trim(), queue.trim());
    let identifier = |n: &str| {
        n.chars()
            .next()
            .is_some_and(|c| c.is_alphabetic() || c == '_')
            && n.chars().all(|c| c.is_alphanumeric() || c == '_')
    };
    if !identifier(name) {
        return Err(format!("{name:?} is not a Python identifier"));
    }
    let queue_char = |c: char| c.is_ascii_alphanumeric() || ".:_-".contains(c);
    if queue.is_empty() || queue.len() > 128 || !queue.chars().all(queue_char) {
        return Err(format!(
            "{queue:?}: a queue name is 1 to 128 of A-Z a-z 0-9 . _ : -"
        ));
    }
    Ok((name.to_owned(), queue.to_owned()))
}

/// Where the queues are kept (flags shared by `serve` and `run`).
#[derive(Debug, Args)]
pub struct StorageArgs {
    /// Keep the queues in this directory (created if missing): every put, completion, ack,
    /// nack and dead letter is on disk before its reply, and a master restarted on the same
    /// directory carries on where it stopped (tasks leased then are queued again). Without it
    /// the queues live in memory only and are lost when the master stops.
    #[arg(long, env = "TASKMILL_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// With --data-dir: `always` (the default) makes every reply wait for its records' fsync.
    /// A duration (e.g. 100ms) makes replies wait for the write only and fsyncs at least that
    /// often: faster, and a crash of the master loses nothing acknowledged, but a crash of the
    /// machine (power, kernel) may lose up to that long of acknowledged work.
    #[arg(long, env = "TASKMILL_FSYNC", default_value = "always", value_parser = parse_fsync, requires = "data_dir")]
    pub fsync: Fsync,
    /// With --data-dir: disk the log and snapshots may use (e.g. 20GiB, 500MB). Past it, puts
    /// are refused as StorageFull (retry later) while completions and acks go on. Default:
    /// what the directory holds plus 90% of the free space when the master starts.
    #[arg(long, env = "TASKMILL_MAX_DISK", value_parser = parse_bytes, requires = "data_dir")]
    pub max_disk: Option<u64>,
    /// With --data-dir: start on a damaged log by cutting it at the damage (what follows it is
    /// lost, and logged). Without it, a damaged log stops the master with the file and offset.
    /// The one flag with no environment variable: a variable left set would go on cutting
    /// logs on every restart without anyone deciding to.
    #[arg(long, requires = "data_dir")]
    pub repair: bool,
    /// With --data-dir: close a log segment past this size (tuning; docs/storage.md).
    #[arg(long, hide = true, env = "TASKMILL_SEGMENT_BYTES", default_value = "64MiB", value_parser = parse_bytes, requires = "data_dir")]
    pub segment_bytes: u64,
    /// With --data-dir: take a snapshot once the log since the last one passes this, or the
    /// last snapshot's size if larger (tuning; docs/storage.md).
    #[arg(long, hide = true, env = "TASKMILL_SNAPSHOT_AFTER", default_value = "64MiB", value_parser = parse_bytes, requires = "data_dir")]
    pub snapshot_after: u64,
}

fn parse_fsync(s: &str) -> Result<Fsync, String> {
    match s.trim() {
        "always" => Ok(Fsync::Always),
        other => match parse_duration(other)? {
            every if every.is_zero() => Err("use `always`, or an interval above 0".into()),
            every => Ok(Fsync::Every(every)),
        },
    }
}

impl RunArgs {
    /// What clap cannot check alone, checked before anything starts.
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.min > self.max {
            return Err(ConfigError {
                flag: "min",
                problem: format!("{} is greater than --max {}", self.min, self.max),
            });
        }
        Ok(())
    }
}

/// A flag value that cannot work, with the flag's name.
#[derive(Debug, thiserror::Error)]
#[error("--{flag}: {problem}")]
pub struct ConfigError {
    pub flag: &'static str,
    pub problem: String,
}

/// A network (`10.0.0.0/8`, `fd00::/8`) or one address (`192.0.2.7`) for --trusted-networks.
fn parse_network(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .map(|net| net.trunc())
        .map_err(|_| {
            format!("{s:?} is not a network: write it as 10.0.0.0/8, fd00::/8 or 192.0.2.7")
        })
}

impl ServerArgs {
    /// Checks ranges and builds the config around `key`, serving `tls`.
    pub fn to_config(
        &self,
        key: AuthKey,
        tls: &TlsServerArgs,
    ) -> Result<ServerConfig, ConfigError> {
        let bad = |flag, problem: String| Err(ConfigError { flag, problem });
        if !(MIN_MAX_FRAME..=MAX_FRAME_CEILING).contains(&self.max_frame) {
            return bad(
                "max-frame",
                format!(
                    "{} is outside {MIN_MAX_FRAME}..={MAX_FRAME_CEILING}",
                    self.max_frame
                ),
            );
        }
        for (flag, value) in [
            ("max-connections", self.max_connections),
            ("max-handshakes", self.max_handshakes),
            ("max-handshakes-per-ip", self.max_handshakes_per_ip as usize),
            (
                "auth-failures-per-minute",
                self.auth_failures_per_minute as usize,
            ),
            ("max-queues", self.max_queues),
            ("max-waiting", self.max_waiting),
        ] {
            if value == 0 {
                return bad(flag, "must be at least 1".into());
            }
        }
        if self.handshake_timeout.is_zero() {
            return bad("handshake-timeout", "must be more than 0".into());
        }
        for (flag, value) in [
            ("write-timeout", self.write_timeout),
            ("lease-timeout", self.lease_timeout),
            ("heartbeat-interval", self.heartbeat_interval),
        ] {
            if value < Duration::from_millis(10) {
                return bad(flag, format!("{value:?} is too short (10ms at least)"));
            }
        }
        if self.max_attempts == 0 {
            return bad("max-attempts", "must be at least 1".into());
        }
        // Below this a master could not hold one full frame of tasks.
        let least = 4 * self.max_frame as u64;
        if self.max_memory < least {
            return bad(
                "max-memory",
                format!(
                    "{} bytes is less than 4 × --max-frame ({least} bytes)",
                    self.max_memory
                ),
            );
        }
        let max_waiting_bytes = self.max_waiting_bytes.unwrap_or(least);
        if max_waiting_bytes == 0 {
            return bad("max-waiting-bytes", "must be more than 0".into());
        }
        let tls =
            match (&tls.tls_cert, &tls.tls_key) {
                (Some(cert), Some(key)) => Some(TlsServer::from_pem_files(cert, key).map_err(
                    |e| ConfigError {
                        flag: "tls-cert",
                        problem: e.to_string(),
                    },
                )?),
                _ => None,
            };
        Ok(ServerConfig {
            key,
            keys: Default::default(),
            handshake_timeout: self.handshake_timeout,
            first_byte_timeout: self.first_byte_timeout.min(self.handshake_timeout),
            max_frame: self.max_frame,
            max_connections: self.max_connections,
            max_waiting: self.max_waiting,
            max_waiting_bytes,
            write_timeout: self.write_timeout,
            shutdown_grace: self.shutdown_grace,
            heartbeat_interval: self.heartbeat_interval,
            limits: QueueLimits {
                default_capacity: Some(self.queue_capacity).filter(|&c| c > 0),
                max_queues: self.max_queues,
                lease_timeout: self.lease_timeout,
                max_attempts: self.max_attempts,
                max_memory: self.max_memory,
            },
            guard: GuardLimits {
                max_handshakes: self.max_handshakes,
                max_handshakes_per_ip: self.max_handshakes_per_ip,
                auth_failures_per_minute: self.auth_failures_per_minute,
                ipv6_prefix: self.ipv6_prefix,
                trusted_networks: self.trusted_networks.clone(),
            },
            tls,
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn trusted_networks_take_cidrs_or_addresses_and_the_ipv6_prefix_is_bounded() {
        let net = |s: &str| parse_network(s).map(|n| n.to_string());
        assert_eq!(net("10.0.0.0/8").unwrap(), "10.0.0.0/8");
        assert_eq!(net("10.1.2.3/8").unwrap(), "10.0.0.0/8");
        assert_eq!(net(" 192.0.2.7 ").unwrap(), "192.0.2.7/32");
        assert_eq!(net("fd00::/8").unwrap(), "fd00::/8");
        assert!(net("10.0.0.0/33").unwrap_err().contains("not a network"));
        assert!(net("nope").is_err());
        let parse = |extra: &[&str]| {
            let args = ["taskmill-master", "serve"].iter().chain(extra);
            Cli::try_parse_from(args)
        };
        let Ok(Cli {
            command: Command::Serve(serve),
        }) = parse(&[
            "--trusted-networks",
            "10.0.0.0/8,fd00::/8",
            "--ipv6-prefix",
            "48",
        ])
        else {
            panic!("the flags parse");
        };
        assert_eq!(serve.server.trusted_networks.len(), 2);
        assert_eq!(serve.server.ipv6_prefix, 48);
        assert!(parse(&["--ipv6-prefix", "129"]).is_err());
    }

    #[test]
    fn every_flag_but_repair_can_be_set_from_the_environment() {
        let missing = taskmill_cli::flags_without_env(&Cli::command());
        assert_eq!(missing, ["serve --repair", "run --repair"]);
    }
}
